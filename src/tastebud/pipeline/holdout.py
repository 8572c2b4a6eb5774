"""The retrain's fresh holdout, and scoring candidate and champion on it the way serving answers.

**Holdout** (:data:`HOLDOUT_RULE`): of the merged data's interactions whose winning row is a new event *and*
whose (user, item) pair the champion's data never had, the newest ``holdout_fraction`` by event time (ties by
store id). Only such pairs qualify: the champion has never seen them, so it is not punished for having learned a
held-out pair (it would exclude it as seen) nor helped by it, and re-interactions with a known item are no test of
ranking unseen items. The candidate for the comparison is fitted on everything else, compacted: users and items
seen only in the holdout are unknown to it, as they would have been to a model trained just before them.

**Scoring policy**, the same for both models and the one serving applies (see
``tastebud.serving.realtime.recommend_with_overlay``): a holdout user with new events before the holdout (their
*overlay*) is scored by the model's ``recommend_history`` over their training history (when the model knows them)
plus the overlay's items the model knows, the champion thus folding in what a new user did; a user the model knows
without an overlay gets ``recommend``; anyone else gets the model's popular list. The candidate learned every
pre-holdout event, so it never needs an overlay. Both exclude seen items; relevance is binary (every held-out
interaction counts 1), K is 10 by default. The metrics are ``ndcg_at_K`` (the gate's primary), ``recall_at_K``,
``precision_at_K``, ``hit_rate_at_K`` and ``coverage`` (share of the merged catalog recommended to anyone).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from tastebud.data.dataset import Dataset
from tastebud.errors import ParameterError
from tastebud.evaluation import metrics as m
from tastebud.evaluation.protocol import relevance_matrix
from tastebud.models.base import Recommender
from tastebud.pipeline.lineage import MergedData

#: How the holdout is chosen (recorded in the manifest's split parameters).
HOLDOUT_RULE = "newest holdout_fraction of first-time (user, item) pairs from new events, by event time"
#: Metrics computed on the holdout (besides ``coverage``).
HOLDOUT_METRICS = ("ndcg", "recall", "precision", "hit_rate")
_BATCH = 1024


@dataclass
class Holdout:
    """A fresh holdout of new events and the data before it.

    Attributes:
        train: the merged data without the holdout, compacted (what the comparison candidate is fitted on).
        test: the holdout interactions, over the merged vocabulary.
        users: ids of the holdout users, in index order of ``test``.
        overlays: per holdout user with new events outside the holdout, their items and values, oldest first.
        meta: sizes, the time the holdout starts and the rule.
    """

    train: Dataset
    test: Dataset
    users: list[str]
    overlays: dict[str, tuple[list[str], np.ndarray]]
    meta: dict[str, Any] = field(default_factory=dict)


def select_holdout(merged: MergedData, fraction: float) -> Holdout:
    """Hold out the newest ``fraction`` of the first-time pairs from new events (see the module docstring)."""
    ds = merged.dataset
    inter = ds.interactions
    eligible = np.flatnonzero(merged.from_events & merged.novel)
    n_hold = min(len(eligible), math.ceil(fraction * len(eligible)))
    stamps = inter["timestamp"].fill_null(np.iinfo(np.int64).min).to_numpy()
    order = np.lexsort((merged.event_order[eligible], stamps[eligible]))
    chosen = eligible[order[len(eligible) - n_hold :]]
    mask = np.zeros(inter.height, dtype=bool)
    mask[chosen] = True
    keep = pl.Series(mask)
    test = ds.with_interactions(inter.filter(keep), split={"method": "retrain-holdout", "part": "holdout"})
    train = ds.with_interactions(inter.filter(~keep), split={"method": "retrain-holdout", "part": "train"}).compact()
    user_idx = np.unique(inter["user_idx"].to_numpy()[mask])
    users = [str(u) for u in ds.users.ids[user_idx].tolist()]
    overlays = _overlays(ds, merged.from_events & ~mask, set(user_idx.tolist()), stamps, merged.event_order)
    cut = int(stamps[chosen].min()) if n_hold else None
    meta = {
        "rule": HOLDOUT_RULE,
        "fraction": fraction,
        "eligible": len(eligible),
        "interactions": n_hold,
        "users": len(users),
        "users_with_overlay": len(overlays),
        "new_users": sum(u not in merged.parent.users for u in users),
        "starts": None if cut is None else _iso(cut),
    }
    return Holdout(train=train, test=test, users=users, overlays=overlays, meta=meta)


def _overlays(
    ds: Dataset, rows: np.ndarray, users: set[int], stamps: np.ndarray, order: np.ndarray
) -> dict[str, tuple[list[str], np.ndarray]]:
    """Per holdout user, the items and values of their event rows outside the holdout, oldest first."""
    user_of = ds.interactions["user_idx"].to_numpy()
    wanted = np.fromiter(users, dtype=np.int64, count=len(users))
    idx = np.flatnonzero(rows & np.isin(user_of, wanted))
    idx = idx[np.lexsort((order[idx], stamps[idx], user_of[idx]))]
    item_ids = ds.items.ids[ds.interactions["item_idx"].to_numpy()[idx]]
    values = ds.interactions["value"].to_numpy().astype(np.float64)[idx]
    firsts, starts = np.unique(user_of[idx], return_index=True)
    bounds = [*starts.tolist(), len(idx)]
    return {
        str(ds.users.ids[user]): ([str(i) for i in item_ids[lo:hi].tolist()], values[lo:hi])
        for user, lo, hi in zip(firsts.tolist(), bounds[:-1], bounds[1:], strict=True)
    }


@dataclass
class Scores:
    """One model's results on the holdout.

    Attributes:
        metrics: the holdout metrics (module docstring).
        sources: how many lists were made by ``recommend`` (``model``), by ``recommend_history`` (``fold_in``) and
            from the popular list (``popular``).
        recs: each holdout user's list (``Holdout.users`` order) as item indices of the merged vocabulary, -1 padded.
    """

    metrics: dict[str, float | None]
    sources: dict[str, int]
    recs: np.ndarray


def score_holdout(
    model: Recommender,
    popular: Recommender,
    holdout: Holdout,
    *,
    k: int = 10,
    overlays: bool = True,
) -> Scores:
    """Score every holdout user with ``model`` by the serving policy and compute the holdout metrics.

    Args:
        model: a fitted model.
        popular: its popular fallback (``popular_items`` answers users it cannot score).
        holdout: the holdout.
        k: list length.
        overlays: fold in the users' pre-holdout events (the champion); False for a model that learned them.
    """
    lookup = holdout.test.items.lookup
    recs = np.full((len(holdout.users), k), -1, dtype=np.int64)
    sources = {"model": 0, "fold_in": 0, "popular": 0}
    assert model.users_ is not None and model.items_ is not None
    known_users, known_items = model.users_.lookup, model.items_.lookup
    batch: list[int] = []
    popular_row = _indices(_popular_list(popular, k), lookup, k)
    for row, user in enumerate(holdout.users):
        overlay = holdout.overlays.get(user) if overlays else None
        if overlay is not None and getattr(model, "history_scoring", False):
            ids, values = _history(model, user, overlay, known_users, known_items)
            if ids:
                got = model.recommend_history(ids, values, k, exclude_seen=True)
                recs[row] = _indices(got.item_ids[0], lookup, k)
                sources["fold_in"] += 1
                continue
        if user in known_users:
            batch.append(row)
        else:
            recs[row] = popular_row
            sources["popular"] += 1
    for start in range(0, len(batch), _BATCH):
        rows = batch[start : start + _BATCH]
        got = model.recommend([holdout.users[r] for r in rows], k, exclude_seen=True)
        for r, items in zip(rows, got.item_ids, strict=True):
            recs[r] = _indices(items, lookup, k)
    sources["model"] = len(batch)
    return Scores(_metrics(recs, holdout, k), sources, recs)


def _history(
    model: Recommender,
    user: str,
    overlay: tuple[list[str], np.ndarray],
    known_users: dict[str, int],
    known_items: dict[str, int],
) -> tuple[list[str], np.ndarray]:
    """Training history (if known) plus the overlay's known items; the overlay last so its values win."""
    new_ids, new_values = overlay
    keep = np.fromiter((i in known_items for i in new_ids), dtype=bool, count=len(new_ids))
    base_ids, base_values = model.user_history(user) if user in known_users else ([], np.empty(0))
    ids = [*base_ids, *(i for i, ok in zip(new_ids, keep.tolist(), strict=True) if ok)]
    return ids, np.concatenate([np.asarray(base_values, dtype=np.float64), new_values[keep]])


