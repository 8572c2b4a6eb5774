"""Tests of train/validation/test splits."""

from __future__ import annotations

import datetime as dt
import warnings

import numpy as np
import polars as pl
import pytest

from tastebud.data.dataset import Dataset
from tastebud.data.split import Split, make_split, split_leave_last_out, split_random, split_temporal_global
from tastebud.errors import DataWarning, ParameterError, SplitError

METHODS = ["random", "temporal-user", "temporal-global", "leave-last-out"]


def _dataset(seed: int = 0, n_users: int = 120, n_items: int = 80) -> Dataset:
    """Distinct pairs; user k has 1 + k % 15 interactions, so some users have too few to split."""
    rng = np.random.default_rng(seed)
    users, items = [], []
    for u in range(n_users):  # small fixture: a loop over users is clearest
        n = 1 + u % 15
        users += [u] * n
        items += rng.choice(n_items, n, replace=False).tolist()
    n = len(users)
    frame = pl.DataFrame(
        {
            "user_id": [f"u{u}" for u in users],
            "item_id": [f"i{i}" for i in items],
            "rating": rng.integers(1, 6, n).astype(float),
            # Coarse times so that ties occur.
            "timestamp": rng.integers(0, 50, n) * 1000 + 1_600_000_000,
        }
    )
    return Dataset.from_frame(frame, name="toy")


@pytest.fixture(scope="module")
def ds() -> Dataset:
    return _dataset()


def _pairs(part: Dataset) -> set[tuple[int, int]]:
    inter = part.interactions
    return set(zip(inter["user_idx"].to_list(), inter["item_idx"].to_list(), strict=True))


def _params(method: str) -> dict:
    return {"validation": True} if method == "leave-last-out" else {"validation_fraction": 0.1}


@pytest.mark.parametrize("method", METHODS)
def test_parts_partition_the_data_without_leakage(ds: Dataset, method: str) -> None:
    split = make_split(ds, method, **_params(method))
    parts = split.parts()
    assert list(parts) == ["train", "validation", "test"]
    for part in parts.values():
        assert part.shape == ds.shape and part.users == ds.users and part.items == ds.items
        assert part.n_interactions > 0
    train, val, test = (_pairs(p) for p in parts.values())
    assert not train & test and not train & val and not val & test
    assert train | val | test == _pairs(ds)
    assert split.meta["counts"] == {name: p.n_interactions for name, p in parts.items()}
    assert sum(split.meta["counts"].values()) == ds.n_interactions
    assert split.meta["parent_snapshot_id"] == ds.snapshot_id and split.meta["method"] == method
    ids = {p.snapshot_id for p in parts.values()}
    assert len(ids) == 3 and ds.snapshot_id not in ids


def test_random_is_deterministic_for_a_seed_and_varies_across_seeds(ds: Dataset) -> None:
    a, b, c = split_random(ds, seed=1), split_random(ds, seed=1), split_random(ds, seed=2)
    assert a.snapshot_id == b.snapshot_id and _pairs(a.test) == _pairs(b.test)
    assert a.snapshot_id != c.snapshot_id and _pairs(a.test) != _pairs(c.test)
    assert a.meta["seed"] == 1


def test_random_split_does_not_depend_on_row_order(ds: Dataset) -> None:
    shuffled = ds.with_interactions(ds.interactions.sample(fraction=1.0, shuffle=True, seed=3))
    assert split_random(ds, seed=5).snapshot_id == split_random(shuffled, seed=5).snapshot_id


@pytest.mark.parametrize("method", ["random", "temporal-user"])
def test_per_user_fractions(ds: Dataset, method: str) -> None:
    split = make_split(ds, method, test_fraction=0.25, validation_fraction=0.2, min_user_interactions=4)
    counts = np.bincount(ds.interactions["user_idx"].to_numpy(), minlength=ds.n_users)
    n_test = np.bincount(split.test.interactions["user_idx"].to_numpy(), minlength=ds.n_users)
    n_val = np.bincount(split.validation.interactions["user_idx"].to_numpy(), minlength=ds.n_users)
    eligible = counts >= 4
    expected_test = np.minimum(np.maximum(1, np.floor(0.25 * counts + 0.5)), counts - 1)
    expected_val = np.minimum(np.maximum(1, np.floor(0.2 * counts + 0.5)), counts - expected_test - 1)
    np.testing.assert_array_equal(n_test[eligible], expected_test[eligible])
    np.testing.assert_array_equal(n_val[eligible], expected_val[eligible])
    assert not n_test[~eligible].any() and not n_val[~eligible].any()
    assert split.meta["users_too_few"] == int((~eligible & (counts > 0)).sum())


