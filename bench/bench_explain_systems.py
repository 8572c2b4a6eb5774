"""ALS explanations of scoring batches: the users' systems formed from float32 factors against float64, in process.

``ALSRecommender._explain_rows`` forms ``Y_uᵀ(C_u − I)Y_u`` for each user without a cached inverse from the gathered
item factors, then adds ``YᵀY + λI`` and solves the batch's systems together in float64. The model keeps its factors
in float32, so the systems are formed in float32; before 2026-12-04 the gathered factors were cast to float64 first.
The baseline here is the same model and code with float64 item factors (the formation, the gathers and the products
in float64, as before). Both explain the same users' top 10 in batches, rounds alternating; reported: the median CPU
time per user of the rounds, and how many explanation lists differ. One BLAS thread, as the servers run.

    .venv/bin/python bench/bench_explain_systems.py --size 25m
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
from threadpoolctl import threadpool_limits

import bench_serving
from _common import machine_note, median_rows, table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(bench_serving.SCALES), default="25m")
    parser.add_argument("--users", type=int, default=3200)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=6)
    args = parser.parse_args()

    model, _, users = bench_serving.synth_engine(args.size, args.users)
    wide = copy.copy(model)  # the same caches and seen matrix; only the item factors differ
    wide.item_factors_ = model.item_factors_.astype(np.float64)
    rows = np.asarray([model.users_.lookup[u] for u in users])
    batches = []
    for start in range(0, len(rows), args.batch):
        us = rows[start : start + args.batch]
        batches.append((us.tolist(), [r.items for r in model.recommend_rows(us, 10)]))
    variants = {"float64 systems (before)": wide, "float32 systems (now)": model}
    per_user: dict[str, list[float]] = {name: [] for name in variants}
    with threadpool_limits(1):
        for _ in range(args.repeats):
            for name, m in variants.items():
                started = time.process_time()
                for us, recs in batches:
                    m._explain_rows(us, recs)
                per_user[name].append((time.process_time() - started) / len(rows) * 1e6)
    differ = sum(
        a != b
        for us, recs in batches
        for a, b in zip(wide._explain_rows(us, recs), model._explain_rows(us, recs), strict=True)
    )
    rows_out = median_rows(per_user)
    title = (f"ALS explanations at {args.size} size, {len(rows):,} users in batches of {args.batch}, "
             f"{args.repeats} alternating rounds: explanation lists differing between the two: {differ}")  # fmt: skip
    print(table(title, ["systems", "CPU us per user (median)", "rounds"], rows_out))
    print(f"Command: `.venv/bin/python bench/bench_explain_systems.py --size {args.size}`. Machine: {machine_note()}.")


if __name__ == "__main__":
    main()
