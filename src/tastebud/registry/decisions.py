"""The decision log: every promotion, refusal, forced promotion, rollback and abandoned retrain.

The log is the ``decisions`` table of the store (``store.url``: SQLite in the home by default, or PostgreSQL), so
every process and machine sharing the store shares it. A decision is one committed row, so concurrent writers
never lose or interleave one; the order of the log is the order of the rows' ids (the order they were written).

Earlier versions kept the log in ``<home>/registry/decisions.jsonl``. When that file exists, the first use of the
log imports it, all lines or none, each line keyed by a hash of its number and the decision it holds (so a second
import adds nothing, even after a crash between the import and the rename), then renames it
``decisions.jsonl.imported`` and logs a line saying so.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import logging
import math
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from tastebud.config import Settings
from tastebud.errors import RegistryError, StoreError

if TYPE_CHECKING:
    from tastebud.store import Store

logger = logging.getLogger(__name__)

Action = Literal["promoted", "refused", "forced", "rolled_back", "abandoned"]
#: ``abandoned``: a version registered by a retrain that was killed before its decision; it is never promoted.
ACTIONS: tuple[str, ...] = ("promoted", "refused", "forced", "rolled_back", "abandoned")


@dataclass
class Decision:
    """One registry decision.

    Attributes:
        time: UTC ISO time (any ISO-8601 time with an offset is accepted; it reads back in UTC).
        model_name: the registered model.
        action: ``promoted``, ``refused``, ``forced``, ``rolled_back`` or ``abandoned``.
        version: the version the decision is about (the new champion, or the refused candidate).
        previous: the champion before the decision (``None`` when there was none).
        actor: who or what asked (``--actor``, default the OS user).
        reason: why, in words.
        numbers: the compared metrics (candidate, champion, thresholds).
        trigger: what started the retrain that asked (``manual``, ``schedule``, ``drift``, ``volume`` ...);
            ``None`` for decisions made by hand (and in decisions logged before the field existed).
    """

    time: str
    model_name: str
    action: str
    version: int
    previous: int | None
    actor: str
    reason: str
    numbers: dict[str, Any] = field(default_factory=dict)
    trigger: str | None = None

    def to_json(self) -> str:
        """One JSON line (no newline)."""
        return json.dumps(asdict(self), sort_keys=True, default=str)


def decisions_path(settings: Settings) -> Path:
    """``<home>/registry/decisions.jsonl``: where earlier versions kept the log (imported once, then renamed)."""
    return settings.home / "registry" / "decisions.jsonl"


def default_actor() -> str:
    """The OS user name, or ``unknown``."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def append_decision(settings: Settings, decision: Decision) -> int:
    """Append one decision to the log in the store (one committed row); returns its id in the log.

    Raises:
        RegistryError: the decision is invalid (names the field), or the store cannot be written (names it).
    """
    row = _row(decision, "decision")
    with _log(settings) as store:
        try:
            return store.append_decision(row)
        except StoreError as err:
            raise RegistryError(f"cannot log the decision on {decision.model_name} v{decision.version}: {err}") from err


def read_decisions(settings: Settings, name: str | None = None) -> list[Decision]:
    """Decisions in the order they were made, optionally of one model.

    Raises:
        RegistryError: the store cannot be read, or a ``decisions.jsonl`` awaiting import has an invalid line
            (names the file and line; nothing of it is imported).
    """
    if not _log_exists(settings):
        return []  # nothing logged yet: do not create a database just to read it
    with _log(settings) as store:
        try:
            rows = store.read_decisions(name)
        except StoreError as err:
            raise RegistryError(f"cannot read the decision log: {err}") from err
    return [_decision(row) for row in rows]


def decision_log_version(settings: Settings) -> tuple[int, int]:
    """``(number of decisions, largest id)`` of the log, ``(0, 0)`` when there is none: a cheap key that changes
    with every decision logged by any process (the studio forgets cached listings on it)."""
    if not _log_exists(settings):
        return (0, 0)
    with _log(settings) as store:
        try:
            return store.decision_log_version()
        except StoreError as err:
            raise RegistryError(f"cannot read the decision log: {err}") from err


def import_decisions_file(settings: Settings) -> tuple[int, int] | None:
    """Import ``<home>/registry/decisions.jsonl`` into the store, then rename it ``decisions.jsonl.imported``.

    Every use of the log does this first; ``tastebud store upgrade`` does it too. All lines are imported in one
    transaction or none; a line already imported (same number, same text) is skipped.

    Returns:
        ``(lines imported now, lines found)``, or ``None`` when there is no file to import.

    Raises:
        RegistryError: a line is not a valid decision (names the file and line), or the store refuses the import.
    """
    path = decisions_path(settings)
    if not path.is_file():
        return None
    with _opened(settings) as store:
        return _import(path, store)


def champion_history(decisions: list[Decision]) -> list[int]:
    """The stack of champions the decisions built: promotions push, rollbacks pop (oldest first)."""
    stack: list[int] = []
    for d in decisions:
        if d.action in ("promoted", "forced"):
            stack.append(d.version)
        elif d.action == "rolled_back" and stack:
            stack.pop()
            if not stack or stack[-1] != d.version:
                stack.append(d.version)
    return stack


# --- the store behind the log --------------------------------------------------------------------------------------

#: One Store per store URL and process (a forked child opens its own).
_stores: dict[tuple[str, int], Store] = {}
_stores_lock = threading.Lock()


