"""Benchmark of the models: ALS speed against ``implicit`` itself, fidelity, evaluation speed, Last.fm scale.

Sections (each printed as a Markdown table; ``--record`` appends them to ``bench/RESULTS.md`` in one write):

1. **ALS speed** on ML-100K (64 factors, 15 iterations): our ``als`` ``fit`` (matrix building included) against
   ``implicit.cpu.als.AlternatingLeastSquares.fit`` on the prebuilt value matrix, called exactly as
   ``tastebud.models.als`` calls it (same alpha convention, float32, one BLAS thread, same solver threads).
   Runs alternate, after one warm-up each; medians and their ratio.
2. **Fidelity** on the per-user random 80/20 split of ML-100K (seed 42): NDCG@10 of our ``als`` against a
   minimal wrapper of raw ``implicit`` (same parameters and seed), and of our ``ease`` against a closed-form
   EASE written here in numpy; then every registered model with its defaults.
3. **Evaluation speed**: ``evaluate`` of all users at K=10, minus the time spent in the model's scoring.
4. **Last.fm scale** (``--lastfm``): a synthetic implicit matrix of 358K users, 126K items and 17.5M
   interactions; ALS with 125 factors and 25 iterations, raw ``implicit`` on a prebuilt CSR against ours from
   the interaction frame (``Dataset.from_frame`` + ``fit``), each in a fresh process with its peak RSS.

    .venv/bin/python bench/bench_models.py --home /tmp/tbhome            # sections 1-3
    .venv/bin/python bench/bench_models.py --home /tmp/tbhome --lastfm   # and section 4 (minutes)
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np
import polars as pl
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

import _common as common
from tastebud.config import Settings, build_settings
from tastebud.data.dataset import Dataset
from tastebud.data.fetch import fetch_dataset, is_fetched
from tastebud.data.readers import read_dataset
from tastebud.data.split import Split, make_split
from tastebud.evaluation.protocol import Report, evaluate
from tastebud.models import MODELS, create
from tastebud.models.base import ModelConfig, Recommendations, Recommender, top_k

#: Largest NDCG@10 difference accepted between our model and its reference implementation.
FIDELITY_TOLERANCE = 0.005
#: Largest accepted ratio of our ALS time to raw ``implicit``'s.
SPEED_TARGET = 1.15
#: Largest accepted evaluation overhead (evaluate minus model scoring), seconds.
EVAL_TARGET = 0.5
#: Shape of the Last.fm-360K-like synthetic matrix.
LASTFM_USERS, LASTFM_ITEMS, LASTFM_INTERACTIONS = 358_000, 126_000, 17_500_000


# ---------------------------------------------------------------------- reference implementations
class _RefConfig(ModelConfig):
    """Parameters of the reference models (only what they use)."""

    factors: int = 64
    regularization: float = 50.0
    alpha: float = 10.0
    iterations: int = 15
    random_state: int = 42
    num_threads: int = 0
    l2: float = 500.0


class _DenseReference(Recommender):
    """A minimal recommender over dense scores, independent of ``tastebud.models``' scoring helpers."""

    name = "reference"
    config_class = _RefConfig
    config: _RefConfig

    def fit(self, dataset: Dataset) -> Self:
        """Build the value matrix with scipy directly and learn from it; returns self."""
        inter = dataset.interactions
        self.seen_ = sp.csr_matrix(
            (
                inter["value"].to_numpy().astype(np.float32),
                (inter["user_idx"].to_numpy(), inter["item_idx"].to_numpy()),
            ),
            shape=dataset.shape,
        )
        self.users_, self.items_ = dataset.users, dataset.items
        self._learn(self.seen_)
        return self

    def _learn(self, matrix: sp.csr_matrix) -> None:
        """Learn from the user x item value matrix."""
        raise NotImplementedError

    def _scores(self, rows: np.ndarray) -> np.ndarray:
        """Dense scores of the users ``rows`` for every item."""
        raise NotImplementedError

    def recommend(
        self,
        user_ids: Sequence[str],
        k: int = 10,
        *,
        exclude_seen: bool = True,
        candidates: Sequence[str] | None = None,
        explain: bool = False,
    ) -> Recommendations:
        """Top-``k`` items per user by dense score, seen items masked (``candidates`` is ignored)."""
        assert self.users_ is not None and self.items_ is not None
        rows = self.users_.index(user_ids, kind="user")
        scores = np.asarray(self._scores(rows), dtype=np.float64)
        if exclude_seen:
            seen = self.seen_[rows].tocoo()
            scores[seen.row, seen.col] = -np.inf
        idx, vals = top_k(scores, k)
        ids = self.items_.ids
        keep = idx >= 0
        return Recommendations(
            list(user_ids),
            [[str(x) for x in ids[i[m]]] for i, m in zip(idx, keep, strict=True)],
            [v[m] for v, m in zip(vals, keep, strict=True)],
        )

    def similar_items(self, item_ids: Sequence[str], k: int = 10) -> Recommendations:
        raise NotImplementedError("reference models only recommend")

    def save(self, directory: Path) -> None:
        raise NotImplementedError("reference models are not saved")

    @classmethod
    def load(cls, directory: Path) -> Self:
        raise NotImplementedError("reference models are not saved")


