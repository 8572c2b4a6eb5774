"""Validate and normalise events: the one place both event paths (HTTP ``POST /events`` and Kafka) go through.

Everything here is pure: bytes or dicts in, :class:`Event` records or :class:`Rejected` out. Nothing raises for a
bad event; a rejection carries a reason a person can act on and a low-cardinality ``code`` for metrics.

Normal form of an event:

- ``event_id``, ``user_id``, ``item_id``: ids under the one id rule of :mod:`tastebud.ids` (surrounding whitespace
  stripped, integers turned into strings, not empty, no control characters, at most ``max_id_length``
  characters); an HTTP event without ``event_id`` gets one derived from its content, so a client's retry of the
  same event stays idempotent;
- ``kind``: ``rating`` or one of :data:`INTERACTION_KINDS` (lower-cased);
- ``rating``: for ``rating`` events only, finite and within the configured range; ``value`` defaults to it;
- ``value``: finite and >= 0 (default 1.0 for interactions);
- ``timestamp``: whole seconds since the Unix epoch, UTC (epoch seconds, an ISO-8601 string with an offset, or an
  aware datetime; the arrival time when absent). Millisecond epochs and times too far in the future are rejected.

Bounded cost: any other string field longer than ``max_field_chars`` and any message larger than
``max_message_bytes`` is rejected before it is parsed further, and no reason quotes more of a raw value than a
short :func:`tastebud.ids.preview` (64 characters and the value's length).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tastebud.ids import MAX_ID_LENGTH, InvalidIdError, normalise_id, preview
from tastebud.stream.schemas import MessageError, SchemaSet, default_schemas

#: Kinds of implicit interaction events.
INTERACTION_KINDS: tuple[str, ...] = ("view", "play", "click", "like", "skip")
#: Kind of explicit rating events.
RATING_KIND = "rating"
EVENT_KINDS: frozenset[str] = frozenset((RATING_KIND, *INTERACTION_KINDS))
#: Fields an event dict may carry.
EVENT_FIELDS: frozenset[str] = frozenset(("event_id", "user_id", "item_id", "kind", "rating", "value", "timestamp"))
#: Epoch values above this are not seconds (year 5138): almost surely milliseconds.
_MAX_EPOCH_SECONDS = 1e11


@dataclass(frozen=True)
class EventRules:
    """Limits events must meet.

    Attributes:
        rating_min: smallest valid rating (default 0.5, MovieLens' half stars).
        rating_max: largest valid rating (default 5).
        max_id_length: longest user, item or event id, characters (at most :data:`tastebud.ids.MAX_ID_LENGTH`, the
            width of the store's ``event_id`` column).
        max_future_s: how far in the future a timestamp may lie (clock skew), seconds.
        max_field_chars: longest string in any other field (``kind``, ``timestamp``, a mistyped ``rating``).
        max_message_bytes: largest Kafka message handled; a larger one is dead-lettered unread.
        dead_letter_max_bytes: bytes of a rejected payload kept in the dead-letter table (with the original's size
            and sha256).
    """

    rating_min: float = 0.5
    rating_max: float = 5.0
    max_id_length: int = MAX_ID_LENGTH
    max_future_s: float = 86_400.0
    max_field_chars: int = 64
    max_message_bytes: int = 1024 * 1024
    dead_letter_max_bytes: int = 4096

    @classmethod
    def from_settings(cls, settings: Any) -> EventRules:
        """Rules from the settings, the same for the HTTP and the Kafka path.

        ``settings`` is the whole :class:`tastebud.config.Settings` (the limits of ``settings.serving``:
        ``max_id_chars``, ``max_event_field_chars``, ``max_body_bytes``, ``dead_letter_max_bytes``; and any of
        ``rating_min``, ``rating_max``, ``max_id_length``, ``max_future_s`` of ``settings.stream``) or one section
        (its fields of those names). Absent fields keep their defaults.
        """
        section = getattr(settings, "stream", settings)
        names = ("rating_min", "rating_max", "max_id_length", "max_future_s")
        values = {n: getattr(section, n) for n in names if hasattr(section, n)}
        serving = getattr(settings, "serving", None)
        for name, setting in (
            ("max_id_length", "max_id_chars"),
            ("max_field_chars", "max_event_field_chars"),
            ("max_message_bytes", "max_body_bytes"),
            ("dead_letter_max_bytes", "dead_letter_max_bytes"),
        ):
            if serving is not None and hasattr(serving, setting):
                values[name] = getattr(serving, setting)
        return cls(**values)


DEFAULT_RULES = EventRules()


@dataclass(frozen=True, slots=True)
class Event:
    """A validated, normalised event, ready for the store."""

    event_id: str
    user_id: str
    item_id: str
    kind: str
    rating: float | None
    value: float
    timestamp: int
    source: str

    def to_record(self) -> dict[str, Any]:
        """The record :meth:`Store.write_events` takes."""
        return {
            "event_id": self.event_id,
            "user_id": self.user_id,
            "item_id": self.item_id,
            "kind": self.kind,
            "rating": self.rating,
            "value": self.value,
            "timestamp": self.timestamp,
            "source": self.source,
        }

    def to_message(self) -> tuple[str, dict[str, Any]]:
        """Schema name and Avro record of this event (what the producer sends)."""
        base = {"event_id": self.event_id, "user_id": self.user_id, "item_id": self.item_id}
        if self.kind == RATING_KIND:
            return "rating", {**base, "rating": self.rating, "timestamp": self.timestamp}
        return "interaction", {**base, "kind": self.kind, "value": self.value, "timestamp": self.timestamp}


@dataclass(frozen=True, slots=True)
class Rejected:
    """An event or message that failed validation.

    Attributes:
        reason: what is wrong, for people (names the field and the value).
        payload: the original input (message bytes or the event dict), kept for the dead letter.
        code: low-cardinality reason code (metric label).
        event_id: the event's id when it could be read.
    """

    reason: str
    payload: Any
    code: str = "invalid_event"
    event_id: str | None = None


class _Invalid(Exception):
    def __init__(self, reason: str, code: str = "invalid_field") -> None:
        super().__init__(reason)
        self.reason, self.code = reason, code


# ---------------------------------------------------------------------------------------------------- public API
def normalise_event(
    raw: Any, *, source: str = "http", rules: EventRules = DEFAULT_RULES, now: float | None = None
) -> Event | Rejected:
    """Validate and normalise one event given as a dict (the HTTP path).

    Args:
        raw: a mapping with the fields of :data:`EVENT_FIELDS`; unknown fields are rejected (they are usually
            typos such as ``ratng``).
        source: where the event came from (``http``, ``kafka``, ``replay``), kept in the store.
        rules: limits to enforce.
        now: the current time (epoch seconds) for defaults and the future check; the clock by default.

    Returns:
        The event, or a :class:`Rejected` with the reason.
    """
    if not isinstance(raw, Mapping):
        return Rejected(f"event must be a JSON object, got {type(raw).__name__}", raw, "not_an_object")
    event_id = raw.get("event_id")
    rid = _reported_id(event_id, rules)
    unknown = [k for k in raw if k not in EVENT_FIELDS]
    if unknown:
        names = ", ".join(preview(str(k)) for k in sorted(map(str, unknown[:5])))
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        return Rejected(
            f"unknown field(s) {names}{more}; expected {', '.join(sorted(EVENT_FIELDS))}", raw, "unknown_field", rid
        )
    now = time.time() if now is None else now
    try:
        for name in ("kind", "rating", "value", "timestamp"):
            _short(raw.get(name), name, rules)
        user_id = _identifier(raw.get("user_id"), "user_id", rules)
        item_id = _identifier(raw.get("item_id"), "item_id", rules)
        kind = _kind(raw.get("kind"), raw.get("rating"))
        rating, value = _rating_value(kind, raw.get("rating"), raw.get("value"), rules)
        timestamp = _timestamp(raw.get("timestamp"), now, rules)
        if event_id is None:
            event_id = derive_event_id(user_id, item_id, kind, timestamp, rating, value)
        else:
            event_id = _identifier(event_id, "event_id", rules)
    except _Invalid as err:
        return Rejected(err.reason, raw, err.code, rid)
    return Event(event_id, user_id, item_id, kind, rating, value, timestamp, source)


def normalise_events(
    raws: Sequence[Any], *, source: str = "http", rules: EventRules = DEFAULT_RULES, now: float | None = None
) -> tuple[list[Event], list[tuple[int, Rejected]]]:
    """Normalise a batch of event dicts: the valid events, and ``(index, Rejected)`` for the others."""
    now = time.time() if now is None else now
    events: list[Event] = []
    rejected: list[tuple[int, Rejected]] = []
    for i, raw in enumerate(raws):
        out = normalise_event(raw, source=source, rules=rules, now=now)
        if isinstance(out, Event):
            events.append(out)
        else:
            rejected.append((i, out))
    return events, rejected


def handle_message(
    data: bytes,
    *,
    source: str = "kafka",
    rules: EventRules = DEFAULT_RULES,
    schemas: SchemaSet | None = None,
    now: float | None = None,
) -> Event | Rejected:
    """Decode one Avro message (header + body) and validate the event it carries (the Kafka path).

    A message of a newer schema version than this process knows is accepted: its known fields are read and the
    appended ones skipped. ``recommendation_served`` messages are not events and are rejected.
    """
    size = len(data) if isinstance(data, bytes | bytearray | memoryview) else 0
    if size > rules.max_message_bytes:
        return Rejected(
            f"message of {size} bytes is larger than the limit of {rules.max_message_bytes} bytes", data, "too_large"
        )
    try:
        decoded = (schemas or default_schemas()).decode(data)
    except MessageError as err:
        return Rejected(str(err), data, err.code)
    record = decoded.record
    rid = _reported_id(record.get("event_id"), rules)
    now = time.time() if now is None else now
    try:
        for name in ("kind", "rating", "value", "timestamp"):
            _short(record.get(name), name, rules)
        if decoded.name == "rating":
            kind = RATING_KIND
        elif decoded.name == "interaction":
            kind = _kind(record["kind"], None)
            if kind == RATING_KIND:
                raise _Invalid("kind 'rating' is sent with the rating schema, not as an interaction", "invalid_kind")
        else:
            raise _Invalid(f"{decoded.name} messages are not events", "not_an_event")
        event = Event(
            _identifier(record["event_id"], "event_id", rules),
            _identifier(record["user_id"], "user_id", rules),
            _identifier(record["item_id"], "item_id", rules),
            kind,
            *_rating_value(kind, record.get("rating"), record.get("value"), rules),
            _timestamp(record["timestamp"], now, rules),
            source,
        )
    except _Invalid as err:
        return Rejected(f"{decoded.name} v{decoded.version}: {err.reason}", data, err.code, rid)
    return event


def handle_messages(
    payloads: Sequence[bytes],
    *,
    source: str = "kafka",
    rules: EventRules = DEFAULT_RULES,
    schemas: SchemaSet | None = None,
    now: float | None = None,
) -> tuple[list[Event], list[tuple[int, Rejected]]]:
    """Handle a batch of messages: the valid events, and ``(index, Rejected)`` for the others."""
    schemas = schemas or default_schemas()
    now = time.time() if now is None else now
    events: list[Event] = []
    rejected: list[tuple[int, Rejected]] = []
    for i, data in enumerate(payloads):
        out = handle_message(data, source=source, rules=rules, schemas=schemas, now=now)
        if isinstance(out, Event):
            events.append(out)
        else:
            rejected.append((i, out))
    return events, rejected


def encode_event(event: Event, *, schemas: SchemaSet | None = None) -> tuple[str, bytes]:
    """Schema name and message bytes of an event (its Avro encoding with header)."""
    name, record = event.to_message()
    return name, (schemas or default_schemas()).encode(name, record, check=False)


def derive_event_id(user_id: str, item_id: str, kind: str, timestamp: int, rating: float | None, value: float) -> str:
    """A deterministic id from an event's content, for clients that send none (a retry gets the same id)."""
    key = f"{user_id}\x1f{item_id}\x1f{kind}\x1f{timestamp}\x1f{rating}\x1f{value}".encode()
    return "h-" + hashlib.blake2b(key, digest_size=16).hexdigest()


# ---------------------------------------------------------------------------------------------------- field checks
def _identifier(value: Any, name: str, rules: EventRules) -> str:
    try:
        return normalise_id(value, name, max_length=rules.max_id_length)
    except InvalidIdError as err:
        raise _Invalid(str(err), err.reason_code) from None


def _reported_id(value: Any, rules: EventRules) -> str | None:
    """The event id to name in a rejection: the raw id when it is a string of a plausible length, else None."""
    if isinstance(value, str) and len(value) <= rules.max_id_length + 16:
        return value
    return None


def _short(value: Any, name: str, rules: EventRules) -> None:
    """Refuse an over-long string in a non-id field before any parsing of it."""
    if isinstance(value, str) and len(value) > rules.max_field_chars:
        raise _Invalid(
            f"{name} has {len(value)} characters, more than the limit of {rules.max_field_chars}: {preview(value)}",
            "too_long",
        )


def _kind(value: Any, rating: Any) -> str:
    if value is None:
        if rating is not None:
            return RATING_KIND
        raise _Invalid(f"kind is required (one of {', '.join(sorted(EVENT_KINDS))})", "missing_field")
    if not isinstance(value, str):
        raise _Invalid(f"kind must be a string, got {type(value).__name__}", "invalid_kind")
    kind = value.strip().lower()
    if kind not in EVENT_KINDS:
        raise _Invalid(f"kind {preview(value)} is not one of {', '.join(sorted(EVENT_KINDS))}", "invalid_kind")
    return kind


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Invalid(f"{name} must be a number, got {type(value).__name__} {preview(value)}")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond any float
        raise _Invalid(f"{name} {preview(value)} is out of range", "out_of_range") from None
    if not math.isfinite(number):
        raise _Invalid(f"{name} must be finite, got {preview(value)}", "out_of_range")
    return number


def _rating_value(kind: str, rating: Any, value: Any, rules: EventRules) -> tuple[float | None, float]:
    if kind == RATING_KIND:
        if rating is None:
            raise _Invalid("rating is required for a rating event", "missing_field")
        r = _number(rating, "rating")
        if not rules.rating_min <= r <= rules.rating_max:
            raise _Invalid(f"rating {r:g} is outside [{rules.rating_min:g}, {rules.rating_max:g}]", "out_of_range")
        v = r if value is None else _number(value, "value")
    else:
        if rating is not None:
            raise _Invalid(f"a {kind} event carries no rating (got rating={preview(rating)}); send kind 'rating'")
        r = None
        v = 1.0 if value is None else _number(value, "value")
    if v < 0:
        raise _Invalid(f"value {v:g} is negative (values are >= 0)", "out_of_range")
    return r, v


def _timestamp(value: Any, now: float, rules: EventRules) -> int:
    if value is None:
        return int(now)
    if isinstance(value, str):
        text = value.strip()
        try:
            value = float(text) if text.lstrip("-").replace(".", "", 1).isdigit() else datetime.fromisoformat(text)
        except ValueError:  # also digits float() does not read, such as superscripts
            raise _Invalid(f"timestamp {preview(value)} is neither epoch seconds nor ISO-8601") from None
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise _Invalid(f"timestamp {value.isoformat()} has no timezone; add 'Z' or an offset such as +00:00")
        try:
            seconds = value.astimezone(UTC).timestamp()
        except (OverflowError, ValueError):  # the offset moves it outside the years 1..9999
            raise _Invalid(f"timestamp {value.isoformat()} is out of range", "out_of_range") from None
    else:
        seconds = _number(value, "timestamp")
    if seconds < 0:
        raise _Invalid(f"timestamp {seconds:g} is before 1970", "out_of_range")
    if seconds > _MAX_EPOCH_SECONDS:
        raise _Invalid(f"timestamp {seconds:.0f} looks like milliseconds; send seconds since the epoch", "out_of_range")
    if seconds > now + rules.max_future_s:
        raise _Invalid(
            f"timestamp {seconds:.0f} is {seconds - now:.0f} s in the future (limit {rules.max_future_s:g} s)",
            "out_of_range",
        )
    return int(seconds)
