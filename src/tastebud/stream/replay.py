"""Replay a dataset as a stream: its interactions in timestamp order, paced, to Kafka or to an HTTP ``/events`` URL.

Event ids are derived from the dataset's snapshot id and the row's position in time order, so replaying the same
dataset twice stores nothing new (the store is idempotent on ``event_id``).

Pacing: ``rate`` caps the events per second; ``speedup`` follows the dataset's own clock, compressed by that factor
(``speedup=3600`` plays an hour of history per second). With both, an event waits for whichever is later.
Events are sent in batches and the pacing sleeps between batches (see ``tick``), never per event.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import polars as pl

from tastebud.data.dataset import Dataset
from tastebud.errors import ParameterError, StreamError
from tastebud.stream.handlers import INTERACTION_KINDS, RATING_KIND, Event

log = logging.getLogger(__name__)


class Sink(Protocol):
    """Where replayed events go."""

    def send(self, events: Sequence[Event]) -> None: ...  # pragma: no cover

    def close(self) -> None: ...  # pragma: no cover


@dataclass
class ReplayStats:
    """Outcome of a replay."""

    sent: int
    seconds: float
    rejected: int = 0

    @property
    def rate(self) -> float:
        """Events per second achieved."""
        return self.sent / self.seconds if self.seconds > 0 else float("inf")


def dataset_events(
    dataset: Dataset, *, kind: str = "view", source: str = "replay", limit: int | None = None
) -> Iterator[Event]:
    """A dataset's interactions as events, oldest first (ties keep the dataset's order).

    Rows with a rating become ``rating`` events; the others become ``kind`` interactions carrying the row's value.
    Rows without a timestamp come last, stamped with the time of the replay.
    """
    if kind not in INTERACTION_KINDS:
        raise ParameterError(f"kind {kind!r} is not one of {', '.join(INTERACTION_KINDS)}")
    now = int(time.time())
    frame = dataset.to_frame().with_row_index("row").sort("timestamp", nulls_last=True, maintain_order=True)
    if limit is not None:
        frame = frame.head(limit)
    frame = frame.with_columns(pl.col("timestamp").fill_null(now))
    prefix = f"{dataset.name}-{dataset.snapshot_id[:12]}-"
    for row, user, item, value, rating, stamp in frame.select(
        "row", "user_id", "item_id", "value", "rating", "timestamp"
    ).iter_rows():
        if rating is not None:
            yield Event(f"{prefix}{row}", user, item, RATING_KIND, float(rating), float(rating), int(stamp), source)
        else:
            yield Event(f"{prefix}{row}", user, item, kind, None, float(value), int(stamp), source)


def replay(
    events: Iterable[Event],
    sink: Sink,
    *,
    rate: float | None = None,
    speedup: float | None = None,
    batch_size: int = 500,
    tick: float = 0.05,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> ReplayStats:
    """Send events to a sink, paced by ``rate`` (events/s) and/or ``speedup`` (see the module docstring).

    Args:
        events: events in time order (see :func:`dataset_events`).
        sink: where they go (:class:`KafkaSink`, :class:`HttpSink`).
        rate: most events per second; unlimited when ``None``.
        speedup: play the events' own timeline this many times faster; ignored when ``None``.
        batch_size: most events per send.
        tick: pacing resolution, seconds: an event may leave up to this much before it is due.
        clock: monotonic clock (tests pass a fake one).
        sleep: how to wait (tests pass a fake one).

    Raises:
        ParameterError: a rate or speedup that is not positive.
    """
    if rate is not None and rate <= 0:
        raise ParameterError(f"--rate must be positive, got {rate}")
    if speedup is not None and speedup <= 0:
        raise ParameterError(f"--speedup must be positive, got {speedup}")
    start = clock()
    first_stamp: int | None = None
    buffer: list[Event] = []
    sent = 0
    for event in events:
        if first_stamp is None:
            first_stamp = event.timestamp
        due = start
        if rate is not None:
            due = max(due, start + (sent + len(buffer)) / rate)
        if speedup is not None:
            due = max(due, start + (event.timestamp - first_stamp) / speedup)
        if due > clock() + tick:
            # Not due within this tick: send what is, then wait. Events due within a tick ride together, so a
            # fast replay sends full batches and a slow one sends each event on time.
            if buffer:
                sink.send(buffer)
                sent += len(buffer)
                buffer = []
            wait = due - clock()
            if wait > 0:
                sleep(wait)
        buffer.append(event)
        if len(buffer) >= batch_size:
            sink.send(buffer)
            sent += len(buffer)
            buffer = []
    if buffer:
        sink.send(buffer)
        sent += len(buffer)
    sink.close()
    return ReplayStats(sent, clock() - start, getattr(sink, "rejected", 0))


class KafkaSink:
    """Send events to their Kafka topics (ratings and interactions) through an :class:`EventProducer`."""

    def __init__(self, producer: Any, *, flush_timeout: float = 30.0) -> None:
        self.producer = producer
        self.flush_timeout = flush_timeout

    def send(self, events: Sequence[Event]) -> None:
        """Queue a batch (delivery is confirmed at :meth:`close`)."""
        self.producer.send_events(events)
        self.producer.poll(0)

    def close(self) -> None:
        """Wait for every delivery.

        Raises:
            StreamError: messages were not delivered (the count and the first error are named).
        """
        remaining = self.producer.flush(self.flush_timeout)
        failures = self.producer.take_failures()
        if remaining or failures:
            first = failures[0].error if failures else "timed out"
            raise StreamError(
                f"replay: {len(failures)} messages failed and {remaining} still queued after "
                f"{self.flush_timeout:g} s (first error: {first})"
            )


class HttpSink:
    """POST events in batches to a Tastebud ``/events`` endpoint as ``{"events": [...]}``.

    Args:
        url: ``http://host:port`` (``/events`` is appended) or the full endpoint URL.
        client: an ``httpx.Client`` to use (tests pass one with a mock transport).
        timeout: per-request timeout, seconds.
        retries: attempts per batch on connection errors and 5xx answers (with exponential backoff).
    """

    def __init__(self, url: str, *, client: Any | None = None, timeout: float = 10.0, retries: int = 3) -> None:
        import httpx

        self.url = url if url.rstrip("/").endswith("/events") else url.rstrip("/") + "/events"
        from tastebud.serving.auth import client_headers

        # with API keys on, the server needs a write-events key: TASTEBUD_API_KEY
        self.client = client if client is not None else httpx.Client(timeout=timeout, headers=client_headers())
        self.retries = retries
        self.accepted = self.duplicates = self.rejected = 0

    def send(self, events: Sequence[Event]) -> None:
        """POST one batch; a rejected event is counted (the server dead-letters it), not fatal.

        Raises:
            StreamError: the endpoint stays unreachable or answers 4xx/5xx for the whole batch.
        """
        import httpx

        body = {"events": [_http_event(e) for e in events]}
        delay = 0.2
        for attempt in range(1, self.retries + 1):
            try:
                response = self.client.post(self.url, json=body)
            except httpx.HTTPError as err:
                problem = f"{type(err).__name__}: {err}"
            else:
                if response.status_code < 300:
                    result = response.json()
                    self.accepted += int(result.get("accepted", 0))
                    self.duplicates += int(result.get("duplicates", 0))
                    # the answer lists the first few rejections; rejected_total counts them all
                    self.rejected += int(result.get("rejected_total", len(result.get("rejected", []))))
                    return
                problem = f"HTTP {response.status_code}: {response.text[:200]}"
                if response.status_code < 500:
                    break  # the request itself is wrong; retrying will not help
            if attempt < self.retries:
                time.sleep(delay)
                delay *= 2
        raise StreamError(f"replay to {self.url} failed: {problem}")

    def close(self) -> None:
        """Close the HTTP client."""
        self.client.close()


def _http_event(event: Event) -> dict[str, Any]:
    record = event.to_record()
    del record["source"]
    if record["rating"] is None:
        del record["rating"]
    return record
