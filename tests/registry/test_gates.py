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


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), None, "high"])
def test_candidate_without_a_finite_primary_is_refused_even_as_first_version(bad: object) -> None:
    # A NaN NDCG used to become "none" and pass as a first promotion.
    first = check_gate({"ndcg_at_10": bad, "coverage": 0.5}, None, CFG)
    assert not first.passed and "candidate's ndcg_at_10 is" in first.summary
    against = check_gate({"ndcg_at_10": bad}, {"ndcg_at_10": 0.3}, CFG)
    assert not against.passed and "never promoted" in against.summary
    assert not check_gate({"coverage": 0.5}, None, CFG).passed  # missing altogether


def test_first_version_must_pass_the_absolute_floors() -> None:
    assert not check_gate({"ndcg_at_10": 0.0}, None, CFG).passed  # ranks nothing relevant
    floor = RegistrySettings(min_primary_metric=0.05)
    low = check_gate({"ndcg_at_10": 0.04}, None, floor)
    assert not low.passed and "absolute floor 0.0500" in low.summary and "not above it" in low.summary
    assert check_gate({"ndcg_at_10": 0.06}, None, floor).passed


def test_popularity_baseline_is_a_floor_when_known() -> None:
    baseline = {"ndcg_at_10": 0.12, "coverage": 0.1}
    weak = check_gate({"ndcg_at_10": 0.10}, None, CFG, baseline=baseline)
    assert not weak.passed and "popularity baseline 0.1200: does not beat it" in weak.summary
    assert weak.numbers()["baseline"] == {"ndcg_at_10": 0.12, "coverage": 0.1, "rmse": None}
    strong = check_gate({"ndcg_at_10": 0.15}, None, CFG, baseline=baseline)
    assert strong.passed and "no champion yet" in strong.summary
    # it applies with a champion too, and can be switched off
    assert not check_gate({"ndcg_at_10": 0.10}, {"ndcg_at_10": 0.05}, CFG, baseline=baseline).passed
    off = RegistrySettings(beat_baseline=False)
    assert check_gate({"ndcg_at_10": 0.10}, None, off, baseline=baseline).passed
    # an unknown (NaN / missing) baseline is no floor
    assert check_gate({"ndcg_at_10": 0.10}, None, CFG, baseline={"ndcg_at_10": float("nan")}).passed


@pytest.mark.parametrize("champion", [{"ndcg_at_10": float("nan")}, {"coverage": 0.5}, {}])
def test_champion_without_the_primary_is_not_silently_passed(champion: dict) -> None:
    result = check_gate({"ndcg_at_10": 0.4, "coverage": 0.5}, champion, CFG)
    assert not result.passed
    assert "the champion's ndcg_at_10 is" in result.summary and "cannot compare" in result.summary


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


def test_bad_line_of_a_log_to_import_is_named_and_nothing_is_imported(settings: Settings) -> None:
    append_decision(settings, _decision("promoted", 1))
    path = settings.home / "registry" / "decisions.jsonl"  # a log of an earlier version, imported on first use
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_decision("refused", 2).to_json() + "\ngarbage\n")
    with pytest.raises(RegistryError, match=r"decisions.jsonl line 2: not a valid decision"):
        read_decisions(settings)
    path.write_text(
        _decision("refused", 2).to_json() + "\n" + _decision("promoted", 3).to_json().replace('"promoted"', '"deleted"')
    )
    with pytest.raises(RegistryError, match=r"line 2: unknown decision action 'deleted'"):
        read_decisions(settings)
    assert path.is_file()
    path.write_text(_decision("refused", 2).to_json() + "\n")
    assert [d.version for d in read_decisions(settings)] == [1, 2]


def test_champion_history_is_a_stack() -> None:
    ds = [_decision("promoted", 1), _decision("refused", 2), _decision("forced", 3), _decision("promoted", 4)]
    assert champion_history(ds) == [1, 3, 4]
    assert champion_history([*ds, _decision("rolled_back", 3)]) == [1, 3]
    assert champion_history([*ds, _decision("rolled_back", 3), _decision("rolled_back", 1)]) == [1]
