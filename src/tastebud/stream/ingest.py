"""Write validated events to the store: the HTTP ingest path, and the batch write the Kafka consumer shares.

``POST /events`` calls :func:`ingest_events` with the request's list of event dicts; the response reports how many
were stored, how many the store held already (a retry or a redelivery) and why each rejected one was rejected.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from tastebud.stream.handlers import DEFAULT_RULES, Event, EventRules, Rejected, normalise_events
from tastebud.stream.metrics import StreamMetrics


class EventStore(Protocol):
    """What the event path needs of :class:`tastebud.store.Store`."""

    def write_events(self, records: Sequence[dict[str, Any]]) -> tuple[int, int]: ...  # pragma: no cover

    # A store whose ``write_events`` takes ``validated=True`` (skipping its own per-row checks) says so with a
    # true ``accepts_validated`` attribute; the events written here are always validated already.

    def write_dead_letters(self, records: Sequence[dict[str, Any]]) -> int: ...  # pragma: no cover


@dataclass
class IngestResult:
    """Outcome of one ingest call.

    Attributes:
        accepted: events newly written to the store.
        duplicates: valid events the store already held (same ``event_id``).
        rejected: one ``{"index", "event_id", "reason", "code"}`` per invalid event (index into the input list).
        events: the valid events (new and duplicate), for callers that fold users in.
    """

    accepted: int
    duplicates: int
    rejected: list[dict[str, Any]] = field(default_factory=list)
    events: list[Event] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (the ``POST /events`` response body)."""
        return {"accepted": self.accepted, "duplicates": self.duplicates, "rejected": self.rejected}


def ingest_events(
    store: EventStore,
    events: Sequence[Any],
    *,
    source: str = "http",
    rules: EventRules = DEFAULT_RULES,
    dead_letter: bool = True,
    metrics: StreamMetrics | None = None,
    now: float | None = None,
) -> IngestResult:
    """Validate event dicts and write the valid ones to the store in one transaction.

    Invalid events do not stop the valid ones: they are reported in ``rejected`` and, with ``dead_letter``, kept in
    the store's dead-letter table with the reason (payload: the event as JSON).

    Args:
        store: the event store.
        events: event dicts (see :mod:`tastebud.stream.handlers` for the fields).
        source: recorded with each event and used as metric label.
        rules: validation limits.
        dead_letter: also write rejected events to the dead-letter table.
        metrics: counters to update.
        now: current time, epoch seconds (tests).

    Raises:
        StoreError: the store could not be written (nothing was written; the caller may retry the same events).
    """
    valid, rejected = normalise_events(events, source=source, rules=rules, now=now)
    inserted, duplicates = write_events(store, valid, source=source, metrics=metrics)
    if rejected and dead_letter:
        write_dead_letters(store, [r for _, r in rejected], source=source, metrics=metrics)
    elif rejected and metrics is not None:
        count_rejected(metrics, [r for _, r in rejected], source)
    report = [{"index": i, "event_id": r.event_id, "reason": r.reason, "code": r.code} for i, r in rejected]
    return IngestResult(inserted, duplicates, report, valid)


def write_events(
    store: EventStore, events: Sequence[Event], *, source: str, metrics: StreamMetrics | None = None
) -> tuple[int, int]:
    """Write events in one store transaction; returns ``(inserted, duplicates)`` and counts them."""
    if not events:
        return 0, 0
    records = [e.to_record() for e in events]
    if getattr(store, "accepts_validated", False):
        inserted, duplicates = store.write_events(records, validated=True)  # type: ignore[call-arg]
    else:
        inserted, duplicates = store.write_events(records)
    if metrics is not None:
        for kind, n in Counter(e.kind for e in events).items():
            metrics.ingested.labels(source, kind).inc(n)
        if duplicates:
            metrics.duplicates.labels(source).inc(duplicates)
    return inserted, duplicates


def dead_letter_records(rejected: Sequence[Rejected], *, source: str) -> list[dict[str, Any]]:
    """Dead-letter rows for rejected events or messages: source, ``code: reason`` and the original bytes."""
    now = datetime.now(UTC)
    return [
        {"source": source, "reason": f"{r.code}: {r.reason}", "payload": payload_bytes(r.payload), "received_at": now}
        for r in rejected
    ]


def write_dead_letters(
    store: EventStore, rejected: Sequence[Rejected], *, source: str, metrics: StreamMetrics | None = None
) -> int:
    """Keep rejected events in the store's dead-letter table; returns how many were written."""
    if not rejected:
        return 0
    written = store.write_dead_letters(dead_letter_records(rejected, source=source))
    if metrics is not None:
        count_rejected(metrics, rejected, source)
    return written


def count_rejected(metrics: StreamMetrics, rejected: Sequence[Rejected], source: str) -> None:
    """Count rejections by reason code."""
    for code, n in Counter(r.code for r in rejected).items():
        metrics.dead_lettered.labels(source, code).inc(n)


def payload_bytes(payload: Any) -> bytes:
    """The original input as bytes: message bytes as they were, anything else as JSON (``repr`` if not JSON-able)."""
    if isinstance(payload, bytes | bytearray | memoryview):
        return bytes(payload)
    try:
        return json.dumps(payload, default=str, sort_keys=True).encode("utf-8")
    except (TypeError, ValueError):
        return repr(payload).encode("utf-8")
