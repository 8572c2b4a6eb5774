"""`tastebud serve` parses its flags into settings and hands uvicorn the app."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from tastebud.cli import main


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    import uvicorn

    seen: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: seen.append((a, kw)))
    monkeypatch.setenv("TASTEBUD_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TASTEBUD_CONFIG", raising=False)
    for key in ("MODEL_NAME", "ALIAS", "HOST", "PORT", "BLAS_THREADS"):
        # set then delete, so that monkeypatch removes whatever the command sets once the test ends
        monkeypatch.setenv(f"TASTEBUD_SERVING__{key}", "unset")
        monkeypatch.delenv(f"TASTEBUD_SERVING__{key}")
    return seen


def test_serve_one_worker_builds_the_app(
    calls: list, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import tastebud.serving.app as serving_app

    limits: list[int] = []
    monkeypatch.setattr(serving_app, "limit_blas_threads", limits.append)  # keep this test process unchanged
    code = main(["serve", "--port", "8123", "--model-name", "films", "--alias", "challenger", "--host", "0.0.0.0"])
    assert code == 0
    ((args, kwargs),) = calls
    app = args[0]
    assert isinstance(app, FastAPI)
    assert kwargs["port"] == 8123 and kwargs["host"] == "0.0.0.0"
    assert kwargs["http"] == "tastebud.serving.http:CoalescingHttpProtocol"  # one send per response
    serving = app.state.settings.serving
    assert serving.model_name == "films" and serving.alias == "challenger"
    assert "films@challenger" in capsys.readouterr().out
    assert limits == [1]


def test_serve_many_workers_uses_the_factory(calls: list, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    assert main(["serve", "--workers", "3", "--model-name", "films"]) == 0
    ((args, kwargs),) = calls
    assert args == ("tastebud.serving.app:create_app_from_env",)
    assert kwargs["factory"] is True and kwargs["workers"] == 3
    assert kwargs["http"] == "tastebud.serving.http:CoalescingHttpProtocol"
    assert os.environ["TASTEBUD_SERVING__MODEL_NAME"] == "films"


def test_serve_with_coalescing_off_takes_uvicorns_protocol(calls: list, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASTEBUD_SERVING__COALESCE_WRITES", "false")
    assert main(["serve", "--workers", "2"]) == 0
    ((_, kwargs),) = calls
    assert kwargs["http"] == "auto"


def test_serve_rejects_bad_port(calls: list) -> None:
    assert main(["serve", "--port", "0"]) == 2 and calls == []
