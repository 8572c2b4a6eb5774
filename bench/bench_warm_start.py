"""Benchmark of warm-start retraining: ALS from the champion's factors against a cold fit, time and quality.

The retraining scenario: a champion ALS was fitted on older data, events arrived since, and the candidate is
fitted on the champion's data plus those events. **Cold** is ``ALSRecommender(...).fit(merged)`` with the config's
``iterations``; **warm** is ``fit_warm(merged, champion, iterations=n)`` for each ``n`` of ``--warm-iterations``
(0 is the initialisation alone: carried-over factors, new users and items solved in one half-step each). The
timed runs alternate (cold, warm n1, warm n2 ...); medians of wall and CPU seconds over ``--movielens-repeats``
(ML-100K) or ``--repeats`` (Last.fm) runs are reported. Quality is NDCG@10 (binary relevance, all unseen items as
candidates) of the fitted candidate on a temporal holdout, with the paired per-user difference from cold.

1. **ML-100K plus events**: each user's newest 20% of ratings are the holdout (``temporal-user``); of the rest,
   the oldest 90% by time are the champion's data and the newest 10% the events (with new users and items).
   Then, without timing, the quality of warm starts as the events' share grows (``--shares``): how many sweeps
   a larger batch of new data needs.
2. **Last.fm scale** (``--lastfm``): synthetic implicit play counts of Last.fm-360K's shape (358K users, 126K
   items, 17.5M plays; ``bench_models.py``'s shape, string ids), the same protocol; the events are the newest 4.5%
   by time plus the whole history of the 1% of users and 0.5% of items that appear last (about 5% in all: the
   generator's users are active until the end, so a time cut alone makes no new users); NDCG@10 on a sample of
   holdout users (``--lastfm-sample``).

Holdout interactions of users or items without training interactions are dropped (neither model knows them).

    .venv/bin/python bench/bench_warm_start.py --home /tmp/tbhome                      # ML-100K only (seconds)
    .venv/bin/python bench/bench_warm_start.py --home /tmp/tbhome --lastfm --record    # and Last.fm scale (minutes)
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

import _common as common
from bench_models import LASTFM_INTERACTIONS, LASTFM_ITEMS, LASTFM_USERS, load_movielens
from tastebud.config import build_settings
from tastebud.data.dataset import Dataset
from tastebud.data.split import Split, make_split
from tastebud.evaluation.protocol import Report, bootstrap_ci, evaluate
from tastebud.models.als import ALSRecommender


@dataclass
class Scenario:
    """A champion's data, the merged data a retrain fits, and the holdout both candidates are scored on."""

    name: str
    champion_data: Dataset
    split: Split  # train: champion data + events (full vocabulary); test: the holdout
    counts: dict[str, Any]


