"""A retrain's candidate: its parameters, its fit (warm or cold), its bundle and tracked run, and reproducing it.

The candidate is the champion's family with the champion's parameters (overridden by the caller, or tuned by
Optuna on the pre-holdout data, never on the holdout). It is fitted twice: once without the holdout for the
comparison (:mod:`tastebud.pipeline.holdout`), once on all merged data for the bundle, whose manifest records the
comparison's metrics, the lineage and ``extra.events_through_id``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tastebud.config import Settings
from tastebud.data.dataset import Dataset
from tastebud.errors import DataValidationError, ParameterError
from tastebud.models import Recommender, create, model_class
from tastebud.pipeline.holdout import Holdout, score_holdout, select_holdout
from tastebud.pipeline.lineage import MergedData, load_merged, merged_spec
from tastebud.pipeline.recovery import BUNDLE_PREFIX, TRIGGER_TAG
from tastebud.pipeline.train import RETRAIN_SPLIT, _has_item_metadata
from tastebud.registry.aliases import provenance_tags
from tastebud.registry.bundle import write_bundle
from tastebud.registry.signing import Signer


def candidate_params(family: str, champion: Mapping[str, Any], overrides: Mapping[str, Any] | None, seed: int) -> dict:
    """The champion's parameters with ``overrides``; a model seed left unset becomes ``seed`` (reproducible fits)."""
    params = {**champion, **(overrides or {})}
    if "random_state" in model_class(family).config_class.model_fields and params.get("random_state") is None:
        params["random_state"] = seed
    return params


def tune_params(
    family: str, params: dict[str, Any], data: Dataset, *, trials: int, seed: int, k: int, storage_dir: Path
) -> dict[str, Any]:
    """``params`` with the best of ``trials`` Optuna trials over the family's search space, tuned on ``data`` only.

    Raises:
        ParameterError: the family has no search space.
    """
    from tastebud.evaluation.tuning import SEARCH_SPACES, tune

    space = SEARCH_SPACES.get(family)
    if space is None:
        raise ParameterError(f"--tune: no search space for model {family!r}; tunable: {sorted(SEARCH_SPACES)}")
    fixed = {key: value for key, value in params.items() if key not in space}
    result = tune(
        data, family, trials=trials, k=k, seed=seed, storage_dir=storage_dir, progress=False, fixed_params=fixed
    )
    return {**params, **result.best_params}


def fit_candidate(
    family: str, params: dict[str, Any], data: Dataset, previous: Recommender, warm_start: bool
) -> tuple[Recommender, float, bool]:
    """Fit ``family`` on ``data``, from ``previous`` by ``fit_warm`` when asked and the family has it.

    Returns:
        The model, the seconds spent in its fit, and whether the fit was warm.
    """
    model = create(family, **params)
    warm = warm_start and callable(getattr(model, "fit_warm", None))
    t = time.perf_counter()
    if warm:
        model.fit_warm(data, previous)  # type: ignore[attr-defined]
    else:
        model.fit(data)
    return model, time.perf_counter() - t, warm


def bundle_extra(
    *,
    champion_manifest: dict[str, Any],
    merged: MergedData,
    lineage: dict[str, Any],
    holdout: Holdout,
    retrain: dict[str, Any],
    k: int,
    seed: int,
    fraction: float,
    fit_seconds: float,
    name: str,
) -> dict[str, Any]:
    """The manifest's ``extra`` of a retrained bundle: split, data spec, lineage, cutoff, evaluation, retrain."""
    events = lineage["events"]
    spec = merged_spec(
        champion_manifest["extra"]["data_spec"],
        after_id=events["after_id"],
        through_id=events["through_id"],
        count=events["count"],
        snapshot_id=merged.dataset.snapshot_id,
    )
    return {
        "split": {"method": RETRAIN_SPLIT, "params": {"holdout_fraction": fraction}, "seed": seed},
        "data_spec": spec,
        "lineage": lineage,
        "events_through_id": events["through_id"],  # serving's contract: every stored event up to here is learned
        "evaluation": {
            "part": "holdout",
            "k": k,
            "eval_snapshot_id": holdout.test.snapshot_id,
            "train_snapshot_id": holdout.train.snapshot_id,
            "n_users": len(holdout.users),
        },
        "retrain": retrain,
        "seed": seed,
        "training_seconds": fit_seconds,
        "registered_name": name,
    }


