"""Faults of the event transport while serving: the Kafka broker dies under a server that consumes in-process.

The broker (Tansu, memory storage) is killed by its pid while the app serves with ``stream.consume_in_server``:
``/recommend`` keeps answering at once, the consumer reports the loss (``tastebud_stream_consumer_state`` says
``disconnected``, one warning line), and when a broker listens again on the same address consumption resumes
without a restart: every event consumed before the loss is still in the store and every event the producer
had acknowledged afterwards arrives. (Memory storage: the new broker starts with no topics, offsets or messages,
so events produced *while* it is down cannot be tested here; the producer reports those as undelivered.)
"""

from __future__ import annotations

import logging
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
from tastebud.stream.producer import EventProducer, ensure_topics

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TOPICS = {"ratings": "f-ratings", "interactions": "f-interactions", "dead_letter": "f-dlq"}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    train = generate_synthetic(150, 90, 3000, seed=4)
    fallback = {"popular": create("popular").fit(train)}
    model = create("als", factors=8, iterations=3, random_state=0, num_threads=1).fit(train)
    path = write_bundle(model, tmp_path_factory.mktemp("bundle") / "als", train=train, fallback=fallback, metrics={})
    return path, train


def consumer_state(client: TestClient) -> str | None:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("tastebud_stream_consumer_state{") and line.endswith(" 1.0"):
            return line.split('"')[1]
    return None


def produce(bootstrap: str, events: list[Event]) -> None:
    producer = EventProducer(bootstrap, ratings_topic=TOPICS["ratings"], interactions_topic=TOPICS["interactions"])
    producer.send_events(events)
    assert producer.flush(10) == 0  # every event acknowledged by the broker
    producer.close()


def events(tag: str, items: list[str], n: int = 10) -> list[Event]:
    now = int(time.time())
    user = f"{tag}-user"
    return [Event(f"{tag}-{i}", user, items[i % len(items)], "rating", 4.0, 4.0, now, "kafka") for i in range(n)]


def wait_stored(store: Store, ids: set[str], timeout: float) -> set[str]:
    deadline = time.monotonic() + timeout
    while True:
        got = {r["event_id"] for r in store.query_events()} & ids
        if got == ids or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


@pytest.fixture
def serving(
    bundle: tuple[Path, Any], broker_factory: Any, unused_port: int, store: Store, tmp_path: Path
) -> Iterator[tuple[TestClient, Any]]:
    b = broker_factory(unused_port)
    ensure_topics(b.bootstrap, TOPICS.values(), partitions=1)
    settings = build_settings(
        home=tmp_path,
        serving={"model_name": "ml", "watch_interval_s": 0, "sparse_history_threshold": 0},
        stream={"bootstrap_servers": b.bootstrap, "consume_in_server": True, "ratings_topic": TOPICS["ratings"],
                "interactions_topic": TOPICS["interactions"], "dead_letter_topic": TOPICS["dead_letter"],
                "group_id": f"serving-{uuid.uuid4().hex[:8]}"},
    )  # fmt: skip
    holder = ModelHolder(None, name="ml")
    holder.load_path(bundle[0], version=1)
    with TestClient(create_app(settings, holder=holder, store=store, watch=False)) as client:
        yield client, b


def test_broker_lost_while_serving_then_back(
    serving: tuple[TestClient, Any],
    bundle: tuple[Path, Any],
    broker_factory: Any,
    store: Store,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client, broker = serving
    items = [str(i) for i in bundle[1].items.ids[:20].tolist()]
    before = events("before", items)
    caplog.set_level(logging.INFO, logger="tastebud.stream.consumer")
    produce(broker.bootstrap, before)
    assert wait_stored(store, {e.event_id for e in before}, 60) == {e.event_id for e in before}

    broker.stop()  # SIGKILL: the broker is gone
    deadline = time.monotonic() + 30
    slowest = 0.0
    while consumer_state(client) != "disconnected":
        assert time.monotonic() < deadline, "the consumer never reported the lost broker"
        t0 = time.perf_counter()
        r = client.get("/recommend/before-user?k=5")
        slowest = max(slowest, time.perf_counter() - t0)
        assert r.status_code == 200, r.text
        time.sleep(0.1)
    for _ in range(20):  # serving goes on while the broker is down
        t0 = time.perf_counter()
        r = client.get("/recommend/before-user?k=5")
        slowest = max(slowest, time.perf_counter() - t0)
        assert r.status_code == 200 and r.json()["is_fallback"] is False  # the events consumed before still count
    assert slowest < 1.0
    assert client.get("/health").json()["status"] == "ok"
    downs = [r for r in caplog.records if "consumer disconnected" in r.getMessage()]
    assert len(downs) == 1 and downs[0].levelno == logging.WARNING

    back = broker_factory(broker.port)  # the same address again (memory storage: empty)
    ensure_topics(back.bootstrap, TOPICS.values(), partitions=1)
    after = events("after", items)
    produce(back.bootstrap, after)
    want = {e.event_id for e in before + after}
    got = wait_stored(store, want, 90)
    assert got == want, f"lost events: {sorted(want - got)}"
    deadline = time.monotonic() + 30
    while consumer_state(client) != "connected" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert consumer_state(client) == "connected"
    assert "Traceback" not in caplog.text
