"""``tastebud serve`` as a real child process for process-level tests (several workers, restarts, the full loop)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """``tastebud serve --workers N`` on a free port over the home ``home`` (its registry, store and bundles).

    Args:
        home: the Tastebud home (``TASTEBUD_HOME``).
        model_name: the registered model to serve.
        workers: uvicorn worker processes.
        env: extra environment variables (``TASTEBUD_SERVING__...``).
    """

    def __init__(self, home: Path, model_name: str, *, workers: int = 2, env: dict[str, str] | None = None) -> None:
        self.home, self.model_name, self.workers = Path(home), model_name, workers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "TASTEBUD_HOME": str(self.home),
            "TASTEBUD_SERVING__WATCH_INTERVAL_S": "0.5",
            "TASTEBUD_SERVING__ADMIN_TOKEN": "s3cret",
            **(env or {}),
        }
        self.env.pop("MLFLOW_TRACKING_URI", None)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.home / f"server-{self.port}.log"

    def start(self, timeout: float = 120.0) -> ServerProcess:
        """Start and wait until every worker answers ready (many fresh connections in a row say 200)."""
        self.home.mkdir(parents=True, exist_ok=True)
        out = self.log.open("ab")
        cmd = [sys.executable, "-m", "tastebud.cli", "serve", "--port", str(self.port), "--workers", str(self.workers),
               "--model-name", self.model_name]  # fmt: skip
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        ready = 0
        while ready < 10 * self.workers:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"server not ready in {timeout} s:\n{self.output()}")
            try:
                ok = httpx.get(f"{self.url}/health/ready", timeout=2).status_code == 200
            except httpx.HTTPError:
                ok = False
            ready = ready + 1 if ok else 0
            time.sleep(0.02 if ok else 0.2)
        return self

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-5000:] if self.log.exists() else ""

    def stop(self, timeout: float = 30.0) -> None:
        """Stop gracefully (SIGINT to the uvicorn supervisor), then kill what is left."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        """A GET on a fresh connection (the kernel spreads fresh connections over the workers)."""
        return httpx.get(f"{self.url}{path}", timeout=10, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.post(f"{self.url}{path}", timeout=30, **kwargs)

    def metric(self, name: str, **labels: str) -> float:
        """The sum of a metric's samples (over every worker) whose labels include ``labels``."""
        text = self.get("/metrics").text
        return sum(
            s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
