"""The training matrix every model learns from, with optional recency weighting, and defaults per kind of feedback.

Models build their user x item matrix through :func:`training_matrix` so that options about *which* interactions
count and *how much* are applied in one place. Recency weighting multiplies each interaction by
``0.5 ** (age / half_life)``, where ``age`` is the time from the interaction to the dataset's last timestamp: an
interaction one half-life older than the newest one weighs half as much. Tastes drift; an old rating says less
about what someone wants now (Ding and Li, "Time Weight Collaborative Filtering", CIKM 2005, use the same
exponential decay with a half-life).

Defaults that suit 1-5 ratings do not suit play counts: :func:`feedback_kind` tells them apart, and a model with
``feedback_defaults`` (ALS) takes those of the dataset's kind for every parameter its caller did not set
(:func:`config_for_feedback`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, TypeVar

import numpy as np
import polars as pl
import scipy.sparse as sp
from pydantic import ConfigDict, Field

from tastebud.data.dataset import Dataset
from tastebud.errors import DataValidationError
from tastebud.models.base import ModelConfig

SECONDS_PER_DAY = 86_400.0

C = TypeVar("C", bound=ModelConfig)


class RecencyConfig(ModelConfig):
    """The recency option shared by the models that support it (ALS, EASE, item-KNN, RP3beta, SLIM).

    BPR inherits the field with the other factor models, but implicit's BPR samples every positive alike, whatever
    its value, so the weights change nothing there.
    """

    model_config = ConfigDict(use_attribute_docstrings=True)

    recency_half_life_days: float | None = Field(None, gt=0.0)
    """Weigh each training interaction by ``0.5 ** (age / half_life)``, age in days before the dataset's last
    timestamp (``None``, the default: every interaction weighs the same). Needs timestamps."""


def recency_weights(dataset: Dataset, half_life_days: float) -> np.ndarray:
    """Per interaction row of ``dataset``, ``0.5 ** (age / half_life_days)`` with age relative to its last timestamp.

    Raises:
        DataValidationError: the dataset has interactions without a timestamp.
    """
    if not dataset.has_timestamps:
        raise DataValidationError(
            f"dataset {dataset.name!r}: recency weighting needs a timestamp on every interaction; "
            "unset recency_half_life_days or use data with timestamps"
        )
    ts = dataset.interactions["timestamp"].to_numpy().astype(np.float64)
    age_days = (ts.max() - ts) / SECONDS_PER_DAY
    return np.exp2(-age_days / half_life_days)


def training_matrix(
    dataset: Dataset, column: str = "value", *, half_life_days: float | None = None, dtype: Any = np.float32
) -> sp.csr_matrix:
    """User x item CSR of ``column`` (``value``, ``rating`` or ``binary``), recency-weighted when asked.

    Without ``half_life_days`` this is exactly ``dataset.matrix(column)``. With it, every interaction's entry is
    multiplied by its :func:`recency_weights` before duplicates are summed (for ``binary``, the entry becomes the
    weight itself).

    Raises:
        DataValidationError: recency weighting on data without timestamps, or ``column`` has missing values.
    """
    if half_life_days is None or dataset.n_interactions == 0:
        return dataset.matrix(column, dtype=dtype)
    weights = recency_weights(dataset, half_life_days)
    if column == "binary":
        values = weights
    else:
        series = dataset.interactions[column]
        if series.null_count():
            raise DataValidationError(f"dataset {dataset.name!r}: column {column!r} has missing values")
        values = series.cast(pl.Float64).to_numpy() * weights
    rows = dataset.interactions["user_idx"].to_numpy()
    cols = dataset.interactions["item_idx"].to_numpy()
    if column == "binary":  # one entry per pair, like matrix("binary"): the newest interaction's weight
        order = np.argsort(values, kind="stable")
        keys = rows[order].astype(np.int64) * dataset.n_items + cols[order]
        _, last = np.unique(keys[::-1], return_index=True)
        keep = order[len(keys) - 1 - last]
        rows, cols, values = rows[keep], cols[keep], values[keep]
    mat = sp.csr_matrix((values, (rows, cols)), shape=dataset.shape, dtype=dtype)
    mat.sort_indices()
    return mat


# ---------------------------------------------------------------------- defaults per kind of feedback
FeedbackKind = Literal["ratings", "binary", "counts"]


def feedback_kind(dataset: Dataset) -> FeedbackKind:
    """What a dataset's interactions are: ``ratings`` (explicit scores), ``binary`` (presence) or ``counts``.

    Ratings are recognised by the ``rating`` column (MovieLens: the ``value`` of every rating is 1); data without
    ratings whose values are all 1 is ``binary``; any other values are strengths such as play counts (Last.fm).
    """
    if dataset.has_ratings:
        return "ratings"
    values = dataset.interactions["value"]
    if dataset.n_interactions == 0 or (values.min() == values.max() == 1.0):
        return "binary"
    return "counts"


def config_for_feedback(requested: C, presets: Mapping[str, Mapping[str, Any]], kind: str) -> C:
    """``requested`` with the fields its caller left unset taken from ``presets[kind]`` (explicit values win)."""
    preset = presets.get(kind)
    if not preset:
        return requested
    values = requested.model_dump()
    values.update({key: value for key, value in preset.items() if key not in requested.model_fields_set})
    return type(requested)(**values)
