"""ALS warm start (``fit_warm``): quality equal to a cold fit, previous vectors carried over by id, new users and
items solved in, fallback to a cold fit, and an ordinary fitted model afterwards."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import polars as pl
import pytest

from tastebud.data.dataset import Dataset
from tastebud.data.split import Split, make_split
from tastebud.data.synthetic import generate_synthetic
from tastebud.errors import ParameterError
from tastebud.evaluation.protocol import evaluate
from tastebud.models.als import ALSRecommender
from tastebud.models.ease import EASERecommender

#: ``confidence`` fixed: the newcomers' rows carry plain values (play counts to ALS), which would pick the log
#: confidence of counts over the toy ratings' linear one, and the closed forms below are written for linear.
PARAMS = {
    "factors": 16,
    "iterations": 15,
    "regularization": 5.0,
    "alpha": 10.0,
    "num_threads": 1,
    "confidence": "linear",
}
#: For the quality comparisons: the default regularization. With a weak one (5) ALS has many local optima on
#: this small data, and which one a fit ends in (cold from the seed, warm from the champion's) moves NDCG@10 by
#: up to 0.02 either way.
QUALITY_PARAMS = {**PARAMS, "regularization": 50.0}


@dataclass
class Retrain:
    """A champion fitted on older data and the merged data (older + events) a retrain fits."""

    champion: ALSRecommender
    merged: Dataset
    split: Split  # train is ``merged``; test the newest interactions of each user


@pytest.fixture(scope="module")
def retrain() -> Retrain:
    """Synthetic implicit data: per user the newest 20% held out; of the rest the newest 15% by time are events."""
    ds = generate_synthetic(400, 200, 12_000, kind="implicit", seed=3)
    outer = make_split(ds, "temporal-user", test_fraction=0.2)
    inner = make_split(outer.train, "temporal-global", test_fraction=0.15)
    champion = ALSRecommender(**QUALITY_PARAMS).fit(inner.train.compact())
    return Retrain(champion, outer.train, outer)


def _rows(ds: Dataset) -> tuple[list[str], list[str], list[float]]:
    inter = ds.interactions
    users = ds.users.ids[inter["user_idx"].to_numpy()].tolist()
    items = ds.items.ids[inter["item_idx"].to_numpy()].tolist()
    return users, items, inter["value"].to_list()


def _with_newcomers(base: Dataset) -> Dataset:
    """``base`` plus new users on known items, new items picked by known users, and a new island of both.

    The new ids sort before the old ones, so every carried-over row moves to another index.
    """
    users, items, values = _rows(base)
    known_users, known_items = base.users.ids[:3].tolist(), base.items.ids[:4].tolist()
    extra = [
        ("0new-user-a", known_items[0], 3.0),
        ("0new-user-a", known_items[1], 1.0),
        ("0new-user-b", known_items[2], 2.0),
        (known_users[0], "0new-item-a", 4.0),
        (known_users[1], "0new-item-a", 1.0),
        (known_users[2], "0new-item-b", 2.0),
        ("0new-user-c", "0new-item-a", 1.0),  # a new user on a new item only
        ("0island-u1", "0island-i1", 2.0),  # users and items the champion cannot say anything about
        ("0island-u1", "0island-i2", 1.0),
        ("0island-u2", "0island-i1", 3.0),
        ("0island-u2", "0island-i3", 1.0),
    ]
    frame = pl.DataFrame(
        {
            "user_id": users + [u for u, _, _ in extra],
            "item_id": items + [i for _, i, _ in extra],
            "value": values + [v for _, _, v in extra],
        }
    )
    return Dataset.from_frame(frame)


def _vectors(model: ALSRecommender, users: list[str], items: list[str]) -> tuple[np.ndarray, np.ndarray]:
    assert model.user_factors_ is not None and model.item_factors_ is not None
    assert model.users_ is not None and model.items_ is not None
    return (
        model.user_factors_[model.users_.index(users, kind="user")],
        model.item_factors_[model.items_.index(items, kind="item")],
    )


def _ndcg(model: ALSRecommender, split: Split) -> float:
    return evaluate(model, split, k=10, n_boot=10).metric("ndcg")


# ---------------------------------------------------------------------- quality
def test_warm_start_reaches_cold_quality(retrain: Retrain) -> None:
    """NDCG@10 on the newest interactions: the default warm start is within 0.01 of a full cold fit."""
    cold = ALSRecommender(**QUALITY_PARAMS).fit(retrain.merged)
    warm = ALSRecommender(**QUALITY_PARAMS).fit_warm(retrain.merged, retrain.champion)
    cold_ndcg, warm_ndcg = _ndcg(cold, retrain.split), _ndcg(warm, retrain.split)
    assert cold_ndcg > 0.1, "the synthetic data must be learnable for the comparison to mean anything"
    assert warm_ndcg == pytest.approx(cold_ndcg, abs=0.01)


def test_warm_start_from_scrambled_factors_is_worse(retrain: Retrain) -> None:
    """With no sweep, the quality comes from the champion's vectors: mismatched ids would lose it."""
    carried = ALSRecommender(**QUALITY_PARAMS).fit_warm(retrain.merged, retrain.champion, iterations=0)
    scrambled = ALSRecommender.from_factors(
        np.random.default_rng(0).permutation(retrain.champion.user_factors_),
        retrain.champion.item_factors_,
        retrain.champion.seen_,
        retrain.champion.users_,
        retrain.champion.items_,
        **QUALITY_PARAMS,
    )
    wrong = ALSRecommender(**QUALITY_PARAMS).fit_warm(retrain.merged, scrambled, iterations=0)
    cold = ALSRecommender(**QUALITY_PARAMS).fit(retrain.merged)
    assert _ndcg(carried, retrain.split) == pytest.approx(_ndcg(cold, retrain.split), abs=0.02)
    assert _ndcg(wrong, retrain.split) < _ndcg(carried, retrain.split) - 0.05


