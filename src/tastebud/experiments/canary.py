"""Canary rollouts: a small treatment share ramped in steps, guardrails checked at each step, automatic rollback.

A canary is a running experiment of kind ``canary`` with two variants, the control (conventionally
``control=champion``) and the treatment (the new version), weighted e.g. 95/5. Each call of :func:`ramp_step` judges
the traffic logged since the last step (the start, or the last ``ramped`` change) and does one of four things:

- ``waiting``: fewer than ``min_requests`` logged requests for a variant at this step; nothing changes;
- ``rolled_back``: the treatment breaches a guardrail (error ratio, p95 latency or fallback rate, worse than the
  control by more than :data:`~tastebud.experiments.analysis.DEFAULT_GUARDRAIL_LIMITS` *and* the absolute
  :data:`~tastebud.experiments.analysis.DEFAULT_GUARDRAIL_FLOORS`): the experiment is stopped (serving sends
  everyone back to the default champion at its next poll), a ``rolled_back`` change records the numbers and the
  decision log gets a ``rolled_back`` decision with ``trigger="canary"``;
- ``ramped``: healthy, and the treatment's weight moves to the next step (one atomic update of the running
  experiment's definition with its ``ramped`` change; serving picks the new weights up at its next poll);
- ``completed``: healthy at 100%: a ``completed`` change is recorded, the treatment's version is optionally promoted
  through the registry gate (:func:`tastebud.pipeline.promote.promote`, which still decides), and the experiment is
  stopped.

Weights move in the 10,000-bucket hash space cumulatively: a user in the treatment at 5% stays in it at 25%.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from itertools import pairwise
from typing import Any, Literal

from tastebud.config import Settings
from tastebud.errors import ExperimentError
from tastebud.experiments.analysis import (
    DEFAULT_GUARDRAIL_FLOORS,
    DEFAULT_GUARDRAIL_LIMITS,
    GuardrailResult,
    check_guardrails,
)
from tastebud.experiments.definitions import Experiment, RegistryLike, get_experiment, stop_experiment
from tastebud.experiments.outcomes import guardrails as guardrail_frame
from tastebud.store import Store

#: The treatment's weight after each step, in percent; the last must be 100.
DEFAULT_STEPS: tuple[float, ...] = (5.0, 25.0, 50.0, 100.0)
#: The guardrails a canary step checks.
CANARY_GUARDRAILS: tuple[str, ...] = ("error_ratio", "p95_latency", "fallback_rate")
#: Logged requests each variant needs at a step before it is judged.
DEFAULT_MIN_REQUESTS = 200
#: The actor of the changes a canary records when none is given.
TRIGGER = "canary"

Outcome = Literal["waiting", "ramped", "rolled_back", "completed"]


@dataclass(frozen=True)
class CanaryStep:
    """What one :func:`ramp_step` did.

    Attributes:
        experiment: the canary's name.
        outcome: ``waiting``, ``ramped``, ``rolled_back`` or ``completed``.
        weight: the treatment's weight (percent) after the step (0 after a rollback).
        previous_weight: the treatment's weight before it.
        requests: logged requests per variant since the last step.
        guardrails: each checked guardrail (``GuardrailResult.to_dict()``); empty while waiting.
        reason: in words.
        promotion: the promotion's decision (action, version, reason) when ``promote`` was asked and it completed.
    """

    experiment: str
    outcome: Outcome
    weight: float
    previous_weight: float
    requests: dict[str, int]
    guardrails: list[dict[str, Any]] = field(default_factory=list)
    reason: str = ""
    promotion: dict[str, Any] | None = None

    @property
    def done(self) -> bool:
        """Whether the canary is over (rolled back or completed)."""
        return self.outcome in ("rolled_back", "completed")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dictionary."""
        return asdict(self)


