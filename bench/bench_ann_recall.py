"""HNSW against exact scoring on a synthetic catalogue: recall@10 (seen items left out) and CPU per query.

Whether an approximate index could take the exact product's place on the synthetic catalogues of
``bench_serving.py`` (``zipf``: 1,000,000 users x 100,000 items; ``scale --sizes 25m``: 160,000 x 60,000). The index
is FAISS's ``IndexHNSWFlat`` with inner product, as ``tastebud.models.ann.FaissIndex`` builds it (M 32,
efConstruction 200); each query asks for ``10 + seen`` neighbours, as the serving path over-fetches, and keeps the
first 10 unseen. One thread for the searches (as the servers run); CPU time per query, median of the passes.

    .venv/bin/python bench/bench_ann_recall.py --npz bench/out/serving/als-1000000x100000x15000000-s0.npz
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import faiss
import numpy as np
from threadpoolctl import threadpool_limits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--npz", type=Path, required=True, help="synthetic model arrays from bench_serving.py")
    parser.add_argument("--ef-search", type=int, nargs="+", default=[32, 64, 128, 256])
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    z = np.load(args.npz)
    x, y = z["user_factors"], np.ascontiguousarray(z["item_factors"])
    indptr, indices = z["indptr"], z["indices"]
    started = time.perf_counter()
    index = faiss.IndexHNSWFlat(y.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = 200
    index.add(y)
    built = time.perf_counter() - started
    faiss.omp_set_num_threads(1)
    users = np.random.default_rng(0).choice(len(x), args.queries, replace=False)
    yt = np.ascontiguousarray(y.T)
    exact = []
    for u in users.tolist():
        scores = x[u] @ yt
        scores[indices[indptr[u] : indptr[u + 1]]] = -np.inf
        exact.append(set(np.argpartition(-scores, 10)[:10].tolist()))
    print(f"{args.npz.name}: {len(x):,} users x {len(y):,} items; HNSW built in {built:.1f} s")
    print("| efSearch | recall@10 | CPU us per query |")
    print("|---|---|---|")
    for ef in args.ef_search:
        params = faiss.SearchParametersHNSW()
        params.efSearch = ef
        times, recalls = [], []
        for _ in range(args.repeats):
            recalls = []
            t0 = time.thread_time()
            for u, truth in zip(users.tolist(), exact, strict=True):
                seen = indices[indptr[u] : indptr[u + 1]]
                _, found = index.search(x[u : u + 1], 10 + len(seen), params=params)
                unseen = set(seen.tolist())
                got = [i for i in found[0].tolist() if i >= 0 and i not in unseen][:10]
                recalls.append(len(truth.intersection(got)) / 10)
            times.append((time.thread_time() - t0) / len(users) * 1e6)
        print(f"| {ef} | {np.mean(recalls):.4f} | {statistics.median(times):.0f} |")
    t0 = time.thread_time()
    for start in range(0, len(users), 16):
        x[users[start : start + 16]] @ yt
    print(f"exact product, batches of 16: {(time.thread_time() - t0) / len(users) * 1e6:.0f} us per user")


if __name__ == "__main__":
    with threadpool_limits(1):  # NumPy's BLAS on one thread, as the servers run
        main()
