"""The store on a real PostgreSQL: the contract suite, plus URL handling and connection errors.

A session fixture starts a throw-away server (``initdb`` + ``pg_ctl``) on a free loopback port in a temporary
directory and stops it at the end; each test gets its own fresh database. As root, the server runs as ``nobody``
(PostgreSQL refuses to run as root). Set ``TASTEBUD_TEST_POSTGRES_URL`` to an existing server's URL (a role that may
create databases) to use that instead. Without either, the tests are skipped; ``scripts/ensure-postgres.sh``
installs the server binaries.
"""

from __future__ import annotations

import contextlib
import glob
import math
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from contracts.store import IST, T0, StoreContract, log_record, row_count
from tastebud.config import build_settings
from tastebud.errors import DataValidationError, StoreError
from tastebud.store import RequestLogRecord, create_store

psycopg = pytest.importorskip("psycopg", reason="psycopg (tastebud[postgres]) is needed for PostgreSQL")

URL_ENV = "TASTEBUD_TEST_POSTGRES_URL"
#: Unprivileged account that runs the server when the tests run as root.
SERVER_USER = "nobody"


def _pg_bin_dir() -> Path | None:
    """Directory holding ``initdb`` and ``pg_ctl``: on PATH, else the newest /usr/lib/postgresql/*/bin."""
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(on_path).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    return Path(candidates[-1]).parent if candidates else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _TempPostgres:
    """A PostgreSQL server in a temporary directory, trust auth on 127.0.0.1 only, durability off for speed."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        as_root = os.geteuid() == 0
        # As root, TMPDIR may sit under /root, which the server's account cannot enter; /tmp it can.
        self.root = Path(tempfile.mkdtemp(prefix="tastebud-pg-", dir="/tmp" if as_root else None))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = 0
        self._as_user: list[str] = []
        if as_root:
            account = pwd.getpwnam(SERVER_USER)
            os.chown(self.root, account.pw_uid, account.pw_gid)
            self._as_user = ["runuser", "-u", SERVER_USER, "--"]

    def _run(self, *args: str) -> None:
        result = subprocess.run([*self._as_user, *args], capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}): {result.stderr}\n{log[-2000:]}")

    def start(self) -> str:
        self._run(
            str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", "tastebud", "--auth=trust",
            "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions",
        )  # fmt: skip
        for attempt in range(3):  # the free port can be taken between finding and binding it
            self.port = _free_port()
            options = f"-h 127.0.0.1 -p {self.port} -k {self.root} -F -c full_page_writes=off -c synchronous_commit=off"
            try:
                self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "30",
                          "-o", options, "start")  # fmt: skip
                break
            except RuntimeError:
                if attempt == 2:
                    raise
        return f"postgresql+psycopg://tastebud@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_admin_url() -> Iterator[str]:
    """URL of a PostgreSQL server whose role may create databases: started here, or from the environment."""
    if os.environ.get(URL_ENV):
        yield os.environ[URL_ENV]
        return
    bin_dir = _pg_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries not found; run scripts/ensure-postgres.sh")
    server = _TempPostgres(bin_dir)
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def postgres_database(postgres_admin_url: str) -> Iterator[str]:
    """URL of a new, empty database on the test server, dropped after the test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(postgres_admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    yield sa.engine.make_url(postgres_admin_url).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.dispose()


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
                "dead_letters", "events", "experiment_changes", "experiments", "locks", "request_logs", "retrains",
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
    url = f"postgresql+psycopg://ingest:s3cr3t-pw@127.0.0.1:{_free_port()}/events"
    store = create_store(url=url, connect_timeout_s=2)
    started = time.monotonic()
    with pytest.raises(StoreError) as info:
        store.init_schema()
    message = str(info.value)
    assert "s3cr3t-pw" not in message
    assert "ingest:***@127.0.0.1" in message and "cannot reach" in message
    assert time.monotonic() - started < 10
    assert "s3cr3t-pw" not in store.url and "s3cr3t-pw" not in repr(store)
