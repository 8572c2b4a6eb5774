"""The retrain schedule: parsing, the scheduler with an injected job (interval, no overlap, failures), ``--once``,
SIGTERM, and the command's errors."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from tastebud.errors import ParameterError
from tastebud.monitoring.retrain import read_retrain_gauges
from tastebud.pipeline.schedule import (
    CHECK_JOB,
    SCHEDULE_JOB,
    RetrainService,
    Schedule,
    cron_period,
    parse_cron,
    parse_interval,
)
from tastebud.pipeline.triggers import TriggerCheck

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class Outcome:
    def __init__(self, trigger: str, outcome: str = "promoted") -> None:
        self.trigger, self.outcome, self.reason = trigger, outcome, "test"
        self.started_at, self.duration_s = datetime.now(UTC), 0.01
        self.n_interactions, self.n_new_events, self.gate = 10, 2, {"passed": True}


class RecordingJob:
    """A retrain that records its triggers and how many ran at once."""

    def __init__(self, seconds: float = 0.0, fail: bool = False) -> None:
        self.seconds, self.fail = seconds, fail
        self.triggers: list[str] = []
        self.running = self.max_running = 0
        self._lock = threading.Lock()

    def __call__(self, trigger: str) -> Outcome:
        with self._lock:
            self.triggers.append(trigger)
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        try:
            time.sleep(self.seconds)
            if self.fail:
                raise RuntimeError("boom")
            return Outcome(trigger)
        finally:
            with self._lock:
                self.running -= 1


class StubChecker:
    """Answers the volume and drift triggers from a list; remembers attempts."""

    def __init__(self, *fired: str) -> None:
        self.fired = set(fired)
        self.calls = self.attempts = 0

    def check(self) -> list[TriggerCheck]:
        self.calls += 1
        return [TriggerCheck(t in self.fired, t, "stub", {}) for t in ("volume", "drift")]

    def note_attempt(self, through_id: int | None = None) -> None:
        self.attempts += 1


def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.02)


# --- parsing ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [("30m", 1800), ("6h", 21600), ("1d", 86400), (" 90s ", 90)])
def test_parse_interval(text: str, seconds: float) -> None:
    assert parse_interval(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["6x", "", "h", "0h", "-1h", "6 hours", "1.5.2h"])
def test_parse_interval_rejects_with_the_option_name(text: str) -> None:
    with pytest.raises(ParameterError, match=r"--every .*e\.g\. 30m, 6h or 1d") as err:
        parse_interval(text)
    assert "\n" not in str(err.value)
    with pytest.raises(ParameterError, match="--check-every"):
        parse_interval(text, option="--check-every")


def test_parse_cron_and_its_period() -> None:
    assert cron_period(parse_cron("0 */6 * * *"), now=NOW) == 6 * 3600
    assert cron_period(parse_cron("30 2 * * *"), now=NOW) == 86400
    assert cron_period(parse_cron("0 9 * * 1-5"), now=NOW) == 3 * 86400  # Friday to Monday


@pytest.mark.parametrize(
    ("expr", "why"),
    [("61 * * * *", "higher than the maximum"), ("* * *", "Wrong number of fields"), ("every day", "Wrong number")],
)
def test_parse_cron_rejects(expr: str, why: str) -> None:
    with pytest.raises(ParameterError, match=why) as err:
        parse_cron(expr)
    assert str(err.value).startswith(f"--cron {expr!r}") and "'0 */6 * * *'" in str(err.value)
    assert "\n" not in str(err.value)


def test_schedule_is_validated() -> None:
    with pytest.raises(ParameterError, match="not both"):
        Schedule(every=timedelta(hours=1), cron="0 * * * *")
    with pytest.raises(ParameterError, match="positive"):
        Schedule(check_every=timedelta(0))
    assert Schedule(every=timedelta(hours=6)).seconds == 21600 and Schedule(cron="0 */6 * * *").seconds == 21600
    assert Schedule().seconds is None and not Schedule().scheduled
    with pytest.raises(ParameterError, match="nothing to schedule"):
        RetrainService(RecordingJob(), Schedule())


# --- the scheduler ------------------------------------------------------------------------------------------------


def background(service: RetrainService, workers: int = 4) -> BackgroundScheduler:
    # Several worker threads, so only max_instances and the service's lock can keep runs from overlapping.
    scheduler = BackgroundScheduler(timezone=UTC, executors={"default": ThreadPoolExecutor(workers)})
    service.add_jobs(scheduler)
    scheduler.start()
    return scheduler


def test_scheduler_runs_the_job_on_the_interval(tmp_path: Path) -> None:
    job = RecordingJob()
    service = RetrainService(job, Schedule(every=timedelta(seconds=0.2)), gauges_path=tmp_path / "retrain.prom")
    start = time.monotonic()
    scheduler = background(service)
    try:
        # Never recorded a success: the first run is at once, then one every 0.2 s (waiting for 4 runs rather
        # than a fixed time keeps a loaded machine from failing the test; the rate is bounded below).
        while len(job.triggers) < 4 and time.monotonic() - start < 10:
            time.sleep(0.05)
    finally:
        scheduler.shutdown(wait=True)
    elapsed = time.monotonic() - start
    assert len(job.triggers) >= 4, job.triggers
    assert len(job.triggers) <= elapsed / 0.2 + 2, (job.triggers, elapsed)
    assert set(job.triggers) == {"schedule"}
    gauges = read_retrain_gauges(tmp_path / "retrain.prom")
    assert gauges["tastebud_retrain_schedule_seconds"] == pytest.approx(0.2)


def test_scheduler_never_overlaps_runs(tmp_path: Path) -> None:
    job = RecordingJob(seconds=0.5)  # each run outlasts two intervals
    checker = StubChecker("volume")  # and the check job wants a retrain too
    service = RetrainService(
        job,
        Schedule(every=timedelta(seconds=0.2), check_every=timedelta(seconds=0.1)),
        checker=checker,
    )
    scheduler = background(service)
    try:
        wait_for(lambda: len(job.triggers) >= 3)
    finally:
        scheduler.shutdown(wait=True)
    assert job.max_running == 1
    assert {"schedule", "volume"} & set(job.triggers)


def test_failing_job_is_recorded_and_the_service_goes_on(tmp_path: Path) -> None:
    job = RecordingJob(fail=True)
    path = tmp_path / "retrain.prom"
    service = RetrainService(job, Schedule(every=timedelta(seconds=0.1)), gauges_path=path)
    scheduler = background(service, workers=1)
    try:
        wait_for(lambda: len(job.triggers) >= 3)
    finally:
        scheduler.shutdown(wait=True)
    assert path.is_file()
    text = path.read_text()
    assert 'tastebud_retrain_last_outcome{outcome="failed"} 1.0' in text
    assert 'tastebud_retrain_last_outcome{outcome="promoted"} 0.0' in text
    assert "tastebud_retrain_last_success_timestamp_seconds NaN" in text


def test_check_job_retrains_with_the_trigger_that_fired() -> None:
    job, checker = RecordingJob(), StubChecker("drift")
    service = RetrainService(job, Schedule(check_every=timedelta(seconds=0.1)), checker=checker)
    scheduler = background(service)
    try:
        wait_for(lambda: len(job.triggers) >= 2)
        assert scheduler.get_job(CHECK_JOB) is not None and scheduler.get_job(SCHEDULE_JOB) is None
    finally:
        scheduler.shutdown(wait=True)
    assert set(job.triggers) == {"drift"} and checker.attempts >= 2


def test_check_job_without_a_fired_trigger_does_not_retrain() -> None:
    job, checker = RecordingJob(), StubChecker()
    service = RetrainService(job, Schedule(check_every=timedelta(seconds=0.05)), checker=checker)
    scheduler = background(service)
    try:
        wait_for(lambda: checker.calls >= 4)
    finally:
        scheduler.shutdown(wait=True)
    assert job.triggers == []


@pytest.mark.parametrize(("hours_ago", "first_in_hours"), [(2, 4), (7, 0)])
def test_schedule_continues_from_the_last_success(hours_ago: int, first_in_hours: int) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    last = now - timedelta(hours=hours_ago)
    scheduler = BackgroundScheduler(timezone=UTC)
    service = RetrainService(RecordingJob(), Schedule(every=timedelta(hours=6)), last_success=lambda: last)
    service.add_jobs(scheduler, now=now)
    scheduler.start(paused=True)
    try:  # overdue runs at once; otherwise one interval after the last success, not after the restart
        assert scheduler.get_job(SCHEDULE_JOB).next_run_time == now + timedelta(hours=first_in_hours)
    finally:
        scheduler.shutdown(wait=False)


# --- once -----------------------------------------------------------------------------------------------------------


def test_once_runs_the_job_only_when_a_trigger_fires() -> None:
    recent = lambda: NOW - timedelta(hours=1)  # noqa: E731
    job = RecordingJob()
    quiet = RetrainService(job, Schedule(every=timedelta(hours=6)), checker=StubChecker(), last_success=recent)
    result = quiet.once(now=NOW)
    assert job.triggers == [] and result.outcome is None and result.fired is None
    assert [c.trigger for c in result.checks] == ["volume", "drift", "schedule"]

    volume = RetrainService(job, Schedule(every=timedelta(hours=6)), checker=StubChecker("volume", "drift"),
                            last_success=recent)  # fmt: skip
    assert volume.once(now=NOW).outcome.trigger == "volume" and job.triggers == ["volume"]

    stale = lambda: NOW - timedelta(hours=7)  # noqa: E731
    due = RetrainService(job, Schedule(every=timedelta(hours=6)), checker=StubChecker(), last_success=stale)
    fired = due.once(now=NOW).fired
    assert fired is not None and fired.trigger == "schedule" and job.triggers == ["volume", "schedule"]


def test_once_reads_the_last_success_from_the_gauges(tmp_path: Path) -> None:
    job = RecordingJob()
    path = tmp_path / "retrain.prom"
    service = RetrainService(job, Schedule(every=timedelta(hours=6)), gauges_path=path)
    fired = service.once().fired
    assert fired is not None and fired.reason == "no successful retrain recorded yet" and job.triggers == ["schedule"]
    assert not service.once().checks[0].fired and job.triggers == ["schedule"]  # it succeeded just now


# --- the process --------------------------------------------------------------------------------------------------


def test_sigterm_stops_the_service_after_the_running_retrain(tmp_path: Path) -> None:
    log = tmp_path / "job.log"
    script = textwrap.dedent(f"""
        import time
        from datetime import timedelta
        from pathlib import Path
        from tastebud.pipeline.schedule import RetrainService, Schedule

        def job(trigger):
            with open({str(log)!r}, "a") as f:
                f.write("start\\n")
            time.sleep(1.0)
            with open({str(log)!r}, "a") as f:
                f.write("end\\n")

        RetrainService(job, Schedule(every=timedelta(hours=1))).serve()
        print("stopped cleanly")
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: log.is_file() and "start" in log.read_text(), timeout=30)
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "stopped cleanly" in out and "Traceback" not in err
    assert log.read_text().split() == ["start", "end"]  # the retrain in progress finished


