"""A real MLflow tracking server for the tests: ``mlflow server`` with a SQLite backend and a proxied artifact store.

``running_mlflow_server(root)`` starts ``mlflow server --backend-store-uri sqlite:///<root>/mlflow.db
--artifacts-destination <root>/artifacts --serve-artifacts --host 127.0.0.1 --port <free> --workers 1`` in its own
process group (job execution off, ``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false``: it would start five worker
processes; MLflow 3's default host check allows 127.0.0.1, so no security flag is needed), waits until ``/health``
answers, yields the tracking URI (``http://127.0.0.1:<port>``) and stops the process group on exit. Runs logged
against it keep artifacts under ``mlflow-artifacts:/`` URIs, which clients upload and download through the server
(the files land in ``<root>/artifacts``). The session fixture ``mlflow_server_url`` (tests/conftest.py) shares one
server across a test session: starting one imports MLflow twice (CLI, then the uvicorn worker) and creates its
tables, 10-20 s on an idle 2-core machine, over a minute on a loaded one.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from servers import free_port


def mlflow_command() -> list[str]:
    """The ``mlflow`` CLI of the interpreter running the tests (the project's venv)."""
    return [sys.executable, "-m", "mlflow"]


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Stop the server's process group (SIGTERM, then SIGKILL), which holds only what this helper started."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


@contextlib.contextmanager
def running_mlflow_server(root: Path, timeout: float = 240.0) -> Iterator[str]:
    """Start an MLflow server storing everything under ``root``; yield its tracking URI; stop it afterwards.

    ``root/mlflow.db`` holds runs and the model registry, ``root/artifacts`` the artifacts (the
    ``--artifacts-destination``), ``root/server.log`` the server's output (quoted when it fails to start).
    """
    root.mkdir(parents=True, exist_ok=True)
    (root / "artifacts").mkdir(exist_ok=True)
    log = root / "server.log"
    last_error = ""
    for _attempt in range(3):  # the free port can be taken between finding and binding it: the server exits, retry
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        with log.open("ab") as out:
            process = subprocess.Popen(
                [
                    *mlflow_command(), "server",
                    "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                    "--artifacts-destination", str(root / "artifacts"),
                    "--serve-artifacts",
                    "--host", "127.0.0.1",
                    "--port", str(port),
                    "--workers", "1",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, so stopping it reaches the uvicorn worker too
                # no job runner: it starts five huey worker processes that the tests never use
                env={**os.environ, "MLFLOW_TRACKING_URI": "", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        ready = False
        while time.monotonic() < deadline and process.poll() is None:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=1) as response:
                    ready = response.status == 200
            except (urllib.error.URLError, OSError) as exc:
                last_error = str(exc)
            if ready:
                break
            time.sleep(0.2)
        if ready:
            try:
                yield url
            finally:
                _stop(process)
            return
        exited = process.poll() is not None
        _stop(process)
        if not exited:  # still starting at the deadline: another attempt would not be faster
            break
    tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
    raise RuntimeError(f"mlflow server under {root} did not answer /health ({last_error}); log:\n{tail}")
