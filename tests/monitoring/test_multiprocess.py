"""Prometheus multiprocess mode under a real 2-worker uvicorn: every scrape reports the whole server."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tastebud.monitoring.metrics import MULTIPROC_ENV

pytestmark = [pytest.mark.slow, pytest.mark.integration]

SERVER = Path(__file__).with_name("_mp_server.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def popular_count(text: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "tastebud_serving_requests_total" and s.labels.get("route") == "/popular":
                total += s.value
    return total


def loaded(text: str) -> list[float]:
    return [
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "tastebud_serving_model_loaded_bool"
    ]


def test_two_workers_share_one_metrics_view(tmp_path: Path, bundle: Path) -> None:
    metrics_dir = tmp_path / "prom"
    metrics_dir.mkdir()
    port = free_port()
    cfg = {"home": str(tmp_path / "home"), "port": port, "workers": 2, "bundle": str(bundle)}
    (tmp_path / "mp.json").write_text(json.dumps(cfg))
    env = {**os.environ, MULTIPROC_ENV: str(metrics_dir), "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.Popen(
        [sys.executable, str(SERVER), str(tmp_path / "mp.json")], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        ready = 0
        while ready < 10:  # several fresh connections in a row, so that both workers have loaded
            assert time.monotonic() < deadline, "server not ready in time"
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            try:
                ok = httpx.get(f"{url}/health/ready", timeout=2).status_code == 200
            except httpx.HTTPError:
                ok = False
            ready = ready + 1 if ok else 0
            time.sleep(0.05)
        n = 40
        for _ in range(n):  # a new connection each time: the kernel spreads them over the workers
            assert httpx.get(f"{url}/popular?k=3", timeout=5).status_code == 200
        pids = {p.name.split("_")[-1] for p in metrics_dir.glob("*.db")}
        assert len(pids) >= 2, f"expected files of two workers, got {sorted(p.name for p in metrics_dir.iterdir())}"
        for _ in range(8):  # whichever worker answers the scrape, it reports every worker's requests
            text = httpx.get(f"{url}/metrics", timeout=5).text
            assert popular_count(text) == n
            # livemin over both workers: one series, 1 once both have a model
            assert loaded(text) == [1.0]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
