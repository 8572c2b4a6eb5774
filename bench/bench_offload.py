"""Slow work off the event loop: ``/health`` latency while slow ``/recommend`` requests run, and the hop's cost.

Run (from the repository root):

- ``.venv/bin/python bench/bench_offload.py health [--items 300000] [--record]``: a synthetic catalog of ``--items``
  64-d item vectors served by exact NumPy scoring (ALS from factors, no ANN index; built once under ``--dir``), one
  uvicorn worker, result cache off. ``wrk -t1 -c4`` keeps four ``GET /recommend/{user}`` requests in flight while
  a prober asks ``GET /health`` every 20 ms on its own connection. Once with ``serving.offload_ms`` huge (scoring
  on the event loop: the behaviour before) and once with the default (scoring in a worker thread).
- ``.venv/bin/python bench/bench_offload.py hop [--home /tmp/tbsoak/home] [--record]``: what the thread hand-off
  costs a cheap model: wrk on ``GET /recommend/{user}`` of the home's ML-100K champion with the default (inline:
  its requests measure well under 1 ms) against ``offload_ms=0`` (every request through the thread pool),
  alternating runs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import append_results, machine_note, table
from bench_serving import BUNDLE_ENV, LUA, Server, run_wrk

INLINE = "1000000000"  # serving.offload_ms: nothing leaves the loop


def build_exact_bundle(directory: Path, n_items: int, n_users: int = 5000, dim: int = 64) -> Path:
    """Write (once) an ALS bundle over ``n_items`` random item vectors, exact scoring (no FAISS index)."""
    import polars as pl

    from tastebud.data.dataset import Dataset
    from tastebud.models import create
    from tastebud.models.als import ALSRecommender
    from tastebud.registry import write_bundle

    bundle = directory / "bundle"
    if (bundle / "manifest.json").is_file():
        return bundle
    rng = np.random.default_rng(0)
    items = rng.normal(size=(n_items, dim)).astype(np.float32)
    users = rng.normal(size=(n_users, dim)).astype(np.float32) / np.sqrt(dim)
    per_user = 30
    seen = rng.integers(0, n_items, (n_users, per_user)).ravel()
    item_ids = [f"i{i:07d}" for i in range(n_items)]
    user_ids = [f"u{u:05d}" for u in range(n_users)]
    frame = pl.DataFrame({"user_id": np.repeat(np.array(user_ids), per_user), "item_id": np.array(item_ids)[seen],
                          "value": np.ones(len(seen), dtype=np.float32)}).unique(["user_id", "item_id"])  # fmt: skip
    meta = pl.DataFrame({"item_id": item_ids, "title": [f"Item {i}" for i in range(n_items)]})
    ds = Dataset.from_frame(frame, items=meta, name=f"exact-{n_items}")
    model = ALSRecommender.from_factors(users, items, ds.matrix("value"), ds.users, ds.items, factors=dim)
    directory.mkdir(parents=True, exist_ok=True)
    write_bundle(model, bundle, train=ds, metrics={}, fallback={"popular": create("popular").fit(ds)})
    return bundle


def wrk_few(url: str, paths: list[str], duration: int, connections: int) -> dict[str, Any]:
    """wrk with one thread and ``connections`` connections (``connections`` requests always in flight)."""
    import json
    import os
    import subprocess

    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(LUA % (", ".join(json.dumps(p) for p in paths), 1))
        script = f.name
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--timeout", "30s", "-s", script, url]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=duration + 60).stdout
    finally:
        os.unlink(script)
    res: dict[str, Any] = json.loads(next(x for x in out.splitlines() if x.startswith("BENCH "))[len("BENCH ") :])
    res["rps"] = res["requests"] / (res["duration_us"] / 1e6)
    return res


def probe_health(url: str, stop: threading.Event, period: float = 0.02) -> list[float]:
    """Milliseconds of ``GET /health`` every ``period`` s on one kept-alive connection until ``stop``."""
    out: list[float] = []
    with httpx.Client(base_url=url, timeout=30) as client:
        client.get("/health")
        while not stop.is_set():
            t0 = time.perf_counter()
            client.get("/health").raise_for_status()
            out.append((time.perf_counter() - t0) * 1000)
            time.sleep(period)
    return out


def health_during(url: str, load: Any) -> tuple[list[float], dict[str, Any]]:
    """``/health`` latencies (ms) probed while ``load(url)`` runs, and what ``load`` returned."""
    stop = threading.Event()
    box: dict[str, list[float]] = {}

    def probe() -> None:
        box["h"] = probe_health(url, stop)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        res = load(url)
    finally:
        stop.set()
        prober.join()
    return box["h"], res


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def bench_health(args: argparse.Namespace) -> str:
    bundle = build_exact_bundle(args.dir, args.items)
    users = [f"u{u:05d}" for u in np.random.default_rng(1).choice(5000, 1000, replace=False)]
    paths = [f"/recommend/{u}" for u in users]
    rows = []
    for label, offload in (("on the event loop (before)", INLINE), ("in a worker thread (after)", None)):
        env = {"TASTEBUD_HOME": str(args.dir / "home"), "TASTEBUD_SERVING__MODEL_NAME": "exact",
               BUNDLE_ENV: str(bundle), "TASTEBUD_SERVING__WATCH_INTERVAL_S": "0",
               "TASTEBUD_SERVING__RESULT_CACHE_SIZE": "0"}  # fmt: skip
        if offload is not None:
            env["TASTEBUD_SERVING__OFFLOAD_MS"] = offload
        log = Path(tempfile.gettempdir()) / "tastebud-bench-offload.log"
        with Server(env, 1, args.port, log) as server:
            idle_stop = threading.Event()
            threading.Timer(3.0, idle_stop.set).start()
            idle = probe_health(server.url, idle_stop)
            run_wrk(server.url, paths, 2)  # warm-up
            health, res = health_during(server.url, lambda url: wrk_few(url, paths, args.duration, 4))
        print(f"{label}: recommend {res['rps']:.0f} req/s p50 {res['p50_us'] / 1000:.1f} ms; health p50 "
              f"{pct(health, 50):.1f} p99 {pct(health, 99):.1f} max {max(health):.1f} ms", flush=True)  # fmt: skip
        rows.append([label, f"{statistics.median(idle):.2f}", f"{pct(health, 50):.2f}", f"{pct(health, 99):.2f}",
                     f"{max(health):.1f}", len(health), f"{res['rps']:.1f}", f"{res['p50_us'] / 1000:.1f}",
                     f"{res['p99_us'] / 1000:.1f}", res["non_2xx"] + res["socket_errors"]])  # fmt: skip
    title = (f"`/health` while 4 `GET /recommend` requests are always in flight (wrk -t1 -c4, {args.duration} s): "
             f"{args.items:,} items x 64, exact NumPy scoring, 1 uvicorn worker, result cache off")  # fmt: skip
    headers = ["scoring", "health idle p50 ms", "health p50 ms", "health p99 ms", "health max ms", "probes",
               "recommend req/s", "recommend p50 ms", "recommend p99 ms", "errors"]  # fmt: skip
    return (table(title, headers, rows) + f"\nCommand: `.venv/bin/python bench/bench_offload.py health --items "
            f"{args.items}`. Machine: {machine_note()}.\n")  # fmt: skip


def bench_hop(args: argparse.Namespace) -> str:
    from tastebud.config import build_settings
    from tastebud.registry import ModelRegistry, load_bundle

    registry = ModelRegistry(build_settings(home=args.home))
    mv = registry.resolve(args.model_name, "champion")
    bundle = load_bundle(registry.bundle_path(mv))
    users = [str(u) for u in bundle.model.users_.ids.tolist()]
    del bundle
    paths = [f"/recommend/{u}" for u in users]
    runs: dict[str, list[dict[str, Any]]] = {"inline (default)": [], "thread (offload_ms=0)": []}
    log = Path(tempfile.gettempdir()) / "tastebud-bench-offload-hop.log"
    for rep in range(args.repeats):
        for label in runs:
            env = {"TASTEBUD_HOME": str(args.home), "TASTEBUD_SERVING__MODEL_NAME": args.model_name,
                   "TASTEBUD_SERVING__WATCH_INTERVAL_S": "0", "TASTEBUD_SERVING__RESULT_CACHE_SIZE": "0"}  # fmt: skip
            if label.startswith("thread"):
                env["TASTEBUD_SERVING__OFFLOAD_MS"] = "0"
            with Server(env, 1, args.port, log) as server:
                run_wrk(server.url, paths, 2)
                res = run_wrk(server.url, paths, args.duration, seed=rep + 1)
            runs[label].append(res)
            print(f"{label} #{rep + 1}: {res['rps']:.0f} req/s p50 {res['p50_us'] / 1000:.2f} ms "
                  f"p99 {res['p99_us'] / 1000:.2f} ms", flush=True)  # fmt: skip
    rows = []
    for label, rs in runs.items():
        rows.append(
            [
                label,
                f"{statistics.median(r['rps'] for r in rs):,.0f}",
                f"{statistics.median(r['p50_us'] for r in rs) / 1000:.2f}",
                f"{statistics.median(r['p99_us'] for r in rs) / 1000:.2f}",
                ", ".join(f"{r['rps']:,.0f}" for r in rs),
                sum(r["non_2xx"] + r["socket_errors"] for r in rs),
            ]
        )
    title = (
        f"The thread hop on a cheap model: {args.model_name} v{mv.version} champion, `GET /recommend/{{user}}`, "
        f"result cache off, 1 worker, wrk -t2 -c32, {args.repeats} alternating {args.duration} s runs (medians)"
    )
    headers = ["scoring", "req/s", "p50 ms", "p99 ms", "req/s per run", "errors"]
    return (table(title, headers, rows) + f"\nCommand: `.venv/bin/python bench/bench_offload.py hop --home "
            f"{args.home}`. Machine: {machine_note()}.\n")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=("health", "hop"))
    parser.add_argument("--dir", type=Path, default=Path("/tmp/tastebud-offload"), help="cache of the large bundle")
    parser.add_argument("--items", type=int, default=300_000)
    parser.add_argument("--home", type=Path, default=Path("/tmp/tbsoak/home"), help="home with an ML-100K champion")
    parser.add_argument("--model-name", default="movielens-100k")
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--port", type=int, default=8771)
    parser.add_argument("--record", action="store_true", help="append the table to bench/RESULTS.md")
    args = parser.parse_args()
    text = bench_health(args) if args.part == "health" else bench_hop(args)
    print(text)
    if args.record:
        append_results(text)


if __name__ == "__main__":
    main()