# ---------------------------------------------------------------------- initialisation
def test_zero_iterations_carry_previous_vectors_by_id(toy_dataset: Dataset) -> None:
    """Shared users and items keep the previous vectors exactly, though their indices moved."""
    previous = ALSRecommender(**PARAMS).fit(toy_dataset)
    data = _with_newcomers(toy_dataset)
    warm = ALSRecommender(**PARAMS).fit_warm(data, previous, iterations=0)
    users, items = toy_dataset.users.to_list(), toy_dataset.items.to_list()
    assert not np.array_equal(data.user_index(users), toy_dataset.user_index(users))
    got_users, got_items = _vectors(warm, users, items)
    np.testing.assert_array_equal(got_users, previous.user_factors_)
    np.testing.assert_array_equal(got_items, previous.item_factors_)


def test_sweeps_move_away_from_previous_vectors(toy_dataset: Dataset) -> None:
    """Iterations after the initialisation do train: on new data the shared vectors change."""
    previous = ALSRecommender(**PARAMS).fit(toy_dataset)
    data = _with_newcomers(toy_dataset)
    warm = ALSRecommender(**PARAMS).fit_warm(data, previous, iterations=2)
    got_users, _ = _vectors(warm, toy_dataset.users.to_list(), toy_dataset.items.to_list())
    assert not np.allclose(got_users, previous.user_factors_, atol=1e-4)


def test_new_users_are_solved_against_the_item_factors(toy_dataset: Dataset) -> None:
    """With no sweep, a new user's vector is the exact least-squares solution: what fold_in gives."""
    previous = ALSRecommender(**PARAMS).fit(toy_dataset)
    data = _with_newcomers(toy_dataset)
    warm = ALSRecommender(**PARAMS).fit_warm(data, previous, iterations=0)
    for user in ("0new-user-a", "0new-user-b", "0new-user-c"):
        items, values = warm.user_history(user)
        got, _ = _vectors(warm, [user], [])
        np.testing.assert_allclose(got[0], warm.fold_in(items, values), rtol=1e-3, atol=1e-4)


def test_new_items_are_solved_against_the_carried_user_factors(toy_dataset: Dataset) -> None:
    """With no sweep, a new item's vector solves the item-side least squares against the previous users."""
    previous = ALSRecommender(**PARAMS).fit(toy_dataset)
    data = _with_newcomers(toy_dataset)
    warm = ALSRecommender(**PARAMS).fit_warm(data, previous, iterations=0)
    x = previous.user_factors_.astype(np.float64)  # new users count as zero: only these contribute
    users = toy_dataset.users.ids[:2].tolist()
    xs = x[previous.users_.index(users, kind="user")]
    conf = PARAMS["alpha"] * np.array([4.0, 1.0])
    a = x.T @ x + PARAMS["regularization"] * np.eye(x.shape[1]) + xs.T @ (xs * (conf - 1.0)[:, None])
    expected = np.linalg.solve(a, xs.T @ conf)
    _, got = _vectors(warm, [], ["0new-item-a"])
    np.testing.assert_allclose(got[0], expected, rtol=1e-3, atol=1e-4)


def test_new_users_and_items_get_usable_factors(toy_dataset: Dataset) -> None:
    """After a warm start every newcomer, the island included, has finite non-zero factors and gets recommendations."""
    previous = ALSRecommender(**PARAMS).fit(toy_dataset)
    data = _with_newcomers(toy_dataset)
    warm = ALSRecommender(**PARAMS).fit_warm(data, previous, iterations=3)
    new_users = ["0new-user-a", "0new-user-b", "0new-user-c", "0island-u1", "0island-u2"]
    new_items = ["0new-item-a", "0new-item-b", "0island-i1", "0island-i2", "0island-i3"]
    xu, yi = _vectors(warm, new_users, new_items)
    for vectors in (xu, yi):
        assert np.isfinite(vectors).all()
        assert (np.linalg.norm(vectors, axis=1) > 1e-6).all()
    recs = warm.recommend(new_users, k=5)
    assert all(len(row) == 5 for row in recs.item_ids)
    assert all(np.isfinite(s).all() for s in recs.scores)
    # the island's users know each other's items through the shared one
    assert "0island-i3" in warm.recommend(["0island-u1"], k=3).item_ids[0]
    assert len(warm.similar_items(new_items, k=3)) == len(new_items)


