"""Safe retraining: the champion's data plus the events since, a candidate, an honest comparison, the gate.

:func:`run_retrain` is one retrain of a registered model:

1. **single flight**: it takes the store lock ``retrain:<model>`` (:mod:`tastebud.pipeline.lease`); while another
   live run holds it the answer is ``busy`` at once. Holding it, it cleans up after killed runs
   (:mod:`tastebud.pipeline.recovery`);
2. **data**: the champion's data spec is rebuilt and its snapshot id checked; the events stored after the
   champion's cutoff (``extra.events_through_id``, 0 for a model trained from a dataset) through the newest settled
   event id ``H`` are merged in by :data:`~tastebud.pipeline.lineage.DEDUPE_RULE`. No new events: ``no_new_data``;
3. **checks**: floors on users, items and interactions, finite values, and new events at most
   ``retrain.max_new_share`` of the merged interactions; a failed check is ``rejected_data`` and nothing is trained;
4. **candidate**: the champion's family with its parameters (or ``tune`` Optuna trials; ``fit_warm`` from the
   champion with ``warm_start`` when the family has it), fitted on the merged data without the holdout;
5. **comparison** on the fresh holdout (:mod:`tastebud.pipeline.holdout`: the newest ``holdout_fraction`` of the
   first-time pairs from new events), the champion answering as serving would, with fold-in of new users' earlier
   events; the gate (:func:`tastebud.registry.gates.check_gate`: NDCG@10 up by ``registry.promotion_margin``,
   coverage kept) plus at least ``retrain.min_holdout_users`` holdout users;
6. **ship**: the candidate is fitted again on all merged data, the holdout included, and that model is bundled
   (written to a temporary sibling and renamed), tracked and registered. It must learn the holdout's events: its
   manifest's ``extra.events_through_id = H`` tells serving that the model contains every stored event up to
   ``H``, and serving drops those from its overlays. The recorded metrics are the comparison fit's;
7. **decision**: the decision (``promoted``/``refused``, with the trigger and gate numbers) is appended to the
   decision log, which is the commit point; then the ``champion`` alias moves (serving follows it) and the
   version's ``tastebud.retrain`` tag flips from ``pending`` to the decision.

Every run is a row of the store's ``retrains`` history (``running`` until it ends). A run killed at any point
leaves at most a ``pending`` version and a ``running`` row, which the next run resolves.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tastebud.config import Settings
from tastebud.errors import DataValidationError, ParameterError, TastebudError
from tastebud.models import create
from tastebud.pipeline.candidate import (
    bundle_extra,
    candidate_params,
    fit_candidate,
    track_candidate,
    tune_params,
    write_candidate,
)
from tastebud.pipeline.holdout import Holdout, Scores, score_holdout, select_holdout
from tastebud.pipeline.lease import Lease, Owner, acquire
from tastebud.pipeline.lineage import MergedData, check_merged, lineage_record, merge_events
from tastebud.pipeline.recovery import OWNER_TAG, RETRAIN_TAG, RUN_TAG, TRIGGER_TAG, finish_tags, recover
from tastebud.pipeline.train import load_data
from tastebud.registry.aliases import CHAMPION, ModelRegistry, ModelVersion
from tastebud.registry.bundle import Bundle, load_bundle, read_manifest, utc_now
from tastebud.registry.decisions import Decision, append_decision, default_actor
from tastebud.registry.gates import GateResult, check_gate
from tastebud.registry.signing import signer_from_settings

if TYPE_CHECKING:
    from tastebud.store import Store

logger = logging.getLogger(__name__)

#: Every outcome of a retrain; ``killed`` appears only in the history (set by the next run).
OUTCOMES = ("promoted", "refused", "rejected_data", "no_new_data", "busy", "failed")
#: Outcomes that are not errors (the command exits 0).
OK_OUTCOMES = ("promoted", "refused", "no_new_data")


def lock_name(model_name: str) -> str:
    """The store lock of a model's retrains."""
    return f"retrain:{model_name}"


