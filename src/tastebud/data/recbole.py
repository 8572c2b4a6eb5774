"""Reader of RecBole atomic files: ``NAME.inter`` and optional ``NAME.item``.

Atomic files are tab-separated with a typed header (``user_id:token  item_id:token  rating:float
timestamp:float``). ``token_seq`` fields hold space-separated tokens; for the item file the title field is
kept as text and the genre field is split into genres.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import polars as pl

from tastebud.data.dataset import Dataset
from tastebud.data.generic import check_file, read_header, read_table
from tastebud.errors import DatasetNotFoundError, DataValidationError

_TYPES: dict[str, Any] = {
    "token": pl.String,
    "token_seq": pl.String,
    "float": pl.Float64,
    "float_seq": pl.String,
}
# Field names RecBole datasets use for item metadata, first match wins.
_TITLE_FIELDS = ("movie_title", "title", "name", "item_name")
_YEAR_FIELDS = ("release_year", "year")
_GENRE_FIELDS = ("class", "genre", "genres", "categories")


def find_inter_file(directory: Path) -> Path:
    """The ``.inter`` file of a RecBole dataset directory (``<dir name>.inter`` when there are several)."""
    candidates = sorted(directory.glob("*.inter"))
    if not candidates:
        raise DatasetNotFoundError(f"{directory}: no RecBole .inter file")
    preferred = directory / f"{directory.name}.inter"
    if preferred in candidates:
        return preferred
    if len(candidates) > 1:
        names = ", ".join(c.name for c in candidates)
        raise DataValidationError(f"{directory}: several .inter files ({names}); pass one of them as the source")
    return candidates[0]


def _typed_header(path: Path) -> dict[str, tuple[str, str]]:
    """Map bare field name -> (header name, RecBole type), with clear errors."""
    head = check_file(path, expected="a RecBole atomic file with a typed header line")
    fields: dict[str, tuple[str, str]] = {}
    for column in read_header(head, "\t", None):
        bare, sep, kind = column.partition(":")
        if not sep or kind not in _TYPES:
            raise DataValidationError(
                f"{path} line 1: header field {column!r} is not 'name:type' with a type among {sorted(_TYPES)}"
            )
        fields[bare] = (column, kind)
    return fields


def read_recbole(path: Path, *, name: str | None = None, meta: Mapping[str, Any] | None = None) -> Dataset:
    """Read RecBole atomic files from a directory or a ``.inter`` file (with the ``.item`` file beside it)."""
    inter = find_inter_file(path) if path.is_dir() else path
    fields = _typed_header(inter)
    missing = [f for f in ("user_id", "item_id") if f not in fields]
    if missing:
        raise DataValidationError(
            f"{inter}: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)}; "
            f"found {[h for h, _ in fields.values()]}"
        )
    wanted = {f: fields[f] for f in ("user_id", "item_id", "rating", "timestamp") if f in fields}
    schema = {
        header: (pl.String if f in ("user_id", "item_id") else _TYPES[kind]) for f, (header, kind) in wanted.items()
    }
    frame = read_table(
        inter,
        schema,
        separator="\t",
        quote_char=None,
        required=[fields["user_id"][0], fields["item_id"][0]],
        expected="a RecBole .inter file",
    ).rename({header: f for f, (header, _) in wanted.items()})
    files = [inter.name]
    items = None
    item_path = inter.with_suffix(".item")
    if item_path.is_file():
        items = _read_items(item_path)
        files.append(item_path.name)
    return Dataset.from_frame(
        frame, items=items, name=name or inter.stem, meta={**(meta or {}), "files": files}, source=str(inter)
    )


def _read_items(path: Path) -> pl.DataFrame:
    fields = _typed_header(path)
    if "item_id" not in fields:
        raise DataValidationError(f"{path}: missing column item_id; found {[h for h, _ in fields.values()]}")
    picks = {"item_id": fields["item_id"][0]}
    for canon, options in (("title", _TITLE_FIELDS), ("year", _YEAR_FIELDS), ("genres", _GENRE_FIELDS)):
        found = next((fields[o][0] for o in options if o in fields), None)
        if found is not None:
            picks[canon] = found
    frame = read_table(
        path,
        {h: pl.String for h in picks.values()},
        separator="\t",
        quote_char=None,
        required=[picks["item_id"]],
        expected="a RecBole .item file",
    ).rename({h: c for c, h in picks.items()})
    cols = [pl.col("item_id")]
    if "title" in frame.columns:
        cols.append(pl.col("title"))
    if "year" in frame.columns:
        cols.append(pl.col("year").str.strip_chars().cast(pl.Int32, strict=False))
    if "genres" in frame.columns:
        cols.append(
            pl.col("genres")
            .str.strip_chars()
            .str.split(" ")
            .list.eval(pl.element().filter(pl.element() != ""))
            .fill_null(pl.lit([], dtype=pl.List(pl.String)))
        )
    return frame.select(cols)
