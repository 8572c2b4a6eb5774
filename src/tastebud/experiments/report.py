"""One experiment's analysis from the store: exposures and events in, a decision with its numbers out.

:func:`analyze_experiment` reads the experiment's logged lists (:meth:`tastebud.store.Store.exposures_frame`) and the
events from a pre-exposure period before its start to one attribution horizon after its end
(:meth:`~tastebud.store.Store.events_frame`), turns them into per-user metrics
(:func:`tastebud.experiments.outcomes.per_user_metrics`; success comes from events, never from status codes) and
compares the first variant (the control) with the second (the treatment) on the primary metric, with CUPED on the
same metric's pre-exposure values, the secondary metrics (Holm-corrected), sample ratio mismatch, the guardrails,
power and the always-valid interval that the verdict rests on (:mod:`tastebud.experiments.analysis`). An
interleaving experiment gets the per-user preference sign test instead. :func:`write_analysis` writes Markdown, JSON
and a PNG of the lift and its always-valid band over time.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl

from tastebud.data.io import atomic_write_text
from tastebud.errors import ExperimentError
from tastebud.experiments.analysis import json_ready

Kind = Literal["proportion", "mean"]

#: Metrics that are 0/1 per user (two-proportion tests); the others are means (Welch).
PROPORTIONS = frozenset({"hit_rate", "rating_rate"})


@dataclass
class ExperimentAnalysis:
    """The analysis of one experiment at one moment.

    Attributes:
        experiment: the experiment's name.
        kind: ``ab``, ``canary`` or ``interleaving``.
        window: (start, end) of the exposures analysed (UTC).
        variants: the variants' names, control first.
        users: exposed users per variant.
        report: the A/B report (:class:`tastebud.experiments.analysis.ExperimentReport`), None for interleaving.
        preference: the interleaving sign test (:class:`tastebud.experiments.interleaving.PreferenceResult`).
        power: achieved power at the minimum detectable effect, required users per variant, users still needed.
        guardrail_values: per variant, the guardrail numbers.
        over_time: (users, lift, lo, hi) points of the primary metric's relative lift and always-valid band.
        variant_errors: exposures of users seen under two variants (should be 0).
    """

    experiment: str
    kind: str
    window: tuple[datetime, datetime]
    variants: tuple[str, ...]
    users: dict[str, int]
    report: Any = None
    preference: Any = None
    power: dict[str, Any] = field(default_factory=dict)
    guardrail_values: dict[str, dict[str, Any]] = field(default_factory=dict)
    over_time: list[tuple[float, float, float, float]] = field(default_factory=list)
    variant_errors: int = 0

    @property
    def decision(self) -> str:
        """``ship``, ``do not ship`` or ``keep running`` (interleaving: the preferred variant, or keep running)."""
        if self.report is not None:
            return str(self.report.verdict.decision)
        winner = getattr(self.preference, "winner", None)
        if winner is None:
            return "keep running"
        return f"prefer {self.variants[0] if winner == 'A' else self.variants[1]}"

    @property
    def reason(self) -> str:
        if self.report is not None:
            return str(self.report.verdict.reason)
        p = self.preference
        if p is None:
            return "no interleaved exposures yet"
        decided = p.prefer_a + p.prefer_b
        return f"{p.prefer_b} of {decided} users with a preference chose {self.variants[1]} (p={p.p_value:.3g})"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dictionary."""
        return json_ready({
            "experiment": self.experiment,
            "kind": self.kind,
            "window": [t.isoformat() for t in self.window],
            "variants": list(self.variants),
            "users": self.users,
            "decision": self.decision,
            "reason": self.reason,
            "report": None if self.report is None else self.report.to_dict(),
            "preference": None if self.preference is None else self.preference.to_dict(),
            "power": self.power,
            "guardrails": self.guardrail_values,
            "over_time": [list(p) for p in self.over_time],
            "variant_errors": self.variant_errors,
        })  # fmt: skip

    def to_markdown(self) -> str:
        """The analysis as Markdown."""
        head = [
            f"# Experiment {self.experiment} ({self.kind})\n",
            f"Window {self.window[0]:%Y-%m-%d %H:%M} to {self.window[1]:%Y-%m-%d %H:%M} UTC; users "
            + ", ".join(f"{v} {self.users.get(v, 0):,}" for v in self.variants) + "\n",
            f"**{self.decision}**: {self.reason}\n",
        ]  # fmt: skip
        if self.power:
            head.append(
                f"Power at the minimum detectable effect: {self.power.get('achieved', float('nan')):.2f} "
                f"(needs {self.power.get('required_per_variant', 0):,} users per variant; "
                f"{self.power.get('still_needed', 0):,} more)\n"
            )
        if self.variant_errors:
            head.append(f"**{self.variant_errors} exposures of users seen under two variants** (assignment broke)\n")
        body = self.report.to_markdown() if self.report is not None else ""
        if self.preference is not None:
            p = self.preference
            body += (
                "## Interleaving preference\n\n| users | prefer A | prefer B | ties | share B | 95% CI | p |\n"
                "| --- | --- | --- | --- | --- | --- | --- |\n"
                f"| {p.n_users} | {p.prefer_a} | {p.prefer_b} | {p.ties} | {p.share_b:.3f} | "
                f"{p.ci[0]:.3f} - {p.ci[1]:.3f} | {p.p_value:.3g} |\n"
            )
        return "\n".join(head) + "\n" + body


