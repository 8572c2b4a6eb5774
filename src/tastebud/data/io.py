"""Atomic file writes, and saving and loading a :class:`Dataset` as a directory.

A saved dataset is a directory of plain files: ``interactions.parquet`` (internal indices and values),
``item_meta.parquet``, ``users.json`` and ``items.json`` (the vocabularies, by index) and ``dataset.json``
(name, snapshot id, shape and provenance). It is written into a temporary sibling directory and renamed into
place, so a reader never sees a half-written dataset.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl

from tastebud.data.dataset import INTERACTION_SCHEMA, ITEM_COLUMNS, Dataset, IdMap
from tastebud.errors import DatasetNotFoundError, DataValidationError

#: Version of the saved-dataset layout.
DATASET_FORMAT_VERSION = 1
#: Marker file of a saved dataset directory.
DATASET_FILE = "dataset.json"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Build a directory in a temporary sibling and move it to ``path`` only if the block succeeds.

    An existing directory at ``path`` is replaced. On failure the temporary directory is removed and ``path``
    is left as it was.

    Yields:
        the temporary directory to write into.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        # os.rename cannot replace a non-empty directory: move the old one aside, then drop it.
        old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:12]}"
        os.rename(path, old)
    try:
        os.rename(tmp, path)
    except BaseException:
        if old is not None:
            os.rename(old, path)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def save_dataset(dataset: Dataset, directory: Path) -> Path:
    """Save ``dataset`` as a directory (atomically; an existing one is replaced).

    Returns:
        the directory.
    """
    directory = Path(directory)
    info = {
        "format_version": DATASET_FORMAT_VERSION,
        "name": dataset.name,
        "snapshot_id": dataset.snapshot_id,
        "n_users": dataset.n_users,
        "n_items": dataset.n_items,
        "n_interactions": dataset.n_interactions,
        "meta": dataset.meta,
    }
    try:
        info_text = json.dumps(info, indent=2, sort_keys=True, ensure_ascii=False)
    except TypeError as err:
        raise DataValidationError(f"dataset {dataset.name!r}: meta is not JSON-serialisable ({err})") from err
    with atomic_dir(directory) as tmp:
        dataset.interactions.write_parquet(tmp / "interactions.parquet", statistics=False)
        dataset.item_meta.write_parquet(tmp / "item_meta.parquet", statistics=False)
        (tmp / "users.json").write_text(json.dumps(dataset.users.to_list(), ensure_ascii=False), encoding="utf-8")
        (tmp / "items.json").write_text(json.dumps(dataset.items.to_list(), ensure_ascii=False), encoding="utf-8")
        (tmp / DATASET_FILE).write_text(info_text, encoding="utf-8")
    return directory


def load_dataset(directory: Path, *, verify: bool = True) -> Dataset:
    """Load a dataset saved by :func:`save_dataset`.

    Args:
        directory: the saved dataset.
        verify: recompute the snapshot id and compare it with the stored one (a few seconds on tens of
            millions of interactions); without it the stored id is trusted.

    Raises:
        DatasetNotFoundError: ``directory`` is not a saved dataset.
        DataValidationError: a file is missing or corrupt, or the content does not match the snapshot id.
    """
    directory = Path(directory)
    if not (directory / DATASET_FILE).is_file():
        raise DatasetNotFoundError(f"{directory}: not a saved dataset (no {DATASET_FILE})")
    info = _read_json(directory / DATASET_FILE)
    if not isinstance(info, dict) or info.get("format_version") != DATASET_FORMAT_VERSION:
        raise DataValidationError(
            f"{directory / DATASET_FILE}: unsupported dataset format version "
            f"{info.get('format_version') if isinstance(info, dict) else None!r} "
            f"(expected {DATASET_FORMAT_VERSION})"
        )
    users = IdMap(_read_json(directory / "users.json"))
    items = IdMap(_read_json(directory / "items.json"))
    inter = _read_parquet(directory / "interactions.parquet", list(INTERACTION_SCHEMA))
    inter = inter.select([pl.col(c).cast(t) for c, t in INTERACTION_SCHEMA.items()])
    item_meta = _read_parquet(directory / "item_meta.parquet", list(ITEM_COLUMNS))
    _check_shape(directory, info, users, items, inter, item_meta)
    dataset = Dataset(
        inter,
        users,
        items,
        item_meta,
        name=str(info.get("name", directory.name)),
        meta=dict(info.get("meta") or {}),
    )
    stored = str(info.get("snapshot_id", ""))
    if verify:
        if dataset.snapshot_id != stored:
            raise DataValidationError(
                f"{directory}: content does not match its snapshot id (stored {stored}, computed "
                f"{dataset.snapshot_id}); the files were changed or damaged"
            )
    else:
        dataset.__dict__["snapshot_id"] = stored  # fills the cached_property without hashing
    return dataset


def _check_shape(
    directory: Path,
    info: dict[str, Any],
    users: IdMap,
    items: IdMap,
    inter: pl.DataFrame,
    item_meta: pl.DataFrame,
) -> None:
    expected = {
        "n_users": len(users),
        "n_items": len(items),
        "n_interactions": inter.height,
    }
    for key, found in expected.items():
        if info.get(key) != found:
            raise DataValidationError(f"{directory}: {key} is {found}, but {DATASET_FILE} says {info.get(key)}")
    if item_meta.height != len(items):
        raise DataValidationError(f"{directory}: item_meta.parquet has {item_meta.height} rows for {len(items)} items")
    if inter.height:
        for col, size in (("user_idx", len(users)), ("item_idx", len(items))):
            low, high = inter[col].min(), inter[col].max()
            if low < 0 or high >= size:  # type: ignore[operator]
                raise DataValidationError(f"{directory}: interactions.parquet {col} outside 0..{size - 1}")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise DataValidationError(f"{path}: missing file of a saved dataset") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataValidationError(f"{path}: not valid JSON ({err})") from err


def _read_parquet(path: Path, columns: list[str]) -> pl.DataFrame:
    if not path.is_file():
        raise DataValidationError(f"{path}: missing file of a saved dataset")
    try:
        frame = pl.read_parquet(path)
    except (pl.exceptions.PolarsError, OSError) as err:
        raise DataValidationError(f"{path}: not a readable Parquet file ({err})") from err
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataValidationError(f"{path}: missing columns {missing}")
    return frame.select(columns)
