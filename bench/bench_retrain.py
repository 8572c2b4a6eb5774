"""Benchmark of one `run_retrain`: ML-100K-shaped synthetic data plus 10,000 stored events, fit time vs the rest.

The world: a synthetic dataset of ML-100K's shape (943 users, 1,682 items, 100,000 ratings) plus 40 brand-new
users and 20 brand-new items; its older interactions of the old users and items are the champion's data (a CSV),
the newest interactions and every interaction of the new users and items are 10,000 rating events in the store.
The champion (``--model``, default parameters) is trained from the CSV and promoted; then one retrain runs
in-process (MLflow already imported) and its steps are timed. ``--cli`` also times ``tastebud retrain run`` in a
fresh process (the import of MLflow included) on a second batch of events.

    .venv/bin/python bench/bench_retrain.py --home /tmp/tb-retrain --model als
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

from tastebud.config import build_settings
from tastebud.data.synthetic import generate_synthetic
from tastebud.pipeline.promote import promote
from tastebud.pipeline.retrain import run_retrain
from tastebud.pipeline.train import train
from tastebud.registry import ModelRegistry
from tastebud.store import create_store

USERS, ITEMS, RATINGS, EVENTS = 943, 1682, 100_000, 10_000
NEW_USERS, NEW_ITEMS = 40, 20


def world(seed: int = 7) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(champion data, events oldest first) with exactly :data:`EVENTS` events."""
    frame = generate_synthetic(USERS + NEW_USERS, ITEMS + NEW_ITEMS, RATINGS + EVENTS, seed=seed).to_frame()
    new = pl.col("user_id").is_in([str(u) for u in range(1, NEW_USERS + 1)]) | pl.col("item_id").is_in(
        [str(i) for i in range(1, NEW_ITEMS + 1)]
    )
    forced = frame.filter(new).height
    assert forced < EVENTS, f"the new users and items alone make {forced} events"
    rest = frame.filter(~new).sort("timestamp")
    cut = rest.height - (EVENTS - forced)
    events = pl.concat([frame.filter(new), rest.slice(cut)]).sort("timestamp")
    return rest.slice(0, cut), events


def store_events(settings: object, events: pl.DataFrame, prefix: str) -> None:
    store = create_store(settings)  # type: ignore[arg-type]
    store.init_schema()
    store.write_events(
        [
            {"event_id": f"{prefix}{n}", "user_id": r["user_id"], "item_id": r["item_id"], "kind": "rating",
             "rating": r["rating"], "value": r["rating"], "timestamp": r["timestamp"]}
            for n, r in enumerate(events.iter_rows(named=True))
        ]
    )  # fmt: skip
    store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, required=True, help="A scratch home (emptied first).")
    parser.add_argument("--model", default="als", help="Champion family (default parameters).")
    parser.add_argument("--warm-start", action="store_true", help="Retrain with fit_warm where the family has it.")
    parser.add_argument("--cli", action="store_true", help="Also time `tastebud retrain run` in a fresh process.")
    args = parser.parse_args()
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    shutil.rmtree(args.home, ignore_errors=True)
    args.home.mkdir(parents=True)
    settings = build_settings(home=args.home)
    parent, events = world()
    csv = args.home / "champion.csv"
    parent.select("user_id", "item_id", "rating", "timestamp").write_csv(csv)
    name = f"bench-{args.model}"
    result = train(str(csv), args.model, {}, settings=settings, fmt="csv", name=name)
    assert result.version is not None
    promote(ModelRegistry(settings), name, result.version.version, settings=settings)
    first, second = events.head(EVENTS // 2 if args.cli else EVENTS), events.tail(EVENTS - EVENTS // 2)
    store_events(settings, first if args.cli else events, "a")
    print(f"champion data {parent.height:,} interactions; events {events.height:,}; model {args.model}")

    out = run_retrain(settings, model_name=name, warm_start=args.warm_start)
    print(f"in-process: {out.outcome} v{out.version} ({out.reason[:90]})")
    print(f"  total {out.duration_s:.2f} s = fit {out.fit_s:.2f} s + other {out.duration_s - (out.fit_s or 0):.2f} s")
    print("  steps: " + ", ".join(f"{k.removesuffix('_s')} {v:.2f}" for k, v in out.timings.items()))
    holdout = out.gate["holdout"]
    print(f"  merged {out.n_interactions:,} interactions, {out.n_new_events:,} new events; holdout "
          f"{holdout['interactions']:,} interactions of {holdout['users']:,} users")  # fmt: skip
    if args.cli:
        store_events(settings, second, "b")
        t0 = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "tastebud.cli", "--home", str(args.home), "retrain", "run", "-n", name],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        print(f"cli (fresh process): exit {done.returncode}, {time.perf_counter() - t0:.2f} s wall")
        print("\n".join("  " + line for line in done.stdout.splitlines()[-3:]))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
