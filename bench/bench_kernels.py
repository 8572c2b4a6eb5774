"""EASE's serving batch: the compiled loop (``history_top_k``) against the NumPy and scipy steps it replaced.

Before 2026-12-04, ``EASERecommender.recommend_rows`` scored a batch with scipy's CSR x dense product of the users'
rows, ranked the score matrix with ``rank_rows`` and explained the lists with one gather of the contributions and
``top_contributors_stacked``. Those steps are rebuilt here from the same library functions; the model's
``recommend_rows`` now runs ``tastebud.models._kernels.history_top_k``. Both score the same users of the served
champion in batches, rounds alternating; reported: the median time per user of the rounds and how many lists
(items, scores or explanations) differ. One BLAS thread, as the servers run.

    .venv/bin/python bench/bench_kernels.py --home /tmp/tbhome
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from _common import machine_note, table
from tastebud.models import _scoring as sc


def numpy_rows(model: object, us: list[int], k: int) -> list[tuple[np.ndarray, np.ndarray, list[list[int]]]]:
    """The replaced batch path: scipy's product, ``rank_rows``, the gathered contributions ranked together."""
    seen, w = model.seen_, model.weights_  # type: ignore[attr-defined]
    spans = [(int(seen.indptr[u]), int(seen.indptr[u + 1])) for u in us]
    lengths = np.fromiter((hi - lo for lo, hi in spans), dtype=np.int64, count=len(spans))
    indptr = np.zeros(len(spans) + 1, dtype=np.int64)
    np.cumsum(lengths, out=indptr[1:])
    cols = np.concatenate([seen.indices[lo:hi] for lo, hi in spans])
    values = np.concatenate([seen.data[lo:hi] for lo, hi in spans])
    part = sp.csr_matrix((values, cols, indptr), shape=(len(us), seen.shape[1]))
    scores = np.asarray(part @ w)
    hists = [seen.indices[lo:hi] for lo, hi in spans]
    ranked = sc.rank_rows(scores, [k] * len(us), hists)
    recs = [r[0] for r in ranked]
    widths = [len(r) for r in recs]
    targets = np.zeros((len(recs), max(widths, default=0)), dtype=np.int64)
    for b, rec in enumerate(recs):
        targets[b, : len(rec)] = rec
    flat = cols.astype(np.int64)[None, :] * w.shape[1] + np.repeat(targets.T, lengths, axis=1)
    work = w.reshape(-1).take(flat).astype(np.float64) * values[None, :]
    padded = np.arange(targets.shape[1])[:, None] >= np.repeat(np.asarray(widths, dtype=np.int64), lengths)[None, :]
    work[padded] = -np.inf
    because = sc.top_contributors_stacked(work, list(lengths), widths, hists)
    return [(i, s, b) for (i, s), b in zip(ranked, because, strict=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, default=Path(os.environ.get("TASTEBUD_HOME", "/tmp/tbhome")))
    parser.add_argument("--model-name", default="movielens-100k")
    parser.add_argument("--users", type=int, default=3200)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=6)
    args = parser.parse_args()

    from tastebud.config import build_settings
    from tastebud.registry import ModelRegistry, load_bundle

    registry = ModelRegistry(build_settings(home=args.home))
    model = load_bundle(registry.bundle_path(registry.resolve(args.model_name, "champion"))).model
    if not hasattr(model, "weights_"):
        raise SystemExit(f"{args.model_name}'s champion is {model.name}, not a history-scored model such as EASE")
    rows = np.random.default_rng(0).integers(0, len(model.users_), args.users)
    batches = [rows[s : s + args.batch].tolist() for s in range(0, len(rows), args.batch)]
    differ = 0
    for us in batches:
        for new, old in zip(model.recommend_rows(us, 10, explain=True), numpy_rows(model, us, 10), strict=True):
            same = np.array_equal(new.items, old[0]) and np.array_equal(new.scores, old[1]) and new.because == old[2]
            differ += not same
    variants = {
        "NumPy and scipy steps (before)": lambda us: numpy_rows(model, us, 10),
        "compiled loop (now)": lambda us: model.recommend_rows(us, 10, explain=True),
    }
    per_user: dict[str, list[float]] = {name: [] for name in variants}
    with threadpool_limits(1):
        for _ in range(args.repeats):
            for name, run in variants.items():
                started = time.process_time()
                for us in batches:
                    run(us)
                per_user[name].append((time.process_time() - started) / len(rows) * 1e6)
    out = [[name, f"{statistics.median(v):.1f}", ", ".join(f"{x:.0f}" for x in v)] for name, v in per_user.items()]
    title = (f"{model.name.upper()} ({args.model_name} champion, {len(model.items_):,} items): top 10, explained, "
             f"of {len(rows):,} users in batches of {args.batch}, {args.repeats} alternating rounds; lists differing "
             f"between the two (items, scores or explanations): {differ}")  # fmt: skip
    print(table(title, ["batch path", "CPU us per user (median)", "rounds"], out))
    print(f"\nCommand: `.venv/bin/python bench/bench_kernels.py --home {args.home}`. {machine_note()}")


if __name__ == "__main__":
    main()
