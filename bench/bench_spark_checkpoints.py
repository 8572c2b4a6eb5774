"""Spark ALS with and without checkpoints, at a given JVM thread stack: does the fit finish, and how long it takes.

Each case runs in a fresh child process (a new driver JVM, since ``-Xss`` applies at its start): ML-100K from the
home's cache, 64 factors, ``local[2]``, ``--sweeps`` sweeps; ``--intervals`` are checkpoint intervals (0: no
checkpoints, by an interval longer than the fit). Without checkpoints ALS's lineage grows with every sweep and a
short stack overflows deserialising it, which ends a local driver's JVM (``bench/RESULTS.md``, "Checkpoints every 5
sweeps").

    .venv/bin/python bench/bench_spark_checkpoints.py --home .tastebud-test --stacks 1m 512k --intervals 0 5
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

CHILD = """
import sys, time
from pathlib import Path
from tastebud.config import SparkSettings, build_settings
from tastebud.data.readers import read_dataset
from tastebud.models import create, spark_als
home, stack, interval, sweeps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
data = read_dataset("ml-100k", settings=build_settings(home=Path(home)))
conf = {"spark.ui.enabled": "false", "spark.driver.extraJavaOptions": f"-Xss{stack}"}
spark_als.configure(SparkSettings(master="local[2]", conf=conf, checkpoint_interval=interval or 10_000))
spark_als.session()
t0 = time.perf_counter()
try:
    create("als", engine="spark", iterations=sweeps).fit(data)
    print(f"RESULT {time.perf_counter() - t0:.1f} s")
except Exception as err:
    print("RESULT failed: " + ("StackOverflowError" if "StackOverflow" in repr(err) else str(err).splitlines()[0]))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, default=Path(".tastebud-test"), help="home whose cache has ml-100k")
    parser.add_argument("--stacks", nargs="+", default=["1m", "512k"], help="JVM -Xss values")
    parser.add_argument("--intervals", type=int, nargs="+", default=[0, 5], help="checkpoint intervals (0: none)")
    parser.add_argument("--sweeps", type=int, default=15, help="ALS sweeps (iterations)")
    args = parser.parse_args()
    rows = []
    for stack in args.stacks:
        for interval in args.intervals:
            t0 = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-c", CHILD, str(args.home), stack, str(interval), str(args.sweeps)],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            got = lines[-1].removeprefix("RESULT ") if lines else f"no result (exit {proc.returncode})"
            if not lines and "StackOverflowError" in proc.stdout + proc.stderr:
                got = "failed: StackOverflowError, driver JVM gone"
            rows.append((stack, interval or "none", got))
            print(f"stack {stack}, checkpoints {interval or 'none'}: {got} ({time.perf_counter() - t0:.0f} s)")
    print(f"\n| thread stack | checkpoint interval | fit of {args.sweeps} sweeps |\n|---|---|---|")
    for stack, interval, got in rows:
        print(f"| {stack} | {interval} | {got} |")


if __name__ == "__main__":
    main()
