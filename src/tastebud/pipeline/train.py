"""Training as one step: data -> split -> fit -> validate -> bundle -> track -> register; and reproduce.

The bundle's manifest records everything needed to train again: how to rebuild the data (dataset source or
synthetic parameters, preparation), the split parameters and seed, and the model parameters.
"""

from __future__ import annotations

import importlib
import logging
import math
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tastebud.config import Settings
from tastebud.data.dataset import Dataset
from tastebud.data.split import Split, make_split
from tastebud.errors import DataValidationError, ParameterError
from tastebud.evaluation.protocol import Report, evaluate
from tastebud.models import Recommender, create
from tastebud.registry.aliases import CHALLENGER, ModelRegistry, ModelVersion, provenance_tags
from tastebud.registry.bundle import read_manifest, utc_now, write_bundle
from tastebud.registry.signing import signer_from_settings

if TYPE_CHECKING:
    from tastebud.store import Store

logger = logging.getLogger(__name__)

#: Registered model name per dataset name (others keep the dataset name).
DEFAULT_MODEL_NAMES = {"ml-100k": "movielens-100k", "ml-1m": "movielens-1m"}
#: Split every training run uses: per-user random, 20% test, 10% validation.
SPLIT_METHOD, TEST_FRACTION, VALIDATION_FRACTION = "random", 0.2, 0.1
#: Users of the validation part a training run scores: a uniform sample drawn with the run's seed when the part
#: has more (ML-1M and smaller are scored whole). Scoring every user of an ML-25M-sized set costs more than the
#: fit; 10,000 users put the standard error of NDCG@10 near 0.003, and the bootstrap intervals in the manifest
#: are computed over the sample, so they show it. Champion and challenger validated on one split score the same
#: users, and the manifest records the sample (``extra.evaluation.max_users``).
VALIDATION_MAX_USERS = 10_000
#: Default preparation of datasets read by name (merge duplicate pairs, keep the latest).
DEFAULT_PREPARE: dict[str, Any] = {"dedupe": "latest"}
#: ``data.split.method`` of bundles written by ``tastebud retrain`` (evaluated on a fresh holdout of new events).
RETRAIN_SPLIT = "retrain-holdout"


def default_model_name(dataset_name: str) -> str:
    """``ml-100k`` -> ``movielens-100k``, ``ml-1m`` -> ``movielens-1m``, otherwise the dataset name."""
    return DEFAULT_MODEL_NAMES.get(dataset_name, dataset_name)


@dataclass
class TrainResult:
    """What one training run produced."""

    model: Recommender
    fallback: dict[str, Recommender]
    split: Split
    report: Report
    metrics: dict[str, float | None]
    bundle_dir: Path
    manifest: dict[str, Any]
    run_id: str | None = None
    version: ModelVersion | None = None
    timings: dict[str, float] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------- data
def load_data(spec: dict[str, Any], settings: Settings, *, store: Store | None = None) -> Dataset:
    """Rebuild a dataset from a manifest's data spec (``synthetic`` parameters or a ``source``, then ``prepare``).

    A retrained model's spec names a ``parent`` spec and a range of stored events instead; it is rebuilt by
    :func:`tastebud.pipeline.lineage.load_merged` from ``store`` (default: the store in ``settings``).

    Raises:
        DataValidationError: the spec says neither how to generate nor where to read the data, or a merged
            snapshot cannot be rebuilt as recorded.
    """
    if spec.get("parent") is not None:
        from tastebud.pipeline.lineage import load_merged

        return load_merged(spec, settings, store=store).dataset
    if spec.get("synthetic") is not None:
        from tastebud.data.synthetic import generate_synthetic

        params = dict(spec["synthetic"])
        sizes = {k: params.pop(k) for k in ("n_users", "n_items", "n_interactions")}
        ds = generate_synthetic(**sizes, name=spec.get("name", "synthetic"), **params)
    elif spec.get("source"):
        from tastebud.data.readers import read_dataset

        ds = read_dataset(spec["source"], format=spec.get("format"), settings=settings)
    else:
        raise DataValidationError(f"data spec {spec!r}: has neither 'synthetic' parameters nor a 'source'")
    if spec.get("prepare") is not None:
        from tastebud.data.prepare import PrepareConfig, prepare

        ds = prepare(ds, PrepareConfig.from_params(**spec["prepare"]))
    return ds


