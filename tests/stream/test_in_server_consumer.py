"""The serving process consumes Kafka itself: produce -> in-server consumer -> store -> changed ``/recommend``."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tastebud.config import build_settings
from tastebud.data.synthetic import generate_synthetic
from tastebud.models import create
from tastebud.registry.bundle import write_bundle
from tastebud.serving import create_app
from tastebud.serving.holder import ModelHolder
from tastebud.store import Store
from tastebud.stream.handlers import Event
from tastebud.stream.producer import EventProducer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    train = generate_synthetic(150, 90, 3000, seed=4)
    fallback = {"popular": create("popular").fit(train)}
    model = create("als", factors=8, iterations=3, random_state=0, num_threads=1).fit(train)
    path = write_bundle(model, tmp_path_factory.mktemp("bundle") / "als", train=train, fallback=fallback, metrics={})
    return path, train


@pytest.fixture
def client(
    bundle: tuple[Path, Any], broker: Any, topics: dict[str, str], store: Store, tmp_path: Path
) -> Iterator[TestClient]:
    settings = build_settings(
        home=tmp_path,
        serving={"model_name": "ml", "watch_interval_s": 0, "sparse_history_threshold": 0},
        stream={
            "bootstrap_servers": broker.bootstrap,
            "consume_in_server": True,
            "ratings_topic": topics["ratings"],
            "interactions_topic": topics["interactions"],
            "dead_letter_topic": topics["dead_letter"],
            "group_id": f"serving-{uuid.uuid4().hex[:8]}",
        },
    )
    holder = ModelHolder(None, name="ml")
    holder.load_path(bundle[0], version=1)
    app = create_app(settings, holder=holder, store=store, watch=False)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def recs(client: TestClient, user: str) -> dict[str, Any]:
    r = client.get(f"/recommend/{user}?k=10")
    assert r.status_code == 200, r.text
    return r.json()


def test_produced_events_change_recommend(
    client: TestClient, broker: Any, topics: dict[str, str], store: Store, bundle: tuple[Path, Any]
) -> None:
    train = bundle[1]
    user = "kafka-new-user"
    assert recs(client, user)["is_fallback"] is True
    liked = [str(i) for i in train.items.ids[[2, 9, 30]]]
    producer = EventProducer(
        broker.bootstrap, ratings_topic=topics["ratings"], interactions_topic=topics["interactions"]
    )
    now = int(time.time())
    for n, item in enumerate(liked):
        producer.send_event(Event(f"k{n}", user, item, "rating", 5.0, 5.0, now, "test"))
    producer.flush(10)
    producer.close()
    deadline = time.monotonic() + 60  # includes the consumer joining its group
    body = recs(client, user)
    while body["is_fallback"] and time.monotonic() < deadline:
        time.sleep(0.05)
        body = recs(client, user)
    assert body["is_fallback"] is False, "the in-server consumer never folded the events in"
    got = [it["item_id"] for it in body["recommendations"]]
    assert len(got) == 10 and not set(liked) & set(got)
    assert sorted(e["event_id"] for e in store.query_events(user_id=user)) == ["k0", "k1", "k2"]
