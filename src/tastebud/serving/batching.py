"""Dynamic batching of ``/recommend``: the requests of a worker that wait at the same time are scored together.

On a large catalog one scored request is mostly one matrix-vector product over every item factor (60,000 items x 64
float32: 15 MB read from memory per request). Scoring the requests that are waiting together turns those products
into one matrix-matrix product that reads the factors once per batch, and shares the per-call Python and NumPy
overhead (see "Serving at scale" in bench/RESULTS.md).

A route submits a plain personal request (:meth:`Engine.plain_request`: a known user without real-time events, no
filters, no experiment, not the content fallback, not in the result cache) and awaits its answer. The first
request of a batch schedules the batch with ``loop.call_soon``: it runs as soon as the event loop is next free, so
every request whose handler runs before then joins it, and no timer adds latency when the server is idle (a lone
request is a batch of one, scored as without batching). While more requests join at each turn of the loop, the
batch waits a few turns more (:data:`MAX_DEFERRALS`). At most ``serving.batch_max`` requests form one batch.

A batch smaller than the worker's recent batches (:attr:`Batcher.expected`) is then held up to
``serving.batch_wait_ms`` and released as soon as it reaches that size: under a steady load the clients' requests
come back within a fraction of a millisecond of each other, and one that just misses a batch otherwise waits for
that batch and the next; with the result cache answering half the requests, the misses come a few at a time and
are scored in small, dear batches. The expectation is the size of the last batch (so a hold that ends at the limit
lowers it to what came), and after a quiet spell (:data:`IDLE_RESET_S`) a lone request is not held.

A model whose requests leave the loop (``serving.offload_ms``, :mod:`tastebud.serving.offload`) scores each batch
in one worker thread: one hand-off per batch instead of one per request. One such batch runs at a time per
process; the requests arriving meanwhile form the next one, so batches grow with the load. A batch of such a model
expected to take at most ``serving.batch_inline_ms`` is scored on the loop all the same: the event loop pauses
that long at most, and the thread's GIL hand-offs, which cost more than they spare on a loaded worker, are avoided
(ML-25M size, 2 workers: 1,660 -> 2,087 req/s, p99 34.5 -> 27.9 ms; bench/RESULTS.md). The expectation is ``n``
times the engine's cost per batched request (:attr:`Engine.batch_cost_ms`, a moving average of the batches scored
so far), or before any batch, the calibrated cost of one request alone, which overstates it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

from tastebud.monitoring.metrics import ServingMetrics
from tastebud.serving.engine import Engine, PlainRequest, Result
from tastebud.serving.offload import to_thread

logger = logging.getLogger(__name__)

__all__ = ["Batcher"]

#: Most event-loop turns a batch waits for requests still joining it (see :meth:`Batcher._flush`).
MAX_DEFERRALS = 4


class _Waiting(NamedTuple):
    engine: Engine
    request: PlainRequest
    future: asyncio.Future[Result]
    threaded: bool


#: A batcher that scored nothing for this long (or ten times ``wait_ms``, if longer) expects lone requests again.
IDLE_RESET_S = 0.05

#: Weight of the latest batch in :attr:`Engine.batch_cost_ms`, the moving average of the cost per batched request.
COST_WEIGHT = 0.2


def _scored(engine: Engine, requests: list[PlainRequest]) -> list[Result | Exception]:
    """``engine.recommend_rows(requests)``, the time it took per request kept in ``engine.batch_cost_ms``."""
    started = time.perf_counter()
    results = engine.recommend_rows(requests)
    per_request = (time.perf_counter() - started) * 1000.0 / max(1, len(requests))
    before = getattr(engine, "batch_cost_ms", None)  # (an engine stand-in may not have it yet)
    engine.batch_cost_ms = per_request if before is None else before + COST_WEIGHT * (per_request - before)
    return results


class Batcher:
    """Collects one worker's plain ``/recommend`` requests into scoring batches (one per app, on its event loop).

    Args:
        max_size: most requests in one batch (at least 2; a larger wave is scored as several batches).
        inline_ms: a batch of requests that would go to a thread is scored on the loop when it is expected to take
            at most this many milliseconds (see the module's description); 0: never.
        wait_ms: the longest a batch smaller than the recent ones is held (see the module's description); 0: never.
        metrics: where batch sizes and holds are counted (``tastebud_serving_batch_size``,
            ``tastebud_serving_batch_holds_total``), if anywhere.

    Attributes:
        requests: requests submitted so far.
        batches: batches scored so far (``requests / batches`` is the mean batch size).
        largest: the largest batch so far.
    """

    def __init__(
        self, max_size: int, inline_ms: float = 0.0, wait_ms: float = 0.0, metrics: ServingMetrics | None = None
    ) -> None:
        if max_size < 2:
            raise ValueError(f"a batch holds at least 2 requests (got max_size={max_size}); 1 disables batching")
        if wait_ms < 0:
            raise ValueError(f"wait_ms must be >= 0 (got {wait_ms})")
        self.max_size = max_size
        self.inline_ms = inline_ms
        self.wait_ms = wait_ms
        self.metrics = metrics
        self.requests = self.batches = self.largest = 0
        self.waits = self.timeouts = 0  # batches held for the expected size; holds that ended at wait_ms
        #: the size of the last batch (see :meth:`_flush`): a batch smaller than this is held
        self.expected = 1
        self._timer: asyncio.TimerHandle | None = None
        self._last_scored = float("-inf")  # event-loop time of the last batch
        self._pending: list[_Waiting] = []  # waiting for the next call_soon flush
        self._queued: list[_Waiting] = []  # threaded requests waiting for the running threaded batch to end
        self._scheduled = False
        self._checked = self._deferred = 0  # pending requests at the last look; turns the batch has waited
        self._worker: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def submit(self, engine: Engine, request: PlainRequest, *, threaded: bool = False) -> asyncio.Future[Result]:
        """Queue ``request`` for ``engine``'s next batch; the future gets its :class:`Result` (or its error).

        ``threaded``: score the batch in a worker thread (the model's requests are slow enough to leave the loop).
        """
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new event loop (tests run an app on several): nothing of the old one is live
            self._loop, self._pending, self._queued, self._scheduled, self._worker = loop, [], [], False, None
            self._timer, self._last_scored = None, float("-inf")
        future: asyncio.Future[Result] = loop.create_future()
        self._pending.append(_Waiting(engine, request, future, threaded))
        self.requests += 1
        if not self._scheduled:
            self._scheduled = True
            self._checked, self._deferred = len(self._pending), 0
            loop.call_soon(self._flush)
        elif self._timer is not None and len(self._pending) >= min(self.expected, self.max_size):
            self._timer.cancel()  # a held batch reached the expected size: score it at the next turn
            self._timer = None
            loop.call_soon(self._release)
        return future

    def _release(self) -> None:
        """End a hold (the expected size was reached, or ``wait_ms`` passed) and score the batch."""
        timed_out = self._timer is not None
        self._timer = None
        if timed_out:
            self.timeouts += 1
        if self.metrics is not None:
            self.metrics.batch_holds.labels(outcome="timeout" if timed_out else "filled").inc()
        self._score_pending()

    def _flush(self) -> None:
        """Score what is pending: inline batches now, threaded ones in the worker task (started when idle).

        While requests keep joining (more are pending than at the last look, fewer than ``max_size``), the batch
        waits one more turn of the event loop, at most :data:`MAX_DEFERRALS` times: under load the requests of one
        wave reach the route over a few turns (their middleware awaits in between). A lone request, or a wave that
        stopped growing, is scored at once.
        """
        n = len(self._pending)
        if self._checked < n < self.max_size and self._deferred < MAX_DEFERRALS:
            self._checked, self._deferred = n, self._deferred + 1
            asyncio.get_running_loop().call_soon(self._flush)
            return
        loop = asyncio.get_running_loop()
        if self.wait_ms > 0 and loop.time() - self._last_scored > max(IDLE_RESET_S, 10 * self.wait_ms / 1000.0):
            self.expected = 1  # a quiet spell: the last wave is over, a lone request is not held
        if self.wait_ms > 0 and n < min(self.expected, self.max_size):
            # Fewer requests than the recent batches reached: the rest of the wave is still on its way (under a
            # steady load its requests come back within a fraction of a millisecond of each other, but one that
            # misses the batch waits for the whole batch and the next). Hold the batch until the expected size is
            # reached (submit releases it) or wait_ms passes.
            self.waits += 1
            self._timer = loop.call_later(self.wait_ms / 1000.0, self._release)
            return
        self._score_pending()

    def _score_pending(self) -> None:
        """Score every pending request (see :meth:`_flush`); the next batch is expected to be as large.

        A batch scored without a hold, or released on reaching the expected size, raises the expectation to its
        size; one whose hold ran out at ``wait_ms`` lowers it (fewer clients than before are waiting).
        """
        self._scheduled = False
        self._last_scored = asyncio.get_running_loop().time()
        self.expected = max(1, len(self._pending))
        pending, self._pending = self._pending, []
        inline = [w for w in pending if not w.threaded]
        threaded: list[_Waiting] = []
        for batch in self._batches([w for w in pending if w.threaded]):
            (inline if self._fits_loop(batch) else threaded).extend(batch)
        for batch in self._batches(inline):
            try:
                results = _scored(batch[0].engine, [w.request for w in batch])
            except Exception as err:  # recommend_rows returns errors per request; anything else fails the batch
                results = [err] * len(batch)
            self._settle(batch, results)
        if threaded:
            self._queued.extend(threaded)
            if self._worker is None:
                self._worker = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        """Score queued threaded requests, one batch at a time in a worker thread, until none is left."""
        waiting: list[_Waiting] = []
        try:
            while self._queued:
                waiting, self._queued = self._queued, []  # later arrivals form the next round
                for batch in self._batches(waiting):
                    try:
                        results = await to_thread(_scored, batch[0].engine, [w.request for w in batch])
                    except Exception as err:
                        results = [err] * len(batch)
                    self._settle(batch, results)
        except asyncio.CancelledError:  # shutdown: nobody waits for the rest
            self._settle([*waiting, *self._queued], None)  # (those already answered are skipped)
            self._queued = []
            raise
        finally:
            self._worker = None

    def _fits_loop(self, batch: Sequence[_Waiting]) -> bool:
        """Whether a batch of slow requests is expected to take at most ``inline_ms`` (then it stays on the loop)."""
        engine = batch[0].engine
        cost = getattr(engine, "batch_cost_ms", None)
        if cost is None:  # no batch scored yet: one request's calibrated cost (more than a batched request's)
            cost = getattr(engine, "cost_ms", {}).get("recommend")
        return cost is not None and cost * len(batch) <= self.inline_ms

    def _batches(self, waiting: Sequence[_Waiting]) -> list[list[_Waiting]]:
        """``waiting`` split by engine (a model switch can leave two in one flush), in order, ``max_size`` at most."""
        by_engine: dict[int, list[_Waiting]] = {}
        for w in waiting:
            if not w.future.done():  # a request cancelled while it waited (the client went away) is not scored
                by_engine.setdefault(id(w.engine), []).append(w)
        out: list[list[_Waiting]] = []
        for group in by_engine.values():
            out.extend(group[i : i + self.max_size] for i in range(0, len(group), self.max_size))
        return out

    def _settle(self, batch: Sequence[_Waiting], results: Sequence[Result | BaseException] | None) -> None:
        """Hand each waiting request its result or error (``None``: cancel them)."""
        if results is not None:
            self.batches += 1
            self.largest = max(self.largest, len(batch))
            if self.metrics is not None:
                self.metrics.batch_size.observe(len(batch))
        for i, w in enumerate(batch):
            if w.future.done():
                continue
            if results is None:
                w.future.cancel()
            elif isinstance(results[i], BaseException):
                w.future.set_exception(results[i])  # type: ignore[arg-type]
            else:
                w.future.set_result(results[i])  # type: ignore[arg-type]

    def stats(self) -> dict[str, Any]:
        """Requests, batches, mean and largest batch size so far."""
        mean = self.requests / self.batches if self.batches else 0.0
        return {"requests": self.requests, "batches": self.batches, "mean_size": mean, "largest": self.largest,
                "held": self.waits, "held_to_timeout": self.timeouts, "expected": self.expected}  # fmt: skip
