"""The Kafka consumer against a real broker (Tansu): exactly once in the store, dead letters, crashes, outages."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from tastebud.stream.consumer import DLQ_CODE, DLQ_ORIGIN, DLQ_REASON, EventConsumer
from tastebud.stream.handlers import Event, encode_event
from tastebud.stream.metrics import StreamMetrics
from tastebud.stream.producer import EventProducer, ensure_topics
from tastebud.stream.schemas import default_schemas

pytestmark = pytest.mark.integration

HERE = Path(__file__).parent


def make_events(n: int, tag: str) -> list[Event]:
    """Alternating ratings and interactions with distinct ids."""
    out = []
    for i in range(n):
        if i % 2:
            out.append(
                Event(f"{tag}-{i}", f"u{i % 7}", f"i{i % 11}", "rating", 1.0 + i % 5, 1.0 + i % 5, 1_000 + i, "kafka")
            )
        else:
            out.append(Event(f"{tag}-{i}", f"u{i % 7}", f"i{i % 11}", "play", None, float(i % 4), 1_000 + i, "kafka"))
    return out


def producer_for(broker, topics) -> EventProducer:
    return EventProducer(broker.bootstrap, ratings_topic=topics["ratings"], interactions_topic=topics["interactions"])


def consumer_for(store, broker, topics, fast_consumer, **kwargs) -> EventConsumer:
    kwargs.setdefault("group_id", f"g-{uuid.uuid4().hex[:8]}")
    return EventConsumer(
        store,
        broker.bootstrap,
        topics=[topics["ratings"], topics["interactions"]],
        dead_letter_topic=topics["dead_letter"],
        config=fast_consumer,
        **kwargs,
    )


def read_topic(bootstrap: str, topic: str, expected: int, timeout: float = 10.0) -> list:
    """Every message of a topic (both partitions), by direct assignment (no group)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "reader", "enable.auto.commit": False})
    c.assign([TopicPartition(topic, p, 0) for p in (0, 1)])
    got, deadline = [], time.monotonic() + timeout
    while len(got) < expected and time.monotonic() < deadline:
        got += [m for m in c.consume(100, timeout=0.2) if m.error() is None]
    c.close()
    return got


def stored_ids(store) -> list[str]:
    return [r["event_id"] for r in store.query_events()]


def test_valid_malformed_and_redelivered_messages(store, broker, topics, fast_consumer):
    producer = producer_for(broker, topics)
    events = make_events(200, "a")
    producer.send_events(events)
    producer.send_events(events[:20])  # a producer retry: same ids again
    schemas = default_schemas()
    bad = {
        b"not avro at all": "bad_header",
        b'{"event_id": "j"}': "bad_header",
        schemas.encode("rating", {"event_id": "r9", "user_id": "u", "item_id": "i", "rating": 9.0, "timestamp": 1}): (
            "out_of_range"
        ),
        schemas.encode(
            "interaction", {"event_id": "k", "user_id": "u", "item_id": "i", "kind": "share", "timestamp": 1}
        ): "invalid_kind",
        encode_event(events[0])[1][:-3]: "decode_error",
    }
    for data in bad:
        producer.send(topics["interactions"], data)
    assert producer.flush(10) == 0 and producer.take_failures() == []

    seen: list[Event] = []
    metrics = StreamMetrics()
    consumer = consumer_for(store, broker, topics, fast_consumer, on_events=seen.extend, metrics=metrics)
    stats = consumer.run(max_messages=225, max_seconds=30)

    ids = stored_ids(store)
    assert sorted(ids) == sorted(e.event_id for e in events)
    assert len(ids) == len(set(ids)) == 200
    assert (stats.inserted, stats.duplicates, stats.dead_lettered) == (200, 20, 5)
    assert {e.event_id for e in seen} == set(ids)
    row = next(r for r in store.query_events() if r["event_id"] == "a-1")
    assert (row["kind"], row["rating"], row["source"]) == ("rating", 2.0, "kafka")

    letters = read_topic(broker.bootstrap, topics["dead_letter"], 5)
    assert {m.value(): dict(m.headers())[DLQ_CODE].decode() for m in letters} == bad
    headers = dict(letters[0].headers())
    assert headers[DLQ_REASON] and headers[DLQ_ORIGIN].decode().startswith(topics["interactions"] + "/")
    assert store.query_dead_letters() == []  # the topic took them all
    dead = sum(
        metrics.registry.get_sample_value(
            "tastebud_stream_dead_lettered_events_total", {"source": "kafka", "reason": code}
        )
        or 0
        for code in set(bad.values())
    )
    assert dead == 5
    assert consumer.state == "stopped"