def data_spec(ds: Dataset, *, source: str | None = None, fmt: str | None = None, prepare: dict | None = None) -> dict:
    """How to rebuild ``ds``: its synthetic parameters or its source, plus the preparation applied."""
    spec: dict[str, Any] = {"name": ds.name, "prepare": prepare, "snapshot_id": ds.snapshot_id}
    if source is not None:
        spec.update(source=source, format=fmt)
    elif "synthetic" in ds.meta:
        spec["synthetic"] = ds.meta["synthetic"]
    else:
        spec.update(source=ds.meta.get("dataset") or ds.meta.get("source"), format=ds.meta.get("format"))
        if ds.meta.get("preparation") and prepare is None:
            spec["preparation_steps"] = ds.meta["preparation"]
    return spec


def split_spec(seed: int) -> dict[str, Any]:
    """Split parameters of a training run."""
    return {
        "method": SPLIT_METHOD,
        "params": {"test_fraction": TEST_FRACTION, "validation_fraction": VALIDATION_FRACTION},
        "seed": seed,
    }


def rebuild_split(manifest: dict[str, Any], settings: Settings) -> Split:
    """The split a bundle was validated on, rebuilt from its manifest.

    Raises:
        DataValidationError: the rebuilt data or split does not match the recorded snapshot ids.
    """
    extra = manifest.get("extra", {})
    spec = extra.get("data_spec")
    if not spec:
        raise DataValidationError("manifest has no extra.data_spec: the data cannot be rebuilt")
    if manifest["data"].get("split", {}).get("method") == RETRAIN_SPLIT:
        # its model was refitted on everything, the holdout included: no held-out part is left to evaluate it on
        raise DataValidationError(
            f"a retrained model ({extra.get('registered_name', 'this version')}) learned its holdout after the "
            "comparison: it is compared only with the champion it was retrained against (extra.retrain.gate); "
            "run `tastebud retrain run` for a fresh comparison"
        )
    ds = load_data(spec, settings)
    if spec.get("snapshot_id") and ds.snapshot_id != spec["snapshot_id"]:
        raise DataValidationError(
            f"rebuilt dataset {spec.get('name')!r} has snapshot {ds.snapshot_id}, the manifest records "
            f"{spec['snapshot_id']}: the source data changed"
        )
    sp = manifest["data"]["split"]
    split = make_split(ds, sp["method"], **sp["params"], seed=sp["seed"])
    if split.train.snapshot_id != manifest["data"]["snapshot_id"]:
        raise DataValidationError(
            f"rebuilt training part has snapshot {split.train.snapshot_id}, the manifest records "
            f"{manifest['data']['snapshot_id']}"
        )
    return split


# ---------------------------------------------------------------------------------------------------- metrics
def report_metrics(report: Report) -> dict[str, float | None]:
    """Flat metric dict of a report: ``<metric>_at_<k>``, coverage, novelty and, where present, RMSE/MAE."""
    out: dict[str, float | None] = {}
    for name, value in report.means.items():
        if name in ("novelty", "popularity"):
            continue
        out[f"{name}_at_{report.k}"] = _finite(value)
    out["coverage"] = _finite(report.coverage)
    out["novelty"] = _finite(report.novelty)
    out["popularity_ratio"] = _finite(report.popularity_ratio)
    if report.rmse is not None:
        out["rmse"] = _finite(report.rmse)
        out["mae"] = _finite(report.mae)
    return out


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(float(value)) else float(value)


