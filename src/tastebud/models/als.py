"""Implicit-feedback ALS (Hu, Koren and Volinsky, ICDM 2008) on top of ``implicit``'s CPU solver.

Confidence follows implicit 0.7's convention, applied exactly once by implicit itself: the dataset's
``value`` matrix is passed unscaled and ``alpha`` goes to ``AlternatingLeastSquares(alpha=...)``, which
multiplies it, so an observed cell has confidence ``c_ui = alpha * value`` and every unobserved cell
confidence 1 (preference 0).
The paper writes ``1 + alpha * r``; the two differ by the constant 1 on observed cells only.

:meth:`ALSRecommender.fit_warm` retrains from a previous model's factors (a warm start): implicit keeps factors
that are set before ``fit``, and its conjugate-gradient solver starts each row from its current vector, so a few
sweeps from the champion reach the quality of a full cold fit.

``engine="spark"`` fits the same model with pyspark MLlib's ALS instead (:mod:`tastebud.models.spark_als`, which
documents how Spark's ``alpha`` and ``regParam`` are matched to these parameters): the factors come back in the
dataset's user and item order and everything after the fit (bundle, serving, explanations, fold-in) is unchanged.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

import numpy as np
import scipy.linalg
import scipy.sparse as sp
from pydantic import Field
from scipy.linalg.lapack import dposv
from threadpoolctl import threadpool_limits

from tastebud.data.dataset import Dataset, IdMap
from tastebud.errors import ParameterError
from tastebud.models import _scoring as sc
from tastebud.models._factors import FactorConfig, FactorRecommender
from tastebud.models._training import config_for_feedback, feedback_kind, training_matrix
from tastebud.models.base import ModelConfig, Recommender

logger = logging.getLogger(__name__)

#: Explanations are precomputed at load time within this many bytes: per training interaction ``(u, j)`` the row
#: ``c_uj · y_jᵀ W_u⁻¹`` (float32; ML-100K: 20 MiB), else per user ``W_u⁻¹`` (ML-100K: 15 MiB; 10K users at d=64:
#: 160 MiB); beyond both, ``W_u⁻¹`` of the users with the longest histories (whose ``W_u`` costs most to build per
#: request: ML-25M's 16K longest of 162K at d=64), and ``W_u`` is solved per request for the others.
EXPLAIN_CACHE_BYTES = 256 * 2**20
#: Users with at most this many training interactions per factor never take a slot of the partial inverse cache:
#: building their ``W_u`` per request costs about what applying a cached inverse does.
EXPLAIN_PARTIAL_MIN_RATIO = 1.0
#: Defaults per kind of feedback (:func:`~tastebud.models._training.feedback_kind`) for the fields a caller leaves
#: unset; ``ALSConfig``'s own defaults serve ratings and binary data. Play counts are heavy-tailed: a linear
#: confidence of ``10 * plays`` lets a few obsessive listens dominate, so counts get Hu et al.'s log confidence,
#: with alpha and regularization chosen on validation splits of two Last.fm-format samples (bench/RESULTS.md,
#: "Defaults per kind of feedback").
FEEDBACK_DEFAULTS: dict[str, dict[str, Any]] = {"counts": {"confidence": "log", "alpha": 7.0, "regularization": 100.0}}
#: Default ALS sweeps of a warm start (``ALSConfig.warm_iterations``), measured in ``bench/bench_warm_start.py``.
WARM_ITERATIONS_DEFAULT = 5


class ALSConfig(FactorConfig):
    """Hyperparameters of :class:`ALSRecommender`."""

    regularization: float = Field(50.0, ge=0.0)
    """L2 penalty on factors. The defaults (50, alpha 10) were tuned on a validation split of ML-100K (ratings; play
    counts take :data:`FEEDBACK_DEFAULTS` for what the caller leaves unset)."""
    alpha: float = Field(10.0, gt=0.0)
    """Confidence scale: an observed cell weighs ``alpha * value`` against 1 for unobserved cells."""
    confidence: Literal["linear", "log"] = "linear"
    """How a value becomes a confidence: ``linear`` gives ``alpha * value``, ``log`` gives
    ``alpha * log(1 + value / log_eps)`` (Hu et al. 2008, section 3), which tames heavy-tailed play counts."""
    log_eps: float = Field(1.0, gt=0.0)
    """Scale of the ``log`` confidence, in value units (plays)."""
    use_cg: bool = True
    """Use implicit's conjugate-gradient solver (faster); False solves each user exactly by Cholesky."""
    engine: Literal["implicit", "spark"] = "implicit"
    """Who fits the factors: ``implicit`` (in this process) or ``spark`` (pyspark MLlib ALS on the settings'
    ``spark.master``, default ``local[*]``; needs the ``spark`` extra and Java). Both write the same bundle."""
    spark_reg_param: float | None = Field(None, ge=0.0)
    """With ``engine=spark``: Spark's ``regParam`` as given (None: mapped from ``regularization``, see
    :func:`tastebud.models.spark_als.reg_param`)."""
    warm_iterations: int = Field(WARM_ITERATIONS_DEFAULT, ge=0)
    """Sweeps of :meth:`ALSRecommender.fit_warm` from a previous model's factors (``iterations`` stays the count
    of a cold fit). The default was chosen in bench/RESULTS.md, "Retraining: warm-start vs cold ALS"."""