def analyze_experiment(
    store: Any,
    experiment: Any,
    *,
    catalog_size: int | None = None,
    now: datetime | None = None,
    bootstrap: int = 1000,
    points: int = 20,
) -> ExperimentAnalysis:
    """Analyse a stored experiment (running or stopped) from the store's exposures and events.

    Raises:
        ExperimentError: the experiment never started.
    """
    from tastebud.experiments import outcomes

    if experiment.started_at is None:
        raise ExperimentError(f"experiment {experiment.name!r} has not started: nothing to analyse")
    start = experiment.started_at
    end = experiment.stopped_at or now or datetime.now(UTC)
    horizon = timedelta(seconds=float(experiment.horizon_s))
    names = tuple(v.name for v in experiment.variants)
    exposures = store.exposures_frame(experiment=experiment.name, since=start, until=end)
    events = store.events_frame(since=start - horizon, until=end + horizon)
    out = ExperimentAnalysis(experiment.name, experiment.kind, (start, end), names, {})
    if experiment.kind == "interleaving":
        from tastebud.experiments.interleaving import preference_test

        credit = outcomes.interleaving_credit(exposures, events, horizon_s=horizon.total_seconds())
        wide = credit.pivot(on="team", index="user_id", values="wins").fill_null(0)
        wins = [wide[n].to_numpy() if n in wide.columns else np.zeros(wide.height) for n in names[:2]]
        out.users = {"interleaved": wide.height}
        out.preference = preference_test(wins[0], wins[1], alpha=experiment.alpha)
        return out
    per_user = outcomes.per_user_metrics(
        exposures, events, horizon_s=horizon.total_seconds(), start=start, end=end, pre_period_s=None
    )
    out.variant_errors = int(per_user["variant_errors"].sum() or 0) if per_user.height else 0
    counts = per_user.group_by("variant").len()
    out.users = {str(v): int(n) for v, n in counts.iter_rows()}
    guard = outcomes.guardrails(exposures, catalog_size)
    out.guardrail_values = {str(r["variant"]): {k: v for k, v in r.items() if k != "variant"} for r in guard.to_dicts()}
    control, treatment = names[0], names[1]
    if min(out.users.get(control, 0), out.users.get(treatment, 0)) < 2:
        return out  # too early: nothing to compare yet
    return _ab(out, experiment, per_user, control, treatment, bootstrap, points)


