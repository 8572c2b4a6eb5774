"""Small helpers shared by the benchmark scripts: timing, child-process memory, load, tables, RESULTS.md.

Scripts in ``bench/`` run as ``python bench/<script>.py``, so this module is imported as ``_common``.
"""

from __future__ import annotations

import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

#: ``bench/RESULTS.md``, where the scripts' tables are recorded.
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def time_call(fn: Callable[[], Any]) -> float:
    """Wall-clock seconds of one call of ``fn``."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def alternate(fns: Mapping[str, Callable[[], Any]], repeats: int, *, warmup: bool = True) -> dict[str, list[float]]:
    """Time each of ``fns`` ``repeats`` times, in turns (a, b, a, b ...), after one untimed warm-up each.

    Alternating spreads slow phases of a shared machine over every contender instead of one of them.

    Returns:
        name -> the seconds of every timed run, in order.
    """
    if warmup:
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(time_call(fn))
    return times


def median(values: Sequence[float]) -> float:
    """Median of ``values``."""
    return float(statistics.median(values))


def load_average() -> float:
    """The one-minute load average of this machine."""
    return os.getloadavg()[0]


def wait_for_quiet(threshold: float = 1.5, max_wait: float = 600.0, step: float = 15.0) -> float:
    """Sleep in steps of ``step`` seconds until the 1-minute load drops below ``threshold``.

    Returns:
        The load average when the wait ended.
    """
    deadline = time.monotonic() + max_wait
    load = load_average()
    while load >= threshold and time.monotonic() < deadline:
        print(f"  load {load:.2f} >= {threshold}: waiting", file=sys.stderr, flush=True)
        time.sleep(step)
        load = load_average()
    return load


def run_child(argv: Sequence[str]) -> tuple[str, float]:
    """Run a child process to completion; its stdout and the ``ru_maxrss`` of ``os.wait4`` in MiB.

    On Linux that ``ru_maxrss`` is at least the parent's resident size when it forked (the kernel carries
    the pre-``exec`` high-water mark over), so a big parent inflates it: children that measure memory
    should report :func:`peak_rss_mib` of their own instead. Output goes through temporary files, so the
    child never blocks on a full pipe while we wait.

    Raises:
        RuntimeError: the child exited non-zero (the end of its stderr is included).
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(list(argv), stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here; tell Popen so it does not wait
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode:
        raise RuntimeError(f"{shlex.join(argv)} exited with {proc.returncode}:\n{stderr[-4000:]}")
    # ru_maxrss is in KiB on Linux
    return stdout, usage.ru_maxrss / 1024


def peak_rss_mib() -> float:
    """Peak resident memory of this process since its ``exec``, in MiB (``VmHWM`` of ``/proc/self/status``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("/proc/self/status has no VmHWM line (not Linux?)")


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table under a bold title; floats get 4 significant figures."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    lines = [f"**{title}**", "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def median_rows(values: Mapping[str, Sequence[float]]) -> list[list[str]]:
    """Table rows of per-round figures: each name, the median of its values (one decimal) and every value."""
    return [[name, f"{statistics.median(v):.1f}", ", ".join(f"{x:.0f}" for x in v)] for name, v in values.items()]


def append_results(text: str, path: Path = RESULTS) -> None:
    """Append ``text`` to ``path`` in one write, re-reading the file just before (others append too)."""
    current = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n"
    if current and not current.endswith("\n"):
        current += "\n"
    path.write_text(current + "\n" + text.rstrip("\n") + "\n", encoding="utf-8")


def machine_note() -> str:
    """One line about the machine: CPU count, load average and Python version."""
    one, five, fifteen = os.getloadavg()
    return (
        f"{os.cpu_count()} CPUs, load average {one:.2f} / {five:.2f} / {fifteen:.2f} (1/5/15 min), "
        f"Python {sys.version.split()[0]}"
    )
