"""ALS: the contract suite plus checks of the confidence convention, fold-in and explanations."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pytest

from contracts.recommender import FactorRecommenderContract, seen_items
from tastebud.data.dataset import Dataset
from tastebud.models.als import ALSRecommender


class TestALS(FactorRecommenderContract):
    model_name = "als"
    explains = True
    bad_params: ClassVar[list[dict[str, Any]]] = [
        {"factors": 0},
        {"factors": -4},
        {"alpha": 0.0},
        {"regularization": -1.0},
        {"iterations": 0},
    ]

    def make_model(self, **params: Any) -> ALSRecommender:
        return ALSRecommender(**{"factors": 8, "iterations": 10, "regularization": 0.1, "alpha": 5.0, **params})


def test_matches_implicit_directly(toy_dataset: Dataset) -> None:
    """Same factors as calling implicit with the same matrix and alpha (alpha applied exactly once)."""
    from implicit.cpu.als import AlternatingLeastSquares

    ours = ALSRecommender(factors=6, iterations=5, alpha=3.0, regularization=0.05, random_state=1).fit(toy_dataset)
    ref = AlternatingLeastSquares(factors=6, iterations=5, alpha=3.0, regularization=0.05, random_state=1)
    ref.fit(toy_dataset.matrix("value"), show_progress=False)
    np.testing.assert_allclose(ours.user_factors_, ref.user_factors, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ours.item_factors_, ref.item_factors, rtol=1e-4, atol=1e-5)


def test_fold_in_matches_implicit_recalculate_user(toy_dataset: Dataset) -> None:
    """fold_in solves the same least squares as implicit's exact ``recalculate_user`` (c = alpha*value)."""
    from implicit.cpu.als import AlternatingLeastSquares

    model = ALSRecommender(factors=6, iterations=10, alpha=4.0, regularization=0.1).fit(toy_dataset)
    ref = AlternatingLeastSquares(factors=6, alpha=4.0, regularization=0.1)
    ref.user_factors, ref.item_factors = model.user_factors_, model.item_factors_
    matrix = toy_dataset.matrix("value")
    for u in (0, 5, 17):
        row = matrix[u]
        vector = model.fold_in(toy_dataset.items.ids[row.indices].tolist(), row.data * 2.0)
        expected = ref.recalculate_user(u, row * 2.0)
        np.testing.assert_allclose(vector, expected, rtol=1e-3, atol=1e-4)
        # after enough iterations the trained vector is (nearly) that solution too
        cosine = vector @ model.user_factors_[u] / np.linalg.norm(vector) / np.linalg.norm(model.user_factors_[u])
        assert cosine > 0.95


def test_explanations_are_the_largest_contributions(toy_dataset: Dataset) -> None:
    """Named items have the largest c_j y_jᵀ W⁻¹ y_i, and all contributions sum to the score."""
    alpha = 4.0
    model = ALSRecommender(factors=6, iterations=10, alpha=alpha, regularization=0.1).fit(toy_dataset)
    user = str(toy_dataset.users.ids[2])
    recs = model.recommend([user], k=3, explain=True)
    assert recs.explanations is not None
    seen = sorted(seen_items(toy_dataset, user))
    idx = toy_dataset.item_index(seen)
    y = model.item_factors_.astype(np.float64)
    ys = y[idx]
    w = y.T @ y + 0.1 * np.eye(6) + (alpha - 1.0) * ys.T @ ys
    for item, reasons in zip(recs.item_ids[0], recs.explanations[0], strict=True):
        i = toy_dataset.item_index([item])[0]
        contrib = alpha * (ys @ np.linalg.solve(w, y[i]))
        assert contrib.sum() == pytest.approx(float(model.fold_in(seen) @ y[i]), rel=1e-3, abs=1e-4)
        best = [seen[j] for j in np.argsort(-contrib, kind="stable") if contrib[j] > 0][:3]
        assert reasons == best


@pytest.mark.parametrize("cache", ["rows", "inverses", "none"])
def test_explanations_do_not_depend_on_what_is_cached(toy_dataset: Dataset, cache: str, monkeypatch) -> None:
    """Per-interaction rows, per-user inverses or a solve per request: the same items explain each item."""
    from tastebud.models import als

    model = ALSRecommender(factors=3, iterations=5, alpha=4.0, regularization=0.1).fit(toy_dataset)
    users = [str(u) for u in toy_dataset.users.ids[:6].tolist()]
    reference = model.recommend(users, k=4, explain=True)
    n, d, nnz = len(model.users_), model.n_dims, model.seen_.nnz
    budget = {"rows": nnz * d * 4, "inverses": n * d * d * 4, "none": 0}[cache]
    if cache == "inverses":
        assert nnz * d * 4 > budget, "the toy data must make the rows larger than the inverses"
    monkeypatch.setattr(als, "EXPLAIN_CACHE_BYTES", budget)
    model.explain_rows_, model.user_inv_, model._inv_cached = None, None, False
    got = model.recommend(users, k=4, explain=True)
    assert (model.explain_rows_ is not None) == (cache == "rows")
    assert (model.user_inv_ is not None) == (cache == "inverses")
    assert got.item_ids == reference.item_ids
    assert got.explanations == reference.explanations


def test_explanations_of_a_system_that_is_not_positive_definite(toy_dataset: Dataset, monkeypatch) -> None:
    """Zero regularization and a factor no item uses: Cholesky fails, least squares still explains each item."""
    from tastebud.models import als

    fitted = ALSRecommender(factors=4, iterations=5, alpha=4.0, regularization=0.1).fit(toy_dataset)
    y = fitted.item_factors_.copy()
    y[:, -1] = 0.0  # YᵀY + Y_uᵀ(C_u − I)Y_u is then singular for every user
    model = ALSRecommender.from_factors(
        fitted.user_factors_, y, fitted.seen_, fitted.users_, fitted.items_, factors=4, alpha=4.0, regularization=0.0
    )
    monkeypatch.setattr(als, "EXPLAIN_CACHE_BYTES", 0)  # no cache: every system is solved per request
    model.explain_rows_, model.user_inv_, model._inv_cached = None, None, False
    users = [str(u) for u in toy_dataset.users.ids[:5].tolist()]
    recs = model.recommend(users, k=3, explain=True)
    assert recs.explanations is not None and model.user_inv_ is None and model.explain_rows_ is None
    y64 = y.astype(np.float64)
    for user, items, reasons in zip(users, recs.item_ids, recs.explanations, strict=True):
        seen = sorted(seen_items(toy_dataset, user))
        idx = toy_dataset.item_index(seen)
        conf = 4.0 * model.seen_[toy_dataset.user_index([user])[0]].toarray()[0][idx]
        ys = y64[idx]
        w = y64.T @ y64 + ys.T @ (ys * (conf - 1.0)[:, None])
        assert np.linalg.matrix_rank(w) < 4
        for item, named in zip(items, reasons, strict=True):
            i = toy_dataset.item_index([item])[0]
            contrib = conf * (ys @ np.linalg.lstsq(w, y64[i], rcond=None)[0])
            assert named == [seen[j] for j in np.argsort(-contrib, kind="stable") if contrib[j] > 0][:3]
