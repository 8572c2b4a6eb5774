"""Canary rollouts: ramped in steps while the guardrails hold, rolled back (and logged) when one is breached."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tastebud.config import Settings
from tastebud.errors import ExperimentError
from tastebud.experiments.assignment import Assigner
from tastebud.experiments.canary import ramp_step
from tastebud.experiments.definitions import (
    create_experiment,
    get_experiment,
    running_experiments,
    start_experiment,
)
from tastebud.registry.decisions import read_decisions
from tastebud.store import Store
from tastebud.store.schema import RequestLogRecord

_ids = itertools.count()
#: The fake registry's model (tests/experiments/conftest.py), the default model of the settings fixture.
MODEL = "m"
FakeRegistry = Any


def _start_canary(store: Store, registry: FakeRegistry, settings: Settings, name: str = "can") -> datetime:
    spec = {
        "name": name,
        "kind": "canary",
        "variants": [{"name": "control", "ref": "champion"}, {"name": "treatment", "ref": "challenger"}],
        "weights": (95.0, 5.0),
    }
    create_experiment(store, registry, settings, spec, "ana")
    experiment = start_experiment(store, registry, settings, name, "ana", loader=lambda r, mv: None)
    assert experiment.started_at is not None
    return experiment.started_at


def _log(
    store: Store,
    at: datetime,
    variant: str,
    n: int,
    *,
    errors: int = 0,
    latency_ms: float = 20.0,
    fallbacks: int = 0,
    experiment: str = "can",
) -> None:
    """``n`` requests of ``variant`` a second apart from ``at``: the first ``errors`` 503s, then ``fallbacks``."""
    records = []
    for i in range(n):
        status = 503 if i < errors else 200
        records.append(
            RequestLogRecord(
                f"r{next(_ids)}", at + timedelta(seconds=i), "recommend", f"u{i}", None, MODEL,
                1 if variant == "control" else 2, None, ["a", "b"], [1.0, 0.5], latency_ms, status,
                errors <= i < errors + fallbacks, None, variant, {}, experiment, None,
            )
        )  # fmt: skip
    store.write_request_logs(records)


def _healthy(store: Store, at: datetime, n: int = 300) -> None:
    _log(store, at, "control", n, errors=1)
    _log(store, at, "treatment", n, errors=1)


def _step(store: Store, registry: FakeRegistry, settings: Settings, now: datetime, **kw: Any) -> Any:
    return ramp_step(store, registry, settings, "can", actor="ci", now=now, **kw)


def test_healthy_canary_ramps_through_every_step_then_completes(
    store: Store, registry: FakeRegistry, settings: Settings
) -> None:
    t = _start_canary(store, registry, settings) + timedelta(seconds=1)
    weights = []
    for _ in range(3):
        _healthy(store, t)
        t += timedelta(hours=1)
        step = _step(store, registry, settings, t)
        assert step.outcome == "ramped", step.reason
        assert step.requests == {"control": 300, "treatment": 300}
        assert {g["name"] for g in step.guardrails} == {"error_ratio", "p95_latency", "fallback_rate"}
        weights.append((step.previous_weight, step.weight))
        assert get_experiment(store, "can").weights == (100.0 - step.weight, step.weight)
    assert weights == [(5.0, 25.0), (25.0, 50.0), (50.0, 100.0)]
    # the next step judges only its own traffic: none logged since the last ramp yet
    assert _step(store, registry, settings, t + timedelta(minutes=1)).outcome == "waiting"
    _log(store, t + timedelta(seconds=1), "control", 300)  # the control keeps some users' old requests only
    _log(store, t + timedelta(seconds=1), "treatment", 300)
    t += timedelta(hours=1)
    done = _step(store, registry, settings, t)
    assert done.outcome == "completed" and done.done and done.promotion is None
    experiment = get_experiment(store, "can")
    assert experiment.status == "stopped"
    actions = [c["action"] for c in store.experiment_changes("can")]
    assert actions == ["created", "started", "ramped", "ramped", "ramped", "completed", "stopped"]
    assert read_decisions(settings) == []  # nothing promoted without --promote
    with pytest.raises(ExperimentError, match="not running"):
        _step(store, registry, settings, t + timedelta(hours=1))


def test_error_ratio_breach_rolls_back_and_logs_the_decision(
    store: Store, registry: FakeRegistry, settings: Settings
) -> None:
    t = _start_canary(store, registry, settings) + timedelta(seconds=1)
    _healthy(store, t)
    t += timedelta(hours=1)
    assert _step(store, registry, settings, t).outcome == "ramped"
    _log(store, t + timedelta(seconds=1), "control", 400, errors=2)  # 0.5% errors
    _log(store, t + timedelta(seconds=1), "treatment", 400, errors=40)  # 10% errors
    step = _step(store, registry, settings, t + timedelta(hours=1))
    assert step.outcome == "rolled_back" and step.done and step.weight == 0.0 and step.previous_weight == 25.0
    assert "error_ratio" in step.reason and "p95_latency" not in step.reason
    assert get_experiment(store, "can").status == "stopped"
    assert running_experiments(store, MODEL) == []
    changes = store.experiment_changes("can")
    assert [c["action"] for c in changes][-2:] == ["stopped", "rolled_back"]
    breached = [g for g in changes[-1]["details"]["guardrails"] if g["breached"]]
    assert [(g["name"], g["control_value"], g["treatment_value"]) for g in breached] == [("error_ratio", 0.005, 0.1)]
    [decision] = read_decisions(settings, MODEL)
    assert decision.action == "rolled_back" and decision.trigger == "canary" and decision.actor == "ci"
    assert (decision.version, decision.previous) == (1, 2)  # back to the control's version, from the treatment's
    assert "error_ratio" in decision.reason and decision.numbers["requests"] == {"control": 400, "treatment": 400}


def test_latency_and_fallback_breaches_roll_back_but_small_absolute_changes_do_not(
    store: Store, registry: FakeRegistry, settings: Settings
) -> None:
    t = _start_canary(store, registry, settings) + timedelta(seconds=1)
    # +15% latency but only 3 ms (under the 5 ms floor): healthy
    _log(store, t, "control", 300, latency_ms=20.0)
    _log(store, t, "treatment", 300, latency_ms=23.0)
    t += timedelta(hours=1)
    assert _step(store, registry, settings, t).outcome == "ramped"
    _log(store, t + timedelta(seconds=1), "control", 300, latency_ms=20.0, fallbacks=3)
    _log(store, t + timedelta(seconds=1), "treatment", 300, latency_ms=60.0, fallbacks=30)
    step = _step(store, registry, settings, t + timedelta(hours=1))
    assert step.outcome == "rolled_back"
    assert "p95_latency" in step.reason and "fallback_rate" in step.reason and "error_ratio" not in step.reason


def test_too_little_traffic_waits_and_changes_nothing(store: Store, registry: FakeRegistry, settings: Settings) -> None:
    t = _start_canary(store, registry, settings) + timedelta(seconds=1)
    _log(store, t, "control", 300)
    _log(store, t, "treatment", 50, errors=50)  # terrible, yet too few to judge
    step = _step(store, registry, settings, t + timedelta(hours=1))
    assert step.outcome == "waiting" and not step.done and step.weight == 5.0
    assert "treatment has 50" in step.reason and step.guardrails == []
    assert get_experiment(store, "can").weights == (95.0, 5.0)
    assert [c["action"] for c in store.experiment_changes("can")] == ["created", "started"]
    # a lower bar judges it
    assert _step(store, registry, settings, t + timedelta(hours=1), min_requests=50).outcome == "rolled_back"


def test_ramp_changes_the_weights_serving_assigns(store: Store, registry: FakeRegistry, settings: Settings) -> None:
    t = _start_canary(store, registry, settings) + timedelta(seconds=1)
    users = [f"user-{i}" for i in range(10_000)]

    def treated() -> int:
        assigner = Assigner(running_experiments(store, MODEL))
        return sum(a is not None and a.variant == "treatment" for a in map(assigner.assign, users))

    before = treated()
    assert 350 <= before <= 650  # ~5%
    _healthy(store, t)
    assert _step(store, registry, settings, t + timedelta(hours=1)).weight == 25.0
    after = treated()
    assert 2_300 <= after <= 2_700  # ~25%


def test_only_running_canaries_ramp_and_steps_are_checked(
    store: Store, registry: FakeRegistry, settings: Settings
) -> None:
    spec = {"name": "ab", "variants": [{"name": "a", "ref": "champion"}, {"name": "b", "ref": "challenger"}]}
    create_experiment(store, registry, settings, spec, "ana")
    with pytest.raises(ExperimentError, match="not a canary"):
        ramp_step(store, registry, settings, "ab", actor="ci")
    _start_canary(store, registry, settings)
    for steps in ((5, 25, 50), (25, 5, 100), (0, 100)):
        with pytest.raises(ExperimentError, match="steps"):
            ramp_step(store, registry, settings, "can", actor="ci", steps=steps)
    with pytest.raises(ExperimentError, match="no experiment"):
        ramp_step(store, registry, settings, "nope", actor="ci")
    assert datetime.now(UTC).tzinfo is not None


def test_serving_router_notices_a_ramp_that_changes_only_the_weights(
    store: Store, registry: FakeRegistry, settings: Settings
) -> None:
    from types import SimpleNamespace

    from tastebud.serving.experiments import ExperimentRouter

    holder = SimpleNamespace(current=SimpleNamespace(version=1), name=MODEL, registry=None, prepare=lambda v: object())
    router = ExperimentRouter(store, holder)  # type: ignore[arg-type]
    t = _start_canary(store, registry, settings) + timedelta(seconds=1)
    assert router.refresh() is True and router.refresh() is False
    _healthy(store, t)
    assert _step(store, registry, settings, t + timedelta(hours=1)).outcome == "ramped"
    assert router.refresh() is True  # same experiment, same versions, new weights
    assert router.experiments()[0].weights == (75.0, 25.0) and router.refresh() is False


def test_a_completed_canary_hands_the_treatment_to_the_gate_when_asked(
    store: Store, registry: FakeRegistry, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib
    from types import SimpleNamespace

    promote_module = importlib.import_module("tastebud.pipeline.promote")

    asked: list[tuple[str, int]] = []

    def gate(registry: Any, name: str, version: int, **kwargs: Any) -> Any:
        asked.append((name, version))
        decision = SimpleNamespace(action="refused", reason="NDCG@10 did not improve by 1%")
        return SimpleNamespace(decision=decision)

    monkeypatch.setattr(promote_module, "promote", gate)
    t = _start_canary(store, registry, settings) + timedelta(seconds=1)
    steps = (5, 100)
    _healthy(store, t)
    t += timedelta(hours=1)
    assert _step(store, registry, settings, t, steps=steps).outcome == "ramped"
    _healthy(store, t + timedelta(seconds=1))
    t += timedelta(hours=1)
    done = _step(store, registry, settings, t, steps=steps, promote=True)
    treatment_version = get_experiment(store, "can").versions["treatment"]
    assert done.outcome == "completed" and asked == [(MODEL, treatment_version)]
    assert done.promotion == {"action": "refused", "version": treatment_version,
                              "reason": "NDCG@10 did not improve by 1%"}  # fmt: skip
    assert "refused" in done.reason  # the gate decides; the canary reports what it said