class RawALS(_DenseReference):
    """``implicit``'s CPU ALS called directly on the value matrix, scored by the plain inner product."""

    name = "raw-implicit-als"

    def _learn(self, matrix: sp.csr_matrix) -> None:
        self.user_factors_, self.item_factors_ = fit_raw_als(matrix, self.config)

    def _scores(self, rows: np.ndarray) -> np.ndarray:
        return self.user_factors_[rows] @ self.item_factors_.T


class NumpyEASE(_DenseReference):
    """EASE in a few lines of numpy (Steck 2019): ``B = I - P / diag(P)``, ``P = (XᵀX + λI)⁻¹``."""

    name = "numpy-ease"

    def _learn(self, matrix: sp.csr_matrix) -> None:
        x = (matrix.toarray() > 0).astype(np.float64)
        gram = x.T @ x + self.config.l2 * np.eye(x.shape[1])
        p = np.linalg.inv(gram)
        b = p / (-np.diag(p))
        np.fill_diagonal(b, 0.0)
        self.x_, self.b_ = x, b

    def _scores(self, rows: np.ndarray) -> np.ndarray:
        return self.x_[rows] @ self.b_


def fit_raw_als(matrix: sp.csr_matrix, cfg: Any) -> tuple[np.ndarray, np.ndarray]:
    """Fit ``implicit``'s CPU ALS on a user x item value matrix as ``tastebud.models.als`` does."""
    from implicit.cpu.als import AlternatingLeastSquares

    with threadpool_limits(limits=1, user_api="blas"):
        model = AlternatingLeastSquares(
            factors=cfg.factors,
            regularization=cfg.regularization,
            alpha=cfg.alpha,
            iterations=cfg.iterations,
            use_cg=True,
            num_threads=cfg.num_threads,
            random_state=cfg.random_state,
        )
        model.fit(matrix, show_progress=False)
    return model.user_factors, model.item_factors


# ---------------------------------------------------------------------- data
def load_movielens(settings: Settings) -> Dataset:
    """ML-100K from the settings' home, fetched first when missing."""
    if not is_fetched("ml-100k", settings):
        fetch_dataset("ml-100k", settings, progress=False)
    return read_dataset("ml-100k", settings=settings)


def movielens_split(ds: Dataset) -> Split:
    """The per-user random 80/20 split with seed 42."""
    return make_split(ds, "random", test_fraction=0.2, seed=42)