def _ab(
    out: ExperimentAnalysis, experiment: Any, per_user: pl.DataFrame, control: str, treatment: str, bootstrap: int,
    points: int,
) -> ExperimentAnalysis:  # fmt: skip
    from tastebud.experiments import analysis, outcomes
    from tastebud.experiments.sequential import DEFAULT_T_STAR, difference_sequence

    def values(variant: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
        part = per_user.filter(pl.col("variant") == variant).drop_nulls(metric)
        pre = part[f"pre_{metric}"].fill_null(0.0).to_numpy()
        return part[metric].to_numpy().astype(np.float64), pre.astype(np.float64)

    def kind_of(metric: str) -> Kind:
        return "proportion" if metric in PROPORTIONS else "mean"

    primary_metric = experiment.primary_metric
    c, c_pre = values(control, primary_metric)
    t, t_pre = values(treatment, primary_metric)
    kind = kind_of(primary_metric)
    baseline = float(np.mean(c)) if len(c) else float("nan")
    sd = float(np.std(c, ddof=1)) if len(c) > 1 else None
    required = _required(analysis, baseline, experiment, kind, sd)
    t_star = float(2 * required) if required else DEFAULT_T_STAR  # tightest at the planned sample size
    use_cuped = bool(np.var(np.concatenate([c_pre, t_pre])) > 0)
    primary = analysis.compare(
        c, t, kind=kind, alpha=experiment.alpha, bootstrap=bootstrap, metric=primary_metric, t_star=t_star,
        pre_control=c_pre if use_cuped else None, pre_treatment=t_pre if use_cuped else None,
    )  # fmt: skip
    secondary = []
    for metric in experiment.secondary_metrics:
        sc, _ = values(control, metric)
        st, _ = values(treatment, metric)
        if len(sc) >= 2 and len(st) >= 2:
            secondary.append(analysis.compare(
                sc, st, kind=kind_of(metric), alpha=experiment.alpha, bootstrap=0, metric=metric, t_star=t_star,
            ))  # fmt: skip
    srm = analysis.srm([out.users.get(v.name, 0) for v in experiment.variants], list(experiment.weights))
    guardrails = []
    if control in out.guardrail_values and treatment in out.guardrail_values:
        wanted = set(experiment.guardrails)
        # a guardrail without a value on either side (coverage without a catalog size) cannot be judged
        pick = {k: v for k, v in out.guardrail_values[control].items() if k in wanted and v is not None}
        other = {k: v for k, v in out.guardrail_values[treatment].items() if k in wanted and v is not None}
        guardrails = [
            _significant(g, out.guardrail_values[control], out.guardrail_values[treatment], experiment.alpha)
            for g in analysis.check_guardrails(pick, other)
        ]
    out.report = analysis.build_report(
        experiment.name, primary, secondary=secondary, srm_result=srm, guardrails=guardrails,
        min_lift=experiment.min_lift, required_n=required,
    )  # fmt: skip
    n_each = min(len(c), len(t))
    if required and math.isfinite(baseline) and baseline > 0:
        out.power = {
            "required_per_variant": int(required),
            "achieved": float(
                analysis.achieved_power(
                    n_each,
                    baseline,
                    experiment.mde,
                    experiment.alpha,
                    kind=kind,
                    sd=sd,
                )
            ),
            "still_needed": int(
                analysis.users_still_needed(
                    n_each,
                    baseline,
                    experiment.mde,
                    experiment.alpha,
                    experiment.power,
                    kind=kind,
                    sd=sd,
                )
            ),
            "mde": experiment.mde,
        }
    series = outcomes.time_series(per_user, primary_metric, points=points)
    for _, group in series.group_by("time", maintain_order=True):
        rows = {r["variant"]: r for r in group.to_dicts()}
        if control not in rows or treatment not in rows:
            continue
        stats = []
        for v in (control, treatment):
            r = rows[v]
            n = r["n"]
            mean = r["sum"] / n if n else float("nan")
            var = max(r["sum_sq"] - n * mean * mean, 0.0) / (n - 1) if n > 1 else float("nan")
            stats.append((mean, var, n))
        est, lo, hi = difference_sequence(*stats[0], *stats[1], alpha=experiment.alpha, t_star=t_star, relative=True)
        users = float(stats[0][2] + stats[1][2])
        if math.isfinite(float(est)):
            out.over_time.append((users, float(est), float(lo), float(hi)))
    return out


#: Guardrails that are shares of requests: a breach must also be significant (assignment alone moves them).
RATE_GUARDRAILS = frozenset({"error_ratio", "fallback_rate"})


def _significant(result: Any, control: dict[str, Any], treatment: dict[str, Any], alpha: float) -> Any:
    """A breached rate guardrail stays breached only if a one-sided two-proportion z-test says the treatment's rate
    is higher at level ``alpha``: with a few hundred users per variant, which of them an unknown user's hash sends
    where moves a fallback rate by several points, which is chance, not the treatment's doing."""
    if not result.breached or result.name not in RATE_GUARDRAILS:
        return result
    from dataclasses import replace

    from statsmodels.stats.proportion import proportions_ztest

    n = np.array([treatment.get("requests") or 0, control.get("requests") or 0], dtype=np.float64)
    if n.min() <= 0:
        return result
    hits = np.round(np.array([result.treatment_value, result.control_value]) * n)
    _, p = proportions_ztest(hits, n, alternative="larger")
    return result if float(p) < alpha else replace(result, breached=False)


def _required(analysis: Any, baseline: float, experiment: Any, kind: Kind, sd: float | None) -> int | None:
    if not math.isfinite(baseline) or baseline <= 0 or (kind == "mean" and not sd):
        return None
    try:
        return int(analysis.required_users(baseline, experiment.mde, experiment.alpha, experiment.power, kind, sd))
    except Exception:  # an effect that cannot be sized (a baseline of 1, say)
        return None


def write_analysis(result: ExperimentAnalysis, directory: Path) -> dict[str, Path]:
    """Write ``analysis.md``, ``analysis.json`` and, with points to draw, ``lift.png`` into ``directory``."""
    from tastebud.experiments.analysis import plot_lift_over_time

    directory.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": directory / "analysis.md", "json": directory / "analysis.json"}
    atomic_write_text(paths["markdown"], result.to_markdown())
    atomic_write_text(paths["json"], json.dumps(result.to_dict(), indent=2, default=str))
    if result.over_time:
        min_lift = float(getattr(getattr(result.report, "verdict", None), "min_lift", 0.0) or 0.0)
        paths["plot"] = plot_lift_over_time(
            result.over_time, directory / "lift.png", min_lift=min_lift,
            title=f"{result.experiment}: relative lift with its always-valid 95% band", x_label="users exposed",
        )  # fmt: skip
    return paths
