"""Ranking, beyond-accuracy and rating metrics as pure, vectorised functions.

Ranking metrics take the same two inputs:

* ``recs``: a 2-D integer array, one row per user, of recommended item indices best first, padded with ``-1``
  where a list is shorter than ``k``. Columns beyond ``k`` are ignored; an item repeated in a row counts once
  (at its best rank).
* ``relevant``: a users x items sparse matrix (CSR) aligned row by row with ``recs``. Every stored entry is a
  relevant item; its value is the relevance grade (used by graded NDCG only).

Each ranking metric returns one value per user, so reports can average and bootstrap them. Users with no
relevant items get ``nan``: no list can be right or wrong for them, so they are excluded from means (use
:func:`mean` or ``np.nanmean``). Missing slots (padding) count as misses: precision always divides by ``k``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from tastebud.errors import ParameterError

#: Names of the per-user ranking metrics computed by :func:`ranking_metrics`.
RANKING_METRICS: tuple[str, ...] = ("precision", "recall", "f1", "map", "ndcg", "mrr", "hit_rate")


@dataclass(frozen=True)
class _Hits:
    """Per rank, whether it hit and its grade; per user, the number of relevant items."""

    hit: np.ndarray  # (n_users, k) bool
    gain: np.ndarray  # (n_users, k) float64, the grade of a hit, 0 elsewhere
    n_relevant: np.ndarray  # (n_users,) int64
    k: int


def _check_k(k: int) -> int:
    if int(k) != k or k < 1:
        raise ParameterError(f"k must be a positive integer, got {k!r}")
    return int(k)


def _as_recs(recs: np.ndarray, k: int) -> np.ndarray:
    """The first ``k`` columns of ``recs`` as int64, padded with -1 to exactly ``k`` columns."""
    arr = np.asarray(recs)
    if arr.ndim != 2:
        raise ParameterError(f"recs must be a 2-D array (users x ranks), got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ParameterError(f"recs must hold integer item indices, got dtype {arr.dtype}")
    arr = arr[:, :k].astype(np.int64, copy=False)
    if arr.shape[1] < k:
        pad = np.full((arr.shape[0], k - arr.shape[1]), -1, dtype=np.int64)
        arr = np.hstack([arr, pad])
    return arr


def _as_relevant(relevant: sp.spmatrix | sp.sparray, n_users: int) -> sp.csr_matrix:
    rel = sp.csr_matrix(relevant)
    if rel.shape[0] != n_users:
        raise ParameterError(f"relevant has {rel.shape[0]} rows but recs has {n_users}: rows must align")
    if not rel.has_canonical_format:
        rel = rel.copy()
        rel.sum_duplicates()  # sorts indices too, so the flattened keys below are sorted
    return rel


def _first_occurrence(recs: np.ndarray) -> np.ndarray:
    """Mask of valid slots holding an item not already listed earlier in the same row."""
    n, k = recs.shape
    valid = recs >= 0
    if k < 2:
        return valid
    order = np.argsort(recs, axis=1, kind="stable")
    srt = np.take_along_axis(recs, order, axis=1)
    # Stable sort keeps equal items in rank order, so any later copy follows an equal neighbour.
    dup_sorted = np.zeros((n, k), dtype=bool)
    dup_sorted[:, 1:] = srt[:, 1:] == srt[:, :-1]
    dup = np.empty_like(dup_sorted)
    np.put_along_axis(dup, order, dup_sorted, axis=1)
    return valid & ~dup


def _hits(recs: np.ndarray, relevant: sp.spmatrix | sp.sparray, k: int) -> _Hits:
    """Look each recommended (user, item) pair up in ``relevant`` in one sorted search (no per-user loop)."""
    k = _check_k(k)
    r = _as_recs(recs, k)
    rel = _as_relevant(relevant, r.shape[0])
    n_items = max(rel.shape[1], 1)
    n_rel = np.diff(rel.indptr).astype(np.int64)

    # Row-major keys of the relevant entries are sorted (canonical CSR), so one searchsorted finds every pair.
    rel_rows = np.repeat(np.arange(rel.shape[0], dtype=np.int64), n_rel)
    rel_keys = rel_rows * n_items + rel.indices.astype(np.int64)
    query = np.arange(r.shape[0], dtype=np.int64)[:, None] * n_items + np.clip(r, 0, None)
    first = _first_occurrence(r) & (r < rel.shape[1])
    if len(rel_keys) == 0:
        empty = np.zeros(r.shape, dtype=bool)
        return _Hits(hit=empty, gain=np.zeros(r.shape), n_relevant=n_rel, k=k)
    pos = np.minimum(np.searchsorted(rel_keys, query), len(rel_keys) - 1)
    hit = (rel_keys[pos] == query) & first
    gain = np.where(hit, rel.data[pos].astype(np.float64), 0.0)
    return _Hits(hit=hit, gain=gain, n_relevant=n_rel, k=k)


def _per_user(values: np.ndarray, n_relevant: np.ndarray) -> np.ndarray:
    """Users without relevant items get nan (excluded from means)."""
    out = values.astype(np.float64, copy=True)
    out[n_relevant == 0] = np.nan
    return out


def _discount(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))


# ---------------------------------------------------------------------- accuracy from precomputed hits
def _precision(h: _Hits) -> np.ndarray:
    return _per_user(h.hit.sum(axis=1) / h.k, h.n_relevant)


def _recall(h: _Hits) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return _per_user(h.hit.sum(axis=1) / h.n_relevant, h.n_relevant)


def _f1(h: _Hits) -> np.ndarray:
    p, r = _precision(h), _recall(h)
    with np.errstate(divide="ignore", invalid="ignore"):
        f = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
    return _per_user(f, h.n_relevant)


def _map(h: _Hits) -> np.ndarray:
    ranks = np.arange(1, h.k + 1, dtype=np.float64)
    precision_at_i = np.cumsum(h.hit, axis=1) / ranks
    denom = np.minimum(h.n_relevant, h.k)
    with np.errstate(divide="ignore", invalid="ignore"):
        ap = (precision_at_i * h.hit).sum(axis=1) / denom
    return _per_user(ap, h.n_relevant)


def _ideal_dcg(relevant: sp.csr_matrix, k: int, graded: bool) -> np.ndarray:
    """DCG of each user's best possible list: their grades sorted descending, truncated at ``k``."""
    n_rel = np.diff(relevant.indptr)
    if not graded:
        return np.concatenate([[0.0], np.cumsum(_discount(k))])[np.minimum(n_rel, k)]
    rows = np.repeat(np.arange(relevant.shape[0]), n_rel)
    order = np.lexsort((-relevant.data, rows))  # by row, then grade descending
    rank = np.arange(len(order)) - relevant.indptr[rows[order]]
    keep = rank < k
    weights = relevant.data[order][keep].astype(np.float64) * _discount(k)[rank[keep]]
    return np.bincount(rows[order][keep], weights=weights, minlength=relevant.shape[0])


