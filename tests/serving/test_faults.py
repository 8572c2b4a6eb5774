"""Faults of the request log: a locked or full database never fails or stalls a request, and is seen.

Serving writes its request log from a background thread (:class:`tastebud.store.RequestLogWriter`); these tests
use the real app with its real SQLite request store and break that store: another connection holds an exclusive
transaction (``database is locked``), or every write fails as a full disk makes SQLite fail (``database or disk
is full``). Every request must still answer 200 at once; the records that cannot be written are counted in
``tastebud_serving_request_log_dropped_total`` (failed attempts in ``..._errors_total``), a log line names the
cause, and writing resumes when the database does.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

import tastebud.store
from tastebud.config import Settings
from tastebud.serving import create_app

from .conftest import FakeRegistry
from .test_recommend import wait_ready
from .test_switch import metric

DROPPED = "tastebud_serving_request_log_dropped_total "
ERRORS = "tastebud_serving_request_log_errors_total "


@pytest.fixture
def client(settings: Settings, registry: FakeRegistry, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    """The app with its own SQLite request log; SQLite waits 0.2 s for a lock (not 5 s) to keep the test short."""
    real = tastebud.store.create_store

    def quick(*args: Any, **kwargs: Any) -> Any:
        return real(*args, **{**kwargs, "busy_timeout_s": 0.2})

    monkeypatch.setattr(tastebud.store, "create_store", quick)
    with TestClient(create_app(settings, registry=registry)) as c:
        wait_ready(c)
        writer = c.app.state.request_log  # type: ignore[attr-defined]
        writer.retry_backoff = 0.01
        yield c


def answer_all(client: TestClient, n: int) -> tuple[list[str], float]:
    """``n`` recommendations, all of which must be 200; their request ids and the slowest one's seconds."""
    ids, slowest = [], 0.0
    for i in range(n):
        t0 = time.perf_counter()
        r = client.get(f"/recommend/{i % 40}?k=3")
        slowest = max(slowest, time.perf_counter() - t0)
        assert r.status_code == 200, r.text
        ids.append(r.headers["x-request-id"])
    return ids, slowest


def test_locked_request_log_database_drops_counts_and_recovers(
    client: TestClient, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    writer = client.app.state.request_log  # type: ignore[attr-defined]
    path = Path(settings.store_url.removeprefix("sqlite:///"))
    assert path.is_file()
    locker = sqlite3.connect(path, timeout=5, isolation_level=None)
    caplog.set_level(logging.WARNING, logger="tastebud.store.writer")
    try:
        locker.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
        ids, slowest = answer_all(client, 30)
        assert slowest < 1.0  # a request never waits for the log
        assert writer.flush(timeout=20)  # every record settled: written or dropped
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert metric(client, DROPPED) >= 30 and metric(client, ERRORS) >= 1
    assert all(writer.store.get_request(i) is None for i in ids)
    text = caplog.text
    assert "database is locked" in text and "dropped after" in text and "serving continues" in text
    assert "Traceback" not in text
    # the lock is gone: the log writes again
    ids, _ = answer_all(client, 5)
    assert writer.flush(timeout=10)
    assert all(writer.store.get_request(i) is not None for i in ids)
    assert client.get("/health").json()["status"] == "ok"


def test_full_disk_request_log_drops_counts_and_recovers(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    writer = client.app.state.request_log  # type: ignore[attr-defined]
    store = writer.store
    real_write = store.write_request_logs
    full = {"on": True}

    def write(records: Any) -> int:
        if full["on"]:
            raise sqlite3.OperationalError("database or disk is full")
        return real_write(records)

    monkeypatch.setattr(store, "write_request_logs", write)
    caplog.set_level(logging.WARNING, logger="tastebud.store.writer")
    dropped_before = metric(client, DROPPED)
    ids, slowest = answer_all(client, 25)
    assert slowest < 1.0
    assert writer.flush(timeout=20)
    assert metric(client, DROPPED) - dropped_before >= 25 and metric(client, ERRORS) >= 1
    assert "database or disk is full" in caplog.text and "dropped after" in caplog.text
    full["on"] = False  # space freed
    ids, _ = answer_all(client, 5)
    assert writer.flush(timeout=10)
    assert all(store.get_request(i) is not None for i in ids)


# ---------------------------------------------------------------------------------------------- PostgreSQL restart
class RestartablePostgres:
    """A throw-away PostgreSQL (``initdb`` + ``pg_ctl``) on a fixed loopback port that can be killed and restarted.

    Commits are synchronous (unlike the store tests' server): an ``immediate`` stop is a crash, and what a crash
    may lose is exactly what this test is about.
    """

    def __init__(self, bin_dir: Path) -> None:
        import os
        import pwd
        import tempfile

        self.bin_dir = bin_dir
        as_root = os.geteuid() == 0
        self.root = Path(tempfile.mkdtemp(prefix="tastebud-pgfault-", dir="/tmp" if as_root else None))
        self.data, self.log = self.root / "data", self.root / "server.log"
        self._as_user: list[str] = []
        if as_root:  # PostgreSQL refuses to run as root
            account = pwd.getpwnam("nobody")
            os.chown(self.root, account.pw_uid, account.pw_gid)
            self._as_user = ["runuser", "-u", "nobody", "--"]
        from .test_offload import free_port

        self.port = free_port()

    def _run(self, *args: str) -> None:
        import subprocess

        result = subprocess.run([*self._as_user, *args], capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}): {result.stderr}\n{log[-2000:]}")

    def init(self) -> str:
        self._run(str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", "tastebud", "--auth=trust", "-E", "UTF8",
                  "--locale=C", "--no-sync", "--no-instructions")  # fmt: skip
        self.start()
        return f"postgresql+psycopg://tastebud@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        options = f"-h 127.0.0.1 -p {self.port} -k {self.root}"
        self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "30",
                  "-o", options, "start")  # fmt: skip

    def crash(self) -> None:
        self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def remove(self) -> None:
        import contextlib
        import shutil

        with contextlib.suppress(Exception):
            self.crash()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def restartable_postgres() -> Iterator[RestartablePostgres]:
    import glob
    import shutil

    pytest.importorskip("psycopg", reason="psycopg (tastebud[postgres]) is needed for PostgreSQL")
    on_path = shutil.which("pg_ctl")
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    pg_ctl = on_path or (candidates[-1] if candidates else None)
    if pg_ctl is None:
        pytest.skip("PostgreSQL server binaries not found; run scripts/ensure-postgres.sh")
    server = RestartablePostgres(Path(pg_ctl).resolve().parent)
    yield server
    server.remove()


