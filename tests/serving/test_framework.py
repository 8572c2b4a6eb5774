"""What the app asks of FastAPI on every request: its OpenTelemetry instrumentation only where the process configures
it (``serving.opentelemetry``), and a default response class that is not deprecated."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from opentelemetry import trace

from tastebud.config import Settings, build_settings
from tastebud.serving import create_app
from tastebud.serving.app import opentelemetry_wanted

from .conftest import FakeRegistry, FakeWriter


@pytest.mark.parametrize(
    ("setting", "environ", "wanted"),
    [
        ("auto", {}, False),
        ("auto", {"PATH": "/bin", "HOTEL_X": "1"}, False),  # only names that start with OTEL_
        ("auto", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, True),
        ("auto", {"OTEL_TRACES_EXPORTER": "console"}, True),
        ("auto", {"FASTAPI_OTEL_AUTO_CONFIGURE": "TRUE"}, True),
        ("auto", {"FASTAPI_OTEL_AUTO_CONFIGURE": "false"}, False),
        ("on", {}, True),
        ("off", {"OTEL_TRACES_EXPORTER": "console"}, False),
    ],
)
def test_opentelemetry_wanted(setting: str, environ: dict[str, str], wanted: bool) -> None:
    assert opentelemetry_wanted(setting, environ) is wanted


def test_setting_refuses_other_values(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="opentelemetry"):
        build_settings(home=tmp_path, serving={"opentelemetry": "maybe"})


@pytest.fixture
def provider_lookups(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """How often FastAPI asks OpenTelemetry for the tracer provider (its per-request check when instrumenting)."""
    for name in [n for n in os.environ if n.startswith("OTEL_") or n == "FASTAPI_OTEL_AUTO_CONFIGURE"]:
        monkeypatch.delenv(name)
    calls = [0]
    real = trace.get_tracer_provider

    def counted() -> trace.TracerProvider:
        calls[0] += 1
        return real()

    monkeypatch.setattr(trace, "get_tracer_provider", counted)
    yield calls


def _lookups_per_request(settings: Settings, registry: FakeRegistry, calls: list[int]) -> int:
    app = create_app(settings, registry=registry, request_log=FakeWriter())
    with TestClient(app) as client:
        calls[0] = 0
        for _ in range(5):
            assert client.get("/healthz").status_code == 200
        return calls[0]


@pytest.mark.parametrize(("setting", "instrumented"), [("auto", False), ("off", False), ("on", True)])
def test_requests_skip_the_provider_lookup_unless_wanted(
    tmp_path: Path, registry: FakeRegistry, provider_lookups: list[int], setting: str, instrumented: bool
) -> None:
    settings = build_settings(home=tmp_path, serving={"model_name": "ml", "watch_interval_s": 0,
                                                      "opentelemetry": setting})  # fmt: skip
    lookups = _lookups_per_request(settings, registry, provider_lookups)
    assert (lookups >= 5) is instrumented, lookups


def test_environment_turns_auto_on(
    tmp_path: Path, registry: FakeRegistry, provider_lookups: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "tastebud-api")
    settings = build_settings(home=tmp_path, serving={"model_name": "ml", "watch_interval_s": 0})
    assert _lookups_per_request(settings, registry, provider_lookups) >= 5


def test_default_response_class_renders_without_deprecation(settings: Settings, registry: FakeRegistry) -> None:
    app = create_app(settings, registry=registry, request_log=FakeWriter())

    @app.get("/_numbers", response_model=None)
    async def numbers() -> Any:  # no response model: the default response class renders it
        return {"count": 3, "score": 0.5, "title": "Amélie", 7: "non-string key"}

    with TestClient(app) as client, warnings.catch_warnings():
        warnings.simplefilter("error")  # a deprecated response class warns on each instance
        response = client.get("/_numbers")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.content == '{"count":3,"score":0.5,"title":"Amélie","7":"non-string key"}'.encode()


@pytest.mark.parametrize("faiss_first", [False, True])
def test_limit_blas_threads_caps_faiss_openmp_threads_in_every_thread(faiss_first: bool) -> None:
    """A serving batch's FAISS search must not spread over an OpenMP thread per core in every worker.

    Three threads (not one) so the check discriminates on any machine short of exactly three cores; run in a fresh
    interpreter because the cap changes the whole process. Imported before the cap, FAISS is capped for the
    calling thread (the event loop's); imported after, OpenMP reads the cap for every thread.
    """
    import subprocess
    import sys

    script = (
        "import threading\n"
        + ("import faiss\n" if faiss_first else "")
        + "from tastebud.serving.app import limit_blas_threads\n"
        "limit_blas_threads(3)\n"
        "import faiss\n"
        "seen = [faiss.omp_get_max_threads()]\n"
        "t = threading.Thread(target=lambda: seen.append(faiss.omp_get_max_threads()))\n"
        "t.start(); t.join()\n"
        "print(seen[0], seen[1])\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    seen = [int(x) for x in out.stdout.split()]
    assert seen[0] == 3, out.stdout
    if not faiss_first:
        assert seen[1] == 3, out.stdout


def test_limit_blas_threads_caps_the_pools_of_libraries_loaded_later() -> None:
    """SciPy's OpenBLAS and FAISS's (and their OpenMP) load with the first model, after the server's cap."""
    import subprocess
    import sys

    script = (
        "from tastebud.serving.app import limit_blas_threads\n"
        "limit_blas_threads(1)\n"
        "import scipy.linalg, faiss\n"
        "from threadpoolctl import threadpool_info\n"
        "for pool in threadpool_info(): print(pool['internal_api'], pool['num_threads'], pool['filepath'])\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    pools = [line.split(" ", 2) for line in out.stdout.strip().splitlines()]
    assert {api for api, _, _ in pools} >= {"openblas", "openmp"}, out.stdout
    assert len(pools) >= 3, out.stdout  # NumPy's OpenBLAS, SciPy's, FAISS's OpenMP at least
    assert all(n == "1" for _, n, _ in pools), out.stdout
