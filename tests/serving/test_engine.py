"""The engine on its own: filter masks, fallback policy, cold items, hybrid models."""

from __future__ import annotations

import gc

import numpy as np
import orjson
import polars as pl
import pytest

from tastebud.data.dataset import Dataset
from tastebud.models import create
from tastebud.serving.engine import Catalog, Engine, Filters
from tastebud.serving.errors import InvalidRequestError


def test_catalog_masks_many_genres_and_missing_years() -> None:
    rng = np.random.default_rng(0)
    n, genres = 300, [f"g{i:03d}" for i in range(150)]  # more genres than one 64-bit word
    item_genres = [sorted(set(rng.choice(genres, size=int(rng.integers(0, 4))).tolist())) for _ in range(n)]
    years = [None if i % 7 == 0 else int(1950 + i % 70) for i in range(n)]
    meta = pl.DataFrame(
        {"item_id": [f"i{i}" for i in range(n)], "year": years, "genres": item_genres},
        schema_overrides={"year": pl.Int64, "genres": pl.List(pl.String)},
    )
    ids = np.array([f"i{i}" for i in reversed(range(n))], dtype=object)  # another order than the metadata
    catalog = Catalog(ids, meta, genres)
    assert catalog.n_words == 3
    for query in (("g000",), ("g070", "g149"), ("g063", "g064", "g128")):
        for lo, hi in ((None, None), (1960, None), (None, 1990), (1970, 1975)):
            mask = catalog.mask(Filters(query, lo, hi))
            expected = []
            for item in ids:
                i = int(item[1:])
                ok = bool(set(query) & set(item_genres[i]))
                if lo is not None or hi is not None:
                    y = years[i]
                    ok &= y is not None and (lo is None or y >= lo) and (hi is None or y <= hi)
                expected.append(ok)
            assert mask is not None and mask.tolist() == expected, (query, lo, hi)
    assert catalog.mask(Filters()) is None and catalog.allowed(Filters()) is None
    first = catalog.allowed(Filters(("g000",)))
    assert first is catalog.allowed(Filters(("g000",)))  # cached
    assert first is not None and first.ids == [str(x) for x in ids[first.mask]]
    assert first.idx.tolist() == np.flatnonzero(first.mask).tolist()


def test_parse_filters_rules(toy_dataset: Dataset) -> None:
    engine = Engine(create("popular").fit(toy_dataset), {}, toy_dataset.item_meta)
    assert engine.genres == ["Action", "Comedy", "Drama", "Thriller"]
    assert engine.parse_filters([" Drama", "Drama", ""], 1, 2) == Filters(("Drama",), 1, 2)
    with pytest.raises(InvalidRequestError, match=r"unknown genre 'Jazz'.*known genres: Action"):
        engine.parse_filters(["Jazz"])
    with pytest.raises(InvalidRequestError, match="year_max: must be >= 0"):
        engine.parse_filters(year_max=-1)
    with pytest.raises(InvalidRequestError, match="year_min: must be <= year_max"):
        engine.parse_filters(year_min=3, year_max=2)


def test_popular_fallback_without_popular_model_counts_interactions(toy_dataset: Dataset) -> None:
    model = create("itemknn").fit(toy_dataset)
    engine = Engine(model, {}, toy_dataset.item_meta)
    result = engine.recommend("stranger", 3)
    counts = toy_dataset.to_frame().group_by("item_id").len()
    top = counts.sort(["len", "item_id"], descending=[True, False])["len"].to_list()[:3]
    assert result.fallback_reason == "unknown_user" and [it["score"] for it in result.items] == top


