"""Serving throughput and latency under wrk: the HTTP floor against ``GET /recommend``, and a 1M-item catalog.

Run (from the repository root):

- ``.venv/bin/python bench/bench_serving.py http [--home /tmp/tbhome] [--repeats 3] [--record]``: in one run, for
  1 and then 2 uvicorn workers, alternate ``wrk -t2 -c32 -d10s`` on ``GET /_floor`` (a trivial async JSON route
  of the same app, middleware included, matched first) and on ``GET /recommend/{user_id}`` for random known users
  of the served champion. Reported: medians over the repeats of req/s and p99, and recommend's share of the floor.
- ``.venv/bin/python bench/bench_serving.py ann-build [--dir bench/out/serving/ann1m]``: a synthetic catalog of
  1,000,000 clustered 64-d item vectors and 10,000 users, as a fitted ``ALSRecommender`` with ``use_ann`` (FAISS
  HNSW), written once as a bundle under ``--dir`` (minutes: it is reused when present).
- ``.venv/bin/python bench/bench_serving.py ann [--dir ...] [--record]``: recall@10 of the served model against
  exact NumPy scoring on 1,000 random users (in process), then wrk on ``GET /recommend`` through uvicorn, then
  recall@10 of the lists the server itself answered (``--served-recall`` users, fetched over HTTP) against exact
  scoring.
- ``.venv/bin/python bench/bench_serving.py zipf [--record]``: a catalogue a cache cannot flatter: 1,000,000 users
  and 100,000 items (synthetic ALS factors and interactions, generated once and cached under ``bench/out/serving``),
  requests for users drawn from a Zipf distribution; with the result cache as served by default (its hit ratio,
  read from the servers' ``/metrics``, beside the figures) and always with the cache off (every request scored).
- ``.venv/bin/python bench/bench_serving.py scale [--sizes 100k 1m 5m 25m] [--record]``: how latency and memory
  grow with the data: synthetic ALS models from 100,000 to 25,000,000 interactions (the largest of ML-25M's
  shape: 160,000 users x 60,000 items), random users over all of them, every request scored; per size the floor,
  ``/recommend`` with and without explanations, and the resident memory of each server worker.
- ``.venv/bin/python bench/bench_serving.py engine [--sizes 5m 25m]``: in process, ``Engine.recommend``'s CPU time
  per request on those synthetic sizes, the current code against the same code with ``argpartition`` top-k and no
  partial explanation cache (the serving path before the ML-25M work).
- ``.venv/bin/python bench/bench_serving.py batch [--sizes 25m] [--batch-sizes 1 8 16 32]``: in process, CPU time per
  request of one scoring batch (``Engine.recommend_rows``, what ``serving.batch_max`` lets a worker do) by batch
  size, against one ``Engine.recommend`` per request, and how many batched lists equal the one-request lists.
  ``scale --batch-max 1 32`` serves each size once per value (1: batching off) in the same run.

The servers run ``bench_app`` below (``uvicorn bench_serving:bench_app --factory``): the production app from the
environment plus the ``/_floor`` route, which exists only in this benchmark's app. The synthetic catalogues of
``zipf`` and ``scale`` are served from their cached arrays (``ALSRecommender.from_factors``, explanation cache built
as a bundle load builds it) through the same holder, engine and routes, without writing a bundle.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import Response

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import append_results, machine_note, table

BENCH_DIR = Path(__file__).resolve().parent
#: Environment variable naming a bundle directory to serve as version 1 / champion (the ``ann`` benchmark).
BUNDLE_ENV = "TASTEBUD_BENCH_BUNDLE"
#: Set to run the server without a request log (a diagnostic, never the headline figure): ``discard`` keeps the
#: background writer and its thread but drops each batch instead of writing it (the thread's cost without SQLite's),
#: ``encode`` also encodes each batch as the SQLite store does before dropping it; any other value drops every
#: record where it is submitted.
NO_LOG_ENV = "TASTEBUD_BENCH_NO_REQUEST_LOG"
#: Seconds for ``sys.setswitchinterval`` in the server (diagnostic; Python's default is 0.005).
SWITCH_ENV = "TASTEBUD_BENCH_SWITCH_INTERVAL"
#: Path of a synthetic model's arrays (``.npz`` from :func:`synth_model_file`) to serve as version 1 / champion.
SYNTH_ENV = "TASTEBUD_BENCH_SYNTH"
WRK = ("wrk", "-t2", "-c{c}", "-d{d}s")
#: wrk's connections (``--connections``; 32 for every target of the serving issue).
CONNECTIONS = 32
#: Where the synthetic catalogues are generated once and kept (never committed: ``bench/out`` is ignored).
OUT_DIR = BENCH_DIR / "out" / "serving"
#: ``scale`` sizes: (users, items, interactions); 100K and 1M of MovieLens' shapes, 25M of ML-25M's.
SCALES = {
    "100k": (1_000, 1_700, 100_000),
    "1m": (6_000, 3_700, 1_000_000),
    "5m": (32_000, 30_000, 5_000_000),
    "25m": (160_000, 60_000, 25_000_000),
}
#: ``zipf``: (users, items, interactions) and the Zipf exponent of the request distribution over users.
ZIPF_SHAPE = (1_000_000, 100_000, 15_000_000)
ZIPF_EXPONENT = 1.0

LUA = """
local paths = {%s}
local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("tid", counter)
end
function init(args)
  math.randomseed(%d + tid)
  reqs = {}
  for i, p in ipairs(paths) do reqs[i] = wrk.format("GET", p) end
