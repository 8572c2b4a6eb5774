"""Schema migrations (Alembic) on SQLite and a real PostgreSQL: from an empty database, from the baseline with rows,
from a database made by ``init_schema`` before migrations, and several processes starting at once."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from contracts.store import event, experiment_row, log_record
from tastebud.errors import StoreError
from tastebud.store import Store, create_store, metadata, migrate
from tastebud.store.migrations.baseline import TABLES as BASELINE_TABLES
from tastebud.store.migrations.baseline import baseline_metadata

T = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    pytest.importorskip("psycopg", reason="psycopg (tastebud[postgres]) is needed for PostgreSQL")
    return str(request.getfixturevalue("postgres_database"))


@pytest.fixture
def store(url: str) -> Iterator[Store]:
    with create_store(url=url) as s:
        yield s


def _tables(store: Store) -> set[str]:
    return set(store.table_names())


def _schema_diff(store: Store) -> list[object]:
    """What autogenerate would change to make the database match :data:`tastebud.store.metadata` (nothing)."""
    with store.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(ctx, metadata))


def _fill(store: Store) -> None:
    """One row in each baseline table, through the store's own methods."""
    store.write_request_logs([log_record(1), log_record(2)])
    store.write_events([event(1), event(2), event(3)])
    store.write_dead_letters([{"source": "http", "reason": "bad", "payload": b"\x00x"}])
    assert store.acquire_lock("retrain:m", "host:1:a", 60)
    rid = store.start_retrain(model_name="m", trigger="manual", owner="host:1:a")
    store.finish_retrain(rid, outcome="promoted", version=2)
    assert store.insert_experiment(experiment_row("e1"), actor="tests")


def _snapshot(store: Store) -> dict[str, object]:
    return {
        "requests": [store.get_request(f"req-{n:05d}") for n in (1, 2)],
        "events": store.query_events(),
        "dead_letters": store.query_dead_letters(),
        "lock": store.get_lock("retrain:m"),
        "retrains": store.retrain_history("m"),
        "experiments": store.list_experiments(),
        "changes": store.experiment_changes(),
    }


def test_an_empty_database_is_upgraded_to_the_newest_revision_matching_the_schema(store: Store) -> None:
    assert migrate.current_revision(store) is None
    store.init_schema()
    assert migrate.current_revision(store) == migrate.head_revision() == "0003_trigger_state"
    assert _tables(store) == {*metadata.tables, "alembic_version"}
    assert _schema_diff(store) == []  # the revisions build exactly what schema.py declares
    store.init_schema()  # a second start changes nothing
    assert migrate.upgrade(store).changed is False


def test_the_baseline_with_rows_is_upgraded_and_every_row_is_kept(store: Store) -> None:
    result = migrate.upgrade(store, migrate.BASELINE)
    assert (result.before, result.after) == (None, "0001_baseline")
    assert "decisions" not in _tables(store) and set(BASELINE_TABLES) <= _tables(store)
    _fill(store)
    before = _snapshot(store)
    store.init_schema()
    assert migrate.current_revision(store) == migrate.head_revision()
    assert _snapshot(store) == before
    assert store.read_decisions() == [] and store.get_trigger_state("m") is None
    assert _schema_diff(store) == []


def test_a_database_made_before_migrations_is_stamped_at_the_baseline_then_upgraded(store: Store) -> None:
    # What the older init_schema left: the baseline's tables without alembic_version, from a version whose
    # request_logs had no experiment/exposure columns and whose dead letters had no hash columns.
    old = baseline_metadata()
    old.remove(old.tables["experiment_changes"])  # a table added later than the rest
    for table, columns in {"request_logs": ("experiment", "exposure"),
                           "dead_letters": ("payload_size", "payload_sha256")}.items():  # fmt: skip
        t = old.tables[table]
        for name in columns:
            t._columns.remove(t.c[name])
        for index in [i for i in t.indexes if any(c.name in columns for c in i.columns)]:
            t.indexes.discard(index)
    with store.engine.begin() as conn:
        old.create_all(conn)
        conn.execute(sa.text("CREATE INDEX ix_request_logs_user_id ON request_logs (user_id)"))
        conn.execute(sa.text(
            "INSERT INTO dead_letters (source, reason, payload, received_at) VALUES ('http', 'old', :p, :t)"
        ), {"p": b"old", "t": T.replace(tzinfo=None) if store.backend == "sqlite" else T})  # fmt: skip
    store.write_events([event(1), event(2)])
    events_before = store.query_events()
    assert migrate.is_legacy(store) and migrate.current_revision(store) is None

    result = migrate.upgrade(store)
    assert result.legacy and (result.before, result.after) == (None, migrate.head_revision())
    assert "created table experiment_changes" in result.changes
    assert "added column request_logs.experiment" in result.changes
    assert "dropped index ix_request_logs_user_id" in result.changes
    assert store.query_events() == events_before
    assert [(d["reason"], d["payload"], d["payload_sha256"]) for d in store.query_dead_letters()] == [
        ("old", b"old", None)
    ]
    assert _schema_diff(store) == []
    assert store.write_request_logs([log_record(7)]) == 1  # the new columns work
    assert not migrate.is_legacy(store) and migrate.upgrade(store).changed is False


