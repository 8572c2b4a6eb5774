"""The statistics of an A/B test: pure functions on per-user arrays, one value per user per variant.

The user is the unit of randomisation, so every metric arrives as one value per user (a 0/1 hit, a count of plays,
a mean rating). This module compares two such arrays (:func:`compare`), checks the split (:func:`srm`), reduces
variance with pre-period data (:func:`cuped`), corrects secondary metrics (:func:`holm`), sizes experiments
(:func:`required_users`, :func:`achieved_power`, :func:`users_still_needed`), checks guardrails
(:func:`guardrail_check`) and turns it all into a decision (:func:`verdict`) and a report (:class:`ExperimentReport`).

References: Kohavi, Tang and Xu, "Trustworthy Online Controlled Experiments" (2020) for SRM, guardrails and the
delta method; Deng, Xu, Kohavi and Walker, "Improving the Sensitivity of Online Controlled Experiments by Utilizing
Pre-Experiment Data" (WSDM 2013) for CUPED; Holm, "A Simple Sequentially Rejective Multiple Test Procedure" (1979);
Waudby-Smith et al., "Time-uniform central limit theory and asymptotic confidence sequences" (2024) for the
always-valid intervals (:mod:`tastebud.experiments.sequential`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats

from tastebud.errors import DataValidationError, ParameterError
from tastebud.experiments.sequential import DEFAULT_T_STAR, difference_interval

Kind = Literal["proportion", "mean"]
Decision = Literal["ship", "do not ship", "keep running"]
Interval = tuple[float, float]

#: p-value below which a sample ratio mismatch is flagged (strict, because the check runs on every look).
SRM_THRESHOLD = 0.001
#: Guardrails and their default limits: (largest tolerated relative change, which direction is worse).
DEFAULT_GUARDRAIL_LIMITS: dict[str, tuple[float, Literal["higher", "lower"]]] = {
    "p95_latency": (0.10, "higher"),
    "error_ratio": (0.10, "higher"),
    "fallback_rate": (0.10, "higher"),
    "coverage": (0.10, "lower"),
}

#: Smallest absolute worsening that counts as a breach, per guardrail: below it a relative change is noise (a p95 of
#: 2 ms against 1.7 ms is +18% yet nothing a user notices; 0.0001 against 0.0002 errors need not block a launch).
DEFAULT_GUARDRAIL_FLOORS: dict[str, float] = {
    "p95_latency": 5.0,  # ms
    "error_ratio": 0.001,
    "fallback_rate": 0.01,
    "coverage": 0.01,
}


def json_ready(value: Any) -> Any:
    """JSON-able copy: numpy scalars to Python, tuples to lists, NaN and infinities to None, keys to strings."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _fmt(x: float | None, pct: bool = False) -> str:
    if x is None or not math.isfinite(x):
        return "–"
    return f"{100 * x:+.2f}%" if pct else f"{x:.4g}"


def _fmt_ci(ci: Interval | None, pct: bool = False) -> str:
    return "–" if ci is None else f"[{_fmt(ci[0], pct)}, {_fmt(ci[1], pct)}]"


