"""The store's schema as it was before migrations (revision ``0001_baseline``), frozen.

:mod:`tastebud.store.schema` keeps changing; this does not. The baseline revision creates these tables, and a
database made by ``Store.init_schema`` before migrations existed is brought to exactly this schema (missing tables,
the nullable columns and indexes added over time, old indexes dropped) before it is stamped at the baseline.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

#: The baseline's revision id.
REVISION = "0001_baseline"

#: Indexes that stores older than the baseline had and the baseline drops (a per-user index cost a random page
#: write per logged request).
DROPPED_INDEXES: tuple[str, ...] = ("ix_request_logs_user_id",)

_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _time() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def _json() -> sa.JSON:
    return sa.JSON(none_as_null=True)


def baseline_metadata() -> sa.MetaData:
    """A new MetaData holding the baseline's seven tables."""
    md = sa.MetaData()
    sa.Table(
        "request_logs",
        md,
        sa.Column("request_id", sa.String(64), primary_key=True),
        sa.Column("timestamp", _time(), nullable=False),
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
        sa.Column("experiment", sa.String(64), nullable=True),
        sa.Column("exposure", _json(), nullable=True),
        sa.Index("ix_request_logs_timestamp", "timestamp"),
    )
    sa.Table(
        "events",
        md,
        sa.Column("id", _BigId, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(128), nullable=False),
        sa.Column("user_id", sa.String(255), nullable=False),
        sa.Column("item_id", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("rating", sa.Float(), nullable=True),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("timestamp", _time(), nullable=False),
        sa.Column("source", sa.String(64), nullable=True),
        sa.Column("received_at", _time(), nullable=False),
        sa.UniqueConstraint("event_id", name="uq_events_event_id"),
        sa.Index("ix_events_user_id_timestamp", "user_id", "timestamp"),
        sa.Index("ix_events_timestamp", "timestamp"),
    )
    sa.Table(
        "dead_letters",
        md,
        sa.Column("id", _BigId, primary_key=True, autoincrement=True),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("received_at", _time(), nullable=False),
        sa.Column("payload_size", sa.BigInteger(), nullable=True),
        sa.Column("payload_sha256", sa.String(64), nullable=True),
        sa.Index("ix_dead_letters_received_at", "received_at"),
        sa.Index("uq_dead_letters_source_payload", "source", "payload_sha256", unique=True),
    )
    sa.Table(
        "locks",
        md,
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("owner", sa.String(255), nullable=False),
        sa.Column("acquired_at", _time(), nullable=False),
        sa.Column("renewed_at", _time(), nullable=False),
        sa.Column("expires_at", _time(), nullable=False),
    )
    sa.Table(
        "retrains",
        md,
        sa.Column("id", _BigId, primary_key=True, autoincrement=True),
        sa.Column("model_name", sa.String(255), nullable=False),
        sa.Column("trigger", sa.String(64), nullable=False),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("started_at", _time(), nullable=False),
        sa.Column("finished_at", _time(), nullable=True),
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
    sa.Table(
        "experiments",
        md,
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("model_name", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("layer", sa.String(64), nullable=False),
        sa.Column("traffic_start", sa.Float(), nullable=False),
        sa.Column("traffic_end", sa.Float(), nullable=False),
        sa.Column("definition", _json(), nullable=False),
        sa.Column("salt", sa.String(64), nullable=False),
        sa.Column("created_at", _time(), nullable=False),
        sa.Column("started_at", _time(), nullable=True),
        sa.Column("stopped_at", _time(), nullable=True),
        sa.Column("created_by", sa.String(255), nullable=False),
        sa.Column("updated_at", _time(), nullable=False),
        sa.Index("ix_experiments_model_status", "model_name", "status"),
    )
    sa.Table(
        "experiment_changes",
        md,
        sa.Column("id", _BigId, primary_key=True, autoincrement=True),
        sa.Column("experiment", sa.String(64), nullable=False),
        sa.Column("time", _time(), nullable=False),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("details", _json(), nullable=True),
        sa.Index("ix_experiment_changes_experiment", "experiment", "id"),
    )
    return md


#: The baseline's table names.
TABLES: tuple[str, ...] = tuple(sorted(baseline_metadata().tables))


def bring_to_baseline(conn: Connection) -> list[str]:
    """Bring a database made before migrations to exactly the baseline; returns what was changed, in words.

    Creates missing tables; adds the nullable columns and the indexes declared since a table was created (the
    older ``init_schema`` did the same at every start); drops :data:`DROPPED_INDEXES`. A column the baseline
    requires (NOT NULL) that the table lacks cannot be added: the store is not one Tastebud made.

    Raises:
        ValueError: naming the table and column that cannot be added.
    """
    md = baseline_metadata()
    changes: list[str] = []
    inspector = sa.inspect(conn)
    existing = set(inspector.get_table_names())
    for table in md.sorted_tables:
        if table.name not in existing:
            table.create(conn)
            changes.append(f"created table {table.name}")
            continue
        present = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in present:
                continue
            if not column.nullable:
                raise ValueError(f"table {table.name} lacks the required column {column.name}, which cannot be added")
            kind = column.type.compile(dialect=conn.dialect)
            conn.execute(sa.text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}'))
            changes.append(f"added column {table.name}.{column.name}")
        indexes = {i["name"] for i in sa.inspect(conn).get_indexes(table.name)}
        for index in table.indexes:
            if index.name not in indexes:
                index.create(conn)
                changes.append(f"created index {index.name}")
    present_indexes = {i["name"] for t in TABLES for i in sa.inspect(conn).get_indexes(t)}
    for name in DROPPED_INDEXES:
        if name in present_indexes:
            conn.execute(sa.text(f"DROP INDEX {name}"))
            changes.append(f"dropped index {name}")
    return changes
