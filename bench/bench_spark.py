"""Benchmark of the Spark engine of ALS against the implicit engine: fit time, peak memory and NDCG@10.

For each data size, each engine fits ALS (64 factors, 15 iterations, alpha 10, regularization 50; the Spark
engine's ``regParam`` mapped from it, see ``tastebud.models.spark_als``) in a fresh child process:

- ``implicit``: ``ALSRecommender.fit`` in process, 2 solver threads (one BLAS thread, as training runs it);
- ``spark``: ``ALSRecommender(engine="spark").fit`` on ``local[2]`` (driver memory ``--driver-memory``), the
  session started before the timer (its start-up is reported on its own).

Sizes: ``ml-100k`` (the real MovieLens-100K from the home's cache, fitted on the per-user random 80% of seed 42,
NDCG@10 on the other 20%), and synthetic sets of the project's generator (``synth-1m``: 50K users x 10K items x
1M ratings; ``synth-10m``: 300K users x 40K items x 10M; fitted on all of them). Memory is the peak resident
size during the fit: the child resets its high-water mark (``/proc/self/clear_refs``) after loading the data and
reads ``VmHWM`` after the fit; for Spark the JVM's own ``VmHWM`` (reset after the session started) is added.
Runs alternate between the engines; medians are reported with the ratio spark / implicit.

    .venv/bin/python bench/bench_spark.py --home .tastebud-test --sizes ml-100k,synth-1m --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common as common

#: name -> (users, items, interactions) of the synthetic sizes.
SYNTHETIC = {"synth-1m": (50_000, 10_000, 1_000_000), "synth-10m": (300_000, 40_000, 10_000_000)}
PARAMS = {"factors": 64, "iterations": 15, "alpha": 10.0, "regularization": 50.0}


def _descendants(pid: int) -> list[int]:
    """Process ids below ``pid`` (from ``/proc``)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _status_kib(pid: int | str, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def _reset_peak(pid: int | str) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def child(engine: str, size: str, home: Path, data: Path | None, driver_memory: str) -> dict[str, Any]:
    """One fit in this process; returns its figures as a dict."""
    from tastebud.config import SparkSettings, build_settings
    from tastebud.data.dataset import Dataset
    from tastebud.models import create, spark_als

    split = None
    if size == "ml-100k":
        from tastebud.data.readers import read_dataset
        from tastebud.data.split import make_split

        split = make_split(
            read_dataset("ml-100k", settings=build_settings(home=home)), "random", test_fraction=0.2, seed=42
        )
        train = split.train
    else:
        import polars as pl

        assert data is not None
        train = Dataset.from_frame(pl.read_parquet(data), name=size)
    out: dict[str, Any] = {"engine": engine, "size": size, "interactions": int(train.n_interactions)}
    params = dict(PARAMS)
    jvm: list[int] = []
    if engine == "spark":
        spark_als.configure(
            SparkSettings(master="local[2]", driver_memory=driver_memory, conf={"spark.ui.enabled": "false"})
        )
        t0 = time.perf_counter()
        spark_als.session()
        out["session_s"] = time.perf_counter() - t0
        jvm = [p for p in _descendants(os.getpid()) if "java" in Path(f"/proc/{p}/cmdline").read_bytes().decode()]
        for pid in jvm:
            _reset_peak(pid)
        params["engine"] = "spark"
    else:
        params["num_threads"] = 2
    _reset_peak("self")
    rss_before = _status_kib("self", "VmRSS")
    t0 = time.perf_counter()
    model = create("als", **params).fit(train)
    out["fit_s"] = time.perf_counter() - t0
    out["python_peak_mib"] = _status_kib("self", "VmHWM") / 1024
    out["python_before_mib"] = rss_before / 1024
    out["jvm_peak_mib"] = sum(_status_kib(p, "VmHWM") for p in jvm) / 1024
    out["peak_mib"] = out["python_peak_mib"] + out["jvm_peak_mib"]
    if split is not None:
        from tastebud.evaluation.protocol import evaluate

        out["ndcg"] = evaluate(model, split, k=10, n_boot=10).metric("ndcg")
    if engine == "spark":
        spark_als.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", type=Path, default=Path(".tastebud-test"), help="home holding ml-100k")
    parser.add_argument("--sizes", default="ml-100k,synth-1m", help="comma-separated: ml-100k, synth-1m, synth-10m")
    parser.add_argument("--runs", type=int, default=3, help="alternating runs per engine and size")
    parser.add_argument("--driver-memory", default="4g", help="spark.driver.memory of local[2]")
    parser.add_argument("--child", nargs=2, metavar=("ENGINE", "SIZE"), help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.home, args.data, args.driver_memory)))
        return

    from tastebud.data.synthetic import synthetic_frames

    loads = [common.load_average()]
    rows, raw = [], []
    with tempfile.TemporaryDirectory(prefix="bench-spark-") as tmp:
        for size in args.sizes.split(","):
            data = None
            if size in SYNTHETIC:
                data = Path(tmp) / f"{size}.parquet"
                frame, _ = synthetic_frames(*SYNTHETIC[size], seed=1)
                frame.write_parquet(data)
                del frame
            runs: dict[str, list[dict[str, Any]]] = {"implicit": [], "spark": []}
            for _ in range(args.runs):
                for engine in runs:
                    argv = [sys.executable, __file__, "--child", engine, size, "--home", str(args.home)]
                    argv += ["--driver-memory", args.driver_memory] + (["--data", str(data)] if data else [])
                    out, _ = common.run_child(argv)
                    result = json.loads(out.strip().splitlines()[-1])
                    print(json.dumps(result), flush=True)
                    runs[engine].append(result)
                    raw.append(result)
                    loads.append(common.load_average())
            med = {e: {k: common.median([r[k] for r in rs]) for k in ("fit_s", "peak_mib")} for e, rs in runs.items()}
            ndcg = {e: common.median([r["ndcg"] for r in rs]) if "ndcg" in rs[0] else None for e, rs in runs.items()}
            n = runs["implicit"][0]["interactions"]
            rows.append(
                [
                    size,
                    f"{n:,}",
                    med["implicit"]["fit_s"],
                    med["spark"]["fit_s"],
                    med["spark"]["fit_s"] / med["implicit"]["fit_s"],
                    common.median([r["session_s"] for r in runs["spark"]]),
                    med["implicit"]["peak_mib"],
                    med["spark"]["peak_mib"],
                    "-" if ndcg["implicit"] is None else f"{ndcg['implicit']:.4f}",
                    "-" if ndcg["spark"] is None else f"{ndcg['spark']:.4f}",
                ]
            )
    headers = [
        "data",
        "interactions (fitted)",
        "implicit fit s",
        "spark local[2] fit s",
        "spark / implicit",
        "spark session start s",
        "implicit peak MiB",
        "spark peak MiB (python + JVM)",
        "implicit NDCG@10",
        "spark NDCG@10",
    ]
    text = common.table(f"ALS: implicit (2 threads) vs Spark local[2], medians of {args.runs} runs", headers, rows)
    note = f"\n{common.machine_note()}; load average during the runs: min {min(loads):.2f}, max {max(loads):.2f}.\n"
    print(text + note)


if __name__ == "__main__":
    main()