end
function request()
  return reqs[math.random(#reqs)]
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests": %%d, "duration_us": %%d, "p50_us": %%d, "p90_us": %%d, "p99_us": %%d, "max_us": %%d, ' ..
    '"non_2xx": %%d, "socket_errors": %%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, e.status, e.connect + e.read + e.write + e.timeout))
end
"""


# ---------------------------------------------------------------------------------------------- server side
class _StaticRegistry:
    """One bundle as version 1 with alias ``champion`` (what the holder needs of a registry)."""

    def __init__(self, name: str, path: Path) -> None:
        self.name, self.path = name, path

    def resolve(self, name: str, ref: int | str) -> Any:
        from types import SimpleNamespace

        return SimpleNamespace(name=name, version=1, aliases=["champion"], source=str(self.path), run_id=None,
                               tags={}, created_at="", metrics={})  # fmt: skip

    def bundle_path(self, mv: Any) -> Path:
        return self.path

    def get_alias(self, name: str, alias: str) -> int | None:
        return 1 if alias == "champion" else None

    def list_versions(self, name: str) -> list[Any]:
        return [self.resolve(name, 1)]

    def get(self, name: str, version: int) -> Any:
        return self.resolve(name, version)


class _NullLog:
    """A request log that drops every record (diagnostic runs measuring what the real log costs)."""

    def submit(self, record: Any) -> bool:
        return True

    def flush(self, timeout: float = 0.0) -> bool:
        return True

    def close(self, timeout: float = 0.0) -> None:
        return None


class _DiscardSink:
    """A request-log store that accepts every batch and keeps nothing (``TASTEBUD_BENCH_NO_REQUEST_LOG=discard``);
    with ``encode`` (``=encode``) it first encodes the batch as the SQLite store does, in Python, holding the GIL."""

    def __init__(self, encode: bool = False) -> None:
        self.encode = encode

    def write_request_logs(self, records: Any) -> int:
        if self.encode:
            from tastebud.store.sql import _sqlite_request_batch

            _sqlite_request_batch(records)
        return len(records)


def bench_app() -> Any:
    """The served app plus ``GET /_floor``; with ``TASTEBUD_BENCH_BUNDLE`` set it serves that bundle directly."""
    from tastebud.config import build_settings
    from tastebud.serving.app import create_app, create_app_from_env, limit_blas_threads
    from tastebud.serving.routes._shared import OrjsonResponse

    bundle = os.environ.get(BUNDLE_ENV)
    synth = os.environ.get(SYNTH_ENV)
    no_log = os.environ.get(NO_LOG_ENV)
    request_log: Any = None
    if no_log in ("discard", "encode"):
        from tastebud.store import RequestLogWriter

        request_log = RequestLogWriter(_DiscardSink(encode=no_log == "encode"))
        request_log.start()
    elif no_log:
        request_log = _NullLog()
    if os.environ.get(SWITCH_ENV):  # diagnostic: how long a background thread may hold the GIL
        sys.setswitchinterval(float(os.environ[SWITCH_ENV]))
    if bundle or synth or request_log is not None:
        settings = build_settings()
        limit_blas_threads(settings.serving.blas_threads)
        source = bundle or synth
        registry = _StaticRegistry(settings.serving.model_name, Path(source)) if source else None
        loader = _synth_loader if synth else None
        app = create_app(settings, registry=registry, request_log=request_log, freeze_gc=True, loader=loader)
    else:
        app = create_app_from_env()

    async def batching() -> OrjsonResponse:  # this worker's scoring batches so far (serving.batch_max)
        batcher = app.state.batcher
        return OrjsonResponse({"pid": os.getpid(), **(batcher.stats() if batcher is not None else {})})

    async def worker_ready() -> OrjsonResponse:  # this worker's pid, 503 until its model is loaded
        ready = app.state.holder.current is not None
        return OrjsonResponse({"pid": os.getpid(), "ready": ready}, status_code=200 if ready else 503)

    # The floor is the app's cheapest route, so that it measures the server's, the framework's and the middleware's
    # cost alone: matched first (routes are tried in order; added last, it also paid for trying every route before
    # it), and of the same route class as GET /recommend (no FastAPI handler around the endpoint).
    app.router.add_api_route("/_floor", floor, methods=["GET"], include_in_schema=False, **_route_class())
    app.router.routes.insert(0, app.router.routes.pop())
    app.add_api_route("/_worker_ready", worker_ready, methods=["GET"], include_in_schema=False)
    app.add_api_route("/_batching", batching, methods=["GET"], include_in_schema=False)
    return app


async def floor(request: Request) -> Response:
    """``GET /_floor``: a trivial JSON answer (the floor the scored routes are compared with).

    Answered with the response class of ``GET /recommend`` (headers built directly); FastAPI's ``ORJSONResponse``,
    used until 2026-12-04, warned of its deprecation on every instance and built its headers the generic way,
    which made the floor about 5 us dearer than it is.
    """
    from tastebud.serving.routes._shared import JSONBytes

    return JSONBytes(b'{"ok":true}', "floor")


def _route_class() -> dict[str, Any]:
    """``route_class_override`` of the tree served, when it has the hot route's class (``ab --base`` may not)."""
    try:
        from tastebud.serving.routes._shared import RequestRoute
    except ImportError:
        return {}
    return {"route_class_override": RequestRoute}


def _synth_loader(path: Path) -> Any:
    """The holder's bundle loader for a synthetic model's arrays: what ``load_bundle`` returns, from the ``.npz``."""
    from types import SimpleNamespace

    model = load_synth_model(Path(path))
    manifest = {"model": {"name": "als", "class": "ALSRecommender"}, "data": {"name": Path(path).stem}, "extra": {}}
    return SimpleNamespace(path=Path(path), manifest=manifest, model=model, fallback={},
                           item_meta=synth_item_meta(model), signature={"signed": False, "scheme": None,
                           "key_id": None}, signed=False)  # fmt: skip


def synth_item_meta(model: Any) -> Any:
    """MovieLens-like metadata for a synthetic model's items: a title, a year and two of 19 genres each."""
    import polars as pl

    n_items = len(model.items_)
    genres = [
        "Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
        "Film-Noir", "Horror", "IMAX", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
    ]  # fmt: skip
    rng = np.random.default_rng(0)
    picks = rng.integers(0, len(genres), (n_items, 2))
    years = 1920 + np.arange(n_items) % 100
    return pl.DataFrame({
        "item_id": model.items_.ids.tolist(),
        "title": [f"Synthetic title number {i} ({y})" for i, y in enumerate(years.tolist())],
        "year": years.astype(np.int32),
        "genres": [sorted({genres[a], genres[b]}) for a, b in picks.tolist()],
    })  # fmt: skip


#: The server process: ``uvicorn.run`` of :func:`bench_app` with the HTTP protocol ``tastebud serve`` picks from the
#: settings (``serving.coalesce_writes``); uvicorn's own in a tree that predates that setting (``ab --base``).
RUNNER = """
import sys, uvicorn
try:
    from tastebud.config import build_settings
    from tastebud.serving.http import http_protocol
    http = http_protocol(build_settings().serving)
except ImportError:
    http = "auto"
app_dir, port, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
uvicorn.run("bench_serving:bench_app", factory=True, app_dir=app_dir, host="127.0.0.1", port=port, workers=workers,
            log_level="warning", http=http)
"""


class Server:
    """``uvicorn bench_serving:bench_app`` with ``workers`` processes, started and stopped around a block."""

    def __init__(
        self,
        env: dict[str, str],
        workers: int,
        port: int,
        log: Path,
        ready_timeout: float = 600,
        tree: Path | None = None,
    ) -> None:
        self.env, self.workers, self.port, self.log, self.ready_timeout = env, workers, port, log, ready_timeout
        self.tree = tree  # another checkout to serve (its bench/ and src/), e.g. the old code of an A/B run
        self.proc: subprocess.Popen[bytes] | None = None
        self.metrics_dir: str | None = None

    def __enter__(self) -> Server:
        bench = BENCH_DIR if self.tree is None else self.tree / "bench"
        argv = [sys.executable, "-c", RUNNER, str(bench), str(self.port), str(self.workers)]
        path = str(bench) if self.tree is None else f"{bench}{os.pathsep}{self.tree / 'src'}"
        env = {**os.environ, **self.env, "PYTHONPATH": path}
        if self.workers > 1:  # as `tastebud serve` does: Prometheus multiprocess mode, one fresh directory
            self.metrics_dir = tempfile.mkdtemp(prefix="tastebud-bench-metrics-")
            env["PROMETHEUS_MULTIPROC_DIR"] = self.metrics_dir
        self.proc = subprocess.Popen(argv, env=env, stdout=self.log.open("ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.ready_timeout
        # Workers share the socket and load their models independently: one ready answer may come from the first
        # worker while another still loads (and answers 503), so wait until every worker (by pid) has said ready.
        ready_pids: set[int] = set()
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {self.log}")
            try:
                with urllib.request.urlopen(f"{self.url}/_worker_ready", timeout=2) as resp:
                    ready_pids.add(int(json.loads(resp.read())["pid"]))
                    if len(ready_pids) >= self.workers:
                        return self
                    continue
            except OSError:
                pass
            time.sleep(0.05)
        self.__exit__()
        raise RuntimeError(f"server not ready after {self.ready_timeout} s; see {self.log}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def pids(self) -> list[int]:
        """The server's processes: uvicorn's parent and, with several workers, its children."""
        assert self.proc is not None
        return [self.proc.pid, *(_children(self.proc.pid) if self.workers > 1 else [])]

    def worker_rss_mb(self) -> list[float]:
        """Resident memory (MiB) of each worker process (of the one process when ``workers`` is 1)."""
        assert self.proc is not None
        pids = _children(self.proc.pid) if self.workers > 1 else [self.proc.pid]
        return [_rss_mb(pid) for pid in pids if self.workers == 1 or _is_python(pid)]

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.metrics_dir is not None:
            shutil.rmtree(self.metrics_dir, ignore_errors=True)


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        out += [int(x) for x in text]
    return out


def _is_python(pid: int) -> bool:
    """Whether ``pid`` is a server worker (a Python process, not multiprocessing's resource tracker)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return "python" in argv.split("\0")[0] and "resource_tracker" not in argv


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# ---------------------------------------------------------------------------------------------- wrk
#: wrk script that sends ``paths`` in their order (a recorded draw, e.g. Zipf): run ``seed``'s thread ``tid`` starts
#: at window ``2 * seed + tid`` of 8 (so repeated runs send new parts of the draw, not the cached start again).
LUA_SEQUENCE = LUA.replace("math.randomseed(%d + tid)", "seed = %d\n  math.randomseed(seed + tid)").replace(
    "return reqs[math.random(#reqs)]",
    "pos = (pos or ((2 * seed + tid) %% 8) * math.floor(#reqs / 8)) %% #reqs + 1\n  return reqs[pos]",
)


def _cpu_s(pids: list[int]) -> float:
    """User plus system CPU seconds the processes ``pids`` have used so far (ended ones count 0)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))
    return total / os.sysconf("SC_CLK_TCK")


def run_wrk(
    url: str, paths: list[str], duration: int, seed: int = 1, *, in_order: bool = False, cpu_of: list[int] | None = None
) -> dict[str, Any]:
    """One wrk run over ``paths`` (picked at random per request, or in order); its figures, the command and the load.

    With ``cpu_of`` (the server's processes) the result also holds ``server_cpu_us`` and ``wrk_cpu_us``: the CPU
    time each side spent per request, i.e. where the two cores' time goes. On this shared VM they drift with the
    machine's speed as req/s does (the floor's server CPU went from 200 to 305 us per request within one 8-minute
    run), so two versions of the code are still compared run by run, alternating.
    """
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write((LUA_SEQUENCE if in_order else LUA) % (", ".join(json.dumps(p) for p in paths), seed))
        script = f.name
    argv = [*(a.format(d=duration, c=CONNECTIONS) for a in WRK), "-s", script, url]
    load = os.getloadavg()[0]
    server0 = _cpu_s(cpu_of or [])
    child0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=duration + 60).stdout
    finally:
        os.unlink(script)
    child1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_s = _cpu_s(cpu_of or []) - server0
    line = next(x for x in out.splitlines() if x.startswith("BENCH "))
    res = json.loads(line[len("BENCH ") :])
    res["rps"] = res["requests"] / (res["duration_us"] / 1e6)
    res["load"] = load
    if cpu_of is not None and res["requests"]:
        wrk_s = (child1.ru_utime + child1.ru_stime) - (child0.ru_utime + child0.ru_stime)
        res["server_cpu_us"] = server_s / res["requests"] * 1e6
        res["wrk_cpu_us"] = wrk_s / res["requests"] * 1e6
    res["command"] = " ".join(argv[:-3]) + " -s <random paths>.lua " + url
    if res["non_2xx"] or res["socket_errors"]:
        print(f"  warning: {res['non_2xx']} non-2xx, {res['socket_errors']} socket errors", file=sys.stderr)
    return res


def _fmt(res: dict[str, Any]) -> str:
    cpu = f", server CPU {res['server_cpu_us']:.0f} us/req" if "server_cpu_us" in res else ""
    return (f"{res['rps']:.0f} req/s, p50 {res['p50_us'] / 1000:.2f} ms, p99 {res['p99_us'] / 1000:.2f} ms{cpu}, "
            f"load {res['load']:.2f}")  # fmt: skip


def bench_http(args: argparse.Namespace) -> str:
    """Floor and /recommend, 1 and 2 workers, alternating; returns the Markdown section."""
    from tastebud.config import build_settings
    from tastebud.registry import ModelRegistry, load_bundle

    settings = build_settings(home=args.home)
    registry = ModelRegistry(settings)
    mv = registry.resolve(args.model_name, "champion")
    bundle = load_bundle(registry.bundle_path(mv))
    users = [str(u) for u in bundle.model.users_.ids.tolist()]
    paths = {
        "floor": ["/_floor"],
        "recommend": [f"/recommend/{u}" for u in users],
        "recommend_noexplain": [f"/recommend/{u}?explain=false" for u in users],
    }
    env = {"TASTEBUD_HOME": str(args.home), "TASTEBUD_SERVING__MODEL_NAME": args.model_name}
    if not args.request_log:
        env[NO_LOG_ENV] = "1"
    env.update(_cache_env(args))
    if args.switch_interval:
        env[SWITCH_ENV] = str(args.switch_interval)
    log = Path(tempfile.gettempdir()) / "tastebud-bench-serving.log"
    results: dict[int, dict[str, list[dict[str, Any]]]] = {}
    for workers in args.workers:
        results[workers] = {name: [] for name in paths}
        with Server(env, workers, args.port, log) as server:
            for p in paths.values():  # warm-up: imports, caches, connection pools
                run_wrk(server.url, p, 2)
            for rep in range(args.repeats):
                for name, p in paths.items():
                    res = run_wrk(server.url, p, args.duration, seed=rep + 1, cpu_of=server.pids())
                    results[workers][name].append(res)
                    print(f"workers={workers} {name} #{rep + 1}: {_fmt(res)}", flush=True)
    return _http_section(args, mv.version, bundle.model.name, len(users), results)


def _machine_us(runs: list[dict[str, Any]]) -> float:
    """Median CPU per request of server and wrk together: what the two cores spend on each request."""
    return statistics.median(r["server_cpu_us"] + r["wrk_cpu_us"] for r in runs)


def _http_section(args: argparse.Namespace, version: int, kind: str, n_users: int, results: dict[int, Any]) -> str:
    labels = {"floor": "`GET /_floor`", "recommend": "`GET /recommend/{user_id}`",
              "recommend_noexplain": "`GET /recommend/{user_id}?explain=false`"}  # fmt: skip
    rows = []
    for workers, by_name in results.items():
        floor = statistics.median(r["rps"] for r in by_name["floor"])
        for name, runs in by_name.items():
            ratios = ", ".join(f"{r['rps'] / f['rps']:.0%}" for r, f in zip(runs, by_name["floor"], strict=True))
            rps = statistics.median(r["rps"] for r in runs)
            rows.append([
                workers, labels[name], f"{rps:,.0f}",
                f"{statistics.median(r['p50_us'] for r in runs) / 1000:.2f}",
                f"{statistics.median(r['p99_us'] for r in runs) / 1000:.2f}",
                f"{rps / floor:.0%} (runs: {ratios})",
                f"{statistics.median(r['server_cpu_us'] for r in runs):.0f}",
                f"{statistics.median(r['wrk_cpu_us'] for r in runs):.0f}",
                f"{_machine_us(by_name['floor']) / _machine_us(runs):.0%}",
                sum(r["non_2xx"] + r["socket_errors"] for r in runs),
                ", ".join(f"{r['load']:.2f}" for r in runs),
            ])  # fmt: skip
    cmd = next(iter(next(iter(results.values())).values()))[0]["command"]
    title = (f"wrk on loopback, {args.repeats} alternating {args.duration} s runs per endpoint (medians); "
             f"{args.model_name} v{version} ({kind.upper()} champion), {n_users} users picked at random; "
             f"request log {'on (SQLite)' if args.request_log else 'OFF (diagnostic)'}; "
             f"{_cache_note(args)}")  # fmt: skip
    if args.switch_interval:
        title += f"; switch interval {args.switch_interval * 1000:g} ms (diagnostic)"
    headers = ["workers", "endpoint", "req/s", "p50 ms", "p99 ms", "of floor", "server CPU us/req", "wrk CPU us/req",
               "of floor by CPU", "errors", "load before each run"]  # fmt: skip
    return (
        table(title, headers, rows)
        + f"\nCommand: `.venv/bin/python bench/bench_serving.py http --home {args.home} --repeats {args.repeats}"
        + ("" if args.request_log else " --no-request-log")
        + _cache_flag(args)
        + f"`; each run is `{cmd}`. "
        + f"Machine: {machine_note()}.\n"
    )


# ---------------------------------------------------------------------------------------------- 1M catalog
def build_ann_bundle(directory: Path, n_items: int, n_users: int, dim: int, seed: int = 0) -> Path:
    """Write (once) a bundle of a fitted ALS model over ``n_items`` clustered synthetic item vectors with HNSW."""
    import polars as pl

    from tastebud.data.dataset import Dataset
    from tastebud.models import create
    from tastebud.models.als import ALSRecommender
    from tastebud.registry import write_bundle

    bundle = directory / "bundle"
    if (bundle / "manifest.json").is_file():
        print(f"reusing {bundle}", flush=True)
        return bundle
    rng = np.random.default_rng(seed)
    n_clusters = 1000
    centers = rng.normal(size=(n_clusters, dim)).astype(np.float32)
    item_cluster = rng.integers(0, n_clusters, n_items)
    items = centers[item_cluster] + 0.5 * rng.normal(size=(n_items, dim)).astype(np.float32)
    items *= rng.lognormal(0.0, 0.25, n_items).astype(np.float32)[:, None]  # popularity-like norm spread
    user_cluster = rng.integers(0, n_clusters, n_users)
    users = (centers[user_cluster] + rng.normal(size=(n_users, dim)).astype(np.float32)) / np.sqrt(dim)
    # 20 training items per user, from the user's own cluster where possible
    by_cluster = np.argsort(item_cluster, kind="stable")
    starts = np.searchsorted(item_cluster[by_cluster], np.arange(n_clusters))
    sizes = np.bincount(item_cluster, minlength=n_clusters)
    per_user = 20
    offs = (rng.random((n_users, per_user)) * sizes[user_cluster][:, None]).astype(np.int64)
    seen_items = by_cluster[starts[user_cluster][:, None] + offs].ravel()
    item_ids = [f"i{i:07d}" for i in range(n_items)]  # zero-padded: sorted ids keep the row order
    user_ids = [f"u{u:05d}" for u in range(n_users)]
    frame = pl.DataFrame({
        "user_id": np.repeat(np.array(user_ids), per_user), "item_id": np.array(item_ids)[seen_items],
        "value": np.ones(len(seen_items), dtype=np.float32),
    }).unique(["user_id", "item_id"])  # fmt: skip
    meta = pl.DataFrame({"item_id": item_ids, "title": [f"Item {i}" for i in range(n_items)],
                         "year": (1950 + item_cluster % 70).astype(np.int32)})  # fmt: skip
    ds = Dataset.from_frame(frame, items=meta, name=f"synthetic-{n_items}")
    assert ds.items.ids[0] == item_ids[0] and ds.items.ids[-1] == item_ids[-1] and len(ds.items) == n_items
    t0 = time.perf_counter()
    model = ALSRecommender.from_factors(users, items, ds.matrix("value"), ds.users, ds.items, factors=dim, use_ann=True)
    print(f"built two HNSW indexes over {n_items:,} x {dim} in {time.perf_counter() - t0:.0f} s", flush=True)
    fallback = {"popular": create("popular").fit(ds)}
    directory.mkdir(parents=True, exist_ok=True)
    write_bundle(model, bundle, train=ds, metrics={}, fallback=fallback, extra={"build_s": time.perf_counter() - t0})
    return bundle


def recall_at_k(model: Any, users: list[str], k: int = 10) -> tuple[float, float, float]:
    """(mean recall@k of the ANN answers against exact scoring, p50 and p99 in-process ms of the ANN call)."""
    from tastebud.models import _scoring as sc

    times, hits = [], []
    for user in users:
        t0 = time.perf_counter()
        ann = model.recommend([user], k, explain=False)
        times.append(time.perf_counter() - t0)
        rows = model.users_.index([user], kind="user")
        exact, _ = sc.rank(model._score, rows, k, n_items=len(model.items_), exclude=model.seen_[rows])
        truth = set(model.items_.ids[exact[0]].tolist())
        hits.append(len(truth & set(ann.item_ids[0])) / len(truth))
    ms = np.array(times) * 1000
    return float(np.mean(hits)), float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def exact_top(model: Any, users: list[str], k: int) -> dict[str, list[str]]:
    """Per user, the exact top-``k`` item ids (every item scored in NumPy, the user's items left out)."""
    from tastebud.models import _scoring as sc

    out = {}
    for user in users:
        rows = model.users_.index([user], kind="user")
        exact, _ = sc.rank(model._score, rows, k, n_items=len(model.items_), exclude=model.seen_[rows])
        out[user] = model.items_.ids[exact[0]].tolist()
    return out


def recall_served(url: str, truth: dict[str, list[str]]) -> float:
    """Mean recall@k of the server's answers for ``truth``'s users against ``truth``'s exact lists."""
    hits = []
    for user, exact in truth.items():
        with urllib.request.urlopen(f"{url}/recommend/{user}?k={len(exact)}&explain=false", timeout=30) as resp:
            served = [it["item_id"] for it in json.loads(resp.read())["recommendations"]]
        hits.append(len(set(served) & set(exact)) / len(exact))
    return float(np.mean(hits))


def bench_ann(args: argparse.Namespace) -> str:
    """Recall in process, then wrk through uvicorn on the 1M-item bundle; returns the Markdown section."""
    from threadpoolctl import threadpool_limits

    from tastebud.registry import load_bundle

    bundle_dir = build_ann_bundle(args.dir, args.items, args.users, args.dim)
    t0 = time.perf_counter()
    bundle = load_bundle(bundle_dir)
    load_s = time.perf_counter() - t0
    model = bundle.model
    if args.ef_search is not None:
        model.ann_.set_ef_search(args.ef_search)
    rng = np.random.default_rng(7)
    sample = [str(u) for u in rng.choice(model.users_.ids, args.queries, replace=False).tolist()]
    with threadpool_limits(1, "blas"):
        recall, p50_ms, p99_ms = recall_at_k(model, sample)
    print(f"recall@10 {recall:.4f} over {len(sample)} users; in-process p50 {p50_ms:.2f} ms p99 {p99_ms:.2f} ms")
    n_items, kind = model.ann_.n_vectors, model.ann_.kind
    ef = model.ann_.ef_search
    served_users = [f"u{int(u):05d}" for u in np.random.default_rng(12).choice(args.users, args.served_recall,
                                                                               replace=False)]  # fmt: skip
    with threadpool_limits(1, "blas"):
        truth = exact_top(model, served_users, 10)
    del bundle, model  # the servers load their own copy
    env = {"TASTEBUD_HOME": str(args.dir / "home"), "TASTEBUD_SERVING__MODEL_NAME": "synthetic-1m",
           BUNDLE_ENV: str(bundle_dir), "TASTEBUD_SERVING__WATCH_INTERVAL_S": "0", **_cache_env(args)}  # fmt: skip
    if args.ef_search is not None:
        env["TASTEBUD_SERVING__ANN_EF_SEARCH"] = str(args.ef_search)
    users = [str(u) for u in np.random.default_rng(8).choice(args.users, min(args.users, 2000), replace=False)]
    paths = {"floor": ["/_floor"], "recommend": [f"/recommend/u{int(u):05d}" for u in users]}
    log = Path(tempfile.gettempdir()) / "tastebud-bench-serving-ann.log"
    rows = []
    served_recall: list[float] = []
    for workers in args.workers:
        with Server(env, workers, args.port, log) as server:
            for p in paths.values():
                run_wrk(server.url, p, 2)
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in paths}
            for rep in range(args.repeats):
                for name, p in paths.items():
                    res = run_wrk(server.url, p, args.duration, seed=rep + 1)
                    runs[name].append(res)
                    print(f"ann workers={workers} {name} #{rep + 1}: {_fmt(res)}", flush=True)
            served_recall.append(recall_served(server.url, truth))
            print(f"ann workers={workers}: recall@10 of the served lists {served_recall[-1]:.4f}", flush=True)
        floor = statistics.median(r["rps"] for r in runs["floor"])
        rec = runs["recommend"]
        rows.append([
            workers, f"{statistics.median(r['rps'] for r in rec):,.0f}", f"{floor:,.0f}",
            f"{statistics.median(r['rps'] for r in rec) / floor:.0%}",
            f"{statistics.median(r['p50_us'] for r in rec) / 1000:.2f}",
            f"{statistics.median(r['p99_us'] for r in rec) / 1000:.2f}",
            f"{max(r['p99_us'] for r in rec) / 1000:.2f}",
            sum(r["non_2xx"] + r["socket_errors"] for r in rec), ", ".join(f"{r['load']:.2f}" for r in rec),
        ])  # fmt: skip
    title = (
        f"1M-item catalog through FAISS {kind} ({n_items:,} x {args.dim}, M=32, efSearch {ef}): "
        f"`GET /recommend/{{user_id}}` under wrk, {args.repeats} x {args.duration} s per endpoint (medians); "
        f"{_cache_note(args)}"
    )
    headers = ["workers", "req/s", "floor req/s", "of floor", "p50 ms", "p99 ms", "worst p99 ms", "errors",
               "load before each run"]  # fmt: skip
    return (
        f"**Recall@10 against exact NumPy scoring, {len(sample):,} random users (in process):** {recall:.4f}; "
        f"`recommend` in process p50 {p50_ms:.2f} ms, p99 {p99_ms:.2f} ms; "
        f"bundle load with checksums {load_s:.1f} s.\n\n"
        f"**Recall@10 of the lists the server answered** (`GET /recommend/{{user_id}}?k=10&explain=false` after the "
        f"wrk runs, {len(truth):,} random users, against exact NumPy scoring with the same exclusions): "
        + ", ".join(f"{r:.4f} ({w} worker(s))" for r, w in zip(served_recall, args.workers, strict=True))
        + ".\n\n"
        + table(title, headers, rows)
        + f"\nCommand: `.venv/bin/python bench/bench_serving.py ann --repeats {args.repeats}{_cache_flag(args)}"
        + ("" if args.ef_search is None else f" --ef-search {args.ef_search}") + "` "
        + "(bundle from "
        + "`ann-build`, reused). Machine: " + machine_note() + ".\n"
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------- synthetic ALS
def synth_model_file(n_users: int, n_items: int, n_interactions: int, *, min_per_user: int = 20, seed: int = 0) -> Path:
    """Write (once) a synthetic ALS model's arrays under ``bench/out/serving``; its ``.npz`` path.

    Histories are log-normal in length (ML-25M's spread: median about 0.46 of the mean, at least ``min_per_user``,
    a few users with thousands of items), items drawn by a power-law popularity (exponent 0.9, in random item
    order), ratings 0.5 to 5 in halves; factors Gaussian (d=64). Duplicate pairs are drawn again once, so the
    interaction count comes close to ``n_interactions``.
    """
    path = OUT_DIR / f"als-{n_users}x{n_items}x{n_interactions}-s{seed}.npz"
    if path.is_file():
        return path
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    mean = n_interactions / n_users
    lengths = np.clip(rng.lognormal(np.log(mean) - 0.774, 1.245, n_users), min_per_user, n_items // 2)
    lengths = np.maximum(min_per_user, np.round(lengths * n_interactions / lengths.sum())).astype(np.int64)
    weights = 1.0 / (np.arange(n_items) + 10.0) ** 0.9
    cdf = np.cumsum(weights[rng.permutation(n_items)])
    users = np.repeat(np.arange(n_users, dtype=np.int64), lengths)
    keys = np.empty(0, dtype=np.int64)
    for _ in range(2):  # a second draw for the pairs the first one repeated
        missing = len(users) - len(keys)
        if missing <= 0:
            break
        who = users if not len(keys) else rng.choice(users, missing)
        drawn = np.searchsorted(cdf, rng.random(len(who)) * cdf[-1])
        keys = np.unique(np.concatenate([keys, who * n_items + drawn]))
    rows, cols = keys // n_items, keys % n_items
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n_users))]).astype(np.int64)
    data = (rng.integers(1, 11, len(keys)) / 2).astype(np.float32)
    user_factors = (rng.normal(size=(n_users, 64)) * 0.1).astype(np.float32)
    item_factors = (rng.normal(size=(n_items, 64)) * 0.1).astype(np.float32)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, user_factors=user_factors, item_factors=item_factors, data=data,
             indices=cols.astype(np.int32), indptr=indptr)  # fmt: skip
    tmp.rename(path)
    print(f"generated {path.name}: {len(keys):,} interactions in {time.perf_counter() - t0:.0f} s", flush=True)
    return path


