"""SLIM, the sparse linear item-item model learned by elastic-net regression.

Ning and Karypis, "SLIM: Sparse Linear Methods for Top-N Recommender Systems", ICDM 2011: each item's column
``w_j`` of the item x item matrix ``W`` solves ``min ½‖x_j - X w_j‖² + λ₁‖w_j‖₁ + ½λ₂‖w_j‖²`` with ``w_j >= 0``
and ``w_jj = 0``, where ``X`` is the binary user x item matrix. As in the reference implementations of Ferrari
Dacrema et al. (RecSys 2019, ``SLIMElasticNetRecommender``) and RecBole (``SLIMElastic``), every column is one
scikit-learn ``ElasticNet(positive=True, fit_intercept=False)`` on ``X`` with the target column zeroed (which
forces ``w_jj = 0``), and each column keeps its ``n_neighbors`` largest weights. scikit-learn scales the loss by
``1 / n_users``: ``alpha`` and ``l1_ratio`` are its parameters, ``λ₁ = alpha · l1_ratio · n_users`` and
``λ₂ = alpha · (1 - l1_ratio) · n_users``. A user's score is ``x_u W`` (the sparse item-item scoring of item-KNN).

The columns are independent: they are solved in blocks on a pool of threads (scikit-learn's coordinate descent
releases the GIL), each thread zeroing and restoring columns of its own copy of ``X``.

Defaults: RecBole's configuration is ``alpha=0.2``, ``l1_ratio=0.02`` (Dacrema et al.'s code defaults to 1.0 and
0.1 and tunes both). On an ML-100K validation split ``alpha=0.1`` with RecBole's ``l1_ratio`` was the best of a
small grid, as accurate as RecBole's values and fitting in half the time (bench/RESULTS.md, "RP3beta and SLIM").
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
from pydantic import ConfigDict, Field

from tastebud.models._item_item import ItemItemRecommender
from tastebud.models._training import RecencyConfig

#: Columns solved per task of the thread pool.
BLOCK_COLUMNS = 64


class SLIMConfig(RecencyConfig):
    """Hyperparameters of :class:`SLIMRecommender`."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    alpha: float = Field(0.1, gt=0.0)
    """Overall penalty strength (scikit-learn's ``alpha``, per user: see the module docstring; default 0.1)."""
    l1_ratio: float = Field(0.02, ge=0.0, le=1.0)
    """Share of the penalty that is L1 (sparsity) rather than L2 (default 0.02, RecBole's)."""
    n_neighbors: int = Field(100, ge=1)
    """Largest weights kept per item column of ``W`` (Dacrema et al.'s ``topK``; default 100)."""
    max_iter: int = Field(100, ge=1)
    """Coordinate-descent passes per column at most (the reference implementations use 100)."""
    tol: float = Field(1e-4, gt=0.0)
    """Convergence tolerance of the coordinate descent."""
    num_threads: int = Field(0, ge=0)
    """Threads solving columns; 0 uses every core."""


class SLIMRecommender(ItemItemRecommender):
    """Sparse linear item-item model (elastic net per item); explains by the user's items."""

    name = "slim"
    config_class = SLIMConfig
    config: SLIMConfig
    input_column = "binary"

    def _learn(self, matrix: sp.csr_matrix) -> sp.csr_matrix:
        """Solve every item's elastic-net column; returns ``W`` with ``W[i, j]`` the weight of ``i`` for ``j``."""
        import os

        from joblib import Parallel, delayed

        x = sp.csc_matrix(matrix, dtype=np.float64)
        x.sort_indices()
        n_items = x.shape[1]
        blocks = [np.arange(s, min(s + BLOCK_COLUMNS, n_items)) for s in range(0, n_items, BLOCK_COLUMNS)]
        n_jobs = self.config.num_threads or os.cpu_count() or 1
        parts = Parallel(n_jobs=n_jobs, prefer="threads")(delayed(self._solve_block)(x, cols) for cols in blocks)
        rows, cols, vals = (np.concatenate(p) for p in zip(*parts, strict=True))
        w = sp.csr_matrix((vals, (rows, cols)), shape=(n_items, n_items))
        w.eliminate_zeros()
        return w

    def _solve_block(self, x: sp.csc_matrix, columns: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """COO parts (source item, target item, weight) of the columns ``columns`` of ``W``."""
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import ElasticNet

        cfg = self.config
        local = x.copy()  # this thread zeroes one target column at a time in its own copy
        model = ElasticNet(
            alpha=cfg.alpha,
            l1_ratio=cfg.l1_ratio,
            positive=True,
            fit_intercept=False,
            copy_X=False,
            precompute=False,
            selection="cyclic",  # deterministic, whatever the thread count
            max_iter=cfg.max_iter,
            tol=cfg.tol,
        )
        out_rows, out_cols, out_vals = [], [], []
        for j in columns.tolist():
            lo, hi = local.indptr[j], local.indptr[j + 1]
            if lo == hi:
                continue  # nobody interacted with j: its column stays empty
            y = np.zeros(local.shape[0])
            y[local.indices[lo:hi]] = local.data[lo:hi]
            saved = local.data[lo:hi].copy()
            local.data[lo:hi] = 0.0
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", category=ConvergenceWarning)
                model.fit(local, y, check_input=False)
            local.data[lo:hi] = saved
            coef = model.coef_
            nz = np.flatnonzero(coef > 0)
            if len(nz) > cfg.n_neighbors:
                nz = nz[np.argpartition(-coef[nz], cfg.n_neighbors - 1)[: cfg.n_neighbors]]
            out_rows.append(nz)
            out_cols.append(np.full(len(nz), j))
            out_vals.append(coef[nz])
        if not out_rows:
            empty = np.empty(0, dtype=np.int64)
            return empty, empty, np.empty(0)
        return np.concatenate(out_rows), np.concatenate(out_cols), np.concatenate(out_vals)
