"""Bounded work per request: body, batch and field limits of ``POST /events``, bounded rejections and dead letters,
conflicts, and the one id rule at every HTTP entry point."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tastebud.config import Settings, build_settings
from tastebud.data.dataset import Dataset
from tastebud.serving import create_app
from tastebud.store import create_store

from .conftest import FakeRegistry, FakeWriter

NOW = int(time.time()) - 60
JSON_HEADERS = {"content-type": "application/json"}


def make_settings(home: Path, **serving: Any) -> Settings:
    return build_settings(
        home=home, serving={"model_name": "ml", "watch_interval_s": 0, "admin_token": "s3cret", "max_k": 50, **serving}
    )


@pytest.fixture
def serving_overrides() -> dict[str, Any]:
    return {}


@pytest.fixture
def app_settings(tmp_path: Path, serving_overrides: dict[str, Any]) -> Settings:
    return make_settings(tmp_path, **serving_overrides)


@pytest.fixture
def store(app_settings: Settings) -> Iterator[Any]:
    s = create_store(app_settings)
    s.init_schema()
    yield s
    s.close()


@pytest.fixture
def writer() -> FakeWriter:
    return FakeWriter()


@pytest.fixture
def client(app_settings: Settings, registry: FakeRegistry, store: Any, writer: FakeWriter) -> Iterator[TestClient]:
    app = create_app(app_settings, registry=registry, request_log=writer, store=store)
    with TestClient(app, raise_server_exceptions=False) as c:
        deadline = time.monotonic() + 30
        while c.get("/health/ready").status_code != 200:
            assert time.monotonic() < deadline, c.get("/health").json()
            time.sleep(0.02)
        yield c


def rating(event_id: str, user: str, item: str, value: Any = 5.0) -> dict[str, Any]:
    return {"event_id": event_id, "user_id": user, "item_id": item, "rating": value, "timestamp": NOW}


def metric(client: TestClient, line: str) -> bool:
    return line in client.get("/metrics").text


# ---------------------------------------------------------------------------------------------------- body size
@pytest.mark.parametrize("serving_overrides", [{"max_body_bytes": 4096}])
def test_body_over_the_limit_is_413_before_it_is_parsed(client: TestClient, store: Any) -> None:
    body = json.dumps([rating(f"b{i}", "u-big", "1") for i in range(100)]).encode()
    assert len(body) > 4096
    r = client.post("/events", content=body, headers=JSON_HEADERS)
    assert r.status_code == 413, r.text
    assert r.json()["error"] == "payload_too_large" and "4096" in r.json()["message"]
    assert len(r.content) < 400
    assert store.query_events(user_id="u-big") == [] and store.query_dead_letters() == []
    assert metric(client, 'tastebud_serving_rejected_requests_total{reason="body_too_large"} 1.0')


@pytest.mark.parametrize("serving_overrides", [{"max_body_bytes": 4096}])
def test_chunked_body_is_counted_as_it_streams(client: TestClient, store: Any) -> None:
    def chunks(n: int) -> Iterator[bytes]:
        yield b"["
        yield b",".join(json.dumps(rating(f"k{i}", "u-chunked", "1")).encode() for i in range(n))
        yield b"]"

    big = client.post("/events", content=chunks(200), headers=JSON_HEADERS)  # no Content-Length: chunked
    assert big.status_code == 413, big.text
    assert big.json()["error"] == "payload_too_large"
    assert store.query_events(user_id="u-chunked") == []
    small = client.post("/events", content=chunks(3), headers=JSON_HEADERS)
    assert small.status_code == 200, small.text
    assert small.json()["accepted"] == 3


def test_a_50_mb_field_is_refused_by_size_and_never_echoed(client: TestClient, store: Any) -> None:
    body = json.dumps([rating("huge", "u", "1", value="x" * 50_000_000)]).encode()
    started = time.perf_counter()
    r = client.post("/events", content=body, headers=JSON_HEADERS)
    assert r.status_code == 413 and len(r.content) < 400
    assert time.perf_counter() - started < 5
    assert store.query_dead_letters() == []


# ---------------------------------------------------------------------------------------------------- batch size
@pytest.mark.parametrize("serving_overrides", [{"max_events_per_request": 5}])
def test_too_many_events_is_422_before_any_is_read(client: TestClient, store: Any) -> None:
    r = client.post("/events", json=[rating(f"t{i}", "u-many", "1") for i in range(6)])
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error"] == "invalid_request" and body["details"][0]["field"] == "events"
    assert "6 events" in body["message"] and "limit of 5" in body["message"]
    assert store.query_events(user_id="u-many") == [] and store.query_dead_letters() == []
    assert metric(client, 'tastebud_serving_rejected_requests_total{reason="too_many_events"} 1.0')
    five = [rating(f"t{i}", "u-many", "1") for i in range(5)]
    assert client.post("/events", json={"events": five}).status_code == 200


def test_a_megabyte_of_non_objects_costs_less_than_the_request(client: TestClient, store: Any) -> None:
    body = b"[" + b",".join([b"1"] * 500_000) + b"]"
    started = time.perf_counter()
    r = client.post("/events", content=body, headers=JSON_HEADERS)
    elapsed = time.perf_counter() - started
    assert r.status_code == 422, r.text
    assert len(r.content) < 1000 and "500000 events" in r.json()["message"]
    assert elapsed < 5  # was 9-30 s and a 52 MB answer
    assert store.query_dead_letters() == []


# ---------------------------------------------------------------------------------------------------- rejections
def test_rejections_report_the_first_few_and_count_all(client: TestClient, store: Any) -> None:
    batch = [rating(f"r{i}", "u-rej", "1", value=11) for i in range(50)]
    r = client.post("/events", json=batch)
    assert r.status_code == 422
    body = r.json()
    assert len(body["rejected"]) == 20 and body["rejected_total"] == 50
    assert "(and 30 more)" in body["message"]
    assert len(store.query_dead_letters()) == 50  # every rejection is kept and counted, only the report is cut
    assert metric(client, 'tastebud_serving_events_received_total{outcome="rejected"} 50.0')


def test_over_long_fields_are_rejected_with_a_short_preview(client: TestClient, store: Any, train: Dataset) -> None:
    item = str(train.items.ids[0])
    long_text = "9" * 20_000
    batch = [
        rating("ok", "u-long", item),
        rating("long-rating", "u-long", item, value=long_text),
        {**rating("long-kind", "u-long", item), "kind": "k" * 5_000},
        rating("long-user", "u" * 500, item),
        rating("nul-user", "a\x00b", item),
        {**rating("long-key", "u-long", item), "z" * 10_000: 1},
    ]
    r = client.post("/events", json=batch)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["accepted"] == 1 and body["rejected_total"] == 5
    assert len(r.content) < 3000
    codes = {x["event_id"]: x["code"] for x in body["rejected"]}
    assert codes == {"long-rating": "too_long", "long-kind": "too_long", "long-user": "invalid_field",
                     "nul-user": "invalid_field", "long-key": "unknown_field"}  # fmt: skip
    for rejection in body["rejected"]:
        assert len(rejection["reason"]) < 400, rejection
    assert "U+0000" in next(x["reason"] for x in body["rejected"] if x["event_id"] == "nul-user")
    letters = {json.loads(d["payload"])["event_id"]: d for d in store.query_dead_letters()
               if d["payload"].startswith(b"{") and len(d["payload"]) == d["payload_size"]}  # fmt: skip
    assert "nul-user" in letters  # a small one is kept whole


@pytest.mark.parametrize("serving_overrides", [{"dead_letter_max_bytes": 256, "max_body_bytes": 2**22}])
def test_dead_letters_are_bounded_and_keep_size_and_hash(client: TestClient, store: Any) -> None:
    event = rating("big-letter", "u", "1", value="x" * 1_000_000)
    r = client.post("/events", json=[event])
    assert r.status_code == 422 and len(r.content) < 1000
    (letter,) = store.query_dead_letters()
    assert len(letter["payload"]) == 256 and letter["payload_size"] > 1_000_000
    original = json.dumps(event, sort_keys=True).encode()
    assert letter["payload_sha256"] == hashlib.sha256(original).hexdigest()
    assert len(letter["reason"]) < 400


def test_resending_a_bad_batch_adds_no_dead_letters(client: TestClient, store: Any) -> None:
    batch = [rating(f"d{i}", "u-dl", "1", value=11) for i in range(10)]
    assert client.post("/events", json=batch).status_code == 422
    assert len(store.query_dead_letters()) == 10
    assert client.post("/events", json=batch).status_code == 422
    assert client.post("/events", json={"events": batch[:4]}).status_code == 422
    assert len(store.query_dead_letters()) == 10


# ---------------------------------------------------------------------------------------------------- conflicts
def test_conflicting_duplicates_in_one_batch_are_conflicts(client: TestClient, store: Any, train: Dataset) -> None:
    item = str(train.items.ids[0])
    batch = [rating("c1", "u-conf", item, 5), rating("c1", "u-conf", item, 5), rating("c1", "u-conf", item, 2)]
    r = client.post("/events", json=batch)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["accepted"], body["duplicates"], body["conflicts"], body["rejected_total"]) == (1, 1, 1, 1)
    (conflict,) = body["rejected"]
    assert conflict["index"] == 2 and conflict["code"] == "conflict" and conflict["event_id"] == "c1"
    assert "event 0" in conflict["reason"] and "rating" in conflict["reason"]
    (stored,) = store.query_events(user_id="u-conf")
    assert stored["rating"] == 5.0
    assert metric(client, 'tastebud_serving_events_received_total{outcome="conflict"} 1.0')


def test_an_event_id_stored_with_other_content_is_a_conflict(client: TestClient, store: Any, train: Dataset) -> None:
    item = str(train.items.ids[0])
    assert client.post("/events", json=[rating("s1", "u-st", item, 5)]).json()["accepted"] == 1
    same = client.post("/events", json=[rating("s1", "u-st", item, 5)]).json()
    assert (same["duplicates"], same["conflicts"]) == (1, 0)
    other = client.post("/events", json=[rating("s1", "u-st", item, 3), rating("s2", "u-st", item, 4)])
    assert other.status_code == 200
    body = other.json()
    assert (body["accepted"], body["duplicates"], body["conflicts"]) == (1, 0, 1)
    assert body["rejected"][0]["code"] == "conflict" and "stored already" in body["rejected"][0]["reason"]
    assert {e["event_id"]: e["rating"] for e in store.query_events(user_id="u-st")} == {"s1": 5.0, "s2": 4.0}


# ---------------------------------------------------------------------------------------------------- the id rule
def test_recommend_strips_ids_like_the_events_do(client: TestClient, train: Dataset) -> None:
    liked = [str(i) for i in train.items.ids[[3, 17, 42]]]
    r = client.post("/events", json=[rating(f"p{n}", "  padded-user ", i) for n, i in enumerate(liked)])
    assert r.status_code == 200 and r.json()["users_updated"] == 1
    plain = client.get("/recommend/padded-user").json()
    spaced = client.get("/recommend/%20padded-user%20").json()
    posted = client.post("/recommend", json={"user_id": " padded-user\t"}).json()
    assert plain["is_fallback"] is False
    for body in (spaced, posted):
        assert body["user_id"] == "padded-user"
        assert [x["item_id"] for x in body["recommendations"]] == [x["item_id"] for x in plain["recommendations"]]


@pytest.mark.parametrize(
    ("method", "path", "payload", "field"),
    [
        ("POST", "/recommend", {"user_id": "u" * 100_000}, "user_id"),
        ("POST", "/recommend", {"user_id": "a\x00b"}, "user_id"),
        ("POST", "/recommend", {"user_id": "   "}, "user_id"),
        ("GET", "/recommend/" + "u" * 129, None, "user_id"),
        ("GET", "/recommend/a%00b", None, "user_id"),
        ("GET", "/recommend/%20", None, "user_id"),
        ("POST", "/similar", {"item_id": "i\x07"}, "item_id"),
        ("GET", "/similar/a%1Fb", None, "item_id"),
        ("GET", "/items/" + "i" * 200, None, "item_id"),
        ("GET", "/users/a%00/history", None, "user_id"),
        ("GET", "/trace/" + "r" * 300, None, "request_id"),
    ],
)
def test_invalid_ids_are_422_naming_the_field_and_never_logged(
    client: TestClient, writer: FakeWriter, method: str, path: str, payload: Any, field: str
) -> None:
    r = client.request(method, path, json=payload)
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error"] == "invalid_request" and body["message"].startswith(f"{field}:")
    assert body["details"] == [{"field": field, "rule": body["message"].split(": ", 1)[1]}]
    assert len(r.content) < 500
    for record in writer.pending_records:  # failed list requests are logged: never with the raw id
        for key in ("user_id", "item_id"):
            value = record.get(key)
            assert value is None or (len(value) <= 128 and "\x00" not in value)


def test_valid_ids_still_work_everywhere(client: TestClient, train: Dataset) -> None:
    user, item = str(train.users.ids[0]), str(train.items.ids[0])
    assert client.get(f"/recommend/{user}").status_code == 200
    assert client.get(f"/similar/%20{item}").json()["item_id"] == item
    assert client.get(f"/items/{item}%20").json()["item_id"] == item
    assert client.get(f"/users/%20{user}/history").json()["user_id"] == user
