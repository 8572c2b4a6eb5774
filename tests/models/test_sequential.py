"""seqtrans: the contract suite plus what makes it sequence-aware (order, transitions, fold-in in order)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import polars as pl
import pytest

from contracts.recommender import RecommenderContract
from tastebud.data.dataset import Dataset
from tastebud.errors import BundleError, DataWarning
from tastebud.models import create
from tastebud.models.sequential import SeqTransRecommender


class TestSeqTrans(RecommenderContract):
    model_name = "seqtrans"
    explains = True
    bad_params: ClassVar[list[dict[str, Any]]] = [
        {"window": 0},
        {"gap_decay": 0.0},
        {"last_decay": 1.5},
        {"recency_tau": -1.0},
        {"transition_weight": -0.1},
        {"l2": 0.0},
    ]

    def make_model(self, **params: Any) -> SeqTransRecommender:
        return SeqTransRecommender(**{"l2": 5.0, **params})

    @pytest.mark.filterwarnings("ignore::tastebud.errors.DataWarning")
    def test_planted_structure_users(self, cluster_dataset: Dataset) -> None:
        super().test_planted_structure_users(cluster_dataset)

    @pytest.mark.filterwarnings("ignore::tastebud.errors.DataWarning")
    def test_planted_structure_items(self, cluster_dataset: Dataset) -> None:
        super().test_planted_structure_items(cluster_dataset)


def _chains(n_users: int = 60, seed: int = 0) -> Dataset:
    """Users walk the chain a0 -> a1 -> ... -> a9 from a random start, one step per day, plus noise items."""
    rng = np.random.default_rng(seed)
    users, items, stamps = [], [], []
    for u in range(n_users):
        start = int(rng.integers(0, 5))
        length = int(rng.integers(3, 6))
        noise = rng.choice(10, size=2, replace=False)
        seq = [f"n{j}" for j in noise] + [f"a{start + s}" for s in range(length)]
        users += [f"u{u:02d}"] * len(seq)
        items += seq
        stamps += [1_600_000_000 + 86_400 * t for t in range(len(seq))]
    return Dataset.from_frame(pl.DataFrame({"user_id": users, "item_id": items, "timestamp": stamps}))


def test_transitions_follow_the_order() -> None:
    data = _chains()
    model = SeqTransRecommender(l2=5.0).fit(data)
    t = model.transitions_.toarray()
    lookup = data.items.lookup
    # a3 is followed by a4 in every walk through it, never preceded by it
    assert t[lookup["a3"], lookup["a4"]] > t[lookup["a4"], lookup["a3"]]
    np.testing.assert_allclose(t.sum(axis=1)[t.sum(axis=1) > 0], 1.0, rtol=1e-5)


def test_next_item_comes_first_for_a_history_in_order() -> None:
    model = SeqTransRecommender(l2=5.0, transition_weight=5.0).fit(_chains())
    recs = model.recommend_history(["n1", "a2", "a3"], k=3)
    assert recs.item_ids[0][0] == "a4"
    # the same items in another order point elsewhere: order matters
    assert model.recommend_history(["a3", "a2", "n1"], k=3).item_ids[0] != recs.item_ids[0]


def test_user_history_is_time_ordered_and_scores_like_recommend(toy_dataset: Dataset) -> None:
    model = SeqTransRecommender(l2=5.0).fit(toy_dataset)
    inter = toy_dataset.interactions
    for user in [str(u) for u in toy_dataset.users.ids[:6].tolist()]:
        items, values = model.user_history(user)
        u = toy_dataset.users.lookup[user]
        stamps = dict(
            zip(
                inter.filter(pl.col("user_idx") == u)["item_idx"].to_list(),
                inter.filter(pl.col("user_idx") == u)["timestamp"].to_list(),
                strict=True,
            )
        )
        times = [stamps[toy_dataset.items.lookup[i]] for i in items]
        assert times == sorted(times) and (values == 1.0).all()
        want = model.recommend([user], k=8, explain=True)
        got = model.recommend_history(items, values, k=8, explain=True)
        assert got.item_ids == want.item_ids and got.explanations == want.explanations
        np.testing.assert_allclose(got.scores[0], want.scores[0], rtol=1e-6)


def test_overlay_appended_last_counts_as_latest() -> None:
    """Serving appends new events after the training history: a repeated item moves to the end."""
    model = SeqTransRecommender(l2=5.0, transition_weight=5.0).fit(_chains())
    a = model.recommend_history(["a3", "n1", "a5", "a3"], k=5)
    b = model.recommend_history(["n1", "a5", "a3"], k=5)
    assert a.item_ids == b.item_ids


def test_zero_weights_reduce_to_ease(toy_dataset: Dataset) -> None:
    from tastebud.models.ease import EASERecommender

    ours = SeqTransRecommender(l2=10.0, recency_tau=0.0, transition_weight=0.0).fit(toy_dataset)
    ease = EASERecommender(l2=10.0).fit(toy_dataset)
    users = [str(u) for u in toy_dataset.users.ids[:10].tolist()]
    a, b = ours.recommend(users, k=5), ease.recommend(users, k=5)
    for x, y in zip(a.scores, b.scores, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)


def test_without_timestamps_warns_and_uses_row_order(cluster_dataset: Dataset) -> None:
    with pytest.warns(DataWarning, match="row order"):
        SeqTransRecommender(l2=5.0).fit(cluster_dataset)


def test_load_rejects_inconsistent_histories(toy_dataset: Dataset, tmp_path: Path) -> None:
    SeqTransRecommender(l2=5.0).fit(toy_dataset).save(tmp_path)
    items = np.load(tmp_path / "seq_items.npy")
    np.save(tmp_path / "seq_items.npy", np.full_like(items, toy_dataset.n_items + 3))
    with pytest.raises(BundleError, match="histories"):
        SeqTransRecommender.load(tmp_path)


def test_serving_overlay_scores_new_events_in_arrival_order() -> None:
    """The engine appends a user's new events after their history; the latest event steers the transitions."""
    from tastebud.serving.engine import Engine
    from tastebud.serving.realtime import UserOverlays
    from tastebud.stream.handlers import normalise_events

    data = _chains()
    model = SeqTransRecommender(l2=5.0, transition_weight=5.0).fit(data)
    engine = Engine(model, {}, data.item_meta)
    engine.overlays = UserOverlays()
    user = str(data.users.ids[0])
    raw = [
        {"event_id": f"e{i}", "user_id": user, "item_id": item, "rating": 5, "timestamp": 1_700_000_000 + i}
        for i, item in enumerate(["a6", "a7"])
    ]
    events, rejected = normalise_events(raw, source="test")
    assert not rejected
    engine.overlays.add(events)
    items = [it["item_id"] for it in engine.recommend(user, 3).items]
    assert items[0] == "a8" and not {"a6", "a7"} & set(items)


def test_bundle_round_trip(toy_dataset: Dataset, tmp_path: Path) -> None:
    from tastebud.registry.bundle import load_bundle, write_bundle

    model = SeqTransRecommender(l2=5.0).fit(toy_dataset)
    popular = create("popular").fit(toy_dataset)
    write_bundle(model, tmp_path / "b", train=toy_dataset, metrics={"ndcg": 0.1}, fallback={"popular": popular})
    loaded = load_bundle(tmp_path / "b").model
    users = [str(u) for u in toy_dataset.users.ids[:5].tolist()]
    assert loaded.recommend(users, k=5).item_ids == model.recommend(users, k=5).item_ids