# ---------------------------------------------------------------------- 1. ALS speed
def bench_als_speed(train: Dataset, repeats: int, threads: int) -> tuple[str, dict[str, Any]]:
    """Our ALS ``fit`` against raw ``implicit`` on the prebuilt matrix, alternating runs."""
    params = {"factors": 64, "iterations": 15, "num_threads": threads}
    cfg = create("als", **params).config
    matrix = train.matrix("value")
    fns = {
        "ours": lambda: create("als", **params).fit(train),
        "raw": lambda: fit_raw_als(matrix, cfg),
        "matrix": lambda: train.matrix("value"),
    }
    load_before = common.load_average()
    times = common.alternate(fns, repeats)
    load_after = common.load_average()
    med = {name: common.median(t) for name, t in times.items()}
    ratio = med["ours"] / med["raw"]
    rows = [
        ["ours: `create('als', factors=64, iterations=15).fit(train)`", med["ours"], _spread(times["ours"])],
        ["raw: `AlternatingLeastSquares(...).fit(value_csr)`", med["raw"], _spread(times["raw"])],
        ["of ours: `train.matrix('value')`", med["matrix"], _spread(times["matrix"])],
    ]
    text = common.table(
        f"ALS fit on ML-100K train ({train.n_interactions} interactions), median of {repeats} alternating runs",
        ["what", "median s", "min - max s"],
        rows,
    )
    verdict = "meets" if ratio <= SPEED_TARGET else "misses"
    text += (
        f"\nRatio ours / raw: **{ratio:.3f}** ({verdict} the target <= {SPEED_TARGET}). "
        f"Regularization {cfg.regularization}, alpha {cfg.alpha}, CG solver, num_threads={threads} "
        f"(0 = all cores), one BLAS thread. Load average {load_before:.2f} before, {load_after:.2f} after.\n"
    )
    return text, {"median": med, "ratio": ratio, "times": times}


def _spread(values: Sequence[float]) -> str:
    return f"{min(values):.4g} - {max(values):.4g}"


# ---------------------------------------------------------------------- 2. fidelity
def _ndcg(report: Report) -> float:
    return report.metric("ndcg")


def bench_fidelity(split: Split) -> tuple[str, dict[str, Any]]:
    """NDCG@10 of our ALS and EASE against their reference implementations."""
    pairs: list[tuple[str, Recommender, Recommender]] = [
        ("als (defaults, 64 factors)", create("als"), RawALS(**_als_ref_params(create("als")))),
    ]
    for l2 in (500.0, 300.0):
        pairs.append((f"ease l2={l2:g}", create("ease", l2=l2), NumpyEASE(l2=l2)))
    rows, results = [], {}
    for label, ours, ref in pairs:
        ours_report = evaluate(ours.fit(split.train), split, k=10)
        ref_report = evaluate(ref.fit(split.train), split, k=10)
        diff = abs(_ndcg(ours_report) - _ndcg(ref_report))
        ok = "yes" if diff <= FIDELITY_TOLERANCE else "**no**"
        rows.append([label, _ndcg(ours_report), _ndcg(ref_report), f"{diff:.2e}", ok])
        results[label] = {"ours": _ndcg(ours_report), "reference": _ndcg(ref_report), "diff": diff}
    text = common.table(
        "NDCG@10, ours against a reference implementation (ML-100K, random 80/20 per user, seed 42)",
        ["model", "ours", "reference", "abs. difference", f"<= {FIDELITY_TOLERANCE}"],
        rows,
    )
    text += (
        "\nReferences: `implicit.cpu.als.AlternatingLeastSquares` on the value matrix with the same parameters "
        "and seed, scored by `U @ V.T`; EASE as `inv(XᵀX + λI)` in float64 numpy. Both rank with plain numpy "
        "(seen items masked) and go through the same `evaluate`.\n"
    )
    return text, results


def _als_ref_params(model: Recommender) -> dict[str, Any]:
    cfg = model.config
    keys = ("factors", "regularization", "alpha", "iterations", "random_state", "num_threads")
    return {key: getattr(cfg, key) for key in keys}