def test_users_with_too_few_interactions_stay_in_train(ds: Dataset) -> None:
    split = split_random(ds, min_user_interactions=5)
    counts = np.bincount(ds.interactions["user_idx"].to_numpy(), minlength=ds.n_users)
    few = np.flatnonzero(counts < 5)
    assert split.meta["users_too_few"] == len(few) == 32
    examples = split.meta["users_too_few_examples"]
    assert len(examples) == 20 and set(examples) <= set(ds.users.ids[few])
    held = np.concatenate([p.interactions["user_idx"].to_numpy() for p in (split.test,)])
    assert not np.isin(held, few).any()


def test_temporal_user_test_is_after_train(ds: Dataset) -> None:
    split = make_split(ds, "temporal-user", validation_fraction=0.1)
    latest_train = split.train.interactions.group_by("user_idx").agg(pl.col("timestamp").max().alias("t_train"))
    for later in (split.validation, split.test):
        first = later.interactions.group_by("user_idx").agg(pl.col("timestamp").min().alias("t_later"))
        joined = first.join(latest_train, on="user_idx")
        assert joined.height == first.height
        assert (joined["t_later"] >= joined["t_train"]).all()
    val_last = split.validation.interactions.group_by("user_idx").agg(pl.col("timestamp").max().alias("v"))
    test_first = split.test.interactions.group_by("user_idx").agg(pl.col("timestamp").min().alias("t"))
    both = val_last.join(test_first, on="user_idx")
    assert (both["t"] >= both["v"]).all()


def test_leave_last_out_picks_the_last(ds: Dataset) -> None:
    split = split_leave_last_out(ds, validation=True, min_user_interactions=3)
    inter = ds.interactions
    latest = inter.group_by("user_idx").agg(pl.col("timestamp").max(), pl.len().alias("n"))
    test = split.test.interactions
    assert test.height == latest.filter(pl.col("n") >= 3).height
    assert test["user_idx"].n_unique() == test.height
    joined = test.join(latest, on="user_idx", suffix="_max")
    assert (joined["timestamp"] == joined["timestamp_max"]).all()
    val = split.validation.interactions.join(test, on="user_idx", suffix="_test")
    assert val.height == test.height and (val["timestamp"] <= val["timestamp_test"]).all()
    assert split.meta["users_too_few"] == int((latest["n"] < 3).sum())
    # Deterministic tie-breaking.
    assert split_leave_last_out(ds).snapshot_id == split.snapshot_id


def test_leave_last_out_without_validation() -> None:
    split = split_leave_last_out(_dataset(1), validation=False, min_user_interactions=2)
    assert split.validation is None and "validation" not in split.meta["counts"]


def test_temporal_global_quantile_and_cold_users(ds: Dataset) -> None:
    split = split_temporal_global(ds, test_fraction=0.3)
    cut = split.meta["cut"]
    assert split.train.interactions["timestamp"].max() < cut <= split.test.interactions["timestamp"].min()
    share = split.test.n_interactions / ds.n_interactions
    assert 0.3 <= share < 0.4  # ties at the cut go to test
    train_users = set(split.train.interactions["user_idx"].to_list())
    cold = set(split.test.interactions["user_idx"].to_list()) - train_users
    assert split.meta["cold_users"] == len(cold)
    assert set(split.meta["cold_users_examples"]) <= set(ds.users.ids[list(cold)])


@pytest.mark.parametrize(
    "cut",
    [
        1_600_025_000,
        1_600_025_000.0,
        "1600025000",
        "2020-09-13T19:23:20Z",
        "2020-09-13T19:23:20+00:00",
        dt.datetime(2020, 9, 13, 19, 23, 20),
        dt.datetime(2020, 9, 13, 21, 23, 20, tzinfo=dt.timezone(dt.timedelta(hours=2))),
    ],
)
def test_temporal_global_cut_forms(ds: Dataset, cut: object) -> None:
    split = split_temporal_global(ds, cut=cut)
    assert split.meta["cut"] == 1_600_025_000
    assert split.train.interactions["timestamp"].max() < 1_600_025_000
    assert split.test.interactions["timestamp"].min() >= 1_600_025_000


