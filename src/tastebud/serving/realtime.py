"""Real-time personalisation: one live state shared by every serving process, and scoring with it.

**The store is the source of truth; every serving process follows it.** An event counts once it is stored
(``POST /events`` writes it, the Kafka ingest consumer writes it). Each serving process (every ``--workers``
worker, every replica on another machine sharing the store URL) runs an :class:`EventFollower` that reads the
events stored after the last one it applied, in the store's arrival order (its ``id`` sequence), and adds them to
the per-user :class:`UserOverlays` of the model it serves. The worker that took a ``POST /events`` follows the
store right after the write, so its own answer reflects the events at once; the others follow within one poll
interval (``serving.event_poll_s``, 0.1 s by default). One mechanism serves the embedded path and Kafka alike: with
Kafka, the ingest consumer group writes the store and the followers read it, so a process never counts an event
the store does not hold, and no per-process consumer group has to be created, tracked or cleaned up.

**An overlay belongs to a model.** A model trained on stored events records the highest event id it learned
(``extra.events_through_id`` in its manifest, 0 for a model trained from files only). When a process loads a model
(at start, or a switch), it builds that model's overlays from the store's events after that cutoff, then swaps model
and overlays in together: a restart loses nothing, and the events a retrained model already learned leave the
overlay (nothing counted twice) while newer ones stay applied.

When the next ``/recommend`` for a user with an overlay arrives, :func:`recommend_with_overlay` scores their
training history plus the overlay with the model's ``recommend_history``: a factor model folds the combined history
in, item-item models multiply it by their item-item matrix, the content model rebuilds the profile.

Overlays are bounded in bytes (``serving.overlay_max_bytes``), in items per user and in users; the least recently
updated users go first. Events for items the served model does not know are counted and not kept (they cannot
change its scores), so unknown ids cannot grow the overlay.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from tastebud.models.base import Recommendations
from tastebud.serving._loop import Loop

if TYPE_CHECKING:  # pragma: no cover
    from tastebud.serving.engine import Engine, Filters, Result

logger = logging.getLogger(__name__)

#: Default bound on remembered items per user.
MAX_ITEMS_PER_USER = 200
#: Default bound on users with an overlay.
MAX_USERS = 100_000
#: Default bound on the overlays' memory per process.
MAX_BYTES = 128 * 1024 * 1024

# Memory model of one user's entry (CPython 3.11, 64-bit), checked against tracemalloc in the tests: the entry
# object with its slots, the user's slot in the ordered users map, the user id string, the items dict (its own
# size, read with sys.getsizeof) and one float object per item. Item id strings are the model vocabulary's own
# objects, shared, so they cost nothing here; without a vocabulary each item's string is counted too.
_ENTRY_BYTES = 64 + 104
_FLOAT_BYTES = sys.getsizeof(1.5)


class _Entry:
    __slots__ = ("items", "nbytes", "updated_at")

    def __init__(self) -> None:
        self.items: dict[str, float] = {}
        self.updated_at = 0.0
        self.nbytes = 0


class UserOverlays:
    """Per-user item ids and values from events newer than the served model; thread-safe and bounded.

    A repeated item keeps its latest value and moves to the end; beyond ``max_items`` a user's oldest items drop;
    beyond ``max_users`` users or ``max_bytes`` bytes the least recently updated users drop.

    Args:
        max_items: most items remembered per user.
        max_users: most users with an overlay.
        max_bytes: most bytes the overlays may take (an estimate per entry, see ``_ENTRY_BYTES``).
        observe: called with the seconds each scoring with an overlay took (a histogram's ``observe``).
        vocabulary: the served model's item ids (id -> index). Events for other items are not kept (counted in
            :attr:`unknown_items`); kept ids are the vocabulary's own string objects. ``None`` keeps every item.
        cutoff: the highest store event id the served model learned; the overlays hold only later events.

    Attributes:
        last_id: the highest store event id applied (the follower reads from there).
        unknown_items: events dropped because the model does not know their item.
        evicted_users: users dropped to stay within the bounds.
    """

    def __init__(
        self,
        max_items: int = MAX_ITEMS_PER_USER,
        max_users: int = MAX_USERS,
        observe: Callable[[float], None] | None = None,
        *,
        max_bytes: int = MAX_BYTES,
        vocabulary: Mapping[str, int] | None = None,
        cutoff: int = 0,
    ) -> None:
        self.max_items = max_items
        self.max_users = max_users
        self.max_bytes = max_bytes
        self.observe = observe
        self.cutoff = cutoff
        self.last_id = cutoff
        self.unknown_items = 0
        self.evicted_users = 0
        self._vocabulary = vocabulary
        self._names: Sequence[str] | None = None
        if vocabulary is not None:
            names: list[str] = [""] * len(vocabulary)
            for name, index in vocabulary.items():
                names[index] = name
            self._names = names
        self._users: OrderedDict[str, _Entry] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        # the follower's lookback state for these overlays: (time, last id) marks and the ids above the horizon
        self._marks: deque[tuple[float, int]] = deque()
        self._recent: set[int] = set()

    def __len__(self) -> int:
        return len(self._users)

    def __contains__(self, user_id: object) -> bool:
        return user_id in self._users

    @property
    def nbytes(self) -> int:
        """Estimated bytes the overlays take."""
        return self._bytes

    def add(self, events: Iterable[Any]) -> set[str]:
        """Record events (anything with ``user_id``, ``item_id``, ``value``); returns the users updated."""
        now = time.time()
        touched: set[str] = set()
        vocabulary, names = self._vocabulary, self._names
        with self._lock:
            for e in events:
                item = str(e.item_id)
                if vocabulary is not None and names is not None:
                    index = vocabulary.get(item)
                    if index is None:
                        self.unknown_items += 1
                        continue
                    item = names[index]  # the vocabulary's own string: shared, not copied
                user = str(e.user_id)
                entry = self._users.get(user)
                if entry is None:
                    entry = self._users[user] = _Entry()
                else:
                    self._users.move_to_end(user)
                    self._bytes -= entry.nbytes
                items = entry.items
                items.pop(item, None)
                items[item] = float(e.value)
                if len(items) > self.max_items:
                    for old in list(items)[: len(items) - self.max_items]:
                        del items[old]
                    if sys.getsizeof(items) > 2 * sys.getsizeof(dict.fromkeys(items)):
                        entry.items = items = dict(items)  # deletions leave the table at its largest size
                entry.updated_at = now
                entry.nbytes = self._entry_bytes(user, items)
                self._bytes += entry.nbytes
                touched.add(user)
            while self._users and (len(self._users) > self.max_users or self._bytes > self.max_bytes):
                dropped, gone = self._users.popitem(last=False)
                self._bytes -= gone.nbytes
                self.evicted_users += 1
                touched.discard(dropped)
        return touched

    def _entry_bytes(self, user: str, items: dict[str, float]) -> int:
        size = _ENTRY_BYTES + sys.getsizeof(user) + sys.getsizeof(items) + _FLOAT_BYTES * len(items)
        if self._vocabulary is None:
            size += sum(sys.getsizeof(i) for i in items)
        return size

    def get(self, user_id: str) -> tuple[list[str], np.ndarray] | None:
        """A copy of the user's overlay as ``(item ids, values)``, oldest first; ``None`` without one."""
        entry = self._users.get(user_id)
        if entry is None:
            return None
        with self._lock:
            items = list(entry.items.items())
        return [i for i, _ in items], np.fromiter((v for _, v in items), dtype=np.float64, count=len(items))

    def clear(self, user_id: str | None = None) -> None:
        """Forget one user's overlay (or every overlay)."""
        with self._lock:
            if user_id is None:
                self._users.clear()
                self._bytes = 0
            else:
                gone = self._users.pop(user_id, None)
                if gone is not None:
                    self._bytes -= gone.nbytes

    def stats(self) -> dict[str, int]:
        """Users, estimated bytes, last applied event id, cutoff, unknown-item events and evictions."""
        return {
            "users": len(self._users), "bytes": self._bytes, "last_event_id": self.last_id, "cutoff": self.cutoff,
            "unknown_items": self.unknown_items, "evicted_users": self.evicted_users,
        }  # fmt: skip