def test_a_revision_this_version_does_not_know_is_refused_clearly(store: Store) -> None:
    store.init_schema()
    with store.engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '0099_from_the_future'"))
    with pytest.raises(StoreError, match="revision '0099_from_the_future', which this version of Tastebud does not"):
        store.init_schema()


def test_a_table_without_a_required_column_is_refused_naming_it(store: Store) -> None:
    with store.engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE locks (name VARCHAR(255) PRIMARY KEY)"))
    with pytest.raises(StoreError, match="table locks lacks the required column owner"):
        store.init_schema()


def _init(url: str) -> str:
    try:
        with create_store(url=url) as store:
            store.init_schema()
        return "ok"
    except Exception as err:  # reported to the test
        return repr(err)


@pytest.mark.slow
def test_processes_initialising_a_fresh_database_at_once_all_succeed(url: str, store: Store) -> None:
    """The API replicas, the consumer and the scheduler start together on a new database: each upgrades it."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        assert pool.map(_init, [url] * 4) == ["ok"] * 4
    assert migrate.current_revision(store) == migrate.head_revision()
    with store.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM alembic_version")).scalar_one() == 1
    assert _schema_diff(store) == []


def test_the_migrations_are_files_of_the_package() -> None:
    """The revisions ship inside the package (a wheel install has them; no alembic.ini is needed)."""
    import tastebud.store

    location = Path(migrate.SCRIPT_LOCATION)
    assert location.parent == Path(tastebud.store.__file__).resolve().parent
    assert (location / "env.py").is_file()
    assert [r for r, _ in migrate.revisions()] == ["0001_baseline", "0002_decisions", "0003_trigger_state"]


def test_a_migration_waits_for_one_in_progress(url: str, store: Store) -> None:
    """The lock that serialises migrations between processes (advisory lock, or the file beside a SQLite file)."""
    import fcntl
    import threading

    done = threading.Event()
    if store.backend == "postgresql":
        holder = store.engine.connect()
        holder.execute(sa.select(sa.func.pg_advisory_lock(migrate._PG_LOCK_KEY)))

        def release() -> None:
            holder.execute(sa.select(sa.func.pg_advisory_unlock(migrate._PG_LOCK_KEY)))
            holder.close()
    else:
        database = Path(store.engine.url.database or "")
        handle = database.with_name(database.name + ".migrate.lock").open("a")
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)

        def release() -> None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            handle.close()

    other = create_store(url=url)
    thread = threading.Thread(target=lambda: (other.init_schema(), done.set()))
    thread.start()
    try:
        assert not done.wait(1.0), "the upgrade did not wait for the migration in progress"
        assert migrate.current_revision(store) is None
    finally:
        release()
    thread.join(30)
    other.close()
    assert done.is_set() and migrate.current_revision(store) == migrate.head_revision()


def test_an_empty_alembic_version_beside_the_tables_is_taken_for_a_database_before_migrations(store: Store) -> None:
    """SQLite runs DDL outside the transaction: a first stamp that failed can leave alembic_version empty."""
    with store.engine.begin() as conn:
        baseline_metadata().create_all(conn)
        conn.execute(sa.text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)"))
    store.write_events([event(1)])
    result = migrate.upgrade(store)
    assert result.legacy and result.after == migrate.head_revision() and len(store.query_events()) == 1
