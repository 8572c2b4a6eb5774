"""`tastebud experiment create|list|show|start|stop` against a real embedded registry with small bundles."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tastebud.cli import main

MODEL = "exp-model"  # registered in the ``real_home`` fixture: champion v1, challenger v2, v3 corrupt
Run = Callable[..., tuple[int, str]]


@pytest.fixture
def cli(real_home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Run:
    """Run ``tastebud --home <real_home> ARGS``; returns (exit code, stdout + stderr)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("COLUMNS", "250")  # rich tables would otherwise cut columns on a narrow terminal
    monkeypatch.setenv("TASTEBUD_SERVING__MODEL_NAME", MODEL)

    def run(*args: str) -> tuple[int, str]:
        code = main(["--home", str(real_home), "experiment", *args])
        out = capsys.readouterr()
        return code, out.out + out.err

    return run


def _one_error_line(out: str) -> str:
    lines = [line for line in out.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in out, out
    return lines[0]


def test_create_list_start_show_stop(cli: Run) -> None:
    code, out = cli("create", "cli-ab", "--variant", "control=champion", "--variant", "treatment=challenger",
                    "--weights", "60,40", "--holdout", "5", "--secondary", "click_rate,plays", "--horizon", "12h",
                    "--actor", "ci")  # fmt: skip
    assert code == 0, out
    assert "created experiment cli-ab (draft) on exp-model: control=champion 60%, treatment=challenger 40%" in out
    code, out = cli("list")
    assert code == 0 and "cli-ab" in out and "draft" in out and "control=champion 60%" in out, out

    code, out = cli("start", "cli-ab", "--actor", "ci")
    assert code == 0 and "started cli-ab: control -> version 1, treatment -> version 2" in out, out

    code, out = cli("create", "cli-overlap", "-V", "a=champion", "-V", "b=1", "--traffic-range", "50-100")
    assert code == 0, out
    code, out = cli("start", "cli-overlap", "--actor", "ci")
    line = _one_error_line(out)
    assert code == 1 and "overlaps running experiment(s) 'cli-ab' (traffic 0-100)" in line
    code, out = cli("create", "cli-side", "-V", "a=champion", "-V", "b=1", "--layer", "ranking")
    assert code == 0, out
    code, out = cli("start", "cli-side")
    assert code == 0, out  # another layer runs beside it

    code, out = cli("show", "cli-ab")
    assert code == 0, out
    for text in ("Experiment cli-ab", "running", "5% of its users", "click_rate, plays", "12 h", "version at start",
                 "created", "started", "versions: {'control': 1, 'treatment': 2}", "ci"):  # fmt: skip
        assert text in out, (text, out)
    code, out = cli("show", "cli-overlap")
    assert code == 0 and "start_refused" in out and "overlaps running" in out, out

    code, out = cli("stop", "cli-ab", "--reason", "enough data", "--actor", "ci")
    assert code == 0 and "stopped cli-ab" in out, out
    code, out = cli("list", "--status", "running", "--json")
    assert code == 0, out
    assert [e["name"] for e in json.loads(out)] == ["cli-side"]
    code, out = cli("stop", "cli-side")
    assert code == 0, out
    code, out = cli("list", "--status", "running")
    assert code == 0 and "no experiments running" in out, out
    code, out = cli("show", "cli-ab", "--json")
    shown = json.loads(out)
    assert shown["status"] == "stopped" and [c["action"] for c in shown["changes"]] == ["created", "started", "stopped"]
    assert shown["changes"][-1]["details"] == {"was": "running", "reason": "enough data"}


def test_a_corrupt_bundle_refuses_the_start(cli: Run) -> None:
    code, out = cli("create", "cli-corrupt", "--variant", "control=champion", "--variant", "treatment=3")
    assert code == 0, out
    code, out = cli("start", "cli-corrupt")
    line = _one_error_line(out)
    assert code == 1 and "experiment 'cli-corrupt' not started: variant 'treatment' (3) cannot be served" in line
    code, out = cli("list", "--json")
    assert {e["name"]: e["status"] for e in json.loads(out)}["cli-corrupt"] == "draft"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("create", "e1", "--variant", "control=champion", "--variant", "treatment=nope"),
         "variant 'treatment': model 'exp-model' has no alias 'nope'"),
        (("create", "e2", "--variant", "control=champion", "--variant", "treatment=9"), "has no version 9"),
        (("create", "e3", "-V", "a=champion", "-V", "b=challenger", "--weights", "60,50"),
         "weights must sum to 100, got 60,50"),
        (("create", "e4", "--variant", "control", "--variant", "b=1"), "variant 'control': expected NAME=REF"),
        (("create", "e5", "-V", "a=1", "-V", "b=2", "--traffic-range", "half"), "expected START-END"),
        (("create", "e6", "-V", "a=1", "-V", "b=2", "--horizon", "soon"), "duration 'soon'"),
        (("create", "e7", "-V", "a=1", "-V", "b=2", "--kind", "bandit"), "kind: Input should be"),
        (("show", "ghost"), "no experiment named 'ghost'"),
        (("start", "ghost"), "no experiment named 'ghost'"),
        (("stop", "ghost"), "no experiment named 'ghost'"),
        (("list", "--status", "paused"), "unknown status 'paused'"),
    ],
)  # fmt: skip
def test_errors_are_one_clear_line(cli: Run, args: tuple[str, ...], message: str) -> None:
    code, out = cli(*args)
    assert code == 1
    assert message in _one_error_line(out)


