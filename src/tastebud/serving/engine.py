"""The recommendation engine: one loaded bundle, prepared for microsecond requests.

Everything a request needs that does not depend on the request is computed when the bundle is loaded: per item,
a genre bitmask (one bit per genre of the catalog, packed into 64-bit words), the year, and the JSON-ready
metadata record; per user, the number of training interactions; the full popularity ranking. A request then
only builds a boolean filter mask (genres any-of, year range), asks the model to score the allowed items
(exclusion of seen items happens inside the model, before its top-k), and shapes the rows.

Policy lives here, not in the models: unknown users get the popular list (``fallback_reason="unknown_user"``),
users with fewer training interactions than ``sparse_history_threshold`` get content scores
(``"sparse_history"``), and an item outside the main model's vocabulary but known to the content model gets
content neighbours (``"cold_item"``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import orjson
import polars as pl

from tastebud.errors import UnknownItemError, UnknownUserError
from tastebud.models.base import GEMM_MIN_ROWS, RankedRow, Recommendations, Recommender
from tastebud.serving.errors import InvalidRequestError
from tastebud.serving.realtime import UserOverlays, recommend_with_overlay

logger = logging.getLogger(__name__)

#: How many distinct filter combinations keep their candidate list cached.
_FILTER_CACHE_SIZE = 512

UNKNOWN_USER = "unknown_user"
SPARSE_HISTORY = "sparse_history"
COLD_ITEM = "cold_item"


@dataclass(frozen=True)
class Filters:
    """Restrictions applied before the top-k: any of ``genres``, and ``year_min <= year <= year_max``.

    Items without a year never pass a year restriction.
    """

    genres: tuple[str, ...] = ()
    year_min: int | None = None
    year_max: int | None = None

    @property
    def active(self) -> bool:
        return bool(self.genres) or self.year_min is not None or self.year_max is not None


class Allowed(NamedTuple):
    """The items that pass a filter: as a mask, as sorted indices and as ids."""

    mask: np.ndarray
    idx: np.ndarray
    ids: list[str]


class Result:
    """One answered request: JSON-ready item records (best first) and how they were produced.

    A result of a ranked row (:meth:`ranked`) carries its items' JSON, ids and scores, assembled by
    :meth:`Catalog.rows_json` without a dict per item, and so does one answered by the result cache (the JSON it
    stored); the item dicts are built (or parsed back) only when ``items`` is read (an interleaved answer, a test),
    never for a response and its request-log record.
    """

    __slots__ = ("_items", "_logged", "_raw", "_rows", "extra", "fallback_reason", "is_fallback", "requested",
                 "source")  # fmt: skip

    def __init__(
        self,
        items: list[dict[str, Any]],
        requested: int,
        is_fallback: bool = False,
        fallback_reason: str | None = None,
        source: str = "model",  # which model answered: model, content, popular
        extra: dict[str, Any] | None = None,
    ) -> None:
        self._items: list[dict[str, Any]] | None = items
        self._rows: tuple[Catalog, RankedRow] | None = None
        self.requested, self.is_fallback, self.fallback_reason = requested, is_fallback, fallback_reason
        self.source = source
        self.extra: dict[str, Any] = {} if extra is None else extra
        self._raw: bytes | None = None
        self._logged: tuple[list[str], list[float]] | None = None

    @classmethod
    def _serialised(
        cls,
        raw: bytes,
        logged: tuple[list[str], list[float]],
        requested: int,
        is_fallback: bool,
        fallback_reason: str | None,
        source: str,
        rows: tuple[Catalog, RankedRow] | None = None,
    ) -> Result:
        """A result known by its items' JSON and logged (ids, scores); item dicts built from ``rows`` (a catalogue
        and its ranked row) or parsed back from ``raw`` when read."""
        result = cls([], requested, is_fallback, fallback_reason, source)
        result._items, result._rows, result._raw, result._logged = None, rows, raw, logged
        return result

    @classmethod
    def ranked(
        cls,
        catalog: Catalog,
        row: RankedRow,
        requested: int,
        is_fallback: bool = False,
        fallback_reason: str | None = None,
        source: str = "model",
    ) -> Result:
        """The result of a ranked row of ``catalog``'s vocabulary: its JSON, ids and scores, item dicts on demand."""
        raw, ids, scores = catalog.rows_json(row)
        return cls._serialised(raw, (ids, scores), requested, is_fallback, fallback_reason, source, (catalog, row))

    @property
    def items(self) -> list[dict[str, Any]]:
        """The item records, best first (``item_id``, metadata, ``score``, ``because``)."""
        if self._items is None:
            if self._rows is not None:
                self._items = self._rows[0].rows(self._rows[1])
            else:  # a cache entry's: parsed back from the JSON it stored
                assert self._raw is not None
                self._items = orjson.loads(self._raw)
        return self._items

    @property
    def returned(self) -> int:
        return len(self._items) if self._items is not None else len(self.logged()[0])

    def raw_json(self) -> bytes:
        """``items`` serialised, once."""
        if self._raw is None:
            self._raw = orjson.dumps(self.items)
        return self._raw

    def items_json(self) -> orjson.Fragment:
        """``items`` serialised once (a cached result answers many requests); embed it in an orjson body."""
        return orjson.Fragment(self.raw_json())

    def logged(self) -> tuple[list[str], list[float]]:
        """(item ids, scores) of ``items`` for the request log, built once like :meth:`items_json`."""
        if self._logged is None:
            self._logged = ([it["item_id"] for it in self.items], [it["score"] for it in self.items])
        return self._logged

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Result):
            return NotImplemented
        return (self.items, self.requested, self.is_fallback, self.fallback_reason, self.source, self.extra) == (
            other.items, other.requested, other.is_fallback, other.fallback_reason, other.source, other.extra
        )  # fmt: skip

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value

    def __repr__(self) -> str:
        return (f"Result(items={self.items!r}, requested={self.requested}, is_fallback={self.is_fallback}, "
                f"fallback_reason={self.fallback_reason!r}, source={self.source!r}, extra={self.extra!r})")  # fmt: skip


