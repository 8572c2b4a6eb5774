"""Recency weighting of training interactions (``recency_half_life_days``): the weights and their effect."""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
import pytest

from tastebud.data.dataset import Dataset
from tastebud.errors import DataValidationError
from tastebud.models import create
from tastebud.models._training import recency_weights, training_matrix

DAY = 86_400
NOW = 1_700_000_000


@pytest.fixture(scope="module")
def two_tastes() -> Dataset:
    """Ten users pair item X with P, ten pair Y with Q (all recent); ``me`` has X long ago and Y recently.

    Without recency, ``me``'s history is symmetric between the two groups, so P and Q score alike; with it,
    the recent Y should pull Q above P.
    """
    rows: list[tuple[str, str, int]] = []
    for g, (a, b) in enumerate((("X", "P"), ("Y", "Q"))):
        for u in range(10):
            rows += [(f"g{g}u{u}", a, NOW), (f"g{g}u{u}", b, NOW)]
            rows += [(f"g{g}u{u}", f"f{(u + g) % 6}", NOW)]  # shared filler keeps the graph connected
    rows += [("me", "X", NOW - 400 * DAY), ("me", "Y", NOW)]
    frame = pl.DataFrame(rows, schema=["user_id", "item_id", "timestamp"], orient="row")
    return Dataset.from_frame(frame, name="two-tastes")


MODELS: dict[str, dict[str, Any]] = {
    "itemknn": {"n_neighbors": 10, "weighting": "cosine", "num_threads": 1},
    "ease": {"l2": 1.0},
    "rp3beta": {"n_neighbors": 10, "beta": 0.0},
    "slim": {"alpha": 0.001, "num_threads": 1},
    "als": {"factors": 4, "iterations": 15, "regularization": 0.1, "alpha": 10.0, "num_threads": 1, "use_cg": False},
}


def _margin(model_name: str, data: Dataset, **params: Any) -> float:
    """``me``'s score for Q minus their score for P."""
    model = create(model_name, **MODELS[model_name], **params).fit(data)
    recs = model.recommend(["me"], k=data.n_items)
    scores = dict(recs.row(0))
    return scores["Q"] - scores["P"]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_newer_interaction_weighs_more(name: str, two_tastes: Dataset) -> None:
    plain = _margin(name, two_tastes)
    recent = _margin(name, two_tastes, recency_half_life_days=100.0)
    assert abs(plain) < 1e-3 or name == "als"  # symmetric history (ALS: up to its random start)
    assert recent > 0.0, f"{name}: Q (like the recent Y) should beat P (like the old X)"
    assert recent > plain + 1e-3


def test_weights_halve_every_half_life(two_tastes: Dataset) -> None:
    w = recency_weights(two_tastes, half_life_days=100.0)
    ts = two_tastes.interactions["timestamp"].to_numpy()
    np.testing.assert_allclose(w[ts == NOW], 1.0)
    np.testing.assert_allclose(w[ts == NOW - 400 * DAY], 0.5**4)


def test_matrix_is_unchanged_without_a_half_life(toy_dataset: Dataset) -> None:
    for column in ("value", "binary", "rating"):
        a = training_matrix(toy_dataset, column)
        b = toy_dataset.matrix(column)
        assert (a != b).nnz == 0


def test_weighted_matrix_multiplies_values(toy_dataset: Dataset) -> None:
    w = recency_weights(toy_dataset, 30.0)
    inter = toy_dataset.interactions
    got = training_matrix(toy_dataset, "rating", half_life_days=30.0, dtype=np.float64)
    want = inter["rating"].to_numpy() * w
    np.testing.assert_allclose(got[inter["user_idx"].to_numpy(), inter["item_idx"].to_numpy()].A1, want, rtol=1e-6)
    binary = training_matrix(toy_dataset, "binary", half_life_days=30.0, dtype=np.float64)
    np.testing.assert_allclose(binary[inter["user_idx"].to_numpy(), inter["item_idx"].to_numpy()].A1, w)


def test_needs_timestamps() -> None:
    data = Dataset.from_frame(pl.DataFrame({"user_id": ["a", "b"], "item_id": ["x", "y"]}))
    with pytest.raises(DataValidationError, match="timestamp"):
        create("ease", recency_half_life_days=10.0).fit(data)


@pytest.mark.parametrize("name", ["als", "bpr", "ease", "itemknn", "rp3beta", "slim"])
def test_option_is_validated(name: str) -> None:
    from tastebud.errors import ParameterError

    with pytest.raises(ParameterError, match="recency_half_life_days"):
        create(name, recency_half_life_days=0.0)
