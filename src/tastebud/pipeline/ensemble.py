"""An ensemble of registered versions: reuse their fitted models, learn only the weights, bundle, track, register.

The versions must have been trained on one training part (the same data snapshot and split), so they share a
vocabulary and none of them saw that split's validation part. The validation part is halved per user (seeded):
the weights are learned on one half and the ensemble's recorded metrics come from the other, so the recorded
numbers are not the ones the weights were chosen on. The test part is never read.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tastebud.config import Settings
from tastebud.data.split import Split, split_random
from tastebud.errors import ParameterError
from tastebud.evaluation.protocol import evaluate
from tastebud.models.ensemble import EnsembleRecommender
from tastebud.pipeline.train import TrainResult, _track, rebuild_split, report_metrics
from tastebud.registry.aliases import CHALLENGER, ModelRegistry
from tastebud.registry.bundle import Bundle, load_bundle, read_manifest, utc_now, write_bundle
from tastebud.registry.signing import signer_from_settings

logger = logging.getLogger(__name__)


def parse_refs(refs: str | Sequence[str]) -> list[tuple[str, str]]:
    """``"movielens-100k:3,movielens-100k:champion"`` -> ``[("movielens-100k", "3"), ("movielens-100k", "champion")]``.

    Raises:
        ParameterError: an entry is not ``name:version`` (a version number or an alias).
    """
    items = refs.split(",") if isinstance(refs, str) else list(refs)
    out = []
    for item in (i.strip() for i in items):
        name, sep, ref = item.rpartition(":")
        if not sep or not name or not ref:
            raise ParameterError(f"--from-registry {item!r}: expected name:version (e.g. movielens-100k:3)")
        out.append((name, ref))
    if len(out) < 2:
        raise ParameterError("--from-registry: an ensemble needs at least two registered versions")
    return out


def _load_members(refs: list[tuple[str, str]], registry: ModelRegistry) -> list[tuple[str, Bundle]]:
    members = []
    for name, ref in refs:
        mv = registry.resolve(name, ref)
        bundle = load_bundle(registry.bundle_path(mv), verifier=registry.verifier)
        if bundle.name == EnsembleRecommender.name:
            raise ParameterError(f"{name}:{ref} is an ensemble; combine its members instead")
        members.append((f"{mv.name}:{mv.version}", bundle))
    first_label, first = members[0]
    for label, bundle in members[1:]:
        same_data = bundle.manifest["data"].get("snapshot_id") == first.manifest["data"].get("snapshot_id")
        same_split = bundle.manifest["data"].get("split") == first.manifest["data"].get("split")
        if not (same_data and same_split):
            raise ParameterError(
                f"{label} and {first_label} were trained on different data or splits: the members of an ensemble "
                "must share one training part (train them with the same dataset and seed)"
            )
    return members


def train_ensemble_from_registry(
    refs: str | Sequence[str],
    *,
    settings: Settings,
    params: dict[str, Any] | None = None,
    name: str | None = None,
    k: int = 10,
    track: bool = True,
    register: bool = True,
    registry: ModelRegistry | None = None,
    bundle_dir: Path | None = None,
) -> TrainResult:
    """Blend registered versions into one ensemble bundle (see the module docstring).

    Args:
        refs: ``name:version`` entries (versions or aliases), comma-separated or a list.
        settings: home, tracking and registry settings.
        params: other :class:`~tastebud.models.ensemble.EnsembleConfig` fields (``blend``, ``normalize`` ...).
        name: registered name of the ensemble (default: the first member's registered name).
        k: list length of the weight search and of the recorded metrics.
        track: log an MLflow run.
        register: register the bundle and point ``challenger`` at it (needs ``track``).
        registry: the registry (default one over ``settings``).
        bundle_dir: where to write the bundle (default under ``settings.bundles_dir``).

    Raises:
        ParameterError: bad references, members of different training parts, or an ensemble among them.
        DataValidationError: the members' data cannot be rebuilt as recorded.
    """
    if register and not track:
        raise ParameterError("registering a model needs tracking (its bundle is stored as the run's artifact)")
    params = {key: value for key, value in (params or {}).items() if key not in ("members", "member_params")}
    registry = registry or ModelRegistry(settings)
    t0 = time.perf_counter()
    members = _load_members(parse_refs(refs), registry)
    manifest0 = members[0][1].manifest
    split = rebuild_split(manifest0, settings)
    if split.validation is None:
        raise ParameterError(f"{members[0][0]} was trained without a validation part to learn the weights on")
    seed = int(manifest0["data"]["split"].get("seed", settings.seed))
    halves = split_random(split.validation, test_fraction=0.5, seed=seed)
    timings = {"data_s": time.perf_counter() - t0}

    t1 = time.perf_counter()
    model = EnsembleRecommender.from_models(
        [b.model for _, b in members], halves.train, **{"k": k, "random_state": seed, **params}
    )
    timings["fit_s"] = time.perf_counter() - t1
    check = Split(train=split.train, test=halves.test, meta={**split.meta, "part": "validation-half"})
    report = evaluate(model, check, part="test", k=k, seed=seed)
    metrics = report_metrics(report)

    reg_name = name or manifest0.get("extra", {}).get("registered_name") or members[0][0].split(":")[0]
    bundle_dir = bundle_dir or settings.bundles_dir / reg_name / f"{utc_now().replace(':', '')}-{uuid.uuid4().hex[:8]}"
    extra = {
        "split": manifest0["data"]["split"],
        "data_spec": manifest0.get("extra", {}).get("data_spec"),
        "evaluation": {
            "part": "validation (the half the weights were not learned on)",
            "k": k,
            "eval_snapshot_id": report.eval_snapshot_id,
            "weights_snapshot_id": halves.train.snapshot_id,
            "n_users": report.n_users,
        },
        "ensemble": {"from_registry": [label for label, _ in members], "validation": model.validation_},
        "seed": seed,
        "training_seconds": timings["fit_s"],
        "registered_name": reg_name,
    }
    write_bundle(
        model, bundle_dir, train=split.train, metrics=metrics, fallback=members[0][1].fallback, extra=extra,
        signer=signer_from_settings(settings),
    )  # fmt: skip
    manifest = read_manifest(bundle_dir)
    result = TrainResult(model, members[0][1].fallback, split, report, metrics, bundle_dir, manifest, timings=timings)
    if track:
        result.run_id = _track(settings, result, model.name, reg_name)
    if register:
        version = registry.register(bundle_dir, reg_name, run_id=result.run_id)
        registry.set_alias(reg_name, CHALLENGER, version.version)
        result.version = registry.get(reg_name, version.version)
    logger.info("ensemble from registry", extra={"members": extra["ensemble"], "metrics": metrics})
    return result


__all__ = ["parse_refs", "train_ensemble_from_registry"]
