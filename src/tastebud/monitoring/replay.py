"""Replay evaluation: logged recommendations joined with the events that followed them.

A logged list *hits* when its user interacted with one of its items within ``horizon`` after the request (strictly
after: an event at the same instant was not caused by the list). Per model version and per experiment variant:

- ``hit_rate``: share of lists with at least one hit;
- ``precision``: hits / list length, averaged over lists (an empty list counts 0);
- ``hit_rate_active``: hit rate over the lists whose user did anything at all within the horizon, which separates
  "the list was wrong" from "the user was not there".

Only successful personal lists (``/recommend``, 2xx, see :func:`tastebud.monitoring.kpis.success`) count.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import polars as pl

from tastebud.errors import ParameterError
from tastebud.monitoring.kpis import success

__all__ = ["replay_evaluate", "replay_lists"]


def replay_lists(requests: pl.DataFrame, events: pl.DataFrame, *, horizon: timedelta) -> pl.DataFrame:
    """One row per logged list: its keys, length ``k``, ``hits`` and ``followed`` (distinct items acted on).

    Args:
        requests: from :func:`tastebud.monitoring.kpis.request_frame`.
        events: ``user_id, item_id, timestamp`` (as :func:`tastebud.monitoring.drift.events_frame` gives).
        horizon: how long after a request an event still counts.

    Raises:
        ParameterError: a horizon that is not positive.
    """
    if horizon <= timedelta(0):
        raise ParameterError(f"replay horizon must be positive, got {horizon}")
    lists = requests.filter(
        success() & (pl.col("endpoint") == "recommend") & pl.col("user_id").is_not_null()
    ).select("request_id", "user_id", pl.col("timestamp").alias("t"), "model_name", "model_version", "variant",
             "item_ids")  # fmt: skip
    ev = events.select(
        pl.col("user_id").cast(pl.String), pl.col("item_id").cast(pl.String), pl.col("timestamp").alias("te")
    )
    followed = (
        lists.select("request_id", "user_id", "t")
        .join(ev, on="user_id", how="inner")
        .filter((pl.col("te") > pl.col("t")) & (pl.col("te") <= pl.col("t") + horizon))
        .select("request_id", "item_id")
        .unique()
    )
    shown = lists.select("request_id", pl.col("item_ids").alias("item_id")).explode("item_id").drop_nulls().unique()
    hits = (
        shown.join(followed, on=["request_id", "item_id"], how="inner")
        .group_by("request_id")
        .agg(pl.len().alias("hits"))
    )
    acted = followed.group_by("request_id").agg(pl.len().alias("followed"))
    return (
        lists.join(hits, on="request_id", how="left")
        .join(acted, on="request_id", how="left")
        .with_columns(
            pl.col("hits").fill_null(0).cast(pl.Int64),
            pl.col("followed").fill_null(0).cast(pl.Int64),
            pl.col("item_ids").list.len().cast(pl.Int64).alias("k"),
        )
        .drop("item_ids")
    )


def _aggregate(per_list: pl.DataFrame, keys: list[str]) -> list[dict[str, Any]]:
    if per_list.height == 0:
        return []
    out = (
        per_list.group_by(keys)
        .agg(
            pl.len().alias("lists"),
            (pl.col("followed") > 0).sum().alias("lists_followed"),
            (pl.col("hits") > 0).mean().alias("hit_rate"),
            pl.when(pl.col("k") > 0).then(pl.col("hits") / pl.col("k")).otherwise(0.0).mean().alias("precision"),
            ((pl.col("hits") > 0) & (pl.col("followed") > 0)).sum().alias("_hit_followed"),
        )
        .with_columns(
            pl.when(pl.col("lists_followed") > 0)
            .then(pl.col("_hit_followed") / pl.col("lists_followed"))
            .otherwise(None)
            .alias("hit_rate_active")
        )
        .drop("_hit_followed")
        .sort(keys, nulls_last=True)
    )
    rows = out.to_dicts()
    for row in rows:
        for key in ("hit_rate", "precision", "hit_rate_active"):
            if row[key] is not None:
                row[key] = round(float(row[key]), 6)
    return rows


def replay_evaluate(
    requests: pl.DataFrame, events: pl.DataFrame, *, horizon: timedelta = timedelta(hours=24)
) -> dict[str, Any]:
    """Online hit rate and precision of the logged lists, overall, per model version and per variant.

    Returns:
        ``{"horizon_s", "overall", "by_model_version": [...], "by_variant": [...]}``; each entry has ``lists``,
        ``lists_followed``, ``hit_rate``, ``precision`` and ``hit_rate_active``.
    """
    per_list = replay_lists(requests, events, horizon=horizon).with_columns(pl.lit("all").alias("_all"))
    overall = _aggregate(per_list, ["_all"])
    return {
        "horizon_s": horizon.total_seconds(),
        "overall": {k: v for k, v in overall[0].items() if k != "_all"} if overall else {"lists": 0},
        "by_model_version": _aggregate(per_list, ["model_name", "model_version"]),
        "by_variant": _aggregate(per_list.with_columns(pl.col("variant").fill_null("none")), ["variant"]),
    }