class _Row:
    """A stored event row as the overlays read it."""

    __slots__ = ("item_id", "user_id", "value")

    def __init__(self, row: Mapping[str, Any]) -> None:
        self.user_id = row["user_id"]
        self.item_id = row["item_id"]
        value = row.get("value")
        if value is None:
            value = row.get("rating")
        self.value = 1.0 if value is None else value


class EventFollower:
    """Follows the event store for one serving process and keeps the served model's overlays current.

    Args:
        store: the event store (``events_after``, ``last_event_id``).
        interval_s: seconds between polls of the background thread (:meth:`start`).
        page: events read per query.
        rebuild_max_events: most events a rebuild reads (the newest ones): bounds the start-up time of a process
            whose model is far behind the store.
        lookback_s: seconds of arrivals re-read on every poll, for stores whose ids may commit out of order
            (PostgreSQL sequences: an id drawn by a transaction that commits later than a higher one). Events
            already applied are skipped by id. 0 for SQLite, whose writes are serialised.
        overlay_args: keyword arguments of every :class:`UserOverlays` built (bounds, ``observe``).
        on_apply: called with the number of events each poll applied (a metrics counter).
    """

    def __init__(
        self,
        store: Any,
        *,
        interval_s: float = 0.1,
        page: int = 5_000,
        rebuild_max_events: int = 1_000_000,
        lookback_s: float | None = None,
        overlay_args: Mapping[str, Any] | None = None,
        on_apply: Callable[[int], None] | None = None,
    ) -> None:
        self.store = store
        self.interval_s = interval_s
        self.page = page
        self.rebuild_max_events = rebuild_max_events
        if lookback_s is None:
            lookback_s = 2.0 if getattr(store, "backend", "sqlite") == "postgresql" else 0.0
        self.lookback_s = lookback_s
        self.overlay_args = dict(overlay_args or {})
        self.on_apply = on_apply
        #: serialises reads of the store with the swap of a model and its overlays
        self.lock = threading.RLock()
        self._targets: Callable[[], Iterable[UserOverlays]] = tuple
        self._loop = Loop("tastebud-event-follower", self._step, interval_s)
        self.errors = 0
        self.last_error: str | None = None

    def follow(self, targets: Callable[[], Iterable[UserOverlays]]) -> None:
        """Apply polled events to the overlays ``targets()`` returns (of every model the process serves)."""
        self._targets = targets

    # ------------------------------------------------------------------ building
    def build(self, *, cutoff: int, vocabulary: Mapping[str, int] | None) -> UserOverlays:
        """New overlays for a model whose training learned the stored events up to ``cutoff``, from the store."""
        overlays = UserOverlays(**self.overlay_args, vocabulary=vocabulary, cutoff=cutoff)
        newest = self.store.last_event_id()
        start = max(int(cutoff), newest - self.rebuild_max_events)
        if start > cutoff:
            logger.warning(
                "overlays rebuilt from the newest %d events only (the model learned events through id %d, the "
                "store holds %d)", self.rebuild_max_events, cutoff, newest,
            )  # fmt: skip
        overlays.last_id = start
        self._read_into(overlays, through_id=newest)  # no lock: these overlays are nobody's yet
        return overlays

    def swap(self, install: Callable[[], None], overlays: UserOverlays) -> None:
        """Catch ``overlays`` up with the store and run ``install`` (the model swap) in one step.

        Events stored while the overlays were being built are applied first, under the lock the follower thread
        takes too, so no event falls between the old model's overlays and the new one's.
        """
        with self.lock:
            try:
                self._read_into(overlays)
            except Exception as err:  # the model is served all the same; the next poll catches up
                logger.warning("could not catch the real-time overlays up with the store: %s", err)
            install()

    # ------------------------------------------------------------------ following
    def poll(self) -> set[str]:
        """Apply the events stored since the last poll to the served models' overlays; the users updated."""
        touched: set[str] = set()
        with self.lock:
            seen: set[int] = set()
            for overlays in self._targets():
                if id(overlays) not in seen:  # two variants may share one model's overlays
                    seen.add(id(overlays))
                    touched |= self._read_into(overlays, lookback=True)
        return touched

    def _read_into(self, overlays: UserOverlays, *, through_id: int | None = None, lookback: bool = False) -> set[str]:
        touched: set[str] = set()
        applied = 0
        now = time.monotonic()
        after = overlays.last_id
        marks = overlays._marks
        if lookback and self.lookback_s > 0:
            while len(marks) > 1 and marks[1][0] <= now - self.lookback_s:
                marks.popleft()
            if marks and marks[0][0] <= now - self.lookback_s:
                after = min(after, marks[0][1])
        while True:
            rows = self.store.events_after(after, through_id=through_id, limit=self.page)
            recent = overlays._recent if lookback else ()
            fresh = [r for r in rows if r["id"] > overlays.cutoff and r["id"] not in recent]
            if fresh:
                touched |= overlays.add(_Row(r) for r in fresh)
                applied += len(fresh)
                if lookback and self.lookback_s > 0:
                    overlays._recent.update(r["id"] for r in fresh)
                overlays.last_id = max(overlays.last_id, fresh[-1]["id"])
            if len(rows) < self.page:
                break
            after = rows[-1]["id"]
        if self.lookback_s > 0 and lookback:
            marks.append((now, overlays.last_id))
            horizon = marks[0][1]
            overlays._recent = {i for i in overlays._recent if i > horizon}
        if applied and self.on_apply is not None:
            self.on_apply(applied)
        return touched

    def _step(self) -> None:
        try:
            self.poll()
        except Exception as err:  # the store may be briefly unreachable: try again next round
            self.errors += 1
            if str(err) != self.last_error:
                logger.warning("could not follow the event store: %s", err)
            self.last_error = str(err)
        else:
            self.last_error = None

    def start(self) -> None:
        """Poll every ``interval_s`` in a daemon thread until :meth:`stop` (0: never)."""
        self._loop.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the polling thread."""
        self._loop.stop(timeout)


def recommend_with_overlay(
    engine: Engine,
    user_id: str,
    overlay: tuple[list[str], np.ndarray],
    k: int,
    *,
    exclude_seen: bool,
    filters: Filters,
    explain: bool,
) -> Result | None:
    """Score ``user_id``'s training history plus ``overlay`` with the engine's model; ``None``: cannot.

    ``None`` (the caller answers as without an overlay) when the model cannot score a history or neither the
    training history nor the overlay has an item the model knows. Items the model does not know (added to the
    catalog after training) are left out of the scoring.
    """
    from tastebud.serving.engine import Result, _rows

    started = time.perf_counter()
    model = engine.model
    if not getattr(model, "history_scoring", False):
        return None
    assert model.items_ is not None
    lookup = model.items_.lookup
    new_ids, new_values = overlay
    known = np.fromiter((i in lookup for i in new_ids), dtype=bool, count=len(new_ids))
    new_ids = [i for i, ok in zip(new_ids, known.tolist(), strict=True) if ok]
    new_values = new_values[known]
    if user_id in engine.user_lookup:
        base_ids, base_values = model.user_history(user_id)
    else:
        base_ids, base_values = [], np.empty(0)
    if not base_ids and not new_ids:
        return None
    # the overlay comes last, so an item in both keeps the event's value (a retrained model that already
    # learned the event then sees the same history it was trained on)
    ids = [*base_ids, *new_ids]
    values = np.concatenate([np.asarray(base_values, dtype=np.float64), new_values])
    allowed = engine.catalog.allowed(filters)
    if allowed is not None and not allowed.ids:
        items: list[dict[str, Any]] = []
    else:
        recs: Recommendations = model.recommend_history(
            ids,
            values,
            k,
            exclude_seen=exclude_seen,
            candidates=None if allowed is None else allowed.ids,
            explain=explain,
        )
        items = _rows(recs, engine.catalog)
    observe = engine.overlays.observe if engine.overlays is not None else None
    if observe is not None:
        observe(time.perf_counter() - started)
    return Result(items, k, source="model", extra={"realtime_items": len(new_ids)})


class BackgroundConsumer:
    """The Kafka ingest consumer run inside the serving process (``stream.consume_in_server``).

    It stores events like the standalone consumer (same validation, dead letters, commits after the write); its
    workers share one consumer group, so each event is stored once. After each stored batch it calls
    ``on_stored`` (the process's :meth:`EventFollower.poll`), so this process applies the batch at once; every other
    process applies it from the store on its next poll.

    Args:
        consumer: an :class:`tastebud.stream.consumer.EventConsumer` whose ``on_events`` is not yet set.
        on_stored: called with each stored batch's valid events.
    """

    def __init__(self, consumer: Any, on_stored: Callable[[Any], Any]) -> None:
        self.consumer = consumer
        consumer.on_events = on_stored
        self._thread: threading.Thread | None = None

    @classmethod
    def from_settings(
        cls, settings: Any, store: Any, on_stored: Callable[[Any], Any], metrics: Any = None, **kwargs: Any
    ) -> BackgroundConsumer:
        """A consumer of the topics in ``settings.stream`` writing to ``store`` (``kwargs`` go to the consumer)."""
        from tastebud.stream.consumer import EventConsumer

        if metrics is not None:
            kwargs.setdefault("metrics", metrics)
        # a short poll keeps the produce-to-recommendation delay low; batches still fill under load
        kwargs.setdefault("poll_timeout", 0.05)
        return cls(EventConsumer.from_settings(settings, store, **kwargs), on_stored)

    def start(self) -> None:
        """Run the consumer in a daemon thread until :meth:`stop`."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self.consumer.run, name="tastebud-event-consumer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop consuming; the last offsets are committed as the consumer closes."""
        self.consumer.stop()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