def test_popular_lists_are_prefixes_of_one_ranking_ties_in_item_order(toy_dataset: Dataset) -> None:
    """Every popular list is the first k of one ranking (score, then item order), with and without filters."""
    from tastebud.serving.engine import _ranking

    scores = np.array([3.0, 5.0, 3.0, -np.inf, 5.0, 0.0, np.nan, 3.0])
    assert _ranking(scores).tolist() == [1, 4, 0, 2, 7, 5]  # ties by index; -inf and NaN have no rank
    for kind in ("popular", "itemknn"):  # the popular model's scores; interaction counts without one
        engine = Engine(create(kind).fit(toy_dataset), {}, toy_dataset.item_meta)
        catalog, pop = engine.popular_catalog, engine.popularity
        expected = sorted(np.flatnonzero(np.isfinite(pop)).tolist(), key=lambda i: (-pop[i], i))
        full = [it["item_id"] for it in engine.popular(len(catalog)).items]
        assert full == [catalog.str_ids[i] for i in expected]
        assert len(set(pop.tolist())) < len(pop)  # the toy data has tied counts: the rule above is exercised
        for k in (1, 2, 3, 5):
            result = engine.popular(k)
            assert [it["item_id"] for it in result.items] == full[:k]
            assert [it["score"] for it in result.items] == [float(pop[i]) for i in expected[:k]]
        genre = engine.genres[0]
        mask = catalog.mask(Filters((genre,)))
        assert mask is not None
        kept = [catalog.str_ids[i] for i in expected if mask[i]]
        assert [it["item_id"] for it in engine.popular(3, Filters((genre,))).items] == kept[:3]
        assert all(genre in it["genres"] for it in engine.popular(3, Filters((genre,))).items)
        assert engine.recommend("stranger", 4).items == engine.popular(4).items  # the unknown users' fallback


def test_cold_item_gets_content_neighbours(cluster_dataset: Dataset) -> None:
    frame = cluster_dataset.to_frame().select("user_id", "item_id")
    cold = "c0i19"
    warm = Dataset.from_frame(frame.filter(pl.col("item_id") != cold), name="warm")  # no metadata, no cold item
    main = create("itemknn").fit(warm)
    content = create("content").fit(cluster_dataset)
    engine = Engine(main, {"content": content}, cluster_dataset.item_meta)
    result = engine.similar(cold, 5)
    assert result.is_fallback and result.fallback_reason == "cold_item"
    assert [it["item_id"] for it in result.items] == content.similar_items([cold], 5).item_ids[0]
    assert all(list(it["genres"]) == ["g0"] for it in result.items)  # neighbours from its own cluster
    assert engine.item(cold)["n_interactions"] == 0


def test_hybrid_serves_sparse_users_itself(cluster_dataset: Dataset) -> None:
    hybrid = create("hybrid", cf_model="itemknn").fit(cluster_dataset)
    engine = Engine(hybrid, {}, cluster_dataset.item_meta, sparse_history_threshold=100)
    result = engine.recommend("c1u00", 4)
    assert result.fallback_reason == "sparse_history" and result.source == "content"
    assert [it["item_id"] for it in result.items] == hybrid.recommend(["c1u00"], 4).item_ids[0]


@pytest.mark.parametrize("cache", [0, 100])
@pytest.mark.parametrize("name", ["svd", "userknn"])
def test_models_without_history_scoring_still_exclude_new_events(name: str, cache: int, toy_dataset: Dataset) -> None:
    from tastebud.serving.realtime import UserOverlays
    from tastebud.stream.handlers import normalise_events

    model = create(name).fit(toy_dataset)
    engine = Engine(model, {}, toy_dataset.item_meta, result_cache_size=cache)
    engine.overlays = UserOverlays()
    user = str(toy_dataset.users.ids[0])
    before = [it["item_id"] for it in engine.recommend(user, 5).items]
    assert before, "the user must get recommendations"
    events, rejected = normalise_events(
        [{"event_id": f"e{i}", "user_id": user, "item_id": item, "rating": 5, "timestamp": 1_700_000_000}
         for i, item in enumerate(before[:2])],
        source="test",
    )  # fmt: skip
    assert not rejected
    engine.overlays.add(events)
    after = [it["item_id"] for it in engine.recommend(user, 5).items]
    assert not set(before[:2]) & set(after)
    assert len(after) == len(before)
    kept = [it["item_id"] for it in engine.recommend(user, 5, exclude_seen=False).items]
    assert kept == model.recommend([user], 5, exclude_seen=False).item_ids[0]  # no exclusion asked: untouched


