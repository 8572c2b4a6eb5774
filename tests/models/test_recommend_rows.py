"""``recommend_rows`` (a serving batch) ranks every user as ``recommend_row`` does, one user at a time.

The factor models score a batch with one matrix-matrix product, and EASE with one sparse-dense product, which sum
each score's terms in another order than the one-user product: scores may differ in their last bits, so those
lists are compared with a tolerance (same scores within 1e-5 relative, position by position; the same items,
except that items whose scores are that close may trade places). Batches below ``GEMM_MIN_ROWS`` and the models
without a batched product (the generic default loops over ``recommend_row``) must match exactly.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp

from tastebud.data.dataset import Dataset, IdMap
from tastebud.data.synthetic import generate_synthetic
from tastebud.errors import ParameterError
from tastebud.models import create
from tastebud.models._factors import GEMM_MIN_ROWS
from tastebud.models.als import ALSRecommender
from tastebud.models.base import RankedRow, Recommender

RTOL, ATOL = 1e-5, 1e-6
MODELS = {
    "als": {"factors": 8, "iterations": 4, "random_state": 1, "num_threads": 1},
    "bpr": {"factors": 8, "iterations": 4, "random_state": 1, "num_threads": 1},
    "ease": {},
    "itemknn": {},
    "svd": {"factors": 8},  # no recommend_row of its own: the base class's default, through recommend
}


@pytest.fixture(scope="module")
def data() -> Dataset:
    """80 users x 60 items, plus a user who interacted with every item and one with only two."""
    base = generate_synthetic(80, 60, 1500, seed=7)
    frame = base.to_frame().select("user_id", "item_id", "rating")
    items = base.items.ids.tolist()
    extra = pl.DataFrame({
        "user_id": ["everything"] * len(items) + ["two", "two"],
        "item_id": [str(i) for i in items] + [str(items[0]), str(items[1])],
        "rating": [4.0] * (len(items) + 2),
    })  # fmt: skip
    return Dataset.from_frame(pl.concat([frame, extra.cast(frame.schema)]), items=base.item_meta)


@pytest.fixture(scope="module")
def fitted(data: Dataset) -> dict[str, Recommender]:
    return {name: create(name, **params).fit(data) for name, params in MODELS.items()}


def tie_groups(scores: np.ndarray) -> list[np.ndarray]:
    """Positions of runs of scores within the tolerance of their neighbour (best first, as ranked)."""
    if not len(scores):
        return []
    close = np.abs(np.diff(scores)) <= ATOL + RTOL * np.abs(scores[1:])
    return np.split(np.arange(len(scores)), np.flatnonzero(~close) + 1)


def assert_same_ranking(alone: RankedRow, batched: RankedRow, *, exact: bool) -> None:
    if exact:
        assert np.array_equal(alone.items, batched.items), (alone.items, batched.items)
        assert np.array_equal(alone.scores, batched.scores)
        assert alone.because == batched.because
        return
    assert len(alone.items) == len(batched.items)
    np.testing.assert_allclose(batched.scores, alone.scores, rtol=RTOL, atol=ATOL)
    groups = tie_groups(np.asarray(alone.scores, dtype=np.float64))
    for g in groups[:-1]:  # the last group may hold other tied items beyond the list's end
        assert set(alone.items[g].tolist()) == set(batched.items[g].tolist())
    if alone.because is not None:
        assert batched.because is not None
        mine = dict(zip(alone.items.tolist(), alone.because, strict=True))
        for item, because in zip(batched.items.tolist(), batched.because, strict=True):
            if item in mine:
                assert because == mine[item], item


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("exclude_seen", [True, False])
@pytest.mark.parametrize("k", [5, 100])  # 100: more than the 60 items
def test_batched_rows_equal_one_row_results(
    fitted: dict[str, Recommender], data: Dataset, name: str, exclude_seen: bool, k: int
) -> None:
    model = fitted[name]
    rows = np.arange(data.n_users)
    explain = name != "svd"  # SVD cannot explain
    batched = model.recommend_rows(rows, k, exclude_seen=exclude_seen, explain=explain)
    assert len(batched) == len(rows)
    batched_product = name in ("als", "bpr", "ease")
    for u, got in zip(rows.tolist(), batched, strict=True):
        alone = model.recommend_row(u, k, exclude_seen=exclude_seen, explain=explain)
        assert_same_ranking(alone, got, exact=not batched_product)
        if exclude_seen:
            lo, hi = model.seen_.indptr[u], model.seen_.indptr[u + 1]
            assert not set(got.items.tolist()) & set(model.seen_.indices[lo:hi].tolist())
    everything = data.users.lookup["everything"]
    n_items = len(model.items_)  # type: ignore[arg-type]
    assert len(batched[everything].items) == (0 if exclude_seen else min(k, n_items))
    assert len(batched[data.users.lookup["two"]].items) == min(k, n_items - (2 if exclude_seen else 0))


@pytest.mark.parametrize("name", ["als", "bpr", "ease"])
def test_small_batches_take_the_one_row_path_exactly(fitted: dict[str, Recommender], name: str) -> None:
    model = fitted[name]
    rows = [3, 1, 4, 1, 5][: GEMM_MIN_ROWS - 1]
    for u, got in zip(rows, model.recommend_rows(rows, 7, explain=True), strict=True):
        assert_same_ranking(model.recommend_row(u, 7, explain=True), got, exact=True)


def test_per_row_arguments_and_repeated_users(fitted: dict[str, Recommender], data: Dataset) -> None:
    model = fitted["als"]
    rows = [0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 0]
    ks = [1, 3, 5, 60, 10, 2, 9, 4, 8, 7, 100]
    excl = [True, False] * 5 + [True]
    expl = [False, True, True] * 3 + [False, True]
    got = model.recommend_rows(rows, ks, exclude_seen=excl, explain=expl)
    for u, k, e, x, row in zip(rows, ks, excl, expl, got, strict=True):
        assert (row.because is not None) == x
        assert_same_ranking(model.recommend_row(u, k, exclude_seen=e, explain=x), row, exact=False)


def test_ties_and_masked_items_with_duplicated_item_factors() -> None:
    """Items with identical factors tie exactly in both products; masked (seen) items never come back."""
    rng = np.random.default_rng(0)
    n_users, n_items, d = 40, 300, 16
    base = rng.normal(size=(30, d)).astype(np.float32)
    item_factors = base[rng.integers(0, 30, n_items)]  # every score shared by about 10 items
    user_factors = rng.normal(size=(n_users, d)).astype(np.float32)
    seen = sp.random(n_users, n_items, density=0.3, random_state=1, format="csr", dtype=np.float32)
    seen.data[:] = 1.0
    users, items = IdMap([f"u{i:02d}" for i in range(n_users)]), IdMap([f"i{i:03d}" for i in range(n_items)])
    model = ALSRecommender.from_factors(user_factors, item_factors, seen, users, items, factors=d)
    rows = np.arange(n_users)
    for k in (1, 10, 25, 400):
        for exclude in (True, False):
            batched = model.recommend_rows(rows, k, exclude_seen=exclude)
            for u, got in zip(rows.tolist(), batched, strict=True):
                alone = model.recommend_row(u, k, exclude_seen=exclude)
                assert_same_ranking(alone, got, exact=False)
                if exclude:
                    assert not set(got.items.tolist()) & set(seen[u].indices.tolist())
                    assert len(got.items) == min(k, n_items - seen[u].nnz)


def test_bad_arguments_are_clear_errors(fitted: dict[str, Recommender], data: Dataset) -> None:
    for name in ("als", "ease"):
        model = fitted[name]
        with pytest.raises(ParameterError, match="outside"):
            model.recommend_rows([0, data.n_users], 5)
        with pytest.raises(ParameterError, match="outside"):
            model.recommend_rows([-1] * 8, 5)
        with pytest.raises(ParameterError, match="k must be"):
            model.recommend_rows(list(range(8)), 0)
        with pytest.raises(ParameterError, match="k: 2 values for 8 rows"):
            model.recommend_rows(list(range(8)), [5, 5])
    assert fitted["als"].recommend_rows([], 5) == []


def test_ease_batch_scores_are_the_sparse_product_and_explain_by_the_users_items(
    fitted: dict[str, Recommender], data: Dataset
) -> None:
    """EASE's batch ranks ``x_u B`` (computed here in float64 from the whole matrices) and explains each item by the
    user's items with the largest positive ``x_uj B[j, i]``; its lists differ from the one-user path only in ties."""
    model = fitted["ease"]
    rows = np.arange(0, data.n_users, 3)
    weights = model.weights_.astype(np.float64)  # type: ignore[attr-defined]
    full = model.seen_[rows].astype(np.float64) @ weights
    batched = model.recommend_rows(rows, 6, explain=True)
    for r, u in enumerate(rows.tolist()):
        got = batched[r]
        lo, hi = model.seen_.indptr[u], model.seen_.indptr[u + 1]
        hist = model.seen_.indices[lo:hi]
        np.testing.assert_allclose(got.scores, full[r, got.items], rtol=1e-5, atol=1e-6)
        rest = np.setdiff1d(np.arange(full.shape[1]), np.concatenate([hist, got.items]))
        if len(got.items) and len(rest):
            assert full[r, rest].max() <= got.scores.min() + 1e-5  # nothing left out scores higher
        assert got.because is not None
        for item, because in zip(got.items.tolist(), got.because, strict=True):
            contrib = weights[hist, item] * model.seen_.data[lo:hi]
            best = [int(hist[j]) for j in np.argsort(-contrib, kind="stable")[:3] if contrib[j] > 0]
            assert because == best, (u, item)
