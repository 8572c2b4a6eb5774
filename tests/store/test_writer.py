"""The background request-log writer: never blocks, batches, retries, reports every drop, flushes on close."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from contracts.store import log_record, row_count
from tastebud.errors import DataValidationError, StoreError
from tastebud.store import RequestLogWriter, create_store


class FakeStore:
    """Records the batches it is given; can sleep, block on a gate, or fail a number of times."""

    def __init__(self, *, delay: float = 0.0, failures: int = 0, gate: threading.Event | None = None) -> None:
        self.delay = delay
        self.failures = failures  # the next `failures` writes raise; -1 fails forever
        self.gate = gate
        self.batches: list[list[str]] = []
        self.calls = 0
        self._lock = threading.Lock()

    def write_request_logs(self, records: Sequence[Mapping[str, Any]]) -> int:
        with self._lock:
            self.calls += 1
        if self.gate is not None:
            self.gate.wait(10)
        if self.delay:
            time.sleep(self.delay)
        with self._lock:
            if self.failures:
                self.failures -= 1 if self.failures > 0 else 0
                raise StoreError("store at sqlite:///x.db unavailable (injected)")
            self.batches.append([r["request_id"] for r in records])
        return len(records)

    @property
    def ids(self) -> list[str]:
        return [i for batch in self.batches for i in batch]


class Drops:
    """Collects on_drop counts and on_error exceptions (thread-safe)."""

    def __init__(self) -> None:
        self.counts: list[int] = []
        self.errors: list[Exception] = []
        self._lock = threading.Lock()

    def on_drop(self, count: int) -> None:
        with self._lock:
            self.counts.append(count)

    def on_error(self, err: Exception) -> None:
        with self._lock:
            self.errors.append(err)

    @property
    def total(self) -> int:
        return sum(self.counts)


def records(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [log_record(i) for i in range(start, start + n)]


def test_slow_store_never_slows_submit() -> None:
    gate = threading.Event()
    store = FakeStore(gate=gate)  # every write hangs until the gate opens: a database stuck on a lock
    drops = Drops()
    writer = RequestLogWriter(store, maxsize=5000, batch_size=100, flush_interval=0.0, on_drop=drops.on_drop)
    writer.start()
    writer.submit(log_record(0))
    deadline = time.monotonic() + 5
    while store.calls == 0 and time.monotonic() < deadline:  # the worker is now inside a write
        time.sleep(0.001)
    latencies = []
    started = time.perf_counter()
    for record in records(1999, start=1):
        t = time.perf_counter()
        assert writer.submit(record)
        latencies.append(time.perf_counter() - t)
    elapsed = time.perf_counter() - started
    # Every submit returned while the first write was still hanging, and quickly (generous bounds: shared CPUs).
    assert store.calls == 1 and store.batches == []
    assert elapsed < 1.0, elapsed
    assert sorted(latencies)[len(latencies) // 2] < 0.001
    gate.set()
    writer.close(timeout=10)
    assert sorted(store.ids) == [f"req-{n:05d}" for n in range(2000)]
    assert drops.counts == [] and writer.pending == 0


def test_full_queue_drops_and_reports_each_record() -> None:
    drops = Drops()
    store = FakeStore()
    writer = RequestLogWriter(store, maxsize=10, on_drop=drops.on_drop)
    results = [writer.submit(r) for r in records(15)]  # not started: nothing leaves the queue
    assert results == [True] * 10 + [False] * 5
    assert drops.counts == [1] * 5 and writer.dropped == 5 and writer.pending == 10
    writer.start()
    assert writer.flush(timeout=5)
    writer.close()
    assert store.ids == [f"req-{n:05d}" for n in range(10)]


def test_failing_store_is_retried_then_the_batch_is_reported_dropped() -> None:
    drops = Drops()
    store = FakeStore(failures=-1)
    writer = RequestLogWriter(
        store, max_retries=2, retry_backoff=0.001, flush_interval=0.0, on_drop=drops.on_drop, on_error=drops.on_error
    )
    for record in records(3):  # queued before start: they form one batch
        assert writer.submit(record)
    writer.start()
    assert writer.flush(timeout=5)
    # One batch: the first attempt and two retries fail, then its three records are dropped.
    assert store.calls == 3 and writer.errors == 3 and all(isinstance(e, StoreError) for e in drops.errors)
    assert drops.total == 3 and writer.dropped == 3 and writer.written == 0
    # The database comes back: the writer is still alive and writes again.
    store.failures = 0
    assert writer.submit(log_record(99)) and writer.flush(timeout=5)
    assert store.ids == ["req-00099"] and writer.running
    writer.close()


def test_transient_failures_are_retried_without_loss() -> None:
    drops = Drops()
    store = FakeStore(failures=2)
    writer = RequestLogWriter(store, max_retries=3, retry_backoff=0.001, on_drop=drops.on_drop, on_error=drops.on_error)
    writer.start()
    for record in records(50):
        writer.submit(record)
    writer.close(timeout=5)
    assert sorted(store.ids) == [f"req-{n:05d}" for n in range(50)]
    assert len(drops.errors) == 2 and drops.counts == [] and writer.written == 50


def test_close_flushes_everything_in_batches() -> None:
    store = FakeStore(delay=0.002)
    writer = RequestLogWriter(store, batch_size=64, flush_interval=0.05)
    writer.start()
    for record in records(1000):
        writer.submit(record)
    writer.close(timeout=10)
    assert store.ids == [f"req-{n:05d}" for n in range(1000)]  # all of them, in submission order
    assert max(len(b) for b in store.batches) <= 64
    assert len(store.batches) < 100  # batched, not one write per record
    assert writer.pending == 0 and not writer.running


def test_records_arriving_within_flush_interval_share_one_write() -> None:
    store = FakeStore()
    writer = RequestLogWriter(store, batch_size=100, flush_interval=0.3)
    writer.start()
    for record in records(5):
        writer.submit(record)
    time.sleep(0.6)
    assert store.batches == [[f"req-{n:05d}" for n in range(5)]]
    writer.close()


def test_flush_does_not_wait_out_the_flush_interval() -> None:
    store = FakeStore()
    writer = RequestLogWriter(store, batch_size=100, flush_interval=5.0)
    writer.start()
    writer.submit(log_record(1))
    started = time.monotonic()
    assert writer.flush(timeout=3)
    assert time.monotonic() - started < 1.0
    assert store.ids == ["req-00001"]
    writer.close()


def test_close_on_a_stuck_store_returns_in_time_and_reports_the_rest() -> None:
    gate = threading.Event()
    drops = Drops()
    store = FakeStore(gate=gate)
    writer = RequestLogWriter(store, batch_size=10, flush_interval=0.0, on_drop=drops.on_drop)
    writer.start()
    for record in records(100):
        writer.submit(record)
    started = time.monotonic()
    writer.close(timeout=0.3)
    assert time.monotonic() - started < 1.0
    assert drops.total >= 80  # everything still queued; the batch being written is not counted yet
    gate.set()  # the stuck write finishes and is counted as written
    deadline = time.monotonic() + 5
    while writer.pending and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(store.ids) + drops.total == 100 and writer.pending == 0


def test_submit_after_close_is_refused_and_reported() -> None:
    drops = Drops()
    writer = RequestLogWriter(FakeStore(), on_drop=drops.on_drop)
    writer.start()
    writer.close()
    assert writer.submit(log_record(1)) is False
    assert drops.counts == [1]
    writer.close()  # a second close is harmless


def test_close_before_start_still_writes_the_queue() -> None:
    store = FakeStore()
    writer = RequestLogWriter(store)
    for record in records(5):
        writer.submit(record)
    assert writer.flush(timeout=0.05) is False  # nothing runs yet
    writer.close(timeout=5)
    assert len(store.ids) == 5


def test_invalid_record_is_dropped_and_the_rest_of_its_batch_written(tmp_path: Path) -> None:
    store = create_store(url=f"sqlite:///{tmp_path / 'store.db'}")
    store.init_schema()
    drops = Drops()
    writer = RequestLogWriter(store, batch_size=10, flush_interval=0.05, on_drop=drops.on_drop, on_error=drops.on_error)
    batch = records(5)
    batch[2] = log_record(2, timestamp=datetime(2024, 1, 1))  # naive: refused
    for record in batch:
        writer.submit(record)
    writer.start()
    writer.close(timeout=5)
    assert drops.counts == [1]
    assert any(isinstance(e, DataValidationError) and "timestamp" in str(e) for e in drops.errors)
    assert row_count(store, "request_logs") == 4 and store.get_request("req-00002") is None


def test_failing_callbacks_do_not_stop_the_writer() -> None:
    def explode(*_: Any) -> None:
        raise RuntimeError("callback bug")

    store = FakeStore(failures=1)
    writer = RequestLogWriter(store, retry_backoff=0.001, on_drop=explode, on_error=explode)
    writer.start()
    for record in records(3):
        writer.submit(record)
    writer.close(timeout=5)
    assert sorted(store.ids) == ["req-00000", "req-00001", "req-00002"]


def test_unreachable_database_never_reaches_the_caller(tmp_path: Path) -> None:
    (tmp_path / "dir.db").mkdir()  # a directory: SQLite cannot open it
    store = create_store(url=f"sqlite:///{tmp_path / 'dir.db'}")
    drops = Drops()
    writer = RequestLogWriter(
        store, max_retries=1, retry_backoff=0.001, flush_interval=0.0, on_drop=drops.on_drop, on_error=drops.on_error
    )
    writer.start()
    assert writer.submit(log_record(1))
    assert writer.flush(timeout=5)
    writer.close()
    assert drops.total == 1 and len(drops.errors) == 2
    assert all(isinstance(e, StoreError) and "dir.db" in str(e) for e in drops.errors)


@pytest.mark.parametrize("bad", [{"maxsize": 0}, {"batch_size": 0}, {"max_retries": -1}, {"flush_interval": -1.0}])
def test_invalid_settings_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="RequestLogWriter needs"):
        RequestLogWriter(FakeStore(), **bad)
