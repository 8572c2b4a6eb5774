"""One live state across processes: overlays follow the event store, rebuild at start, hand off at a switch.

Each :class:`ModelHolder` here stands for one serving process: they share nothing but the store's database file,
as two uvicorn workers (or two replicas on one PostgreSQL) do. The process-level test with ``tastebud serve
--workers 2`` is in ``test_live_workers.py``.
"""

from __future__ import annotations

import sys
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tastebud.config import Settings
from tastebud.data.dataset import Dataset
from tastebud.models import create
from tastebud.registry.bundle import write_bundle
from tastebud.serving.holder import ModelHolder, events_cutoff
from tastebud.serving.realtime import EventFollower, UserOverlays
from tastebud.store import Store, create_store
from tastebud.stream.ingest import ingest_events

NOW = int(time.time()) - 60


def ev(n: int, user: str, item: str, rating: float = 5.0) -> dict[str, Any]:
    return {"event_id": f"live-{n}", "user_id": user, "item_id": item, "rating": rating, "timestamp": NOW + n}


@pytest.fixture
def store_url(settings: Settings) -> str:
    return settings.store_url


def open_store(url: str) -> Store:
    s = create_store(url=url)
    s.init_schema()
    return s


@pytest.fixture
def stores(store_url: str) -> Iterator[list[Store]]:
    """Two connections to one database file: one per 'process'."""
    opened = [open_store(store_url), open_store(store_url)]
    yield opened
    for s in opened:
        s.close()


def process(store: Store, bundle: Path, *, interval_s: float = 0.0) -> ModelHolder:
    """A serving process: a holder with the bundle loaded and a follower on its own store connection."""
    holder = ModelHolder(None, name="ml")
    follower = EventFollower(store, interval_s=interval_s)
    holder.attach_follower(follower)
    holder.load_path(bundle, version=1)
    follower.start()
    return holder


def items(train: Dataset, *idx: int) -> list[str]:
    return [str(train.items.ids[i]) for i in idx]


# ---------------------------------------------------------------------------------------------- overlays
def test_unknown_items_do_not_grow_overlays(train: Dataset) -> None:
    overlays = UserOverlays(vocabulary={str(i): n for n, i in enumerate(train.items.ids.tolist())})
    rows = [SimpleNamespace(user_id=f"u{n % 50}", item_id=f"not-an-item-{n}", value=1.0) for n in range(20_000)]
    assert overlays.add(rows) == set()
    assert len(overlays) == 0 and overlays.nbytes == 0 and overlays.unknown_items == 20_000
    known = SimpleNamespace(user_id="u1", item_id=str(train.items.ids[3]), value=4.0)
    assert overlays.add([known]) == {"u1"}
    ids, values = overlays.get("u1")  # type: ignore[misc]
    assert ids == [str(train.items.ids[3])] and values.tolist() == [4.0]
    assert ids[0] is overlays._names[3]  # type: ignore[index]  # the vocabulary's own string, not a copy


def test_overlays_stay_within_their_byte_bound_and_the_estimate_is_honest() -> None:
    vocabulary = {f"item-{i:06d}": i for i in range(50_000)}
    names = list(vocabulary)
    bound = 4 * 1024 * 1024
    tracemalloc.start()
    try:
        overlays = UserOverlays(max_bytes=bound, max_items=200, vocabulary=vocabulary)
        before = tracemalloc.get_traced_memory()[0]
        for u in range(600):  # 600 users x 200 items: far more than 4 MiB would hold
            overlays.add(SimpleNamespace(user_id=f"user-{u}", item_id=names[(u * 7 + j) % 50_000], value=float(j))
                         for j in range(230))  # fmt: skip
            assert overlays.nbytes <= bound
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert overlays.evicted_users > 0 and 0 < len(overlays) < 600
    assert all(len(overlays.get(u)[0]) == 200 for u in list(overlays._users)[:5])  # type: ignore[index]
    # the estimate tracks what the interpreter really allocated (within 25%), so the bound is a real one
    assert abs(used - overlays.nbytes) / overlays.nbytes < 0.25, (used, overlays.nbytes)
    per_user = overlays.nbytes / len(overlays)
    assert per_user < 16_000  # 200 items per user (the default before: about 59 KB)


def test_evicting_and_clearing_keep_the_byte_count_exact() -> None:
    overlays = UserOverlays(max_users=3)
    for u in range(5):
        overlays.add([SimpleNamespace(user_id=f"u{u}", item_id=f"i{j}", value=1.0) for j in range(u + 1)])
    assert len(overlays) == 3 and overlays.evicted_users == 2
    assert overlays.nbytes == sum(e.nbytes for e in overlays._users.values())
    overlays.clear("u4")
    assert overlays.nbytes == sum(e.nbytes for e in overlays._users.values())
    overlays.clear()
    assert overlays.nbytes == 0 and len(overlays) == 0
    assert sys.getsizeof(overlays._users) > 0


