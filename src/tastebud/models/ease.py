"""EASE, the closed-form item-item model.

Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019: ``P = (XᵀX + λI)⁻¹`` and
``B = I - P / diag(P)`` (column-wise), so ``diag(B) = 0``; a user's scores are ``x_u B``. ``X`` is the binary
user x item matrix. The inverse is computed in float64 and ``B`` kept as float32; memory and time grow with
the square and cube of the number of items, so EASE suits catalogs up to some tens of thousands.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np
import scipy.linalg
from pydantic import ConfigDict, Field

from tastebud.data.dataset import Dataset
from tastebud.errors import DataValidationError
from tastebud.models import _scoring as sc
from tastebud.models._history import explain_weighted
from tastebud.models._training import RecencyConfig, training_matrix
from tastebud.models.base import GEMM_MIN_ROWS, ModelConfig, RankedRow, Recommendations, Recommender, per_row_args


class EASEConfig(RecencyConfig):
    """Hyperparameters of :class:`EASERecommender`."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    l2: float = Field(500.0, gt=0.0)
    """L2 penalty λ added to the diagonal of the Gram matrix (default 500; 300-500 suits MovieLens)."""


class EASERecommender(Recommender):
    """Item-item linear model with a closed-form solution; explains by the user's items."""

    name = "ease"
    config_class = EASEConfig
    config: EASEConfig

    def __init__(self, config: ModelConfig | None = None, **params: Any) -> None:
        super().__init__(config, **params)
        self.weights_: np.ndarray | None = None

    def fit(self, dataset: Dataset) -> Self:
        """Solve for the item-item weights ``B``; returns self."""
        x = training_matrix(dataset, "binary", half_life_days=self.config.recency_half_life_days, dtype=np.float64)
        gram = (x.T @ x).toarray()
        gram[np.diag_indices_from(gram)] += self.config.l2
        try:
            p = scipy.linalg.inv(gram, overwrite_a=True, check_finite=False)
        except np.linalg.LinAlgError as err:  # λ > 0 makes the matrix positive definite; guard anyway
            raise DataValidationError(f"ease: Gram matrix is singular ({err}); raise l2") from err
        b = -p / np.diag(p)[None, :]
        np.fill_diagonal(b, 0.0)
        if not np.isfinite(b).all():
            raise DataValidationError("ease: weights contain NaN or infinite values; raise l2")
        # C order: serving reads the rows of a user's items; rows of a Fortran-ordered matrix are strided
        self.weights_ = np.ascontiguousarray(b, dtype=np.float32)
        self.seen_ = x.astype(np.float32)
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
        """Top-``k`` items per user by ``x_u B``."""
        self.check_fitted()
        assert self.users_ is not None and self.items_ is not None and self.weights_ is not None
        k = sc.check_k(k)
        rows = self.users_.index(user_ids, kind="user")
        cands = sc.resolve_candidates(self.items_, candidates)
        w = self.weights_
        idx, scores = sc.rank(
            lambda r, c: np.asarray(self.seen_[r] @ (w if c is None else w[:, c])),
            rows,
            k,
            n_items=len(self.items_),
            exclude=self.seen_[rows] if exclude_seen else None,
            candidates=cands,
        )
        explanations = (
            sc.explain_linear(self.seen_, rows, idx, self.items_, lambda s, i: w[np.ix_(s, i)]) if explain else None
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
        """One user's top-``k`` in index space: ``x_u B`` as a product of the user's rows of ``B`` (see the base)."""
        self.check_fitted()
        assert self.weights_ is not None
        k = sc.check_k(k)
        seen = self.seen_
        lo, hi = seen.indptr[row], seen.indptr[row + 1]
        idx, vals = seen.indices[lo:hi], seen.data[lo:hi]
        rows = self.weights_[idx]
        scores = vals @ (rows if candidates is None else rows[:, candidates])
        items, ranked = sc.rank_one(scores, k, idx if exclude_seen else idx[:0], candidates)
        because = None
        if explain:
            contrib = np.asarray(rows[:, items], dtype=np.float64) * vals[:, None]
            because = sc.top_contributors(contrib, idx)
        return RankedRow(items, ranked, because)

    def recommend_rows(
        self,
        rows: Sequence[int] | np.ndarray,
        k: int | Sequence[int] = 10,
        *,
        exclude_seen: bool | Sequence[bool] = True,
        explain: bool | Sequence[bool] = False,
    ) -> list[RankedRow]:
        """Several users' top-``k`` (see the base), scored, ranked and explained by one compiled loop per user.

        :func:`~tastebud.models._kernels.history_top_k` adds the rows of ``B`` of each user's items into one score
        row, keeps the top ``k`` while reading it once and explains each listed item by the user's items ``j`` with
        the largest positive ``x_uj B[j, i]``, read from the same rows: on ML-100K 49 instead of 85 microseconds a
        user with explanations in batches of 16, with the same lists, scores and explanations as the NumPy steps it
        replaced (scipy's CSR x dense product, a masked partition of the batch's score matrix, whole-array passes
        over the contributions), which wrote and read far more than they needed. It sums each score in float32 in
        the user's item order, where :meth:`recommend_row` sums in float64: a score can differ in its last bits, so
        only items whose scores are that close can change places. Batches of fewer than
        :data:`~tastebud.models.base.GEMM_MIN_ROWS` users, and any user whose scores come out NaN, take
        :meth:`recommend_row`.
        """
        self.check_fitted()
        assert self.users_ is not None and self.weights_ is not None
        rows_, ks, excl, expl = per_row_args(rows, len(self.users_), k, exclude_seen, explain)
        ks = [sc.check_k(x) for x in ks]
        if len(rows_) < GEMM_MIN_ROWS:
            return super().recommend_rows(rows_, ks, exclude_seen=excl, explain=expl)
        from tastebud.models._kernels import history_top_k

        found = history_top_k(self.seen_, self.weights_, rows_, ks, excl, expl, sc.EXPLAIN_TOP)
        return [
            RankedRow(*got)
            if got is not None
            else self.recommend_row(int(u), ks[j], exclude_seen=excl[j], explain=expl[j])
            for j, (u, got) in enumerate(zip(rows_.tolist(), found, strict=True))
        ]

    history_scoring = True

    def _history_weights(self, values: np.ndarray) -> np.ndarray:
        """EASE learns from presence: each item counts 1, or with recency weighting its weight in ``(0, 1]``."""
        if self.config.recency_half_life_days is None:
            return np.ones(len(values))
        return np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)

    def _history_scores(self, idx: np.ndarray, values: np.ndarray) -> np.ndarray:
        """``x B`` for the history row ``x`` (binary, or recency weights)."""
        assert self.weights_ is not None
        if self.config.recency_half_life_days is None:
            return self.weights_[idx].sum(axis=0, dtype=np.float64)
        return self._history_weights(values) @ self.weights_[idx].astype(np.float64)

    def _explain_history(self, idx: np.ndarray, values: np.ndarray, rec: np.ndarray) -> list[list[str]]:
        assert self.weights_ is not None and self.items_ is not None
        return explain_weighted(self.items_, idx, self._history_weights(values), self.weights_[np.ix_(idx, rec)])

    def similar_items(self, item_ids: Sequence[str], k: int = 10) -> Recommendations:
        """Top-``k`` items per item by the weight ``B[i, j]`` item ``i`` gives to ``j``, the item excluded."""
        self.check_fitted()
        assert self.items_ is not None and self.weights_ is not None
        k = sc.check_k(k)
        rows = self.items_.index(item_ids, kind="item")
        w = self.weights_
        idx, scores = sc.rank(
            lambda r, c: w[r] if c is None else w[np.ix_(r, c)],
            rows,
            k,
            n_items=len(self.items_),
            exclude=sc.query_mask(rows, len(self.items_)),
        )
        return sc.build_recommendations(list(item_ids), idx, scores, self.items_)

    def save(self, directory: Path) -> None:
        """Write ``B``, id maps, config and the seen matrix."""
        self.check_fitted()
        assert self.weights_ is not None
        directory = Path(directory)
        sc.save_state(self, directory)
        np.save(directory / "weights.npy", self.weights_, allow_pickle=False)

    @classmethod
    def load(cls, directory: Path) -> Self:
        """Read a model written by :meth:`save`."""
        directory = Path(directory)
        model, _ = sc.load_state(cls, directory)
        n = len(model.items_)  # type: ignore[arg-type]
        model.weights_ = np.ascontiguousarray(sc.load_checked(directory / "weights.npy", (n, n), np.floating))
        return model