def _ndcg(h: _Hits, relevant: sp.csr_matrix, graded: bool) -> np.ndarray:
    gain = h.gain if graded else h.hit.astype(np.float64)
    dcg = (gain * _discount(h.k)).sum(axis=1)
    idcg = _ideal_dcg(relevant, h.k, graded)
    with np.errstate(divide="ignore", invalid="ignore"):
        ndcg = np.where(idcg > 0, dcg / idcg, 0.0)
    return _per_user(ndcg, h.n_relevant)


def _mrr(h: _Hits) -> np.ndarray:
    first = np.argmax(h.hit, axis=1).astype(np.float64)
    any_hit = h.hit.any(axis=1)
    return _per_user(np.where(any_hit, 1.0 / (first + 1.0), 0.0), h.n_relevant)


def _hit_rate(h: _Hits) -> np.ndarray:
    return _per_user(np.asarray(h.hit.any(axis=1), dtype=np.float64), h.n_relevant)


# ---------------------------------------------------------------------- public ranking metrics
def precision_at_k(recs: np.ndarray, relevant: sp.spmatrix | sp.sparray, k: int) -> np.ndarray:
    """Per user, the fraction of the ``k`` slots that hold a relevant item (padding counts as a miss)."""
    return _precision(_hits(recs, relevant, k))


