"""Defaults per kind of feedback: ratings, binary data and play counts are told apart, and ALS adapts to them."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from tastebud.data.dataset import Dataset
from tastebud.data.synthetic import generate_synthetic
from tastebud.models import create
from tastebud.models._training import feedback_kind
from tastebud.models.als import ALSConfig


@pytest.fixture(scope="module")
def plays() -> Dataset:
    return generate_synthetic(120, 80, 2500, kind="implicit", seed=3)


def test_kinds_are_recognised(toy_dataset: Dataset, plays: Dataset) -> None:
    assert feedback_kind(toy_dataset) == "ratings"
    assert feedback_kind(plays) == "counts"
    clicks = Dataset.from_frame(pl.DataFrame({"user_id": ["a", "a", "b"], "item_id": ["x", "y", "x"]}))
    assert feedback_kind(clicks) == "binary"


def test_als_takes_the_count_defaults_for_unset_fields(plays: Dataset) -> None:
    model = create("als", factors=8, iterations=2, num_threads=1).fit(plays)
    assert model.config.confidence == "log"
    assert (model.config.alpha, model.config.regularization) == (7.0, 100.0)
    assert model.params()["factors"] == 8  # what the caller set is kept
    assert model.params()["confidence"] == "log"  # and the manifest records what was used


def test_explicit_values_win_over_the_count_defaults(plays: Dataset) -> None:
    model = create("als", factors=8, iterations=2, num_threads=1, alpha=10.0, confidence="linear").fit(plays)
    assert (model.config.alpha, model.config.confidence) == (10.0, "linear")


def test_ratings_keep_the_config_defaults(toy_dataset: Dataset) -> None:
    model = create("als", factors=8, iterations=2, num_threads=1).fit(toy_dataset)
    defaults = ALSConfig()
    assert (model.config.alpha, model.config.confidence) == (defaults.alpha, defaults.confidence)


def test_one_model_refitted_on_other_data_adapts_again(plays: Dataset, toy_dataset: Dataset) -> None:
    model = create("als", factors=8, iterations=2, num_threads=1)
    assert model.fit(plays).config.confidence == "log"
    assert model.fit(toy_dataset).config.confidence == "linear"


def test_log_confidence_is_what_fold_in_uses(plays: Dataset) -> None:
    """Folding in a history solves Hu et al.'s normal equation with confidence ``alpha * log(1 + plays)``."""
    model = create("als", factors=8, iterations=3, num_threads=1, use_cg=False).fit(plays)
    items, values = model.user_history(str(plays.users.ids[5]))
    idx = plays.items.index(items, kind="item")
    y = model.item_factors_.astype(np.float64)
    c, p = np.ones(len(y)), np.zeros(len(y))
    c[idx], p[idx] = 7.0 * np.log1p(values), 1.0
    a = y.T @ (c[:, None] * y) + model.config.regularization * np.eye(y.shape[1])
    want = np.linalg.solve(a, y.T @ (c * p))
    np.testing.assert_allclose(model.fold_in(items, values), want, rtol=1e-4, atol=1e-5)
