"""The API in a real uvicorn process: hot switches under concurrent load, and draining on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tastebud.store import create_store

pytestmark = [pytest.mark.slow, pytest.mark.integration]

SERVER = Path(__file__).with_name("_server.py")
AUTH = {"Authorization": "Bearer s3cret"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, tmp: Path, bundles: dict[str, Path]) -> None:
        self.home = tmp / "home"
        self.aliases = tmp / "aliases.json"
        self.aliases.write_text(json.dumps({"champion": 1}))
        self.port = free_port()
        cfg = {
            "home": str(self.home), "port": self.port, "aliases_file": str(self.aliases),
            "versions": {"1": str(bundles["als"]), "2": str(bundles["itemknn"]), "3": str(bundles["corrupt"])},
        }  # fmt: skip
        (tmp / "server.json").write_text(json.dumps(cfg))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self.proc = subprocess.Popen(
            [sys.executable, str(SERVER), str(tmp / "server.json")],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited: {self.proc.stdout.read().decode() if self.proc.stdout else ''}")
            try:
                if httpx.get(f"{self.url}/health/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError("server not ready in time")

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.stdout.read().decode() if self.proc.stdout else ""


@pytest.fixture
def server(tmp_path: Path, bundles: dict[str, Path]) -> Iterator[Server]:
    srv = Server(tmp_path, bundles)
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def test_ten_hot_switches_under_load_lose_no_request(server: Server) -> None:
    stop = threading.Event()
    results: list[tuple[int, int | None]] = []
    lock = threading.Lock()

    def hammer(worker: int) -> None:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            i = 0
            while not stop.is_set():
                i += 1
                path = f"/recommend/{worker * 1000 + i % 50}?k=5" if i % 3 else f"/similar/{1 + i % 100}?k=5"
                r = client.get(path)
                version = r.json().get("model", {}).get("version") if r.status_code == 200 else None
                with lock:
                    results.append((r.status_code, version))

    threads = [threading.Thread(target=hammer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as admin:
            for n in range(10):
                time.sleep(0.1)
                r = admin.post("/admin/models/switch", json={"version": 2 if n % 2 == 0 else 1}, headers=AUTH)
                assert r.status_code == 200, r.text
            time.sleep(0.1)
            assert admin.get("/health").json()["model"]["version"] == 1
            metrics = admin.get("/metrics").text
    finally:
        stop.set()
        for t in threads:
            t.join()
    statuses = {s for s, _ in results}
    assert statuses == {200}, f"failed requests: {[r for r in results if r[0] != 200][:5]}"
    assert len(results) > 100
    assert {v for _, v in results} == {1, 2}  # both models answered during the run
    assert 'tastebud_serving_model_switches_total{outcome="success",trigger="admin"} 10.0' in metrics


def test_watcher_switch_and_refused_bundle_in_process(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        server.aliases.write_text(json.dumps({"champion": 2}))
        deadline = time.monotonic() + 20
        while client.get("/health").json()["model"]["version"] != 2:
            assert time.monotonic() < deadline, "watcher did not switch"
            time.sleep(0.05)
        server.aliases.write_text(json.dumps({"champion": 3}))  # corrupt bundle
        time.sleep(1.0)
        health = client.get("/health").json()
        assert health["model"]["version"] == 2 and "sha256 mismatch" in health["last_error"]
        assert client.get("/recommend/1?k=3").status_code == 200


def test_sigterm_drains_in_flight_requests_and_flushes_log(server: Server) -> None:
    def slow(i: int) -> httpx.Response:
        return httpx.get(f"{server.url}/recommend/{i}?k=3", headers={"x-test-delay": "1.0"}, timeout=30)

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(slow, i) for i in range(8)]
        time.sleep(0.4)  # all eight are inside the server, sleeping
        server.proc.send_signal(signal.SIGTERM)
        responses = [f.result() for f in futures]
    assert [r.status_code for r in responses] == [200] * 8
    # uvicorn re-raises the signal once it has shut down gracefully, so -SIGTERM is a clean exit here
    assert server.proc.wait(30) in (0, -signal.SIGTERM)
    assert "Traceback" not in server.stop()
    ids = [r.json()["provenance"]["request_id"] for r in responses]
    store = create_store(url=f"sqlite:///{server.home / 'tastebud.db'}")
    try:
        for rid in ids:
            record = store.get_request(rid)
            assert record is not None, f"request {rid} was not flushed to the log"
            assert record["endpoint"] == "recommend" and record["model_version"] == 1
    finally:
        store.close()
