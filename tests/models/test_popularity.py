"""Popularity: the contract suite plus counts, value weighting, genres and time decay."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import polars as pl
import pytest

from contracts.recommender import RecommenderContract
from tastebud.data.dataset import Dataset
from tastebud.errors import DataValidationError, ParameterError
from tastebud.models.popularity import PopularityRecommender


class TestPopularity(RecommenderContract):
    model_name = "popular"
    recovers_user_structure = False  # the same list for everyone cannot tell clusters apart
    bad_params: ClassVar[list[dict[str, Any]]] = [{"half_life_days": 0.0}, {"weighting": "clicks"}]

    def make_model(self, **params: Any) -> PopularityRecommender:
        return PopularityRecommender(**params)


class TestTrending(TestPopularity):
    recovers_item_structure = False  # cluster_dataset has no timestamps to decay by

    def make_model(self, **params: Any) -> PopularityRecommender:
        return PopularityRecommender(**{"half_life_days": 30.0, **params})


def test_popular_items_are_counted(toy_dataset: Dataset) -> None:
    model = PopularityRecommender().fit(toy_dataset)
    counts = np.bincount(toy_dataset.interactions["item_idx"].to_numpy(), minlength=toy_dataset.n_items)
    top = model.popular_items(k=5)
    assert top.query_ids == ["*"]
    expected = np.sort(counts)[::-1][:5]
    np.testing.assert_array_equal(top.scores[0], expected)
    for item, score in top.row(0):
        assert counts[toy_dataset.item_index([item])[0]] == score


def test_value_weighting_and_per_genre() -> None:
    frame = pl.DataFrame(
        {
            "user_id": ["a", "b", "c", "a", "b"],
            "item_id": ["x", "x", "x", "y", "z"],
            "value": [1, 1, 1, 10, 2],
        }
    )
    items = pl.DataFrame({"item_id": ["x", "y", "z", "w"], "genres": ["Drama", "Drama|Comedy", "Comedy", "Horror"]})
    data = Dataset.from_frame(frame, items=items)
    assert PopularityRecommender().fit(data).popular_items(k=1).item_ids == [["x"]]
    by_value = PopularityRecommender(weighting="value").fit(data)
    assert by_value.popular_items(k=3).item_ids == [["y", "x", "z"]]
    assert by_value.popular_items(k=5, genre="Comedy").item_ids == [["y", "z"]]
    assert by_value.recommend(["a"], k=5).item_ids == [["z", "w"]]
    with pytest.raises(ParameterError, match="Western"):
        by_value.popular_items(genre="Western")


def test_time_decay_halves_per_half_life() -> None:
    day = 86_400
    frame = pl.DataFrame(
        {
            "user_id": ["a", "b", "c", "d"],
            "item_id": ["old", "old", "new", "mid"],
            "timestamp": [0, 0, 20 * day, 10 * day],
        }
    )
    model = PopularityRecommender(half_life_days=10.0).fit(Dataset.from_frame(frame))
    scores = dict(model.popular_items(k=3).row(0))
    assert scores["new"] == pytest.approx(1.0)
    assert scores["mid"] == pytest.approx(0.5)
    assert scores["old"] == pytest.approx(2 * 0.25)
    assert PopularityRecommender().fit(Dataset.from_frame(frame)).popular_items(k=1).item_ids == [["old"]]


def test_decay_needs_timestamps() -> None:
    frame = pl.DataFrame({"user_id": ["a"], "item_id": ["x"]})
    with pytest.raises(DataValidationError, match="timestamps"):
        PopularityRecommender(half_life_days=7.0).fit(Dataset.from_frame(frame))


def test_similar_items_prefer_shared_genre(toy_dataset: Dataset) -> None:
    model = PopularityRecommender().fit(toy_dataset)
    genres = dict(
        zip(toy_dataset.item_meta["item_id"].to_list(), toy_dataset.item_meta["genres"].to_list(), strict=True)
    )
    query = "i01"  # Action
    sims = model.similar_items([query], k=toy_dataset.n_items).item_ids[0]
    shares = [bool(set(genres[i]) & set(genres[query])) for i in sims]
    assert shares == sorted(shares, reverse=True)  # all same-genre items come first
    assert sum(shares) == sum(bool(set(g) & set(genres[query])) for i, g in genres.items() if i != query)


# ---------------------------------------------------------------------- the ranking of every user at once
def _scored(model: PopularityRecommender, users: list[str], k: int, exclude_seen: bool = True) -> list[list[str]]:
    """Lists as scoring every item for every user gives them (the computation ``recommend`` shortcuts)."""
    assert model.users_ is not None and model.items_ is not None
    rows = model.users_.index(users, kind="user")
    idx, _ = model._rank_scored(rows, k, model.seen_[rows] if exclude_seen else None, None)
    return [[str(x) for x in model.items_.ids[row]] for row in idx]


@pytest.mark.parametrize("k", [1, 3, 10, 40])
def test_recommend_equals_scoring_every_item(k: int) -> None:
    from tastebud.data.synthetic import generate_synthetic

    ds = generate_synthetic(n_users=600, n_items=900, n_interactions=30_000, seed=11)
    model = PopularityRecommender().fit(ds)
    assert model.popularity_ is not None and len(np.unique(model.popularity_)) < ds.n_items  # ties exist
    users = [str(u) for u in ds.users.ids]
    for exclude in (True, False):
        recs = model.recommend(users, k, exclude_seen=exclude)
        assert recs.item_ids == _scored(model, users, k, exclude)
        # scores are the items' popularity, best first
        for ids, scores in zip(recs.item_ids, recs.scores, strict=True):
            np.testing.assert_array_equal(scores, model.popularity_[ds.items.index(ids)])


def test_recommend_users_who_saw_most_of_the_top_and_distinct_counts() -> None:
    rng = np.random.default_rng(2)
    n_items = 700
    # distinct popularity (item i: about 1000 * (i + 1)), so the ranking answers most users directly
    rows = [("src", f"i{i}", 1000.0 * (i + 1)) for i in range(n_items)]
    rows += [("u-heavy", f"i{j}", 1.0) for j in range(n_items - 5)]  # saw all but the five least popular
    rows += [(f"v{u}", f"i{j}", 1.0) for u in range(40) for j in rng.choice(n_items, 30, replace=False)]
    frame = pl.DataFrame(
        {"user_id": [r[0] for r in rows], "item_id": [r[1] for r in rows], "value": [r[2] for r in rows]}
    )
    ds = Dataset.from_frame(frame)
    model = PopularityRecommender(weighting="value").fit(ds)
    users = [str(u) for u in ds.users.ids]
    for k in (1, 4, 10, 700):
        assert model.recommend(users, k).item_ids == _scored(model, users, k)
    scored_rows: list[int] = []
    original = model._rank_scored

    def counting(rows: np.ndarray, *args: Any) -> Any:
        scored_rows.append(len(rows))
        return original(rows, *args)

    model._rank_scored = counting  # type: ignore[method-assign]
    model.recommend(users, 10)
    assert sum(scored_rows) < len(users) // 2  # most users answered from the ranking alone
    heavy = model.recommend(["u-heavy"], 10).item_ids[0]
    assert len(heavy) == 5 and not set(heavy) & {f"i{j}" for j in range(n_items - 5)}