def validation_sample(split: Split, max_users: int = VALIDATION_MAX_USERS) -> int | None:
    """The ``max_users`` of a training run's validation (:data:`VALIDATION_MAX_USERS`), or ``None`` when the
    validation part has no more users than that and is scored whole."""
    part = split.validation
    if part is None:
        return None
    n_users = int(np.count_nonzero(np.diff(part.user_item.indptr)))
    return max_users if n_users > max_users else None


def recorded_max_users(manifest: dict[str, Any]) -> int | None:
    """The validation user sample a manifest's metrics were measured on (``None``: every validation user)."""
    value = manifest.get("extra", {}).get("evaluation", {}).get("max_users")
    return None if value is None else int(value)


def _has_item_metadata(ds: Dataset) -> bool:
    meta = ds.item_meta
    genres = meta["genres"].list.len().fill_null(0).sum() if "genres" in meta.columns else 0
    titles = meta["title"].drop_nulls().len() if "title" in meta.columns else 0
    return bool(genres or titles)


#: Modules a training run imports after the data stage: scikit-learn's TF-IDF (content fallback) and MLflow's
#: client and SQLite store (tracking). Together 2 to 4 s of mostly single-threaded work at import.
PRELOAD_MODULES = ("sklearn.feature_extraction.text",)
PRELOAD_TRACKING_MODULES = ("mlflow.tracking", "mlflow.store.tracking.sqlalchemy_store")


def preload_modules(names: tuple[str, ...]) -> threading.Thread:
    """Import ``names`` in a background thread (started and returned; join it before it matters).

    Preparing and splitting a large dataset spend most of their time on one core in numpy calls that release
    the GIL, so the imports a run needs later overlap them on the other core instead of adding to the run
    (ML-25M size, 2 cores: data stage + imports 9.5 s against 11.0 s one after the other, medians of 5). A module that
    fails to import here is skipped: the later import where it is used raises as it would have.
    """

    def run() -> None:
        for module in names:
            try:
                importlib.import_module(module)
            except Exception:  # reported again by the import where the module is used
                logger.debug("preload skipped", extra={"module": module})

    thread = threading.Thread(target=run, name="tastebud-preload", daemon=True)
    thread.start()
    return thread


# ---------------------------------------------------------------------------------------------------- training
def fit_models(
    split: Split, model: str, params: dict[str, Any], seed: int
) -> tuple[Recommender, dict[str, Recommender], float]:
    """Fit the main model (its ``random_state`` defaulting to ``seed``) and the fallbacks on ``split.train``."""
    from tastebud.models import model_class

    params = dict(params)
    if "random_state" in model_class(model).config_class.model_fields:
        params.setdefault("random_state", seed)
    main = create(model, **params)
    t0 = time.perf_counter()
    main.fit(split.train)
    fit_seconds = time.perf_counter() - t0
    fallback: dict[str, Recommender] = {"popular": create("popular").fit(split.train)}
    if _has_item_metadata(split.train):
        fallback["content"] = create("content").fit(split.train)
    return main, fallback, fit_seconds