def recall_at_k(recs: np.ndarray, relevant: sp.spmatrix | sp.sparray, k: int) -> np.ndarray:
    """Per user, the fraction of their relevant items found in the top ``k``."""
    return _recall(_hits(recs, relevant, k))


def f1_at_k(recs: np.ndarray, relevant: sp.spmatrix | sp.sparray, k: int) -> np.ndarray:
    """Per user, the harmonic mean of precision@k and recall@k (0 when both are 0)."""
    return _f1(_hits(recs, relevant, k))


def map_at_k(recs: np.ndarray, relevant: sp.spmatrix | sp.sparray, k: int) -> np.ndarray:
    """Per user, average precision at ``k``: the sum of precision@i at each hit i, over ``min(|rel|, k)``.

    Normalising by ``min(|rel|, k)`` rather than ``|rel|`` lets a perfect list score 1 even when the user has
    more relevant items than fit in ``k`` slots.
    """
    return _map(_hits(recs, relevant, k))


def ndcg_at_k(recs: np.ndarray, relevant: sp.spmatrix | sp.sparray, k: int, *, graded: bool = True) -> np.ndarray:
    """Per user, normalised discounted cumulative gain at ``k``.

    The gain of a hit at rank ``i`` (1-based) is its relevance grade (``relevant``'s value; 1 when
    ``graded=False``), discounted by ``log2(i + 1)``. The ideal DCG sorts the user's own grades descending and
    truncates at ``k``, so a user with fewer relevant items than ``k`` can still reach 1.
    """
    rel = _as_relevant(relevant, np.asarray(recs).shape[0])
    return _ndcg(_hits(recs, rel, k), rel, graded)


def mrr(recs: np.ndarray, relevant: sp.spmatrix | sp.sparray, k: int) -> np.ndarray:
    """Per user, the reciprocal rank of the first relevant item within the top ``k`` (0 if none)."""
    return _mrr(_hits(recs, relevant, k))


def hit_rate_at_k(recs: np.ndarray, relevant: sp.spmatrix | sp.sparray, k: int) -> np.ndarray:
    """Per user, 1 if any of the top ``k`` is relevant, else 0."""
    return _hit_rate(_hits(recs, relevant, k))


def ranking_metrics(
    recs: np.ndarray,
    relevant: sp.spmatrix | sp.sparray,
    k: int,
    *,
    metrics: Iterable[str] | None = None,
    graded: bool = True,
) -> dict[str, np.ndarray]:
    """Several ranking metrics at once, sharing one lookup of the hits.

    Args:
        recs: recommended item indices per user, padded with -1.
        relevant: users x items CSR of relevance grades, rows aligned with ``recs``.
        k: list length.
        metrics: names from :data:`RANKING_METRICS` (all when ``None``).
        graded: NDCG uses the grades in ``relevant`` (else every relevant item has gain 1).

    Returns:
        Metric name -> per-user values (``nan`` for users without relevant items).

    Raises:
        ParameterError: an unknown metric name, a bad ``k`` or misaligned inputs.
    """
    names = list(RANKING_METRICS if metrics is None else metrics)
    unknown = [m for m in names if m not in RANKING_METRICS]
    if unknown:
        raise ParameterError(f"unknown metric(s) {unknown}; choose from {list(RANKING_METRICS)}")
    rel = _as_relevant(relevant, np.asarray(recs).shape[0])
    h = _hits(recs, rel, k)
    compute = {
        "precision": lambda: _precision(h),
        "recall": lambda: _recall(h),
        "f1": lambda: _f1(h),
        "map": lambda: _map(h),
        "ndcg": lambda: _ndcg(h, rel, graded),
        "mrr": lambda: _mrr(h),
        "hit_rate": lambda: _hit_rate(h),
    }
    return {name: compute[name]() for name in names}