def build_scenario(
    ds: Dataset,
    *,
    holdout_fraction: float,
    events_fraction: float,
    new_users: float = 0.0,
    new_items: float = 0.0,
    sample_users: int | None = None,
    seed: int = 0,
) -> Scenario:
    """Cut ``ds`` into a holdout (newest per user), events (newest by time) and the champion's data (the rest).

    Args:
        ds: the dataset (with timestamps).
        holdout_fraction: each user's newest share of interactions held out.
        events_fraction: of the rest, the newest share by time are events.
        new_users: this share of users, those whose first interaction is latest, arrive with the events: their
            whole history is events (synthetic data has few users who are new by the time cut alone).
        new_items: likewise for items.
        sample_users: score only this many holdout users (drawn with ``seed``).
        seed: seed of the user sample.
    """
    outer = make_split(ds, "temporal-user", test_fraction=holdout_fraction)
    merged = outer.train
    train = merged.interactions
    stamps = train["timestamp"].to_numpy()
    n_events = round(events_fraction * len(stamps))
    is_event = stamps >= np.partition(stamps, len(stamps) - n_events)[len(stamps) - n_events]
    rows = {"user_idx": train["user_idx"].to_numpy(), "item_idx": train["item_idx"].to_numpy()}
    sizes = {"user_idx": merged.n_users, "item_idx": merged.n_items}
    for column, share in (("user_idx", new_users), ("item_idx", new_items)):
        if share > 0:
            first = train.group_by(column).agg(pl.col("timestamp").min()).sort("timestamp", column)
            late = np.zeros(sizes[column], dtype=bool)
            late[first[column].tail(round(share * first.height)).to_numpy()] = True
            is_event |= late[rows[column]]
    champion_data = merged.with_interactions(train.filter(~is_event)).compact()  # it saw only these users and items
    holdout = outer.test.interactions.filter(
        pl.col("user_idx").is_in(train["user_idx"].unique().implode())
        & pl.col("item_idx").is_in(train["item_idx"].unique().implode())
    )
    if sample_users is not None:
        users = holdout["user_idx"].unique().sort().to_numpy()
        if len(users) > sample_users:
            picked = np.random.default_rng(seed).choice(users, sample_users, replace=False)
            holdout = holdout.filter(pl.col("user_idx").is_in(pl.Series(picked).implode()))
    counts = {
        "champion interactions": champion_data.n_interactions,
        "events": f"{int(is_event.sum())} ({is_event.mean():.1%} of the merged data)",
        "users in events": len(np.unique(rows["user_idx"][is_event])),
        "new users": _count_new(rows["user_idx"], is_event, merged.n_users),
        "new items": _count_new(rows["item_idx"], is_event, merged.n_items),
        "holdout interactions": holdout.height,
        "holdout users": holdout["user_idx"].n_unique(),
    }
    return Scenario(ds.name, champion_data, Split(merged, outer.test.with_interactions(holdout)), counts)


def _count_new(index: np.ndarray, is_event: np.ndarray, n: int) -> int:
    """How many of the indices in events have no interaction outside them (users or items the champion lacks)."""
    in_events = np.bincount(index[is_event], minlength=n) > 0
    outside = np.bincount(index[~is_event], minlength=n) > 0
    return int(np.count_nonzero(in_events & ~outside))


def bench_scenario(
    scenario: Scenario, params: dict[str, Any], warm_iterations: Sequence[int], repeats: int, *, warmup: bool
) -> tuple[str, dict[str, Any]]:
    """Fit the champion, then time cold and warm candidates (alternating) and score each on the holdout."""
    t0 = time.perf_counter()
    champion = ALSRecommender(**params).fit(scenario.champion_data)
    champion_s = time.perf_counter() - t0
    merged = scenario.split.train
    fitted: dict[str, ALSRecommender] = {}

    def cold() -> None:
        fitted["cold"] = ALSRecommender(**params).fit(merged)

    def warm(n: int) -> None:
        fitted[f"warm {n}"] = ALSRecommender(**params).fit_warm(merged, champion, iterations=n)

    fns: dict[str, Callable[[], None]] = {"cold": cold, **{f"warm {n}": partial(warm, n) for n in warm_iterations}}
    cpu: dict[str, list[float]] = {name: [] for name in fns}

    def with_cpu(name: str) -> Callable[[], None]:
        def run() -> None:
            c0 = time.process_time()
            fns[name]()
            cpu[name].append(time.process_time() - c0)

        return run

    load_before = common.load_average()
    times = common.alternate({name: with_cpu(name) for name in fns}, repeats, warmup=warmup)
    load_after = common.load_average()
    cpu = {name: runs[-repeats:] for name, runs in cpu.items()}  # without the warm-up
    reports = {name: evaluate(model, scenario.split, k=10, n_boot=200) for name, model in fitted.items()}
    ndcg = {name: report.metric("ndcg") for name, report in reports.items()}
    iterations = ALSRecommender(**params).config.iterations
    cold_s, cold_cpu = common.median(times["cold"]), common.median(cpu["cold"])
    rows: list[list[Any]] = []
    for name, runs in times.items():
        sweeps = iterations if name == "cold" else int(name.split()[1])
        what = f"cold `fit`, {sweeps} sweeps" if name == "cold" else f"warm `fit_warm`, {sweeps} sweeps"
        if name == "warm 0":
            what += " (the champion, new users and items solved in)"
        med = common.median(runs)
        diff = "-" if name == "cold" else _paired(reports[name], reports["cold"])
        med_cpu = common.median(cpu[name])
        rows.append(
            [
                what,
                med,
                f"{min(runs):.3g} - {max(runs):.3g}",
                med / cold_s,
                med_cpu,
                med_cpu / cold_cpu,
                ndcg[name],
                diff,
            ]
        )
    counts = ", ".join(f"{k} {v}" for k, v in scenario.counts.items())
    text = common.table(
        f"{scenario.name}: ALS ({_describe(params)}), cold vs warm start from the champion; "
        f"fit s and CPU s (less sensitive to other jobs on shared cores) median of {repeats} alternating runs; "
        "NDCG@10 on the holdout",
        [
            "candidate",
            "fit s",
            "min - max s",
            "time / cold",
            "CPU s (all threads)",
            "CPU / cold",
            "NDCG@10",
            "NDCG - cold [95% CI, paired]",
        ],
        rows,
    )
    text += (
        f"\n{counts}. Champion fit: {champion_s:.3g} s on {scenario.champion_data.n_users} users x "
        f"{scenario.champion_data.n_items} items. Load average {load_before:.2f} before, {load_after:.2f} after.\n"
    )
    return text, {"times": times, "cpu": cpu, "ndcg": ndcg, "counts": scenario.counts}


