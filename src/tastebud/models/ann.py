"""Inner-product nearest-neighbour search over item vectors with FAISS: exact for small catalogs, HNSW beyond.

Exact search (``IndexFlatIP``) is fast enough up to about 100K items; above ``hnsw_threshold`` a graph
index (``IndexHNSWFlat`` with the inner-product metric; Malkov and Yashunin, "Efficient and robust approximate
nearest neighbor search using Hierarchical Navigable Small World graphs", 2018) trades a little recall for
speed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Self

import faiss
import numpy as np

from tastebud.errors import BundleError, NotFittedError, ParameterError

#: Exact search drops a query's excluded rows from ``k + len(exclude)`` results while that count is at most this
#: (one batched call, a slightly longer heap); longer lists are left out inside the search by an ID selector.
FLAT_REACH = 256


class FaissIndex:
    """A FAISS inner-product index over row vectors; ids are the row positions.

    Args:
        hnsw_threshold: catalogs with at least this many vectors get an HNSW index, smaller ones exact search.
        hnsw_m: HNSW graph degree (links per node); more is slower to build and more accurate.
        ef_construction: HNSW candidate list size while building.
        ef_search: HNSW candidate list size while searching (raised to ``k`` when smaller).
    """

    def __init__(
        self,
        *,
        hnsw_threshold: int = 100_000,
        hnsw_m: int = 32,
        ef_construction: int = 200,
        ef_search: int = 128,
    ) -> None:
        for name, value in (
            ("hnsw_threshold", hnsw_threshold),
            ("hnsw_m", hnsw_m),
            ("ef_construction", ef_construction),
            ("ef_search", ef_search),
        ):
            if value < 1:
                raise ParameterError(f"FaissIndex: {name} must be >= 1 (got {value})")
        self.hnsw_threshold = hnsw_threshold
        self.hnsw_m = hnsw_m
        self.ef_construction = ef_construction
        self.ef_search = ef_search
        self.index_: faiss.Index | None = None

    # ------------------------------------------------------------------ build and query
    def build(self, vectors: np.ndarray) -> Self:
        """Index ``vectors`` (n x d); returns self."""
        vectors = _as_float32(vectors)
        n, d = vectors.shape
        index: faiss.Index
        if n >= self.hnsw_threshold:
            index = faiss.IndexHNSWFlat(d, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = self.ef_construction
            index.hnsw.efSearch = self.ef_search
        else:
            index = faiss.IndexFlatIP(d)
        index.add(vectors)
        self.index_ = index
        return self

    def set_ef_search(self, ef_search: int) -> None:
        """Change the HNSW candidate list size used by searches (no effect on an exact index).

        Larger is more accurate and slower; a serving process can trade one for the other without rebuilding.

        Raises:
            ParameterError: ``ef_search`` is below 1.
        """
        if ef_search < 1:
            raise ParameterError(f"FaissIndex: ef_search must be >= 1 (got {ef_search})")
        self.ef_search = int(ef_search)
        if isinstance(self._index, faiss.IndexHNSW):
            self._index.hnsw.efSearch = self.ef_search

    @property
    def kind(self) -> str:
        """``"flat"`` (exact) or ``"hnsw"``."""
        return "hnsw" if isinstance(self._index, faiss.IndexHNSW) else "flat"

    @property
    def n_vectors(self) -> int:
        return int(self._index.ntotal)

    @property
    def dim(self) -> int:
        return int(self._index.d)

    def search(
        self, queries: np.ndarray, k: int, exclude: Sequence[np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` rows with the largest inner product per query, best first.

        Args:
            queries: (n_queries, d) vectors.
            k: results per query.
            exclude: per query, row ids never to return (e.g. a user's seen items), or ``None``. A short list
                (``k + len`` within HNSW's candidate list, or :data:`FLAT_REACH` for exact search) is dropped from
                ``k + len`` results; the queries with such lists are searched together in one call. A longer list
                is left out inside the search, by a FAISS ID selector, one query a call: over-fetching would
                raise ``efSearch`` to ``k + len``, and a user with 4,000 seen items took 40-150 ms a request on a
                60,000-item graph instead of about 1 ms (``bench/bench_ann_seen.py``). Both give the same rows:
                FAISS's HNSW walk visits the same nodes whatever ``k`` (up to ``efSearch``) and selector, and
                returns the best ``k`` visited nodes that pass the selector.

        Returns:
            (ids, scores), each of shape (n_queries, min(k, n_vectors)); missing results have id -1 and score
            ``-inf``.
        """
        index = self._index
        queries = _as_float32(queries)
        if queries.shape[1] != index.d:
            raise ParameterError(f"FaissIndex: queries have {queries.shape[1]} dimensions, the index {index.d}")
        if exclude is not None and len(exclude) != len(queries):
            raise ParameterError(f"FaissIndex: {len(exclude)} exclusion lists for {len(queries)} queries")
        kk = min(int(k), index.ntotal)
        if kk < 1 or len(queries) == 0:
            return np.empty((len(queries), 0), dtype=np.int64), np.empty((len(queries), 0), dtype=np.float32)
        scores = np.empty((len(queries), kk), dtype=np.float32)
        ids = np.empty((len(queries), kk), dtype=np.int64)
        lengths = np.zeros(len(queries), dtype=np.int64) if exclude is None else np.array([len(ex) for ex in exclude])
        reach = int(index.hnsw.efSearch) if isinstance(index, faiss.IndexHNSW) else FLAT_REACH  # type: ignore[attr-defined]
        fits = lengths <= max(0, reach - kk)  # over-fetching k + len stays within the search list
        short = np.flatnonzero(fits)
        if len(short):
            fetch = kk + int(lengths[short].max())
            found_s, found_i = index.search(queries[short], fetch, params=self._params(fetch, None))
            if fetch > kk:
                assert exclude is not None
                found_s, found_i = _drop(found_s, found_i, [exclude[q] for q in short.tolist()], kk)
            scores[short], ids[short] = found_s, found_i
        for i in np.flatnonzero(~fits).tolist():
            assert exclude is not None
            # both selectors stay referenced here while FAISS reads them through raw pointers
            skip = faiss.IDSelectorBatch(np.ascontiguousarray(exclude[i], dtype=np.int64))
            keep = faiss.IDSelectorNot(skip)
            found = index.search(queries[i : i + 1], kk, params=self._params(kk, keep))
            scores[i], ids[i] = found[0][0], found[1][0]
        scores = np.where(ids >= 0, scores, -np.inf).astype(np.float32)
        return ids, scores

    def _params(self, k: int, selector: faiss.IDSelector | None) -> faiss.SearchParameters | None:
        """Parameters of a ``k``-search: the selector and, for HNSW, a candidate list of at least ``k``.

        A candidate list shorter than ``k`` would cap the results at ``efSearch``: such a search gets a longer one
        (setting the index's own ``efSearch`` would raise it for every later search too). ``None``: the defaults.
        """
        index = self._index
        hnsw = isinstance(index, faiss.IndexHNSW)
        if selector is None and not (hnsw and k > index.hnsw.efSearch):  # type: ignore[attr-defined]
            return None
        params = faiss.SearchParametersHNSW() if hnsw else faiss.SearchParameters()  # type: ignore[attr-defined]
        if hnsw:  # always set: the parameters' own default (16) would replace the index's
            params.efSearch = max(index.hnsw.efSearch, k)  # type: ignore[attr-defined,union-attr]
        if selector is not None:
            params.sel = selector
        return params

    # ------------------------------------------------------------------ persistence
    def save(self, path: Path) -> None:
        """Write the index to ``path`` (FAISS's own format, no pickle)."""
        faiss.write_index(self._index, str(path))

    @classmethod
    def load(cls, path: Path) -> FaissIndex:
        """Read an index written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise BundleError(f"{path}: missing index file")
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as err:
            raise BundleError(f"{path}: unreadable FAISS index ({str(err).splitlines()[0]})") from err
        if not isinstance(index, faiss.IndexHNSW | faiss.IndexFlat) or index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise BundleError(f"{path}: expected an inner-product flat or HNSW index, found {type(index).__name__}")
        out = cls()
        if isinstance(index, faiss.IndexHNSW):
            out.hnsw_threshold = min(out.hnsw_threshold, max(1, int(index.ntotal)))
            out.ef_construction = int(index.hnsw.efConstruction)
            out.ef_search = int(index.hnsw.efSearch)
        out.index_ = index
        return out

    @property
    def _index(self) -> faiss.Index:
        if self.index_ is None:
            raise NotFittedError("FaissIndex is empty: call build(vectors) first")
        return self.index_


def _as_float32(vectors: np.ndarray) -> np.ndarray:
    arr = np.ascontiguousarray(vectors, dtype=np.float32)
    if arr.ndim != 2:
        raise ParameterError(f"FaissIndex: expected a 2-D array of vectors, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ParameterError("FaissIndex: vectors contain NaN or infinite values")
    return arr


def _drop(scores: np.ndarray, ids: np.ndarray, exclude: Sequence[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row of an over-fetched search, the first ``k`` results whose id is not in that row's ``exclude``.

    Each row has at least ``k`` such results (it fetched ``k`` plus at least its own list's length); missing
    results (id -1) stay, last, as FAISS gave them. One sorted lookup for the whole batch: ids are keyed by row.
    """
    rows = len(ids)
    lists = [np.asarray(ex, dtype=np.int64).ravel() for ex in exclude]
    banned = np.concatenate(lists) if lists else np.empty(0, dtype=np.int64)
    keep = np.ones(ids.shape, dtype=bool)
    if len(banned):
        span = int(max(int(ids.max()), int(banned.max()))) + 2  # keys of different rows never meet
        owner = np.repeat(np.arange(rows, dtype=np.int64), [len(x) for x in lists])
        keyed = np.sort((banned + 1 + owner * span)[banned >= 0])  # a negative id names no row, nor a missing one
        if len(keyed):
            keys = ids + 1 + np.arange(rows, dtype=np.int64)[:, None] * span
            keep = keyed[np.minimum(np.searchsorted(keyed, keys), len(keyed) - 1)] != keys
    keep &= np.cumsum(keep, axis=1) <= k
    return scores[keep].reshape(rows, k), ids[keep].reshape(rows, k)
