"""The retrain schedule: a long-running service (APScheduler 3) that retrains on a schedule and on triggers.

Two jobs, both optional:

- the **schedule** job runs a retrain with ``trigger="schedule"`` every interval (``6h``) or at cron times
  (``0 */6 * * *``, UTC);
- the **check** job evaluates the volume and drift triggers (:mod:`tastebud.pipeline.triggers`) every few minutes
  and runs a retrain with the trigger that fired.

Retrains never overlap inside the process: every job has ``max_instances=1`` and ``coalesce=True`` (runs missed
while one was busy collapse into one), jobs run on a single worker thread, and :meth:`RetrainService.run` holds a
lock. Across processes the retrain's own store lock answers ``busy``. A job that raises is logged and recorded as
a failed retrain; the service goes on. After every run the retrain gauges are written
(:func:`tastebud.monitoring.retrain.write_retrain_gauges`) with the configured interval, so Prometheus can alert
when no retrain succeeded within twice the schedule.

:meth:`RetrainService.once` evaluates every trigger once (the schedule too, against the last success recorded in
the gauges) and runs at most one retrain: that is ``tastebud retrain schedule --once``, for cron users and tests.
"""

from __future__ import annotations

import itertools
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.base import BaseScheduler
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from tastebud.config import Settings
from tastebud.errors import ParameterError
from tastebud.monitoring.metrics import RETRAIN_TEXTFILE
from tastebud.monitoring.retrain import SUCCESS_OUTCOMES, last_success_at, write_retrain_gauges
from tastebud.pipeline.triggers import TriggerCheck, check_schedule

logger = logging.getLogger(__name__)

#: Job ids in the scheduler.
SCHEDULE_JOB, CHECK_JOB = "retrain-schedule", "retrain-check"
#: Fire times sampled to find a cron expression's longest gap (its effective interval).
CRON_SAMPLES = 64

#: A retrain: the trigger name in, a ``RetrainOutcome`` (or anything with ``outcome``) out.
RetrainJob = Callable[[str], Any]


class Checker(Protocol):
    """What the service needs of the volume and drift triggers (:class:`~tastebud.pipeline.triggers.TriggerChecker`)."""

    def check(self) -> list[TriggerCheck]: ...

    def note_attempt(self, through_id: int | None = None) -> None: ...


__all__ = [
    "CHECK_JOB",
    "SCHEDULE_JOB",
    "Checker",
    "OnceResult",
    "RetrainJob",
    "RetrainService",
    "Schedule",
    "cron_period",
    "parse_cron",
    "parse_interval",
    "recorded_last_success",
    "retrain_job",
]


# --- parsing -----------------------------------------------------------------------------------------------------


def parse_interval(text: str, *, option: str = "--every") -> timedelta:
    """``"30m"``, ``"6h"``, ``"1d"`` (also ``s`` and ``w``) as a timedelta.

    Raises:
        ParameterError: anything else, or zero; the message names ``option``.
    """
    from tastebud.monitoring.report import parse_duration

    try:
        return parse_duration(text.strip())
    except ParameterError as err:
        raise ParameterError(
            f"{option} {text!r}: expected a positive number and a unit s, m, h, d or w, e.g. 30m, 6h or 1d"
        ) from err


def parse_cron(expr: str) -> CronTrigger:
    """A five-field crontab expression (minute hour day-of-month month day-of-week, UTC) as a trigger.

    Raises:
        ParameterError: the expression is not valid crontab, with APScheduler's reason.
    """
    try:
        return CronTrigger.from_crontab(expr.strip(), timezone=UTC)
    except ValueError as err:
        raise ParameterError(
            f"--cron {expr!r}: {err}; expected five fields: minute hour day-of-month month day-of-week "
            f"(UTC), e.g. '0 */6 * * *' for every 6 hours"
        ) from err


