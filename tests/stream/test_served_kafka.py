"""Kafka mode of the request log: responses published as ``recommendation_served`` events, written by the consumer.

With ``stream.bootstrap_servers`` set the app publishes each response's request-log record instead of writing it,
and :class:`EventConsumer` (``served_topic``) writes the records to the store's request log, once each. The broker
is Tansu with memory storage, so a "restart" is a new, empty broker on the same address: what these tests can
show is that records produced while the broker is down wait in the producer's buffer and reach the request log
once it is back, and that records consumed before the outage stay stored (exactly once, no loss, no duplicate).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
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
from tastebud.store import RequestLogWriter, Store, create_store
from tastebud.store.schema import RequestLogRecord
from tastebud.stream.consumer import EventConsumer
from tastebud.stream.handlers import Event
from tastebud.stream.producer import EventProducer, ensure_topics
from tastebud.stream.schemas import default_schemas
from tastebud.stream.served import ServedPublisher, encode_served, handle_served_messages, served_message

from .conftest import Broker


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    train = generate_synthetic(120, 80, 2400, seed=5)
    model = create("als", factors=8, iterations=3, random_state=0, num_threads=1).fit(train)
    path = write_bundle(model, tmp_path_factory.mktemp("bundle") / "als", train=train,
                        fallback={"popular": create("popular").fit(train)}, metrics={})  # fmt: skip
    return path, [str(u) for u in train.users.ids[:10].tolist()]


def _record(request_id: str, **changes: Any) -> RequestLogRecord:
    record = RequestLogRecord(
        request_id, datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC), "recommend", "u1", None, "ml", 3,
        "champion", ["i1", "i2"], [0.123456789012, -1.5], 2.25, 200, True, "unknown_user", "B",
        {"request_id": request_id, "git_sha": "abc"}, "exp-1", {"variant": "B", "bucket": 7},
    )  # fmt: skip
    return record._replace(**changes)


def test_a_record_survives_the_round_trip_through_a_message() -> None:
    record = _record("r-1")
    data = default_schemas().encode("recommendation_served", served_message(record))
    (good, bad) = handle_served_messages([data])
    assert bad == [] and len(good) == 1
    assert good[0][1] == record  # every field, the scores at full precision, the timestamp to the µs
    failed = _record("r-2", model_name=None, model_version=None, alias=None, item_ids=[], scores=[], status_code=503)
    back = handle_served_messages([default_schemas().encode("recommendation_served", served_message(failed))])[0]
    assert back[0][1] == failed  # "no model" is kept as null, not as an empty name


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"model_name": None, "model_version": None, "alias": None, "item_ids": [], "scores": [], "status_code": 503},
        {"user_id": "ünïcødé-✓", "item_ids": ["x" * 5000, "é"], "scores": [1e300, -0.0], "model_version": 70_000},
        {"provenance": {"request_id": "r", "nested": {"a": [1, 2.5, None]}}, "exposure": None, "latency_ms": 1e-9},
    ],
)
def test_the_hand_written_encoder_writes_what_the_generic_one_does(changes: dict[str, Any]) -> None:
    schemas = default_schemas()
    record = _record("r-enc", **changes)
    header = schemas.encode("recommendation_served", served_message(record))[:3]
    fast = encode_served(record, header)
    assert fast == schemas.encode("recommendation_served", served_message(record))
    assert handle_served_messages([fast])[0][0][1] == record


def test_embedded_path_keeps_the_in_process_writer(bundle: tuple[Path, list[str]], tmp_path: Path) -> None:
    holder = ModelHolder(None, name="ml")
    holder.load_path(bundle[0], version=1)
    for stream, kind in (({}, RequestLogWriter), ({"bootstrap_servers": "127.0.0.1:9", "publish_served": False},
                                                   RequestLogWriter)):  # fmt: skip
        settings = build_settings(home=tmp_path / kind.__name__, stream=stream)
        with TestClient(create_app(settings, holder=holder, watch=False)) as client:
            assert type(client.app.state.request_log) is kind


def _consume(store: Store, bootstrap: str, served_topic: str, **kwargs: Any) -> tuple[EventConsumer, threading.Thread]:
    consumer = EventConsumer(
        store, bootstrap, topics=[], served_topic=served_topic, group_id=f"served-{uuid.uuid4().hex[:8]}",
        config={"session.timeout.ms": 1000, "heartbeat.interval.ms": 100}, backoff_max=0.5, **kwargs,
    )  # fmt: skip
    thread = threading.Thread(target=consumer.run, kwargs={"max_seconds": 240}, daemon=True)
    thread.start()
    return consumer, thread


def _stored(store: Store, ids: set[str], timeout: float) -> list[str]:
    """Request ids of the request log that are in ``ids`` (with repeats, if any), once all arrived or at timeout."""
    deadline = time.monotonic() + timeout
    while True:
        got = [r["request_id"] for r in store.query_request_logs() if r["request_id"] in ids]
        if set(got) == ids or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


@pytest.fixture
def kafka_app(
    bundle: tuple[Path, list[str]], broker_factory: Any, unused_port: int, tmp_path: Path
) -> Iterator[tuple[TestClient, Broker, Store, str]]:
    broker = broker_factory(unused_port)
    topic = f"served-{uuid.uuid4().hex[:8]}"
    ensure_topics(broker.bootstrap, [topic], partitions=2)
    url = f"sqlite:///{tmp_path / 'store.db'}"
    settings = build_settings(
        home=tmp_path, store={"url": url}, serving={"model_name": "ml", "watch_interval_s": 0},
        stream={"bootstrap_servers": broker.bootstrap, "served_topic": topic, "served_timeout_s": 120},
    )  # fmt: skip
    holder = ModelHolder(None, name="ml")
    holder.load_path(bundle[0], version=1)
    store = create_store(url=url)
    store.init_schema()
    consumer, thread = _consume(store, broker.bootstrap, topic, dead_letter_topic=None)
    try:
        with TestClient(create_app(settings, holder=holder, watch=False)) as client:
            yield client, broker, store, topic
    finally:
        consumer.stop()
        thread.join(timeout=30)
        store.close()


def _serve(client: TestClient, users: list[str], n: int) -> dict[str, dict[str, Any]]:
    out = {}
    for i in range(n):
        started = time.perf_counter()
        response = client.get(f"/recommend/{users[i % len(users)]}?k=5")
        assert time.perf_counter() - started < 1.0  # never waits for the broker
        assert response.status_code == 200, response.text
        body = response.json()
        out[body["provenance"]["request_id"]] = body
    return out


def test_served_records_reach_the_request_log_once_across_a_broker_restart(
    kafka_app: tuple[TestClient, Broker, Store, str], bundle: tuple[Path, list[str]], broker_factory: Any
) -> None:
    client, broker, store, topic = kafka_app
    assert isinstance(client.app.state.request_log, ServedPublisher)
    users = bundle[1]
    before = _serve(client, users, 30)
    got = _stored(store, set(before), 90)
    assert sorted(got) == sorted(before), "records lost or duplicated before the outage"
    row = store.get_request(next(iter(before)))
    assert row is not None
    body = before[row["request_id"]]
    assert row["item_ids"] == [r["item_id"] for r in body["recommendations"]]
    assert row["scores"] == [r["score"] for r in body["recommendations"]]
    assert (row["endpoint"], row["model_version"], row["status_code"]) == ("recommend", 1, 200)
    assert row["provenance"]["request_id"] == row["request_id"]

    broker.stop()  # SIGKILL
    during = _serve(client, users, 30)  # served while the broker is down: buffered by the producer
    time.sleep(1.0)
    assert not set(_stored(store, set(during), 0)), "a record was stored while no broker was running"
    assert len(client.app.state.request_log) == len(during)

    back = broker_factory(broker.port)  # memory storage: a new, empty broker on the same address
    ensure_topics(back.bootstrap, [topic], partitions=2)
    everything = {**before, **during}
    got = _stored(store, set(everything), 120)
    assert sorted(got) == sorted(everything), f"lost: {sorted(set(everything) - set(got))}"
    publisher = client.app.state.request_log
    assert publisher.failed == 0 and publisher.dropped == 0
    metrics = client.get("/metrics").text
    assert f'tastebud_stream_produced_messages_total{{topic="{topic}"}} 60.0' in metrics


def test_redelivered_and_malformed_served_messages(broker: Broker, tmp_path: Path) -> None:
    topic = f"served-{uuid.uuid4().hex[:8]}"
    ensure_topics(broker.bootstrap, [topic], partitions=1)
    store = create_store(url=f"sqlite:///{tmp_path / 'store.db'}")
    store.init_schema()
    schemas = default_schemas()
    good = schemas.encode("recommendation_served", served_message(_record("r-good")))
    misaligned = served_message(_record("r-bad"))
    misaligned["exact_scores"] = misaligned["scores"] = [1.0]
    rating = schemas.encode(
        "rating", Event("e1", "u1", "i1", "rating", 4.0, 4.0, int(time.time()), "kafka").to_message()[1]
    )
    messages = [good, good, b'{"request_id": "json-by-mistake"}', rating,
                schemas.encode("recommendation_served", misaligned), good]  # fmt: skip
    producer = EventProducer(broker.bootstrap)
    for data in messages:
        producer.send(topic, data)
    assert producer.flush(10) == 0
    consumer = EventConsumer(
        store, broker.bootstrap, topics=[], served_topic=topic, group_id=f"g-{uuid.uuid4().hex[:8]}",
        dead_letter_topic=None, config={"session.timeout.ms": 1000, "heartbeat.interval.ms": 100},
    )  # fmt: skip
    stats = consumer.run(max_messages=len(messages), max_seconds=90)
    assert stats.messages == len(messages)
    assert [r["request_id"] for r in store.query_request_logs()] == ["r-good"]  # three deliveries, one row
    assert (stats.served_inserted, stats.served_duplicates) == (1, 2)
    reasons = sorted(d["reason"] for d in store.query_dead_letters())
    assert len(reasons) == 3, reasons
    assert any("bad_header" in r and "magic byte" in r for r in reasons)
    assert any("wrong_schema" in r and "a rating message, expected recommendation_served" in r for r in reasons)
    assert any("invalid_record" in r and "'r-bad'" in r and "1 scores for 2 item_ids" in r for r in reasons)
    assert all(f"({topic}/0@" in r for r in reasons)  # each names where it came from
    store.close()


def test_a_full_buffer_drops_and_counts_and_a_timed_out_record_is_counted_failed(
    unused_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    from tastebud.monitoring.metrics import ServingMetrics

    metrics = ServingMetrics()
    publisher = ServedPublisher(f"127.0.0.1:{unused_port}", topic="t", buffer=5, timeout_s=1.0, metrics=metrics)
    publisher.start()
    caplog.set_level("WARNING", logger="tastebud.stream.served")
    started = time.perf_counter()
    accepted = [publisher.submit(_record(f"r-{i}")) for i in range(12)]  # no broker listens there
    assert time.perf_counter() - started < 0.5  # never waits for room
    assert accepted == [True] * 5 + [False] * 7
    assert (publisher.submitted, publisher.dropped) == (5, 7)
    assert [r.getMessage() for r in caplog.records if "buffer full" in r.getMessage()] != []
    assert sum("buffer full" in r.getMessage() for r in caplog.records) == 1  # one line, not one per record
    assert publisher.flush(10) is True  # every queued record has an outcome: here, failed after timeout_s
    assert (publisher.delivered, publisher.failed) == (0, 5)
    assert metrics.stream.produce_errors.labels("t")._value.get() == 5
    assert metrics.request_log_dropped._value.get() == 5  # the 7 refused ones are counted by the caller
    assert publisher.close(1) is True


@pytest.mark.parametrize("create_topic", [True, False])
def test_the_publisher_creates_a_missing_served_topic(broker: Broker, create_topic: bool) -> None:
    """A broker that does not create topics on first use (``auto.create.topics.enable=false``) would hold every
    record until it times out, and a consumer subscribed before the topic existed may never see it; the publisher
    creates its topic from the delivery thread (off the request path) as soon as it starts, before any record."""
    from confluent_kafka.admin import AdminClient

    topic = f"served-missing-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    publisher = ServedPublisher(broker.bootstrap, topic=topic, timeout_s=30.0, create_topic=create_topic)
    publisher.start()
    try:
        deadline = time.monotonic() + (15.0 if create_topic else 3.0)
        while topic not in admin.list_topics(timeout=5).topics and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (topic in admin.list_topics(timeout=5).topics) is create_topic
        assert publisher.submitted == 0  # created by the publisher itself, not by a produce request
        if create_topic:
            assert all(publisher.submit(_record(f"m-{i}")) for i in range(5))
            assert publisher.flush(15.0)
            assert (publisher.delivered, publisher.failed) == (5, 0)
    finally:
        publisher.close(0.5)