# ---------------------------------------------------------------------------------------------- two processes
def test_an_event_stored_by_one_process_reaches_the_other_within_a_second(
    stores: list[Store], bundles: dict[str, Path], train: Dataset
) -> None:
    a = process(stores[0], bundles["als"], interval_s=0.05)
    b = process(stores[1], bundles["als"], interval_s=0.05)
    try:
        for holder in (a, b):
            assert holder.current is not None
            assert holder.current.engine.recommend("newcomer", 5).fallback_reason == "unknown_user"
        start = time.monotonic()
        result = ingest_events(stores[0], [ev(n, "newcomer", i) for n, i in enumerate(items(train, 1, 2, 3))])
        assert result.accepted == 3
        deadline = start + 1.0
        while "newcomer" not in b.overlays:
            assert time.monotonic() < deadline, "process b did not apply the event within 1 s"
            time.sleep(0.01)
        for holder in (a, b):
            assert holder.current is not None
            answer = holder.current.engine.recommend("newcomer", 5)
            assert answer.is_fallback is False and answer.extra["realtime_items"] == 3
            assert not set(items(train, 1, 2, 3)) & {it["item_id"] for it in answer.items}
    finally:
        for holder in (a, b):
            assert holder.follower is not None
            holder.follower.stop()


def test_a_restarted_process_rebuilds_its_overlays_from_the_store(
    stores: list[Store], bundles: dict[str, Path], train: Dataset
) -> None:
    a = process(stores[0], bundles["als"])
    ingest_events(stores[0], [ev(n, "returning", i) for n, i in enumerate(items(train, 4, 5))])
    a.follower.poll()  # type: ignore[union-attr]
    before = a.current.engine.recommend("returning", 5)  # type: ignore[union-attr]
    assert before.extra["realtime_items"] == 2
    again = process(stores[1], bundles["als"])  # a fresh process: nothing in memory, only the store
    after = again.current.engine.recommend("returning", 5)  # type: ignore[union-attr]
    assert after.extra["realtime_items"] == 2
    assert [it["item_id"] for it in after.items] == [it["item_id"] for it in before.items]
    assert again.overlays.last_id == stores[1].last_event_id()


def test_a_switch_hands_events_the_new_model_learned_over_to_it(
    stores: list[Store], bundles: dict[str, Path], train: Dataset, tmp_path: Path
) -> None:
    store = stores[0]
    holder = process(store, bundles["als"])
    ingest_events(store, [ev(0, "early", items(train, 1)[0]), ev(1, "early", items(train, 2)[0])])
    through = store.last_event_id()
    ingest_events(store, [ev(2, "both", items(train, 3)[0])])
    learned_both = store.last_event_id()
    ingest_events(store, [ev(3, "both", items(train, 4)[0]), ev(4, "late", items(train, 5)[0])])
    holder.follower.poll()  # type: ignore[union-attr]
    assert {"early", "both", "late"} <= set(holder.overlays._users)
    # v2 learned every event up to the third one (as a retrain through that id would)
    model = create("als", factors=8, iterations=4, random_state=1, num_threads=1).fit(train)
    v2 = write_bundle(model, tmp_path / "v2", train=train, metrics={"ndcg_at_10": 0.1},
                      extra={"events_through_id": learned_both})  # fmt: skip
    holder.load_path(v2, version=2)
    assert events_cutoff(holder.current.bundle.manifest) == learned_both  # type: ignore[union-attr]
    overlays = holder.overlays
    assert "early" not in overlays  # everything it did is in the model now: counted once, by the model
    assert overlays.get("both")[0] == items(train, 4)  # type: ignore[index]  # only what the model did not learn
    assert overlays.get("late")[0] == items(train, 5)  # type: ignore[index]
    assert overlays.cutoff == learned_both and through < learned_both
    # an event stored after the switch is followed as before
    ingest_events(store, [ev(5, "early", items(train, 6)[0])])
    holder.follower.poll()  # type: ignore[union-attr]
    assert holder.overlays.get("early")[0] == items(train, 6)  # type: ignore[index]
    # back to v1 (a rollback): every event since its own cutoff (none) is applied again
    holder.load_path(bundles["als"], version=1)
    assert holder.overlays.get("early")[0] == items(train, 1, 2, 6)  # type: ignore[index]


def test_events_stored_while_a_model_loads_are_not_lost(
    stores: list[Store], bundles: dict[str, Path], train: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = stores[0]
    holder = process(store, bundles["als"])
    follower = holder.follower
    assert follower is not None
    build = follower.build

    def slow_build(**kwargs: Any) -> UserOverlays:
        overlays = build(**kwargs)
        # an event arrives after the new overlays were read, before the swap
        ingest_events(stores[1], [ev(9, "in-between", items(train, 7)[0])])
        return overlays

    monkeypatch.setattr(follower, "build", slow_build)
    holder.load_path(bundles["itemknn"], version=2)
    assert holder.overlays.get("in-between")[0] == items(train, 7)  # type: ignore[index]


def test_a_store_that_cannot_be_read_at_load_fills_the_overlays_on_the_next_poll(
    stores: list[Store], bundles: dict[str, Path], train: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    ingest_events(stores[0], [ev(n, "patient", i) for n, i in enumerate(items(train, 1, 2))])
    holder = ModelHolder(None, name="ml")
    follower = EventFollower(stores[1], interval_s=0)
    holder.attach_follower(follower)

    def broken(*args: Any, **kwargs: Any) -> UserOverlays:
        raise OSError("database is locked")

    monkeypatch.setattr(follower, "build", broken)
    monkeypatch.setattr(stores[1], "events_after", broken)
    holder.load_path(bundles["als"], version=1)  # the model is served all the same
    assert holder.current is not None and holder.current.version == 1
    assert "patient" not in holder.overlays
    monkeypatch.undo()  # the store is back
    follower.poll()
    assert holder.overlays.get("patient")[0] == items(train, 1, 2)  # type: ignore[index]
