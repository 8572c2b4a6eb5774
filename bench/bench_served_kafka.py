"""Benchmark of the request log's cost to the serving process: in-process SQLite writer vs Kafka mode.

One app per mode, the same model and requests, driven in the same process through raw ASGI calls (no HTTP client
in the measurement), alternating the modes round by round:

- ``embedded``: the background :class:`RequestLogWriter` writes each record to SQLite in this process;
- ``kafka``: :class:`ServedPublisher` encodes each record (Avro) and hands it to librdkafka, which sends it to a
  Tansu broker (memory storage, started here); the ingest consumer does the SQL write in another process.

Per round and mode: N ``GET /recommend/{user}`` (users drawn uniformly, result cache off: every request scored)
with C concurrent callers, then a drain of the request log (SQLite written / every record acknowledged by the
broker). Reported: the serving process's CPU time per request (``time.process_time``, every thread: the writer
thread, librdkafka's threads), including the drain, and the request rate before the drain; medians over rounds
and the kafka/embedded ratio. The consumer's cost of writing the same records is measured after, apart.

    .venv/bin/python bench/bench_served_kafka.py                       # 943 users, 3,000 requests x 5 rounds
    .venv/bin/python bench/bench_served_kafka.py --requests 2000 --rounds 3 --record
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _common import append_results, machine_note, median, table
from bench_stream import start_tansu
from tastebud.config import build_settings
from tastebud.data.synthetic import generate_synthetic
from tastebud.models import create
from tastebud.registry.bundle import write_bundle
from tastebud.serving import create_app
from tastebud.serving.holder import ModelHolder
from tastebud.store import create_store
from tastebud.store.schema import RequestLogRecord
from tastebud.stream.consumer import EventConsumer
from tastebud.stream.producer import ensure_topics


async def call(app: Any, path: str) -> int:
    """One GET through the ASGI interface; the status."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"k=10", "root_path": "",
        "headers": [(b"host", b"bench")], "client": ("127.0.0.1", 1), "server": ("bench", 80),
    }  # fmt: skip
    status = 0

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def drive(app: Any, users: list[str], n: int, concurrency: int, seed: int) -> None:
    rng = random.Random(seed)
    paths = [f"/recommend/{rng.choice(users)}" for _ in range(n)]
    queue = iter(paths)

    async def worker() -> None:
        for path in queue:
            status = await call(app, path)
            if status != 200:
                raise RuntimeError(f"{path}: status {status}")

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def bench(args: argparse.Namespace, root: Path, bootstrap: str, topic: str) -> dict[str, Any]:
    train = generate_synthetic(args.users, args.items, args.interactions, seed=1)
    model = create("als", factors=64, iterations=5, random_state=0, num_threads=1).fit(train)
    bundle = write_bundle(model, root / "bundle", train=train, fallback={"popular": create("popular").fit(train)},
                          metrics={})  # fmt: skip
    users = [str(u) for u in train.users.ids.tolist()]
    serving = {"model_name": "ml", "watch_interval_s": 0, "result_cache_size": 0}
    apps = {
        "embedded": create_app(build_settings(home=root / "embedded", serving=serving),
                               holder=_holder(bundle), watch=False),
        "kafka": create_app(build_settings(home=root / "kafka", serving=serving,
                                           stream={"bootstrap_servers": bootstrap, "served_topic": topic}),
                            holder=_holder(bundle), watch=False),
    }  # fmt: skip
    cpu: dict[str, list[float]] = {m: [] for m in apps}
    rate: dict[str, list[float]] = {m: [] for m in apps}
    per_record: dict[str, list[float]] = {m: [] for m in apps}
    embedded, kafka = apps["embedded"], apps["kafka"]
    async with embedded.router.lifespan_context(embedded), kafka.router.lifespan_context(kafka):
        for app in apps.values():  # warm-up
            await drive(app, users, 300, args.concurrency, seed=0)
            await asyncio.to_thread(app.state.request_log.flush, 60)
        for r in range(args.rounds):
            for mode in apps if r % 2 == 0 else reversed(list(apps)):
                app = apps[mode]
                c0, t0 = time.process_time(), time.perf_counter()
                await drive(app, users, args.requests, args.concurrency, seed=r + 1)
                t1 = time.perf_counter()
                drained = await asyncio.to_thread(app.state.request_log.flush, 60)
                c1 = time.process_time()
                if drained is False:
                    raise RuntimeError(f"{mode}: the request log did not drain")
                cpu[mode].append((c1 - c0) / args.requests * 1e6)
                rate[mode].append(args.requests / (t1 - t0))
                print(f"round {r} {mode}: {cpu[mode][-1]:.0f} us CPU/request, {rate[mode][-1]:.0f} req/s")
        records = [_record(i) for i in range(args.records)]
        writers = {"embedded": embedded.state.request_log, "kafka": kafka.state.request_log}
        for r in range(args.rounds):
            for mode in writers if r % 2 == 0 else reversed(list(writers)):
                writer = writers[mode]
                fresh = [rec._replace(request_id=f"{rec.request_id}-{r}") for rec in records]
                c0 = time.process_time()
                for rec in fresh:
                    writer.submit(rec)
                if writer.flush(120) is False:
                    raise RuntimeError(f"{mode}: the request log did not drain")
                per_record[mode].append((time.process_time() - c0) / len(fresh) * 1e6)
                print(f"round {r} {mode}: {per_record[mode][-1]:.1f} us CPU/record (log only)")
    return {"cpu": cpu, "rate": rate, "per_record": per_record,
            "total": args.rounds * (args.requests + args.records) + 300}  # fmt: skip