def test_temporal_global_date_cut() -> None:
    frame = pl.DataFrame(
        {"user_id": [1, 1, 2, 2], "item_id": [1, 2, 1, 3], "timestamp": ["2021-01-01", "2021-03-01"] * 2}
    )
    split = split_temporal_global(Dataset.from_frame(frame), cut=dt.date(2021, 2, 1))
    assert split.meta["counts"] == {"train": 2, "test": 2}
    assert split.meta["cold_users"] == 0 and split.meta["cold_items"] == 2


@pytest.mark.parametrize("cut", [0, 10**12])
def test_temporal_global_cut_outside_data_is_an_error(ds: Dataset, cut: int) -> None:
    with pytest.raises(SplitError, match="empty"):
        split_temporal_global(ds, cut=cut)


def test_temporal_splits_need_timestamps() -> None:
    frame = pl.DataFrame({"user_id": [1, 1, 1, 2, 2, 2], "item_id": [1, 2, 3, 1, 2, 3]})
    ds = Dataset.from_frame(frame)
    for method in ("temporal-user", "temporal-global", "leave-last-out"):
        with pytest.raises(SplitError, match="needs timestamps"):
            make_split(ds, method)
    assert make_split(ds, "random", seed=0).test.n_interactions == 2


@pytest.mark.parametrize(
    ("method", "params", "match"),
    [
        ("shuffle", {}, "unknown split method 'shuffle'"),
        ("random", {"test_fraction": 0.0}, "test_fraction"),
        ("random", {"test_fraction": 1.2}, "test_fraction"),
        ("random", {"validation_fraction": -0.1}, "validation_fraction"),
        ("random", {"test_fraction": 0.6, "validation_fraction": 0.4}, "below 1"),
        ("random", {"min_user_interactions": 1}, "min_user_interactions"),
        ("random", {"cut": 5}, "unknown parameter"),
        ("temporal-global", {"cut": "not a date"}, "ISO-8601"),
        ("leave-last-out", {"min_user_interactions": 2}, ">= 3"),
    ],
)
def test_bad_parameters(ds: Dataset, method: str, params: dict, match: str) -> None:
    with pytest.raises(ParameterError, match=match):
        make_split(ds, method, **params)


def test_empty_part_is_a_split_error() -> None:
    frame = pl.DataFrame({"user_id": [1, 2, 3], "item_id": [1, 2, 3], "timestamp": [1, 2, 3]})
    ds = Dataset.from_frame(frame)
    with pytest.raises(SplitError, match="test part empty"):
        make_split(ds, "random")  # every user has one interaction: nothing to hold out
    with pytest.raises(SplitError, match="validation"):
        make_split(ds, "temporal-global", test_fraction=0.3, validation_fraction=0.6)


def test_repeated_pairs_never_leak() -> None:
    frame = pl.DataFrame(
        {
            "user_id": [1] * 6 + [2] * 4,
            "item_id": [1, 2, 1, 3, 4, 1, 2, 1, 3, 2],
            "timestamp": list(range(10)),
        }
    )
    ds = Dataset.from_frame(frame)
    for method in ("temporal-user", "temporal-global", "leave-last-out"):
        # Each user's latest pick repeats an earlier one: the earlier copies must go.
        with pytest.warns(DataWarning, match="repeats"):
            split = make_split(ds, method, **({"test_fraction": 0.5} if method != "leave-last-out" else {}))
        assert not _pairs(split.train) & _pairs(split.test), method
        assert split.meta["duplicate_rows_dropped"] > 0
    moved = 0
    for seed in range(20):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DataWarning)
            split = split_random(ds, test_fraction=0.5, seed=seed)
        assert not _pairs(split.train) & _pairs(split.test)
        assert split.train.n_interactions + split.test.n_interactions == ds.n_interactions
        moved += split.meta.get("duplicate_rows_moved", 0)
    assert moved > 0  # some seeds did cut through a repeated pair


def test_describe_and_snapshot_id(ds: Dataset) -> None:
    split = split_random(ds, validation_fraction=0.1, seed=3)
    info = split.describe()
    assert info["snapshot_id"] == split.snapshot_id and info["method"] == "random"
    assert info["shape"] == [ds.n_users, ds.n_items]
    assert info["parts"]["test"]["interactions"] == split.test.n_interactions
    assert info["parts"]["train"]["users"] == split.train.interactions["user_idx"].n_unique()
    assert info["params"]["validation_fraction"] == 0.1
    other = Split(train=split.train, test=split.validation, validation=split.test)
    assert other.snapshot_id != split.snapshot_id