def synth_ids(prefix: str, n: int) -> list[str]:
    """Zero-padded ids (sorted ids keep the row order, as the vocabularies require)."""
    width = len(str(n - 1))
    return [f"{prefix}{i:0{width}d}" for i in range(n)]


def load_synth_model(path: Path) -> Any:
    """The fitted ``ALSRecommender`` of a :func:`synth_model_file`, explanation cache built as at bundle load."""
    import scipy.sparse as sp

    from tastebud.data.dataset import IdMap
    from tastebud.models.als import ALSRecommender

    z = np.load(path)
    x, y = z["user_factors"], z["item_factors"]
    seen = sp.csr_matrix((z["data"], z["indices"], z["indptr"]), shape=(len(x), len(y)))
    model = ALSRecommender.from_factors(x, y, seen, IdMap(synth_ids("u", len(x))), IdMap(synth_ids("i", len(y))),
                                        factors=64)  # fmt: skip
    model._cache_explanations()
    return model


def _synth_env(path: Path, args: argparse.Namespace, name: str) -> dict[str, str]:
    env = {"TASTEBUD_HOME": str(OUT_DIR / "home"), "TASTEBUD_SERVING__MODEL_NAME": name, SYNTH_ENV: str(path),
           "TASTEBUD_SERVING__WATCH_INTERVAL_S": "0"}  # fmt: skip
    if not args.request_log:
        env[NO_LOG_ENV] = "1"
    return env


