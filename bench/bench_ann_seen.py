"""HNSW serving of users with long histories: seen items left out inside the search against over-fetching.

A served model with an HNSW index (``use_ann``) must not return the user's seen items. It used to ask the index
for ``k + len(seen)`` results and drop the seen ones, which raises HNSW's candidate list to that count: the work of
a request grew with the user's history. ``FaissIndex.search(..., exclude=...)`` now leaves them out inside the search
(a FAISS ID selector) and asks for ``k``. Both are run here through ``tastebud.models.ann.FaissIndex`` on a synthetic
catalogue of ``bench_serving.py`` (by default the ML-25M-sized one: 160,000 users x 60,000 items, log-normal history
lengths), forced onto HNSW, for users drawn from each band of history length; reported per band and method: CPU per
query (median, p99, max; one thread, as the servers run) and recall@10 against exact scoring.

    .venv/bin/python bench/bench_ann_seen.py
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import faiss
import numpy as np
from threadpoolctl import threadpool_limits

import bench_serving
from _common import machine_note, table
from tastebud.models.ann import FaissIndex

BANDS = [(0, 100), (100, 500), (500, 2000), (2000, 10**9)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--npz", type=Path, default=None, help="synthetic model arrays (default: the 25m size)")
    parser.add_argument("--per-band", type=int, default=100, help="users drawn from each band of history length")
    parser.add_argument("--ef-search", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    path = args.npz or bench_serving.synth_model_file(*bench_serving.SCALES["25m"])
    z = np.load(path)
    x, y = z["user_factors"], np.ascontiguousarray(z["item_factors"])
    indptr, indices = z["indptr"], z["indices"]
    started = time.perf_counter()
    index = FaissIndex(hnsw_threshold=1, ef_search=args.ef_search).build(y)
    built = time.perf_counter() - started
    faiss.omp_set_num_threads(1)
    lengths = np.diff(indptr)
    rng = np.random.default_rng(0)
    yt = np.ascontiguousarray(y.T)
    rows = []
    for lo, hi in BANDS:
        pool = np.flatnonzero((lengths >= lo) & (lengths < hi))
        if not len(pool):
            continue
        users = rng.choice(pool, min(args.per_band, len(pool)), replace=False).tolist()
        truth = []
        for u in users:
            scores = x[u] @ yt
            scores[indices[indptr[u] : indptr[u + 1]]] = -np.inf
            truth.append(set(np.argpartition(-scores, 10)[:10].tolist()))
        for method in ("over-fetch k + seen, drop seen (before)", "seen left out inside the search (now)"):
            per_query: list[list[float]] = [[] for _ in users]
            recalls = []
            for _ in range(args.repeats):
                recalls = []
                for j, u in enumerate(users):
                    seen = indices[indptr[u] : indptr[u + 1]]
                    t0 = time.thread_time()
                    if method.startswith("over"):
                        ids, _ = index.search(x[u : u + 1], 10 + len(seen))
                        got = ids[0][(ids[0] >= 0) & ~np.isin(ids[0], seen)][:10]
                    else:
                        ids, _ = index.search(x[u : u + 1], 10, exclude=[seen])
                        got = ids[0][ids[0] >= 0]
                    per_query[j].append(time.thread_time() - t0)
                    recalls.append(len(truth[j].intersection(got.tolist())) / 10)
            us = np.array([min(t) for t in per_query]) * 1e6  # each query's fastest repeat: its cost, not the noise
            band = f"{lo:,}-{hi - 1:,}" if hi < 10**9 else f">= {lo:,}"
            rows.append([band, f"{int(np.median(lengths[users])):,}", len(users), method,
                         f"{np.median(us):,.0f}", f"{np.percentile(us, 99):,.0f}", f"{us.max():,.0f}",
                         f"{np.mean(recalls):.3f}"])  # fmt: skip
    title = (f"{path.name}: {len(x):,} users x {len(y):,} items, HNSW (M 32, efConstruction 200, efSearch "
             f"{args.ef_search}) built in {built:.0f} s; CPU us per query, one thread")  # fmt: skip
    headers = ["seen items", "median seen", "users", "method", "p50 us", "p99 us", "max us", "recall@10"]
    print(table(title, headers, rows))
    print(f"\nCommand: `.venv/bin/python bench/bench_ann_seen.py`. {machine_note()}")


if __name__ == "__main__":
    with threadpool_limits(1):
        main()
