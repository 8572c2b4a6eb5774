"""Monitoring reports on disk: the drift report (Markdown, JSON, one PNG per signal) and KPI JSON.

Also the small parsers the ``tastebud monitor`` commands share (durations such as ``24h``, instants).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from tastebud.errors import ParameterError
from tastebud.monitoring.drift import DriftReport, SignalDrift

__all__ = ["parse_duration", "parse_instant", "write_drift_report", "write_json_report"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")


def parse_duration(text: str) -> timedelta:
    """``"90s"``, ``"15m"``, ``"24h"``, ``"7d"`` or ``"2w"`` as a timedelta.

    Raises:
        ParameterError: anything else, or a zero duration.
    """
    match = _DURATION.match(text or "")
    if not match:
        raise ParameterError(f"duration {text!r}: expected a number and a unit s, m, h, d or w (e.g. 24h, 7d)")
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds <= 0:
        raise ParameterError(f"duration {text!r} must be positive")
    return timedelta(seconds=seconds)


def parse_instant(text: str) -> datetime:
    """An ISO-8601 date or time as an aware UTC datetime (a value without an offset is read as UTC).

    Raises:
        ParameterError: not an ISO-8601 date or time.
    """
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError as err:
        raise ParameterError(f"time {text!r}: expected ISO-8601, e.g. 2026-03-01 or 2026-03-01T12:00:00Z") from err
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def write_json_report(data: dict[str, Any], path: Path) -> Path:
    """Write ``data`` as indented JSON (datetimes as ISO strings)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=_default) + "\n")
    return path


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON-able: {type(value).__name__}")


def _plot(signal: SignalDrift, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    x = np.arange(len(signal.bins))
    width = max(6.0, 0.45 * len(signal.bins) + 2)
    fig, ax = plt.subplots(figsize=(width, 3.6))
    ax.bar(x - 0.2, signal.reference, 0.4, label=f"reference (n={signal.n_reference:g})", color="#4c72b0")
    ax.bar(x + 0.2, signal.current, 0.4, label=f"recent (n={signal.n_current:g})", color="#dd8452")
    ax.set_xticks(x, signal.bins, rotation=45 if len(signal.bins) > 6 else 0, ha="right", fontsize=8)
    ax.set_ylabel("share")
    ax.set_title(f"{signal.signal}: PSI {signal.psi:.3f}, KL {signal.kl:.3f} ({signal.level})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_drift_report(report: DriftReport, directory: Path, *, plots: bool = True) -> Path:
    """Write ``report.md``, ``report.json`` and ``<signal>.png`` plots into ``directory``; returns the Markdown."""
    directory.mkdir(parents=True, exist_ok=True)
    write_json_report(report.to_dict(), directory / "report.json")
    t = report.thresholds
    lines = [
        "# Drift report",
        "",
        f"Overall level: **{report.level}** (PSI warn at {t.warn:g}, alert at {t.alert:g}).",
        "",
    ]
    for key, value in {**report.reference, **{f"window {k}": v for k, v in report.window.items()}}.items():
        lines.append(f"- {key}: {value}")
    lines += [
        "",
        "| signal | PSI | KL (nats) | level | reference n | recent n |",
        "| --- | ---: | ---: | --- | ---: | ---: |",
    ]
    for s in report.signals:
        lines.append(f"| {s.signal} | {s.psi:.4f} | {s.kl:.4f} | {s.level} | {s.n_reference:g} | {s.n_current:g} |")
    for name, reason in report.skipped.items():
        lines.append(f"| {name} | | | skipped: {reason} | | |")
    if plots:
        lines.append("")
        for s in report.signals:
            _plot(s, directory / f"{s.signal}.png")
            lines += [f"![{s.signal}]({s.signal}.png)", ""]
    path = directory / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
