"""Real-time personalisation: the per-user overlay of events that arrived since training, and scoring with it.

When a user's events land (``POST /events`` right after the store write, or the in-server Kafka consumer's
``on_events`` callback), :meth:`UserOverlays.add` records each event's item and value for that user. The next
``/recommend`` for the user scores their training history plus the overlay with the served model's
``recommend_history``: a factor model folds the combined history in (the exact least-squares solve for that one
user against the current item factors), item-item models multiply it by their item-item matrix, the content
model rebuilds the profile, the hybrid does both. Exclusion of seen items and explanations use the combined
history too, and a brand-new user is personalised from their first event on.

The overlay holds raw events, not vectors, so it survives a model switch: the next request scores the same events
against the new model. It is bounded (items per user, users in all; least recently updated users go first).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from tastebud.models.base import Recommendations

if TYPE_CHECKING:  # pragma: no cover
    from tastebud.serving.engine import Engine, Filters, Result

#: Default bound on remembered items per user.
MAX_ITEMS_PER_USER = 200
#: Default bound on users with an overlay.
MAX_USERS = 100_000


@dataclass
class _Entry:
    items: OrderedDict[str, float] = field(default_factory=OrderedDict)
    updated_at: float = 0.0


class UserOverlays:
    """Per-user item ids and values from events newer than the served model; thread-safe and bounded.

    A repeated item keeps its latest value and moves to the end; beyond ``max_items`` a user's oldest items drop,
    beyond ``max_users`` the least recently updated user drops.

    Args:
        max_items: most items remembered per user.
        max_users: most users with an overlay.
        observe: called with the seconds each scoring with an overlay took (a histogram's ``observe``).
    """

    def __init__(
        self,
        max_items: int = MAX_ITEMS_PER_USER,
        max_users: int = MAX_USERS,
        observe: Callable[[float], None] | None = None,
    ) -> None:
        self.max_items = max_items
        self.max_users = max_users
        self.observe = observe
        self._users: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._users)

    def __contains__(self, user_id: object) -> bool:
        return user_id in self._users

    def add(self, events: Iterable[Any]) -> set[str]:
        """Record events (anything with ``user_id``, ``item_id``, ``value``); returns the users updated."""
        now = time.time()
        touched: set[str] = set()
        with self._lock:
            for e in events:
                user, item, value = str(e.user_id), str(e.item_id), float(e.value)
                entry = self._users.get(user)
                if entry is None:
                    entry = self._users[user] = _Entry()
                else:
                    self._users.move_to_end(user)
                entry.items.pop(item, None)
                entry.items[item] = value
                while len(entry.items) > self.max_items:
                    entry.items.popitem(last=False)
                entry.updated_at = now
                touched.add(user)
            while len(self._users) > self.max_users:
                self._users.popitem(last=False)
        return touched

    def get(self, user_id: str) -> tuple[list[str], np.ndarray] | None:
        """A copy of the user's overlay as ``(item ids, values)``, oldest first; ``None`` without one."""
        entry = self._users.get(user_id)
        if entry is None:
            return None
        with self._lock:
            items = list(entry.items.items())
        return [i for i, _ in items], np.fromiter((v for _, v in items), dtype=np.float64, count=len(items))

    def clear(self, user_id: str | None = None) -> None:
        """Forget one user's overlay (or every overlay), e.g. after a retrained model learned their events."""
        with self._lock:
            if user_id is None:
                self._users.clear()
            else:
                self._users.pop(user_id, None)


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
    """The Kafka event consumer run inside the serving process, feeding :class:`UserOverlays`.

    It stores events like the standalone consumer (same validation, dead letters, commits after the write) and
    then adds each batch's valid events to the overlays, so the next ``/recommend`` of their users reflects them.

    Args:
        consumer: an :class:`tastebud.stream.consumer.EventConsumer` whose ``on_events`` is not yet set.
        overlays: where the events go once stored.
    """

    def __init__(self, consumer: Any, overlays: UserOverlays) -> None:
        self.consumer = consumer
        self.overlays = overlays
        consumer.on_events = overlays.add
        self._thread: threading.Thread | None = None

    @classmethod
    def from_settings(
        cls, settings: Any, store: Any, overlays: UserOverlays, metrics: Any = None, **kwargs: Any
    ) -> BackgroundConsumer:
        """A consumer of the topics in ``settings.stream`` writing to ``store`` (``kwargs`` go to the consumer)."""
        from tastebud.stream.consumer import EventConsumer

        if metrics is not None:
            kwargs.setdefault("metrics", metrics)
        # a short poll keeps the produce-to-recommendation delay low; batches still fill under load
        kwargs.setdefault("poll_timeout", 0.05)
        return cls(EventConsumer.from_settings(settings, store, **kwargs), overlays)

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
