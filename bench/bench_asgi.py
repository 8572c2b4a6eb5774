"""CPU per request of the served app without sockets: the ASGI app called directly by concurrent callers.

Through HTTP, wrk and the kernel's loopback share the two cores with the server and the machine's speed drifts
within minutes, so differences of tens of microseconds a request drown. Here the app that ``bench_serving.py``
serves (``bench_app``: the production app plus its ``/_floor``) runs its lifespan in this process, and
``--concurrency`` callers send it GET requests one after the other, as uvicorn would hand them over, with no
server, parser or socket in between. Rounds alternate the paths; reported: the median process CPU time per request
of each (threads included: the request log's writer, the batches). Every answer must be a 200.

    .venv/bin/python bench/bench_asgi.py --home /tmp/tbhome
    .venv/bin/python bench/bench_asgi.py --home /tmp/tbhome --paths floor recommend recommend_noexplain popular

The result cache is off unless ``--result-cache-size`` says otherwise, so every ``/recommend`` is scored.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_note, median_rows, table

#: Path makers by name: each takes a random user id.
PATHS = {
    "floor": lambda u: "/_floor",
    "recommend": lambda u: f"/recommend/{u}",
    "recommend_noexplain": lambda u: f"/recommend/{u}?explain=false",
    "popular": lambda u: "/popular",
}


def _scope(path: str) -> dict[str, Any]:
    raw, _, query = path.partition("?")
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
        "path": raw, "raw_path": raw.encode(), "query_string": query.encode(), "root_path": "",
        "headers": [(b"host", b"bench")], "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8765), "state": {},
    }  # fmt: skip


async def _started(app: Any) -> tuple[asyncio.Task[None], asyncio.Queue[dict[str, str]]]:
    """Run the app's lifespan until its model is served; returns the lifespan task and its message queue."""
    inbox: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    sent: list[dict[str, Any]] = []
    await inbox.put({"type": "lifespan.startup"})

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    task = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, inbox.get, send))
    deadline = time.monotonic() + 600
    while getattr(getattr(app.state, "holder", None), "current", None) is None:
        if task.done() or any(m["type"] == "lifespan.startup.failed" for m in sent) or time.monotonic() > deadline:
            raise SystemExit(f"the app did not serve a model: {sent}")
        await asyncio.sleep(0.05)
    return task, inbox


async def measure(args: argparse.Namespace) -> dict[str, list[float]]:
    import bench_serving

    app = bench_serving.bench_app()
    lifespan, inbox = await _started(app)
    users = [str(u) for u in app.state.holder.current.engine.model.users_.ids.tolist()]
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    async def run(name: str, count: int, seed: int) -> None:
        rng = random.Random(seed)
        make = PATHS[name]

        async def caller() -> None:
            for _ in range(count // args.concurrency):
                await app(_scope(make(rng.choice(users))), receive, send)

        await asyncio.gather(*(caller() for _ in range(args.concurrency)))

    for name in args.paths:  # warm-up: first calls, caches, the writer's connection
        await run(name, 500, 0)
    per_request: dict[str, list[float]] = {name: [] for name in args.paths}
    for rnd in range(args.rounds):
        for name in args.paths:
            statuses.clear()
            before = time.process_time()
            await run(name, args.requests, rnd + 1)
            spent = time.process_time() - before
            bad = sorted({s for s in statuses if s != 200})
            if bad or not statuses:
                raise SystemExit(f"{name}: answers other than 200: {bad or 'none at all'}")
            per_request[name].append(spent / len(statuses) * 1e6)
            print(f"round {rnd + 1} {name}: {per_request[name][-1]:.1f} us/request", flush=True)
    await inbox.put({"type": "lifespan.shutdown"})
    await lifespan
    return per_request


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, default=Path("/tmp/tbhome"), help="home whose champion is served")
    parser.add_argument("--model-name", default="movielens-100k")
    parser.add_argument("--paths", nargs="+", choices=sorted(PATHS), default=["floor", "recommend"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=4000, help="requests per path and round")
    parser.add_argument("--concurrency", type=int, default=16, help="callers at a time (wrk's 32 over 2 workers)")
    parser.add_argument("--result-cache-size", type=int, default=0, help="serving.result_cache_size (0: off)")
    args = parser.parse_args()
    if args.concurrency < 1 or args.requests < args.concurrency or args.rounds < 1:
        parser.error("--concurrency >= 1, --requests >= --concurrency and --rounds >= 1")
    if not (args.home / "tastebud.db").exists() and not (args.home / "mlflow").exists():
        parser.error(f"--home {args.home}: no Tastebud home there (run `tastebud demo --no-serve` with it first)")
    os.environ.update({
        "TASTEBUD_HOME": str(args.home), "TASTEBUD_SERVING__MODEL_NAME": args.model_name,
        "TASTEBUD_SERVING__RESULT_CACHE_SIZE": str(args.result_cache_size),
    })  # fmt: skip
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        per_request = asyncio.run(measure(args))
    rows = median_rows(per_request)
    title = (f"In process, no sockets: {args.model_name} of {args.home}, {args.concurrency} callers, "
             f"{args.rounds} alternating rounds of {args.requests} requests per path")  # fmt: skip
    print(table(title, ["path", "CPU us per request (median)", "rounds"], rows))
    print(f"\nMachine: {machine_note()}.")


if __name__ == "__main__":
    main()
