"""Compiled loops (numba) for a serving batch of history-scored models: score, rank and explain each user in one pass.

EASE scores a user as ``x_u B`` over the user's items, ranks the unseen items and explains each recommended item by
the user's items with the largest ``x_uj B[j, i]``. With NumPy and scipy that is a sparse-dense product, a masked
partition of the batch's score matrix and several whole-array passes for the explanations, each step writing and
reading arrays far larger than what it needs (a score row of 1,682 floats per user, one contribution per
recommended x seen item). :func:`history_top_k` does it per user in one compiled loop over data in cache: the rows
of ``B`` of the user's items added into one score row, the top ``k`` kept by insertion while reading it once, and
the ``n`` largest positive contributions of each recommended item read from the same rows. On the ML-100K demo
(1,682 items, 74 items a user) a batch of 16 costs 49 instead of 85 us a user with explanations
(``bench/bench_kernels.py``), with the same lists, scores and explanations bit for bit: the products and sums are
the same float32 operations in the same order as scipy's, and ties are broken as
:func:`~tastebud.models._scoring.rank_rows` and :func:`~tastebud.models._scoring.top_contributors` break them.
NumPy has no operation for "add these rows of a matrix into one row" without a copy of the rows, nor a top-k that
reads its input once; this loop is the one place where a compiled loop is clearly cheaper than the array steps.

The loops are compiled on first use (about 2 s) and cached on disk when a cache directory is writable; the serving
engine runs one batch while loading a model (:meth:`tastebud.serving.engine.Engine.calibrate`), so no request pays
for it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

logger = logging.getLogger(__name__)


def _compile(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` compiled without the GIL, cached on disk when numba finds a writable cache directory."""
    import numba

    try:
        return numba.njit(cache=True, nogil=True, boundscheck=False)(fn)  # type: ignore[no-any-return]
    except RuntimeError as err:  # no writable cache location (a read-only install): compile once per process
        logger.debug("numba cannot cache %s (%s): compiled in each process", fn.__name__, err)
        return numba.njit(nogil=True, boundscheck=False)(fn)  # type: ignore[no-any-return]


def _top_k_py(
    scores: np.ndarray, k: int, top_idx: np.ndarray, top_val: np.ndarray
) -> int:  # pragma: no cover - compiled by numba; tested through history_top_k
    """The ``k`` largest of ``scores`` into ``top_idx``/``top_val``, best first, the lower index first among equal
    scores, ``-inf`` scores left out; how many were found, or -1 for a NaN score.

    One read of the scores, each compared with the ``k``-th best so far: cheap on a catalogue of a few thousand
    items (about 5 us for 1,682); on 60,000 it is 3-4 times slower than the block bound of
    :func:`~tastebud.models._scoring.rank_rows`, which stays the factor models' ranking."""
    count = 0
    for t in range(scores.shape[0]):
        v = scores[t]
        if v != v:
            return -1
        if v == -np.inf or (count == k and not v > top_val[k - 1]):
            continue
        pos = count if count < k else k - 1
        while pos > 0 and v > top_val[pos - 1]:
            top_val[pos] = top_val[pos - 1]
            top_idx[pos] = top_idx[pos - 1]
            pos -= 1
        top_val[pos] = v
        top_idx[pos] = t
        if count < k:
            count += 1
    return count


_top_k = _compile(_top_k_py)


