"""Start Tastebud Studio (``streamlit run`` on :mod:`tastebud.studio.app`) as a child process.

Importing this module imports neither Streamlit nor the rest of Tastebud, so ``tastebud studio --help`` and the demo
stay fast.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

#: The Streamlit entry script (``AppTest.from_file(APP_PATH)``; its pages are in ``pages/`` beside it).
APP_PATH = Path(__file__).with_name("app.py")
#: What ``streamlit run`` starts: a script that runs :data:`APP_PATH`'s ``main()`` from a directory without a
#: ``pages/`` folder, so that Streamlit never enters its legacy pages-directory mode (see ``_entry/studio.py``).
RUN_PATH = Path(__file__).parent / "_entry" / "studio.py"
#: Environment variable holding the base URL of the HTTP API the studio talks to.
API_ENV = "TASTEBUD_STUDIO_API"
#: Environment variable holding an API key sent as ``Authorization: Bearer <key>`` (when the API requires keys).
API_KEY_ENV = "TASTEBUD_API_KEY"
DEFAULT_API = "http://127.0.0.1:8000"
DEFAULT_PORT = 8501
#: Streamlit's route that runs the app's script once in a session of its own (``server.scriptHealthCheckEnabled``):
#: the warm-up that imports pandas, Altair and MLflow and fills the studio's caches before the first visitor.
WARM_UP_ROUTE = "/_stcore/script-health-check"


def studio_command(port: int = DEFAULT_PORT, *, address: str = "127.0.0.1") -> list[str]:
    """The ``streamlit run`` command line of the studio, headless (no browser, no usage statistics)."""
    return [
        sys.executable, "-m", "streamlit", "run", str(RUN_PATH),
        "--server.port", str(port),
        "--server.address", address,
        "--server.headless", "true",
        "--browser.gatherUsageStats", "false",
        "--server.fileWatcherType", "none",
        "--client.toolbarMode", "minimal",
        "--theme.base", "light",
        "--server.scriptHealthCheckEnabled", "true",
    ]  # fmt: skip


def studio_env(
    api: str = DEFAULT_API, *, home: Path | None = None, env: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment of the studio process: this one's, the API URL, and the home when given."""
    out = {**os.environ, **(env or {}), API_ENV: api.rstrip("/")}
    if home is not None:
        out["TASTEBUD_HOME"] = str(Path(home).resolve())
    return out


def launch(
    port: int = DEFAULT_PORT,
    api: str = DEFAULT_API,
    *,
    home: Path | None = None,
    address: str = "127.0.0.1",
    env: Mapping[str, str] | None = None,
    stdout: int | None = None,
    stderr: int | None = None,
    warm: bool = True,
) -> subprocess.Popen[bytes]:
    """Start the studio on ``http://<address>:<port>`` against the API at ``api``; returns the running process.

    Args:
        port: the studio's TCP port.
        api: base URL of the Tastebud HTTP API.
        home: the Tastebud home whose registry and store the operator pages read (default: ``TASTEBUD_HOME``).
        address: interface to listen on.
        env: extra environment variables (``TASTEBUD_API_KEY``, ...).
        stdout: where the process writes its output (inherited when ``None``).
        stderr: where the process writes its errors (inherited when ``None``).
        warm: once the studio answers, run its script once in the background (:func:`warm_up`), so that the first
            visitor does not wait for the imports and the first registry and API reads.

    The caller owns the process: ``proc.terminate()`` (then ``proc.wait()``) stops it.
    """
    proc = subprocess.Popen(
        studio_command(port, address=address), env=studio_env(api, home=home, env=env), stdout=stdout, stderr=stderr
    )
    if warm:
        host = "127.0.0.1" if address in ("0.0.0.0", "", "::") else address
        threading.Thread(target=warm_up, args=(f"http://{host}:{port}", proc), daemon=True, name="studio-warm").start()
    return proc


def warm_up(url: str, proc: subprocess.Popen[bytes] | None = None, *, timeout: float = 120.0) -> bool:
    """Ask the studio at ``url`` to run its script once (Streamlit's script health check), retrying until it is up.

    The run renders the default page in a session of its own; the app starts its own warm-up of the other pages
    (:func:`tastebud.studio.app.warm_caches`). Returns whether the run happened; never raises.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (proc is None or proc.poll() is None):
        try:
            with urllib.request.urlopen(url.rstrip("/") + WARM_UP_ROUTE, timeout=timeout) as answer:
                return bool(answer.status == 200)
        except urllib.error.HTTPError:
            return False  # the studio answered: the script ran and failed (its pages show why)
        except (OSError, ValueError):
            time.sleep(0.5)  # not listening yet
    return False


__all__ = [
    "API_ENV",
    "API_KEY_ENV",
    "APP_PATH",
    "DEFAULT_API",
    "DEFAULT_PORT",
    "RUN_PATH",
    "launch",
    "studio_command",
    "studio_env",
    "warm_up",
]
