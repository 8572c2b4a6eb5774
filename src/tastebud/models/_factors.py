"""Shared base of the factor models (ALS, BPR): factors, scoring, similar items, fold-in, save/load.

A user's score for an item is the inner product of their factors. Similar items are ranked by the cosine of
item factors. ``fold_in`` solves the implicit-ALS least-squares problem for a new user against the fixed item
factors (Hu, Koren and Volinsky, "Collaborative Filtering for Implicit Feedback Datasets", ICDM 2008), so a
user's vector can follow their latest interactions without retraining.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import scipy.linalg
import scipy.sparse as sp
from pydantic import ConfigDict, Field

from tastebud.data.dataset import Dataset, IdMap
from tastebud.errors import BundleError, DataValidationError, ParameterError
from tastebud.models import _scoring as sc
from tastebud.models._training import RecencyConfig, training_matrix
from tastebud.models.ann import FaissIndex
from tastebud.models.base import (
    GEMM_MIN_ROWS,
    ModelConfig,
    RankedRow,
    Recommendations,
    Recommender,
    per_row_args,
)


class FactorConfig(RecencyConfig):
    """Hyperparameters shared by the factor models."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    factors: int = Field(64, ge=1, le=4096)
    """Number of latent factors per user and item (default 64)."""
    regularization: float = Field(0.01, ge=0.0)
    """L2 penalty on the factors (default 0.01); also used by ``fold_in``."""
    iterations: int = Field(15, ge=1)
    """Training passes over the data."""
    random_state: int = 42
    """Seed for the factor initialisation (and BPR's sampling)."""
    num_threads: int = Field(0, ge=0)
    """Training threads; 0 uses every core."""
    show_progress: bool = False
    """Show implicit's progress bar while fitting (for the CLI)."""
    use_ann: bool = False
    """Answer ``recommend`` and ``similar_items`` from a FAISS index (seen items left out inside the search)."""
    ann_threshold: int = Field(100_000, ge=1)
    """With ``use_ann``: catalogs with at least this many items get HNSW, smaller ones exact search."""


