"""Benchmark of dataset reading: synthetic ML-25M-style ratings.csv and Last.fm-360K-style TSV.

Generates the files in a temporary directory, reads each through ``read_dataset`` in a fresh Python process
and reports the wall time (inside the child, around ``read_dataset``; and of the whole child, start-up and
imports included) and the child's peak resident memory (``os.wait4`` rusage of that child alone). The files
are deleted at the end.

    .venv/bin/python bench/bench_data.py                 # full size: 25M ratings, 17.5M plays
    .venv/bin/python bench/bench_data.py --rows 0.1      # a tenth of that
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import polars as pl

ML25M_ROWS = 25_000_095
ML25M_USERS = 162_541
ML25M_ITEMS = 59_047
ML25M_MAX_MOVIE_ID = 209_171
LASTFM_ROWS = 17_535_655
LASTFM_USERS = 359_347
LASTFM_ARTISTS = 294_015
_CHUNK = 2_000_000

_CHILD = """
import json, sys, time
t0 = time.perf_counter()
from tastebud.data.readers import read_dataset
t1 = time.perf_counter()
ds = read_dataset(sys.argv[1])
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "read_s": t2 - t1, "users": ds.n_users, "items": ds.n_items,
                  "interactions": ds.n_interactions}))
"""


def _zipf_probs(n: int, exponent: float, offset: float, rng: np.random.Generator) -> np.ndarray:
    """Power-law popularity over ``n`` ids, shuffled so that popular ids are spread over the id range."""
    weights = 1.0 / (np.arange(n) + offset) ** exponent
    rng.shuffle(weights)
    return weights / weights.sum()


def write_ratings_csv(path: Path, rows: int, seed: int = 0) -> None:
    """An ML-25M-like ratings.csv (userId,movieId,rating,timestamp) plus a movies.csv, written in chunks."""
    rng = np.random.default_rng(seed)
    n_users = max(10, round(ML25M_USERS * min(1.0, rows / ML25M_ROWS) ** 0.5))
    n_items = max(10, round(ML25M_ITEMS * min(1.0, rows / ML25M_ROWS) ** 0.5))
    movie_ids = np.sort(rng.choice(ML25M_MAX_MOVIE_ID, n_items, replace=False) + 1)
    item_p = _zipf_probs(n_items, 1.0, 20.0, rng)
    user_p = _zipf_probs(n_users, 0.6, 50.0, rng)
    stars = np.arange(1, 11, dtype=np.float32) / 2
    star_p = np.array([1, 3, 2, 7, 5, 20, 13, 26, 9, 14], dtype=float)
    with path.open("wb") as out:
        out.write(b"userId,movieId,rating,timestamp\n")
        for start in range(0, rows, _CHUNK):
            n = min(_CHUNK, rows - start)
            chunk = pl.DataFrame(
                {
                    "userId": rng.choice(n_users, n, p=user_p).astype(np.int32) + 1,
                    "movieId": movie_ids[rng.choice(n_items, n, p=item_p)].astype(np.int32),
                    "rating": rng.choice(stars, n, p=star_p / star_p.sum()),
                    "timestamp": rng.integers(789_652_009, 1_574_327_703, n),
                }
            ).sort("userId")
            chunk.write_csv(out, include_header=False)
    titles = [f"Movie {i}, The ({1900 + i % 120})" for i in movie_ids.tolist()]
    pl.DataFrame({"movieId": movie_ids, "title": titles, "genres": ["Drama|Comedy"] * n_items}).write_csv(
        path.with_name("movies.csv")
    )


def write_lastfm_tsv(path: Path, rows: int, seed: int = 1) -> None:
    """A Last.fm-360K-like TSV: sha1 user ids, 36-char mbids (about 10% empty), artist names, play counts."""
    rng = np.random.default_rng(seed)
    n_users = max(10, round(LASTFM_USERS * min(1.0, rows / LASTFM_ROWS)))
    n_artists = max(10, round(LASTFM_ARTISTS * min(1.0, rows / LASTFM_ROWS) ** 0.5))
    # one value per distinct user or artist (hundreds of thousands), then gathered per row below
    salt = int(rng.integers(0, 2**62)).to_bytes(8, "little")
    users = pl.Series([hashlib.sha1(salt + i.to_bytes(8, "little")).hexdigest() for i in range(n_users)])
    uuids = (str(uuid.UUID(bytes=rng.bytes(16))) for _ in range(n_artists))
    empty = rng.random(n_artists) < 0.1
    mbids = pl.Series([None if e else m for m, e in zip(uuids, empty.tolist(), strict=True)], dtype=pl.String)
    names = pl.Series([f"Artist {i} Ünïcode" if i % 7 == 0 else f"artist {i}" for i in range(n_artists)])
    artist_p = _zipf_probs(n_artists, 1.0, 10.0, rng)
    with path.open("wb") as out:
        for start in range(0, rows, _CHUNK):
            n = min(_CHUNK, rows - start)
            user_idx = pl.Series(np.sort(rng.integers(0, n_users, n)))
            artist_idx = pl.Series(rng.choice(n_artists, n, p=artist_p))
            pl.DataFrame(
                {
                    "user": users.gather(user_idx),
                    "mbid": mbids.gather(artist_idx),
                    "name": names.gather(artist_idx),
                    "plays": np.minimum(rng.zipf(1.6, n), 100_000),
                }
            ).write_csv(out, separator="\t", include_header=False, quote_style="never")


def measure(source: Path) -> dict[str, float | int]:
    """Read ``source`` with ``read_dataset`` in a fresh process; wall time and that child's peak RSS."""
    env = {**os.environ, "POLARS_MAX_THREADS": os.environ.get("POLARS_MAX_THREADS", str(os.cpu_count()))}
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(source)], stdout=subprocess.PIPE, env=env)
    assert child.stdout is not None
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"reading {source} failed (exit {child.returncode})")
    result = json.loads(output)
    result["wall_s"] = wall
    result["peak_rss_mb"] = usage.ru_maxrss / 1024  # Linux reports kilobytes
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=float, default=1.0, help="fraction of full size (1.0 = 25M / 17.5M rows)")
    parser.add_argument("--tmp", type=Path, default=None, help="where to write the files (default: system temp)")
    parser.add_argument("--only", choices=("movielens", "lastfm"), default=None)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="tastebud-bench-", dir=args.tmp))
    try:
        cases = []
        if args.only in (None, "movielens"):
            rows = int(ML25M_ROWS * args.rows)
            ml = workdir / "ml-25m-synthetic"
            ml.mkdir()
            t = time.perf_counter()
            write_ratings_csv(ml / "ratings.csv", rows)
            cases.append(("movielens-csv (ratings.csv + movies.csv)", ml, ml / "ratings.csv", time.perf_counter() - t))
        if args.only in (None, "lastfm"):
            rows = int(LASTFM_ROWS * args.rows)
            lf = workdir / "lastfm" / "usersha1-artmbid-artname-plays.tsv"
            lf.parent.mkdir()
            t = time.perf_counter()
            write_lastfm_tsv(lf, rows)
            cases.append(("lastfm-360k TSV", lf, lf, time.perf_counter() - t))
        print(f"python {sys.version.split()[0]}, polars {pl.__version__}, {os.cpu_count()} cpus")
        for label, source, data_file, gen_s in cases:
            size_mb = data_file.stat().st_size / 2**20
            res = measure(source)
            print(
                f"{label}: {res['interactions']:,} interactions, {res['users']:,} users, "
                f"{res['items']:,} items "
                f"({size_mb:,.0f} MiB file, generated in {gen_s:.0f} s): read_dataset {res['read_s']:.1f} s, "
                f"child wall {res['wall_s']:.1f} s (imports {res['import_s']:.1f} s), "
                f"peak RSS {res['peak_rss_mb']:,.0f} MiB"
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