@contextmanager
def _opened(settings: Settings) -> Iterator[Store]:
    """The store holding the log, its schema at the newest revision."""
    from tastebud.store import create_store

    url = settings.store_url
    key = (url, os.getpid())
    with _stores_lock:
        store = _stores.get(key)
        try:
            if store is None:
                store = create_store(url=url)
                store.init_schema()  # once per store and process, not on every read or append
                _stores[key] = store
        except StoreError as err:
            raise RegistryError(f"cannot open the decision log: {err}") from err
    try:
        yield store
    finally:
        if store.backend == "sqlite" and not _in_memory(url):
            store.close()  # keep no SQLite file handle open between decisions (a PostgreSQL pool stays)


@contextmanager
def _log(settings: Settings) -> Iterator[Store]:
    """:func:`_opened`, after importing any ``decisions.jsonl`` of the home."""
    with _opened(settings) as store:
        path = decisions_path(settings)
        if path.is_file():
            _import(path, store)
        yield store


def _import(path: Path, store: Store) -> tuple[int, int]:
    rows: list[dict[str, Any]] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:  # another process imported and renamed it just now
        return (0, 0)
    except (OSError, UnicodeDecodeError) as err:
        raise RegistryError(f"cannot read the decision log {path} to import it: {err}") from err
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        where = f"{path} line {number}"
        try:
            fields = json.loads(raw)
            decision = Decision(**fields) if isinstance(fields, dict) else None
        except (json.JSONDecodeError, TypeError) as err:
            raise RegistryError(f"{where}: not a valid decision ({err}); nothing was imported") from err
        if decision is None:
            raise RegistryError(f"{where}: not a valid decision (not a JSON object); nothing was imported")
        row = _row(decision, where)
        # the line's number and content (not its spelling: key order, spaces, a field left at its default)
        row["import_key"] = hashlib.sha256(f"{number}\n{decision.to_json()}".encode()).hexdigest()
        rows.append(row)
    try:
        imported = store.import_decisions(rows)
    except StoreError as err:
        raise RegistryError(f"cannot import the decision log {path}: {err}") from err
    target = path.with_name(path.name + ".imported")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.imported.{n}")
    try:
        path.rename(target)
    except FileNotFoundError:  # another process imported it at the same time (its rows were skipped here)
        return (imported, len(rows))
    logger.warning(
        "decision log: imported %d of %d decisions from %s into the store at %s (%d were there already); the file "
        "is kept as %s and no longer read",
        imported,
        len(rows),
        path,
        store.url,
        len(rows) - imported,
        target.name,
    )
    return (imported, len(rows))


def _log_exists(settings: Settings) -> bool:
    """False only when the store is a SQLite file not made yet and there is no file to import."""
    if decisions_path(settings).is_file():
        return True
    url = settings.store_url
    if url.startswith("sqlite:///") and not _in_memory(url):
        return Path(url.removeprefix("sqlite:///").split("?")[0]).is_file()
    return True


def _in_memory(url: str) -> bool:
    database = url.split("://", 1)[-1].removeprefix("/").split("?")[0]
    return url.startswith("sqlite") and database in ("", ":memory:")


def _row(decision: Decision, where: str) -> dict[str, Any]:
    """The decision as a row of the ``decisions`` table; each field checked.

    Raises:
        RegistryError: naming ``where`` and the field.
    """
    if decision.action not in ACTIONS:
        raise RegistryError(f"{where}: unknown decision action {decision.action!r}; expected one of {ACTIONS}")
    try:
        time = datetime.fromisoformat(decision.time) if isinstance(decision.time, str) else None
    except ValueError:
        time = None
    if time is None or time.utcoffset() is None:
        raise RegistryError(f"{where}, field 'time': {decision.time!r} is not an ISO-8601 time with a UTC offset")
    for name in ("model_name", "actor", "reason"):
        if not isinstance(getattr(decision, name), str):
            raise RegistryError(f"{where}, field {name!r}: expected a string, got {getattr(decision, name)!r}")
    if not decision.model_name:
        raise RegistryError(f"{where}, field 'model_name': must not be empty")
    for name in ("version", "previous"):
        value = getattr(decision, name)
        if (value is None and name == "previous") or (isinstance(value, int) and not isinstance(value, bool)):
            continue
        raise RegistryError(f"{where}, field {name!r}: expected an integer, got {value!r}")
    if decision.trigger is not None and not isinstance(decision.trigger, str):
        raise RegistryError(f"{where}, field 'trigger': expected a string, got {decision.trigger!r}")
    if not isinstance(decision.numbers, dict):
        raise RegistryError(f"{where}, field 'numbers': expected a JSON object, got {decision.numbers!r}")
    try:
        # as the file did: values JSON cannot hold (numpy scalars, datetimes) as text; NaN and inf as null
        numbers = json.loads(json.dumps(_finite(decision.numbers), default=str, allow_nan=False))
    except (TypeError, ValueError) as err:
        raise RegistryError(f"{where}, field 'numbers': cannot be stored as JSON ({err})") from err
    return {
        "time": time.astimezone(UTC),
        "model_name": decision.model_name,
        "action": decision.action,
        "version": decision.version,
        "previous": decision.previous,
        "actor": decision.actor,
        "reason": decision.reason,
        "numbers": numbers,
        "trigger": decision.trigger,
    }


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _decision(row: dict[str, Any]) -> Decision:
    return Decision(
        time=row["time"].astimezone(UTC).isoformat(),
        model_name=row["model_name"],
        action=row["action"],
        version=row["version"],
        previous=row["previous"],
        actor=row["actor"],
        reason=row["reason"],
        numbers=row["numbers"] or {},
        trigger=row["trigger"],
    )


__all__ = [
    "ACTIONS",
    "Decision",
    "append_decision",
    "champion_history",
    "decision_log_version",
    "decisions_path",
    "default_actor",
    "import_decisions_file",
    "read_decisions",
]
