"""Item-KNN: the contract suite for every weighting, plus agreement with implicit's own scorer."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pytest

from contracts.recommender import RecommenderContract, seen_items
from tastebud.data.dataset import Dataset
from tastebud.models.item_knn import ItemKNNRecommender


class TestItemKNN(RecommenderContract):
    model_name = "itemknn"
    explains = True
    bad_params: ClassVar[list[dict[str, Any]]] = [{"n_neighbors": 0}, {"weighting": "jaccard"}, {"b": 1.5}]
    weighting = "bm25"

    def make_model(self, **params: Any) -> ItemKNNRecommender:
        return ItemKNNRecommender(**{"n_neighbors": 10, "weighting": self.weighting, **params})


class TestItemKNNCosine(TestItemKNN):
    weighting = "cosine"


class TestItemKNNTFIDF(TestItemKNN):
    weighting = "tfidf"


@pytest.mark.filterwarnings("ignore::implicit.utils.ParameterWarning")
@pytest.mark.parametrize("weighting", ["cosine", "tfidf", "bm25"])
def test_same_ranking_as_implicit(toy_dataset: Dataset, weighting: str) -> None:
    from implicit.nearest_neighbours import BM25Recommender, CosineRecommender, TFIDFRecommender

    ref_cls = {"cosine": CosineRecommender, "tfidf": TFIDFRecommender, "bm25": BM25Recommender}[weighting]
    ref = ref_cls(K=10)
    matrix = toy_dataset.matrix("value")
    ref.fit(matrix.tocsr(), show_progress=False)
    ours = ItemKNNRecommender(n_neighbors=10, weighting=weighting).fit(toy_dataset)
    np.testing.assert_allclose(ours.similarity_.toarray(), ref.similarity.toarray(), rtol=1e-5, atol=1e-6)
    users = np.arange(toy_dataset.n_users)
    _, scores = ref.recommend(users, matrix[users], N=5)
    recs = ours.recommend(toy_dataset.users.ids.tolist(), k=5)
    for row, (ref_scores, our_scores) in enumerate(zip(scores, recs.scores, strict=True)):
        np.testing.assert_allclose(np.sort(our_scores)[::-1], ref_scores[: len(our_scores)], rtol=1e-5, atol=1e-6)
        assert len(recs.item_ids[row]) == 5


def test_explanations_name_the_largest_contributors(toy_dataset: Dataset) -> None:
    model = ItemKNNRecommender(n_neighbors=10, weighting="cosine").fit(toy_dataset)
    user = str(toy_dataset.users.ids[1])
    recs = model.recommend([user], k=4, explain=True)
    assert recs.explanations is not None
    seen = sorted(seen_items(toy_dataset, user))
    sim = model.similarity_.toarray()
    idx = toy_dataset.item_index(seen)
    for item, reasons in zip(recs.item_ids[0], recs.explanations[0], strict=True):
        contrib = sim[idx, toy_dataset.item_index([item])[0]]
        best = {seen[j] for j in np.flatnonzero(contrib >= np.sort(contrib)[::-1][: len(reasons)].min())}
        assert reasons and set(reasons) <= best
        assert all(contrib[seen.index(r)] > 0 for r in reasons)
