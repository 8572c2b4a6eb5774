"""Reader of the Last.fm-360K play counts (``usersha1-artmbid-artname-plays.tsv``)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import polars as pl

from tastebud.data.dataset import Dataset
from tastebud.data.generic import read_table
from tastebud.errors import DataValidationError, DataWarning

#: File name of the play counts in the Last.fm-360K release.
LASTFM_FILE = "usersha1-artmbid-artname-plays.tsv"
#: Optional side file of artist tags beside it (not part of the release; ``tastebud data synth --format
#: lastfm-360k`` writes one): header-less TSV of artist mbid (may be empty), artist name, tag.
LASTFM_TAGS_FILE = "artist_tags.tsv"


def read_lastfm(path: Path, *, name: str | None = None, meta: Mapping[str, Any] | None = None) -> Dataset:
    """Read Last.fm-360K play counts from the TSV file or the directory holding it.

    The file has no header: user sha1, artist MusicBrainz id (may be empty), artist name, plays. The item id
    is the artist's MusicBrainz id, or the artist name when the id is empty; the name becomes the item's
    ``title``. Plays become ``value`` (``rating`` stays empty), and rows repeating a (user, item) pair are
    summed. Rows with neither an id nor a name are dropped with a :class:`DataWarning`.

    When ``artist_tags.tsv`` (:data:`LASTFM_TAGS_FILE`) lies beside the plays file, each artist gets its tags
    (in file order, by the same mbid-or-name id) as ``tags`` and, since Last.fm has no genres, as ``genres``
    too: the serving API's genre filter, ``/popular?genre=`` and the item fields then work on moods and styles.

    Raises:
        DataValidationError: a malformed line, a play count that is not an integer or is negative.
    """
    file = path / LASTFM_FILE if path.is_dir() else path
    raw = read_table(
        file,
        {"user_id": pl.String, "mbid": pl.String, "artist": pl.String, "plays": pl.Int64},
        separator="\t",
        has_header=False,
        quote_char=None,  # artist names contain stray quotes; the format has no quoting
        required=["user_id", "plays"],
        expected="tab-separated user sha1, artist mbid, artist name, plays",
    )
    negative = raw["plays"] < 0
    if negative.any():
        row = int(negative.arg_true()[0])
        raise DataValidationError(
            f"{file} line {row + 1}: plays {raw['plays'][row]} is negative (expected a count >= 0)"
        )
    # Categorical ids: every string is hashed once here, and the duplicate search and the grouping below
    # work on integer codes instead of 17 million strings.
    frame = raw.select(
        pl.col("user_id").cast(pl.Categorical),
        pl.coalesce("mbid", "artist").cast(pl.Categorical).alias("item_id"),
        "artist",
        "plays",
    )
    del raw
    nameless = frame["item_id"].null_count()
    if nameless:
        warnings.warn(
            f"{file}: dropped {nameless} rows with neither an artist mbid nor a name",
            DataWarning,
            stacklevel=2,
        )
        frame = frame.filter(pl.col("item_id").is_not_null())
    plays = _sum_duplicate_pairs(frame)
    items = (
        frame.filter(pl.col("artist").is_not_null())
        .select("item_id", pl.col("artist").alias("title"))
        .unique("item_id", keep="first", maintain_order=True)
    )
    del frame
    files = [file.name]
    tags_file = file.parent / LASTFM_TAGS_FILE
    if tags_file.is_file():
        files.append(tags_file.name)
        tags = read_lastfm_tags(tags_file)
        items = items.with_columns(pl.col("item_id").cast(pl.String))
        items = items.join(tags, on="item_id", how="left", maintain_order="left").with_columns(
            pl.col("tags").alias("genres")
        )
    return Dataset.from_frame(
        plays,
        items=items,
        name=name or "lastfm-360k",
        meta={**(meta or {}), "files": files, "value": "plays"},
        source=str(file),
    )


def read_lastfm_tags(path: Path) -> pl.DataFrame:
    """Artist tags: ``item_id`` (the mbid, or the name when the mbid is empty) and ``tags`` (list, file order).

    Raises:
        DataValidationError: a malformed line.
    """
    raw = read_table(
        path,
        {"mbid": pl.String, "artist": pl.String, "tag": pl.String},
        separator="\t",
        has_header=False,
        quote_char=None,
        required=["tag"],
        expected="tab-separated artist mbid, artist name, tag",
    )
    return (
        raw.select(pl.coalesce("mbid", "artist").alias("item_id"), pl.col("tag").str.strip_chars())
        .filter(pl.col("item_id").is_not_null() & (pl.col("tag") != ""))
        .unique(maintain_order=True)
        .group_by("item_id", maintain_order=True)
        .agg(pl.col("tag").alias("tags"))
    )


def _sum_duplicate_pairs(frame: pl.DataFrame) -> pl.DataFrame:
    """One row per (user, item) with plays summed; only the (few) repeated pairs go through a group-by."""
    codes = pl.col("user_id").to_physical().cast(pl.UInt64) * (1 << 32) + pl.col("item_id").to_physical().cast(
        pl.UInt64
    )
    repeated = frame.select(codes.is_duplicated()).to_series()
    cols = ["user_id", "item_id", "plays"]
    parts = [frame.filter(~repeated).select(cols)]
    if repeated.any():
        parts.append(frame.filter(repeated).group_by("user_id", "item_id").agg(pl.col("plays").sum()).select(cols))
    return pl.concat(parts).with_columns(pl.col("plays").cast(pl.Float32).alias("value")).drop("plays")
