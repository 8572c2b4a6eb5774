"""User-KNN: the contract suite plus the neighbourhood itself."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pytest

from contracts.recommender import RecommenderContract
from tastebud.data.dataset import Dataset
from tastebud.models.user_knn import UserKNNRecommender


class TestUserKNN(RecommenderContract):
    model_name = "userknn"
    bad_params: ClassVar[list[dict[str, Any]]] = [{"n_neighbors": 0}, {"n_neighbors": -2}]

    def make_model(self, **params: Any) -> UserKNNRecommender:
        return UserKNNRecommender(**{"n_neighbors": 15, **params})


def test_neighbors_are_the_most_similar_other_users(toy_dataset: Dataset) -> None:
    k = 4
    model = UserKNNRecommender(n_neighbors=k).fit(toy_dataset)
    x = toy_dataset.matrix("value").toarray().astype(np.float64)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    neighbors = model.neighbors_
    for u in range(toy_dataset.n_users):
        row = neighbors[u]
        assert u not in row.indices and len(row.indices) <= k
        kth = np.sort(sims[u])[::-1][min(k, int((sims[u] > 0).sum())) - 1]
        assert (sims[u, row.indices] >= kth - 1e-6).all()
        np.testing.assert_allclose(row.data, sims[u, row.indices], rtol=1e-5)


def test_scores_are_neighbour_votes(toy_dataset: Dataset) -> None:
    model = UserKNNRecommender(n_neighbors=5).fit(toy_dataset)
    user = str(toy_dataset.users.ids[6])
    expected = (model.neighbors_[6] @ toy_dataset.matrix("value")).toarray().ravel()
    for item, score in model.recommend([user], k=5).row(0):
        assert score == pytest.approx(expected[toy_dataset.item_index([item])[0]], rel=1e-5)
