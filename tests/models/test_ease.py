"""EASE: the contract suite plus the closed form itself."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pytest

from contracts.recommender import RecommenderContract
from tastebud.data.dataset import Dataset
from tastebud.models.ease import EASERecommender


class TestEASE(RecommenderContract):
    model_name = "ease"
    explains = True
    bad_params: ClassVar[list[dict[str, Any]]] = [{"l2": 0.0}, {"l2": -5.0}]

    def make_model(self, **params: Any) -> EASERecommender:
        return EASERecommender(**{"l2": 5.0, **params})


def test_weights_solve_the_constrained_least_squares(toy_dataset: Dataset) -> None:
    """B has a zero diagonal and satisfies the optimality condition of Steck (2019), eq. 4-8."""
    lam = 3.0
    model = EASERecommender(l2=lam).fit(toy_dataset)
    b = model.weights_.astype(np.float64)
    x = toy_dataset.matrix("binary", dtype=np.float64).toarray()
    assert b.dtype == np.float64 and model.weights_.dtype == np.float32
    np.testing.assert_array_equal(np.diag(b), 0.0)
    # gradient of ||X - XB||² + λ||B||² is 2(GB - G + λB) with G = XᵀX; off the diagonal it must vanish,
    # on the diagonal it equals the Lagrange multipliers
    g = x.T @ x
    grad = g @ b - g + lam * b
    off = ~np.eye(len(b), dtype=bool)
    assert np.abs(grad[off]).max() < 1e-3


def test_scores_are_user_rows_times_weights(toy_dataset: Dataset) -> None:
    model = EASERecommender(l2=10.0).fit(toy_dataset)
    user = str(toy_dataset.users.ids[4])
    recs = model.recommend([user], k=5)
    x = toy_dataset.matrix("binary").toarray()[4]
    expected = x @ model.weights_
    for item, score in recs.row(0):
        assert score == pytest.approx(expected[toy_dataset.item_index([item])[0]], rel=1e-5, abs=1e-6)
