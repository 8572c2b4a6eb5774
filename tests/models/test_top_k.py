"""``top_k``'s block-bound path gives exactly what one full partition of every row gives."""

from __future__ import annotations

import numpy as np
import pytest

from tastebud.models.base import _top_k_full, top_k


def _same(scores: np.ndarray, k: int) -> None:
    fast_idx, fast_val = top_k(scores.copy(), k)
    full_idx, full_val = _top_k_full(scores.copy(), min(k, scores.shape[1]))
    assert fast_idx.dtype == full_idx.dtype and fast_val.dtype == full_val.dtype
    np.testing.assert_array_equal(fast_idx, full_idx)
    np.testing.assert_array_equal(fast_val, full_val)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k", [1, 10, 37])
def test_distinct_scores_on_a_wide_catalog(dtype: type, k: int) -> None:
    rng = np.random.default_rng(k)
    scores = rng.normal(size=(50, 20_000 + 77)).astype(dtype)  # a tail past the last whole block
    _same(scores, k)
    _, val = top_k(scores, k)
    # best first, and no other score beats the k-th
    assert np.all(np.diff(val, axis=1) <= 0)
    assert np.all(np.sort(scores, axis=1)[:, -k] == val[:, -1])


def test_ties_seen_items_nan_and_constant_rows() -> None:
    rng = np.random.default_rng(3)
    n = 9_000
    pop = rng.integers(0, 400, size=n).astype(np.float64)  # heavy ties, as popularity counts have
    scores = np.tile(pop, (40, 1))
    scores[rng.random(scores.shape) < 0.3] = -np.inf  # seen items
    scores[5] = 0.0  # every score equal (a user with an empty profile)
    scores[6, : n - 3] = -np.inf  # fewer finite scores than k
    scores[7, 100] = np.nan
    scores[8, -1] = np.nan  # in the tail
    scores[9] = rng.normal(size=n)
    scores[9, [10, 2_000]] = scores[9].max() + 1.0  # a tie at the very top
    for k in (1, 5, 10, 17):
        _same(scores, k)


def test_small_catalogs_and_edge_shapes() -> None:
    rng = np.random.default_rng(5)
    for n_rows, n_cols, k in [(0, 10_000, 10), (3, 1, 5), (4, 300, 10), (2, 5_000, 5_000), (2, 5_000, 7_000)]:
        _same(rng.normal(size=(n_rows, n_cols)), k)
    _same(rng.integers(0, 9, size=(6, 6_000)), 3)  # integer scores take the full partition
