"""The :class:`Store`: request log, events, dead letters, locks, retrain history, experiments, the registry's
decision log and the retrain triggers' state over SQLAlchemy (SQLite in WAL mode, or PostgreSQL); the schema is
upgraded by Alembic migrations (:mod:`tastebud.store.migrate`).

Every write is one transaction and idempotent on its natural key (``request_id``, ``event_id``) through
``INSERT .. ON CONFLICT DO NOTHING``, which both dialects speak; a lock is taken by one conditional upsert.
Failures surface as :class:`StoreError` naming the URL with its password hidden; invalid records as
:class:`DataValidationError` naming the record and field.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import numpy as np
import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.pool import StaticPool

from tastebud.config import Settings, get_settings
from tastebud.errors import DataValidationError, StoreError
from tastebud.store.schema import (
    EXPERIMENT_COLUMNS,
    RETRAIN_COLUMNS,
    RequestLogRecord,
    dead_letter_row,
    dead_letters,
    decisions,
    event_row,
    events,
    experiment_changes,
    experiments,
    locks,
    request_log_row,
    request_logs,
    retrains,
    row_dict,
    to_utc,
    trigger_state,
    validated_event_row,
)

if TYPE_CHECKING:
    import polars as pl

logger = logging.getLogger(__name__)

#: Backends the store supports (``ON CONFLICT DO NOTHING`` is dialect-specific).
SUPPORTED_BACKENDS = ("sqlite", "postgresql")


def create_store(
    settings: Settings | None = None,
    *,
    url: str | None = None,
    busy_timeout_s: float = 5.0,
    connect_timeout_s: float = 5.0,
) -> Store:
    """Open the store at ``url``, else at ``settings.store_url`` (SQLite in the home unless ``store.url`` is set).

    Nothing is connected yet; call :meth:`Store.init_schema` once to create or upgrade the tables.

    Args:
        settings: settings to read the URL from; :func:`get_settings` when omitted.
        url: SQLAlchemy URL overriding the settings, e.g. ``postgresql+psycopg://user:pw@host/db``.
        busy_timeout_s: how long SQLite waits for a lock held by another writer before failing.
        connect_timeout_s: how long PostgreSQL connection attempts may take.

    Raises:
        StoreError: for a malformed URL, an unsupported backend or a missing database driver.
    """
    if url is None:
        url = (settings or get_settings()).store_url
    return Store(url, busy_timeout_s=busy_timeout_s, connect_timeout_s=connect_timeout_s)


class Store:
    """Request log, events, dead letters, locks, retrains and experiments in one SQL database; safe to share between
    threads.

    Attributes:
        url: the database URL with any password replaced by ``***`` (safe to log).
        engine: the SQLAlchemy engine.
        backend: ``"sqlite"`` or ``"postgresql"``.
    """

    def __init__(self, url: str, *, busy_timeout_s: float = 5.0, connect_timeout_s: float = 5.0) -> None:
        """Build the engine for ``url`` without connecting.

        Raises:
            StoreError: for a malformed URL, an unsupported backend or a missing driver.
        """
        parsed = _parse_url(url)
        self.url: str = parsed.render_as_string(hide_password=True)
        self._password = parsed.password
        self.backend: str = parsed.get_backend_name()
        if self.backend not in SUPPORTED_BACKENDS:
            raise StoreError(f"store URL {self.url}: unsupported backend {self.backend!r}; use sqlite or postgresql")
        try:
            if self.backend == "sqlite":
                self.engine: Engine = _sqlite_engine(parsed, busy_timeout_s)
            else:
                self.engine = _postgres_engine(parsed, connect_timeout_s)
        except (ImportError, sa.exc.NoSuchModuleError) as err:
            hint = " (install tastebud[postgres] for psycopg)" if self.backend == "postgresql" else ""
            raise StoreError(f"store URL {self.url}: database driver not available{hint}: {err}") from err
        except OSError as err:
            raise StoreError(f"store URL {self.url}: cannot create the database directory: {err}") from err

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- schema --------------------------------------------------------------------------------------------------

    def init_schema(self) -> None:
        """Upgrade the database to the newest schema revision (Alembic, see :mod:`tastebud.store.migrate`); running
        it again changes nothing. A database made before migrations is recognised and stamped at the baseline first.

        Raises:
            StoreError: when the database cannot be reached or refuses the DDL.
        """
        from tastebud.store import migrate

        attempts = 5
        for attempt in range(1, attempts + 1):
            try:
                migrate.upgrade(self)
                return
            except StoreError as err:
                # Migrations are serialised between processes (an advisory lock, a file lock beside a SQLite file);
                # where that cannot hold (no flock), a loser sees "already exists" and tries again. On SQLite in WAL
                # mode a pass that read the schema before another process wrote it cannot upgrade its stale
                # snapshot to a write ("database is locked" at once, without waiting): that is a race lost too.
                cause = err.__cause__
                raced = isinstance(cause, sa.exc.IntegrityError | sa.exc.ProgrammingError) or (
                    isinstance(cause, sa.exc.OperationalError)
                    and ("already exists" in str(cause) or "database is locked" in str(cause))
                )
                if attempt == attempts or not raced:
                    raise
                time.sleep(0.05 * attempt)  # let the winner commit before looking again

    def table_names(self) -> list[str]:
        """Names of the tables present in the database, sorted."""
        with self._begin("schema inspection") as conn:
            return sorted(sa.inspect(conn).get_table_names())

    # --- request log ---------------------------------------------------------------------------------------------

    def write_request_logs(self, records: Sequence[Mapping[str, Any] | RequestLogRecord]) -> int:
        """Insert request-log records in one transaction, skipping request ids already stored.

        Args:
            records: dicts with the ``request_logs`` fields (see :func:`tastebud.store.schema.request_log_row`),
                :class:`~tastebud.store.schema.RequestLogRecord` s (the server's own, trusted records), or a mix.
                On SQLite a batch made only of ``RequestLogRecord`` s is written in a single statement.

        Returns:
            How many records were new; a repeated ``request_id`` (stored or earlier in the batch) keeps its first row.

        Raises:
            DataValidationError: when a record is invalid (nothing is written).
            StoreError: when the database cannot be reached or refuses the write (nothing is written).
        """
        if not records:
            return 0
        if self.backend == "sqlite":
            batch = _sqlite_request_batch(records)
            if batch is not None:
                return self._execute_sqlite(_SQLITE_REQUEST_INSERT_BATCH, (batch,), "request log write")
        # PostgreSQL, a mixed batch, or records failing the cheap checks: the dict paths below.
        dicts = [r._asdict() if isinstance(r, RequestLogRecord) else r for r in records]
        if self.backend == "sqlite":
            fast = _sqlite_request_rows(dicts)
            if fast is not None:
                return self._execute_sqlite(_SQLITE_REQUEST_INSERT, fast, "request log write")
        rows = _first_per_key([request_log_row(r, i) for i, r in enumerate(dicts)], "request_id")
        return self._insert_new(request_logs, "request_id", rows, "request log write")

    def get_request(self, request_id: str) -> dict[str, Any] | None:
        """The stored request-log record of ``request_id``, or None."""
        query = sa.select(request_logs).where(request_logs.c.request_id == str(request_id))
        with self._begin("request log read") as conn:
            row = conn.execute(query).first()
        return None if row is None else row_dict(row)

    def query_request_logs(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = None,
        user_id: str | None = None,
        newest_first: bool = False,
    ) -> list[dict[str, Any]]:
        """Request-log records with ``since <= timestamp < until``, oldest first (newest first if asked).

        Args:
            since: inclusive lower bound (timezone-aware).
            until: exclusive upper bound (timezone-aware).
            limit: most records returned.
            user_id: only this user's requests.
            newest_first: order by descending time, so that ``limit`` keeps the latest records.
        """
        query = sa.select(request_logs)
        query = _time_window(query, request_logs.c.timestamp, since, until)
        if user_id is not None:
            query = query.where(request_logs.c.user_id == str(user_id))
        order = (request_logs.c.timestamp, request_logs.c.request_id)
        query = query.order_by(*(c.desc() for c in order) if newest_first else order)
        return self._fetch(_limited(query, limit), "request log read")

    def request_log_summary(self, *, since: datetime, until: datetime, bucket_s: int) -> list[dict[str, Any]]:
        """Traffic, outcomes and latency percentiles of the requests with ``since <= timestamp < until``, in one
        aggregate query (no record leaves the database).

        Success is :func:`tastebud.monitoring.kpis.success`'s rule: a 2xx status, no ``provenance.error``, as many
        scores as items and no null (non-finite) score. Percentiles interpolate linearly between the closest ranks,
        as :func:`numpy.percentile` does.

        Args:
            since: inclusive lower bound (timezone-aware).
            until: exclusive upper bound (timezone-aware).
            bucket_s: width of the time buckets in seconds (aligned on the Unix epoch).

        Returns:
            One row per group: ``level`` (``"all"``: the whole window; ``"version"``: per ``model_name:version``,
            ``none``/``-`` for a missing one; ``"bucket"``: per time bucket; ``"minute"``: only the minutes with a
            failed request), ``key`` (the version, or the bucket's start in epoch seconds; ``""`` for ``all``),
            ``requests``, ``successful``, ``fallbacks`` (successful fallback answers), ``server_errors`` (5xx),
            ``client_errors`` (4xx), and ``p50``, ``p95``, ``p99`` latency in ms (``None`` for minutes). No rows
            without traffic.

        Raises:
            ParameterError: ``until`` is not after ``since``, or ``bucket_s`` is not positive.
            StoreError: the database cannot be read.
        """
        from tastebud.errors import ParameterError

        if until <= since:
            raise ParameterError(f"request log summary: until {until.isoformat()} is not after {since.isoformat()}")
        if int(bucket_s) < 1:
            raise ParameterError(f"request log summary: bucket_s must be a positive number of seconds, got {bucket_s}")
        if self.backend == "sqlite":
            # whole seconds of the stored text (strftime alone rounds to milliseconds: 59.9999 would be the next s)
            epoch = "CAST(strftime('%s', substr(timestamp, 1, 19)) AS INTEGER)"
            error = "json_extract(provenance, '$.error')"
            falsy = "('', 0, '[]', '{}')"
            as_text, floor = "CAST({} AS TEXT)", "CAST({} AS INTEGER)"  # (n - 1) * p >= 0: the cast truncates
            scores = "scores"
        else:
            epoch = "CAST(FLOOR(EXTRACT(EPOCH FROM timestamp)) AS BIGINT)"
            error = "(provenance ->> 'error')"
            falsy = "('', 'false', '0', '0.0', '[]', '{}')"
            as_text, floor = "CAST({} AS TEXT)", "CAST(FLOOR({}) AS BIGINT)"
            scores = "CAST(scores AS TEXT)"

        def percentile(p: float) -> str:
            low = floor.format(f"(n - 1) * {p}")
            at = f"MAX(CASE WHEN i = {low} THEN lat END)"
            above = f"COALESCE(MAX(CASE WHEN i = {low} + 1 THEN lat END), {at})"
            frac = f"((MAX(n) - 1) * {p} - {floor.format(f'(MAX(n) - 1) * {p}')})"
            return f"{at} + {frac} * ({above} - {at})"

        counts = (
            "COUNT(*) AS requests, SUM(ok) AS successful, SUM(ok * fb) AS fallbacks, "
            "SUM(CASE WHEN status_code >= 500 THEN 1 ELSE 0 END) AS server_errors, "
            "SUM(CASE WHEN status_code BETWEEN 400 AND 499 THEN 1 ELSE 0 END) AS client_errors"
        )
        # A JSON array of numbers holds the word null only where a score was not finite.
        ok = (
            f"CASE WHEN status_code BETWEEN 200 AND 299 AND ({error} IS NULL OR {error} IN {falsy}) "
            f"AND json_array_length(item_ids) = json_array_length(scores) AND {scores} NOT LIKE '%null%' "
            "THEN 1 ELSE 0 END"
        )
        version = (
            f"COALESCE(model_name, 'none') || ':' || COALESCE({as_text.format('model_version')}, '-')"
        )  # fmt: skip
        rest = "lat, ok, fb, status_code FROM r"
        sql = f"""
            WITH r AS (
                SELECT latency_ms AS lat, status_code, {epoch} AS epoch, model_name, model_version,
                       {ok} AS ok, CASE WHEN is_fallback THEN 1 ELSE 0 END AS fb
                FROM request_logs WHERE timestamp >= :since AND timestamp < :until
            ), g AS (
                SELECT 'all' AS level, '' AS key, {rest}
                UNION ALL SELECT 'version', {version}, {rest}
                UNION ALL SELECT 'bucket', {as_text.format("epoch / :bucket * :bucket")}, {rest}
            ), ranked AS (
                SELECT level, key, {rest.removesuffix(" FROM r")},
                       ROW_NUMBER() OVER (PARTITION BY level, key ORDER BY lat) - 1 AS i,
                       COUNT(*) OVER (PARTITION BY level, key) AS n
                FROM g
            )
            SELECT level, key, {counts},
                   {percentile(0.5)} AS p50, {percentile(0.95)} AS p95, {percentile(0.99)} AS p99
            FROM ranked GROUP BY level, key
            UNION ALL
            SELECT 'minute', {as_text.format("epoch / 60 * 60")}, {counts}, NULL, NULL, NULL
            FROM r GROUP BY epoch / 60 HAVING SUM(ok) < COUNT(*)
        """
        query = sa.text(sql).bindparams(
            sa.bindparam("since", type_=request_logs.c.timestamp.type),
            sa.bindparam("until", type_=request_logs.c.timestamp.type),
            sa.bindparam("bucket", type_=sa.BigInteger()),
        )
        params = {"since": since, "until": until, "bucket": int(bucket_s)}
        with self._begin("request log summary") as conn:
            rows = [row_dict(row) for row in conn.execute(query, params)]
        for row in rows:
            for name in ("requests", "successful", "fallbacks", "server_errors", "client_errors"):
                row[name] = int(row[name] or 0)
            for name in ("p50", "p95", "p99"):
                row[name] = None if row[name] is None else float(row[name])
        return rows

    # --- events --------------------------------------------------------------------------------------------------

    #: :meth:`write_events` takes ``validated=True`` (the stream's ingest path checks for it).
    accepts_validated = True

    def write_events(self, records: Sequence[Mapping[str, Any]], *, validated: bool = False) -> tuple[int, int]:
        """Insert interaction events in one transaction, idempotently on ``event_id``.

        Args:
            records: dicts with ``event_id``, ``user_id``, ``item_id``, ``kind``, ``timestamp`` and optional
                ``rating``, ``value``, ``source``, ``received_at`` (default: now, UTC).
            validated: the records come from the stream handlers, which validated and normalised them already
                (``Event.to_record()``): skip the per-row checks, which cost as much as the insert itself.

        Returns:
            ``(inserted, duplicates)``: duplicates are events whose id was stored already or repeated in the batch.

        Raises:
            DataValidationError: when an event is invalid (nothing is written).
            StoreError: when the database cannot be reached or refuses the write (nothing is written).
        """
        now = datetime.now(UTC)
        if validated and self.backend == "sqlite":
            return self._insert_validated_events_sqlite(records, now)
        if validated:
            rows = [validated_event_row(r, now) for r in records]
        else:
            rows = [event_row(r, i, received_at=now) for i, r in enumerate(records)]
        inserted = self._insert_new(events, "event_id", _first_per_key(rows, "event_id"), "event write")
        return inserted, len(rows) - inserted

    def events_by_id(self, event_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The stored events with these ``event_id`` values, keyed by ``event_id`` (absent ids are left out)."""
        found: dict[str, dict[str, Any]] = {}
        ids = list(dict.fromkeys(str(i) for i in event_ids))
        for start in range(0, len(ids), 500):  # a bounded number of bind parameters per statement
            query = sa.select(events).where(events.c.event_id.in_(ids[start : start + 500]))
            found.update((row["event_id"], row) for row in self._fetch(query, "event read"))
        return found

    def query_events(
        self,
        *,
        user_id: str | None = None,
        item_id: str | None = None,
        kind: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        after_id: int | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Stored events matching every given filter, ordered by event time, then arrival (``id``).

        Args:
            user_id: only this user's events.
            item_id: only events on this item.
            kind: only this kind (``rating``, ``view``, ...).
            since: inclusive lower bound on the event ``timestamp``.
            until: exclusive upper bound on the event ``timestamp``.
            after_id: only events stored after the one with this ``id`` (for readers paging through arrivals).
            limit: most events returned.
        """
        query = _time_window(sa.select(events), events.c.timestamp, since, until)
        for column, value in ((events.c.user_id, user_id), (events.c.item_id, item_id), (events.c.kind, kind)):
            if value is not None:
                query = query.where(column == str(value))
        if after_id is not None:
            query = query.where(events.c.id > int(after_id))
        query = query.order_by(events.c.timestamp, events.c.id)
        return self._fetch(_limited(query, limit), "event read")

    def events_after(
        self, after_id: int = 0, *, through_id: int | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """Stored events in arrival order (the store's ``id`` sequence): ``after_id < id <= through_id``.

        This is how every serving process follows the store (it remembers the last ``id`` it applied) and how a
        retrain reads the events since its champion's cutoff.

        Args:
            after_id: only events stored after this ``id`` (0: from the first).
            through_id: only events up to and including this ``id`` (``None``: up to the newest).
            limit: most events returned (the oldest first).
        """
        query = sa.select(events).where(events.c.id > int(after_id))
        if through_id is not None:
            query = query.where(events.c.id <= int(through_id))
        return self._fetch(_limited(query.order_by(events.c.id), limit), "event read")

    def last_event_id(self, *, settled_s: float = 0.0) -> int:
        """The highest event ``id`` stored (0 when there is none).

        Args:
            settled_s: only events received at least this many seconds ago. On PostgreSQL ids are drawn from a
                sequence before the transaction commits, so a reader that takes ``max(id)`` may later see a
                smaller id appear; a few seconds of settling makes every id up to the answer final.
        """
        query = sa.select(sa.func.max(events.c.id))
        if settled_s > 0:
            query = query.where(events.c.received_at <= datetime.now(UTC) - timedelta(seconds=settled_s))
        with self._begin("event read") as conn:
            value = conn.execute(query).scalar()
        return int(value or 0)

    # --- dead letters --------------------------------------------------------------------------------------------

    def write_dead_letters(self, records: Sequence[Mapping[str, Any]]) -> int:
        """Store undecodable or invalid messages in one transaction, idempotently.

        Args:
            records: ``source``, ``reason``, ``payload`` bytes (possibly a prefix of the original), and optional
                ``payload_size`` and ``payload_sha256`` of the original (default: those of ``payload``) and
                ``received_at``.

        Returns:
            How many were stored: a record whose source and payload hash the table holds already (a resent
            message or batch), or that repeats one of the same call, is skipped.
        """
        now = datetime.now(UTC)
        rows = [dead_letter_row(r, i, received_at=now) for i, r in enumerate(records)]
        unique: dict[tuple[str, str], dict[str, Any]] = {}
        for row in rows:
            unique.setdefault((row["source"], row["payload_sha256"]), row)
        if not unique:
            return 0
        dialect_insert = postgresql.insert if self.backend == "postgresql" else sqlite.insert
        stmt = (
            dialect_insert(dead_letters)
            .on_conflict_do_nothing(index_elements=["source", "payload_sha256"])
            .returning(dead_letters.c.id)
        )
        with self._begin("dead letter write") as conn:
            return len(conn.execute(stmt, list(unique.values())).all())

    def query_dead_letters(
        self, *, source: str | None = None, since: datetime | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """Stored dead letters, oldest first, optionally of one ``source`` and received at or after ``since``."""
        query = _time_window(sa.select(dead_letters), dead_letters.c.received_at, since, None)
        if source is not None:
            query = query.where(dead_letters.c.source == source)
        query = query.order_by(dead_letters.c.received_at, dead_letters.c.id)
        return self._fetch(_limited(query, limit), "dead letter read")

    # --- locks --------------------------------------------------------------------------------------------------

    def acquire_lock(self, name: str, owner: str, ttl_s: float, *, take_over: str | None = None) -> bool:
        """Take the lock ``name`` for ``owner`` with a lease of ``ttl_s`` seconds; whether ``owner`` holds it now.

        One atomic ``INSERT .. ON CONFLICT DO UPDATE .. WHERE`` (never read-then-write): the row is created, or
        overwritten only when its lease has expired, when ``owner`` holds it already (the lease is renewed), or
        when it is held by ``take_over`` (an owner the caller found dead). Of two concurrent takers exactly one
        succeeds. Times come from the database clock on PostgreSQL (one clock for every host) and from this host's
        clock on SQLite (a local file).

        Args:
            name: the lock, e.g. ``retrain:movielens-100k``.
            owner: who takes it (unique per taker, e.g. ``host:pid:token``).
            ttl_s: lease in seconds; :meth:`renew_lock` extends it.
            take_over: an owner whose hold may be overwritten even before its lease expires.

        Raises:
            DataValidationError: ``ttl_s`` is not a positive number or ``name``/``owner`` is empty.
        """
        _check_lock_args(name, owner, ttl_s)
        dialect_insert = postgresql.insert if self.backend == "postgresql" else sqlite.insert
        with self._begin("lock acquire") as conn:
            now = self._clock(conn)
            values = {"owner": owner, "acquired_at": now, "renewed_at": now, "expires_at": now + _seconds(ttl_s)}
            stmt = dialect_insert(locks).values(name=name, **values)
            free = (locks.c.expires_at <= now) | (locks.c.owner == owner)
            if take_over is not None:
                free = free | (locks.c.owner == take_over)
            stmt = stmt.on_conflict_do_update(index_elements=[locks.c.name], set_=values, where=free)
            row = conn.execute(stmt.returning(locks.c.owner)).first()
        return row is not None and row[0] == owner

    def renew_lock(self, name: str, owner: str, ttl_s: float) -> bool:
        """Extend ``owner``'s lease of ``name`` to ``ttl_s`` seconds from now; False when ``owner`` no longer holds it.

        Raises:
            DataValidationError: ``ttl_s`` is not a positive number or ``name``/``owner`` is empty.
        """
        _check_lock_args(name, owner, ttl_s)
        with self._begin("lock renewal") as conn:
            now = self._clock(conn)
            stmt = (
                sa.update(locks)
                .where(locks.c.name == name, locks.c.owner == owner)
                .values(renewed_at=now, expires_at=now + _seconds(ttl_s))
            )
            return conn.execute(stmt).rowcount == 1

    def release_lock(self, name: str, owner: str) -> bool:
        """Drop ``owner``'s hold of ``name``; False when ``owner`` did not hold it (nothing changes then)."""
        with self._begin("lock release") as conn:
            stmt = sa.delete(locks).where(locks.c.name == name, locks.c.owner == owner)
            return conn.execute(stmt).rowcount == 1

    def get_lock(self, name: str) -> dict[str, Any] | None:
        """The lock row of ``name`` (``owner``, ``acquired_at``, ``renewed_at``, ``expires_at``), or None.

        A row whose ``expires_at`` has passed is still returned: it is free to take, not yet taken.
        """
        rows = self._fetch(sa.select(locks).where(locks.c.name == name), "lock read")
        return rows[0] if rows else None

    def _clock(self, conn: Connection) -> datetime:
        if self.backend == "postgresql":
            value = conn.execute(sa.select(sa.func.now())).scalar_one()
            return to_utc(value, where="database clock")
        return datetime.now(UTC)

    # --- retrain history -----------------------------------------------------------------------------------------

    def start_retrain(
        self,
        *,
        model_name: str,
        trigger: str,
        owner: str,
        started_at: datetime | None = None,
        outcome: str = "running",
    ) -> int:
        """Record a retrain that starts now (outcome ``running``); returns its id for :meth:`finish_retrain`.

        A run that ends before it starts (``busy``) passes its outcome here: one insert, never a ``running`` row that
        the lock holder's recovery could take for a killed run.
        """
        row = {
            "model_name": model_name,
            "trigger": trigger,
            "owner": owner,
            "outcome": outcome,
            "started_at": to_utc(started_at or datetime.now(UTC), where="started_at"),
        }
        with self._begin("retrain history write") as conn:
            return int(conn.execute(sa.insert(retrains).values(**row).returning(retrains.c.id)).scalar_one())

    def update_retrain(self, retrain_id: int, **fields: Any) -> bool:
        """Set fields of one retrain row (``version``, ``champion_version``, ``n_new_events``, ...); whether it exists.

        Raises:
            DataValidationError: an unknown field, or a value the column cannot store (NaN in ``gate``).
        """
        unknown = sorted(key for key in fields if key == "id" or key not in RETRAIN_COLUMNS)
        if unknown:
            raise DataValidationError(f"retrain history: unknown field(s) {', '.join(unknown)}")
        for key in ("started_at", "finished_at"):
            if fields.get(key) is not None:
                fields[key] = to_utc(fields[key], where=key)
        if fields.get("gate") is not None:
            try:
                fields["gate"] = json.loads(_json_dumps(fields["gate"]))
            except (TypeError, ValueError) as err:
                raise DataValidationError(f"retrain history: gate numbers cannot be stored as JSON: {err}") from err
        if not fields:
            return True
        with self._begin("retrain history write") as conn:
            stmt = sa.update(retrains).where(retrains.c.id == int(retrain_id)).values(**fields)
            return conn.execute(stmt).rowcount == 1

    def finish_retrain(
        self, retrain_id: int, *, outcome: str, reason: str | None = None, finished_at: datetime | None = None,
        **fields: Any,
    ) -> bool:  # fmt: skip
        """Record how a retrain ended (``outcome``, ``reason`` and any other field); whether the row exists."""
        return self.update_retrain(
            retrain_id, outcome=outcome, reason=reason, finished_at=finished_at or datetime.now(UTC), **fields
        )

    def retrain_history(
        self, model_name: str | None = None, limit: int | None = None, *, outcome: str | None = None
    ) -> list[dict[str, Any]]:
        """Retrain rows, newest first, optionally of one model and one outcome (``running`` finds unfinished ones)."""
        query = sa.select(retrains)
        if model_name is not None:
            query = query.where(retrains.c.model_name == model_name)
        if outcome is not None:
            query = query.where(retrains.c.outcome == outcome)
        query = query.order_by(retrains.c.started_at.desc(), retrains.c.id.desc())
        return self._fetch(_limited(query, limit), "retrain history read")

    # --- experiments ---------------------------------------------------------------------------------------------

    def insert_experiment(
        self, row: Mapping[str, Any], *, actor: str, details: Mapping[str, Any] | None = None
    ) -> bool:
        """Store a new experiment and its ``created`` change in one transaction; False when the name is taken.

        Args:
            row: the columns of :data:`~tastebud.store.schema.experiments`; ``started_at`` and ``stopped_at`` may be
                left out and ``updated_at`` defaults to ``created_at``.
            actor: who creates it (recorded with the change).
            details: what the change records (default: the definition).

        Raises:
            DataValidationError: a missing or unknown column, a naive time, or a definition that is not JSON.
        """
        values = _experiment_row(row)
        dialect_insert = postgresql.insert if self.backend == "postgresql" else sqlite.insert
        stmt = dialect_insert(experiments).values(**values).on_conflict_do_nothing(index_elements=["name"])
        with self._begin("experiment write") as conn:
            if conn.execute(stmt.returning(experiments.c.name)).first() is None:
                return False
            recorded = values["definition"] if details is None else details
            _add_experiment_change(conn, values["name"], actor, "created", recorded, values["created_at"])
        return True

    def mark_experiment_running(
        self,
        name: str,
        *,
        actor: str,
        details: Mapping[str, Any] | None = None,
        definition: Mapping[str, Any] | None = None,
        at: datetime | None = None,
    ) -> bool:
        """Move a draft to ``running`` and record its ``started`` change, atomically; False when it did not move.

        One conditional ``UPDATE``: the row changes only while it is a ``draft`` and no *other* running experiment
        of the same model and layer has a traffic range overlapping its own (``[start, end)`` ranges). Of two
        concurrent starts of one experiment exactly one succeeds, and two overlapping experiments never both run.
        SQLite runs one writer at a time, so a statement's check and write cannot interleave with another's;
        under PostgreSQL's READ COMMITTED two UPDATEs of different rows could miss each other, so there a
        transaction-scoped advisory lock serialises the starts first.

        Args:
            name: the experiment.
            actor: who starts it.
            details: what the change records.
            definition: a new definition to store with the start (e.g. the variants' resolved versions).
            at: the start time (default now).
        """
        now = to_utc(at or datetime.now(UTC), where="at")
        other = experiments.alias("other")
        overlap = sa.exists().where(
            other.c.name != experiments.c.name,
            other.c.model_name == experiments.c.model_name,
            other.c.layer == experiments.c.layer,
            other.c.status == "running",
            other.c.traffic_start < experiments.c.traffic_end,
            experiments.c.traffic_start < other.c.traffic_end,
        )
        values: dict[str, Any] = {"status": "running", "started_at": now, "updated_at": now}
        if definition is not None:
            values["definition"] = _json_object(definition, "experiment definition")
        stmt = (
            sa.update(experiments)
            .where(experiments.c.name == name, experiments.c.status == "draft", ~overlap)
            .values(**values)
        )
        with self._begin("experiment start") as conn:
            if self.backend == "postgresql":
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_EXPERIMENT_START_LOCK)))
            if conn.execute(stmt).rowcount != 1:
                return False
            _add_experiment_change(conn, name, actor, "started", details, now)
        return True

    def mark_experiment_stopped(
        self, name: str, *, actor: str, details: Mapping[str, Any] | None = None, at: datetime | None = None
    ) -> bool:
        """Move a draft or running experiment to ``stopped`` and record the change, atomically.

        Returns:
            False when the experiment does not exist or was stopped already (nothing is recorded then).
        """
        now = to_utc(at or datetime.now(UTC), where="at")
        stmt = (
            sa.update(experiments)
            .where(experiments.c.name == name, experiments.c.status.in_(("draft", "running")))
            .values(status="stopped", stopped_at=now, updated_at=now)
        )
        with self._begin("experiment stop") as conn:
            if conn.execute(stmt).rowcount != 1:
                return False
            _add_experiment_change(conn, name, actor, "stopped", details, now)
        return True

    def update_experiment_definition(
        self,
        name: str,
        definition: Mapping[str, Any],
        *,
        actor: str,
        action: str,
        details: Mapping[str, Any] | None = None,
        at: datetime | None = None,
    ) -> bool:
        """Replace a *running* experiment's definition (e.g. a canary's weights) and record the change, atomically.

        One conditional ``UPDATE`` (only while the experiment is ``running``) and its change, in one transaction.

        Returns:
            False when the experiment does not exist or is not running (nothing is recorded then).

        Raises:
            DataValidationError: a definition that is not a JSON object.
        """
        now = to_utc(at or datetime.now(UTC), where="at")
        values = {"definition": _json_object(definition, "experiment definition"), "updated_at": now}
        running = sa.and_(experiments.c.name == name, experiments.c.status == "running")
        stmt = sa.update(experiments).where(running).values(**values)
        with self._begin("experiment update") as conn:
            if conn.execute(stmt).rowcount != 1:
                return False
            _add_experiment_change(conn, name, actor, action, details, now)
        return True

    def record_experiment_change(
        self,
        name: str,
        *,
        actor: str,
        action: str,
        details: Mapping[str, Any] | None = None,
        at: datetime | None = None,
    ) -> int:
        """Record a change of ``name`` that alters no row (e.g. ``start_refused`` with the reason); returns its id."""
        with self._begin("experiment change write") as conn:
            return _add_experiment_change(conn, name, actor, action, details, to_utc(at or datetime.now(UTC)))

    def get_experiment(self, name: str) -> dict[str, Any] | None:
        """The row of experiment ``name`` (every column; ``definition`` as a dict), or None."""
        rows = self._fetch(sa.select(experiments).where(experiments.c.name == name), "experiment read")
        return rows[0] if rows else None

    def list_experiments(self, *, model_name: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
        """Experiment rows, oldest first, optionally of one model and one status (``running``: what serving polls)."""
        query = sa.select(experiments)
        if model_name is not None:
            query = query.where(experiments.c.model_name == model_name)
        if status is not None:
            query = query.where(experiments.c.status == status)
        return self._fetch(query.order_by(experiments.c.created_at, experiments.c.name), "experiment read")

    def experiment_changes(self, name: str | None = None, *, limit: int | None = None) -> list[dict[str, Any]]:
        """Recorded changes (``id``, ``experiment``, ``time``, ``actor``, ``action``, ``details``), oldest first."""
        query = sa.select(experiment_changes)
        if name is not None:
            query = query.where(experiment_changes.c.experiment == name)
        return self._fetch(_limited(query.order_by(experiment_changes.c.id), limit), "experiment change read")

    # --- decision log --------------------------------------------------------------------------------------------

    def append_decision(self, row: Mapping[str, Any]) -> int:
        """Append one decision (the :data:`~tastebud.store.schema.decisions` columns but ``id``); returns its id.

        The registry validates decisions (:mod:`tastebud.registry.decisions`); ``time`` must be timezone-aware.

        Raises:
            StoreError: when the database cannot be reached or refuses the row.
        """
        values = {**row, "time": to_utc(row["time"], where="decision time")}
        with self._begin("decision log write") as conn:
            return int(conn.execute(sa.insert(decisions).returning(decisions.c.id), values).scalar_one())

    def import_decisions(self, rows: Sequence[Mapping[str, Any]]) -> int:
        """Add decisions made elsewhere, each with its ``import_key``, in one transaction; a row whose key is
        stored already is skipped. Returns how many were new."""
        if not rows:
            return 0
        for row in rows:
            if not row.get("import_key"):
                raise DataValidationError("an imported decision needs an import_key")
        values = [{**r, "time": to_utc(r["time"], where=f"decision {r['import_key']} time")} for r in rows]
        return self._insert_new(decisions, "import_key", values, "decision log import")

    def read_decisions(self, model_name: str | None = None) -> list[dict[str, Any]]:
        """Decisions in the order they were made (by ``id``), optionally of one model."""
        query = sa.select(decisions)
        if model_name is not None:
            query = query.where(decisions.c.model_name == model_name)
        return self._fetch(query.order_by(decisions.c.id), "decision log read")

    def decision_log_version(self) -> tuple[int, int]:
        """``(number of decisions, largest id)``: changes whenever a decision is appended (a cheap cache key)."""
        query = sa.select(sa.func.count(), sa.func.coalesce(sa.func.max(decisions.c.id), 0))
        with self._begin("decision log read") as conn:
            count, last = conn.execute(query).one()
        return int(count), int(last)

    # --- retrain trigger state -----------------------------------------------------------------------------------

    def get_trigger_state(self, model_name: str) -> dict[str, Any] | None:
        """What the retrain triggers of ``model_name`` remember (``champion_version``, ``through_id``,
        ``attempted_at``), or None."""
        query = sa.select(trigger_state).where(trigger_state.c.model_name == model_name)
        rows = self._fetch(query, "trigger state read")
        return rows[0] if rows else None

    def put_trigger_state(
        self, model_name: str, *, champion_version: int, through_id: int, attempted_at: datetime | None = None
    ) -> None:
        """Remember (replacing what was remembered) a retrain attempt of ``model_name``."""
        values = {
            "model_name": model_name,
            "champion_version": int(champion_version),
            "through_id": int(through_id),
            "attempted_at": to_utc(attempted_at or datetime.now(UTC), where="attempted_at"),
        }
        dialect_insert = postgresql.insert if self.backend == "postgresql" else sqlite.insert
        stmt = dialect_insert(trigger_state).values(**values)
        stmt = stmt.on_conflict_do_update(
            index_elements=["model_name"],
            set_={k: stmt.excluded[k] for k in ("champion_version", "through_id", "attempted_at")},
        )
        with self._begin("trigger state write") as conn:
            conn.execute(stmt)

    def close(self) -> None:
        """Close every pooled connection; the store can be used again afterwards (it reconnects)."""
        self.engine.dispose()

    # --- frames --------------------------------------------------------------------------------------------------

    #: Columns of :meth:`exposures_frame`: name, kind, SQLite expression, PostgreSQL expression.
    _EXPOSURE_FRAME = (
        ("request_id", "str", "request_id", "request_id"),
        ("timestamp", "time", '"timestamp"', '"timestamp"'),
        ("user_id", "str", "user_id", "user_id"),
        ("variant", "str", "variant", "variant"),
        ("item_ids", "list", "item_ids", "item_ids::text"),
        ("teams", "list", "exposure -> '$.teams'", "(exposure -> 'teams')::text"),
        ("latency_ms", "float", "latency_ms", "latency_ms"),
        ("status_code", "int", "status_code", "status_code"),
        ("is_fallback", "bool", "is_fallback", "is_fallback::int"),
    )
    #: Columns of :meth:`events_frame`, as above.
    _EVENT_FRAME = (
        ("user_id", "str", "user_id", "user_id"),
        ("item_id", "str", "item_id", "item_id"),
        ("kind", "str", "kind", "kind"),
        ("rating", "float", "rating", "rating"),
        ("value", "float", "value", "value"),
        ("timestamp", "time", '"timestamp"', '"timestamp"'),
    )
    #: Rowids per SQLite query of the frame readers.
    frame_chunk_rows = 100_000

    def exposures_frame(
        self, *, experiment: str, since: datetime | None = None, until: datetime | None = None
    ) -> pl.DataFrame:
        """One experiment's request log as a polars frame, one row per logged list (an exposure), by time.

        Made for analysis at scale (a million lists in about 2 s on 2 cores; no Python object per row). Columns, those
        of :data:`tastebud.experiments.outcomes.EXPOSURE_SCHEMA`: ``request_id``, ``timestamp``
        (``Datetime("us", "UTC")``), ``user_id``, ``variant``, ``item_ids`` (list of str; position = index),
        ``teams`` (list of str from ``exposure.teams``, the variant behind each position of an interleaved list;
        null otherwise), ``latency_ms``, ``status_code``, ``is_fallback``.

        Args:
            experiment: the experiment's name (the request log's ``experiment`` column).
            since: inclusive lower bound on the request time (timezone-aware).
            until: exclusive upper bound on the request time.

        Raises:
            StoreError: when the database cannot be reached or refuses the read.
        """
        frame = self._read_frame(
            "request_logs", self._EXPOSURE_FRAME, ["experiment = {}"], [str(experiment)], since, until, "exposure read"
        )
        # The log is appended in time order, so the frame almost always comes sorted; sorting it again costs 0.3 s.
        return frame if frame["timestamp"].is_sorted() else frame.sort("timestamp", "request_id")

    def events_frame(
        self, *, since: datetime | None = None, until: datetime | None = None, kinds: Sequence[str] | None = None
    ) -> pl.DataFrame:
        """Stored events as a polars frame, in no particular order; made for analysis at scale (5 million in 3 s).

        Columns, those of :data:`tastebud.experiments.outcomes.EVENT_SCHEMA`: ``user_id``, ``item_id``, ``kind``,
        ``rating`` (null unless a rating), ``value``, ``timestamp`` (the event time, ``Datetime("us", "UTC")``).

        Args:
            since: inclusive lower bound on the event time (timezone-aware).
            until: exclusive upper bound on the event time.
            kinds: only events of these kinds (``rating``, ``view``, ...).

        Raises:
            StoreError: when the database cannot be reached or refuses the read.
        """
        conditions: list[str] = []
        names = sorted({str(k) for k in kinds or ()})
        if kinds is not None:
            conditions.append(f"kind IN ({', '.join('{}' for _ in names)})" if names else "1 = 0")
        return self._read_frame("events", self._EVENT_FRAME, conditions, names, since, until, "event read")

    def _read_frame(
        self,
        table: str,
        columns: tuple[tuple[str, str, str, str], ...],
        conditions: list[str],
        params: list[Any],
        since: datetime | None,
        until: datetime | None,
        what: str,
    ) -> pl.DataFrame:
        """``columns`` of the rows of ``table`` meeting every condition (``{}`` marks a parameter) and the window.

        A Python object per value costs more than the database's whole scan (``fetchall`` of 5 million events takes
        7 s), so no backend hands over rows: SQLite builds one JSON array per column and chunk of rowids,
        PostgreSQL streams CSV through ``COPY``, and polars parses either. Both give JSON columns as their text
        and timestamps as the same fixed-width UTC text, which :meth:`_typed_frame` decodes.
        """
        import polars as pl

        for bound, op, name in ((since, ">=", "since"), (until, "<", "until")):
            if bound is not None:
                conditions, params = [*conditions, f'"timestamp" {op} {{}}'], [*params, to_utc(bound, where=name)]
        try:
            if self.backend == "sqlite":
                return self._read_sqlite_frame(table, columns, conditions, params)
            return self._read_postgres_frame(table, columns, conditions, params)
        except self.engine.dialect.loaded_dbapi.Error as err:
            raise StoreError(f"{what} failed at {self.url}: {self._scrub(str(err).strip())}") from err
        except sa.exc.SQLAlchemyError as err:
            raise StoreError(f"{what} failed at {self.url}: {self._scrub(str(err))}") from err
        except pl.exceptions.PolarsError as err:  # e.g. an item_ids value that is not a JSON list of strings
            raise StoreError(f"{what} at {self.url}: a stored value cannot be read: {err}") from err

    def _read_sqlite_frame(
        self, table: str, columns: tuple[tuple[str, str, str, str], ...], conditions: list[str], params: list[Any]
    ) -> pl.DataFrame:
        """SQLite: a query per chunk of rowids, several at once (sqlite3 lets go of the GIL while SQLite works).

        Each returns ``count(*)`` and an array per column, all aggregated over the same rows, so they line up. A
        JSON column's texts are joined into an array as they are (no parsing, no quoting; ``null`` for NULL, so
        that no row is skipped). A REAL goes in as an integer when it is whole (3x faster than SQLite's rendering),
        else as text with 17 significant digits (SQLite's JSON keeps 15, which is not exact). Rows appended
        meanwhile (rowids past the last chunk) are not read.
        """
        import os
        from concurrent.futures import ThreadPoolExecutor

        import polars as pl

        def array(expr: str, kind: str) -> str:
            if kind == "list":
                return f"'[' || group_concat(ifnull({expr}, 'null'), ',') || ']'"
            if kind == "float":
                whole, text = f"CAST({expr} AS INTEGER)", f"printf('%!.17g', {expr})"
                expr = f"CASE WHEN {expr} = {whole} THEN {whole} WHEN {expr} IS NOT NULL THEN {text} END"
            return f"json_group_array({expr})"

        wire = self._wire_dtypes(columns, floats_as_text=True)
        element = {name: pl.List(pl.String) if kind == "list" else wire[name] for name, kind, *_ in columns}
        aggregates = ", ".join(array(expr, kind) for _, kind, expr, _ in columns)
        filters = "".join(f" AND {c.replace('{}', '?')}" for c in conditions)
        sql = f"SELECT count(*), {aggregates} FROM {table} WHERE rowid >= ? AND rowid < ?{filters}"
        values = tuple(_sqlite_time(p) if isinstance(p, datetime) else p for p in params)
        # min() or max() alone is a b-tree lookup; both in one SELECT, a full scan.
        bounds = f"SELECT (SELECT min(rowid) FROM {table}), (SELECT max(rowid) FROM {table})"
        with self._begin("frame read") as conn:
            low, high = conn.exec_driver_sql(bounds).one()
        step = max(1, int(self.frame_chunk_rows))
        chunks = [] if low is None else [(s, s + step) for s in range(int(low), int(high) + 1, step)]

        def read(chunk: tuple[int, int]) -> pl.DataFrame | None:
            raw = self.engine.raw_connection()
            try:
                cursor = raw.cursor()
                count, *arrays = cursor.execute(sql, (*chunk, *values)).fetchone()
                cursor.close()
            finally:
                raw.close()
            if not count:
                return None
            frame = pl.DataFrame({name: [text] for name, text in zip(wire, arrays, strict=True)}).select(
                pl.col(name).str.json_decode(pl.List(dtype)).explode() for name, dtype in element.items()
            )
            return self._typed_frame(frame, columns)  # in the worker, so that chunks are decoded side by side too

        # In memory every connection is the one shared connection: one chunk at a time.
        workers = 1 if isinstance(self.engine.pool, StaticPool) else min(len(chunks), (os.cpu_count() or 1) + 1, 8)
        if workers <= 1:
            parts = [read(c) for c in chunks]
        else:
            with ThreadPoolExecutor(workers, thread_name_prefix="tastebud-frame") as pool:
                parts = list(pool.map(read, chunks))
        frames = [p for p in parts if p is not None]
        return pl.concat(frames, rechunk=True) if frames else self._typed_frame(pl.DataFrame(schema=wire), columns)

    def _read_postgres_frame(
        self, table: str, columns: tuple[tuple[str, str, str, str], ...], conditions: list[str], params: list[Any]
    ) -> pl.DataFrame:
        """PostgreSQL: ``COPY (SELECT ...) TO STDOUT`` as CSV, parsed by polars."""
        import io

        import polars as pl

        wire = self._wire_dtypes(columns)
        select = ", ".join(
            f"to_char({expr} AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')" if kind == "time" else expr
            for _, kind, _, expr in columns
        )
        where = f" WHERE {' AND '.join(c.replace('{}', '%s') for c in conditions)}" if conditions else ""
        buffer = io.BytesIO()
        raw = self.engine.raw_connection()
        try:
            cursor = raw.cursor()
            copy_sql = f"COPY (SELECT {select} FROM {table}{where}) TO STDOUT (FORMAT csv)"
            with cursor.copy(copy_sql, params) as copy:  # type: ignore[attr-defined]  # a psycopg cursor
                for block in copy:
                    buffer.write(block)
            cursor.close()
        finally:
            raw.close()
        data = buffer.getvalue()
        frame = pl.read_csv(data, has_header=False, new_columns=list(wire), schema=wire) if data else None
        return self._typed_frame(pl.DataFrame(schema=wire) if frame is None else frame, columns)

    @staticmethod
    def _wire_dtypes(columns: tuple[tuple[str, str, str, str], ...], *, floats_as_text: bool = False) -> dict[str, Any]:
        """The polars types the databases hand over: text for timestamps and JSON, 0/1 for booleans."""
        import polars as pl

        kinds = {"str": pl.String, "time": pl.String, "list": pl.String, "int": pl.Int64, "bool": pl.Int64,
                 "float": pl.String if floats_as_text else pl.Float64}  # fmt: skip
        return {name: kinds[kind] for name, kind, *_ in columns}

    @staticmethod
    def _typed_frame(frame: pl.DataFrame, columns: tuple[tuple[str, str, str, str], ...]) -> pl.DataFrame:
        """``frame`` as handed over, with JSON lists decoded, timestamps parsed, floats and booleans typed.

        Timestamps come as fixed-width UTC text (``YYYY-MM-DD HH:MM:SS.ffffff``): the date part repeats and the
        time of day is plain digits, so cutting them out and adding them up is 3x faster than ``strptime``; any
        other width takes polars' general parser.
        """
        import polars as pl

        utc = pl.Datetime("us", "UTC")

        def typed(name: str, kind: str) -> pl.Expr:
            text = pl.col(name)
            if kind == "list":  # JSON text from PostgreSQL; SQLite's arrive decoded
                return text.str.json_decode(pl.List(pl.String)) if frame[name].dtype == pl.String else text
            if kind in ("bool", "float"):
                return text.cast(pl.Boolean if kind == "bool" else pl.Float64)
            if not (frame[name].str.len_bytes() == 26).all():
                return text.str.to_datetime("%Y-%m-%d %H:%M:%S%.f", time_unit="us", time_zone="UTC")
            day = text.str.slice(0, 10).str.to_date("%Y-%m-%d").cast(pl.Datetime("us")).dt.epoch("us")
            clock = (
                text.str.slice(11, 2).cast(pl.Int64) * 3_600_000_000
                + text.str.slice(14, 2).cast(pl.Int64) * 60_000_000
                + text.str.slice(17, 2).cast(pl.Int64) * 1_000_000
                + text.str.slice(20, 6).cast(pl.Int64)
            )
            return (day + clock).cast(utc)

        return frame.with_columns(
            typed(name, kind).alias(name) for name, kind, *_ in columns if kind in ("list", "bool", "float", "time")
        )

    # --- internals -----------------------------------------------------------------------------------------------

    def _insert_validated_events_sqlite(self, records: Sequence[Mapping[str, Any]], now: datetime) -> tuple[int, int]:
        """Insert pre-validated events through the DBAPI's ``executemany``, skipping SQLAlchemy's per-value work.

        Compiling a multi-row insert and running bind processors per value cost more than SQLite's insert itself;
        the rows here are already normalised, so they are bound as plain tuples with timestamps pre-formatted
        exactly as :class:`~tastebud.store.schema.UTCDateTime` stores them. The count of inserted rows comes from
        the connection's ``total_changes``, which ignored conflicts do not move.
        """
        if not records:
            return 0, 0
        received = _sqlite_time(now)
        rows = [
            (
                r["event_id"], r["user_id"], r["item_id"], r["kind"], r.get("rating"), r.get("value"),
                _sqlite_time(r["timestamp"]), r.get("source"),
                _sqlite_time(r["received_at"]) if r.get("received_at") else received,
            )
            for r in records
        ]  # fmt: skip
        inserted = self._execute_sqlite(_SQLITE_EVENT_INSERT, rows, "event write")
        return inserted, len(rows) - inserted

    def _execute_sqlite(self, sql: str, params: list[tuple[Any, ...]] | tuple[Any, ...], what: str) -> int:
        """Run ``sql`` in one transaction, once per row of a list or once with a tuple; the rows it inserted.

        Conflicts skipped by ``ON CONFLICT DO NOTHING`` do not count (they do not move ``total_changes``).
        """
        with self._begin(what) as conn:
            raw = conn.connection.dbapi_connection
            assert raw is not None
            before = raw.total_changes  # type: ignore[attr-defined]  # sqlite3.Connection
            conn.exec_driver_sql(sql, params)
            return int(raw.total_changes - before)  # type: ignore[attr-defined]

    def _insert_new(self, table: sa.Table, key: str, rows: list[dict[str, Any]], what: str) -> int:
        """Insert ``rows`` skipping conflicts on ``key``; the number actually inserted."""
        if not rows:
            return 0
        dialect_insert = postgresql.insert if self.backend == "postgresql" else sqlite.insert
        # RETURNING lists only the rows inserted, which counts them on both dialects (rowcount of an
        # executemany is not reliable across drivers).
        stmt = dialect_insert(table).on_conflict_do_nothing(index_elements=[key]).returning(table.c[key])
        with self._begin(what) as conn:
            return len(conn.execute(stmt, rows).all())

    def _fetch(self, query: sa.Select[Any], what: str) -> list[dict[str, Any]]:
        with self._begin(what) as conn:
            return [row_dict(row) for row in conn.execute(query)]

    @contextmanager
    def _begin(self, what: str) -> Iterator[Connection]:
        """A connection in a transaction, committed on success; database errors become :class:`StoreError`."""
        try:
            with self.engine.begin() as conn:
                yield conn
        except sa.exc.DBAPIError as err:
            raise self._error(what, err) from err
        except sa.exc.StatementError as err:
            # Raised before reaching the database: a parameter could not be converted (e.g. a JSON value).
            raise DataValidationError(f"{what} at {self.url}: a value cannot be stored: {err.orig}") from err
        except (UnicodeEncodeError, OverflowError) as err:
            # The driver could not bind a parameter (a string with a lone surrogate, an int beyond 64 bits); the
            # transaction is rolled back.
            raise DataValidationError(f"{what} at {self.url}: a value cannot be stored: {err}") from err
        except sa.exc.SQLAlchemyError as err:
            raise StoreError(f"{what} at {self.url} failed: {self._scrub(str(err))}") from err

    def _error(self, what: str, err: sa.exc.DBAPIError) -> StoreError:
        detail = self._scrub(str(err.orig).strip() or type(err.orig).__name__)
        if isinstance(err, sa.exc.OperationalError | sa.exc.InterfaceError) or err.connection_invalidated:
            return StoreError(f"{what} failed: cannot reach or use the store at {self.url}: {detail}")
        return StoreError(f"{what} refused by the store at {self.url}: {detail}")

    def _scrub(self, message: str) -> str:
        return message.replace(self._password, "***") if self._password else message


_SQLITE_EVENT_INSERT = (
    "INSERT INTO events (event_id, user_id, item_id, kind, rating, value, timestamp, source, received_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (event_id) DO NOTHING"
)


_REQUEST_FIELDS = (
    "request_id", "timestamp", "endpoint", "user_id", "item_id", "model_name", "model_version", "alias",
    "item_ids", "scores", "latency_ms", "status_code", "is_fallback", "fallback_reason", "variant", "provenance",
    "experiment", "exposure",
)  # fmt: skip
_REQUEST_FIELD_SET = frozenset(_REQUEST_FIELDS)
_SQLITE_REQUEST_INSERT = (
    f"INSERT INTO request_logs ({', '.join(_REQUEST_FIELDS)}) VALUES ({', '.join('?' * len(_REQUEST_FIELDS))}) "
    "ON CONFLICT (request_id) DO NOTHING"
)


#: Timestamps travel to SQLite as integer microseconds since 0001-01-01 UTC: exact, never negative (so SQLite's
#: integer division and remainder are floor ones), and 62135596800 s before the Unix epoch.
_YEAR_ONE = datetime(1, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_YEAR_ONE_TO_UNIX_EPOCH_S = 62_135_596_800


def _sqlite_batch_column(index: int, name: str) -> str:
    if name == "timestamp":
        # Naive-UTC text exactly as _sqlite_time and SQLAlchemy's SQLite DATETIME write it.
        us = f"json_extract(r, '$[{index}]')"
        return (
            f"strftime('%Y-%m-%d %H:%M:%S', {us} / 1000000 - {_YEAR_ONE_TO_UNIX_EPOCH_S}, 'unixepoch') "
            f"|| printf('.%06d', {us} % 1000000)"
        )
    if name in ("item_ids", "scores", "provenance"):
        return f"r -> '$[{index}]'"  # JSON text (minified), what the JSON columns hold
    if name == "exposure":  # nullable JSON: SQL NULL, not the JSON text 'null'
        return f"CASE WHEN json_type(r, '$[{index}]') = 'null' THEN NULL ELSE r -> '$[{index}]' END"
    return f"json_extract(r, '$[{index}]')"  # SQL value: JSON null -> NULL, true/false -> 1/0


assert RequestLogRecord._fields == _REQUEST_FIELDS, "RequestLogRecord must list the request_logs columns in order"
# One statement for the whole batch: a JSON array of per-record arrays, split by json_each. The CTE is materialised
# so that each record's JSON text is rendered once, not once per column (which cost twice the time). ``WHERE true``
# lets SQLite's parser tell the upsert clause from a join constraint of INSERT .. SELECT.
_SQLITE_REQUEST_INSERT_BATCH = (
    "WITH batch(r) AS MATERIALIZED (SELECT value FROM json_each(?)) "
    f"INSERT INTO request_logs ({', '.join(_REQUEST_FIELDS)}) "
    f"SELECT {', '.join(_sqlite_batch_column(i, name) for i, name in enumerate(_REQUEST_FIELDS))} "
    "FROM batch WHERE true ON CONFLICT (request_id) DO NOTHING"
)


def _sqlite_request_batch(records: Sequence[Mapping[str, Any] | RequestLogRecord]) -> str | None:
    """The batch as the JSON parameter of :data:`_SQLITE_REQUEST_INSERT_BATCH`, or None to take the dict paths.

    Only a batch made entirely of :class:`~tastebud.store.schema.RequestLogRecord` s is encoded, with one
    ``orjson.dumps``; the records are trusted to have their annotated types, so the only checks are those that
    keep a wrong value out of the table: finite latency and scores (JSON would turn NaN into null), an aware
    timestamp (subtracting it from an aware datetime fails otherwise) and values orjson can encode.
    """
    rows: list[tuple[Any, ...]] = []
    append = rows.append
    isfinite = math.isfinite
    try:
        for r in records:
            # sum() of finite floats is finite unless it overflows (then the validating path stores them anyway);
            # any inf or NaN makes it non-finite.
            if type(r) is not RequestLogRecord or not (isfinite(r[10]) and isfinite(sum(r[9]))):
                return None
            append((r[0], (r[1] - _YEAR_ONE) // _MICROSECOND, *r[2:]))
        return orjson.dumps(rows).decode()
    except (TypeError, OverflowError):  # naive timestamp, a value of another type, an int beyond 64 bits
        return None


def _sqlite_request_rows(records: Sequence[Mapping[str, Any]]) -> list[tuple[Any, ...]] | None:
    """Request-log rows as DBAPI tuples when every record has the server's own shape, else None.

    The serving layer builds these records itself (aware datetimes, lists of ids and float scores, a provenance
    dict), so the full per-field validation, which costs more than the insert, is skipped for them. Anything
    else (ISO strings, unknown or missing fields, odd types) returns None and goes through
    :func:`~tastebud.store.schema.request_log_row`, which names the offending record and field.
    """
    out = []
    for r in records:
        if not all(f in r for f in _REQUEST_FIELDS[:16]) or not all(f in _REQUEST_FIELD_SET for f in r):
            return None
        exposure = r.get("exposure")
        if exposure is not None and not isinstance(exposure, dict):
            return None
        ts, items, scores, prov = r["timestamp"], r["item_ids"], r["scores"], r["provenance"]
        if not (
            isinstance(ts, datetime)
            and ts.tzinfo is not None
            and isinstance(items, list)
            and isinstance(scores, list)
            and isinstance(prov, dict)
            and isinstance(r["request_id"], str)
            and isinstance(r["endpoint"], str)
            and _finite(r["latency_ms"])
            and isinstance(r["status_code"], int)
            and not isinstance(r["status_code"], bool)
            and (r["model_version"] is None or type(r["model_version"]) is int)
            and all(isinstance(i, str) for i in items)
            and all(isinstance(x, float | int) and math.isfinite(x) for x in scores)
        ):
            return None
        try:
            prov_json = orjson.dumps(prov).decode()
        except TypeError:
            return None
        out.append((
            r["request_id"], _sqlite_time(ts), r["endpoint"], _opt_str(r["user_id"]), _opt_str(r["item_id"]),
            _opt_str(r["model_name"]), r["model_version"], _opt_str(r["alias"]),
            orjson.dumps(items).decode(), orjson.dumps(scores).decode(), float(r["latency_ms"]), r["status_code"],
            1 if r["is_fallback"] else 0, _opt_str(r["fallback_reason"]), _opt_str(r["variant"]), prov_json,
            _opt_str(r.get("experiment")), None if exposure is None else orjson.dumps(exposure).decode(),
        ))  # fmt: skip
    return out


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _sqlite_time(value: datetime | float) -> str:
    """Naive-UTC text in SQLAlchemy's SQLite DATETIME format (what UTCDateTime stores)."""
    if not isinstance(value, datetime):
        value = datetime.fromtimestamp(value, UTC)
    value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")


def _parse_url(url: str) -> URL:
    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError as err:
        raise StoreError(f"store URL {url.split('@')[-1]!r} is not a valid SQLAlchemy URL: {err}") from err
    # A bare postgresql:// would pick psycopg2, which we do not ship; psycopg (3) is the supported driver.
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def _json_default(value: Any) -> Any:
    """Make common non-JSON values (datetimes, numpy scalars and arrays, paths) storable."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


# NaN is not JSON, and PostgreSQL rejects it: refuse it on both backends alike.
_json_dumps = partial(json.dumps, default=_json_default, allow_nan=False, ensure_ascii=False)


def _sqlite_engine(url: URL, busy_timeout_s: float) -> Engine:
    database = url.database or ""
    in_memory = database in ("", ":memory:") or database.startswith("file::memory:")
    if in_memory:
        # One shared connection, so that every thread (the background writer included) sees the same database.
        engine = sa.create_engine(
            url, poolclass=StaticPool, connect_args={"check_same_thread": False}, json_serializer=_json_dumps
        )
    else:
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": busy_timeout_s},
            json_serializer=_json_dumps,
        )

    @sa.event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            if not in_memory:
                # WAL lets readers run beside the writer; NORMAL sync is durable at checkpoints, fast per commit.
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        finally:
            cursor.close()

    return engine


def _postgres_engine(url: URL, connect_timeout_s: float) -> Engine:
    connect_args: dict[str, Any] = {}
    if "connect_timeout" not in url.query:
        connect_args["connect_timeout"] = max(1, round(connect_timeout_s))
    return sa.create_engine(url, pool_pre_ping=True, connect_args=connect_args, json_serializer=_json_dumps)


def _time_window(query: sa.Select[Any], column: Any, since: Any, until: Any) -> sa.Select[Any]:
    if since is not None:
        query = query.where(column >= to_utc(since, where="since"))
    if until is not None:
        query = query.where(column < to_utc(until, where="until"))
    return query


def _limited(query: sa.Select[Any], limit: int | None) -> sa.Select[Any]:
    if limit is None:
        return query
    if limit < 0:
        raise DataValidationError(f"limit must be >= 0, got {limit}")
    return query.limit(int(limit))


def _seconds(value: float) -> timedelta:
    return timedelta(seconds=float(value))


def _check_lock_args(name: str, owner: str, ttl_s: float) -> None:
    if not name or not owner:
        raise DataValidationError(f"lock name and owner must not be empty (got {name!r}, {owner!r})")
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, int | float) or not math.isfinite(ttl_s) or ttl_s <= 0:
        raise DataValidationError(f"lock lease must be a positive number of seconds, got {ttl_s!r}")


#: Key of the PostgreSQL advisory lock that serialises experiment starts (the first 8 bytes of a sha256, signed).
_EXPERIMENT_START_LOCK = int.from_bytes(hashlib.sha256(b"tastebud:experiment-start").digest()[:8], "big", signed=True)
_EXPERIMENT_OPTIONAL = ("started_at", "stopped_at", "updated_at")


def _experiment_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """Check a new experiment's row: every column named, aware times, a JSON object as definition."""
    problems = []
    missing = [c for c in EXPERIMENT_COLUMNS if c not in _EXPERIMENT_OPTIONAL and row.get(c) is None]
    if missing:
        problems.append(f"missing column(s) {', '.join(missing)}")
    unknown = sorted(set(row) - set(EXPERIMENT_COLUMNS))
    if unknown:
        problems.append(f"unknown column(s) {', '.join(unknown)}")
    if problems:
        raise DataValidationError(f"experiment row: {'; '.join(problems)}")
    values = dict(row)
    for key in ("created_at", *_EXPERIMENT_OPTIONAL):
        if values.get(key) is not None:
            values[key] = to_utc(values[key], where=f"experiment {key}")
    values.setdefault("updated_at", values["created_at"])
    values["definition"] = _json_object(values["definition"], "experiment definition")
    return values


def _json_object(value: Any, what: str) -> dict[str, Any]:
    """``value`` as a plain JSON object (NaN and non-JSON values refused)."""
    if not isinstance(value, Mapping):
        raise DataValidationError(f"{what}: expected a JSON object, got {type(value).__name__}")
    try:
        decoded: dict[str, Any] = json.loads(_json_dumps(value))
    except (TypeError, ValueError) as err:
        raise DataValidationError(f"{what} cannot be stored as JSON: {err}") from err
    return decoded


def _add_experiment_change(
    conn: Connection, name: str, actor: str, action: str, details: Mapping[str, Any] | None, at: datetime
) -> int:
    recorded = None if details is None else _json_object(details, f"experiment {action} details")
    stmt = sa.insert(experiment_changes).values(experiment=name, time=at, actor=actor, action=action, details=recorded)
    return int(conn.execute(stmt.returning(experiment_changes.c.id)).scalar_one())


def _first_per_key(rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """Rows with a repeated ``key`` dropped, the first kept (one INSERT must not carry a key twice)."""
    seen: dict[Any, dict[str, Any]] = {}
    for row in rows:
        seen.setdefault(row[key], row)
    return list(seen.values())
