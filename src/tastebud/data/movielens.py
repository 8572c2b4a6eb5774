"""Readers of the MovieLens releases: ML-100K (``u.data``), ML-1M (``ratings.dat``) and the CSV family.

Titles are kept whole ("Toy Story (1995)"); ``year`` is parsed from the title's trailing "(YYYY)", and for
ML-100K from the release date when the title has none.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import polars as pl

from tastebud.data.dataset import Dataset
from tastebud.data.generic import read_table

#: ML-100K genres in the order of their flags in ``u.item`` (used when ``u.genre`` is absent).
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
#: Genre string MovieLens CSV files use for "no genres".
NO_GENRES = "(no genres listed)"

_RATINGS_SCHEMA = {"user_id": pl.Int32, "item_id": pl.Int32, "rating": pl.Float32, "timestamp": pl.Int64}
_TITLE_YEAR = r"\((\d{4})(?:[-–]\d{0,4})?\)$"


def year_from_title(title: pl.Expr) -> pl.Expr:
    """Year in a title's trailing "(1995)" (or "(1994-1998)"), as Int32, else null."""
    return title.str.strip_chars().str.extract(_TITLE_YEAR, 1).cast(pl.Int32, strict=False)


def _latin1(path: Path) -> bytes:
    """A latin-1 file's content as UTF-8 bytes (polars reads only UTF-8; these files are small)."""
    return path.read_bytes().decode("latin-1").encode("utf-8")


# ---------------------------------------------------------------------- ML-100K
def read_ml100k(directory: Path, *, name: str | None = None, meta: Mapping[str, Any] | None = None) -> Dataset:
    """Read an ML-100K directory: ``u.data`` ratings, ``u.item`` titles/dates/genre flags, ``u.genre``.

    ``u.user`` (demographics) is not read: a :class:`Dataset` carries no user attributes.
    """
    ratings = read_table(
        directory / "u.data",
        _RATINGS_SCHEMA,
        separator="\t",
        has_header=False,
        quote_char=None,
        expected="tab-separated user, item, rating, timestamp",
    )
    files = ["u.data"]
    items = None
    if (directory / "u.item").is_file():
        items = _ml100k_items(directory)
        files += ["u.item"] + (["u.genre"] if (directory / "u.genre").is_file() else [])
    return Dataset.from_frame(
        ratings,
        items=items,
        name=name or "ml-100k",
        meta={**(meta or {}), "files": files},
        source=str(directory / "u.data"),
    )


def _ml100k_genres(directory: Path) -> list[str]:
    path = directory / "u.genre"
    if not path.is_file():
        return list(ML100K_GENRES)
    pairs = [line.rsplit("|", 1) for line in path.read_text(encoding="latin-1").splitlines() if "|" in line]
    return [g for g, _ in sorted(pairs, key=lambda p: int(p[1]))]


def _ml100k_items(directory: Path) -> pl.DataFrame:
    genres = _ml100k_genres(directory)
    path = directory / "u.item"
    schema: dict[str, Any] = {
        "item_id": pl.Int32, "title": pl.String, "release_date": pl.String, "video_date": pl.String,
        "url": pl.String,
    }  # fmt: skip
    schema.update({f"g{i}": pl.Int8 for i in range(len(genres))})
    raw = read_table(
        path,
        schema,
        separator="|",
        has_header=False,
        quote_char=None,
        required=["item_id"],
        data=_latin1(path),
        encoding="latin-1",
        expected=f"'|'-separated movies with {len(genres)} genre flags",
    )
    flags = [pl.when(pl.col(f"g{i}") == 1).then(pl.lit(g)) for i, g in enumerate(genres)]
    return raw.select(
        "item_id",
        "title",
        pl.coalesce(
            year_from_title(pl.col("title")),
            pl.col("release_date").str.extract(r"(\d{4})\s*$", 1).cast(pl.Int32, strict=False),
        ).alias("year"),
        pl.concat_list(flags).list.drop_nulls().alias("genres"),
    )


