"""Ranking without copying each score chunk: a factor model's scores are a fresh matrix product, so excluded
items are masked in it directly. The lists must be those of the copying path, and a model whose scores may be
shared (an override of ``_score``) must still get a copy."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from tastebud.data.synthetic import generate_synthetic
from tastebud.models import _scoring as sc
from tastebud.models.als import ALSRecommender


def _exclude(rng: np.random.Generator, n_rows: int, n_items: int) -> sp.csr_matrix:
    dense = rng.random((n_rows, n_items)) < 0.2
    return sp.csr_matrix(dense.astype(np.float32))


def test_fresh_scores_rank_equals_the_copying_rank() -> None:
    rng = np.random.default_rng(4)
    users, items = rng.normal(size=(300, 8)).astype(np.float32), rng.normal(size=(900, 8)).astype(np.float32)
    rows = np.arange(300)
    exclude = _exclude(rng, 300, 900)

    def score(r: np.ndarray, cols: np.ndarray | None) -> np.ndarray:
        return users[r] @ (items if cols is None else items[cols]).T

    cands = np.unique(rng.choice(900, 400))
    for c in (None, cands):
        # max_cells: several chunks, so masking in place must not leak between them
        old = sc.rank(score, rows, 10, n_items=900, exclude=exclude, candidates=c, max_cells=50_000)
        new = sc.rank(score, rows, 10, n_items=900, exclude=exclude, candidates=c, max_cells=50_000, fresh_scores=True)
        assert len(old[0]) == len(new[0]) == 300
        for a, b, sa, sb in zip(old[0], new[0], old[1], new[1], strict=True):
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(sa, sb)
        # the reference: every excluded item dropped, best first
        dense = score(rows, c)
        for u in (0, 123, 299):
            allowed = np.arange(900) if c is None else c
            keep = exclude[u].toarray().ravel()[allowed] == 0
            ref = allowed[keep][np.argsort(-dense[u][keep], kind="stable")[:10]]
            np.testing.assert_array_equal(np.sort(new[0][u]), np.sort(ref))


def test_shared_or_read_only_scores_are_copied_even_when_said_fresh() -> None:
    rng = np.random.default_rng(5)
    table = rng.normal(size=(20, 50)).astype(np.float32)
    table.flags.writeable = False
    exclude = _exclude(rng, 20, 50)
    idx, _ = sc.rank(lambda r, c: table[r], np.arange(20), 5, n_items=50, exclude=exclude, fresh_scores=True)
    assert all(not exclude[u, i] for u, row in enumerate(idx) for i in row)
    assert np.isfinite(table).all()  # a read-only array is never masked in place


def test_factor_models_rank_without_copies_only_with_their_own_score() -> None:
    ds = generate_synthetic(120, 70, 1500, seed=2, name="fresh")
    model = ALSRecommender(factors=8, iterations=3, random_state=0).fit(ds)
    assert model._fresh_scores()
    seen = model.seen_.toarray()
    before = model.item_factors_.copy()
    users = list(model.users_.ids[:40])
    recs = model.recommend(users, 10)
    np.testing.assert_array_equal(model.item_factors_, before)
    rows = model.users_.index(users, kind="user")
    ref = sc.rank(model._score, rows, 10, n_items=len(model.items_), exclude=model.seen_[rows])
    for u, got, want in zip(rows, recs.item_ids, ref[0], strict=True):
        assert got == [str(model.items_.ids[i]) for i in want]
        assert not seen[u, model.items_.index(got, kind="item")].any()

    class Cached(ALSRecommender):
        def _score(self, rows: np.ndarray, cols: np.ndarray | None) -> np.ndarray:
            return super()._score(rows, cols)

    assert not Cached(factors=8)._fresh_scores()
