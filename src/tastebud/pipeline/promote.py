"""Promotion with a gate, and rollback; every decision goes to the decision log and onto the version's tags.

Serving learns about a new champion through the registry alias (it watches it), never through an import.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from tastebud.config import Settings
from tastebud.errors import RegistryError, TastebudError
from tastebud.registry.aliases import CHAMPION, ModelRegistry, ModelVersion
from tastebud.registry.bundle import load_bundle, utc_now
from tastebud.registry.decisions import Decision, append_decision, champion_history, default_actor, read_decisions
from tastebud.registry.gates import GateResult, check_gate

logger = logging.getLogger(__name__)

#: Version tag mirroring the latest decision about that version.
DECISION_TAG = "tastebud.decision"


@dataclass
class PromotionResult:
    """Outcome of a promotion request."""

    decision: Decision
    gate: GateResult

    @property
    def promoted(self) -> bool:
        """Whether ``champion`` now points at the candidate."""
        return self.decision.action in ("promoted", "forced")


def _eval_key(manifest: dict[str, Any]) -> tuple[Any, Any, Any]:
    ev = manifest.get("extra", {}).get("evaluation", {})
    return ev.get("eval_snapshot_id"), ev.get("k"), ev.get("max_users")


def _primary(manifest: dict[str, Any]) -> str:
    return f"ndcg_at_{manifest.get('extra', {}).get('evaluation', {}).get('k', 10)}"


def _baseline(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The popularity baseline measured with the candidate on its validation split (``None``: unknown, or the
    candidate is a popularity model itself, which cannot beat itself)."""
    if manifest.get("model", {}).get("name") == "popular":
        return None
    baseline = manifest.get("extra", {}).get("evaluation", {}).get("baseline")
    return baseline if isinstance(baseline, dict) else None


def _has_finite(metrics: dict[str, Any] | None, key: str) -> bool:
    value = (metrics or {}).get(key)
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def compare_versions(
    registry: ModelRegistry, candidate: ModelVersion, champion: ModelVersion | None, settings: Settings
) -> GateResult:
    """Run the gate, re-evaluating both on the candidate's validation split when their snapshots differ.

    A version made by ``tastebud retrain`` brings the numbers of its comparison with the champion it was retrained
    against; against any other champion it cannot be re-evaluated (it learned its holdout) and the rebuild refuses.

    A first version (no champion) must still pass the gate's absolute floors, the popularity baseline recorded in
    its manifest included. A champion whose manifest has no finite primary metric is not compared blindly: both
    are re-evaluated on the candidate's validation split; when that is impossible the gate refuses (``--force``
    overrides), and the reason names the missing metric in the decision log.
    """
    cand_manifest = registry.manifest(candidate)
    primary = _primary(cand_manifest)
    baseline = _baseline(cand_manifest)
    cfg = settings.registry
    if champion is None:
        return check_gate(cand_manifest["metrics"], None, cfg, primary=primary, baseline=baseline)
    recorded = cand_manifest.get("extra", {}).get("retrain", {}).get("gate")
    if recorded and recorded.get("champion_version") == champion.version:
        # a retrained version was compared with this very champion on its fresh holdout (tastebud retrain)
        return check_gate(recorded["candidate"], recorded["champion"], cfg, primary=primary)
    champ_manifest = registry.manifest(champion)
    same_split = _eval_key(cand_manifest) == _eval_key(champ_manifest) and _eval_key(cand_manifest)[0] is not None
    champion_lacks = not _has_finite(champ_manifest.get("metrics"), primary)
    if same_split and not champion_lacks:
        return check_gate(cand_manifest["metrics"], champ_manifest["metrics"], cfg, primary=primary, baseline=baseline)
    if champion_lacks:
        note = (
            f"champion version {champion.version} records no finite {primary}: both re-evaluated on the "
            "candidate's validation split"
        )
        try:
            result = _reevaluate(registry, candidate, champion, cand_manifest, settings, primary, baseline)
        except TastebudError as err:
            result = check_gate(cand_manifest["metrics"], champ_manifest["metrics"], cfg, primary=primary)
            note = f"champion version {champion.version} records no finite {primary} and re-evaluation failed ({err})"
        result.reasons.insert(0, note)
        return result
    return _reevaluate(registry, candidate, champion, cand_manifest, settings, primary, baseline)


