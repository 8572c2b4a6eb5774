"""Hybrid (CF + content): contract suite, normalisation, cold items, persistence, planted-genre quality."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp

from contracts.recommender import RecommenderContract, assert_same
from tastebud.data.dataset import Dataset
from tastebud.errors import BundleError, NotFittedError, ParameterError
from tastebud.models import create
from tastebud.models.content import ContentRecommender
from tastebud.models.hybrid import HybridRecommender, _normalise, content_neighbors

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
#: Relative popularity of the three styles of every genre: visible in interactions, not in metadata.
STYLE_POPULARITY = (4.0, 1.5, 0.5)


def planted_genres(seed: int = 0) -> tuple[Dataset, Dataset, Dataset, list[str]]:
    """Users mostly interact inside their latent cluster; each item's genre is its cluster's.

    Within a cluster, item ``i`` has style ``i % 3`` (a tag), and an item's popularity is its style's (times
    some noise): the metadata say which style an item has, only interactions say how popular that style is.
    All interactions of ``COLD_PER_CLUSTER`` items per cluster are held out (the cold test set), and 3 random
    warm interactions per user form the warm test set. Returns (train, warm test, cold test, cold item ids).
    """
    rng = np.random.default_rng(seed)
    style = np.arange(ITEMS_PER_CLUSTER) % len(STYLE_POPULARITY)
    popularity = np.asarray(STYLE_POPULARITY)[style] * rng.uniform(0.7, 1.3, ITEMS_PER_CLUSTER)
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
            "tags": [[f"{genre_names[int(x[1])]} style {int(x[3:]) % 3}"] for x in all_items],
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


def fit_planted(seed: int) -> dict[str, Any]:
    train, warm_test, cold_test, cold = planted_genres(seed)
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


@pytest.fixture(scope="module")
def planted() -> dict[str, Any]:
    return fit_planted(0)


def _cold_recalls(planted: dict[str, Any], k: int) -> dict[str, float]:
    cf, content, hybrid = planted["models"]
    return {
        name: recall_at(m, planted["cold"], k=k, candidates=planted["cold_ids"])
        for name, m in (("cf", cf), ("content", content), ("hybrid", hybrid))
    }


def test_hybrid_beats_both_parts_on_cold_items(planted: dict[str, Any]) -> None:
    """Ranking only the cold items: the hybrid beats content (and CF, which cannot see them) strictly.

    Content ranks a cold item by its genre and style against the user's own few items; the CF score from
    content neighbours adds how popular that style is with similar users, which only interactions show.
    """
    scores = _cold_recalls(planted, k=3)
    chance = 3 / len(planted["cold_ids"])
    assert scores["cf"] < 2 * chance, scores
    assert scores["hybrid"] > scores["content"] + 0.02, scores
    assert scores["hybrid"] > scores["cf"] + 0.4, scores


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_hybrid_beats_both_parts_on_cold_items_other_seeds(seed: int) -> None:
    scores = _cold_recalls(fit_planted(seed), k=3)
    assert scores["hybrid"] > max(scores["content"], scores["cf"]), scores


def test_without_cold_neighbors_cold_items_follow_content(planted: dict[str, Any]) -> None:
    """With ``n_cold_neighbors=0`` the CF part of every cold item is a constant 0: content alone orders them."""
    cf, content, _ = planted["models"]
    plain = HybridRecommender.from_models(cf, content, alpha=0.8, n_cold_neighbors=0)
    assert len(plain.cold_items_) == 0 and plain.cold_factors_.shape == (0, cf.n_dims)
    users = [str(u) for u in planted["train"].users.ids[:40].tolist()]
    a = plain.recommend(users, k=10, candidates=planted["cold_ids"])
    b = content.recommend(users, k=10, candidates=planted["cold_ids"])
    assert a.item_ids == b.item_ids
    with_cf = _cold_recalls(planted, k=3)["hybrid"]
    assert recall_at(plain, planted["cold"], k=3, candidates=planted["cold_ids"]) < with_cf


def test_warm_users_do_not_lose_to_cf(planted: dict[str, Any]) -> None:
    """Over everything warm users did next, and over warm items alone, the hybrid is at least CF's equal.

    Cold items now compete for the unrestricted list (the same users do interact with them, in the cold test
    set), so the warm-only comparison restricts candidates to warm items; there the cold scores change
    nothing, because CF normalisation statistics come from warm items only.
    """
    cf, content, hybrid = planted["models"]
    overall = planted["train"].with_interactions(
        pl.concat([planted["warm"].interactions, planted["cold"].interactions])
    )
    scores = {name: recall_at(m, overall, k=10) for name, m in (("cf", cf), ("content", content), ("hybrid", hybrid))}
    assert scores["hybrid"] >= scores["cf"], scores
    assert scores["hybrid"] > scores["content"], scores
    warm_ids = sorted(set(planted["train"].items.ids.tolist()) - set(planted["cold_ids"]))
    warm = {name: recall_at(m, planted["warm"], k=10, candidates=warm_ids) for name, m in (("cf", cf), ("h", hybrid))}
    plain = HybridRecommender.from_models(cf, content, alpha=0.8, n_cold_neighbors=0)
    assert warm["h"] >= warm["cf"], warm
    assert warm["h"] == recall_at(plain, planted["warm"], k=10, candidates=warm_ids)


def test_cold_factors_are_the_weighted_mean_of_neighbour_factors(planted: dict[str, Any]) -> None:
    """Cold items: neighbours are warm, same-genre items; factors and scores agree with propagation."""
    cf, _, hybrid = planted["models"]
    train = planted["train"]
    cold_idx = np.sort(train.item_index(planted["cold_ids"]))
    np.testing.assert_array_equal(hybrid.cold_items_, cold_idx)
    weights = hybrid.cold_weights_
    assert weights.shape == (len(cold_idx), train.n_items)
    assert (np.diff(weights.indptr) == hybrid.config.n_cold_neighbors).all()
    np.testing.assert_allclose(np.asarray(weights.sum(axis=1)).ravel(), 1.0, rtol=1e-5)
    assert not np.isin(weights.indices, cold_idx).any(), "a cold item's neighbours must be warm"
    ids = train.items.ids
    for r, item in enumerate(cold_idx.tolist()):
        neighbours = ids[weights.indices[weights.indptr[r] : weights.indptr[r + 1]]]
        assert all(str(n)[:2] == str(ids[item])[:2] for n in neighbours)
    dense = weights.toarray()
    np.testing.assert_allclose(hybrid.cold_factors_, dense @ cf.item_factors_, rtol=1e-4, atol=1e-6)
    # the factor shortcut gives the similarity-weighted mean of the user's CF scores on the neighbours
    rows = np.arange(10)
    propagated = cf._score(rows, None) @ dense.T
    np.testing.assert_allclose(hybrid._cf_scores(rows, cold_idx), propagated, rtol=1e-4, atol=1e-5)


def test_non_factor_cf_propagates_neighbour_scores(planted: dict[str, Any]) -> None:
    """A CF model without factors gets the same weighted mean of the neighbours' scores at query time."""
    train = planted["train"]
    _, content, _ = planted["models"]
    cf = create("itemknn").fit(train)
    hybrid = HybridRecommender.from_models(cf, content, alpha=0.8)
    assert hybrid.cold_factors_ is None and len(hybrid.cold_items_) == len(planted["cold_ids"])
    cold_idx = hybrid.cold_items_
    rows = np.arange(12)
    every = np.arange(train.n_items)
    expected = hybrid._cf_scores(rows, every) @ hybrid.cold_weights_.toarray().T
    np.testing.assert_allclose(hybrid._cf_scores(rows, cold_idx), expected, rtol=1e-5, atol=1e-6)
    assert np.isfinite(hybrid._cf_scores(rows, cold_idx)).all()
    scores = {n: recall_at(m, planted["cold"], 3, planted["cold_ids"]) for n, m in (("c", content), ("h", hybrid))}
    assert scores["h"] > scores["c"], scores


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
def test_cold_items_get_cf_from_content_neighbours_or_zero(normalize: str) -> None:
    frame = pl.DataFrame({"user_id": ["a", "a", "b", "b", "c"], "item_id": ["x1", "y1", "x1", "x2", "y1"]})
    items = pl.DataFrame(
        {
            "item_id": ["x1", "x2", "y1", "y2", "xcold", "zcold"],
            "genres": ["X", "X", "Y", "Y", "X", "Z"],
        }
    )
    data = Dataset.from_frame(frame, items=items)
    hybrid = HybridRecommender(alpha=0.5, normalize=normalize, cf_params=CF_PARAMS).fit(data)
    cold, lonely = data.item_index(["xcold", "zcold"])
    assert hybrid.cf_item_[cold] == -1 and hybrid.cf_item_[lonely] == -1
    # xcold shares its genre with x1 and x2 (equal vectors, so equal weights); zcold shares nothing
    row = hybrid.cold_row_[cold]
    neighbours = hybrid.cold_weights_[row]
    assert set(data.items.ids[neighbours.indices].tolist()) == {"x1", "x2"}
    np.testing.assert_allclose(neighbours.data, [0.5, 0.5])
    assert hybrid.cold_row_[lonely] == -1
    users = np.arange(data.n_users)
    got = hybrid._cf_scores(users, np.array([cold, lonely]))
    warm_cf = hybrid.cf_._score(users, data.item_index(["x1", "x2"]))  # CF and hybrid share the vocabulary
    np.testing.assert_allclose(got[:, 0], warm_cf.mean(axis=1), rtol=1e-5, atol=1e-6)
    assert np.isnan(got[:, 1]).all()
    recs = hybrid.recommend(["b"], k=data.n_items)
    assert {"xcold", "zcold"} <= set(recs.item_ids[0])
    assert "xcold" in hybrid.similar_items(["x1"], k=2).item_ids[0]
    # with all the weight on CF, an item without neighbours has only its normalised CF score of 0
    cf_only = HybridRecommender.from_models(hybrid.cf_, hybrid.content_, alpha=1.0, normalize=normalize)
    assert dict(cf_only.recommend(["b"], k=data.n_items).row(0))["zcold"] == 0.0


