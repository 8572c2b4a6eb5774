"""The prod topology of deploy/docker-compose.yml as plain processes: nothing lost, both replicas answer alike.

Started by the test, as the compose file starts them: PostgreSQL (the one store), a Kafka-compatible broker (Tansu),
an MLflow server with a proxied artifact store, a model trained and registered there by ``tastebud train`` and
promoted by ``tastebud models promote``, two ``tastebud serve`` replicas (each its own port and home, API keys
required) and the ingest consumer (``tastebud stream consume``). The test posts events to either replica and
produces them to Kafka (redeliveries included), then checks that both replicas give the same lists for the same
users, before and after the events are folded in; that every accepted event is in PostgreSQL exactly once; and
that every served request has its request-log row there. Runtime: 113 s measured on 2 cores at a load
average of 20 (most of it starting the servers and the two CLI runs).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from live_server import ServerProcess
from mlflow_server import running_mlflow_server
from servers import Broker, TempPostgres, free_port, pg_bin_dir, start_broker

pytestmark = [pytest.mark.slow, pytest.mark.integration]

MODEL = "stack"
API_KEY = "stack-test-key"
KEYS = json.dumps({hashlib.sha256(API_KEY.encode()).hexdigest(): ["read", "write-events"]})
AUTH = {"Authorization": f"Bearer {API_KEY}"}
NOW = int(time.time()) - 60


@dataclass
class Stack:
    """The running topology."""

    store_url: str
    broker: Broker
    tracking_uri: str
    replicas: list[ServerProcess]
    consumer: subprocess.Popen[bytes]
    consumer_log: Path
    users: list[str]
    items: list[str]


def tastebud(home: Path, env: dict[str, str], *args: str, timeout: float = 240) -> str:
    """Run one ``tastebud`` command (a child process, as an operator would) and return its output."""
    result = subprocess.run(
        [sys.executable, "-m", "tastebud.cli", "--home", str(home), *args],
        env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert result.returncode == 0, f"tastebud {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def _call(fn: Callable[[], str]) -> str | BaseException:
    try:
        return fn()
    except BaseException as err:  # handed to the test's thread
        return err


def wait_for(check: Callable[[], bool], timeout: float, what: str | Callable[[], str]) -> None:
    """Poll ``check`` until true; fail after ``timeout`` s saying ``what`` (a callable: evaluated at failure)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout} s: {what() if callable(what) else what}")
        time.sleep(0.1)


