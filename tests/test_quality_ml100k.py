"""Quality floors on the real MovieLens-100K (per-user random 80/20 holdout, seed 42, K=10, binary relevance).

The floors sit a little below the recorded values (bench/RESULTS.md) so that a silent regression fails here:
a transposed user-item matrix, a broken exclusion of seen items or a lost confidence weight all drop NDCG far below.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import scipy.sparse as sp

from tastebud.data.dataset import Dataset
from tastebud.data.split import Split, make_split
from tastebud.evaluation.protocol import evaluate
from tastebud.models import create
from tastebud.models.base import Recommendations, Recommender

pytestmark = [pytest.mark.slow, pytest.mark.integration]

#: NDCG@10 floor of Mult-VAE on the random protocol (recorded 0.4116; bench/RESULTS.md, "Mult-VAE").
MULTVAE_FLOOR = 0.40
#: NDCG@10 floors per model (recorded values in bench/RESULTS.md).
FLOORS = {
    "popular": 0.20,
    "itemknn": 0.34,
    "userknn": 0.38,
    "als": 0.43,
    "bpr": 0.25,
    "ease": 0.44,
    "rp3beta": 0.40,
    "slim": 0.44,
    "hybrid": 0.43,
    "ensemble": 0.45,
}
COLLABORATIVE = ("itemknn", "userknn", "als", "bpr", "ease", "rp3beta", "slim", "hybrid", "ensemble")
#: Models whose ML-100K fit must stay within a minute on the 2-core reference machine.
FIT_WITHIN_A_MINUTE = ("rp3beta", "slim")
#: Mult-VAE trains with PyTorch, the optional 'neural' extra (``make setup`` installs it, so CI runs these).
HAS_TORCH = importlib.util.find_spec("torch") is not None
if HAS_TORCH:
    FLOORS["multvae"] = MULTVAE_FLOOR
    COLLABORATIVE = (*COLLABORATIVE, "multvae")
    FIT_WITHIN_A_MINUTE = (*FIT_WITHIN_A_MINUTE, "multvae")


@pytest.fixture(scope="module")
def split(ml100k: Dataset) -> Split:
    return make_split(ml100k, "random", test_fraction=0.2, seed=42)


@pytest.fixture(scope="module")
def ndcg(split: Split) -> dict[str, float]:
    out = {}
    for name in FLOORS:
        model = create(name).fit(split.train)
        out[name] = evaluate(model, split, k=10, n_boot=10).metric("ndcg")
    return out


def test_ml100k_has_the_published_counts(ml100k: Dataset) -> None:
    assert (ml100k.n_users, ml100k.n_items, ml100k.n_interactions) == (943, 1682, 100_000)
    assert ml100k.item_meta["title"].null_count() == 0
    assert (ml100k.item_meta["genres"].list.len() > 0).all()


@pytest.mark.parametrize("name", list(FLOORS))
def test_quality_floor(name: str, ndcg: dict[str, float]) -> None:
    assert ndcg[name] >= FLOORS[name], f"{name} NDCG@10 {ndcg[name]:.4f} < floor {FLOORS[name]}"


@pytest.mark.parametrize("name", COLLABORATIVE)
def test_every_collaborative_model_beats_most_popular(name: str, ndcg: dict[str, float]) -> None:
    assert ndcg[name] > ndcg["popular"] + 0.02


@pytest.mark.parametrize("name", FIT_WITHIN_A_MINUTE)
def test_fit_takes_under_a_minute(name: str, split: Split) -> None:
    """A guard against a gross slowdown, in CPU seconds of this process (all its threads), which other jobs on
    shared cores inflate far less than wall time. The 60 s wall target itself is shown by the benchmarks
    (bench/RESULTS.md), on a quiet machine."""
    import time

    c0 = time.process_time()
    create(name).fit(split.train)
    assert time.process_time() - c0 < 180.0


def test_ensemble_beats_its_best_member(ndcg: dict[str, float]) -> None:
    """The default ensemble (EASE, ALS, SLIM, RP3beta; weights learned on carves of the training part, never the
    test part) beats every member alone (recorded 0.460 against SLIM's 0.452 and EASE's 0.454)."""
    assert ndcg["ensemble"] > max(ndcg["ease"], ndcg["als"], ndcg["slim"], ndcg["rp3beta"])


def test_best_model_reaches_the_target(split: Split) -> None:
    report = evaluate(create("ease").fit(split.train), split, k=10, n_boot=10)
    assert report.metric("ndcg") >= 0.44
    assert report.metric("recall") >= 0.24


def test_als_factor_shapes_match_users_and_items(split: Split) -> None:
    model = create("als", factors=32, iterations=3).fit(split.train)
    assert model.user_factors_.shape == (943, 32)
    assert model.item_factors_.shape == (1682, 32)


class _Direct(Recommender):
    """Scores from a dense user x item matrix computed outside our models (the reference implementations)."""

    name = "direct"
    config_class = create("popular").config_class

    def __init__(self, scores: np.ndarray, train: Dataset) -> None:
        super().__init__()
        self.scores_, self.users_, self.items_, self.seen_ = scores, train.users, train.items, train.user_item

    def fit(self, dataset: Dataset) -> _Direct:  # pragma: no cover - built fitted
        return self

    def recommend(self, user_ids, k=10, *, exclude_seen=True, candidates=None, explain=False) -> Recommendations:
        rows = self.users_.index(user_ids, kind="user")
        scores = self.scores_[rows].copy()
        if exclude_seen:
            seen = self.seen_[rows]
            scores[seen.nonzero()] = -np.inf
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return Recommendations(
            [str(u) for u in user_ids],
            [[str(x) for x in self.items_.ids[row]] for row in top],
            [scores[i, row] for i, row in enumerate(top)],
        )

    def similar_items(self, item_ids, k=10):  # pragma: no cover - not used
        raise NotImplementedError

    def save(self, directory):  # pragma: no cover - not used
        raise NotImplementedError

    @classmethod
    def load(cls, directory):  # pragma: no cover - not used
        raise NotImplementedError


def test_ease_matches_the_closed_form(split: Split) -> None:
    x = split.train.user_item.astype(np.float64)
    gram = (x.T @ x).toarray()
    gram[np.diag_indices_from(gram)] += 500.0
    p = np.linalg.inv(gram)
    b = -p / np.diag(p)
    np.fill_diagonal(b, 0.0)
    direct = evaluate(_Direct(np.asarray(x @ b), split.train), split, k=10, n_boot=10).metric("ndcg")
    ours = evaluate(create("ease", l2=500.0).fit(split.train), split, k=10, n_boot=10).metric("ndcg")
    assert abs(direct - ours) <= 0.005


def test_als_matches_implicit_called_directly(split: Split) -> None:
    from implicit.cpu.als import AlternatingLeastSquares

    params = {"factors": 64, "regularization": 50.0, "alpha": 10.0, "iterations": 15}
    raw = AlternatingLeastSquares(**params, random_state=42, calculate_training_loss=False)
    raw.fit(sp.csr_matrix(split.train.matrix("value")), show_progress=False)
    scores = raw.user_factors @ raw.item_factors.T
    assert raw.user_factors.shape[0] == split.train.n_users  # user x item, not transposed
    direct = evaluate(_Direct(scores, split.train), split, k=10, n_boot=10).metric("ndcg")
    ours = evaluate(create("als", **params, random_state=42).fit(split.train), split, k=10, n_boot=10)
    assert abs(direct - ours.metric("ndcg")) <= 0.005


# ---------------------------------------------------------------------- sequence-aware model, per protocol
#: NDCG@10 floor of ``seqtrans`` on the per-user temporal 80/20 holdout (recorded 0.277; EASE 0.202).
SEQTRANS_TEMPORAL_FLOOR = 0.26
#: ``seqtrans`` must beat EASE on temporal-user by at least this factor (recorded 1.37; the issue asks 1.10).
SEQTRANS_OVER_EASE = 1.20


@pytest.fixture(scope="module")
def by_protocol(ml100k: Dataset) -> dict[str, dict[str, float]]:
    """NDCG@10 of popular, ease, seqtrans (and multvae) on every protocol (bench/RESULTS.md, "Evaluation protocols")."""
    from tastebud.evaluation.protocols import PROTOCOLS, protocol_split

    out: dict[str, dict[str, float]] = {}
    for protocol in PROTOCOLS:
        proto_split = protocol_split(ml100k, protocol, seed=42)
        names = ("popular", "ease", "seqtrans") if protocol == "temporal-user" else ("popular", "seqtrans")
        names = (*names, "multvae") if HAS_TORCH else names
        out[protocol] = {
            name: evaluate(create(name).fit(proto_split.train), proto_split, k=10, n_boot=10).metric("ndcg")
            for name in names
        }
    return out


def test_seqtrans_floor_on_temporal_user(by_protocol: dict[str, dict[str, float]]) -> None:
    got = by_protocol["temporal-user"]["seqtrans"]
    assert got >= SEQTRANS_TEMPORAL_FLOOR, f"seqtrans NDCG@10 {got:.4f} < floor {SEQTRANS_TEMPORAL_FLOOR}"


def test_seqtrans_beats_ease_on_temporal_user(by_protocol: dict[str, dict[str, float]]) -> None:
    ndcg = by_protocol["temporal-user"]
    assert ndcg["seqtrans"] >= SEQTRANS_OVER_EASE * ndcg["ease"], ndcg


def test_seqtrans_beats_popular_on_every_protocol(by_protocol: dict[str, dict[str, float]]) -> None:
    for protocol, ndcg in by_protocol.items():
        assert ndcg["seqtrans"] > ndcg["popular"] + 0.02, (protocol, ndcg)


@pytest.mark.skipif(not HAS_TORCH, reason="Mult-VAE needs PyTorch (the 'neural' extra)")
def test_multvae_beats_popular_on_every_protocol(by_protocol: dict[str, dict[str, float]]) -> None:
    """Mult-VAE is reported on random, temporal-user and leave-last-out: it must beat popular on each."""
    for protocol, ndcg in by_protocol.items():
        assert ndcg["multvae"] > ndcg["popular"] + 0.02, (protocol, ndcg)
