"""Shared base of the sparse item-item models (item-KNN, RP3beta, SLIM): scoring, history, explanations, save/load.

These models learn one sparse item x item matrix ``W`` and score a user as ``x_u W``: item ``j`` the user
interacted with (value ``x_uj``) adds ``x_uj · W[j, i]`` to item ``i``. Everything but learning ``W`` is the same
for all of them, so it lives here: batched ``recommend`` with candidates and exclusions, explanations by the
user's items that contributed most, scoring an arbitrary history (serving's real-time overlays and fold-in of new
users), ``similar_items`` from the rows of ``W``, and the save format (``W`` as CSR arrays).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

import numpy as np
import scipy.sparse as sp

from tastebud.data.dataset import Dataset
from tastebud.models import _scoring as sc
from tastebud.models._history import explain_weighted
from tastebud.models._training import training_matrix
from tastebud.models.base import ModelConfig, RankedRow, Recommendations, Recommender


class ItemItemRecommender(Recommender):
    """A model whose scores are ``x_u W`` for a learned sparse item x item matrix ``similarity_``.

    Subclasses implement :meth:`_learn` and say which matrix they learn from (``input_column``).
    """

    #: the training matrix: ``value`` (interaction strengths) or ``binary`` (presence).
    input_column: ClassVar[Literal["value", "binary"]] = "value"
    history_scoring = True

    def __init__(self, config: ModelConfig | None = None, **params: Any) -> None:
        super().__init__(config, **params)
        self.similarity_: sp.csr_matrix | None = None

    @abstractmethod
    def _learn(self, matrix: sp.csr_matrix) -> sp.csr_matrix:
        """The item x item matrix ``W`` learned from the user x item training matrix."""

    def fit(self, dataset: Dataset) -> Self:
        """Learn the sparse item-item matrix from ``dataset``'s training matrix; returns self."""
        half_life = getattr(self.config, "recency_half_life_days", None)
        matrix = training_matrix(dataset, self.input_column, half_life_days=half_life)
        similarity = sp.csr_matrix(self._learn(matrix), dtype=np.float32)
        similarity.sort_indices()
        self.similarity_ = similarity
        self.seen_ = matrix
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
        """Top-``k`` items per user by ``x_u W``: the summed weights from the items they interacted with."""
        self.check_fitted()
        assert self.users_ is not None and self.items_ is not None and self.similarity_ is not None
        k = sc.check_k(k)
        rows = self.users_.index(user_ids, kind="user")
        cands = sc.resolve_candidates(self.items_, candidates)
        sim = self.similarity_
        sim_cols = sim if cands is None else sim[:, cands]
        idx, scores = sc.rank(
            lambda r, c: (self.seen_[r] @ sim_cols).toarray(),
            rows,
            k,
            n_items=len(self.items_),
            exclude=self.seen_[rows] if exclude_seen else None,
            candidates=cands,
        )
        explanations = (
            sc.explain_linear(self.seen_, rows, idx, self.items_, lambda s, i: sim[s][:, i].toarray())
            if explain
            else None
        )
        return sc.build_recommendations(list(user_ids), idx, scores, self.items_, explanations)

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
        assert self.similarity_ is not None
        k = sc.check_k(k)
        seen = self.seen_
        lo, hi = seen.indptr[row], seen.indptr[row + 1]
        idx, vals = seen.indices[lo:hi], seen.data[lo:hi]
        # the same sparse product as recommend's, so that scores (and ties) agree to the bit
        scores = (seen[row : row + 1] @ self.similarity_).toarray().ravel()
        if candidates is not None:
            scores = scores[candidates]
        items, ranked = sc.rank_one(scores, k, idx if exclude_seen else idx[:0], candidates)
        because = None
        if explain:
            contrib = self.similarity_[idx][:, items].toarray().astype(np.float64) * vals[:, None]
            because = sc.top_contributors(contrib, idx)
        return RankedRow(items, np.asarray(ranked, dtype=np.float64), because)

    # ------------------------------------------------------------------ scoring a history
    def _history_weights(self, values: np.ndarray) -> np.ndarray:
        """A history's values in the units of the training matrix (``seen_``).

        A ``value`` model takes them as they are. A ``binary`` model learned from presence: each item counts 1,
        or, with recency weighting, its weight in ``(0, 1]`` (``user_history`` gives the training weights, and an
        event newer than the training data, whatever its value, weighs 1).
        """
        if self.input_column == "value":
            return values
        if getattr(self.config, "recency_half_life_days", None) is None:
            return np.ones_like(values)
        return np.clip(values, 0.0, 1.0)

    def _history_scores(self, idx: np.ndarray, values: np.ndarray) -> np.ndarray:
        """``Σ_j x_j · W[j, :]`` over the history's items."""
        assert self.similarity_ is not None
        weights = self._history_weights(values)
        return np.asarray(self.similarity_[idx].T @ weights, dtype=np.float64).ravel()

    def _explain_history(self, idx: np.ndarray, values: np.ndarray, rec: np.ndarray) -> list[list[str]]:
        assert self.similarity_ is not None and self.items_ is not None
        weights = self._history_weights(values)
        return explain_weighted(self.items_, idx, weights, self.similarity_[idx][:, rec].toarray())

    # ------------------------------------------------------------------ similar items, save, load
    def similar_items(self, item_ids: Sequence[str], k: int = 10) -> Recommendations:
        """Up to ``k`` items per item by the weight ``W[i, j]`` item ``i`` gives to ``j`` (stored entries only)."""
        self.check_fitted()
        assert self.items_ is not None and self.similarity_ is not None
        k = sc.check_k(k)
        rows = self.items_.index(item_ids, kind="item")
        sim = self.similarity_
        idx, scores = sc.rank(
            lambda r, c: dense_or_neginf(sim[r]),
            rows,
            k,
            n_items=len(self.items_),
            exclude=sc.query_mask(rows, len(self.items_)),
        )
        return sc.build_recommendations(list(item_ids), idx, scores, self.items_)

    def save(self, directory: Path) -> None:
        """Write ``W`` (CSR arrays), id maps, config and the seen matrix."""
        self.check_fitted()
        directory = Path(directory)
        sc.save_state(self, directory)
        assert self.similarity_ is not None
        sc.save_csr(directory, "similarity", self.similarity_)

    @classmethod
    def load(cls, directory: Path) -> Self:
        """Read a model written by :meth:`save`."""
        directory = Path(directory)
        model, _ = sc.load_state(cls, directory)
        n = len(model.items_)  # type: ignore[arg-type]
        model.similarity_ = sc.load_csr(directory, "similarity", (n, n))
        return model


def dense_or_neginf(rows: sp.csr_matrix) -> np.ndarray:
    """Dense rows where items outside the stored neighbourhood get ``-inf`` (they are not neighbours)."""
    rows = rows.tocsr()
    out = np.full(rows.shape, -np.inf, dtype=np.float64)
    r = np.repeat(np.arange(rows.shape[0]), np.diff(rows.indptr))
    out[r, rows.indices] = rows.data
    return out


def keep_top_k_per_row(dense: np.ndarray, k: int, offset: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``k`` largest positive entries of each row of ``dense`` as COO parts (rows shifted by ``offset``)."""
    n_rows, n_cols = dense.shape
    kk = min(k, n_cols)
    full = np.tile(np.arange(n_cols), (n_rows, 1))
    cols = np.argpartition(-dense, kk - 1, axis=1)[:, :kk] if kk < n_cols else full
    vals = np.take_along_axis(dense, cols, axis=1)
    rows = np.repeat(np.arange(n_rows) + offset, kk).reshape(n_rows, kk)
    keep = vals > 0
    return rows[keep], cols[keep], vals[keep]
