"""``POST /events``: counts, 422 rules, mixed batches, and real-time personalisation of the next ``/recommend``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tastebud.config import Settings
from tastebud.data.dataset import Dataset
from tastebud.serving import create_app
from tastebud.store import create_store

from .conftest import FakeRegistry, FakeWriter

AUTH = {"Authorization": "Bearer s3cret"}
NOW = int(time.time()) - 60


@pytest.fixture
def store(settings: Settings) -> Iterator[Any]:
    s = create_store(settings)
    s.init_schema()
    yield s
    s.close()


@pytest.fixture
def client(settings: Settings, registry: FakeRegistry, store: Any) -> Iterator[TestClient]:
    app = create_app(settings, registry=registry, request_log=FakeWriter(), store=store)
    with TestClient(app, raise_server_exceptions=False) as c:
        deadline = time.monotonic() + 30
        while c.get("/health/ready").status_code != 200:
            assert time.monotonic() < deadline, c.get("/health").json()
            time.sleep(0.02)
        yield c


def rating(event_id: str, user: str, item: str, value: float = 5.0) -> dict[str, Any]:
    return {"event_id": event_id, "user_id": user, "item_id": item, "rating": value, "timestamp": NOW}


def rec_ids(client: TestClient, user: str, k: int = 10) -> tuple[list[str], dict[str, Any]]:
    r = client.get(f"/recommend/{user}?k={k}")
    assert r.status_code == 200, r.text
    body = r.json()
    return [it["item_id"] for it in body["recommendations"]], body


def heavy_user(train: Dataset) -> str:
    counts = np.bincount(train.interactions["user_idx"].to_numpy(), minlength=train.n_users)
    return str(train.users.ids[int(np.argmax(counts))])


def test_counts_accepted_duplicates_and_stores_events(client: TestClient, store: Any, train: Dataset) -> None:
    items = [str(i) for i in train.items.ids[:3]]
    batch = [rating(f"c{n}", "u-counts", item) for n, item in enumerate(items)]
    r = client.post("/events", json=batch)
    assert r.status_code == 200, r.text
    assert r.json() == {
        "accepted": 3, "duplicates": 0, "conflicts": 0, "rejected": [], "rejected_total": 0, "users_updated": 1
    }  # fmt: skip
    again = client.post("/events", json={"events": batch})  # the form replay's HttpSink posts
    assert again.status_code == 200
    assert again.json()["accepted"] == 0 and again.json()["duplicates"] == 3
    stored = store.query_events(user_id="u-counts")
    assert sorted(e["event_id"] for e in stored) == ["c0", "c1", "c2"]


def test_mixed_batch_stores_valid_and_reports_rejected(client: TestClient, store: Any, train: Dataset) -> None:
    item = str(train.items.ids[0])
    batch = [
        rating("m1", "u-mixed", item),
        rating("m2", "u-mixed", item, value=9.0),  # out of range
        {"event_id": "m3", "user_id": "u-mixed", "item_id": item, "kind": "teleport"},
        {"event_id": "m4", "user_id": "u-mixed", "item_id": item, "kind": "play", "value": 2.0},
    ]
    r = client.post("/events", json=batch)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["accepted"] == 2 and body["duplicates"] == 0
    rejected = {x["index"]: x for x in body["rejected"]}
    assert set(rejected) == {1, 2}
    assert "rating" in rejected[1]["reason"] and rejected[1]["event_id"] == "m2"
    assert "teleport" in rejected[2]["reason"]
    assert sorted(e["event_id"] for e in store.query_events(user_id="u-mixed")) == ["m1", "m4"]


@pytest.mark.parametrize(
    "body",
    [
        {"not": "events"},
        "just a string",
        42,
        [],
        {"events": []},
    ],
)
def test_body_that_is_not_a_list_of_events_is_422(client: TestClient, body: Any) -> None:
    r = client.post("/events", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "invalid_request" and r.json()["message"]


def test_batch_with_every_event_rejected_is_422_naming_reasons(client: TestClient, store: Any) -> None:
    batch = [
        {"event_id": "r1", "user_id": "u-bad", "item_id": "1", "rating": 11},
        {"event_id": "r2", "user_id": "", "item_id": "1", "rating": 3},
        "not an event",
    ]
    r = client.post("/events", json=batch)
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error"] == "invalid_request" and body["accepted"] == 0
    assert [x["index"] for x in body["rejected"]] == [0, 1, 2]
    assert "event 0" in body["message"] and "rating" in body["message"] and "user_id" in body["message"]
    assert store.query_events(user_id="u-bad") == []


def test_new_user_becomes_personalised(client: TestClient, train: Dataset) -> None:
    user = "brand-new-user"
    before, body = rec_ids(client, user)
    assert body["is_fallback"] is True and body["fallback_reason"] == "unknown_user"
    liked = [str(i) for i in train.items.ids[[3, 17, 42]]]
    r = client.post("/events", json=[rating(f"n{n}", user, item) for n, item in enumerate(liked)])
    assert r.status_code == 200 and r.json()["users_updated"] == 1
    after, body = rec_ids(client, user)
    assert body["is_fallback"] is False and body["fallback_reason"] is None
    assert len(after) == 10 and not set(liked) & set(after)
    assert after != before
    because = {x for it in body["recommendations"] for x in it["because"]}
    assert because and because <= set(liked)


def test_existing_user_recommendations_change_and_exclude_new_items(client: TestClient, train: Dataset) -> None:
    user = heavy_user(train)
    before, body = rec_ids(client, user)
    assert body["is_fallback"] is False
    new = before[:3]
    r = client.post("/events", json=[rating(f"x{n}", user, item) for n, item in enumerate(new)])
    assert r.status_code == 200
    after, body = rec_ids(client, user)
    assert body["is_fallback"] is False
    assert not set(new) & set(after)
    assert after != before
    seen = set(train.to_frame().filter(user_id=user)["item_id"].to_list())
    assert not seen & set(after)


def test_overlay_survives_a_model_switch(client: TestClient, train: Dataset) -> None:
    user = "switch-user"
    liked = [str(i) for i in train.items.ids[[5, 6, 7, 8]]]
    assert client.post("/events", json=[rating(f"s{n}", user, i) for n, i in enumerate(liked)]).status_code == 200
    _, body = rec_ids(client, user)
    assert body["model"]["type"] == "als" and body["is_fallback"] is False
    r = client.post("/admin/models/switch", json={"version": 2}, headers=AUTH)
    assert r.status_code == 200, r.text
    knn_ids, body = rec_ids(client, user)
    assert body["model"]["type"] == "itemknn" and body["is_fallback"] is False
    assert not set(liked) & set(knn_ids)
    because = {x for it in body["recommendations"] for x in it["because"]}
    assert because and because <= set(liked)


def test_events_for_items_no_model_knows_leave_the_user_a_fallback(client: TestClient) -> None:
    r = client.post("/events", json=[rating("z1", "ghost", "item-added-after-training")])
    assert r.status_code == 200 and r.json()["accepted"] == 1
    _, body = rec_ids(client, "ghost")
    assert body["is_fallback"] is True and body["fallback_reason"] == "unknown_user"


def test_events_counter_and_realtime_histogram(client: TestClient, train: Dataset) -> None:
    item = str(train.items.ids[1])
    client.post("/events", json=[rating("k1", "metric-user", item), rating("k2", "metric-user", item, 20)])
    rec_ids(client, "metric-user")
    text = client.get("/metrics").text
    assert 'tastebud_serving_events_received_total{outcome="accepted"} 1.0' in text
    assert 'tastebud_serving_events_received_total{outcome="rejected"} 1.0' in text
    assert "tastebud_serving_realtime_score_seconds_count 1.0" in text
