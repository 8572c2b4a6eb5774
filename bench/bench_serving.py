"""Serving throughput and latency under wrk: the HTTP floor against ``GET /recommend``, and a 1M-item catalog.

Run (from the repository root):

- ``.venv/bin/python bench/bench_serving.py http [--home /tmp/tbhome] [--repeats 3] [--record]``: in one run, for
  1 and then 2 uvicorn workers, alternate ``wrk -t2 -c32 -d10s`` on ``GET /_floor`` (a trivial async JSON route
  of the same app, middleware included) and on ``GET /recommend/{user_id}`` for random known users of the
  served champion. Reported: medians over the repeats of req/s and p99, and recommend's share of the floor.
- ``.venv/bin/python bench/bench_serving.py ann-build [--dir /tmp/tastebud-ann1m]``: a synthetic catalog of
  1,000,000 clustered 64-d item vectors and 10,000 users, as a fitted ``ALSRecommender`` with ``use_ann`` (FAISS
  HNSW), written once as a bundle under ``--dir`` (minutes: it is reused when present).
- ``.venv/bin/python bench/bench_serving.py ann [--dir ...] [--record]``: recall@10 of the served model against
  exact NumPy scoring on 1,000 random users (in process), then wrk on ``GET /recommend`` through uvicorn.

The servers run ``bench_app`` below (``uvicorn bench_serving:bench_app --factory``): the production app from the
environment plus the ``/_floor`` route, which exists only in this benchmark's app.
"""

from __future__ import annotations

import argparse
import json
import os
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import append_results, machine_note, table

BENCH_DIR = Path(__file__).resolve().parent
#: Environment variable naming a bundle directory to serve as version 1 / champion (the ``ann`` benchmark).
BUNDLE_ENV = "TASTEBUD_BENCH_BUNDLE"
#: Set (to anything) to run the server without a request log: a diagnostic, never the headline figure.
NO_LOG_ENV = "TASTEBUD_BENCH_NO_REQUEST_LOG"
#: Seconds for ``sys.setswitchinterval`` in the server (diagnostic; Python's default is 0.005).
SWITCH_ENV = "TASTEBUD_BENCH_SWITCH_INTERVAL"
WRK = ("wrk", "-t2", "-c32", "-d{d}s")

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


def bench_app() -> Any:
    """The served app plus ``GET /_floor``; with ``TASTEBUD_BENCH_BUNDLE`` set it serves that bundle directly."""
    from fastapi.responses import ORJSONResponse

    from tastebud.config import build_settings
    from tastebud.serving.app import create_app, create_app_from_env, limit_blas_threads

    bundle = os.environ.get(BUNDLE_ENV)
    request_log = _NullLog() if os.environ.get(NO_LOG_ENV) else None
    if os.environ.get(SWITCH_ENV):  # diagnostic: how long a background thread may hold the GIL
        sys.setswitchinterval(float(os.environ[SWITCH_ENV]))
    if bundle or request_log is not None:
        settings = build_settings()
        limit_blas_threads(settings.serving.blas_threads)
        registry = _StaticRegistry(settings.serving.model_name, Path(bundle)) if bundle else None
        app = create_app(settings, registry=registry, request_log=request_log, freeze_gc=True)
    else:
        app = create_app_from_env()

    async def floor() -> ORJSONResponse:
        return ORJSONResponse({"ok": True})

    app.add_api_route("/_floor", floor, methods=["GET"], include_in_schema=False)
    return app


