"""Hyperparameter search with Optuna (seeded TPE), scored on the validation part so test stays untouched.

Each model has a declared search space in :data:`SEARCH_SPACES`. A trial builds the model with the sampled
parameters, fits it on ``split.train`` and evaluates it on ``split.validation``. The study is stored in
``storage_dir/study.db`` (SQLite through Optuna's RDB storage) and the best parameters in ``best.json``.
Running again with the same storage, model, metric, ``k`` and training data resumes the same study.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

import tastebud.data.split as split_module
from tastebud.data.dataset import Dataset
from tastebud.data.split import Split
from tastebud.errors import ParameterError, SplitError, TastebudError
from tastebud.evaluation.metrics import RANKING_METRICS
from tastebud.evaluation.protocol import fit_and_evaluate, json_safe
from tastebud.evaluation.report import write_text_atomic
from tastebud.models import model_class

if TYPE_CHECKING:
    import optuna

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class IntParam:
    """An integer parameter in ``[low, high]``, sampled on a log scale when ``log``."""

    low: int
    high: int
    log: bool = False


@dataclass(frozen=True)
class FloatParam:
    """A float parameter in ``[low, high]``, sampled on a log scale when ``log``."""

    low: float
    high: float
    log: bool = False


@dataclass(frozen=True)
class CategoricalParam:
    """A parameter taking one of ``choices``."""

    choices: tuple[Any, ...]


Param = IntParam | FloatParam | CategoricalParam

#: Model name -> parameter name -> range. An empty space means the model has nothing to tune.
SEARCH_SPACES: dict[str, dict[str, Param]] = {
    "als": {
        "factors": IntParam(16, 256, log=True),
        # up to 1000: play counts want about 100 (alpha 7, log confidence; bench/RESULTS.md, "Defaults per kind of
        # feedback"), ratings 50 (ALSConfig's default); a cap at 10 kept tuning below both
        "regularization": FloatParam(1e-3, 1000.0, log=True),
        "alpha": FloatParam(0.1, 100.0, log=True),
        "iterations": IntParam(5, 30),
        "confidence": CategoricalParam(("linear", "log")),
    },
    "bpr": {
        "factors": IntParam(16, 256, log=True),
        "learning_rate": FloatParam(1e-3, 0.1, log=True),
        "regularization": FloatParam(1e-4, 1.0, log=True),
        "iterations": IntParam(20, 300, log=True),
    },
    "ease": {"l2": FloatParam(10.0, 2000.0, log=True)},
    "seqtrans": {
        "recency_tau": FloatParam(1.0, 50.0, log=True),
        "transition_weight": FloatParam(0.1, 10.0, log=True),
        "window": IntParam(5, 100, log=True),
        "n_last": IntParam(5, 50, log=True),
        "l2": FloatParam(50.0, 2000.0, log=True),
    },
    "rp3beta": {
        "alpha": FloatParam(0.1, 2.0),
        "beta": FloatParam(0.0, 1.0),
        "n_neighbors": IntParam(10, 1000, log=True),
    },
    "slim": {
        "alpha": FloatParam(1e-3, 1.0, log=True),
        "l1_ratio": FloatParam(1e-3, 0.5, log=True),
        "n_neighbors": IntParam(10, 500, log=True),
    },
    "itemknn": {
        "n_neighbors": IntParam(10, 500),
        "weighting": CategoricalParam(("cosine", "tfidf", "bm25")),
    },
    "userknn": {"n_neighbors": IntParam(10, 500)},
    "svd": {
        "factors": IntParam(8, 256, log=True),
        "epochs": IntParam(5, 50),
        "reg": FloatParam(1e-3, 1.0, log=True),
    },
    "content": {},
    "popular": {},
}

#: Config fields that seed a model's randomness; set from ``tune``'s seed so trials are reproducible.
_SEED_FIELDS = ("random_state", "seed")


@dataclass
class TuneResult:
    """The outcome of a search.

    Attributes:
        model: the tuned model's name.
        metric: the maximised metric (mean over validation users) and ``k``.
        best_params: every parameter passed to ``create`` in the best trial (fixed ones included).
        best_value: the best trial's metric.
        best_trial: the best trial's number.
        n_trials: finished trials in the study (complete or failed), across resumed runs.
        study_name: name of the study in the storage.
        storage: the SQLite URL of the study.
        best_path: where ``best.json`` was written.
        trials: per trial: number, state, value, params, fit seconds, error (if it failed).
    """

    model: str
    metric: str
    k: int
    best_params: dict[str, Any]
    best_value: float
    best_trial: int
    n_trials: int
    study_name: str
    storage: str
    best_path: Path
    trials: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able content."""
        out = asdict(self)
        out["best_path"] = str(self.best_path)
        return json_safe(out)


