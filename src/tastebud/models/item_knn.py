"""Item-based nearest neighbours (Sarwar et al., WWW 2001; Deshpande and Karypis, TOIS 2004).

The item-item similarity keeps each item's ``n_neighbors`` most similar items (the item itself among them,
as in ``implicit``), computed by ``implicit``'s ``all_pairs_knn`` on the user x item matrix after one of its
weightings: plain cosine, TF-IDF or BM25 (Robertson's term weighting with users as terms). A user's score for
an item is ``Σ_j value_uj · S[j, i]`` over the items ``j`` they interacted with (the scoring, explanations, history
scoring and save format are those of every sparse item-item model, :mod:`tastebud.models._item_item`).
"""

from __future__ import annotations

from typing import Literal

import scipy.sparse as sp
from pydantic import ConfigDict, Field

from tastebud.models._item_item import ItemItemRecommender
from tastebud.models._training import RecencyConfig


class ItemKNNConfig(RecencyConfig):
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


class ItemKNNRecommender(ItemItemRecommender):
    """Item-item neighbourhood model; explains by the user's items that contributed most."""

    name = "itemknn"
    config_class = ItemKNNConfig
    config: ItemKNNConfig

    def _learn(self, matrix: sp.csr_matrix) -> sp.csr_matrix:
        """The ``n_neighbors`` most similar items of every item (itself included) after the weighting."""
        from implicit.nearest_neighbours import all_pairs_knn, bm25_weight, normalize, tfidf_weight

        cfg = self.config
        items_users = matrix.T
        if cfg.weighting == "cosine":
            weighted = normalize(items_users)
        elif cfg.weighting == "tfidf":
            weighted = normalize(tfidf_weight(items_users))
        else:
            weighted = bm25_weight(items_users, cfg.k1, cfg.b)
        return all_pairs_knn(
            weighted.T.tocsr(), cfg.n_neighbors, show_progress=cfg.show_progress, num_threads=cfg.num_threads
        ).tocsr()
