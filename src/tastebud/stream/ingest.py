"""Write validated events to the store: the HTTP ingest path, and the batch write the Kafka consumer shares.

``POST /events`` calls :func:`ingest_events` with the request's list of event dicts; the response reports how many
were stored, how many the store held already (a retry or a redelivery), how many conflict with another event of
the same ``event_id`` and why each rejected one was rejected.

Dead letters are bounded and idempotent: a rejected payload is kept as its first ``dead_letter_max_bytes`` bytes
with the original's size and sha256, and the store keeps one dead letter per source and payload hash, so a resent
batch does not add its dead letters again.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from tastebud.ids import preview
from tastebud.stream.handlers import DEFAULT_RULES, Event, EventRules, Rejected, normalise_event
from tastebud.stream.metrics import StreamMetrics

#: Longest dead-letter reason stored, characters.
MAX_REASON_CHARS = 1000
#: The event fields compared to tell a conflict (same ``event_id``, other content) from a duplicate.
_CONTENT = ("user_id", "item_id", "kind", "rating", "value", "timestamp")


class EventStore(Protocol):
    """What the event path needs of :class:`tastebud.store.Store`."""

    def write_events(self, records: Sequence[dict[str, Any]]) -> tuple[int, int]: ...  # pragma: no cover

    # A store whose ``write_events`` takes ``validated=True`` (skipping its own per-row checks) says so with a
    # true ``accepts_validated`` attribute; the events written here are always validated already.

    def write_dead_letters(self, records: Sequence[dict[str, Any]]) -> int: ...  # pragma: no cover

    # A store with ``events_by_id(event_ids) -> {event_id: row}`` lets :func:`ingest_events` tell an event stored
    # already with other content (a conflict) from a plain duplicate.


@dataclass
class IngestResult:
    """Outcome of one ingest call.

    Attributes:
        accepted: events newly written to the store.
        duplicates: valid events the store already held with the same content (same ``event_id``), or repeated
            identically within the call.
        rejected: one ``{"index", "event_id", "reason", "code"}`` per rejected event (index into the input list),
            in input order; conflicts are among them with code ``conflict``.
        conflicts: events whose ``event_id`` an earlier event of the call, or an event stored already, has with
            other content: not stored (the first one wins), listed in ``rejected``.
        events: the valid events stored or stored already (new and duplicate), for callers that fold users in.
    """

    accepted: int
    duplicates: int
    rejected: list[dict[str, Any]] = field(default_factory=list)
    events: list[Event] = field(default_factory=list, repr=False)
    conflicts: int = 0

    def to_dict(self, max_reported: int | None = None) -> dict[str, Any]:
        """JSON-able summary (the ``POST /events`` response body): ``rejected`` lists the first ``max_reported``
        rejections (all when ``None``) and ``rejected_total`` counts them all."""
        shown = self.rejected if max_reported is None else self.rejected[:max_reported]
        return {
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "conflicts": self.conflicts,
            "rejected": shown,
            "rejected_total": len(self.rejected),
        }


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
    the store's dead-letter table with the reason (payload: the event as JSON, bounded, see
    :func:`dead_letter_records`).

    An event whose ``event_id`` an earlier event of ``events`` carries with other content is a conflict: rejected
    (code ``conflict``, the first one is kept). So is one the store holds already with other content, when the
    store can read events back by id (``events_by_id``); the store's copy stays. An identical repeat is a
    duplicate.

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
    now = time.time() if now is None else now
    rejected: list[tuple[int, Rejected]] = []
    first: dict[str, tuple[int, Event]] = {}
    valid: list[tuple[int, Event]] = []
    repeats: list[tuple[int, Event]] = []  # other content than an earlier event of the call with the same id
    for i, raw in enumerate(events):
        out = normalise_event(raw, source=source, rules=rules, now=now)
        if not isinstance(out, Event):
            rejected.append((i, out))
        elif first.setdefault(out.event_id, (i, out))[1] != out:
            repeats.append((i, out))
        else:
            valid.append((i, out))
    inserted, duplicates = write_events(store, [e for _, e in valid], source=source, metrics=metrics)
    stored: Mapping[str, Mapping[str, Any]] = {}
    if duplicates and hasattr(store, "events_by_id"):
        # Only when the store held some of the ids: then it reads back what it holds, and the stored copy is the
        # one every other event of that id is compared with.
        stored = store.events_by_id(list({e.event_id for _, e in valid}))
        kept: list[tuple[int, Event]] = []
        for i, e in valid:
            row = stored.get(e.event_id)
            if row is not None and not _matches(row, e):
                rejected.append((i, _stored_conflict(events[i], row, e)))
                duplicates -= 1
            else:
                kept.append((i, e))
        valid = kept
    for i, e in repeats:
        row = stored.get(e.event_id)
        j, earlier = first[e.event_id]
        if row is not None and not _matches(row, earlier):  # the store's copy, not the call's first, is the one
            if _matches(row, e):
                duplicates += 1
                valid.append((i, e))
            else:
                rejected.append((i, _stored_conflict(events[i], row, e)))
        else:
            reason = f"event_id {e.event_id!r} conflicts with event {j} of this request ({_diff(earlier, e)})"
            rejected.append((i, Rejected(reason, events[i], "conflict", e.event_id)))
    valid.sort(key=lambda x: x[0])
    rejected.sort(key=lambda x: x[0])
    if rejected and dead_letter:
        write_dead_letters(
            store, [r for _, r in rejected], source=source, metrics=metrics, max_bytes=rules.dead_letter_max_bytes
        )
    elif rejected and metrics is not None:
        count_rejected(metrics, [r for _, r in rejected], source)
    report = [{"index": i, "event_id": r.event_id, "reason": r.reason, "code": r.code} for i, r in rejected]
    conflicts = sum(1 for _, r in rejected if r.code == "conflict")
    return IngestResult(inserted, duplicates, report, [e for _, e in valid], conflicts)


def _stored_conflict(raw: Any, row: Mapping[str, Any], event: Event) -> Rejected:
    reason = f"event_id {event.event_id!r} is stored already with other content ({_diff_row(row, event)})"
    return Rejected(reason, raw, "conflict", event.event_id)


def _diff(a: Event, b: Event) -> str:
    parts = [
        f"{n} {preview(getattr(a, n))} vs {preview(getattr(b, n))}" for n in _CONTENT if getattr(a, n) != getattr(b, n)
    ]
    return ", ".join(parts) or "other content"


def _stored_content(row: Mapping[str, Any]) -> dict[str, Any]:
    ts = row.get("timestamp")
    return {
        "user_id": row.get("user_id"),
        "item_id": row.get("item_id"),
        "kind": row.get("kind"),
        "rating": row.get("rating"),
        "value": row.get("value"),
        "timestamp": int(ts.timestamp()) if isinstance(ts, datetime) else ts,
    }


def _matches(row: Mapping[str, Any], event: Event) -> bool:
    stored = _stored_content(row)
    return all(stored[n] == getattr(event, n) for n in _CONTENT)


def _diff_row(row: Mapping[str, Any], event: Event) -> str:
    stored = _stored_content(row)
    parts = [
        f"{n} {preview(stored[n])} stored vs {preview(getattr(event, n))}"
        for n in _CONTENT
        if stored[n] != getattr(event, n)
    ]
    return ", ".join(parts)


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


def dead_letter_records(
    rejected: Sequence[Rejected], *, source: str, max_bytes: int = DEFAULT_RULES.dead_letter_max_bytes
) -> list[dict[str, Any]]:
    """Dead-letter rows for rejected events or messages: source, ``code: reason`` (at most
    :data:`MAX_REASON_CHARS`), the first ``max_bytes`` bytes of the original (``payload``) and the original's size
    (``payload_size``) and sha256 (``payload_sha256``, which also makes the row idempotent)."""
    now = datetime.now(UTC)
    records = []
    for r in rejected:
        data = payload_bytes(r.payload)
        reason = f"{r.code}: {r.reason}"
        if len(reason) > MAX_REASON_CHARS:
            reason = reason[: MAX_REASON_CHARS - 1] + "…"
        records.append(
            {
                "source": source,
                "reason": reason,
                "payload": data[:max_bytes],
                "payload_size": len(data),
                "payload_sha256": hashlib.sha256(data).hexdigest(),
                "received_at": now,
            }
        )
    return records


def write_dead_letters(
    store: EventStore,
    rejected: Sequence[Rejected],
    *,
    source: str,
    metrics: StreamMetrics | None = None,
    max_bytes: int = DEFAULT_RULES.dead_letter_max_bytes,
) -> int:
    """Keep rejected events in the store's dead-letter table, bounded (see :func:`dead_letter_records`); returns
    how many were written (a payload the table holds already for the source is not written again)."""
    if not rejected:
        return 0
    written = store.write_dead_letters(dead_letter_records(rejected, source=source, max_bytes=max_bytes))
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
        return json.dumps(payload, default=str, sort_keys=True).encode("utf-8", "backslashreplace")
    except (TypeError, ValueError, RecursionError):
        try:
            return repr(payload).encode("utf-8", "backslashreplace")
        except RecursionError:
            return f"<{type(payload).__name__} nested too deeply to keep>".encode()