def _check_space(model: str, space: Mapping[str, Param], fixed: Mapping[str, Any]) -> None:
    """Refuse a space whose names or bounds the model's config rejects, before any trial runs."""
    cls = model_class(model)
    for name, param in space.items():
        if name not in cls.config_class.model_fields:
            allowed = ", ".join(sorted(cls.config_class.model_fields))
            raise ParameterError(f"search space of {model!r}: {name!r} is not a parameter (allowed: {allowed})")
        if name in fixed:
            raise ParameterError(f"{name!r} is both fixed and searched for {model!r}; pick one")
        values = param.choices if isinstance(param, CategoricalParam) else (param.low, param.high)
        for value in values:
            try:
                cls.config_class(**{**fixed, name: value})
            except ValidationError as err:
                raise ParameterError(f"search space of {model!r}: {name}={value!r} is refused: {err}") from err


def _suggest(trial: optuna.Trial, space: Mapping[str, Param]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for name, p in space.items():
        if isinstance(p, IntParam):
            params[name] = trial.suggest_int(name, p.low, p.high, log=p.log)
        elif isinstance(p, FloatParam):
            params[name] = trial.suggest_float(name, p.low, p.high, log=p.log)
        else:
            params[name] = trial.suggest_categorical(name, list(p.choices))
    return params


def _tuning_split(data: Dataset | Split, seed: int, validation_fraction: float) -> Split:
    if isinstance(data, Split):
        if data.validation is None:
            raise SplitError(
                "tuning needs a validation part; make the split with validation_fraction > 0 "
                "(the test part is never used for tuning)"
            )
        return data
    return split_module.make_split(  # type: ignore[attr-defined, no-any-return]
        data, "random", seed=seed, validation_fraction=validation_fraction
    )


def _trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    return [
        {
            "number": t.number,
            "state": t.state.name,
            "value": t.value,
            "params": t.params,
            "fit_seconds": t.user_attrs.get("fit_seconds"),
            "error": t.user_attrs.get("error"),
        }
        for t in study.get_trials(deepcopy=False)
    ]


def tune(
    dataset_or_split: Dataset | Split,
    model: str,
    *,
    trials: int = 20,
    k: int = 10,
    metric: str = "ndcg",
    seed: int = 42,
    storage_dir: Path,
    progress: bool = True,
    timeout: float | None = None,
    validation_fraction: float = 0.1,
    fixed_params: Mapping[str, Any] | None = None,
    console: Console | None = None,
    space: Mapping[str, Param] | None = None,
) -> TuneResult:
    """Search ``model``'s hyperparameters, maximising ``metric``@``k`` on the validation part.

    Args:
        dataset_or_split: a dataset (a seeded ``random`` split with a validation part is made from it) or a
            split that has a validation part.
        model: a model name with an entry in :data:`SEARCH_SPACES`.
        trials: trials to run in this call (1 when the model has nothing to tune).
        k: list length.
        metric: a ranking metric name (``ndcg``, ``recall``, ``map`` ...).
        seed: seeds the split, the TPE sampler and the model's own randomness.
        storage_dir: where ``study.db`` and ``best.json`` go.
        progress: show a progress bar and one line per trial.
        timeout: stop starting new trials after this many seconds.
        validation_fraction: share of interactions held out for validation when a dataset is given.
        fixed_params: parameters passed to every trial unchanged.
        console: where progress goes (a new stderr console by default).
        space: the parameters to search (default the model's :data:`SEARCH_SPACES` entry; a subset of it
            leaves the other parameters to ``fixed_params`` or the model's defaults).

    Returns:
        The best parameters and value, with every trial.

    Raises:
        ParameterError: an unknown model, metric or search-space problem, or every trial failed.
        SplitError: a split without a validation part.
    """
    import optuna

    if model not in SEARCH_SPACES:
        raise ParameterError(f"no search space for model {model!r}; tunable models: {sorted(SEARCH_SPACES)}")
    if metric not in RANKING_METRICS:
        raise ParameterError(f"unknown metric {metric!r}; choose from {list(RANKING_METRICS)}")
    if trials < 1:
        raise ParameterError(f"trials must be at least 1, got {trials}")
    space = SEARCH_SPACES[model] if space is None else space
    fixed = dict(fixed_params or {})
    seed_field = next((f for f in _SEED_FIELDS if f in model_class(model).config_class.model_fields), None)
    if seed_field and seed_field not in fixed and seed_field not in space:
        fixed[seed_field] = seed
    _check_space(model, space, fixed)
    if not space:
        trials = 1

    split = _tuning_split(dataset_or_split, seed, validation_fraction)
    storage_dir = Path(storage_dir)
    storage_dir.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{(storage_dir / 'study.db').resolve()}"
    study_name = f"{model}-{metric}@{k}-{split.train.snapshot_id[:12]}"

    def objective(trial: optuna.Trial) -> float:
        params = {**fixed, **_suggest(trial, space)}
        try:
            report = fit_and_evaluate(
                model,
                split,
                params,
                k=k,
                part="validation",
                metrics=[metric],
                rating_metrics=False,
                n_boot=200,  # intervals do not pick trials; keep them cheap
            )
        except TastebudError as err:
            trial.set_user_attr("error", str(err))
            raise
        trial.set_user_attr("fit_seconds", report.fit_seconds)
        trial.set_user_attr("eval_seconds", report.eval_seconds)
        value = report.metric(metric)
        if math.isnan(value):
            raise ParameterError(f"no validation user could be evaluated for {metric}@{k}")
        return value

    previous_verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own progress replaces optuna's per-trial logs
    storage = optuna.storages.RDBStorage(url)
    started = time.perf_counter()
    try:
        study = optuna.create_study(
            study_name=study_name,
            storage=storage,
            direction="maximize",
            sampler=optuna.samplers.TPESampler(seed=seed),
            load_if_exists=True,
        )
        _optimize(study, objective, trials, timeout, metric, k, progress, console, model)
        rows = _trial_rows(study)
        complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
        if not complete:
            errors = [r["error"] for r in rows if r["error"]]
            raise ParameterError(f"every trial of {model!r} failed" + (f"; first error: {errors[0]}" if errors else ""))
        best = study.best_trial
        assert best.value is not None  # a complete trial has a value
    finally:
        optuna.logging.set_verbosity(previous_verbosity)
        storage.remove_session()
        storage.engine.dispose()  # release the SQLite file (tests and Windows care)

    result = TuneResult(
        model=model,
        metric=metric,
        k=k,
        best_params={**fixed, **best.params},
        best_value=float(best.value),
        best_trial=best.number,
        n_trials=sum(r["state"] in ("COMPLETE", "FAIL") for r in rows),
        study_name=study_name,
        storage=url,
        best_path=storage_dir / "best.json",
        trials=rows,
    )
    payload = {
        **result.to_dict(),
        "seed": seed,
        "snapshot_id": split.train.snapshot_id,
        "split_meta": json_safe(split.meta),
        "seconds": time.perf_counter() - started,
    }
    write_text_atomic(result.best_path, json.dumps(payload, indent=2, sort_keys=True, default=str))
    logger.info("tuned", extra={"model": model, "metric": metric, "best_value": result.best_value})
    return result


def _optimize(
    study: optuna.Study,
    objective: Any,
    trials: int,
    timeout: float | None,
    metric: str,
    k: int,
    progress: bool,
    console: Console | None,
    model: str,
) -> None:
    """Run the trials, with a rich progress bar and a line per finished trial."""
    bar = Progress(
        TextColumn("[bold]tuning {task.fields[model]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("best {task.fields[best]}"),
        TimeElapsedColumn(),
        console=console,
        disable=not progress,
    )
    label = f"{metric}@{k}"

    def report_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        try:
            best = f"{study.best_value:.4f}"
        except ValueError:  # no complete trial yet
            best = "-"
        shown = f"{trial.value:.4f}" if trial.value is not None else trial.state.name.lower()
        params = ", ".join(f"{n}={v:.4g}" if isinstance(v, float) else f"{n}={v}" for n, v in trial.params.items())
        line = f"trial {trial.number:>3}  {label}={shown}  best={best}  {params}"
        if progress:
            bar.console.print(line, markup=False, highlight=False)
        logger.info("trial", extra={"trial": trial.number, "value": trial.value, "params": trial.params})
        bar.update(task, advance=1, best=best)

    with bar:
        task = bar.add_task("tune", total=trials, model=model, best="-")
        study.optimize(
            objective,
            n_trials=trials,
            timeout=timeout,
            catch=(TastebudError,),
            callbacks=[report_trial],
            gc_after_trial=False,
        )
