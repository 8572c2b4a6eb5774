"""RP3beta: the contract suite plus the random-walk matrix against a dense reference."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pytest

from contracts.recommender import RecommenderContract
from tastebud.data.dataset import Dataset
from tastebud.models.rp3beta import RP3betaRecommender


class TestRP3beta(RecommenderContract):
    model_name = "rp3beta"
    explains = True
    bad_params: ClassVar[list[dict[str, Any]]] = [{"alpha": -0.1}, {"beta": -1.0}, {"n_neighbors": 0}]

    def make_model(self, **params: Any) -> RP3betaRecommender:
        return RP3betaRecommender(**{"n_neighbors": 10, **params})


def _dense_rp3beta(x: np.ndarray, alpha: float, beta: float, k: int) -> np.ndarray:
    """The definition with dense arrays: walk, penalty, no diagonal, top-k per row, rows summing to 1."""
    p_ui = (x / x.sum(axis=1, keepdims=True)) ** alpha
    p_iu = (x.T / x.T.sum(axis=1, keepdims=True)) ** alpha
    w = p_iu @ p_ui * x.sum(axis=0)[None, :] ** -beta
    np.fill_diagonal(w, 0.0)
    for row in w:
        row[np.argsort(-row, kind="stable")[k:]] = 0.0
    return w / w.sum(axis=1, keepdims=True)


@pytest.mark.parametrize(("alpha", "beta"), [(1.0, 0.0), (0.8, 0.6), (0.5, 1.2)])
def test_matrix_matches_the_dense_definition(toy_dataset: Dataset, alpha: float, beta: float) -> None:
    x = toy_dataset.matrix("binary", dtype=np.float64).toarray()
    full = RP3betaRecommender(alpha=alpha, beta=beta, n_neighbors=25, normalize=False).fit(toy_dataset)
    want = _dense_rp3beta(x, alpha, beta, 25)
    got = full.similarity_.toarray()
    np.testing.assert_allclose(got / got.sum(axis=1, keepdims=True), want, rtol=1e-5, atol=1e-7)
    # top-k keeps each row's k largest entries (ties may go either way), then rows sum to 1
    top = RP3betaRecommender(alpha=alpha, beta=beta, n_neighbors=8).fit(toy_dataset).similarity_
    assert (top.getnnz(axis=1) <= 8).all()
    np.testing.assert_allclose(np.asarray(top.sum(axis=1)).ravel(), 1.0, rtol=1e-5)
    for i in range(len(got)):
        kept = top[i].indices
        dropped = np.setdiff1d(np.arange(len(got)), kept)
        assert got[i, kept].min() >= got[i, dropped].max() - 1e-6


def test_beta_demotes_popular_items(toy_dataset: Dataset) -> None:
    """A stronger popularity penalty lowers the average popularity of what is recommended."""
    popularity = np.asarray(toy_dataset.user_item.sum(axis=0)).ravel()
    lookup = toy_dataset.items.lookup
    users = toy_dataset.users.ids.tolist()

    def mean_popularity(beta: float) -> float:
        recs = RP3betaRecommender(beta=beta, n_neighbors=25).fit(toy_dataset).recommend(users, k=3)
        return float(np.mean([popularity[lookup[i]] for row in recs.item_ids for i in row]))

    assert mean_popularity(1.0) < mean_popularity(0.0)