def cron_period(trigger: CronTrigger, *, now: datetime | None = None, samples: int = CRON_SAMPLES) -> float:
    """The longest gap, in seconds, between the next ``samples`` fire times (``0 9 * * 1-5``: the weekend).

    Raises:
        ParameterError: the expression never fires again.
    """
    now = now or datetime.now(UTC)
    times: list[datetime] = []
    previous: datetime | None = None
    at = now
    for _ in range(samples):
        fire = trigger.get_next_fire_time(previous, at)
        if fire is None:
            break
        times.append(fire)
        previous, at = fire, fire + timedelta(microseconds=1)
    if len(times) < 2:
        raise ParameterError("--cron: the expression does not fire at least twice from now on")
    return max((b - a).total_seconds() for a, b in itertools.pairwise(times))


@dataclass
class Schedule:
    """When retrains run: an interval or a cron expression, and how often the triggers are checked.

    Attributes:
        every: interval between scheduled retrains (``None``: none by interval).
        cron: crontab expression of scheduled retrains, UTC (``None``: none by cron).
        check_every: interval between volume/drift checks (``None``: no check job).
    """

    every: timedelta | None = None
    cron: str | None = None
    check_every: timedelta | None = None
    cron_trigger: CronTrigger | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.every is not None and self.cron is not None:
            raise ParameterError("give --every or --cron, not both")
        for name, value in (("--every", self.every), ("--check-every", self.check_every)):
            if value is not None and value.total_seconds() <= 0:
                raise ParameterError(f"{name}: the interval must be positive")
        if self.cron is not None:
            self.cron_trigger = parse_cron(self.cron)

    @property
    def scheduled(self) -> bool:
        """Whether retrains run on a schedule (interval or cron)."""
        return self.every is not None or self.cron is not None

    @property
    def seconds(self) -> float | None:
        """The interval between scheduled retrains (a cron expression's longest gap); ``None`` without one."""
        if self.every is not None:
            return self.every.total_seconds()
        if self.cron_trigger is not None:
            return cron_period(self.cron_trigger)
        return None

    def trigger(self, start: datetime | None = None) -> BaseTrigger | None:
        """The APScheduler trigger of the schedule job (``None`` without a schedule).

        Args:
            start: first fire time of an interval schedule (default: one interval from now).
        """
        if self.every is not None:
            return IntervalTrigger(seconds=self.every.total_seconds(), start_date=start, timezone=UTC)
        return self.cron_trigger

    def describe(self) -> str:
        """One line: ``every 6h`` or ``cron '0 */6 * * *' (UTC)``."""
        if self.every is not None:
            return f"every {_human(self.every)}"
        if self.cron is not None:
            return f"cron {self.cron!r} (UTC)"
        return "no schedule"


def _human(delta: timedelta) -> str:
    seconds = delta.total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def retrain_job(settings: Settings, model_name: str, *, tune: int = 0, warm_start: bool = False) -> RetrainJob:
    """The real retrain: ``run_retrain(settings, model_name=..., trigger=...)`` (imported when it first runs)."""

    def job(trigger: str) -> Any:
        from tastebud.pipeline.retrain import run_retrain

        return run_retrain(settings, model_name=model_name, trigger=trigger, tune=tune, warm_start=warm_start)

    return job


def recorded_last_success(settings: Settings, model_name: str) -> datetime | None:
    """When the last successful retrain of ``model_name`` finished: the later of the store's retrain history and the
    retrain gauges (``None`` when neither records one)."""
    found: list[datetime] = []
    gauges = last_success_at(settings.home / RETRAIN_TEXTFILE)
    if gauges is not None:
        found.append(gauges)
    from tastebud.store import create_store

    store = create_store(settings)
    try:
        store.init_schema()
        for outcome in SUCCESS_OUTCOMES:
            for row in store.retrain_history(model_name, 1, outcome=outcome):
                when = row.get("finished_at") or row.get("started_at")
                if isinstance(when, datetime):
                    found.append(when if when.tzinfo else when.replace(tzinfo=UTC))
    except Exception as err:  # the gauges still answer; a store outage must not stop the schedule
        logger.warning("retrain history unavailable: %s", err)
    finally:
        store.close()
    return max(found, default=None)


