"""Benchmark of experiment analysis at scale: request log and events in SQLite, read as frames, per-user outcomes.

A synthetic SQLite store (built once and kept, keyed by its parameters; building it is not what is measured) holds
an experiment's request log (lists of 10 items over a Zipf-popular catalog, two variants assigned per user, a few
server errors, client errors and fallbacks) and interaction events (responses to shown items a while after the
showing, treatment slightly more often, plus background events on any item, from a day before the experiment to a
day after it: the window the analysis reads). The timed step is the whole analysis, end to end, as
:func:`tastebud.experiments.report.analyze_experiment` runs it::

    exposures = store.exposures_frame(experiment=...)
    events = store.events_frame(since=start - horizon, until=end + horizon)
    per_user_metrics(exposures, events, ...) and guardrails(exposures, ...)

Median of 3 runs, each after the machine's 1-minute load fell below ``--quiet-load`` (one untimed warm-up first,
which also fills the page cache); wall and CPU seconds (all threads) per stage.

    .venv/bin/python bench/bench_experiments.py                       # 1M exposures, 5M events
    .venv/bin/python bench/bench_experiments.py --exposures 100000 --events 500000
    .venv/bin/python bench/bench_experiments.py --record              # append the table to bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from _common import append_results, machine_note, median, table, wait_for_quiet
from tastebud.experiments.outcomes import guardrails, per_user_metrics
from tastebud.store import create_store, events, request_logs

EXPERIMENT = "bench-ab"
START = datetime(2024, 6, 1, tzinfo=UTC)
DAYS = 14
LIST_LENGTH = 10
_TIME_FORMAT = "%Y-%m-%d %H:%M:%S%.6f"  # what UTCDateTime stores on SQLite (naive UTC text)
_BATCH = 200_000


def _zipf(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    weights = 1.0 / (np.arange(n) + 10.0) ** exponent
    rng.shuffle(weights)
    return weights / weights.sum()


def _times(us: np.ndarray) -> pl.Series:
    """Microseconds after :data:`START` as the store's SQLite timestamp text."""
    start_us = int(START.timestamp() * 1_000_000)
    return pl.from_epoch(pl.Series(us.astype(np.int64) + start_us), time_unit="us").dt.strftime(_TIME_FORMAT)


def _ids(prefix: str, numbers: np.ndarray, width: int = 6) -> pl.Series:
    """``prefix`` + the numbers, zero-padded to ``width`` digits, as a string Series."""
    digits = pl.Series(numbers).cast(pl.String).str.pad_start(width, "0")
    return pl.select(pl.concat_str([pl.lit(prefix), pl.lit(digits)])).to_series()


def _insert(conn: sqlite3.Connection, table: str, frame: pl.DataFrame) -> None:
    columns = ", ".join(frame.columns)
    sql = f"INSERT INTO {table} ({columns}) VALUES ({', '.join('?' * frame.width)})"
    for offset in range(0, frame.height, _BATCH):
        conn.executemany(sql, frame.slice(offset, _BATCH).iter_rows())


