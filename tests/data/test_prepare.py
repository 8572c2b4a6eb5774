"""Tests of preparation steps: dedupe, k-core, implicit conversion, confidence and the prepare pipeline."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from tastebud.data.dataset import Dataset
from tastebud.data.prepare import PrepareConfig, apply_confidence, dedupe, kcore, prepare, to_implicit
from tastebud.errors import DataValidationError, ParameterError


@pytest.fixture
def dup() -> Dataset:
    """u1 rated i1 three times (ties at t=20), u2 rated i1 once; u1 rated i2 once."""
    return Dataset.from_frame(
        pl.DataFrame(
            {
                "user_id": ["u1", "u1", "u1", "u2", "u1"],
                "item_id": ["i1", "i1", "i1", "i1", "i2"],
                "rating": [2.0, 4.0, 5.0, 3.0, 1.0],
                "value": [1.0, 2.0, 3.0, 4.0, 5.0],
                "timestamp": [10, 20, 20, 5, 7],
            }
        )
    )


def _row(ds: Dataset, user: str, item: str) -> dict:
    frame = ds.to_frame().filter((pl.col("user_id") == user) & (pl.col("item_id") == item))
    assert frame.height == 1
    return frame.row(0, named=True)


@pytest.mark.parametrize(
    ("keep", "value", "rating", "timestamp"),
    [
        ("latest", 3.0, 5.0, 20),  # tie at t=20: the last row wins
        ("first", 1.0, 2.0, 10),
        ("sum", 6.0, 5.0, 20),
        ("max", 3.0, 5.0, 20),
        ("mean", 2.0, 11.0 / 3.0, 20),
    ],
)
def test_dedupe_modes(dup: Dataset, keep: str, value: float, rating: float, timestamp: int) -> None:
    out = dedupe(dup, keep=keep)
    assert out.n_interactions == 3
    row = _row(out, "u1", "i1")
    assert row["value"] == pytest.approx(value)
    assert row["rating"] == pytest.approx(rating, rel=1e-6)
    assert row["timestamp"] == timestamp
    # Pairs without duplicates are untouched.
    assert _row(out, "u2", "i1")["value"] == 4.0 and _row(out, "u1", "i2")["rating"] == 1.0
    step = out.meta["preparation"][-1]
    assert step == {"step": "dedupe", "keep": keep, "rows_before": 5, "rows_after": 3, "rows_merged": 2}


def test_dedupe_without_timestamps_keeps_last_row() -> None:
    ds = Dataset.from_frame(pl.DataFrame({"user_id": [1, 1, 1], "item_id": [1, 1, 2], "value": [1.0, 7.0, 2.0]}))
    assert _row(dedupe(ds), "1", "1")["value"] == 7.0
    assert _row(dedupe(ds, keep="first"), "1", "1")["value"] == 1.0


def test_steps_do_not_mutate_input(dup: Dataset) -> None:
    before = dup.interactions.clone()
    meta_before = dict(dup.meta)
    out = apply_confidence(kcore(dedupe(dup), 1, 1), alpha=2.0)
    assert dup.interactions.equals(before) and dup.meta == meta_before
    assert [s["step"] for s in out.meta["preparation"]] == ["dedupe", "kcore", "apply_confidence"]
    assert "preparation" not in dup.meta


def test_dedupe_rejects_unknown_mode(dup: Dataset) -> None:
    with pytest.raises(ParameterError, match="unknown keep mode 'median'"):
        dedupe(dup, keep="median")  # type: ignore[arg-type]


def _random_dataset(seed: int, n: int = 3000, n_users: int = 200, n_items: int = 150) -> Dataset:
    rng = np.random.default_rng(seed)
    frame = pl.DataFrame(
        {
            "user_id": rng.zipf(1.6, n) % n_users,
            "item_id": rng.zipf(1.4, n) % n_items,
            "rating": rng.integers(1, 6, n).astype(float),
            "timestamp": rng.integers(0, 10_000, n),
        }
    )
    return Dataset.from_frame(frame)


def _naive_kcore(ds: Dataset, ku: int, ki: int) -> set[tuple[int, int]]:
    rows = list(zip(ds.interactions["user_idx"].to_list(), ds.interactions["item_idx"].to_list(), strict=True))
    while True:
        users: dict[int, int] = {}
        items: dict[int, int] = {}
        for u, i in rows:
            users[u] = users.get(u, 0) + 1
            items[i] = items.get(i, 0) + 1
        kept = [(u, i) for u, i in rows if users[u] >= ku and items[i] >= ki]
        if len(kept) == len(rows):
            return set(kept)
        rows = kept


@pytest.mark.parametrize(("seed", "ku", "ki"), [(0, 5, 5), (1, 3, 10), (2, 10, 2)])
def test_kcore_matches_naive_fixpoint(seed: int, ku: int, ki: int) -> None:
    ds = dedupe(_random_dataset(seed))
    out = kcore(ds, ku, ki)
    got = set(zip(out.interactions["user_idx"].to_list(), out.interactions["item_idx"].to_list(), strict=True))
    assert got == _naive_kcore(ds, ku, ki)
    assert out.shape == ds.shape
    user_counts = np.bincount(out.interactions["user_idx"].to_numpy())
    item_counts = np.bincount(out.interactions["item_idx"].to_numpy())
    assert user_counts[user_counts > 0].min() >= ku and item_counts[item_counts > 0].min() >= ki
    step = out.meta["preparation"][-1]
    assert step["rows_after"] == out.n_interactions and step["rows_before"] == ds.n_interactions


def test_kcore_compact_drops_unused_ids() -> None:
    ds = dedupe(_random_dataset(0))
    out = kcore(ds, 5, 5, compact=True)
    assert out.n_users == out.interactions["user_idx"].n_unique() < ds.n_users
    assert out.n_items == out.interactions["item_idx"].n_unique() < ds.n_items
    assert sorted(out.to_frame().rows()) == sorted(kcore(ds, 5, 5).to_frame().rows())


@pytest.mark.parametrize("bad", [0, -1, 2.5])
def test_kcore_rejects_bad_minimum(bad: object) -> None:
    with pytest.raises(ParameterError, match="min_user_interactions"):
        kcore(_random_dataset(0), bad, 2)  # type: ignore[arg-type]


def test_kcore_that_removes_everything_is_an_error() -> None:
    with pytest.raises(ParameterError, match="lower the minimums"):
        kcore(_random_dataset(0), 10_000, 1)


def test_to_implicit_keeps_ratings_at_or_above_threshold() -> None:
    ds = _random_dataset(3)
    out = to_implicit(ds, threshold=4.0)
    ratings = ds.interactions["rating"].to_numpy()
    assert out.n_interactions == int((ratings >= 4.0).sum())
    assert out.interactions["rating"].min() >= 4.0
    assert out.interactions["value"].unique().to_list() == [1.0]
    step = out.meta["preparation"][-1]
    assert step["rows_dropped_below"] == int((ratings < 4.0).sum())


def test_to_implicit_needs_ratings() -> None:
    ds = Dataset.from_frame(pl.DataFrame({"user_id": [1, 2], "item_id": [1, 1], "value": [3.0, 1.0]}))
    with pytest.raises(DataValidationError, match="no ratings"):
        to_implicit(ds)


@pytest.mark.parametrize("bad", [-1.0, math.inf, math.nan])
def test_to_implicit_rejects_bad_threshold(bad: float) -> None:
    with pytest.raises(ParameterError, match="threshold"):
        to_implicit(_random_dataset(0), threshold=bad)


def test_to_implicit_threshold_above_all_ratings() -> None:
    with pytest.raises(ParameterError, match=">= 6"):
        to_implicit(_random_dataset(0), threshold=6)


@pytest.mark.parametrize(
    ("method", "alpha", "eps", "expected"),
    [
        ("linear", 40.0, 1.0, lambda x: 1 + 40 * x),
        ("linear", 0.0, 1.0, lambda x: np.ones_like(x)),
        ("log", 2.0, 0.5, lambda x: 1 + 2 * np.log1p(x / 0.5)),
    ],
)
def test_apply_confidence(method: str, alpha: float, eps: float, expected) -> None:
    ds = Dataset.from_frame(pl.DataFrame({"user_id": [1, 1, 2], "item_id": [1, 2, 1], "value": [0.0, 1.0, 50.0]}))
    out = apply_confidence(ds, method, alpha=alpha, eps=eps)  # type: ignore[arg-type]
    x = ds.interactions["value"].to_numpy().astype(np.float64)
    np.testing.assert_allclose(out.interactions["value"].to_numpy(), expected(x), rtol=1e-6)
    assert out.meta["preparation"][-1]["method"] == method


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"alpha": -1.0}, "alpha"), ({"eps": 0.0}, "eps"), ({"method": "sqrt"}, "unknown method 'sqrt'")],
)
def test_apply_confidence_rejects_bad_parameters(kwargs: dict, match: str) -> None:
    with pytest.raises(ParameterError, match=match):
        apply_confidence(_random_dataset(0), **kwargs)


def test_prepare_runs_configured_steps_in_order() -> None:
    ds = _random_dataset(4)
    cfg = PrepareConfig(
        dedupe="max",
        implicit_threshold=3.0,
        min_user_interactions=3,
        min_item_interactions=3,
        confidence="log",
    )
    out = prepare(ds, cfg)
    steps = [s["step"] for s in out.meta["preparation"]]
    assert steps == ["dedupe", "to_implicit", "kcore", "apply_confidence"]
    manual = apply_confidence(kcore(to_implicit(dedupe(ds, "max"), 3.0), 3, 3), "log")
    assert out.snapshot_id == manual.snapshot_id
    assert prepare(ds, **cfg.model_dump()).snapshot_id == out.snapshot_id


def test_prepare_defaults_only_dedupe() -> None:
    out = prepare(_random_dataset(5))
    assert [s["step"] for s in out.meta["preparation"]] == ["dedupe"]


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"min_user_interactions": 0}, "min_user_interactions"),
        ({"alpha": -2}, "alpha"),
        ({"dedupe": "median"}, "dedupe"),
        ({"bogus": 1}, "unknown parameter 'bogus'"),
    ],
)
def test_prepare_rejects_bad_parameters(params: dict, match: str) -> None:
    with pytest.raises(ParameterError, match=match):
        prepare(_random_dataset(0), **params)


@pytest.mark.parametrize(("keep", "rating"), [("mean", 4.0), ("max", 4.0), ("sum", None)])
def test_dedupe_aggregates_skip_missing_ratings(keep: str, rating: float | None) -> None:
    frame = pl.DataFrame(
        {
            "user_id": [1, 1, 1, 2],
            "item_id": [1, 1, 1, 1],
            "rating": [4.0, None, None, None],
            "timestamp": [1, 2, 3, 4],
        }
    )
    out = dedupe(Dataset.from_frame(frame), keep=keep)
    assert _row(out, "1", "1")["rating"] == rating  # "sum" keeps the latest rating, which is missing
    assert _row(out, "2", "1")["rating"] is None
    assert _row(out, "1", "1")["timestamp"] == 3


def test_dedupe_of_empty_interactions(dup: Dataset) -> None:
    out = dedupe(dup.with_interactions(dup.interactions.clear()))
    assert out.n_interactions == 0 and out.meta["preparation"][-1]["rows_merged"] == 0