def tune_on_validation(
    split: Split, model: str, params: dict[str, Any], *, trials: int, seed: int, k: int, settings: Settings
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``params`` completed by ``trials`` Optuna trials on ``split`` (fit on train, NDCG@``k`` on validation).

    Returns:
        The parameters to fit (``params`` as given, the best trial's values for the rest of the model's search
        space) and a summary for the
        manifest (trials, metric, best value, the study's storage).

    Raises:
        ParameterError: the model has no search space, or every trial failed.
    """
    from tastebud.evaluation.tuning import SEARCH_SPACES
    from tastebud.evaluation.tuning import tune as run_tune

    full = SEARCH_SPACES.get(model)
    if full is None:
        raise ParameterError(f"--tune: no search space for model {model!r}; tunable: {sorted(SEARCH_SPACES)}")
    space = {key: param for key, param in full.items() if key not in params}
    # a fresh study per run: the same seed gives the same trials, never ones resumed from an earlier run
    storage = settings.runs_dir / "tune" / f"train-{model}-{split.train.snapshot_id[:12]}-{uuid.uuid4().hex[:8]}"
    result = run_tune(
        split,
        model,
        trials=trials,
        k=k,
        seed=seed,
        storage_dir=storage,
        progress=False,
        space=space,
        fixed_params=params,
    )
    summary = {
        "trials": result.n_trials,
        "metric": f"{result.metric}@{result.k}",
        "part": "validation",
        "best_value": result.best_value,
        "best_params": result.best_params,
        "storage": str(storage),
    }
    return {**params, **result.best_params}, summary


def train(
    dataset: Dataset | str,
    model: str = "als",
    params: dict[str, Any] | None = None,
    *,
    settings: Settings,
    seed: int | None = None,
    k: int = 10,
    prepare: dict[str, Any] | None = None,
    fmt: str | None = None,
    name: str | None = None,
    track: bool = True,
    register: bool = True,
    registry: ModelRegistry | None = None,
    bundle_dir: Path | None = None,
    tune: int = 0,
) -> TrainResult:
    """Train ``model`` on a dataset, evaluate it on the validation split, bundle, track and register it.

    Args:
        dataset: a :class:`Dataset`, or a dataset name or path (read, then prepared with ``prepare``, default
            :data:`DEFAULT_PREPARE`).
        model: ``--model`` name.
        params: hyperparameters.
        settings: home, seed, tracking and registry settings.
        seed: split and model seed (default ``settings.seed``).
        k: list length of the validation metrics.
        prepare: preparation parameters (:class:`PrepareConfig`) applied to a dataset given by name, or to a
            given :class:`Dataset`.
        fmt: input format of a dataset path.
        name: registered model name (default from the dataset, see :func:`default_model_name`).
        track: log an MLflow run (bundle, evaluation report and plot as artifacts).
        register: register the bundle as a new version and point ``challenger`` at it (needs ``track``).
        registry: the registry to use (default one over ``settings``).
        bundle_dir: where to write the bundle (default under ``settings.bundles_dir``).
        tune: Optuna trials over the model's search space before the final fit, each fitted on the split's
            train part and scored on its validation part (0: fit ``params`` as given). Parameters in ``params``
            stay fixed; the best trial's values are what the model is fitted and bundled with.

    Raises:
        ParameterError: unknown model or invalid parameters, ``register`` without ``track``, or ``tune`` < 0.
    """
    if register and not track:
        raise ParameterError("registering a model needs tracking (its bundle is stored as the run's artifact)")
    if tune < 0:
        raise ParameterError(f"tune must be >= 0 trials, got {tune}")
    seed = settings.seed if seed is None else seed
    params = dict(params or {})
    timings: dict[str, float] = {}
    preload: threading.Thread | None = None
    t0 = time.perf_counter()
    if isinstance(dataset, str):
        from tastebud.data.prepare import PrepareConfig
        from tastebud.data.prepare import prepare as run_prepare
        from tastebud.data.readers import read_dataset

        prep = PrepareConfig.from_params(**(DEFAULT_PREPARE if prepare is None else prepare)).model_dump()
        raw = read_dataset(dataset, format=fmt, settings=settings)
        # after the read (multi-threaded: imports beside it only slow it) and joined before the fit (every
        # core): the imports overlap preparing and splitting, mostly one core busy
        preload = preload_modules(PRELOAD_MODULES + (PRELOAD_TRACKING_MODULES if track else ()))
        ds = run_prepare(raw, PrepareConfig(**prep))
        del raw
        spec = data_spec(ds, source=dataset, fmt=fmt, prepare=prep)
    else:
        ds = dataset
        if prepare is not None:
            from tastebud.data.prepare import PrepareConfig
            from tastebud.data.prepare import prepare as run_prepare

            prep = PrepareConfig.from_params(**prepare).model_dump()
            spec = data_spec(ds, prepare=prep)
            ds = run_prepare(ds, PrepareConfig(**prep))
            spec["snapshot_id"] = ds.snapshot_id
        else:
            spec = data_spec(ds)
    sp_spec = split_spec(seed)
    split = make_split(ds, sp_spec["method"], **sp_spec["params"], seed=seed)
    if preload is not None:
        preload.join()
    timings["data_s"] = time.perf_counter() - t0

    tuning: dict[str, Any] | None = None
    if tune:
        t_tune = time.perf_counter()
        params, tuning = tune_on_validation(split, model, params, trials=tune, seed=seed, k=k, settings=settings)
        timings["tune_s"] = time.perf_counter() - t_tune
    if params.get("engine") == "spark":
        from tastebud.models import spark_als

        spark_als.configure(settings.spark)  # the master and resources of these settings, not the process's
    t_fits = time.perf_counter()
    main, fallback, fit_seconds = fit_models(split, model, params, seed)
    timings["fit_s"] = fit_seconds
    timings["fallback_fit_s"] = time.perf_counter() - t_fits - fit_seconds
    t1 = time.perf_counter()
    max_users = validation_sample(split, VALIDATION_MAX_USERS)
    report = evaluate(main, split, part="validation", k=k, seed=seed, max_users=max_users)
    metrics = report_metrics(report)
    # The popularity baseline on the same validation users: the promotion gate's floor for this version.
    baseline = (
        dict(metrics)
        if model == "popular"
        else report_metrics(
            evaluate(fallback["popular"], split, part="validation", k=k, seed=seed, max_users=max_users)
        )
    )
    timings["evaluate_s"] = time.perf_counter() - t1

    reg_name = name or default_model_name(ds.name)
    t2 = time.perf_counter()
    bundle_dir = bundle_dir or settings.bundles_dir / reg_name / f"{utc_now().replace(':', '')}-{uuid.uuid4().hex[:8]}"
    extra = {
        "split": sp_spec,
        "data_spec": spec,
        "evaluation": {
            "part": "validation",
            "k": k,
            "eval_snapshot_id": report.eval_snapshot_id,
            "split_snapshot_id": split.snapshot_id,
            "n_users": report.n_users,
            "baseline": {"model": "popular", **baseline},
            **({"max_users": max_users} if max_users is not None else {}),
        },
        "seed": seed,
        "training_seconds": fit_seconds,
        "registered_name": reg_name,
    }
    if tuning is not None:
        extra["tuning"] = tuning
    engine_info = getattr(main, "engine_info_", None)  # e.g. the Spark master, version and regParam used
    if engine_info:
        extra["engine"] = engine_info
    write_bundle(
        main,
        bundle_dir,
        train=split.train,
        metrics=metrics,
        fallback=fallback,
        extra=extra,
        signer=signer_from_settings(settings),
    )
    manifest = read_manifest(bundle_dir)
    timings["bundle_s"] = time.perf_counter() - t2
    result = TrainResult(main, fallback, split, report, metrics, bundle_dir, manifest, timings=timings)
    if track:
        t3 = time.perf_counter()
        result.run_id = _track(settings, result, model, reg_name)
        timings["track_s"] = time.perf_counter() - t3
    if register:
        t4 = time.perf_counter()
        registry = registry or ModelRegistry(settings)
        result.version = registry.register(bundle_dir, reg_name, run_id=result.run_id)
        registry.set_alias(reg_name, CHALLENGER, result.version.version)
        result.version = registry.get(reg_name, result.version.version)
        timings["register_s"] = time.perf_counter() - t4
    logger.info("trained", extra={"model": model, "metrics": metrics, "timings": timings})
    return result


def _track(settings: Settings, result: TrainResult, model: str, reg_name: str) -> str:
    """Log the run: parameters, metrics, provenance tags, bundle and evaluation report with its plot."""
    import tempfile

    from tastebud.evaluation.report import compare, write_comparison
    from tastebud.registry.tracking import flat_params, log_run

    manifest = result.manifest
    data = manifest["data"]
    params = {
        "model": model,
        **flat_params("model", manifest["model"]["params"]),
        "data.name": data["name"],
        "data.snapshot_id": data["snapshot_id"],
        "data.n_users": data["n_users"],
        "data.n_items": data["n_items"],
        "data.n_interactions": data["n_interactions"],
        "split.method": data["split"]["method"],
        "split.seed": data["split"]["seed"],
        **flat_params("split", data["split"]["params"]),
        "git_sha": manifest["git_sha"],
        "package_version": manifest["package_version"],
    }
    metrics = {**result.metrics, "training_time_s": result.timings["fit_s"]}
    tags = {**provenance_tags(manifest), "tastebud.registered_name": reg_name}
    with tempfile.TemporaryDirectory(prefix="tastebud-eval-") as tmp:
        write_comparison(compare([result.report], meta={"part": "validation"}), Path(tmp))
        run = log_run(
            settings,
            run_name=f"{model}-{data['name']}",
            params=params,
            metrics=metrics,
            tags=tags,
            artifacts={"bundle": result.bundle_dir, "evaluation": Path(tmp)},
        )
    return run.run_id


# ---------------------------------------------------------------------------------------------------- reproduce
@dataclass
class Reproduction:
    """Recorded against re-trained metrics of one version."""

    name: str
    version: int
    rows: list[tuple[str, float | None, float | None, float | None]]
    tolerance: float

    @property
    def max_difference(self) -> float:
        """Largest absolute difference over metrics present in both."""
        diffs = [abs(d) for _, _, _, d in self.rows if d is not None]
        return max(diffs, default=0.0)

    @property
    def passed(self) -> bool:
        """Whether every difference is within the tolerance."""
        return self.max_difference <= self.tolerance


def reproduce_manifest(manifest: dict[str, Any], settings: Settings) -> dict[str, float | None]:
    """Re-train a bundle's model from its manifest alone and return the validation metrics.

    A retrained model's metrics are those of its comparison fit on the retrain's holdout; they are reproduced by
    :func:`tastebud.pipeline.candidate.reproduce_retrain_metrics`.
    """
    if manifest["data"].get("split", {}).get("method") == RETRAIN_SPLIT:
        from tastebud.pipeline.candidate import reproduce_retrain_metrics

        return reproduce_retrain_metrics(manifest, settings)
    split = rebuild_split(manifest, settings)
    model_info = manifest["model"]
    seed = int(manifest["data"]["split"]["seed"])
    main, _, _ = fit_models(split, model_info["name"], model_info["params"], seed)
    k = int(manifest.get("extra", {}).get("evaluation", {}).get("k", 10))
    max_users = recorded_max_users(manifest)
    return report_metrics(evaluate(main, split, part="validation", k=k, seed=seed, max_users=max_users))


def reproduce(
    registry: ModelRegistry, name: str, ref: int | str, settings: Settings, *, tolerance: float = 1e-6
) -> Reproduction:
    """Re-train a registered version from its manifest and compare each metric with the recorded one."""
    mv = registry.resolve(name, ref)
    manifest = registry.manifest(mv)
    recorded = manifest.get("metrics", {})
    again = reproduce_manifest(manifest, settings)
    rows = []
    for key in sorted(set(recorded) | set(again)):
        a, b = recorded.get(key), again.get(key)
        rows.append((key, a, b, None if a is None or b is None else b - a))
    return Reproduction(name=name, version=mv.version, rows=rows, tolerance=tolerance)


__all__ = [
    "DEFAULT_MODEL_NAMES",
    "Reproduction",
    "TrainResult",
    "data_spec",
    "default_model_name",
    "fit_models",
    "load_data",
    "rebuild_split",
    "report_metrics",
    "reproduce",
    "reproduce_manifest",
    "train",
]