@pytest.mark.integration
@pytest.mark.slow
def test_postgres_restart_during_ingest_loses_no_accepted_event(
    restartable_postgres: RestartablePostgres, registry: FakeRegistry, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Events posted while PostgreSQL crashes and restarts: every event answered as accepted is stored afterwards;
    the failures in between are clear 503s (JSON error bodies), and ingest works again without a server restart."""
    import threading

    from tastebud.config import build_settings
    from tastebud.store import create_store

    url = restartable_postgres.init()
    settings = build_settings(
        home=tmp_path, store={"url": url},
        serving={"model_name": "ml", "watch_interval_s": 0, "admin_token": "s3cret", "max_k": 50},
    )  # fmt: skip
    answers: list[tuple[str, int, dict[str, Any]]] = []
    stop = threading.Event()
    with TestClient(create_app(settings, registry=registry), raise_server_exceptions=False) as client:
        wait_ready(client)

        def post_events() -> None:
            n = 0
            while not stop.is_set():
                n += 1
                event_id = f"pg-{n:05d}"
                r = client.post("/events", json=[{"event_id": event_id, "user_id": str(n % 40), "item_id": str(n % 97),
                                                  "rating": 4.0}])  # fmt: skip
                try:
                    body = r.json()
                except ValueError:
                    body = {"raw": r.text[:300]}
                answers.append((event_id, r.status_code, body))
                time.sleep(0.01)

        poster = threading.Thread(target=post_events)
        poster.start()
        try:
            time.sleep(1.5)
            restartable_postgres.crash()
            down_at = len(answers)
            time.sleep(2.0)  # requests meet a dead database
            recommend = client.get("/recommend/3?k=3")  # serving itself goes on
            restartable_postgres.start()
            time.sleep(3.0)  # the pool reconnects
        finally:
            stop.set()
            poster.join(30)
        assert recommend.status_code == 200
    statuses = [s for _, s, _ in answers]
    accepted = [e for e, s, b in answers if s == 200 and b.get("accepted", 0) + b.get("duplicates", 0) == 1]
    failed = [(s, b) for _, s, b in answers if s != 200]
    assert accepted and down_at > 0
    assert failed, "no request met the dead database"
    assert {s for s, _ in failed} == {503}, failed[:3]
    assert all(b.get("error") and b.get("message") and "Traceback" not in str(b) for _, b in failed), failed[:3]
    assert statuses[-5:] == [200] * 5, answers[-5:]  # ingest is back without a restart
    with create_store(url=url) as store:
        stored = {r["event_id"] for r in store.query_events()}
    tracebacks = [r.getMessage() for r in caplog.records if r.exc_info and r.name.startswith("tastebud")]
    assert not tracebacks, tracebacks[:3]  # the outage is logged as one line per failure, no stack traces
    missing = sorted(set(accepted) - stored)
    assert not missing, f"accepted but not stored: {missing[:10]} ({len(missing)} of {len(accepted)})"
