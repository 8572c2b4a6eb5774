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


#: Rows hashed per step of :func:`row_hashes` and :func:`digest_of_rows`: a few arrays of this many words stay in
#: the CPU cache, where the dozen passes of the mixing run several times faster than over the whole column.
_CHUNK = 1 << 16


def _mix_into(x: np.ndarray, tmp: np.ndarray) -> None:
    """:func:`_mix` of ``x`` in place (``tmp``: scratch of the same length)."""
    np.right_shift(x, np.uint64(30), out=tmp)
    np.bitwise_xor(x, tmp, out=x)
    np.multiply(x, _M1, out=x)
    np.right_shift(x, np.uint64(27), out=tmp)
    np.bitwise_xor(x, tmp, out=x)
    np.multiply(x, _M2, out=x)
    np.right_shift(x, np.uint64(31), out=tmp)
    np.bitwise_xor(x, tmp, out=x)


def row_hashes(interactions: pl.DataFrame) -> np.ndarray:
    """64-bit hash of every row: the five fields are packed into three words and mixed.

    Per row, ``_mix(_mix(_mix(user << 32 | item) ^ (value_bits << 32 | rating_bits)) ^ timestamp)``, computed
    in cache-sized chunks.
    """
    users = interactions["user_idx"].to_numpy()
    items = interactions["item_idx"].to_numpy()
    value = np.asarray(interactions["value"].to_numpy(), dtype="<f4").view("<u4")
    rating = np.asarray(interactions["rating"].fill_null(float("nan")).to_numpy(), dtype="<f4").view("<u4")
    stamp = np.asarray(interactions["timestamp"].fill_null(_NULL_TS).to_numpy(), dtype="<i8").view("<u8")
    n = len(users)
    out = np.empty(n, dtype=np.uint64)
    scratch = np.empty(min(n, _CHUNK), dtype=np.uint64)
    word = np.empty_like(scratch)
    shift = np.uint64(32)
    for start in range(0, n, _CHUNK):
        stop = min(start + _CHUNK, n)
        h, tmp, w = out[start:stop], scratch[: stop - start], word[: stop - start]
        h[:] = users[start:stop].astype(np.uint64)
        np.left_shift(h, shift, out=h)
        w[:] = items[start:stop].astype(np.uint64)
        np.bitwise_or(h, w, out=h)
        _mix_into(h, tmp)
        w[:] = value[start:stop]
        np.left_shift(w, shift, out=w)
        tmp[:] = rating[start:stop]
        np.bitwise_or(w, tmp, out=w)
        np.bitwise_xor(h, w, out=h)
        _mix_into(h, tmp)
        np.bitwise_xor(h, stamp[start:stop], out=h)
        _mix_into(h, tmp)
    return out


def interactions_digest(interactions: pl.DataFrame) -> tuple[int, int, int]:
    """Order-independent digest of interactions: (row count, lane 1 sum, lane 2 sum), all mod 2**64."""
    return digest_of_rows(row_hashes(interactions))


def compute_snapshot_id(interactions: pl.DataFrame, users: IdMap, items: IdMap, item_meta: pl.DataFrame) -> str:
    """Return the snapshot id (16 hex digits of a sha256) of normalized dataset content."""
    return snapshot_id_of_digest(interactions_digest(interactions), users, items, item_meta)


def digest_of_rows(row_hashes: np.ndarray) -> tuple[int, int, int]:
    """:func:`interactions_digest` of the rows whose :func:`row_hashes` are ``row_hashes`` (any subset, any order)."""
    n = len(row_hashes)
    lane1 = int(row_hashes.sum(dtype=np.uint64))
    lane2 = 0
    scratch = np.empty(min(n, _CHUNK), dtype=np.uint64)
    word = np.empty_like(scratch)
    for start in range(0, n, _CHUNK):
        stop = min(start + _CHUNK, n)
        w, tmp = word[: stop - start], scratch[: stop - start]
        np.bitwise_xor(row_hashes[start:stop], np.uint64(0x9E3779B97F4A7C15), out=w)
        _mix_into(w, tmp)
        lane2 += int(w.sum(dtype=np.uint64))
    return n, lane1, lane2 % (1 << 64)


def snapshot_id_of_digest(
    interactions: tuple[int, int, int], users: IdMap, items: IdMap, item_meta: pl.DataFrame
) -> str:
    """The snapshot id of a dataset whose interactions have the digest ``interactions`` (:func:`interactions_digest`).

    The vocabularies and the metadata are hashed once for a given set of (``users``, ``items``, ``item_meta``)
    objects: a dataset and the parts of its splits share them, and on a 60,000-item catalog that hashing costs
    about as much as the interactions' digest of a few million rows.
    """
    prefix, meta = _vocabulary_digest(users, items, item_meta)
    digest = prefix.copy()
    count, lane1, lane2 = interactions
    digest.update(f"interactions:{count}:{lane1}:{lane2}".encode())
    if meta is not None:
        digest.update(b"item_meta")
        digest.update(meta)
    return digest.hexdigest()[:SNAPSHOT_LENGTH]


#: The last few (users, items, item_meta) objects hashed, with the sha256 state after the vocabularies and the
#: metadata's JSON (:func:`_vocabulary_digest`); looked up by identity, so it holds those objects.
_VOCABULARY_CACHE: list[tuple[IdMap, IdMap, pl.DataFrame, Any, bytes | None]] = []
_VOCABULARY_CACHE_SIZE = 2


def _vocabulary_digest(users: IdMap, items: IdMap, item_meta: pl.DataFrame) -> tuple[Any, bytes | None]:
    for cached_users, cached_items, cached_meta, prefix, meta in _VOCABULARY_CACHE:
        if cached_users is users and cached_items is items and cached_meta is item_meta:
            return prefix, meta
    prefix = hashlib.sha256()
    prefix.update(f"tastebud-snapshot-v{SNAPSHOT_SCHEME}".encode())
    _update_strings(prefix, b"users", users.ids)
    _update_strings(prefix, b"items", items.ids)
    rows = _meta_rows(item_meta)
    meta = json.dumps(rows, sort_keys=True, ensure_ascii=True, default=str).encode() if rows else None
    _VOCABULARY_CACHE.insert(0, (users, items, item_meta, prefix, meta))
    del _VOCABULARY_CACHE[_VOCABULARY_CACHE_SIZE:]
    return prefix, meta


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
