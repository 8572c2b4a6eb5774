"""Tests of Dataset construction, IdMap and snapshot ids."""

from __future__ import annotations

import numpy as np
import pandas as pd
import polars as pl
import pytest

from tastebud.data.dataset import Dataset, IdMap
from tastebud.errors import DataValidationError, UnknownItemError, UnknownUserError


def _frame(seed: int = 0, n: int = 200) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    users = rng.integers(1, 30, n)
    items = rng.integers(1, 50, n)
    frame = pl.DataFrame({"user_id": users, "item_id": items}).unique(maintain_order=True)
    m = frame.height
    return frame.with_columns(
        pl.Series("rating", rng.integers(1, 6, m).astype(float)),
        pl.Series("timestamp", rng.integers(1_500_000_000, 1_600_000_000, m)),
    )


def _items() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "item_id": [1, 2, 3, 99],
            "title": ["One", "Two", "Three", "Unseen"],
            "year": [1999, 2000, 2001, 2010],
            "genres": ["Drama|Comedy", "Action", "", "Horror"],
        }
    )


@pytest.fixture
def frame() -> pl.DataFrame:
    return _frame()


def test_from_polars_and_pandas_agree(frame: pl.DataFrame) -> None:
    a = Dataset.from_frame(frame)
    b = Dataset.from_frame(frame.to_pandas())
    assert a.users == b.users and a.items == b.items
    assert a.snapshot_id == b.snapshot_id
    assert a.interactions.equals(b.interactions)


def test_ids_are_strings_and_sorted(frame: pl.DataFrame) -> None:
    ds = Dataset.from_frame(frame)
    assert all(isinstance(x, str) for x in ds.users.ids)
    assert list(ds.users.ids) == sorted(ds.users.ids)
    assert ds.items.ids.tolist() == sorted(str(x) for x in frame["item_id"].unique().to_list())


def test_int_and_string_ids_give_same_vocabulary(frame: pl.DataFrame) -> None:
    as_int = Dataset.from_frame(frame)
    as_str = Dataset.from_frame(frame.with_columns(pl.col("user_id", "item_id").cast(pl.String)))
    as_float = Dataset.from_frame(frame.to_pandas().astype({"user_id": float, "item_id": float}))
    assert as_int.users == as_str.users == as_float.users
    assert as_int.items == as_str.items == as_float.items
    assert as_int.snapshot_id == as_str.snapshot_id == as_float.snapshot_id


def test_to_frame_round_trips_external_ids(frame: pl.DataFrame) -> None:
    ds = Dataset.from_frame(frame)
    back = ds.to_frame().sort("user_id", "item_id")
    expected = frame.with_columns(pl.col("user_id", "item_id").cast(pl.String)).sort("user_id", "item_id")
    assert back["user_id"].to_list() == expected["user_id"].to_list()
    assert back["item_id"].to_list() == expected["item_id"].to_list()
    assert back["rating"].to_list() == expected["rating"].cast(pl.Float32).to_list()


def test_item_catalog_joins_vocabulary() -> None:
    frame = pl.DataFrame({"user_id": ["a", "b"], "item_id": [1, 2]})
    ds = Dataset.from_frame(frame, items=_items())
    assert "99" in ds.items and "3" in ds.items
    assert ds.n_items == 4 and ds.n_interactions == 2
    row = ds.item_meta.row(int(ds.item_index(["1"])[0]), named=True)
    assert row["title"] == "One" and row["genres"] == ["Drama", "Comedy"]
    assert ds.item_meta["item_id"].to_list() == ds.items.to_list()
    assert ds.item_genres()[int(ds.item_index(["3"])[0])] == []


def test_idmap_index_and_unknown_ids() -> None:
    ids = IdMap(["a", "b", "c"])
    assert ids.index(["c", "a"], kind="user").tolist() == [2, 0]
    assert ids.get("zz") == -1 and "b" in ids
    with pytest.raises(UnknownUserError, match="'zz'"):
        ids.index(["a", "zz"], kind="user")
    with pytest.raises(UnknownItemError, match="'q'"):
        ids.index(["q"], kind="item")


def test_datetime_timestamps_become_epoch_seconds() -> None:
    pdf = pd.DataFrame(
        {"user_id": [1, 2], "item_id": [1, 1], "timestamp": pd.to_datetime(["2020-01-01", "2020-01-02"])}
    )
    ds = Dataset.from_frame(pdf)
    assert sorted(ds.interactions["timestamp"].to_list()) == [1577836800, 1577923200]
    iso = Dataset.from_frame(pl.DataFrame({"user_id": [1], "item_id": [1], "timestamp": ["2020-01-01T00:00:00Z"]}))
    assert iso.interactions["timestamp"].to_list() == [1577836800]