def test_help_teaches_with_examples(cli: Run) -> None:
    code, out = cli("create", "--help")
    assert code == 0 and "tastebud experiment create ease-vs-als --variant control=champion" in out
    assert "--traffic-range" in out and "--layer" in out
    code, out = cli("--help")
    assert code == 0 and all(cmd in out for cmd in ("create", "list", "show", "start", "stop"))


def test_canary_and_a_ramp_step_through_the_cli(cli: Run) -> None:
    code, out = cli("canary", "cli-canary", "--treatment", "challenger", "--start", "5")
    assert code == 0, out
    code, out = cli("show", "cli-canary", "--json")
    shown = json.loads(out)
    assert code == 0 and shown["kind"] == "canary" and shown["status"] == "running"
    assert list(shown["weights"]) == [95, 5]
    code, out = cli("ramp", "cli-canary", "--once", "--min-requests", "10")
    assert code == 0 and "waiting" in out, out  # no traffic yet: nothing judged, nothing changed
    code, out = cli("ramp", "cli-canary", "--once", "--steps", "50,5")
    line = _one_error_line(out)
    assert code == 1 and "step" in line
    code, out = cli("stop", "cli-canary")  # the home is shared: leave its traffic to the next test
    assert code == 0, out


def test_ramp_without_once_repeats_until_the_canary_completes(
    cli: Run, real_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between steps (the sleep), both variants get healthy traffic; the loop ends when the canary completes."""
    from datetime import UTC, datetime

    from tastebud.config import build_settings
    from tastebud.store import create_store
    from tastebud.store.schema import RequestLogRecord

    code, out = cli("canary", "cli-loop", "--treatment", "challenger", "--start", "5")
    assert code == 0, out
    sleeps: list[float] = []

    def traffic(seconds: float) -> None:
        sleeps.append(seconds)
        now = datetime.now(UTC)
        with create_store(build_settings(home=real_home)) as store:
            store.write_request_logs([
                RequestLogRecord(
                    f"loop-{len(sleeps)}-{variant}-{i}", now, "recommend", f"u{i}", None,
                    MODEL, 1, None, ["a"], [1.0], 10.0, 200, False, None, variant, {}, "cli-loop", None,
                )
                for variant in ("control", "treatment") for i in range(20)
            ])  # fmt: skip

    monkeypatch.setattr("time.sleep", traffic)
    code, out = cli("ramp", "cli-loop", "--steps", "5,100", "--every", "30s", "--min-requests", "10")
    assert code == 0, out
    assert [line.split()[0] for line in out.strip().splitlines()] == ["waiting", "ramped", "completed"], out
    assert sleeps == [30.0, 30.0]