def bench_all_models(split: Split) -> tuple[str, dict[str, Any]]:
    """Every registered model with its defaults: NDCG@10, Recall@10, coverage and fit time."""
    rows, results = [], {}
    for name in MODELS:
        model = create(name)
        t0 = time.perf_counter()
        model.fit(split.train)
        fit_s = time.perf_counter() - t0
        report = evaluate(model, split, k=10, rating_metrics=False)
        rows.append(
            [name, report.metric("ndcg"), report.metric("recall"), report.coverage, fit_s, report.score_seconds]
        )
        results[name] = {"ndcg": report.metric("ndcg"), "recall": report.metric("recall"), "fit_s": fit_s}
    text = common.table(
        f"Every model with its defaults (ML-100K, random 80/20 per user, seed 42, {split.test.n_interactions} "
        "held-out interactions, binary relevance)",
        ["model", "NDCG@10", "Recall@10", "coverage", "fit s", "scoring s"],
        rows,
    )
    return text, results


# ---------------------------------------------------------------------- 3. evaluation speed
def bench_eval_speed(split: Split, repeats: int) -> tuple[str, dict[str, Any]]:
    """``evaluate`` of every test user at K=10, minus the model's scoring time; median of ``repeats``."""
    model = create("als").fit(split.train)
    evaluate(model, split, k=10)  # warm-up: imports, cached id lookups
    reports = [evaluate(model, split, k=10) for _ in range(repeats)]
    overhead = [r.eval_seconds - r.score_seconds for r in reports]
    total = [r.eval_seconds for r in reports]
    score = [r.score_seconds for r in reports]
    med = common.median(overhead)
    rows = [
        ["evaluate, total", common.median(total), _spread(total)],
        ["of which model scoring (`recommend`)", common.median(score), _spread(score)],
        ["**evaluation alone** (total - scoring)", med, _spread(overhead)],
    ]
    text = common.table(
        f"`evaluate(als, split, k=10)` over {reports[0].n_users} users (all 7 ranking metrics, novelty, "
        f"popularity, 1000-resample bootstrap intervals), median of {repeats}",
        ["part", "median s", "min - max s"],
        rows,
    )
    verdict = "meets" if med < EVAL_TARGET else "misses"
    text += f"\nEvaluation alone: **{med:.3f} s** ({verdict} the target < {EVAL_TARGET} s).\n"
    return text, {"overhead": med, "n_users": reports[0].n_users}


# ---------------------------------------------------------------------- 4. Last.fm scale
_LASTFM_PARAMS = {"factors": 125, "iterations": 25}


def write_lastfm_frame(directory: Path, scale: float, seed: int = 0) -> dict[str, Any]:
    """Generate the Last.fm-like interactions (string ids, play counts) into ``directory/plays.parquet``."""
    from tastebud.data.synthetic import synthetic_frames

    n_users = max(100, round(LASTFM_USERS * scale))
    n_items = max(100, round(LASTFM_ITEMS * scale))
    n_inter = max(n_users, round(LASTFM_INTERACTIONS * scale))
    t0 = time.perf_counter()
    frame, _ = synthetic_frames(n_users, n_items, n_inter, kind="implicit", seed=seed)
    # Last.fm's ids are strings (sha1 user hashes, MusicBrainz ids): map strings, not small integers
    frame = frame.select(
        pl.format("user-{}", "user_id").alias("user_id"),
        pl.format("artist-{}", "item_id").alias("item_id"),
        "value",
    )
    frame.write_parquet(directory / "plays.parquet")
    # the raw run gets its CSR prebuilt from contiguous indices, the way implicit expects its input
    users = frame["user_id"].cast(pl.Categorical).to_physical().to_numpy()
    items = frame["item_id"].cast(pl.Categorical).to_physical().to_numpy()
    np.save(directory / "rows.npy", users.astype(np.int32), allow_pickle=False)
    np.save(directory / "cols.npy", items.astype(np.int32), allow_pickle=False)
    np.save(directory / "values.npy", frame["value"].to_numpy(), allow_pickle=False)
    stats = {
        "users": frame["user_id"].n_unique(),
        "items": frame["item_id"].n_unique(),
        "interactions": frame.height,
        "generate_s": time.perf_counter() - t0,
    }
    return stats


