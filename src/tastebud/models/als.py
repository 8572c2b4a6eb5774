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

#: The inverses of every user's system matrix ``W_u`` are kept (float32) when they fit in this many bytes
#: (ML-100K: 15 MiB; 10K users at d=64: 160 MiB); larger user bases solve per request instead.
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
        """Reset the explanation cache; :meth:`load` fills it, :meth:`_explain` does on first use otherwise.

        The inversions are not done in ``fit``: training time is compared with calling ``implicit`` directly, and a
        model that is only evaluated never explains. Serving loads bundles, so it pays them once at load time.
        """
        super()._prepare()
        self.user_inv_: np.ndarray | None = None
        self._inv_cached = False

    @classmethod
    def load(cls, directory: Path) -> Self:
        """Read a model written by :meth:`save` and build its explanation cache (off the request path)."""
        model = super().load(directory)
        model._cache_inverses()
        return model

    def _cache_inverses(self) -> None:
        """Invert every user's ``W_u`` once (when it fits), so that explaining a request is one small product.

        NumPy only, here and in :meth:`_explain`: server processes cap NumPy's BLAS at one thread, while SciPy's
        LAPACK and FAISS load their own OpenBLAS with a thread per core, which contends between workers.
        """
        self._inv_cached = True
        assert self.users_ is not None
        n, d = len(self.users_), self.n_dims
        if n * d * d * 4 > EXPLAIN_CACHE_BYTES:
            return
        inv = np.empty((n, d, d), dtype=np.float32)
        indptr, indices, data = self.seen_.indptr, self.seen_.indices, self.seen_.data
        for u in range(n):  # one d x d inversion per user, at fit/load time only
            lo, hi = indptr[u], indptr[u + 1]
            a, _ = self._user_system(indices[lo:hi], self._confidence(data[lo:hi]))
            inv[u] = _inverse(a)
        self.user_inv_ = inv

    def _explain(self, rows: np.ndarray, rec_rows: list[np.ndarray]) -> list[list[list[str]]]:
        """Per recommended item ``i``, the user's items ``j`` with the largest ``c_uj · y_jᵀ W_u⁻¹ y_i``.

        ``W_u = YᵀC_uY + λI`` is the user's system matrix (Hu et al. 2008, section 5); the contributions sum
        to the score the exact least-squares user vector gives item ``i``. Only the k returned items are
        explained, with ``W_u⁻¹`` cached at fit/load when it fits (else solved here, with ``YᵀY`` cached).
        """
        assert self.items_ is not None and self.item_factors_ is not None
        y = self.item_factors_
        ids = self.items_.ids
        if not getattr(self, "_inv_cached", False):
            self._cache_inverses()
        inv = self.user_inv_
        out: list[list[list[str]]] = []
        for u, rec in zip(rows.tolist(), rec_rows, strict=True):
            lo, hi = self.seen_.indptr[u], self.seen_.indptr[u + 1]
            seen_idx = self.seen_.indices[lo:hi]
            conf = self._confidence(self.seen_.data[lo:hi])
            if inv is not None:
                weighted = inv[u] @ y[rec].T  # W_u⁻¹ y_i, one column per recommended item
            else:
                a, _ = self._user_system(seen_idx, conf)
                weighted = _solve(a, y[rec].astype(np.float64).T)
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
    scores = np.ascontiguousarray(contrib.T)  # one row per recommended item
    rows = np.arange(n_rec)[:, None]
    if n < n_seen:
        part = np.argpartition(scores, n_seen - n, axis=1)[:, n_seen - n :]  # the n largest, unordered
    else:
        part = np.broadcast_to(np.arange(n_seen), (n_rec, n_seen))
    part_scores = scores[rows, part]
    order = np.argsort(-part_scores, axis=1, kind="stable")
    best = part[rows, order]
    positive = (part_scores[rows, order] > 0).tolist()
    names = ids[seen_idx[best]].tolist()
    return [[str(x) for x, ok in zip(row, oks, strict=True) if ok] for row, oks in zip(names, positive, strict=True)]


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
