"""Reading datasets: format detection and dispatch to the per-format readers.

:func:`read_dataset` takes a path (file or directory) or the name of a fetched dataset, finds the format, and
returns a :class:`Dataset` whose ``meta`` records the source, the format and the files read.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tastebud.config import Settings, get_settings
from tastebud.data.dataset import Dataset
from tastebud.data.fetch import DATASETS, dataset_path, read_source_info
from tastebud.data.generic import read_generic
from tastebud.data.io import DATASET_FILE, load_dataset
from tastebud.data.lastfm import LASTFM_FILE, read_lastfm
from tastebud.data.movielens import read_ml1m, read_ml100k, read_movielens_csv
from tastebud.data.recbole import read_recbole
from tastebud.errors import DatasetNotFoundError, ParameterError

#: Format names :func:`detect_format` returns and ``read_dataset(format=...)`` accepts.
FORMATS = ("ml-100k", "ml-1m", "movielens-csv", "recbole", "lastfm-360k", "csv", "parquet", "tastebud")

_Reader = Callable[..., Dataset]


def _directory_of(path: Path) -> Path:
    return path if path.is_dir() else path.parent


def _read_tastebud(path: Path, *, name: str | None = None, meta: Mapping[str, Any] | None = None) -> Dataset:
    dataset = load_dataset(_directory_of(path))
    if name:
        dataset.name = name
    return dataset


_READERS: dict[str, _Reader] = {
    "ml-100k": lambda p, **kw: read_ml100k(_directory_of(p), **kw),
    "ml-1m": lambda p, **kw: read_ml1m(_directory_of(p), **kw),
    "movielens-csv": lambda p, **kw: read_movielens_csv(_directory_of(p), **kw),
    "recbole": read_recbole,
    "lastfm-360k": read_lastfm,
    "tastebud": _read_tastebud,
}


def detect_format(path: str | Path) -> str:
    """Name the format of a dataset file or directory (one of :data:`FORMATS`).

    Directories are recognised by their marker files (``dataset.json``, ``u.data``, ``ratings.dat``,
    ``ratings.csv``, ``*.inter``, the Last.fm TSV); files by their name or extension.

    Raises:
        DatasetNotFoundError: the path does not exist, or nothing in it is a known format.
    """
    path = Path(path)
    if path.is_dir():
        markers = (
            (DATASET_FILE, "tastebud"),
            ("u.data", "ml-100k"),
            ("ratings.dat", "ml-1m"),
            ("ratings.csv", "movielens-csv"),
            (LASTFM_FILE, "lastfm-360k"),
        )
        for marker, fmt in markers:
            if (path / marker).is_file():
                return fmt
        if any(path.glob("*.inter")):
            return "recbole"
        raise DatasetNotFoundError(
            f"{path}: no known dataset files (looked for {', '.join(m for m, _ in markers)} and *.inter)"
        )
    if not path.is_file():
        raise DatasetNotFoundError(f"{path}: no such file or directory")
    by_name = {
        DATASET_FILE: "tastebud",
        "u.data": "ml-100k",
        "ratings.dat": "ml-1m",
        "ratings.csv": "movielens-csv",
        LASTFM_FILE: "lastfm-360k",
    }
    if path.name in by_name:
        fmt = by_name[path.name]
        # A file named ratings.csv that lacks MovieLens' header is an ordinary CSV.
        if fmt == "movielens-csv" and not _has_movielens_header(path):
            return "csv"
        return fmt
    suffix = path.suffix.lower()
    if suffix == ".inter":
        return "recbole"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix in (".csv", ".tsv", ".tab", ".txt", ".dat"):
        return "csv"
    raise DatasetNotFoundError(
        f"{path}: cannot tell the format from the file name; pass format= one of {', '.join(FORMATS)}"
    )


def _has_movielens_header(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            first = fh.readline(4096).decode("utf-8-sig", errors="replace")
    except OSError:
        return True  # let the reader report the problem
    return first.replace('"', "").startswith("userId,movieId")


def read_dataset(
    source: str | Path,
    *,
    format: str | None = None,
    mapping: Mapping[str, str] | None = None,
    settings: Settings | None = None,
    name: str | None = None,
) -> Dataset:
    """Read a dataset from a path or by the name of a fetched dataset.

    Args:
        source: a file or directory, or a dataset name (``ml-100k`` ... as fetched by
            :func:`tastebud.data.fetch.fetch_dataset`, or a dataset saved under the settings' data directory).
        format: one of :data:`FORMATS`; detected when omitted.
        mapping: canonical column -> file column, for ``csv`` and ``parquet`` files.
        settings: where fetched datasets live (default: :func:`tastebud.config.get_settings`).
        name: dataset name (default: the fetched name, the directory name or the file stem).

    Raises:
        DatasetNotFoundError: the source is neither an existing path nor an available dataset name.
        ParameterError: an unknown format, or a mapping for a format that takes none.
        DataValidationError: the files are malformed (the message names the file and line or column).
    """
    path, fetched = _resolve(source, settings)
    fmt = format or detect_format(path)
    if fmt not in FORMATS:
        raise ParameterError(f"unknown dataset format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if mapping and fmt not in ("csv", "parquet"):
        raise ParameterError(f"a column mapping applies to csv and parquet files, not to format {fmt!r}")
    meta: dict[str, Any] = {"source": str(source), "format": fmt, "path": str(path.resolve())}
    if fetched:
        meta["dataset"] = fetched
        info = read_source_info(path)
        if info is not None:
            meta["fetch"] = info
    default_name = name or fetched or (path.name if path.is_dir() else path.stem)
    if fmt in ("csv", "parquet"):
        if path.is_dir():
            raise DatasetNotFoundError(f"{path}: format {fmt!r} needs a file, got a directory")
        return read_generic(path, fmt=fmt, mapping=mapping, name=default_name, meta=meta)
    if fmt == "tastebud":
        return _read_tastebud(path, name=name)
    return _READERS[fmt](path, name=default_name, meta=meta)


def _resolve(source: str | Path, settings: Settings | None) -> tuple[Path, str | None]:
    """The path to read and, when ``source`` was a dataset name, that name."""
    path = Path(source).expanduser()
    if path.exists():
        return path, None
    text = str(source)
    looks_like_name = isinstance(source, str) and "/" not in text and "\\" not in text
    if looks_like_name:
        settings = settings or get_settings()
        if text in DATASETS:
            target = dataset_path(text, settings)
            if target.is_dir() and any(target.iterdir()):
                return target, text
            raise DatasetNotFoundError(
                f"dataset {text!r} has not been fetched (expected at {target}); fetch it with "
                f"`tastebud data fetch {text}`"
            )
        saved = settings.data_dir / text
        if saved.is_dir():
            return saved, text
    raise DatasetNotFoundError(
        f"{source}: no such file or directory, and not a dataset name; available names: "
        f"{', '.join(available_datasets(settings))}"
    )


def available_datasets(settings: Settings | None = None) -> list[str]:
    """Names :func:`read_dataset` accepts: the fetchable datasets and the directories under the data dir."""
    settings = settings or get_settings()
    names = set(DATASETS)
    if settings.data_dir.is_dir():
        names.update(p.name for p in settings.data_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    return sorted(names)


__all__ = ["FORMATS", "available_datasets", "detect_format", "read_dataset"]