def test_recorded_last_success_reads_the_retrain_history(tmp_path: Path) -> None:
    from tastebud.config import build_settings
    from tastebud.pipeline.schedule import recorded_last_success
    from tastebud.store import create_store

    settings = build_settings(home=tmp_path)
    assert recorded_last_success(settings, "m") is None
    with create_store(settings) as store:
        store.init_schema()
        ok = store.start_retrain(model_name="m", trigger="schedule", owner="t", started_at=NOW - timedelta(hours=5))
        store.finish_retrain(ok, outcome="refused", finished_at=NOW - timedelta(hours=4))
        bad = store.start_retrain(model_name="m", trigger="schedule", owner="t", started_at=NOW - timedelta(hours=1))
        store.finish_retrain(bad, outcome="failed", finished_at=NOW)
        other = store.start_retrain(model_name="other", trigger="manual", owner="t", started_at=NOW)
        store.finish_retrain(other, outcome="promoted", finished_at=NOW)
    assert recorded_last_success(settings, "m") == NOW - timedelta(hours=4)


# --- the command ----------------------------------------------------------------------------------------------------


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Any:
    """``tastebud retrain schedule ARGS`` over a temporary home: (exit code, stdout, stderr)."""
    from tastebud.cli import main

    monkeypatch.setenv("TASTEBUD_HOME", str(tmp_path))
    monkeypatch.delenv("TASTEBUD_CONFIG", raising=False)

    def run(*args: str) -> tuple[int, str, str]:
        code = main(["retrain", "schedule", *args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--every", "6x"], "--every '6x': expected a positive number and a unit"),
        (["--cron", "61 * * * *"], "--cron '61 * * * *': Error validating expression '61'"),
        (["--cron", "*/5 * *"], "expected five fields"),
        (["--every", "6h", "--cron", "0 * * * *"], "give --every or --cron, not both"),
        (["--every", "1h", "--check-every", "soon"], "--check-every 'soon'"),
        ([], "nothing to schedule"),
        (["--drift", "--drift-signals", "item_id"], "ids are keys"),
    ],
)
def test_command_rejects_bad_values_in_one_line(cli: Any, args: list[str], message: str) -> None:
    code, out, err = cli(*args)
    assert code == 1, out + err
    assert message in " ".join(err.split()) and "Traceback" not in out + err
    assert err.startswith("error:") and len(err.strip().splitlines()) <= 3  # one line, wrapped by the terminal


def test_command_help_teaches(cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # rich wraps help text in boxes at the terminal width
    code, out, _ = cli("--help")
    assert code == 0
    flat = " ".join(out.split())
    for text in ("--every", "30m, 6h, 1d", "--cron", "0 */6 * * *", "--once", "--volume-events", "user_activity"):
        assert text in flat, text


def test_command_once_retrains_when_due_and_records_it(
    cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = RecordingJob()
    monkeypatch.setattr("tastebud.pipeline.schedule.retrain_job", lambda settings, name, **kw: job)
    code, out, err = cli("--every", "6h", "--once")
    assert code == 0, out + err
    assert job.triggers == ["schedule"] and "promoted" in out
    gauges = read_retrain_gauges(tmp_path / "monitoring" / "retrain.prom")
    assert gauges["tastebud_retrain_schedule_seconds"] == 21600
    code, out, _ = cli("--every", "6h", "--once")  # succeeded just now: not due
    assert code == 0 and "nothing to do" in out and job.triggers == ["schedule"]
    job.fail = True
    time.sleep(1.1)  # the last success is now over a second old
    code, out, _ = cli("--every", "1s", "--once")
    assert code == 1 and "failed" in out and job.triggers == ["schedule", "schedule"]
