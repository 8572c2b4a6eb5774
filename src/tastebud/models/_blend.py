"""The arithmetic of :mod:`tastebud.models.ensemble`: member score rows, per-user normalisation, the weight search.

Kept apart from the ensemble class so that each stays readable; nothing here holds state.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from tastebud.data.dataset import Dataset
from tastebud.models.base import Recommender, top_k

if TYPE_CHECKING:
    from tastebud.models.ensemble import EnsembleConfig

logger = logging.getLogger("tastebud.models.ensemble")

#: Bound on the validation scores held at once during the weight search (float32 cells, all members together).
_SEARCH_CELLS = 1 << 26

#: ``row_fn(row) -> scores of every item`` and ``block_fn(rows) -> scores (rows x items)`` of one member.
RowFn = Callable[[int], np.ndarray]
BlockFn = Callable[[np.ndarray], np.ndarray]


# ---------------------------------------------------------------------- weight search
def learn_weights(
    folds: Sequence[tuple[Sequence[Recommender], Dataset, sp.csr_matrix]],
    config: EnsembleConfig,
    *,
    names: Sequence[str],
) -> tuple[np.ndarray, dict[str, Any]]:
    """Weights maximising NDCG@``config.k`` of the blend, averaged over validation folds, by coordinate ascent.

    Args:
        folds: per fold, (fitted members aligned with ``names``, the held-out interactions, what the members were
            fitted on). Members share the vocabulary of the held-out part and never saw it; every held-out
            interaction is relevant (binary), and the candidates are the items each user did not see in training.
        config: blend, normalisation, grid step, rounds, user sample and seed.
        names: the members' names, for the report.

    Returns:
        (weights aligned with ``names``, a JSON-able report: per-member and blended validation NDCG, users, rounds).
    """
    k = config.k
    prepared = [
        _validation_blocks(members, validation, seen, config, len(folds)) for members, validation, seen in folds
    ]
    total_users = sum(len(rel.indptr) - 1 for _, _, rel in prepared)
    # per fold: what one evaluation needs, computed once. Invalid cells (seen items) are a -inf penalty added to
    # the blend, and the held-out items a dense boolean matrix read at the top-k positions: each trial of the
    # search is then one multiply-add, one top-k and one gather per fold (it runs a few hundred times)
    discounts = (1.0 / np.log2(np.arange(2, k + 2))).astype(np.float64)
    folds_ready = []
    for normed, valid, rel in prepared:
        penalty = np.where(valid, np.float32(0.0), np.float32(-np.inf)).astype(np.float32)
        dense_rel = rel.toarray() > 0
        n_rel = np.minimum(np.diff(rel.indptr), k)
        ideal = np.concatenate([[0.0], np.cumsum(discounts)])[n_rel]
        folds_ready.append((normed, penalty, dense_rel, ideal))

    pools: list[np.ndarray | None] = [None] * len(folds_ready)

    def fold_ndcg(fold: int, blended: np.ndarray, dense_rel: np.ndarray, ideal: np.ndarray) -> float:
        """Sum over the fold's users of NDCG@k of ``blended``: an exact top-k without partitioning every row.

        The k-th largest score of any subset of a row's items is a lower bound of the row's k-th largest, so every
        item of the row's top k scores at least that much. The subset is a pool of the items that ranked highest
        under the first weights tried (most stay near the top while the weights move): one comparison pass finds
        the few items at or above the bound, and only those are sorted.
        """
        n_rows, n_cols = blended.shape
        pool = pools[fold]
        if pool is None or pool.shape[1] < k or n_cols <= 4 * k:
            idx, _ = top_k(blended, min(4 * k, n_cols))
            pools[fold] = np.maximum(idx, 0)
            idx = idx[:, :k]
            width = idx.shape[1]
            hits = (idx >= 0) & np.take_along_axis(dense_rel, np.maximum(idx, 0), axis=1)
            dcg = hits @ discounts[:width]
            return float(np.divide(dcg, ideal, out=np.zeros(n_rows), where=ideal > 0).sum())
        bound = np.partition(np.take_along_axis(blended, pool, axis=1), pool.shape[1] - k, axis=1)[:, -k]
        rows, cols = np.nonzero(blended >= bound[:, None])
        vals = blended[rows, cols]
        order = np.lexsort((-vals, rows))
        rows, cols, vals = rows[order], cols[order], vals[order]
        rank = np.arange(len(rows)) - np.searchsorted(rows, np.arange(n_rows))[rows]
        top = (rank < k) & np.isfinite(vals)
        gains = dense_rel[rows[top], cols[top]] * discounts[rank[top]]
        dcg = np.bincount(rows[top], weights=gains, minlength=n_rows)
        return float(np.divide(dcg, ideal, out=np.zeros(n_rows), where=ideal > 0).sum())

    def base(weights: np.ndarray, skip: int = -1) -> list[np.ndarray]:
        """Per fold, the penalty plus every member's weighted block but ``skip``'s."""
        out = []
        for normed, penalty, _, _ in folds_ready:
            acc = penalty.copy()
            for m, (w, part) in enumerate(zip(weights.tolist(), normed, strict=True)):
                if w and m != skip:
                    acc += np.float32(w) * part
            out.append(acc)
        return out

    def ndcg_with(bases: list[np.ndarray], member: int, value: float) -> float:
        total = 0.0
        for fold, (acc, (normed, _, dense_rel, ideal)) in enumerate(zip(bases, folds_ready, strict=True)):
            blended = acc + np.float32(value) * normed[member] if value else acc
            total += fold_ndcg(fold, blended, dense_rel, ideal)
        return total / max(1, total_users)

    def ndcg(weights: np.ndarray) -> float:
        return ndcg_with(base(weights), 0, 0.0)

    n = len(names)
    single = {name: ndcg(np.eye(n)[i]) for i, name in enumerate(names)}
    weights = np.full(n, 1.0 / n)
    best = ndcg(weights)
    grid = np.round(np.arange(0.0, 1.0 + 1e-9, config.weight_step), 10)
    rounds = 0
    for rounds in range(1, config.max_rounds + 1):  # noqa: B007 - the count is reported
        changed = False
        for m in range(n):
            others = base(weights, skip=m)
            rest = weights.sum() - weights[m]
            for value in grid:
                if value == weights[m] or rest + value <= 0:
                    continue
                score = ndcg_with(others, m, float(value))
                if score > best + 1e-9:
                    best, changed = score, True
                    weights = weights.copy()
                    weights[m] = value
        if not changed:
            break
    weights = weights / weights.sum()
    report = {
        "learned": True,
        "members": list(names),
        "weights": [round(float(w), 6) for w in weights],
        "k": k,
        "folds": len(folds),
        "users": total_users,
        "rounds": rounds,
        f"ndcg_at_{k}": best,
        f"member_ndcg_at_{k}": single,
    }
    logger.info("ensemble weights learned", extra=report)
    return weights, report


def _validation_blocks(
    members: Sequence[Recommender], validation: Dataset, seen: sp.csr_matrix, config: EnsembleConfig, n_folds: int
) -> tuple[list[np.ndarray], np.ndarray, sp.csr_matrix]:
    """Normalised member scores (float32, one block per member), the valid mask and the relevant rows of a fold.

    Users with a held-out interaction are scored, a seeded sample of them beyond ``max_validation_users`` or
    beyond what keeps every fold's blocks within ``_SEARCH_CELLS``.
    """
    relevant = validation.matrix("binary").tocsr()
    users = np.flatnonzero(np.diff(relevant.indptr) > 0)
    n_items = relevant.shape[1]
    cap = min(config.max_validation_users, max(1, _SEARCH_CELLS // max(1, n_items * len(members) * n_folds)))
    if len(users) > cap:
        users = np.sort(np.random.default_rng(config.random_state).choice(users, cap, replace=False))
    seen_rows = sp.csr_matrix(seen)[users]
    valid = np.ones((len(users), n_items), dtype=bool)
    valid[np.repeat(np.arange(len(users)), np.diff(seen_rows.indptr)), seen_rows.indices] = False
    normed = [normalise(scorers(m)[1](users), valid, config).astype(np.float32) for m in members]
    return normed, valid, relevant[users]


def ndcg_binary(idx: np.ndarray, relevant: sp.csr_matrix, k: int) -> np.ndarray:
    """Per row, binary NDCG@``k`` of ranked item indices ``idx`` (padded with -1) against ``relevant``'s rows.

    The ideal DCG counts ``min(k, relevant items)`` hits, as :func:`tastebud.evaluation.metrics.ndcg_at_k`
    (``graded=False``) does; the evaluation package is not imported here (models sit below it).
    """
    relevant = sp.csr_matrix(relevant)
    n_rows, width = idx.shape[0], min(k, idx.shape[1])
    idx = idx[:, :width]
    n_cols = relevant.shape[1]
    rel_keys = np.repeat(np.arange(n_rows, dtype=np.int64), np.diff(relevant.indptr)) * n_cols + relevant.indices
    keys = np.arange(n_rows, dtype=np.int64)[:, None] * n_cols + idx
    hits = (idx >= 0) & np.isin(keys, rel_keys)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = (hits * discounts[:width]).sum(axis=1)
    n_rel = np.minimum(np.diff(relevant.indptr), k)
    ideal = np.concatenate([[0.0], np.cumsum(discounts)])[n_rel]
    return np.divide(dcg, ideal, out=np.zeros(n_rows), where=ideal > 0)


# ---------------------------------------------------------------------- normalisation
def normalise(scores: np.ndarray, valid: np.ndarray, config: EnsembleConfig) -> np.ndarray:
    """Per-row normalisation of ``scores`` with statistics over the ``valid`` cells (see the module docstring).

    ``zscore``/``minmax`` for ``blend="score"``; ``1 / (rrf_k + rank)`` among the valid cells for ``blend="rank"``.
    Non-finite scores and rows without spread normalise to 0; invalid cells come back as 0.
    """
    scores = np.asarray(scores, dtype=np.float64)
    ok = valid & np.isfinite(scores)
    if config.blend == "rank":
        keyed = np.where(ok, scores, -np.inf)
        order = np.argsort(-keyed, axis=1, kind="stable")
        ranks = np.empty_like(order)
        np.put_along_axis(ranks, order, np.arange(1, scores.shape[1] + 1)[None, :], axis=1)
        return np.where(ok, 1.0 / (config.rrf_k + ranks), 0.0)
    # masked sums rather than nan-aware reductions: the serving path normalises one row per member per request
    with np.errstate(invalid="ignore"):  # rows without a valid cell: inf - inf, masked out below
        count = ok.sum(axis=1, keepdims=True)
        filled = np.where(ok, scores, 0.0)
        if config.normalize == "minmax":
            low = np.where(ok, scores, np.inf).min(axis=1, keepdims=True)
            spread = np.where(ok, scores, -np.inf).max(axis=1, keepdims=True) - low
            out = (filled - low) / np.where(count > 0, np.where(spread > 0, spread, np.inf), np.inf)
        else:
            mean = filled.sum(axis=1, keepdims=True) / np.maximum(count, 1)
            centred = np.where(ok, scores - mean, 0.0)
            std = np.sqrt((centred * centred).sum(axis=1, keepdims=True) / np.maximum(count, 1))
            out = centred / np.where(std > 0, std, np.inf)
    return np.where(ok, out, 0.0)


def normalise_row(scores: np.ndarray, valid: np.ndarray, config: EnsembleConfig) -> np.ndarray:
    """:func:`normalise` of one score vector (``valid`` a boolean vector): the per-request path, without 2-D masks."""
    scores = np.asarray(scores, dtype=np.float64)
    ok = valid if np.isfinite(scores).all() else valid & np.isfinite(scores)
    out = np.zeros(len(scores))
    picked = scores[ok]
    if len(picked) == 0:
        return out
    if config.blend == "rank":
        order = np.argsort(-picked, kind="stable")
        ranks = np.empty(len(picked))
        ranks[order] = np.arange(1, len(picked) + 1)
        out[ok] = 1.0 / (config.rrf_k + ranks)
    elif config.normalize == "minmax":
        low, spread = picked.min(), picked.max() - picked.min()
        if spread > 0:
            out[ok] = (picked - low) / spread
    else:
        centred = picked - picked.mean()
        std = np.sqrt(np.dot(centred, centred) / len(picked))
        if std > 0:
            out[ok] = centred / std
    return out


# ---------------------------------------------------------------------- member scorers
def scorers(member: Recommender) -> tuple[RowFn, BlockFn]:
    """How to get a member's raw scores of every item: one user (serving) and a block of users (search, batches).

    Factor and content models expose ``_score(rows, cols)``; EASE and the sparse item-item models (item-KNN,
    RP3beta, SLIM) score ``x_u W`` from their own seen row (their ``_history_scores`` of the user's training row
    is exactly what ``recommend`` ranks by). Any other model is asked through ``recommend_row`` for every item,
    which is slower but needs only the interface. A block is the rows one by one, so that the batched
    ``recommend`` and the serving path blend exactly the same numbers.
    """
    from tastebud.models._item_item import ItemItemRecommender
    from tastebud.models.ease import EASERecommender

    assert member.items_ is not None
    n_items = len(member.items_)
    scorer = getattr(member, "_score", None)
    row_fn: RowFn
    if callable(scorer):
        score = scorer

        def row_fn(row: int) -> np.ndarray:
            return np.asarray(score(np.array([row]), None), dtype=np.float64)[0]

    elif isinstance(member, EASERecommender):
        assert member.weights_ is not None
        seen, weights = sp.csr_matrix(member.seen_), member.weights_

        def row_fn(row: int) -> np.ndarray:
            lo, hi = seen.indptr[row], seen.indptr[row + 1]  # x_u B as EASE's own serving path computes it
            return np.asarray(seen.data[lo:hi] @ weights[seen.indices[lo:hi]], dtype=np.float64)

    elif isinstance(member, ItemItemRecommender):
        assert member.similarity_ is not None
        seen, sim = sp.csr_matrix(member.seen_), sp.csr_matrix(member.similarity_)

        def row_fn(row: int) -> np.ndarray:
            # x_u W gathered from W's CSR rows: scipy's row indexing costs more than the arithmetic here
            lo, hi = seen.indptr[row], seen.indptr[row + 1]
            starts, stops = sim.indptr[seen.indices[lo:hi]], sim.indptr[seen.indices[lo:hi] + 1]
            lengths = stops - starts
            gather = np.repeat(stops - np.cumsum(lengths), lengths) + np.arange(int(lengths.sum()))
            values = sim.data[gather].astype(np.float64) * np.repeat(seen.data[lo:hi].astype(np.float64), lengths)
            return np.bincount(sim.indices[gather], weights=values, minlength=n_items)

    else:

        def row_fn(row: int) -> np.ndarray:
            ranked = member.recommend_row(row, n_items, exclude_seen=False)
            out = np.full(n_items, np.nan)
            out[ranked.items] = ranked.scores
            return out

    def block_fn(rows: np.ndarray) -> np.ndarray:
        if len(rows) == 0:
            return np.empty((0, n_items))
        return np.stack([row_fn(int(r)) for r in rows])

    return row_fn, block_fn


def linear_block(member: Recommender) -> Callable[[np.ndarray, np.ndarray], np.ndarray] | None:
    """``block(seen_items, items)`` = the dense ``W[seen_items][:, items]`` of an ``x_u W`` member (EASE, the
    sparse item-item models), whose explanations are contributions ``x_uj * W[j, i]``; ``None`` for others."""
    from tastebud.models._item_item import ItemItemRecommender
    from tastebud.models.ease import EASERecommender

    if isinstance(member, EASERecommender) and member.weights_ is not None:
        weights = member.weights_
        return lambda idx, items: weights[np.ix_(idx, items)]
    if isinstance(member, ItemItemRecommender) and member.similarity_ is not None:
        sim = sp.csr_matrix(member.similarity_)
        return lambda idx, items: sim[idx][:, items].toarray()
    return None