def _same(a: object, b: object) -> bool:
    """Two answers with the same items, byte for byte as served."""
    return orjson.dumps(a.items_json()) == orjson.dumps(b.items_json())  # type: ignore[attr-defined]


def _items(result: object) -> list[tuple[str, float, list[str]]]:
    return [(it["item_id"], it["score"], it["because"]) for it in result.items]  # type: ignore[attr-defined]


def test_result_cache_answers_repeats_exactly_and_stays_bounded(toy_dataset: Dataset) -> None:
    model = create("als", factors=8, iterations=5).fit(toy_dataset)
    plain = Engine(model, {}, toy_dataset.item_meta)
    cached = Engine(model, {}, toy_dataset.item_meta, result_cache_size=5)
    users = [str(u) for u in toy_dataset.users.ids[:8].tolist()]
    genre = plain.genres[0]
    variants = [
        {"k": 5},
        {"k": 3},
        {"k": 5, "exclude_seen": False},
        {"k": 5, "explain": False},
        {"k": 5, "filters": plain.parse_filters([genre])},
    ]
    for user in users:
        for kw in variants:
            first = cached.recommend(user, **kw)
            again = cached.recommend(user, **kw)  # served from the cache: the same answer, byte for byte
            assert orjson.dumps(again.items_json()) == orjson.dumps(first.items_json())
            assert again.returned == first.returned and again._items is None  # its JSON is answered, not parsed
            assert orjson.dumps(again.items) == orjson.dumps(first.items)
            assert again.logged() == first.logged() and again.requested == first.requested
            assert (again.is_fallback, again.fallback_reason, again.source) == (
                first.is_fallback, first.fallback_reason, first.source,
            )  # fmt: skip
            assert _items(first) == _items(plain.recommend(user, **kw))  # and equal to scoring afresh
    assert cached.cache_hits == len(users) * len(variants)
    assert cached.cache_misses == len(users) * len(variants)
    assert len(cached._results) <= 5
    # the entries hold atomic values only: after a pass of the garbage collector it no longer tracks them, so its
    # full passes do not walk a large cache (a cached Result object would stay tracked for good)
    gc.collect()
    gc.collect()
    assert cached._results and not any(gc.is_tracked(entry) for entry in cached._results.values())
    unknown = cached.recommend("ghost", 5)
    assert unknown.fallback_reason == "unknown_user" and len(cached._results) <= 5


def test_result_cache_never_answers_a_user_with_new_events(toy_dataset: Dataset) -> None:
    from tastebud.serving.realtime import UserOverlays
    from tastebud.stream.handlers import normalise_events

    model = create("als", factors=8, iterations=5).fit(toy_dataset)
    engine = Engine(model, {}, toy_dataset.item_meta, result_cache_size=100)
    engine.overlays = UserOverlays()
    user = str(toy_dataset.users.ids[0])
    before = engine.recommend(user, 5)
    assert _same(engine.recommend(user, 5), before) and engine.cache_hits == 1
    events, rejected = normalise_events(
        [{"event_id": f"e{i}", "user_id": user, "item_id": it["item_id"], "rating": 5, "timestamp": 1_700_000_000}
         for i, it in enumerate(before.items[:2])],
        source="test",
    )  # fmt: skip
    assert not rejected
    engine.overlays.add(events)
    after = engine.recommend(user, 5)
    assert not _same(after, before)
    assert not {it["item_id"] for it in before.items[:2]} & {it["item_id"] for it in after.items}
    misses = engine.cache_misses
    engine.recommend(user, 5)
    assert engine.cache_misses == misses and engine.cache_hits == 1  # the overlay path bypasses the cache
    engine.overlays.clear(user)
    assert _same(engine.recommend(user, 5), before) and engine.cache_hits == 2  # back to the model's own list