class ALSRecommender(FactorRecommender):
    """Alternating least squares on implicit feedback; explains recommendations by the user's items.

    Parameters left unset take the defaults of the training data's kind of feedback (:data:`FEEDBACK_DEFAULTS`):
    after ``fit`` the config holds the values used, which is what ``params()`` logs and bundles record.
    """

    name = "als"
    config_class = ALSConfig
    config: ALSConfig
    #: kind of feedback (``feedback_kind``) -> defaults that replace the config's unset fields when fitting.
    feedback_defaults: ClassVar[dict[str, dict[str, Any]]] = FEEDBACK_DEFAULTS

    def __init__(self, config: ModelConfig | None = None, **params: Any) -> None:
        super().__init__(config, **params)
        self._requested = self.config
        #: how the factors were fitted (engine, master, Spark version, ...); set by ``fit`` with the spark engine.
        self.engine_info_: dict[str, Any] | None = None

    def fit(self, dataset: Dataset) -> Self:
        """Factorise ``dataset`` with the defaults of its kind of feedback for unset parameters; returns self."""
        self._adapt_to(dataset)
        return super().fit(dataset)

    def _adapt_to(self, dataset: Dataset) -> None:
        kind = feedback_kind(dataset)
        self.config = config_for_feedback(self._requested, self.feedback_defaults, kind)
        if self.config is not self._requested:
            logger.info("als defaults for the feedback", extra={"model": self.name, "feedback": kind})

    def _train(self, matrix: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
        cfg = self.config
        if cfg.engine == "spark":
            from tastebud.models import spark_als

            user_factors, item_factors, self.engine_info_ = spark_als.fit(
                self._scaled(matrix),
                factors=cfg.factors,
                iterations=cfg.iterations,
                regularization=cfg.regularization,
                alpha=cfg.alpha,
                random_state=cfg.random_state,
                reg_param_override=cfg.spark_reg_param,
            )
            return user_factors, item_factors
        # implicit parallelises over users itself; a multi-threaded BLAS underneath only adds contention
        with threadpool_limits(limits=1, user_api="blas"):
            model = self._solver(cfg.iterations)
            # implicit 0.7 expects users as rows
            model.fit(self._scaled(matrix), show_progress=cfg.show_progress)
        return model.user_factors, model.item_factors

    def _solver(self, iterations: int) -> Any:
        """implicit's CPU ``AlternatingLeastSquares`` with this model's parameters (float32 factors)."""
        from implicit.cpu.als import AlternatingLeastSquares

        cfg = self.config
        return AlternatingLeastSquares(
            factors=cfg.factors,
            regularization=cfg.regularization,
            alpha=cfg.alpha,
            dtype=np.float32,
            iterations=iterations,
            use_cg=cfg.use_cg,
            num_threads=cfg.num_threads,
            random_state=cfg.random_state,
        )

    # ------------------------------------------------------------------ warm start
    def fit_warm(self, dataset: Dataset, previous: Recommender, *, iterations: int | None = None) -> Self:
        """Fit on ``dataset`` starting from ``previous``'s factors, matched by external id; returns self.

        Users and items that ``previous`` knows start from its vectors. New items are then solved in closed
        form against those user factors (new users counting as zero), and new users against the resulting item
        factors: one exact half-step each, implicit's ``recalculate_item``/``recalculate_user``. A new row with
        nothing to solve from (no interaction with a carried-over user or item) starts from small random values,
        as in a cold fit. Then ``iterations`` ALS sweeps refine every factor; implicit keeps factors set before
        ``fit`` and its conjugate-gradient solver starts from them. The result is an ordinary fitted model (same
        save format, explanations, fold-in); ``previous`` is left unchanged.

        When ``previous`` is not a fitted ALS with the same ``factors``, or this model's engine is ``spark`` (MLlib
        ALS takes no initial factors), this is a plain cold :meth:`fit` (with the config's ``iterations``), and
        the reason is logged.

        Args:
            dataset: the data to fit, typically the champion's data plus the events since.
            previous: the model to start from, typically the champion.
            iterations: ALS sweeps after the initialisation (0: only the initialisation); default the config's
                ``warm_iterations``.

        Raises:
            ParameterError: ``iterations`` is negative.
            DataValidationError: training produced factors with NaN/inf values.
        """
        self._adapt_to(dataset)
        n_sweeps = self.config.warm_iterations if iterations is None else iterations
        if n_sweeps < 0:
            raise ParameterError(f"{self.name}: fit_warm iterations must be >= 0, got {n_sweeps}")
        reason = self._warm_start_refusal(previous)
        if reason is not None:
            logger.info("als warm start falls back to a cold fit", extra={"model": self.name, "reason": reason})
            return self.fit(dataset)
        assert isinstance(previous, ALSRecommender)
        matrix = training_matrix(dataset, "value", half_life_days=self.config.recency_half_life_days)
        with threadpool_limits(limits=1, user_api="blas"):
            scaled = self._scaled(matrix)
            user_factors, item_factors, counts = self._warm_factors(scaled, dataset.users, dataset.items, previous)
            model = self._solver(n_sweeps)
            # implicit initialises only factors that are None; these have the data's shapes (users as rows)
            model.user_factors, model.item_factors = user_factors, item_factors
            model.fit(scaled, show_progress=self.config.show_progress)
        logger.info("als warm start", extra={"model": self.name, "iterations": n_sweeps, **counts})
        return self._set_factors(model.user_factors, model.item_factors, matrix, dataset.users, dataset.items)

    def _warm_start_refusal(self, previous: Recommender) -> str | None:
        """Why ``previous`` cannot seed a warm start (``None``: it can)."""
        if self.config.engine == "spark":
            return "the spark engine cannot start from given factors"
        if not isinstance(previous, ALSRecommender):
            return f"previous model is {getattr(previous, 'name', type(previous).__name__)!r}, not als"
        if not previous.is_fitted or previous.user_factors_ is None or previous.item_factors_ is None:
            return "previous model is not fitted"
        if previous.n_dims != self.n_dims:
            return f"previous model has {previous.n_dims} factors, this one {self.n_dims}"
        return None

    def _warm_factors(
        self, matrix: sp.csr_matrix, users: IdMap, items: IdMap, previous: ALSRecommender
    ) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
        """Initial (user, item) factors for ``matrix``: carried over by id, new rows solved or random."""
        assert previous.users_ is not None and previous.items_ is not None
        assert previous.user_factors_ is not None and previous.item_factors_ is not None
        rng = np.random.default_rng(self.config.random_state)
        user_src, item_src = _positions(users, previous.users_), _positions(items, previous.items_)
        x = _carry_over(previous.user_factors_, user_src)
        y = _carry_over(previous.item_factors_, item_src)
        new_users, new_items = np.flatnonzero(user_src < 0), np.flatnonzero(item_src < 0)
        solver = self._solver(0)
        solver.user_factors, solver.item_factors = x, y
        if len(new_items):  # against the carried-over users only: new users are still zero
            solved = solver.recalculate_item(new_items, sp.csr_matrix(matrix[:, new_items].T))
            y[new_items] = _or_random(solved, rng, 0.01)
        if len(new_users):  # against every item, the new ones included (implicit computes YᵀY here)
            solved = solver.recalculate_user(new_users, matrix[new_users])
            x[new_users] = _or_random(solved, rng, 0.01)
        counts = {
            "users_carried": len(users) - len(new_users),
            "users_new": len(new_users),
            "items_carried": len(items) - len(new_items),
            "items_new": len(new_items),
        }
        return x, y, counts

    def _scale(self, values: np.ndarray) -> np.ndarray:
        """Values as implicit sees them before it multiplies by ``alpha`` (``log`` confidence applied here)."""
        if self.config.confidence == "log":
            return np.log1p(np.asarray(values, dtype=np.float64) / self.config.log_eps)
        return np.asarray(values, dtype=np.float64)

    def _scaled(self, matrix: sp.csr_matrix) -> sp.csr_matrix:
        """``matrix`` with :meth:`_scale` applied to its entries (the matrix itself when ``linear``)."""
        if self.config.confidence == "linear":
            return matrix
        out = matrix.copy()
        out.data = self._scale(out.data).astype(out.dtype)
        return out

    def _confidence(self, values: np.ndarray) -> np.ndarray:
        return self.config.alpha * self._scale(values)

    def _prepare(self) -> None:
        """Reset the explanation cache; :meth:`load` fills it, :meth:`_explain_row` does on first use otherwise.

        The inversions are not done in ``fit``: training time is compared with calling ``implicit`` directly, and a
        model that is only evaluated never explains. Serving loads bundles, so it pays them once at load time.
        """
        super()._prepare()
        self.user_inv_: np.ndarray | None = None
        #: per user, the slot of its ``W_u⁻¹`` in ``user_inv_`` (-1: none); ``None`` when every user has one
        self.inv_slot_: np.ndarray | None = None
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
        ``W_u⁻¹`` per user; else the inverses of as many users as fit, longest histories first (building ``W_u``
        costs ``O(n_u d²)`` per request: 25 ms for a 12,000-item history at d=64, against about 1 ms with the
        inverse cached).
        """
        self._inv_cached = True
        self.explain_rows_ = self.user_inv_ = self.inv_slot_ = None
        assert self.users_ is not None and self.item_factors_ is not None
        n, d = len(self.users_), self.n_dims
        indptr, indices, data = self.seen_.indptr, self.seen_.indices, self.seen_.data
        by_row = len(indices) * d * 4 <= EXPLAIN_CACHE_BYTES
        users = np.arange(n)
        if not by_row and n * d * d * 4 > EXPLAIN_CACHE_BYTES:
            lengths = np.diff(indptr)
            longest = np.argsort(-lengths, kind="stable")[: EXPLAIN_CACHE_BYTES // (d * d * 4)]
            users = np.sort(longest[lengths[longest] > EXPLAIN_PARTIAL_MIN_RATIO * d])
            if not len(users):
                return
            self.inv_slot_ = np.full(n, -1, dtype=np.int64)
            self.inv_slot_[users] = np.arange(len(users))
        y = self.item_factors_
        store = np.empty((len(indices), d) if by_row else (len(users), d, d), dtype=np.float32)
        for slot, u in enumerate(users.tolist()):  # one d x d inversion per user, at load time only
            lo, hi = indptr[u], indptr[u + 1]
            conf = self._confidence(data[lo:hi])
            inv = _inverse(self._user_system(indices[lo:hi], conf)[0])
            if by_row:
                store[lo:hi] = (y[indices[lo:hi]].astype(np.float64) @ inv) * conf[:, None]  # W_u is symmetric
            else:
                store[slot] = inv
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
        because = self._explain_rows([u], [rec])[0]
        assert because is not None
        return because

    def _explain_rows(self, us: list[int], recs: list[np.ndarray]) -> list[list[list[int]] | None]:
        """:meth:`_explain_row` for the users of a scoring batch: the systems formed, the contributions ranked together.

        Users without a cached inverse need ``W_u⁻¹ y_i``: each system (symmetric positive definite, ``λ > 0``) is
        solved by LAPACK's Cholesky solver ``dposv`` in place, about 17 us a user less than NumPy's batched LU
        solve at ML-25M size with the same lists (bench/RESULTS.md); a system that is not positive definite (zero
        regularization) falls back to LU or least squares. Each user's gathered item factors serve both the
        system and the contributions, and every user's contributions are ranked together
        (:func:`~tastebud.models._scoring.top_contributors_many`). The same explanations as one user at a time.
        Server processes cap SciPy's OpenBLAS at one thread like NumPy's (``serving.blas_threads``).
        """
        assert self.item_factors_ is not None
        if not self._inv_cached:
            self._cache_explanations()
        y = self.item_factors_
        indptr, indices, data = self.seen_.indptr, self.seen_.indices, self.seen_.data
        inverses, slots = self.user_inv_, self.inv_slot_
        contribs: list[np.ndarray | None] = [None] * len(us)
        pending: list[tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        for j, (u, rec) in enumerate(zip(us, recs, strict=True)):
            lo, hi = indptr[u], indptr[u + 1]
            y_rec = y[rec].T
            if self.explain_rows_ is not None:
                contribs[j] = self.explain_rows_[lo:hi] @ y_rec
                continue
            conf = self._confidence(data[lo:hi])
            slot = u if slots is None else int(slots[u])
            if inverses is not None and slot >= 0:
                weighted = inverses[slot] @ y_rec  # W_u⁻¹ y_i, one column per recommended item
                contribs[j] = (y[indices[lo:hi]] @ weighted) * conf[:, None]
            else:
                ys = y[indices[lo:hi]]
                # Y_uᵀ(C_u − I)Y_u in float32 (half the time of float64; a sum of n_u terms, each exact to float32's
                # 7 digits); YᵀY + λI and the solve below stay float64.
                pending.append((j, ys, conf, ys.T @ (ys * (conf - 1.0).astype(np.float32)[:, None]), y_rec))
        if pending:
            systems = self._with_prior(np.stack([p[3] for p in pending]).astype(np.float64))
            for i, (j, ys, conf, system, y_rec) in enumerate(pending):
                # the transpose of a C-order symmetric matrix is itself in Fortran order: factored in place, no copy
                _, solved, info = dposv(systems[i].T, y_rec, overwrite_a=True)
                if info != 0:  # not positive definite (zero regularization): LU, else least squares
                    solved = _solve(self._with_prior(system.astype(np.float64)), y_rec.astype(np.float64))
                # float32, as the cached paths compute them: about 6 us a user less than ys promoted to float64
                contribs[j] = (ys @ solved.astype(np.float32)) * conf[:, None]
        ready = [c for c in contribs if c is not None]
        assert len(ready) == len(us)
        return list(sc.top_contributors_many(ready, [indices[indptr[u] : indptr[u + 1]] for u in us]))

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


def _positions(ids: IdMap, previous: IdMap) -> np.ndarray:
    """Per id of ``ids``, its index in ``previous`` (-1 where ``previous`` does not have it)."""
    lookup = previous.lookup
    return np.fromiter((lookup.get(str(x), -1) for x in ids.ids.tolist()), dtype=np.int64, count=len(ids))


def _carry_over(factors: np.ndarray, source: np.ndarray) -> np.ndarray:
    """A new float32 factor array: row ``r`` is ``factors[source[r]]``, zero where ``source[r]`` is -1."""
    out = np.zeros((len(source), factors.shape[1]), dtype=np.float32)
    known = source >= 0
    out[known] = factors[source[known]]
    return out


def _or_random(solved: np.ndarray, rng: np.random.Generator, scale: float) -> np.ndarray:
    """``solved`` with rows that got no signal (all zero, or not finite) replaced by uniform ``[0, scale)`` values.

    A row solved from nothing is exactly zero, and ALS cannot leave zero where every neighbour is zero too (a
    component of new users and items only): those rows start like a cold fit instead, as implicit does.
    """
    solved = np.asarray(solved, dtype=np.float32).reshape(len(solved), -1)
    empty = ~(np.isfinite(solved).all(axis=1) & (solved != 0).any(axis=1))
    if empty.any():
        solved[empty] = rng.random((int(empty.sum()), solved.shape[1]), dtype=np.float32) * scale
    return solved


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