def build_store(path: Path, *, n_exposures: int, n_events: int, n_users: int, n_items: int, seed: int = 0) -> None:
    """Write the synthetic request log and events into a new SQLite store at ``path``."""
    rng = np.random.default_rng(seed)
    span_us = DAYS * 86_400 * 1_000_000
    user_p, item_p = _zipf(n_users, 0.3, rng), _zipf(n_items, 0.9, rng)
    user_variant = rng.integers(0, 2, n_users)  # 0 control, 1 treatment

    req_user = rng.choice(n_users, n_exposures, p=user_p)
    req_t = np.sort(rng.integers(0, span_us, n_exposures))
    shown = rng.choice(n_items, (n_exposures, LIST_LENGTH), p=item_p)
    treated = user_variant[req_user] == 1
    status = rng.choice([200, 500, 404], n_exposures, p=[0.993, 0.004, 0.003])
    item_cols = {f"c{j}": pl.Series(shown[:, j]).cast(pl.String) for j in range(LIST_LENGTH)}
    parts: list[pl.Expr | str] = [pl.lit('["i')]
    for j in range(LIST_LENGTH):
        parts += [pl.col(f"c{j}"), pl.lit('"]' if j == LIST_LENGTH - 1 else '","i')]
    requests = (
        pl.DataFrame(item_cols)
        .select(
            _ids("r", np.arange(n_exposures), width=8).alias("request_id"),
            _times(req_t).alias("timestamp"),
            pl.lit("recommend").alias("endpoint"),
            _ids("u", req_user).alias("user_id"),
            pl.when(pl.Series(status) == 200).then(pl.concat_str(parts)).otherwise(pl.lit("[]")).alias("item_ids"),
            pl.when(pl.Series(status) == 200).then(pl.lit(str([1.0] * LIST_LENGTH))).otherwise(pl.lit("[]"))
            .alias("scores"),
            pl.Series("latency_ms", rng.lognormal(np.log(12.0), 0.5, n_exposures) * np.where(treated, 1.05, 1.0)),
            pl.Series("status_code", status),
            pl.Series("is_fallback", (rng.random(n_exposures) < 0.03).astype(np.int64)),
            pl.Series("variant", np.where(treated, "treatment", "control")),
            pl.lit("{}").alias("provenance"),
            pl.lit(EXPERIMENT).alias("experiment"),
        )
    )  # fmt: skip

    n_responses = int(n_events * 0.1)
    ok = np.flatnonzero(status == 200)
    weights = np.where(treated[ok], 1.1, 1.0)
    resp_req = ok[rng.choice(ok.size, n_responses, p=weights / weights.sum())]
    resp_pos = rng.integers(0, LIST_LENGTH, n_responses)
    resp_t = req_t[resp_req] + rng.exponential(1800e6, n_responses).astype(np.int64) + 1_000_000
    n_background = n_events - n_responses
    ev_user = np.concatenate([req_user[resp_req], rng.choice(n_users, n_background, p=user_p)])
    ev_item = np.concatenate([shown[resp_req, resp_pos], rng.choice(n_items, n_background, p=item_p)])
    # every event lies within [start - 1 day, end + 1 day), the window the analysis reads: all of them are read
    day_us = 86_400_000_000
    ev_t = np.concatenate(
        [np.minimum(resp_t, span_us + day_us - 1), rng.integers(-day_us, span_us + day_us, n_background)]
    )
    kinds = np.array(["view", "click", "play", "rating", "like", "skip"])
    ev_kind = kinds[rng.choice(kinds.size, n_events, p=[0.35, 0.25, 0.2, 0.12, 0.05, 0.03])]
    stars = rng.choice([1.0, 2.0, 3.0, 4.0, 5.0], n_events, p=[0.06, 0.11, 0.27, 0.35, 0.21])
    is_rating = ev_kind == "rating"
    value = np.where(is_rating, stars, np.where(ev_kind == "play", rng.integers(1, 20, n_events), 1.0))
    ev_times = _times(ev_t)
    event_frame = pl.DataFrame(
        {
            "event_id": _ids("e", np.arange(n_events), width=9),
            "user_id": _ids("u", ev_user),
            "item_id": _ids("i", ev_item, width=0),
            "kind": ev_kind,
            "rating": pl.Series(np.where(is_rating, stars, np.nan)).fill_nan(None),
            "value": value.astype(np.float64),
            "timestamp": ev_times,
            "source": pl.Series(["bench"] * n_events),
            "received_at": ev_times,
        }
    )  # fmt: skip

    store = create_store(url=f"sqlite:///{path}")
    store.init_schema()
    store.close()
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA synchronous=OFF")
        # Indexes are built once after the load: far faster than keeping them up to date row by row.
        indexes = [*request_logs.indexes, *events.indexes]
        for index in indexes:
            conn.execute(f"DROP INDEX IF EXISTS {index.name}")
        with conn:
            _insert(conn, "request_logs", requests)
            _insert(conn, "events", event_frame)
        for index in indexes:
            cols = ", ".join(c.name for c in index.columns)
            conn.execute(f"CREATE INDEX {index.name} ON {index.table.name} ({cols})")  # type: ignore[union-attr]
        conn.execute("ANALYZE")
        conn.commit()
    finally:
        conn.close()