class Server:
    """``uvicorn bench_serving:bench_app`` with ``workers`` processes, started and stopped around a block."""

    def __init__(self, env: dict[str, str], workers: int, port: int, log: Path, ready_timeout: float = 600) -> None:
        self.env, self.workers, self.port, self.log, self.ready_timeout = env, workers, port, log, ready_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.metrics_dir: str | None = None

    def __enter__(self) -> Server:
        argv = [sys.executable, "-m", "uvicorn", "bench_serving:bench_app", "--factory", "--app-dir", str(BENCH_DIR),
                "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(self.workers),
                "--log-level", "warning"]  # fmt: skip
        env = {**os.environ, **self.env, "PYTHONPATH": str(BENCH_DIR)}
        if self.workers > 1:  # as `tastebud serve` does: Prometheus multiprocess mode, one fresh directory
            self.metrics_dir = tempfile.mkdtemp(prefix="tastebud-bench-metrics-")
            env["PROMETHEUS_MULTIPROC_DIR"] = self.metrics_dir
        self.proc = subprocess.Popen(argv, env=env, stdout=self.log.open("ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {self.log}")
            try:
                with urllib.request.urlopen(f"{self.url}/health/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.5)
        self.__exit__()
        raise RuntimeError(f"server not ready after {self.ready_timeout} s; see {self.log}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

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


# ---------------------------------------------------------------------------------------------- wrk
def run_wrk(url: str, paths: list[str], duration: int, seed: int = 1) -> dict[str, Any]:
    """One wrk run over ``paths`` (picked at random per request); its figures, the command and the load."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(LUA % (", ".join(json.dumps(p) for p in paths), seed))
        script = f.name
    argv = [*(a.format(d=duration) for a in WRK), "-s", script, url]
    load = os.getloadavg()[0]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=duration + 60).stdout
    finally:
        os.unlink(script)
    line = next(x for x in out.splitlines() if x.startswith("BENCH "))
    res = json.loads(line[len("BENCH ") :])
    res["rps"] = res["requests"] / (res["duration_us"] / 1e6)
    res["load"] = load
    res["command"] = " ".join(argv[:-3]) + " -s <random paths>.lua " + url
    if res["non_2xx"] or res["socket_errors"]:
        print(f"  warning: {res['non_2xx']} non-2xx, {res['socket_errors']} socket errors", file=sys.stderr)
    return res


def _fmt(res: dict[str, Any]) -> str:
    return (f"{res['rps']:.0f} req/s, p50 {res['p50_us'] / 1000:.2f} ms, p99 {res['p99_us'] / 1000:.2f} ms, "
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
                    res = run_wrk(server.url, p, args.duration, seed=rep + 1)
                    results[workers][name].append(res)
                    print(f"workers={workers} {name} #{rep + 1}: {_fmt(res)}", flush=True)
    return _http_section(args, mv.version, bundle.model.name, len(users), results)


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
    headers = ["workers", "endpoint", "req/s", "p50 ms", "p99 ms", "of floor", "errors", "load before each run"]
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
    del bundle, model  # the servers load their own copy
    env = {"TASTEBUD_HOME": str(args.dir / "home"), "TASTEBUD_SERVING__MODEL_NAME": "synthetic-1m",
           BUNDLE_ENV: str(bundle_dir), "TASTEBUD_SERVING__WATCH_INTERVAL_S": "0", **_cache_env(args)}  # fmt: skip
    if args.ef_search is not None:
        env["TASTEBUD_SERVING__ANN_EF_SEARCH"] = str(args.ef_search)
    users = [str(u) for u in np.random.default_rng(8).choice(args.users, 2000, replace=False)]
    paths = {"floor": ["/_floor"], "recommend": [f"/recommend/u{int(u):05d}" for u in users]}
    log = Path(tempfile.gettempdir()) / "tastebud-bench-serving-ann.log"
    rows = []
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
        + table(title, headers, rows)
        + f"\nCommand: `.venv/bin/python bench/bench_serving.py ann --repeats {args.repeats}{_cache_flag(args)}"
        + ("" if args.ef_search is None else f" --ef-search {args.ef_search}") + "` "
        + "(bundle from "
        + "`ann-build`, reused). Machine: " + machine_note() + ".\n"
    )  # fmt: skip


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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=("http", "ann-build", "ann"))
    parser.add_argument("--home", type=Path, default=Path("/tmp/tbhome"), help="home whose champion is served")
    parser.add_argument("--model-name", default="movielens-100k")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/tastebud-ann1m"), help="cache of the 1M bundle")
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=1000, help="users for the recall measurement")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
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
    parser.add_argument("--record", action="store_true", help="append the table to bench/RESULTS.md")
    args = parser.parse_args()
    if args.part == "ann-build":
        build_ann_bundle(args.dir, args.items, args.users, args.dim)
        return
    text = bench_http(args) if args.part == "http" else bench_ann(args)
    print(text)
    if args.record:
        append_results(text)


if __name__ == "__main__":
    main()