def _record(i: int) -> RequestLogRecord:
    """A request-log record like a /recommend answer of 10 items."""
    now = datetime.now(UTC)
    items = [str(100 + j) for j in range(10)]
    scores = [1.0 - j / 10 for j in range(10)]
    provenance = {"request_id": f"rec-{i}", "model_name": "ml", "model_version": 1, "model_type": "als",
                  "git_sha": "0123456789ab", "data_snapshot_id": "snap-1", "signed": False}  # fmt: skip
    return RequestLogRecord(f"rec-{i}", now, "recommend", str(i % 943), None, "ml", 1, None, items, scores, 0.4, 200,
                            False, None, None, provenance)  # fmt: skip


def _holder(bundle: Path) -> ModelHolder:
    holder = ModelHolder(None, name="ml")
    holder.load_path(bundle, version=1)
    return holder


def consume(bootstrap: str, topic: str, root: Path, expected: int) -> tuple[float, float]:
    """The ingest side: CPU seconds and wall seconds of one consumer writing every served record to SQLite."""
    store = create_store(url=f"sqlite:///{root / 'ingest.db'}")
    store.init_schema()
    consumer = EventConsumer(store, bootstrap, topics=[], served_topic=topic, group_id=f"b-{uuid.uuid4().hex[:6]}",
                             dead_letter_topic=None)  # fmt: skip
    c0, t0 = time.process_time(), time.perf_counter()
    stats = consumer.run(max_messages=expected, max_seconds=300)
    c1, t1 = time.process_time(), time.perf_counter()
    if stats.served_inserted != expected:
        raise RuntimeError(f"consumer wrote {stats.served_inserted} of {expected} records")
    store.close()
    return c1 - c0, t1 - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=943)
    parser.add_argument("--items", type=int, default=1682)
    parser.add_argument("--interactions", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=3000, help="requests per round and mode")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--records", type=int, default=20_000, help="records per round of the log-only section")
    parser.add_argument("--record", action="store_true", help="append the tables to bench/RESULTS.md")
    args = parser.parse_args()
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    root = Path(tempfile.mkdtemp(prefix="bench-served-"))
    load_before = os.getloadavg()[0]
    broker, bootstrap = start_tansu(root)
    try:
        topic = f"served-{uuid.uuid4().hex[:6]}"
        ensure_topics(bootstrap, [topic], partitions=1)
        out = asyncio.run(bench(args, root, bootstrap, topic))
        ingest_cpu, ingest_wall = consume(bootstrap, topic, root, out["total"])
    finally:
        os.kill(broker.pid, signal.SIGKILL)
        broker.wait(timeout=10)
    cpu, rate = out["cpu"], out["rate"]
    rows = [
        [mode, median(cpu[mode]), min(cpu[mode]), max(cpu[mode]), median(rate[mode])] for mode in ("embedded", "kafka")
    ]
    per_record = out["per_record"]
    ratio_log = median(per_record["kafka"]) / median(per_record["embedded"])
    ratio_cpu = median(cpu["kafka"]) / median(cpu["embedded"])
    ratio_rate = median(rate["kafka"]) / median(rate["embedded"])
    text = table(
        f"Request log: serving-process CPU per /recommend, in-process SQLite writer vs Kafka mode "
        f"({args.users} users x {args.items} items, ALS 64 factors, result cache off, {args.requests} requests x "
        f"{args.rounds} rounds per mode, alternating, {args.concurrency} concurrent ASGI callers)",
        ["mode", "CPU µs/request (median)", "min", "max", "requests/s (median)"],
        rows,
    )
    text += "\n" + table(
        f"Request log alone: serving-process CPU per record, {args.records} records submitted then drained, "
        f"{args.rounds} rounds per mode, alternating (same run)",
        ["mode", "CPU µs/record (median)", "min", "max"],
        [[mode, median(per_record[mode]), min(per_record[mode]), max(per_record[mode])] for mode in per_record],
    )
    text += (
        f"\nLog only, Kafka / embedded: CPU per record x{ratio_log:.3f}. "
        f"Kafka mode / embedded: CPU per request x{ratio_cpu:.3f}, request rate x{ratio_rate:.3f}. "
        f"Ingest side (one consumer writing the {out['total']} served records to SQLite, apart): "
        f"{ingest_cpu / out['total'] * 1e6:.0f} µs CPU per record ({ingest_wall:.1f} s wall, group join included). "
        f"Load average before {load_before:.2f}, after {os.getloadavg()[0]:.2f}; {machine_note()}.\n"
    )
    print(text)
    if args.record:
        append_results(text)


if __name__ == "__main__":
    main()
