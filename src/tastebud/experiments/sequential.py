"""Always-valid confidence sequences for the difference between two variants, so an experiment can be watched daily.

A fixed-horizon interval covers the truth with probability 1 - alpha at *one* planned look; looked at after every
batch of users and stopped at the first significant look, its false-positive rate climbs far above alpha. A
confidence sequence covers the truth at *every* sample size simultaneously, so it may be read, and the experiment
stopped, at any time.

We use the asymptotic confidence sequence of Waudby-Smith, Arnold, Wu, Howard, Ramdas and Lindon, "Time-uniform
central limit theory and asymptotic confidence sequences" (Annals of Statistics, 2024; arXiv:2103.06476), Theorem 2.2,
built on Robbins' normal mixture: for the mean of t i.i.d. observations with variance estimate sigma_hat^2,

    mu_hat_t ± sigma_hat_t * B(t),   B(t) = sqrt( 2 (t rho^2 + 1) / (t^2 rho^2) * log( sqrt(t rho^2 + 1) / alpha ) ).

B(t) is where Robbins' mixture martingale, int exp(lambda S_t - lambda^2 t / 2) dN(lambda; 0, rho^2)
= exp(rho^2 S_t^2 / (2 (1 + t rho^2))) / sqrt(1 + t rho^2), reaches 1/alpha at S_t = t B(t) (Ville's inequality).
It is two-sided at level alpha as written (the squared statistic covers both tails), and it is the formula GrowthBook
uses for its sequential testing.

**The tuning parameter** ``t_star`` (GrowthBook's "sequential tuning parameter", default 5,000 there and here) is the
sample size, counted in users of both variants together, at which the interval is tightest: rho is chosen to minimise
B(t_star). Set it near the number of users the experiment is planned to reach; intervals at other sample sizes are
somewhat wider but remain valid at every n. See :func:`rho_for`.

No maintained package is used: ``confseq`` (0.0.11) is a C++ extension that needs Boost headers to build and does not
install from PyPI on Python 3.11 here, and ``savvi`` implements Bayes-factor tests (Lindon et al.), not this formula.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from tastebud.errors import ParameterError

#: Default tuning parameter: total users (both variants) at which the interval is tightest (as GrowthBook).
DEFAULT_T_STAR = 5000


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ParameterError(f"alpha must lie in (0, 1), got {alpha}")


def rho_for(t_star: float, alpha: float = 0.05) -> float:
    """The mixture's tuning parameter rho that makes the confidence sequence tightest at ``t_star`` observations.

    With x = t rho^2 the squared width at t is proportional to (x + 1) / x * log((x + 1) / alpha^2), minimised where
    x = -2 log(alpha) + log(1 + x). One fixed-point step from x = -2 log(alpha) gives the closed form that GrowthBook
    documents for its tuning parameter (within a fraction of a percent of the exact minimum width):

        rho = sqrt( (-2 log(alpha) + log(-2 log(alpha) + 1)) / t_star ).

    Args:
        t_star: the sample size (users of both variants together, for a two-sample comparison) at which the interval
            should be tightest; the planned size of the experiment is a good choice. Default elsewhere:
            :data:`DEFAULT_T_STAR` (5,000).
        alpha: error level of the two-sided sequence.
    """
    _check_alpha(alpha)
    if t_star <= 0:
        raise ParameterError(f"t_star must be positive, got {t_star}")
    log_a = -2.0 * math.log(alpha)
    return math.sqrt((log_a + math.log(log_a + 1.0)) / t_star)


def boundary(t: ArrayLike, rho: float, alpha: float = 0.05) -> NDArray[np.float64]:
    """Half-width of the confidence sequence for a mean of ``t`` observations with unit variance.

    B(t) = sqrt( 2 (t rho^2 + 1) / (t^2 rho^2) * log( sqrt(t rho^2 + 1) / alpha ) ); multiply by sigma_hat.
    Compare 1.96 / sqrt(t) for the fixed-horizon 95% interval.
    """
    _check_alpha(alpha)
    if rho <= 0:
        raise ParameterError(f"rho must be positive, got {rho}")
    tt = np.asarray(t, dtype=np.float64)
    if np.any(tt <= 0):
        raise ParameterError("the sample size t must be positive")
    r2 = rho * rho
    return np.sqrt(2.0 * (tt * r2 + 1.0) / (tt * tt * r2) * np.log(np.sqrt(tt * r2 + 1.0) / alpha))


def mean_sequence(
    x: ArrayLike, *, alpha: float = 0.05, t_star: float = DEFAULT_T_STAR
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Running mean of ``x`` and its always-valid interval after every observation: (mean, lo, hi), each of length n.

    sigma_hat_t is the running sample standard deviation (ddof=1); the first entry has none and gets (-inf, inf).
    """
    xs = np.asarray(x, dtype=np.float64)
    if xs.ndim != 1 or xs.size == 0:
        raise ParameterError("mean_sequence needs a non-empty 1-D array")
    t = np.arange(1, xs.size + 1, dtype=np.float64)
    mean = np.cumsum(xs) / t
    sq = np.cumsum(xs * xs)
    with np.errstate(invalid="ignore", divide="ignore"):
        var = np.maximum(sq - t * mean * mean, 0.0) / (t - 1.0)
    half = np.sqrt(var) * boundary(t, rho_for(t_star, alpha), alpha)
    half[0] = np.inf
    return mean, mean - half, mean + half