def bench_event_shares(
    ds: Dataset, params: dict[str, Any], shares: Sequence[float], sweeps: Sequence[int]
) -> tuple[str, dict[str, Any]]:
    """NDCG@10 of warm starts against a cold fit as the events' share of the merged data grows (no timing)."""
    rows: list[list[Any]] = []
    for share in shares:
        scenario = build_scenario(ds, holdout_fraction=0.2, events_fraction=share)
        merged = scenario.split.train
        champion = ALSRecommender(**params).fit(scenario.champion_data)
        cold = evaluate(ALSRecommender(**params).fit(merged), scenario.split, k=10, n_boot=200)
        row = [f"{share:.0%}", scenario.counts["new users"], scenario.counts["new items"], cold.metric("ndcg")]
        for n in sweeps:
            warm = ALSRecommender(**params).fit_warm(merged, champion, iterations=n)
            row.append(_paired(evaluate(warm, scenario.split, k=10, n_boot=200), cold))
        rows.append(row)
    text = common.table(
        f"{ds.name}: warm start against cold as the events grow (ALS {_describe(params)}); NDCG@10 difference "
        "from the cold fit on the same holdout, [95% CI, paired]",
        ["events (of merged)", "new users", "new items", "cold NDCG@10", *[f"warm, {n} sweeps" for n in sweeps]],
        rows,
    )
    return text, {"rows": rows}


def _paired(report: Report, baseline: Report) -> str:
    """Mean per-user NDCG@10 difference from ``baseline`` (same users) with its bootstrap 95% interval."""
    if report.user_ids != baseline.user_ids:
        raise RuntimeError("the two reports scored different users")
    diff = np.asarray(report.per_user["ndcg"]) - np.asarray(baseline.per_user["ndcg"])
    low, high = bootstrap_ci(diff, n_boot=1000, seed=0)
    return f"{diff.mean():+.4f} [{low:+.4f}, {high:+.4f}]"


def _describe(params: dict[str, Any]) -> str:
    cfg = ALSRecommender(**params).config
    return ", ".join(f"{k} {getattr(cfg, k)}" for k in ("factors", "iterations", "regularization", "alpha"))


def lastfm_dataset(scale: float, seed: int = 0) -> tuple[Dataset, float]:
    """Synthetic play counts of Last.fm-360K's shape (times ``scale``), string ids; (dataset, seconds)."""
    from tastebud.data.synthetic import synthetic_frames

    t0 = time.perf_counter()
    n_users = max(100, round(LASTFM_USERS * scale))
    n_items = max(100, round(LASTFM_ITEMS * scale))
    n_inter = max(n_users, round(LASTFM_INTERACTIONS * scale))
    frame, _ = synthetic_frames(n_users, n_items, n_inter, kind="implicit", seed=seed)
    frame = frame.select(
        pl.format("user-{}", "user_id").alias("user_id"),
        pl.format("artist-{}", "item_id").alias("item_id"),
        "value",
        "timestamp",
    )
    ds = Dataset.from_frame(frame, name=f"Last.fm-shaped synthetic ({n_users} x {n_items}, {n_inter} plays)")
    return ds, time.perf_counter() - t0