def write_candidate(
    model: Recommender,
    data: Dataset,
    *,
    bundles_dir: Path,
    retrain_id: int,
    metrics: Mapping[str, float | None],
    extra: dict[str, Any],
    signer: Signer | None = None,
) -> Path:
    """Write the bundle with its fallbacks (built in a temporary sibling, renamed when complete); its directory.

    ``signer`` signs its manifest (when signing is configured).
    """
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    directory = bundles_dir / f"{BUNDLE_PREFIX}{retrain_id:06d}-{stamp}"
    fallback = {"popular": create("popular").fit(data)}
    if _has_item_metadata(data):
        fallback["content"] = create("content").fit(data)
    return write_bundle(model, directory, train=data, metrics=metrics, fallback=fallback, extra=extra, signer=signer)


def track_candidate(
    settings: Settings,
    manifest: dict[str, Any],
    bundle_dir: Path,
    *,
    name: str,
    champion_metrics: Mapping[str, float | None],
    fit_seconds: float | None,
) -> str:
    """Log the retrain's MLflow run (parameters, lineage, both models' holdout metrics, the bundle); its run id."""
    from tastebud.registry.tracking import flat_params, log_run

    data, extra = manifest["data"], manifest["extra"]
    events, retrain = extra["lineage"]["events"], extra["retrain"]
    params = {
        "model": manifest["model"]["name"],
        **flat_params("model", manifest["model"]["params"]),
        "data.name": data["name"],
        "data.snapshot_id": data["snapshot_id"],
        "data.n_users": data["n_users"],
        "data.n_items": data["n_items"],
        "data.n_interactions": data["n_interactions"],
        "retrain.trigger": retrain["trigger"],
        "retrain.champion_version": retrain["champion_version"],
        "retrain.parent_snapshot_id": extra["lineage"]["parent_snapshot_id"],
        "retrain.events_after_id": events["after_id"],
        "retrain.events_through_id": events["through_id"],
        "retrain.n_new_events": events["count"],
        "git_sha": manifest["git_sha"],
        "package_version": manifest["package_version"],
    }
    metrics = {**manifest["metrics"], **{f"champion_{key}": v for key, v in champion_metrics.items()}}
    metrics["training_time_s"] = fit_seconds
    tags = {**provenance_tags(manifest), "tastebud.registered_name": name, TRIGGER_TAG: retrain["trigger"]}
    run = log_run(
        settings,
        run_name=f"retrain-{manifest['model']['name']}-{name}",
        params=params,
        metrics=metrics,
        tags=tags,
        artifacts={"bundle": bundle_dir},
    )
    return run.run_id


def reproduce_retrain_metrics(manifest: dict[str, Any], settings: Settings) -> dict[str, float | None]:
    """The comparison metrics of a retrained version, again: rebuild its data and holdout, refit, score.

    A warm-started candidate is refitted cold, so its metrics may differ slightly.

    Raises:
        DataValidationError: the data or the holdout no longer rebuild as recorded.
    """
    extra = manifest["extra"]
    merged = load_merged(extra["data_spec"], settings)
    if merged.dataset.snapshot_id != extra["data_spec"].get("snapshot_id"):
        raise DataValidationError(
            f"rebuilt merged data has snapshot {merged.dataset.snapshot_id}, the manifest records "
            f"{extra['data_spec'].get('snapshot_id')}"
        )
    holdout = select_holdout(merged, float(manifest["data"]["split"]["params"]["holdout_fraction"]))
    if holdout.train.snapshot_id != extra["evaluation"]["train_snapshot_id"]:
        raise DataValidationError(
            f"rebuilt pre-holdout data has snapshot {holdout.train.snapshot_id}, the manifest records "
            f"{extra['evaluation']['train_snapshot_id']}"
        )
    model = create(manifest["model"]["name"], **manifest["model"]["params"]).fit(holdout.train)
    popular = create("popular").fit(holdout.train)
    k = int(extra["evaluation"].get("k", 10))
    return score_holdout(model, popular, holdout, k=k, overlays=False).metrics


__all__ = [
    "bundle_extra",
    "candidate_params",
    "fit_candidate",
    "reproduce_retrain_metrics",
    "track_candidate",
    "tune_params",
    "write_candidate",
]
