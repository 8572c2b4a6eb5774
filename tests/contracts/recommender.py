"""Behaviour every :class:`~tastebud.models.base.Recommender` must show.

A model's test file subclasses :class:`RecommenderContract` and implements ``make_model``::

    class TestALS(FactorRecommenderContract):
        model_name = "als"
        bad_params = [{"factors": 0}, {"alpha": -1.0}]

        def make_model(self, **params):
            return ALSRecommender(**{"factors": 8, **params})

Class attributes tune what is checked: set ``recovers_user_structure`` / ``recovers_item_structure`` to
False for models that cannot recover the planted clusters (popularity), lower ``min_hit_rate`` for weaker
ones, and override ``test_planted_structure_*`` wholesale when a model needs a different check.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import polars as pl
import pytest

from tastebud.data.dataset import Dataset
from tastebud.errors import BundleError, NotFittedError, ParameterError, UnknownItemError, UnknownUserError
from tastebud.models import create, model_class
from tastebud.models.base import Recommendations, Recommender


def seen_items(dataset: Dataset, user_id: str) -> set[str]:
    """External ids of the items ``user_id`` interacted with."""
    row = dataset.user_item[int(dataset.user_index([user_id])[0])]
    return set(dataset.items.ids[row.indices].tolist())


def hold_out(dataset: Dataset, per_user: int, seed: int) -> tuple[Dataset, dict[str, set[str]]]:
    """Per user, ``per_user`` random interactions held out: (train dataset, user id -> held-out item ids)."""
    rng = np.random.default_rng(seed)
    inter = dataset.interactions.with_columns(pl.Series("_r", rng.random(dataset.n_interactions)))
    inter = inter.with_columns(pl.col("_r").rank("ordinal").over("user_idx").alias("_rank"))
    test = inter.filter(pl.col("_rank") <= per_user)
    train = dataset.with_interactions(inter.filter(pl.col("_rank") > per_user).drop("_r", "_rank"))
    users, items = dataset.users.ids, dataset.items.ids
    held: dict[str, set[str]] = {}
    for u, i in zip(test["user_idx"].to_list(), test["item_idx"].to_list(), strict=True):
        held.setdefault(str(users[u]), set()).add(str(items[i]))
    return train, held


def assert_same(a: Recommendations, b: Recommendations) -> None:
    """Identical ids and scores, row by row."""
    assert a.query_ids == b.query_ids
    assert a.item_ids == b.item_ids
    for x, y in zip(a.scores, b.scores, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


class RecommenderContract:
    """Behaviour tests shared by every recommender; subclasses implement :meth:`make_model`."""

    #: the ``--model`` name the class is registered under.
    model_name: ClassVar[str]
    #: parameter sets that must be refused with ``ParameterError``.
    bad_params: ClassVar[list[dict[str, Any]]] = []
    #: whether ``recommend(..., explain=True)`` fills explanations with the user's own items.
    explains: ClassVar[bool] = False
    #: planted-structure checks on ``cluster_dataset`` (see the module docstring).
    recovers_user_structure: ClassVar[bool] = True
    recovers_item_structure: ClassVar[bool] = True
    min_hit_rate: ClassVar[float] = 0.5
    min_similar_precision: ClassVar[float] = 0.8
    #: whether two fits with the same parameters give identical recommendations.
    deterministic: ClassVar[bool] = True

    def make_model(self, **params: Any) -> Recommender:
        """A fresh, unfitted model with small, fast parameters (``params`` override them)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ fixtures
    @pytest.fixture
    def dataset(self, toy_dataset: Dataset) -> Dataset:
        """The dataset most tests fit on (override to use another)."""
        return toy_dataset

    @pytest.fixture
    def fitted(self, dataset: Dataset) -> Recommender:
        return self.make_model().fit(dataset)

    @pytest.fixture
    def some_users(self, dataset: Dataset) -> list[str]:
        return [str(u) for u in dataset.users.ids[:: max(1, dataset.n_users // 7)].tolist()]

    # ------------------------------------------------------------------ registration and parameters
    def test_registered_under_its_name(self) -> None:
        assert isinstance(self.make_model(), model_class(self.model_name))

    def test_params_round_trip_through_create(self) -> None:
        model = self.make_model()
        params = model.params()
        json.dumps(params)  # what gets logged and written to manifests must be JSON
        assert create(self.model_name, **params).params() == params

    def test_bad_params_raise_parameter_error(self) -> None:
        for params in [*self.bad_params, {"no_such_parameter": 1}]:
            with pytest.raises(ParameterError, match=self.model_name):
                create(self.model_name, **params)

    # ------------------------------------------------------------------ fitting
    def test_fit_returns_self(self, dataset: Dataset) -> None:
        model = self.make_model()
        assert model.fit(dataset) is model
        assert model.is_fitted

    def test_use_before_fit_raises(self, dataset: Dataset) -> None:
        model = self.make_model()
        user, item = str(dataset.users.ids[0]), str(dataset.items.ids[0])
        with pytest.raises(NotFittedError):
            model.recommend([user])
        with pytest.raises(NotFittedError):
            model.similar_items([item])
        with pytest.raises(NotFittedError):
            model.save(Path("never-written"))

    def test_deterministic_for_same_params(self, dataset: Dataset, some_users: list[str]) -> None:
        if not self.deterministic:
            pytest.skip("model is not deterministic")
        a = self.make_model().fit(dataset).recommend(some_users, k=5)
        b = self.make_model().fit(dataset).recommend(some_users, k=5)
        assert a.item_ids == b.item_ids
        for x, y in zip(a.scores, b.scores, strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-6)

    # ------------------------------------------------------------------ recommend
    def test_batch_shapes_and_sorted_scores(self, fitted: Recommender, dataset: Dataset, some_users: list[str]) -> None:
        recs = fitted.recommend(some_users, k=5)
        assert recs.query_ids == some_users
        assert len(recs.item_ids) == len(recs.scores) == len(some_users)
        known = set(dataset.items.ids.tolist())
        for items, scores in zip(recs.item_ids, recs.scores, strict=True):
            assert 0 < len(items) <= 5
            assert len(items) == len(scores) == len(set(items))
            assert set(items) <= known
            scores = np.asarray(scores, dtype=np.float64)
            assert np.isfinite(scores).all()
            assert (np.diff(scores) <= 1e-9).all(), "scores must be best first"

    def test_batch_equals_one_by_one(self, fitted: Recommender, some_users: list[str]) -> None:
        batch = fitted.recommend(some_users, k=5)
        for i, user in enumerate(some_users):
            single = fitted.recommend([user], k=5)
            assert single.item_ids[0] == batch.item_ids[i]
            np.testing.assert_allclose(single.scores[0], batch.scores[i], rtol=1e-5, atol=1e-6)

    def test_empty_user_list(self, fitted: Recommender) -> None:
        recs = fitted.recommend([], k=5)
        assert len(recs) == 0 and recs.item_ids == []

    def test_exclude_seen(self, fitted: Recommender, dataset: Dataset) -> None:
        users = [str(u) for u in dataset.users.ids.tolist()]
        recs = fitted.recommend(users, k=dataset.n_items)
        for user, items in zip(users, recs.item_ids, strict=True):
            seen = seen_items(dataset, user)
            assert not seen & set(items), f"{user} was recommended items they saw"
            assert len(items) <= dataset.n_items - len(seen)

    def test_include_seen_when_asked(self, fitted: Recommender, dataset: Dataset, some_users: list[str]) -> None:
        recs = fitted.recommend(some_users, k=dataset.n_items, exclude_seen=False)
        assert any(seen_items(dataset, u) & set(items) for u, items in zip(some_users, recs.item_ids, strict=True))

    def test_candidates_restrict(self, fitted: Recommender, dataset: Dataset, some_users: list[str]) -> None:
        candidates = [str(i) for i in dataset.items.ids[::3].tolist()]
        recs = fitted.recommend(some_users, k=dataset.n_items, candidates=candidates)
        for user, items in zip(some_users, recs.item_ids, strict=True):
            allowed = set(candidates) - seen_items(dataset, user)
            assert set(items) <= allowed
        unrestricted = fitted.recommend(some_users, k=dataset.n_items, exclude_seen=False, candidates=candidates)
        assert all(set(items) <= set(candidates) for items in unrestricted.item_ids)

    def test_candidate_scores_match_unrestricted(self, fitted: Recommender, dataset: Dataset) -> None:
        user = str(dataset.users.ids[0])
        full = fitted.recommend([user], k=dataset.n_items)
        candidates = full.item_ids[0][1::2]
        part = fitted.recommend([user], k=len(candidates), candidates=candidates)
        lookup = dict(full.row(0))
        for item, score in part.row(0):
            assert score == pytest.approx(lookup[item], rel=1e-5, abs=1e-6)

    def test_unknown_candidate_raises(self, fitted: Recommender, dataset: Dataset) -> None:
        with pytest.raises(UnknownItemError, match="no-such-item"):
            fitted.recommend([str(dataset.users.ids[0])], candidates=["no-such-item"])

    def test_k_larger_than_catalog(self, fitted: Recommender, dataset: Dataset, some_users: list[str]) -> None:
        recs = fitted.recommend(some_users, k=dataset.n_items + 50)
        for items in recs.item_ids:
            assert len(items) <= dataset.n_items and len(set(items)) == len(items)

    @pytest.mark.parametrize("k", [0, -3])
    def test_bad_k_raises(self, fitted: Recommender, dataset: Dataset, k: int) -> None:
        with pytest.raises(ParameterError, match="k"):
            fitted.recommend([str(dataset.users.ids[0])], k=k)
        with pytest.raises(ParameterError, match="k"):
            fitted.similar_items([str(dataset.items.ids[0])], k=k)

    def test_unknown_user_raises_naming_it(self, fitted: Recommender, dataset: Dataset) -> None:
        with pytest.raises(UnknownUserError, match="ghost-user"):
            fitted.recommend([str(dataset.users.ids[0]), "ghost-user"])

    def test_explanations_only_when_asked(self, fitted: Recommender, dataset: Dataset, some_users: list[str]) -> None:
        assert fitted.recommend(some_users, k=4).explanations is None
        recs = fitted.recommend(some_users, k=4, explain=True)
        if not self.explains:
            assert recs.explanations is None
            return
        assert recs.explanations is not None and len(recs.explanations) == len(some_users)
        for user, items, why in zip(some_users, recs.item_ids, recs.explanations, strict=True):
            assert len(why) == len(items)
            assert any(why), f"no explanation at all for {user}"
            for reasons in why:
                assert set(reasons) <= seen_items(dataset, user)

    @pytest.mark.parametrize("exclude_seen", [True, False])
    @pytest.mark.parametrize("restricted", [False, True])
    def test_recommend_row_matches_recommend(
        self, fitted: Recommender, dataset: Dataset, some_users: list[str], exclude_seen: bool, restricted: bool
    ) -> None:
        """The serving path (one user, index space) ranks and explains exactly as ``recommend`` does."""
        assert fitted.users_ is not None and fitted.items_ is not None
        ids = fitted.items_.ids
        # every third item: some of each user's own items are among them, so exclusion inside candidates is checked
        cand_idx = np.arange(0, len(ids), 3) if restricted else None
        cand_ids = None if cand_idx is None else [str(x) for x in ids[cand_idx].tolist()]
        for user in some_users:
            expected = fitted.recommend([user], k=5, exclude_seen=exclude_seen, candidates=cand_ids, explain=True)
            row = fitted.users_.lookup[user]
            got = fitted.recommend_row(row, k=5, exclude_seen=exclude_seen, candidates=cand_idx, explain=True)
            assert [str(x) for x in ids[got.items].tolist()] == expected.item_ids[0]
            np.testing.assert_allclose(got.scores, np.asarray(expected.scores[0], dtype=np.float64), rtol=1e-6)
            if expected.explanations is None:
                assert got.because is None
            else:
                assert got.because is not None
                assert [[str(ids[j]) for j in b] for b in got.because] == expected.explanations[0]
            if cand_idx is not None:
                assert set(got.items.tolist()) <= set(cand_idx.tolist())
            if exclude_seen:
                assert not {str(x) for x in ids[got.items].tolist()} & seen_items(dataset, user)
            assert fitted.recommend_row(row, k=5, exclude_seen=exclude_seen, candidates=cand_idx).because is None

    # ------------------------------------------------------------------ similar items
    def test_similar_items_exclude_query(self, fitted: Recommender, dataset: Dataset) -> None:
        queries = [str(i) for i in dataset.items.ids[:6].tolist()]
        sims = fitted.similar_items(queries, k=5)
        assert sims.query_ids == queries
        for query, items, scores in zip(queries, sims.item_ids, sims.scores, strict=True):
            assert query not in items
            assert len(items) <= 5 and len(set(items)) == len(items)
            assert (np.diff(np.asarray(scores, dtype=np.float64)) <= 1e-9).all()

    def test_similar_items_unknown_raises_naming_it(self, fitted: Recommender) -> None:
        with pytest.raises(UnknownItemError, match="ghost-item"):
            fitted.similar_items(["ghost-item"])

    # ------------------------------------------------------------------ persistence
    def test_save_load_round_trip(self, fitted: Recommender, dataset: Dataset, tmp_path: Path) -> None:
        fitted.save(tmp_path / "m")
        loaded = type(fitted).load(tmp_path / "m")
        assert loaded.params() == fitted.params()
        users = [str(u) for u in dataset.users.ids.tolist()]
        items = [str(i) for i in dataset.items.ids[:8].tolist()]
        assert_same(fitted.recommend(users, k=7), loaded.recommend(users, k=7))
        assert_same(fitted.recommend(users, k=7, exclude_seen=False), loaded.recommend(users, k=7, exclude_seen=False))
        assert_same(fitted.similar_items(items, k=4), loaded.similar_items(items, k=4))

    def test_no_pickle_written(self, fitted: Recommender, tmp_path: Path) -> None:
        fitted.save(tmp_path)
        files = [p for p in tmp_path.rglob("*") if p.is_file()]
        assert files
        assert not [p for p in files if p.suffix in {".pkl", ".pickle", ".joblib"}]
        for path in files:
            if path.suffix == ".npy":
                assert np.load(path, allow_pickle=False).dtype != object
            elif path.suffix == ".json":
                json.loads(path.read_text(encoding="utf-8"))

    def test_load_missing_directory_raises(self, tmp_path: Path) -> None:
        with pytest.raises(BundleError):
            type(self.make_model()).load(tmp_path / "absent")

    def test_load_missing_or_corrupt_array_raises(self, fitted: Recommender, tmp_path: Path) -> None:
        fitted.save(tmp_path / "good")
        arrays = sorted(p.name for p in (tmp_path / "good").glob("*.npy"))
        if not arrays:
            pytest.skip("model writes no arrays")
        cls = type(fitted)
        for i, name in enumerate(arrays):
            missing = tmp_path / f"missing{i}"
            shutil.copytree(tmp_path / "good", missing)
            (missing / name).unlink()
            with pytest.raises(BundleError, match=name):
                cls.load(missing)
            corrupt = tmp_path / f"corrupt{i}"
            shutil.copytree(tmp_path / "good", corrupt)
            (corrupt / name).write_bytes(b"\x00garbage, not an array")
            with pytest.raises(BundleError):
                cls.load(corrupt)

    def test_load_corrupt_json_raises(self, fitted: Recommender, tmp_path: Path) -> None:
        fitted.save(tmp_path)
        target = sorted(tmp_path.glob("*.json"))[0]
        target.write_text("{not json", encoding="utf-8")
        with pytest.raises(BundleError, match=target.name):
            type(fitted).load(tmp_path)

    # ------------------------------------------------------------------ planted structure
    def test_planted_structure_users(self, cluster_dataset: Dataset) -> None:
        """Held-out items of a user's own cluster land in their top 10 far more often than at random."""
        if not self.recovers_user_structure:
            pytest.skip("model does not personalise by co-occurrence")
        train, held = hold_out(cluster_dataset, per_user=3, seed=3)
        model = self.make_model().fit(train)
        users = sorted(held)
        recs = model.recommend(users, k=10)
        hits = sum(len(held[u] & set(items)) for u, items in zip(users, recs.item_ids, strict=True))
        hit_rate = hits / sum(len(v) for v in held.values())
        unseen = cluster_dataset.n_items - (train.n_interactions / train.n_users)
        random_rate = 10 / unseen
        assert hit_rate >= self.min_hit_rate, f"hit rate {hit_rate:.2f} (random {random_rate:.2f})"
        assert hit_rate >= 3 * random_rate

    def test_planted_structure_items(self, cluster_dataset: Dataset) -> None:
        """An item's most similar items come from its own cluster."""
        if not self.recovers_item_structure:
            pytest.skip("model has no item-item structure")
        model = self.make_model().fit(cluster_dataset)
        items = [str(i) for i in cluster_dataset.items.ids.tolist()]
        sims = model.similar_items(items, k=5)
        same = [it[:2] == q[:2] for q, row in zip(items, sims.item_ids, strict=True) for it in row]
        assert same and np.mean(same) >= self.min_similar_precision


class FactorRecommenderContract(RecommenderContract):
    """Extra behaviour of factor models: factor shapes, fold-in, arbitrary vectors and the ANN path."""

    def test_factor_shapes_and_finite(self, fitted: Any, dataset: Dataset) -> None:
        d = fitted.n_dims
        assert fitted.user_factors_.shape == (dataset.n_users, d)
        assert fitted.item_factors_.shape == (dataset.n_items, d)
        assert np.isfinite(fitted.user_factors_).all() and np.isfinite(fitted.item_factors_).all()

    def test_factor_shapes_differ_on_non_square_data(self, toy_dataset: Dataset) -> None:
        # a transposed training matrix would swap these; the toy data has more users than items
        assert toy_dataset.n_users != toy_dataset.n_items
        model: Any = self.make_model().fit(toy_dataset)
        assert model.user_factors_.shape[0] == toy_dataset.n_users
        assert model.item_factors_.shape[0] == toy_dataset.n_items

    def test_recommend_vector_matches_user_factors(self, fitted: Any, dataset: Dataset) -> None:
        user = str(dataset.users.ids[3])
        seen = sorted(seen_items(dataset, user))
        vector = fitted.user_factors_[dataset.user_index([user])[0]]
        by_vector = fitted.recommend_vector(vector, k=6, exclude=seen)
        by_user = fitted.recommend([user], k=6)
        assert by_vector.item_ids == by_user.item_ids
        np.testing.assert_allclose(by_vector.scores[0], by_user.scores[0], rtol=1e-5)

    def test_recommend_vector_bad_shape_raises(self, fitted: Any) -> None:
        with pytest.raises(ParameterError):
            fitted.recommend_vector(np.ones(fitted.n_dims + 1))

    def test_fold_in_returns_vector(self, fitted: Any, dataset: Dataset) -> None:
        items = [str(i) for i in dataset.items.ids[:3].tolist()]
        vector = fitted.fold_in(items)
        assert vector.shape == (fitted.n_dims,) and np.isfinite(vector).all()
        recs = fitted.recommend_vector(vector, k=5, exclude=items)
        assert not set(recs.item_ids[0]) & set(items)
        with pytest.raises(UnknownItemError, match="ghost-item"):
            fitted.fold_in(["ghost-item"])
        with pytest.raises(ParameterError):
            fitted.fold_in(items, values=[1.0])

    def test_fold_in_recovers_cluster(self, cluster_dataset: Dataset) -> None:
        """A new user folded in from cluster items is recommended items of that cluster."""
        model: Any = self.make_model().fit(cluster_dataset)
        items = ["c2i00", "c2i01", "c2i03", "c2i05"]
        recs = model.recommend_vector(model.fold_in(items), k=5, exclude=items)
        assert sum(i.startswith("c2") for i in recs.item_ids[0]) >= 4

    def test_ann_exact_matches_dense(self, dataset: Dataset, some_users: list[str], tmp_path: Path) -> None:
        exact = self.make_model().fit(dataset)
        ann: Any = self.make_model(use_ann=True).fit(dataset)
        assert ann.ann_ is not None and ann.ann_.kind == "flat"
        a, b = exact.recommend(some_users, k=5), ann.recommend(some_users, k=5)
        assert a.item_ids == b.item_ids
        items = [str(i) for i in dataset.items.ids[:5].tolist()]
        sa, sb = exact.similar_items(items, k=4), ann.similar_items(items, k=4)
        for x, y in zip(sa.scores, sb.scores, strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
        ann.save(tmp_path)
        assert (tmp_path / "ann_items.faiss").is_file()
        assert_same(ann.recommend(some_users, k=5), type(ann).load(tmp_path).recommend(some_users, k=5))