def difference_sequence(
    mean_c: ArrayLike,
    var_c: ArrayLike,
    n_c: ArrayLike,
    mean_t: ArrayLike,
    var_t: ArrayLike,
    n_t: ArrayLike,
    *,
    alpha: float = 0.05,
    t_star: float = DEFAULT_T_STAR,
    relative: bool = False,
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Always-valid interval of treatment minus control (or treatment / control - 1) from summary statistics.

    Arguments broadcast, so one call evaluates many looks of many simulated experiments. Returns
    (estimate, lo, hi); where a variant has fewer than 2 users the interval is (-inf, inf).

    Derivation. User i (i = 1..t, t = n_c + n_t) is assigned to treatment with probability p (A_i = 1).
    The difference in means is asymptotically linear,

        Delta_hat - Delta = (1/t) sum_i phi_i + o_p(t^-1/2),
        phi_i = A_i (Y_i - mu_t) / p - (1 - A_i) (Y_i - mu_c) / (1 - p),
        Var(phi) = sigma_t^2 / p + sigma_c^2 / (1 - p),

    so Theorem 2.2 of Waudby-Smith et al. (their Section 3 does the same for the average treatment effect) applies to
    the mean of the phi_i with sigma_hat_phi in place of sigma_hat. Plugging in p_hat = n_t / t,

        sigma_hat_phi^2 = t * (s_t^2 / n_t + s_c^2 / n_c),   half-width = sqrt(t (s_t^2/n_t + s_c^2/n_c)) * B(t),

    i.e. the usual standard error times sqrt(t) B(t) instead of times z_{1-alpha/2}. For proportions s^2 = p_hat
    (1 - p_hat) (up to n / (n - 1)). For the relative lift r = m_t / m_c - 1 the delta method gives the influence
    function phi_t / m_c - m_t phi_c / m_c^2, hence t * (s_t^2 / (n_t m_c^2) + m_t^2 s_c^2 / (n_c m_c^4)) in place of
    sigma_hat_phi^2.
    """
    _check_alpha(alpha)
    mc, vc, nc = (np.asarray(a, dtype=np.float64) for a in (mean_c, var_c, n_c))
    mt, vt, nt = (np.asarray(a, dtype=np.float64) for a in (mean_t, var_t, n_t))
    valid = (nc >= 2) & (nt >= 2)
    nc_s = np.where(valid, nc, 2.0)
    nt_s = np.where(valid, nt, 2.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        if relative:
            est = mt / mc - 1.0
            se2 = vt / (nt_s * mc**2) + mt**2 * vc / (nc_s * mc**4)
        else:
            est = mt - mc
            se2 = vt / nt_s + vc / nc_s
        total = nc_s + nt_s
        half = np.sqrt(total * se2) * boundary(total, rho_for(t_star, alpha), alpha)
        half = np.where(valid & np.isfinite(half), half, np.inf)
        # an infinite estimate (control mean 0 in a relative lift) minus an infinite half-width is NaN: no interval
        return est, est - half, est + half


@dataclass(frozen=True)
class SequentialInterval:
    """An always-valid interval of a difference between two variants at the current sample size."""

    estimate: float
    lo: float
    hi: float
    n: int  #: users of both variants together
    alpha: float
    t_star: float
    relative: bool

    def excludes(self, value: float = 0.0) -> bool:
        """True when ``value`` lies outside the interval (a significant difference from it, valid at any look)."""
        return bool(self.lo > value or self.hi < value)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (infinite or undefined bounds become None)."""

        def clean(v: float) -> float | None:
            return float(v) if math.isfinite(v) else None

        return {
            "estimate": clean(self.estimate),
            "lo": clean(self.lo),
            "hi": clean(self.hi),
            "n": self.n,
            "alpha": self.alpha,
            "t_star": self.t_star,
            "relative": self.relative,
        }


def difference_interval(
    control: ArrayLike,
    treatment: ArrayLike,
    *,
    alpha: float = 0.05,
    t_star: float = DEFAULT_T_STAR,
    relative: bool = False,
) -> SequentialInterval:
    """Always-valid interval of mean(treatment) - mean(control) (or the relative lift) from per-user values."""
    c = np.asarray(control, dtype=np.float64)
    t = np.asarray(treatment, dtype=np.float64)
    var_c = float(np.var(c, ddof=1)) if c.size >= 2 else math.nan
    var_t = float(np.var(t, ddof=1)) if t.size >= 2 else math.nan
    mean_c = float(c.mean()) if c.size else math.nan
    mean_t = float(t.mean()) if t.size else math.nan
    est, lo, hi = difference_sequence(
        mean_c, var_c, c.size, mean_t, var_t, t.size, alpha=alpha, t_star=t_star, relative=relative
    )
    return SequentialInterval(float(est), float(lo), float(hi), int(c.size + t.size), alpha, t_star, relative)


def running_difference(
    values: ArrayLike,
    is_treatment: ArrayLike,
    looks: ArrayLike,
    *,
    alpha: float = 0.05,
    t_star: float = DEFAULT_T_STAR,
    relative: bool = False,
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """The always-valid interval after the first ``looks[j]`` users, for every look at once.

    Args:
        values: per-user metric in arrival order, shape (..., n_users); leading axes are independent experiments.
        is_treatment: boolean assignment of each user, same shape as ``values``.
        looks: increasing user counts (1-based) at which the experiment is analysed.

    Returns:
        (estimate, lo, hi), each of shape (..., n_looks): the points of a lift-over-time plot.
    """
    y = np.asarray(values, dtype=np.float64)
    a = np.asarray(is_treatment, dtype=bool)
    idx = np.asarray(looks, dtype=np.int64) - 1
    if y.shape != a.shape:
        raise ParameterError("values and is_treatment must have the same shape")
    if idx.size == 0 or idx.min() < 0 or idx.max() >= y.shape[-1]:
        raise ParameterError(f"looks must lie in 1..{y.shape[-1]}")

    def cum(x: NDArray[np.float64]) -> NDArray[np.float64]:
        return np.cumsum(x, axis=-1)[..., idx]

    at = a.astype(np.float64)
    n_t, n_c = cum(at), cum(1.0 - at)
    s_t, s_c = cum(y * at), cum(y * (1.0 - at))
    q_t, q_c = cum(y * y * at), cum(y * y * (1.0 - at))
    with np.errstate(invalid="ignore", divide="ignore"):
        m_t, m_c = s_t / n_t, s_c / n_c
        v_t = np.maximum(q_t - n_t * m_t**2, 0.0) / (n_t - 1.0)
        v_c = np.maximum(q_c - n_c * m_c**2, 0.0) / (n_c - 1.0)
    return difference_sequence(m_c, v_c, n_c, m_t, v_t, n_t, alpha=alpha, t_star=t_star, relative=relative)