def _frozen(result: Result) -> tuple[Any, ...]:
    """A result-cache entry: ``result`` as a plain tuple of atomic values (its items' JSON bytes, ids and scores).

    The garbage collector stops tracking such a tuple after its first pass over it, while a cached
    :class:`Result` (an object, a list, dicts) stays tracked for good: with 10,000 cached lists per worker under
    steady eviction, every full collection walked them all, 26-44 ms each with the event loop stopped, several times
    a minute (p99 of a Zipf audience's requests 90 ms with the cache on against 37 ms with it off). The items'
    JSON is kept, so a hit is not serialised again; ``result`` itself is answered as it is.
    """
    raw = result.raw_json()
    ids, scores = result.logged()
    return (raw, result.requested, result.is_fallback, result.fallback_reason, result.source, tuple(ids), tuple(scores))


def _thawed(entry: tuple[Any, ...]) -> Result:
    """The :class:`Result` of a :func:`_frozen` cache entry (its items parsed back from their JSON only if read)."""
    raw, requested, is_fallback, reason, source, ids, scores = entry
    return Result._serialised(raw, (list(ids), list(scores)), requested, is_fallback, reason, source)


class PlainRequest(NamedTuple):
    """A request on the plain personal path (see :meth:`Engine.plain_request`): what a scoring batch needs of it."""

    u: int  # the user's row in the main model
    user_id: str
    k: int
    exclude_seen: bool
    explain: bool


_NO_FILTERS = Filters()


def _ranking(scores: np.ndarray) -> np.ndarray:
    """Indices of ``scores`` best first, equal scores in index order, ``-inf`` (no score) and NaN left out.

    Ranked once when a model loads: a request's list is then a prefix of it, the same items in the same order
    whatever ``k`` (a per-request partial sort orders tied scores arbitrarily, and popularity scores are counts,
    full of ties), for no more than slicing it.
    """
    order = np.argsort(-scores, kind="stable")
    return order[scores[order] > -np.inf]  # NaN compares false