def _history_top_k_py(
    indptr: np.ndarray,
    indices: np.ndarray,
    data: np.ndarray,
    weights: np.ndarray,
    users: np.ndarray,
    ks: np.ndarray,
    exclude: np.ndarray,
    explain: np.ndarray,
    top_idx: np.ndarray,
    top_val: np.ndarray,
    top_n: np.ndarray,
    because: np.ndarray,
    failed: np.ndarray,
) -> None:  # pragma: no cover - compiled by numba; its results are tested through history_top_k
    n_items = weights.shape[1]
    n_because = because.shape[2]
    scores = np.empty(n_items, dtype=weights.dtype)
    best = np.empty(max(n_because, 1), dtype=np.float64)
    for r in range(users.shape[0]):
        u = users[r]
        lo, hi = indptr[u], indptr[u + 1]
        # x_u B: the user's rows of B, in the order of the user's items (scipy's CSR x dense order). Four rows are
        # added per pass over the score row (each score still gets its products one after the other, in that order:
        # the same float operations), so the score row is read and written a quarter as often.
        scores[:] = 0.0
        p = lo
        while p + 4 <= hi:
            a0, a1, a2, a3 = data[p], data[p + 1], data[p + 2], data[p + 3]
            r0, r1 = weights[indices[p]], weights[indices[p + 1]]
            r2, r3 = weights[indices[p + 2]], weights[indices[p + 3]]
            for t in range(n_items):
                s = scores[t] + a0 * r0[t]
                s = s + a1 * r1[t]
                s = s + a2 * r2[t]
                scores[t] = s + a3 * r3[t]
            p += 4
        for q in range(p, hi):
            a = data[q]
            row = weights[indices[q]]
            for t in range(n_items):
                scores[t] += a * row[t]
        if exclude[r]:
            for p in range(lo, hi):
                scores[indices[p]] = -np.inf
        count = _top_k(scores, ks[r], top_idx[r], top_val[r])
        if count < 0:  # NaN: ranked by the NumPy path
            failed[r] = True
            continue
        top_n[r] = count
        if not explain[r]:
            continue
        # per recommended item i: the user's items j with the largest positive x_uj B[j, i], the earlier on ties
        for q in range(count):
            i = top_idx[r, q]
            m = 0
            for p in range(lo, hi):
                c = np.float64(weights[indices[p], i]) * np.float64(data[p])
                if c != c:
                    failed[r] = True
                    break
                if not c > 0.0 or (m == n_because and not c > best[n_because - 1]):
                    continue
                pos = m if m < n_because else n_because - 1
                while pos > 0 and c > best[pos - 1]:
                    best[pos] = best[pos - 1]
                    because[r, q, pos] = because[r, q, pos - 1]
                    pos -= 1
                best[pos] = c
                because[r, q, pos] = indices[p]
                if m < n_because:
                    m += 1
            for z in range(m, n_because):
                because[r, q, z] = -1
            if failed[r]:
                break


_history_top_k = _compile(_history_top_k_py)


def history_top_k(
    history: sp.csr_matrix,
    weights: np.ndarray,
    rows: Sequence[int] | np.ndarray,
    ks: Sequence[int],
    exclude: Sequence[bool],
    explain: Sequence[bool],
    n_because: int,
) -> list[tuple[np.ndarray, np.ndarray, list[list[int]] | None] | None]:
    """Per row ``u`` of ``rows``: the top ``ks`` items by ``history[u] @ weights``, and their explanations.

    Args:
        history: users x items CSR matrix (sorted indices), the values each item of a user's history weighs.
        weights: items x items float matrix, C order: row ``j`` is what item ``j`` adds to every item's score.
        rows: the users (rows of ``history``) to rank.
        ks: list length per row (already checked, at least 1).
        exclude: per row, whether the user's own items are left out.
        explain: per row, whether to name, for each listed item, the user's items contributing most to it.
        n_because: how many contributing items to name at most (only positive contributions count).

    Returns:
        Per row ``(items, scores, because)``: item indices and float scores best first (the lower index first among
        equal scores; fewer than ``k`` when fewer items are left), and the contributing item indices per listed item
        (``None`` when not asked); ``None`` for a row whose scores or contributions hold NaN, for the caller's own
        path.
    """
    n = len(rows)
    kmax = max(ks, default=1)
    top_idx = np.empty((n, kmax), dtype=np.int64)
    top_val = np.empty((n, kmax), dtype=weights.dtype)
    top_n = np.zeros(n, dtype=np.int64)
    because = np.empty((n, kmax, n_because), dtype=np.int64)
    failed = np.zeros(n, dtype=np.bool_)
    _history_top_k(
        history.indptr, history.indices, history.data, weights,
        np.asarray(rows, dtype=np.int64), np.asarray(ks, dtype=np.int64), np.asarray(exclude, dtype=np.bool_),
        np.asarray(explain, dtype=np.bool_), top_idx, top_val, top_n, because, failed,
    )  # fmt: skip
    out: list[tuple[np.ndarray, np.ndarray, list[list[int]] | None] | None] = []
    for r, (count, bad, wanted) in enumerate(zip(top_n.tolist(), failed.tolist(), explain, strict=True)):
        if bad:
            out.append(None)
            continue
        named = None
        if wanted:
            named = [[j for j in b if j >= 0] for b in because[r, :count].tolist()]
        out.append((top_idx[r, :count], top_val[r, :count], named))
    return out