def _reevaluate(
    registry: ModelRegistry,
    candidate: ModelVersion,
    champion: ModelVersion,
    cand_manifest: dict[str, Any],
    settings: Settings,
    primary: str,
    baseline: dict[str, Any] | None,
) -> GateResult:
    """Evaluate both bundles on the candidate's validation split and run the gate on those numbers."""
    from tastebud.evaluation.protocol import evaluate
    from tastebud.pipeline.train import rebuild_split, recorded_max_users, report_metrics

    logger.info("validation snapshots differ: re-evaluating both", extra={"model": candidate.name})
    split = rebuild_split(cand_manifest, settings)
    k = int(_eval_key(cand_manifest)[1] or 10)
    seed = int(cand_manifest["data"]["split"].get("seed", 0))
    metrics = []
    for mv in (candidate, champion):
        bundle = load_bundle(registry.bundle_path(mv), verifier=registry.verifier)
        max_users = recorded_max_users(cand_manifest)
        metrics.append(
            report_metrics(evaluate(bundle.model, split, part="validation", k=k, seed=seed, max_users=max_users))
        )
    result = check_gate(metrics[0], metrics[1], settings.registry, primary=primary, baseline=baseline)
    result.reevaluated = True
    return result


def _record(registry: ModelRegistry, settings: Settings, decision: Decision) -> None:
    append_decision(settings, decision)
    try:
        registry.set_tag(decision.model_name, decision.version, DECISION_TAG, decision.to_json()[:5000])
    except Exception as err:  # the log is the record; a failed tag copy must not undo the decision
        logger.warning("could not tag the version with the decision", extra={"error": str(err)})


def promote(
    registry: ModelRegistry,
    name: str,
    version: int,
    *,
    settings: Settings,
    force: bool = False,
    actor: str | None = None,
) -> PromotionResult:
    """Point ``champion`` at ``version`` if it passes the gate (or ``force``); log the decision either way.

    Raises:
        RegistryError: the version does not exist or is already the champion.
    """
    candidate = registry.get(name, version)
    current = registry.get_alias(name, CHAMPION)
    if current == candidate.version:
        raise RegistryError(f"{name} version {version} is already the champion")
    champion = registry.get(name, current) if current is not None else None
    gate = compare_versions(registry, candidate, champion, settings)
    if gate.passed:
        action, reason = "promoted", gate.summary
    elif force:
        action, reason = "forced", f"forced past the gate: {gate.summary}"
    else:
        action, reason = "refused", gate.summary
    if action != "refused":
        registry.set_alias(name, CHAMPION, candidate.version)
    decision = Decision(
        time=utc_now(),
        model_name=name,
        action=action,
        version=candidate.version,
        previous=current,
        actor=actor or default_actor(),
        reason=reason,
        numbers=gate.numbers(),
    )
    _record(registry, settings, decision)
    logger.info("promotion decision", extra={"model": name, "version": version, "action": action})
    return PromotionResult(decision, gate)


def previous_champion(history: list[int], current: int | None) -> int | None:
    """Where a rollback returns ``champion`` from ``current``: the latest earlier champion in ``history`` (the
    stack :func:`~tastebud.registry.decisions.champion_history` builds) that is not ``current``; ``None``: none."""
    if current is None:
        return None
    if history and history[-1] == current:
        history = history[:-1]
    return next((v for v in reversed(history) if v != current), None)


def rollback(registry: ModelRegistry, name: str, *, settings: Settings, actor: str | None = None) -> Decision:
    """Return ``champion`` to the previous champion (from the decision log) and log it.

    Raises:
        RegistryError: there is no champion, or no earlier champion to return to.
    """
    current = registry.get_alias(name, CHAMPION)
    if current is None:
        raise RegistryError(f"{name} has no champion to roll back")
    previous = previous_champion(champion_history(read_decisions(settings, name)), current)
    if previous is None:
        raise RegistryError(f"{name}: no previous champion to roll back to (current is version {current})")
    registry.set_alias(name, CHAMPION, previous)
    decision = Decision(
        time=utc_now(),
        model_name=name,
        action="rolled_back",
        version=previous,
        previous=current,
        actor=actor or default_actor(),
        reason=f"champion returned from version {current} to version {previous}",
        numbers={"from": current, "to": previous},
    )
    _record(registry, settings, decision)
    return decision


def decision_rows(decisions: list[Decision]) -> list[dict[str, str]]:
    """Decisions as table rows (strings)."""
    return [
        {
            "time": d.time,
            "model": d.model_name,
            "action": d.action,
            "version": str(d.version),
            "previous": "" if d.previous is None else str(d.previous),
            "actor": d.actor,
            "reason": d.reason,
        }
        for d in decisions
    ]


__all__ = [
    "DECISION_TAG",
    "PromotionResult",
    "compare_versions",
    "decision_rows",
    "previous_champion",
    "promote",
    "rollback",
]