def test_items_with_nothing_to_solve_from_start_small_and_random(toy_dataset: Dataset) -> None:
    """New items no carried-over user picked start like a cold fit (uniform in [0, 0.01)), not at zero.

    Zero would be a fixed point of ALS for an island of new users and items: they would never get factors.
    """
    previous = ALSRecommender(**PARAMS).fit(toy_dataset)
    warm = ALSRecommender(**PARAMS).fit_warm(_with_newcomers(toy_dataset), previous, iterations=0)
    xu, yi = _vectors(warm, ["0island-u1", "0island-u2"], ["0island-i1", "0island-i2", "0island-i3"])
    assert (yi > 0).all() and (yi < 0.01).all()
    assert np.isfinite(xu).all() and (np.abs(xu).max(axis=1) > 0).all()


# ---------------------------------------------------------------------- contract of the method
def test_fit_warm_is_deterministic_and_leaves_previous_unchanged(toy_dataset: Dataset) -> None:
    previous = ALSRecommender(**PARAMS).fit(toy_dataset)
    before = previous.user_factors_.copy(), previous.item_factors_.copy()
    data = _with_newcomers(toy_dataset)
    a = ALSRecommender(**PARAMS).fit_warm(data, previous, iterations=3)
    b = ALSRecommender(**PARAMS).fit_warm(data, previous, iterations=3)
    np.testing.assert_array_equal(a.user_factors_, b.user_factors_)
    np.testing.assert_array_equal(a.item_factors_, b.item_factors_)
    np.testing.assert_array_equal(previous.user_factors_, before[0])
    np.testing.assert_array_equal(previous.item_factors_, before[1])


def test_default_iterations_come_from_the_config(toy_dataset: Dataset) -> None:
    previous = ALSRecommender(**PARAMS).fit(toy_dataset)
    data = _with_newcomers(toy_dataset)
    by_config = ALSRecommender(**PARAMS, warm_iterations=2).fit_warm(data, previous)
    explicit = ALSRecommender(**PARAMS).fit_warm(data, previous, iterations=2)
    other = ALSRecommender(**PARAMS).fit_warm(data, previous, iterations=4)
    np.testing.assert_array_equal(by_config.user_factors_, explicit.user_factors_)
    assert not np.array_equal(by_config.user_factors_, other.user_factors_)


def test_negative_iterations_are_refused(toy_dataset: Dataset) -> None:
    previous = ALSRecommender(**PARAMS).fit(toy_dataset)
    with pytest.raises(ParameterError, match="iterations"):
        ALSRecommender(**PARAMS).fit_warm(toy_dataset, previous, iterations=-1)
    with pytest.raises(ParameterError, match="warm_iterations"):
        ALSRecommender(**PARAMS, warm_iterations=-1)


@pytest.mark.parametrize("kind", ["ease", "other-factors", "unfitted"])
def test_unusable_previous_falls_back_to_a_cold_fit(
    toy_dataset: Dataset, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A previous model that is not a fitted ALS of the same width gives exactly the cold fit, and says why."""
    data = _with_newcomers(toy_dataset)
    previous = {
        "ease": lambda: EASERecommender().fit(toy_dataset),
        "other-factors": lambda: ALSRecommender(**{**PARAMS, "factors": 8}).fit(toy_dataset),
        "unfitted": lambda: ALSRecommender(**PARAMS),
    }[kind]()
    with caplog.at_level(logging.INFO, logger="tastebud.models.als"):
        warm = ALSRecommender(**PARAMS).fit_warm(data, previous, iterations=0)
    cold = ALSRecommender(**PARAMS).fit(data)
    np.testing.assert_array_equal(warm.user_factors_, cold.user_factors_)
    np.testing.assert_array_equal(warm.item_factors_, cold.item_factors_)
    fallbacks = [r for r in caplog.records if r.getMessage() == "als warm start falls back to a cold fit"]
    assert len(fallbacks) == 1
    assert {"ease": "ease", "other-factors": "8 factors", "unfitted": "not fitted"}[kind] in fallbacks[0].reason


def test_save_load_round_trip_after_fit_warm(toy_dataset: Dataset, tmp_path) -> None:
    """A warm-started model saves and loads like any other: same scores, explanations and fold-in."""
    previous = ALSRecommender(**PARAMS).fit(toy_dataset)
    warm = ALSRecommender(**PARAMS).fit_warm(_with_newcomers(toy_dataset), previous, iterations=2)
    warm.save(tmp_path)
    loaded = ALSRecommender.load(tmp_path)
    users = ["0new-user-a", "0island-u1", str(toy_dataset.users.ids[5])]
    a, b = warm.recommend(users, k=5, explain=True), loaded.recommend(users, k=5, explain=True)
    assert a.item_ids == b.item_ids
    assert a.explanations == b.explanations and a.explanations is not None
    for x, y in zip(a.scores, b.scores, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6)
    np.testing.assert_allclose(loaded.fold_in(["0new-item-a"]), warm.fold_in(["0new-item-a"]), rtol=1e-5)
    assert loaded.params() == warm.params()
