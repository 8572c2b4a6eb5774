"""Dynamic batching of ``/recommend`` (``serving.batch_max``), through the app on one event loop.

Concurrent requests (``asyncio.gather`` through httpx's ASGI transport, all on the app's loop, as one uvicorn
worker's requests are) must give the lists sequential requests give; a failing request fails alone, with the same
500 as without batching; ``batch_max=1`` turns batching off; filters, real-time overlays, experiments, unknown
users and the content fallback bypass the batch (the batcher's request counter does not move).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import httpx
import numpy as np
import pytest
from fastapi import FastAPI

from tastebud.config import Settings, build_settings
from tastebud.data.dataset import Dataset
from tastebud.serving import create_app
from tastebud.serving.batching import Batcher
from tastebud.store import Store, create_store

from .conftest import FakeRegistry, FakeWriter

T = TypeVar("T")


def make_settings(tmp_path: Path, **serving: Any) -> Settings:
    base = {"model_name": "ml", "watch_interval_s": 0, "admin_token": "s3cret", "max_k": 50, "result_cache_size": 0}
    return build_settings(home=tmp_path, serving={**base, **serving})


@asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """The app started (its lifespan) and ready, with a client on the same event loop."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://test") as client,
    ):
        deadline = time.monotonic() + 30
        while (await client.get("/health/ready")).status_code != 200:
            assert time.monotonic() < deadline, "not ready"
            await asyncio.sleep(0.02)
        yield client


def run(app: FastAPI, body: Callable[[httpx.AsyncClient], Awaitable[T]]) -> T:
    async def main() -> T:
        async with running(app) as client:
            return await body(client)

    return asyncio.run(main())


def personal_users(train: Dataset, n: int) -> list[str]:
    """``n`` users with histories long enough for the main model (not the content fallback), repeated if needed."""
    counts = np.bincount(train.interactions["user_idx"].to_numpy(), minlength=train.n_users)
    ids = [str(train.users.ids[i]) for i in np.flatnonzero(counts >= 10)]
    return [ids[i % len(ids)] for i in range(n)]


def lists(responses: list[httpx.Response]) -> list[list[tuple[str, tuple[str, ...]]]]:
    out = []
    for r in responses:
        assert r.status_code == 200, r.text
        out.append([(it["item_id"], tuple(it["because"])) for it in r.json()["recommendations"]])
    return out


def scores(responses: list[httpx.Response]) -> list[list[float]]:
    return [[it["score"] for it in r.json()["recommendations"]] for r in responses]


def batcher_of(app: FastAPI) -> Batcher:
    batcher = app.state.batcher
    assert isinstance(batcher, Batcher)
    return batcher


@pytest.mark.parametrize("offload_ms", [1e9, 0.0])  # batches on the loop; batches in a worker thread
def test_concurrent_requests_give_the_sequential_lists(
    tmp_path: Path, registry: FakeRegistry, train: Dataset, offload_ms: float
) -> None:
    users = personal_users(train, 64)
    paths = [f"/recommend/{u}?k={5 + i % 7}&explain={'true' if i % 3 else 'false'}" for i, u in enumerate(users)]
    paths += [f"/recommend/{u}?exclude_seen=false&k=12" for u in users[:16]]
    app = create_app(make_settings(tmp_path, offload_ms=offload_ms), registry=registry, request_log=FakeWriter())
    batcher = batcher_of(app)

    async def body(client: httpx.AsyncClient) -> tuple[list[httpx.Response], list[httpx.Response]]:
        sequential = [await client.get(p) for p in paths]
        assert batcher.largest == 1  # one request at a time: batches of one
        concurrent = await asyncio.gather(*(client.get(p) for p in paths))
        return sequential, list(concurrent)

    sequential, concurrent = run(app, body)
    assert lists(concurrent) == lists(sequential)
    for a, b in zip(scores(concurrent), scores(sequential), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)  # the batched product may round differently
    assert batcher.requests == 2 * len(paths)
    assert batcher.largest > 1 and batcher.batches < 2 * len(paths), batcher.stats()
    assert batcher.largest <= app.state.settings.serving.batch_max
    batches = app.state.metrics.registry.get_sample_value("tastebud_serving_batch_size_count", {})
    assert batches == batcher.batches, (batches, batcher.stats())