# --- the service -------------------------------------------------------------------------------------------------


@dataclass
class _JobError:
    """Stands in for the outcome of a job that raised (recorded as ``failed``)."""

    trigger: str
    reason: str
    started_at: datetime
    duration_s: float
    outcome: str = "failed"
    n_interactions: int | None = None
    n_new_events: int | None = None
    gate: dict[str, Any] = field(default_factory=dict)


@dataclass
class OnceResult:
    """What :meth:`RetrainService.once` did: every trigger's answer and the retrain's outcome (if one ran)."""

    checks: list[TriggerCheck]
    fired: TriggerCheck | None = None
    outcome: Any = None


class RetrainService:
    """Runs retrains on a schedule and when a trigger fires, one at a time, and records each in the gauges.

    Args:
        job: the retrain (:func:`retrain_job` in production; tests inject their own).
        schedule: when to retrain and when to check.
        checker: evaluates the volume and drift triggers (``None``: no check job).
        gauges_path: the retrain gauges' text file (``None``: not written).
        last_success: when the last successful retrain finished, for the schedule check of :meth:`once`
            (default: read from ``gauges_path``).
    """

    def __init__(
        self,
        job: RetrainJob,
        schedule: Schedule,
        *,
        checker: Checker | None = None,
        gauges_path: Path | None = None,
        last_success: Callable[[], datetime | None] | None = None,
    ) -> None:
        if not schedule.scheduled and checker is None:
            raise ParameterError(
                "nothing to schedule: give --every or --cron, or a trigger (--volume-events, "
                "--volume-new-users-pct, --drift)"
            )
        self.job = job
        self.schedule = schedule
        self.checker = checker
        self.gauges_path = gauges_path
        self._last_success = last_success
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._schedule_s = schedule.seconds

    @classmethod
    def for_settings(
        cls,
        settings: Settings,
        model_name: str,
        schedule: Schedule,
        *,
        checker: Checker | None = None,
        job: RetrainJob | None = None,
        tune: int = 0,
        warm_start: bool = False,
    ) -> RetrainService:
        """The service over a home: the real retrain, the gauges in ``<home>/monitoring/retrain.prom`` and the
        last success from the retrain history (:func:`recorded_last_success`)."""
        return cls(
            job or retrain_job(settings, model_name, tune=tune, warm_start=warm_start), schedule,
            checker=checker, gauges_path=settings.home / RETRAIN_TEXTFILE,
            last_success=lambda: recorded_last_success(settings, model_name),
        )  # fmt: skip

    # --- one retrain
    def run(self, trigger: str) -> Any:
        """Run one retrain now unless one is already running here; record it in the gauges; never raises.

        Returns:
            The job's outcome (a stand-in with ``outcome="failed"`` when it raised), or ``None`` when skipped.
        """
        if self._stopping.is_set():  # a run queued behind the last one when the service was told to stop
            return None
        if not self._lock.acquire(blocking=False):
            logger.warning("retrain already running in this process; %s trigger skipped", trigger)
            return None
        try:
            if self.checker is not None:
                try:  # before the job: a crash mid-retrain must not make every check retry the same data
                    self.checker.note_attempt()
                except Exception as err:
                    logger.warning("could not record the attempt: %s", err)
            started, t0 = datetime.now(UTC), time.monotonic()
            logger.info("retrain starting (trigger %s)", trigger)
            try:
                outcome = self.job(trigger)
            except Exception as err:
                logger.exception("retrain (trigger %s) raised; recorded as failed", trigger)
                outcome = _JobError(trigger, f"{type(err).__name__}: {err}", started, time.monotonic() - t0)
            logger.info(
                "retrain finished (trigger %s): %s %s", trigger, getattr(outcome, "outcome", "?"),
                getattr(outcome, "reason", "") or "",
            )  # fmt: skip
            self._record(outcome)
            return outcome
        finally:
            self._lock.release()

    def _record(self, outcome: Any) -> None:
        if self.gauges_path is None:
            return
        try:
            write_retrain_gauges(outcome, self.gauges_path, schedule_s=self._schedule_s)
        except Exception:  # the metrics file must never stop the service
            logger.exception("could not write the retrain gauges to %s", self.gauges_path)

    # --- the triggers
    def check(self) -> list[TriggerCheck]:
        """Evaluate the volume and drift triggers; run a retrain with the first that fired; never raises."""
        if self.checker is None or self._stopping.is_set():
            return []
        try:
            checks = self.checker.check()
        except Exception:
            logger.exception("trigger check failed")
            return []
        for c in checks:
            logger.info("trigger %s: %s (%s)", c.trigger, "fired" if c.fired else "not fired", c.reason)
        fired = next((c for c in checks if c.fired), None)
        if fired is not None:
            self.run(fired.trigger)
        return checks

    def schedule_check(self, now: datetime | None = None) -> TriggerCheck | None:
        """Whether the schedule is due, against the last recorded success (``None`` without a schedule)."""
        if not self.schedule.scheduled:
            return None
        last = self._last_success() if self._last_success else None
        if self._last_success is None and self.gauges_path is not None:
            last = last_success_at(self.gauges_path)
        return check_schedule(last, every=self.schedule.every, cron=self.schedule.cron_trigger, now=now)

    def once(self, now: datetime | None = None) -> OnceResult:
        """Evaluate every trigger once and run at most one retrain, for the first that fired (volume, drift, then
        schedule)."""
        checks: list[TriggerCheck] = []
        if self.checker is not None:
            checks.extend(self.checker.check())
        due = self.schedule_check(now)
        if due is not None:
            checks.append(due)
        fired = next((c for c in checks if c.fired), None)
        outcome = self.run(fired.trigger) if fired is not None else None
        return OnceResult(checks=checks, fired=fired, outcome=outcome)

    # --- the scheduler
    def add_jobs(self, scheduler: BaseScheduler, now: datetime | None = None) -> None:
        """Add the schedule job and the check job to ``scheduler`` (never overlapping, missed runs coalesced).

        The schedule continues from the last recorded success: a retrain that is already due (or was never
        recorded) runs at once, so a service restarted more often than its interval still retrains.
        """
        now = now or datetime.now(UTC)
        common: dict[str, Any] = {"max_instances": 1, "coalesce": True, "misfire_grace_time": None}
        due = self.schedule_check(now)
        if due is not None:
            start = None
            if not due.fired and self.schedule.every is not None and due.numbers.get("due"):
                start = datetime.fromisoformat(due.numbers["due"])
            extra = {"next_run_time": now} if due.fired else {}
            scheduler.add_job(
                self.run, self.schedule.trigger(start), args=["schedule"], id=SCHEDULE_JOB, name="scheduled retrain",
                **common, **extra,
            )  # fmt: skip
        if self.checker is not None:
            every = self.schedule.check_every or timedelta(minutes=5)
            scheduler.add_job(
                self.check, IntervalTrigger(seconds=every.total_seconds(), timezone=UTC), id=CHECK_JOB,
                name="retrain trigger check", next_run_time=datetime.now(UTC), **common,
            )  # fmt: skip

    def serve(self) -> None:
        """Run the jobs until SIGTERM or Ctrl-C; a retrain in progress finishes first (a second signal exits now)."""
        scheduler = BlockingScheduler(timezone=UTC, executors={"default": ThreadPoolExecutor(1)})
        self.add_jobs(scheduler)

        def stop(signum: int, _frame: FrameType | None) -> None:
            if self._stopping.is_set():
                logger.warning("second signal: exiting now")
                os._exit(128 + signum)
            self._stopping.set()
            logger.warning("stopping the retrain schedule (a retrain in progress finishes first)")
            scheduler.shutdown(wait=False)

        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            scheduler.start()
            with self._lock:  # wait for a retrain in progress
                pass
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
