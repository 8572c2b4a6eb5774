"""BPR: the contract suite plus the bias column implicit adds."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from contracts.recommender import FactorRecommenderContract
from tastebud.data.dataset import Dataset
from tastebud.models.bpr import BPRRecommender


class TestBPR(FactorRecommenderContract):
    model_name = "bpr"
    bad_params: ClassVar[list[dict[str, Any]]] = [
        {"factors": 0},
        {"learning_rate": 0.0},
        {"iterations": -1},
        {"regularization": -0.1},
    ]
    min_hit_rate = 0.4

    def make_model(self, **params: Any) -> BPRRecommender:
        # one thread: multi-threaded BPR updates race and are not reproducible
        defaults = {"factors": 8, "iterations": 60, "learning_rate": 0.05, "num_threads": 1}
        return BPRRecommender(**{**defaults, **params})


def test_factors_carry_bias_column(toy_dataset: Dataset) -> None:
    model = BPRRecommender(factors=5, iterations=5, num_threads=1).fit(toy_dataset)
    assert model.n_dims == 6
    np.testing.assert_array_equal(model.user_factors_[:, -1], 1.0)
