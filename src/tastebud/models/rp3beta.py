"""RP3beta, the item-item random walk with a popularity penalty.

Christoffel, Paudel, Newell and Bernstein, "Blockbusters and Wallflowers: Accurate, Diverse, and Scalable
Recommendations with Random Graph Walks", RecSys 2015, and Paudel, Christoffel, Newell and Bernstein,
"Updatable, Accurate, Diverse, and Scalable Recommendations for Interactive Applications", ACM TiiS 7(1), 2017.
A walk of three steps on the user-item graph (user -> item -> user -> item) gives the item-item transition
``P_iu · P_ui``; raising the transition probabilities to ``alpha`` and dividing by the target item's degree to the
power ``beta`` re-ranks away from blockbusters: ``W[i, j] = (P_iu^alpha P_ui^alpha)[i, j] · deg(j)^-beta``.
As in the tuned baseline of Ferrari Dacrema, Cremonesi and Jannach ("Are We Really Making Much Progress?",
RecSys 2019, ``RP3betaRecommender``), the diagonal is zeroed, each row keeps its ``n_neighbors`` largest entries
and rows are L1-normalised. A user's score is ``x_u W`` (the sparse item-item scoring of item-KNN).

Defaults: both papers tune ``alpha``, ``beta`` and the neighbourhood size per dataset rather than fix them
(Dacrema et al. search ``topK`` in 5-1000 and ``alpha``, ``beta`` in 0-2). ``alpha=0.8``, ``beta=0.6`` and
``n_neighbors=200`` are the best of a grid in that space on an ML-100K validation split (bench/RESULTS.md,
"RP3beta and SLIM"); beyond ``beta`` of about 0.7 the penalty buries every popular item and accuracy collapses.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from pydantic import ConfigDict, Field

from tastebud.models._item_item import ItemItemRecommender, keep_top_k_per_row
from tastebud.models._training import RecencyConfig

#: Rows of ``W`` computed at once (a dense block of ``BLOCK_ROWS x n_items`` float64 values).
BLOCK_ROWS = 1024


class RP3betaConfig(RecencyConfig):
    """Hyperparameters of :class:`RP3betaRecommender`."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    alpha: float = Field(0.8, ge=0.0)
    """Power applied to every transition probability (1: the plain random walk P3; default 0.8)."""
    beta: float = Field(0.6, ge=0.0)
    """Popularity penalty: the walk's end item ``j`` is divided by ``deg(j) ** beta`` (0: no penalty; default 0.6)."""
    n_neighbors: int = Field(200, ge=1)
    """Largest entries kept per row of ``W`` (the papers' ``topK``; default 200)."""
    normalize: bool = True
    """L1-normalise each row of ``W`` after the top-k (Dacrema et al.'s ``normalize_similarity``)."""


class RP3betaRecommender(ItemItemRecommender):
    """Graph random-walk item-item model with a popularity penalty; explains by the user's items."""

    name = "rp3beta"
    config_class = RP3betaConfig
    config: RP3betaConfig
    input_column = "binary"

    def _learn(self, matrix: sp.csr_matrix) -> sp.csr_matrix:
        """``W = top-k(P_iu^alpha · P_ui^alpha · diag(deg^-beta))`` without its diagonal, rows L1-normalised."""
        cfg = self.config
        x = sp.csr_matrix(matrix, dtype=np.float64)
        n_items = x.shape[1]
        p_ui = _row_normalise(x)  # user -> item
        p_iu = _row_normalise(sp.csr_matrix(x.T))  # item -> user
        if cfg.alpha != 1.0:
            p_ui.data **= cfg.alpha
            p_iu.data **= cfg.alpha
        degree = np.diff(sp.csc_matrix(x).indptr).astype(np.float64)  # users per item
        penalty = np.zeros(n_items)
        has = degree > 0
        penalty[has] = degree[has] ** -cfg.beta
        p_ui = sp.csr_matrix(p_ui @ sp.diags(penalty))
        parts = []
        for start in range(0, n_items, BLOCK_ROWS):
            stop = min(start + BLOCK_ROWS, n_items)
            block = (p_iu[start:stop] @ p_ui).toarray()
            block[np.arange(stop - start), np.arange(start, stop)] = 0.0
            parts.append(keep_top_k_per_row(block, cfg.n_neighbors, offset=start))
        rows, cols, vals = (np.concatenate(p) for p in zip(*parts, strict=True))
        w = sp.csr_matrix((vals, (rows, cols)), shape=(n_items, n_items))
        return _row_normalise(w) if cfg.normalize else w


def _row_normalise(m: sp.csr_matrix) -> sp.csr_matrix:
    """Rows scaled to sum to 1 (empty rows stay empty)."""
    sums = np.asarray(m.sum(axis=1)).ravel()
    inv = np.divide(1.0, sums, out=np.zeros_like(sums), where=sums > 0)
    return sp.csr_matrix(sp.diags(inv) @ m)