def parse_steps(text: str | Sequence[float]) -> tuple[float, ...]:
    """``"5,25,50,100"`` (or numbers) as validated steps: increasing percentages above 0, the last 100.

    Raises:
        ExperimentError: not numbers, not increasing, out of range, or not ending at 100.
    """
    try:
        steps = tuple(float(p) for p in (text.split(",") if isinstance(text, str) else text))
    except ValueError as err:
        raise ExperimentError(f"steps {text!r}: expected percentages separated by commas, e.g. 5,25,50,100") from err
    if not steps or any(not 0.0 < s <= 100.0 for s in steps) or any(a >= b for a, b in pairwise(steps)):
        raise ExperimentError(f"steps {text!r}: expected increasing percentages in (0, 100], e.g. 5,25,50,100")
    if steps[-1] != 100.0:
        raise ExperimentError(f"steps {text!r}: the last step must be 100 (the whole range on the treatment)")
    return steps


def ramp_step(
    store: Store,
    registry: RegistryLike,
    settings: Settings,
    name: str,
    *,
    steps: Sequence[float] = DEFAULT_STEPS,
    actor: str,
    catalog_size: int | None = None,
    now: datetime | None = None,
    min_requests: int = DEFAULT_MIN_REQUESTS,
    promote: bool = False,
) -> CanaryStep:
    """Judge a running canary on the traffic since its last step, then wait, ramp, roll back or complete it.

    Args:
        store: holds the experiment and the request log.
        registry: the model registry (only used to promote, with ``promote=True``: a
            :class:`tastebud.registry.ModelRegistry` then).
        settings: where the decision log lives (``home``) and the promotion gate's thresholds.
        name: the canary experiment.
        steps: the treatment's weight after each step (percent, increasing, the last 100).
        actor: who or what asks (recorded with every change and decision).
        catalog_size: items in the catalog (kept for :func:`tastebud.experiments.outcomes.guardrails`; coverage is
            not a canary guardrail).
        now: the time of the step (default now): exposures up to it count, and the changes record it.
        min_requests: logged requests each variant needs at this step before it is judged.
        promote: at completion, promote the treatment's version through the registry gate.

    Raises:
        ExperimentError: no such experiment, not a running two-variant canary, invalid steps, or a change that lost
            a race (the experiment stopped meanwhile).
    """
    plan = parse_steps(steps)
    if min_requests < 1:
        raise ExperimentError(f"min_requests must be at least 1, got {min_requests}")
    now = now or datetime.now(UTC)
    experiment = get_experiment(store, name)
    _check_canary(experiment)
    control, treatment = experiment.variants
    weight = float(experiment.weights[1])
    since = _step_start(store, experiment)
    frame = store.exposures_frame(experiment=name, since=since, until=now)
    health = {row["variant"]: row for row in guardrail_frame(frame, catalog_size).iter_rows(named=True)}
    requests = {v.name: int(health.get(v.name, {}).get("requests") or 0) for v in experiment.variants}
    short = [v for v, n in requests.items() if n < min_requests]
    if short:
        reason = ", ".join(f"{v} has {requests[v]:,}" for v in short)
        return CanaryStep(
            name, "waiting", weight, weight, requests,
            reason=f"waiting for {min_requests:,} requests per variant at {weight:g}%: {reason}",
        )  # fmt: skip
    results = _judge(health[control.name], health[treatment.name])
    checked = [r.to_dict() for r in results]
    numbers: dict[str, Any] = {"weight": weight, "requests": requests, "guardrails": checked,
                               "since": None if since is None else since.isoformat()}  # fmt: skip
    breached = [r for r in results if r.breached]
    if breached:
        reason = "canary guardrail breached at {:g}%: {}".format(weight, "; ".join(_describe(r) for r in breached))
        stop_experiment(store, name, actor, reason=reason)
        store.record_experiment_change(name, actor=actor, action="rolled_back", details={**numbers, "reason": reason},
                                       at=now)  # fmt: skip
        _log_rollback(settings, experiment, actor, reason, numbers, now)
        return CanaryStep(name, "rolled_back", 0.0, weight, requests, checked, reason)
    following = [s for s in plan if s > weight]
    if not following:
        return _complete(store, registry, settings, experiment, actor, numbers, checked, now, promote=promote)
    target = following[0]
    ramped = experiment.model_copy(update={"weights": (100.0 - target, target)})
    details = {**numbers, "from": weight, "to": target}
    if not store.update_experiment_definition(
        name, ramped.definition(), actor=actor, action="ramped", details=details, at=now
    ):
        raise ExperimentError(f"canary {name!r} not ramped: it is no longer running")
    reason = f"guardrails healthy at {weight:g}%: treatment {treatment.name} ramped to {target:g}%"
    return CanaryStep(name, "ramped", target, weight, requests, checked, reason)


