"""Preparation steps: deduplication, k-core filtering, explicit-to-implicit conversion, confidences.

Every step returns a new :class:`~tastebud.data.dataset.Dataset` (the input is never mutated) with the same
vocabulary, and appends a record of what it did to ``dataset.meta["preparation"]``, so a prepared dataset
carries its own recipe. :func:`prepare` runs the steps a :class:`PrepareConfig` asks for, in their canonical
order.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Literal, get_args

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tastebud.data.dataset import Dataset
from tastebud.errors import DataValidationError, ParameterError

logger = logging.getLogger(__name__)

DedupeMode = Literal["latest", "first", "sum", "max", "mean"]
ConfidenceMethod = Literal["linear", "log"]

_PAIR = ["user_idx", "item_idx"]


def _record(ds: Dataset, interactions: pl.DataFrame, step: dict[str, Any]) -> Dataset:
    """A dataset with ``interactions`` and ``step`` appended to a copy of the preparation record."""
    history = [*ds.meta.get("preparation", []), step]
    return ds.with_interactions(interactions, preparation=history)


def _sorted_by_time(inter: pl.DataFrame) -> pl.DataFrame:
    """Rows sorted by (user, item, timestamp, original row); missing timestamps count as the earliest."""
    return (
        inter.with_row_index("_row")
        .with_columns(pl.col("timestamp").fill_null(np.iinfo(np.int64).min).alias("_ts"))
        .sort([*_PAIR, "_ts", "_row"])
    )


def _sorted_if_unique(inter: pl.DataFrame) -> pl.DataFrame | None:
    """The rows in (user, item) order when no (user, item) pair repeats, else ``None``.

    One sort on a single 64-bit pair key: with unique pairs it is the order :func:`_sorted_by_time` gives (its
    later keys only break ties within a pair), at a fraction of the cost of sorting on four columns.
    """
    if inter.height < 2:
        return None
    users = inter["user_idx"].to_numpy()
    items = inter["item_idx"].to_numpy()
    if users.min() < 0 or items.min() < 0:
        return None
    key = users.astype(np.int64) * (int(items.max()) + 1) + items
    order = np.argsort(key)
    ranked = key[order]
    if (ranked[1:] == ranked[:-1]).any():
        return None
    return inter[order]


def dedupe(ds: Dataset, keep: DedupeMode = "latest") -> Dataset:
    """Merge duplicate (user, item) pairs into one interaction each.

    Args:
        ds: the dataset.
        keep: ``"latest"`` keeps the row with the latest timestamp (ties: the last row), ``"first"`` the
            earliest (ties: the first row); without timestamps these are the last and first rows. ``"sum"``,
            ``"max"`` and ``"mean"`` aggregate ``value`` (and, for ``"max"``/``"mean"``, ``rating``; ``"sum"``
            keeps the latest rating, since summed ratings mean nothing). Aggregates keep the latest timestamp.

    Returns:
        A dataset with unique pairs, rows ordered by (user, item); the record says how many rows were merged.

    Raises:
        ParameterError: ``keep`` is not one of the modes above.
    """
    if keep not in get_args(DedupeMode):
        raise ParameterError(f"dedupe: unknown keep mode {keep!r}; expected one of {list(get_args(DedupeMode))}")
    inter = ds.interactions
    unique = _sorted_if_unique(inter)
    if unique is not None:
        # no pair repeats: every mode keeps each row as it is, in (user, item) order
        logger.info("dedupe", extra={"dataset": ds.name, "keep": keep, "rows_merged": 0})
        n = inter.height
        step = {"step": "dedupe", "keep": keep, "rows_before": n, "rows_after": n, "rows_merged": 0}
        deduped = _record(ds, unique, step)
        if "snapshot_id" in ds.__dict__:
            # the same rows in another order, over the same vocabularies and metadata: the order-independent
            # content hash is the same, so it is not computed again over every row
            deduped.__dict__["snapshot_id"] = ds.__dict__["snapshot_id"]
        return deduped
    ordered = _sorted_by_time(inter)
    # Rows are sorted by pair, so groups are runs: their bounds come from where the pair changes, and
    # aggregates are segment reductions (no hashing, linear time).
    users = ordered["user_idx"].to_numpy()
    items = ordered["item_idx"].to_numpy()
    starts = np.flatnonzero(np.r_[len(users) > 0, (users[1:] != users[:-1]) | (items[1:] != items[:-1])])
    ends = np.r_[starts[1:], len(users)][: len(starts)] - 1
    if keep in ("latest", "first"):
        out = ordered[ends if keep == "latest" else starts]
    else:
        value = ordered["value"].to_numpy().astype(np.float64)
        rating = ordered["rating"].to_numpy().astype(np.float64)  # missing ratings are NaN here
        if keep == "sum":
            new_value, new_rating = np.add.reduceat(value, starts), rating[ends]
        elif keep == "max":
            new_value, new_rating = np.maximum.reduceat(value, starts), np.fmax.reduceat(rating, starts)
        else:
            rated = ~np.isnan(rating)
            with np.errstate(invalid="ignore", divide="ignore"):
                new_value = np.add.reduceat(value, starts) / np.diff(np.r_[starts, len(users)])
                new_rating = np.add.reduceat(np.where(rated, rating, 0.0), starts) / np.add.reduceat(rated, starts)
        # The last row of a group holds its latest timestamp (missing ones sort first).
        out = ordered[ends].with_columns(
            pl.Series("value", new_value, dtype=pl.Float32),
            pl.Series("rating", new_rating, dtype=pl.Float32).fill_nan(None),
        )
    out = out.select(inter.columns)
    merged = inter.height - out.height
    logger.info("dedupe", extra={"dataset": ds.name, "keep": keep, "rows_merged": merged})
    step = {
        "step": "dedupe",
        "keep": keep,
        "rows_before": inter.height,
        "rows_after": out.height,
        "rows_merged": merged,
    }
    return _record(ds, out, step)


def kcore(
    ds: Dataset,
    min_user_interactions: int = 5,
    min_item_interactions: int = 5,
    *,
    compact: bool = False,
) -> Dataset:
    """Keep the k-core: repeatedly drop users and items with too few interactions until none remain.

    Counts are of rows, so run :func:`dedupe` first when repeated pairs should count once.

    Args:
        ds: the dataset.
        min_user_interactions: every remaining user has at least this many interactions.
        min_item_interactions: every remaining item has at least this many interactions.
        compact: also drop users and items left without interactions from the vocabulary (re-indexing).
            By default the vocabulary is kept, so matrices keep their shape.

    Raises:
        ParameterError: a minimum is below 1, or no interaction survives.
    """
    for label, k in (
        ("min_user_interactions", min_user_interactions),
        ("min_item_interactions", min_item_interactions),
    ):
        if not isinstance(k, int | np.integer) or k < 1:
            raise ParameterError(f"kcore: {label} must be an integer >= 1, got {k!r}")
    users = ds.interactions["user_idx"].to_numpy()
    items = ds.interactions["item_idx"].to_numpy()
    rows = np.arange(len(users))
    iterations = 0
    while True:
        iterations += 1
        user_counts = np.bincount(users, minlength=ds.n_users)
        item_counts = np.bincount(items, minlength=ds.n_items)
        ok = (user_counts[users] >= min_user_interactions) & (item_counts[items] >= min_item_interactions)
        if ok.all():
            break
        # Shrinking the arrays makes later passes cheaper than masking the full frame each time.
        users, items, rows = users[ok], items[ok], rows[ok]
    if len(rows) == 0:
        raise ParameterError(
            f"kcore: no interaction of dataset {ds.name!r} has a user with >= {min_user_interactions} and an "
            f"item with >= {min_item_interactions} interactions; lower the minimums"
        )
    mask = np.zeros(ds.n_interactions, dtype=bool)
    mask[rows] = True
    out = ds.interactions.filter(pl.Series(mask))
    step = {
        "step": "kcore",
        "min_user_interactions": int(min_user_interactions),
        "min_item_interactions": int(min_item_interactions),
        "iterations": iterations,
        "rows_before": ds.n_interactions,
        "rows_after": out.height,
        "users_kept": int(np.unique(users).size),
        "items_kept": int(np.unique(items).size),
        "compact": compact,
    }
    result = _record(ds, out, step)
    return result.compact() if compact else result


def to_implicit(ds: Dataset, threshold: float = 4.0) -> Dataset:
    """Turn explicit ratings into implicit interactions: ratings >= ``threshold`` become value 1.0.

    Rows rated below the threshold (and rows without a rating) are dropped rather than kept with value 0:
    implicit models and the "seen" matrix treat every stored pair as a positive, so a kept low rating would
    become a positive signal. The ``rating`` column is kept for reference.

    Raises:
        DataValidationError: the dataset has no ratings.
        ParameterError: the threshold is negative or not finite, or no rating reaches it.
    """
    if not math.isfinite(threshold) or threshold < 0:
        raise ParameterError(f"to_implicit: threshold must be a finite number >= 0, got {threshold!r}")
    if not ds.has_ratings:
        raise DataValidationError(
            f"to_implicit: dataset {ds.name!r} has no ratings; it is already implicit (values only)"
        )
    inter = ds.interactions
    out = inter.filter(pl.col("rating") >= threshold).with_columns(pl.lit(1.0, dtype=pl.Float32).alias("value"))
    if out.height == 0:
        raise ParameterError(f"to_implicit: no rating of dataset {ds.name!r} is >= {threshold}")
    step = {
        "step": "to_implicit",
        "threshold": float(threshold),
        "rows_before": inter.height,
        "rows_after": out.height,
        "rows_dropped_below": int((inter["rating"] < threshold).sum()),
        "rows_dropped_unrated": inter["rating"].null_count(),
    }
    return _record(ds, out, step)


def apply_confidence(
    ds: Dataset, method: ConfidenceMethod = "linear", alpha: float = 40.0, eps: float = 1.0
) -> Dataset:
    """Turn values into confidences for implicit-feedback models (Hu, Koren & Volinsky 2008).

    ``"linear"`` gives ``1 + alpha * x`` and ``"log"`` gives ``1 + alpha * log(1 + x / eps)``, which tames
    heavy tails such as play counts.

    Raises:
        ParameterError: unknown method, ``alpha`` negative or not finite, ``eps`` not positive.
    """
    if method not in get_args(ConfidenceMethod):
        raise ParameterError(
            f"apply_confidence: unknown method {method!r}; expected one of {list(get_args(ConfidenceMethod))}"
        )
    if not math.isfinite(alpha) or alpha < 0:
        raise ParameterError(f"apply_confidence: alpha must be a finite number >= 0, got {alpha!r}")
    if not math.isfinite(eps) or eps <= 0:
        raise ParameterError(f"apply_confidence: eps must be a finite number > 0, got {eps!r}")
    x = pl.col("value").cast(pl.Float64)
    conf = 1.0 + alpha * x if method == "linear" else 1.0 + alpha * (1.0 + x / eps).log()
    out = ds.interactions.with_columns(conf.cast(pl.Float32).alias("value"))
    step = {"step": "apply_confidence", "method": method, "alpha": float(alpha), "rows": out.height}
    if method == "log":
        step["eps"] = float(eps)
    return _record(ds, out, step)


class PrepareConfig(BaseModel):
    """Which preparation steps to run; :func:`prepare` runs them as dedupe, implicit, k-core, confidence."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dedupe: DedupeMode | None = "latest"
    """How to merge duplicate (user, item) pairs (see :func:`dedupe`); ``None`` keeps duplicates."""
    implicit_threshold: float | None = Field(None, ge=0)
    """Convert ratings >= this to implicit interactions (see :func:`to_implicit`); ``None`` keeps ratings."""
    min_user_interactions: int = Field(1, ge=1)
    """k-core minimum per user; 1 with ``min_item_interactions`` 1 skips the k-core step."""
    min_item_interactions: int = Field(1, ge=1)
    """k-core minimum per item."""
    compact: bool = False
    """Drop users and items without interactions after the k-core (re-indexing the vocabulary)."""
    confidence: ConfidenceMethod | None = None
    """Confidence weighting of values (see :func:`apply_confidence`); ``None`` leaves values alone."""
    alpha: float = Field(40.0, ge=0)
    """Confidence scale (unitless)."""
    eps: float = Field(1.0, gt=0)
    """Scale of the ``log`` confidence, in value units."""

    @classmethod
    def from_params(cls, **params: Any) -> PrepareConfig:
        """Validate ``params``, turning validation errors into one clear :class:`ParameterError`."""
        try:
            return cls(**params)
        except ValidationError as err:
            problems = []
            for e in err.errors():
                loc = ".".join(str(p) for p in e["loc"]) or "(params)"
                if e["type"] == "extra_forbidden":
                    problems.append(f"unknown parameter {loc!r} (allowed: {', '.join(sorted(cls.model_fields))})")
                else:
                    problems.append(f"{loc}: {e['msg']} (got {e.get('input')!r})")
            raise ParameterError("prepare: " + "; ".join(problems)) from err


def prepare(ds: Dataset, config: PrepareConfig | None = None, **params: Any) -> Dataset:
    """Run the preparation steps ``config`` (or keyword parameters of :class:`PrepareConfig`) asks for.

    The order is fixed because each step depends on the one before: duplicates are merged before ratings are
    thresholded, the k-core counts what survives the conversion, and confidences are computed last.

    Raises:
        ParameterError: both ``config`` and ``params`` were given, or a parameter is invalid.
    """
    if config is not None and params:
        raise ParameterError("prepare: give either a PrepareConfig or keyword parameters, not both")
    cfg = config if config is not None else PrepareConfig.from_params(**params)
    out = ds
    if cfg.dedupe is not None:
        out = dedupe(out, keep=cfg.dedupe)
    if cfg.implicit_threshold is not None:
        out = to_implicit(out, threshold=cfg.implicit_threshold)
    if cfg.min_user_interactions > 1 or cfg.min_item_interactions > 1 or cfg.compact:
        out = kcore(out, cfg.min_user_interactions, cfg.min_item_interactions, compact=cfg.compact)
    if cfg.confidence is not None:
        out = apply_confidence(out, method=cfg.confidence, alpha=cfg.alpha, eps=cfg.eps)
    return out