def bench_scale(args: argparse.Namespace) -> str:
    """Per size: floor, /recommend (explanations on and off), every request scored, random users; memory."""
    log = Path(tempfile.gettempdir()) / "tastebud-bench-serving-scale.log"
    rows = []
    for size in args.sizes:
        n_users, n_items, n_inter = SCALES[size]
        path = synth_model_file(n_users, n_items, n_inter)
        nnz = int(np.load(path)["indptr"][-1])
        env = {**_synth_env(path, args, f"synthetic-{size}"), "TASTEBUD_SERVING__RESULT_CACHE_SIZE": "0"}
        ids = synth_ids("u", n_users)
        rng = np.random.default_rng(9)
        users = [ids[i] for i in rng.choice(n_users, min(n_users, 100_000), replace=False).tolist()]
        paths = {"floor": ["/_floor"], "recommend": [f"/recommend/{u}" for u in users],
                 "recommend_noexplain": [f"/recommend/{u}?explain=false" for u in users]}  # fmt: skip
        if args.offload_ms is not None:
            env["TASTEBUD_SERVING__OFFLOAD_MS"] = str(args.offload_ms)
        for workers, batch_max in [(w, b) for w in args.workers for b in args.batch_max or [None]]:
            if batch_max is not None:
                env["TASTEBUD_SERVING__BATCH_MAX"] = str(batch_max)
            t0 = time.perf_counter()
            with Server(env, workers, args.port, log) as server:
                ready_s = time.perf_counter() - t0
                for p in paths.values():
                    run_wrk(server.url, p, 2)
                runs: dict[str, list[dict[str, Any]]] = {name: [] for name in paths}
                for rep in range(args.repeats):
                    for name, p in paths.items():
                        res = run_wrk(server.url, p, args.duration, seed=rep + 1)
                        runs[name].append(res)
                        print(f"scale {size} workers={workers} batch_max={batch_max} {name} #{rep + 1}: {_fmt(res)}",
                              flush=True)  # fmt: skip
                rss = server.worker_rss_mb()
                batches = _batch_sizes(server.url, workers)
            floor = _median(runs["floor"], "rps")
            rec, plain = runs["recommend"], runs["recommend_noexplain"]
            rows.append([
                f"{n_inter / 1e6:g}M ({nnz:,})", f"{n_users:,} x {n_items:,}", workers,
                "default" if batch_max is None else batch_max, batches, f"{floor:,.0f}",
                f"{_median(rec, 'rps'):,.0f} ({_median(rec, 'rps') / floor:.0%})",
                f"{_median(rec, 'p50_us') / 1000:.2f}", f"**{_median(rec, 'p99_us') / 1000:.2f}**",
                f"{_median(plain, 'rps'):,.0f} ({_median(plain, 'rps') / floor:.0%})",
                f"{_median(plain, 'p99_us') / 1000:.2f}",
                " / ".join(f"{r:,.0f}" for r in rss), f"{ready_s:.0f}",
                sum(r["non_2xx"] + r["socket_errors"] for x in runs.values() for r in x),
                ", ".join(f"{r['load']:.2f}" for r in rec),
            ])  # fmt: skip
    title = (f"How serving cost grows with the data: synthetic ALS (d=64), random users, every request scored "
             f"(result cache off); wrk -t2 -c{CONNECTIONS}, {args.repeats} alternating {args.duration} s runs per "
             f"endpoint (medians)")  # fmt: skip
    headers = ["interactions (stored)", "users x items", "workers", "batch_max", "mean batch (largest)",
               "floor req/s", "`/recommend` req/s (of floor)",
               "p50 ms", "p99 ms", "`explain=false` req/s (of floor)", "`explain=false` p99 ms",
               "RSS per worker MiB", "ready s", "errors", "load before each `/recommend` run"]  # fmt: skip
    return (
        table(title, headers, rows)
        + f"\nCommand: `.venv/bin/python bench/bench_serving.py scale --sizes {' '.join(args.sizes)} --workers "
        + f"{' '.join(map(str, args.workers))} --repeats {args.repeats}"
        + (f" --batch-max {' '.join(map(str, args.batch_max))}" if args.batch_max else "")
        + (f" --offload-ms {args.offload_ms:g}" if args.offload_ms is not None else "")
        + (f" --connections {CONNECTIONS}" if CONNECTIONS != 32 else "")
        + f"`. Machine: {machine_note()}.\n"
    )


