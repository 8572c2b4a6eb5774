"""The retrain gauges text file: a success, then a failure that keeps the success time; and the alert rules on them."""

from __future__ import annotations

import math
import shutil
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tastebud.monitoring.metrics import RETRAIN_OUTCOMES, RETRAIN_TEXTFILE
from tastebud.monitoring.retrain import last_success_at, read_retrain_gauges, write_retrain_gauges

RULE_TESTS = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "alerts_test.yml"
T0 = datetime(2026, 3, 1, 6, 0, tzinfo=UTC)


@dataclass
class Outcome:
    """The fields of ``RetrainOutcome`` the gauges read."""

    outcome: str
    started_at: Any = T0
    duration_s: float | None = 42.5
    n_interactions: int | None = 100_000
    n_new_events: int | None = 2_000
    gate: dict[str, Any] = field(default_factory=dict)


def samples(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(path.read_text()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def plain(values: dict, name: str) -> float:
    return values[(name, ())]


def outcome_of(values: dict) -> dict[str, float]:
    return {dict(k[1])["outcome"]: v for k, v in values.items() if k[0] == "tastebud_retrain_last_outcome"}


def test_success_then_failure(tmp_path: Path) -> None:
    path = tmp_path / RETRAIN_TEXTFILE
    write_retrain_gauges(Outcome("promoted", gate={"passed": True, "reasons": ["ok"]}), path, schedule_s=21600)
    ok = samples(path)
    assert plain(ok, "tastebud_retrain_last_run_timestamp_seconds") == T0.timestamp() + 42.5
    assert plain(ok, "tastebud_retrain_last_success_timestamp_seconds") == T0.timestamp() + 42.5
    assert outcome_of(ok) == {o: (1.0 if o == "promoted" else 0.0) for o in RETRAIN_OUTCOMES}
    assert plain(ok, "tastebud_retrain_duration_seconds") == 42.5
    assert plain(ok, "tastebud_retrain_data_interactions") == 100_000
    assert plain(ok, "tastebud_retrain_new_events") == 2_000
    assert plain(ok, "tastebud_retrain_gate_passed") == 1
    assert plain(ok, "tastebud_retrain_schedule_seconds") == 21600

    later = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    failed = Outcome("failed", started_at=later.isoformat(), duration_s=3.0, n_interactions=None, n_new_events=None)
    write_retrain_gauges(failed, path)  # by hand: no schedule given, the configured one stays
    bad = samples(path)
    assert plain(bad, "tastebud_retrain_last_run_timestamp_seconds") == later.timestamp() + 3.0
    # The failure keeps the previous success time, so the staleness alert keeps counting.
    assert plain(bad, "tastebud_retrain_last_success_timestamp_seconds") == T0.timestamp() + 42.5
    assert outcome_of(bad)["failed"] == 1 and sum(outcome_of(bad).values()) == 1
    assert math.isnan(plain(bad, "tastebud_retrain_gate_passed"))  # no gate ran
    assert math.isnan(plain(bad, "tastebud_retrain_data_interactions"))
    assert plain(bad, "tastebud_retrain_schedule_seconds") == 21600
    assert last_success_at(path) == datetime.fromtimestamp(T0.timestamp() + 42.5, UTC)


def test_refused_and_no_new_data_count_as_success(tmp_path: Path) -> None:
    path = tmp_path / "retrain.prom"
    write_retrain_gauges(Outcome("refused", gate={"passed": False}), path)
    values = samples(path)
    assert plain(values, "tastebud_retrain_gate_passed") == 0
    assert plain(values, "tastebud_retrain_last_success_timestamp_seconds") == T0.timestamp() + 42.5
    assert math.isnan(plain(values, "tastebud_retrain_schedule_seconds"))  # never configured: no alert
    write_retrain_gauges(Outcome("busy", started_at=T0.timestamp() + 100, duration_s=0.0), path)
    assert read_retrain_gauges(path)["tastebud_retrain_last_success_timestamp_seconds"] == T0.timestamp() + 42.5
    write_retrain_gauges(Outcome("no_new_data", started_at=T0.timestamp() + 200, duration_s=1.0), path)
    assert read_retrain_gauges(path)["tastebud_retrain_last_success_timestamp_seconds"] == T0.timestamp() + 201


def test_no_file_and_a_damaged_file_read_as_nothing(tmp_path: Path) -> None:
    assert read_retrain_gauges(tmp_path / "missing.prom") == {} and last_success_at(tmp_path / "missing.prom") is None
    damaged = tmp_path / "retrain.prom"
    damaged.write_text("tastebud_retrain_last_success_timestamp_seconds{{{ 12\n")
    assert read_retrain_gauges(damaged) == {}
    write_retrain_gauges(Outcome("failed"), damaged)  # still writable
    assert math.isnan(plain(samples(damaged), "tastebud_retrain_last_success_timestamp_seconds"))


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed (scripts/ensure-promtool.sh)")
def test_promtool_alert_rule_tests() -> None:
    """The rule tests in deploy/prometheus/alerts_test.yml: stale and failing retrains alert, healthy ones do not."""
    result = subprocess.run(
        ["promtool", "test", "rules", RULE_TESTS.name], cwd=RULE_TESTS.parent, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
