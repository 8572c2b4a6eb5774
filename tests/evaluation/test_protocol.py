"""The evaluation protocol on hand-built splits with small test-local models."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np
import polars as pl
import pytest

from tastebud.data.dataset import Dataset, IdMap
from tastebud.data.split import Split
from tastebud.errors import NotFittedError, ParameterError, SplitError
from tastebud.evaluation import metrics as m
from tastebud.evaluation.protocol import bootstrap_ci, evaluate, fit_and_evaluate
from tastebud.models.base import ModelConfig, Recommendations, Recommender, top_k


class ScoreConfig(ModelConfig):
    noise: float = 0.0
    seed: int = 0


class ScoreModel(Recommender):
    """Ranks items by training popularity plus seeded noise, or by a given user x item score matrix."""

    name = "score"
    config_class = ScoreConfig

    def __init__(self, config: ModelConfig | None = None, **params: Any) -> None:
        super().__init__(config, **params)
        self.fixed_scores: np.ndarray | None = None  # users x items, set by a test to rank by hand
        self.known_users: Sequence[str] | None = None  # restricts the users the model learns
        self.item_order: np.ndarray | None = None  # permutes the model's own item vocabulary
        self.calls: list[dict[str, Any]] = []

    def fit(self, dataset: Dataset) -> Self:
        pop = np.asarray(dataset.user_item.sum(axis=0)).ravel().astype(float)
        rng = np.random.default_rng(self.config.seed)
        scores = np.tile(pop + self.config.noise * rng.random(len(pop)) * pop.max(), (dataset.n_users, 1))
        if self.fixed_scores is not None:
            scores = self.fixed_scores.astype(float)
        seen = dataset.user_item
        user_rows = np.arange(dataset.n_users)
        if self.known_users is not None:
            user_rows = dataset.users.index(self.known_users, kind="user")
        order = self.item_order if self.item_order is not None else np.arange(dataset.n_items)
        self.users_ = IdMap(dataset.users.ids[user_rows])
        self.items_ = IdMap(dataset.items.ids[order])
        self.scores_ = scores[user_rows][:, order]
        self.seen_ = seen[user_rows][:, order]
        return self

    def recommend(
        self,
        user_ids: Sequence[str],
        k: int = 10,
        *,
        exclude_seen: bool = True,
        candidates: Sequence[str] | None = None,
    ) -> Recommendations:
        self.check_fitted()
        assert self.users_ is not None and self.items_ is not None
        self.calls.append({"n": len(user_ids), "exclude_seen": exclude_seen, "candidates": candidates})
        rows = self.users_.index(user_ids, kind="user")
        scores = self.scores_[rows].copy()
        if exclude_seen:
            scores[self.seen_[rows].toarray() > 0] = -np.inf
        idx, val = top_k(scores, k)
        ids = [[str(self.items_.ids[i]) for i in row if i >= 0] for row in idx]
        return Recommendations(list(user_ids), ids, [v[: len(r)] for v, r in zip(val, ids, strict=True)])

    def similar_items(self, item_ids: Sequence[str], k: int = 10) -> Recommendations:
        raise NotImplementedError

    def save(self, directory: Path) -> None:
        raise NotImplementedError

    @classmethod
    def load(cls, directory: Path) -> Self:
        raise NotImplementedError


class RatingModel(ScoreModel):
    """Also predicts a constant rating."""

    name = "rating"

    def predict(self, user_ids: Sequence[str], item_ids: Sequence[str]) -> np.ndarray:
        return np.full(len(user_ids), 3.0)


def make_split(ratings: bool = False, validation: bool = False) -> Split:
    """6 users x 8 items. Test: u0 {i5, i6}, u1 {i7}, u2 {i0}, u5 {i3}; u3 and u4 have nothing held out."""
    train_pairs = [
        ("u0", "i0"), ("u0", "i1"), ("u1", "i0"), ("u1", "i2"), ("u2", "i1"), ("u2", "i3"),
        ("u3", "i0"), ("u3", "i1"), ("u4", "i2"), ("u4", "i4"), ("u5", "i0"), ("u5", "i5"),
    ]  # fmt: skip
    test_pairs = [
        ("u0", "i5", 5.0),
        ("u0", "i6", 2.0),
        ("u1", "i7", 4.0),
        ("u2", "i0", 1.0),
        ("u5", "i3", 3.0),
    ]
    val_pairs = [("u3", "i6", 4.0), ("u4", "i0", 4.0)]
    rows = [(u, i, 3.0, "train") for u, i in train_pairs] + [(u, i, r, "test") for u, i, r in test_pairs]
    rows += [(u, i, r, "val") for u, i, r in val_pairs]
    frame = pl.DataFrame(rows, schema=["user_id", "item_id", "rating", "part"], orient="row")
    if not ratings:
        frame = frame.drop("rating")
    full = Dataset.from_frame(frame.drop("part"), name="toy")
    inter = full.interactions
    part = frame["part"]

    def pick(name: str) -> Dataset:
        return full.with_interactions(inter.filter(part == name))

    train = pick("train") if validation else full.with_interactions(inter.filter(part != "test"))
    return Split(train, pick("test"), pick("val") if validation else None, meta={"method": "hand"})


def _oracle(split: Split, part: str = "test") -> ScoreModel:
    """A model that ranks each user's held-out items first (higher grade first)."""
    held = split.test if part == "test" else split.validation
    assert held is not None
    model = ScoreModel()
    model.fixed_scores = held.matrix("binary").toarray() * 10 + np.arange(split.train.n_items)[::-1] * 0.01
    return model.fit(split.train)