# ---------------------------------------------------------------------- ML-1M
def read_ml1m(directory: Path, *, name: str | None = None, meta: Mapping[str, Any] | None = None) -> Dataset:
    """Read an ML-1M directory: ``ratings.dat`` and ``movies.dat`` (``::``-separated, latin-1).

    ``users.dat`` (demographics) is not read.
    """
    path = directory / "ratings.dat"
    # polars separators are one byte; "::" never occurs inside these numeric fields, so a tab replaces it.
    ratings = read_table(
        path,
        _RATINGS_SCHEMA,
        has_header=False,
        separator="\t",
        quote_char=None,
        data=path.read_bytes().replace(b"::", b"\t"),
        display_separator="::",
        expected="'::'-separated user, item, rating, timestamp",
    )
    files = ["ratings.dat"]
    items = None
    movies = directory / "movies.dat"
    if movies.is_file():
        files.append("movies.dat")
        raw = read_table(
            movies,
            {"item_id": pl.Int32, "title": pl.String, "genres": pl.String},
            has_header=False,
            separator="\t",
            quote_char=None,
            required=["item_id"],
            data=_latin1(movies).replace(b"::", b"\t"),
            display_separator="::",
            encoding="latin-1",
            expected="'::'-separated movie id, title, genres",
        )
        items = raw.with_columns(year_from_title(pl.col("title")).alias("year"))
    return Dataset.from_frame(
        ratings, items=items, name=name or "ml-1m", meta={**(meta or {}), "files": files}, source=str(path)
    )


# ---------------------------------------------------------------------- CSV family
def read_movielens_csv(directory: Path, *, name: str | None = None, meta: Mapping[str, Any] | None = None) -> Dataset:
    """Read a MovieLens CSV release (ml-latest, ml-latest-small, ml-25m, ml-32m ...).

    ``ratings.csv`` (userId, movieId, rating, timestamp) is required; ``movies.csv`` (movieId, title, genres)
    gives titles, years and genres (``"(no genres listed)"`` means none); ``tags.csv`` (userId, movieId,
    tag, timestamp), when present, gives each movie the sorted set of its tags.
    """
    path = directory / "ratings.csv"
    ratings = read_table(
        path,
        {"userId": pl.Int32, "movieId": pl.Int32, "rating": pl.Float32, "timestamp": pl.Int64},
        expected="comma-separated ratings with a header line userId,movieId,rating,timestamp",
    ).rename({"userId": "user_id", "movieId": "item_id"})
    files = ["ratings.csv"]
    items = None
    if (directory / "movies.csv").is_file():
        files.append("movies.csv")
        movies = read_table(
            directory / "movies.csv",
            {"movieId": pl.Int32, "title": pl.String, "genres": pl.String},
            required=["movieId"],
            expected="comma-separated movies with a header line movieId,title,genres",
        )
        items = movies.select(
            pl.col("movieId").alias("item_id"),
            pl.col("title"),
            year_from_title(pl.col("title")).alias("year"),
            pl.when(pl.col("genres").is_null() | (pl.col("genres") == NO_GENRES))
            .then(pl.lit([], dtype=pl.List(pl.String)))
            .otherwise(pl.col("genres").str.split("|"))
            .alias("genres"),
        )
        if (directory / "tags.csv").is_file():
            files.append("tags.csv")
            items = items.join(_tags(directory / "tags.csv"), on="item_id", how="left", maintain_order="left")
    return Dataset.from_frame(
        ratings,
        items=items,
        name=name or directory.name,
        meta={**(meta or {}), "files": files},
        source=str(path),
    )


def _tags(path: Path) -> pl.DataFrame:
    tags = read_table(
        path,
        {"movieId": pl.Int32, "tag": pl.String},
        required=["movieId"],
        expected="comma-separated tags with a header line userId,movieId,tag,timestamp",
    )
    return (
        tags.select(pl.col("movieId").alias("item_id"), pl.col("tag").str.strip_chars())
        .filter(pl.col("tag").is_not_null() & (pl.col("tag") != ""))
        .group_by("item_id")
        .agg(pl.col("tag").unique().sort().alias("tags"))
    )
