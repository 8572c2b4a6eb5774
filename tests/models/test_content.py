"""Content (TF-IDF) model: the contract suite plus documents, profiles, cold items and persistence."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import polars as pl
import pytest

from contracts.recommender import RecommenderContract
from tastebud.data.dataset import Dataset
from tastebud.errors import DataValidationError
from tastebud.models.content import ContentConfig, ContentRecommender, _grouped_weights, item_documents


class TestContent(RecommenderContract):
    model_name = "content"
    explains = True
    bad_params: ClassVar[list[dict[str, Any]]] = [
        {"genre_weight": -1.0},
        {"min_df": 0},
        {"weighting": "bogus"},
        {"n_explain": -1},
    ]

    def make_model(self, **params: Any) -> ContentRecommender:
        return ContentRecommender(**params)


@pytest.fixture
def movies() -> Dataset:
    """Six catalog items (one, ``cold``, without interactions) and three users with clear tastes."""
    items = pl.DataFrame(
        {
            "item_id": ["a1", "a2", "a3", "d1", "d2", "cold"],
            "title": [
                "Space Wars",
                "Space Wars II",
                "Robot Attack",
                "The Quiet Garden",
                "A Garden Wedding",
                "Robot Space",
            ],
            "year": [1977, 1980, 1995, 1993, 1999, 2001],
            "genres": [
                "Sci-Fi|Action",
                "Sci-Fi|Action",
                "Sci-Fi",
                "Drama|Romance",
                "Drama|Romance",
                "Sci-Fi|Action",
            ],
        }
    )
    frame = pl.DataFrame(
        {
            "user_id": ["fan", "fan", "fan", "romantic", "romantic", "romantic", "mixed", "mixed"],
            "item_id": ["a1", "a2", "d1", "d1", "d2", "a1", "a3", "d2"],
            "rating": [5.0, 5.0, 1.0, 5.0, 4.0, 1.0, 4.0, 4.0],
        }
    )
    return Dataset.from_frame(frame, items=items, name="movies")


def test_documents_have_genre_title_and_decade_tokens(movies: Dataset) -> None:
    docs = dict(zip(movies.items.ids.tolist(), item_documents(movies.item_meta, ContentConfig()), strict=True))
    tokens = set(docs["d2"].split())
    assert {"genre_drama", "genre_romance", "word_garden", "word_wedding", "decade_1990s"} <= tokens
    assert "word_a" not in tokens  # stop words and one-letter words dropped
    assert set(docs["a1"].split()) == {
        "genre_sci-fi",
        "genre_action",
        "word_space",
        "word_wars",
        "decade_1970s",
    }
    no_titles = item_documents(movies.item_meta, ContentConfig(title_weight=0.0, decade_weight=0.0))
    assert all(t.startswith("genre_") for doc in no_titles for t in doc.split())


def test_item_vectors_are_unit_length_and_similarity_is_cosine(movies: Dataset) -> None:
    model = ContentRecommender().fit(movies)
    vectors = model.item_vectors_.toarray()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    sims = model.similar_items(["a1"], k=5)
    a1 = vectors[movies.item_index(["a1"])[0]]
    for item, score in sims.row(0):
        assert score == pytest.approx(float(vectors[movies.item_index([item])[0]] @ a1), rel=1e-5)
    assert sims.item_ids[0][0] == "a2"  # same genres and two shared title words


def test_cold_item_is_recommended_and_similar(movies: Dataset) -> None:
    model = ContentRecommender().fit(movies)
    assert "cold" not in set(movies.to_frame()["item_id"].to_list())
    assert model.recommend(["fan"], k=1).item_ids[0] == ["cold"]
    assert "cold" in model.similar_items(["a1"], k=2).item_ids[0]
    assert model.similar_items(["cold"], k=1).item_ids[0][0] in {"a1", "a2"}


def test_centred_ratings_push_disliked_content_away(movies: Dataset) -> None:
    model = ContentRecommender().fit(movies)
    fan = dict(model.recommend(["fan"], k=10, exclude_seen=False).row(0))
    assert fan["cold"] > 0 > fan["d2"]  # d1 was rated below the fan's mean, so drama counts against
    romantic = dict(model.recommend(["romantic"], k=10).row(0))
    # only sci-fi is left, and a1 (disliked) pushes it away; a3 shares the least with a1, so it leads
    assert all(score < 0 for score in romantic.values())
    assert max(romantic, key=romantic.get) == "a3"
    binary = ContentRecommender(weighting="binary").fit(movies)
    assert dict(binary.recommend(["fan"], k=10, exclude_seen=False).row(0))["d2"] > 0


def test_users_with_all_equal_ratings_get_equal_weights(movies: Dataset) -> None:
    model = ContentRecommender().fit(movies)
    row = model.weights_[movies.user_index(["mixed"])[0]]
    np.testing.assert_allclose(row.data, 1.0)
    assert model.recommend(["mixed"], k=3).item_ids[0]  # a profile exists, so something is recommended


def test_explanations_name_the_most_similar_liked_items(movies: Dataset) -> None:
    model = ContentRecommender().fit(movies)
    recs = model.recommend(["fan"], k=2, explain=True)
    assert recs.item_ids[0][0] == "cold"
    assert recs.explanations is not None
    reasons = recs.explanations[0][0]
    assert reasons and set(reasons) <= {"a1", "a2"}  # d1 was disliked: it never explains
    assert "d1" not in {r for why in recs.explanations[0] for r in why}


def test_save_load_keeps_matrix_and_vocabulary(movies: Dataset, tmp_path: Path) -> None:
    model = ContentRecommender().fit(movies)
    model.save(tmp_path)
    vocabulary = json.loads((tmp_path / "vocabulary.json").read_text(encoding="utf-8"))
    assert vocabulary == model.vocabulary_ and "decade_1990s" in vocabulary
    loaded = ContentRecommender.load(tmp_path)
    assert (loaded.item_vectors_ != model.item_vectors_).nnz == 0
    np.testing.assert_array_equal(loaded.idf_, model.idf_)
    users = [str(u) for u in movies.users.ids.tolist()]
    a, b = model.recommend(users, k=4, explain=True), loaded.recommend(users, k=4, explain=True)
    assert a.item_ids == b.item_ids and a.explanations == b.explanations


def test_no_metadata_tokens_is_an_error() -> None:
    frame = pl.DataFrame({"user_id": ["u"], "item_id": ["i"]})
    with pytest.raises(DataValidationError, match="no tokens"):
        ContentRecommender().fit(Dataset.from_frame(frame))
    with pytest.raises(DataValidationError, match="weight is 0"):
        ContentRecommender(genre_weight=0, tag_weight=0, title_weight=0, decade_weight=0).fit(Dataset.from_frame(frame))


def test_tags_are_used_when_present() -> None:
    frame = pl.DataFrame({"user_id": ["u", "u"], "item_id": ["x", "y"], "value": [3.0, 1.0]})
    items = pl.DataFrame({"item_id": ["x", "y", "z"], "tags": [["dark comedy"], ["space"], ["dark comedy"]]})
    model = ContentRecommender().fit(Dataset.from_frame(frame, items=items))
    assert "tag_dark_comedy" in model.vocabulary_
    assert model.similar_items(["x"], k=1).item_ids[0] == ["z"]


# ---------------------------------------------------------------------- profile weights without grouping
@pytest.mark.parametrize("weighting", ["rating", "value", "binary"])
def test_profile_weights_of_unique_pairs_equal_the_grouped_ones(weighting: str) -> None:
    from tastebud.data.synthetic import generate_synthetic
    from tastebud.models.content import _profile_weights, _weights_of_unique_pairs

    ds = generate_synthetic(n_users=400, n_items=300, n_interactions=12_000, seed=8)
    inter = ds.interactions
    # half-star ratings, a user whose ratings are all equal, values other than 1
    inter = inter.with_columns(
        pl.when(pl.col("user_idx") == 0)
        .then(3.5)
        .otherwise(pl.col("rating") - 0.5 * (pl.col("item_idx") % 2))
        .cast(pl.Float32)
        .alias("rating"),
        (pl.col("item_idx") % 5 + 0.25).cast(pl.Float32).alias("value"),
    )
    ds = ds.with_interactions(inter.sample(fraction=1.0, shuffle=True, seed=2))
    fast = _weights_of_unique_pairs(ds, weighting)
    assert fast is not None
    plain = _grouped_weights(ds, weighting)
    assert fast.dtype == plain.dtype and fast.has_sorted_indices
    np.testing.assert_array_equal(fast.indptr, plain.indptr)
    np.testing.assert_array_equal(fast.indices, plain.indices)
    np.testing.assert_array_equal(fast.data, plain.data)
    assert _profile_weights(ds, weighting).nnz == plain.nnz
    if weighting == "rating":
        lo, hi = fast.indptr[0], fast.indptr[1]
        assert hi > lo and np.all(fast.data[lo:hi] == 1.0)  # the flat user
    # repeated pairs take the grouped path
    twice = ds.with_interactions(pl.concat([ds.interactions, ds.interactions.head(40)]))
    assert _weights_of_unique_pairs(twice, weighting) is None
    repeated = _profile_weights(twice, weighting)
    expected = _grouped_weights(twice, weighting)
    np.testing.assert_array_equal(repeated.indices, expected.indices)
    np.testing.assert_allclose(repeated.data, expected.data, rtol=1e-6)
