"""Benchmark of freshness: how long from an event to a ``/recommend`` that reflects it, in every serving process.

Two serving processes (uvicorn, one worker each: what ``--workers 2`` runs, on two ports so that the probe can
choose the process it asks) share one home and store, serve one ALS bundle (synthetic data of ML-100K's shape) and
each run the in-server Kafka consumer against a Tansu broker (in memory) started here, in one consumer group.
Background events for many known users are produced at ``--rate`` events/s; every ``--probe-every`` seconds a probe
event is produced for a brand-new user and a poller asks ``GET /recommend/<user>`` of *every* process every
``--poll-ms`` until each answer is personalised (``is_fallback`` false). The freshness of a probe is the time from
just before it is produced to the moment the last process answers with it: the consumer that stored it applies it
at once, the other process when its event follower next reads the store.

The HTTP path is measured the same way: background ``POST /events`` at the same rate spread over the processes, a
probe is one ``POST /events`` to the first process and the clock runs until both processes answer with it.

    .venv/bin/python bench/bench_freshness.py                     # 30 s per path
    .venv/bin/python bench/bench_freshness.py --seconds 60 --record
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from _common import append_results, machine_note, table


# ---------------------------------------------------------------------- the serving process
def serve(config_path: str) -> None:
    """Child mode: serve the bundle with the in-server consumer (``--serve config.json``)."""
    import uvicorn

    from tastebud.config import build_settings
    from tastebud.serving.app import create_app, limit_blas_threads
    from tastebud.serving.holder import ModelHolder

    cfg = json.loads(Path(config_path).read_text())
    settings = build_settings(
        home=cfg["home"],
        serving={"model_name": "ml", "watch_interval_s": 0, "sparse_history_threshold": 0},
        stream={
            "bootstrap_servers": cfg["bootstrap"],
            "consume_in_server": True,
            "ratings_topic": cfg["topics"]["ratings"],
            "interactions_topic": cfg["topics"]["interactions"],
            "dead_letter_topic": cfg["topics"]["dead_letter"],
            "group_id": cfg["group"],
        },
    )
    limit_blas_threads(1)
    holder = ModelHolder(None, name="ml")
    holder.load_path(Path(cfg["bundle"]), version=1)
    app = create_app(settings, holder=holder, watch=False)
    uvicorn.run(app, host="127.0.0.1", port=cfg["port"], log_level="warning")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_bundle(workdir: Path) -> tuple[Path, list[str], list[str]]:
    """Fit ALS on synthetic data of ML-100K's shape and write its bundle; (path, user ids, item ids)."""
    from tastebud.data.synthetic import generate_synthetic
    from tastebud.models import create
    from tastebud.registry.bundle import write_bundle

    train = generate_synthetic(943, 1682, 100_000, seed=7)
    model = create("als", factors=64, iterations=10, random_state=0).fit(train)
    fallback = {"popular": create("popular").fit(train)}
    path = write_bundle(model, workdir / "als", train=train, fallback=fallback, metrics={})
    return path, [str(u) for u in train.users.ids.tolist()], [str(i) for i in train.items.ids.tolist()]


# ---------------------------------------------------------------------- measuring
class Prober:
    """Polls ``/recommend`` for probe users until personalised and records each probe's delay."""

    def __init__(self, bases: list[str], poll_s: float, timeout_s: float = 30.0) -> None:
        self.bases, self.poll_s, self.timeout_s = bases, poll_s, timeout_s
        self.delays: list[float] = []
        self.missed = 0
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def watch(self, user: str, started: float) -> None:
        """Poll every process for ``user`` in a thread; the delay counts from ``started`` until the last one."""

        def run() -> None:
            import httpx

            waiting = list(self.bases)
            with httpx.Client(timeout=5.0) as client:
                while time.perf_counter() - started < self.timeout_s:
                    for base in list(waiting):
                        body = client.get(f"{base}/recommend/{user}?k=10&explain=false").json()
                        if body.get("is_fallback") is False:
                            waiting.remove(base)
                    if not waiting:
                        with self._lock:
                            self.delays.append(time.perf_counter() - started)
                        return
                    time.sleep(self.poll_s)
            with self._lock:
                self.missed += 1

        t = threading.Thread(target=run, daemon=True)
        t.start()
        self._threads.append(t)

    def join(self) -> None:
        for t in self._threads:
            t.join(self.timeout_s + 5)


