"""Scoring an arbitrary interaction history: the generic half of :meth:`Recommender.recommend_history`.

A model that can score a history it was not trained on (a user's training row plus events that arrived since,
or a brand-new user's first events) implements ``_history_scores(idx, values)``, one score per item of its
vocabulary, and optionally ``_explain_history(idx, values, rec)``. This module turns that into a
:class:`Recommendations` row the same way ``recommend`` does: the history's items excluded, candidates
respected, top-k, explanations.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

from tastebud.data.dataset import IdMap
from tastebud.errors import ParameterError
from tastebud.models import _scoring as sc
from tastebud.models.base import Recommendations

#: Query id of the single row :func:`recommend_history` returns.
HISTORY_QUERY = "history"


def history_arrays(
    items: IdMap, item_ids: Sequence[str], values: Sequence[float] | np.ndarray | None, model: str
) -> tuple[np.ndarray, np.ndarray]:
    """Item indices and float64 values of a history, repeated items merged (the last value wins).

    Raises:
        UnknownItemError: an item id is not in ``items``.
        ParameterError: ``values`` does not align with ``item_ids`` or holds NaN or inf.
    """
    if isinstance(item_ids, str):
        raise ParameterError(f"{model}: item_ids must be a sequence of item ids, not a single string")
    idx = np.asarray(items.index(list(item_ids), kind="item"), dtype=np.int64)
    vals = np.ones(len(idx)) if values is None else np.asarray(values, dtype=np.float64).ravel()
    if vals.shape != idx.shape:
        raise ParameterError(f"{model}: history has {len(idx)} item ids but {vals.size} values")
    if not np.isfinite(vals).all():
        raise ParameterError(f"{model}: history values must be finite numbers")
    # np.unique keeps the first occurrence; reversing makes it the last one (the latest event)
    uniq, first = np.unique(idx[::-1], return_index=True)
    return uniq, vals[::-1][first]


def history_row(idx: np.ndarray, values: np.ndarray, n_items: int) -> sp.csr_matrix:
    """The history as a one-row user x item CSR (sorted indices)."""
    return sp.csr_matrix((values.astype(np.float32), idx.astype(np.int32), np.array([0, len(idx)])), shape=(1, n_items))


def recommend_history(
    model: Any,
    item_ids: Sequence[str],
    values: Sequence[float] | np.ndarray | None,
    k: int,
    *,
    exclude_seen: bool,
    candidates: Sequence[str] | None,
    explain: bool,
    score_fn: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
) -> Recommendations:
    """Top-``k`` items of ``model`` for one history (see :meth:`Recommender.recommend_history`).

    ``score_fn(idx, values)`` replaces ``model._history_scores`` (the hybrid's blend depends on ``exclude_seen``).
    """
    model.check_fitted()
    items: IdMap = model.items_
    k = sc.check_k(k)
    idx, vals = history_arrays(items, item_ids, values, model.name)
    cands = sc.resolve_candidates(items, candidates)
    scores = np.asarray((score_fn or model._history_scores)(idx, vals), dtype=np.float64)
    row = history_row(idx, vals, len(items))
    rec_idx, rec_scores = sc.rank(
        lambda _r, c: scores[None, :] if c is None else scores[None, c],
        np.zeros(1, dtype=np.int64),
        k,
        n_items=len(items),
        exclude=row if exclude_seen else None,
        candidates=cands,
    )
    explanations = None
    if explain:
        explainer = getattr(model, "_explain_history", None)
        if explainer is not None:
            explanations = [explainer(idx, vals, rec_idx[0])]
    return sc.build_recommendations([HISTORY_QUERY], rec_idx, rec_scores, items, explanations)


def explain_weighted(
    items: IdMap, idx: np.ndarray, weights: np.ndarray, block: np.ndarray, n: int = sc.EXPLAIN_TOP
) -> list[list[str]]:
    """Per recommended item, the history items with the largest ``weights[j] * block[j, i]``.

    Args:
        items: the vocabulary.
        idx: history item indices (rows of ``block``).
        weights: per history item, its weight in the score.
        block: dense (history items x recommended items) contribution factors.
        n: how many items explain each recommendation.
    """
    contrib = np.asarray(block, dtype=np.float64) * np.asarray(weights, dtype=np.float64)[:, None]
    return sc.id_lists(items.ids, sc.top_contributors(contrib, idx, n))
