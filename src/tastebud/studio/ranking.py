"""Pure list helpers of the studio: client-side filters, the long-tail "surprise me" re-rank, overlap of lists."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

#: Exponent of the popularity penalty of :func:`surprise` (0: the model's order; 1: strongly toward the long tail).
SURPRISE_ALPHA = 0.6


def filter_items(
    items: Iterable[dict[str, Any]],
    *,
    genres: Sequence[str] = (),
    year_range: tuple[int, int] | None = None,
) -> list[dict[str, Any]]:
    """Items having any of ``genres`` (all when empty) and a year within ``year_range`` (inclusive; all when None)."""
    wanted = {g.lower() for g in genres}
    out = []
    for it in items:
        if wanted and not wanted & {str(g).lower() for g in it.get("genres") or ()}:
            continue
        if year_range is not None:
            year = it.get("year")
            if year is None or not year_range[0] <= int(year) <= year_range[1]:
                continue
        out.append(it)
    return out


def surprise(
    items: Sequence[dict[str, Any]], popularity: Mapping[str, float], *, alpha: float = SURPRISE_ALPHA
) -> list[dict[str, Any]]:
    """Re-rank toward the long tail: relevance / (1 + popularity) ** alpha, best first.

    Relevance is the model's score scaled to [0.05, 1] over the list (scores of different models are not on one
    scale, and may be negative); ``popularity`` maps item ids to training interaction counts (missing: 0). Each
    returned item gains ``surprise`` (the new score) and ``popularity``.
    """
    if not items:
        return []
    scores = [float(it.get("score") or 0.0) for it in items]
    low, high = min(scores), max(scores)
    span = high - low
    out = []
    for it, s in zip(items, scores, strict=True):
        relevance = 0.05 + 0.95 * ((s - low) / span if span > 0 else 1.0)
        pop = float(popularity.get(str(it["item_id"]), 0.0))
        out.append({**it, "popularity": pop, "surprise": relevance / (1.0 + pop) ** alpha})
    return sorted(out, key=lambda it: -it["surprise"])


def jaccard(a: Iterable[str], b: Iterable[str]) -> float:
    """|A ∩ B| / |A ∪ B| of two id lists (1.0 for two empty lists)."""
    sa, sb = set(a), set(b)
    union = sa | sb
    return len(sa & sb) / len(union) if union else 1.0


def overlap_matrix(lists: Mapping[str, Sequence[str]]) -> list[dict[str, Any]]:
    """Pairwise Jaccard overlap of named id lists: rows ``{"a", "b", "jaccard", "shared"}`` for every ordered pair."""
    names = list(lists)
    return [
        {"a": a, "b": b, "jaccard": round(jaccard(lists[a], lists[b]), 4), "shared": len(set(lists[a]) & set(lists[b]))}
        for a in names
        for b in names
    ]


def shared_items(lists: Mapping[str, Sequence[str]]) -> set[str]:
    """Ids that appear in at least two of the lists."""
    seen: dict[str, int] = {}
    for ids in lists.values():
        for i in set(ids):
            seen[i] = seen.get(i, 0) + 1
    return {i for i, n in seen.items() if n > 1}


def catalogue_facets(items: Iterable[Mapping[str, Any]]) -> tuple[list[str], tuple[int, int] | None]:
    """The genres (sorted) and the year range of ``items``; no genres / ``None`` when the catalogue has none."""
    genres: set[str] = set()
    years: list[int] = []
    for it in items:
        genres.update(str(g) for g in it.get("genres") or ())
        if it.get("year") is not None:
            years.append(int(it["year"]))
    return sorted(genres), (min(years), max(years)) if years else None


__all__ = [
    "SURPRISE_ALPHA",
    "catalogue_facets",
    "filter_items",
    "jaccard",
    "overlap_matrix",
    "shared_items",
    "surprise",
]
