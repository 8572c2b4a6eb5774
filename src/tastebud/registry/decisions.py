"""The decision log: every promotion, refusal, forced promotion, rollback and abandoned retrain, as JSON lines.

The log lives under the home (``registry/decisions.jsonl``).

Each decision is one line appended with a single ``write`` on a file opened with ``O_APPEND`` under an
exclusive lock, so concurrent writers never interleave and a reader never sees half a line.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from tastebud.config import Settings
from tastebud.errors import RegistryError

Action = Literal["promoted", "refused", "forced", "rolled_back", "abandoned"]
#: ``abandoned``: a version registered by a retrain that was killed before its decision; it is never promoted.
ACTIONS: tuple[str, ...] = ("promoted", "refused", "forced", "rolled_back", "abandoned")


@dataclass
class Decision:
    """One registry decision.

    Attributes:
        time: UTC ISO time.
        model_name: the registered model.
        action: ``promoted``, ``refused``, ``forced``, ``rolled_back`` or ``abandoned``.
        version: the version the decision is about (the new champion, or the refused candidate).
        previous: the champion before the decision (``None`` when there was none).
        actor: who or what asked (``--actor``, default the OS user).
        reason: why, in words.
        numbers: the compared metrics (candidate, champion, thresholds).
        trigger: what started the retrain that asked (``manual``, ``schedule``, ``drift``, ``volume`` ...);
            ``None`` for decisions made by hand (and in lines written before the field existed).
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
    """``<home>/registry/decisions.jsonl``."""
    return settings.home / "registry" / "decisions.jsonl"


def default_actor() -> str:
    """The OS user name, or ``unknown``."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def append_decision(settings: Settings, decision: Decision) -> Path:
    """Append one decision atomically; returns the log's path."""
    if decision.action not in ACTIONS:
        raise RegistryError(f"unknown decision action {decision.action!r}; expected one of {ACTIONS}")
    path = decisions_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (decision.to_json() + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        with _locked(fd):
            os.write(fd, line)
            os.fsync(fd)
    finally:
        os.close(fd)
    return path


@contextlib.contextmanager
def _locked(fd: int):  # type: ignore[no-untyped-def]
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: O_APPEND writes of one line are still whole
        yield
        return
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def read_decisions(settings: Settings, name: str | None = None) -> list[Decision]:
    """Decisions in the order they were made, optionally of one model.

    Raises:
        RegistryError: a line is not a valid decision (names the line).
    """
    path = decisions_path(settings)
    if not path.is_file():
        return []
    out: list[Decision] = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            decision = Decision(**json.loads(raw))
        except (json.JSONDecodeError, TypeError) as err:
            raise RegistryError(f"{path} line {number}: not a valid decision ({err})") from err
        if name is None or decision.model_name == name:
            out.append(decision)
    return out


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


__all__ = [
    "ACTIONS",
    "Decision",
    "append_decision",
    "champion_history",
    "decisions_path",
    "default_actor",
    "read_decisions",
]
