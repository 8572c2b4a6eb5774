"""The store on SQLite: the contract suite, plus WAL mode, file placement and clear errors."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from contracts.store import StoreContract, log_record, row_count
from tastebud.config import build_settings
from tastebud.errors import StoreError
from tastebud.store import RequestLogWriter, create_store


class TestSQLiteStore(StoreContract):
    @pytest.fixture
    def store_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path / 'store.db'}"


def test_default_store_is_a_wal_sqlite_file_in_the_home(tmp_path: Path) -> None:
    settings = build_settings(home=tmp_path / "home")
    store = create_store(settings)
    store.init_schema()
    assert store.backend == "sqlite"
    assert (tmp_path / "home" / "tastebud.db").is_file()
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 5000
    store.close()


def test_missing_parent_directories_are_created(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "store.db"
    with create_store(url=f"sqlite:///{path}") as store:
        store.init_schema()
    assert path.is_file()


def test_explicit_url_overrides_settings(tmp_path: Path) -> None:
    settings = build_settings(home=tmp_path / "home", store={"url": f"sqlite:///{tmp_path / 'other.db'}"})
    with create_store(settings) as store:
        store.init_schema()
    assert (tmp_path / "other.db").is_file() and not (tmp_path / "home").exists()


def test_in_memory_store_is_shared_with_the_writer_thread() -> None:
    store = create_store(url="sqlite://")
    store.init_schema()
    writer = RequestLogWriter(store, flush_interval=0.01)
    writer.start()
    assert all(writer.submit(log_record(n)) for n in range(20))
    writer.close(timeout=5)
    assert row_count(store, "request_logs") == 20


def test_a_second_connection_reads_while_a_write_is_open(tmp_path: Path) -> None:
    # WAL: a reader is not blocked by an open write transaction.
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = create_store(url=url)
    store.init_schema()
    store.write_request_logs([log_record(1)])
    with store.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM request_logs"))
        reader = create_store(url=url)
        assert reader.get_request("req-00001") is not None
        reader.close()
    assert store.get_request("req-00001") is None


def test_unwritable_location_raises_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match="cannot create the database directory"):
        create_store(url=f"sqlite:///{blocker / 'sub' / 'store.db'}")


def test_database_that_cannot_open_raises_store_error_naming_the_url(tmp_path: Path) -> None:
    (tmp_path / "dir.db").mkdir()
    store = create_store(url=f"sqlite:///{tmp_path / 'dir.db'}")
    with pytest.raises(StoreError) as info:
        store.init_schema()
    assert str(tmp_path / "dir.db") in str(info.value)


@pytest.mark.parametrize(
    ("url", "message"),
    [("mysql://user:pw@host/db", "unsupported backend"), ("not a url", "not a valid SQLAlchemy URL")],
)
def test_bad_urls_raise_store_error(url: str, message: str) -> None:
    with pytest.raises(StoreError, match=message) as info:
        create_store(url=url)
    assert ":pw@" not in str(info.value)


def test_naive_datetime_in_a_query_is_rejected(tmp_path: Path) -> None:
    with create_store(url=f"sqlite:///{tmp_path / 'store.db'}") as store:
        store.init_schema()
        with pytest.raises(Exception, match="no timezone"):
            store.query_request_logs(since=datetime(2024, 1, 1))
        assert store.query_request_logs(since=datetime(2024, 1, 1, tzinfo=UTC)) == []


def test_fast_path_batch_is_atomic_when_a_row_fails_in_the_database(tmp_path: Path) -> None:
    """The SQLite fast path (executemany) rolls back the rows before a row the database refuses."""
    from tastebud.store import create_store

    store = create_store(url=f"sqlite:///{tmp_path / 'atomic.db'}")
    store.init_schema()
    with store.engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TRIGGER fail_third BEFORE INSERT ON request_logs WHEN NEW.request_id = 'r2' "
            "BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
        )
    records = [log_record(n) for n in range(5)]
    for n, rec in enumerate(records):
        rec["request_id"] = f"r{n}"
    with pytest.raises(StoreError, match="injected failure"):
        store.write_request_logs(records)
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM request_logs").scalar() == 0
    store.close()


def _init(url: str) -> str:
    try:
        with create_store(url=url) as store:
            store.init_schema()
        return "ok"
    except Exception as err:  # reported to the test
        return repr(err)


def test_processes_creating_the_schema_at_once_all_succeed(tmp_path: Path) -> None:
    """The workers of one server start together and each creates the schema of a new database."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        for n in range(4):
            url = f"sqlite:///{tmp_path / f'race-{n}.db'}"
            assert pool.map(_init, [url] * 4) == ["ok"] * 4
