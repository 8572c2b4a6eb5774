"""A sequence-aware item-item model: recency-weighted transitions blended with recency-weighted EASE.

The model reads each user's history in time order (timestamps; ties and data without timestamps keep row order)
and learns two item-item matrices:

* **Transitions** ``T``: how often item ``j`` follows item ``i`` within ``window`` later positions of one user's
  history, a pair ``g`` positions apart counting ``gap_decay ** (g - 1)``; each row is divided by its sum, so
  ``T[i]`` is a distribution over what comes after ``i`` (a first-order Markov chain with skips, as in the
  item-to-item transition models of Rendle et al., "Factorizing Personalized Markov Chains for Next-Basket
  Recommendation", WWW 2010, and He and McAuley, "Fusing Similarity Models with Markov Chains for Sparse
  Sequential Recommendation", ICDM 2016, without the factorisation).
* **Similarity** ``B``: closed-form EASE (Steck, WWW 2019) on the binary user x item matrix, the strong
  order-free fallback for items no transition reaches.

A user's score for item ``i`` is::

    Σ_p (f + (1 - f) · exp(-age_p / recency_tau)) · B[s_p, i]
        + transition_weight · Σ_{l < n_last} last_decay ** l · T[s_(n-1-l), i]

where ``s_0 .. s_(n-1)`` is the history oldest first (an item seen twice counts at its latest position),
``age_p = n - 1 - p`` is how many interactions came after ``s_p`` and ``f`` is ``recency_floor``.
``recency_tau = 0`` weights the whole history alike (plain EASE plus transitions).

Serving: :meth:`recommend_history` treats the order of ``item_ids`` as time order (oldest first). The realtime
overlay passes the training history (:meth:`user_history`, time-ordered here) followed by the overlay's events
in arrival order, which is the order this model needs; the event timestamps themselves are not used. Values are
ignored, as in EASE (the model learns from presence and order only).

Memory and time follow EASE: ``B`` is a dense items x items matrix, so the model suits catalogs up to some tens
of thousands of items.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np
import polars as pl
import scipy.linalg
import scipy.sparse as sp
from pydantic import ConfigDict, Field

from tastebud.data.dataset import Dataset
from tastebud.errors import BundleError, DataValidationError, DataWarning, ParameterError
from tastebud.models import _scoring as sc
from tastebud.models._history import HISTORY_QUERY
from tastebud.models.base import ModelConfig, RankedRow, Recommendations, Recommender


class SeqTransConfig(ModelConfig):
    """Hyperparameters of :class:`SeqTransRecommender` (defaults tuned on a temporal validation split of ML-100K)."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    window: int = Field(50, ge=1)
    """Transitions are counted from an item to each of the next ``window`` items of the same user."""
    gap_decay: float = Field(0.95, gt=0.0, le=1.0)
    """Weight of a transition ``g`` positions apart is ``gap_decay ** (g - 1)`` (1: no decay)."""
    n_last: int = Field(20, ge=1)
    """How many of the user's latest items score by their transitions."""
    last_decay: float = Field(0.85, gt=0.0, le=1.0)
    """The ``l``-th latest item's transitions count ``last_decay ** l`` (the latest counts 1)."""
    recency_tau: float = Field(10.0, ge=0.0)
    """Decay length, in interactions, of the history's weights in the similarity part; 0 weights all alike."""
    recency_floor: float = Field(0.05, ge=0.0, le=1.0)
    """Least weight of an old item in the similarity part: ``floor + (1 - floor) · exp(-age / recency_tau)``.

    0.05 costs nothing measurable where order matters (temporal validation) and keeps old taste in play where it
    matters less (random validation: 0.198 against 0.180 at 0)."""
    transition_weight: float = Field(1.5, ge=0.0)
    """Weight of the transition part against the similarity part (0: recency-weighted EASE alone)."""
    l2: float = Field(500.0, gt=0.0)
    """L2 penalty λ of the EASE similarity (as ``ease``'s ``l2``)."""