@dataclass
class RetrainOutcome:
    """What one retrain did.

    Attributes:
        outcome: one of :data:`OUTCOMES`.
        reason: why, in words (the gate's reasons, the failed check, the error).
        trigger: what started it (``manual``, ``schedule``, ``volume``, ``drift`` ...).
        model_name: the registered model.
        started_at: when it started (UTC).
        version: the version it registered (``None`` when it registered none).
        champion_version: the champion it was compared with.
        duration_s: wall time of the whole run.
        fit_s: time inside the model's own ``fit`` (comparison fit plus final fit; tuning apart).
        n_interactions: interactions of the merged data.
        n_new_events: events stored since the champion's cutoff.
        gate: gate numbers: ``passed``, ``reasons``, ``candidate`` and ``champion`` metrics, thresholds, the
            holdout and how each model's lists were made (``model``, ``fold_in``, ``popular``).
        retrain_id: its row in the store's retrain history.
        timings: seconds per step.
        lineage: the new snapshot's lineage (as in the manifest's ``extra.lineage``).
        recovered: what it cleaned up after killed runs.
        bundle_dir: where its bundle was written.
    """

    outcome: str
    reason: str
    trigger: str
    model_name: str
    started_at: datetime
    version: int | None = None
    champion_version: int | None = None
    duration_s: float = 0.0
    fit_s: float | None = None
    n_interactions: int | None = None
    n_new_events: int | None = None
    gate: dict[str, Any] = field(default_factory=dict)
    retrain_id: int | None = None
    timings: dict[str, float] = field(default_factory=dict)
    lineage: dict[str, Any] = field(default_factory=dict)
    recovered: list[str] = field(default_factory=list)
    bundle_dir: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the outcome is not an error (promoted, refused, no new data)."""
        return self.outcome in OK_OUTCOMES

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (``started_at`` as ISO 8601)."""
        out = asdict(self)
        out["started_at"] = self.started_at.isoformat()
        return out


class _Stop(Exception):
    """Ends a run early with an outcome (not an error of the code)."""

    def __init__(self, outcome: str, reason: str) -> None:
        super().__init__(reason)
        self.outcome, self.reason = outcome, reason


def run_retrain(
    settings: Settings,
    *,
    model_name: str,
    trigger: str = "manual",
    tune: int = 0,
    warm_start: bool = False,
    store: Store | None = None,
    registry: ModelRegistry | None = None,
    holdout_fraction: float | None = None,
    force: bool = False,
    params: dict[str, Any] | None = None,
    seed: int | None = None,
    k: int = 10,
    on_stage: Callable[[str], None] | None = None,
) -> RetrainOutcome:
    """Retrain ``model_name``'s champion on its data plus the new events and let the gate decide (module docstring).

    Never raises for what happens during the run: errors become outcome ``failed`` with the message as reason.

    Args:
        settings: home, registry, store and ``retrain`` settings.
        model_name: the registered model (it needs a ``champion``).
        trigger: what started the run, recorded in the history and the decision log.
        tune: Optuna trials on the pre-holdout data before fitting (0: the champion's parameters).
        warm_start: fit from the champion's model when the family has ``fit_warm`` (ALS), else a plain fit.
        store: the event store (default: the one in ``settings``).
        registry: the model registry (default: the one in ``settings``).
        holdout_fraction: share of the new first-time pairs held out (default ``retrain.holdout_fraction``).
        force: retrain even with fewer than ``retrain.min_new_events`` new events.
        params: parameters overriding the champion's (before tuning).
        seed: seed of tuning and of a model without one in its parameters (default ``settings.seed``).
        k: list length of the comparison (the gate compares ``ndcg_at_<k>``).
        on_stage: called with each step's name as it completes (``locked``, ``data``, ``evaluated``, ``registered``,
            ``decision_logged``, ``decided``), for progress and tests.

    Raises:
        ParameterError: invalid arguments (a fraction outside (0, 1), negative ``tune``, ``k`` < 1).
    """
    fraction = settings.retrain.holdout_fraction if holdout_fraction is None else float(holdout_fraction)
    if not 0 < fraction < 1:
        raise ParameterError(f"holdout_fraction must be in (0, 1), got {fraction}")
    if tune < 0 or k < 1:
        raise ParameterError(f"tune must be >= 0 and k >= 1, got tune={tune}, k={k}")
    started, t0 = datetime.now(UTC), time.perf_counter()
    out = RetrainOutcome("failed", "", trigger, model_name, started)
    own_store = store is None
    owner = Owner.current()
    try:
        if store is None:
            from tastebud.store import create_store

            store = create_store(settings)
        store.init_schema()
        taken, held = acquire(store, lock_name(model_name), owner, settings.retrain.lock_ttl_s)
        out.timings["lock_s"] = time.perf_counter() - t0
        if not taken:
            holder = "another run" if held is None else f"{held['owner']}, lease until {held['expires_at']:%H:%M:%S}Z"
            out.outcome, out.reason = "busy", f"another retrain of {model_name!r} is running ({holder})"
            out.duration_s = time.perf_counter() - t0
            out.retrain_id = store.start_retrain(
                model_name=model_name, trigger=trigger, owner=str(owner), outcome="busy"
            )
            store.finish_retrain(out.retrain_id, outcome="busy", reason=out.reason, duration_s=out.duration_s)
            return out
        if held is not None:
            out.recovered.append(f"took over the lock of {held['owner']} (that process no longer runs)")
        with Lease(store, lock_name(model_name), owner, settings.retrain.lock_ttl_s) as lease:
            run = _Run(settings, store, registry or ModelRegistry(settings), owner, lease, out, t0)
            run.execute(
                tune=tune,
                warm_start=warm_start,
                fraction=fraction,
                force=force,
                params=params,
                seed=settings.seed if seed is None else seed,
                k=k,
                on_stage=on_stage,
            )
    except TastebudError as err:  # before the history row exists (the store is unreachable ...)
        out.outcome, out.reason = "failed", str(err)
    finally:
        if out.retrain_id is None:  # else the run measured itself, as its history row says
            out.duration_s = time.perf_counter() - t0
        if own_store and store is not None:
            store.close()
    logger.info("retrain", extra={"model": model_name, "outcome": out.outcome, "duration_s": out.duration_s})
    return out