def in_parallel(calls: list[Callable[[], object]]) -> None:
    """Run the calls in threads and wait for all (starting and stopping processes: mostly waiting)."""
    threads = [threading.Thread(target=call) for call in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the consumer's clean stop), then SIGKILL, by pid: only what this test started."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    bin_dir = pg_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries not found (scripts/ensure-postgres.sh installs them)")
    root = tmp_path_factory.mktemp("stack")
    with contextlib.ExitStack() as stop:
        # PostgreSQL starts in the background while the broker, the MLflow server and training (which needs no
        # store) go ahead: the topology's start-up is most of this test's time.
        pg = TempPostgres(bin_dir)
        stop.callback(pg.stop)
        pg_started: list[str | BaseException] = []
        pg_thread = threading.Thread(target=lambda: pg_started.append(_call(pg.start)))
        pg_thread.start()
        stop.callback(pg_thread.join)
        broker = start_broker(free_port(), root)
        stop.callback(broker.stop)
        tracking_uri = stop.enter_context(running_mlflow_server(root / "mlflow"))
        # What every Tastebud process of the compose file's prod profile shares: the registry, broker and store.
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("TASTEBUD_") and k != "MLFLOW_TRACKING_URI"},
            "TASTEBUD_REGISTRY__TRACKING_URI": tracking_uri,
            "TASTEBUD_STREAM__BOOTSTRAP_SERVERS": broker.bootstrap,
            "TASTEBUD_SERVING__MODEL_NAME": MODEL,
        }

        pg_thread.join()
        if isinstance(pg_started[0], BaseException):
            raise pg_started[0]
        store_url = env["TASTEBUD_STORE__URL"] = pg_started[0]

        # The ingest consumer starts while the model trains; the API replicas start together once there is a
        # champion (the store's migrations serialise concurrent starts); each replica has its own home (its own
        # bundle download), as each container has.
        consumer_log = root / "consumer.log"
        metrics_port = free_port()
        with consumer_log.open("wb") as log:
            consumer = subprocess.Popen(
                [sys.executable, "-m", "tastebud.cli", "--home", str(root / "consumer-home"), "stream", "consume",
                 "--metrics-port", str(metrics_port)],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        stop.callback(stop_process, consumer)

        # A model trained, registered (bundle uploaded through the server's artifact proxy) and promoted.
        from tastebud.data.synthetic import synthetic_frames

        frame, _ = synthetic_frames(300, 120, 6000, seed=3)
        data = root / "ratings.csv"
        frame.write_csv(data)
        trainer = root / "trainer-home"
        out = tastebud(trainer, env, "train", "--dataset", str(data), "--model", "als", "--name", MODEL,
                       "--param", "factors=16", "--param", "iterations=5")  # fmt: skip
        assert f"registered {MODEL} version 1" in out, out
        tastebud(trainer, env, "models", "promote", MODEL, "1", "--actor", "stack-test")

        replica_env = {**env, "TASTEBUD_AUTH__REQUIRED": "true", "TASTEBUD_AUTH__KEYS": KEYS}
        replicas = [ServerProcess(root / f"replica-{n}", MODEL, workers=1, env=replica_env) for n in ("a", "b")]
        for replica in replicas:
            replica.env = {**replica_env, "TASTEBUD_HOME": str(replica.home)}  # nothing of the test's environment
        stop.callback(in_parallel, [r.stop for r in replicas])
        errors: list[BaseException] = []

        def start(replica: ServerProcess) -> None:
            try:
                replica.start(timeout=150)
            except BaseException as err:  # reported below, in the test's thread
                errors.append(err)

        in_parallel([lambda r=r: start(r) for r in replicas])
        if errors:
            raise errors[0]

        def consumer_up() -> bool:
            assert consumer.poll() is None, consumer_log.read_text(errors="replace")
            try:
                return httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(consumer_up, 60, "the consumer's metrics port")
        users = [str(u) for u in frame["user_id"].unique(maintain_order=True).to_list()]
        items = [str(i) for i in frame["item_id"].unique(maintain_order=True).to_list()]
        yield Stack(store_url, broker, tracking_uri, replicas, consumer, consumer_log, users, items)


def recommend(replica: ServerProcess, user: str) -> dict[str, Any]:
    response = replica.get(f"/recommend/{user}?k=10", headers=AUTH)
    assert response.status_code == 200, response.text
    return response.json()


def items_of(answer: dict[str, Any]) -> list[str]:
    return [it["item_id"] for it in answer["recommendations"]]


def rating(event_id: str, user: str, item: str, n: int) -> dict[str, Any]:
    return {"event_id": event_id, "user_id": user, "item_id": item, "rating": 5, "timestamp": NOW + n}


def test_replicas_share_one_state_and_nothing_is_lost(stack: Stack) -> None:
    a, b = stack.replicas
    served: set[str] = set()  # request ids of every /recommend answered

    def both(user: str) -> tuple[dict[str, Any], dict[str, Any]]:
        ra, rb = recommend(a, user), recommend(b, user)
        served.update({ra["provenance"]["request_id"], rb["provenance"]["request_id"]})
        return ra, rb

    # 1. Before any event: the same model version and the same lists on both replicas.
    health = [r.get("/health").json() for r in stack.replicas]
    assert [h["model"]["version"] for h in health] == [1, 1] and health[0]["model"]["name"] == MODEL, health
    known = stack.users[:8]
    for user in known:
        ra, rb = both(user)
        assert not ra["is_fallback"] and items_of(ra) == items_of(rb), (user, ra, rb)

    # 2. Events by HTTP to either replica and by Kafka (with redeliveries), for new and known users.
    http_a = [rating(f"stack-a{n}", "stack-new-a", stack.items[n], n) for n in range(3)]
    http_b = [rating(f"stack-b{n}", known[0], stack.items[-1 - n], n) for n in range(2)]
    r = a.post("/events", json=http_a, headers=AUTH)
    assert r.status_code == 200 and r.json()["accepted"] == 3, r.text
    r = b.post("/events", json=http_b, headers=AUTH)
    assert r.status_code == 200 and r.json()["accepted"] == 2, r.text
    r = b.post("/events", json=http_a, headers=AUTH)  # a client retry on the other replica: duplicates only
    assert r.status_code == 200 and r.json()["accepted"] == 0 and r.json()["duplicates"] == 3, r.text

    from tastebud.stream.handlers import Event
    from tastebud.stream.producer import EventProducer

    kafka = [Event(f"stack-k{n}", "stack-new-k", stack.items[10 + n], "rating", 5.0, 5.0, NOW + n, "kafka")
             for n in range(4)]  # fmt: skip
    kafka += [
        Event(f"stack-k9{n}", known[1], stack.items[20 + n], "play", None, 1.0, NOW + n, "kafka") for n in range(2)
    ]
    producer = EventProducer(stack.broker.bootstrap)
    producer.send_events(kafka)
    producer.send_events(kafka[:3])  # a producer retry: the same ids again
    assert producer.flush(10) == 0 and not producer.take_failures()
    producer.close()

    expected_overlay = {"stack-new-a": 3, known[0]: 2, "stack-new-k": 4, known[1]: 2}

    applied: dict[tuple[str, str], int] = {}  # (replica, user) -> realtime_events in its latest answer

    def folded_in_everywhere() -> bool:
        for name, replica in zip("ab", stack.replicas, strict=True):
            for user in expected_overlay:
                applied[name, user] = recommend(replica, user).get("realtime_events", 0)
        return all(applied[name, user] == n for name in "ab" for user, n in expected_overlay.items())

    wait_for(
        folded_in_everywhere,
        30,
        lambda: (
            f"both replicas apply every event: expected {expected_overlay} on each, got {applied}; consumer: "
            f"{stack.consumer_log.read_text(errors='replace')[-1500:]}"
        ),
    )

    # 3. After the events: both replicas answer alike, personalised from the events.
    for user in [*expected_overlay, *known[2:]]:
        ra, rb = both(user)
        assert items_of(ra) == items_of(rb), (user, items_of(ra), items_of(rb))
        assert ra.get("realtime_events", 0) == rb.get("realtime_events", 0) == expected_overlay.get(user, 0)
        if user in ("stack-new-a", "stack-new-k"):
            assert not ra["is_fallback"], ra  # folded in: no longer an unknown user
    liked = {e["item_id"] for e in http_a}
    assert not liked & set(items_of(recommend(b, "stack-new-a")))  # what they rated is not recommended back

    # 4. Nothing lost, nothing twice: every accepted event is in PostgreSQL exactly once...
    accepted = {e["event_id"] for e in [*http_a, *http_b]} | {e.event_id for e in kafka}
    engine = sa.create_engine(stack.store_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT event_id, count(*) FROM events WHERE event_id LIKE 'stack-%' GROUP BY event_id")
            ).all()
        assert {event_id: n for event_id, n in rows} == dict.fromkeys(accepted, 1)

        # ...and every request served has its request-log row (through Kafka and the consumer in this mode).
        def logged() -> set[str]:
            with engine.connect() as conn:
                found = conn.execute(
                    sa.select(sa.column("request_id"))
                    .select_from(sa.table("request_logs"))
                    .where(sa.column("request_id").in_(sorted(served)))
                ).scalars()
                return set(found)

        wait_for(
            lambda: logged() == served,
            30,
            lambda: f"request-log rows of {len(served)} requests: {len(served - logged())} missing",
        )
    finally:
        engine.dispose()
    assert stack.consumer.poll() is None, stack.consumer_log.read_text(errors="replace")[-3000:]