# --- internals -------------------------------------------------------------------------------------------------


def _check_canary(experiment: Experiment) -> None:
    where = f"experiment {experiment.name!r}"
    if experiment.kind != "canary":
        raise ExperimentError(f"{where} is of kind {experiment.kind!r}, not a canary (tastebud experiment canary)")
    if experiment.status != "running":
        raise ExperimentError(f"{where} is {experiment.status}, not running; only a running canary ramps")
    if len(experiment.variants) != 2:
        raise ExperimentError(f"{where}: a canary ramps exactly 2 variants (control, treatment)")


def _step_start(store: Store, experiment: Experiment) -> datetime | None:
    """When the current step began: the last ``ramped`` change, else the start."""
    ramps = [c["time"] for c in store.experiment_changes(experiment.name) if c["action"] == "ramped"]
    return ramps[-1] if ramps else experiment.started_at


def _judge(control: dict[str, Any], treatment: dict[str, Any]) -> list[GuardrailResult]:
    """The canary guardrails, default limits and absolute floors; a guardrail without a value is not checked."""
    values = [{g: float(row[g]) for g in CANARY_GUARDRAILS if row.get(g) is not None} for row in (control, treatment)]
    limits = {g: DEFAULT_GUARDRAIL_LIMITS[g] for g in CANARY_GUARDRAILS}
    floors = {g: DEFAULT_GUARDRAIL_FLOORS[g] for g in CANARY_GUARDRAILS}
    return check_guardrails(values[0], values[1], limits, floors)


def _describe(result: GuardrailResult) -> str:
    rel = result.relative_change
    change = "new" if rel == float("inf") else f"{100 * rel:+.0f}%"
    return (
        f"{result.name} {result.treatment_value:.4g} vs control {result.control_value:.4g} ({change}, limit "
        f"+{100 * result.max_relative_change:.0f}%)"
    )


def _log_rollback(
    settings: Settings, experiment: Experiment, actor: str, reason: str, numbers: dict[str, Any], now: datetime
) -> None:
    from tastebud.registry.decisions import Decision, append_decision

    control, treatment = (experiment.versions.get(v.name) for v in experiment.variants)
    decision = Decision(
        time=now.astimezone(UTC).isoformat(),
        model_name=experiment.model_name,
        action="rolled_back",
        version=int(control) if control is not None else -1,
        previous=treatment,
        actor=actor,
        reason=f"canary {experiment.name}: {reason}",
        numbers={**numbers, "experiment": experiment.name},
        trigger=TRIGGER,
    )
    append_decision(settings, decision)


def _complete(
    store: Store,
    registry: RegistryLike,
    settings: Settings,
    experiment: Experiment,
    actor: str,
    numbers: dict[str, Any],
    checked: list[dict[str, Any]],
    now: datetime,
    *,
    promote: bool,
) -> CanaryStep:
    name, weight = experiment.name, float(experiment.weights[1])
    treatment = experiment.variants[1]
    version = experiment.versions.get(treatment.name)
    store.record_experiment_change(name, actor=actor, action="completed", details=numbers, at=now)
    promotion: dict[str, Any] | None = None
    if promote:
        if version is None:
            raise ExperimentError(f"canary {name!r}: the treatment has no pinned version to promote")
        from tastebud.pipeline.promote import promote as promote_version

        result = promote_version(registry, experiment.model_name, int(version), settings=settings, actor=actor)  # type: ignore[arg-type]
        promotion = {"action": result.decision.action, "version": int(version), "reason": result.decision.reason}
    stop_experiment(store, name, actor, reason="canary completed")
    reason = f"guardrails healthy at {weight:g}%: canary complete"
    if promotion is not None:
        reason += f"; promotion of version {version}: {promotion['action']}"
    return CanaryStep(name, "completed", weight, weight, numbers["requests"], checked, reason, promotion)


__all__ = ["CANARY_GUARDRAILS", "DEFAULT_MIN_REQUESTS", "DEFAULT_STEPS", "CanaryStep", "parse_steps", "ramp_step"]