def _batch_sizes(url: str, workers: int) -> str:
    """Each worker's mean (largest) scoring batch so far, read from the benchmark app's ``/_batching``."""
    seen: dict[int, dict[str, Any]] = {}
    for _ in range(40 * workers):
        with urllib.request.urlopen(f"{url}/_batching", timeout=5) as resp:
            stats = json.loads(resp.read())
        seen[stats["pid"]] = stats
        if len(seen) >= workers:
            break
    if not any("batches" in x for x in seen.values()):
        return "off"
    return " / ".join(f"{x['mean_size']:.1f} ({x['largest']})" for x in seen.values())


def synth_engine(size: str, queries: int) -> tuple[Any, Any, list[str]]:
    """The synthetic model of a ``scale`` size, an ``Engine`` on it (result cache off) and ``queries`` random users."""
    from tastebud.serving.engine import Engine

    n_users, n_items, n_inter = SCALES[size]
    model = load_synth_model(synth_model_file(n_users, n_items, n_inter))
    engine = Engine(model, {}, synth_item_meta(model), result_cache_size=0)
    ids = synth_ids("u", n_users)
    picked = np.random.default_rng(5).choice(n_users, min(n_users, queries), replace=False)
    return model, engine, [ids[i] for i in picked.tolist()]


def champion_engine(home: Path, model_name: str, queries: int) -> tuple[Any, Any, list[str]]:
    """The champion of ``home`` (its model, an ``Engine`` as the server builds it, result cache off) and
    ``queries`` random users of it."""
    from tastebud.config import build_settings
    from tastebud.registry import ModelRegistry, load_bundle
    from tastebud.serving.engine import Engine

    registry = ModelRegistry(build_settings(home=home))
    bundle = load_bundle(registry.bundle_path(registry.resolve(model_name, "champion")))
    engine = Engine(bundle.model, dict(bundle.fallback), bundle.item_meta, result_cache_size=0)
    ids = [str(u) for u in bundle.model.users_.ids.tolist()]  # type: ignore[union-attr]
    picked = np.random.default_rng(5).choice(len(ids), min(len(ids), queries), replace=False)
    return bundle.model, engine, [ids[i] for i in picked.tolist()]


