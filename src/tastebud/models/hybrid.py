"""Weighted hybrid of a collaborative and a content model: ``alpha * CF + (1 - alpha) * content``.

Both sub-models score every candidate item for a user; each score vector is normalised per user over the items
that may be recommended to them (the whole catalog minus what they have seen, whatever the candidate
filter, so a filter never changes a score), by min-max to ``[0, 1]`` or by
z-score, and the two are blended (Burke, "Hybrid recommender systems: survey and experiments", UMUAI 2002,
"weighted" hybrid). A constant score vector normalises to 0.

Cold items (nobody interacted with them in the CF model's training data, or they are outside its vocabulary)
get a CF score from their content neighbours: the similarity-weighted mean of the user's CF scores on the
``n_cold_neighbors`` warm items whose content vectors are most cosine-similar to the cold item's (positive
similarities only), the k-nearest-neighbour mapping of Gantner et al., "Learning attribute-to-feature mappings
for cold-start recommendations" (ICDM 2010). For a factor model (ALS, BPR) the score is linear in the item
factors, so the same number comes from a cold factor vector, the weighted mean of the neighbours' factors:
those vectors are computed once when the hybrid is built and saved with it, and cold items are then scored
like warm ones. Other CF models are asked for the neighbours' scores at query time. The CF normalisation
statistics come from warm items only, so cold items' scores never change how warm items blend (and a cold item
estimated above every warm one may normalise above 1). A cold item without a content neighbour (no metadata
token shared with a warm item) still has no CF score: it gets a normalised CF score of 0 and is left out of
the CF normalisation, which with min-max places it level with the user's least-liked warm item and with
z-score at the average one.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Self

import numpy as np
import scipy.sparse as sp
from pydantic import Field, field_validator

from tastebud.data.dataset import Dataset
from tastebud.errors import BundleError, NotFittedError, ParameterError
from tastebud.models import _scoring as sc
from tastebud.models._factors import FactorRecommender
from tastebud.models.base import ModelConfig, Recommendations, Recommender, read_json, top_k, write_json

logger = logging.getLogger(__name__)


class HybridConfig(ModelConfig):
    """Hyperparameters of :class:`HybridRecommender`."""

    cf_model: str = "als"
    """``--model`` name of the collaborative part."""
    cf_params: dict[str, Any] = Field(default_factory=dict)
    """Parameters of the collaborative part (validated by its own config class)."""
    content_model: str = "content"
    """``--model`` name of the content part; it must score items without interactions."""
    content_params: dict[str, Any] = Field(default_factory=dict)
    """Parameters of the content part."""
    alpha: float = Field(0.95, ge=0.0, le=1.0)
    """Weight of the CF score; the content score gets ``1 - alpha``. 0.95 keeps warm users at least as good as
    ALS alone on ML-100K (NDCG@10 0.437 vs 0.436) while content still separates cold items."""
    normalize: Literal["minmax", "zscore"] = "minmax"
    """Per-user normalisation of each part over the recommendable items before blending."""
    n_cold_neighbors: int = Field(20, ge=0)
    """How many of a cold item's most content-similar warm items give it a CF score (their similarity-weighted
    mean); 0 gives cold items no CF score, so the content part alone orders them."""

    @field_validator("cf_model", "content_model")
    @classmethod
    def _known_model(cls, name: str) -> str:
        from tastebud.models import MODELS

        if name == "hybrid":
            raise ValueError("a hybrid cannot contain another hybrid")
        if name not in MODELS:
            raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
        return name


class HybridRecommender(Recommender):
    """Blend of two fitted recommenders, ``cf_`` and ``content_``, over normalised per-user scores.

    The hybrid's vocabulary and seen matrix are the content model's (the content model knows the whole
    catalog); CF users and items are mapped onto it by id. Cold-item state: ``cold_items_`` (hybrid indices
    of the cold items that have content neighbours), ``cold_weights_`` (CSR, one row per cold item, its
    neighbours' weights over hybrid item indices, each row summing to 1) and, when the CF part is a factor
    model, ``cold_factors_`` (one factor vector per cold item).
    """

    name = "hybrid"
    config_class = HybridConfig
    config: HybridConfig

    def __init__(self, config: HybridConfig | None = None, **params: Any) -> None:
        super().__init__(config, **params)
        self.cf_: Recommender | None = None
        self.content_: Recommender | None = None
        self.cf_user_: np.ndarray | None = None  # hybrid user index -> CF user index (-1: unknown to CF)
        self.cf_item_: np.ndarray | None = None  # hybrid item index -> CF item index (-1: cold)
        self.cold_items_: np.ndarray | None = None
        self.cold_weights_: sp.csr_matrix | None = None
        self.cold_factors_: np.ndarray | None = None
        self.cold_row_: np.ndarray | None = None  # hybrid item index -> row of the cold arrays (-1: none)

    # ------------------------------------------------------------------ construction
    def fit(self, dataset: Dataset) -> Self:
        """Build both sub-models with :func:`tastebud.models.create` and fit them on ``dataset``."""
        from tastebud.models import create

        cfg = self.config
        cf = create(cfg.cf_model, **cfg.cf_params).fit(dataset)
        content = create(cfg.content_model, **cfg.content_params).fit(dataset)
        self._attach(cf, content)
        return self

    @classmethod
    def from_models(
        cls,
        cf: Recommender,
        content: Recommender,
        *,
        alpha: float = 0.95,
        normalize: Literal["minmax", "zscore"] = "minmax",
        n_cold_neighbors: int = 20,
    ) -> HybridRecommender:
        """A hybrid of two already fitted models (their parameters are recorded in the config).

        Raises:
            NotFittedError: either model is not fitted.
            ParameterError: ``alpha``, ``normalize`` or ``n_cold_neighbors`` is invalid.
        """
        for part in (cf, content):
            if not part.is_fitted:
                raise NotFittedError(f"hybrid: the {part.name} model must be fitted before it is combined")
        model = cls(
            cf_model=cf.name,
            cf_params=cf.params(),
            content_model=content.name,
            content_params=content.params(),
            alpha=alpha,
            normalize=normalize,
            n_cold_neighbors=n_cold_neighbors,
        )
        model._attach(cf, content)
        return model

    def _attach(
        self,
        cf: Recommender,
        content: Recommender,
        cold: tuple[np.ndarray, sp.csr_matrix, np.ndarray | None] | None = None,
    ) -> None:
        """Adopt the fitted sub-models, map CF users and items onto the content vocabulary, set up cold items.

        ``cold`` is the stored cold-item state (items, weights, factors) when loading; otherwise it is built.
        """
        assert cf.users_ is not None and cf.items_ is not None
        assert content.users_ is not None and content.items_ is not None
        self.cf_, self.content_ = cf, content
        self.users_, self.items_, self.seen_ = content.users_, content.items_, content.seen_
        self.cf_user_ = _map_ids(content.users_.ids, cf.users_.lookup)
        cf_item = _map_ids(content.items_.ids, cf.items_.lookup)
        # An item CF knows but that nobody interacted with in its training data is as cold as an unknown one.
        if cf.seen_ is not None:
            warm = np.diff(sp.csc_matrix(cf.seen_).indptr) > 0
            cf_item[(cf_item >= 0) & ~warm[np.maximum(cf_item, 0)]] = -1
        self.cf_item_ = cf_item
        items, weights, factors = cold if cold is not None else self._build_cold()
        self.cold_items_, self.cold_weights_, self.cold_factors_ = items, weights, factors
        self.cold_row_ = np.full(len(cf_item), -1, dtype=np.int64)
        self.cold_row_[items] = np.arange(len(items))
        logger.info(
            "hybrid ready",
            extra={
                "cf": cf.name,
                "content": content.name,
                "cold_items": int((cf_item < 0).sum()),
                "cold_items_with_cf_score": len(items),
            },
        )

    def _build_cold(self) -> tuple[np.ndarray, sp.csr_matrix, np.ndarray | None]:
        """Content neighbours of every cold item among the warm ones and, for factor models, cold factors."""
        assert self.cf_ is not None and self.content_ is not None and self.cf_item_ is not None
        cf_item = self.cf_item_
        cold, warm = np.flatnonzero(cf_item < 0), np.flatnonzero(cf_item >= 0)
        vectors = getattr(self.content_, "item_vectors_", None)
        n = self.config.n_cold_neighbors
        if vectors is None or n == 0 or len(cold) == 0 or len(warm) == 0:
            if vectors is None and len(cold) and n:
                logger.warning(
                    "hybrid: the content model has no item vectors, so cold items get no CF score",
                    extra={"content": self.content_.name},
                )
            weights = sp.csr_matrix((len(cold), len(cf_item)), dtype=np.float32)
        else:
            weights = content_neighbors(vectors, cold, warm, n)
        has = np.diff(weights.indptr) > 0
        items, weights = cold[has], sp.csr_matrix(weights[has])
        factors = None
        if isinstance(self.cf_, FactorRecommender):
            assert self.cf_.item_factors_ is not None
            to_cf = sp.csr_matrix(
                (weights.data, cf_item[weights.indices], weights.indptr),
                shape=(len(items), self.cf_.item_factors_.shape[0]),
            )
            # a user's score is linear in the item factors, so this equals the weighted mean of the scores
            factors = np.asarray(to_cf @ self.cf_.item_factors_.astype(np.float64), dtype=np.float32)
        return items, weights, factors

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
        """Top-``k`` items by the blended, normalised score (see the module docstring).

        With ``explain=True`` a warm item is explained by the CF model and a cold one by the content model.
        """
        self.check_fitted()
        assert self.users_ is not None and self.items_ is not None
        k = sc.check_k(k)
        rows = self.users_.index(user_ids, kind="user")
        cands = sc.resolve_candidates(self.items_, candidates)
        exclude = self.seen_[rows] if exclude_seen else None

        def score(chunk: np.ndarray, cols: np.ndarray | None) -> np.ndarray:
            return self.blend(chunk, cols, exclude_seen=exclude_seen)

        idx, scores = sc.rank(score, rows, k, n_items=len(self.items_), exclude=exclude, candidates=cands)
        explanations = self._explain(rows, idx) if explain else None
        return sc.build_recommendations(list(user_ids), idx, scores, self.items_, explanations)

    def blend(self, rows: np.ndarray, cols: np.ndarray | None, *, exclude_seen: bool = True) -> np.ndarray:
        """Blended scores of users ``rows`` for items ``cols`` (all when ``None``); unrecommendable: ``-inf``.

        Normalisation statistics are taken over every item the user may be recommended (all items, minus the
        seen ones when ``exclude_seen``), whatever ``cols`` is, so restricting the candidates never changes an
        item's score.
        """
        self.check_fitted()
        assert self.items_ is not None and self.cf_item_ is not None
        every = np.arange(len(self.items_))
        valid = np.ones((len(rows), len(every)), dtype=bool)
        if exclude_seen and len(rows):
            seen = self.seen_[rows]
            valid[np.repeat(np.arange(len(rows)), np.diff(seen.indptr)), seen.indices] = False
        content = _normalise(self._content_scores(rows, every), valid, self.config.normalize)
        cf_raw = self._cf_scores(rows, every)
        cf_valid = valid & np.isfinite(cf_raw)
        # Statistics from warm items only: cold items' CF scores then never change how warm items blend,
        # and a cold item estimated above the user's best warm item may normalise above 1.
        cf = _normalise(cf_raw, cf_valid, self.config.normalize, stats=cf_valid & (self.cf_item_ >= 0))
        alpha = self.config.alpha
        blended = np.where(valid, alpha * cf + (1.0 - alpha) * content, -np.inf)
        return blended if cols is None else blended[:, cols]

    def _content_scores(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Content scores; the hybrid shares the content model's vocabulary, so indices pass through."""
        assert self.content_ is not None and self.items_ is not None
        return _sub_scores(self.content_, rows, np.arange(len(self.items_)), cols)

    def _cf_scores(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """CF scores on the hybrid's columns, cold items' from their content neighbours.

        ``nan`` where CF cannot score: users unknown to CF and cold items without content neighbours.
        """
        assert self.cf_ is not None and self.cf_user_ is not None and self.cf_item_ is not None
        assert self.cold_row_ is not None
        out = np.full((len(rows), len(cols)), np.nan)
        cf_rows = self.cf_user_[rows]
        r_ok = np.flatnonzero(cf_rows >= 0)
        c_ok, c_cold = np.flatnonzero(self.cf_item_[cols] >= 0), np.flatnonzero(self.cold_row_[cols] >= 0)
        if len(r_ok) and len(c_ok):
            block = _sub_scores(self.cf_, cf_rows[r_ok], self.cf_item_, cols[c_ok])
            out[np.ix_(r_ok, c_ok)] = block
        if len(r_ok) and len(c_cold):
            out[np.ix_(r_ok, c_cold)] = self._cold_cf_scores(cf_rows[r_ok], self.cold_row_[cols[c_cold]])
        return out

    def _cold_cf_scores(self, cf_rows: np.ndarray, cold_rows: np.ndarray) -> np.ndarray:
        """CF scores of CF users ``cf_rows`` for the cold items in rows ``cold_rows`` of the cold arrays."""
        assert self.cf_ is not None and self.cold_weights_ is not None and self.cf_item_ is not None
        if self.cold_factors_ is not None:
            assert isinstance(self.cf_, FactorRecommender) and self.cf_.user_factors_ is not None
            users = self.cf_.user_factors_[cf_rows].astype(np.float64)
            return users @ self.cold_factors_[cold_rows].T.astype(np.float64)
        weights = self.cold_weights_[cold_rows]
        needed = np.unique(weights.indices)
        scores = _sub_scores(self.cf_, cf_rows, self.cf_item_, needed)
        # a neighbour the CF model leaves unscored drops out and the other weights are renormalised
        known = np.isfinite(scores)
        to_cold = sp.csc_matrix(weights[:, needed]).T.tocsr()
        total = np.asarray(np.where(known, scores, 0.0) @ to_cold)
        mass = np.asarray(known.astype(np.float64) @ to_cold)
        return np.divide(total, mass, out=np.full(total.shape, np.nan), where=mass > 0)

    def _explain(self, rows: np.ndarray, rec_rows: list[np.ndarray]) -> list[list[list[str]]]:
        """Per recommended item, the CF model's explanation when it is warm and non-empty, else content's."""
        assert self.users_ is not None and self.items_ is not None and self.cf_item_ is not None
        user_ids = [str(u) for u in self.users_.ids[rows].tolist()]
        wanted = np.unique(np.concatenate(rec_rows)) if rec_rows else np.empty(0, dtype=np.int64)
        if len(wanted) == 0:
            return [[] for _ in rec_rows]
        ids = [str(x) for x in self.items_.ids[wanted].tolist()]
        reasons = {}
        for label, part in (("content", self.content_), ("cf", self.cf_)):
            assert part is not None
            if label == "cf":
                known = self.cf_item_[wanted] >= 0
                reasons[label] = _explanations_by_item(
                    part, user_ids, [i for i, ok in zip(ids, known, strict=True) if ok]
                )
            else:
                reasons[label] = _explanations_by_item(part, user_ids, ids)
        out: list[list[list[str]]] = []
        for n, rec in enumerate(rec_rows):
            row = []
            for item in (str(x) for x in self.items_.ids[rec].tolist()):
                why = reasons["cf"][n].get(item) or reasons["content"][n].get(item) or []
                row.append(why)
            out.append(row)
        return out

    # ------------------------------------------------------------------ scoring a history
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
        """Top-``k`` items for a history: each part scores it, then the parts blend as in :meth:`blend`."""
        from tastebud.models._history import recommend_history

        return recommend_history(
            self, item_ids, values, k, exclude_seen=exclude_seen, candidates=candidates, explain=explain,
            score_fn=lambda idx, vals: self._history_blend(idx, vals, exclude_seen=exclude_seen),
        )  # fmt: skip

    def user_history(self, user_id: str) -> tuple[list[str], np.ndarray]:
        """The CF part's training history of the user (the content part's when CF does not know the user)."""
        self.check_fitted()
        assert self.cf_ is not None and self.content_ is not None and self.cf_.users_ is not None
        if user_id in self.cf_.users_.lookup:
            return self.cf_.user_history(user_id)
        return self.content_.user_history(user_id)

    def _history_blend(self, idx: np.ndarray, values: np.ndarray, *, exclude_seen: bool) -> np.ndarray:
        """Blended scores of every item for a history (hybrid item indices ``idx``); see :meth:`blend`."""
        assert self.items_ is not None and self.cf_item_ is not None and self.content_ is not None
        n = len(self.items_)
        valid = np.ones((1, n), dtype=bool)
        if exclude_seen:
            valid[0, idx] = False
        content_raw = np.asarray(self.content_._history_scores(idx, values), dtype=np.float64)[None, :]  # type: ignore[attr-defined]
        content = _normalise(content_raw, valid, self.config.normalize)
        cf_raw = self._history_cf_scores(idx, values)[None, :]
        cf_valid = valid & np.isfinite(cf_raw)
        cf = _normalise(cf_raw, cf_valid, self.config.normalize, stats=cf_valid & (self.cf_item_ >= 0))
        alpha = self.config.alpha
        return np.where(valid, alpha * cf + (1.0 - alpha) * content, -np.inf)[0]

    def _history_cf_scores(self, idx: np.ndarray, values: np.ndarray) -> np.ndarray:
        """CF scores on the hybrid's items for a history; cold items from their neighbours; ``nan``: none."""
        assert self.cf_ is not None and self.cf_.items_ is not None and self.items_ is not None
        assert self.cf_item_ is not None and self.cold_items_ is not None and self.cold_weights_ is not None
        out = np.full(len(self.items_), np.nan)
        if not getattr(self.cf_, "history_scoring", False):
            return out
        cf_idx = _map_ids(self.items_.ids[idx], self.cf_.items_.lookup)
        known = cf_idx >= 0
        scores = np.asarray(self.cf_._history_scores(cf_idx[known], values[known]), dtype=np.float64)  # type: ignore[attr-defined]
        warm = np.flatnonzero(self.cf_item_ >= 0)
        out[warm] = scores[self.cf_item_[warm]]
        if len(self.cold_items_):
            # the similarity-weighted mean of the neighbours' scores: for a factor model exactly the score of
            # the cold factor vector, since scores are linear in the item factors
            filled = np.where(np.isfinite(out), out, 0.0)
            total = self.cold_weights_ @ filled
            mass = self.cold_weights_ @ np.isfinite(out).astype(np.float64)
            out[self.cold_items_] = np.divide(total, mass, out=np.full(len(total), np.nan), where=mass > 0)
        return out

    def _explain_history(self, idx: np.ndarray, values: np.ndarray, rec: np.ndarray) -> list[list[str]]:
        """A warm item is explained by the CF part when it can, anything else by the content part."""
        assert self.cf_ is not None and self.content_ is not None and self.cf_.items_ is not None
        assert self.items_ is not None and self.cf_item_ is not None
        content_explainer = getattr(self.content_, "_explain_history", None)
        out = content_explainer(idx, values, rec) if content_explainer else [[] for _ in rec]
        cf_explainer = getattr(self.cf_, "_explain_history", None)
        warm = np.flatnonzero(self.cf_item_[rec] >= 0)
        if cf_explainer is not None and len(warm):
            cf_idx = _map_ids(self.items_.ids[idx], self.cf_.items_.lookup)
            known = cf_idx >= 0
            if known.any():
                cf_out = cf_explainer(cf_idx[known], values[known], self.cf_item_[rec[warm]])
                for j, why in zip(warm.tolist(), cf_out, strict=True):
                    if why:
                        out[j] = why
        return out

    def similar_items(self, item_ids: Sequence[str], k: int = 10) -> Recommendations:
        """Similar items from the content model, which knows every item in the catalog, cold ones included."""
        self.check_fitted()
        assert self.content_ is not None
        return self.content_.similar_items(item_ids, k)

    # ------------------------------------------------------------------ persistence
    def save(self, directory: Path) -> None:
        """Write ``cf/`` and ``content/`` with the sub-models' own ``save``, the cold-item arrays and ``hybrid.json``.

        Cold-item arrays: ``cold_items.npy``, ``cold_weights_{data,indices,indptr}.npy`` (CSR) and, for a factor
        CF model, ``cold_factors.npy``.
        """
        self.check_fitted()
        assert self.cf_ is not None and self.content_ is not None
        assert self.cold_items_ is not None and self.cold_weights_ is not None
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.cf_.save(directory / "cf")
        self.content_.save(directory / "content")
        np.save(directory / "cold_items.npy", self.cold_items_.astype(np.int64), allow_pickle=False)
        sc.save_csr(directory, "cold_weights", self.cold_weights_)
        if self.cold_factors_ is not None:
            np.save(directory / "cold_factors.npy", self.cold_factors_, allow_pickle=False)
        write_json(
            directory / "hybrid.json",
            {
                "model": self.name,
                "params": self.params(),
                "parts": {
                    "cf": {"name": self.cf_.name, "class": _class_path(self.cf_)},
                    "content": {"name": self.content_.name, "class": _class_path(self.content_)},
                },
                "cold": {"n_items": len(self.cold_items_), "factors": self.cold_factors_ is not None},
            },
        )

    @classmethod
    def load(cls, directory: Path) -> Self:
        """Read a hybrid written by :meth:`save`; sub-model classes come only from the registered models."""
        from tastebud.models import model_class

        directory = Path(directory)
        meta = read_json(directory / "hybrid.json")
        if not isinstance(meta, dict) or meta.get("model") != cls.name:
            raise BundleError(f"{directory}/hybrid.json: expected a {cls.name!r} model")
        try:
            model = cls(**meta["params"])
            parts = {label: meta["parts"][label]["name"] for label in ("cf", "content")}
            classes = {label: model_class(name) for label, name in parts.items()}
        except (ParameterError, KeyError, TypeError) as err:
            raise BundleError(f"{directory}/hybrid.json: invalid hybrid description ({err})") from err
        for label, klass in classes.items():
            recorded = meta["parts"][label].get("class")
            if recorded != f"{klass.__module__}:{klass.__qualname__}":
                raise BundleError(
                    f"{directory}/hybrid.json: {label} part {parts[label]!r} was saved as {recorded!r}, "
                    f"which is not the registered class"
                )
        cf, content = classes["cf"].load(directory / "cf"), classes["content"].load(directory / "content")
        model._attach(cf, content, _load_cold(directory, meta.get("cold"), cf, content))
        return model

    def check_fitted(self) -> None:
        if self.cf_ is None or self.content_ is None:
            raise NotFittedError(f"{self.name} model is not fitted: call fit(dataset) or from_models(...)")


# ---------------------------------------------------------------------- cold items
def content_neighbors(
    vectors: sp.spmatrix | np.ndarray,
    cold: np.ndarray,
    warm: np.ndarray,
    n_neighbors: int,
    *,
    max_cells: int = sc.MAX_CELLS,
) -> sp.csr_matrix:
    """Each cold item's ``n_neighbors`` most cosine-similar warm items, as weights summing to 1 per row.

    Args:
        vectors: item x feature matrix (sparse or dense); rows need not be normalised.
        cold: indices of the items that need neighbours (one output row each, in this order).
        warm: indices of the items that may be neighbours.
        n_neighbors: neighbours per cold item; only positive similarities count, so a row may have fewer
            (none when the item shares no feature with a warm item).
        max_cells: at most this many similarities are materialised at once.

    Returns:
        CSR of shape ``(len(cold), n_items)``: row ``r`` holds the weights ``s_j / sum(s)`` of cold item
        ``cold[r]``'s neighbours ``j`` (item indices).
    """
    matrix = sp.csr_matrix(vectors, dtype=np.float64)
    norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=1)).ravel())
    unit = sp.csr_matrix(sp.diags(np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)) @ matrix)
    warm_t = sp.csc_matrix(unit[warm].T)
    data, indices, counts = [], [], []
    chunk = max(1, max_cells // max(1, len(warm)))
    for start in range(0, len(cold), chunk):
        sims = (unit[cold[start : start + chunk]] @ warm_t).toarray()
        idx, val = top_k(np.where(sims > 0, sims, -np.inf), n_neighbors)
        keep = idx >= 0
        data.append(val[keep])
        indices.append(warm[idx[keep]])
        counts.append(keep.sum(axis=1))
    counts_all = np.concatenate(counts) if counts else np.empty(0, dtype=np.int64)
    indptr = np.concatenate([[0], np.cumsum(counts_all)]).astype(np.int64)
    out = sp.csr_matrix(
        (
            np.concatenate(data) if data else np.empty(0),
            np.concatenate(indices) if indices else np.empty(0, dtype=np.int64),
            indptr,
        ),
        shape=(len(cold), matrix.shape[0]),
    )
    totals = np.asarray(out.sum(axis=1)).ravel()
    out = sp.csr_matrix(sp.diags(np.divide(1.0, totals, out=np.zeros_like(totals), where=totals > 0)) @ out)
    out.sort_indices()
    return sp.csr_matrix(out, dtype=np.float32)


def _load_cold(
    directory: Path, meta: Any, cf: Recommender, content: Recommender
) -> tuple[np.ndarray, sp.csr_matrix, np.ndarray | None]:
    """Read and check the cold-item arrays written by :meth:`HybridRecommender.save`."""
    if not isinstance(meta, dict) or not isinstance(meta.get("n_items"), int):
        raise BundleError(f"{directory}/hybrid.json: missing or invalid 'cold' section")
    assert content.items_ is not None
    n_cold, n_items = int(meta["n_items"]), len(content.items_)
    items = sc.load_checked(directory / "cold_items.npy", (n_cold,), np.integer).astype(np.int64)
    if n_cold and (items.min() < 0 or items.max() >= n_items or (np.diff(items) <= 0).any()):
        raise BundleError(f"{directory}/cold_items.npy: expected increasing item indices below {n_items}")
    weights = sc.load_csr(directory, "cold_weights", (n_cold, n_items))
    factors = None
    if meta.get("factors"):
        if not isinstance(cf, FactorRecommender):
            raise BundleError(f"{directory}/hybrid.json: cold factors saved for a non-factor model {cf.name!r}")
        factors = sc.load_checked(directory / "cold_factors.npy", (n_cold, cf.n_dims), np.floating)
    return items, weights, factors


# ---------------------------------------------------------------------- helpers
def _map_ids(ids: np.ndarray, lookup: dict[str, int]) -> np.ndarray:
    """Index of each id in another vocabulary (``lookup``), -1 where absent."""
    return np.fromiter((lookup.get(str(x), -1) for x in ids.tolist()), dtype=np.int64, count=len(ids))


def _class_path(model: Recommender) -> str:
    klass = type(model)
    return f"{klass.__module__}:{klass.__qualname__}"


def _sub_scores(model: Recommender, model_rows: np.ndarray, item_map: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Scores of a sub-model for its user indices ``model_rows`` and the hybrid's item columns ``cols``.

    Models with the shared ``_score(rows, cols)`` scorer are asked directly (``item_map`` turns hybrid item
    indices into the model's); any other recommender is asked through its public ``recommend`` for every
    column, which is slower but needs nothing beyond the interface.
    """
    model_cols = item_map[cols]
    scorer = getattr(model, "_score", None)
    if callable(scorer):
        return np.asarray(scorer(model_rows, model_cols), dtype=np.float64)
    assert model.users_ is not None and model.items_ is not None
    user_ids = [str(u) for u in model.users_.ids[model_rows].tolist()]
    item_ids = [str(i) for i in model.items_.ids[model_cols].tolist()]
    recs = model.recommend(user_ids, k=len(item_ids), exclude_seen=False, candidates=item_ids)
    position = {item: j for j, item in enumerate(item_ids)}
    out = np.full((len(user_ids), len(item_ids)), np.nan)
    for r, (items, scores) in enumerate(zip(recs.item_ids, recs.scores, strict=True)):
        out[r, [position[i] for i in items]] = scores
    return out


def _normalise(scores: np.ndarray, valid: np.ndarray, method: str, stats: np.ndarray | None = None) -> np.ndarray:
    """Per-row min-max or z-score of the ``valid`` cells of ``scores``, statistics from the ``stats`` cells.

    ``stats`` defaults to ``valid``. Rows with no statistics cell or no spread normalise to 0; invalid cells
    come back as 0.
    """
    scores = np.where(valid & np.isfinite(scores), scores, np.nan)
    basis = scores if stats is None else np.where(stats, scores, np.nan)
    with warnings.catch_warnings():
        # rows without a valid cell trigger numpy's "all-NaN slice" warnings; they normalise to 0 below
        warnings.simplefilter("ignore", RuntimeWarning)
        if method == "minmax":
            low = np.nanmin(basis, axis=1, keepdims=True)
            spread = np.nanmax(basis, axis=1, keepdims=True) - low
            out = (scores - low) / np.where(spread > 0, spread, np.inf)
        else:
            mean = np.nanmean(basis, axis=1, keepdims=True)
            std = np.nanstd(basis, axis=1, keepdims=True)
            out = (scores - mean) / np.where(std > 0, std, np.inf)
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)


def _explanations_by_item(model: Recommender, user_ids: list[str], item_ids: list[str]) -> list[dict[str, list[str]]]:
    """Per user, item id -> the model's explanation for it (empty dicts when the model cannot explain)."""
    if not item_ids:
        return [{} for _ in user_ids]
    recs = model.recommend(user_ids, k=len(item_ids), exclude_seen=False, candidates=item_ids, explain=True)
    if recs.explanations is None:
        return [{} for _ in user_ids]
    return [dict(zip(items, why, strict=True)) for items, why in zip(recs.item_ids, recs.explanations, strict=True)]