def test_batching_disabled_serves_the_same_lists(tmp_path: Path, registry: FakeRegistry, train: Dataset) -> None:
    paths = [f"/recommend/{u}?k=8" for u in personal_users(train, 40)]
    off = create_app(make_settings(tmp_path / "off", batch_max=1), registry=registry, request_log=FakeWriter())
    on = create_app(make_settings(tmp_path / "on"), registry=registry, request_log=FakeWriter())
    assert off.state.batcher is None

    async def body(client: httpx.AsyncClient) -> list[httpx.Response]:
        return list(await asyncio.gather(*(client.get(p) for p in paths)))

    assert lists(run(off, body)) == lists(run(on, body))
    assert batcher_of(on).requests == len(paths)


def test_a_failing_request_fails_alone_with_the_usual_500(
    tmp_path: Path, registry: FakeRegistry, train: Dataset
) -> None:
    users = personal_users(train, 24)
    bad = users[5]
    writer = FakeWriter()
    app = create_app(make_settings(tmp_path), registry=registry, request_log=writer)

    async def body(client: httpx.AsyncClient) -> tuple[list[httpx.Response], httpx.Response]:
        model = app.state.holder.current.engine.model
        bad_row = model.users_.lookup[bad]
        explain = model._explain_rows  # what explains a batch, and (a batch of one) a single request

        def failing(us: list[int], recs: list[np.ndarray]) -> Any:
            if bad_row in us:
                raise RuntimeError("model failure for one user")
            return explain(us, recs)

        model._explain_rows = failing
        responses = list(await asyncio.gather(*(client.get(f"/recommend/{u}?k=6") for u in users)))
        alone = await client.get(f"/recommend/{bad}?k=6")  # a batch of one: the error as without batching
        return responses, alone

    responses, alone = run(app, body)
    assert batcher_of(app).largest > 1
    for u, r in zip(users, responses, strict=True):
        if u == bad:
            assert r.status_code == 500 and r.json() == alone.json(), r.text
        else:
            assert r.status_code == 200 and len(r.json()["recommendations"]) == 6, r.text
    assert alone.status_code == 500 and alone.json()["error"] == "internal_error"
    assert "Traceback" not in alone.text and "model failure" not in alone.text
    # every answered request still gets its own request-log record
    records = [*writer.store.records.values(), *writer.pending_records]  # (the shutdown flushed them)
    logged = sorted((r["user_id"], r["status_code"]) for r in records if r["endpoint"] == "recommend")
    assert logged == sorted([(u, 200) for u in users if u != bad] + [(bad, 500)] * 2)


