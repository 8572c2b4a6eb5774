"""Hybrid (CF + content): contract suite, normalisation, cold items, persistence, planted-genre quality."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import polars as pl
import pytest

from contracts.recommender import RecommenderContract, assert_same
from tastebud.data.dataset import Dataset
from tastebud.errors import BundleError, NotFittedError, ParameterError
from tastebud.models import create
from tastebud.models.content import ContentRecommender
from tastebud.models.hybrid import HybridRecommender, _normalise

CF_PARAMS: dict[str, Any] = {"factors": 8, "iterations": 10, "regularization": 0.1, "alpha": 5.0}


class TestHybrid(RecommenderContract):
    model_name = "hybrid"
    explains = True
    bad_params: ClassVar[list[dict[str, Any]]] = [
        {"alpha": 1.5},
        {"alpha": -0.1},
        {"normalize": "rank"},
        {"cf_model": "no-such-model"},
        {"cf_model": "hybrid"},
    ]

    def make_model(self, **params: Any) -> HybridRecommender:
        return HybridRecommender(**{"cf_params": CF_PARAMS, **params})


# ---------------------------------------------------------------------- planted genre structure
N_CLUSTERS, ITEMS_PER_CLUSTER, USERS_PER_CLUSTER, COLD_PER_CLUSTER = 5, 30, 40, 6


def planted_genres(seed: int = 0) -> tuple[Dataset, Dataset, Dataset, list[str]]:
    """Users mostly interact inside their latent cluster; each item's genre is its cluster's.

    All interactions of ``COLD_PER_CLUSTER`` items per cluster are held out (the cold test set), and 3 random
    warm interactions per user form the warm test set. Returns (train, warm test, cold test, cold item ids).
    """
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, ITEMS_PER_CLUSTER + 1) ** 0.7
    popularity /= popularity.sum()
    users, items = [], []
    for c in range(N_CLUSTERS):
        for u in range(USERS_PER_CLUSTER):
            own = rng.choice(ITEMS_PER_CLUSTER, size=12, replace=False, p=popularity)
            users += [f"c{c}u{u:02d}"] * 14
            items += [f"c{c}i{i:02d}" for i in own]
            # a little taste outside the cluster, so genres are informative but not the whole story
            for _ in range(2):
                other = (c + rng.integers(1, N_CLUSTERS)) % N_CLUSTERS
                items.append(f"c{other}i{rng.integers(ITEMS_PER_CLUSTER):02d}")
    frame = pl.DataFrame({"user_id": users, "item_id": items}).unique(maintain_order=True)
    all_items = [f"c{c}i{i:02d}" for c in range(N_CLUSTERS) for i in range(ITEMS_PER_CLUSTER)]
    genre_names = ["Western", "Horror", "Musical", "Documentary", "Animation"]
    meta = pl.DataFrame(
        {
            "item_id": all_items,
            "title": [f"Film {x}" for x in all_items],
            "genres": [[genre_names[int(x[1])]] for x in all_items],
        }
    )
    full = Dataset.from_frame(frame, items=meta, name="planted-genres")
    # cold items: a random spread of popularity ranks in each cluster
    cold = [
        f"c{c}i{i:02d}"
        for c in range(N_CLUSTERS)
        for i in rng.choice(ITEMS_PER_CLUSTER, COLD_PER_CLUSTER, replace=False)
    ]
    cold_idx = full.item_index(cold)
    inter = full.interactions.with_columns(pl.Series("_r", rng.random(full.n_interactions)))
    is_cold = pl.col("item_idx").is_in(cold_idx.tolist())
    cold_test = inter.filter(is_cold)
    warm = inter.filter(~is_cold).with_columns(pl.col("_r").rank("ordinal").over("user_idx").alias("_rank"))
    warm_test = warm.filter(pl.col("_rank") <= 3)
    train = warm.filter(pl.col("_rank") > 3)
    strip = ["_r", "_rank"]
    return (
        full.with_interactions(train.drop(strip)),
        full.with_interactions(warm_test.drop(strip)),
        full.with_interactions(cold_test.drop("_r")),
        cold,
    )


def recall_at(model: Any, test: Dataset, k: int, candidates: list[str] | None = None) -> float:
    """Mean per-user recall@k of ``test`` interactions (users with any test interaction)."""
    frame = test.to_frame()
    held = frame.group_by("user_id").agg(pl.col("item_id")).sort("user_id")
    users = held["user_id"].to_list()
    recs = model.recommend(users, k=k, candidates=candidates)
    recalls = [
        len(set(truth) & set(got)) / min(len(truth), k)
        for truth, got in zip(held["item_id"].to_list(), recs.item_ids, strict=True)
    ]
    return float(np.mean(recalls))


@pytest.fixture(scope="module")
def planted() -> dict[str, Any]:
    train, warm_test, cold_test, cold = planted_genres(0)
    cf = create("als", **CF_PARAMS).fit(train)
    content = ContentRecommender().fit(train)
    hybrid = HybridRecommender.from_models(cf, content, alpha=0.8)
    return {
        "train": train,
        "warm": warm_test,
        "cold": cold_test,
        "cold_ids": cold,
        "models": (cf, content, hybrid),
    }


def test_cold_items_are_carried_by_content(planted: dict[str, Any]) -> None:
    """Ranking only the cold items: the hybrid recovers the planted genres, which CF cannot see at all."""
    cf, content, hybrid = planted["models"]
    scores = {
        name: recall_at(m, planted["cold"], k=5, candidates=planted["cold_ids"])
        for name, m in (("cf", cf), ("content", content), ("hybrid", hybrid))
    }
    chance = 5 / len(planted["cold_ids"])
    assert scores["cf"] < 2 * chance, scores
    assert scores["hybrid"] >= 3 * chance, scores
    assert scores["hybrid"] > scores["cf"] + 0.2, scores
    # Among cold items the CF part is a constant 0, so the order is exactly the content model's: the hybrid
    # ties content here (it cannot beat it without some CF signal about cold items).
    assert scores["hybrid"] == pytest.approx(scores["content"]), scores
    users = [str(u) for u in planted["train"].users.ids[:40].tolist()]
    a = hybrid.recommend(users, k=10, candidates=planted["cold_ids"])
    b = content.recommend(users, k=10, candidates=planted["cold_ids"])
    assert a.item_ids == b.item_ids


def test_warm_users_do_not_lose_to_cf(planted: dict[str, Any]) -> None:
    cf, content, hybrid = planted["models"]
    scores = {
        name: recall_at(m, planted["warm"], k=10)
        for name, m in (("cf", cf), ("content", content), ("hybrid", hybrid))
    }
    assert scores["hybrid"] >= scores["cf"], scores
    assert scores["hybrid"] > scores["content"], scores


def test_fit_builds_the_same_hybrid_as_from_models(planted: dict[str, Any]) -> None:
    train = planted["train"]
    _, _, by_parts = planted["models"]
    fitted = HybridRecommender(cf_params=CF_PARAMS, alpha=0.8).fit(train)
    assert fitted.cf_.params() == by_parts.cf_.params()
    assert fitted.content_.params() == by_parts.content_.params()
    users = [str(u) for u in train.users.ids[:20].tolist()]
    assert_same(fitted.recommend(users, k=8), by_parts.recommend(users, k=8))


# ---------------------------------------------------------------------- blending details
def test_blend_is_the_weighted_sum_of_normalised_scores(toy_dataset: Dataset) -> None:
    hybrid = TestHybrid().make_model(alpha=0.3, normalize="zscore").fit(toy_dataset)
    rows = np.arange(5)
    cols = np.arange(toy_dataset.n_items)
    valid = np.ones((5, toy_dataset.n_items), dtype=bool)
    seen = toy_dataset.user_item[rows]
    valid[np.repeat(np.arange(5), np.diff(seen.indptr)), seen.indices] = False
    cf = hybrid.cf_._score(rows, None)  # every toy item has interactions, so CF scores all of them
    content = hybrid.content_._score(rows, None)
    expected = 0.3 * _normalise(cf, valid, "zscore") + 0.7 * _normalise(content, valid, "zscore")
    got = hybrid.blend(rows, cols)
    np.testing.assert_allclose(got[valid], expected[valid], rtol=1e-5, atol=1e-6)
    assert np.isneginf(got[~valid]).all()


def test_normalise_minmax_and_zscore() -> None:
    scores = np.array([[1.0, 3.0, 5.0, 100.0], [2.0, 2.0, 2.0, 2.0]])
    valid = np.array([[True, True, True, False], [True, True, True, True]])
    minmax = _normalise(scores, valid, "minmax")
    np.testing.assert_allclose(minmax, [[0.0, 0.5, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    z = _normalise(scores, valid, "zscore")
    np.testing.assert_allclose(z[0, :3], (np.array([1.0, 3.0, 5.0]) - 3.0) / np.std([1.0, 3.0, 5.0]))
    assert z[0, 3] == 0.0 and not z[1].any()


@pytest.mark.parametrize("normalize", ["minmax", "zscore"])
def test_cold_item_gets_zero_cf_and_can_be_recommended(normalize: str) -> None:
    frame = pl.DataFrame({"user_id": ["a", "a", "b", "b", "c"], "item_id": ["x1", "y1", "x1", "x2", "y1"]})
    items = pl.DataFrame({"item_id": ["x1", "x2", "y1", "y2", "xcold"], "genres": ["X", "X", "Y", "Y", "X"]})
    data = Dataset.from_frame(frame, items=items)
    hybrid = HybridRecommender(alpha=0.5, normalize=normalize, cf_params=CF_PARAMS).fit(data)
    cold = data.item_index(["xcold"])[0]
    assert hybrid.cf_item_[cold] == -1
    assert np.isnan(hybrid._cf_scores(np.array([0]), np.array([cold]))).all()
    recs = hybrid.recommend(["b"], k=data.n_items)
    assert "xcold" in recs.item_ids[0]
    assert "xcold" in hybrid.similar_items(["x1"], k=2).item_ids[0]
    # with all the weight on CF, the cold item's only score is its normalised CF score of 0
    cf_only = HybridRecommender.from_models(hybrid.cf_, hybrid.content_, alpha=1.0, normalize=normalize)
    assert dict(cf_only.recommend(["b"], k=data.n_items).row(0))["xcold"] == 0.0


def test_alpha_extremes_follow_one_part(toy_dataset: Dataset) -> None:
    base = TestHybrid().make_model().fit(toy_dataset)
    users = [str(u) for u in toy_dataset.users.ids[:10].tolist()]
    for alpha, part in ((1.0, base.cf_), (0.0, base.content_)):
        hybrid = HybridRecommender.from_models(base.cf_, base.content_, alpha=alpha)
        got, want = hybrid.recommend(users, k=5), part.recommend(users, k=5)
        for a, b, scores in zip(got.item_ids, want.item_ids, got.scores, strict=True):
            # same ranking up to ties
            assert set(a) == set(b) or len(set(np.round(scores, 6))) < len(scores)


def test_from_models_needs_fitted_parts_and_valid_alpha(toy_dataset: Dataset) -> None:
    content = ContentRecommender().fit(toy_dataset)
    with pytest.raises(NotFittedError, match="als"):
        HybridRecommender.from_models(create("als"), content)
    cf = create("als", **CF_PARAMS).fit(toy_dataset)
    with pytest.raises(ParameterError, match="alpha"):
        HybridRecommender.from_models(cf, content, alpha=2.0)


def test_save_layout_and_refuses_unregistered_class(toy_dataset: Dataset, tmp_path: Path) -> None:
    hybrid = TestHybrid().make_model().fit(toy_dataset)
    hybrid.save(tmp_path)
    assert (tmp_path / "cf" / "model.json").is_file() and (tmp_path / "content" / "vocabulary.json").is_file()
    meta = json.loads((tmp_path / "hybrid.json").read_text(encoding="utf-8"))
    assert meta["parts"]["cf"] == {"name": "als", "class": "tastebud.models.als:ALSRecommender"}
    users = [str(u) for u in toy_dataset.users.ids.tolist()]
    loaded = HybridRecommender.load(tmp_path)
    assert_same(hybrid.recommend(users, k=6, explain=True), loaded.recommend(users, k=6, explain=True))
    meta["parts"]["cf"]["class"] = "os:system"
    (tmp_path / "hybrid.json").write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(BundleError, match="registered"):
        HybridRecommender.load(tmp_path)
