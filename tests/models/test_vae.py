"""Mult-VAE: the contract suite, the network against a PyTorch forward pass, history scoring, and the torch extra."""

from __future__ import annotations

import builtins
import sys
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from contracts.recommender import RecommenderContract
from tastebud.data.dataset import Dataset
from tastebud.errors import ConfigError
from tastebud.models.vae import MultVAERecommender

torch = pytest.importorskip("torch", reason="Mult-VAE trains with PyTorch (the 'neural' extra)")

#: Small network and enough updates for the toy data (the defaults are the paper's, for ML-100K).
SMALL = {"hidden": 32, "latent": 8, "epochs": 80, "batch_size": 16, "learning_rate": 0.01, "num_threads": 1}


class TestMultVAE(RecommenderContract):
    model_name = "multvae"
    bad_params: ClassVar[list[dict[str, Any]]] = [
        {"hidden": 0},
        {"dropout": 1.0},
        {"epochs": 0},
        {"learning_rate": 0.0},
        {"anneal_cap": -0.1},
    ]

    def make_model(self, **params: Any) -> MultVAERecommender:
        return MultVAERecommender(**{**SMALL, **params})


def test_forward_matches_torch_on_the_training_rows(toy_dataset: Dataset) -> None:
    """The NumPy scoring path is the trained network's own forward pass (mean latent, no dropout)."""
    model = MultVAERecommender(**SMALL).fit(toy_dataset)
    w = {k: torch.from_numpy(v.astype(np.float64)) for k, v in model.weights_.items()}
    x = torch.from_numpy(toy_dataset.matrix("binary", dtype=np.float64).toarray())
    norm = x / x.norm(dim=1, keepdim=True)
    mu = (torch.tanh(norm @ w["enc_w1"] + w["enc_b1"]) @ w["enc_w2"] + w["enc_b2"])[:, : SMALL["latent"]]
    logits = torch.tanh(mu @ w["dec_w1"] + w["dec_b1"]) @ w["dec_w2"] + w["dec_b2"]
    got = model._score(np.arange(toy_dataset.n_users), None)
    np.testing.assert_allclose(got, logits.numpy(), rtol=1e-4, atol=1e-4)


def test_training_lowers_the_loss_and_learns_the_clusters(cluster_dataset: Dataset) -> None:
    """The loss falls over training, and a user's top items come from their own cluster, not another's."""
    model = MultVAERecommender(**SMALL).fit(cluster_dataset)
    assert model.loss_[-1] < 0.8 * model.loss_[0]
    users = [str(u) for u in cluster_dataset.users.ids[::7].tolist()]
    recs = model.recommend(users, k=5)
    same = [
        item.split("i")[0] == user.split("u")[0] for user, row in zip(users, recs.item_ids, strict=True) for item in row
    ]
    assert np.mean(same) >= 0.9


def test_untrained_network_does_not_learn_the_clusters(cluster_dataset: Dataset) -> None:
    """The cluster check above can fail: one update from the random initialisation does not pass it."""
    model = MultVAERecommender(**{**SMALL, "epochs": 1, "batch_size": 500}).fit(cluster_dataset)
    users = [str(u) for u in cluster_dataset.users.ids[::7].tolist()]
    recs = model.recommend(users, k=5)
    same = [
        item.split("i")[0] == user.split("u")[0] for user, row in zip(users, recs.item_ids, strict=True) for item in row
    ]
    assert np.mean(same) < 0.9


def test_own_history_scores_like_recommend_and_new_events_change_the_list(toy_dataset: Dataset) -> None:
    model = MultVAERecommender(**SMALL).fit(toy_dataset)
    assert model.history_scoring
    user = str(toy_dataset.users.ids[3])
    items, values = model.user_history(user)
    want = model.recommend([user], 10)
    got = model.recommend_history(items, values, 10)
    assert got.item_ids == want.item_ids
    np.testing.assert_allclose(got.scores[0], want.scores[0], rtol=1e-9)
    # a new user's first events (no retraining): their items are excluded and the list depends on them
    fresh = model.recommend_history(["i01", "i02"], k=5)
    assert not {"i01", "i02"} & set(fresh.item_ids[0])
    assert model.recommend_history(["i20", "i21", "i22"], k=5).item_ids != fresh.item_ids


def test_seeded_fits_are_identical_and_the_seed_matters(toy_dataset: Dataset) -> None:
    a = MultVAERecommender(**SMALL).fit(toy_dataset).weights_
    b = MultVAERecommender(**SMALL).fit(toy_dataset).weights_
    c = MultVAERecommender(**{**SMALL, "random_state": 7}).fit(toy_dataset).weights_
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["dec_w2"], c["dec_w2"])


def test_loaded_model_serves_without_torch(toy_dataset: Dataset, tmp_path: Path, monkeypatch: Any) -> None:
    """Loading and scoring use NumPy only: with torch unimportable a saved model still recommends, and ``fit``
    names the extra to install."""
    model = MultVAERecommender(**SMALL).fit(toy_dataset)
    model.save(tmp_path / "m")
    real_import = builtins.__import__

    def no_torch(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "torch" or name.startswith("torch."):
            raise ImportError("No module named 'torch'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    monkeypatch.delitem(sys.modules, "torch")
    loaded = MultVAERecommender.load(tmp_path / "m")
    users = [str(u) for u in toy_dataset.users.ids[:5].tolist()]
    assert loaded.recommend(users, 5).item_ids == model.recommend(users, 5).item_ids
    with pytest.raises(ConfigError, match=r"tastebud\[neural\]"):
        MultVAERecommender(**SMALL).fit(toy_dataset)


def test_default_hyperparameters_are_the_papers() -> None:
    cfg = MultVAERecommender().config
    assert (cfg.hidden, cfg.latent, cfg.dropout, cfg.anneal_cap, cfg.batch_size, cfg.learning_rate) == (
        600,
        200,
        0.5,
        0.2,
        500,
        1e-3,
    )