def test_a_model_error_before_scoring_reaches_every_request_of_the_batch(
    tmp_path: Path, registry: FakeRegistry, train: Dataset
) -> None:
    """A batch whose every request fails (the model is broken) gives each request the 500 it gets alone."""
    users = personal_users(train, 12)
    app = create_app(make_settings(tmp_path), registry=registry, request_log=FakeWriter())

    async def body(client: httpx.AsyncClient) -> list[httpx.Response]:
        model = app.state.holder.current.engine.model

        def broken(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("broken model")

        model.recommend_rows = model.recommend_row = broken
        return list(await asyncio.gather(*(client.get(f"/recommend/{u}") for u in users)))

    for r in run(app, body):
        assert r.status_code == 500 and r.json()["error"] == "internal_error", r.text


def test_the_result_cache_is_still_filled(tmp_path: Path, registry: FakeRegistry, train: Dataset) -> None:
    paths = [f"/recommend/{u}?k=7" for u in dict.fromkeys(personal_users(train, 30))]
    app = create_app(make_settings(tmp_path, result_cache_size=1000), registry=registry, request_log=FakeWriter())

    async def body(client: httpx.AsyncClient) -> tuple[list[httpx.Response], list[httpx.Response]]:
        first = list(await asyncio.gather(*(client.get(p) for p in paths)))
        second = list(await asyncio.gather(*(client.get(p) for p in paths)))
        return first, second

    first, second = run(app, body)
    engine = app.state.holder.current.engine
    assert lists(first) == lists(second)
    assert engine.cache_misses == len(paths) and engine.cache_hits == len(paths)
    assert batcher_of(app).requests == len(paths)  # the hits never reached the batcher


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = create_store(make_settings(tmp_path / "store"))
    s.init_schema()
    yield s
    s.close()


def test_filters_overlays_experiments_and_fallbacks_bypass_the_batch(
    tmp_path: Path, registry: FakeRegistry, train: Dataset, store: Store
) -> None:
    from tastebud.experiments import create_experiment, start_experiment

    settings = make_settings(tmp_path / "store")
    registry.set_alias("ml", "challenger", 2)
    app = create_app(settings, registry=registry, request_log=FakeWriter(), store=store)
    batcher = batcher_of(app)
    counts = np.bincount(train.interactions["user_idx"].to_numpy(), minlength=train.n_users)
    sparse = [str(train.users.ids[i]) for i in np.flatnonzero(counts < settings.serving.sparse_history_threshold)]
    users = personal_users(train, 8)
    genre = train.item_meta["genres"].explode().drop_nulls()[0]

    async def body(client: httpx.AsyncClient) -> None:
        async def count(paths: list[str], method: str = "GET") -> int:
            before = batcher.requests
            if method == "GET":
                rs = await asyncio.gather(*(client.get(p) for p in paths))
            else:
                rs = await asyncio.gather(*(client.post("/recommend", json=p) for p in paths))  # type: ignore[arg-type]
            assert all(r.status_code == 200 for r in rs), [r.text for r in rs]
            return batcher.requests - before

        assert await count([f"/recommend/{u}" for u in users]) == len(users)  # the counter counts
        assert await count([{"user_id": u, "k": 4} for u in users], "POST") == len(users)  # type: ignore[list-item]
        assert await count([f"/recommend/{u}?genres={genre}" for u in users]) == 0
        assert await count([f"/recommend/{u}?year_min=1990" for u in users]) == 0
        assert await count([{"user_id": u, "filters": {"genres": [genre]}} for u in users], "POST") == 0  # type: ignore[list-item]
        assert await count(["/recommend/nobody-knows-me", "/recommend/nor-me"]) == 0
        if sparse:
            assert await count([f"/recommend/{u}" for u in sparse[:4]]) == 0
        engine = app.state.holder.current.engine
        item = str(train.items.ids[0])
        app.state.holder.overlays.add([SimpleNamespace(user_id=users[0], item_id=item, value=4.0)])
        assert engine.overlays.get(users[0]) is not None
        assert await count([f"/recommend/{users[0]}"] * 3) == 0
        assert await count([f"/recommend/{u}" for u in users[1:]]) == len(users) - 1
        base = {
            "name": "batching",
            "variants": [{"name": "control", "ref": "champion"}, {"name": "treatment", "ref": "challenger"}],
        }
        experiment = create_experiment(store, registry, settings, base, actor="test")
        start_experiment(store, registry, settings, experiment.name, actor="test")
        router = app.state.holder.router
        assert router is not None
        router.refresh()
        routed = [u for u in users if router.route(u) is not None]
        assert routed
        assert await count([f"/recommend/{u}" for u in routed]) == 0

    run(app, body)


class StubEngine:
    """Records the batches it is asked to score; answers each request with its user id (or an error for "bad")."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    def recommend_rows(self, requests: list[Any]) -> list[Any]:
        self.batches.append([r.user_id for r in requests])
        return [ValueError(r.user_id) if r.user_id == "bad" else r.user_id for r in requests]


@pytest.mark.parametrize("threaded", [False, True])
def test_batcher_groups_by_engine_caps_the_size_and_skips_cancelled_requests(threaded: bool) -> None:
    from tastebud.serving.engine import PlainRequest

    a, b = StubEngine(), StubEngine()
    batcher = Batcher(4)

    async def wave() -> list[Any]:
        futures = []
        for i in range(10):
            engine = a if i % 3 else b
            user = "bad" if i == 4 else f"u{i}"
            futures.append(batcher.submit(engine, PlainRequest(i, user, 5, True, False), threaded=threaded))  # type: ignore[arg-type]
        futures[7].cancel()  # the client went away before the batch ran
        return list(await asyncio.gather(*futures, return_exceptions=True))

    for _ in range(2):  # a second event loop: the batcher starts afresh on it
        a.batches.clear()
        b.batches.clear()
        results = asyncio.run(wave())
        assert a.batches == [["u1", "u2", "bad", "u5"], ["u8"]]  # u7 was cancelled: not scored
        assert b.batches == [["u0", "u3", "u6", "u9"]]
        assert isinstance(results[4], ValueError) and isinstance(results[7], asyncio.CancelledError)
        assert [r for i, r in enumerate(results) if i not in (4, 7)] == [f"u{i}" for i in range(10) if i not in (4, 7)]
    assert batcher.largest == 4 and batcher.requests == 20
    with pytest.raises(ValueError, match="at least 2"):
        Batcher(1)


def test_a_batch_waits_while_requests_keep_joining_but_a_lone_request_does_not() -> None:
    from tastebud.serving.batching import MAX_DEFERRALS
    from tastebud.serving.engine import PlainRequest

    engine = StubEngine()
    batcher = Batcher(32)

    def submit(user: str) -> asyncio.Future[Any]:
        return batcher.submit(engine, PlainRequest(0, user, 5, True, False))  # type: ignore[arg-type]

    async def trickle(n: int) -> list[Any]:
        """Two requests in one turn of the event loop, then one per turn (a wave reaching the route unevenly)."""
        futures = [submit("u0")]
        for i in range(1, n):
            futures.append(submit(f"u{i}"))
            await asyncio.sleep(0)
        return list(await asyncio.gather(*futures))

    async def lone() -> tuple[Any, bool]:
        future = submit("alone")
        await asyncio.sleep(0)  # one turn: the flush scheduled by the submit has run
        return future.result() if future.done() else None, future.done()

    assert asyncio.run(lone()) == ("alone", True)
    engine.batches.clear()
    asyncio.run(trickle(3))
    assert engine.batches == [["u0", "u1", "u2"]]
    engine.batches.clear()
    asyncio.run(trickle(MAX_DEFERRALS + 6))  # the wait is bounded
    assert len(engine.batches) > 1 and len(engine.batches[0]) == MAX_DEFERRALS + 2


def test_a_slow_models_batch_stays_on_the_loop_when_it_costs_little_in_all() -> None:
    """``inline_ms``: n x the calibrated cost within the budget runs on the loop's thread, past it in a worker."""
    import threading

    from tastebud.serving.engine import PlainRequest

    class Timed(StubEngine):
        def __init__(self) -> None:
            super().__init__()
            self.cost_ms = {"recommend": 5.0}  # slow enough for the thread on its own (offload_ms 1)
            self.threads: list[int] = []

        def recommend_rows(self, requests: list[Any]) -> list[Any]:
            self.threads.append(threading.get_ident())
            return super().recommend_rows(requests)

    async def wave(batcher: Batcher, engine: Timed, n: int) -> tuple[list[Any], int]:
        futures = [
            batcher.submit(engine, PlainRequest(i, f"u{i}", 5, True, False), threaded=True)  # type: ignore[arg-type]
            for i in range(n)
        ]
        return list(await asyncio.gather(*futures)), threading.get_ident()

    for n, budget, on_loop in [(4, 20.0, True), (5, 20.0, False), (2, 0.0, False), (1, 5.0, True)]:
        engine = Timed()
        results, loop_thread = asyncio.run(wave(Batcher(32, budget), engine, n))
        assert results == [f"u{i}" for i in range(n)]
        assert engine.batches == [[f"u{i}" for i in range(n)]]
        assert (engine.threads == [loop_thread]) is on_loop, (n, budget)


def test_the_loop_budget_follows_what_batches_actually_cost() -> None:
    """Before any batch the calibrated cost of one request decides; then the measured cost per batched request."""
    import threading

    from tastebud.serving.engine import PlainRequest

    class Slow(StubEngine):
        def __init__(self, calibrated: float, sleep_s: float) -> None:
            super().__init__()
            self.cost_ms = {"recommend": calibrated}
            self.batch_cost_ms: float | None = None
            self.sleep_s, self.threads = sleep_s, []  # type: list[int]

        def recommend_rows(self, requests: list[Any]) -> list[Any]:
            self.threads.append(threading.get_ident())
            time.sleep(self.sleep_s)
            return super().recommend_rows(requests)

    async def waves(batcher: Batcher, engine: Slow, n: int, times: int) -> int:
        for _ in range(times):
            futures = [
                batcher.submit(engine, PlainRequest(i, f"u{i}", 5, True, False), threaded=True)  # type: ignore[arg-type]
                for i in range(n)
            ]
            await asyncio.gather(*futures)
        return threading.get_ident()

    # calibrated at 50 ms a request, batches of 4 actually take 1 ms: the first goes to the thread, later ones stay
    cheap = Slow(50.0, 0.001)
    loop_thread = asyncio.run(waves(Batcher(32, 20.0), cheap, 4, 12))
    assert cheap.threads[0] != loop_thread and cheap.threads[-1] == loop_thread
    assert cheap.batch_cost_ms is not None and cheap.batch_cost_ms < 5.0
    # calibrated cheap, but batches of 4 take 120 ms (30 ms a request): after the first, they leave the loop
    dear = Slow(0.5, 0.12)
    loop_thread = asyncio.run(waves(Batcher(32, 20.0), dear, 4, 3))
    assert dear.threads[0] == loop_thread and dear.threads[-1] != loop_thread


def test_a_batch_smaller_than_the_recent_ones_is_held_until_the_rest_arrive_or_the_wait_ends() -> None:
    """``wait_ms``: released once the expected size is reached, else at the limit (which lowers the expectation)."""
    from prometheus_client import CollectorRegistry

    from tastebud.monitoring.metrics import ServingMetrics
    from tastebud.serving.engine import PlainRequest

    engine = StubEngine()
    wait_ms = 200.0
    registry = CollectorRegistry()
    batcher = Batcher(32, wait_ms=wait_ms, metrics=ServingMetrics(registry=registry))

    def submit(user: str) -> asyncio.Future[Any]:
        return batcher.submit(engine, PlainRequest(0, user, 5, True, False))  # type: ignore[arg-type]

    async def scenario() -> dict[str, Any]:
        out: dict[str, Any] = {}
        lone = submit("first")  # an idle server's lone request: recent batches were of one, never held
        await asyncio.sleep(0)
        out["lone_done_in_a_turn"] = lone.done()
        await asyncio.gather(*(submit(f"w{i}") for i in range(4)))  # a wave of 4 in one turn: expected 4
        out["expected_after_wave"] = batcher.expected
        started = time.monotonic()
        early = [submit("a0")]
        await asyncio.sleep(0.02)  # several turns: held, not scored
        out["held_while_short"] = not early[0].done() and batcher.waits == 1
        early += [submit(f"a{i}") for i in range(1, 4)]  # the rest of the wave: released at once
        await asyncio.gather(*early)
        out["released_after_s"] = time.monotonic() - started
        started = time.monotonic()
        await asyncio.gather(submit("b0"), submit("b1"))  # fewer than expected and nobody else: the limit ends it
        out["timed_out_after_s"] = time.monotonic() - started
        out["expected_after_timeout"] = batcher.expected
        return out

    out = asyncio.run(scenario())
    assert out["lone_done_in_a_turn"] is True
    assert out["expected_after_wave"] == 4
    assert out["held_while_short"] is True
    assert out["released_after_s"] < wait_ms / 1000 / 2, out
    assert out["timed_out_after_s"] >= wait_ms / 1000 * 0.9, out
    assert out["expected_after_timeout"] == 2
    assert engine.batches == [["first"], ["w0", "w1", "w2", "w3"], ["a0", "a1", "a2", "a3"], ["b0", "b1"]]
    assert (batcher.waits, batcher.timeouts) == (2, 1)
    assert batcher.stats()["held_to_timeout"] == 1
    sample = registry.get_sample_value
    assert sample("tastebud_serving_batch_holds_total", {"outcome": "filled"}) == 1
    assert sample("tastebud_serving_batch_holds_total", {"outcome": "timeout"}) == 1
    assert sample("tastebud_serving_batch_size_count", {}) == 4
    assert sample("tastebud_serving_batch_size_sum", {}) == 1 + 4 + 4 + 2
    assert sample("tastebud_serving_batch_size_bucket", {"le": "2.0"}) == 2  # the lone request and the short batch

    # without a wait the short batch is scored at once
    engine.batches.clear()
    eager = Batcher(32)

    async def no_wait() -> bool:
        await asyncio.gather(*(eager.submit(engine, PlainRequest(0, f"w{i}", 5, True, False)) for i in range(4)))  # type: ignore[arg-type]
        late = eager.submit(engine, PlainRequest(0, "late", 5, True, False))  # type: ignore[arg-type]
        await asyncio.sleep(0)
        return late.done()

    assert asyncio.run(no_wait()) is True
    assert eager.waits == 0

    # after a quiet spell the last wave's size is forgotten: a lone request is not held
    from tastebud.serving.batching import IDLE_RESET_S

    quick = Batcher(32, wait_ms=5.0)

    async def quiet_then_lone() -> tuple[int, bool, bool]:
        await asyncio.gather(*(quick.submit(engine, PlainRequest(0, f"w{i}", 5, True, False)) for i in range(4)))  # type: ignore[arg-type]
        expected = quick.expected
        soon = quick.submit(engine, PlainRequest(0, "soon", 5, True, False))  # type: ignore[arg-type]
        await asyncio.sleep(0)
        held = not soon.done()
        await soon
        await asyncio.sleep(IDLE_RESET_S * 2)
        lone = quick.submit(engine, PlainRequest(0, "lone", 5, True, False))  # type: ignore[arg-type]
        await asyncio.sleep(0)
        return expected, held, lone.done()

    assert asyncio.run(quiet_then_lone()) == (4, True, True)
    with pytest.raises(ValueError, match="wait_ms"):
        Batcher(32, wait_ms=-1.0)