def lastfm_child(mode: str, directory: Path, threads: int) -> dict[str, Any]:
    """One timed Last.fm-scale ALS run in this process (``mode`` ``raw`` or ``ours``)."""
    if mode == "raw":
        rows = np.load(directory / "rows.npy")
        cols = np.load(directory / "cols.npy")
        values = np.load(directory / "values.npy")
        matrix = sp.csr_matrix((values, (rows, cols)), shape=(rows.max() + 1, cols.max() + 1))
        matrix.sort_indices()
        del rows, cols, values
        cfg = create("als", num_threads=threads, **_LASTFM_PARAMS).config
        t0, c0 = time.perf_counter(), time.process_time()
        fit_raw_als(matrix, cfg)
        return {
            "total_s": time.perf_counter() - t0,
            "cpu_s": time.process_time() - c0,
            "peak_rss_mib": common.peak_rss_mib(),
        }
    frame = pl.read_parquet(directory / "plays.parquet")
    t0, c0 = time.perf_counter(), time.process_time()
    ds = Dataset.from_frame(frame, name="lastfm-synthetic")
    t1 = time.perf_counter()
    create("als", num_threads=threads, **_LASTFM_PARAMS).fit(ds)
    t2, c2 = time.perf_counter(), time.process_time()
    ds.matrix("value")  # timed again on its own: the share of fit that is ours
    t3 = time.perf_counter()
    return {
        "from_frame_s": t1 - t0,
        "fit_s": t2 - t1,
        "matrix_s": t3 - t2,
        "total_s": t2 - t0,
        "cpu_s": c2 - c0,
        "peak_rss_mib": common.peak_rss_mib(),
    }