def test_content_neighbors_top_n_positive_and_chunked() -> None:
    rng = np.random.default_rng(5)
    vectors = rng.random((40, 6)) * (rng.random((40, 6)) < 0.4)
    vectors[3] = 0.0  # an item without features has no neighbours
    cold = np.array([0, 3, 7, 19, 33])
    warm = np.setdiff1d(np.arange(40), cold)
    got = content_neighbors(vectors, cold, warm, 4)
    same = content_neighbors(sp.csr_matrix(vectors), cold, warm, 4, max_cells=7)  # one row per chunk
    np.testing.assert_array_equal(got.toarray(), same.toarray())
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    sims = unit[cold] @ unit.T
    for r, item in enumerate(cold.tolist()):
        row = got[r]
        if item == 3:
            assert row.nnz == 0
            continue
        positive = warm[sims[r, warm] > 0]
        best = positive[np.argsort(-sims[r, positive], kind="stable")][:4]
        assert set(row.indices.tolist()) == set(best.tolist())
        np.testing.assert_allclose(row.data, sims[r, row.indices] / sims[r, row.indices].sum(), rtol=1e-5)


def test_save_load_keeps_cold_state_exact(planted: dict[str, Any], tmp_path: Path) -> None:
    train = planted["train"]
    _, content, hybrid = planted["models"]
    hybrid.save(tmp_path / "als")
    assert (tmp_path / "als" / "cold_factors.npy").is_file()
    loaded = HybridRecommender.load(tmp_path / "als")
    np.testing.assert_array_equal(loaded.cold_items_, hybrid.cold_items_)
    np.testing.assert_array_equal(loaded.cold_factors_, hybrid.cold_factors_)
    users = [str(u) for u in train.users.ids[::5].tolist()]
    for cands in (None, planted["cold_ids"]):
        assert_same(hybrid.recommend(users, k=8, candidates=cands), loaded.recommend(users, k=8, candidates=cands))
    knn = HybridRecommender.from_models(create("itemknn").fit(train), content, alpha=0.8)
    knn.save(tmp_path / "knn")
    assert not (tmp_path / "knn" / "cold_factors.npy").exists()
    again = HybridRecommender.load(tmp_path / "knn")
    assert again.cold_factors_ is None
    assert_same(knn.recommend(users, k=8), again.recommend(users, k=8))
    (tmp_path / "als" / "cold_items.npy").unlink()
    with pytest.raises(BundleError, match="cold_items"):
        HybridRecommender.load(tmp_path / "als")


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
