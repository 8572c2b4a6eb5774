"""Retrain triggers: whether a retrain is due, and why.

Four triggers, each answered by a :class:`TriggerCheck` (fired or not, the reason in words, the numbers behind it):

- ``volume``: enough new events, or enough new users, since the champion's cutoff (``extra.events_through_id`` of
  its manifest: the highest store event id it learned from; 0 for a model trained from files only). New users are
  users in those events that the champion does not know, as a percentage of the champion's user count.
- ``drift``: the drift check of :mod:`tastebud.monitoring.drift` between the champion's training data and the
  events since its cutoff, at the alert level on the configured signals. The default signals are the rating
  distribution, item popularity and the genre mix. User activity is left out by default because every new user
  lands in its ``new`` bucket, so it alerts as soon as people sign up, whether or not their taste moved (the
  volume trigger counts new users instead). Ids are never a signal: drift buckets come from counts, never from id
  values.
- ``schedule``: the time since the last successful retrain reached the interval (or a cron fire time passed).
- ``manual``: always.

The ``check_*`` functions are pure: they compare what they are given. :class:`TriggerChecker` gathers the inputs
(the champion from the registry, the events from the store) for the schedule service and ``--once``, caches the
champion's users and training data per version, and remembers its last attempt so a trigger that already led to
a retrain which left the champion in place fires again only on events that arrived after that attempt.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import polars as pl

from tastebud.config import Settings
from tastebud.errors import ParameterError, TastebudError
from tastebud.monitoring.drift import Thresholds, compute_drift, events_frame

logger = logging.getLogger(__name__)

#: Trigger names (the ``trigger`` of a retrain).
TRIGGERS = ("manual", "schedule", "volume", "drift")
#: Signals the drift trigger may watch (the served-score signal needs the request log, not training data).
DRIFT_TRIGGER_SIGNALS = ("rating", "item_popularity", "user_activity", "genre_mix")
#: Signals the drift trigger watches by default (user activity alerts on every wave of new users).
DEFAULT_DRIFT_SIGNALS = ("rating", "item_popularity", "genre_mix")
#: Fewest events since the cutoff a drift check needs: below, PSI of a handful of events is noise.
DEFAULT_DRIFT_MIN_EVENTS = 200
#: Manifest key of the champion's cutoff (the highest store event id it was trained on).
CUTOFF_KEY = "events_through_id"
#: Where :class:`TriggerChecker` remembers its last attempt, relative to the home directory.
STATE_FILE = Path("pipeline") / "triggers.json"

__all__ = [
    "DEFAULT_DRIFT_SIGNALS",
    "TRIGGERS",
    "Champion",
    "TriggerCheck",
    "TriggerChecker",
    "TriggerConfig",
    "check_drift",
    "check_manual",
    "check_schedule",
    "check_volume",
    "parse_drift_signals",
]


@dataclass(frozen=True)
class TriggerCheck:
    """The answer of one trigger.

    Attributes:
        fired: whether the trigger asks for a retrain.
        trigger: ``volume``, ``drift``, ``schedule`` or ``manual``.
        reason: one line that says why, with the numbers.
        numbers: the measured values and thresholds (JSON-able).
    """

    fired: bool
    trigger: str
    reason: str
    numbers: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {"fired": self.fired, "trigger": self.trigger, "reason": self.reason, "numbers": self.numbers}


# --- the pure checks ---------------------------------------------------------------------------------------------


def check_volume(
    events: pl.DataFrame,
    *,
    known_users: Collection[str],
    champion_users: int,
    min_events: int | None = None,
    min_new_users_pct: float | None = None,
) -> TriggerCheck:
    """Fire when ``events`` holds at least ``min_events`` events or ``min_new_users_pct`` % new users.

    Args:
        events: the events since the champion's cutoff (a ``user_id`` column; one row per event).
        known_users: the champion's user ids.
        champion_users: the champion's user count (the base of the percentage).
        min_events: new events that fire the trigger (``None``: not checked).
        min_new_users_pct: new users, in percent of ``champion_users``, that fire it (``None``: not checked).
    """
    n_events = events.height
    users = events["user_id"].cast(pl.String).unique() if n_events else pl.Series("user_id", [], dtype=pl.String)
    known = set(known_users)
    n_new = sum(1 for u in users.to_list() if u not in known)
    pct = 100.0 * n_new / champion_users if champion_users > 0 else (100.0 if n_new else 0.0)
    numbers = {
        "new_events": n_events, "new_users": n_new, "champion_users": champion_users,
        "new_users_pct": round(pct, 4), "min_events": min_events, "min_new_users_pct": min_new_users_pct,
    }  # fmt: skip
    parts, hits = [], []
    if min_events is not None:
        part = f"{n_events:,} new events (threshold {min_events:,})"
        parts.append(part)
        if n_events >= min_events:
            hits.append(part)
    if min_new_users_pct is not None:
        part = (
            f"{n_new:,} new users = {pct:.2f}% of the champion's {champion_users:,} (threshold {min_new_users_pct:g}%)"
        )
        parts.append(part)
        if pct >= min_new_users_pct and n_new > 0:
            hits.append(part)
    if not parts:
        return TriggerCheck(False, "volume", "no volume threshold set", numbers)
    if hits:
        return TriggerCheck(True, "volume", "; ".join(hits) + " since the champion's cutoff", numbers)
    return TriggerCheck(False, "volume", "below the thresholds: " + "; ".join(parts), numbers)


def parse_drift_signals(signals: str | Sequence[str] | None) -> tuple[str, ...]:
    """The drift trigger's signals from a comma-separated string or a list (``None``: the defaults).

    Raises:
        ParameterError: an unknown signal, an id column, or none at all.
    """
    if signals is None:
        return DEFAULT_DRIFT_SIGNALS
    names = [s.strip() for s in (signals.split(",") if isinstance(signals, str) else signals) if s.strip()]
    if not names:
        raise ParameterError(f"drift signals: none given; choose from {', '.join(DRIFT_TRIGGER_SIGNALS)}")
    for name in names:
        if name in ("user_id", "item_id"):
            raise ParameterError(
                f"drift signal {name!r}: ids are keys, not values; drifting ids only means ids were relabelled"
            )
        if name not in DRIFT_TRIGGER_SIGNALS:
            raise ParameterError(f"drift signal {name!r}: unknown; choose from {', '.join(DRIFT_TRIGGER_SIGNALS)}")
    return tuple(dict.fromkeys(names))


def check_drift(
    reference: pl.DataFrame,
    current: pl.DataFrame,
    *,
    item_meta: pl.DataFrame | None = None,
    signals: Sequence[str] = DEFAULT_DRIFT_SIGNALS,
    thresholds: Thresholds | None = None,
    min_events: int = DEFAULT_DRIFT_MIN_EVENTS,
) -> TriggerCheck:
    """Fire when a watched signal drifts to the alert level between the training data and the recent events.

    Args:
        reference: the champion's training interactions (``user_id``, ``item_id``, optional ``rating``).
        current: the events since its cutoff, same columns.
        item_meta: ``item_id`` and ``genres`` for the genre mix (skipped without).
        signals: which signals may fire it (see :func:`parse_drift_signals`).
        thresholds: PSI levels (default 0.1 warn, 0.25 alert); only ``alert`` fires.
        min_events: fewest recent events to judge drift at all.
    """
    signals = parse_drift_signals(signals)
    thresholds = thresholds or Thresholds()
    numbers: dict[str, Any] = {
        "events": current.height, "min_events": min_events, "signals": list(signals),
        "alert_threshold": thresholds.alert,
    }  # fmt: skip
    if current.height < min_events:
        reason = f"{current.height:,} events since the cutoff; a drift check needs {min_events:,}"
        return TriggerCheck(False, "drift", reason, numbers)
    report = compute_drift(reference, current, item_meta=item_meta, thresholds=thresholds, min_events=min_events)
    numbers["psi"] = {s: round(d.psi, 6) for s in signals if (d := report.get(s)) is not None}
    numbers["levels"] = {s: d.level for s in signals if (d := report.get(s)) is not None}
    numbers["skipped"] = {s: report.skipped[s] for s in signals if s in report.skipped}
    alerted = [d for s in signals if (d := report.get(s)) is not None and d.level == "alert"]
    if alerted:
        what = ", ".join(f"{d.signal} PSI {d.psi:.3f}" for d in alerted)
        return TriggerCheck(True, "drift", f"drift at the alert level ({what} >= {thresholds.alert:g})", numbers)
    checked = ", ".join(f"{s} PSI {v:.3f}" for s, v in numbers["psi"].items()) or "no signal could be computed"
    return TriggerCheck(False, "drift", f"no signal at the alert level {thresholds.alert:g} ({checked})", numbers)


class FireTimes(Protocol):
    """What :func:`check_schedule` needs of a cron trigger (APScheduler's ``CronTrigger``)."""

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None: ...


def check_schedule(
    last_success: datetime | None,
    *,
    every: timedelta | None = None,
    cron: FireTimes | None = None,
    now: datetime | None = None,
) -> TriggerCheck:
    """Fire when the last successful retrain is at least ``every`` ago, or a ``cron`` fire time passed since.

    Args:
        last_success: when the last successful retrain finished (``None``: never, which fires).
        every: the interval.
        cron: a cron trigger (its first fire time after ``last_success`` must have passed).
        now: the current time (default: now, UTC).

    Raises:
        ParameterError: neither or both of ``every`` and ``cron``.
    """
    if (every is None) == (cron is None):
        raise ParameterError("schedule trigger: give exactly one of an interval and a cron expression")
    now = now or datetime.now(UTC)
    if last_success is None:
        return TriggerCheck(True, "schedule", "no successful retrain recorded yet", {"last_success": None})
    if every is not None:
        due: datetime | None = last_success + every
        rule = f"every {_span(every)}"
    else:
        assert cron is not None
        due = cron.get_next_fire_time(None, last_success + timedelta(microseconds=1))
        rule = "the cron schedule"
    numbers = {"last_success": last_success.isoformat(), "due": due.isoformat() if due else None}
    ago = _span(now - last_success)
    if due is not None and due <= now:
        return TriggerCheck(True, "schedule", f"last successful retrain {ago} ago; due by {rule}", numbers)
    return TriggerCheck(False, "schedule", f"last successful retrain {ago} ago; next due {numbers['due']}", numbers)


def check_manual() -> TriggerCheck:
    """Always fires: someone asked for a retrain."""
    return TriggerCheck(True, "manual", "asked for by hand", {})


def _span(delta: timedelta) -> str:
    seconds = max(delta.total_seconds(), 0.0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


# --- gathering the inputs ----------------------------------------------------------------------------------------


@dataclass
class Champion:
    """What the triggers need of the champion: its version, cutoff, users and how to rebuild its data.

    Attributes:
        model_name: the registered model.
        version: the champion's version.
        bundle_dir: its bundle directory.
        manifest: its bundle manifest.
    """

    model_name: str
    version: int
    bundle_dir: Path
    manifest: dict[str, Any]
    _users: frozenset[str] | None = field(default=None, repr=False)

    @property
    def cutoff_id(self) -> int:
        """The highest store event id the champion was trained on (0: trained from files only)."""
        return int(self.manifest.get("extra", {}).get(CUTOFF_KEY) or 0)

    @property
    def n_users(self) -> int:
        """Users in the champion's training data."""
        return int(self.manifest.get("data", {}).get("n_users") or len(self.users))

    @property
    def users(self) -> frozenset[str]:
        """The champion's user ids (from the bundle's id map; the model is loaded only when that file is absent)."""
        if self._users is None:
            from tastebud.models.base import read_json

            path = self.bundle_dir / "model" / "users.json"
            ids = read_json(path) if path.is_file() else None
            if not isinstance(ids, list):
                from tastebud.registry.bundle import load_bundle

                model_users = load_bundle(self.bundle_dir).model.users_
                ids = [] if model_users is None else model_users.to_list()
            self._users = frozenset(str(u) for u in ids)
        return self._users


@dataclass
class TriggerConfig:
    """Which volume and drift triggers the checker evaluates.

    Attributes:
        volume_events: new events since the cutoff that fire ``volume`` (``None``: off).
        volume_new_users_pct: new users, in percent of the champion's, that fire ``volume`` (``None``: off).
        drift: evaluate the drift trigger.
        drift_signals: signals that may fire it.
        drift_thresholds: PSI warn and alert levels.
        drift_min_events: fewest events since the cutoff for a drift check.
    """

    volume_events: int | None = None
    volume_new_users_pct: float | None = None
    drift: bool = False
    drift_signals: tuple[str, ...] = DEFAULT_DRIFT_SIGNALS
    drift_thresholds: Thresholds = field(default_factory=Thresholds)
    drift_min_events: int = DEFAULT_DRIFT_MIN_EVENTS

    def __post_init__(self) -> None:
        if self.volume_events is not None and self.volume_events < 1:
            raise ParameterError(f"volume trigger: new events must be at least 1, got {self.volume_events}")
        if self.volume_new_users_pct is not None and self.volume_new_users_pct <= 0:
            raise ParameterError(f"volume trigger: new users % must be positive, got {self.volume_new_users_pct}")
        if self.drift_min_events < 1:
            raise ParameterError(f"drift trigger: min events must be at least 1, got {self.drift_min_events}")
        self.drift_signals = parse_drift_signals(self.drift_signals)

    @property
    def volume(self) -> bool:
        """Whether a volume threshold is set."""
        return self.volume_events is not None or self.volume_new_users_pct is not None

    @property
    def any(self) -> bool:
        """Whether any volume or drift trigger is on."""
        return self.volume or self.drift


#: Builds the champion's training data: (interactions frame, item metadata or None).
ReferenceLoader = Callable[[Champion, Any], tuple[pl.DataFrame, pl.DataFrame | None]]


def champion_reference(settings: Settings) -> ReferenceLoader:
    """A loader of the champion's training data: its data snapshot (rebuilt from the manifest) plus the stored
    events through its cutoff, which is what a retrain trains on (see ARCHITECTURE.md, "Retraining").
    """

    def load(champion: Champion, store: Any) -> tuple[pl.DataFrame, pl.DataFrame | None]:
        from tastebud.pipeline.train import load_data

        spec = champion.manifest.get("extra", {}).get("data_spec")
        if not spec:
            raise TastebudError(f"{champion.model_name} v{champion.version}: manifest has no extra.data_spec")
        if spec.get("parent") is not None:  # a retrained champion: its spec replays the merged events itself
            dataset = load_data(spec, settings, store=store)
        else:
            dataset = load_data(spec, settings)
        frame = dataset.to_frame().select("user_id", "item_id", pl.col("rating").cast(pl.Float64))
        if champion.cutoff_id and spec.get("parent") is None:
            stored = events_frame(store.events_after(0, through_id=champion.cutoff_id))
            frame = pl.concat([frame, stored.select(frame.columns)], how="vertical_relaxed")
        return frame, dataset.item_meta

    return load


class TriggerChecker:
    """Evaluates the volume and drift triggers of one registered model against the registry and the store.

    Args:
        settings: home, registry and store settings.
        model_name: the registered model whose ``champion`` the triggers compare with.
        config: which triggers to evaluate.
        registry: a model registry (``get_alias``, ``get``, ``bundle_path``, ``manifest``; default the real one).
        store: an open event store (default: one opened and closed per check).
        reference_loader: builds the champion's training data for drift (default :func:`champion_reference`).
        state_path: where earlier versions remembered the last attempt (default ``<home>/pipeline/triggers.json``);
            it is now remembered in the store (``trigger_state``), shared by every process and machine, and such a
            file is imported once and renamed ``triggers.json.imported``.
    """

    def __init__(
        self,
        settings: Settings,
        model_name: str,
        config: TriggerConfig,
        *,
        registry: Any = None,
        store: Any = None,
        reference_loader: ReferenceLoader | None = None,
        state_path: Path | None = None,
    ) -> None:
        self.settings = settings
        self.model_name = model_name
        self.config = config
        self._registry = registry
        self._store = store
        self._reference_loader = reference_loader or champion_reference(settings)
        self.state_path = state_path or settings.home / STATE_FILE
        self._champion: Champion | None = None
        self._reference: tuple[tuple[int, int], tuple[pl.DataFrame, pl.DataFrame | None]] | None = None
        self.last_event_id = 0

    # the champion, cached per version
    def champion(self) -> Champion | None:
        """The current champion (``None`` when the model has none yet)."""
        registry = self._registry
        if registry is None:
            from tastebud.registry import ModelRegistry

            registry = self._registry = ModelRegistry(self.settings)
        version = registry.get_alias(self.model_name, "champion")
        if version is None:
            return None
        if self._champion is None or self._champion.version != version:
            mv = registry.get(self.model_name, version)
            self._champion = Champion(self.model_name, version, Path(registry.bundle_path(mv)), registry.manifest(mv))
        return self._champion

    def check(self) -> list[TriggerCheck]:
        """Evaluate the configured volume and drift triggers; sets :attr:`last_event_id` to the newest event read."""
        if not self.config.any:
            return []
        try:
            champion = self.champion()
        except TastebudError as err:
            return [TriggerCheck(False, t, f"champion unavailable: {err}", {}) for t in self._names()]
        if champion is None:
            reason = f"{self.model_name!r} has no champion yet (retrain by schedule or by hand to create one)"
            return [TriggerCheck(False, t, reason, {}) for t in self._names()]
        since = self._since(champion)
        store, owned = self._open_store()
        try:
            records = store.events_after(since)
            self.last_event_id = max((int(r["id"]) for r in records), default=since)
            events = events_frame(records)
            checks = []
            if self.config.volume:
                checks.append(self._volume(champion, events, since))
            if self.config.drift:
                checks.append(self._drift(champion, events, store, since))
        finally:
            if owned:
                store.close()
        return checks

    def _names(self) -> list[str]:
        return (["volume"] if self.config.volume else []) + (["drift"] if self.config.drift else [])

    def _volume(self, champion: Champion, events: pl.DataFrame, since: int) -> TriggerCheck:
        check = check_volume(
            events, known_users=champion.users, champion_users=champion.n_users,
            min_events=self.config.volume_events, min_new_users_pct=self.config.volume_new_users_pct,
        )  # fmt: skip
        return _with_since(check, since, champion)

    def _drift(self, champion: Champion, events: pl.DataFrame, store: Any, since: int) -> TriggerCheck:
        if events.height < self.config.drift_min_events:  # spare rebuilding the training data
            check = check_drift(events, events, min_events=self.config.drift_min_events)
            return _with_since(check, since, champion)
        key = (champion.version, champion.cutoff_id)
        try:
            if self._reference is None or self._reference[0] != key:
                self._reference = (key, self._reference_loader(champion, store))
        except TastebudError as err:
            reason = f"cannot rebuild the champion's training data: {err}"
            return TriggerCheck(False, "drift", reason, {"since_event_id": since})
        reference, item_meta = self._reference[1]
        check = check_drift(
            reference, events.select("user_id", "item_id", "rating"), item_meta=item_meta,
            signals=self.config.drift_signals, thresholds=self.config.drift_thresholds,
            min_events=self.config.drift_min_events,
        )  # fmt: skip
        return _with_since(check, since, champion)

    # --- what was already tried
    def _since(self, champion: Champion) -> int:
        """The champion's cutoff, or the last attempt's event id when that attempt left this champion in place."""
        state = self._read_state()
        if state.get("model_name") == self.model_name and state.get("champion_version") == champion.version:
            return max(champion.cutoff_id, int(state.get("through_id") or 0))
        return champion.cutoff_id

    def note_attempt(self, through_id: int | None = None) -> None:
        """Remember that a retrain was tried on events through ``through_id`` (default: the newest checked).

        While the same champion stays in place, the volume and drift triggers then count only events after it,
        so a refused or failed retrain is not repeated on the same data at every check.
        """
        champion = self._champion
        if champion is None:
            return
        through = int(through_id if through_id is not None else self.last_event_id)
        try:
            store, owned = self._open_store()
            try:
                store.put_trigger_state(self.model_name, champion_version=champion.version, through_id=through)
            finally:
                if owned:
                    store.close()
        except TastebudError as err:  # losing the memory costs one repeated retrain, never a wrong model
            logger.warning("could not record the retrain attempt", extra={"error": str(err)})

    def _read_state(self) -> dict[str, Any]:
        try:
            store, owned = self._open_store()
            try:
                self._import_state_file(store)
                state = store.get_trigger_state(self.model_name)
            finally:
                if owned:
                    store.close()
        except TastebudError as err:
            logger.warning("unreadable trigger state, ignored", extra={"error": str(err)})
            return {}
        return {"model_name": self.model_name, **state} if state else {}

    def _import_state_file(self, store: Any) -> None:
        """Import the ``triggers.json`` of an earlier version (one model's state) unless the store has that model's
        state already, then rename it ``triggers.json.imported``."""
        path = self.state_path
        if not path.is_file():
            return
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
            name, version, through = state["model_name"], int(state["champion_version"]), int(state["through_id"])
        except FileNotFoundError:  # another process imported it just now
            return
        except (OSError, ValueError, TypeError, KeyError) as err:
            logger.warning("unreadable trigger state file, not imported", extra={"path": str(path), "error": str(err)})
            name = None
        if name is not None and store.get_trigger_state(name) is None:
            store.put_trigger_state(name, champion_version=version, through_id=through)
        target = path.with_name(path.name + ".imported")
        with contextlib.suppress(FileNotFoundError):
            path.rename(target)
            logger.warning("retrain trigger state moved into the store; %s is kept as %s, no longer read", path, target)

    def _open_store(self) -> tuple[Any, bool]:
        if self._store is not None:
            return self._store, False
        from tastebud.store import create_store

        store = create_store(self.settings)
        store.init_schema()
        return store, True


def _with_since(check: TriggerCheck, since: int, champion: Champion) -> TriggerCheck:
    numbers = {**check.numbers, "since_event_id": since, "champion_version": champion.version}
    reason = check.reason
    if since > champion.cutoff_id:
        reason += f" (counting events after the last attempt, id {since}, not the cutoff {champion.cutoff_id})"
    return TriggerCheck(check.fired, check.trigger, reason, numbers)
