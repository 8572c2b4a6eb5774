"""The background request-log writer: serving hands records over without waiting for the database.

``submit`` only appends a record to a bounded buffer and never blocks. A daemon thread takes records off in batches
(up to ``batch_size``, or whatever arrived within ``flush_interval``) and writes each batch in one transaction.
The thread is woken once per batch (first record, full batch, flush, close), never per record: a thread wake-up per
request (what ``queue.Queue.put`` does to a waiting consumer) hands the GIL back and forth and cost serving more
CPU than the database write itself.
A failing or slow database therefore never slows or fails a request: a failed batch is retried a bounded number of
times with backoff and then given up, and every record that is not written is reported through ``on_drop`` (those
given up after failed writes also through ``on_failed``), every error through ``on_error``, and both in the log (at
most a line per kind every 10 s: a locked or full database is visible without metrics), never silently.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, Self

from tastebud.errors import DataValidationError
from tastebud.store.schema import RequestLogRecord

logger = logging.getLogger(__name__)

#: How often an idle worker checks whether it was asked to stop, seconds.
_IDLE_POLL_S = 0.05
#: Least interval between log lines about drops when no ``on_drop`` callback is set, seconds.
_WARN_INTERVAL_S = 10.0


#: What a writer takes: the server's own typed record, or any mapping with the ``request_logs`` fields.
Record = Mapping[str, Any] | RequestLogRecord


class RequestLogSink(Protocol):
    """What the writer needs of a store: :meth:`tastebud.store.Store.write_request_logs`."""

    def write_request_logs(self, records: Sequence[Record]) -> int: ...


class RequestLogWriter:
    """Writes request-log records to a store from a background thread, in batches, off the caller's path.

    Args:
        store: where batches go (a :class:`~tastebud.store.Store` or anything with ``write_request_logs``).
        maxsize: bound of the queue; a record submitted while it is full is dropped.
        batch_size: most records per write (one transaction).
        flush_interval: how long the worker waits for more records to fill a batch, seconds.
        on_drop: called with a count whenever records are dropped (queue full, writer closed, retries spent).
            It may run on the submitting thread, so it must be quick (a counter increment).
        on_error: called with each exception a write raised (before any retry).
        on_failed: called with a count whenever records are given up because writes failed (retries spent, or
            a record the store refuses): the subset of drops that a locked, full or unreachable database causes.
        max_retries: retries of a failed batch before its records are dropped.
        retry_backoff: wait before the first retry, seconds; doubled for each further one.
    """

    def __init__(
        self,
        store: RequestLogSink,
        *,
        maxsize: int = 10_000,
        batch_size: int = 500,
        flush_interval: float = 0.2,
        on_drop: Callable[[int], None] | None = None,
        on_error: Callable[[Exception], None] | None = None,
        on_failed: Callable[[int], None] | None = None,
        max_retries: int = 3,
        retry_backoff: float = 0.1,
    ) -> None:
        if maxsize < 1 or batch_size < 1 or flush_interval < 0 or max_retries < 0 or retry_backoff < 0:
            raise ValueError(
                "RequestLogWriter needs maxsize >= 1, batch_size >= 1, flush_interval >= 0, max_retries >= 0 and "
                f"retry_backoff >= 0; got {maxsize}, {batch_size}, {flush_interval}, {max_retries}, {retry_backoff}"
            )
        self.store = store
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_retries = max_retries
        self.retry_backoff = retry_backoff
        self._on_drop = on_drop
        self._on_error = on_error
        self._on_failed = on_failed
        self.maxsize = maxsize
        # Appends and pops of a deque are atomic; the lock guards the counters and the bound check with them.
        self._buffer: deque[Record] = deque()
        self._wake = threading.Event()  # set by the first record of a batch, a full batch, flush and close
        self._lock = threading.Lock()
        self._settled_changed = threading.Condition(self._lock)
        # accepted: records put on the queue; settled: accepted records written or dropped since.
        self._accepted = self._settled = 0
        self._written = self._dropped = self._errors = 0
        self._flushers = 0
        self._hurry = threading.Event()  # a flush is waiting: write what is there without gathering more
        self._stop = threading.Event()  # no waiting for more records; exit once the queue is empty
        self._abandon = threading.Event()  # close timed out: no more retries
        self._closed = False
        self._thread: threading.Thread | None = None
        self._last_warning = 0.0
        self._last_error_line = -_WARN_INTERVAL_S
        self._last_warning_error = -_WARN_INTERVAL_S
        self._suppressed_errors = 0

    # --- public --------------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the background thread (once; later calls do nothing)."""
        with self._lock:
            if self._thread is not None or self._closed:
                return
            self._thread = threading.Thread(target=self._run, name="tastebud-request-log-writer", daemon=True)
        self._thread.start()

    def submit(self, record: Record) -> bool:
        """Queue one record for writing; never blocks.

        Returns:
            True when queued; False when the queue is full or the writer is closed (and ``on_drop(1)`` is called).
        """
        with self._lock:
            if not self._closed and len(self._buffer) < self.maxsize:
                # Counted with the append so that the worker can never settle more than was accepted.
                self._accepted += 1
                self._buffer.append(record)
                n = len(self._buffer)
            else:
                n = 0
                self._dropped += 1
        if n:
            if n == 1 or n == self.batch_size:
                self._wake.set()
            return True
        self._report_drop(1)
        return False

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every record submitted so far is written, or dropped and reported.

        Returns:
            True if that happened within ``timeout`` seconds; False otherwise (or when the writer was never started).
        """
        with self._settled_changed:
            target = self._accepted
            self._flushers += 1
            self._hurry.set()
            self._wake.set()
            try:
                return self._settled_changed.wait_for(
                    lambda: self._settled >= min(target, self._accepted), timeout=max(0.0, timeout)
                )
            finally:
                self._flushers -= 1
                if self._flushers == 0:
                    self._hurry.clear()

    def close(self, timeout: float = 5.0) -> None:
        """Refuse new records, write what is queued within ``timeout`` seconds, then stop the thread.

        Records still unwritten when the time is up are reported through ``on_drop``; a batch the database is
        still busy with is reported by the thread when that write ends. Calling it again does nothing.
        """
        deadline = time.monotonic() + max(0.0, timeout)
        with self._lock:
            if self._closed:
                return
            self._closed = True
            must_start = self._thread is None and self._accepted > self._settled
        if must_start:
            # Closed before start: still write what was queued.
            self._thread = threading.Thread(target=self._run, name="tastebud-request-log-writer", daemon=True)
            self._thread.start()
        flushed = self.flush(max(0.0, deadline - time.monotonic()))
        self._stop.set()
        self._wake.set()
        if not flushed:
            self._abandon.set()
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()))
        leftover = self._drain()
        if leftover:
            self._settle(dropped=len(leftover))

    @property
    def pending(self) -> int:
        """Records queued or being written, not yet written or dropped."""
        with self._lock:
            return self._accepted - self._settled

    @property
    def written(self) -> int:
        """Records the store accepted (a repeated ``request_id`` counts: the store keeps its first row)."""
        with self._lock:
            return self._written

    @property
    def dropped(self) -> int:
        """Records given up: queue full, submitted after close, invalid, or retries spent."""
        with self._lock:
            return self._dropped

    @property
    def errors(self) -> int:
        """Exceptions raised by writes (each failed attempt counts)."""
        with self._lock:
            return self._errors

    @property
    def running(self) -> bool:
        """Whether the background thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- worker --------------------------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            batch = self._take_batch()
            if batch:
                try:
                    self._write(batch)
                except Exception:  # a bug in a callback must not kill the writer
                    logger.exception("request-log writer: unexpected error; %d records dropped", len(batch))
                    self._settle(dropped=len(batch))
            elif self._stop.is_set():
                return

    def _take_batch(self) -> list[Record]:
        """Up to ``batch_size`` records: the first waited for briefly, then whatever arrives in ``flush_interval``."""
        buffer = self._buffer
        if not self._wait(lambda: bool(buffer) or self._stop.is_set(), _IDLE_POLL_S):
            return []
        deadline = time.monotonic() + self.flush_interval
        while len(buffer) < self.batch_size and not (self._hurry.is_set() or self._stop.is_set()):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._wait(
                lambda: len(buffer) >= self.batch_size or self._hurry.is_set() or self._stop.is_set(), remaining
            ):
                break
        batch = []
        for _ in range(min(len(buffer), self.batch_size)):
            batch.append(buffer.popleft())
        return batch

    def _wait(self, ready: Callable[[], bool], timeout: float) -> bool:
        """Sleep until ``ready()`` or ``timeout`` seconds; whether ready. Clear-then-check loses no wake-up."""
        self._wake.clear()
        if ready():
            return True
        self._wake.wait(timeout)
        return ready()

    def _write(self, batch: list[Record]) -> None:
        """Write one batch, retrying transient failures; settle every record as written or dropped."""
        attempt = 0
        while True:
            try:
                self.store.write_request_logs(batch)
            except DataValidationError as err:
                # Retrying cannot fix a bad record: write the others one by one, drop the bad ones.
                self._report_error(err)
                if len(batch) == 1:
                    self._give_up(1, err, attempt + 1)
                else:
                    for record in batch:
                        self._write([record])
                return
            except Exception as err:
                self._report_error(err)
                attempt += 1
                if attempt > self.max_retries or self._abandon.wait(self.retry_backoff * 2 ** (attempt - 1)):
                    self._give_up(len(batch), err, attempt)
                    return
                continue
            self._settle(written=len(batch))
            return

    def _give_up(self, count: int, err: Exception, attempts: int) -> None:
        """Drop ``count`` records whose write failed: one clear log line (rate-limited), ``on_failed``, ``on_drop``."""
        now = time.monotonic()
        if now - self._last_error_line >= _WARN_INTERVAL_S:
            self._last_error_line = now
            logger.error(
                "request log: %d record(s) dropped after %d failed write attempt(s): %s; serving continues without "
                "them (dropped so far: %d)", count, attempts, err, self.dropped + count,
            )  # fmt: skip
        if self._on_failed is not None:
            try:
                self._on_failed(count)
            except Exception:
                logger.exception("request-log writer: on_failed callback failed")
        self._settle(dropped=count)

    def _drain(self) -> list[Record]:
        records = []
        while True:
            try:
                records.append(self._buffer.popleft())
            except IndexError:
                return records

    def _settle(self, *, written: int = 0, dropped: int = 0) -> None:
        with self._settled_changed:
            self._written += written
            self._dropped += dropped
            self._settled += written + dropped
            self._settled_changed.notify_all()
        if dropped:
            self._report_drop(dropped)

    def _report_drop(self, count: int) -> None:
        if self._on_drop is None:
            now = time.monotonic()
            if now - self._last_warning >= _WARN_INTERVAL_S:
                self._last_warning = now
                logger.warning("request-log writer dropped %d record(s) (%d in all)", count, self.dropped)
            return
        try:
            self._on_drop(count)
        except Exception:
            logger.exception("request-log writer: on_drop callback failed")

    def _report_error(self, err: Exception) -> None:
        with self._lock:
            self._errors += 1
        # Always a log line (a database that is locked or full must be visible without metrics), at most one per
        # interval: a failing database would otherwise write one line per batch and retry.
        now = time.monotonic()
        if now - self._last_warning_error >= _WARN_INTERVAL_S:
            suppressed, self._suppressed_errors = self._suppressed_errors, 0
            self._last_warning_error = now
            logger.warning(
                "request-log write failed (%s): %s%s", type(err).__name__, err,
                f" ({suppressed} more failures since the last report)" if suppressed else "",
            )  # fmt: skip
        else:
            self._suppressed_errors += 1
        if self._on_error is None:
            return
        try:
            self._on_error(err)
        except Exception:
            logger.exception("request-log writer: on_error callback failed")