def test_oracle_scores_perfectly() -> None:
    split = make_split()
    report = evaluate(_oracle(split), split, k=3)
    assert report.user_ids == ["u0", "u1", "u2", "u5"]
    assert report.n_users == 4
    assert report.means["ndcg"] == pytest.approx(1.0)
    assert report.means["recall"] == pytest.approx(1.0)
    assert report.means["hit_rate"] == 1.0
    np.testing.assert_allclose(report.per_user["precision"], [2 / 3, 1 / 3, 1 / 3, 1 / 3])


def test_seen_items_are_excluded_and_count_as_misses() -> None:
    # u2's held-out item i0 is popular, but u5 saw i0 in train; popularity ranks i0 first for u2 only.
    split = make_split()
    model = ScoreModel().fit(split.train)
    report = evaluate(model, split, k=1)
    assert all(call["exclude_seen"] is True and call["candidates"] is None for call in model.calls)
    by_user = dict(zip(report.user_ids, report.per_user["hit_rate"], strict=True))
    assert by_user["u2"] == 1.0
    assert by_user["u5"] == 0.0


def test_metrics_match_direct_computation_and_batches_do_not_matter() -> None:
    split = make_split(ratings=True)
    model = ScoreModel(noise=0.5, seed=3).fit(split.train)
    one = evaluate(model, split, k=4, batch_size=1, graded=True)
    many = evaluate(model, split, k=4, batch_size=100, graded=True)
    for name in m.RANKING_METRICS:
        np.testing.assert_allclose(one.per_user[name], many.per_user[name])
    recs = model.recommend(one.user_ids, 4)
    idx = np.array([split.train.item_index(row) for row in recs.item_ids])
    rel = split.test.matrix("rating")[split.train.user_index(one.user_ids)]
    np.testing.assert_allclose(one.per_user["ndcg"], m.ndcg_at_k(idx, rel, 4, graded=True))
    assert one.graded is True
    binary = evaluate(model, split, k=4)
    assert binary.graded is False
    np.testing.assert_allclose(binary.per_user["ndcg"], m.ndcg_at_k(idx, rel, 4, graded=False))


def test_item_ids_are_mapped_by_id_not_by_model_index() -> None:
    split = make_split()
    plain = _oracle(split)
    permuted = ScoreModel()
    permuted.fixed_scores = plain.fixed_scores
    permuted.item_order = np.arange(split.train.n_items)[::-1].copy()
    permuted.fit(split.train)
    a, b = evaluate(plain, split, k=3), evaluate(permuted, split, k=3)
    assert b.means["ndcg"] == pytest.approx(a.means["ndcg"]) == pytest.approx(1.0)


def test_unknown_users_are_skipped_and_counted() -> None:
    split = make_split()
    model = ScoreModel()
    model.known_users = ["u0", "u1", "u3"]
    model.fit(split.train)
    report = evaluate(model, split, k=3)
    assert report.user_ids == ["u0", "u1"]
    assert report.n_users_skipped == 2


def test_graded_ndcg_uses_ratings() -> None:
    split = make_split(ratings=True)
    model = ScoreModel()
    # u0: i6 (rating 2) ranked above i5 (rating 5)
    scores = np.zeros(split.train.shape)
    scores[0, split.train.item_index(["i6", "i5"])] = [2.0, 1.0]
    model.fixed_scores = scores
    report = evaluate(model.fit(split.train), split, k=2, metrics=["ndcg"], graded=True)
    expected = (2 + 5 / math.log2(3)) / (5 + 2 / math.log2(3))
    assert report.per_user["ndcg"][0] == pytest.approx(expected)


def test_rating_metrics_only_for_predictors_with_ratings() -> None:
    split = make_split(ratings=True)
    report = evaluate(RatingModel().fit(split.train), split, k=3)
    truth = np.array([5.0, 2.0, 4.0, 1.0, 3.0])
    assert report.rmse == pytest.approx(float(np.sqrt(np.mean((truth - 3) ** 2))))
    assert report.mae == pytest.approx(float(np.mean(np.abs(truth - 3))))
    assert report.n_rating_pairs == 5
    assert evaluate(ScoreModel().fit(split.train), split, k=3).rmse is None
    assert evaluate(RatingModel().fit(split.train), split, k=3, rating_metrics=False).rmse is None
    unrated = make_split(ratings=False)
    assert evaluate(RatingModel().fit(unrated.train), unrated, k=3).rmse is None


