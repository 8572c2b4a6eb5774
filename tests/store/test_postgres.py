"""The store on a real PostgreSQL: the contract suite, plus URL handling and connection errors.

A session fixture starts a throw-away server (``initdb`` + ``pg_ctl``) on a free loopback port in a temporary
directory and stops it at the end; each test gets its own fresh database. As root, the server runs as ``nobody``
(PostgreSQL refuses to run as root). Set ``TASTEBUD_TEST_POSTGRES_URL`` to an existing server's URL (a role that may
create databases) to use that instead. Without either, the tests are skipped; ``scripts/ensure-postgres.sh``
installs the server binaries.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from contracts.store import IST, T0, StoreContract, log_record, row_count
from servers import free_port
from tastebud.config import build_settings
from tastebud.errors import DataValidationError, StoreError
from tastebud.store import RequestLogRecord, create_store

psycopg = pytest.importorskip("psycopg", reason="psycopg (tastebud[postgres]) is needed for PostgreSQL")


@pytest.mark.integration
class TestPostgresStore(StoreContract):
    @pytest.fixture
    def store_url(self, postgres_database: str) -> str:
        return postgres_database

    def test_store_settings_select_postgres(self, store_url: str, tmp_path: Path) -> None:
        settings = build_settings(home=tmp_path, store={"url": store_url})
        with create_store(settings) as store:
            store.init_schema()
            assert store.backend == "postgresql"
            assert store.table_names() == [
                "alembic_version", "dead_letters", "decisions", "events", "experiment_changes", "experiments",
                "locks", "request_logs", "retrains", "trigger_state",
            ]  # fmt: skip
        assert not (tmp_path / "tastebud.db").exists()

    def test_bare_postgresql_scheme_uses_psycopg(self, store_url: str) -> None:
        bare = store_url.replace("postgresql+psycopg://", "postgresql://")
        with create_store(url=bare) as store:
            assert store.engine.dialect.driver == "psycopg"
            store.init_schema()

    def test_timestamps_are_timestamptz(self, store_url: str) -> None:
        with create_store(url=store_url) as store:
            store.init_schema()
            with store.engine.connect() as conn:
                types = conn.exec_driver_sql(
                    "SELECT data_type FROM information_schema.columns WHERE table_name = 'request_logs' "
                    "AND column_name = 'timestamp'"
                ).scalar_one()
        assert types == "timestamp with time zone"

    def test_request_log_records_read_back_like_dicts(self, store_url: str) -> None:
        """The server's RequestLogRecords take the dict path on PostgreSQL and read back field for field."""
        bare = {"user_id": "Zoë 用户 🎬", "item_ids": [], "scores": [], "model_version": None, "variant": None}
        nested = {"a": None, "nested": {"b": None, "l": [1, 2.5, None, True]}}
        local = datetime(2024, 5, 1, 23, 59, 59, 987654, tzinfo=IST)
        records = [
            RequestLogRecord(**log_record(0)),
            RequestLogRecord(**log_record(1, timestamp=datetime(2024, 5, 1, 12, 0, 1, tzinfo=UTC))),
            RequestLogRecord(**log_record(2, **bare, provenance=nested, timestamp=local)),
        ]
        with create_store(url=store_url) as store:
            store.init_schema()
            # Duplicates within the batch and of stored ids keep the first row and are not counted.
            assert store.write_request_logs([*records, RequestLogRecord(**log_record(1, endpoint="x"))]) == 3
            assert store.write_request_logs([records[0], log_record(3), RequestLogRecord(**log_record(4))]) == 2
            for r in records:
                assert store.get_request(r.request_id) == {**r._asdict(), "timestamp": r.timestamp.astimezone(UTC)}
            assert store.get_request("req-00000")["timestamp"] == T0  # type: ignore[index]
            assert store.get_request("req-00003") == log_record(3)
            assert [r["request_id"] for r in store.query_request_logs()] == [f"req-{n:05d}" for n in (0, 1, 3, 4, 2)]
            bad = [RequestLogRecord(**log_record(5)), RequestLogRecord(**log_record(6, latency_ms=math.nan))]
            with pytest.raises(DataValidationError, match=r"record 1.*latency_ms"):
                store.write_request_logs(bad)
            assert row_count(store, "request_logs") == 5


def test_unreachable_server_raises_store_error_without_the_password() -> None:
    url = f"postgresql+psycopg://ingest:s3cr3t-pw@127.0.0.1:{free_port()}/events"
    store = create_store(url=url, connect_timeout_s=2)
    started = time.monotonic()
    with pytest.raises(StoreError) as info:
        store.init_schema()
    message = str(info.value)
    assert "s3cr3t-pw" not in message
    assert "ingest:***@127.0.0.1" in message and "cannot reach" in message
    assert time.monotonic() - started < 10
    assert "s3cr3t-pw" not in store.url and "s3cr3t-pw" not in repr(store)
