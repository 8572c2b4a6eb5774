"""The offline evaluation protocol: score a fitted model on a split's held-out part and report every metric.

Relevance: every interaction of the held-out part is relevant; its grade is the rating when the part has
ratings (missing ratings count as 1), else 1. Candidates: every item of the vocabulary that the user did not
see in training (``recommend(..., exclude_seen=True)``). Users evaluated: those with at least one held-out
interaction whom the model knows.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tastebud.data.dataset import Dataset
from tastebud.data.split import Split
from tastebud.errors import ParameterError, SplitError
from tastebud.evaluation import metrics as m
from tastebud.models import create
from tastebud.models.base import Recommendations, Recommender

logger = logging.getLogger(__name__)

#: Per-user metrics beyond the ranking metrics.
BEYOND_ACCURACY: tuple[str, ...] = ("novelty", "popularity")
#: Rows of predicted ratings per ``predict`` call (bounds memory for big test sets).
_PREDICT_CHUNK = 100_000


@dataclass
class Report:
    """The outcome of evaluating one model on one split.

    Attributes:
        model: the model's ``--model`` name.
        params: its hyperparameters.
        k: list length.
        part: the evaluated part (``test`` or ``validation``).
        user_ids: the evaluated users, aligned with every array of ``per_user``.
        per_user: metric name -> per-user values (``nan`` where undefined).
        means: metric name -> mean over users with a value.
        ci: metric name -> bootstrap 95% confidence interval of the mean (low, high).
        coverage: fraction of the catalog recommended to anyone.
        novelty: mean self-information of recommended items (bits).
        popularity_mean: mean training popularity (distinct users) of recommended items.
        popularity_ratio: ``popularity_mean`` over the catalog's mean popularity.
        rmse: rating error on held-out pairs, when the model predicts ratings and the part has them.
        mae: mean absolute rating error, likewise.
        n_rating_pairs: pairs behind ``rmse`` and ``mae``.
        graded: whether NDCG used rating grades.
        fit_seconds: time spent fitting (``None`` when the model came fitted).
        eval_seconds: wall time of the whole evaluation.
        score_seconds: part of ``eval_seconds`` spent inside the model's ``recommend`` and ``predict``.
        n_users: users evaluated.
        n_users_skipped: users with held-out items the model does not know.
        snapshot_id: snapshot id of the training data.
        eval_snapshot_id: snapshot id of the evaluated part.
        split_meta: how the split was made.
    """

    model: str
    params: dict[str, Any]
    k: int
    part: str
    user_ids: list[str]
    per_user: dict[str, np.ndarray]
    means: dict[str, float]
    ci: dict[str, tuple[float, float]]
    coverage: float
    novelty: float
    popularity_mean: float
    popularity_ratio: float
    rmse: float | None = None
    mae: float | None = None
    n_rating_pairs: int = 0
    graded: bool = False
    fit_seconds: float | None = None
    eval_seconds: float = 0.0
    score_seconds: float = 0.0
    n_users: int = 0
    n_users_skipped: int = 0
    snapshot_id: str = ""
    eval_snapshot_id: str = ""
    split_meta: dict[str, Any] = field(default_factory=dict)

    def metric(self, name: str) -> float:
        """Mean of one metric (``nan`` when it was not computed)."""
        return self.means.get(name, float("nan"))

    def to_dict(self, *, per_user: bool = False) -> dict[str, Any]:
        """A JSON-able dict (``nan`` becomes ``None``); per-user values only when ``per_user`` is true."""
        out: dict[str, Any] = {
            "model": self.model,
            "params": self.params,
            "k": self.k,
            "part": self.part,
            "means": self.means,
            "ci": {name: list(bounds) for name, bounds in self.ci.items()},
            "coverage": self.coverage,
            "novelty": self.novelty,
            "popularity_mean": self.popularity_mean,
            "popularity_ratio": self.popularity_ratio,
            "rmse": self.rmse,
            "mae": self.mae,
            "n_rating_pairs": self.n_rating_pairs,
            "graded": self.graded,
            "fit_seconds": self.fit_seconds,
            "eval_seconds": self.eval_seconds,
            "score_seconds": self.score_seconds,
            "n_users": self.n_users,
            "n_users_skipped": self.n_users_skipped,
            "snapshot_id": self.snapshot_id,
            "eval_snapshot_id": self.eval_snapshot_id,
            "split_meta": self.split_meta,
        }
        if per_user:
            out["user_ids"] = list(self.user_ids)
            out["per_user"] = {name: vals.tolist() for name, vals in self.per_user.items()}
        return json_safe(out)


def json_safe(obj: Any) -> Any:
    """Replace non-finite floats by ``None`` and numpy scalars by Python ones, recursively."""
    if isinstance(obj, dict):
        return {str(key): json_safe(val) for key, val in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(val) for val in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def bootstrap_ci(values: np.ndarray, n_boot: int = 1000, seed: int = 0, *, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of ``values`` (``nan`` entries dropped).

    Resamples are drawn as one index matrix per chunk, so memory stays bounded for many users.

    Returns:
        (low, high); ``(nan, nan)`` when there are no values.
    """
    if n_boot < 1:
        raise ParameterError(f"n_boot must be at least 1, got {n_boot}")
    if not 0 < level < 1:
        raise ParameterError(f"level must be in (0, 1), got {level}")
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[~np.isnan(v)]
    if v.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    chunk = max(1, 4_000_000 // v.size)
    means = np.concatenate(
        [
            v[rng.integers(0, v.size, size=(min(chunk, n_boot - start), v.size))].mean(axis=1)
            for start in range(0, n_boot, chunk)
        ]
    )
    alpha = (1 - level) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return (float(low), float(high))


def bootstrap_cis(
    values: dict[str, np.ndarray], n_boot: int = 1000, seed: int = 0, *, level: float = 0.95
) -> dict[str, tuple[float, float]]:
    """:func:`bootstrap_ci` of every array in ``values``, each the same as its own call gives.

    Arrays with the same number of values (after dropping ``nan``) are resampled with the same index draws, since
    their own calls would draw the same ones from the same seed; drawing them once per chunk instead of once per
    metric is most of the cost saved.
    """
    if n_boot < 1:
        raise ParameterError(f"n_boot must be at least 1, got {n_boot}")
    if not 0 < level < 1:
        raise ParameterError(f"level must be in (0, 1), got {level}")
    kept = {}
    for name, vals in values.items():
        v = np.asarray(vals, dtype=np.float64).ravel()
        kept[name] = v[~np.isnan(v)]
    out: dict[str, tuple[float, float]] = {}
    alpha = (1 - level) / 2
    for size in dict.fromkeys(v.size for v in kept.values()):
        group = [name for name, v in kept.items() if v.size == size]
        if size == 0:
            out.update({name: (float("nan"), float("nan")) for name in group})
            continue
        rng = np.random.default_rng(seed)
        chunk = max(1, 4_000_000 // size)
        means: dict[str, list[np.ndarray]] = {name: [] for name in group}
        for start in range(0, n_boot, chunk):
            idx = rng.integers(0, size, size=(min(chunk, n_boot - start), size))
            for name in group:
                means[name].append(kept[name][idx].mean(axis=1))
        for name in group:
            low, high = np.quantile(np.concatenate(means[name]), [alpha, 1 - alpha])
            out[name] = (float(low), float(high))
    return {name: out[name] for name in values}


def relevance_matrix(part: Dataset) -> tuple[sp.csr_matrix, bool]:
    """Users x items CSR of relevance grades of a held-out part, and whether the grades are ratings.

    A pair repeated in the part counts once, with its highest grade.
    """
    graded = part.has_ratings
    grade = pl.col("rating").fill_null(1.0) if graded else pl.lit(1.0)
    pairs = (
        part.interactions.lazy()
        .select("user_idx", "item_idx", grade.cast(pl.Float64).alias("grade"))
        .group_by("user_idx", "item_idx")
        .agg(pl.col("grade").max())
        .collect()
    )
    mat = sp.csr_matrix(
        (
            pairs["grade"].to_numpy(),
            (pairs["user_idx"].to_numpy(), pairs["item_idx"].to_numpy()),
        ),
        shape=part.shape,
    )
    mat.sum_duplicates()
    return mat, graded


def _pick_part(split: Split, part: str) -> Dataset:
    if part == "test":
        return split.test
    if part == "validation":
        if split.validation is None:
            raise SplitError("the split has no validation part: make it with a validation fraction to evaluate on it")
        return split.validation
    raise ParameterError(f"part must be 'test' or 'validation', got {part!r}")


def _known_mask(ids: np.ndarray, model_ids: Iterable[str]) -> np.ndarray:
    known = pl.Series(list(model_ids), dtype=pl.String)
    return pl.Series(ids.astype(str), dtype=pl.String).is_in(known.implode()).to_numpy()


def _recs_to_indices(recs: Recommendations, item_lookup: dict[str, int], n_rows: int, k: int) -> np.ndarray:
    """Padded (rows, k) array of vocabulary indices from a batch of recommendations (unknown ids -> -1)."""
    if len(recs.item_ids) != n_rows:
        raise ParameterError(f"the model returned {len(recs.item_ids)} rows for {n_rows} users")
    lengths = np.fromiter((min(len(row), k) for row in recs.item_ids), dtype=np.int64, count=n_rows)
    flat = list(chain.from_iterable(row[:k] for row in recs.item_ids))
    idx = np.fromiter((item_lookup.get(str(x), -1) for x in flat), dtype=np.int64, count=len(flat))
    out = np.full((n_rows, k), -1, dtype=np.int64)
    rows = np.repeat(np.arange(n_rows), lengths)
    cols = np.arange(len(flat)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    out[rows, cols] = idx
    return out


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        disable=not enabled,
        transient=True,
    )


def _recommend_all(
    model: Recommender,
    user_ids: np.ndarray,
    item_lookup: dict[str, int],
    k: int,
    batch_size: int,
    progress: bool,
) -> tuple[np.ndarray, float]:
    """Padded vocabulary indices of every user's top ``k``, in batches, and the seconds spent in the model."""
    score_seconds = 0.0
    rows = [np.empty((0, k), dtype=np.int64)]
    with _progress(progress) as bar:
        task = bar.add_task(f"evaluating {model.name}", total=max(1, math.ceil(len(user_ids) / batch_size)))
        for start in range(0, len(user_ids), batch_size):
            batch = [str(u) for u in user_ids[start : start + batch_size]]
            t0 = time.perf_counter()
            recs = model.recommend(batch, k, exclude_seen=True)
            score_seconds += time.perf_counter() - t0
            rows.append(_recs_to_indices(recs, item_lookup, len(batch), k))
            bar.advance(task)
    return np.vstack(rows), score_seconds


def _rating_errors(model: Recommender, part: Dataset) -> tuple[float | None, float | None, int, float]:
    """RMSE and MAE of ``model.predict`` on the part's rated pairs the model knows; (None, None) if n/a."""
    assert model.users_ is not None and model.items_ is not None
    rated = part.interactions.filter(pl.col("rating").is_not_null())
    users = part.users.ids[rated["user_idx"].to_numpy()]
    items = part.items.ids[rated["item_idx"].to_numpy()]
    keep = _known_mask(users, model.users_.ids) & _known_mask(items, model.items_.ids)
    users, items = users[keep].astype(str), items[keep].astype(str)
    truth = rated["rating"].to_numpy()[keep]
    if truth.size == 0:
        return None, None, 0, 0.0
    predict = model.predict  # type: ignore[attr-defined]  # checked by the caller: rating predictors only
    t0 = time.perf_counter()
    preds = []
    for start in range(0, truth.size, _PREDICT_CHUNK):
        stop = start + _PREDICT_CHUNK
        pred = np.asarray(predict(list(users[start:stop]), list(items[start:stop])), dtype=np.float64)
        if pred.shape != (min(stop, truth.size) - start,):
            raise ParameterError(
                f"{model.name}.predict returned shape {pred.shape} for {min(stop, truth.size) - start} "
                "(user, item) pairs; expected one rating per pair"
            )
        preds.append(pred)
    seconds = time.perf_counter() - t0
    pred_all = np.concatenate(preds)
    return m.rmse(truth, pred_all), m.mae(truth, pred_all), int(truth.size), seconds


def evaluate(
    model: Recommender,
    split: Split,
    *,
    k: int = 10,
    part: str = "test",
    metrics: Sequence[str] | None = None,
    rating_metrics: bool = True,
    batch_size: int = 1024,
    progress: bool = False,
    n_boot: int = 1000,
    seed: int = 0,
    graded: bool = False,
    max_users: int | None = None,
) -> Report:
    """Evaluate a model already fitted on ``split.train`` on one held-out part; fits nothing.

    Args:
        model: a fitted recommender.
        split: the split it was fitted on.
        k: list length.
        part: ``"test"`` or ``"validation"``.
        metrics: ranking metrics to compute (names from :data:`metrics.RANKING_METRICS`; all when ``None``).
            Novelty and popularity are always computed.
        rating_metrics: compute RMSE/MAE when the model has ``predict`` and the part has ratings.
        batch_size: users per ``recommend`` call.
        progress: show a progress bar over user batches.
        n_boot: bootstrap resamples for the confidence intervals.
        seed: seed of the bootstrap.
        graded: use ratings as NDCG gains where the part has them. The default is binary relevance (every
            held-out interaction counts 1), the protocol of the implicit-feedback literature and of our targets.
        max_users: evaluate a uniform random sample of this many of the part's users (drawn with ``seed``, so
            the same split, seed and size give the same users) instead of all of them (``None``, or a part
            with fewer users: all). Means are then estimates, and the bootstrap intervals, computed over the
            sampled users, are as wide as the sample size makes them; ``Report.n_users`` is the sample size.

    Returns:
        A :class:`Report` with per-user values, means, 95% intervals and beyond-accuracy metrics.

    Raises:
        NotFittedError: the model is not fitted.
        SplitError: ``part="validation"`` on a split without one.
        ParameterError: a bad ``k``, ``batch_size`` or metric name.
    """
    t_start = time.perf_counter()
    model.check_fitted()
    assert model.users_ is not None and model.items_ is not None
    k = m._check_k(k)
    if batch_size < 1:
        raise ParameterError(f"batch_size must be positive, got {batch_size}")
    names = list(m.RANKING_METRICS if metrics is None else metrics)
    held_out = _pick_part(split, part)
    train = split.train
    if held_out.items != train.items or held_out.users != train.users:
        raise SplitError("train and evaluated part do not share one vocabulary: build both from one dataset")

    relevant, has_grades = relevance_matrix(held_out)
    graded = graded and has_grades
    candidates = np.flatnonzero(np.diff(relevant.indptr) > 0)
    if max_users is not None:
        if max_users < 1:
            raise ParameterError(f"max_users must be positive, got {max_users}")
        if len(candidates) > max_users:
            rng = np.random.default_rng([seed, 7])
            candidates = np.sort(rng.choice(candidates, size=max_users, replace=False))
    known = _known_mask(train.users.ids[candidates], model.users_.ids)
    user_idx = candidates[known]
    user_ids = train.users.ids[user_idx]
    if not known.all():
        logger.warning(
            "users unknown to the model are skipped",
            extra={"model": model.name, "skipped": int((~known).sum()), "part": part},
        )

    recs, score_seconds = _recommend_all(model, user_ids, train.items.lookup, k, batch_size, progress)
    per_user = m.ranking_metrics(recs, relevant[user_idx], k, metrics=names, graded=graded)

    popularity = m.item_popularity(train.user_item, train.n_items)
    n_train_users = max(int(np.count_nonzero(np.diff(train.user_item.indptr))), 1)
    per_user["novelty"] = m.novelty(recs, popularity, n_train_users)
    per_user["popularity"] = m.popularity_bias(recs, popularity)
    means = {name: m.mean(vals) for name, vals in per_user.items()}
    ci = bootstrap_cis(per_user, n_boot=n_boot, seed=seed)
    catalog_pop = m.catalog_mean_popularity(popularity)

    rmse = mae = None
    n_pairs = 0
    if rating_metrics and callable(getattr(model, "predict", None)) and held_out.has_ratings:
        rmse, mae, n_pairs, predict_seconds = _rating_errors(model, held_out)
        score_seconds += predict_seconds

    return Report(
        model=model.name,
        params=model.params(),
        k=k,
        part=part,
        user_ids=[str(u) for u in user_ids.tolist()],
        per_user=per_user,
        means=means,
        ci=ci,
        coverage=m.catalog_coverage(recs, train.n_items),
        novelty=means["novelty"],
        popularity_mean=means["popularity"],
        popularity_ratio=means["popularity"] / catalog_pop if catalog_pop > 0 else float("nan"),
        rmse=rmse,
        mae=mae,
        n_rating_pairs=n_pairs,
        graded=graded,
        n_users=len(user_ids),
        n_users_skipped=int((~known).sum()),
        snapshot_id=train.snapshot_id,
        eval_snapshot_id=held_out.snapshot_id,
        split_meta=dict(split.meta),
        score_seconds=score_seconds,
        eval_seconds=time.perf_counter() - t_start,
    )


def fit_and_evaluate(
    name_or_model: str | Recommender,
    split: Split,
    params: dict[str, Any] | None = None,
    k: int = 10,
    **evaluate_kwargs: Any,
) -> Report:
    """Build (by name) or take a model, fit it on ``split.train`` (timed), then :func:`evaluate` it.

    Args:
        name_or_model: a ``--model`` name or an unfitted recommender.
        split: the split.
        params: hyperparameters when a name is given.
        k: list length.
        **evaluate_kwargs: passed to :func:`evaluate` (``part``, ``metrics``, ``progress`` ...).

    Raises:
        ParameterError: ``params`` given together with a model instance, or invalid for the model.
    """
    if isinstance(name_or_model, str):
        model = create(name_or_model, **(params or {}))
    else:
        if params:
            raise ParameterError("params apply only when the model is given by name; configure the instance")
        model = name_or_model
    t0 = time.perf_counter()
    model.fit(split.train)
    fit_seconds = time.perf_counter() - t0
    logger.info("fitted", extra={"model": model.name, "fit_seconds": round(fit_seconds, 3)})
    report = evaluate(model, split, k=k, **evaluate_kwargs)
    report.fit_seconds = fit_seconds
    return report
