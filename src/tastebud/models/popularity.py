"""Popularity baselines: most popular overall or per genre, optionally time-decayed ("trending").

An item's popularity is the number of its interactions (or the sum of their values), each weighted by
``0.5 ** (age_days / half_life_days)`` when a half-life is set, age measured back from the dataset's latest
timestamp. Everyone gets the same list, minus what they have seen. ``popular_items`` serves non-personalised
lists and cold start.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Self

import numpy as np
import polars as pl
import scipy.sparse as sp
from pydantic import ConfigDict, Field

from tastebud.data.dataset import Dataset
from tastebud.errors import BundleError, DataValidationError, ParameterError
from tastebud.models import _scoring as sc
from tastebud.models.base import ModelConfig, Recommendations, Recommender, read_json, write_json

_SECONDS_PER_DAY = 86_400.0
#: Catalog positions past ``k + 1`` that :meth:`PopularityRecommender.recommend` looks through for a user's first
#: unseen items before it scores the whole catalog for that user.
_PREFIX_MARGIN = 256


class PopularityConfig(ModelConfig):
    """Hyperparameters of :class:`PopularityRecommender`."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    weighting: Literal["count", "value"] = "count"
    """``count``: each interaction counts 1; ``value``: each counts its ``value`` (plays, strength)."""
    half_life_days: float | None = Field(None, gt=0.0)
    """When set, an interaction ``a`` days older than the newest weighs ``0.5 ** (a / half_life_days)``."""


