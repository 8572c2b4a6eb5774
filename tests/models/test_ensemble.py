"""Ensemble: contract suite, weight learning on a validation split carved from training, blends, persistence."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from contracts.recommender import RecommenderContract, assert_same
from tastebud.data.dataset import Dataset
from tastebud.data.split import make_split, split_random
from tastebud.errors import BundleError, NotFittedError, ParameterError
from tastebud.evaluation.metrics import ndcg_at_k
from tastebud.models import create
from tastebud.models._blend import ndcg_binary, normalise, normalise_row, scorers
from tastebud.models.ensemble import EnsembleConfig, EnsembleRecommender, member_params_from_flat

#: Small, fast, deterministic members.
MEMBER_PARAMS: dict[str, dict[str, Any]] = {
    "ease": {"l2": 10.0},
    "als": {"factors": 8, "iterations": 8, "regularization": 0.1, "alpha": 5.0, "num_threads": 1},
}


def params_for(names: str) -> dict[str, dict[str, Any]]:
    return {n: MEMBER_PARAMS[n] for n in names.split(",") if n in MEMBER_PARAMS}


def pairs(ds: Dataset) -> set[tuple[str, str]]:
    frame = ds.to_frame()
    return set(zip(frame["user_id"].to_list(), frame["item_id"].to_list(), strict=True))


class TestEnsemble(RecommenderContract):
    model_name = "ensemble"
    explains = True
    bad_params: ClassVar[list[dict[str, Any]]] = [
        {"members": []},
        {"members": "ease,no-such-model"},
        {"members": "ease,ensemble"},
        {"members": "ease,ease"},
        {"members": "ease,als", "weights": [1.0]},
        {"members": "ease,als", "weights": [0.0, 0.0]},
        {"members": "ease,als", "weights": [1.0, -1.0]},
        {"members": "ease,als", "member_params": {"bpr": {}}},
        {"members": "ease,als", "member_params": {"ease": {"l2": -1.0}}},
        {"validation_fraction": 1.5},
        {"blend": "median"},
    ]

    def make_model(self, **params: Any) -> EnsembleRecommender:
        return EnsembleRecommender(
            **{"members": "ease,als,itemknn", "member_params": params_for("ease,als,itemknn"), **params}
        )


# ---------------------------------------------------------------------- configuration
def test_members_accept_a_comma_separated_string_or_a_list() -> None:
    assert create("ensemble", members="ease, als").params()["members"] == ["ease", "als"]
    assert create("ensemble", members=["ease", "als"]).params()["members"] == ["ease", "als"]


def test_dotted_cli_params_go_to_member_params() -> None:
    flat = {"members": "ease,als", "ease.l2": 300, "als.factors": 32, "blend": "rank"}
    params = member_params_from_flat(flat)
    assert params == {
        "members": "ease,als",
        "blend": "rank",
        "member_params": {"ease": {"l2": 300}, "als": {"factors": 32}},
    }
    assert create("ensemble", **params).config.member_params["als"] == {"factors": 32}


def test_ndcg_binary_matches_the_evaluation_metric() -> None:
    rng = np.random.default_rng(0)
    import scipy.sparse as sp

    relevant = sp.random(30, 50, density=0.1, format="csr", random_state=1)
    relevant.data[:] = 1.0
    idx = np.stack([rng.permutation(50)[:10] for _ in range(30)])
    idx[3, 7:] = -1
    ours = ndcg_binary(idx, relevant, 10)
    theirs = ndcg_at_k(idx, relevant, 10, graded=False)
    np.testing.assert_allclose(ours[np.isfinite(theirs)], theirs[np.isfinite(theirs)])


# ---------------------------------------------------------------------- weights without the test part
def test_weights_are_learned_on_a_validation_part_disjoint_from_test(toy_dataset: Dataset) -> None:
    split = make_split(toy_dataset, "random", test_fraction=0.2, seed=5)
    model = EnsembleRecommender(members="ease,als", member_params=MEMBER_PARAMS, random_state=9).fit(split.train)
    report = model.validation_
    assert report["learned"] is True and report["members"] == ["ease", "als"]
    assert np.isclose(sum(report["weights"]), 1.0)
    # the validation part is the carve of the training part the fit describes: inside train, disjoint from test
    assert model.config.n_folds == 3 and report["folds"] == 3
    for fold, snapshot in enumerate(report["validation_snapshot_ids"]):
        inner = split_random(split.train, test_fraction=model.config.validation_fraction, seed=9 + fold)
        assert snapshot == inner.test.snapshot_id
        validation = pairs(inner.test)
        assert validation and validation <= pairs(split.train)
        assert not validation & pairs(split.test)
    # the refitted members learned from all the training part, validation included
    assert model.seen_.nnz == split.train.n_interactions


def test_search_prefers_the_informative_member(cluster_dataset: Dataset) -> None:
    """Against a popularity member, the weight search gives the collaborative member most of the weight."""
    model = EnsembleRecommender(members="popular,ease", member_params={"ease": {"l2": 10.0}}).fit(cluster_dataset)
    weights = dict(zip(model.validation_["members"], model.validation_["weights"], strict=True))
    assert weights["ease"] > weights["popular"]
    single = model.validation_["member_ndcg_at_10"]
    assert model.validation_["ndcg_at_10"] >= max(single.values()) - 1e-9


def test_zero_weight_members_are_dropped(toy_dataset: Dataset) -> None:
    model = EnsembleRecommender(members="ease,als", member_params=MEMBER_PARAMS, weights=[1.0, 0.0]).fit(toy_dataset)
    assert model.member_names == ["ease"]
    assert model.validation_ == {"learned": False}
    alone = create("ease", **MEMBER_PARAMS["ease"]).fit(toy_dataset)
    users = [str(u) for u in toy_dataset.users.ids[:10].tolist()]
    assert model.recommend(users, k=5).item_ids == alone.recommend(users, k=5).item_ids


@pytest.mark.parametrize("blend", ["score", "rank"])
def test_fixed_weights_blend_normalised_member_scores(toy_dataset: Dataset, blend: str) -> None:
    model = EnsembleRecommender(members="ease,als", member_params=MEMBER_PARAMS, weights=[0.3, 0.7], blend=blend).fit(
        toy_dataset
    )
    assert model.weights_ is not None and np.allclose(model.weights_, [0.3, 0.7])
    scores = model.blend(np.arange(5))
    assert scores.shape == (5, toy_dataset.n_items)
    seen = toy_dataset.user_item[:5].toarray() > 0
    assert np.isneginf(scores[seen]).all() and np.isfinite(scores[~seen]).all()


def test_from_models_learns_weights_on_a_held_out_part(toy_dataset: Dataset) -> None:
    split = make_split(toy_dataset, "random", test_fraction=0.2, validation_fraction=0.15, seed=1)
    members = [create(name, **MEMBER_PARAMS[name]).fit(split.train) for name in ("ease", "als")]
    assert split.validation is not None
    model = EnsembleRecommender.from_models(members, split.validation)
    assert model.validation_["learned"] is True
    assert model.validation_["validation_snapshot_ids"] == [split.validation.snapshot_id]
    assert all(m in members for m in model.members_ or [])
    with pytest.raises(ParameterError):
        EnsembleRecommender.from_models(members)
    with pytest.raises(NotFittedError):
        EnsembleRecommender.from_models([create("ease")], weights=[1.0])


def test_members_with_other_vocabularies_are_refused(toy_dataset: Dataset, cluster_dataset: Dataset) -> None:
    a = create("ease", l2=10.0).fit(toy_dataset)
    b = create("ease", l2=10.0).fit(cluster_dataset)
    with pytest.raises(ParameterError, match="vocabular"):
        EnsembleRecommender.from_models([a, create("itemknn").fit(cluster_dataset)], weights=[1.0, 1.0])
    del b


# ---------------------------------------------------------------------- history (serving overlays)
def test_history_of_a_known_user_blends_the_history_members(toy_dataset: Dataset) -> None:
    model = EnsembleRecommender(members="ease,itemknn", member_params=params_for("ease,itemknn"), weights=[0.5, 0.5])
    model.fit(toy_dataset)
    user = str(toy_dataset.users.ids[2])
    ids, values = model.user_history(user)
    by_history = model.recommend_history(ids, values, k=5, explain=True)
    by_user = model.recommend([user], k=5)
    # EASE and item-KNN score a user exactly from their history: the two paths agree
    assert by_history.item_ids == by_user.item_ids
    np.testing.assert_allclose(by_history.scores[0], by_user.scores[0], rtol=1e-5, atol=1e-6)
    assert by_history.explanations is not None and any(by_history.explanations[0])
    new = model.recommend_history([ids[0], ids[1]], k=5)
    assert not {ids[0], ids[1]} & set(new.item_ids[0])


def test_history_needs_a_member_that_scores_one(toy_dataset: Dataset) -> None:
    model = EnsembleRecommender(members="svd,userknn", weights=[0.5, 0.5]).fit(toy_dataset)
    with pytest.raises(NotImplementedError, match="history"):
        model.recommend_history([str(toy_dataset.items.ids[0])])


# ---------------------------------------------------------------------- persistence
def test_saved_layout_has_one_directory_per_member(toy_dataset: Dataset, tmp_path: Path) -> None:
    model = EnsembleRecommender(members="ease,als", member_params=MEMBER_PARAMS).fit(toy_dataset)
    model.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert [m["dir"] for m in meta["members"]] == [f"{i}-{n}" for i, n in enumerate(model.member_names)]
    for entry in meta["members"]:
        assert (tmp_path / "m" / "members" / entry["dir"] / "model.json").is_file()
    loaded = EnsembleRecommender.load(tmp_path / "m")
    assert loaded.validation_ == json.loads(json.dumps(model.validation_))
    users = [str(u) for u in toy_dataset.users.ids.tolist()]
    assert_same(model.recommend(users, k=6, explain=True), loaded.recommend(users, k=6, explain=True))


def test_load_refuses_a_tampered_member_list(toy_dataset: Dataset, tmp_path: Path) -> None:
    model = EnsembleRecommender(members="ease,als", member_params=MEMBER_PARAMS).fit(toy_dataset)
    model.save(tmp_path / "good")
    cases = {
        "escape": lambda m: m["members"][0].update(dir="../../elsewhere"),
        "class": lambda m: m["members"][0].update({"class": "os:system"}),
        "name": lambda m: m["members"][0].update(name="no-such-model"),
        "weight": lambda m: m["members"][0].update(weight=float("nan")),
        "empty": lambda m: m.update(members=[]),
    }
    for label, edit in cases.items():
        bad = tmp_path / label
        shutil.copytree(tmp_path / "good", bad)
        meta = json.loads((bad / "model.json").read_text())
        edit(meta)
        (bad / "model.json").write_text(json.dumps(meta))
        with pytest.raises(BundleError):
            EnsembleRecommender.load(bad)
    missing = tmp_path / "missing-member"
    shutil.copytree(tmp_path / "good", missing)
    shutil.rmtree(missing / "members" / "0-ease")
    with pytest.raises(BundleError):
        EnsembleRecommender.load(missing)


@pytest.mark.parametrize("method", ["zscore", "minmax", "rank"])
def test_normalise_uses_only_the_valid_cells(method: str) -> None:
    config = EnsembleConfig(
        normalize="minmax" if method == "minmax" else "zscore", blend="rank" if method == "rank" else "score"
    )
    scores = np.array([[5.0, 1.0, 3.0, 100.0, np.nan], [2.0, 2.0, 2.0, 2.0, 2.0], [1.0, 2.0, 3.0, 4.0, 5.0]])
    valid = np.array([[True, True, True, False, True], [True] * 5, [False] * 5])
    out = normalise(scores, valid, config)
    assert (out[:, 3][:1] == 0).all() and out[0, 4] == 0 and (out[2] == 0).all()
    row = np.array([5.0, 1.0, 3.0])
    expected = {
        "zscore": (row - row.mean()) / row.std(),
        "minmax": (row - row.min()) / (row.max() - row.min()),
        "rank": 1.0 / (60.0 + np.array([1.0, 3.0, 2.0])),
    }[method]
    np.testing.assert_allclose(out[0, :3], expected)
    if method != "rank":
        assert (out[1] == 0).all()  # no spread


@pytest.mark.parametrize("name", ["ease", "als", "itemknn", "rp3beta", "userknn", "popular", "svd"])
def test_member_scores_are_the_members_own(name: str, toy_dataset: Dataset) -> None:
    """The ensemble reads each member's raw scores exactly as the member ranks by them (fast paths included)."""
    member = create(name, **MEMBER_PARAMS.get(name, {})).fit(toy_dataset)
    row_fn, block_fn = scorers(member)
    users = [str(u) for u in toy_dataset.users.ids[:6].tolist()]
    recs = member.recommend(users, k=toy_dataset.n_items, exclude_seen=False)
    block = block_fn(np.arange(6))
    for r, (items, scores) in enumerate(zip(recs.item_ids, recs.scores, strict=True)):
        cols = toy_dataset.items.index(items, kind="item")
        np.testing.assert_allclose(row_fn(r)[cols], np.asarray(scores, dtype=np.float64), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(block[r], row_fn(r))


@pytest.mark.parametrize("config", [{}, {"normalize": "minmax"}, {"blend": "rank"}])
def test_the_one_row_normaliser_matches_the_batched_one(config: dict[str, Any]) -> None:
    cfg = EnsembleConfig(**config)
    rng = np.random.default_rng(3)
    scores = rng.normal(size=(6, 40))
    scores[1, 5] = np.nan
    scores[2, :] = 1.0
    scores[3, [2, 9]] = 0.5  # ties keep their column order
    valid = rng.random((6, 40)) > 0.2
    valid[4] = False
    batched = normalise(scores, valid, cfg)
    for r in range(6):
        np.testing.assert_allclose(normalise_row(scores[r], valid[r], cfg), batched[r], rtol=1e-12, atol=1e-12)


def test_serving_blend_equals_the_normalised_sum(toy_dataset: Dataset) -> None:
    """The per-request z-score shortcut gives the blend of normalise()d member scores."""
    model = EnsembleRecommender(members="ease,als", member_params=MEMBER_PARAMS, weights=[0.4, 0.6]).fit(toy_dataset)
    assert model.members_ is not None and model.weights_ is not None
    rows = np.arange(toy_dataset.n_users)
    valid = toy_dataset.user_item.toarray() == 0
    expected = sum(
        w * normalise(scorers(m)[1](rows), valid, model.config)
        for w, m in zip(model.weights_, model.members_, strict=True)
    )
    np.testing.assert_allclose(model.blend(rows)[valid], np.asarray(expected)[valid], rtol=1e-9, atol=1e-9)


def test_weight_search_reports_the_exact_ndcg_of_its_weights() -> None:
    """The search's pruned top-k (a lower bound from a pool of items, then only the items above it sorted) gives
    the same NDCG as ranking every item: recomputed here by brute force for the learned weights and each member."""
    from tastebud.data.split import split_random
    from tastebud.data.synthetic import generate_synthetic
    from tastebud.models import create
    from tastebud.models._blend import _validation_blocks, learn_weights
    from tastebud.models.base import top_k
    from tastebud.models.ensemble import EnsembleConfig

    data = generate_synthetic(150, 120, 4000, seed=3)
    # members whose scores do not tie (popularity or item-KNN zeros tie, and a tie may fall either way)
    cfg = EnsembleConfig(members=["ease", "als", "rp3beta"], n_folds=2, k=5)
    folds = []
    for fold in range(2):
        inner = split_random(data, test_fraction=0.2, seed=fold)
        members = [
            create("ease", l2=20.0),
            create("als", factors=8, iterations=5, random_state=0, num_threads=1),
            create("rp3beta", n_neighbors=200),
        ]
        folds.append(([m.fit(inner.train) for m in members], inner.test, inner.train.matrix("value")))
    weights, report = learn_weights(folds, cfg, names=cfg.members)

    def brute(w: np.ndarray) -> float:
        total, users = 0.0, 0
        for members, validation, seen in folds:
            normed, valid, rel = _validation_blocks(members, validation, seen, cfg, len(folds))
            blended = sum(np.float32(x) * part for x, part in zip(w.tolist(), normed, strict=True))
            blended = np.where(valid, blended, -np.inf)
            idx, _ = top_k(blended, cfg.k)
            total += float(ndcg_binary(idx, rel, cfg.k).sum())
            users += rel.shape[0]
        return total / users

    assert report["ndcg_at_5"] == pytest.approx(brute(weights), abs=1e-6)
    for i, name in enumerate(cfg.members):
        assert report["member_ndcg_at_5"][name] == pytest.approx(brute(np.eye(3)[i]), abs=1e-9)
