"""User-based nearest neighbours (Herlocker et al., SIGIR 1999) with cosine similarity on sparse matrices.

Each user keeps their ``n_neighbors`` most cosine-similar other users; a user's score for an item is
``Σ_v sim(u, v) · value_vi`` over those neighbours. Neighbours are found in chunks of users so memory stays
bounded by :data:`~tastebud.models._scoring.MAX_CELLS` similarities at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np
import scipy.sparse as sp
from pydantic import ConfigDict, Field

from tastebud.data.dataset import Dataset
from tastebud.models import _scoring as sc
from tastebud.models.base import ModelConfig, Recommendations, Recommender, top_k


class UserKNNConfig(ModelConfig):
    """Hyperparameters of :class:`UserKNNRecommender`."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    n_neighbors: int = Field(50, ge=1)
    """Most similar other users kept per user (default 50)."""


class UserKNNRecommender(Recommender):
    """User-user cosine neighbourhood model."""

    name = "userknn"
    config_class = UserKNNConfig
    config: UserKNNConfig

    def __init__(self, config: ModelConfig | None = None, **params: Any) -> None:
        super().__init__(config, **params)
        self.neighbors_: sp.csr_matrix | None = None
        self._item_unit: sp.csr_matrix | None = None

    def fit(self, dataset: Dataset) -> Self:
        """Find every user's nearest neighbours; returns self."""
        matrix = dataset.matrix("value")
        self.neighbors_ = _top_neighbors(_row_normalise(matrix), self.config.n_neighbors)
        self.seen_ = matrix
        self._item_unit = None
        self.users_, self.items_ = dataset.users, dataset.items
        return self

    def recommend(
        self,
        user_ids: Sequence[str],
        k: int = 10,
        *,
        exclude_seen: bool = True,
        candidates: Sequence[str] | None = None,
        explain: bool = False,
    ) -> Recommendations:
        """Top-``k`` items per user by their neighbours' similarity-weighted interactions.

        ``explain`` is accepted for the common interface; scores come from other users, so there is no
        explanation by the user's own items and ``explanations`` stays ``None``.
        """
        self.check_fitted()
        assert self.users_ is not None and self.items_ is not None and self.neighbors_ is not None
        k = sc.check_k(k)
        rows = self.users_.index(user_ids, kind="user")
        cands = sc.resolve_candidates(self.items_, candidates)
        values = self.seen_ if cands is None else self.seen_[:, cands]
        neighbors = self.neighbors_
        idx, scores = sc.rank(
            lambda r, c: (neighbors[r] @ values).toarray(),
            rows,
            k,
            n_items=len(self.items_),
            exclude=self.seen_[rows] if exclude_seen else None,
            candidates=cands,
        )
        return sc.build_recommendations(list(user_ids), idx, scores, self.items_)

    def similar_items(self, item_ids: Sequence[str], k: int = 10) -> Recommendations:
        """Top-``k`` items per item by the cosine of their user columns, the item excluded."""
        self.check_fitted()
        assert self.items_ is not None
        k = sc.check_k(k)
        rows = self.items_.index(item_ids, kind="item")
        if self._item_unit is None:
            self._item_unit = _row_normalise(self.seen_.T.tocsr())
        unit = self._item_unit
        idx, scores = sc.rank(
            lambda r, c: (unit[r] @ unit.T).toarray(),
            rows,
            k,
            n_items=len(self.items_),
            exclude=sc.query_mask(rows, len(self.items_)),
        )
        return sc.build_recommendations(list(item_ids), idx, scores, self.items_)

    def save(self, directory: Path) -> None:
        """Write the neighbour matrix (CSR arrays), id maps, config and the seen matrix."""
        self.check_fitted()
        directory = Path(directory)
        sc.save_state(self, directory)
        assert self.neighbors_ is not None
        sc.save_csr(directory, "neighbors", self.neighbors_)

    @classmethod
    def load(cls, directory: Path) -> Self:
        """Read a model written by :meth:`save`."""
        directory = Path(directory)
        model, _ = sc.load_state(cls, directory)
        n = len(model.users_)  # type: ignore[arg-type]
        model.neighbors_ = sc.load_csr(directory, "neighbors", (n, n))
        return model


def _row_normalise(matrix: sp.csr_matrix) -> sp.csr_matrix:
    """Rows scaled to unit L2 norm (empty rows stay empty)."""
    norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=1)).ravel())
    scale = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
    return sp.csr_matrix(sp.diags(scale.astype(np.float32)) @ matrix)


def _top_neighbors(unit: sp.csr_matrix, n_neighbors: int) -> sp.csr_matrix:
    """Each row's ``n_neighbors`` most similar other rows (positive cosine only) as a CSR matrix."""
    n = unit.shape[0]
    kk = min(n_neighbors, max(n - 1, 0))
    unit_t = unit.T.tocsr()
    chunk = max(1, sc.MAX_CELLS // max(n, 1))
    rows_out, cols_out, vals_out = [], [], []
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        sims = (unit[start:stop] @ unit_t).toarray()
        sims[np.arange(stop - start), np.arange(start, stop)] = -np.inf  # a user is not their own neighbour
        sims[sims <= 0] = -np.inf  # users with nothing in common do not vote
        idx, val = top_k(sims, kk)
        keep = idx >= 0
        rows_out.append(np.repeat(np.arange(start, stop), keep.sum(axis=1)))
        cols_out.append(idx[keep])
        vals_out.append(val[keep])
    if not rows_out:
        return sp.csr_matrix((n, n), dtype=np.float32)
    mat = sp.csr_matrix(
        (np.concatenate(vals_out).astype(np.float32), (np.concatenate(rows_out), np.concatenate(cols_out))),
        shape=(n, n),
    )
    mat.sort_indices()
    return mat