class SeqTransRecommender(Recommender):
    """Recency-weighted item-to-item transitions plus recency-weighted EASE; explains by the user's items."""

    name = "seqtrans"
    config_class = SeqTransConfig
    config: SeqTransConfig

    def __init__(self, config: ModelConfig | None = None, **params: Any) -> None:
        super().__init__(config, **params)
        self.weights_: np.ndarray | None = None  # EASE B, items x items, float32
        self.transitions_: sp.csr_matrix | None = None  # row-normalised T, items x items
        self.seq_indptr_: np.ndarray | None = None  # users + 1 offsets into seq_items_
        self.seq_items_: np.ndarray | None = None  # every user's distinct items, oldest first

    # ------------------------------------------------------------------ fit
    def fit(self, dataset: Dataset) -> Self:
        """Order each user's history by time, count transitions and solve EASE; returns self."""
        cfg = self.config
        indptr, items = _sequences(dataset)
        n_items = dataset.n_items
        self.transitions_ = _transitions(indptr, items, n_items, cfg.window, cfg.gap_decay)
        x = dataset.matrix("binary", dtype=np.float64)
        self.weights_ = _ease(x, cfg.l2)
        self.seq_indptr_, self.seq_items_ = indptr, items
        self.seen_ = x.astype(np.float32)
        self.users_, self.items_ = dataset.users, dataset.items
        return self

    # ------------------------------------------------------------------ scoring
    def _weights(self, seq: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per item of ``seq`` (oldest first): its similarity weight, and the latest items with transition weights."""
        cfg = self.config
        n = len(seq)
        age = np.arange(n - 1, -1, -1, dtype=np.float64)
        if cfg.recency_tau > 0:
            w_sim = cfg.recency_floor + (1.0 - cfg.recency_floor) * np.exp(-age / cfg.recency_tau)
        else:
            w_sim = np.ones(n)
        last = seq[::-1][: cfg.n_last]
        w_last = cfg.last_decay ** np.arange(len(last), dtype=np.float64) * cfg.transition_weight
        return w_sim, last, w_last

    def _score_seq(self, seq: np.ndarray, cands: np.ndarray | None) -> np.ndarray:
        """Scores of every item (or of ``cands``) for a history ``seq`` of item indices, oldest first."""
        assert self.weights_ is not None and self.transitions_ is not None
        w_sim, last, w_last = self._weights(seq)
        b = self.weights_[seq]
        scores = w_sim @ (b if cands is None else b[:, cands])
        if len(last) and self.config.transition_weight > 0:
            t = (sp.csr_matrix(w_last[None, :]) @ self.transitions_[last]).toarray().ravel()
            scores = scores + (t if cands is None else t[cands])
        return np.asarray(scores, dtype=np.float64)

    def _contributions(self, seq: np.ndarray, rec: np.ndarray) -> np.ndarray:
        """Dense (history items x recommended items) contribution of each history item to each score."""
        assert self.weights_ is not None and self.transitions_ is not None
        w_sim, last, w_last = self._weights(seq)
        contrib = np.asarray(self.weights_[np.ix_(seq, rec)], dtype=np.float64) * w_sim[:, None]
        if len(last):
            # ``last`` is ``seq`` reversed and cut: the l-th latest item is seq[n - 1 - l]
            rows = len(seq) - 1 - np.arange(len(last))
            contrib[rows] += self.transitions_[last][:, rec].toarray() * w_last[:, None]
        return contrib

    def _user_seq(self, row: int) -> np.ndarray:
        assert self.seq_indptr_ is not None and self.seq_items_ is not None
        return self.seq_items_[self.seq_indptr_[row] : self.seq_indptr_[row + 1]]

    def _rank_seq(
        self, seq: np.ndarray, k: int, exclude_seen: bool, cands: np.ndarray | None, explain: bool
    ) -> RankedRow:
        scores = self._score_seq(seq, cands)
        seen = np.sort(seq) if exclude_seen else seq[:0]
        items, ranked = sc.rank_one(scores, k, seen, cands)
        because = None
        if explain:
            because = sc.top_contributors(self._contributions(seq, items), seq)
        return RankedRow(items, ranked, because)

    # ------------------------------------------------------------------ interface
    def recommend(
        self,
        user_ids: Sequence[str],
        k: int = 10,
        *,
        exclude_seen: bool = True,
        candidates: Sequence[str] | None = None,
        explain: bool = False,
    ) -> Recommendations:
        """Top-``k`` items per user by the blend of recency-weighted similarity and transitions."""
        self.check_fitted()
        assert self.users_ is not None and self.items_ is not None
        k = sc.check_k(k)
        rows = self.users_.index(user_ids, kind="user")
        cands = sc.resolve_candidates(self.items_, candidates)
        ranked = [self._rank_seq(self._user_seq(int(r)), k, exclude_seen, cands, explain) for r in rows]
        explanations = [sc.id_lists(self.items_.ids, r.because or []) for r in ranked] if explain else None
        return sc.build_recommendations(
            list(user_ids), [r.items for r in ranked], [r.scores for r in ranked], self.items_, explanations
        )

    def recommend_row(
        self,
        row: int,
        k: int = 10,
        *,
        exclude_seen: bool = True,
        candidates: np.ndarray | None = None,
        explain: bool = False,
    ) -> RankedRow:
        """One user's top-``k`` in index space (the serving path; same ranking as :meth:`recommend`)."""
        self.check_fitted()
        k = sc.check_k(k)
        return self._rank_seq(self._user_seq(row), k, exclude_seen, candidates, explain)

    history_scoring = True

    def recommend_history(
        self,
        item_ids: Sequence[str],
        values: Sequence[float] | np.ndarray | None = None,
        k: int = 10,
        *,
        exclude_seen: bool = True,
        candidates: Sequence[str] | None = None,
        explain: bool = False,
    ) -> Recommendations:
        """Top-``k`` for a history given oldest first (its order is its time order; values are ignored).

        A repeated item counts at its latest position. See :meth:`Recommender.recommend_history`.
        """
        self.check_fitted()
        assert self.items_ is not None
        k = sc.check_k(k)
        if isinstance(item_ids, str):
            raise ParameterError(f"{self.name}: item_ids must be a sequence of item ids, not a single string")
        idx = np.asarray(self.items_.index(list(item_ids), kind="item"), dtype=np.int64)
        if values is not None and np.asarray(values).size != len(idx):
            raise ParameterError(f"{self.name}: history has {len(idx)} item ids but {np.asarray(values).size} values")
        cands = sc.resolve_candidates(self.items_, candidates)
        ranked = self._rank_seq(_latest_positions(idx), k, exclude_seen, cands, explain)
        explanations = [sc.id_lists(self.items_.ids, ranked.because or [])] if explain else None
        return sc.build_recommendations([HISTORY_QUERY], [ranked.items], [ranked.scores], self.items_, explanations)

    def user_history(self, user_id: str) -> tuple[list[str], np.ndarray]:
        """A known user's training history, oldest first, with value 1.0 per item (see the base class)."""
        self.check_fitted()
        assert self.users_ is not None and self.items_ is not None
        seq = self._user_seq(int(self.users_.index([user_id], kind="user")[0]))
        return [str(x) for x in self.items_.ids[seq].tolist()], np.ones(len(seq))

    def similar_items(self, item_ids: Sequence[str], k: int = 10) -> Recommendations:
        """Top-``k`` items per item by ``B[i] + transition_weight · T[i]``, the item excluded."""
        self.check_fitted()
        assert self.items_ is not None and self.weights_ is not None and self.transitions_ is not None
        k = sc.check_k(k)
        rows = self.items_.index(item_ids, kind="item")
        w, t, beta = self.weights_, self.transitions_, self.config.transition_weight

        def score(r: np.ndarray, c: np.ndarray | None) -> np.ndarray:
            dense = w[r].astype(np.float64) + beta * t[r].toarray()
            return dense if c is None else dense[:, c]

        idx, scores = sc.rank(score, rows, k, n_items=len(self.items_), exclude=sc.query_mask(rows, len(self.items_)))
        return sc.build_recommendations(list(item_ids), idx, scores, self.items_)

    # ------------------------------------------------------------------ persistence
    def save(self, directory: Path) -> None:
        """Write ``B``, the transition matrix (CSR arrays), the ordered histories, id maps, config and seen matrix."""
        self.check_fitted()
        assert self.weights_ is not None and self.transitions_ is not None
        assert self.seq_indptr_ is not None and self.seq_items_ is not None
        directory = Path(directory)
        sc.save_state(self, directory)
        np.save(directory / "weights.npy", self.weights_, allow_pickle=False)
        sc.save_csr(directory, "transitions", self.transitions_)
        np.save(directory / "seq_indptr.npy", self.seq_indptr_, allow_pickle=False)
        np.save(directory / "seq_items.npy", self.seq_items_, allow_pickle=False)

    @classmethod
    def load(cls, directory: Path) -> Self:
        """Read a model written by :meth:`save`."""
        directory = Path(directory)
        model, _ = sc.load_state(cls, directory)
        n_users, n_items = len(model.users_), len(model.items_)  # type: ignore[arg-type]
        model.weights_ = np.ascontiguousarray(
            sc.load_checked(directory / "weights.npy", (n_items, n_items), np.floating)
        )
        model.transitions_ = sc.load_csr(directory, "transitions", (n_items, n_items))
        indptr = sc.load_checked(directory / "seq_indptr.npy", (n_users + 1,), np.integer)
        items = sc.load_checked(directory / "seq_items.npy", (int(indptr[-1]) if len(indptr) else 0,), np.integer)
        if (
            np.any(np.diff(indptr) < 0)
            or indptr[0] != 0
            or (len(items) and (items.min() < 0 or items.max() >= n_items))
        ):
            raise BundleError(f"{directory}: seq_indptr.npy / seq_items.npy do not describe valid histories")
        model.seq_indptr_, model.seq_items_ = indptr.astype(np.int64), items.astype(np.int64)
        return model


# ---------------------------------------------------------------------- helpers
def _sequences(dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Every user's distinct items, oldest first, as (indptr over users, item indices).

    Sorted by user, timestamp and row; without timestamps the row order stands in for time (with a warning).
    A repeated (user, item) pair keeps its latest position.
    """
    inter = dataset.interactions.select("user_idx", "item_idx", "timestamp").with_row_index("_row")
    if not dataset.has_timestamps:
        warnings.warn(
            f"seqtrans: dataset {dataset.name!r} lacks timestamps on some interactions; their row order "
            "is taken as time order",
            DataWarning,
            stacklevel=3,
        )
        inter = inter.with_columns(pl.col("timestamp").fill_null(strategy="forward").fill_null(0))
    ordered = inter.sort(["user_idx", "timestamp", "_row"])
    users = ordered["user_idx"].to_numpy().astype(np.int64)
    items = ordered["item_idx"].to_numpy().astype(np.int64)
    # keep the last occurrence of each (user, item): a pair is a duplicate if it appears again later
    keys = users * dataset.n_items + items
    _, last_from_end = np.unique(keys[::-1], return_index=True)
    keep = np.zeros(len(keys), dtype=bool)
    keep[len(keys) - 1 - last_from_end] = True
    users, items = users[keep], items[keep]
    counts = np.bincount(users, minlength=dataset.n_users)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return indptr, items


def _transitions(indptr: np.ndarray, items: np.ndarray, n_items: int, window: int, gap_decay: float) -> sp.csr_matrix:
    """Row-normalised counts of ``j`` following ``i`` within ``window`` positions, decayed by the gap."""
    n = len(items)
    owner = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    rows, cols, vals = [], [], []
    for gap in range(1, min(window, max(n - 1, 0)) + 1):
        same = owner[:-gap] == owner[gap:]
        if not same.any():
            break
        rows.append(items[:-gap][same])
        cols.append(items[gap:][same])
        vals.append(np.full(int(same.sum()), gap_decay ** (gap - 1)))
    if not rows:
        return sp.csr_matrix((n_items, n_items), dtype=np.float32)
    counts = sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n_items, n_items)
    )
    counts.sum_duplicates()
    totals = np.asarray(counts.sum(axis=1)).ravel()
    scale = np.divide(1.0, totals, out=np.zeros_like(totals), where=totals > 0)
    out = sp.diags(scale) @ counts
    out = sp.csr_matrix(out, dtype=np.float32)
    out.sort_indices()
    return out


def _ease(x: sp.csr_matrix, l2: float) -> np.ndarray:
    """EASE's ``B`` (float32, C order) from the binary user x item matrix ``x``."""
    gram = (x.T @ x).toarray()
    gram[np.diag_indices_from(gram)] += l2
    try:
        p = scipy.linalg.inv(gram, overwrite_a=True, check_finite=False)
    except np.linalg.LinAlgError as err:
        raise DataValidationError(f"seqtrans: Gram matrix is singular ({err}); raise l2") from err
    b = -p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    if not np.isfinite(b).all():
        raise DataValidationError("seqtrans: weights contain NaN or infinite values; raise l2")
    return np.ascontiguousarray(b, dtype=np.float32)


def _latest_positions(idx: np.ndarray) -> np.ndarray:
    """``idx`` with each repeated item kept only at its last position (order otherwise unchanged)."""
    if len(idx) == 0:
        return idx
    _, first_from_end = np.unique(idx[::-1], return_index=True)
    keep = np.sort(len(idx) - 1 - first_from_end)
    return idx[keep]
