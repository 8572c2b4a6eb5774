"""The always-valid confidence sequence: the published boundary, its tuning, and its error rate under peeking."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, optimize, stats

from tastebud.errors import ParameterError
from tastebud.experiments.analysis import compare
from tastebud.experiments.sequential import (
    DEFAULT_T_STAR,
    boundary,
    difference_interval,
    difference_sequence,
    mean_sequence,
    rho_for,
    running_difference,
)

ALPHA = 0.05


def test_boundary_matches_hand_computed_value() -> None:
    # t = 1000, rho = 0.05, alpha = 0.05: t rho^2 = 2.5, so
    # B = sqrt(2 * 3.5 / (1e6 * 0.0025) * log(sqrt(3.5) / 0.05)) = sqrt(0.0028 * log(37.4166)) = 0.1007071
    assert float(boundary(1000, 0.05, 0.05)) == pytest.approx(0.1007071, abs=1e-7)


@pytest.mark.parametrize(("t", "rho", "alpha"), [(100, 0.1, 0.05), (5000, 0.0398, 0.05), (20_000, 0.01, 0.01)])
def test_boundary_is_where_robbins_normal_mixture_reaches_one_over_alpha(t: int, rho: float, alpha: float) -> None:
    # Robbins' mixture martingale at S_t = t * B(t): int exp(l S - l^2 t / 2) N(l; 0, rho^2) dl must equal 1/alpha.
    s = t * float(boundary(t, rho, alpha))

    def integrand(lam: float) -> float:
        return math.exp(lam * s - lam * lam * t / 2.0) * stats.norm.pdf(lam, 0.0, rho)

    peak = s / t  # the integrand's mass sits near lambda = S / t
    value, _ = integrate.quad(integrand, peak - 40 * rho, peak + 40 * rho, points=[peak], limit=200)
    assert value == pytest.approx(1.0 / alpha, rel=1e-6)


def test_rho_for_is_the_closed_form_and_the_default_tuning() -> None:
    # -2 ln 0.05 = 5.99146; ln(6.99146) = 1.94469; sqrt(7.93615 / 5000) = 0.0398401
    assert rho_for(DEFAULT_T_STAR, 0.05) == pytest.approx(0.0398401, abs=1e-7)
    assert DEFAULT_T_STAR == 5000


@pytest.mark.parametrize("t_star", [500, 5000, 100_000])
def test_rho_for_makes_the_interval_tightest_at_t_star(t_star: int) -> None:
    best = optimize.minimize_scalar(
        lambda log_rho: float(boundary(t_star, math.exp(log_rho), ALPHA)), bounds=(-12, 2), method="bounded"
    )
    at_rho_for = float(boundary(t_star, rho_for(t_star, ALPHA), ALPHA))
    assert at_rho_for <= best.fun * 1.005  # the closed form is one fixed-point step from the exact optimum
    # ... and t_star is where that rho is best: other sample sizes would prefer another rho.
    other = float(boundary(t_star, rho_for(4 * t_star, ALPHA), ALPHA))
    assert other > at_rho_for


def test_boundary_is_wider_than_the_fixed_horizon_interval_and_shrinks() -> None:
    t = np.array([10, 100, 1000, 10_000, 100_000, 1_000_000])
    b = boundary(t, rho_for(5000), ALPHA)
    assert np.all(np.sqrt(t) * b > stats.norm.ppf(1 - ALPHA / 2))
    assert np.all(np.diff(b) < 0)


def test_bad_parameters_raise() -> None:
    with pytest.raises(ParameterError):
        rho_for(0)
    with pytest.raises(ParameterError):
        rho_for(100, alpha=1.5)
    with pytest.raises(ParameterError):
        boundary(0, 0.1)
    with pytest.raises(ParameterError):
        running_difference(np.zeros(10), np.zeros(10, bool), [11])


def test_mean_sequence_covers_the_mean_at_every_t_simultaneously() -> None:
    rng = np.random.default_rng(11)
    n_paths, n = 300, 4000
    misses = 0
    for _ in range(n_paths):
        x = rng.exponential(2.0, n)  # skewed on purpose; true mean 2
        _, lo, hi = mean_sequence(x, t_star=1000)
        misses += bool(np.any((lo[20:] > 2.0) | (hi[20:] < 2.0)))
    assert misses / n_paths <= ALPHA + 0.02


def test_difference_interval_is_the_two_sample_formula() -> None:
    rng = np.random.default_rng(3)
    c, t = rng.normal(1.0, 2.0, 700), rng.normal(1.3, 3.0, 900)
    got = difference_interval(c, t, t_star=2000)
    n = c.size + t.size
    se2 = c.var(ddof=1) / c.size + t.var(ddof=1) / t.size
    half = math.sqrt(n * se2) * float(boundary(n, rho_for(2000), ALPHA))
    d = t.mean() - c.mean()
    assert (got.estimate, got.lo, got.hi, got.n) == pytest.approx((d, d - half, d + half, n))
    rel = difference_interval(c, t, t_star=2000, relative=True)
    mc, mt = c.mean(), t.mean()
    se2_rel = t.var(ddof=1) / (t.size * mc**2) + mt**2 * c.var(ddof=1) / (c.size * mc**4)
    half_rel = math.sqrt(n * se2_rel) * float(boundary(n, rho_for(2000), ALPHA))
    assert (rel.lo, rel.hi) == pytest.approx((mt / mc - 1 - half_rel, mt / mc - 1 + half_rel))
    assert rel.to_dict()["relative"] is True


def test_running_difference_agrees_with_difference_interval_at_each_look() -> None:
    rng = np.random.default_rng(5)
    y = rng.poisson(3.0, 1000).astype(float)
    a = rng.random(1000) < 0.5
    looks = np.array([50, 400, 1000])
    est, lo, hi = running_difference(y, a, looks, t_star=800)
    for j, n in enumerate(looks):
        ref = difference_interval(y[:n][~a[:n]], y[:n][a[:n]], t_star=800)
        assert (est[j], lo[j], hi[j]) == pytest.approx((ref.estimate, ref.lo, ref.hi))


def test_an_undefined_variance_gives_an_infinite_interval() -> None:
    _, lo, hi = difference_sequence(0.1, np.nan, 1, 0.2, 0.01, 50)
    assert lo == -np.inf and hi == np.inf
    assert not difference_interval([1.0], [0.0, 1.0, 1.0]).excludes(0.0)


def _naive_pvalues(y: np.ndarray, a: np.ndarray, looks: np.ndarray) -> np.ndarray:
    """Pooled two-proportion z-test after each look, vectorised over experiments (as compare() computes it)."""
    at = a.astype(float)
    n_t, n_c = np.cumsum(at, 1)[:, looks - 1], np.cumsum(1 - at, 1)[:, looks - 1]
    x_t, x_c = np.cumsum(y * at, 1)[:, looks - 1], np.cumsum(y * (1 - at), 1)[:, looks - 1]
    pooled = (x_t + x_c) / (n_t + n_c)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (x_t / n_t - x_c / n_c) / np.sqrt(pooled * (1 - pooled) * (1 / n_t + 1 / n_c))
    return np.where(np.isfinite(z), 2 * stats.norm.sf(np.abs(z)), 1.0)


def test_peeking_inflates_the_naive_test_but_not_the_confidence_sequence() -> None:
    """A/A test, 10% hit rate, 10,000 users, analysed after every 100 users (100 looks), 400 experiments."""
    rng = np.random.default_rng(2024)
    n_exp, n_users = 400, 10_000
    y = (rng.random((n_exp, n_users)) < 0.10).astype(float)
    a = rng.random((n_exp, n_users)) < 0.5
    looks = np.arange(100, n_users + 1, 100)

    p_naive = _naive_pvalues(y, a, looks)
    # The vectorised naive test is compare()'s test: check one experiment at two looks.
    for j in (9, 99):
        n = looks[j]
        ref = compare(y[0, :n][~a[0, :n]], y[0, :n][a[0, :n]], kind="proportion", bootstrap=0)
        assert p_naive[0, j] == pytest.approx(ref.p_value, rel=1e-9)
    naive_fpr = float(np.mean(np.any(p_naive < ALPHA, axis=1)))
    final_fpr = float(np.mean(p_naive[:, -1] < ALPHA))  # the one planned look: about alpha

    _, lo, hi = running_difference(y, a, looks, t_star=n_users)
    seq_fpr = float(np.mean(np.any((lo > 0) | (hi < 0), axis=1)))
    print(f"A/A with 100 looks: naive FPR {naive_fpr:.3f} (single look {final_fpr:.3f}), sequential {seq_fpr:.3f}")
    assert naive_fpr > 2 * ALPHA
    assert final_fpr <= ALPHA + 0.03
    assert seq_fpr <= ALPHA + 0.02


def test_confidence_sequence_keeps_its_level_for_a_skewed_count_metric() -> None:
    """Plays per user (a heavy-tailed count), A/A, 300 experiments of 6,000 users, looks every 100 users."""
    rng = np.random.default_rng(99)
    y = rng.negative_binomial(0.5, 0.1, size=(300, 6000)).astype(float)  # mean 4.5, sd about 9.5
    a = rng.random(y.shape) < 0.5
    _, lo, hi = running_difference(y, a, np.arange(100, 6001, 100))
    assert float(np.mean(np.any((lo > 0) | (hi < 0), axis=1))) <= ALPHA + 0.02


def test_confidence_sequence_finds_a_real_lift() -> None:
    """+20% on a 10% hit rate: by 20,000 users the interval excludes 0 in most experiments, and it covers the truth."""
    rng = np.random.default_rng(8)
    n_exp, n_users = 200, 20_000
    a = rng.random((n_exp, n_users)) < 0.5
    y = (rng.random((n_exp, n_users)) < np.where(a, 0.12, 0.10)).astype(float)
    _, lo, hi = running_difference(y, a, np.array([n_users]))
    assert float(np.mean(lo[:, -1] > 0)) >= 0.8
    assert float(np.mean((lo[:, -1] <= 0.02) & (hi[:, -1] >= 0.02))) >= 0.95
