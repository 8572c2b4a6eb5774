"""Implicit-feedback ALS (Hu, Koren and Volinsky, ICDM 2008) on top of ``implicit``'s CPU solver.

Confidence follows implicit 0.7's convention, applied exactly once by implicit itself: the dataset's
``value`` matrix is passed unscaled and ``alpha`` goes to ``AlternatingLeastSquares(alpha=...)``, which
multiplies it, so an observed cell has confidence ``c_ui = alpha * value`` and every unobserved cell
confidence 1 (preference 0).
The paper writes ``1 + alpha * r``; the two differ by the constant 1 on observed cells only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Self

import numpy as np
import scipy.linalg
import scipy.sparse as sp
from pydantic import Field
from threadpoolctl import threadpool_limits

from tastebud.models import _scoring as sc
from tastebud.models._factors import FactorConfig, FactorRecommender

#: Explanations are precomputed at load time within this many bytes: per training interaction ``(u, j)`` the row
#: ``c_uj · y_jᵀ W_u⁻¹`` (float32; ML-100K: 20 MiB), else per user ``W_u⁻¹`` (ML-100K: 15 MiB; 10K users at d=64:
#: 160 MiB); beyond both, ``W_u`` is solved per request.
EXPLAIN_CACHE_BYTES = 256 * 2**20


class ALSConfig(FactorConfig):
    """Hyperparameters of :class:`ALSRecommender`."""

    regularization: float = Field(50.0, ge=0.0)
    """L2 penalty on factors. The defaults (50, alpha 10) were tuned on a validation split of ML-100K."""
    alpha: float = Field(10.0, gt=0.0)
    """Confidence scale: an observed cell weighs ``alpha * value`` against 1 for unobserved cells."""
    use_cg: bool = True
    """Use implicit's conjugate-gradient solver (faster); False solves each user exactly by Cholesky."""


