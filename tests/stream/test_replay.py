"""Replay of a dataset as a stream: ordering, ids, pacing, and the HTTP and Kafka sinks end to end."""

from __future__ import annotations

import json
import uuid

import httpx
import polars as pl
import pytest

from tastebud.data.dataset import Dataset
from tastebud.errors import ParameterError, StreamError
from tastebud.stream.consumer import EventConsumer
from tastebud.stream.ingest import ingest_events
from tastebud.stream.producer import EventProducer
from tastebud.stream.replay import HttpSink, KafkaSink, dataset_events, replay


class FakeClock:
    """A clock that only moves when the replay sleeps."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class ListSink:
    def __init__(self, clock: FakeClock | None = None) -> None:
        self.batches: list[tuple[float, list]] = []
        self.clock = clock
        self.closed = False

    def send(self, events) -> None:
        self.batches.append((self.clock() if self.clock else 0.0, list(events)))

    def close(self) -> None:
        self.closed = True


def test_events_are_in_time_order_with_stable_ids(toy_dataset):
    events = list(dataset_events(toy_dataset))
    assert len(events) == toy_dataset.n_interactions
    stamps = [e.timestamp for e in events]
    assert stamps == sorted(stamps)
    assert len({e.event_id for e in events}) == len(events)
    assert [e.event_id for e in dataset_events(toy_dataset)] == [e.event_id for e in events]
    assert all(e.kind == "rating" and 1 <= e.rating <= 5 and e.source == "replay" for e in events)
    frame = toy_dataset.to_frame()
    assert {(e.user_id, e.item_id) for e in events} == set(zip(frame["user_id"], frame["item_id"], strict=True))


def test_implicit_rows_become_interactions():
    frame = pl.DataFrame(
        {"user_id": ["a", "a", "b"], "item_id": ["x", "y", "x"], "value": [3.0, 1.0, 2.0], "timestamp": [30, 10, 20]}
    )
    events = list(dataset_events(Dataset.from_frame(frame, name="plays"), kind="play", limit=2))
    assert [(e.item_id, e.kind, e.value, e.rating) for e in events] == [
        ("y", "play", 1.0, None),
        ("x", "play", 2.0, None),
    ]
    with pytest.raises(ParameterError, match="kind 'rating'"):
        next(dataset_events(Dataset.from_frame(frame), kind="rating"))


def test_rate_paces_batches(toy_dataset):
    clock = FakeClock()
    sink = ListSink(clock)
    events = list(dataset_events(toy_dataset))[:250]
    stats = replay(events, sink, rate=1000, batch_size=40, tick=0.02, clock=clock, sleep=clock.sleep)
    assert stats.sent == 250 and sink.closed
    assert sum(len(b) for _, b in sink.batches) == 250
    # 250 events at 1000/s: the last one is due 0.249 s after the start.
    assert stats.seconds == pytest.approx(0.249, abs=0.021)
    # Events due within one tick (20 at this rate) ride together: batches, not one send per event.
    assert len(sink.batches) <= 250 / 20 + 1
    sent = 0
    for at, batch in sink.batches:
        assert at - 100.0 >= (sent + len(batch) - 1) / 1000 - 0.02 - 1e-9  # never more than a tick ahead
        sent += len(batch)


def test_slow_rate_sends_each_event_on_time(toy_dataset):
    clock = FakeClock()
    sink = ListSink(clock)
    replay(list(dataset_events(toy_dataset))[:5], sink, rate=2, clock=clock, sleep=clock.sleep)
    assert [len(b) for _, b in sink.batches] == [1, 1, 1, 1, 1]
    assert [at - 100.0 for at, _ in sink.batches] == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0])


def test_speedup_follows_the_dataset_clock(toy_dataset):
    clock = FakeClock()
    events = list(dataset_events(toy_dataset))
    span = events[-1].timestamp - events[0].timestamp
    stats = replay(events, ListSink(clock), speedup=span / 4, clock=clock, sleep=clock.sleep)
    assert 4.0 - 0.05 <= stats.seconds <= 4.0  # the last events may leave up to one tick early
    assert stats.sent == len(events)


def test_unpaced_replay_does_not_sleep(toy_dataset):
    clock = FakeClock()
    replay(dataset_events(toy_dataset), ListSink(clock), clock=clock, sleep=clock.sleep)
    assert clock.sleeps == []


@pytest.mark.parametrize(("rate", "speedup"), [(0, None), (None, -1)])
def test_bad_pacing(rate, speedup, toy_dataset):
    with pytest.raises(ParameterError):
        replay(dataset_events(toy_dataset), ListSink(), rate=rate, speedup=speedup)


def endpoint(store, seen: list) -> httpx.MockTransport:
    """A stand-in for ``POST /events`` that calls the real ingest function."""

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        result = ingest_events(store, json.loads(request.content)["events"], source="replay")
        return httpx.Response(200, json=result.to_dict())

    return httpx.MockTransport(handle)


def test_http_replay_into_the_store_is_idempotent(toy_dataset, store):
    paths: list[str] = []
    sink = HttpSink("http://tastebud:8000", client=httpx.Client(transport=endpoint(store, paths)))
    stats = replay(dataset_events(toy_dataset), sink, batch_size=64)
    assert stats.sent == toy_dataset.n_interactions
    assert sink.accepted == toy_dataset.n_interactions and sink.rejected == 0
    assert set(paths) == {"/events"} and len(paths) == -(-toy_dataset.n_interactions // 64)
    assert len(store.query_events()) == toy_dataset.n_interactions

    again = HttpSink("http://tastebud:8000/events", client=httpx.Client(transport=endpoint(store, paths)))
    replay(dataset_events(toy_dataset), again, batch_size=1000)
    assert (again.accepted, again.duplicates) == (0, toy_dataset.n_interactions)


def test_http_errors_are_raised_after_retries(toy_dataset):
    calls = []

    def handle(request):
        calls.append(1)
        return httpx.Response(503, text="down")

    sink = HttpSink("http://x", client=httpx.Client(transport=httpx.MockTransport(handle)), retries=2)
    with pytest.raises(StreamError, match="HTTP 503"):
        replay(dataset_events(toy_dataset), sink)
    assert len(calls) == 2


@pytest.mark.integration
def test_kafka_replay_into_the_store(toy_dataset, store, broker, topics, fast_consumer):
    producer = EventProducer(
        broker.bootstrap, ratings_topic=topics["ratings"], interactions_topic=topics["interactions"]
    )
    stats = replay(dataset_events(toy_dataset), KafkaSink(producer), rate=20_000, batch_size=100)
    assert stats.sent == toy_dataset.n_interactions
    consumer = EventConsumer(
        store,
        broker.bootstrap,
        topics=[topics["ratings"], topics["interactions"]],
        group_id=f"g-{uuid.uuid4().hex[:8]}",
        dead_letter_topic=topics["dead_letter"],
        config=fast_consumer,
    )
    consumer.run(max_messages=stats.sent, max_seconds=20)
    rows = store.query_events()
    assert {r["event_id"] for r in rows} == {e.event_id for e in dataset_events(toy_dataset)}
    assert consumer.stats.dead_lettered == 0