def test_cached_items_drop_out_of_the_garbage_collectors_tracking(toy_dataset: Dataset) -> None:
    """Item records hold only strings, numbers and tuples, so full GC passes need not walk the cached lists."""
    import gc

    model = create("als", factors=8, iterations=5).fit(toy_dataset)
    engine = Engine(model, {}, toy_dataset.item_meta, result_cache_size=10)
    result = engine.recommend(str(toy_dataset.users.ids[0]), 5)
    assert result.items and any(it["because"] for it in result.items)
    gc.collect()
    assert not any(gc.is_tracked(it) for it in result.items)


def test_rows_json_is_the_records_serialised_byte_for_byte() -> None:
    """The pieced-together JSON of a ranked row equals serialising the item dicts, for every kind of value."""
    from tastebud.models.base import RankedRow

    ids = ["1", 'q"uote', "c,omma", "ünï", "[x]", "no-meta", "7"]
    meta = pl.DataFrame(
        {"item_id": [*ids[:5], "7"], "title": ["A", 'Say "hi", {ok}', None, "Amélie ✓", "x\ny", "T"],
         "year": [1999, None, 2001, 2002, 1950, 3], "genres": [["Drama"], [], ["A", "B"], None, ["\\"], ["Z"]]},
        schema_overrides={"year": pl.Int64, "genres": pl.List(pl.String)},
    )  # fmt: skip
    catalog = Catalog(np.array(ids, dtype=object), meta, ["A", "B", "Drama", "Z", "\\"])
    rng = np.random.default_rng(3)
    rows = [RankedRow(np.array([], dtype=np.int64), np.array([], dtype=np.float32))]
    for n in (1, 3, 7):
        items = rng.permutation(len(ids))[:n]
        scores = np.concatenate([rng.normal(size=n - 1) * 10.0 ** rng.integers(-8, 8), [1e-30]]).astype(np.float32)
        rows.append(RankedRow(items, scores))
        because = [rng.choice(len(ids), size=int(rng.integers(0, 4)), replace=False).tolist() for _ in range(n)]
        rows.append(RankedRow(items, scores.astype(np.float64), because))
    rows.append(RankedRow(np.array([2, 0]), np.array([np.nan, np.inf])))  # non-finite: null, as orjson writes
    for _ in range(2):  # the second pass uses the pieces serialised in the first
        for row in rows:
            raw, got_ids, got_scores = catalog.rows_json(row)
            records = catalog.rows(row)
            assert raw == orjson.dumps(records)
            assert got_ids == [r["item_id"] for r in records]
            assert orjson.dumps(got_scores) == orjson.dumps([r["score"] for r in records])


def test_a_ranked_result_builds_its_item_dicts_only_when_read(toy_dataset: Dataset) -> None:
    from tastebud.serving.engine import Result

    model = create("ease", l2=50.0).fit(toy_dataset)
    engine = Engine(model, {}, toy_dataset.item_meta)
    user = str(toy_dataset.users.ids[0])
    row = model.recommend_row(int(model.users_.lookup[user]), 4, explain=True)
    result = Result.ranked(engine.catalog, row, 4)
    assert result._items is None and result.returned == len(row.items)
    body = bytes(orjson.dumps({"r": result.items_json()}))
    ids, scores = result.logged()
    assert result._items is None  # the response and its log record need no item dicts
    assert result.items == engine.catalog.rows(row) and orjson.loads(body)["r"] == orjson.loads(
        orjson.dumps(result.items)
    )
    assert ids == [it["item_id"] for it in result.items] and scores == [it["score"] for it in result.items]
    assert result == Result(engine.catalog.rows(row), 4) and result != Result([], 4)
    assert engine.recommend(user, 4) == Result(engine.catalog.rows(row), 4)
