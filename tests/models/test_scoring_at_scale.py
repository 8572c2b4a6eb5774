"""The one-user serving path at catalog sizes where its shortcuts apply, against the plain computation.

``rank_one`` finds the top k of a large score vector through a block-maximum bound instead of one
``argpartition``; ALS keeps the inverses ``W_u⁻¹`` of its longest histories when not every user's fits the
explanation cache. Both must give what the unoptimised path gives: the same items in the same order (ties aside)
and the same explanations.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp

from tastebud.data.dataset import IdMap
from tastebud.models import _scoring as sc
from tastebud.models.als import ALSRecommender
from tastebud.serving.engine import Engine


def _plain_rank_one(scores: np.ndarray, k: int, seen: np.ndarray, cands: np.ndarray | None) -> list[int]:
    """The reference: mask the seen items, sort every score (best first, the lower index on ties)."""
    scores = scores.astype(np.float64)
    if cands is None:
        scores[seen] = -np.inf
        order = np.argsort(-scores, kind="stable")[:k]
        return [int(i) for i in order if scores[i] > -np.inf]
    keep = ~np.isin(cands, seen)
    masked = np.where(keep, scores, -np.inf)
    order = np.argsort(-masked, kind="stable")[:k]
    return [int(cands[i]) for i in order if masked[i] > -np.inf]


@pytest.mark.parametrize("n", [50, 5_000, 20_000, 60_001])
@pytest.mark.parametrize("k", [1, 10, 100])
def test_top_positions_is_the_argpartition_set(n: int, k: int) -> None:
    rng = np.random.default_rng(n + k)
    scores = rng.normal(size=n).astype(np.float32)
    scores[rng.choice(n, n // 3, replace=False)] = -np.inf  # seen items
    kk = min(k, n)
    got = sc.top_positions(scores.copy(), kk)
    want = np.argpartition(scores, n - kk)[n - kk :]
    assert len(got) == kk
    assert sorted(got.tolist()) == sorted(want.tolist())


def test_top_positions_when_the_best_items_share_one_block() -> None:
    """The k best all in one block (the bound then comes from other blocks' maxima) and in the tail."""
    n, k = 10_000 + 37, 10
    scores = np.zeros(n, dtype=np.float32)
    scores[256 : 256 + k] = np.arange(100, 100 + k)
    assert sorted(sc.top_positions(scores, k).tolist()) == list(range(256, 256 + k))
    scores = np.zeros(n, dtype=np.float32)
    scores[-5:] = 50.0  # past the last whole block
    scores[3] = 40.0
    assert set(sc.top_positions(scores, 6).tolist()) == {3, *range(n - 5, n)}


def test_top_positions_with_fewer_finite_scores_than_k() -> None:
    scores = np.full(20_000, -np.inf, dtype=np.float32)
    scores[[5, 9_000]] = [1.0, 2.0]
    idx, val = sc.rank_one(scores, 10, np.empty(0, dtype=np.int64), None)
    assert idx.tolist() == [9_000, 5]
    assert val.tolist() == [2.0, 1.0]


@pytest.mark.parametrize("n_items", [60_000, 9_000])
def test_rank_one_ranks_like_a_full_sort(n_items: int) -> None:
    rng = np.random.default_rng(3)
    for trial in range(20):
        scores = rng.normal(size=n_items).astype(np.float32)
        seen = np.sort(rng.choice(n_items, rng.integers(0, 3_000), replace=False))
        cands = None if trial % 2 else np.sort(rng.choice(n_items, n_items // 2, replace=False))
        k = [10, 100, 1][trial % 3]
        want = _plain_rank_one(scores if cands is None else scores[cands], k, seen, cands)
        got, values = sc.rank_one((scores if cands is None else scores[cands]).copy(), k, seen, cands)
        assert got.tolist() == want
        assert values.tolist() == scores[got].tolist()


@pytest.fixture(scope="module")
def long_tail_als() -> ALSRecommender:
    """ALS from factors: 400 users (histories of 3 to 600 items, log-normal), 12,000 items, d=8."""
    rng = np.random.default_rng(5)
    n_users, n_items, d = 400, 12_000, 8
    lengths = np.clip(rng.lognormal(3.0, 1.3, n_users), 3, 600).astype(np.int64)
    lengths[0] = 600
    rows, cols = [], []
    for u, n in enumerate(lengths.tolist()):
        rows += [u] * n
        cols += rng.choice(n_items, n, replace=False).tolist()
    values = rng.integers(1, 6, len(rows)).astype(np.float32)
    seen = sp.csr_matrix((values, (rows, cols)), shape=(n_users, n_items))
    users = IdMap([f"u{u:04d}" for u in range(n_users)])
    items = IdMap([f"i{i:05d}" for i in range(n_items)])
    x = rng.normal(size=(n_users, d)).astype(np.float32)
    y = rng.normal(size=(n_items, d)).astype(np.float32) * 0.3
    return ALSRecommender.from_factors(x, y, seen, users, items, factors=d, alpha=4.0, regularization=2.0)


def test_partial_inverse_cache_explains_like_a_solve_per_request(
    long_tail_als: ALSRecommender, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With room for 50 inverses, the 50 longest histories get one; every explanation is the per-request one."""
    from tastebud.models import als

    model = long_tail_als
    d = model.n_dims
    monkeypatch.setattr(als, "EXPLAIN_CACHE_BYTES", 0)
    model._cache_explanations()
    assert model.explain_rows_ is None and model.user_inv_ is None and model.inv_slot_ is None
    users = list(range(0, 400, 7))  # user 0 has the longest history
    reference = {u: model.recommend_row(u, 10, explain=True) for u in users}

    monkeypatch.setattr(als, "EXPLAIN_CACHE_BYTES", 50 * d * d * 4)
    model._cache_explanations()
    assert model.explain_rows_ is None and model.user_inv_ is not None and model.inv_slot_ is not None
    lengths = np.diff(model.seen_.indptr)
    cached = np.flatnonzero(model.inv_slot_ >= 0)
    assert len(cached) == 50 == len(model.user_inv_)
    assert lengths[cached].min() >= np.sort(lengths)[-50]  # the longest histories
    assert model.inv_slot_[0] >= 0
    for u in users:
        got = model.recommend_row(u, 10, explain=True)
        assert got.items.tolist() == reference[u].items.tolist()
        assert got.because == reference[u].because, f"user {u} (history {lengths[u]})"


def test_partial_cache_leaves_short_histories_out(long_tail_als: ALSRecommender, monkeypatch) -> None:
    """A slot goes only to a history longer than the factor count (shorter ones solve as cheaply per request)."""
    from tastebud.models import als

    model = long_tail_als
    monkeypatch.setattr(als, "EXPLAIN_CACHE_BYTES", len(model.users_) * model.n_dims**2 * 4 - 1)
    model._cache_explanations()
    assert model.inv_slot_ is not None
    lengths = np.diff(model.seen_.indptr)
    assert ((model.inv_slot_ >= 0) == (lengths > model.n_dims)).all()


def test_engine_lists_match_full_scoring(long_tail_als: ALSRecommender) -> None:
    """Served lists (Engine, exclusions and top-k shortcut) equal scoring every item and sorting."""
    model = long_tail_als
    meta = pl.DataFrame({"item_id": model.items_.ids.tolist()})
    engine = Engine(model, {}, meta, result_cache_size=0)
    for u in range(0, 400, 9):
        user = str(model.users_.ids[u])
        served = [it["item_id"] for it in engine.recommend(user, 20, explain=True).items]
        lo, hi = model.seen_.indptr[u], model.seen_.indptr[u + 1]
        scores = model.item_factors_ @ model.user_factors_[u]
        want = _plain_rank_one(scores, 20, model.seen_.indices[lo:hi], None)
        got = np.asarray([model.items_.lookup[i] for i in served])
        assert len(set(got.tolist())) == 20 and not np.isin(got, model.seen_.indices[lo:hi]).any()
        # the same scores in the same order; the served product sums in another order than this matrix-vector
        # product (BLAS kernels differ by CPU), so items whose scores agree to the last bits may swap places
        np.testing.assert_allclose(scores[got], scores[want], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n_items", [50, 1_682, 6_000, 60_001])
def test_rank_rows_ranks_each_row_like_a_full_sort(n_items: int) -> None:
    """A batch ranked at once: per row the items and order of a full sort, whatever k and the seen items.

    50 items: k=100 covers them all, every row takes rank_one; 1,682 and 6,000: too few blocks for k=100, the
    bound is each row's k-th score; 60,001: the block maxima."""
    rng = np.random.default_rng(n_items)
    n_rows = 12
    scores = rng.normal(size=(n_rows, n_items)).astype(np.float32)
    scores[0, :20] = 7.0  # exactly tied best items: any of them may come first (rank_one's rule too)
    ks = [1, 10, 100, 10, 3, 10, 10, 25, 10, 10, 7, 10]
    seen = [np.sort(rng.choice(n_items, int(m), replace=False)) for m in rng.integers(0, n_items // 3, n_rows)]
    seen[1] = np.arange(n_items - 4)  # only 4 unseen items: fewer than k
    seen[2] = np.arange(n_items)  # everything seen
    seen[3] = np.arange(n_items)[: n_items // 2]  # the best block of items all seen
    want = [_plain_rank_one(scores[r], ks[r], seen[r], None) for r in range(n_rows)]
    got = sc.rank_rows(scores.copy(), ks, seen)
    for r, (idx, val) in enumerate(got):
        assert np.array_equal(val, scores[r, idx]), f"row {r}"
        assert val.tolist() == scores[r, want[r]].tolist(), f"row {r}"  # the same scores, best first
        if r == 0:
            assert set(idx.tolist()) <= set(range(20)) and len(set(idx.tolist())) == len(idx)
        else:
            assert idx.tolist() == want[r], f"row {r}"


@pytest.mark.parametrize("n_items", [59_904, 60_000, 60_031])  # 468 whole blocks of 128: no tail, 96 items, 127
def test_rank_rows_answers_ordinary_rows_from_the_block_bound(n_items: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bound from the block maxima answers every row of finite scores itself, the items past the last whole
    block included: no row falls back to rank_one, and the lists are a full sort's."""
    rng = np.random.default_rng(n_items)
    scores = rng.normal(size=(16, n_items)).astype(np.float32)
    tail = n_items // sc.TOP_BLOCK * sc.TOP_BLOCK
    scores[1, tail:] += 10.0  # row 1's best items all lie past the last whole block (when there is a tail)
    seen = [np.sort(rng.choice(n_items, 150, replace=False)) for _ in range(16)]
    want = [_plain_rank_one(scores[r], 10, seen[r], None) for r in range(16)]
    alone = []
    real = sc.rank_one
    monkeypatch.setattr(sc, "rank_one", lambda *args: alone.append(1) or real(*args))
    got = sc.rank_rows(scores.copy(), [10] * 16, seen)
    assert alone == []
    assert [idx.tolist() for idx, _ in got] == want


@pytest.mark.parametrize("n_items", [1_682, 8_000])  # the k-th score's bound, the block maxima
def test_rank_rows_takes_the_one_row_path_for_nan_rows(n_items: int) -> None:
    """A row with NaN scores (no usable bound) still gets rank_one's answer; the other rows are unaffected."""
    rng = np.random.default_rng(3)
    scores = rng.normal(size=(3, n_items)).astype(np.float32)
    scores[1, ::2] = np.nan
    seen = [np.arange(0), np.arange(0), np.arange(10)]
    got = sc.rank_rows(scores.copy(), [10, 10, 10], seen)
    for r in range(3):
        alone = sc.rank_one(scores[r].copy(), 10, seen[r], None)
        assert sorted(got[r][0].tolist()) == sorted(alone[0].tolist()), f"row {r}"


def test_batched_explanations_equal_one_user_at_a_time(
    long_tail_als: ALSRecommender, monkeypatch: pytest.MonkeyPatch
) -> None:
    """_explain_rows (stacked solves for uncached users, cached inverses and cached rows) = _explain_row each."""
    from tastebud.models import als

    model = long_tail_als
    d = model.n_dims
    users = list(range(0, 400, 5))
    recs = [model.recommend_row(u, 10 if u % 3 else 4).items for u in users]  # lists of two lengths
    for budget in (0, 50 * d * d * 4, 1 << 40):  # nothing cached, the longest 50 inverses, every row
        monkeypatch.setattr(als, "EXPLAIN_CACHE_BYTES", budget)
        model._cache_explanations()
        batched = model._explain_rows(users, recs)
        for u, rec, got in zip(users, recs, batched, strict=True):
            assert got == model._explain_row(u, rec), f"user {u}, budget {budget}"
            assert len(got) == len(rec) and all(len(b) <= sc.EXPLAIN_TOP for b in got)
    rows = model.recommend_rows(users, 10, explain=True)
    for u, row in zip(users, rows, strict=True):
        alone = model.recommend_row(u, 10, explain=True)
        assert row.items.tolist() == alone.items.tolist() and row.because == alone.because


def test_top_contributors_many_equals_one_user_at_a_time() -> None:
    """The batch's explanations are top_contributors' user by user: ties (the earlier seen item first), fewer seen
    items than names, empty histories or lists, non-positive, NaN and infinite contributions."""
    rng = np.random.default_rng(8)
    for _ in range(200):
        contribs, seen = [], []
        for _ in range(int(rng.integers(1, 40))):
            h, r = int(rng.choice([0, 1, 2, 3, 5, 70, 200])), int(rng.choice([0, 1, 3, 10]))
            c = rng.normal(size=(h, r))
            if rng.random() < 0.2:
                c = np.round(c)  # many exact ties
            if rng.random() < 0.1:
                c = -np.abs(c)  # nothing explains
            if h and r and rng.random() < 0.05:
                c[0, 0] = np.nan
            if h and r and rng.random() < 0.05:
                c[-1, -1] = np.inf
            contribs.append(c)
            seen.append(np.sort(rng.choice(5_000, h, replace=False)))
        want = [sc.top_contributors(c, s) for c, s in zip(contribs, seen, strict=True)]
        assert sc.top_contributors_many(contribs, seen) == want
