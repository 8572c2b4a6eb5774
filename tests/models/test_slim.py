"""SLIM: the contract suite plus the elastic-net columns themselves."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from contracts.recommender import RecommenderContract
from tastebud.data.dataset import Dataset
from tastebud.models.slim import SLIMRecommender


class TestSLIM(RecommenderContract):
    model_name = "slim"
    explains = True
    bad_params: ClassVar[list[dict[str, Any]]] = [{"alpha": 0.0}, {"l1_ratio": 1.5}, {"n_neighbors": 0}]

    def make_model(self, **params: Any) -> SLIMRecommender:
        return SLIMRecommender(**{"alpha": 0.01, "num_threads": 1, **params})


def test_weights_are_non_negative_with_a_zero_diagonal(toy_dataset: Dataset) -> None:
    w = SLIMRecommender(alpha=0.01).fit(toy_dataset).similarity_.toarray()
    assert (w >= 0).all()
    np.testing.assert_array_equal(np.diag(w), 0.0)
    assert (w > 0).sum() > 0


def test_columns_satisfy_the_elastic_net_optimality_conditions(toy_dataset: Dataset) -> None:
    """KKT of min 1/(2n)‖y - Xw‖² + a·r‖w‖₁ + a(1-r)/2‖w‖² with w >= 0 and w_jj = 0, per column j."""
    alpha, ratio = 0.01, 0.1
    model = SLIMRecommender(alpha=alpha, l1_ratio=ratio, n_neighbors=25, tol=1e-10, max_iter=10_000)
    w = model.fit(toy_dataset).similarity_.toarray().astype(np.float64)
    x = toy_dataset.matrix("binary", dtype=np.float64).toarray()
    n = x.shape[0]
    for j in range(x.shape[1]):
        xz = x.copy()
        xz[:, j] = 0.0
        grad = xz.T @ (xz @ w[:, j] - x[:, j]) / n + alpha * (1 - ratio) * w[:, j]
        active = w[:, j] > 1e-6
        # active weights: the gradient balances the L1 term; inactive ones: it cannot push them above 0
        np.testing.assert_allclose(grad[active], -alpha * ratio, atol=2e-4)
        assert (grad[~active] >= -alpha * ratio - 2e-4).all()


def test_threads_do_not_change_the_weights(toy_dataset: Dataset) -> None:
    one = SLIMRecommender(alpha=0.01, num_threads=1).fit(toy_dataset).similarity_
    two = SLIMRecommender(alpha=0.01, num_threads=2).fit(toy_dataset).similarity_
    np.testing.assert_array_equal(one.toarray(), two.toarray())


def test_n_neighbors_caps_each_column(toy_dataset: Dataset) -> None:
    w = SLIMRecommender(alpha=0.001, n_neighbors=3).fit(toy_dataset).similarity_
    assert (w.getnnz(axis=0) <= 3).all()