class PopularityRecommender(Recommender):
    """Global, per-genre and trending popularity."""

    name = "popular"
    config_class = PopularityConfig
    config: PopularityConfig

    def __init__(self, config: ModelConfig | None = None, **params: Any) -> None:
        super().__init__(config, **params)
        self.popularity_: np.ndarray | None = None
        self.genres_: list[str] | None = None
        self.item_genres_: sp.csr_matrix | None = None
        self._ranking_cache: tuple[np.ndarray, np.ndarray] | None = None

    def fit(self, dataset: Dataset) -> Self:
        """Compute item popularity (and the item x genre incidence); returns self.

        Raises:
            DataValidationError: ``half_life_days`` is set but the dataset has no timestamps.
        """
        inter = dataset.interactions
        weight = (
            inter["value"].to_numpy().astype(np.float64) if self.config.weighting == "value" else np.ones(inter.height)
        )
        if self.config.half_life_days is not None:
            if not dataset.has_timestamps:
                raise DataValidationError(
                    f"popular: half_life_days needs timestamps, but dataset {dataset.name!r} has missing ones"
                )
            ts = inter["timestamp"].to_numpy().astype(np.float64)
            age_days = (ts.max() - ts) / _SECONDS_PER_DAY
            weight = weight * 0.5 ** (age_days / self.config.half_life_days)
        self.popularity_ = np.bincount(inter["item_idx"].to_numpy(), weights=weight, minlength=dataset.n_items)
        self.genres_, self.item_genres_ = _genre_incidence(dataset.item_meta["genres"])
        self.seen_ = dataset.matrix("value")
        self.users_, self.items_ = dataset.users, dataset.items
        return self

    def popular_items(self, k: int = 10, genre: str | None = None) -> Recommendations:
        """The ``k`` most popular items overall, or of one genre; one row with query id ``genre`` or ``"*"``.

        Raises:
            ParameterError: ``genre`` is not a genre of any item.
        """
        self.check_fitted()
        assert self.items_ is not None and self.popularity_ is not None
        k = sc.check_k(k)
        cands = None if genre is None else self._genre_items(genre)
        pop = self.popularity_
        idx, scores = sc.rank(
            lambda r, c: (pop if c is None else pop[c])[None, :],
            np.zeros(1, dtype=np.int64),
            k,
            n_items=len(self.items_),
            candidates=cands,
        )
        return sc.build_recommendations([genre if genre is not None else "*"], idx, scores, self.items_)

    def recommend(
        self,
        user_ids: Sequence[str],
        k: int = 10,
        *,
        exclude_seen: bool = True,
        candidates: Sequence[str] | None = None,
        explain: bool = False,
    ) -> Recommendations:
        """The most popular items each user has not seen (``explain`` is accepted; nothing to explain)."""
        self.check_fitted()
        assert self.users_ is not None and self.items_ is not None and self.popularity_ is not None
        k = sc.check_k(k)
        rows = self.users_.index(user_ids, kind="user")
        cands = sc.resolve_candidates(self.items_, candidates)
        exclude = self.seen_[rows] if exclude_seen else None
        if cands is None:
            idx, scores = self._rank_all(rows, k, exclude)
        else:
            idx, scores = self._rank_scored(rows, k, exclude, cands)
        return sc.build_recommendations(list(user_ids), idx, scores, self.items_)

    def _rank_scored(
        self, rows: np.ndarray, k: int, exclude: sp.csr_matrix | None, cands: np.ndarray | None
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Top-``k`` of ``rows`` by scoring every item (or candidate) for every row: :func:`_scoring.rank`."""
        pop = self.popularity_
        assert pop is not None and self.items_ is not None
        return sc.rank(
            lambda r, c: np.broadcast_to(pop if c is None else pop[c], (len(r), len(pop) if c is None else len(c))),
            rows,
            k,
            n_items=len(self.items_),
            exclude=exclude,
            candidates=cands,
        )

    def _rank_all(
        self, rows: np.ndarray, k: int, exclude: sp.csr_matrix | None
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Top-``k`` of ``rows`` over the whole catalog from one ranking of the items: each row's first unseen.

        Everyone's scores are the same popularity, so a row's list is the first ``k`` items of the catalog's
        ranking that the row has not seen. Where the first ``k + 1`` of those have distinct popularity the list is
        the only top ``k`` there is, the one :meth:`_rank_scored` returns; rows with a tie among them (whose order
        the partition of :meth:`_rank_scored` decides), or with fewer than ``k + 1`` unseen items among the
        catalog's first ``k + 1 +`` :data:`_PREFIX_MARGIN`, are ranked by :meth:`_rank_scored`, so every row is
        exactly what it returns.
        """
        pop = self.popularity_
        assert pop is not None
        n_items = len(pop)
        kk = min(k, n_items)
        if len(rows) == 0 or kk + 1 > n_items or np.isnan(pop).any():
            return self._rank_scored(rows, k, exclude, None)
        order = self._ranking()
        prefix = min(n_items, kk + 1 + _PREFIX_MARGIN)
        seen = np.zeros((len(rows), prefix), dtype=bool)
        if exclude is not None:
            exclude = sp.csr_matrix(exclude)
            position = np.empty(n_items, dtype=np.int64)
            position[order] = np.arange(n_items)
            at = position[exclude.indices]
            r = np.repeat(np.arange(len(rows)), np.diff(exclude.indptr))
            inside = at < prefix
            seen[r[inside], at[inside]] = True
        n_unseen = prefix - np.count_nonzero(seen, axis=1)
        ok = n_unseen >= kk + 1
        seen[~ok] = True  # those rows take the scored path: no positions from them
        r, at = np.nonzero(~seen)
        first = (np.arange(len(r)) - (np.cumsum(n_unseen * ok) - n_unseen * ok)[r]) < kk + 1
        items = order[at[first]].reshape(-1, kk + 1)
        values = pop[items]
        ok_rows = np.flatnonzero(ok)
        tied = (values[:, 1:] == values[:, :-1]).any(axis=1)
        out_idx: list[np.ndarray] = [np.empty(0, dtype=np.int64)] * len(rows)
        out_scores: list[np.ndarray] = [np.empty(0, dtype=pop.dtype)] * len(rows)
        for j, row in enumerate(ok_rows.tolist()):
            if not tied[j]:
                out_idx[row], out_scores[row] = items[j, :kk], values[j, :kk]
        redo = np.concatenate([np.flatnonzero(~ok), ok_rows[tied]])
        if len(redo):
            redo.sort()
            idx, scores = self._rank_scored(rows[redo], k, None if exclude is None else exclude[redo], None)
            for j, row in enumerate(redo.tolist()):
                out_idx[row], out_scores[row] = idx[j], scores[j]
        return out_idx, out_scores

    def _ranking(self) -> np.ndarray:
        """Item indices by decreasing popularity (computed once per fitted or loaded model)."""
        pop = self.popularity_
        assert pop is not None
        cached = self._ranking_cache
        if cached is None or cached[0] is not pop:
            cached = (pop, np.argsort(-pop, kind="stable"))
            self._ranking_cache = cached
        return cached[1]

    history_scoring = True

    def _history_scores(self, idx: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Popularity does not depend on the history; only the exclusion of its items does."""
        assert self.popularity_ is not None
        return np.asarray(self.popularity_, dtype=np.float64)

    def similar_items(self, item_ids: Sequence[str], k: int = 10) -> Recommendations:
        """Items sharing a genre with the query, most popular first, then the most popular others.

        Score: 1 for sharing a genre plus popularity scaled into [0, 0.5], so the order is (shares a genre,
        popularity). The query item is excluded.
        """
        self.check_fitted()
        assert self.items_ is not None and self.popularity_ is not None and self.item_genres_ is not None
        k = sc.check_k(k)
        rows = self.items_.index(item_ids, kind="item")
        top = float(self.popularity_.max(initial=0.0))
        scaled = 0.5 * self.popularity_ / top if top > 0 else np.zeros_like(self.popularity_)
        g = self.item_genres_

        def score(r: np.ndarray, c: np.ndarray | None) -> np.ndarray:
            shared = (g[r] @ g.T).toarray() > 0
            return shared.astype(np.float64) + scaled[None, :]

        idx, scores = sc.rank(score, rows, k, n_items=len(self.items_), exclude=sc.query_mask(rows, len(self.items_)))
        return sc.build_recommendations(list(item_ids), idx, scores, self.items_)

    def _genre_items(self, genre: str) -> np.ndarray:
        assert self.genres_ is not None and self.item_genres_ is not None
        try:
            col = self.genres_.index(genre)
        except ValueError:
            shown = ", ".join(repr(x) for x in self.genres_[:20]) + (" ..." if len(self.genres_) > 20 else "")
            raise ParameterError(f"popular: unknown genre {genre!r}; known genres: {shown or '(none)'}") from None
        return np.flatnonzero(self.item_genres_.getcol(col).toarray().ravel())

    def save(self, directory: Path) -> None:
        """Write popularity, genre incidence (CSR + genre names), id maps, config and the seen matrix."""
        self.check_fitted()
        assert self.item_genres_ is not None and self.popularity_ is not None
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        extra = {"item_genres": sc.save_csr(directory, "item_genres", self.item_genres_)}
        sc.save_state(self, directory, extra)
        np.save(directory / "popularity.npy", self.popularity_, allow_pickle=False)
        write_json(directory / "genres.json", self.genres_)

    @classmethod
    def load(cls, directory: Path) -> Self:
        """Read a model written by :meth:`save`."""
        directory = Path(directory)
        model, _ = sc.load_state(cls, directory)
        n = len(model.items_)  # type: ignore[arg-type]
        model.popularity_ = sc.load_checked(directory / "popularity.npy", (n,), np.floating)
        genres = read_json(directory / "genres.json")
        if not isinstance(genres, list) or not all(isinstance(x, str) for x in genres):
            raise BundleError(f"{directory}/genres.json: expected a list of genre names")
        model.genres_ = genres
        model.item_genres_ = sc.load_csr(directory, "item_genres", (n, len(genres)))
        return model


def _genre_incidence(genres: pl.Series) -> tuple[list[str], sp.csr_matrix]:
    """Sorted genre vocabulary and the item x genre 0/1 matrix."""
    exploded = pl.DataFrame({"item": pl.int_range(0, len(genres), eager=True), "genre": genres}).explode("genre")
    exploded = exploded.drop_nulls("genre").unique(maintain_order=True)
    vocab = sorted(exploded["genre"].unique().to_list())
    cols = exploded["genre"].replace_strict(vocab, list(range(len(vocab))), return_dtype=pl.Int64).to_numpy()
    mat = sp.csr_matrix(
        (np.ones(len(cols), dtype=np.float32), (exploded["item"].to_numpy(), cols)),
        shape=(len(genres), len(vocab)),
    )
    return vocab, mat