def paced(rate: float, seconds: float, step: Callable[[int], None], batch: int = 1) -> int:
    """Call ``step(i)`` so that ``i`` advances at ``rate`` per second for ``seconds``; returns the count."""
    start = time.perf_counter()
    i = 0
    while (elapsed := time.perf_counter() - start) < seconds:
        due = int(elapsed * rate)
        while i < due:
            step(i)
            i += batch
        time.sleep(0.001)
    return i


def event(event_id: str, user: str, item: str, ts: int) -> dict[str, Any]:
    return {"event_id": event_id, "user_id": user, "item_id": item, "rating": 5.0, "timestamp": ts}


def kafka_path(
    args: argparse.Namespace, bases: list[str], bootstrap: str, topics: dict[str, str], users, items
) -> dict:
    from tastebud.stream.handlers import Event
    from tastebud.stream.producer import EventProducer

    producer = EventProducer(bootstrap, ratings_topic=topics["ratings"], interactions_topic=topics["interactions"])
    rng = np.random.default_rng(1)
    ts = int(time.time()) - 10
    tag = uuid.uuid4().hex[:6]

    def send(eid: str, user: str, item: str) -> None:
        producer.send_event(Event(eid, user, item, "rating", 5.0, 5.0, ts, "bench"))

    # warm-up: the consumer joins its group; wait until a first probe comes through
    warm = Prober(bases, args.poll_ms / 1000, timeout_s=120)
    send(f"warm-{tag}", f"warm-{tag}", items[0])
    producer.poll(0)
    warm.watch(f"warm-{tag}", time.perf_counter())
    warm.join()
    if not warm.delays:
        raise RuntimeError("the in-server consumer never picked up the warm-up event")
    prober = Prober(bases, args.poll_ms / 1000)
    every = max(1, int(args.rate * args.probe_every))
    probes = 0

    def step(i: int) -> None:
        nonlocal probes
        if i % every == every - 1:
            user = f"kprobe-{tag}-{probes}"
            probes += 1
            started = time.perf_counter()
            send(f"{user}-e", user, items[int(rng.integers(len(items)))])
            producer.poll(0)
            prober.watch(user, started)
        else:
            send(f"k-{tag}-{i}", users[int(rng.integers(len(users)))], items[int(rng.integers(len(items)))])
        if i % 100 == 0:
            producer.poll(0)

    sent = paced(args.rate, args.seconds, step)
    producer.flush(10)
    prober.join()
    producer.close()
    return {"path": "Kafka (in-server consumer)", "events": sent, "prober": prober}