def bench_engine(args: argparse.Namespace) -> str:
    """In process, per request: ``Engine.recommend`` CPU time on a synthetic size, before and after the shortcuts.

    "Before" is the same code with ``rank_one``'s top-k taken by one ``argpartition`` of every score and no partial
    inverse cache (``W_u`` built per request for every user): the serving path as it was.
    """
    from threadpoolctl import threadpool_limits

    from tastebud.models import _scoring as sc
    from tastebud.serving.engine import Engine

    rows = []
    for size in args.sizes:
        n_users, n_items, n_inter = SCALES[size]
        model, engine, users = synth_engine(size, args.queries)
        lengths = np.diff(model.seen_.indptr)
        cached = (model.user_inv_, model.inv_slot_)
        fast_top = sc.top_positions

        def argpartition_top(scores: np.ndarray, kk: int) -> np.ndarray:
            n = len(scores)
            return np.arange(n) if kk >= n else np.argpartition(scores, n - kk)[n - kk :]

        def timed(engine: Engine, users: list[str], explain: bool) -> np.ndarray:
            out = []
            for user in users:
                t0 = time.thread_time()
                engine.recommend(user, 10, explain=explain)
                out.append(time.thread_time() - t0)
            return np.array(out) * 1000

        modes: dict[str, dict[bool, list[np.ndarray]]] = {"before": {True: [], False: []},
                                                          "after": {True: [], False: []}}  # fmt: skip
        with threadpool_limits(1, "blas"):
            for _ in range(args.repeats):  # alternating, so a busy spell of the machine hits both
                for mode in ("before", "after"):
                    sc.top_positions = argpartition_top if mode == "before" else fast_top  # type: ignore[assignment]
                    if model.inv_slot_ is not None or mode == "after":
                        model.user_inv_, model.inv_slot_ = (None, None) if mode == "before" else cached
                    for explain in (True, False):
                        modes[mode][explain].append(timed(engine, users, explain))
        sc.top_positions = fast_top  # type: ignore[assignment]
        model.user_inv_, model.inv_slot_ = cached
        for mode, by_explain in modes.items():
            for explain, runs in by_explain.items():
                rows.append([
                    f"{n_inter / 1e6:g}M", f"{n_users:,} x {n_items:,}", mode, "on" if explain else "off",
                    f"{statistics.median(float(np.mean(r)) for r in runs):.3f}",
                    f"{statistics.median(float(np.percentile(r, 50)) for r in runs):.3f}",
                    f"{statistics.median(float(np.percentile(r, 99)) for r in runs):.3f}",
                    f"{statistics.median(float(r.max()) for r in runs):.2f}",
                ])  # fmt: skip
        print(f"engine {size}: history p50 {np.median(lengths):.0f}, max {lengths.max()}; inverses cached for "
              f"{0 if cached[0] is None else len(cached[0]):,} users", flush=True)  # fmt: skip
    title = (f"`Engine.recommend` in process, CPU ms per request (`time.thread_time`, BLAS 1 thread), "
             f"{args.queries:,} random users, k=10; medians of {args.repeats} alternating passes")  # fmt: skip
    headers = ["interactions", "users x items", "code", "explanations", "mean", "p50", "p99", "max"]
    return (
        table(title, headers, rows)
        + f"\nCommand: `.venv/bin/python bench/bench_serving.py engine --sizes {' '.join(args.sizes)} --queries "
        + f"{args.queries} --repeats {args.repeats}`. Machine: {machine_note()}.\n"
    )


