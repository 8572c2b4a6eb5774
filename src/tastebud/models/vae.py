"""Mult-VAE, the variational autoencoder for implicit feedback with a multinomial likelihood.

Liang, Krishnan, Hoffman and Jebara, "Variational Autoencoders for Collaborative Filtering", WWW 2018. A user's
binary row ``x_u`` over the catalog is L2-normalised, passed through dropout and encoded by an MLP into the mean
and log-variance of a Gaussian latent ``z``; the decoder maps ``z`` back to logits over every item, and the
training loss is the multinomial log-likelihood ``-Σ_i x_ui log softmax(f(z))_i`` plus ``β`` times the KL
divergence to the standard normal prior, with ``β`` annealed linearly from 0 to a cap. To recommend, the encoder's
mean (no dropout, no sampling) is decoded and the items ranked by their logits (the softmax keeps their order).

Hyperparameters as the paper reports them for its three datasets: architecture ``[I-600-200-600-I]`` (one hidden
layer of 600 units each side, a 200-dimensional latent), tanh activations, dropout 0.5 on the input, Adam with
learning rate 1e-3, batches of 500 users, no weight decay, Xavier-initialised weights and biases drawn from
N(0, 0.001²) (the authors' code), and ``β`` raised by ``1 / 200,000`` per update up to the cap 0.2. The paper
trains for 200 epochs on ML-20M (about 270 updates per epoch, so ``β`` reaches 0.2 after 40,000 of some 55,000
updates, three quarters of the run, and keeps the epoch with the best validation NDCG). ML-100K has 943 users, two
batches per epoch: the default here is 100 epochs (200 updates), the best of 50 / 100 / 200 on a validation carve
of ML-100K's training part (bench/RESULTS.md, "Mult-VAE": 200 epochs already overfit), with the same shape of
schedule, ``β`` reaching the cap after three quarters of the updates (``anneal_steps``).

PyTorch is needed to **train** only (the optional extra ``pip install 'tastebud[neural]'``); it is imported when
``fit`` runs. The fitted network is saved as ``.npy`` arrays and scored with NumPy, so loading, serving and scoring
new histories need no PyTorch. Training is seeded: the weights' initialisation, the batch order, the dropout masks
and the reparameterisation noise all come from ``random_state``, and PyTorch runs on the CPU with a fixed number of
threads (``num_threads``), so two fits with the same parameters on the same machine give the same model.

Scoring a history is what the autoencoder does anyway: any set of items (a known user's training row plus recent
events, or a new user's first ones) is encoded and decoded the same way, without retraining. ``similar_items``
ranks items by the cosine of their decoder output vectors (each item's row of the last layer). There are no
per-item explanations: a user's items do not add up to a score through a non-linear network.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np
from pydantic import ConfigDict, Field

from tastebud.data.dataset import Dataset
from tastebud.errors import ConfigError, DataValidationError
from tastebud.models import _scoring as sc
from tastebud.models._training import training_matrix
from tastebud.models.base import ModelConfig, RankedRow, Recommendations, Recommender

#: The network's arrays as saved: name -> shape as a function of (items, hidden, latent).
_ARRAYS = {
    "enc_w1": lambda i, h, z: (i, h),
    "enc_b1": lambda i, h, z: (h,),
    "enc_w2": lambda i, h, z: (h, 2 * z),
    "enc_b2": lambda i, h, z: (2 * z,),
    "dec_w1": lambda i, h, z: (z, h),
    "dec_b1": lambda i, h, z: (h,),
    "dec_w2": lambda i, h, z: (h, i),
    "dec_b2": lambda i, h, z: (i,),
}


class MultVAEConfig(ModelConfig):
    """Hyperparameters of :class:`MultVAERecommender` (defaults: the paper's, epochs adapted to ML-100K)."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    hidden: int = Field(600, ge=1)
    """Units of the hidden layer on each side (the paper's 600)."""
    latent: int = Field(200, ge=1)
    """Dimension of the latent ``z`` (the paper's 200)."""
    dropout: float = Field(0.5, ge=0.0, lt=1.0)
    """Dropout rate on the normalised input during training (the paper's 0.5)."""
    anneal_cap: float = Field(0.2, ge=0.0)
    """Largest KL weight ``β`` (the paper's 0.2)."""
    anneal_steps: int | None = Field(None, ge=1)
    """``β`` grows by ``1 / anneal_steps`` per update up to the cap (the paper: 200,000). ``None``: the cap is
    reached after three quarters of the run's updates, the shape of the paper's schedule on ML-20M."""
    epochs: int = Field(100, ge=1)
    """Passes over the users (the paper: 200 on ML-20M with early stopping; 100 suits ML-100K, see the module
    docstring). Larger data has more updates per epoch and may want fewer epochs."""
    batch_size: int = Field(500, ge=1)
    """Users per update (the paper's 500)."""
    learning_rate: float = Field(1e-3, gt=0.0)
    """Adam's learning rate (the paper's 1e-3)."""
    weight_decay: float = Field(0.0, ge=0.0)
    """L2 penalty on the weights (the paper uses none for Mult-VAE)."""
    random_state: int = 42
    """Seed of the initialisation, the batch order, the dropout masks and the latent noise."""
    num_threads: int = Field(0, ge=0)
    """PyTorch threads while training; 0 uses up to 4 of the machine's cores (the layers are small: more threads
    than that cost more in synchronisation than they save)."""


def _require_torch() -> Any:
    """Import PyTorch, or say how to install it."""
    try:
        import torch
    except ImportError as err:
        raise ConfigError(
            "multvae needs PyTorch to train: pip install 'tastebud[neural]' (CPU wheels: "
            "pip install torch --index-url https://download.pytorch.org/whl/cpu); a saved multvae model "
            "loads and serves without it"
        ) from err
    return torch


class MultVAERecommender(Recommender):
    """Mult-VAE (see the module docstring): trained with PyTorch, scored with NumPy."""

    name = "multvae"
    config_class = MultVAEConfig
    config: MultVAEConfig
    history_scoring = True

    def __init__(self, config: ModelConfig | None = None, **params: Any) -> None:
        super().__init__(config, **params)
        self.weights_: dict[str, np.ndarray] | None = None
        self.loss_: list[float] = []

    # ------------------------------------------------------------------ training
    def fit(self, dataset: Dataset) -> Self:
        """Train the autoencoder on ``dataset``'s binary user x item matrix; returns self."""
        torch = _require_torch()
        cfg = self.config
        x = training_matrix(dataset, "binary")
        n_users, n_items = x.shape
        threads = cfg.num_threads or min(4, os.cpu_count() or 1)
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            weights, losses = self._train(torch, x, n_users, n_items)
        finally:
            torch.set_num_threads(previous)
        for key, arr in weights.items():
            if not np.isfinite(arr).all():
                raise DataValidationError(f"multvae: training diverged ({key} holds NaN or inf); lower learning_rate")
        self.weights_ = weights
        self.loss_ = losses
        self.seen_ = x
        self.users_, self.items_ = dataset.users, dataset.items
        return self

    def _train(self, torch: Any, x: Any, n_users: int, n_items: int) -> tuple[dict[str, np.ndarray], list[float]]:
        cfg = self.config
        rng = np.random.default_rng(cfg.random_state)
        gen = torch.Generator().manual_seed(cfg.random_state)
        h, z = cfg.hidden, cfg.latent

        def xavier(fan_in: int, fan_out: int) -> Any:
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            w = rng.uniform(-bound, bound, size=(fan_in, fan_out)).astype(np.float32)
            return torch.nn.Parameter(torch.from_numpy(w))

        def bias(n: int) -> Any:
            return torch.nn.Parameter(torch.from_numpy(rng.normal(0.0, 0.001, size=n).astype(np.float32)))

        params = {
            "enc_w1": xavier(n_items, h),
            "enc_b1": bias(h),
            "enc_w2": xavier(h, 2 * z),
            "enc_b2": bias(2 * z),
            "dec_w1": xavier(z, h),
            "dec_b1": bias(h),
            "dec_w2": xavier(h, n_items),
            "dec_b2": bias(n_items),
        }
        p = params
        optimizer = torch.optim.Adam(list(params.values()), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        batches_per_epoch = max(1, math.ceil(n_users / cfg.batch_size))
        total = cfg.epochs * batches_per_epoch
        anneal_steps = cfg.anneal_steps or max(1.0, 0.75 * total / cfg.anneal_cap if cfg.anneal_cap else 1.0)
        keep = 1.0 - cfg.dropout
        counts = np.diff(x.indptr)
        scale = np.where(counts > 0, 1.0 / np.sqrt(np.maximum(counts, 1)), 0.0)  # the rows' L2 normalisation
        step = 0
        losses: list[float] = []
        for _ in range(cfg.epochs):
            order = rng.permutation(n_users)
            epoch_loss = 0.0
            for start in range(0, n_users, cfg.batch_size):
                users = order[start : start + cfg.batch_size]
                # the batch's rows as sparse (row, item) pairs: the input is binary and about 95% zeros, so the
                # first layer and the likelihood are computed from the non-zeros only
                sub = x[users]
                rows = torch.from_numpy(np.repeat(np.arange(len(users)), np.diff(sub.indptr)))
                cols = torch.from_numpy(sub.indices.astype(np.int64))
                values = torch.from_numpy(np.repeat(scale[users], np.diff(sub.indptr)).astype(np.float32))
                if cfg.dropout > 0:  # dropout of a zero changes nothing: masks are drawn for the non-zeros
                    values = values * (torch.rand(values.shape, generator=gen) < keep) / keep
                inputs = torch.sparse_coo_tensor(  # indices from a valid CSR: in range, so no checks needed
                    torch.stack([rows, cols]), values, (len(users), n_items), check_invariants=False
                )
                beta = min(cfg.anneal_cap, step / anneal_steps)
                hid = torch.tanh(torch.sparse.mm(inputs, p["enc_w1"]) + p["enc_b1"])
                out = hid @ p["enc_w2"] + p["enc_b2"]
                mu, logvar = out[:, :z], out[:, z:]
                std = torch.exp(0.5 * logvar)
                sample = mu + std * torch.randn(std.shape, generator=gen)
                logits = torch.tanh(sample @ p["dec_w1"] + p["dec_b1"]) @ p["dec_w2"] + p["dec_b2"]
                nll = -torch.log_softmax(logits, dim=1)[rows, cols].sum() / len(users)
                kl = (0.5 * (-logvar + torch.exp(logvar) + mu * mu - 1.0)).sum(dim=1).mean()
                loss = nll + beta * kl
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                step += 1
                epoch_loss += float(loss.detach()) * len(users)
            losses.append(epoch_loss / max(1, n_users))
        with torch.no_grad():
            weights = {key: np.ascontiguousarray(value.detach().numpy(), dtype=np.float32) for key, value in p.items()}
        return weights, losses

    # ------------------------------------------------------------------ scoring
    def _forward(self, idx: np.ndarray) -> np.ndarray:
        """Logits over every item for the history with item indices ``idx`` (presence only), in float64.

        One history at a time, so that a batch, a single request and a scored history get the very same numbers.
        """
        w = self.weights_
        assert w is not None
        z = w["dec_w1"].shape[0]
        if len(idx):
            first = w["enc_w1"][idx].sum(axis=0, dtype=np.float64) / math.sqrt(len(idx))
        else:
            first = np.zeros(w["enc_w1"].shape[1])
        hid = np.tanh(first + w["enc_b1"])
        mu = hid @ w["enc_w2"][:, :z].astype(np.float64) + w["enc_b2"][:z]
        dec = np.tanh(mu @ w["dec_w1"].astype(np.float64) + w["dec_b1"])
        return np.asarray(dec @ w["dec_w2"] + w["dec_b2"], dtype=np.float64)

    def _score(self, rows: np.ndarray, cols: np.ndarray | None) -> np.ndarray:
        """Logits of users ``rows`` for every item (or ``cols``): each user's training row, encoded and decoded."""
        seen = self.seen_
        n_items = len(self.items_)  # type: ignore[arg-type]
        out = np.empty((len(rows), n_items if cols is None else len(cols)))
        for i, row in enumerate(np.asarray(rows).tolist()):
            scores = self._forward(seen.indices[seen.indptr[row] : seen.indptr[row + 1]])
            out[i] = scores if cols is None else scores[cols]
        return out

    def recommend(
        self,
        user_ids: Sequence[str],
        k: int = 10,
        *,
        exclude_seen: bool = True,
        candidates: Sequence[str] | None = None,
        explain: bool = False,
    ) -> Recommendations:
        """Top-``k`` items per user by the decoder's logits for the user's encoded training row (no explanations)."""
        self.check_fitted()
        assert self.users_ is not None and self.items_ is not None
        k = sc.check_k(k)
        rows = self.users_.index(user_ids, kind="user")
        cands = sc.resolve_candidates(self.items_, candidates)
        idx, scores = sc.rank(
            self._score,
            rows,
            k,
            n_items=len(self.items_),
            exclude=self.seen_[rows] if exclude_seen else None,
            candidates=cands,
        )
        return sc.build_recommendations(list(user_ids), idx, scores, self.items_)

    def recommend_row(
        self,
        row: int,
        k: int = 10,
        *,
        exclude_seen: bool = True,
        candidates: np.ndarray | None = None,
        explain: bool = False,
    ) -> RankedRow:
        """One user's top-``k`` in index space (the serving path; see the base), same ranking as :meth:`recommend`."""
        self.check_fitted()
        k = sc.check_k(k)
        seen = self.seen_
        idx = seen.indices[seen.indptr[row] : seen.indptr[row + 1]]
        scores = self._forward(idx)
        if candidates is not None:
            scores = scores[candidates]
        items, ranked = sc.rank_one(scores, k, idx if exclude_seen else idx[:0], candidates)
        return RankedRow(items, np.asarray(ranked, dtype=np.float64), None)

    def _history_scores(self, idx: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Logits for a history: the model learned from presence, so every item of it counts once."""
        return self._forward(np.sort(np.asarray(idx, dtype=np.int64)))

    def similar_items(self, item_ids: Sequence[str], k: int = 10) -> Recommendations:
        """Top-``k`` items per item by the cosine of their decoder output vectors, the item itself excluded."""
        self.check_fitted()
        assert self.items_ is not None and self.weights_ is not None
        k = sc.check_k(k)
        rows = self.items_.index(item_ids, kind="item")
        unit = sc.l2_normalise(self.weights_["dec_w2"].T.astype(np.float64))
        idx, scores = sc.rank(
            lambda r, c: unit[r] @ (unit if c is None else unit[c]).T,
            rows,
            k,
            n_items=len(self.items_),
            exclude=sc.query_mask(rows, len(self.items_)),
        )
        return sc.build_recommendations(list(item_ids), idx, scores, self.items_)

    # ------------------------------------------------------------------ persistence
    def save(self, directory: Path) -> None:
        """Write the network's weights (``.npy``), id maps, config and the seen matrix."""
        self.check_fitted()
        assert self.weights_ is not None
        directory = Path(directory)
        sc.save_state(self, directory, {"arrays": sorted(_ARRAYS)})
        for key, arr in self.weights_.items():
            np.save(directory / f"{key}.npy", arr, allow_pickle=False)

    @classmethod
    def load(cls, directory: Path) -> Self:
        """Read a model written by :meth:`save` (no PyTorch needed)."""
        directory = Path(directory)
        model, _ = sc.load_state(cls, directory)
        n = len(model.items_)  # type: ignore[arg-type]
        h, z = model.config.hidden, model.config.latent
        model.weights_ = {
            key: np.ascontiguousarray(sc.load_checked(directory / f"{key}.npy", shape(n, h, z), np.floating))
            for key, shape in _ARRAYS.items()
        }
        return model