class FactorRecommender(Recommender):
    """Base of ALS and BPR: learned ``user_factors_`` (n_users x d) and ``item_factors_`` (n_items x d)."""

    config: FactorConfig
    #: extra factor columns the library adds (BPR keeps an item bias column).
    extra_dims: ClassVar[int] = 0

    def __init__(self, config: ModelConfig | None = None, **params: Any) -> None:
        super().__init__(config, **params)
        self.user_factors_: np.ndarray | None = None
        self.item_factors_: np.ndarray | None = None
        self.ann_: FaissIndex | None = None
        self.ann_similar_: FaissIndex | None = None
        self.gram_: np.ndarray | None = None  # YᵀY in float64 (set by fit and load)
        self.inv_norms_: np.ndarray | None = None  # 1 / ‖y_i‖ per item (set by fit and load)
        self._items_t: tuple[np.ndarray, np.ndarray] | None = None  # (item_factors_, its C-order transpose)

    # ------------------------------------------------------------------ to implement
    @abstractmethod
    def _train(self, matrix: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
        """Learn (user_factors, item_factors) from the user x item value matrix."""

    def _confidence(self, values: np.ndarray) -> np.ndarray:
        """Confidence ``c_ui`` of observed values used by ``fold_in`` (unobserved cells have confidence 1)."""
        return values.astype(np.float64)

    # ------------------------------------------------------------------ fitting
    @property
    def n_dims(self) -> int:
        """Width of the factor vectors."""
        return self.config.factors + self.extra_dims

    def fit(self, dataset: Dataset) -> Self:
        """Factorise ``dataset``'s user x item ``value`` matrix; returns self.

        Raises:
            DataValidationError: training produced factors of the wrong shape or with NaN/inf values.
        """
        matrix = training_matrix(dataset, "value", half_life_days=self.config.recency_half_life_days)
        user_factors, item_factors = self._train(matrix)
        return self._set_factors(user_factors, item_factors, matrix, dataset.users, dataset.items)

    @classmethod
    def from_factors(
        cls,
        user_factors: np.ndarray,
        item_factors: np.ndarray,
        seen: sp.csr_matrix,
        users: IdMap,
        items: IdMap,
        **params: Any,
    ) -> Self:
        """A fitted model from factors learned elsewhere (another trainer, a synthetic catalog).

        Args:
            user_factors: (n_users, n_dims) array, rows aligned with ``users``.
            item_factors: (n_items, n_dims) array, rows aligned with ``items``.
            seen: user x item matrix of the training values (excluded from recommendations, used by ``fold_in``
                and explanations).
            users: the user vocabulary.
            items: the item vocabulary.
            **params: hyperparameters (``factors`` must match the factor width).

        Raises:
            DataValidationError: shapes do not match or the factors hold NaN/inf values.
        """
        model = cls(**params)
        seen = sp.csr_matrix(seen, dtype=np.float32)
        if seen.shape != (len(users), len(items)):
            raise DataValidationError(
                f"{model.name}: seen matrix has shape {seen.shape}, expected ({len(users)}, {len(items)})"
            )
        return model._set_factors(user_factors, item_factors, seen, users, items)

    def _set_factors(
        self,
        user_factors: np.ndarray,
        item_factors: np.ndarray,
        seen: sp.csr_matrix,
        users: IdMap,
        items: IdMap,
    ) -> Self:
        """Check and store learned factors, then build the serving caches and ANN indexes; returns self."""
        user_factors = np.ascontiguousarray(user_factors, dtype=np.float32)
        item_factors = np.ascontiguousarray(item_factors, dtype=np.float32)
        expected = ((len(users), self.n_dims), (len(items), self.n_dims))
        if (user_factors.shape, item_factors.shape) != expected:
            # the classic mistake is passing an item x user matrix: it trains and gives plausible numbers
            raise DataValidationError(
                f"{self.name}: factor shapes {user_factors.shape} and {item_factors.shape}, "
                f"expected {expected[0]} (users) and {expected[1]} (items)"
            )
        for what, arr in (("user", user_factors), ("item", item_factors)):
            if not np.isfinite(arr).all():
                raise DataValidationError(
                    f"{self.name}: {what} factors contain NaN or infinite values; lower the learning rate "
                    "or raise the regularization"
                )
        self.user_factors_, self.item_factors_ = user_factors, item_factors
        self.seen_ = seen
        self.users_, self.items_ = users, items
        self._prepare()
        self._build_ann()
        return self

    def _prepare(self) -> None:
        """Precompute what every request would otherwise recompute: ``YᵀY`` and the item norms.

        Called after ``fit`` and ``load``; the Gram matrix is O(n_items · d²) to build, so computing it per
        request (fold-in, explanations) would cost milliseconds on small catalogs and seconds on large ones.
        """
        assert self.item_factors_ is not None
        y = self.item_factors_
        self.gram_ = np.asarray(y.T.astype(np.float64) @ y.astype(np.float64))
        norms = np.linalg.norm(y, axis=1)
        self.inv_norms_ = (1.0 / np.maximum(norms, 1e-12)).astype(np.float32)
        if not self.seen_.has_sorted_indices:
            self.seen_ = self.seen_.sorted_indices()

    def _build_ann(self) -> None:
        self.ann_ = self.ann_similar_ = None
        if self.config.use_ann and self.item_factors_ is not None:
            self.ann_ = FaissIndex(hnsw_threshold=self.config.ann_threshold).build(self.item_factors_)
            self.ann_similar_ = FaissIndex(hnsw_threshold=self.config.ann_threshold).build(self._unit_items())

    def _unit_items(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Unit-length item vectors (all, or only ``rows``) from the cached norms."""
        assert self.item_factors_ is not None and self.inv_norms_ is not None
        if rows is None:
            return self.item_factors_ * self.inv_norms_[:, None]
        return self.item_factors_[rows] * self.inv_norms_[rows, None]

    # ------------------------------------------------------------------ scoring
    def recommend(
        self,
        user_ids: Sequence[str],
        k: int = 10,
        *,
        exclude_seen: bool = True,
        candidates: Sequence[str] | None = None,
        explain: bool = False,
    ) -> Recommendations:
        """Top-``k`` items per user by the inner product of user and item factors.

        With ``use_ann`` and no ``candidates`` the FAISS index answers, the seen items left out inside its search.
        """
        self.check_fitted()
        assert self.users_ is not None and self.items_ is not None and self.user_factors_ is not None
        k = sc.check_k(k)
        rows = self.users_.index(user_ids, kind="user")
        cands = sc.resolve_candidates(self.items_, candidates)
        if len(rows) == 1:  # one user: the serving path, in index space, with the same results
            one = self.recommend_row(int(rows[0]), k, exclude_seen=exclude_seen, candidates=cands, explain=explain)
            explanations = None if one.because is None else [sc.id_lists(self.items_.ids, one.because)]
            return sc.build_recommendations(list(user_ids), [one.items], [one.scores], self.items_, explanations)
        exclude = self.seen_[rows] if exclude_seen else None
        if self.ann_ is not None and cands is None:
            idx, scores = self._ann_search(self.ann_, self.user_factors_[rows], k, exclude)
        else:
            idx, scores = sc.rank(
                self._score,
                rows,
                k,
                n_items=len(self.items_),
                exclude=exclude,
                candidates=cands,
                fresh_scores=self._fresh_scores(),
            )
        explanations = self._explain(rows, idx) if explain else None
        return sc.build_recommendations(list(user_ids), idx, scores, self.items_, explanations)

    def recommend_vector(
        self,
        vector: np.ndarray,
        k: int = 10,
        *,
        exclude: Sequence[str] | None = None,
        candidates: Sequence[str] | None = None,
    ) -> Recommendations:
        """Top-``k`` items for arbitrary user vectors (one, or one per row), e.g. from :meth:`fold_in`.

        Args:
            vector: shape (d,) or (n, d).
            k: list length.
            exclude: item ids never to return (typically the items the vector was folded in from).
            candidates: restrict to these item ids.

        Returns:
            One row per vector; query ids are the row numbers as strings.
        """
        self.check_fitted()
        assert self.items_ is not None and self.item_factors_ is not None
        k = sc.check_k(k)
        vectors = np.atleast_2d(np.asarray(vector, dtype=np.float32))
        if vectors.ndim != 2 or vectors.shape[1] != self.n_dims:
            raise ParameterError(f"{self.name}: expected vectors of length {self.n_dims}, got shape {vectors.shape}")
        cands = sc.resolve_candidates(self.items_, candidates)
        mask = None
        if exclude is not None:
            ex_idx = np.unique(self.items_.index(exclude, kind="item"))
            mask = sp.csr_matrix(
                (
                    np.ones(len(ex_idx) * len(vectors), dtype=np.float32),
                    np.tile(ex_idx, len(vectors)),
                    np.arange(len(vectors) + 1) * len(ex_idx),
                ),
                shape=(len(vectors), len(self.items_)),
            )
        if self.ann_ is not None and cands is None:
            idx, scores = self._ann_search(self.ann_, vectors, k, mask)
        else:
            idx, scores = sc.rank(
                lambda r, c: self._score_vectors(vectors[r], c),
                np.arange(len(vectors)),
                k,
                n_items=len(self.items_),
                exclude=mask,
                candidates=cands,
            )
        return sc.build_recommendations([str(i) for i in range(len(vectors))], idx, scores, self.items_)

    def similar_items(self, item_ids: Sequence[str], k: int = 10) -> Recommendations:
        """Top-``k`` items per item by the cosine of their factors, the item itself excluded."""
        self.check_fitted()
        assert self.items_ is not None
        k = sc.check_k(k)
        rows = self.items_.index(item_ids, kind="item")
        mask = sc.query_mask(rows, len(self.items_))
        if self.ann_similar_ is not None:
            idx, scores = self._ann_search(self.ann_similar_, self._unit_items(rows), k, mask)
        else:
            assert self.item_factors_ is not None and self.inv_norms_ is not None
            items, inv = self.item_factors_, self.inv_norms_
            # cos(q, i) = (q̂ · y_i) / ‖y_i‖: scale the scores, not every item vector, per call
            idx, scores = sc.rank(
                lambda r, c: (self._unit_items(r) @ items.T) * inv,
                rows,
                k,
                n_items=len(self.items_),
                exclude=mask,
            )
        return sc.build_recommendations(list(item_ids), idx, scores, self.items_)

    def recommend_row(
        self,
        row: int,
        k: int = 10,
        *,
        exclude_seen: bool = True,
        candidates: np.ndarray | None = None,
        explain: bool = False,
    ) -> RankedRow:
        """One user's top-``k`` in index space: one matrix-vector product and a partial sort (see the base)."""
        self.check_fitted()
        k = sc.check_k(k)
        idx, scores = self._rank_one(row, k, exclude_seen, candidates)
        return RankedRow(idx, scores, self._explain_row(row, idx) if explain else None)

    def recommend_rows(
        self,
        rows: Sequence[int] | np.ndarray,
        k: int | Sequence[int] = 10,
        *,
        exclude_seen: bool | Sequence[bool] = True,
        explain: bool | Sequence[bool] = False,
    ) -> list[RankedRow]:
        """Several users' top-``k`` (see the base): one matrix-matrix product scores them all.

        ``X_rows @ Yᵀ`` reads the item factors once per batch instead of once per user, which is what one
        request's cost is mostly made of on a large catalog (60,000 items x 64 float32: 15 MB per product). The
        rows are then ranked together (:func:`~tastebud.models._scoring.rank_rows`) and explained together
        (:meth:`_explain_rows`), with the lists :meth:`recommend_row` gives each of them. The matrix product
        sums each score's ``d`` terms in another order than the matrix-vector product of :meth:`recommend_row`,
        so a score can differ in its last bits (about 1e-7 relative); only items whose scores are that close can
        change places. Batches of fewer than :data:`GEMM_MIN_ROWS` users take :meth:`recommend_row` for each user
        (the same results as one request). Models answering from a FAISS index search the batch's users in one
        call (:meth:`FaissIndex.search`, the same rows as one user at a time) and explain them together.
        """
        self.check_fitted()
        assert self.users_ is not None and self.user_factors_ is not None and self.item_factors_ is not None
        rows_, ks, excl, expl = per_row_args(rows, len(self.users_), k, exclude_seen, explain)
        ks = [sc.check_k(x) for x in ks]
        indptr, indices = self.seen_.indptr, self.seen_.indices
        if self.ann_ is not None:
            us = rows_.tolist()
            seen = [indices[indptr[u] : indptr[u + 1]] if excl[j] else indices[:0] for j, u in enumerate(us)]
            ranked: list[tuple[np.ndarray, np.ndarray]] = [(indices[:0], np.empty(0, dtype=np.float32))] * len(us)
            by_k: dict[int, list[int]] = {}
            for j, kj in enumerate(ks):  # one search per k: a k beyond efSearch widens that search only
                by_k.setdefault(kj, []).append(j)
            for kj, js in by_k.items():
                ids, found = self.ann_.search(self.user_factors_[rows_[js]], kj, exclude=[seen[j] for j in js])
                for j, row_ids, row_scores in zip(js, *_present(ids, found), strict=True):
                    ranked[j] = (row_ids, row_scores)
            return sc.explained_rows(ranked, expl, us, self._explain_rows)
        if len(rows_) < GEMM_MIN_ROWS:
            return super().recommend_rows(rows_, ks, exclude_seen=excl, explain=expl)
        users, items_t = self.user_factors_, self._items_by_dim()
        chunk = max(1, sc.MAX_CELLS // max(1, items_t.shape[1]))
        out: list[RankedRow] = []
        for start in range(0, len(rows_), chunk):
            part = rows_[start : start + chunk]
            us = part.tolist()
            scores = users[part] @ items_t  # (rows, items), C order: each row is one user's contiguous vector
            seen = [indices[indptr[u] : indptr[u + 1]] if excl[start + j] else indices[:0] for j, u in enumerate(us)]
            ranked = sc.rank_rows(scores, ks[start : start + len(us)], seen)
            out += sc.explained_rows(ranked, expl[start : start + len(us)], us, self._explain_rows)
        return out

    def _items_by_dim(self) -> np.ndarray:
        """The item factors transposed, ``(d, n_items)`` in C order: built on the first batch, kept with its source.

        BLAS multiplies ``X @ Yᵀ`` about 1.7 times faster from this copy than from the transposed view of ``Y`` (at
        ML-25M size: 0.13 against 0.22 ms per user in batches of 32), with the same bits. It costs one more copy
        of the item factors (60,000 x 64 float32: 15 MB), only in processes that score batches.
        """
        assert self.item_factors_ is not None
        cached = self._items_t
        if cached is None or cached[0] is not self.item_factors_:
            cached = self._items_t = (self.item_factors_, np.ascontiguousarray(self.item_factors_.T))
        return cached[1]

    def _rank_one(self, u: int, k: int, exclude_seen: bool, cands: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (item indices, scores) of one user; the same results as the batched path.

        Slicing the CSR row by hand and ranking a 1-D score vector avoids scipy's fancy indexing and matrix
        construction, which cost more than the scoring itself.
        """
        assert self.user_factors_ is not None and self.item_factors_ is not None
        x = self.user_factors_[u]
        lo, hi = self.seen_.indptr[u], self.seen_.indptr[u + 1]
        seen = self.seen_.indices[lo:hi] if exclude_seen else self.seen_.indices[:0]
        if self.ann_ is not None and cands is None:
            ids, found = self.ann_.search(x[None, :], k, exclude=[seen])  # seen left out inside the search
            kept_ids, kept_scores = _present(ids, found)
            return kept_ids[0], kept_scores[0]
        scores = self.item_factors_ @ x if cands is None else self.item_factors_[cands] @ x
        return sc.rank_one(scores, k, seen, cands)

    def _explain_row(self, u: int, rec: np.ndarray) -> list[list[int]] | None:
        """Per recommended item index, the indices of user ``u``'s items that explain it (``None``: cannot)."""
        return None

    def _explain_rows(self, us: list[int], recs: list[np.ndarray]) -> list[list[list[int]] | None]:
        """:meth:`_explain_row` for several users (a scoring batch); models that can share work override it."""
        return [self._explain_row(u, rec) for u, rec in zip(us, recs, strict=True)]

    def _fresh_scores(self) -> bool:
        """Whether :meth:`_score` is this class's matrix product (a new array per call), not an override."""
        cls = type(self)
        return cls._score is FactorRecommender._score and cls._score_vectors is FactorRecommender._score_vectors

    def _score(self, rows: np.ndarray, cols: np.ndarray | None) -> np.ndarray:
        assert self.user_factors_ is not None
        return self._score_vectors(self.user_factors_[rows], cols)

    def _score_vectors(self, vectors: np.ndarray, cols: np.ndarray | None) -> np.ndarray:
        assert self.item_factors_ is not None
        items = self.item_factors_ if cols is None else self.item_factors_[cols]
        return vectors @ items.T

    def _ann_search(
        self, index: FaissIndex, queries: np.ndarray, k: int, exclude: sp.csr_matrix | None
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Search ``index`` for ``k`` results per query, each row's excluded items left out inside the search."""
        lists = None
        if exclude is not None:
            indptr, indices = exclude.indptr, exclude.indices
            lists = [indices[indptr[i] : indptr[i + 1]] for i in range(len(queries))]
        return _present(*index.search(queries, k, exclude=lists))

    def _explain(self, rows: np.ndarray, rec_rows: list[np.ndarray]) -> list[list[list[str]]] | None:
        """Explanations for recommended items as item ids; ``None`` where the model cannot explain."""
        assert self.items_ is not None
        out = []
        for u, rec in zip(rows.tolist(), rec_rows, strict=True):
            because = self._explain_row(u, rec)
            if because is None:
                return None
            out.append(sc.id_lists(self.items_.ids, because))
        return out

    # ------------------------------------------------------------------ fold-in
    def fold_in(self, item_ids: Sequence[str], values: Sequence[float] | np.ndarray | None = None) -> np.ndarray:
        """A user vector for someone who interacted with ``item_ids``, item factors held fixed.

        Solves ``x = (YᵀY + λI + Yᵀ(C - I)Y)⁻¹ YᵀCp`` (Hu et al. 2008) in float64, with the model's
        regularization and confidence convention. Pass the result to :meth:`recommend_vector`.

        Args:
            item_ids: the items the user interacted with (unknown ids raise ``UnknownItemError``).
            values: interaction values aligned with ``item_ids`` (default 1.0 each).

        Returns:
            A float32 vector of length ``n_dims``.
        """
        self.check_fitted()
        assert self.items_ is not None
        idx = self.items_.index(item_ids, kind="item")
        vals = np.ones(len(idx)) if values is None else np.asarray(values, dtype=np.float64)
        if vals.shape != idx.shape:
            raise ParameterError(f"{self.name}: fold_in got {len(idx)} item ids but {vals.size} values")
        if not np.isfinite(vals).all() or (vals < 0).any():
            raise ParameterError(f"{self.name}: fold_in values must be finite and >= 0")
        a, b = self._user_system(idx, self._confidence(vals))
        return scipy.linalg.solve(a, b, assume_a="pos").astype(np.float32)

    history_scoring: ClassVar[bool] = True

    def _history_scores(self, idx: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Scores of every item for the user vector folded in from a history (see :meth:`fold_in`)."""
        assert self.item_factors_ is not None
        if (values < 0).any():
            raise ParameterError(f"{self.name}: history values must be >= 0 (they are confidences)")
        a, b = self._user_system(idx, self._confidence(values))
        x = scipy.linalg.solve(a, b, assume_a="pos").astype(np.float32)
        return self.item_factors_ @ x

    def _user_system(self, idx: np.ndarray, confidence: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The normal equations ``(A, b)`` of one user's weighted least squares (implicit-ALS form)."""
        assert self.item_factors_ is not None
        ys = self.item_factors_[idx].astype(np.float64)
        a = self._with_prior(ys.T @ (ys * (confidence - 1.0)[:, None]))
        b = ys.T @ confidence
        return a, b

    def _with_prior(self, a: np.ndarray) -> np.ndarray:
        """``a + YᵀY + λI``, in place, for one user's ``Y_uᵀ(C_u − I)Y_u`` (d x d) or a stack of them (n x d x d)."""
        assert self.gram_ is not None and a.flags.c_contiguous  # (so that the reshape below is a view)
        a += self.gram_
        d = a.shape[-1]
        a.reshape(-1, d * d)[:, :: d + 1] += self.config.regularization  # the diagonals, without an identity
        return a

    # ------------------------------------------------------------------ persistence
    def save(self, directory: Path) -> None:
        """Write factors, id maps, config and the seen matrix (and FAISS indexes when ``use_ann``)."""
        self.check_fitted()
        directory = Path(directory)
        sc.save_state(self, directory, {"n_dims": self.n_dims})
        assert self.user_factors_ is not None and self.item_factors_ is not None
        np.save(directory / "user_factors.npy", self.user_factors_, allow_pickle=False)
        np.save(directory / "item_factors.npy", self.item_factors_, allow_pickle=False)
        if self.ann_ is not None and self.ann_similar_ is not None:
            self.ann_.save(directory / "ann_items.faiss")
            self.ann_similar_.save(directory / "ann_similar.faiss")

    @classmethod
    def load(cls, directory: Path) -> Self:
        """Read a model written by :meth:`save`."""
        directory = Path(directory)
        model, _ = sc.load_state(cls, directory)
        assert model.users_ is not None and model.items_ is not None
        d = model.n_dims
        model.user_factors_ = sc.load_checked(directory / "user_factors.npy", (len(model.users_), d), np.floating)
        model.item_factors_ = sc.load_checked(directory / "item_factors.npy", (len(model.items_), d), np.floating)
        model._prepare()
        if model.config.use_ann:
            model.ann_ = FaissIndex.load(directory / "ann_items.faiss")
            model.ann_similar_ = FaissIndex.load(directory / "ann_similar.faiss")
            for index in (model.ann_, model.ann_similar_):
                if (index.n_vectors, index.dim) != (len(model.items_), d):
                    raise BundleError(f"{directory}: FAISS index does not match the item factors")
        return model


def _present(ids: np.ndarray, scores: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per query of :meth:`FaissIndex.search`'s results, its ids and scores without the missing ones (id -1)."""
    keep = ids >= 0
    return [i[m] for i, m in zip(ids, keep, strict=True)], [s[m] for s, m in zip(scores, keep, strict=True)]
