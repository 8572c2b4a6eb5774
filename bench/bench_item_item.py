"""Benchmark of RP3beta and SLIM, recency weighting, and the ALS defaults per kind of feedback.

Sections (each printed as a Markdown table; ``--record`` appends them to ``bench/RESULTS.md`` in one write):

1. **Sparse item-item models on ML-100K** (per-user random 80/20, seed 42, K=10, the quality floors' protocol):
   NDCG@10 with its bootstrap 95% interval, Recall@10, catalog coverage, fit seconds (median of 3) and the
   median time of one single-user ``recommend`` call, for the new models beside their relatives.
2. **Recency weighting** (``recency_half_life_days``) on ML-100K under the ``random`` and ``temporal-user``
   protocols: the half-life is picked from a small grid on each protocol's validation holdout (carved from
   train, test untouched), then test NDCG@10 without and with it.
3. **Defaults per kind of feedback** on Last.fm-format samples (play counts, written by
   ``tastebud data synth --format lastfm-360k`` and read back by the Last.fm reader): item-KNN, ALS with the
   MovieLens-tuned defaults (linear confidence, alpha 10), ALS with the defaults for counts, and ALS after
   ``--tune``-style Optuna trials on a validation holdout.

    .venv/bin/python bench/bench_item_item.py --home /tmp/tbhome [--record]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import _common as common
from tastebud.config import build_settings
from tastebud.data.dataset import Dataset
from tastebud.data.split import Split
from tastebud.evaluation.protocol import Report, evaluate
from tastebud.evaluation.protocols import protocol_split, validation_split
from tastebud.models import create
from tastebud.models.base import Recommender

MODELS = ("popular", "itemknn", "ease", "als", "rp3beta", "slim")
RECENCY_MODELS = ("itemknn", "ease", "als", "rp3beta", "slim")
HALF_LIVES = (30.0, 90.0, 365.0)


def fit(name: str, split: Split, **params: Any) -> tuple[Recommender, float]:
    t0 = time.perf_counter()
    model = create(name, **params).fit(split.train)
    return model, time.perf_counter() - t0


def ndcg_cell(report: Report) -> str:
    low, high = report.ci["ndcg"]
    return f"{report.metric('ndcg'):.4f} ({low:.4f} - {high:.4f})"


def serving_us(model: Recommender, users: list[str]) -> float:
    """Median microseconds of ``recommend_row`` (serving's per-request path) over ``users``, k=10."""
    assert model.users_ is not None
    rows = [model.users_.lookup[u] for u in users]
    for row in rows[:20]:
        model.recommend_row(row, k=10)
    times = []
    for row in rows:
        t0 = time.perf_counter()
        model.recommend_row(row, k=10)
        times.append(time.perf_counter() - t0)
    return common.median(times) * 1e6


def section_models(ml100k: Dataset) -> str:
    split = protocol_split(ml100k, "random", seed=42)
    users = [str(u) for u in ml100k.users.ids[::5].tolist()]
    rows = []
    for name in MODELS:
        fits = [fit(name, split) for _ in range(3)]
        model = fits[-1][0]
        report = evaluate(model, split, k=10)
        rows.append(
            [
                name,
                ndcg_cell(report),
                f"{report.metric('recall'):.4f}",
                f"{report.coverage:.3f}",
                f"{common.median([f for _, f in fits]):.3f}",
                f"{serving_us(model, users):.0f}",
            ]
        )
    return common.table(
        "ML-100K, per-user random 80/20 (seed 42), K=10, defaults; fit s median of 3; recommend_row µs median",
        ["model", "NDCG@10 (95% CI)", "Recall@10", "coverage", "fit s", "serving µs"],
        rows,
    )


def section_recency(ml100k: Dataset) -> str:
    rows = []
    for protocol in ("random", "temporal-user"):
        split = protocol_split(ml100k, protocol, seed=42)
        val = validation_split(split, protocol, seed=42)
        for name in RECENCY_MODELS:
            scores = {
                hl: evaluate(fit(name, val, recency_half_life_days=hl)[0], val, k=10, n_boot=10).metric("ndcg")
                for hl in HALF_LIVES
            }
            base_val = evaluate(fit(name, val)[0], val, k=10, n_boot=10).metric("ndcg")
            best = max(scores, key=lambda hl: scores[hl])
            plain = evaluate(fit(name, split)[0], split, k=10)
            weighted = evaluate(fit(name, split, recency_half_life_days=best)[0], split, k=10)
            rows.append(
                [
                    protocol,
                    name,
                    f"{base_val:.4f} / " + " / ".join(f"{scores[hl]:.4f}" for hl in HALF_LIVES),
                    f"{best:g}",
                    ndcg_cell(plain),
                    ndcg_cell(weighted),
                    f"{weighted.metric('ndcg') - plain.metric('ndcg'):+.4f}",
                ]
            )
    grid = " / ".join(f"{hl:g}" for hl in HALF_LIVES)
    return common.table(
        "Recency weighting on ML-100K: half-life picked on each protocol's validation holdout, test NDCG@10",
        [
            "protocol",
            "model",
            f"validation NDCG: none / {grid} days",
            "half-life",
            "test: none",
            "test: weighted",
            "change",
        ],
        rows,
    )


def section_lastfm(home: Path, trials: int) -> str:
    from tastebud.data.readers import read_dataset
    from tastebud.data.synthetic import write_lastfm_sample
    from tastebud.evaluation.tuning import tune

    settings = build_settings(home=home)
    rows = []
    for users, items, interactions, seed in ((1000, 500, 20_000, 0), (3000, 1500, 90_000, 1)):
        with tempfile.TemporaryDirectory() as tmp:
            write_lastfm_sample(Path(tmp), users, items, interactions, seed=seed)
            ds = read_dataset(tmp, format="lastfm-360k", settings=settings)
        split = protocol_split(ds, "random", seed=42)
        contenders: dict[str, tuple[str, dict[str, Any]]] = {
            "popular": ("popular", {}),
            "itemknn (defaults)": ("itemknn", {}),
            "ease (defaults)": ("ease", {}),
            "rp3beta (defaults)": ("rp3beta", {}),
            "slim (defaults)": ("slim", {}),
            "als, MovieLens defaults (linear, alpha 10, reg. 50)": (
                "als",
                {"confidence": "linear", "alpha": 10.0, "regularization": 50.0},
            ),
            "als, defaults for counts (log, alpha 7, reg. 100)": ("als", {}),
        }
        with tempfile.TemporaryDirectory() as tmp:  # tuned on a validation part of train; test is untouched
            t0 = time.perf_counter()
            tuned = tune(split.train, "als", trials=trials, seed=42, storage_dir=Path(tmp), progress=False)
            tune_s = time.perf_counter() - t0
        contenders[f"als after {trials} Optuna trials ({tune_s:.0f} s)"] = ("als", tuned.best_params)
        sample = f"{ds.n_users} x {ds.n_items}, {ds.n_interactions} plays (seed {seed})"
        for label, (name, params) in contenders.items():
            model, seconds = fit(name, split, **params)
            report = evaluate(model, split, k=10)
            rows.append([sample, label, ndcg_cell(report), f"{seconds:.2f}"])
        rows.append(
            [sample, "tuned parameters", str({k: v for k, v in tuned.best_params.items() if k != "random_state"}), ""]
        )
    return common.table(
        "Last.fm-format samples (play counts), per-user random 80/20 (seed 42), K=10",
        ["sample", "model", "NDCG@10 (95% CI)", "fit s"],
        rows,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, default=Path(".tastebud-test"), help="home holding ml-100k")
    parser.add_argument("--trials", type=int, default=20, help="Optuna trials of section 3")
    parser.add_argument("--only", choices=("models", "recency", "lastfm"), help="run one section")
    parser.add_argument("--record", action="store_true", help="append the tables to bench/RESULTS.md")
    args = parser.parse_args()
    from tastebud.data.fetch import fetch_dataset, is_fetched
    from tastebud.data.readers import read_dataset

    settings = build_settings(home=args.home)
    if not is_fetched("ml-100k", settings):
        fetch_dataset("ml-100k", settings, progress=False)
    ml100k = read_dataset("ml-100k", settings=settings)
    np.seterr(all="ignore")
    parts = [f"Command: `.venv/bin/python bench/bench_item_item.py --home {args.home}`. {common.machine_note()}"]
    if args.only in (None, "models"):
        parts.append(section_models(ml100k))
        print(parts[-1], flush=True)
    if args.only in (None, "recency"):
        parts.append(section_recency(ml100k))
        print(parts[-1], flush=True)
    if args.only in (None, "lastfm"):
        parts.append(section_lastfm(args.home, args.trials))
        print(parts[-1], flush=True)
    if args.record:
        common.append_results("\n\n".join(parts))


if __name__ == "__main__":
    main()
