"""The promotion gate as a pure comparison, and the decision log."""

from __future__ import annotations

import threading

import pytest

from tastebud.config import RegistrySettings, Settings, build_settings
from tastebud.errors import RegistryError
from tastebud.registry.decisions import Decision, append_decision, champion_history, read_decisions
from tastebud.registry.gates import check_gate

CFG = RegistrySettings(promotion_margin=0.01, coverage_tolerance=0.10, rmse_tolerance=0.02)


def test_first_promotion_passes() -> None:
    result = check_gate({"ndcg_at_10": 0.1}, None, CFG)
    assert result.passed and "no champion" in result.summary


def test_passes_with_enough_gain() -> None:
    result = check_gate({"ndcg_at_10": 0.303, "coverage": 0.5}, {"ndcg_at_10": 0.30, "coverage": 0.5}, CFG)
    assert result.passed, result.reasons
    assert "0.3030 vs champion 0.3000" in result.summary


def test_refuses_gain_below_margin_with_both_numbers() -> None:
    result = check_gate({"ndcg_at_10": 0.302, "coverage": 0.5}, {"ndcg_at_10": 0.30, "coverage": 0.5}, CFG)
    assert not result.passed
    assert "ndcg_at_10 0.3020 vs champion 0.3000" in result.summary and "not enough" in result.summary


def test_refuses_coverage_drop_even_with_better_ndcg() -> None:
    result = check_gate({"ndcg_at_10": 0.4, "coverage": 0.44}, {"ndcg_at_10": 0.3, "coverage": 0.5}, CFG)
    assert not result.passed
    assert "coverage 0.4400 vs champion 0.5000" in result.summary and "degrades" in result.summary
    ok = check_gate({"ndcg_at_10": 0.4, "coverage": 0.46}, {"ndcg_at_10": 0.3, "coverage": 0.5}, CFG)
    assert ok.passed


def test_rmse_guard_only_when_both_have_it() -> None:
    champ = {"ndcg_at_10": 0.3, "coverage": 0.5, "rmse": 0.90}
    worse = check_gate({"ndcg_at_10": 0.4, "coverage": 0.5, "rmse": 0.95}, champ, CFG)
    assert not worse.passed and "rmse 0.9500 vs champion 0.9000" in worse.summary
    assert check_gate({"ndcg_at_10": 0.4, "coverage": 0.5, "rmse": 0.91}, champ, CFG).passed
    assert check_gate({"ndcg_at_10": 0.4, "coverage": 0.5}, champ, CFG).passed


def test_margin_comes_from_settings() -> None:
    strict = RegistrySettings(promotion_margin=0.5)
    assert not check_gate({"ndcg_at_10": 0.4}, {"ndcg_at_10": 0.3}, strict).passed
    assert check_gate({"ndcg_at_10": 0.46}, {"ndcg_at_10": 0.3}, strict).passed


@pytest.fixture
def settings(tmp_path) -> Settings:
    return build_settings(home=tmp_path)


def _decision(action: str, version: int, name: str = "m") -> Decision:
    return Decision("2026-01-01T00:00:00+00:00", name, action, version, None, "tester", "why", {"x": 1})


def test_decision_log_round_trip(settings: Settings) -> None:
    append_decision(settings, _decision("promoted", 1))
    append_decision(settings, _decision("refused", 2, name="other"))
    assert [d.version for d in read_decisions(settings)] == [1, 2]
    only = read_decisions(settings, "m")
    assert only == [_decision("promoted", 1)]
    with pytest.raises(RegistryError, match="unknown decision action"):
        append_decision(settings, _decision("deleted", 1))


def test_concurrent_appends_keep_whole_lines(settings: Settings) -> None:
    threads = [
        threading.Thread(target=lambda i=i: [append_decision(settings, _decision("promoted", i)) for _ in range(20)])
        for i in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    decisions = read_decisions(settings)
    assert len(decisions) == 80
    assert sorted({d.version for d in decisions}) == [0, 1, 2, 3]


def test_bad_log_line_is_named(settings: Settings) -> None:
    append_decision(settings, _decision("promoted", 1))
    with (settings.home / "registry" / "decisions.jsonl").open("a") as fh:
        fh.write("garbage\n")
    with pytest.raises(RegistryError, match="line 2"):
        read_decisions(settings)


def test_champion_history_is_a_stack() -> None:
    ds = [_decision("promoted", 1), _decision("refused", 2), _decision("forced", 3), _decision("promoted", 4)]
    assert champion_history(ds) == [1, 3, 4]
    assert champion_history([*ds, _decision("rolled_back", 3)]) == [1, 3]
    assert champion_history([*ds, _decision("rolled_back", 3), _decision("rolled_back", 1)]) == [1]