def test_beyond_accuracy_metrics() -> None:
    split = make_split()
    report = evaluate(ScoreModel().fit(split.train), split, k=2)
    assert 0 < report.coverage <= 1
    assert report.novelty > 0
    # popularity ranks popular items first, so it favours them over the catalog mean
    assert report.popularity_ratio > 1


def test_validation_part_and_errors() -> None:
    split = make_split(validation=True)
    report = evaluate(_oracle(split, "validation"), split, k=2, part="validation")
    assert report.user_ids == ["u3", "u4"]
    assert report.means["recall"] == 1.0
    with pytest.raises(SplitError, match="validation"):
        evaluate(ScoreModel().fit(split.train), make_split(), part="validation")
    with pytest.raises(ParameterError, match="part"):
        evaluate(ScoreModel().fit(split.train), split, part="train")
    with pytest.raises(NotFittedError):
        evaluate(ScoreModel(), split)
    with pytest.raises(ParameterError):
        evaluate(ScoreModel().fit(split.train), split, k=0)


def test_report_to_dict_is_strict_json() -> None:
    split = make_split(ratings=True)
    report = evaluate(ScoreModel().fit(split.train), split, k=3, progress=True)
    data = report.to_dict(per_user=True)
    text = json.dumps(data, allow_nan=False)
    back = json.loads(text)
    assert back["model"] == "score"
    assert back["n_users"] == 4
    assert back["snapshot_id"] == split.train.snapshot_id
    assert back["split_meta"] == {"method": "hand"}
    assert len(back["per_user"]["ndcg"]) == 4
    assert back["ci"]["ndcg"][0] <= back["means"]["ndcg"] <= back["ci"]["ndcg"][1]


def test_fit_and_evaluate_times_the_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    split = make_split()
    report = fit_and_evaluate(ScoreModel(), split, k=2)
    assert report.fit_seconds is not None and report.fit_seconds >= 0
    assert report.eval_seconds >= report.score_seconds >= 0
    with pytest.raises(ParameterError, match="params"):
        fit_and_evaluate(ScoreModel(), split, {"noise": 1.0})
    import tastebud.models as models

    monkeypatch.setitem(models.MODELS, "score", f"{__name__}:ScoreModel")
    named = fit_and_evaluate("score", split, {"noise": 0.25}, k=2)
    assert named.params == {"noise": 0.25, "seed": 0}


def test_bootstrap_ci() -> None:
    rng = np.random.default_rng(1)
    values = rng.normal(2.0, 1.0, 4000)
    low, high = bootstrap_ci(values, n_boot=1000, seed=0)
    half = 1.96 / math.sqrt(len(values))
    assert low < values.mean() < high
    assert (high - low) / 2 == pytest.approx(half, rel=0.15)
    assert bootstrap_ci(values, seed=5) == bootstrap_ci(values, seed=5)
    with_nan = np.concatenate([values, [np.nan] * 10])
    assert bootstrap_ci(with_nan, seed=0) == (low, high)
    assert all(math.isnan(x) for x in bootstrap_ci(np.array([np.nan])))
    with pytest.raises(ParameterError):
        bootstrap_ci(values, n_boot=0)


@pytest.mark.slow
def test_speed_on_movielens_sized_data() -> None:
    """943 users x 1682 items, 100K interactions: the protocol's own work (not model scoring) is fast."""
    rng = np.random.default_rng(0)
    n_users, n_items, n = 943, 1682, 110_000
    pop = 1 / np.arange(1, n_items + 1) ** 0.9  # long-tailed, like MovieLens
    users = rng.integers(0, n_users, n)
    items = rng.choice(n_items, n, p=pop / pop.sum())
    frame = pl.DataFrame({"user_id": users, "item_id": items, "rating": rng.integers(1, 6, n)})
    full = Dataset.from_frame(frame.unique(["user_id", "item_id"]))
    is_test = rng.random(full.n_interactions) < 0.2
    split = Split(
        full.with_interactions(full.interactions.filter(pl.Series(~is_test))),
        full.with_interactions(full.interactions.filter(pl.Series(is_test))),
    )
    model = ScoreModel().fit(split.train)
    report = evaluate(model, split, k=10)
    assert report.n_users == n_users
    assert report.eval_seconds - report.score_seconds < 1.5  # target 0.5 s; slack for shared machines


def test_bootstrap_cis_equal_one_bootstrap_ci_per_metric() -> None:
    from tastebud.evaluation.protocol import bootstrap_ci, bootstrap_cis

    rng = np.random.default_rng(4)
    values = {
        "a": rng.random(3_000),
        "b": rng.random(3_000),
        "with_nan": np.where(rng.random(3_000) < 0.1, np.nan, rng.random(3_000)),
        "empty": np.full(4, np.nan),
        "small": rng.random(3),
    }
    together = bootstrap_cis(values, n_boot=1_500, seed=9)
    assert list(together) == list(values)
    for name, vals in values.items():
        alone = bootstrap_ci(vals, n_boot=1_500, seed=9)
        np.testing.assert_array_equal(np.array(together[name]), np.array(alone))
    with pytest.raises(ParameterError):
        bootstrap_cis(values, n_boot=0)
