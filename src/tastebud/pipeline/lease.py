"""Single flight: a named lock in the store, held with a lease that a heartbeat thread renews.

The owner of a lock is ``host:pid:token``: the host and process, and a random token that tells two takers in one
process apart. A lock can be taken when it is free, when its lease expired (its owner stopped renewing: killed,
frozen, or its machine is gone), or at once when its owner is a process on this host that no longer runs (a
``kill -9`` leaves no one to release it). Taking is one atomic upsert in the store
(:meth:`tastebud.store.Store.acquire_lock`); the dead-owner takeover names the owner it replaces, so two takers
racing for the same dead lock cannot both win.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from tastebud.errors import LockError, StoreError

if TYPE_CHECKING:
    from tastebud.store import Store

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Owner:
    """Who holds a lock: host, process id and a token unique to the taker."""

    host: str
    pid: int
    token: str

    def __str__(self) -> str:
        return f"{self.host}:{self.pid}:{self.token}"

    @classmethod
    def current(cls) -> Owner:
        """A new owner for this process (a fresh token each call)."""
        return cls(socket.gethostname(), os.getpid(), uuid.uuid4().hex[:12])

    @classmethod
    def parse(cls, text: str) -> Owner | None:
        """The owner written by :meth:`__str__`, or None for another format."""
        host, sep, rest = text.rpartition(":")
        host, sep2, pid = host.rpartition(":")
        if not (sep and sep2 and pid.isdigit()):
            return None
        return cls(host, int(pid), rest)

    def is_dead(self) -> bool:
        """Whether this owner is a process on this host that no longer runs (a zombie counts as gone).

        An owner on another host is never declared dead here: its lease expiring is the only sign.
        """
        if self.host != socket.gethostname():
            return False
        return not _pid_alive(self.pid)


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it runs
        return True
    try:  # a killed child its parent has not reaped yet still answers kill(0)
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            state = fh.read().rpartition(")")[2].split()
        return not (state and state[0] in ("Z", "X"))
    except OSError:
        return True


def acquire(store: Store, name: str, owner: Owner, ttl_s: float) -> tuple[bool, dict[str, Any] | None]:
    """Take ``name`` for ``owner``, taking over a dead owner on this host; (taken, the row found before).

    Returns:
        ``(True, None)`` when it was free, ``(True, row)`` after taking over ``row``'s dead owner, ``(False, row)``
        when ``row``'s owner holds it (``row`` may be None if it was released in between).
    """
    if store.acquire_lock(name, str(owner), ttl_s):
        return True, None
    held = store.get_lock(name)
    if held is None:  # released in between
        return store.acquire_lock(name, str(owner), ttl_s), None
    previous = Owner.parse(str(held["owner"]))
    dead = previous is not None and previous.is_dead()
    if dead and store.acquire_lock(name, str(owner), ttl_s, take_over=str(held["owner"])):
        logger.warning("took over a lock whose owner is dead", extra={"lock": name, "dead_owner": held["owner"]})
        return True, held
    return False, held


class Lease:
    """A held lock, renewed every third of its lease by a daemon thread until :meth:`release`.

    Args:
        store: the store holding the lock.
        name: the lock.
        owner: its holder (who took it with :func:`acquire`).
        ttl_s: the lease; renewed every ``ttl_s / 3`` seconds.
    """

    def __init__(self, store: Store, name: str, owner: Owner, ttl_s: float) -> None:
        self.store = store
        self.name = name
        self.owner = owner
        self.ttl_s = ttl_s
        self.lost = False
        self._stop = threading.Event()
        self._expires = time.monotonic() + ttl_s
        self._thread = threading.Thread(target=self._beat, name=f"lease-{name}", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                if self.store.renew_lock(self.name, str(self.owner), self.ttl_s):
                    self._expires = time.monotonic() + self.ttl_s
                    continue
                self.lost = True
            except StoreError as err:  # the store may come back before the lease runs out
                logger.warning("lock renewal failed", extra={"lock": self.name, "error": str(err)})
                if time.monotonic() < self._expires:
                    continue
                self.lost = True
            logger.error("lost the lock", extra={"lock": self.name, "owner": str(self.owner)})
            return

    def check(self) -> None:
        """Confirm the lock is still held (renewing it now).

        Raises:
            LockError: the lease was lost (it expired and someone else may hold the lock).
        """
        if not self.lost:
            try:
                self.lost = not self.store.renew_lock(self.name, str(self.owner), self.ttl_s)
            except StoreError as err:
                raise LockError(f"cannot confirm the lock {self.name!r}: {err}") from err
        if self.lost:
            raise LockError(
                f"lost the lock {self.name!r} (its lease of {self.ttl_s:g} s ran out): another run may have "
                "taken over; this run stops before changing the registry"
            )

    def release(self) -> None:
        """Stop renewing and release the lock (if still held)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        try:
            self.store.release_lock(self.name, str(self.owner))
        except StoreError as err:  # the lease runs out by itself
            logger.warning("lock release failed", extra={"lock": self.name, "error": str(err)})


__all__ = ["Lease", "Owner", "acquire"]
