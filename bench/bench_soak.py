"""Soak and hot switches: a fixed request and event rate against a live ``tastebud serve``, memory sampled.

Run (from the repository root), against a home whose registry serves an ML-100K model as ``champion``:

- ``.venv/bin/python bench/bench_soak.py soak [--minutes 10] [--rps 100] [--eps 10] [--record]``: ``tastebud
  serve --workers 2`` on the home; an open-loop client sends ``--rps`` requests per second (80 % ``GET
  /recommend/{known user}``, 10 % an unknown user, 10 % ``GET /similar/{item}``) and ``--eps`` single-event ``POST
  /events`` per second (fresh event ids, known users and items) for ``--minutes``. Every 5 s the resident memory
  (VmRSS) of the serving processes is read from ``/proc``. Reported: memory at start (after a warm-up of a tenth
  of the run, at least 30 s), middle and end, the least-squares slope after the warm-up, errors, and latency
  percentiles per endpoint.
- ``.venv/bin/python bench/bench_soak.py switch [--switches 50] [--record]``: the same load while the
  ``champion`` alias flips between versions 1 and 2 ``--switches`` times; after each switch (every worker serves
  the new version: the summed ``tastebud_serving_model_switches_total`` says so) the memory is read. Reported:
  memory before the first switch, after 10, 25 and the last, the slope per switch, errors and latency.

A home for it: ``tastebud --home H train -d ml-100k -m als --name movielens-100k`` (twice, ``--seed 1`` the
second time) and ``tastebud --home H models promote movielens-100k 1``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import append_results, machine_note, table


# ---------------------------------------------------------------------------------------------- server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Serve:
    """``tastebud serve --workers N`` over ``home`` in its own process group, stopped with SIGINT."""

    def __init__(self, home: Path, model_name: str, workers: int, log: Path) -> None:
        self.home, self.model_name, self.workers, self.log = home, model_name, workers, log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Serve:
        env = {**os.environ, "TASTEBUD_HOME": str(self.home), "TASTEBUD_SERVING__WATCH_INTERVAL_S": "0.5"}
        env.pop("MLFLOW_TRACKING_URI", None)
        argv = [sys.executable, "-m", "tastebud.cli", "serve", "--port", str(self.port), "--workers",
                str(self.workers), "--model-name", self.model_name]  # fmt: skip
        self.proc = subprocess.Popen(argv, env=env, stdout=self.log.open("ab"), stderr=subprocess.STDOUT,
                                     start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + 180
        ok = 0
        while ok < 10 * self.workers:  # many fresh connections in a row: every worker is ready
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError(f"server not ready; see {self.log}")
            try:
                good = httpx.get(f"{self.url}/health/ready", timeout=2).status_code == 200
            except httpx.HTTPError:
                good = False
            ok = ok + 1 if good else 0
            time.sleep(0.02 if good else 0.3)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)

    def rss_mib(self) -> dict[int, float]:
        """VmRSS in MiB of the supervisor and every process below it, by pid."""
        assert self.proc is not None
        return {pid: _rss(pid) for pid in _tree(self.proc.pid)}

    def switches(self, trigger: str = "watcher") -> float:
        """``tastebud_serving_model_switches_total{outcome=success, trigger}`` summed over the workers."""
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        return sum(
            s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name == "tastebud_serving_model_switches_total"
            and s.labels.get("outcome") == "success" and s.labels.get("trigger") == trigger
        )  # fmt: skip


def _tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def _rss(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


# ---------------------------------------------------------------------------------------------- load
class Load:
    """Open-loop requests at ``rps`` and events at ``eps`` from an asyncio loop in a background thread."""

    def __init__(self, url: str, users: list[str], items: list[str], rps: float, eps: float, seed: int = 1) -> None:
        self.url, self.users, self.items, self.rps, self.eps = url, users, items, rps, eps
        self.rng = random.Random(seed)
        self.latency: dict[str, list[float]] = {"recommend": [], "recommend_unknown": [], "similar": [], "events": []}
        self.errors: dict[str, int] = dict.fromkeys(self.latency, 0)
        self.error_samples: list[str] = []
        self.late = 0  # sends more than 100 ms behind schedule (the client could not keep the rate)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.accepted_events = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)

    def reset(self) -> None:
        for v in self.latency.values():
            v.clear()
        self.errors = dict.fromkeys(self.latency, 0)

    async def _main(self) -> None:
        # idle connections closed before uvicorn closes them (its keep-alive timeout is 5 s): no reuse race
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64, keepalive_expiry=3.0)
        async with httpx.AsyncClient(base_url=self.url, timeout=30, limits=limits) as client:
            tasks: set[asyncio.Task[None]] = set()
            await asyncio.gather(self._pace(client, tasks, self.rps, self._request),
                                 self._pace(client, tasks, self.eps, self._event))  # fmt: skip
            if tasks:
                await asyncio.wait(tasks, timeout=30)

    async def _pace(self, client: httpx.AsyncClient, tasks: set[asyncio.Task[None]], rate: float, fn: Any) -> None:
        if rate <= 0:
            return
        start, i = time.perf_counter(), 0
        while not self._stop.is_set():
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.1:
                self.late += 1
            task = asyncio.create_task(fn(client))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1

    async def _request(self, client: httpx.AsyncClient) -> None:
        r = self.rng.random()
        if r < 0.8:
            kind, path = "recommend", f"/recommend/{self.rng.choice(self.users)}"
        elif r < 0.9:
            kind, path = "recommend_unknown", f"/recommend/nobody-{self.rng.randrange(10**6)}"
        else:
            kind, path = "similar", f"/similar/{self.rng.choice(self.items)}"
        await self._timed(kind, client.get(path))

    async def _event(self, client: httpx.AsyncClient) -> None:
        event = {"event_id": uuid.uuid4().hex, "user_id": self.rng.choice(self.users),
                 "item_id": self.rng.choice(self.items), "rating": float(self.rng.randint(1, 5))}  # fmt: skip
        await self._timed("events", client.post("/events", json=[event]))

    async def _timed(self, kind: str, call: Any) -> None:
        t0 = time.perf_counter()
        try:
            resp = await call
            ok = resp.status_code == 200
            if ok and kind == "events":
                self.accepted_events += int(resp.json().get("accepted", 0))
            detail = f"{kind} {resp.status_code} {resp.text[:200]}"
        except httpx.HTTPError as err:
            ok, detail = False, f"{kind} {type(err).__name__}: {err}"
        self.latency[kind].append((time.perf_counter() - t0) * 1000)
        if not ok:
            self.errors[kind] += 1
            if len(self.error_samples) < 10:
                self.error_samples.append(detail)


def known_ids(home: Path, model_name: str) -> tuple[list[str], list[str]]:
    from tastebud.config import build_settings
    from tastebud.registry import ModelRegistry, load_bundle

    registry = ModelRegistry(build_settings(home=home))
    bundle = load_bundle(registry.bundle_path(registry.resolve(model_name, "champion")))
    return ([str(u) for u in bundle.model.users_.ids.tolist()], [str(i) for i in bundle.model.items_.ids.tolist()])


# ---------------------------------------------------------------------------------------------- reports
def slope_per_unit(xs: list[float], ys: list[float]) -> float:
    return float(np.polyfit(xs, ys, 1)[0]) if len(xs) >= 2 else float("nan")


def latency_rows(load: Load) -> list[list[Any]]:
    rows = []
    for kind, values in load.latency.items():
        if values:
            p50, p95, p99 = np.percentile(values, [50, 95, 99])
            rows.append([kind, len(values), load.errors[kind], f"{p50:.2f}", f"{p95:.2f}", f"{p99:.2f}",
                         f"{max(values):.1f}"])  # fmt: skip
    return rows


LAT_HEADERS = ["endpoint", "requests", "errors", "p50 ms", "p95 ms", "p99 ms", "max ms"]


def bench_soak(args: argparse.Namespace) -> str:
    users, items = known_ids(args.home, args.model_name)
    log = Path(f"/tmp/tastebud-bench-soak-{os.getpid()}.log")
    duration = args.minutes * 60.0
    warmup = max(30.0, duration / 10) if duration >= 60 else duration / 4
    samples: list[tuple[float, float, dict[int, float]]] = []  # (t, total MiB, per pid)
    with Serve(args.home, args.model_name, args.workers, log) as server:
        load = Load(server.url, users, items, args.rps, args.eps)
        t0 = time.monotonic()
        load.start()
        while (t := time.monotonic() - t0) < duration:
            rss = server.rss_mib()
            samples.append((t, sum(rss.values()), rss))
            print(f"t={t:6.0f} s  RSS {sum(rss.values()):8.1f} MiB  ({len(rss)} processes)  "
                  f"requests {sum(map(len, load.latency.values()))}  errors {sum(load.errors.values())}",
                  flush=True)  # fmt: skip
            time.sleep(min(args.sample_s, max(0.0, duration - t)))
        load.stop()
        rss = server.rss_mib()
        samples.append((time.monotonic() - t0, sum(rss.values()), rss))
        log_errors = _log_errors(log)
    after = [(t, m) for t, m, _ in samples if t >= warmup]
    start, end = after[0], after[-1]
    middle = min(after, key=lambda s: abs(s[0] - (start[0] + end[0]) / 2))
    slope = slope_per_unit([t / 60 for t, _ in after], [m for _, m in after])
    workers = sorted(samples[-1][2].items())
    mem_rows = [["start (after warm-up)", f"{start[0]:.0f}", f"{start[1]:.1f}"],
                ["middle", f"{middle[0]:.0f}", f"{middle[1]:.1f}"],
                ["end", f"{end[0]:.0f}", f"{end[1]:.1f}"]]  # fmt: skip
    title = (f"Soak: `tastebud serve --workers {args.workers}` (ML-100K ALS champion), {args.minutes:g} min at "
             f"{args.rps:g} requests/s + {args.eps:g} events/s (open loop), RSS of all {len(workers)} server "
             f"processes every {args.sample_s:g} s")  # fmt: skip
    text = (
        table(title, ["memory", "t (s)", "RSS MiB (all processes)"], mem_rows)
        + f"\nSlope after the warm-up ({warmup:.0f} s): **{slope:+.2f} MiB/min** "
        + f"({end[1] - start[1]:+.1f} MiB from start to end); per process at the end: "
        + ", ".join(f"{m:.0f}" for _, m in workers)
        + " MiB. "
        + f"Events accepted: {load.accepted_events:,}; sends more than 100 ms behind schedule: {load.late}; "
        + f"ERROR lines in the server log: {log_errors}.\n\n"
        + table("Latency over the whole soak (client side, loopback)", LAT_HEADERS, latency_rows(load))
        + (f"\nFirst errors: {load.error_samples[:3]}\n" if load.error_samples else "")
        + f"\nCommand: `.venv/bin/python bench/bench_soak.py soak --minutes {args.minutes:g} --rps {args.rps:g} "
        + f"--eps {args.eps:g}`. Machine: {machine_note()}.\n"
    )
    return text


def bench_switch(args: argparse.Namespace) -> str:
    from tastebud.config import build_settings
    from tastebud.registry import ModelRegistry

    users, items = known_ids(args.home, args.model_name)
    registry = ModelRegistry(build_settings(home=args.home))
    start_version = registry.get_alias(args.model_name, "champion")
    log = Path(f"/tmp/tastebud-bench-switch-{os.getpid()}.log")
    points: list[tuple[int, float, float]] = []  # (switch, RSS MiB, seconds until every worker switched)
    try:
        with Serve(args.home, args.model_name, args.workers, log) as server:
            load = Load(server.url, users, items, args.rps, args.eps)
            load.start()
            time.sleep(args.warmup_s)
            points.append((0, sum(server.rss_mib().values()), 0.0))
            load.reset()
            base = server.switches()
            for n in range(1, args.switches + 1):
                target = 2 if n % 2 else 1
                t0 = time.monotonic()
                registry.set_alias(args.model_name, "champion", target)
                while server.switches() < base + n * args.workers:
                    if time.monotonic() - t0 > 60:
                        raise RuntimeError(f"switch {n} not done in 60 s; see {log}")
                    time.sleep(0.05)
                took = time.monotonic() - t0
                time.sleep(args.gap_s)
                points.append((n, sum(server.rss_mib().values()), took))
                print(f"switch {n:3d} -> v{target}: {took:.2f} s, RSS {points[-1][1]:.1f} MiB, "
                      f"errors {sum(load.errors.values())}", flush=True)  # fmt: skip
            load.stop()
            log_errors = _log_errors(log)
    finally:
        if start_version is not None:
            registry.set_alias(args.model_name, "champion", start_version)
    slope = slope_per_unit([p[0] for p in points[1:]], [p[1] for p in points[1:]])
    pick = [p for p in points if p[0] in (0, 1, 10, 25, args.switches)]
    rows = [[p[0], f"{p[1]:.1f}", f"{p[1] - points[0][1]:+.1f}"] for p in pick]
    times = [p[2] for p in points[1:]]
    title = (f"{args.switches} hot switches under load: `tastebud serve --workers {args.workers}`, the champion "
             f"alias flipped between two ML-100K ALS versions (watcher, 0.5 s poll) while {args.rps:g} requests/s + "
             f"{args.eps:g} events/s run")  # fmt: skip
    return (
        table(title, ["after switch", "RSS MiB (all processes)", "vs before the first"], rows)
        + f"\nSlope over switches 1-{args.switches}: **{slope:+.3f} MiB per switch**; alias move to every worker "
        + f"serving it: median {statistics.median(times):.2f} s, max {max(times):.2f} s; "
        + f"ERROR lines in the server log: {log_errors}.\n\n"
        + table("Latency during the switches (client side)", LAT_HEADERS, latency_rows(load))
        + (f"\nFirst errors: {load.error_samples[:3]}\n" if load.error_samples else "")
        + f"\nCommand: `.venv/bin/python bench/bench_soak.py switch --switches {args.switches}`. "
        + f"Machine: {machine_note()}.\n"
    )


def _log_errors(log: Path) -> int:
    return sum(1 for line in log.read_text(errors="replace").splitlines() if "ERROR" in line or "Traceback" in line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=("soak", "switch"))
    parser.add_argument("--home", type=Path, default=Path("/tmp/tbsoak/home"))
    parser.add_argument("--model-name", default="movielens-100k")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rps", type=float, default=30.0, help="requests per second")
    parser.add_argument("--eps", type=float, default=3.0, help="events per second")
    parser.add_argument("--sample-s", type=float, default=5.0, help="seconds between memory samples")
    parser.add_argument("--switches", type=int, default=50)
    parser.add_argument("--warmup-s", type=float, default=20.0, help="switch: load before the first switch")
    parser.add_argument("--gap-s", type=float, default=1.0, help="switch: load between switches")
    parser.add_argument("--record", action="store_true", help="append the tables to bench/RESULTS.md")
    args = parser.parse_args()
    text = bench_soak(args) if args.part == "soak" else bench_switch(args)
    print(text)
    if args.record:
        append_results(text)


if __name__ == "__main__":
    main()
