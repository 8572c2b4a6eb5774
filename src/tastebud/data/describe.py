"""Summaries of a dataset: counts, duplicates, density, rating distribution, time range, snapshot id."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import polars as pl

from tastebud.data.dataset import Dataset


def describe_dataset(ds: Dataset) -> dict[str, Any]:
    """A JSON-friendly summary of ``ds``.

    Returns:
        users, items (vocabulary, including catalog items without interactions), items_with_interactions,
        interactions (rows), distinct_pairs (distinct (user, item) pairs), duplicate_rows (rows repeating a pair
        seen before: ``interactions - distinct_pairs``), duplicate_share (their share of the rows),
        duplicated_pairs (pairs that occur more than once), density (distinct pairs over users x items, so at
        most 1 however often rows repeat), ratings (distribution of explicit ratings or ``None``), value
        statistics, time range in UTC ISO format (or ``None``), items with title/year/genres, snapshot id and
        provenance.
    """
    inter = ds.interactions
    n = ds.n_interactions
    if n:
        per_pair = inter.group_by("user_idx", "item_idx").len()
        distinct = per_pair.height
        duplicated = int((per_pair["len"] > 1).sum())
    else:
        distinct = duplicated = 0
    cells = ds.n_users * ds.n_items
    summary: dict[str, Any] = {
        "name": ds.name,
        "users": ds.n_users,
        "items": ds.n_items,
        "items_with_interactions": int(inter["item_idx"].n_unique()) if n else 0,
        "interactions": n,
        "distinct_pairs": distinct,
        "duplicate_rows": n - distinct,
        "duplicate_share": (n - distinct) / n if n else 0.0,
        "duplicated_pairs": duplicated,
        "density": distinct / cells if cells else 0.0,
        "snapshot_id": ds.snapshot_id,
    }
    if ds.has_ratings:
        counts = inter.filter(pl.col("rating").is_not_null()).group_by("rating").len().sort("rating")
        summary["ratings"] = {
            _fmt_rating(r): int(c) for r, c in zip(counts["rating"].to_list(), counts["len"].to_list(), strict=True)
        }
        summary["rating_mean"] = float(inter["rating"].mean())  # type: ignore[arg-type]
    else:
        summary["ratings"] = None
    values = inter["value"]
    summary["value"] = (
        {
            "min": float(values.min()),  # type: ignore[arg-type]
            "median": float(values.median()),  # type: ignore[arg-type]
            "max": float(values.max()),  # type: ignore[arg-type]
            "sum": float(values.sum()),
        }
        if n
        else None
    )
    if n and inter["timestamp"].null_count() < n:
        ts = inter["timestamp"].drop_nulls()
        summary["time_range"] = {
            "start": _iso(int(ts.min())),  # type: ignore[arg-type]
            "end": _iso(int(ts.max())),  # type: ignore[arg-type]
        }
    else:
        summary["time_range"] = None
    meta = ds.item_meta
    summary["items_with_title"] = int(meta["title"].is_not_null().sum())
    summary["items_with_year"] = int(meta["year"].is_not_null().sum())
    summary["items_with_genres"] = int((meta["genres"].list.len() > 0).sum())
    per_user = inter.group_by("user_idx").len()["len"] if n else pl.Series([0])
    summary["interactions_per_user"] = {
        "min": int(per_user.min()),  # type: ignore[arg-type]
        "median": float(per_user.median()),  # type: ignore[arg-type]
        "max": int(per_user.max()),  # type: ignore[arg-type]
    }
    summary["meta"] = ds.meta
    return summary


def _fmt_rating(r: float) -> str:
    return str(int(r)) if float(r).is_integer() else str(r)


def _iso(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).isoformat().replace("+00:00", "Z")
