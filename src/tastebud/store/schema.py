"""The store's tables, as SQLAlchemy Core: the request log, interaction events, dead letters, locks, retrains,
experiments and the registry's decision log.

One :data:`metadata` serves SQLite and PostgreSQL alike: JSON columns use SQLAlchemy's portable ``JSON`` type and
every timestamp goes through :class:`UTCDateTime`, so a timezone-aware datetime goes in and a UTC-aware one comes
out on both backends.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Dialect

from tastebud.errors import DataValidationError

#: Table definitions of the store, as the newest migration leaves them (``tastebud/store/migrations/versions``);
#: :meth:`Store.init_schema` upgrades a database to them. A change here needs a new revision there.
metadata = sa.MetaData()

# SQLite only auto-increments an ``INTEGER PRIMARY KEY``; PostgreSQL gets a 64-bit identity.
_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


class UTCDateTime(sa.TypeDecorator[datetime]):
    """A timestamp stored in UTC: timezone-aware in, timezone-aware (UTC) out.

    PostgreSQL keeps it as ``timestamptz``. SQLite has no timestamp type, so the value is stored as naive UTC text,
    which still sorts and compares correctly, and UTC is attached again when it is read.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Convert an aware datetime to UTC (naive UTC for SQLite)."""
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            # The store validates records first; this guards direct use of the tables.
            raise ValueError(f"naive datetime {value.isoformat()} given; timestamps must be timezone-aware")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Return the stored instant as an aware UTC datetime."""
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def _json() -> sa.JSON:
    # none_as_null: a Python None is SQL NULL, not the JSON literal 'null'.
    return sa.JSON(none_as_null=True)


#: One row per served request (``/recommend``, ``/similar``), written by the background request-log writer.
request_logs = sa.Table(
    "request_logs",
    metadata,
    sa.Column("request_id", sa.String(64), primary_key=True),
    sa.Column("timestamp", UTCDateTime(), nullable=False),
    sa.Column("endpoint", sa.String(64), nullable=False),
    sa.Column("user_id", sa.String(255), nullable=True),
    sa.Column("item_id", sa.String(255), nullable=True),
    sa.Column("model_name", sa.String(255), nullable=True),
    sa.Column("model_version", sa.Integer(), nullable=True),
    sa.Column("alias", sa.String(64), nullable=True),
    sa.Column("item_ids", _json(), nullable=False),
    sa.Column("scores", _json(), nullable=False),
    sa.Column("latency_ms", sa.Float(), nullable=False),
    sa.Column("status_code", sa.Integer(), nullable=False),
    sa.Column("is_fallback", sa.Boolean(), nullable=False),
    sa.Column("fallback_reason", sa.String(64), nullable=True),
    sa.Column("variant", sa.String(64), nullable=True),
    sa.Column("provenance", _json(), nullable=False),
    # the experiment the request was part of (its variant in ``variant``); the exposure is the list itself
    sa.Column("experiment", sa.String(64), nullable=True),
    # per-position detail of an exposure: ``{"teams": [...]}`` for an interleaved list (which ranker gave each item)
    sa.Column("exposure", _json(), nullable=True),
    # Only time-ordered keys are indexed (request ids are time-ordered too), so every insert appends at the right
    # edge of each index. A per-user index took a random page write per request, which on a log of millions of
    # rows cost the serving process more CPU than the request; per-user reads filter a time window instead.
    sa.Index("ix_request_logs_timestamp", "timestamp"),
)

#: Indexes of earlier schema versions that :meth:`tastebud.store.Store.init_schema` drops.
DROPPED_INDEXES: tuple[str, ...] = ("ix_request_logs_user_id",)