def _as_values(x: ArrayLike, what: str, kind: Kind) -> NDArray[np.float64]:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1 or arr.size < 2:
        raise DataValidationError(f"{what}: needs a 1-D array of at least 2 users, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise DataValidationError(f"{what}: values must be finite (no NaN or infinity)")
    if kind == "proportion" and not np.all((arr == 0.0) | (arr == 1.0)):
        raise DataValidationError(f"{what}: kind='proportion' needs 0/1 values per user")
    return arr


# ---------------------------------------------------------------------------------------------------------------
# Comparison of two variants


@dataclass(frozen=True)
class Comparison:
    """Control against treatment on one metric: estimates, intervals at level 1 - alpha and the p-value."""

    metric: str
    kind: Kind
    alpha: float
    n_control: int
    n_treatment: int
    mean_control: float
    mean_treatment: float
    ci_control: Interval
    ci_treatment: Interval
    abs_lift: float  #: mean_treatment - mean_control
    abs_ci: Interval
    rel_lift: float  #: mean_treatment / mean_control - 1
    rel_ci: Interval  #: delta method
    p_value: float  #: fixed-horizon: two-proportion z-test or Welch t-test
    bootstrap_rel_ci: Interval | None  #: percentile bootstrap of the relative lift (None when bootstrap=0)
    seq_abs_ci: Interval  #: always-valid (confidence sequence) interval of the absolute lift
    seq_rel_ci: Interval  #: always-valid interval of the relative lift
    t_star: float  #: tuning parameter of the confidence sequence (users of both variants)
    cuped_theta: float | None = None
    variance_reduction: float | None = None  #: 1 - Var(adjusted) / Var(raw), when CUPED was applied
    p_value_adjusted: float | None = None  #: Holm-adjusted, for secondary metrics

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dictionary (NaN and infinities become None)."""
        return dict(json_ready(asdict(self)))

    def to_markdown(self) -> str:
        """A small Markdown table of this comparison."""
        pct = 100 * (1 - self.alpha)
        rows = [
            "| | control | treatment |",
            "| --- | --- | --- |",
            f"| users | {self.n_control} | {self.n_treatment} |",
            f"| mean | {_fmt(self.mean_control)} | {_fmt(self.mean_treatment)} |",
            f"| {pct:g}% CI | {_fmt_ci(self.ci_control)} | {_fmt_ci(self.ci_treatment)} |",
            "",
            f"- absolute lift {_fmt(self.abs_lift)} {_fmt_ci(self.abs_ci)}, always-valid {_fmt_ci(self.seq_abs_ci)}",
            f"- relative lift {_fmt(self.rel_lift, True)} {_fmt_ci(self.rel_ci, True)}, "
            f"always-valid {_fmt_ci(self.seq_rel_ci, True)}"
            + (f", bootstrap {_fmt_ci(self.bootstrap_rel_ci, True)}" if self.bootstrap_rel_ci else ""),
            f"- p-value {self.p_value:.4g}"
            + (f" (Holm-adjusted {self.p_value_adjusted:.4g})" if self.p_value_adjusted is not None else ""),
        ]
        if self.variance_reduction is not None:
            rows.append(
                f"- CUPED: theta {self.cuped_theta:.4g}, variance reduced by {100 * self.variance_reduction:.1f}%"
            )
        return f"**{self.metric}** ({self.kind})\n\n" + "\n".join(rows) + "\n"


def cuped(y: ArrayLike, x_pre: ArrayLike) -> tuple[NDArray[np.float64], float, float]:
    """CUPED: subtract the part of ``y`` that the pre-period covariate predicts (Deng et al., WSDM 2013).

    y_adj = y - theta (x - mean(x)), theta = Cov(y, x) / Var(x). Call it on *both variants pooled*, so that one theta
    and one mean(x) serve both: the covariate is independent of the assignment, so the difference of the adjusted
    means stays unbiased while its variance shrinks by the factor 1 - corr(y, x)^2.

    Returns:
        (adjusted y, theta, variance reduction 1 - Var(y_adj) / Var(y), which equals corr(y, x)^2 in the sample).
    """
    ys = np.asarray(y, dtype=np.float64)
    xs = np.asarray(x_pre, dtype=np.float64)
    if ys.shape != xs.shape or ys.ndim != 1 or ys.size < 2:
        raise DataValidationError(f"cuped: y and x_pre must be 1-D of the same length ≥ 2, got {ys.shape}, {xs.shape}")
    if not (np.all(np.isfinite(ys)) and np.all(np.isfinite(xs))):
        raise DataValidationError("cuped: values must be finite (no NaN or infinity)")
    var_x = float(np.var(xs, ddof=1))
    theta = float(np.cov(ys, xs, ddof=1)[0, 1] / var_x) if var_x > 0 else 0.0
    adjusted = ys - theta * (xs - xs.mean())
    var_y = float(np.var(ys, ddof=1))
    reduction = 1.0 - float(np.var(adjusted, ddof=1)) / var_y if var_y > 0 else 0.0
    return adjusted, theta, reduction


def _variant_ci(x: NDArray[np.float64], alpha: float, wilson: bool) -> Interval:
    if wilson:
        from statsmodels.stats.proportion import proportion_confint

        lo, hi = proportion_confint(int(x.sum()), x.size, alpha=alpha, method="wilson")
        return float(lo), float(hi)
    half = stats.t.ppf(1 - alpha / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
    return float(x.mean() - half), float(x.mean() + half)


def _bootstrap_rel_ci(c: NDArray[np.float64], t: NDArray[np.float64], n_boot: int, alpha: float, seed: int) -> Interval:
    """Percentile bootstrap of mean(t) / mean(c) - 1, resampling users within each variant."""
    rng = np.random.default_rng(seed)

    def boot_means(x: NDArray[np.float64]) -> NDArray[np.float64]:
        if np.all((x == 0.0) | (x == 1.0)):  # a resample of 0/1 values has a Binomial(n, p_hat) sum: same law
            return rng.binomial(x.size, x.mean(), size=n_boot) / x.size
        out = np.empty(n_boot)
        chunk = max(1, 4_000_000 // x.size)
        for start in range(0, n_boot, chunk):
            stop = min(n_boot, start + chunk)
            out[start:stop] = x[rng.integers(0, x.size, size=(stop - start, x.size))].mean(axis=1)
        return out

    mc, mt = boot_means(c), boot_means(t)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(mc != 0, mt / mc - 1.0, np.nan)
    if np.all(np.isnan(rel)):
        return math.nan, math.nan
    lo, hi = np.nanpercentile(rel, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def compare(
    control: ArrayLike,
    treatment: ArrayLike,
    *,
    kind: Kind,
    alpha: float = 0.05,
    bootstrap: int = 2000,
    seed: int = 0,
    pre_control: ArrayLike | None = None,
    pre_treatment: ArrayLike | None = None,
    t_star: float = DEFAULT_T_STAR,
    metric: str = "metric",
) -> Comparison:
    """Compare one metric between control and treatment, one value per user.

    - Per variant: mean with a Wilson interval (proportions) or a t interval (means).
    - Absolute lift d = m_t - m_c: unpooled normal interval d ± z sqrt(p_t q_t / n_t + p_c q_c / n_c) for proportions,
      the Welch interval (Welch–Satterthwaite degrees of freedom) for means.
    - Relative lift r = m_t / m_c - 1, delta method: Var(r) ≈ s_t^2 / (n_t m_c^2) + m_t^2 s_c^2 / (n_c m_c^4).
    - p-value: two-proportion z-test with the pooled proportion (statsmodels ``proportions_ztest``) or Welch's
      t-test (``scipy.stats.ttest_ind(equal_var=False)``). Valid at one planned look only.
    - Always-valid intervals of both lifts (:func:`tastebud.experiments.sequential.difference_interval`), valid at
      every look; :func:`verdict` decides from these.
    - Percentile bootstrap of the relative lift with ``bootstrap`` resamples (0 skips it).

    With ``pre_control`` and ``pre_treatment`` (the same metric, or any covariate, per user before the experiment)
    both variants are adjusted by :func:`cuped` with one pooled theta; the adjusted values are no longer 0/1, so
    every interval and the p-value then come from the Welch/normal formulas on the adjusted values.

    Raises:
        DataValidationError: arrays that are not 1-D, hold fewer than 2 users, non-finite values, or non-0/1 values
            for ``kind="proportion"``.
        ParameterError: ``alpha`` outside (0, 1) or an unknown ``kind``.
    """
    if kind not in ("proportion", "mean"):
        raise ParameterError(f"kind must be 'proportion' or 'mean', got {kind!r}")
    if not 0.0 < alpha < 1.0:
        raise ParameterError(f"alpha must lie in (0, 1), got {alpha}")
    c = _as_values(control, f"{metric} control", kind)
    t = _as_values(treatment, f"{metric} treatment", kind)
    theta = reduction = None
    if (pre_control is None) != (pre_treatment is None):
        raise ParameterError("CUPED needs both pre_control and pre_treatment")
    if pre_control is not None and pre_treatment is not None:
        x = np.concatenate([np.asarray(pre_control, float), np.asarray(pre_treatment, float)])
        adjusted, theta, reduction = cuped(np.concatenate([c, t]), x)
        c, t = adjusted[: c.size], adjusted[c.size :]
    binary = kind == "proportion" and theta is None
    z = stats.norm.ppf(1 - alpha / 2)
    mc, mt = float(c.mean()), float(t.mean())
    vc, vt = float(c.var(ddof=1)), float(t.var(ddof=1))
    se2_c, se2_t = vc / c.size, vt / t.size
    d = mt - mc
    if binary:
        from statsmodels.stats.proportion import proportions_ztest

        pooled = (c.sum() + t.sum()) / (c.size + t.size)
        if 0.0 < pooled < 1.0:
            _, p = proportions_ztest([t.sum(), c.sum()], [t.size, c.size])
        else:  # every user identical: no evidence of a difference
            p = 1.0
        # Unpooled Wald interval with the plug-in variance p (1 - p) / n.
        half = z * math.sqrt(mc * (1 - mc) / c.size + mt * (1 - mt) / t.size)
    else:
        se2 = se2_c + se2_t
        if se2 > 0:
            p = stats.ttest_ind(t, c, equal_var=False).pvalue
            df = se2**2 / (se2_c**2 / (c.size - 1) + se2_t**2 / (t.size - 1))
            half = stats.t.ppf(1 - alpha / 2, df) * math.sqrt(se2)
        else:
            p, half = (1.0 if d == 0 else 0.0), 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = mt / mc - 1.0 if mc != 0 else math.nan
        rel_half = z * math.sqrt(se2_t / mc**2 + mt**2 * se2_c / mc**4) if mc != 0 else math.nan
    seq_abs = difference_interval(c, t, alpha=alpha, t_star=t_star)
    seq_rel = difference_interval(c, t, alpha=alpha, t_star=t_star, relative=True)
    return Comparison(
        metric=metric,
        kind=kind,
        alpha=alpha,
        n_control=int(c.size),
        n_treatment=int(t.size),
        mean_control=mc,
        mean_treatment=mt,
        ci_control=_variant_ci(c, alpha, binary),
        ci_treatment=_variant_ci(t, alpha, binary),
        abs_lift=d,
        abs_ci=(d - half, d + half),
        rel_lift=rel,
        rel_ci=(rel - rel_half, rel + rel_half),
        p_value=float(p),
        bootstrap_rel_ci=_bootstrap_rel_ci(c, t, bootstrap, alpha, seed) if bootstrap > 0 else None,
        seq_abs_ci=(seq_abs.lo, seq_abs.hi),
        seq_rel_ci=(seq_rel.lo, seq_rel.hi),
        t_star=t_star,
        cuped_theta=theta,
        variance_reduction=reduction,
    )


def holm(pvalues: Sequence[float] | ArrayLike) -> NDArray[np.float64]:
    """Holm–Bonferroni adjusted p-values (Holm 1979), for secondary metrics: reject where adjusted < alpha.

    Controls the family-wise error rate under any dependence. Uses statsmodels ``multipletests(method="holm")``.
    """
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(pvalues, dtype=np.float64)
    if p.size == 0:
        return p
    if np.any((p < 0) | (p > 1)) or np.any(np.isnan(p)):
        raise ParameterError("p-values must lie in [0, 1]")
    return np.asarray(multipletests(p, method="holm")[1], dtype=np.float64)


# ---------------------------------------------------------------------------------------------------------------
# Sample ratio mismatch


@dataclass(frozen=True)
class SRMResult:
    """Chi-squared goodness of fit of the observed users per variant to the configured weights."""

    counts: tuple[int, ...]
    expected: tuple[float, ...]
    chi2: float
    p_value: float
    flagged: bool  #: p_value < threshold: the assignment or the logging is broken; trust no metric
    threshold: float = SRM_THRESHOLD

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dictionary."""
        return dict(json_ready(asdict(self)))

    def to_markdown(self) -> str:
        """One line of Markdown."""
        state = "**SRM: sample ratio mismatch**" if self.flagged else "no sample ratio mismatch"
        return (
            f"{state}: users {list(self.counts)}, expected {[round(e, 1) for e in self.expected]}, "
            f"chi² {self.chi2:.3g}, p {self.p_value:.3g} (flag below {self.threshold:g})\n"
        )


def srm(counts: Sequence[int], weights: Sequence[float], *, threshold: float = SRM_THRESHOLD) -> SRMResult:
    """Sample ratio mismatch test: chi-squared goodness of fit of ``counts`` to ``weights`` (scipy ``chisquare``).

    Flagged at p < ``threshold`` (0.001 by default, as Kohavi et al. recommend, since it is checked continually).
    ``weights`` need not sum to 1.
    """
    n = np.asarray(counts, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if n.ndim != 1 or n.size < 2 or n.shape != w.shape:
        raise ParameterError(f"srm needs ≥ 2 counts and as many weights, got {n.size} counts and {w.size} weights")
    if np.any(n < 0) or np.any(n != np.round(n)):
        raise ParameterError("srm counts must be non-negative integers")
    if np.any(w <= 0) or not np.all(np.isfinite(w)):
        raise ParameterError("srm weights must be positive")
    if n.sum() == 0:
        raise ParameterError("srm needs at least one user")
    expected = n.sum() * w / w.sum()
    chi2, p = stats.chisquare(n, expected)
    return SRMResult(
        counts=tuple(int(v) for v in n),
        expected=tuple(float(e) for e in expected),
        chi2=float(chi2),
        p_value=float(p),
        flagged=bool(p < threshold),
        threshold=threshold,
    )


# ---------------------------------------------------------------------------------------------------------------
# Power and sample size (fixed-horizon, two-sided, equal split)


def _effect_size(baseline: float, mde_relative: float, kind: Kind, sd: float | None) -> float:
    if mde_relative == 0:
        raise ParameterError("mde_relative must not be 0")
    if kind == "proportion":
        from statsmodels.stats.proportion import proportion_effectsize

        treated = baseline * (1 + mde_relative)
        if not (0 < baseline < 1 and 0 < treated < 1):
            raise ParameterError(f"proportions must lie in (0, 1): baseline {baseline}, with the lift {treated}")
        return abs(float(proportion_effectsize(treated, baseline)))  # Cohen's h: 2 asin√p1 - 2 asin√p2
    if kind == "mean":
        if sd is None or sd <= 0:
            raise ParameterError("kind='mean' needs the per-user standard deviation sd > 0")
        return abs(baseline * mde_relative) / sd
    raise ParameterError(f"kind must be 'proportion' or 'mean', got {kind!r}")


def required_users(
    baseline: float,
    mde_relative: float,
    alpha: float = 0.05,
    power: float = 0.8,
    kind: Kind = "proportion",
    sd: float | None = None,
) -> int:
    """Users per variant for a two-sided fixed-horizon test to detect ``mde_relative`` with probability ``power``.

    Normal approximation with equal variants (statsmodels ``NormalIndPower``): n = ((z_{1-a/2} + z_{power}) / h)^2 * 2
    with h Cohen's arcsine effect size for proportions (``proportion_effectsize``) or |baseline * mde| / sd for means.
    The always-valid interval is wider than the fixed-horizon one, so a decision from it may take more users.
    """
    from statsmodels.stats.power import NormalIndPower

    es = _effect_size(baseline, mde_relative, kind, sd)
    n = NormalIndPower().solve_power(effect_size=es, alpha=alpha, power=power, ratio=1.0, alternative="two-sided")
    return math.ceil(float(n))


def achieved_power(
    n_per_variant: int,
    baseline: float,
    mde_relative: float,
    alpha: float = 0.05,
    kind: Kind = "proportion",
    sd: float | None = None,
) -> float:
    """Probability that a two-sided fixed-horizon test with ``n_per_variant`` users per variant detects the MDE."""
    from statsmodels.stats.power import NormalIndPower

    if n_per_variant < 2:
        return 0.0
    es = _effect_size(baseline, mde_relative, kind, sd)
    return float(NormalIndPower().power(effect_size=es, nobs1=n_per_variant, alpha=alpha, ratio=1.0))


def users_still_needed(
    n_per_variant: int,
    baseline: float,
    mde_relative: float,
    alpha: float = 0.05,
    power: float = 0.8,
    kind: Kind = "proportion",
    sd: float | None = None,
) -> int:
    """Users per variant still to come before the experiment reaches ``power`` for the MDE (0 when it has)."""
    return max(0, required_users(baseline, mde_relative, alpha, power, kind, sd) - n_per_variant)


# ---------------------------------------------------------------------------------------------------------------
# Guardrails and the decision


@dataclass(frozen=True)
class GuardrailResult:
    """An operational metric compared between variants against its largest tolerated relative change."""

    name: str
    control_value: float
    treatment_value: float
    relative_change: float  #: (treatment - control) / control
    max_relative_change: float
    worse: Literal["higher", "lower"]
    breached: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dictionary."""
        return dict(json_ready(asdict(self)))


def guardrail_check(
    name: str,
    control_value: float,
    treatment_value: float,
    max_relative_increase: float,
    *,
    worse: Literal["higher", "lower"] = "higher",
    min_absolute_change: float = 0.0,
) -> GuardrailResult:
    """Is the treatment worse than the control by more than ``max_relative_increase`` (relative to the control)?

    For p95 latency, error ratio and fallback rate higher is worse (the default); for catalog coverage pass
    ``worse="lower"``, and ``max_relative_increase`` is then the largest tolerated relative *decrease*. A change must
    also exceed ``min_absolute_change`` (so 0.0001 → 0.0002 errors need not block a launch). A control value of 0
    makes any worsening infinite.
    """
    if max_relative_increase < 0:
        raise ParameterError(f"{name}: the tolerated relative change must be ≥ 0, got {max_relative_increase}")
    if worse not in ("higher", "lower"):
        raise ParameterError(f"{name}: worse must be 'higher' or 'lower', got {worse!r}")
    diff = treatment_value - control_value
    # A control value of 0 makes any change infinite.
    zero_rel = 0.0 if diff == 0 else math.copysign(math.inf, diff)
    rel = diff / abs(control_value) if control_value != 0 else zero_rel
    sign = 1.0 if worse == "higher" else -1.0
    breached = sign * rel > max_relative_increase and sign * diff > min_absolute_change
    return GuardrailResult(
        name, float(control_value), float(treatment_value), rel, max_relative_increase, worse, bool(breached)
    )


def check_guardrails(
    control: Mapping[str, float],
    treatment: Mapping[str, float],
    limits: Mapping[str, tuple[float, Literal["higher", "lower"]]] | None = None,
    floors: Mapping[str, float] | None = None,
) -> list[GuardrailResult]:
    """:func:`guardrail_check` for each guardrail in both mappings (default limits: ``DEFAULT_GUARDRAIL_LIMITS``,
    absolute floors: ``DEFAULT_GUARDRAIL_FLOORS``)."""
    limits = DEFAULT_GUARDRAIL_LIMITS if limits is None else limits
    floors = DEFAULT_GUARDRAIL_FLOORS if floors is None else floors
    return [
        guardrail_check(
            name, control[name], treatment[name], limit, worse=worse, min_absolute_change=floors.get(name, 0.0)
        )
        for name, (limit, worse) in limits.items()
        if name in control and name in treatment
    ]


@dataclass(frozen=True)
class Verdict:
    """What to do with the experiment, and why."""

    decision: Decision
    reason: str
    interval: Interval  #: always-valid interval of the primary metric's relative lift
    min_lift: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dictionary."""
        return dict(json_ready(asdict(self)))


def verdict(
    comparison: Comparison,
    *,
    min_lift: float = 0.0,
    guardrails: Sequence[GuardrailResult] = (),
    required_n: int | None = None,
    srm_result: SRMResult | None = None,
) -> Verdict:
    """Decide from the always-valid interval of the relative lift, so the decision may be read at any time.

    - a sample ratio mismatch or a breached guardrail: **do not ship** (the breach names itself);
    - the interval lies entirely above ``+min_lift``: **ship**;
    - it lies entirely below 0: **do not ship** (the treatment is worse);
    - it lies entirely inside (-min_lift, +min_lift) once powered (each variant has ``required_n`` users; with
      ``required_n=None`` at once, the interval being always valid): **do not ship**, no practically significant
      effect;
    - otherwise **keep running**, with the users still needed when ``required_n`` is known.

    Args:
        min_lift: the practical-significance threshold, a relative lift (0.01: +1%), ≥ 0.
    """
    if min_lift < 0:
        raise ParameterError(f"min_lift must be ≥ 0, got {min_lift}")
    lo, hi = comparison.seq_rel_ci
    ci = f"[{_fmt(lo, True)}, {_fmt(hi, True)}]"
    m = comparison.metric
    if srm_result is not None and srm_result.flagged:
        return Verdict(
            "do not ship",
            f"sample ratio mismatch (p={srm_result.p_value:.2g}): the split is broken, no metric can be trusted",
            (lo, hi),
            min_lift,
        )
    breached = [g.name for g in guardrails if g.breached]
    if breached:
        return Verdict("do not ship", f"guardrail breached: {', '.join(breached)}", (lo, hi), min_lift)
    if lo > min_lift:
        return Verdict(
            "ship", f"{m}: the always-valid interval {ci} lies above +{100 * min_lift:g}%", (lo, hi), min_lift
        )
    if hi < 0:
        return Verdict("do not ship", f"{m}: the always-valid interval {ci} lies below 0", (lo, hi), min_lift)
    n = min(comparison.n_control, comparison.n_treatment)
    powered = required_n is None or n >= required_n
    if min_lift > 0 and lo > -min_lift and hi < min_lift and powered:
        return Verdict(
            "do not ship",
            f"{m}: the always-valid interval {ci} lies inside ±{100 * min_lift:g}%: no practically significant effect",
            (lo, hi),
            min_lift,
        )
    reason = f"{m}: the always-valid interval {ci} is not yet decisive"
    if required_n is not None and n < required_n:
        reason += f"; about {required_n - n} more users per variant to reach the planned size"
    return Verdict("keep running", reason, (lo, hi), min_lift)


# ---------------------------------------------------------------------------------------------------------------
# Report and plot


@dataclass(frozen=True)
class ExperimentReport:
    """Everything an experiment's analysis says: primary and secondary metrics, SRM, guardrails and the verdict."""

    name: str
    primary: Comparison
    verdict: Verdict
    secondary: tuple[Comparison, ...] = ()
    srm: SRMResult | None = None
    guardrails: tuple[GuardrailResult, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dictionary."""
        return {
            "name": self.name,
            "verdict": self.verdict.to_dict(),
            "primary": self.primary.to_dict(),
            "secondary": [c.to_dict() for c in self.secondary],
            "srm": self.srm.to_dict() if self.srm else None,
            "guardrails": [g.to_dict() for g in self.guardrails],
        }

    def to_markdown(self) -> str:
        """The report as Markdown."""
        parts = [
            f"# Experiment {self.name}\n",
            f"**Decision: {self.verdict.decision}** — {self.verdict.reason}\n",
        ]
        if self.srm is not None:
            parts.append(self.srm.to_markdown())
        parts += ["## Primary metric\n", self.primary.to_markdown()]
        if self.secondary:
            parts.append("## Secondary metrics (Holm-adjusted p-values)\n")
            parts += [c.to_markdown() for c in self.secondary]
        if self.guardrails:
            parts += ["## Guardrails\n", "| guardrail | control | treatment | change | limit | state |"]
            parts.append("| --- | --- | --- | --- | --- | --- |")
            for g in self.guardrails:
                limit = f"{'+' if g.worse == 'higher' else '-'}{100 * g.max_relative_change:g}%"
                state = "**breached**" if g.breached else "ok"
                parts.append(
                    f"| {g.name} | {_fmt(g.control_value)} | {_fmt(g.treatment_value)} | "
                    f"{_fmt(g.relative_change, True)} | {limit} | {state} |"
                )
            parts.append("")
        return "\n".join(parts)


def build_report(
    name: str,
    primary: Comparison,
    *,
    secondary: Sequence[Comparison] = (),
    srm_result: SRMResult | None = None,
    guardrails: Sequence[GuardrailResult] = (),
    min_lift: float = 0.0,
    required_n: int | None = None,
) -> ExperimentReport:
    """Assemble a report: Holm-adjust the secondary metrics' p-values and decide with :func:`verdict`."""
    adjusted = holm([c.p_value for c in secondary])
    secondary = tuple(replace(c, p_value_adjusted=float(p)) for c, p in zip(secondary, adjusted, strict=True))
    decision = verdict(primary, min_lift=min_lift, guardrails=guardrails, required_n=required_n, srm_result=srm_result)
    return ExperimentReport(name, primary, decision, tuple(secondary), srm_result, tuple(guardrails))


def plot_lift_over_time(
    points: Sequence[tuple[float, float, float, float]],
    path: str | Path,
    *,
    min_lift: float = 0.0,
    title: str = "Relative lift and its always-valid interval",
    x_label: str = "users",
) -> Path:
    """Plot (x, lift, lo, hi) points — x a time or a user count — as a line in a shaded band; write a PNG.

    Lifts are relative (0.05 = +5%). Zero and ±``min_lift`` are drawn as reference lines.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not points:
        raise ParameterError("plot_lift_over_time needs at least one point")
    arr = np.asarray(points, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ParameterError("points must be (x, lift, lo, hi) tuples")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    # The Figure API with an explicit Agg canvas needs no global pyplot state or display.
    fig = Figure(figsize=(7.0, 4.0), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x, lift = arr[:, 0], 100 * arr[:, 1]
    lo = 100 * np.where(np.isfinite(arr[:, 2]), arr[:, 2], np.nan)
    hi = 100 * np.where(np.isfinite(arr[:, 3]), arr[:, 3], np.nan)
    ax.fill_between(x, lo, hi, alpha=0.25, color="tab:blue", label="always-valid interval")
    ax.plot(x, lift, color="tab:blue", label="relative lift")
    ax.axhline(0.0, color="black", linewidth=0.8)
    if min_lift > 0:
        for y in (100 * min_lift, -100 * min_lift):
            ax.axhline(y, color="tab:gray", linestyle="--", linewidth=0.8)
    ax.set_xlabel(x_label)
    ax.set_ylabel("lift (%)")
    ax.set_title(title)
    ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(out, format="png")
    return out
