"""Data lineage of retraining: a parent snapshot plus the stored events since a cutoff, merged by one rule.

**Merge rule** (:data:`DEDUPE_RULE`): one interaction per (user, item). The parent dataset's rows and the new
events are ordered by event time (a missing timestamp counts as the earliest); at equal times an event comes after
a dataset row, and events after each other in arrival order (the store's ``id``). The last row gives the pair its
timestamp and ``value``; its ``rating`` is the last rating among the pair's rows, so a later view or play does not
erase a rating. A rating event's ``value`` is what the stream stored (the rating unless the event said otherwise),
the same value serving folds in; an event without a value counts 1.0, or its rating when it has one. Users and items
first seen in the events join the vocabulary (new items without metadata). Nothing else is filtered: the parent's
own preparation (dedupe, k-core ...) was applied to the parent only, so a brand-new user with one event is kept.

**Data spec** of a merged snapshot, which :func:`tastebud.pipeline.train.load_data` rebuilds::

    {"name": ..., "parent": <the parent's data spec>, "events": {"after_id": A, "through_id": H, "count": N},
     "merge": DEDUPE_RULE, "snapshot_id": ...}

The parent may itself be a merged snapshot, so a chain of retrains rebuilds by replaying each step (merging every
range at once could differ: a late event with an old timestamp wins differently). Every step checks its snapshot id.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from tastebud.config import RetrainSettings, Settings
from tastebud.data.dataset import Dataset
from tastebud.errors import DataValidationError

if TYPE_CHECKING:
    from tastebud.store import Store

#: Name of the merge rule, recorded in every merged data spec and lineage.
DEDUPE_RULE = (
    "one interaction per (user, item): the latest by event time wins (at equal times events after dataset rows, "
    "then by store id); the rating is the latest rating"
)
_MIN_TS = np.iinfo(np.int64).min


@dataclass
class MergedData:
    """A parent dataset with events merged in, and where each merged interaction came from.

    Attributes:
        dataset: the merged dataset (row ``i`` of ``dataset.interactions`` is described by the arrays below).
        from_events: per row, whether the winning row of its (user, item) pair is an event.
        novel: per row, whether the pair is absent from the parent (a first-time interaction).
        event_order: per row, the store ``id`` of the winning event (-1 for dataset rows).
        parent: the parent dataset.
        n_events: events merged (before deduplication).
        new_users: users absent from the parent.
        new_items: items absent from the parent's vocabulary.
        first_time: earliest event time, ISO 8601 UTC (None without events).
        last_time: latest event time, likewise.
    """

    dataset: Dataset
    from_events: np.ndarray
    novel: np.ndarray
    event_order: np.ndarray
    parent: Dataset
    n_events: int
    new_users: int
    new_items: int
    first_time: str | None
    last_time: str | None


def events_frame(events: Sequence[Mapping[str, Any]]) -> pl.DataFrame:
    """Stored events as interaction rows: ``user_id``, ``item_id``, ``value``, ``rating``, ``timestamp``, ``_id``.

    Raises:
        DataValidationError: an event has a non-finite or negative value or rating, or no timestamp (names it).
    """
    users, items, values, ratings, stamps, ids = [], [], [], [], [], []
    for e in events:
        where = f"stored event id {e.get('id')} ({e.get('event_id')!r})"
        rating = e.get("rating")
        value = e.get("value")
        if value is None:
            value = rating if rating is not None else 1.0
        for name, number in (("value", value), ("rating", rating)):
            if number is not None and (not math.isfinite(float(number)) or float(number) < 0):
                raise DataValidationError(f"{where}: {name} {number!r} is not a finite number >= 0")
        ts = e.get("timestamp")
        if ts is None:
            raise DataValidationError(f"{where}: no timestamp")
        users.append(str(e["user_id"]))
        items.append(str(e["item_id"]))
        values.append(float(value))
        ratings.append(None if rating is None else float(rating))
        stamps.append(int(ts.timestamp()) if isinstance(ts, dt.datetime) else int(ts))
        ids.append(int(e.get("id") or 0))
    return pl.DataFrame(
        {
            "user_id": pl.Series(users, dtype=pl.String),
            "item_id": pl.Series(items, dtype=pl.String),
            "value": pl.Series(values, dtype=pl.Float32),
            "rating": pl.Series(ratings, dtype=pl.Float32),
            "timestamp": pl.Series(stamps, dtype=pl.Int64),
            "_id": pl.Series(ids, dtype=pl.Int64),
        }
    )


def merge_events(parent: Dataset, events: Sequence[Mapping[str, Any]] | pl.DataFrame) -> MergedData:
    """Merge stored events into ``parent`` by :data:`DEDUPE_RULE` (see the module docstring).

    Args:
        parent: the champion's dataset.
        events: store rows (``Store.events_after``) or a frame from :func:`events_frame`.

    Raises:
        DataValidationError: an event is invalid (non-finite value, no timestamp), naming it.
    """
    ev = events if isinstance(events, pl.DataFrame) else events_frame(events)
    base = parent.to_frame().with_columns(
        pl.lit(0, dtype=pl.Int8).alias("_src"), pl.int_range(0, parent.n_interactions, dtype=pl.Int64).alias("_id")
    )
    rows = pl.concat(
        [base, ev.select(*base.columns[:5], pl.lit(1, dtype=pl.Int8).alias("_src"), "_id")], how="vertical"
    )
    merged = (
        rows.with_columns(pl.col("timestamp").fill_null(_MIN_TS).alias("_ts"))
        .sort(["user_id", "item_id", "_ts", "_src", "_id"])
        .group_by(["user_id", "item_id"], maintain_order=True)
        .agg(
            pl.col("value").last(),
            pl.col("rating").drop_nulls().last(),
            pl.col("timestamp").last(),
            pl.col("_src").last().alias("_last_src"),
            pl.col("_src").min().alias("_min_src"),
            pl.col("_id").last().alias("_last_id"),
        )
    )
    meta = {"source": "retrain", "parent_snapshot_id": parent.snapshot_id}
    ds = Dataset.from_frame(
        merged.select("user_id", "item_id", "value", "rating"), items=parent.item_meta, name=parent.name, meta=meta
    )
    ds = ds.with_interactions(ds.interactions.with_columns(merged["timestamp"].alias("timestamp")))
    from_events = merged["_last_src"].to_numpy() == 1
    stamps = ev["timestamp"]
    return MergedData(
        dataset=ds,
        from_events=from_events,
        novel=merged["_min_src"].to_numpy() == 1,
        event_order=np.where(from_events, merged["_last_id"].to_numpy(), -1),
        parent=parent,
        n_events=ev.height,
        new_users=ds.n_users - int(np.isin(ds.users.ids.astype(str), parent.users.ids.astype(str)).sum()),
        new_items=ds.n_items - int(np.isin(ds.items.ids.astype(str), parent.items.ids.astype(str)).sum()),
        first_time=_iso(stamps.min()) if ev.height else None,
        last_time=_iso(stamps.max()) if ev.height else None,
    )


def lineage_record(merged: MergedData, *, parent_version: int | None, after_id: int, through_id: int) -> dict:
    """The ``extra.lineage`` of a merged snapshot: parent, event range and span, rule, new users and items."""
    return {
        "parent_snapshot_id": merged.parent.snapshot_id,
        "parent_version": parent_version,
        "events": {
            "after_id": int(after_id),
            "through_id": int(through_id),
            "count": merged.n_events,
            "first_time": merged.first_time,
            "last_time": merged.last_time,
        },
        "dedupe_rule": DEDUPE_RULE,
        "snapshot_id": merged.dataset.snapshot_id,
        "new_users": merged.new_users,
        "new_items": merged.new_items,
    }


def check_merged(merged: MergedData, retrain: RetrainSettings) -> str | None:
    """Why the merged data is degenerate (floors, non-finite values, too large a share of new events), or None."""
    ds = merged.dataset
    items = int(ds.interactions["item_idx"].n_unique()) if ds.n_interactions else 0
    for what, have, floor, key in (
        ("users", ds.n_users, retrain.min_users, "min_users"),
        ("items with interactions", items, retrain.min_items, "min_items"),
        ("interactions", ds.n_interactions, retrain.min_interactions, "min_interactions"),
    ):
        if have < floor:
            return f"the merged data has {have:,} {what}; at least {floor:,} needed (retrain.{key})"
    for column in ("value", "rating"):
        bad = int((~np.isfinite(ds.interactions[column].drop_nulls().to_numpy())).sum())
        if bad:
            return f"the merged data has {bad:,} non-finite {column}s"
    share = merged.n_events / max(ds.n_interactions, 1)
    if share > retrain.max_new_share:
        return (
            f"{merged.n_events:,} new events are {share:.0%} of the {ds.n_interactions:,} merged interactions; more "
            f"than {retrain.max_new_share:.0%} (retrain.max_new_share) is implausible (a flood or a replay?)"
        )
    return None


def merged_spec(
    parent_spec: Mapping[str, Any], *, after_id: int, through_id: int, count: int, snapshot_id: str
) -> dict[str, Any]:
    """The data spec of a merged snapshot (see the module docstring)."""
    return {
        "name": parent_spec.get("name"),
        "parent": dict(parent_spec),
        "events": {"after_id": int(after_id), "through_id": int(through_id), "count": int(count)},
        "merge": DEDUPE_RULE,
        "snapshot_id": snapshot_id,
    }


def load_merged(spec: Mapping[str, Any], settings: Settings, *, store: Store | None = None) -> MergedData:
    """Rebuild a merged snapshot from its spec: the parent (recursively), then the same stored events again.

    Args:
        spec: a data spec with ``parent`` and ``events``.
        settings: where the parent's source and the store are.
        store: the event store (default: the one in ``settings``).

    Raises:
        DataValidationError: the spec is not a merged one, the rebuilt parent's snapshot differs from the recorded
            one, or the store no longer holds the recorded events.
    """
    from tastebud.pipeline.train import load_data

    if spec.get("parent") is None or not isinstance(spec.get("events"), Mapping):
        raise DataValidationError(f"data spec {dict(spec)!r}: not a merged snapshot (needs 'parent' and 'events')")
    parent_spec = spec["parent"]
    own_store = store is None
    if store is None:
        from tastebud.store import create_store

        store = create_store(settings)
        store.init_schema()
    try:
        parent = load_data(parent_spec, settings, store=store)
        if parent_spec.get("snapshot_id") and parent.snapshot_id != parent_spec["snapshot_id"]:
            raise DataValidationError(
                f"rebuilt parent dataset {parent_spec.get('name')!r} has snapshot {parent.snapshot_id}, the lineage "
                f"records {parent_spec['snapshot_id']}: the source data changed"
            )
        window = spec["events"]
        events = store.events_after(int(window["after_id"]), through_id=int(window["through_id"]))
    finally:
        if own_store:
            store.close()
    expected = window.get("count")
    if expected is not None and len(events) != int(expected):
        raise DataValidationError(
            f"the store at {store.url} holds {len(events)} events with ids in ({window['after_id']}, "
            f"{window['through_id']}], the lineage records {expected}: events were deleted, or this is another store"
        )
    return merge_events(parent, events)


def _iso(epoch: Any) -> str | None:
    if epoch is None:
        return None
    return dt.datetime.fromtimestamp(int(epoch), dt.UTC).isoformat()


__all__ = [
    "DEDUPE_RULE",
    "MergedData",
    "check_merged",
    "events_frame",
    "lineage_record",
    "load_merged",
    "merge_events",
    "merged_spec",
]
