"""Slow scoring leaves the event loop: ``/health`` answers while slow ``/recommend`` requests are in flight."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tastebud.serving.engine import Engine

from .test_server import free_port

SLOW_SERVER = Path(__file__).with_name("_slow_server.py")
SLOW_S = 1.2


class SlowServer:
    """``_slow_server.py``: the ALS bundle served with every personal scoring call slowed by ``SLOW_S``."""

    def __init__(self, tmp: Path, bundle: Path, offload_ms: float) -> None:
        aliases = tmp / "aliases.json"
        aliases.write_text(json.dumps({"champion": 1}))
        self.port = free_port()
        cfg = {"home": str(tmp / "home"), "port": self.port, "aliases_file": str(aliases), "bundle": str(bundle),
               "slow_s": SLOW_S, "offload_ms": offload_ms}  # fmt: skip
        (tmp / "slow.json").write_text(json.dumps(cfg))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self.proc = subprocess.Popen([sys.executable, str(SLOW_SERVER), str(tmp / "slow.json")], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited: {self.stop()}")
            try:
                if httpx.get(f"{self.url}/health/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"server not ready in time: {self.stop()}")

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.stdout.read().decode() if self.proc.stdout else ""


def health_under_slow_requests(url: str, users: list[str]) -> tuple[list[float], list[int]]:
    """Seconds of sequential ``/health`` probes while ``len(users)`` slow ``/recommend`` requests are in flight."""
    statuses: list[int] = []

    def slow(user: str) -> None:
        statuses.append(httpx.get(f"{url}/recommend/{user}?k=5", timeout=30).status_code)

    threads = [threading.Thread(target=slow, args=(u,)) for u in users]
    with httpx.Client(base_url=url, timeout=30) as client:
        client.get("/health")  # the probe's connection is open before the slow requests start
        for t in threads:
            t.start()
        time.sleep(0.15)  # the slow requests are in the server
        latencies = []
        for _ in range(5):
            t0 = time.perf_counter()
            assert client.get("/health").status_code == 200
            latencies.append(time.perf_counter() - t0)
    for t in threads:
        t.join(30)
    return latencies, statuses


@pytest.fixture
def users(bundles: dict[str, Path]) -> list[str]:
    from tastebud.registry.bundle import load_bundle

    return [str(u) for u in load_bundle(bundles["als"]).model.users_.ids[:4].tolist()]


@pytest.mark.slow
def test_health_answers_while_slow_recommends_are_in_flight(
    tmp_path: Path, bundles: dict[str, Path], users: list[str]
) -> None:
    server = SlowServer(tmp_path, bundles["als"], offload_ms=1.0)
    try:
        latencies, statuses = health_under_slow_requests(server.url, users)
    finally:
        out = server.stop()
    assert statuses == [200] * len(users), out
    # Scoring on the loop made a probe wait for at least one whole slow request (SLOW_S; about SLOW_S x 4 for the
    # first); the bound leaves room for a loaded CI machine without letting that through.
    assert max(latencies) < SLOW_S * 0.6, (latencies, out)


@pytest.mark.slow
def test_without_offload_health_waits_for_slow_scoring(
    tmp_path: Path, bundles: dict[str, Path], users: list[str]
) -> None:
    """The check above measures something: with scoring kept on the loop, /health waits for it."""
    server = SlowServer(tmp_path, bundles["als"], offload_ms=1e9)
    try:
        latencies, statuses = health_under_slow_requests(server.url, users[:2])
    finally:
        out = server.stop()
    assert statuses == [200, 200], out
    assert max(latencies) >= SLOW_S * 0.9, (latencies, out)


def test_engine_calibration_measures_each_kind(bundles: dict[str, Path]) -> None:
    from tastebud.registry.bundle import load_bundle

    bundle = load_bundle(bundles["als"])
    engine = Engine(bundle.model, dict(bundle.fallback), bundle.item_meta)
    cost = engine.calibrate()
    assert set(cost) == {"recommend", "similar", "popular"} and all(0 < v < 1000 for v in cost.values())
    assert engine.cost_ms == cost