def bench_batch(args: argparse.Namespace) -> str:
    """In process: CPU per request of ``Engine.recommend_rows`` (a serving batch) by batch size, and list agreement.

    Batch size 1 is a plain ``Engine.recommend`` per user (what every request cost before batching). Every size
    scores the same users, in passes alternating between sizes. Agreement: each user's batched list (the largest
    size) against the one-request list: identical, or differing only where scores are within 1e-5 relative.
    """
    from threadpoolctl import threadpool_limits

    from tastebud.serving.engine import Engine, Filters

    no_filters = Filters()
    rows = []
    notes = []
    for size in ["champion"] if args.champion else args.sizes:
        if size == "champion":
            _, engine, users = champion_engine(args.home, args.model_name, args.queries)
            n_users, n_items, n_inter = len(engine.model.users_), len(engine.model.items_), engine.model.seen_.nnz
            label = f"{n_inter:,} (champion, {type(engine.model).__name__})"
        else:
            n_users, n_items, n_inter = SCALES[size]
            _, engine, users = synth_engine(size, args.queries)
            label = f"{n_inter / 1e6:g}M"

        def timed(engine: Engine, users: list[str], batch: int, explain: bool) -> np.ndarray:
            """CPU ms per request, one figure per batch (per request for size 1)."""
            out = []
            for start in range(0, len(users) - batch + 1, batch):
                chunk = users[start : start + batch]
                t0 = time.thread_time()
                if batch == 1:
                    engine.recommend(chunk[0], 10, explain=explain)
                else:
                    plain = [engine.plain_request(u, 10, True, no_filters, explain) for u in chunk]
                    engine.recommend_rows(plain)  # type: ignore[arg-type]
                out.append((time.thread_time() - t0) / batch)
            return np.array(out) * 1000

        runs: dict[tuple[int, bool], list[np.ndarray]] = {}
        with threadpool_limits(1, "blas"):
            for _ in range(args.repeats):
                for batch in args.batch_sizes:
                    for explain in (True, False):
                        runs.setdefault((batch, explain), []).append(timed(engine, users, batch, explain))
            largest = max(args.batch_sizes)
            same = close = 0
            for start in range(0, len(users) - largest + 1, largest):
                chunk = users[start : start + largest]
                batched = engine.recommend_rows([engine.plain_request(u, 10, True, no_filters, False) for u in chunk])
                for user, got in zip(chunk, batched, strict=True):
                    alone = engine.recommend(user, 10, explain=False)
                    a = [(it["item_id"], it["score"]) for it in alone.items]
                    b = [(it["item_id"], it["score"]) for it in got.items]  # type: ignore[union-attr]
                    if [x for x, _ in a] == [x for x, _ in b]:
                        same += 1
                    elif np.allclose([s for _, s in a], [s for _, s in b], rtol=1e-5, atol=1e-7):
                        close += 1
        base = {e: statistics.median(float(np.mean(r)) for r in runs[(1, e)]) for e in (True, False)}
        for (batch, explain), r in sorted(runs.items(), key=lambda kv: (not kv[0][1], kv[0][0])):
            mean = statistics.median(float(np.mean(x)) for x in r)
            rows.append([
                label, f"{n_users:,} x {n_items:,}", "on" if explain else "off",
                "1 (`Engine.recommend`)" if batch == 1 else batch, f"{mean:.3f}",
                f"{statistics.median(float(np.percentile(x, 50)) for x in r):.3f}",
                f"x{base[explain] / mean:.2f}",
            ])  # fmt: skip
        checked = (len(users) // largest) * largest
        notes.append(f"{size}: of {checked:,} users, batches of {largest} gave the one-request list for {same:,}, "
                     f"the same scores within 1e-5 relative (near-tied items in another order) for {close:,}, and "
                     f"a different list for {checked - same - close:,}")  # fmt: skip
    title = (f"`Engine.recommend_rows` (one scoring batch) in process, CPU ms per request (`time.thread_time`, BLAS 1 "
             f"thread), {args.queries:,} random users, k=10; medians of {args.repeats} alternating passes")  # fmt: skip
    headers = ["interactions", "users x items", "explanations", "batch size", "mean", "p50 (per batch)",
               "speed-up vs 1"]  # fmt: skip
    return (
        table(title, headers, rows)
        + "\nList agreement: "
        + "; ".join(notes)
        + ".\n"
        + "\nCommand: `.venv/bin/python bench/bench_serving.py batch "
        + (f"--champion --home {args.home} " if args.champion else f"--sizes {' '.join(args.sizes)} ")
        + "--batch-sizes "
        + f"{' '.join(map(str, args.batch_sizes))} --queries {args.queries} --repeats {args.repeats}`. "
        + f"Machine: {machine_note()}.\n"
    )


def zipf_paths(n_users: int, n_requests: int, exponent: float, seed: int = 11) -> list[str]:
    """``n_requests`` paths of users drawn from a Zipf distribution (rank ``r`` with weight ``r^-exponent``).

    Ranks map to users through a random permutation, so the popular users are spread over the id space.
    """
    rng = np.random.default_rng(seed)
    cdf = np.cumsum(1.0 / np.arange(1, n_users + 1) ** exponent)
    ranks = np.searchsorted(cdf, rng.random(n_requests) * cdf[-1])
    users = rng.permutation(n_users)[ranks]
    ids = synth_ids("u", n_users)
    return [f"/recommend/{ids[u]}" for u in users.tolist()]


def _cache_counts(url: str) -> tuple[float, float]:
    """(hits, misses) of the result cache so far, summed over workers, from ``/metrics``."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    hits = misses = 0.0
    for line in text.splitlines():
        if line.startswith("tastebud_serving_result_cache_total{"):
            value = float(line.rsplit(" ", 1)[1])
            if 'outcome="hit"' in line:
                hits += value
            elif 'outcome="miss"' in line:
                misses += value
    return hits, misses


def bench_zipf(args: argparse.Namespace) -> str:
    """1M users x 100K items, Zipf-drawn users; cache as served by default, then off; floor in the same runs."""
    n_users, n_items, n_inter = ZIPF_SHAPE
    path = synth_model_file(n_users, n_items, n_inter, min_per_user=5)
    nnz = int(np.load(path)["indptr"][-1])
    requests = zipf_paths(n_users, 400_000, args.zipf_exponent)
    warmup = zipf_paths(n_users, 20_000, args.zipf_exponent, seed=12)  # imports and pools, not this draw's users
    distinct = len(set(requests))
    log = Path(tempfile.gettempdir()) / "tastebud-bench-serving-zipf.log"
    rows = []
    sizes: list[int | None] = [None, 0] if args.result_cache_size is None else [args.result_cache_size, 0]
    for workers in args.workers:
        for size in sizes:
            env = _synth_env(path, args, "synthetic-zipf")
            if size is not None:
                env["TASTEBUD_SERVING__RESULT_CACHE_SIZE"] = str(size)
            with Server(env, workers, args.port, log) as server:
                run_wrk(server.url, ["/_floor"], 2)
                run_wrk(server.url, warmup, 2, in_order=True)
                runs: dict[str, list[dict[str, Any]]] = {"floor": [], "recommend": []}
                ratios = []
                for rep in range(args.repeats):
                    res = run_wrk(server.url, ["/_floor"], args.duration, seed=rep + 1)
                    runs["floor"].append(res)
                    before = _cache_counts(server.url)
                    res = run_wrk(server.url, requests, args.duration, seed=rep + 1, in_order=True)
                    after = _cache_counts(server.url)
                    hits, misses = after[0] - before[0], after[1] - before[1]
                    ratios.append(hits / (hits + misses) if hits + misses else 0.0)
                    runs["recommend"].append(res)
                    note = f", cache hits {ratios[-1]:.1%}" if size != 0 else ""
                    print(f"zipf workers={workers} cache={size} #{rep + 1}: {_fmt(res)}{note}", flush=True)
                rss = server.worker_rss_mb()
            floor, rec = _median(runs["floor"], "rps"), runs["recommend"]
            label = "off: every request scored" if size == 0 else f"on ({size or 'default size'})"
            hit_note = f"{statistics.median(ratios):.1%} (runs: {', '.join(f'{r:.1%}' for r in ratios)})"
            rows.append([
                workers, label, "-" if size == 0 else hit_note,
                f"{floor:,.0f}", f"{_median(rec, 'rps'):,.0f}",
                f"**{_median(rec, 'rps') / floor:.0%}** (runs: "
                + ", ".join(f"{r['rps'] / f['rps']:.0%}" for r, f in zip(rec, runs["floor"], strict=True)) + ")",
                f"{_median(rec, 'p50_us') / 1000:.2f}", f"**{_median(rec, 'p99_us') / 1000:.2f}**",
                " / ".join(f"{r:,.0f}" for r in rss),
                sum(r["non_2xx"] + r["socket_errors"] for x in runs.values() for r in x),
                ", ".join(f"{r['load']:.2f}" for r in rec),
            ])  # fmt: skip
    title = (f"Zipf-drawn users (exponent {args.zipf_exponent:g}) over {n_users:,} users x {n_items:,} items "
             f"({nnz:,} interactions, synthetic ALS d=64): `GET /recommend/{{user_id}}` with explanations, "
             f"wrk -t2 -c{CONNECTIONS}, {args.repeats} alternating {args.duration} s runs (medians)")  # fmt: skip
    headers = ["workers", "result cache", "cache hits", "floor req/s", "`/recommend` req/s", "of floor", "p50 ms",
               "p99 ms", "RSS per worker MiB", "errors", "load before each `/recommend` run"]  # fmt: skip
    return (
        table(title, headers, rows)
        + f"\nThe request sequence: {len(requests):,} Zipf draws ({distinct:,} distinct users), sent in order; "
        + "each run's two wrk threads start at their own eighth of it, so no run repeats an earlier run's requests "
        + "(a warm cache, not a replayed one). Command: `.venv/bin/python bench/bench_serving.py zipf --workers "
        + f"{' '.join(map(str, args.workers))} --repeats {args.repeats}`. Machine: {machine_note()}.\n"
    )


# ---------------------------------------------------------------------------------------------- old against new
def bench_ab(args: argparse.Namespace) -> str:
    """The code at ``--base`` against this tree under the same load; returns the Markdown section.

    Both servers are up at once (a git worktree of ``--base`` on one port, this tree on the next, 2 workers each,
    every request scored) and the wrk runs alternate between them run by run, the order flipped every round: the
    shared machine's speed drifts within minutes (the floor moved from 8,800 to 5,500 req/s within one run), so
    figures from servers started one after the other compare the machine, not the code. An idle server costs
    the other nothing but memory.
    """
    if args.ab_target == "demo":
        env = {"TASTEBUD_HOME": str(args.home), "TASTEBUD_SERVING__MODEL_NAME": args.model_name}
        users = _champion_users(args.home, args.model_name)
        what = f"{args.model_name} champion of {args.home}"
    else:
        n_users, n_items, n_inter = SCALES[args.ab_target]
        path = synth_model_file(n_users, n_items, n_inter)
        env = _synth_env(path, args, f"synthetic-{args.ab_target}")
        ids = synth_ids("u", n_users)
        picks = np.random.default_rng(9).choice(n_users, min(n_users, 100_000), replace=False)
        users = [ids[i] for i in picks.tolist()]
        what = f"synthetic ALS, {n_users:,} users x {n_items:,} items, {n_inter:,} interactions"
    env["TASTEBUD_SERVING__RESULT_CACHE_SIZE"] = "0"
    paths = {"floor": ["/_floor"], "recommend": [f"/recommend/{u}" for u in users],
             "recommend_noexplain": [f"/recommend/{u}?explain=false" for u in users]}  # fmt: skip
    base_env, new_env = _env_pairs(args.base_env), _env_pairs(args.new_env)
    same_tree = args.base == "this"  # both servers run this tree: settings compared (--base-env / --new-env)
    tree: Path | None = None
    if same_tree:
        base = "this tree"
    else:
        base = subprocess.run(["git", "rev-parse", "--short", args.base], capture_output=True, text=True,
                              check=True, cwd=BENCH_DIR).stdout.strip()  # fmt: skip
        tree = Path(tempfile.mkdtemp(prefix="tastebud-ab-")) / "base"
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), base], capture_output=True, check=True,
                       cwd=BENCH_DIR)  # fmt: skip
    if base_env:
        base += " " + " ".join(f"{k}={v}" for k, v in base_env.items())
    new_label = "new" + ("".join(f" {k}={v}" for k, v in new_env.items()) if new_env else "")
    log = Path(tempfile.gettempdir()) / "tastebud-bench-serving-ab.log"
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {code: {n: [] for n in paths} for code in (base, new_label)}
    try:
        with (
            Server({**env, **base_env}, 2, args.port, log, tree=tree) as old,
            Server({**env, **new_env}, 2, args.port + 1, log) as new,
        ):
            servers = {base: old, new_label: new}
            for server in servers.values():
                for p in paths.values():
                    run_wrk(server.url, p, 2)
            for rnd in range(args.repeats):
                for code in list(servers) if rnd % 2 == 0 else list(servers)[::-1]:
                    for name, p in paths.items():
                        res = run_wrk(servers[code].url, p, args.duration, seed=rnd + 1, cpu_of=servers[code].pids())
                        runs[code][name].append(res)
                        print(f"ab {code} round {rnd + 1} {name}: {_fmt(res)}", flush=True)
    finally:
        if tree is not None:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], capture_output=True, cwd=BENCH_DIR)
            shutil.rmtree(tree.parent, ignore_errors=True)
    rows = []
    for code, by_name in runs.items():
        for name in ("recommend", "recommend_noexplain"):
            got = by_name[name]
            ratios = [r["rps"] / f["rps"] for r, f in zip(got, by_name["floor"], strict=True)]
            rows.append([
                code if code == new_label or same_tree else f"{code} (`--base`)",
                name.replace("recommend_noexplain", "explain=false"),
                f"{_median(by_name['floor'], 'rps'):,.0f}", f"{_median(got, 'rps'):,.0f}",
                f"**{statistics.median(ratios):.0%}** ({', '.join(f'{x:.0%}' for x in ratios)})",
                f"{_median(got, 'p50_us') / 1000:.2f}", f"{_median(got, 'p99_us') / 1000:.2f}",
                f"{_median(by_name['floor'], 'p99_us') / 1000:.2f}",
                f"{_median(got, 'server_cpu_us'):.0f} / {_median(by_name['floor'], 'server_cpu_us'):.0f}",
            ])  # fmt: skip
    compared = "Two settings" if same_tree else "Old code against new"
    title = (f"{compared}, alternated run by run: {what}; 2 workers each, every request scored; "
             f"wrk -t2 -c{CONNECTIONS}, {args.repeats} rounds of {args.duration} s runs (medians)")  # fmt: skip
    headers = ["code", "endpoint", "floor req/s", "req/s", "of floor (per round)", "p50 ms", "p99 ms",
               "floor p99 ms", "server CPU us/req (floor)"]  # fmt: skip
    return (
        table(title, headers, rows)
        + f"\nCommand: `.venv/bin/python bench/bench_serving.py ab --base {args.base} --ab-target {args.ab_target} "
        + (f"--home {args.home} " if args.ab_target == "demo" else "")
        + (f"--base-env {' '.join(args.base_env)} " if args.base_env else "")
        + (f"--new-env {' '.join(args.new_env)} " if args.new_env else "")
        + f"--repeats {args.repeats} --duration {args.duration}`. Machine: {machine_note()}.\n"
    )


def _env_pairs(pairs: list[str] | None) -> dict[str, str]:
    """``KEY=VALUE`` arguments as environment entries (``--base-env``, ``--new-env``)."""
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"expected KEY=VALUE, got {pair!r} (e.g. TASTEBUD_SERVING__BATCH_WAIT_MS=0)")
        out[key] = value
    return out


def _champion_users(home: Path, model_name: str) -> list[str]:
    from tastebud.config import build_settings
    from tastebud.registry import ModelRegistry, load_bundle

    registry = ModelRegistry(build_settings(home=home))
    bundle = load_bundle(registry.bundle_path(registry.resolve(model_name, "champion")))
    return [str(u) for u in bundle.model.users_.ids.tolist()]


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in runs))


def _cache_env(args: argparse.Namespace) -> dict[str, str]:
    size = args.result_cache_size
    return {} if size is None else {"TASTEBUD_SERVING__RESULT_CACHE_SIZE": str(size)}


def _cache_note(args: argparse.Namespace) -> str:
    size = args.result_cache_size
    if size == 0:
        return "result cache OFF: every request scored"
    return f"result cache {'on (default size)' if size is None else f'of {size:,} lists'}"


def _cache_flag(args: argparse.Namespace) -> str:
    return "" if args.result_cache_size is None else f" --result-cache-size {args.result_cache_size}"


# ---------------------------------------------------------------------------------------------- CLI
def main() -> None:
    global CONNECTIONS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=("http", "ann-build", "ann", "zipf", "scale", "engine", "batch", "ab"))
    parser.add_argument("--home", type=Path, default=Path("/tmp/tbhome"), help="home whose champion is served")
    parser.add_argument("--model-name", default="movielens-100k")
    parser.add_argument("--dir", type=Path, default=OUT_DIR / "ann1m", help="cache of the 1M bundle")
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=1000, help="users for the recall measurement")
    parser.add_argument("--workers", type=int, nargs="+", default=None,
                        help="uvicorn workers per server (default: 1 and 2; zipf: 2; scale: 1)")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--no-request-log", dest="request_log", action="store_false",
                        help="serve without the request log (diagnostic: what the log costs)")  # fmt: skip
    parser.add_argument("--switch-interval", type=float, default=0.0,
                        help="sys.setswitchinterval in the server, s (diagnostic; 0 keeps Python's 0.005)")  # fmt: skip
    parser.add_argument("--result-cache-size", type=int, default=None,
                        help="serving.result_cache_size of the server (default: the setting's default, 10,000 lists "
                             "per worker; 0 scores every request afresh)")  # fmt: skip
    parser.add_argument("--ef-search", type=int, default=None,
                        help="ann: serving.ann_ef_search (HNSW efSearch), for the recall and the servers")  # fmt: skip
    parser.add_argument("--sizes", nargs="+", choices=sorted(SCALES), default=list(SCALES),
                        help="scale: which synthetic sizes to serve (interactions)")  # fmt: skip
    parser.add_argument("--zipf-exponent", type=float, default=ZIPF_EXPONENT,
                        help="zipf: exponent of the request distribution over users")  # fmt: skip
    parser.add_argument("--served-recall", type=int, default=500,
                        help="ann: users whose served lists (over HTTP) are compared with exact scoring")  # fmt: skip
    parser.add_argument("--batch-max", type=int, nargs="+", default=None,
                        help="scale: serving.batch_max of the servers, one server per value (default: the "
                             "setting's default; 1 disables batching)")  # fmt: skip
    parser.add_argument("--offload-ms", type=float, default=None,
                        help="scale: serving.offload_ms of the servers (a huge value keeps scoring, batches "
                             "included, on the event loop)")  # fmt: skip
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 16, 32],
                        help="batch: batch sizes compared in process")  # fmt: skip
    parser.add_argument("--champion", action="store_true",
                        help="batch: the champion of --home (the demo's EASE, say) instead of --sizes")  # fmt: skip
    parser.add_argument("--base", default="HEAD~1",
                        help="ab: the git revision whose code this tree is compared with; 'this': this tree on both "
                             "sides, to compare settings (--base-env, --new-env)")  # fmt: skip
    parser.add_argument("--base-env", nargs="*", metavar="KEY=VALUE",
                        help="ab: environment of the base server only: TASTEBUD_SERVING__BATCH_WAIT_MS=0")  # fmt: skip
    parser.add_argument("--new-env", nargs="*", metavar="KEY=VALUE",
                        help="ab: environment of this tree's server only")  # fmt: skip
    parser.add_argument("--ab-target", choices=["demo", *sorted(SCALES)], default="demo",
                        help="ab: what both servers serve: the champion of --home, or a synthetic size")  # fmt: skip
    parser.add_argument("--connections", type=int, default=CONNECTIONS,
                        help="wrk's open connections (every target is stated at 32)")  # fmt: skip
    parser.add_argument("--record", action="store_true", help="append the table to bench/RESULTS.md")
    args = parser.parse_args()
    CONNECTIONS = args.connections
    if args.part == "ann-build":
        build_ann_bundle(args.dir, args.items, args.users, args.dim)
        return
    parts = {"http": bench_http, "ann": bench_ann, "zipf": bench_zipf, "scale": bench_scale, "engine": bench_engine,
             "batch": bench_batch, "ab": bench_ab}  # fmt: skip
    if args.workers is None:
        args.workers = {"zipf": [2], "scale": [1]}.get(args.part, [1, 2])
    text = parts[args.part](args)
    print(text)
    if args.record:
        append_results(text)


if __name__ == "__main__":
    main()
