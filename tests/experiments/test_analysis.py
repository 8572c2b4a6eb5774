"""A/B statistics, tested by simulation: power, SRM, CUPED, Holm, the verdict and the report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportion_confint, proportions_ztest

from tastebud.errors import DataValidationError, ParameterError
from tastebud.experiments.analysis import (
    Comparison,
    achieved_power,
    build_report,
    check_guardrails,
    compare,
    cuped,
    guardrail_check,
    holm,
    plot_lift_over_time,
    required_users,
    srm,
    users_still_needed,
    verdict,
)
from tastebud.experiments.sequential import running_difference

ALPHA = 0.05


# --------------------------------------------------------------------------------------------------------------
# compare()


def test_compare_proportions_matches_statsmodels() -> None:
    rng = np.random.default_rng(1)
    c = (rng.random(3000) < 0.10).astype(float)
    t = (rng.random(3500) < 0.12).astype(float)
    r = compare(c, t, kind="proportion", bootstrap=500, metric="hit_rate")
    assert (r.n_control, r.n_treatment) == (3000, 3500)
    assert r.p_value == pytest.approx(proportions_ztest([t.sum(), c.sum()], [t.size, c.size])[1])
    assert r.ci_control == pytest.approx(proportion_confint(c.sum(), c.size, alpha=ALPHA, method="wilson"))
    pc, pt = c.mean(), t.mean()
    half = stats.norm.ppf(0.975) * math.sqrt(pc * (1 - pc) / c.size + pt * (1 - pt) / t.size)
    assert r.abs_ci == pytest.approx((pt - pc - half, pt - pc + half))
    assert r.rel_lift == pytest.approx(pt / pc - 1)
    # The always-valid interval contains the fixed-horizon one; the bootstrap is close to the delta method.
    assert r.seq_rel_ci[0] < r.rel_ci[0] and r.seq_rel_ci[1] > r.rel_ci[1]
    assert r.bootstrap_rel_ci is not None
    assert r.bootstrap_rel_ci == pytest.approx(r.rel_ci, abs=0.03)


def test_compare_means_is_welch() -> None:
    rng = np.random.default_rng(2)
    c, t = rng.poisson(4.0, 800).astype(float), rng.poisson(4.4, 600).astype(float)
    r = compare(c, t, kind="mean", bootstrap=0)
    ref = stats.ttest_ind(t, c, equal_var=False)
    assert r.p_value == pytest.approx(ref.pvalue)
    ci = ref.confidence_interval(0.95)
    assert r.abs_ci == pytest.approx((ci.low, ci.high))
    assert r.bootstrap_rel_ci is None


def test_compare_rejects_bad_input() -> None:
    with pytest.raises(DataValidationError, match="0/1"):
        compare([0, 1, 2], [0, 1, 1], kind="proportion")
    with pytest.raises(DataValidationError, match="at least 2"):
        compare([1.0], [0.0, 1.0], kind="mean")
    with pytest.raises(DataValidationError, match="finite"):
        compare([1.0, np.nan], [0.0, 1.0], kind="mean")
    with pytest.raises(ParameterError):
        compare([0, 1], [0, 1], kind="median")  # type: ignore[arg-type]
    with pytest.raises(ParameterError):
        compare([0, 1], [0, 1], kind="mean", pre_control=[1, 2])


def test_compare_identical_all_zero_variants_is_not_significant() -> None:
    r = compare(np.zeros(100), np.zeros(100), kind="proportion", bootstrap=100)
    assert r.p_value == 1.0
    assert math.isnan(r.rel_lift)
    json.dumps(r.to_dict(), allow_nan=False)


def test_intervals_cover_the_planted_lift() -> None:
    """Coverage of the delta-method and the bootstrap interval of the relative lift, 300 experiments."""
    rng = np.random.default_rng(3)
    n, p0, p1 = 4000, 0.20, 0.22
    cover_delta = cover_boot = 0
    for i in range(300):
        c = (rng.random(n) < p0).astype(float)
        t = (rng.random(n) < p1).astype(float)
        r = compare(c, t, kind="proportion", bootstrap=1000, seed=i)
        assert r.bootstrap_rel_ci is not None
        cover_delta += r.rel_ci[0] <= p1 / p0 - 1 <= r.rel_ci[1]
        cover_boot += r.bootstrap_rel_ci[0] <= p1 / p0 - 1 <= r.bootstrap_rel_ci[1]
    assert cover_delta / 300 >= 0.92
    assert cover_boot / 300 >= 0.92


# --------------------------------------------------------------------------------------------------------------
# Power


def test_planted_lift_is_found_at_the_designed_sample_size() -> None:
    """+5% relative on a 10% hit rate; required_users(power=0.8) per variant; 1,000 simulated experiments."""
    n = required_users(0.10, 0.05, alpha=ALPHA, power=0.8)
    assert 55_000 < n < 60_000  # 57,756: about (2.80 / h)^2 * 2 with Cohen's h = 0.0165
    rng = np.random.default_rng(42)
    found = 0
    for _ in range(1000):
        c = (rng.random(n) < 0.100).astype(float)
        t = (rng.random(n) < 0.105).astype(float)
        found += compare(c, t, kind="proportion", bootstrap=0).p_value < ALPHA
    print(f"planted +5% on 10%: n={n} per variant, found in {found / 1000:.3f} of 1000 experiments")
    assert found / 1000 >= 0.75


def test_required_users_is_the_textbook_formula() -> None:
    h = 2 * math.asin(math.sqrt(0.11)) - 2 * math.asin(math.sqrt(0.10))
    expected = 2 * ((stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) / h) ** 2
    assert required_users(0.10, 0.10) == math.ceil(expected)
    n_mean = required_users(4.0, 0.05, kind="mean", sd=3.0)
    assert n_mean == math.ceil(2 * ((stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) / (0.2 / 3.0)) ** 2)
    assert achieved_power(n_mean, 4.0, 0.05, kind="mean", sd=3.0) == pytest.approx(0.8, abs=0.001)
    with pytest.raises(ParameterError):
        required_users(4.0, 0.05, kind="mean")
    with pytest.raises(ParameterError):
        required_users(0.95, 0.10)


@pytest.mark.parametrize("fraction", [0.35, 0.7])
def test_achieved_power_agrees_with_a_direct_simulation(fraction: float) -> None:
    """Mean metric (normal, sd 3, +5% on 4.0), part of the designed size; 600 experiments."""
    n = int(fraction * required_users(4.0, 0.05, kind="mean", sd=3.0))
    predicted = achieved_power(n, 4.0, 0.05, kind="mean", sd=3.0)
    rng = np.random.default_rng(int(100 * fraction))
    hits = sum(
        compare(rng.normal(4.0, 3.0, n), rng.normal(4.2, 3.0, n), kind="mean", bootstrap=0).p_value < ALPHA
        for _ in range(600)
    )
    sd = math.sqrt(predicted * (1 - predicted) / 600)
    assert abs(hits / 600 - predicted) < 3.5 * sd


def test_users_still_needed() -> None:
    n = required_users(0.2, 0.1)
    assert users_still_needed(n - 100, 0.2, 0.1) == 100
    assert users_still_needed(n + 5, 0.2, 0.1) == 0


# --------------------------------------------------------------------------------------------------------------
# SRM


def test_srm_flags_52_48_at_10000_users() -> None:
    result = srm([5200, 4800], [0.5, 0.5])
    assert result.chi2 == pytest.approx(16.0)
    assert result.flagged and result.p_value < 1e-4


def test_srm_simulated_power_and_false_alarms() -> None:
    rng = np.random.default_rng(52)
    n_sim = 1000
    treated = rng.binomial(10_000, 0.52, n_sim)
    flagged_52 = np.mean([srm([10_000 - k, k], [1, 1]).flagged for k in treated])
    balanced = rng.binomial(10_000, 0.50, n_sim)
    flagged_50 = np.mean([srm([10_000 - k, k], [1, 1]).flagged for k in balanced])
    # Expected power: non-central chi-squared with lambda = 10,000 * 0.04^2 = 16 beyond the 0.001 critical value.
    predicted = stats.ncx2.sf(stats.chi2.isf(0.001, 1), 1, 16.0)
    print(f"SRM: 52/48 flagged in {flagged_52:.3f} (predicted {predicted:.3f}); 50/50 in {flagged_50:.3f}")
    assert flagged_52 >= 0.68 and abs(flagged_52 - predicted) < 0.05
    assert 1 - flagged_50 >= 0.95


def test_srm_uses_weights_and_checks_input() -> None:
    assert not srm([2000, 8000], [20, 80]).flagged
    assert srm([2000, 8000], [1, 1]).flagged
    with pytest.raises(ParameterError):
        srm([10, 20], [1.0])
    with pytest.raises(ParameterError):
        srm([10, -1], [1.0, 1.0])


# --------------------------------------------------------------------------------------------------------------
# CUPED


def test_cuped_reduces_variance_by_rho_squared_and_stays_unbiased() -> None:
    """Pre-period metric correlated rho = 0.7 with the outcome; +0.3 planted on a mean of 10; 800 experiments."""
    rng = np.random.default_rng(7)
    rho, n, lift, n_exp = 0.7, 2000, 0.3, 800
    raw, adjusted, reductions = np.empty(n_exp), np.empty(n_exp), np.empty(n_exp)
    for i in range(n_exp):
        x = rng.normal(10.0, 2.0, 2 * n)
        noise = rng.normal(0.0, 2.0, 2 * n)
        y = 10.0 + rho * (x - 10.0) + math.sqrt(1 - rho**2) * noise
        y[n:] += lift
        raw[i] = y[n:].mean() - y[:n].mean()
        adj = compare(y[:n], y[n:], kind="mean", bootstrap=0, pre_control=x[:n], pre_treatment=x[n:])
        assert adj.variance_reduction is not None
        adjusted[i], reductions[i] = adj.abs_lift, adj.variance_reduction
    ratio = np.var(adjusted) / np.var(raw)
    print(
        f"CUPED: reported reduction {reductions.mean():.3f} (rho^2 = {rho**2:.2f}), "
        f"variance of the estimate {ratio:.3f} of the raw one, mean estimate {adjusted.mean():.4f} (planted {lift})"
    )
    assert reductions.mean() == pytest.approx(rho**2, abs=0.02)
    assert ratio == pytest.approx(1 - rho**2, abs=0.06)
    assert abs(adjusted.mean() - lift) < 3 * adjusted.std() / math.sqrt(n_exp)
    assert abs(adjusted.mean() - lift) < 0.01


def test_cuped_function() -> None:
    x = np.array([1.0, 2.0, 3.0, 4.0])
    y = 2 * x + 1
    adjusted, theta, reduction = cuped(y, x)
    assert theta == pytest.approx(2.0)
    assert np.allclose(adjusted, y.mean())
    assert reduction == pytest.approx(1.0)
    _, theta0, red0 = cuped(y, np.ones(4))  # a constant covariate explains nothing
    assert theta0 == 0.0 and red0 == pytest.approx(0.0)
    with pytest.raises(DataValidationError):
        cuped(y, x[:3])


def test_cuped_on_a_hit_rate_reports_the_reduction() -> None:
    rng = np.random.default_rng(9)
    pre = (rng.random(20_000) < 0.3).astype(float)
    post = np.where(rng.random(20_000) < 0.6, pre, (rng.random(20_000) < 0.3)).astype(float)
    r = compare(
        post[:10_000],
        post[10_000:],
        kind="proportion",
        bootstrap=200,
        pre_control=pre[:10_000],
        pre_treatment=pre[10_000:],
    )
    assert r.variance_reduction is not None and r.variance_reduction > 0.25
    assert r.cuped_theta == pytest.approx(0.6, abs=0.03)


# --------------------------------------------------------------------------------------------------------------
# Holm


def test_holm_matches_statsmodels_and_the_hand_computation() -> None:
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    p = np.random.default_rng(4).uniform(0, 0.2, 12)
    assert holm(p) == pytest.approx(multipletests(p, method="holm")[1])
    assert holm([]).size == 0
    with pytest.raises(ParameterError):
        holm([0.5, 1.5])


# --------------------------------------------------------------------------------------------------------------
# Guardrails, verdict and report


def _comparison(seq_rel_ci: tuple[float, float], n: int = 10_000) -> Comparison:
    return Comparison(
        metric="hit_rate",
        kind="proportion",
        alpha=0.05,
        n_control=n,
        n_treatment=n,
        mean_control=0.1,
        mean_treatment=0.1,
        ci_control=(0.09, 0.11),
        ci_treatment=(0.09, 0.11),
        abs_lift=0.0,
        abs_ci=(-0.01, 0.01),
        rel_lift=sum(seq_rel_ci) / 2,
        rel_ci=seq_rel_ci,
        p_value=0.5,
        bootstrap_rel_ci=None,
        seq_abs_ci=(-0.01, 0.01),
        seq_rel_ci=seq_rel_ci,
        t_star=5000,
    )


def test_guardrail_check() -> None:
    assert guardrail_check("p95_latency", 100.0, 109.0, 0.10).breached is False
    slow = guardrail_check("p95_latency", 100.0, 115.0, 0.10)
    assert slow.breached and slow.relative_change == pytest.approx(0.15)
    assert guardrail_check("coverage", 0.40, 0.30, 0.10, worse="lower").breached
    assert not guardrail_check("coverage", 0.40, 0.60, 0.10, worse="lower").breached
    assert guardrail_check("error_ratio", 0.0, 0.01, 0.10).breached
    assert not guardrail_check("error_ratio", 0.0001, 0.0002, 0.10, min_absolute_change=0.001).breached
    results = check_guardrails(
        {"p95_latency": 100, "error_ratio": 0.01, "fallback_rate": 0.2, "coverage": 0.5},
        {"p95_latency": 100, "error_ratio": 0.01, "fallback_rate": 0.3, "coverage": 0.5},
    )
    assert [g.name for g in results if g.breached] == ["fallback_rate"]


@pytest.mark.parametrize(
    ("ci", "min_lift", "required_n", "decision"),
    [
        ((0.01, 0.05), 0.0, None, "ship"),
        ((0.01, 0.05), 0.02, None, "keep running"),
        ((0.03, 0.05), 0.02, None, "ship"),
        ((-0.05, -0.01), 0.0, None, "do not ship"),
        ((-0.01, 0.01), 0.02, None, "do not ship"),
        ((-0.01, 0.01), 0.02, 20_000, "keep running"),
        ((-0.01, 0.01), 0.02, 10_000, "do not ship"),
        ((-0.01, 0.03), 0.02, None, "keep running"),
        ((-0.01, 0.01), 0.0, None, "keep running"),
    ],
)
def test_verdict(ci: tuple[float, float], min_lift: float, required_n: int | None, decision: str) -> None:
    v = verdict(_comparison(ci), min_lift=min_lift, required_n=required_n)
    assert v.decision == decision
    if required_n == 20_000:
        assert "10000 more users" in v.reason


def test_a_breached_guardrail_or_an_srm_blocks_shipping() -> None:
    slow = guardrail_check("p95_latency", 100.0, 150.0, 0.10)
    v = verdict(_comparison((0.05, 0.10)), guardrails=[slow])
    assert v.decision == "do not ship" and "p95_latency" in v.reason
    v = verdict(_comparison((0.05, 0.10)), srm_result=srm([5200, 4800], [1, 1]))
    assert v.decision == "do not ship" and "sample ratio" in v.reason
    with pytest.raises(ParameterError):
        verdict(_comparison((0.05, 0.10)), min_lift=-0.1)


def test_report_round_trips_to_json_and_markdown(tmp_path: Path) -> None:
    rng = np.random.default_rng(10)
    hits_c = (rng.random(30_000) < 0.10).astype(float)
    hits_t = (rng.random(30_000) < 0.12).astype(float)
    primary = compare(hits_c, hits_t, kind="proportion", bootstrap=300, metric="hit_rate")
    plays = [
        compare(rng.poisson(3, 5000), rng.poisson(3, 5000), kind="mean", bootstrap=0, metric=m)
        for m in ("plays", "mean_rating")
    ]
    guards = check_guardrails({"p95_latency": 80.0, "coverage": 0.3}, {"p95_latency": 82.0, "coverage": 0.31})
    report = build_report(
        "ease-vs-als", primary, secondary=plays, srm_result=srm([30_000, 30_000], [1, 1]), guardrails=guards
    )
    assert report.verdict.decision == "ship"
    assert [c.p_value_adjusted for c in report.secondary] == pytest.approx(list(holm([c.p_value for c in plays])))
    payload = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert payload["verdict"]["decision"] == "ship"
    assert payload["primary"]["n_control"] == 30_000
    md = report.to_markdown()
    assert "**Decision: ship**" in md and "Holm" in md and "| p95_latency |" in md

    # Lift over time: the points come from the caller (here, the running confidence sequence).
    looks = np.arange(2000, 60_001, 2000)
    values = np.concatenate([hits_c, hits_t])
    order = rng.permutation(values.size)
    est, lo, hi = running_difference(values[order], order >= 30_000, looks, relative=True)
    path = plot_lift_over_time(list(zip(looks, est, lo, hi, strict=True)), tmp_path / "lift.png", min_lift=0.01)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    with pytest.raises(ParameterError):
        plot_lift_over_time([], tmp_path / "empty.png")
