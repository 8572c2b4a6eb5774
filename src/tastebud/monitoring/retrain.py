"""Retrain gauges: the latest retrain's outcome, timings and data sizes as a Prometheus text file.

Every retrain (the schedule service after each run, ``tastebud retrain run``) calls :func:`write_retrain_gauges`;
the serving ``/metrics`` appends the file, as it does the drift gauges. The file is also the memory of the last
success: a run that did not succeed keeps the previous success time (read back from the file), so
``time() - tastebud_retrain_last_success_timestamp_seconds`` keeps growing while retrains fail, which is what the
``TastebudRetrainStale`` alert compares with twice ``tastebud_retrain_schedule_seconds``.

A retrain *succeeded* when the pipeline did its job: it promoted a candidate, the gate refused one, or there were
no new events to learn from. ``rejected_data`` (the new data failed validation) and ``failed`` need a person;
``busy`` (another process held the lock) is neither.
"""

from __future__ import annotations

import logging
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tastebud.monitoring.metrics import RETRAIN_OUTCOMES, RetrainMetrics

logger = logging.getLogger(__name__)

#: Outcomes that count as a successful retrain (the pipeline worked, whatever the gate said).
SUCCESS_OUTCOMES = ("promoted", "refused", "no_new_data")
#: Outcomes that need a person (the ``TastebudRetrainFailing`` alert).
FAILURE_OUTCOMES = ("rejected_data", "failed")

__all__ = ["FAILURE_OUTCOMES", "SUCCESS_OUTCOMES", "last_success_at", "read_retrain_gauges", "write_retrain_gauges"]


def write_retrain_gauges(outcome: Any, path: Path, schedule_s: float | None = None) -> Path:
    """Write the gauges of a retrain's outcome to ``path`` (atomically), keeping the previous success time.

    Args:
        outcome: a ``RetrainOutcome`` (``outcome``, ``started_at``, ``duration_s``, ``n_interactions``,
            ``n_new_events``, ``gate``); any object with those attributes.
        path: the text file (``<home>/`` :data:`~tastebud.monitoring.metrics.RETRAIN_TEXTFILE`).
        schedule_s: the configured interval between scheduled retrains; ``None`` keeps the value already in the
            file (a retrain by hand does not change the schedule), NaN when there is none.

    Returns:
        ``path``.
    """
    previous = read_retrain_gauges(path)
    name = str(getattr(outcome, "outcome", "failed"))
    duration = _number(getattr(outcome, "duration_s", None))
    finished = _finished_at(getattr(outcome, "started_at", None), duration)
    metrics = RetrainMetrics()
    metrics.last_run.set(finished)
    last_success = (
        finished if name in SUCCESS_OUTCOMES else previous.get("tastebud_retrain_last_success_timestamp_seconds")
    )
    metrics.last_success.set(math.nan if last_success is None else last_success)
    for label in (*RETRAIN_OUTCOMES, *(() if name in RETRAIN_OUTCOMES else (name,))):
        metrics.last_outcome.labels(outcome=label).set(1 if label == name else 0)
    metrics.duration.set(math.nan if duration is None else duration)
    for gauge, attr in ((metrics.data_interactions, "n_interactions"), (metrics.new_events, "n_new_events")):
        value = _number(getattr(outcome, attr, None))
        gauge.set(math.nan if value is None else value)
    passed = (getattr(outcome, "gate", None) or {}).get("passed")
    metrics.gate_passed.set(math.nan if passed is None else float(bool(passed)))
    if schedule_s is None:
        schedule_s = previous.get("tastebud_retrain_schedule_seconds")
    metrics.schedule.set(math.nan if schedule_s is None else float(schedule_s))
    return metrics.write(path)


def read_retrain_gauges(path: Path) -> dict[str, float]:
    """The unlabelled retrain gauges in ``path`` by name (NaN values left out; empty when there is no file)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as err:
        logger.warning("retrain gauges unreadable", extra={"path": str(path), "error": str(err)})
        return {}
    out: dict[str, float] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if not sample.labels and not math.isnan(sample.value):
                    out[sample.name] = float(sample.value)
    except ValueError as err:  # a damaged file loses its memory, never the next write
        logger.warning("retrain gauges malformed", extra={"path": str(path), "error": str(err)})
    return out


def last_success_at(path: Path) -> datetime | None:
    """When the last successful retrain recorded in ``path`` finished (``None``: none recorded)."""
    value = read_retrain_gauges(path).get("tastebud_retrain_last_success_timestamp_seconds")
    return None if value is None else datetime.fromtimestamp(value, UTC)


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _finished_at(started_at: Any, duration: float | None) -> float:
    """Unix time the run finished: its start plus its duration, else now."""
    if isinstance(started_at, str):
        try:
            started_at = datetime.fromisoformat(started_at.replace("Z", "+00:00"))
        except ValueError:
            started_at = None
    start: float | None
    if isinstance(started_at, datetime):
        start = (started_at if started_at.tzinfo else started_at.replace(tzinfo=UTC)).timestamp()
    else:
        start = _number(started_at)
    if start is None:
        return datetime.now(UTC).timestamp()
    return start + (duration or 0.0)
