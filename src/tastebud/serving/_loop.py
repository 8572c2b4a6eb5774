"""A function run in a daemon thread every few seconds until stopped: the follower's and the router's loop."""

from __future__ import annotations

import threading
from collections.abc import Callable


class Loop:
    """Calls ``step`` every ``interval_s`` seconds in a daemon thread ``name``, from :meth:`start` to :meth:`stop`.

    ``step`` handles its own errors (a loop that raised would stop following). ``ready``, when given, is waited for
    (checked every 50 ms) before the first step; ``first`` runs a step at once instead of after one interval. An
    interval of 0 runs a single step (with ``first``) or none.
    """

    def __init__(
        self,
        name: str,
        step: Callable[[], object],
        interval_s: float,
        *,
        first: bool = False,
        ready: Callable[[], bool] | None = None,
    ) -> None:
        self.name, self.step, self.interval_s, self.first, self.ready = name, step, interval_s, first, ready
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while self.ready is not None and not self.ready():
            if self._stop.wait(0.05):
                return
        if self.first:
            self.step()
        while self.interval_s > 0 and not self._stop.wait(self.interval_s):
            self.step()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