def main(argv: Sequence[str] | None = None) -> None:
    """Run the scenarios and print (and with ``--record`` append) their tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=None, help="Tastebud home (ML-100K is fetched there)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per contender at Last.fm scale")
    parser.add_argument(
        "--movielens-repeats", type=int, default=7, help="timed runs per contender on ML-100K (cheap; smooths noise)"
    )
    parser.add_argument("--warm-iterations", type=int, nargs="+", default=[0, 1, 2, 3, 5, 8], help="warm sweeps")
    parser.add_argument(
        "--sections", nargs="+", choices=("movielens", "shares"), default=["movielens", "shares"], help="ML-100K parts"
    )
    parser.add_argument("--shares", type=float, nargs="+", default=[0.1, 0.2, 0.3, 0.5], help="events' shares")
    parser.add_argument("--share-sweeps", type=int, nargs="+", default=[0, 1, 3, 5, 8], help="warm sweeps per share")
    parser.add_argument("--threads", type=int, default=0, help="ALS threads (0 = every core)")
    parser.add_argument("--lastfm", action="store_true", help="also run at Last.fm scale (minutes)")
    parser.add_argument("--lastfm-scale", type=float, default=1.0, help="shrink the Last.fm-shaped data")
    parser.add_argument("--lastfm-sample", type=int, default=20_000, help="holdout users scored at Last.fm scale")
    parser.add_argument(
        "--lastfm-warm-iterations", type=int, nargs="+", default=[0, 2, 3, 5], help="warm sweeps at Last.fm scale"
    )
    parser.add_argument("--quiet-load", type=float, default=1.5, help="wait for this load before timing")
    parser.add_argument("--max-wait", type=float, default=300.0, help="longest wait for that load, s")
    parser.add_argument("--record", action="store_true", help="append the tables to bench/RESULTS.md")
    args = parser.parse_args(argv)

    command = ".venv/bin/python bench/bench_warm_start.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    settings = build_settings(home=args.home) if args.home else build_settings()
    params = {"num_threads": args.threads}
    parts = []
    ml100k = load_movielens(settings)
    if "movielens" in args.sections:
        common.wait_for_quiet(args.quiet_load, max_wait=args.max_wait)
        movielens = build_scenario(ml100k, holdout_fraction=0.2, events_fraction=0.1)
        text, _ = bench_scenario(movielens, params, args.warm_iterations, args.movielens_repeats, warmup=True)
        parts.append(text)
        print(text, flush=True)
    if "shares" in args.sections:
        text, _ = bench_event_shares(ml100k, params, args.shares, args.share_sweeps)
        parts.append(text)
        print(text, flush=True)
    if args.lastfm:
        ds, gen_s = lastfm_dataset(args.lastfm_scale)
        print(f"generated {ds.n_users} x {ds.n_items}, {ds.n_interactions} in {gen_s:.0f} s", file=sys.stderr)
        scenario = build_scenario(
            ds,
            holdout_fraction=0.2,
            events_fraction=0.045,
            new_users=0.01,
            new_items=0.005,
            sample_users=args.lastfm_sample,
        )
        del ds
        common.wait_for_quiet(args.quiet_load, max_wait=args.max_wait)
        text, _ = bench_scenario(scenario, params, args.lastfm_warm_iterations, args.repeats, warmup=False)
        text += (
            f"Generating the data took {gen_s:.0f} s; NDCG@10 over {scenario.counts['holdout users']} holdout users "
            "drawn at random.\n"
        )
        parts.append(text)
        print(text, flush=True)
    if args.record:
        header = f"Command: `{command}`. Machine: {common.machine_note()} at the end.\n"
        common.append_results("## Retraining: warm-start vs cold ALS\n\n" + header + "\n" + "\n".join(parts))


if __name__ == "__main__":
    main()
