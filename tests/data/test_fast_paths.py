"""The shortcuts of reading, preparing and splitting give what the plain computations give."""

from __future__ import annotations

import hashlib

import numpy as np
import polars as pl
import pytest

from tastebud.data import snapshot as snap
from tastebud.data.dataset import Dataset
from tastebud.data.prepare import _sorted_by_time, dedupe
from tastebud.data.snapshot import compute_snapshot_id
from tastebud.data.split import _order, _pair_hash, make_split
from tastebud.data.synthetic import generate_synthetic


def _plain_mix(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _plain_digest(inter: pl.DataFrame) -> tuple[int, int, int]:
    """The snapshot digest written out over whole columns (the definition the chunked code must keep)."""
    users = inter["user_idx"].to_numpy().astype(np.uint64)
    items = inter["item_idx"].to_numpy().astype(np.uint64)
    value = inter["value"].to_numpy().astype("<f4").view("<u4").astype(np.uint64)
    rating = inter["rating"].fill_null(float("nan")).to_numpy().astype("<f4").view("<u4").astype(np.uint64)
    stamp = inter["timestamp"].fill_null(np.iinfo(np.int64).min).to_numpy().astype("<i8").view("<u8")
    s = np.uint64(32)
    with np.errstate(over="ignore"):
        h = _plain_mix(_plain_mix(_plain_mix((users << s) | items) ^ ((value << s) | rating)) ^ stamp)
        lane1 = int(h.sum(dtype=np.uint64))
        lane2 = int(_plain_mix(h ^ np.uint64(0x9E3779B97F4A7C15)).sum(dtype=np.uint64))
    return inter.height, lane1, lane2


@pytest.fixture(scope="module")
def ds() -> Dataset:
    data = generate_synthetic(n_users=300, n_items=200, n_interactions=9_000, seed=4)
    inter = data.interactions.with_columns(
        pl.when(pl.col("user_idx") % 5 == 0).then(None).otherwise(pl.col("rating")).alias("rating"),
        pl.when(pl.col("item_idx") % 7 == 0).then(None).otherwise(pl.col("timestamp")).alias("timestamp"),
    )
    return data.with_interactions(inter.sample(fraction=1.0, shuffle=True, seed=1))


@pytest.mark.parametrize("n", [0, 1, 7, (1 << 16) + 3])
def test_chunked_digest_equals_the_whole_column_formula(n: int) -> None:
    rng = np.random.default_rng(n)
    inter = pl.DataFrame(
        {
            "user_idx": rng.integers(0, 1 << 31, n, dtype=np.int64).astype(np.int32),
            "item_idx": rng.integers(0, 1 << 31, n, dtype=np.int64).astype(np.int32),
            "value": rng.random(n).astype(np.float32),
            "rating": pl.Series(rng.random(n), dtype=pl.Float32).scatter(np.flatnonzero(rng.random(n) < 0.2), None),
            "timestamp": pl.Series(rng.integers(-(1 << 40), 1 << 40, n), dtype=pl.Int64).scatter(
                np.flatnonzero(rng.random(n) < 0.2), None
            ),
        }
    )
    assert snap.interactions_digest(inter) == _plain_digest(inter)


def test_pair_hash_equals_the_whole_column_formula() -> None:
    rng = np.random.default_rng(0)
    users = rng.integers(0, 1 << 20, 70_000).astype(np.int32)
    items = rng.integers(0, 1 << 20, 70_000).astype(np.int32)
    salt = np.uint64(int(hashlib.sha256(b"42").hexdigest()[:16], 16))
    pairs = (users.astype(np.uint64) << np.uint64(32)) | items.astype(np.uint64)
    with np.errstate(over="ignore"):
        expected = (_plain_mix(pairs ^ salt) >> np.uint64(1)).astype(np.int64)
    np.testing.assert_array_equal(_pair_hash(users, items, 42), expected)


def test_vocabulary_hash_is_reused_only_for_the_same_objects(ds: Dataset) -> None:
    first = compute_snapshot_id(ds.interactions, ds.users, ds.items, ds.item_meta)
    assert compute_snapshot_id(ds.interactions, ds.users, ds.items, ds.item_meta) == first
    other_meta = ds.item_meta.with_columns(pl.lit("renamed").alias("title"))
    assert compute_snapshot_id(ds.interactions, ds.users, ds.items, other_meta) != first
    assert compute_snapshot_id(ds.interactions, ds.users, ds.items, ds.item_meta) == first


def test_split_snapshot_ids_equal_hashing_each_part(ds: Dataset) -> None:
    for method, params in [("random", {"seed": 3}), ("temporal-global", {})]:
        data = ds if method == "random" else ds.with_interactions(ds.interactions.drop_nulls("timestamp"))
        split = make_split(data, method, test_fraction=0.2, validation_fraction=0.1, **params)
        assert split.meta["parent_snapshot_id"] == compute_snapshot_id(
            data.interactions, data.users, data.items, data.item_meta
        )
        for part in split.parts().values():
            assert part.snapshot_id == compute_snapshot_id(part.interactions, part.users, part.items, part.item_meta)


def test_dedupe_without_repeats_equals_the_sorting_path(ds: Dataset) -> None:
    out = dedupe(ds, "latest")
    assert out.interactions.height == ds.interactions.height
    # what the general path keeps: the last row of each (user, item) run after sorting by pair, time, row
    expected = _sorted_by_time(ds.interactions).select(ds.interactions.columns)
    assert out.interactions.equals(expected)
    assert out.meta["preparation"][-1] == {
        "step": "dedupe",
        "keep": "latest",
        "rows_before": ds.n_interactions,
        "rows_after": ds.n_interactions,
        "rows_merged": 0,
    }
    ds.__dict__.pop("snapshot_id", None)
    assert dedupe(ds, "sum").snapshot_id == ds.snapshot_id  # carried over once known, and right
    fresh = dedupe(ds, "mean")
    fresh.__dict__.pop("snapshot_id", None)
    assert fresh.snapshot_id == ds.snapshot_id
    # with repeats the general path runs: one row per pair
    repeated = ds.with_interactions(pl.concat([ds.interactions, ds.interactions.head(50)]))
    assert dedupe(repeated, "latest").interactions.height == ds.interactions.height


def test_order_by_packed_key_equals_the_multi_column_sort(ds: Dataset) -> None:
    inter = ds.interactions
    key = pl.Series(_pair_hash(inter["user_idx"].to_numpy(), inter["item_idx"].to_numpy(), 9))
    frame = pl.DataFrame([inter["user_idx"], key.alias("_k0")])
    expected = frame.select(pl.arg_sort_by(frame.columns, maintain_order=True)).to_series().to_numpy()
    np.testing.assert_array_equal(_order(ds, [key]), expected)
    # repeated keys (a repeated pair) fall back to the multi-column sort and its row order
    twice = ds.with_interactions(pl.concat([inter, inter.head(30)]))
    key2 = pl.Series(
        _pair_hash(twice.interactions["user_idx"].to_numpy(), twice.interactions["item_idx"].to_numpy(), 9)
    )
    frame2 = pl.DataFrame([twice.interactions["user_idx"], key2.alias("_k0")])
    expected2 = frame2.select(pl.arg_sort_by(frame2.columns, maintain_order=True)).to_series().to_numpy()
    np.testing.assert_array_equal(_order(twice, [key2]), expected2)
