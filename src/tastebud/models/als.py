"""Implicit-feedback ALS (Hu, Koren and Volinsky, ICDM 2008) on top of ``implicit``'s CPU solver.

Confidence follows implicit 0.7's convention, applied exactly once by implicit itself: the dataset's
``value`` matrix is passed unscaled and ``alpha`` goes to ``AlternatingLeastSquares(alpha=...)``, which
multiplies it, so an observed cell has confidence ``c_ui = alpha * value`` and every unobserved cell
confidence 1 (preference 0).
The paper writes ``1 + alpha * r``; the two differ by the constant 1 on observed cells only.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg.lapack
import scipy.sparse as sp
from pydantic import Field
from threadpoolctl import threadpool_limits

from tastebud.models import _scoring as sc
from tastebud.models._factors import FactorConfig, FactorRecommender

_potrf, _potrs = scipy.linalg.lapack.dpotrf, scipy.linalg.lapack.dpotrs


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

    def _explain(self, rows: np.ndarray, rec_rows: list[np.ndarray]) -> list[list[list[str]]]:
        """Per recommended item ``i``, the user's items ``j`` with the largest ``c_uj · y_jᵀ W_u⁻¹ y_i``.

        ``W_u = YᵀC_uY + λI`` is the user's system matrix (Hu et al. 2008, section 5); the contributions sum
        to the score the exact least-squares user vector gives item ``i``.
        """
        assert self.items_ is not None and self.item_factors_ is not None
        y = self.item_factors_
        ids = self.items_.ids
        out: list[list[list[str]]] = []
        for u, rec in zip(rows.tolist(), rec_rows, strict=True):
            lo, hi = self.seen_.indptr[u], self.seen_.indptr[u + 1]
            seen_idx = self.seen_.indices[lo:hi]
            conf = self._confidence(self.seen_.data[lo:hi])
            # Only the k returned items are explained: one Cholesky factorisation of the user's d x d system
            # (YᵀY is cached at fit/load) and k solves, instead of anything per catalog item.
            a, _ = self._user_system(seen_idx, conf)
            # LAPACK directly: scipy.linalg's cho_factor/cho_solve wrappers cost more than the d x d solve itself
            chol, info = _potrf(a, lower=True, overwrite_a=True, clean=False)
            if info == 0:
                weighted, info = _potrs(chol, y[rec].astype(np.float64).T, lower=True)  # W_u⁻¹ y_i per column
            if info != 0:  # W_u is positive definite for λ > 0; a singular one (λ = 0) falls back to least squares
                a, _ = self._user_system(seen_idx, conf)
                weighted = np.linalg.lstsq(a, y[rec].astype(np.float64).T, rcond=None)[0]
            contrib = (y[seen_idx] @ weighted) * conf[:, None]
            out.append(_top_contributors(contrib, seen_idx, ids))
        return out

    def _explain_history(self, idx: np.ndarray, values: np.ndarray, rec: np.ndarray) -> list[list[str]]:
        """:meth:`_explain` for a history that is not a training row (``recommend_history``)."""
        assert self.items_ is not None and self.item_factors_ is not None
        y = self.item_factors_
        conf = self._confidence(values)
        a, _ = self._user_system(idx, conf)
        factor = scipy.linalg.cho_factor(a, overwrite_a=True, check_finite=False)
        weighted = scipy.linalg.cho_solve(factor, y[rec].astype(np.float64).T, check_finite=False)
        contrib = (y[idx] @ weighted) * conf[:, None]
        return _top_contributors(contrib, idx, self.items_.ids)


def _top_contributors(contrib: np.ndarray, seen_idx: np.ndarray, ids: np.ndarray) -> list[list[str]]:
    """Per column of ``contrib`` (seen x recommended), the ids of the positive top contributors, largest first.

    Same result as :func:`tastebud.models._scoring.top_contributors`, in a few whole-array steps: this runs
    once per served request, where per-row NumPy calls cost more than the arithmetic.
    """
    n_seen, n_rec = contrib.shape
    n = min(sc.EXPLAIN_TOP, n_seen)
    if n == 0:
        return [[] for _ in range(n_rec)]
    scores = contrib.T  # one row per recommended item
    part = np.argpartition(-scores, n - 1, axis=1)[:, :n] if n < n_seen else np.tile(np.arange(n_seen), (n_rec, 1))
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    best = np.take_along_axis(part, order, axis=1)
    positive = (np.take_along_axis(part_scores, order, axis=1) > 0).tolist()
    names = ids[seen_idx[best]].tolist()
    return [[str(x) for x, ok in zip(row, oks, strict=True) if ok] for row, oks in zip(names, positive, strict=True)]
