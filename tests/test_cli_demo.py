"""`tastebud data synth --format lastfm-360k` and `tastebud demo`: the music sample, and the studio beside the API."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tastebud.cli import demo as demo_module
from tastebud.cli import main
from tastebud.config import build_settings
from tastebud.data.lastfm import LASTFM_FILE, LASTFM_TAGS_FILE


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("TASTEBUD_HOME", str(home))
    monkeypatch.delenv("TASTEBUD_CONFIG", raising=False)
    return home


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_synth_lastfm_format_is_read_back_with_tags(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out_dir = tmp_path / "music"
    code, out, err = run(
        capsys, "data", "synth", "--format", "lastfm-360k", "-o", str(out_dir),
        "--users", "200", "--items", "80", "--interactions", "3000",
    )  # fmt: skip
    assert code == 0, err
    assert (out_dir / LASTFM_FILE).is_file() and (out_dir / LASTFM_TAGS_FILE).is_file()
    code, out, err = run(capsys, "data", "describe", str(out_dir), "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert (summary["users"], summary["items"], summary["interactions"]) == (200, 80, 3000)


def test_synth_refuses_an_unknown_format(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "data", "synth", "--format", "movielens", "-o", str(tmp_path / "x"))
    assert code == 2 and "lastfm-360k" in err and "Traceback" not in err


def test_demo_refuses_an_unknown_dataset(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "demo", "--dataset", "ml-25m", "--no-serve")
    assert code == 2 and "lastfm-sample" in err


@pytest.mark.slow
def test_demo_on_the_lastfm_sample_end_to_end(capsys: pytest.CaptureFixture[str], _home: Path) -> None:
    """Generate the sample, compare two models, register, promote, the loop with play events, a retrain (~15 s)."""
    code, out, err = run(capsys, "demo", "--dataset", "lastfm-sample", "--models", "popular,ease", "--no-serve")
    assert code == 0, err + out[-3000:]
    assert (_home / "data" / "lastfm-sample" / LASTFM_TAGS_FILE).is_file()
    for step in ("1. generate the Last.fm-format music sample", "4. train and evaluate", "6. promote through the gate",
                 "7. the loop", "8. retrain"):  # fmt: skip
        assert step in out
    assert "promoted" in out and "plays)" in out  # the loop replays play events
    # a second run reuses the sample
    code, out, err = run(capsys, "demo", "--dataset", "lastfm-sample", "--models", "popular", "--champion", "")
    assert code == 0, err
    assert "lastfm-sample already generated" in out


class _FakeProc:
    def __init__(self) -> None:
        self.terminated = False

    def terminate(self) -> None:
        self.terminated = True

    def wait(self, timeout: float | None = None) -> int:
        return 0


@pytest.fixture
def fake_serving(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """``run_server`` returns at once; ``tastebud.studio.launch`` records its call; Streamlit counts as installed."""
    import tastebud.cli.serve
    import tastebud.studio

    calls: dict[str, Any] = {"proc": _FakeProc()}

    def run_server(settings: Any, **kwargs: Any) -> None:
        calls["server"] = kwargs
        calls["studio_running_while_serving"] = "studio" in calls and not calls["proc"].terminated

    def launch(port: int, api: str, **kwargs: Any) -> _FakeProc:
        calls["studio"] = {"port": port, "api": api, **kwargs}
        return calls["proc"]

    monkeypatch.setattr(tastebud.cli.serve, "run_server", run_server)
    monkeypatch.setattr(tastebud.studio, "launch", launch)
    monkeypatch.setattr(demo_module, "_has_streamlit", lambda: True)
    return calls


def test_serving_starts_the_studio_next_to_the_api_and_stops_it(
    capsys: pytest.CaptureFixture[str], fake_serving: dict[str, Any], _home: Path
) -> None:
    settings = build_settings(home=_home)
    demo_module._serve(settings, "movielens-100k", 8123, studio_port=8765)
    out = capsys.readouterr().out
    assert fake_serving["server"]["port"] == 8123
    assert fake_serving["studio"]["port"] == 8765 and fake_serving["studio"]["api"] == "http://127.0.0.1:8123"
    assert Path(fake_serving["studio"]["home"]) == _home
    assert fake_serving["studio_running_while_serving"] and fake_serving["proc"].terminated
    assert "http://127.0.0.1:8765" in out and "Tastebud Studio" in out


def test_no_studio_serves_the_api_only(capsys: pytest.CaptureFixture[str], fake_serving: dict[str, Any]) -> None:
    demo_module._serve(build_settings(), "movielens-100k", 8123, studio_port=None)
    assert "server" in fake_serving and "studio" not in fake_serving
    assert "Tastebud Studio" not in capsys.readouterr().out


def test_without_streamlit_the_demo_serves_the_api_and_says_why(
    capsys: pytest.CaptureFixture[str], fake_serving: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(demo_module, "_has_streamlit", lambda: False)
    demo_module._serve(build_settings(), "movielens-100k", 8123, studio_port=8501)
    assert "server" in fake_serving and "studio" not in fake_serving
    assert "needs Streamlit" in capsys.readouterr().out


def test_studio_process_that_ignores_terminate_is_killed(
    fake_serving: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    class Stubborn(_FakeProc):
        killed = False

        def wait(self, timeout: float | None = None) -> int:
            if timeout is not None and not self.killed:
                raise subprocess.TimeoutExpired("streamlit", timeout)
            return 0

        def kill(self) -> None:
            self.killed = True

    fake_serving["proc"] = Stubborn()
    demo_module._serve(build_settings(), "movielens-100k", 8123, studio_port=8501)
    assert fake_serving["proc"].terminated and fake_serving["proc"].killed
