"""Item-based nearest neighbours (Sarwar et al., WWW 2001; Deshpande and Karypis, TOIS 2004).

The item-item similarity keeps each item's ``n_neighbors`` most similar items (the item itself among them,
as in ``implicit``), computed by ``implicit``'s ``all_pairs_knn`` on the user x item matrix after one of its
weightings: plain cosine, TF-IDF or BM25 (Robertson's term weighting with users as terms). A user's score for
an item is ``Σ_j value_uj · S[j, i]`` over the items ``j`` they interacted with.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Self

import numpy as np
import scipy.sparse as sp
from pydantic import ConfigDict, Field

from tastebud.data.dataset import Dataset
from tastebud.models import _scoring as sc
from tastebud.models._history import explain_weighted
from tastebud.models.base import ModelConfig, Recommendations, Recommender


class ItemKNNConfig(ModelConfig):
    """Hyperparameters of :class:`ItemKNNRecommender`."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    n_neighbors: int = Field(20, ge=1)
    """Neighbours kept per item, the item itself included (implicit's ``K``; default 20)."""
    weighting: Literal["cosine", "tfidf", "bm25"] = "bm25"
    """How interactions are weighted before the similarity: ``cosine``, ``tfidf`` or ``bm25``."""
    k1: float = Field(1.2, ge=0.0)
    """BM25 term-frequency saturation (only with ``weighting="bm25"``)."""
    b: float = Field(0.75, ge=0.0, le=1.0)
    """BM25 length normalisation (only with ``weighting="bm25"``)."""
    num_threads: int = Field(0, ge=0)
    """Threads for the similarity computation; 0 uses every core."""
    show_progress: bool = False
    """Show implicit's progress bar while fitting (for the CLI)."""


class ItemKNNRecommender(Recommender):
    """Item-item neighbourhood model; explains by the user's items that contributed most."""

    name = "itemknn"
    config_class = ItemKNNConfig
    config: ItemKNNConfig

    def __init__(self, config: ModelConfig | None = None, **params: Any) -> None:
        super().__init__(config, **params)
        self.similarity_: sp.csr_matrix | None = None

    def fit(self, dataset: Dataset) -> Self:
        """Compute the sparse item-item similarity; returns self."""
        from implicit.nearest_neighbours import all_pairs_knn, bm25_weight, normalize, tfidf_weight

        cfg = self.config
        matrix = dataset.matrix("value")
        items_users = matrix.T
        if cfg.weighting == "cosine":
            weighted = normalize(items_users)
        elif cfg.weighting == "tfidf":
            weighted = normalize(tfidf_weight(items_users))
        else:
            weighted = bm25_weight(items_users, cfg.k1, cfg.b)
        similarity = all_pairs_knn(
            weighted.T.tocsr(), cfg.n_neighbors, show_progress=cfg.show_progress, num_threads=cfg.num_threads
        ).tocsr()
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
        """Top-``k`` items per user by summed similarity to the items they interacted with."""
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

    history_scoring = True

    def _history_scores(self, idx: np.ndarray, values: np.ndarray) -> np.ndarray:
        """``Σ_j value_j · S[j, :]`` over the history's items."""
        assert self.similarity_ is not None
        return np.asarray(self.similarity_[idx].T @ values, dtype=np.float64).ravel()

    def _explain_history(self, idx: np.ndarray, values: np.ndarray, rec: np.ndarray) -> list[list[str]]:
        assert self.similarity_ is not None and self.items_ is not None
        return explain_weighted(self.items_, idx, values, self.similarity_[idx][:, rec].toarray())

    def similar_items(self, item_ids: Sequence[str], k: int = 10) -> Recommendations:
        """Up to ``k`` nearest neighbours per item (at most ``n_neighbors - 1``), the item excluded."""
        self.check_fitted()
        assert self.items_ is not None and self.similarity_ is not None
        k = sc.check_k(k)
        rows = self.items_.index(item_ids, kind="item")
        sim = self.similarity_
        idx, scores = sc.rank(
            lambda r, c: _dense_or_neginf(sim[r]),
            rows,
            k,
            n_items=len(self.items_),
            exclude=sc.query_mask(rows, len(self.items_)),
        )
        return sc.build_recommendations(list(item_ids), idx, scores, self.items_)

    def save(self, directory: Path) -> None:
        """Write the similarity (CSR arrays), id maps, config and the seen matrix."""
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


def _dense_or_neginf(rows: sp.csr_matrix) -> np.ndarray:
    """Dense rows where items outside the stored neighbourhood get ``-inf`` (they are not neighbours)."""
    rows = rows.tocsr()
    out = np.full(rows.shape, -np.inf, dtype=np.float64)
    r = np.repeat(np.arange(rows.shape[0]), np.diff(rows.indptr))
    out[r, rows.indices] = rows.data
    return out
