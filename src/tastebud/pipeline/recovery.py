"""Cleaning up after retrains that were killed: pending versions, unfinished history rows, stray bundle directories.

A retrain registers its version tagged ``tastebud.retrain=pending`` and flips the tag to the decision only after the
decision is in the decision log. The next retrain of the model, holding the lock (so no other retrain of it is
alive), looks for pending versions of other owners:

- the decision log has a decision for it (the run died after its commit point): the decision is completed (the
  ``champion`` alias is moved if the log says promoted and the alias still points at the recorded predecessor) and
  the tag flipped;
- else it is **abandoned**: an ``abandoned`` decision is logged and the version tagged so, and it is never promoted.

History rows still ``running`` become ``killed``, and the staging bundle directories of killed runs (a registered
version's bundle lives in the tracking store's artifacts) and half-written ones are removed.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from tastebud.config import Settings
from tastebud.registry.aliases import CHAMPION, ModelRegistry
from tastebud.registry.bundle import utc_now
from tastebud.registry.decisions import Decision, append_decision, default_actor, read_decisions

if TYPE_CHECKING:
    from tastebud.store import Store

logger = logging.getLogger(__name__)

#: Version tag of retrained versions: ``pending`` until the decision, then ``promoted``/``refused``/``abandoned``.
RETRAIN_TAG = "tastebud.retrain"
#: Version tags naming the retrain that registered a version: its lock owner, history row and trigger.
OWNER_TAG, RUN_TAG, TRIGGER_TAG = "tastebud.retrain.owner", "tastebud.retrain.id", "tastebud.retrain.trigger"
#: Version tag mirroring the latest decision (the same key :mod:`tastebud.pipeline.promote` writes).
DECISION_TAG = "tastebud.decision"
#: Prefix of the bundle directories retrains write under ``<home>/bundles/<model>/``.
BUNDLE_PREFIX = "retrain-"


def finish_tags(registry: ModelRegistry, decision: Decision) -> None:
    """Mirror a decision on its version's tags and end its ``pending`` state."""
    registry.set_tag(decision.model_name, decision.version, DECISION_TAG, decision.to_json()[:5000])
    registry.set_tag(decision.model_name, decision.version, RETRAIN_TAG, decision.action)


def recover(
    store: Store, registry: ModelRegistry, settings: Settings, model_name: str, *, owner: str, retrain_id: int
) -> list[str]:
    """Clean up after killed retrains of ``model_name``; call it holding the retrain lock. Returns what was done.

    Args:
        store: the store with the retrain history.
        registry: the model registry.
        settings: the home (decision log, bundles).
        model_name: the registered model.
        owner: the caller's lock owner (its own pending version, if any, is left alone).
        retrain_id: the caller's history row (left alone).
    """
    notes: list[str] = []
    per_run: dict[int, str] = {}
    decisions = read_decisions(settings, model_name)
    decided = {d.version: d for d in decisions if d.action != "abandoned"}
    abandoned = {d.version for d in decisions if d.action == "abandoned"}
    champion = registry.get_alias(model_name, CHAMPION)
    for mv in registry.list_versions(model_name):
        if mv.tags.get(RETRAIN_TAG) != "pending" or mv.tags.get(OWNER_TAG) == owner:
            continue
        earlier = decided.get(mv.version)
        if earlier is not None:
            if earlier.action in ("promoted", "forced") and champion == earlier.previous:
                registry.set_alias(model_name, CHAMPION, mv.version)
                champion = mv.version
            finish_tags(registry, earlier)
            note = f"version {mv.version}: completed its '{earlier.action}' decision, logged before its run stopped"
        else:
            decision = Decision(
                time=utc_now(),
                model_name=model_name,
                action="abandoned",
                version=mv.version,
                previous=champion,
                actor=default_actor(),
                reason=f"the retrain that registered version {mv.version} ({mv.tags.get(OWNER_TAG, '?')}) stopped "
                "before its decision; the version is never promoted",
                trigger=mv.tags.get(TRIGGER_TAG),
            )
            if mv.version not in abandoned:
                append_decision(settings, decision)
            finish_tags(registry, decision)
            note = f"version {mv.version}: abandoned (registered by a retrain that stopped before its decision)"
        notes.append(note)
        run = mv.tags.get(RUN_TAG, "")
        if run.isdigit():
            per_run[int(run)] = note
    killed: list[int] = []
    for row in store.retrain_history(model_name, outcome="running"):
        if row["id"] == retrain_id:
            continue
        reason = f"stopped without finishing (killed, or its machine went away); found by retrain #{retrain_id}"
        if row["id"] in per_run:
            reason += f"; {per_run[row['id']]}"
        store.finish_retrain(row["id"], outcome="killed", reason=reason)
        killed.append(int(row["id"]))
        notes.append(f"retrain #{row['id']} ({row['owner']}) marked killed")
    removed = _remove_stray_bundles(settings.bundles_dir / model_name, killed)
    if removed:
        notes.append(f"removed {removed} stray bundle director{'y' if removed == 1 else 'ies'}")
    for note in notes:
        logger.warning("retrain recovery", extra={"model": model_name, "note": note})
    return notes


def _remove_stray_bundles(directory: Path, killed: Iterable[int]) -> int:
    """Remove half-written retrain bundles (temporary siblings) and bundles of killed runs; how many."""
    if not directory.is_dir():
        return 0
    prefixes = tuple(f"{BUNDLE_PREFIX}{run:06d}-" for run in killed)
    removed = 0
    for path in directory.iterdir():
        half_written = path.name.startswith(f".{BUNDLE_PREFIX}")
        if path.is_dir() and (half_written or (prefixes and path.name.startswith(prefixes))):
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
    return removed


__all__ = ["BUNDLE_PREFIX", "DECISION_TAG", "OWNER_TAG", "RETRAIN_TAG", "RUN_TAG", "TRIGGER_TAG", "recover"]