def http_path(args: argparse.Namespace, bases: list[str], users, items) -> dict:
    import httpx

    rng = np.random.default_rng(2)
    ts = int(time.time()) - 10
    tag = uuid.uuid4().hex[:6]
    prober = Prober(bases, args.poll_ms / 1000)
    background = httpx.Client(timeout=10.0)
    probe_client = httpx.Client(timeout=10.0)
    batch = 20  # background events go in batches, as a client SDK or a proxy would send them
    every = max(batch, int(args.rate * args.probe_every) // batch * batch)
    probes = 0

    def step(i: int) -> None:
        nonlocal probes
        body = [
            event(f"h-{tag}-{i + j}", users[int(rng.integers(len(users)))], items[int(rng.integers(len(items)))], ts)
            for j in range(batch)
        ]
        background.post(f"{bases[(i // batch) % len(bases)]}/events", json=body)
        if i % every == 0:
            user = f"hprobe-{tag}-{probes}"
            probes += 1
            started = time.perf_counter()
            r = probe_client.post(f"{bases[0]}/events", json=[event(f"{user}-e", user, items[0], ts)])
            r.raise_for_status()
            prober.watch(user, started)

    sent = paced(args.rate, args.seconds, step, batch=batch)
    prober.join()
    background.close()
    probe_client.close()
    return {"path": "HTTP (POST /events)", "events": sent, "prober": prober}


def summary_row(result: dict, seconds: float) -> list[Any]:
    prober: Prober = result["prober"]
    d = np.asarray(prober.delays) * 1000
    pct = np.percentile(d, [50, 95, 99]) if len(d) else [float("nan")] * 3
    return [
        result["path"], f"{result['events'] / seconds:,.0f}", len(d), prober.missed,
        f"{pct[0]:.0f}", f"**{pct[1]:.0f}**", f"{pct[2]:.0f}", f"{d.max():.0f}" if len(d) else "-",
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=30.0, help="measuring time per path")
    parser.add_argument("--rate", type=float, default=1000.0, help="background events per second")
    parser.add_argument("--probe-every", type=float, default=0.25, help="seconds between probes")
    parser.add_argument("--poll-ms", type=float, default=5.0, help="poll interval of /recommend, ms")
    parser.add_argument("--workers", type=int, default=2, help="serving processes sharing the store")
    parser.add_argument("--record", action="store_true", help="append the results to bench/RESULTS.md")
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    from bench_stream import start_tansu
    from tastebud.stream.producer import ensure_topics

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        bundle, users, items = build_bundle(workdir)
        tansu, bootstrap = start_tansu(workdir)
        servers: list[subprocess.Popen] = []
        try:
            tag = uuid.uuid4().hex[:8]
            topics = {k: f"{k}-{tag}" for k in ("ratings", "interactions", "dead_letter")}
            ensure_topics(bootstrap, topics.values(), partitions=2)
            bases = []
            for n in range(args.workers):
                port = free_port()
                cfg = {"home": str(workdir / "home"), "bootstrap": bootstrap, "topics": topics,
                       "group": f"serving-{tag}", "bundle": str(bundle), "port": port}  # fmt: skip
                (workdir / f"serve-{n}.json").write_text(json.dumps(cfg))
                config = workdir / f"serve-{n}.json"
                servers.append(subprocess.Popen([sys.executable, __file__, "--serve", str(config)]))
                bases.append(f"http://127.0.0.1:{port}")
            for base in bases:
                wait_ready(base)
            results = [kafka_path(args, bases, bootstrap, topics, users, items), http_path(args, bases, users, items)]
        finally:
            for server in servers:
                if server.poll() is None:
                    os.kill(server.pid, signal.SIGTERM)
                    server.wait(30)
            if tansu.poll() is None:
                os.kill(tansu.pid, signal.SIGKILL)
                tansu.wait(10)
    rows = [summary_row(r, args.seconds) for r in results]
    text = table(
        f"Event to changed /recommend in every one of {args.workers} serving processes (ms), probes for new users "
        "under background load",
        ["path", "background ev/s", "probes", "missed", "p50", "p95", "p99", "max"],
        rows,
    )
    note = (
        f"Command: `.venv/bin/python bench/bench_freshness.py --seconds {args.seconds:g}` (ALS 64 factors on "
        f"synthetic 943 x 1,682 / 100K; {args.workers} serving processes on one SQLite store, each with the "
        f"in-server consumer (one group, poll timeout 50 ms) and the event follower (serving.event_poll_s 0.1 s); "
        f"Tansu in memory; /recommend polled every {args.poll_ms:g} ms; a probe every {args.probe_every:g} s). "
        "Target: p95 < 1 s."
    )
    print(text)
    print(note)
    if args.record:
        append_results(f"## Freshness\n\n{text}\n{note}\n\n{machine_note()}\n")


def wait_ready(base: str, timeout: float = 120.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/health/ready", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"server at {base} not ready after {timeout} s")


if __name__ == "__main__":
    main()