def test_dead_letters_go_to_the_table_when_the_topic_fails(store, broker, topics, fast_consumer):
    producer = producer_for(broker, topics)
    producer.send(topics["ratings"], b"garbage")
    producer.send_events(make_events(3, "b"))
    producer.flush(10)

    class FailingProducer:
        def send(self, *args, **kwargs):
            self.sent = [*getattr(self, "sent", []), args[1]]

        def flush(self, timeout):
            return len(self.sent)

        def purge(self):
            pass

        def take_failures(self):
            from tastebud.stream.producer import DeliveryFailure

            return [DeliveryFailure("dlq", None, v, None, "purged") for v in self.sent]

    consumer = consumer_for(store, broker, topics, fast_consumer)
    consumer._dlq = FailingProducer()
    stats = consumer.run(max_messages=4, max_seconds=20)
    assert stats.dead_letters_to_table == 1
    letters = store.query_dead_letters()
    assert len(letters) == 1 and letters[0]["payload"] == b"garbage"
    assert letters[0]["reason"].startswith("bad_header:") and f"{topics['ratings']}/" in letters[0]["reason"]
    assert len(stored_ids(store)) == 3


def test_killed_between_store_write_and_commit(store, broker, topics, fast_consumer, tmp_path):
    events = make_events(1000, "c")
    producer = producer_for(broker, topics)
    producer.send_events(events)
    assert producer.flush(10) == 0
    group = f"g-{uuid.uuid4().hex[:8]}"
    marker = tmp_path / "hung"
    url = f"sqlite:///{tmp_path / 'events.db'}"
    proc = subprocess.Popen(
        [
            sys.executable,
            str(HERE / "consumer_proc.py"),
            broker.bootstrap,
            group,
            url,
            str(marker),
            "3",
            topics["ratings"],
            topics["interactions"],
        ],
    )
    try:
        deadline = time.monotonic() + 30
        while not marker.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        assert marker.exists(), "the consumer process never reached its third batch"
        os.kill(proc.pid, signal.SIGKILL)  # stored, not committed
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)

    from tastebud.store import create_store

    crashed = create_store(url=url)
    before = len(stored_ids(crashed))
    assert 0 < before < 1000
    consumer = consumer_for(crashed, broker, topics, fast_consumer, group_id=group)
    stats = consumer.run(idle_timeout=2.0, max_seconds=40)
    ids = stored_ids(crashed)
    assert len(ids) == len(set(ids)) == 1000
    assert set(ids) == {e.event_id for e in events}
    assert stats.duplicates >= 100  # the last batch was stored but not committed, so it came again
    assert stats.inserted == 1000 - before
    crashed.close()


def test_broker_down_at_start_then_up(store, broker_factory, fast_consumer, unused_port):
    port = unused_port
    bootstrap = f"127.0.0.1:{port}"
    metrics = StreamMetrics()
    consumer = EventConsumer(
        store,
        bootstrap,
        topics=["r", "i"],
        dead_letter_topic="dlq",
        config=fast_consumer,
        metrics=metrics,
        backoff_initial=0.05,
        backoff_max=0.5,
    )
    thread = threading.Thread(target=consumer.run, kwargs={"max_messages": 10, "max_seconds": 40}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while consumer.state != "disconnected" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert consumer.state == "disconnected"
    assert (
        metrics.registry.get_sample_value(
            "tastebud_stream_consumer_state", {"tastebud_stream_consumer_state": "disconnected"}
        )
        == 1.0
    )

    b = broker_factory(port)
    ensure_topics(b.bootstrap, ["r", "i", "dlq"])
    producer = EventProducer(b.bootstrap, ratings_topic="r", interactions_topic="i")
    producer.send_events(make_events(10, "d"))
    assert producer.flush(10) == 0
    thread.join(timeout=40)
    assert not thread.is_alive()
    assert sorted(stored_ids(store)) == sorted(e.event_id for e in make_events(10, "d"))
    assert consumer.stats.inserted == 10


def test_broker_lost_mid_run_then_back(store, broker_factory, fast_consumer, unused_port, caplog):
    port = unused_port
    b = broker_factory(port)
    ensure_topics(b.bootstrap, ["r", "i", "dlq"])
    consumer = EventConsumer(
        store,
        b.bootstrap,
        topics=["r", "i"],
        dead_letter_topic="dlq",
        config=fast_consumer,
        backoff_initial=0.05,
        backoff_max=0.5,
    )
    thread = threading.Thread(target=consumer.run, kwargs={"max_messages": 20, "max_seconds": 50}, daemon=True)
    with caplog.at_level("INFO", logger="tastebud.stream.consumer"):
        thread.start()
        producer = EventProducer(b.bootstrap, ratings_topic="r", interactions_topic="i")
        producer.send_events(make_events(10, "e"))
        producer.flush(10)
        deadline = time.monotonic() + 20
        while consumer.stats.inserted < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert consumer.stats.inserted == 10
        b.stop()
        deadline = time.monotonic() + 20
        while consumer.state != "disconnected" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert consumer.state == "disconnected"
        time.sleep(1.0)  # several retries while down: still one log line
        b2 = broker_factory(port)  # memory storage: the topics and offsets start empty again
        ensure_topics(b2.bootstrap, ["r", "i", "dlq"])
        producer = EventProducer(b2.bootstrap, ratings_topic="r", interactions_topic="i")
        producer.send_events(make_events(10, "f"))
        producer.flush(10)
        thread.join(timeout=40)
    assert not thread.is_alive()
    assert consumer.stats.inserted == 20
    downs = [r for r in caplog.records if "consumer disconnected" in r.getMessage()]
    assert len(downs) == 1