class _Run:
    """One retrain holding the lock: its context, steps and history row."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        registry: ModelRegistry,
        owner: Owner,
        lease: Lease,
        out: RetrainOutcome,
        t0: float,
    ) -> None:
        self.settings, self.store, self.registry = settings, store, registry
        self.owner, self.lease, self.out, self.t0 = owner, lease, out, t0
        self.name = out.model_name
        self.retrain_id = 0  # set when the history row is written
        self.decided = False  # whether the decision is in the log (the commit point)

    def execute(self, **kwargs: Any) -> None:
        """Run the steps, record the history row however they end."""
        out = self.out
        self.retrain_id = out.retrain_id = self.store.start_retrain(
            model_name=self.name, trigger=out.trigger, owner=str(self.owner), started_at=out.started_at
        )
        try:
            t = time.perf_counter()
            out.recovered += recover(
                self.store, self.registry, self.settings, self.name, owner=str(self.owner), retrain_id=self.retrain_id
            )
            out.timings["recover_s"] = time.perf_counter() - t
            self._steps(**kwargs)
        except _Stop as stop:
            out.outcome, out.reason = stop.outcome, stop.reason
        except TastebudError as err:
            out.outcome, out.reason = "failed", str(err)
        except Exception as err:  # a bug or a library error: recorded, never half-applied (see the decision)
            logger.exception("retrain failed", extra={"model": self.name})
            out.outcome, out.reason = "failed", f"{type(err).__name__}: {err}"
        except BaseException:
            out.outcome, out.reason = "failed", "interrupted"
            raise
        finally:
            if out.version is not None and not self.decided:
                self._abandon_own()
            out.duration_s = time.perf_counter() - self.t0
            self._finish_row()

    def _finish_row(self) -> None:
        """Write how the run ended to its history row; a store failure here must not change the outcome."""
        out = self.out
        try:
            self.store.finish_retrain(
                self.retrain_id,
                outcome=out.outcome,
                reason=out.reason,
                version=out.version,
                champion_version=out.champion_version,
                duration_s=out.duration_s,
                fit_s=out.fit_s,
                n_interactions=out.n_interactions,
                n_new_events=out.n_new_events,
                gate=out.gate or None,
            )
        except TastebudError as err:  # the next run marks the row killed; the registry and log are right
            logger.error("could not record the retrain's end", extra={"retrain": self.retrain_id, "error": str(err)})

    def _steps(
        self,
        *,
        tune: int,
        warm_start: bool,
        fraction: float,
        force: bool,
        params: dict[str, Any] | None,
        seed: int,
        k: int,
        on_stage: Callable[[str], None] | None,
    ) -> None:
        stage = on_stage or (lambda _name: None)
        out, timings = self.out, self.out.timings
        stage("locked")
        t = time.perf_counter()
        champion_mv, manifest = self._champion()
        merged = self._data(manifest, force)
        timings["data_s"] = time.perf_counter() - t
        stage("data")
        t = time.perf_counter()
        holdout = select_holdout(merged, fraction)
        champion = load_bundle(self.registry.bundle_path(champion_mv), verifier=self.registry.verifier)
        family = manifest["model"]["name"]
        chosen = candidate_params(family, manifest["model"]["params"], params, seed)
        timings["prepare_s"] = time.perf_counter() - t
        if tune:
            t = time.perf_counter()
            runs = self.settings.runs_dir / "retrain" / self.name / f"{self.retrain_id:06d}"
            chosen = tune_params(family, chosen, holdout.train, trials=tune, seed=seed, k=k, storage_dir=runs)
            timings["tune_s"] = time.perf_counter() - t
        gate, champ, warm_used = self._compare(family, chosen, holdout, champion, warm_start, k)
        stage("evaluated")
        final, fit_final, _ = fit_candidate(family, chosen, merged.dataset, champion.model, warm_start)
        out.fit_s = timings["fit_compare_s"] + fit_final
        timings["fit_final_s"] = fit_final
        t = time.perf_counter()
        retrain = {
            "trigger": out.trigger,
            "champion_version": out.champion_version,
            "gate": out.gate,
            "warm_start": warm_used,
            "tune_trials": tune,
            "retrain_id": self.retrain_id,
        }
        extra = bundle_extra(
            champion_manifest=manifest,
            merged=merged,
            lineage=out.lineage,
            holdout=holdout,
            retrain=retrain,
            k=k,
            seed=seed,
            fraction=fraction,
            fit_seconds=fit_final,
            name=self.name,
        )
        bundle_dir = write_candidate(
            final,
            merged.dataset,
            bundles_dir=self.settings.bundles_dir / self.name,
            retrain_id=self.retrain_id,
            metrics=out.gate["candidate"],
            extra=extra,
            signer=signer_from_settings(self.settings),
        )
        out.bundle_dir = str(bundle_dir)
        timings["bundle_s"] = time.perf_counter() - t
        self._register(bundle_dir, champ)
        stage("registered")
        t = time.perf_counter()
        self._decide(gate, stage)
        timings["decide_s"] = time.perf_counter() - t
        stage("decided")

    # ------------------------------------------------------------------ steps
    def _champion(self) -> tuple[ModelVersion, dict[str, Any]]:
        """The champion's registered version and manifest."""
        champion_version = self.registry.get_alias(self.name, CHAMPION)
        if champion_version is None:
            raise _Stop(
                "failed",
                f"model {self.name!r} has no champion to retrain: train a first version and promote it "
                "(tastebud train, tastebud models promote)",
            )
        self.out.champion_version = champion_version
        champion_mv = self.registry.get(self.name, champion_version)
        return champion_mv, self.registry.manifest(champion_mv)

    def _data(self, manifest: dict[str, Any], force: bool) -> MergedData:
        """The champion's data plus the events since its cutoff, checked; the lineage goes to the outcome."""
        out, cfg = self.out, self.settings.retrain
        extra = manifest.get("extra", {})
        spec = extra.get("data_spec")
        if not spec:
            raise _Stop(
                "failed", f"champion version {out.champion_version} has no extra.data_spec: its data cannot be rebuilt"
            )
        parent = load_data(spec, self.settings, store=self.store)
        if spec.get("snapshot_id") and parent.snapshot_id != spec["snapshot_id"]:
            raise _Stop(
                "failed",
                f"the champion's data rebuilt as snapshot {parent.snapshot_id}, its manifest "
                f"records {spec['snapshot_id']}: the source data changed",
            )
        cutoff = int(extra.get("events_through_id") or 0)
        settle = cfg.settle_s if self.store.backend == "postgresql" else 0.0
        through = self.store.last_event_id(settled_s=settle)
        if through < cutoff:
            raise _Stop(
                "failed",
                f"the store's newest event id {through} is below the champion's cutoff {cutoff}: "
                "is this the store the champion was trained with?",
            )
        events = self.store.events_after(cutoff, through_id=through)
        out.n_new_events = len(events)
        self.store.update_retrain(self.retrain_id, champion_version=out.champion_version, n_new_events=len(events))
        if len(events) < cfg.min_new_events and not force:
            raise _Stop(
                "no_new_data",
                f"{len(events)} new events since the champion's cutoff (event id {cutoff}); "
                f"a retrain needs at least {cfg.min_new_events} (retrain.min_new_events), or --force",
            )
        try:
            merged = merge_events(parent, events)
        except DataValidationError as err:
            raise _Stop("rejected_data", f"new events: {err}") from err
        out.n_interactions = merged.dataset.n_interactions
        problem = check_merged(merged, cfg)
        if problem is not None:
            raise _Stop("rejected_data", problem)
        out.lineage = lineage_record(merged, parent_version=out.champion_version, after_id=cutoff, through_id=through)
        return merged

    def _compare(
        self, family: str, params: dict[str, Any], holdout: Holdout, champion: Bundle, warm_start: bool, k: int
    ) -> tuple[GateResult, Scores, bool]:
        """Fit the candidate without the holdout, score both on it, run the gate; (gate, champion's scores, warm)."""
        candidate, seconds, warm_used = fit_candidate(family, params, holdout.train, champion.model, warm_start)
        self.out.timings["fit_compare_s"] = seconds
        t = time.perf_counter()
        cand = score_holdout(candidate, create("popular").fit(holdout.train), holdout, k=k, overlays=False)
        champ = score_holdout(champion.model, champion.fallback["popular"], holdout, k=k, overlays=True)
        gate = self._gate(cand, champ, holdout, k)
        self.out.timings["evaluate_s"] = time.perf_counter() - t
        return gate, champ, warm_used

    def _gate(self, cand: Scores, champ: Scores, holdout: Holdout, k: int) -> GateResult:
        primary = f"ndcg_at_{k}"
        result = check_gate(cand.metrics, champ.metrics, self.settings.registry, primary=primary)
        floor = self.settings.retrain.min_holdout_users
        if not holdout.users:
            result.passed = False
            result.reasons = ["no fresh holdout: the new events hold no first-time (user, item) pair to compare on"]
        elif len(holdout.users) < floor:
            result.passed = False
            result.reasons.append(
                f"holdout has {len(holdout.users)} users; a promotion needs at least {floor} "
                "(retrain.min_holdout_users)"
            )
        self.out.gate = {
            **result.numbers(),
            "passed": result.passed,
            "reasons": result.reasons,
            "primary": primary,
            "candidate": cand.metrics,
            "champion": champ.metrics,
            "champion_version": self.out.champion_version,
            "holdout": holdout.meta,
            "candidate_sources": cand.sources,
            "champion_sources": champ.sources,
        }
        return result

    def _register(self, bundle_dir: Path, champ: Scores) -> None:
        """Log the MLflow run and register the version, tagged ``pending`` until the decision."""
        out = self.out
        t = time.perf_counter()
        manifest = read_manifest(bundle_dir)
        run_id = track_candidate(
            self.settings, manifest, bundle_dir, name=self.name, champion_metrics=champ.metrics, fit_seconds=out.fit_s
        )
        out.timings["track_s"] = time.perf_counter() - t
        t = time.perf_counter()
        self.lease.check()
        tags = {RETRAIN_TAG: "pending", OWNER_TAG: str(self.owner), RUN_TAG: str(self.retrain_id)}
        tags[TRIGGER_TAG] = out.trigger
        out.version = self.registry.register(bundle_dir, self.name, run_id=run_id, tags=tags).version
        self.store.update_retrain(self.retrain_id, version=out.version)
        out.timings["register_s"] = time.perf_counter() - t

    def _decide(self, gate: GateResult, stage: Callable[[str], None]) -> None:
        """Log the decision (the commit point), then move the alias and finish the version's tags."""
        out = self.out
        assert out.version is not None
        self.lease.check()
        passed, reason = gate.passed, gate.summary
        current = self.registry.get_alias(self.name, CHAMPION)
        if passed and current != out.champion_version:
            passed = False
            reason = f"the champion changed during the retrain (version {out.champion_version} -> {current}); {reason}"
        decision = Decision(
            time=utc_now(),
            model_name=self.name,
            action="promoted" if passed else "refused",
            version=out.version,
            previous=current,
            actor=default_actor(),
            reason=f"retrain ({out.trigger}): {reason}",
            numbers=out.gate,
            trigger=out.trigger,
        )
        append_decision(self.settings, decision)
        self.decided = True
        stage("decision_logged")
        if passed:
            self.registry.set_alias(self.name, CHAMPION, out.version)
        finish_tags(self.registry, decision)
        out.outcome, out.reason = decision.action, reason

    def _abandon_own(self) -> None:
        """A run that failed after registering, before its decision, abandons its version itself (best effort)."""
        out = self.out
        assert out.version is not None
        decision = Decision(
            time=utc_now(),
            model_name=self.name,
            action="abandoned",
            version=out.version,
            previous=out.champion_version,
            actor=default_actor(),
            reason=f"retrain ({out.trigger}) failed after registering version {out.version}: {out.reason}",
            trigger=out.trigger,
        )
        try:
            append_decision(self.settings, decision)
            finish_tags(self.registry, decision)
        except Exception as err:  # the next retrain abandons it (its tag still says pending)
            logger.warning("could not abandon the version", extra={"version": out.version, "error": str(err)})


__all__ = ["OK_OUTCOMES", "OUTCOMES", "RetrainOutcome", "lock_name", "run_retrain"]