#: Interaction events (rating, view, play, click); ``event_id`` is unique so a redelivery is a no-op.
events = sa.Table(
    "events",
    metadata,
    # A surrogate sequence gives readers a stable arrival order to page through.
    sa.Column("id", _BigId, primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.String(128), nullable=False),
    sa.Column("user_id", sa.String(255), nullable=False),
    sa.Column("item_id", sa.String(255), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("rating", sa.Float(), nullable=True),
    sa.Column("value", sa.Float(), nullable=True),
    sa.Column("timestamp", UTCDateTime(), nullable=False),
    sa.Column("source", sa.String(64), nullable=True),
    sa.Column("received_at", UTCDateTime(), nullable=False),
    sa.UniqueConstraint("event_id", name="uq_events_event_id"),
    sa.Index("ix_events_user_id_timestamp", "user_id", "timestamp"),
    sa.Index("ix_events_timestamp", "timestamp"),
)

#: Messages that could not be decoded or validated, kept with the reason for inspection and replay. ``payload`` may
#: be a prefix of the original (the stream keeps a bounded one): ``payload_size`` and ``payload_sha256`` describe the
#: original. One row per source and payload hash, so a resent message or batch adds no second dead letter (rows of
#: stores older than these columns have NULL there and never collide).
dead_letters = sa.Table(
    "dead_letters",
    metadata,
    sa.Column("id", _BigId, primary_key=True, autoincrement=True),
    sa.Column("source", sa.String(64), nullable=False),
    sa.Column("reason", sa.Text(), nullable=False),
    sa.Column("payload", sa.LargeBinary(), nullable=False),
    sa.Column("received_at", UTCDateTime(), nullable=False),
    sa.Column("payload_size", sa.BigInteger(), nullable=True),
    sa.Column("payload_sha256", sa.String(64), nullable=True),
    sa.Index("ix_dead_letters_received_at", "received_at"),
    sa.Index("uq_dead_letters_source_payload", "source", "payload_sha256", unique=True),
)

#: Named leases for single-flight work (one retrain per model): one row per held lock. A lock is taken by an
#: atomic upsert that only overwrites a row whose lease expired (or that the caller may take over), so two
#: takers never both succeed.
locks = sa.Table(
    "locks",
    metadata,
    sa.Column("name", sa.String(255), primary_key=True),
    # who holds it: "host:pid:token" for retrains (the token tells threads of one process apart)
    sa.Column("owner", sa.String(255), nullable=False),
    sa.Column("acquired_at", UTCDateTime(), nullable=False),
    sa.Column("renewed_at", UTCDateTime(), nullable=False),
    sa.Column("expires_at", UTCDateTime(), nullable=False),
)

#: One row per retrain attempt: written when it starts (outcome ``running``) and updated when it ends.
retrains = sa.Table(
    "retrains",
    metadata,
    sa.Column("id", _BigId, primary_key=True, autoincrement=True),
    sa.Column("model_name", sa.String(255), nullable=False),
    sa.Column("trigger", sa.String(64), nullable=False),
    sa.Column("outcome", sa.String(32), nullable=False),
    sa.Column("reason", sa.Text(), nullable=True),
    sa.Column("started_at", UTCDateTime(), nullable=False),
    sa.Column("finished_at", UTCDateTime(), nullable=True),
    sa.Column("version", sa.Integer(), nullable=True),
    sa.Column("champion_version", sa.Integer(), nullable=True),
    sa.Column("duration_s", sa.Float(), nullable=True),
    sa.Column("fit_s", sa.Float(), nullable=True),
    sa.Column("n_interactions", sa.BigInteger(), nullable=True),
    sa.Column("n_new_events", sa.BigInteger(), nullable=True),
    sa.Column("gate", _json(), nullable=True),
    sa.Column("owner", sa.String(255), nullable=False),
    sa.Index("ix_retrains_model_started", "model_name", "started_at"),
)

#: Experiments (A/B, interleaving, canary) as data: one row each, its full definition as JSON. The model, layer
#: and traffic range are columns too, so that a start is one conditional UPDATE that also refuses an overlap with
#: a running experiment (see :meth:`tastebud.store.Store.mark_experiment_running`).
experiments = sa.Table(
    "experiments",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("model_name", sa.String(255), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    # draft -> running -> stopped (a draft may be stopped without ever running)
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("layer", sa.String(64), nullable=False),
    # the share of the layer's hash space the experiment takes, in percent: [traffic_start, traffic_end)
    sa.Column("traffic_start", sa.Float(), nullable=False),
    sa.Column("traffic_end", sa.Float(), nullable=False),
    sa.Column("definition", _json(), nullable=False),
    sa.Column("salt", sa.String(64), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("started_at", UTCDateTime(), nullable=True),
    sa.Column("stopped_at", UTCDateTime(), nullable=True),
    sa.Column("created_by", sa.String(255), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    sa.Index("ix_experiments_model_status", "model_name", "status"),
)

#: Every change of an experiment (created, started, start refused, stopped): when, who, and the details.
experiment_changes = sa.Table(
    "experiment_changes",
    metadata,
    sa.Column("id", _BigId, primary_key=True, autoincrement=True),
    sa.Column("experiment", sa.String(64), nullable=False),
    sa.Column("time", UTCDateTime(), nullable=False),
    sa.Column("actor", sa.String(255), nullable=False),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("details", _json(), nullable=True),
    sa.Index("ix_experiment_changes_experiment", "experiment", "id"),
)

#: The registry's decision log (promotions, refusals, forced promotions, rollbacks, abandoned retrains), in the
#: order made (``id``); see :mod:`tastebud.registry.decisions`. ``import_key`` is set on rows imported from a
#: ``decisions.jsonl`` of an earlier version (a hash of the line's number and decision): a second import adds nothing.
decisions = sa.Table(
    "decisions",
    metadata,
    sa.Column("id", _BigId, primary_key=True, autoincrement=True),
    sa.Column("time", UTCDateTime(), nullable=False),
    sa.Column("model_name", sa.String(255), nullable=False),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("version", sa.Integer(), nullable=False),
    sa.Column("previous", sa.Integer(), nullable=True),
    sa.Column("actor", sa.String(255), nullable=False),
    sa.Column("reason", sa.Text(), nullable=False),
    sa.Column("numbers", _json(), nullable=False),
    sa.Column("trigger", sa.String(64), nullable=True),
    sa.Column("import_key", sa.String(64), nullable=True),
    sa.Index("ix_decisions_model_name_id", "model_name", "id"),
    sa.Index("uq_decisions_import_key", "import_key", unique=True),
)

#: What the retrain triggers remember per model: the last retrain attempt counted events through ``through_id``
#: while ``champion_version`` was the champion, so a refused retrain is not repeated on the same events.
trigger_state = sa.Table(
    "trigger_state",
    metadata,
    sa.Column("model_name", sa.String(255), primary_key=True),
    sa.Column("champion_version", sa.Integer(), nullable=False),
    sa.Column("through_id", sa.BigInteger(), nullable=False),
    sa.Column("attempted_at", UTCDateTime(), nullable=False),
)

#: Column names of each table, in declaration order (what a read returns as dict keys).
REQUEST_LOG_COLUMNS: tuple[str, ...] = tuple(c.name for c in request_logs.columns)
EVENT_COLUMNS: tuple[str, ...] = tuple(c.name for c in events.columns)
DEAD_LETTER_COLUMNS: tuple[str, ...] = tuple(c.name for c in dead_letters.columns)
RETRAIN_COLUMNS: tuple[str, ...] = tuple(c.name for c in retrains.columns)
EXPERIMENT_COLUMNS: tuple[str, ...] = tuple(c.name for c in experiments.columns)


class RequestLogRecord(NamedTuple):
    """One served request as the serving layer builds it itself: the fields of :data:`request_logs`, in column order.

    The serving layer fills these records with values it produced (a ``datetime.now(UTC)``, its own id and score
    lists, a provenance dict), so they are trusted to have the annotated types and
    :meth:`tastebud.store.Store.write_request_logs` skips the per-field validation for them (on SQLite a batch of
    them is written in one statement). Only the cheap checks that keep a bad value out of the table remain: finite
    ``latency_ms`` and ``scores``, an aware ``timestamp`` and JSON-encodable values; a batch failing one goes
    through the validating path. Any other record, a Mapping, still goes through the validating path
    (:func:`request_log_row`), which names the offending record and field.
    """

    request_id: str
    timestamp: datetime  # timezone-aware, UTC (another zone is converted)
    endpoint: str
    user_id: str | None
    item_id: str | None
    model_name: str | None
    model_version: int | None
    alias: str | None
    item_ids: list[str]
    scores: list[float]
    latency_ms: float
    status_code: int
    is_fallback: bool
    fallback_reason: str | None
    variant: str | None
    provenance: dict[str, Any]
    experiment: str | None = None
    exposure: dict[str, Any] | None = None


def row_dict(row: sa.Row[Any]) -> dict[str, Any]:
    """A result row as a plain dict keyed by column name."""
    return dict(row._mapping)


# --- records -> rows ---------------------------------------------------------------------------------------------

_REQUEST_REQUIRED = ("request_id", "timestamp", "endpoint", "latency_ms", "status_code")
_REQUEST_DEFAULTS: dict[str, Any] = {
    "user_id": None,
    "item_id": None,
    "model_name": None,
    "model_version": None,
    "alias": None,
    "item_ids": (),
    "scores": (),
    "is_fallback": False,
    "fallback_reason": None,
    "variant": None,
    "provenance": None,
    "experiment": None,
    "exposure": None,
}
_EVENT_REQUIRED = ("event_id", "user_id", "item_id", "kind", "timestamp")
_EVENT_DEFAULTS: dict[str, Any] = {"rating": None, "value": None, "source": None, "received_at": None}
_DEAD_LETTER_REQUIRED = ("source", "reason", "payload")


def request_log_row(record: Mapping[str, Any], index: int = 0) -> dict[str, Any]:
    """Validate one request-log record and convert it to a row of :data:`request_logs`.

    ``timestamp`` may be an aware datetime, an ISO-8601 string with an offset or epoch seconds. ``item_ids`` and
    ``scores`` may be any sequence or numpy array; a non-finite score is stored as JSON ``null`` (JSON has no NaN).

    Raises:
        DataValidationError: naming the record's position and field when a field is missing, unknown or invalid.
    """
    where = f"request log record {index} ({_ident(record, 'request_id')})"
    row = _fill(record, _REQUEST_REQUIRED, _REQUEST_DEFAULTS, where)
    row["request_id"] = _text(row["request_id"], where, "request_id")
    row["endpoint"] = _text(row["endpoint"], where, "endpoint")
    for key in ("user_id", "item_id", "model_name", "alias", "fallback_reason", "variant", "experiment"):
        row[key] = _text(row[key], where, key, nullable=True)
    row["timestamp"] = to_utc(row["timestamp"], where=f"{where}, field 'timestamp'")
    row["model_version"] = _integer(row["model_version"], where, "model_version", nullable=True)
    row["status_code"] = _integer(row["status_code"], where, "status_code")
    row["latency_ms"] = _number(row["latency_ms"], where, "latency_ms")
    row["is_fallback"] = bool(row["is_fallback"])
    row["item_ids"] = [str(i) for i in _as_list(row["item_ids"], where, "item_ids")]
    scores = np.asarray(_as_list(row["scores"], where, "scores"), dtype=np.float64)
    values: list[float | None] = scores.tolist()
    if not np.isfinite(scores).all():
        values = [v if finite else None for v, finite in zip(values, np.isfinite(scores).tolist(), strict=True)]
    row["scores"] = values
    provenance = row["provenance"]
    if provenance is None:
        provenance = {}
    if not isinstance(provenance, Mapping):
        raise DataValidationError(
            f"{where}, field 'provenance': expected a JSON object, got {type(provenance).__name__}"
        )
    row["provenance"] = dict(provenance)
    exposure = row["exposure"]
    if exposure is not None and not isinstance(exposure, Mapping):
        raise DataValidationError(f"{where}, field 'exposure': expected a JSON object, got {type(exposure).__name__}")
    row["exposure"] = None if exposure is None else dict(exposure)
    return row


def event_row(record: Mapping[str, Any], index: int = 0, *, received_at: datetime | None = None) -> dict[str, Any]:
    """Validate one interaction event and convert it to a row of :data:`events`.

    Ids are stored as strings; ``received_at`` defaults to ``received_at`` (the batch's arrival time).

    Raises:
        DataValidationError: naming the event's position and field.
    """
    where = f"event {index} ({_ident(record, 'event_id')})"
    row = _fill(record, _EVENT_REQUIRED, _EVENT_DEFAULTS, where)
    for key in ("event_id", "user_id", "item_id", "kind"):
        row[key] = _text(row[key], where, key)
    row["source"] = _text(row["source"], where, "source", nullable=True)
    row["rating"] = _number(row["rating"], where, "rating", nullable=True)
    row["value"] = _number(row["value"], where, "value", nullable=True)
    row["timestamp"] = to_utc(row["timestamp"], where=f"{where}, field 'timestamp'")
    arrived = row["received_at"] if row["received_at"] is not None else received_at or datetime.now(UTC)
    row["received_at"] = to_utc(arrived, where=f"{where}, field 'received_at'")
    return row


def validated_event_row(record: Mapping[str, Any], received_at: datetime) -> dict[str, Any]:
    """A row of :data:`events` from an event the stream handlers already validated, without checking it again.

    The record has string ids and kind, numeric or null ``rating``/``value`` and whole epoch seconds (or an aware
    datetime) as ``timestamp``; only the timestamp is converted.
    """
    ts = record["timestamp"]
    return {
        "event_id": record["event_id"],
        "user_id": record["user_id"],
        "item_id": record["item_id"],
        "kind": record["kind"],
        "rating": record.get("rating"),
        "value": record.get("value"),
        "source": record.get("source"),
        "timestamp": ts if isinstance(ts, datetime) else datetime.fromtimestamp(ts, UTC),
        "received_at": record.get("received_at") or received_at,
    }


def dead_letter_row(
    record: Mapping[str, Any], index: int = 0, *, received_at: datetime | None = None
) -> dict[str, Any]:
    """Validate one dead letter (``source``, ``reason``, ``payload`` bytes, optional ``received_at``).

    ``payload_size`` and ``payload_sha256`` describe the original when ``payload`` is a prefix of it; they default
    to the size and sha256 of ``payload`` itself.

    Raises:
        DataValidationError: naming the record's position and field.
    """
    where = f"dead letter {index}"
    defaults = {"received_at": None, "payload_size": None, "payload_sha256": None}
    row = _fill(record, _DEAD_LETTER_REQUIRED, defaults, where)
    row["source"] = _text(row["source"], where, "source")
    row["reason"] = _text(row["reason"], where, "reason")
    payload = row["payload"]
    if isinstance(payload, str):
        payload = payload.encode("utf-8", "backslashreplace")
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise DataValidationError(f"{where}, field 'payload': expected bytes, got {type(payload).__name__}")
    row["payload"] = bytes(payload)
    size = _integer(row["payload_size"], where, "payload_size", nullable=True)
    if size is None:
        size = len(row["payload"])
    elif size < len(row["payload"]):
        raise DataValidationError(f"{where}, field 'payload_size': {size} is less than the payload's {len(payload)}")
    row["payload_size"] = size
    digest = row["payload_sha256"]
    if digest is None:
        digest = hashlib.sha256(row["payload"]).hexdigest()
    elif not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
        raise DataValidationError(f"{where}, field 'payload_sha256': expected 64 lower-case hex digits")
    row["payload_sha256"] = digest
    arrived = row["received_at"] if row["received_at"] is not None else received_at or datetime.now(UTC)
    row["received_at"] = to_utc(arrived, where=f"{where}, field 'received_at'")
    return row


def to_utc(value: Any, *, where: str = "timestamp") -> datetime:
    """An aware UTC datetime from an aware datetime, an ISO-8601 string with offset, or epoch seconds.

    Raises:
        DataValidationError: for a naive datetime (its zone is unknowable), a string without an offset or
            another type; the message starts with ``where``.
    """
    if isinstance(value, bool):
        raise DataValidationError(f"{where}: expected a timezone-aware datetime, got bool")
    if isinstance(value, int | float | np.integer | np.floating):
        if not np.isfinite(value):
            raise DataValidationError(f"{where}: epoch seconds must be finite, got {value}")
        return datetime.fromtimestamp(float(value), tz=UTC)
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError as err:
            raise DataValidationError(f"{where}: {value!r} is not an ISO-8601 timestamp") from err
    if not isinstance(value, datetime):
        raise DataValidationError(f"{where}: expected a timezone-aware datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise DataValidationError(
            f"{where}: {value.isoformat()} has no timezone; pass an aware datetime (e.g. datetime.now(UTC))"
        )
    return value.astimezone(UTC)


def _ident(record: Any, key: str) -> str:
    return repr(record.get(key)) if isinstance(record, Mapping) else "?"


def _fill(record: Mapping[str, Any], required: tuple[str, ...], defaults: dict[str, Any], where: str) -> dict[str, Any]:
    if not isinstance(record, Mapping):
        raise DataValidationError(f"{where}: expected a mapping of fields, got {type(record).__name__}")
    missing = [key for key in required if record.get(key) is None]
    if missing:
        raise DataValidationError(f"{where}: missing required field(s) {', '.join(missing)}")
    unknown = sorted(set(record) - set(required) - set(defaults))
    if unknown:
        expected = ", ".join((*required, *defaults))
        raise DataValidationError(f"{where}: unknown field(s) {', '.join(unknown)}; expected {expected}")
    return {**defaults, **record}


def _text(value: Any, where: str, key: str, *, nullable: bool = False) -> str | None:
    if value is None:
        if nullable:
            return None
        raise DataValidationError(f"{where}, field '{key}': must not be empty")
    if isinstance(value, str | int | np.integer) and not isinstance(value, bool):
        return str(value)
    raise DataValidationError(f"{where}, field '{key}': expected a string, got {type(value).__name__}")


def _integer(value: Any, where: str, key: str, *, nullable: bool = False) -> int | None:
    if value is None and nullable:
        return None
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    raise DataValidationError(f"{where}, field '{key}': expected an integer, got {value!r}")


def _number(value: Any, where: str, key: str, *, nullable: bool = False) -> float | None:
    if value is None and nullable:
        return None
    if isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool):
        number = float(value)
        if np.isfinite(number):
            return number
    raise DataValidationError(f"{where}, field '{key}': expected a finite number, got {value!r}")


def _as_list(value: Any, where: str, key: str) -> list[Any]:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Sequence):
        raise DataValidationError(f"{where}, field '{key}': expected a list, got {type(value).__name__}")
    return list(value)