class Catalog:
    """Item metadata of one item vocabulary, precomputed for filtering and for responses.

    Args:
        ids: the vocabulary's item ids, by index.
        item_meta: frame with ``item_id`` and optional ``title``, ``year``, ``genres`` (joined on ``item_id``;
            items without a row get no metadata).
        genre_vocab: the genre names; bit ``g`` of an item's mask is set when it has ``genre_vocab[g]``.
    """

    def __init__(self, ids: np.ndarray, item_meta: pl.DataFrame, genre_vocab: Sequence[str]) -> None:
        self.ids = np.asarray(ids, dtype=object)
        self.str_ids: list[str] = [str(x) for x in self.ids.tolist()]
        self.lookup: dict[str, int] = {x: i for i, x in enumerate(self.str_ids)}
        meta = _aligned_meta(self.ids, item_meta)
        years = meta["year"].cast(pl.Int64, strict=False)
        self.has_year = years.is_not_null().to_numpy()
        self.years = years.fill_null(0).to_numpy().astype(np.int64)
        self.genre_index = {g: i for i, g in enumerate(genre_vocab)}
        self.n_words = max(1, -(-len(genre_vocab) // 64))
        self.genre_bits = _genre_bits(meta["genres"], self.genre_index, self.n_words)
        # JSON-ready records, built once: a response copies the base record and adds score and explanation.
        # Tuples, not lists, for genres (and explanations): a dict holding only strings, numbers and tuples of them
        # drops out of the garbage collector's tracking, so cached results cost its full passes nothing.
        self.records: list[dict[str, Any]] = [
            {**rec, "genres": tuple(rec["genres"] or ())}
            for rec in meta.select("item_id", "title", "genres", "year").to_dicts()
        ]
        # each record's JSON up to its score (rows_json), serialised on first use
        self._pieces: list[bytes | None] = [None] * len(self.records)
        self._cache: OrderedDict[Filters, Allowed] = OrderedDict()
        self._cache_lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.ids)

    def mask(self, filters: Filters) -> np.ndarray | None:
        """Boolean mask of the items that pass ``filters`` (``None``: no restriction)."""
        if not filters.active:
            return None
        keep = np.ones(len(self.ids), dtype=bool)
        if filters.genres:
            query = np.zeros(self.n_words, dtype=np.uint64)
            for g in filters.genres:
                gi = self.genre_index.get(g)
                if gi is not None:
                    query[gi // 64] |= np.uint64(1) << np.uint64(gi % 64)
            keep &= (self.genre_bits & query).any(axis=1)
        if filters.year_min is not None:
            keep &= self.has_year & (self.years >= filters.year_min)
        if filters.year_max is not None:
            keep &= self.has_year & (self.years <= filters.year_max)
        return keep

    def allowed(self, filters: Filters) -> Allowed | None:
        """The items passing ``filters``, cached per distinct filter; ``None`` when unrestricted."""
        if not filters.active:
            return None
        with self._cache_lock:
            hit = self._cache.get(filters)
            if hit is not None:
                self._cache.move_to_end(filters)
                return hit
        mask = self.mask(filters)
        assert mask is not None
        idx = np.flatnonzero(mask)
        entry = Allowed(mask, idx, [self.str_ids[i] for i in idx.tolist()])
        with self._cache_lock:  # routes share one thread, but the engine may also be used from several
            self._cache[filters] = entry
            if len(self._cache) > _FILTER_CACHE_SIZE:
                self._cache.popitem(last=False)
        return entry

    def rows(self, row: RankedRow) -> list[dict[str, Any]]:
        """JSON-ready item records of a ranked row of this vocabulary (metadata, score, ``because`` ids)."""
        records, names = self.records, self.str_ids
        items, scores = row.items.tolist(), row.scores.tolist()
        if row.because is None:
            return [{**records[i], "score": s, "because": ()} for i, s in zip(items, scores, strict=True)]
        return [
            {**records[i], "score": s, "because": tuple([names[j] for j in b])}
            for i, s, b in zip(items, scores, row.because, strict=True)
        ]

    def rows_json(self, row: RankedRow) -> tuple[bytes, list[str], list[float]]:
        """The JSON of :meth:`rows`' records, byte for byte, with their item ids and scores; no dict per item.

        Each item's record is serialised once, on its first use, up to its ``"score":`` key; a response joins those
        pieces with the scores (serialised together) and the explanations. Building a dict per item and
        serialising it cost about an eighth of a scored ``GET /recommend``'s own work (33 of 250 us in process;
        bench/RESULTS.md, "Responses pieced from serialised records").
        """
        records, names, pieces = self.records, self.str_ids, self._pieces
        items = row.items.tolist()
        scores = row.scores.tolist()
        if not items:
            return b"[]", [], []
        # floats serialise without commas (a non-finite one as null), so the list splits into its elements
        encoded = orjson.dumps(scores)[1:-1].split(b",")
        because = row.because
        parts = []
        for n, i in enumerate(items):
            piece = pieces[i]
            if piece is None:
                head = orjson.dumps(records[i])[:-1]
                piece = pieces[i] = head + (b',"score":' if len(head) > 1 else b'"score":')
            named = b"[]" if because is None else orjson.dumps([names[j] for j in because[n]])
            parts.append(b"".join((piece, encoded[n], b',"because":', named, b"}")))
        ids = [names[i] for i in items]  # each record's item_id is its str id (cached pieces leave records untouched)
        return b"[" + b",".join(parts) + b"]", ids, scores

    def record(self, item_id: str) -> dict[str, Any] | None:
        """The metadata record of ``item_id``, or ``None`` when it is not in this vocabulary."""
        i = self.lookup.get(item_id)
        return None if i is None else self.records[i]


class Engine:
    """Scores, filters and shapes recommendations for one loaded bundle.

    Args:
        model: the main model (fitted).
        fallback: ``"popular"`` (required) and optionally ``"content"`` models, fitted on the same data.
        item_meta: item metadata (``item_id``, ``title``, ``year``, ``genres``, ``tags``).
        sparse_history_threshold: users with fewer training interactions get content scores (0 disables).
        result_cache_size: personal results kept, by user and request parameters (0 disables). A bundle's model
            is fixed, so a user's list only changes with new events; users with events newer than the model
            (overlays) are never answered from, nor stored in, the cache.
        on_cache: called with True for every cache hit and False for every miss (a metrics counter).
    """

    def __init__(
        self,
        model: Recommender,
        fallback: dict[str, Recommender],
        item_meta: pl.DataFrame,
        *,
        sparse_history_threshold: int = 0,
        result_cache_size: int = 0,
        on_cache: Callable[[bool], None] | None = None,
    ) -> None:
        model.check_fitted()
        assert model.users_ is not None and model.items_ is not None
        self.model = model
        self.popular_model = fallback.get("popular")
        self.content = model if model.name == "hybrid" else fallback.get("content")
        self.threshold = sparse_history_threshold
        self.genres: list[str] = _genre_vocab(item_meta)
        self.catalog = Catalog(model.items_.ids, item_meta, self.genres)
        self.user_lookup = model.users_.lookup
        seen = model.seen_.tocsr()
        self.seen = seen
        self.history_len = np.diff(seen.indptr)
        self.item_counts = np.bincount(seen.indices, minlength=len(self.catalog))
        self.content_catalog = self._catalog_of(self.content, item_meta)
        self.popular_catalog, self.popularity = self._popularity(item_meta)
        #: the popular list's items, best first, ties in item order: every popular list (and the unknown users'
        #: fallback) is a prefix of it, of the items passing its filters (:meth:`_popular`)
        self.popular_order = _ranking(self.popularity)
        #: events newer than the model, per user (set by the holder; shared across model switches)
        self.overlays: UserOverlays | None = None
        #: personal results by (user row, k, exclude_seen, explain, filters); oldest entry evicted first (an
        #: OrderedDict: evicting a plain dict's first key scans the slots its earlier deletions left, 4.6 us a
        #: time at 10,000 entries, against O(1) here)
        self.result_cache_size = result_cache_size
        self._results: OrderedDict[tuple[Any, ...], tuple[Any, ...]] = OrderedDict()
        self.cache_hits = self.cache_misses = 0
        self._on_cache = on_cache
        #: measured milliseconds of one request of each kind (``recommend``, ``similar``, ``popular``), set by
        #: :meth:`calibrate`; the routes run a kind whose cost reaches ``serving.offload_ms`` in a worker thread
        self.cost_ms: dict[str, float] = {}
        #: milliseconds per request of the scoring batches so far (a moving average kept by the batcher, which
        #: decides from it whether a slow model's batch may run on the event loop); ``None`` before the first batch
        self.batch_cost_ms: float | None = None

    # ------------------------------------------------------------------ preparation
    def calibrate(self, repeats: int = 2) -> dict[str, float]:
        """Time one request of each kind (the best of ``repeats``) and keep the figures in :attr:`cost_ms`.

        A known user of median history length with explanations stands for ``recommend`` (its popular fallback
        for an unknown user too: the slower of the two counts), the most popular item for ``similar``. The result
        cache is bypassed. A kind that fails here keeps no figure (it is served inline, and fails there as before).
        One batch of that user is also scored, untimed, so that the batched path's one-time costs are paid here.
        """
        import time

        def best(fn: Callable[[], object]) -> float:
            out = float("inf")
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn()
                out = min(out, (time.perf_counter() - t0) * 1000.0)
                if out > 50.0:  # slow enough: one measurement says it
                    break
            return out

        cost: dict[str, float] = {}
        no_filters = Filters()
        try:
            cost["popular"] = best(lambda: self._popular(10, no_filters))
        except Exception as err:
            logger.debug("calibration of popular failed: %s", err)
        if len(self.history_len):
            u = int(np.argsort(self.history_len, kind="stable")[len(self.history_len) // 2])
            user_id = str(self.model.users_.ids[u]) if self.model.users_ is not None else ""
            try:
                personal = best(lambda: self._personal(u, user_id, 10, True, no_filters, True, None))
                cost["recommend"] = max(personal, cost.get("popular", 0.0))
                # and one scoring batch: its one-time costs (compiled loops, a transposed copy) paid here, not by
                # the first requests that arrive together
                self.model.recommend_rows([u] * GEMM_MIN_ROWS, 10, explain=True)
            except Exception as err:
                logger.debug("calibration of recommend failed: %s", err)
        if len(self.item_counts):
            item_id = self.catalog.str_ids[int(np.argmax(self.item_counts))]
            try:
                cost["similar"] = best(lambda: self.similar(item_id, 10))
            except Exception as err:
                logger.debug("calibration of similar failed: %s", err)
        self.cost_ms = cost
        return cost

    def _catalog_of(self, model: Recommender | None, item_meta: pl.DataFrame) -> Catalog | None:
        if model is None or model.items_ is None:
            return None
        if model is self.model or np.array_equal(model.items_.ids, self.catalog.ids):
            return self.catalog
        return Catalog(model.items_.ids, item_meta, self.genres)

    def _popularity(self, item_meta: pl.DataFrame) -> tuple[Catalog, np.ndarray]:
        """Popularity score per item of the popular model's vocabulary (the main model's when there is none)."""
        pop = self.popular_model
        if pop is None or pop.items_ is None:
            # No popularity model: rank by training interaction counts of the main model.
            return self.catalog, self.item_counts.astype(np.float64)
        catalog = self._catalog_of(pop, item_meta)
        assert catalog is not None
        ranking = pop.popular_items(len(catalog)) if hasattr(pop, "popular_items") else None
        scores = np.full(len(catalog), -np.inf)
        if ranking is not None and len(ranking.item_ids[0]):
            idx = np.fromiter((catalog.lookup[i] for i in ranking.item_ids[0]), dtype=np.int64)
            scores[idx] = np.asarray(ranking.scores[0], dtype=np.float64)
        return catalog, scores

    # ------------------------------------------------------------------ validation
    def parse_filters(
        self, genres: Sequence[str] | None = None, year_min: int | None = None, year_max: int | None = None
    ) -> Filters:
        """Validated :class:`Filters`.

        Raises:
            InvalidRequestError: an unknown genre, a negative year, or ``year_min > year_max``.
        """
        if not genres and year_min is None and year_max is None:  # most requests: nothing to check
            return _NO_FILTERS
        names = tuple(dict.fromkeys(g.strip() for g in (genres or ()) if g and g.strip()))
        unknown = [g for g in names if g not in self.catalog.genre_index]
        if unknown:
            shown = ", ".join(self.genres[:30]) + (" ..." if len(self.genres) > 30 else "")
            raise InvalidRequestError(
                "genres", f"unknown genre {', '.join(map(repr, unknown))}; known genres: {shown or '(none)'}"
            )
        for name, value in (("year_min", year_min), ("year_max", year_max)):
            if value is not None and value < 0:
                raise InvalidRequestError(name, f"must be >= 0 (got {value})")
        if year_min is not None and year_max is not None and year_min > year_max:
            raise InvalidRequestError("year_min", f"must be <= year_max (got {year_min} > {year_max})")
        return Filters(names, year_min, year_max)

    # ------------------------------------------------------------------ requests
    def recommend(
        self,
        user_id: str,
        k: int,
        *,
        exclude_seen: bool = True,
        filters: Filters | None = None,
        explain: bool = True,
    ) -> Result:
        """Top-``k`` items for one user, filters and exclusions applied before the top-k."""
        filters = filters or Filters()
        overlay = self.overlays.get(user_id) if self.overlays is not None else None
        if overlay is not None:
            fresh = recommend_with_overlay(
                self, user_id, overlay, k, exclude_seen=exclude_seen, filters=filters, explain=explain
            )
            if fresh is not None:
                return fresh
        u = self.user_lookup.get(user_id)
        if u is None:
            result = self._popular(k, filters)
            result.is_fallback, result.fallback_reason = True, UNKNOWN_USER
            return result
        if overlay is not None or not self.result_cache_size:
            return self._personal(u, user_id, k, exclude_seen, filters, explain, overlay)
        key = (u, k, exclude_seen, explain, filters)
        hit = self._cached(key)
        if hit is not None:
            return hit
        result = self._personal(u, user_id, k, exclude_seen, filters, explain, None)
        self._keep(key, result)
        return result

    def _cached(self, key: tuple[Any, ...]) -> Result | None:
        """The result cache's entry for ``key`` (counted as a hit), or ``None`` (counted as a miss)."""
        hit = self._results.get(key)
        self._count_cache(hit is not None)
        return None if hit is None else _thawed(hit)

    def _count_cache(self, hit: bool) -> None:
        if hit:
            self.cache_hits += 1
        else:
            self.cache_misses += 1
        if self._on_cache is not None:
            self._on_cache(hit)

    def _keep(self, key: tuple[Any, ...], result: Result) -> None:
        """Store ``result`` in the result cache (as :func:`_frozen`), evicting the oldest entry past its size."""
        if result.extra:  # (real-time answers are never cached; an answer with details keeps them uncached too)
            return
        cache = self._results
        cache[key] = _frozen(result)
        if len(cache) > self.result_cache_size:
            with contextlib.suppress(KeyError):  # another thread emptied it first
                cache.popitem(last=False)

    # ------------------------------------------------------------------ batched requests
    def plain_request(
        self, user_id: str, k: int, exclude_seen: bool, filters: Filters, explain: bool
    ) -> PlainRequest | Result | None:
        """Whether a request can join a scoring batch (:meth:`recommend_rows`); the route's first step when batching.

        Returns the request as a :class:`PlainRequest` when it takes the plain personal path of :meth:`recommend`
        (a known user, no real-time overlay, no filters, the main model rather than the content fallback, and
        not in the result cache), the cached :class:`Result` when the cache answers it (a hit, counted as
        :meth:`recommend` counts it; a miss is counted here too), and ``None`` for every other request, which
        :meth:`recommend` answers as before.
        """
        if filters.active or (self.overlays is not None and self.overlays.get(user_id) is not None):
            return None
        u = self.user_lookup.get(user_id)
        if u is None or self._content_user(u, user_id):
            return None
        if self.result_cache_size:
            hit = self._cached((u, k, exclude_seen, explain, filters))
            if hit is not None:
                return hit
        return PlainRequest(u, user_id, k, exclude_seen, explain)

    def recommend_rows(self, requests: Sequence[PlainRequest]) -> list[Result | Exception]:
        """The answers to several :meth:`plain_request` requests, scored together (:meth:`Recommender.recommend_rows`).

        Each answer is what :meth:`recommend` returns for that request (the same items and order; scores equal up
        to the float rounding of the batched product), and is stored in the result cache as it would. When the
        batched call fails, each request is scored on its own, so a request fails only with the error it raises
        by itself, which is returned in its place (an exception instance, not raised).
        """
        if not requests:
            return []
        try:
            ranked = self.model.recommend_rows(
                [r.u for r in requests],
                [r.k for r in requests],
                exclude_seen=[r.exclude_seen for r in requests],
                explain=[r.explain for r in requests],
            )
            return [
                self._kept(r, Result.ranked(self.catalog, row, r.k)) for r, row in zip(requests, ranked, strict=True)
            ]
        except Exception as err:
            if len(requests) == 1:  # the request's own error: what recommend raises for it
                return [err]
            logger.warning("a batch of %d requests failed (%s); scoring each on its own", len(requests), err)
        out: list[Result | Exception] = []
        for r in requests:
            try:
                out.append(
                    self._kept(r, self._personal(r.u, r.user_id, r.k, r.exclude_seen, _NO_FILTERS, r.explain, None))
                )
            except Exception as err:
                out.append(err)
        return out

    def _kept(self, request: PlainRequest, result: Result) -> Result:
        """``result``, stored in the result cache under ``request``'s key when the cache is on."""
        if self.result_cache_size:
            r = request
            self._keep((r.u, r.k, r.exclude_seen, r.explain, _NO_FILTERS), result)
        return result

    def _personal(
        self,
        u: int,
        user_id: str,
        k: int,
        exclude_seen: bool,
        filters: Filters,
        explain: bool,
        overlay: tuple[list[str], np.ndarray] | None,
    ) -> Result:
        """A known user's list from the main model (or content scores for a short history)."""
        model, catalog, reason = self.model, self.catalog, None
        if self._content_user(u, user_id):
            assert self.content is not None and self.content_catalog is not None
            model, catalog, reason = self.content, self.content_catalog, SPARSE_HISTORY
        if model is not self.model:
            assert model.users_ is not None
            u = model.users_.lookup[user_id]
        allowed = catalog.allowed(filters)
        candidates = None if allowed is None else allowed.idx
        if overlay is not None and exclude_seen:
            # A model that cannot score a history (SVD, user-KNN) still must not recommend what the user just
            # interacted with: the new events' items leave the candidates.
            new_items = [i for i in (catalog.lookup.get(x) for x in overlay[0]) if i is not None]
            if new_items:
                base = candidates if candidates is not None else np.arange(len(catalog))
                candidates = np.setdiff1d(base, new_items)
        source = "content" if reason else "model"
        if candidates is not None and not len(candidates):
            return Result([], k, is_fallback=reason is not None, fallback_reason=reason, source=source)
        ranked = model.recommend_row(u, k, exclude_seen=exclude_seen, candidates=candidates, explain=explain)
        return Result.ranked(catalog, ranked, k, is_fallback=reason is not None, fallback_reason=reason, source=source)

    def _content_user(self, u: int, user_id: str) -> bool:
        """Whether the content model answers user ``u`` (a history shorter than the threshold, and known to it)."""
        return bool(
            self.history_len[u] < self.threshold
            and self.content is not None
            and self.content_catalog is not None
            and self.content.users_ is not None
            and user_id in self.content.users_.lookup
        )

    def popular(self, k: int, filters: Filters | None = None) -> Result:
        """The ``k`` most popular items that pass ``filters``."""
        return self._popular(k, filters or Filters())

    def _popular(self, k: int, filters: Filters) -> Result:
        catalog, order = self.popular_catalog, self.popular_order
        mask = catalog.mask(filters)
        if mask is not None:
            order = order[mask[order]]
        top = order[:k]
        return Result.ranked(catalog, RankedRow(top, self.popularity[top]), k, source="popular")

    def similar(self, item_id: str, k: int) -> Result:
        """The ``k`` items most similar to ``item_id``; a cold item (content vocabulary only) gets content neighbours.

        Raises:
            UnknownItemError: no model knows ``item_id``.
        """
        if item_id in self.catalog.lookup:
            return Result(_rows(self.model.similar_items([item_id], k), self.catalog), k)
        content, catalog = self.content, self.content_catalog
        if content is not None and catalog is not None and item_id in catalog.lookup:
            recs = content.similar_items([item_id], k)
            return Result(_rows(recs, catalog), k, True, COLD_ITEM, source="content")
        raise UnknownItemError(f"unknown item id: {item_id!r}")

    def item(self, item_id: str) -> dict[str, Any]:
        """Metadata of one item, with its training interaction count.

        Raises:
            UnknownItemError: ``item_id`` is in no catalog of the bundle.
        """
        i = self.catalog.lookup.get(item_id)
        if i is not None:
            return {**self.catalog.records[i], "n_interactions": int(self.item_counts[i])}
        for catalog in (self.content_catalog, self.popular_catalog):
            if catalog is not None and (rec := catalog.record(item_id)) is not None:
                return {**rec, "n_interactions": 0}
        raise UnknownItemError(f"unknown item id: {item_id!r}")

    def history(self, user_id: str, limit: int) -> tuple[int, list[dict[str, Any]]]:
        """(total, items) of the user's training interactions, strongest first, at most ``limit``.

        Raises:
            UnknownUserError: the model has not seen ``user_id``.
        """
        u = self.user_lookup.get(user_id)
        if u is None:
            raise UnknownUserError(f"unknown user id: {user_id!r}")
        lo, hi = self.seen.indptr[u], self.seen.indptr[u + 1]
        idx, values = self.seen.indices[lo:hi], self.seen.data[lo:hi]
        order = np.lexsort((idx, -values))[:limit]
        items = [
            {**self.catalog.records[i], "value": v}
            for i, v in zip(idx[order].tolist(), values[order].astype(float).tolist(), strict=True)
        ]
        return int(hi - lo), items


# ---------------------------------------------------------------------- helpers
def _rows(recs: Recommendations, catalog: Catalog) -> list[dict[str, Any]]:
    """The first row of ``recs`` as JSON-ready item records (metadata, score, ``because``)."""
    ids = recs.item_ids[0]
    scores = np.asarray(recs.scores[0], dtype=np.float64).tolist()
    because = recs.explanations[0] if recs.explanations else None
    empty: dict[str, Any] = {"title": None, "genres": (), "year": None}
    out = []
    for j, (item_id, score) in enumerate(zip(ids, scores, strict=True)):
        base = catalog.record(item_id) or {"item_id": item_id, **empty}
        out.append({**base, "score": score, "because": tuple(because[j]) if because is not None else ()})
    return out


def _genre_vocab(item_meta: pl.DataFrame) -> list[str]:
    if "genres" not in item_meta.columns or item_meta.height == 0:
        return []
    return sorted(item_meta["genres"].explode().drop_nulls().unique().to_list())


def _aligned_meta(ids: np.ndarray, item_meta: pl.DataFrame) -> pl.DataFrame:
    """Item metadata in the order of ``ids`` (one row per id; missing fields null, genres an empty list)."""
    base = pl.DataFrame({"item_id": pl.Series([str(x) for x in ids.tolist()], dtype=pl.String)})
    cols: dict[str, pl.DataType | type[pl.DataType]] = {
        "title": pl.String,
        "year": pl.Int64,
        "genres": pl.List(pl.String),
    }
    meta = item_meta.select(
        pl.col("item_id").cast(pl.String),
        *[
            (pl.col(c).cast(t, strict=False) if c in item_meta.columns else pl.lit(None, dtype=t)).alias(c)
            for c, t in cols.items()
        ],
    ).unique("item_id", keep="first", maintain_order=True)
    joined = base.join(meta, on="item_id", how="left", maintain_order="left")
    return joined.with_columns(pl.col("genres").fill_null(pl.lit([], dtype=pl.List(pl.String))))


def _genre_bits(genres: pl.Series, genre_index: dict[str, int], n_words: int) -> np.ndarray:
    """Per item, its genres as a packed bitmask of ``n_words`` 64-bit words."""
    bits = np.zeros((len(genres), n_words), dtype=np.uint64)
    if not genre_index or len(genres) == 0:
        return bits
    frame = pl.DataFrame({"row": pl.int_range(0, len(genres), eager=True), "genre": genres}).explode("genre")
    frame = frame.drop_nulls("genre").filter(pl.col("genre").is_in(list(genre_index)))
    if frame.height == 0:
        return bits
    rows = frame["row"].to_numpy().astype(np.int64)
    g = frame["genre"].replace_strict(genre_index, return_dtype=pl.Int64).to_numpy()
    np.bitwise_or.at(bits, (rows, g // 64), np.left_shift(np.uint64(1), (g % 64).astype(np.uint64)))
    return bits
