"""Tests of the synthetic data generator."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest

from tastebud.data import synthetic
from tastebud.data.split import split_random
from tastebud.data.synthetic import GENRE_NAMES, generate_synthetic, planted_clusters, synthetic_frames
from tastebud.errors import DataValidationError, ParameterError


@pytest.fixture(scope="module")
def explicit() -> tuple[pl.DataFrame, pl.DataFrame]:
    return synthetic_frames(4000, 2000, 60_000, seed=7)


@pytest.fixture(scope="module")
def dataset():
    return generate_synthetic(3000, 1500, 50_000, seed=11, n_factors=6)


def test_sizes_are_exact(explicit: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    inter, items = explicit
    assert inter.height == 60_000
    assert inter["user_id"].n_unique() == 4000
    assert items.height == 2000 and items["item_id"].to_list() == list(range(1, 2001))
    assert inter.select(pl.struct("user_id", "item_id").n_unique()).item() == 60_000
    assert inter["item_id"].is_in(items["item_id"].implode()).all()


def test_dataset_has_requested_shape(dataset) -> None:
    assert dataset.shape == (3000, 1500) and dataset.n_interactions == 50_000
    assert dataset.meta["synthetic"]["n_factors"] == 6 and dataset.meta["synthetic"]["seed"] == 11


def test_item_popularity_is_heavy_tailed(explicit: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    inter, _ = explicit
    counts = np.sort(inter["item_id"].value_counts()["count"].to_numpy())[::-1]
    top1 = counts[:20].sum() / counts.sum()  # top 1% of 2000 items
    assert top1 > 0.12  # uniform popularity would give 0.01
    flat, _ = synthetic_frames(4000, 2000, 60_000, seed=7, popularity_exponent=0.0)
    flat_counts = np.sort(flat["item_id"].value_counts()["count"].to_numpy())[::-1]
    assert flat_counts[:20].sum() / flat_counts.sum() < top1 / 3


def test_user_activity_is_heavy_tailed(explicit: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    inter, _ = explicit
    per_user = inter["user_id"].value_counts()["count"].to_numpy()
    assert per_user.min() >= 1 and per_user.max() <= 1000  # at most half the catalog
    assert per_user.max() > 8 * np.median(per_user)
    assert np.sort(per_user)[::-1][:400].sum() / per_user.sum() > 0.3  # top 10% of users


def test_same_seed_same_data_other_seed_other_data() -> None:
    a = synthetic_frames(300, 200, 4000, seed=1)
    b = synthetic_frames(300, 200, 4000, seed=1)
    c = synthetic_frames(300, 200, 4000, seed=2)
    assert a[0].equals(b[0]) and a[1].equals(b[1])
    assert not a[0].equals(c[0])
    assert (
        generate_synthetic(300, 200, 4000, seed=1).snapshot_id == generate_synthetic(300, 200, 4000, seed=1).snapshot_id
    )


@pytest.mark.parametrize(("half", "allowed"), [(False, np.arange(1, 6)), (True, np.arange(2, 11) / 2)])
def test_ratings_are_stars_between_one_and_five(half: bool, allowed: np.ndarray) -> None:
    inter, _ = synthetic_frames(500, 300, 8000, seed=3, half_stars=half)
    ratings = inter["rating"].to_numpy()
    assert set(np.unique(ratings)) <= set(allowed.tolist())
    assert len(np.unique(ratings)) >= len(allowed) - 1  # the scale is used, not one value
    assert "value" not in inter.columns


def test_implicit_play_counts_are_heavy_tailed_integers() -> None:
    inter, _ = synthetic_frames(500, 300, 8000, kind="implicit", seed=3)
    plays = inter["value"].to_numpy()
    assert "rating" not in inter.columns
    assert plays.min() >= 1 and np.array_equal(plays, np.floor(plays))
    assert np.percentile(plays, 99) > 10 * np.median(plays)


def test_timestamps_fall_in_the_period() -> None:
    inter, _ = synthetic_frames(200, 100, 2000, seed=4, start="2021-06-01", days=30)
    begin = int(dt.datetime(2021, 6, 1, tzinfo=dt.UTC).timestamp())
    stamps = inter["timestamp"].to_numpy()
    assert stamps.min() >= begin and stamps.max() < begin + 30 * 86_400
    assert len(np.unique(stamps)) > 1900


def test_users_mostly_pick_their_cluster(dataset) -> None:
    user_cluster, item_cluster = planted_clusters(dataset)
    users = dataset.interactions["user_idx"].to_numpy()
    items = dataset.interactions["item_idx"].to_numpy()
    same = user_cluster[users] == item_cluster[items]
    assert same.mean() > 0.5  # chance would be 1/6
    # The planted cluster is recoverable as each user's most frequent item cluster.
    votes = np.zeros((dataset.n_users, 6))
    np.add.at(votes, (users, item_cluster[items]), 1)
    assert (votes.argmax(axis=1) == user_cluster).mean() > 0.9


def test_ratings_follow_affinity(dataset) -> None:
    user_cluster, item_cluster = planted_clusters(dataset)
    inter = dataset.interactions
    same = user_cluster[inter["user_idx"].to_numpy()] == item_cluster[inter["item_idx"].to_numpy()]
    ratings = inter["rating"].to_numpy()
    assert ratings[same].mean() > ratings[~same].mean() + 0.5


def test_genres_and_titles_follow_clusters(explicit: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    _, items = explicit
    first = items["genres"].list.first().to_list()
    clusters = items["cluster"].to_list()
    assert all(g == GENRE_NAMES[c % 12] for g, c in zip(first, clusters, strict=True))
    adjectives = items["title"].str.split(" ").list.first()
    per_adjective = (
        pl.DataFrame({"adj": adjectives, "cluster": clusters}).group_by("adj").agg(pl.col("cluster").n_unique())
    )
    assert (per_adjective["cluster"] == 1).all()  # each title word belongs to one cluster


def test_planted_clusters_survive_splits(dataset) -> None:
    split = split_random(dataset, seed=0)
    compact = split.test.compact()
    users, items = planted_clusters(compact)
    full_users, full_items = planted_clusters(dataset)
    assert np.array_equal(users, full_users[dataset.user_index(compact.users.ids)])
    assert np.array_equal(items, full_items[dataset.item_index(compact.items.ids)])


def test_planted_clusters_need_synthetic_meta(dataset) -> None:
    plain = dataset.with_interactions(dataset.interactions)
    plain.meta.pop("synthetic")
    with pytest.raises(DataValidationError, match="generate_synthetic"):
        planted_clusters(plain)


def test_dense_small_catalog_is_filled_exactly() -> None:
    inter, _ = synthetic_frames(50, 20, 480, seed=5)  # 48% density: heavy users hit the cap of 10
    assert inter.height == 480
    assert inter.select(pl.struct("user_id", "item_id").n_unique()).item() == 480
    assert inter["user_id"].value_counts()["count"].max() <= 10


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((10, 10, 5), {}, "below n_users"),
        ((10, 10, 60), {}, "do not fit"),
        ((0, 10, 5), {}, "n_users"),
        ((10, 10, 20), {"kind": "ratings"}, "kind"),
        ((10, 10, 20), {"n_factors": 11}, "n_factors"),
        ((10, 10, 20), {"popularity_exponent": -1.0}, "popularity_exponent"),
    ],
)
def test_bad_parameters(args: tuple, kwargs: dict, match: str) -> None:
    with pytest.raises(ParameterError, match=match):
        synthetic_frames(*args, **kwargs)


@pytest.mark.slow
def test_large_generation_is_fast() -> None:
    import time

    begin = time.perf_counter()
    inter, _ = synthetic_frames(40_000, 20_000, 2_000_000, seed=0)
    elapsed = time.perf_counter() - begin
    assert inter.height == 2_000_000
    assert elapsed < 20  # about 2 s on a laptop core; 25M rows take under 30 s


def test_exact_fill_when_sampling_rounds_run_out(monkeypatch: pytest.MonkeyPatch) -> None:
    # With no sampling rounds every user is filled by the exact fallback, which must give the same guarantees.
    monkeypatch.setattr(synthetic, "_MAX_ROUNDS", 0)
    inter, _ = synthetic_frames(40, 30, 400, seed=6)
    assert inter.height == 400
    assert inter.select(pl.struct("user_id", "item_id").n_unique()).item() == 400
    assert inter["user_id"].n_unique() == 40 and inter["item_id"].max() <= 30