@pytest.mark.parametrize(
    ("frame", "match"),
    [
        (pl.DataFrame({"user_id": [1]}), "item_id"),
        (
            pl.DataFrame({"user_id": [1], "item_id": [1], "rating": ["x"]}),
            "row 1: rating 'x' is not a number",
        ),
        (pl.DataFrame({"user_id": [1, 2], "item_id": [1, 1], "rating": [1.0, -2.0]}), "row 2: rating -2.0"),
        (pl.DataFrame({"user_id": [], "item_id": []}), "empty"),
        (pl.DataFrame({"user_id": [1], "item_id": [1], "timestamp": ["yesterday"]}), "timestamp 'yesterday'"),
    ],
)
def test_bad_frames_are_rejected_with_location(frame: pl.DataFrame, match: str) -> None:
    with pytest.raises(DataValidationError, match=match):
        Dataset.from_frame(frame, source="ratings.csv")


def test_snapshot_is_stable_across_row_order_and_runs(frame: pl.DataFrame) -> None:
    a = Dataset.from_frame(frame, items=_items())
    shuffled = frame.sample(fraction=1.0, shuffle=True, seed=7)
    b = Dataset.from_frame(shuffled, items=_items().reverse())
    assert a.snapshot_id == b.snapshot_id
    assert len(a.snapshot_id) == 16 and int(a.snapshot_id, 16) >= 0
    # A fresh build of the same data (a "second run") gives the same id.
    assert Dataset.from_frame(_frame(), items=_items()).snapshot_id == a.snapshot_id


def test_snapshot_differs_across_data(frame: pl.DataFrame) -> None:
    assert Dataset.from_frame(frame).snapshot_id != Dataset.from_frame(_frame(seed=1)).snapshot_id


def _changed(frame: pl.DataFrame, column: str, value: object) -> pl.DataFrame:
    return frame.with_columns(
        pl.when(pl.int_range(pl.len()) == 5).then(pl.lit(value)).otherwise(pl.col(column)).alias(column)
    )


@pytest.mark.parametrize(
    ("column", "value"),
    [("user_id", 1000), ("item_id", 1000), ("rating", 0.5), ("timestamp", 1), ("value", 3.0)],
)
def test_snapshot_changes_with_any_field(frame: pl.DataFrame, column: str, value: object) -> None:
    base = frame.with_columns(pl.lit(1.0).alias("value"))
    before = Dataset.from_frame(base, items=_items())
    after = Dataset.from_frame(_changed(base, column, value), items=_items())
    assert before.snapshot_id != after.snapshot_id


def test_snapshot_changes_with_a_moved_interaction(frame: pl.DataFrame) -> None:
    # Same vocabulary, same multiset of values: only which user has which item differs.
    ds = Dataset.from_frame(frame)
    inter = ds.interactions
    swapped = inter.with_columns(pl.col("item_idx").shift(1, fill_value=inter["item_idx"][-1]))
    assert ds.with_interactions(swapped).snapshot_id != ds.snapshot_id


@pytest.mark.parametrize(("column", "value"), [("title", "Changed"), ("year", 1800), ("genres", "Western")])
def test_snapshot_changes_with_metadata(frame: pl.DataFrame, column: str, value: object) -> None:
    items = _items()
    changed = items.with_columns(
        pl.when(pl.col("item_id") == 2).then(pl.lit(value)).otherwise(pl.col(column)).alias(column)
    )
    assert Dataset.from_frame(frame, items=items).snapshot_id != Dataset.from_frame(frame, items=changed).snapshot_id


def test_snapshot_changes_with_an_unused_catalog_item(frame: pl.DataFrame) -> None:
    items = _items()
    more = pl.concat([items, pl.DataFrame({"item_id": [12345], "title": ["New"], "year": [2020], "genres": [""]})])
    assert Dataset.from_frame(frame, items=items).snapshot_id != Dataset.from_frame(frame, items=more).snapshot_id


def test_matrix_shapes_and_values(frame: pl.DataFrame) -> None:
    ds = Dataset.from_frame(frame)
    rating = ds.matrix("rating")
    assert rating.shape == ds.shape
    assert rating.nnz == ds.n_interactions
    u, i = int(ds.interactions["user_idx"][0]), int(ds.interactions["item_idx"][0])
    assert rating[u, i] == pytest.approx(float(ds.interactions["rating"][0]))
    assert set(np.unique(ds.user_item.data)) == {1.0}


def test_with_interactions_keeps_vocabulary_and_compact_drops_unused(frame: pl.DataFrame) -> None:
    ds = Dataset.from_frame(frame, items=_items())
    sub = ds.with_interactions(ds.interactions.head(10), note="head")
    assert sub.shape == ds.shape and sub.meta["note"] == "head" and "note" not in ds.meta
    small = sub.compact()
    assert small.n_interactions == 10
    assert small.n_users == sub.interactions["user_idx"].n_unique()
    assert small.n_items == sub.interactions["item_idx"].n_unique()
    assert small.item_meta["item_id"].to_list() == small.items.to_list()
    assert sorted(small.to_frame().rows()) == sorted(sub.to_frame().rows())