class ALSRecommender(FactorRecommender):
    """Alternating least squares on implicit feedback; explains recommendations by the user's items."""

    name = "als"
    config_class = ALSConfig
    config: ALSConfig

    def _train(self, matrix: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
        from implicit.cpu.als import AlternatingLeastSquares

        cfg = self.config
        # implicit parallelises over users itself; a multi-threaded BLAS underneath only adds contention
        with threadpool_limits(limits=1, user_api="blas"):
            model = AlternatingLeastSquares(
                factors=cfg.factors,
                regularization=cfg.regularization,
                alpha=cfg.alpha,
                iterations=cfg.iterations,
                use_cg=cfg.use_cg,
                num_threads=cfg.num_threads,
                random_state=cfg.random_state,
            )
            # implicit 0.7 expects users as rows
            model.fit(matrix, show_progress=cfg.show_progress)
        return model.user_factors, model.item_factors

    def _confidence(self, values: np.ndarray) -> np.ndarray:
        return self.config.alpha * values.astype(np.float64)

    def _prepare(self) -> None:
        """Reset the explanation cache; :meth:`load` fills it, :meth:`_explain_row` does on first use otherwise.

        The inversions are not done in ``fit``: training time is compared with calling ``implicit`` directly, and a
        model that is only evaluated never explains. Serving loads bundles, so it pays them once at load time.
        """
        super()._prepare()
        self.user_inv_: np.ndarray | None = None
        self.explain_rows_: np.ndarray | None = None
        self._inv_cached = False

    @classmethod
    def load(cls, directory: Path) -> Self:
        """Read a model written by :meth:`save` and build its explanation cache (off the request path)."""
        model = super().load(directory)
        model._cache_explanations()
        return model

    def _cache_explanations(self) -> None:
        """Precompute what explaining a request needs, so that it is one small product (when it fits).

        Preferred: per training interaction ``(u, j)``, the row ``c_uj · y_jᵀ W_u⁻¹`` (aligned with ``seen_``'s
        entries), so the contributions to the k recommended items are ``rows[u] @ Y[rec]ᵀ``. Else the inverses
        ``W_u⁻¹`` per user. NumPy only, here and in :meth:`_explain_row`: server processes cap NumPy's BLAS at one
        thread, while SciPy's LAPACK and FAISS load their own OpenBLAS with a thread per core, which contends
        between workers.
        """
        self._inv_cached = True
        assert self.users_ is not None and self.item_factors_ is not None
        n, d = len(self.users_), self.n_dims
        indptr, indices, data = self.seen_.indptr, self.seen_.indices, self.seen_.data
        by_row = len(indices) * d * 4 <= EXPLAIN_CACHE_BYTES
        if not by_row and n * d * d * 4 > EXPLAIN_CACHE_BYTES:
            return
        y = self.item_factors_
        store = np.empty((len(indices), d) if by_row else (n, d, d), dtype=np.float32)
        for u in range(n):  # one d x d inversion per user, at load time only
            lo, hi = indptr[u], indptr[u + 1]
            conf = self._confidence(data[lo:hi])
            inv = _inverse(self._user_system(indices[lo:hi], conf)[0])
            if by_row:
                store[lo:hi] = (y[indices[lo:hi]].astype(np.float64) @ inv) * conf[:, None]  # W_u is symmetric
            else:
                store[u] = inv
        if by_row:
            self.explain_rows_ = store
        else:
            self.user_inv_ = store

    def _explain_row(self, u: int, rec: np.ndarray) -> list[list[int]]:
        """Per recommended item ``i``, the user's items ``j`` with the largest ``c_uj · y_jᵀ W_u⁻¹ y_i``.

        ``W_u = YᵀC_uY + λI`` is the user's system matrix (Hu et al. 2008, section 5); the contributions sum
        to the score the exact least-squares user vector gives item ``i``. Only the k returned items are
        explained, from the cache of :meth:`_cache_explanations` when it fits (else solved here, ``YᵀY`` cached).
        """
        assert self.item_factors_ is not None
        if not self._inv_cached:
            self._cache_explanations()
        y = self.item_factors_
        lo, hi = self.seen_.indptr[u], self.seen_.indptr[u + 1]
        seen_idx = self.seen_.indices[lo:hi]
        y_rec = y[rec].T
        if self.explain_rows_ is not None:
            contrib = self.explain_rows_[lo:hi] @ y_rec
        else:
            conf = self._confidence(self.seen_.data[lo:hi])
            if self.user_inv_ is not None:
                weighted = self.user_inv_[u] @ y_rec  # W_u⁻¹ y_i, one column per recommended item
            else:
                a, _ = self._user_system(seen_idx, conf)
                weighted = _solve(a, y_rec.astype(np.float64))
            contrib = (y[seen_idx] @ weighted) * conf[:, None]
        return sc.top_contributors(contrib, seen_idx)

    def _explain_history(self, idx: np.ndarray, values: np.ndarray, rec: np.ndarray) -> list[list[str]]:
        """:meth:`_explain` for a history that is not a training row (``recommend_history``)."""
        assert self.items_ is not None and self.item_factors_ is not None
        y = self.item_factors_
        conf = self._confidence(values)
        a, _ = self._user_system(idx, conf)
        factor = scipy.linalg.cho_factor(a, overwrite_a=True, check_finite=False)
        weighted = scipy.linalg.cho_solve(factor, y[rec].astype(np.float64).T, check_finite=False)
        contrib = (y[idx] @ weighted) * conf[:, None]
        return sc.id_lists(self.items_.ids, sc.top_contributors(contrib, idx))


def _solve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a⁻¹ b``; least squares when ``a`` is singular (possible only with zero regularization)."""
    try:
        return np.linalg.solve(a, b)
    except np.linalg.LinAlgError:
        return np.linalg.lstsq(a, b, rcond=None)[0]


def _inverse(a: np.ndarray) -> np.ndarray:
    """``a⁻¹``; the pseudo-inverse when ``a`` is singular (possible only with zero regularization)."""
    try:
        return np.linalg.inv(a)
    except np.linalg.LinAlgError:
        return np.linalg.pinv(a)
