"""Atomic writes and saving/loading datasets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from tastebud.data.dataset import Dataset
from tastebud.data.io import atomic_dir, atomic_write_bytes, atomic_write_text, load_dataset, save_dataset
from tastebud.errors import DatasetNotFoundError, DataValidationError


@pytest.fixture
def dataset() -> Dataset:
    rng = np.random.default_rng(3)
    n = 500
    frame = pl.DataFrame(
        {
            "user_id": [f"u{i}" for i in rng.integers(0, 40, n)],
            "item_id": [f"i{i}" for i in rng.integers(0, 60, n)],
            "rating": rng.integers(1, 6, n).astype(float),
            "timestamp": rng.integers(1_500_000_000, 1_600_000_000, n),
        }
    )
    items = pl.DataFrame(
        {
            "item_id": [f"i{i}" for i in range(70)],  # 10 catalog items nobody rated
            "title": [f"Film ñ {i}" for i in range(70)],
            "year": [1950 + i if i % 3 else None for i in range(70)],
            "genres": [["Drama"] if i % 2 else ["Comedy", "Drama"] for i in range(70)],
        }
    )
    return Dataset.from_frame(frame, items=items, name="toy", meta={"source": "test", "steps": [{"k": 2}]})


def test_save_load_round_trip_is_identical(tmp_path: Path, dataset: Dataset) -> None:
    save_dataset(dataset, tmp_path / "ds")
    loaded = load_dataset(tmp_path / "ds")
    assert loaded.snapshot_id == dataset.snapshot_id
    assert loaded.users == dataset.users and loaded.items == dataset.items
    assert loaded.interactions.equals(dataset.interactions)
    assert loaded.interactions.schema == dataset.interactions.schema
    assert loaded.item_meta.equals(dataset.item_meta)
    assert (loaded.name, loaded.meta) == ("toy", dataset.meta)
    assert (loaded.matrix("rating") != dataset.matrix("rating")).nnz == 0
    info = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    assert info["snapshot_id"] == dataset.snapshot_id and info["n_items"] == 70


def test_round_trip_without_metadata_or_ratings(tmp_path: Path) -> None:
    ds = Dataset.from_frame(pl.DataFrame({"user_id": [1, 2], "item_id": [5, 5]}), name="bare")
    save_dataset(ds, tmp_path / "bare")
    loaded = load_dataset(tmp_path / "bare")
    assert loaded.snapshot_id == ds.snapshot_id and not loaded.has_ratings


def test_load_detects_tampering(tmp_path: Path, dataset: Dataset) -> None:
    save_dataset(dataset, tmp_path / "ds")
    inter = pl.read_parquet(tmp_path / "ds" / "interactions.parquet")
    inter.with_columns(pl.col("rating") + 1).write_parquet(tmp_path / "ds" / "interactions.parquet")
    with pytest.raises(DataValidationError, match="does not match its snapshot id"):
        load_dataset(tmp_path / "ds")
    trusted = load_dataset(tmp_path / "ds", verify=False)
    assert trusted.snapshot_id == dataset.snapshot_id  # trusted, not recomputed


def test_load_errors(tmp_path: Path, dataset: Dataset) -> None:
    with pytest.raises(DatasetNotFoundError, match="not a saved dataset"):
        load_dataset(tmp_path)
    save_dataset(dataset, tmp_path / "ds")
    (tmp_path / "ds" / "items.json").write_text("[not json")
    with pytest.raises(DataValidationError, match=r"items\.json: not valid JSON"):
        load_dataset(tmp_path / "ds")
    save_dataset(dataset, tmp_path / "ds")
    (tmp_path / "ds" / "item_meta.parquet").unlink()
    with pytest.raises(DataValidationError, match=r"item_meta\.parquet: missing file"):
        load_dataset(tmp_path / "ds")


def test_save_replaces_an_existing_directory_atomically(tmp_path: Path, dataset: Dataset) -> None:
    target = tmp_path / "ds"
    save_dataset(Dataset.from_frame(pl.DataFrame({"user_id": [1], "item_id": [1]})), target)
    save_dataset(dataset, target)
    assert load_dataset(target).snapshot_id == dataset.snapshot_id
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no temporary or old directories left


def test_atomic_dir_leaves_nothing_on_failure_and_keeps_the_old(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("first")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("second")
        raise RuntimeError("boom")
    assert (target / "a.txt").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_write_bytes_and_text(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "f.bin"
    atomic_write_bytes(path, b"\x00\x01")
    atomic_write_text(path.with_suffix(".txt"), "héllo")
    assert path.read_bytes() == b"\x00\x01"
    assert path.with_suffix(".txt").read_text(encoding="utf-8") == "héllo"
    atomic_write_text(path.with_suffix(".txt"), "again")
    assert path.with_suffix(".txt").read_text() == "again"
    assert sorted(p.name for p in path.parent.iterdir()) == ["f.bin", "f.txt"]


def test_meta_that_is_not_json_is_refused_before_writing(tmp_path: Path, dataset: Dataset) -> None:
    dataset.meta["bad"] = object()
    with pytest.raises(DataValidationError, match="not JSON-serialisable"):
        save_dataset(dataset, tmp_path / "ds")
    assert not (tmp_path / "ds").exists()
