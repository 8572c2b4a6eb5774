"""The :class:`Dataset` type: interactions over contiguous indices, id maps, item metadata and a snapshot id.

Ids are strings at the edges and contiguous ``int32`` indices inside. A dataset's vocabulary is the sorted set of
user ids and item ids (items from the metadata catalog included, so items nobody interacted with yet still have
an index). Subsets made by splits keep the vocabulary of their parent, so train and test matrices share one shape.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp

from tastebud.data.snapshot import compute_snapshot_id
from tastebud.errors import DataValidationError, UnknownItemError, UnknownUserError

#: Columns of :attr:`Dataset.interactions`, with their dtypes.
INTERACTION_SCHEMA: dict[str, type[pl.DataType]] = {
    "user_idx": pl.Int32,
    "item_idx": pl.Int32,
    "value": pl.Float32,
    "rating": pl.Float32,
    "timestamp": pl.Int64,
}
#: Columns of :attr:`Dataset.items` (one row per item index, in index order).
ITEM_COLUMNS = ("item_id", "title", "year", "genres", "tags")

_USER_ALIASES = ("user_id", "userId", "user", "userid")
_ITEM_ALIASES = ("item_id", "itemId", "item", "movieId", "movie_id", "itemid")


class IdMap:
    """A vocabulary: external string ids <-> contiguous integer indices (sorted ids, so order-independent)."""

    __slots__ = ("_ids", "_lookup")

    def __init__(self, ids: Sequence[str] | np.ndarray) -> None:
        arr = np.asarray(ids, dtype=object)
        self._ids = arr
        self._lookup: dict[str, int] | None = None

    @classmethod
    def from_series(cls, series: pl.Series) -> IdMap:
        """Build from a polars string series (unique values are taken and sorted)."""
        return cls(series.unique().sort().to_numpy().astype(object))

    @property
    def ids(self) -> np.ndarray:
        """External ids, by index (object array of ``str``)."""
        return self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, external_id: object) -> bool:
        return str(external_id) in self.lookup

    @property
    def lookup(self) -> dict[str, int]:
        """Dict from external id to index (built on first use)."""
        if self._lookup is None:
            self._lookup = {str(v): i for i, v in enumerate(self._ids.tolist())}
        return self._lookup

    def index(self, external_ids: Iterable[object], *, kind: str = "item") -> np.ndarray:
        """Indices of ``external_ids``; raises ``UnknownUserError``/``UnknownItemError`` naming the unknown ones."""
        lookup = self.lookup
        ids = [str(x) for x in external_ids]
        missing = [x for x in ids if x not in lookup]
        if missing:
            shown = ", ".join(repr(m) for m in missing[:5]) + (" ..." if len(missing) > 5 else "")
            err = UnknownUserError if kind == "user" else UnknownItemError
            raise err(f"unknown {kind} id{'s' if len(missing) > 1 else ''}: {shown}")
        return np.fromiter((lookup[x] for x in ids), dtype=np.int64, count=len(ids))

    def get(self, external_id: object, default: int = -1) -> int:
        """Index of one id, or ``default``."""
        return self.lookup.get(str(external_id), default)

    def to_list(self) -> list[str]:
        """External ids as a JSON-friendly list."""
        return [str(x) for x in self._ids.tolist()]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IdMap) and np.array_equal(self._ids, other._ids)

    __hash__ = None  # type: ignore[assignment]


@dataclass(eq=False)
class Dataset:
    """Interactions of users with items, with id maps, item metadata and a content hash.

    Attributes:
        interactions: polars frame with ``user_idx``, ``item_idx`` (int32), ``value`` (float32, interaction
            strength: 1.0 per rating unless given, play counts for music), ``rating`` (float32 or null) and
            ``timestamp`` (int64 seconds since the epoch, UTC, or null).
        users: vocabulary of user ids.
        items: vocabulary of item ids.
        item_meta: polars frame, one row per item index in index order: ``item_id``, ``title`` (str or null),
            ``year`` (int or null), ``genres`` (list of str), ``tags`` (list of str).
        name: a short name (``ml-100k``, a file name ...).
        meta: free-form provenance: source, format, preparation steps applied (JSON-serialisable).
    """

    interactions: pl.DataFrame
    users: IdMap
    items: IdMap
    item_meta: pl.DataFrame
    name: str = "dataset"
    meta: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_frame(
        cls,
        df: pl.DataFrame | Any,
        *,
        items: pl.DataFrame | Any | None = None,
        name: str = "dataset",
        meta: Mapping[str, Any] | None = None,
        source: str = "frame",
    ) -> Dataset:
        """Build a dataset from any DataFrame (polars or pandas) of interactions.

        Args:
            df: columns ``user_id`` and ``item_id`` (any type, turned into strings), optional ``rating``,
                ``value`` and ``timestamp`` (seconds since the epoch, or a datetime column).
            items: optional item metadata with ``item_id`` and any of ``title``, ``year``, ``genres`` (list of
                str or a ``|``-separated string) and ``tags``. Items listed here join the vocabulary even
                without interactions.
            name: dataset name.
            meta: provenance to keep.
            source: what to call the input in error messages (a file name).

        Raises:
            DataValidationError: a required column is missing, a value has the wrong type, a rating or value
                is negative or not finite, or the frame is empty.
        """
        frame = _to_polars(df, source)
        frame = _normalise_interactions(frame, source)
        item_frame = _normalise_items(_to_polars(items, source), source) if items is not None else None

        users, user_idx = _vocabulary(frame["user_id"])
        item_ids = frame["item_id"]
        if item_frame is not None:
            if item_frame["item_id"].dtype != item_ids.dtype:
                item_ids = item_ids.cast(pl.String)
            item_ids = pl.concat([item_ids, item_frame["item_id"].cast(item_ids.dtype)])
        vocab, item_all = _vocabulary(item_ids)
        item_idx = item_all.slice(0, frame.height)
        inter = pl.DataFrame(
            {
                "user_idx": user_idx,
                "item_idx": item_idx,
                "value": frame["value"],
                "rating": frame["rating"],
                "timestamp": frame["timestamp"],
            }
        )
        if item_frame is not None:
            item_frame = item_frame.with_columns(pl.col("item_id").cast(pl.String))
        item_meta = _align_items(vocab, item_frame)
        return cls(inter, users, vocab, item_meta, name=name, meta=dict(meta or {}))

    def with_interactions(self, interactions: pl.DataFrame, **meta_updates: Any) -> Dataset:
        """A dataset with the same vocabulary and metadata but other interactions (used by splits and filters)."""
        missing = [c for c in INTERACTION_SCHEMA if c not in interactions.columns]
        if missing:
            raise DataValidationError(f"interactions frame lacks columns {missing}")
        inter = interactions.select([pl.col(c).cast(t) for c, t in INTERACTION_SCHEMA.items()])
        meta = {**self.meta, **meta_updates}
        return Dataset(inter, self.users, self.items, self.item_meta, name=self.name, meta=meta)

    def compact(self) -> Dataset:
        """Drop users and items that have no interactions (re-indexing), keeping metadata of the rest."""
        users_used = np.unique(self.interactions["user_idx"].to_numpy())
        items_used = np.unique(self.interactions["item_idx"].to_numpy())
        if len(users_used) == self.n_users and len(items_used) == self.n_items:
            return self
        user_remap = np.full(self.n_users, -1, dtype=np.int32)
        user_remap[users_used] = np.arange(len(users_used), dtype=np.int32)
        item_remap = np.full(self.n_items, -1, dtype=np.int32)
        item_remap[items_used] = np.arange(len(items_used), dtype=np.int32)
        inter = self.interactions.with_columns(
            pl.Series("user_idx", user_remap[self.interactions["user_idx"].to_numpy()]),
            pl.Series("item_idx", item_remap[self.interactions["item_idx"].to_numpy()]),
        )
        meta_rows = self.item_meta[items_used.tolist()] if len(items_used) else self.item_meta.clear()
        return Dataset(
            inter,
            IdMap(self.users.ids[users_used]),
            IdMap(self.items.ids[items_used]),
            meta_rows,
            name=self.name,
            meta=dict(self.meta),
        )

    # ------------------------------------------------------------------ shape and content
    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_items(self) -> int:
        return len(self.items)

    @property
    def n_interactions(self) -> int:
        return self.interactions.height

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n_users, self.n_items)

    @property
    def density(self) -> float:
        cells = self.n_users * self.n_items
        return self.n_interactions / cells if cells else 0.0

    @property
    def has_ratings(self) -> bool:
        return self.interactions["rating"].null_count() < self.n_interactions

    @property
    def has_timestamps(self) -> bool:
        return self.n_interactions > 0 and self.interactions["timestamp"].null_count() == 0

    @cached_property
    def snapshot_id(self) -> str:
        """Content hash of the normalized data: stable across runs, machines and row order."""
        return compute_snapshot_id(self.interactions, self.users, self.items, self.item_meta)

    # ------------------------------------------------------------------ matrices
    def matrix(self, column: str = "value", *, dtype: Any = np.float32) -> sp.csr_matrix:
        """User x item CSR matrix of ``column`` (``value``, ``rating``; duplicates are summed).

        ``column="binary"`` gives 1.0 for every (user, item) pair that has an interaction.
        """
        rows = self.interactions["user_idx"].to_numpy()
        cols = self.interactions["item_idx"].to_numpy()
        if column == "binary":
            data = np.ones(len(rows), dtype=dtype)
        else:
            series = self.interactions[column]
            if series.null_count():
                raise DataValidationError(f"dataset {self.name!r}: column {column!r} has missing values")
            data = series.to_numpy().astype(dtype, copy=False)
        mat = sp.csr_matrix((data, (rows, cols)), shape=self.shape, dtype=dtype)
        if column == "binary":
            mat.data[:] = 1
        mat.sort_indices()
        return mat

    @cached_property
    def user_item(self) -> sp.csr_matrix:
        """Cached binary user x item CSR matrix (what was seen)."""
        return self.matrix("binary")

    def user_index(self, user_ids: Iterable[object]) -> np.ndarray:
        """Indices of external user ids (raises ``UnknownUserError``)."""
        return self.users.index(user_ids, kind="user")

    def item_index(self, item_ids: Iterable[object]) -> np.ndarray:
        """Indices of external item ids (raises ``UnknownItemError``)."""
        return self.items.index(item_ids, kind="item")

    def item_genres(self) -> list[list[str]]:
        """Genres per item index."""
        return [list(g) if g is not None else [] for g in self.item_meta["genres"].to_list()]

    def to_frame(self) -> pl.DataFrame:
        """Interactions with external ids (``user_id``, ``item_id``, ``value``, ``rating``, ``timestamp``)."""
        users = pl.Series("user_id", self.users.ids.astype(str), dtype=pl.String)
        items = pl.Series("item_id", self.items.ids.astype(str), dtype=pl.String)
        return self.interactions.select(
            users.gather(self.interactions["user_idx"]).alias("user_id")
            if self.n_interactions
            else pl.lit(None, dtype=pl.String).alias("user_id"),
            items.gather(self.interactions["item_idx"]).alias("item_id")
            if self.n_interactions
            else pl.lit(None, dtype=pl.String).alias("item_id"),
            pl.col("value"),
            pl.col("rating"),
            pl.col("timestamp"),
        )

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, users={self.n_users}, items={self.n_items}, "
            f"interactions={self.n_interactions}, snapshot_id={self.snapshot_id!r})"
        )


# ---------------------------------------------------------------------- helpers
def _to_polars(df: Any, source: str) -> pl.DataFrame:
    if isinstance(df, pl.DataFrame):
        return df
    if isinstance(df, pl.LazyFrame):
        return df.collect()
    try:
        import pandas as pd

        if isinstance(df, pd.DataFrame):
            return pl.from_pandas(df)
    except ImportError:  # pragma: no cover - pandas is a dependency
        pass
    raise DataValidationError(f"{source}: expected a polars or pandas DataFrame, got {type(df).__name__}")


def _find(frame: pl.DataFrame, aliases: Sequence[str]) -> str | None:
    for name in aliases:
        if name in frame.columns:
            return name
    return None


def _normalise_interactions(frame: pl.DataFrame, source: str) -> pl.DataFrame:
    user_col = _find(frame, _USER_ALIASES)
    item_col = _find(frame, _ITEM_ALIASES)
    missing = [n for n, c in (("user_id", user_col), ("item_id", item_col)) if c is None]
    if missing:
        raise DataValidationError(
            f"{source}: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)}; "
            f"found columns {frame.columns}"
        )
    if frame.height == 0:
        raise DataValidationError(f"{source}: no interactions (the data is empty)")
    assert user_col is not None and item_col is not None
    cols = [
        _id_expr(frame, user_col).alias("user_id"),
        _id_expr(frame, item_col).alias("item_id"),
    ]
    for name in ("user_id", "item_id"):
        src = user_col if name == "user_id" else item_col
        nulls = frame[src].null_count()
        if nulls:
            row = int(frame[src].is_null().arg_true()[0])
            raise DataValidationError(f"{source}: column {src!r} has {nulls} missing ids (first at row {row + 1})")
    rating = _numeric(frame, "rating", source) if "rating" in frame.columns else None
    value = _numeric(frame, "value", source) if "value" in frame.columns else None
    cols.append(rating.alias("rating") if rating is not None else pl.lit(None, dtype=pl.Float32).alias("rating"))
    cols.append(value.alias("value") if value is not None else pl.lit(1.0, dtype=pl.Float32).alias("value"))
    if "timestamp" in frame.columns:
        cols.append(_timestamp_expr(frame, source).alias("timestamp"))
    else:
        cols.append(pl.lit(None, dtype=pl.Int64).alias("timestamp"))
    return frame.select(cols)


def _id_expr(frame: pl.DataFrame, col: str) -> pl.Expr:
    """Ids keep integer dtypes (fast to map); floats (pandas' 1.0) become integers, everything else strings."""
    dtype = frame.schema[col]
    if isinstance(dtype, pl.Categorical):
        return pl.col(col)  # mapped through its integer codes in _vocabulary
    if dtype.is_float():
        return pl.col(col).cast(pl.Int64)
    if dtype.is_integer():
        return pl.col(col)
    return pl.col(col).cast(pl.String)


def _vocabulary(ids: pl.Series) -> tuple[IdMap, pl.Series]:
    """Sorted string vocabulary of ``ids`` and the int32 index of every element.

    Unique values are found on the native dtype (integers are much faster than strings) and only the unique
    values are turned into strings and sorted, so the vocabulary order does not depend on the input dtype.
    """
    uniq = ids.unique()
    as_str = uniq.cast(pl.String)
    order = as_str.arg_sort().to_numpy()
    rank = np.empty(len(order), dtype=np.int32)
    rank[order] = np.arange(len(order), dtype=np.int32)
    if isinstance(ids.dtype, pl.Categorical):
        # Categorical ids (the Last.fm reader): map integer codes instead of hashing every string again.
        index = ids.to_physical().replace_strict(uniq.to_physical(), pl.Series(rank), return_dtype=pl.Int32)
    else:
        index = ids.replace_strict(uniq, pl.Series(rank), return_dtype=pl.Int32)
    return IdMap(as_str.to_numpy()[order].astype(object)), index.rename("idx")


def _numeric(frame: pl.DataFrame, col: str, source: str) -> pl.Expr:
    series = frame[col]
    if not series.dtype.is_numeric():
        cast = series.cast(pl.Float64, strict=False)
        bad = cast.is_null() & series.is_not_null()
        if bad.any():
            row = int(bad.arg_true()[0])
            raise DataValidationError(f"{source}: row {row + 1}: {col} {series[row]!r} is not a number")
        series = cast
    values = series.cast(pl.Float64)
    if col == "value" and values.null_count():
        row = int(values.is_null().arg_true()[0])
        raise DataValidationError(f"{source}: row {row + 1}: {col} is missing")
    finite = values.is_finite() | values.is_null()
    if not finite.all():
        row = int((~finite).arg_true()[0])
        raise DataValidationError(f"{source}: row {row + 1}: {col} {values[row]} is not a finite number")
    negative = values < 0
    if negative.any():
        row = int(negative.arg_true()[0])
        raise DataValidationError(f"{source}: row {row + 1}: {col} {values[row]} is negative (expected a value >= 0)")
    return pl.lit(values.cast(pl.Float32))


def _timestamp_expr(frame: pl.DataFrame, source: str) -> pl.Expr:
    series = frame["timestamp"]
    dtype = series.dtype
    if isinstance(dtype, pl.Datetime):
        unit_div = {"ns": 1_000_000_000, "us": 1_000_000, "ms": 1_000}[dtype.time_unit or "us"]
        return pl.lit((series.dt.replace_time_zone(None) if dtype.time_zone else series).cast(pl.Int64) // unit_div)
    if isinstance(dtype, pl.Date):
        return pl.lit(series.cast(pl.Datetime("us")).cast(pl.Int64) // 1_000_000)
    if dtype.is_numeric():
        if series.null_count():
            row = int(series.is_null().arg_true()[0])
            raise DataValidationError(f"{source}: row {row + 1}: timestamp is missing")
        cast = series.cast(pl.Int64, strict=False)
        if cast.null_count():  # NaN, infinite or beyond 64-bit seconds
            row = int(cast.is_null().arg_true()[0])
            raise DataValidationError(f"{source}: row {row + 1}: timestamp {series[row]!r} is not epoch seconds")
        return pl.lit(cast)
    cast = series.cast(pl.Int64, strict=False)
    bad = cast.is_null()
    if bad.any():
        parsed = series.str.to_datetime(strict=False, time_zone="UTC")
        still_bad = parsed.is_null()
        if still_bad.any():
            row = int(still_bad.arg_true()[0])
            raise DataValidationError(
                f"{source}: row {row + 1}: timestamp {series[row]!r} is neither epoch seconds nor a date"
            )
        return pl.lit(parsed.dt.epoch("s"))
    return pl.lit(cast)


def _normalise_items(frame: pl.DataFrame, source: str) -> pl.DataFrame:
    item_col = _find(frame, _ITEM_ALIASES)
    if item_col is None:
        raise DataValidationError(f"{source}: item metadata lacks an item_id column; found {frame.columns}")
    cols: list[pl.Expr] = [_id_expr(frame, item_col).alias("item_id")]
    cols.append(pl.col("title").cast(pl.String) if "title" in frame.columns else pl.lit(None, pl.String).alias("title"))
    cols.append(
        pl.col("year").cast(pl.Int32, strict=False) if "year" in frame.columns else pl.lit(None, pl.Int32).alias("year")
    )
    for name in ("genres", "tags"):
        if name in frame.columns:
            dtype = frame.schema[name]
            if dtype == pl.String:
                cols.append(
                    pl.when(pl.col(name).is_null() | (pl.col(name) == ""))
                    .then(pl.lit([], dtype=pl.List(pl.String)))
                    .otherwise(pl.col(name).str.split("|"))
                    .alias(name)
                )
            else:
                cols.append(pl.col(name).cast(pl.List(pl.String)).fill_null([]).alias(name))
        else:
            cols.append(pl.lit([], dtype=pl.List(pl.String)).alias(name))
    return frame.select(cols).unique("item_id", keep="first", maintain_order=True)


def _align_items(vocab: IdMap, item_frame: pl.DataFrame | None) -> pl.DataFrame:
    base = pl.DataFrame({"item_id": pl.Series(vocab.ids.astype(str), dtype=pl.String)})
    if item_frame is None:
        return base.with_columns(
            pl.lit(None, pl.String).alias("title"),
            pl.lit(None, pl.Int32).alias("year"),
            pl.lit([], dtype=pl.List(pl.String)).alias("genres"),
            pl.lit([], dtype=pl.List(pl.String)).alias("tags"),
        )
    joined = base.join(item_frame, on="item_id", how="left", maintain_order="left")
    return joined.with_columns(
        pl.col("genres").fill_null(pl.lit([], dtype=pl.List(pl.String))),
        pl.col("tags").fill_null(pl.lit([], dtype=pl.List(pl.String))),
    ).select(ITEM_COLUMNS)
