"""Snapshot ids: a content hash of a dataset's normalized data.

The hash covers the interactions, the user and item vocabularies and the item metadata. Interactions are hashed
as a multiset: every row gets a 64-bit mix of its fields (fixed-width integer arithmetic, so identical on every
machine) and the row hashes are summed in two independent lanes. Summing is order-independent, so no sort of
millions of rows is needed, and any change of a user, item, value, rating or timestamp changes the id. The lanes,
the vocabularies and the metadata then go through sha256.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

if TYPE_CHECKING:
    from tastebud.data.dataset import IdMap

#: Version of the hashing scheme; bump it when the normalization changes.
SNAPSHOT_SCHEME = 1
#: Hex digits kept from the sha256 digest.
SNAPSHOT_LENGTH = 16

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_NULL_TS = np.iinfo(np.int64).min


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser, vectorised (wrapping uint64 arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


def _row_hashes(interactions: pl.DataFrame) -> np.ndarray:
    """64-bit hash of every row: the five fields are packed into three words and mixed."""
    users = interactions["user_idx"].to_numpy().astype(np.uint64)
    items = interactions["item_idx"].to_numpy().astype(np.uint64)
    value = interactions["value"].to_numpy().astype("<f4").view("<u4").astype(np.uint64)
    rating = interactions["rating"].fill_null(float("nan")).to_numpy().astype("<f4").view("<u4").astype(np.uint64)
    stamp = interactions["timestamp"].fill_null(_NULL_TS).to_numpy().astype("<i8").view("<u8")
    shift = np.uint64(32)
    with np.errstate(over="ignore"):
        h = _mix((users << shift) | items)
        h = _mix(h ^ ((value << shift) | rating))
        return _mix(h ^ stamp)


def interactions_digest(interactions: pl.DataFrame) -> tuple[int, int, int]:
    """Order-independent digest of interactions: (row count, lane 1 sum, lane 2 sum), all mod 2**64."""
    rows = _row_hashes(interactions)
    with np.errstate(over="ignore"):
        lane1 = int(rows.sum(dtype=np.uint64))
        lane2 = int(_mix(rows ^ np.uint64(0x9E3779B97F4A7C15)).sum(dtype=np.uint64))
    return interactions.height, lane1, lane2


def compute_snapshot_id(interactions: pl.DataFrame, users: IdMap, items: IdMap, item_meta: pl.DataFrame) -> str:
    """Return the snapshot id (16 hex digits of a sha256) of normalized dataset content."""
    digest = hashlib.sha256()
    digest.update(f"tastebud-snapshot-v{SNAPSHOT_SCHEME}".encode())
    _update_strings(digest, b"users", users.ids)
    _update_strings(digest, b"items", items.ids)
    count, lane1, lane2 = interactions_digest(interactions)
    digest.update(f"interactions:{count}:{lane1}:{lane2}".encode())
    rows = _meta_rows(item_meta)
    if rows:
        digest.update(b"item_meta")
        digest.update(json.dumps(rows, sort_keys=True, ensure_ascii=True, default=str).encode())
    return digest.hexdigest()[:SNAPSHOT_LENGTH]


def _meta_rows(item_meta: pl.DataFrame) -> list[dict[str, Any]]:
    if item_meta.height == 0:
        return []
    cols = [c for c in ("title", "year", "genres", "tags") if c in item_meta.columns]
    rows = item_meta.select(cols).to_dicts()
    if not any(any(r[c] for c in cols) for r in rows):
        return []  # no metadata at all hashes like no metadata frame
    return rows


def _update_strings(digest: Any, label: bytes, ids: np.ndarray) -> None:
    digest.update(label)
    digest.update(np.int64(len(ids)).tobytes())
    digest.update("\x00".join(str(x) for x in ids.tolist()).encode("utf-8"))