def _popular_list(popular: Recommender, k: int) -> list[str]:
    """The popular fallback's overall top ``k`` (what serving answers an unknown user)."""
    ranking = getattr(popular, "popular_items", None)
    if ranking is None:
        raise ParameterError(f"fallback {popular.name!r} has no popular list")
    return list(ranking(k).item_ids[0])


def _indices(items: Sequence[str], lookup: dict[str, int], k: int) -> np.ndarray:
    out = np.full(k, -1, dtype=np.int64)
    idx = [lookup.get(str(i), -1) for i in list(items)[:k]]
    out[: len(idx)] = idx
    return out


def _metrics(recs: np.ndarray, holdout: Holdout, k: int) -> dict[str, float | None]:
    if not holdout.users:
        return {**{f"{name}_at_{k}": None for name in HOLDOUT_METRICS}, "coverage": None}
    relevant, _ = relevance_matrix(holdout.test)
    rows = holdout.test.user_index(holdout.users)
    per_user = m.ranking_metrics(recs, relevant[rows], k, metrics=HOLDOUT_METRICS, graded=False)
    out: dict[str, float | None] = {f"{name}_at_{k}": _finite(m.mean(v)) for name, v in per_user.items()}
    out["coverage"] = m.catalog_coverage(recs, holdout.test.n_items)
    return out


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _iso(epoch: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat()


__all__ = ["HOLDOUT_METRICS", "HOLDOUT_RULE", "Holdout", "Scores", "score_holdout", "select_holdout"]