def bench_lastfm(
    scale: float, threads: int, quiet_load: float, runs: int, max_wait: float
) -> tuple[str, dict[str, Any]]:
    """Generate the synthetic Last.fm matrix, then run raw and ours in turns, each in a fresh process."""
    times: dict[str, list[dict[str, Any]]] = {"raw": [], "ours": []}
    loads: list[float] = []
    with tempfile.TemporaryDirectory(prefix="tastebud-bench-") as tmp:
        directory = Path(tmp)
        stats = write_lastfm_frame(directory, scale)
        print(f"generated {stats}", file=sys.stderr, flush=True)
        for run in range(runs):
            for mode in ("raw", "ours"):
                # the first wait may be long; later ones short, so a busy machine cannot stall the whole run
                loads.append(common.wait_for_quiet(quiet_load, max_wait=max_wait if not loads else 120.0))
                argv = [sys.executable, __file__, "--lastfm-child", mode, "--data", tmp, "--threads", str(threads)]
                out, _ = common.run_child(argv)
                times[mode].append(json.loads(out.strip().splitlines()[-1]))
                print(f"run {run} {mode}: {times[mode][-1]}", file=sys.stderr, flush=True)
    # the run with the median total stands for each side (with 1 or 2 runs: the faster one)
    results = {mode: sorted(rs, key=lambda r: r["total_s"])[(len(rs) - 1) // 2] for mode, rs in times.items()}
    raw, ours = results["raw"], results["ours"]
    ratio = ours["total_s"] / raw["total_s"]
    cpu_ratio = ours["cpu_s"] / raw["cpu_s"]
    rows = [
        [
            "raw: `AlternatingLeastSquares.fit(prebuilt csr)`",
            raw["total_s"],
            raw["cpu_s"],
            "-",
            "-",
            raw["peak_rss_mib"],
        ],
        [
            "ours: `Dataset.from_frame(frame)` + `create('als', ...).fit(ds)`",
            ours["total_s"],
            ours["cpu_s"],
            ours["from_frame_s"],
            ours["fit_s"],
            ours["peak_rss_mib"],
        ],
        ["of ours' fit: `ds.matrix('value')`", ours["matrix_s"], "-", "-", "-", "-"],
    ]
    text = common.table(
        f"ALS, 125 factors, 25 iterations, on {stats['users']} users x {stats['items']} items, "
        f"{stats['interactions']} interactions (synthetic, power-law popularity, string ids); "
        f"{runs} run(s) each, alternating",
        ["what", "total s", "CPU s (all threads)", "from_frame s", "fit s", "peak RSS MiB"],
        rows,
    )
    verdict = "meets" if ratio <= SPEED_TARGET else "misses"
    text += (
        f"\nRatio ours / raw: **{ratio:.3f}** ({verdict} the target <= {SPEED_TARGET}); of CPU time, "
        f"less sensitive to other jobs on shared cores: {cpu_ratio:.3f}. All totals, s: raw "
        f"{_list(times['raw'])}, ours {_list(times['ours'])}. Each run is a fresh process; the data is "
        "loaded before the timer starts; peak RSS is the child's own `VmHWM` (data included). Load "
        f"average at the start of each run: {', '.join(f'{x:.2f}' for x in loads)}. Generating the data "
        f"took {stats['generate_s']:.0f} s.\n"
    )
    return text, {"stats": stats, **results, "ratio": ratio, "runs": times}


def _list(runs: Sequence[dict[str, Any]]) -> str:
    return ", ".join(f"{r['total_s']:.1f}" for r in runs)


# ---------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark sections and print (and with ``--record`` append) their tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=None, help="Tastebud home (ML-100K is fetched there)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per contender")
    parser.add_argument("--threads", type=int, default=0, help="ALS threads (0 = every core)")
    parser.add_argument(
        "--only", nargs="+", choices=("speed", "fidelity", "models", "eval"), default=None, help="sections"
    )
    parser.add_argument("--lastfm", action="store_true", help="also run the Last.fm-scale ALS (minutes)")
    parser.add_argument("--lastfm-scale", type=float, default=1.0, help="shrink the Last.fm matrix")
    parser.add_argument("--lastfm-runs", type=int, default=1, help="alternating Last.fm runs per side")
    parser.add_argument("--quiet-load", type=float, default=1.5, help="wait for this load before timing ALS")
    parser.add_argument("--max-wait", type=float, default=600.0, help="longest wait for that load, s")
    parser.add_argument("--record", action="store_true", help="append the tables to bench/RESULTS.md")
    parser.add_argument("--lastfm-child", choices=("raw", "ours"), help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.lastfm_child:
        print(json.dumps(lastfm_child(args.lastfm_child, args.data, args.threads)))
        return

    command = ".venv/bin/python bench/bench_models.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    header = f"Command: `{command}`. Machine: {common.machine_note()} at start.\n"
    settings = build_settings(home=args.home) if args.home else build_settings()
    sections: list[tuple[str, str]] = []
    wanted = set(args.only or ("speed", "fidelity", "models", "eval"))
    ds = load_movielens(settings)
    split = movielens_split(ds)
    if "speed" in wanted:
        # two threads on two shared cores: one busy core makes a straggler of every iteration, so wait
        common.wait_for_quiet(args.quiet_load, max_wait=args.max_wait)
        text, _ = bench_als_speed(split.train, args.repeats, args.threads)
        sections.append(("Models: ALS speed", text))
        print(text, flush=True)
    if wanted & {"fidelity", "models"}:
        parts = []
        if "fidelity" in wanted:
            parts.append(bench_fidelity(split)[0])
            print(parts[-1], flush=True)
        if "models" in wanted:
            parts.append(bench_all_models(split)[0])
            print(parts[-1], flush=True)
        sections.append(("Models: fidelity", "\n".join(parts)))
    if "eval" in wanted:
        text, _ = bench_eval_speed(split, args.repeats)
        sections.append(("Evaluation speed", text))
        print(text, flush=True)
    if args.lastfm:
        text, _ = bench_lastfm(args.lastfm_scale, args.threads, args.quiet_load, args.lastfm_runs, args.max_wait)
        sections.append(("Last.fm-scale ALS", text))
        print(text, flush=True)
    if args.record:
        body = "\n".join(f"## {title}\n\n{header}\n{text}" for title, text in sections)
        common.append_results(body)


if __name__ == "__main__":
    main()