# ---------------------------------------------------------------------- beyond accuracy
def item_popularity(train: sp.spmatrix | sp.sparray, n_items: int | None = None) -> np.ndarray:
    """Number of distinct users who interacted with each item in ``train`` (a users x items matrix)."""
    mat = sp.csr_matrix(train)
    mat.sum_duplicates()
    mat.eliminate_zeros()
    size = n_items if n_items is not None else mat.shape[1]
    return np.bincount(mat.indices, minlength=size).astype(np.int64)


def catalog_coverage(recs: np.ndarray, n_items: int) -> float:
    """Fraction of the ``n_items`` catalog recommended to at least one user (padding ignored)."""
    if n_items <= 0:
        raise ParameterError(f"n_items must be positive, got {n_items}")
    r = np.asarray(recs)
    valid = r[(r >= 0) & (r < n_items)]
    return float(len(np.unique(valid)) / n_items)


def _mean_over_valid(recs: np.ndarray, per_item: np.ndarray) -> np.ndarray:
    """Per user, the mean of ``per_item`` over their valid recommended items (nan for an empty list)."""
    r = np.asarray(recs)
    valid = (r >= 0) & (r < len(per_item))
    vals = np.where(valid, per_item[np.clip(r, 0, max(len(per_item) - 1, 0))], 0.0) if len(per_item) else 0.0
    counts = valid.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(counts > 0, np.sum(vals, axis=1) / counts, np.nan)


def novelty(recs: np.ndarray, popularity: np.ndarray, n_users: int) -> np.ndarray:
    """Per user, the mean self-information ``-log2(pop(i) / n_users)`` of their recommended items.

    ``popularity`` counts the training users of each item (see :func:`item_popularity`) and ``n_users`` is the
    number of training users. An item nobody interacted with counts as popularity 1, the rarest observable,
    so its self-information is finite (``log2(n_users)``). Users with an empty list get ``nan``.
    """
    if n_users <= 0:
        raise ParameterError(f"n_users must be positive, got {n_users}")
    pop = np.clip(np.asarray(popularity, dtype=np.float64), 1.0, None)
    info = -np.log2(np.minimum(pop / n_users, 1.0))
    return _mean_over_valid(recs, info)


def popularity_bias(recs: np.ndarray, popularity: np.ndarray) -> np.ndarray:
    """Per user, the mean training popularity of their recommended items (``nan`` for an empty list).

    Divide its mean by :func:`catalog_mean_popularity` for the ratio to the catalog: above 1 means the model
    favours popular items.
    """
    return _mean_over_valid(recs, np.asarray(popularity, dtype=np.float64))


def catalog_mean_popularity(popularity: np.ndarray) -> float:
    """Mean training popularity over the whole catalog."""
    pop = np.asarray(popularity, dtype=np.float64)
    return float(pop.mean()) if len(pop) else float("nan")


# ---------------------------------------------------------------------- rating metrics
def _check_pairs(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(y_true, dtype=np.float64).ravel()
    p = np.asarray(y_pred, dtype=np.float64).ravel()
    if t.shape != p.shape:
        raise ParameterError(f"y_true has {t.size} values but y_pred has {p.size}")
    return t, p


def rmse(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Root mean squared error of predicted ratings (``nan`` for no pairs)."""
    t, p = _check_pairs(y_true, y_pred)
    return float(np.sqrt(np.mean((t - p) ** 2))) if t.size else float("nan")


def mae(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean absolute error of predicted ratings (``nan`` for no pairs)."""
    t, p = _check_pairs(y_true, y_pred)
    return float(np.mean(np.abs(t - p))) if t.size else float("nan")


def mean(values: np.ndarray) -> float:
    """Mean over users that have a value (``nan`` entries, users without relevant items, are skipped)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else float("nan")
