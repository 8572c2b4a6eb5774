"""Per user, the product of a small scoring batch with the item factors, against each user's own product.

What ``GEMM_MIN_ROWS`` (``tastebud.models._factors``) rests on: a batch's ``X @ Yᵀ`` from the contiguous
transposed copy of ``Y`` that ``FactorRecommender.recommend_rows`` uses, against one matrix-vector product per user
as ``recommend_row`` does; one BLAS thread (as the servers run), random float32 factors, medians.

    .venv/bin/python bench/bench_small_batches.py --items 60000 100000 --batch-sizes 1 2 3 4 8
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial

import numpy as np
from threadpoolctl import threadpool_limits


def per_user_ms(call: Callable[[], object], users: int, repeats: int) -> float:
    call()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3 / users


def one_by_one(y: np.ndarray, x: np.ndarray) -> list[np.ndarray]:
    """Each user's scores by its own matrix-vector product, as ``recommend_row`` computes them."""
    return [y @ u for u in x]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, nargs="+", default=[60_000, 100_000])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 3, 4, 8])
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=40)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print("| items | users in the batch | one product, ms per user | a product per user, ms per user |")
    print("|---|---|---|---|")
    with threadpool_limits(1, "blas"):
        for n in args.items:
            y = rng.standard_normal((n, args.dim), dtype=np.float32)
            y_t = np.ascontiguousarray(y.T)
            for b in args.batch_sizes:
                x = rng.standard_normal((b, args.dim), dtype=np.float32)
                batch = per_user_ms(partial(np.matmul, x, y_t), b, args.repeats)
                each = per_user_ms(partial(one_by_one, y, x), b, args.repeats)
                print(f"| {n:,} | {b} | {batch:.3f} | {each:.3f} |")


if __name__ == "__main__":
    main()
