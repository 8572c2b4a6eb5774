"""Experiments in the serving process: which model answers a user, and the exposure the request log keeps.

Every serving process polls the store for the running experiments of the model it serves (the same interval as the
alias watcher) and keeps an :class:`~tastebud.experiments.assignment.Assigner` over them plus a loaded model per
variant. The assignment is a hash of the experiment's salt and the user id, so every worker, replica and restart
puts a user in the same variant, also users no model knows. A variant pinned to the version the holder serves
shares the holder's model (and follows its switches); any other version is loaded, verified and prepared once, off
the request path, with overlays built from the event store like the served model's. A variant whose model cannot
be loaded is left out (its users get the default model, logged without a variant) and retried on the next poll.

For an interleaving experiment both variants' lists are merged by team draft
(:func:`tastebud.experiments.interleaving.team_draft`, seeded per experiment, user and request) and the request
log keeps which variant contributed each position (``exposure.teams``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tastebud.serving._loop import Loop
from tastebud.serving.holder import ModelHolder, Served

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Route:
    """How one request is answered under an experiment.

    Attributes:
        experiment: the experiment's name.
        variant: the user's variant (``interleaved`` for an interleaving experiment's merged list).
        kind: ``ab``, ``interleaving`` or ``canary``.
        served: the model that answers (the first variant's for interleaving).
        other: the second ranker of an interleaving experiment.
        names: the variants' names, in order (interleaving: the teams).
        salt: the experiment's salt (seeds the interleaving draft).
    """

    experiment: str
    variant: str
    kind: str
    served: Served
    other: Served | None = None
    names: tuple[str, ...] = ()
    salt: str = ""


class ExperimentRouter:
    """Running experiments of the holder's model, a loaded model per variant, and the routing of each user.

    Args:
        store: the store (``running_experiments`` reads it).
        holder: the process's model holder (resolves and prepares variant versions, serves the default).
        list_running: ``list_running(store, model_name)`` (default
            :func:`tastebud.experiments.definitions.running_experiments`; tests inject one).
    """

    def __init__(self, store: Any, holder: ModelHolder, *, list_running: Callable[..., Any] | None = None) -> None:
        from tastebud.experiments.assignment import Assigner

        self.store = store
        self.holder = holder
        self._list_running = list_running
        self._assigner = Assigner(())
        # name -> (experiment, variant -> version, variant names in order)
        self._plans: dict[str, tuple[Any, dict[str, int | None], tuple[str, ...]]] = {}
        self._signature: list[tuple[Any, ...]] = []  # what the routing depends on, to tell a change
        self._models: dict[int, Served] = {}  # version -> prepared model (versions other than the holder's)
        self._failed: dict[int, str] = {}
        self._lock = threading.Lock()
        self._loop: Loop | None = None
        self.last_error: str | None = None

    def __len__(self) -> int:
        return len(self._assigner)

    def start(self, interval_s: float) -> None:
        """Refresh once the holder serves a model, then every ``interval_s`` seconds, in a daemon thread."""
        if self._loop is None:
            self._loop = Loop(
                "tastebud-experiments",
                self._step,
                interval_s,
                first=True,
                ready=lambda: self.holder.current is not None,
            )
        self._loop.start()

    def _step(self) -> None:
        try:
            self.refresh()
        except Exception:  # never let the thread die: the next round tries again
            logger.exception("experiment refresh failed")

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the refresh thread."""
        if self._loop is not None:
            self._loop.stop(timeout)

    def loaded(self) -> list[Served]:
        """The models loaded for variants (the holder's own model is not among them)."""
        return list(self._models.values())

    def experiments(self) -> list[Any]:
        """The running experiments this process routes."""
        return list(self._assigner.experiments)

    # ------------------------------------------------------------------ polling
    def refresh(self) -> bool:
        """Read the running experiments and load the variants' models; True when the routing changed."""
        from tastebud.experiments.assignment import Assigner
        from tastebud.experiments.definitions import running_experiments

        list_running = self._list_running or running_experiments
        with self._lock:
            try:
                running = list(list_running(self.store, self.holder.name))
            except Exception as err:  # the store may be briefly unreachable: keep routing as before
                self.last_error = f"cannot read running experiments: {err}"
                logger.warning(self.last_error)
                return False
            plans: dict[str, tuple[Any, dict[str, int | None], tuple[str, ...]]] = {}
            wanted: set[int] = set()
            usable = []
            for experiment in running:
                versions = self._versions(experiment)
                if versions is None:
                    continue
                plans[experiment.name] = (experiment, versions, tuple(v.name for v in experiment.variants))
                wanted |= {v for v in versions.values() if v is not None}
                usable.append(experiment)
            current = self.holder.current
            own = current.version if current is not None else None
            for version in sorted(wanted - {own} - set(self._models)):
                if not self._load(version):
                    # a variant without its model is routed nowhere: drop the experiments that need it
                    usable = [e for e in usable if version not in plans[e.name][1].values()]
            for version in set(self._models) - wanted:
                del self._models[version]  # stopped experiments release their models
            # routing changes with the experiments, their pinned versions and their weights (a canary's ramp)
            signature = [(e.name, tuple(e.weights), tuple(sorted(plans[e.name][1].items()))) for e in usable]
            changed, self._signature = signature != self._signature, signature
            self._plans = {e.name: plans[e.name] for e in usable}
            self._assigner = Assigner(usable)
            return changed

    def _versions(self, experiment: Any) -> dict[str, int | None] | None:
        """Each variant's version: pinned at the experiment's start, else its alias resolved now."""
        pinned = getattr(experiment, "versions", None) or {}
        out: dict[str, int | None] = {}
        for variant in experiment.variants:
            version = pinned.get(variant.name)
            if version is None:
                try:
                    registry = self.holder.registry
                    if registry is None:
                        return None
                    version = int(registry.resolve(self.holder.name, variant.ref).version)
                except Exception as err:
                    self.last_error = f"experiment {experiment.name}: variant {variant.name}: {err}"
                    logger.warning(self.last_error)
                    return None
            out[variant.name] = int(version)
        return out

    def _load(self, version: int) -> bool:
        if version in self._failed:
            return False
        try:
            self._models[version] = self.holder.prepare(version)
            logger.info("loaded version %s of %s for an experiment", version, self.holder.name)
            return True
        except Exception as err:
            self._failed[version] = str(err)
            self.last_error = f"version {version} for an experiment: {err}"
            logger.error("cannot load %s", self.last_error)
            return False

    def served_for(self, version: int | None) -> Served | None:
        """The model of ``version``: the holder's own when it serves that version, else a loaded variant's."""
        current = self.holder.current
        if current is not None and (version is None or current.version == version):
            return current
        return None if version is None else self._models.get(version)

    # ------------------------------------------------------------------ requests
    def route(self, user_id: str) -> Route | None:
        """How ``user_id``'s request is answered, or None (no running experiment takes the user)."""
        assigner = self._assigner
        if not len(assigner):
            return None
        assignment = assigner.assign(user_id)
        if assignment is None:
            return None
        plan = self._plans.get(assignment.experiment)
        if plan is None:
            return None
        experiment, versions, names = plan
        if assignment.kind == "interleaving":
            first, second = (self.served_for(versions[n]) for n in names[:2])
            if first is None or second is None:
                return None
            return Route(assignment.experiment, "interleaved", "interleaving", first, second, names, experiment.salt)
        served = self.served_for(versions[assignment.variant])
        if served is None:
            return None
        return Route(assignment.experiment, assignment.variant, assignment.kind, served, None, names)