def analyse(url: str, *, horizon_s: float, catalog_size: int) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, Any]]:
    """The timed step: read both frames, compute per-user metrics and guardrails; (wall s, CPU s) of each stage."""
    end = START + timedelta(days=DAYS)
    horizon = timedelta(seconds=horizon_s)
    stages: dict[str, Any] = {}
    store = create_store(url=url)

    def stage(name: str, fn: Callable[[], Any]) -> Any:
        cpu, wall = time.process_time(), time.perf_counter()
        out = fn()
        stages[name] = (time.perf_counter() - wall, time.process_time() - cpu)
        return out

    try:
        exposures = stage("exposures_frame", lambda: store.exposures_frame(experiment=EXPERIMENT))
        evts = stage("events_frame", lambda: store.events_frame(since=START - horizon, until=end + horizon))
        per_user = stage(
            "per_user_metrics",
            lambda: per_user_metrics(exposures, evts, horizon_s=horizon_s, start=START, end=end),
        )
        guard = stage("guardrails", lambda: guardrails(exposures, catalog_size))
    finally:
        store.close()
    stages["total"] = tuple(sum(v[i] for v in stages.values()) for i in (0, 1))
    stages["rows"] = (exposures.height, evts.height)
    return per_user, guard, stages


def main() -> None:
    """Build (or reuse) the store, time the analysis and print (and with ``--record`` append) the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exposures", type=int, default=1_000_000, help="logged lists (requests)")
    parser.add_argument("--events", type=int, default=5_000_000, help="interaction events")
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--horizon-s", type=float, default=86_400.0, help="attribution horizon, seconds")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quiet-load", type=float, default=1.0, help="wait for this 1-minute load before each run")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()), help="where the store is kept")
    parser.add_argument("--record", action="store_true", help="append the table to bench/RESULTS.md")
    args = parser.parse_args()

    path = args.dir / f"tastebud-bench-experiments-{args.exposures}-{args.events}-{args.users}-{args.items}.db"
    if not path.exists():
        t = time.perf_counter()
        partial = path.with_suffix(".partial")
        partial.unlink(missing_ok=True)
        build_store(partial, n_exposures=args.exposures, n_events=args.events, n_users=args.users,
                    n_items=args.items)  # fmt: skip
        partial.rename(path)
        print(f"built {path} in {time.perf_counter() - t:.0f} s", flush=True)
    url = f"sqlite:///{path}"
    analyse(url, horizon_s=args.horizon_s, catalog_size=args.items)  # warm-up (imports, page cache)
    runs, loads = [], []
    for _ in range(args.repeats):
        loads.append(wait_for_quiet(args.quiet_load, max_wait=300))
        runs.append(analyse(url, horizon_s=args.horizon_s, catalog_size=args.items))
        print(f"  run {len(runs)}: {runs[-1][2]['total'][0]:.2f} s", flush=True)
    per_user, guard, _ = runs[-1]
    names = [k for k in runs[0][2] if k != "rows"]
    rows = [
        (
            f"**{k}**" if k == "total" else f"`{k}`",
            median([r[2][k][0] for r in runs]),
            median([r[2][k][1] for r in runs]),
        )
        for k in names
    ]
    n_exposures, n_events = runs[0][2]["rows"]
    title = (
        f"Experiment analysis, SQLite store: {n_exposures:,} exposures (lists of {LIST_LENGTH}) and {n_events:,} "
        f"events read, {per_user.height:,} exposed users; median of {args.repeats} runs"
    )
    body = table(title, ["stage", "wall s", "CPU s"], [*rows, ("target", "< 10", "")])
    totals = ", ".join(f"{r[2]['total'][0]:.2f}" for r in runs)
    lifts = per_user.group_by("variant").agg(pl.len().alias("users"), pl.col("hit_rate").mean(),
                                             pl.col("click_rate").mean()).sort("variant")  # fmt: skip
    note = (
        f"Command: `.venv/bin/python bench/bench_experiments.py --exposures {args.exposures} --events {args.events}` "
        f"(horizon {args.horizon_s:g} s; every event lies in the window read, [start - horizon, end + horizon)). "
        f"Totals of the runs: {totals} s; 1-minute load before each: {', '.join(f'{v:.2f}' for v in loads)}. "
        "CPU s counts every thread of the process (SQLite chunks are read on several connections at once). "
        "Per variant: "
        + "; ".join(f"{v} {u:,} users, hit rate {h:.3f}, click rate {c:.3f}" for v, u, h, c in lifts.iter_rows())
        + ". Guardrails: "
        + "; ".join(
            f"{r['variant']} p95 {r['p95_latency']:.1f} ms, errors {r['error_ratio']:.4f}, coverage {r['coverage']:.3f}"
            for r in guard.iter_rows(named=True)
        )
        + f".\n\n{machine_note()}\n"
    )
    print(body)
    print(note)
    if args.record:
        append_results(f"## Experiments: analysis at scale\n\n{body}\n{note}")


if __name__ == "__main__":
    main()
