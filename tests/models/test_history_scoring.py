"""History scoring (``recommend_history``): equals ``recommend`` on a user's own history; fold-in is exact."""

from __future__ import annotations

import numpy as np
import pytest

from tastebud.data.dataset import Dataset
from tastebud.data.synthetic import generate_synthetic
from tastebud.errors import UnknownItemError
from tastebud.models import create
from tastebud.models.als import ALSRecommender
from tastebud.models.base import Recommender
from tastebud.models.hybrid import HybridRecommender


@pytest.fixture(scope="module")
def data() -> Dataset:
    return generate_synthetic(120, 80, 2500, seed=11)


@pytest.fixture(scope="module")
def als(data: Dataset) -> ALSRecommender:
    model = create("als", factors=8, iterations=3, random_state=0, num_threads=1, use_cg=False)
    return model.fit(data)  # type: ignore[return-value]


def _users(data: Dataset, n: int = 5) -> list[str]:
    rng = np.random.default_rng(0)
    return [str(u) for u in rng.choice(data.users.ids, size=n, replace=False).tolist()]


FAMILIES = {
    "ease": lambda: create("ease", l2=20.0),
    "itemknn": lambda: create("itemknn", n_neighbors=15, num_threads=1),
    "rp3beta": lambda: create("rp3beta", n_neighbors=15),
    "slim": lambda: create("slim", alpha=0.01, num_threads=1),
    "slim-recency": lambda: create("slim", alpha=0.01, num_threads=1, recency_half_life_days=30.0),
    "content": lambda: create("content"),
    "popular": lambda: create("popular"),
    "hybrid": lambda: HybridRecommender(
        cf_model="itemknn", cf_params={"num_threads": 1}, content_params={"weighting": "value"}
    ),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_own_history_scores_like_recommend(family: str, data: Dataset) -> None:
    """For a model whose user state is a function of the history, both paths give the same list."""
    model: Recommender = FAMILIES[family]().fit(data)
    assert model.history_scoring
    for user in _users(data):
        items, values = model.user_history(user)
        assert items, "every synthetic user has a history"
        for kwargs in ({}, {"exclude_seen": False}, {"candidates": [str(i) for i in data.items.ids[::3]]}):
            want = model.recommend([user], 10, explain=True, **kwargs)
            got = model.recommend_history(items, values, 10, explain=True, **kwargs)
            assert got.query_ids == ["history"]
            np.testing.assert_allclose(got.scores[0], want.scores[0], rtol=1e-4, atol=1e-5)
            # equal scores may swap places; compare as sets of ids per score level
            assert set(got.item_ids[0]) == set(want.item_ids[0]) or np.ptp(want.scores[0]) == 0
            if want.explanations is not None:
                assert got.explanations is not None
                want_why = dict(zip(want.item_ids[0], want.explanations[0], strict=True))
                got_why = dict(zip(got.item_ids[0], got.explanations[0], strict=True))
                for item in set(want_why) & set(got_why):
                    assert set(got_why[item]) == set(want_why[item]), (family, user, item)


def test_history_items_are_excluded_and_new_items_change_the_list(data: Dataset) -> None:
    model = create("itemknn", n_neighbors=15, num_threads=1).fit(data)
    user = _users(data, 1)[0]
    items, values = model.user_history(user)
    before = model.recommend_history(items, values, 5)
    new = before.item_ids[0][:2]
    after = model.recommend_history([*items, *new], [*values, 5.0, 5.0], 5)
    assert not set(new) & set(after.item_ids[0])
    assert not set(items) & set(after.item_ids[0])
    assert after.item_ids[0] != before.item_ids[0]


def test_unknown_history_item_is_named(data: Dataset) -> None:
    model = create("ease", l2=20.0).fit(data)
    with pytest.raises(UnknownItemError, match="no-such-item"):
        model.recommend_history(["no-such-item"], None, 5)


def test_models_without_history_scoring_say_so(data: Dataset) -> None:
    model = create("svd", factors=4, epochs=1).fit(data)
    assert not model.history_scoring
    with pytest.raises(NotImplementedError, match="svd"):
        model.recommend_history([str(data.items.ids[0])], None, 5)


# ---------------------------------------------------------------------- factor models: fold-in
def _normal_equation(model: ALSRecommender, idx: np.ndarray, values: np.ndarray) -> np.ndarray:
    """min Σ_i c_i (p_i - xᵀy_i)² + λ‖x‖² over every item, written out densely (Hu et al. 2008, eq. 4)."""
    y = model.item_factors_.astype(np.float64)
    c = np.ones(len(y))
    p = np.zeros(len(y))
    c[idx] = model.config.alpha * values  # implicit 0.7: observed confidence alpha * value, unobserved 1
    p[idx] = 1.0
    a = y.T @ (c[:, None] * y) + model.config.regularization * np.eye(y.shape[1])
    return np.linalg.solve(a, y.T @ (c * p))


def test_fold_in_matches_a_full_re_solve(als: ALSRecommender, data: Dataset) -> None:
    from implicit.cpu.als import AlternatingLeastSquares

    reference = AlternatingLeastSquares(
        factors=als.config.factors, regularization=als.config.regularization, alpha=als.config.alpha
    )
    reference.item_factors = als.item_factors_.copy()
    rng = np.random.default_rng(5)
    for user in _users(data):
        items, values = als.user_history(user)
        extra = [str(i) for i in rng.choice(data.items.ids, size=3, replace=False).tolist()]
        items, values = [*items, *extra], np.concatenate([values, [4.0, 1.0, 2.5]])
        idx_all = data.items.index(items, kind="item")
        idx, first = np.unique(idx_all[::-1], return_index=True)
        vals = values[::-1][first]
        x = als.fold_in([str(data.items.ids[i]) for i in idx], vals)
        np.testing.assert_allclose(x, _normal_equation(als, idx, vals), atol=1e-5, rtol=1e-5)
        row = np.zeros((1, len(data.items)), dtype=np.float32)
        row[0, idx] = vals
        import scipy.sparse as sp

        implicit_x = reference.recalculate_user(0, sp.csr_matrix(row))
        np.testing.assert_allclose(x, implicit_x, atol=1e-4, rtol=1e-4)


def test_factor_history_ranks_by_the_folded_in_vector(als: ALSRecommender, data: Dataset) -> None:
    for user in _users(data):
        items, values = als.user_history(user)
        got = als.recommend_history(items, values, 10, explain=True)
        vector = als.fold_in(items, values)
        want = als.recommend_vector(vector, 10, exclude=items)
        assert got.item_ids[0] == want.item_ids[0]
        np.testing.assert_allclose(got.scores[0], want.scores[0], rtol=1e-5, atol=1e-5)
        assert got.explanations is not None
        assert all(set(why) <= set(items) for why in got.explanations[0])


def test_fold_in_of_training_history_is_close_to_the_trained_vector(data: Dataset) -> None:
    """After ALS converges the trained user vector is (nearly) the fold-in of the user's own row."""
    model = create("als", factors=8, iterations=30, random_state=0, num_threads=1, use_cg=False).fit(data)
    user = _users(data, 1)[0]
    u = int(data.users.index([user], kind="user")[0])
    folded = model.fold_in(*model.user_history(user))
    trained = model.user_factors_[u]
    assert np.linalg.norm(folded - trained) / np.linalg.norm(trained) < 0.05
