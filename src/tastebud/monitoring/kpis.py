"""Service KPIs and availability from the request log.

**Success.** A logged request succeeded when all of these hold:

- its status code is 2xx (errors are logged by the serving middleware with their 4xx/5xx status);
- it carries no error marker (``provenance.error``), so a 2xx status on an error body does not count;
- its list is well formed: as many scores as items, and every score finite (a NaN score is stored as null and
  means the model produced garbage, whatever the status code said).

An empty list is a success: filters that match nothing are a correct answer. Availability is successful / total
requests in a window; a minute *breaches* when its own ratio is below the objective.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import polars as pl

from tastebud.errors import ParameterError

__all__ = [
    "Availability",
    "availability",
    "compute_kpis",
    "model_switches",
    "request_frame",
    "success",
]

_SCHEMA: dict[str, pl.DataType | type[pl.DataType]] = {
    "request_id": pl.String,
    "timestamp": pl.Datetime("us", "UTC"),
    "endpoint": pl.String,
    "user_id": pl.String,
    "model_name": pl.String,
    "model_version": pl.Int64,
    "variant": pl.String,
    "latency_ms": pl.Float64,
    "status_code": pl.Int64,
    "is_fallback": pl.Boolean,
    "item_ids": pl.List(pl.String),
    "n_scores": pl.Int64,
    "bad_scores": pl.Boolean,
    "has_error": pl.Boolean,
}


def request_frame(records: Iterable[Mapping[str, Any]]) -> pl.DataFrame:
    """Request-log records (``query_request_logs``) as a frame, with the fields success depends on.

    Columns: ``request_id, timestamp, endpoint, user_id, model_name, model_version, variant, latency_ms,
    status_code, is_fallback, item_ids, n_scores, bad_scores`` (a null or non-finite score) and ``has_error``.
    """
    rows = list(records)
    if not rows:
        return pl.DataFrame(schema=_SCHEMA)

    def bad(scores: Any) -> bool:
        values = np.asarray([np.nan if s is None else s for s in scores or []], dtype=np.float64)
        return bool(values.size and not np.isfinite(values).all())

    data = {
        "request_id": [str(r["request_id"]) for r in rows],
        "timestamp": [r["timestamp"] for r in rows],
        "endpoint": [r.get("endpoint") for r in rows],
        "user_id": [r.get("user_id") for r in rows],
        "model_name": [r.get("model_name") for r in rows],
        "model_version": [r.get("model_version") for r in rows],
        "variant": [r.get("variant") for r in rows],
        "latency_ms": [float(r.get("latency_ms") or 0.0) for r in rows],
        "status_code": [int(r.get("status_code") or 0) for r in rows],
        "is_fallback": [bool(r.get("is_fallback")) for r in rows],
        "item_ids": [[str(i) for i in (r.get("item_ids") or [])] for r in rows],
        "n_scores": [len(r.get("scores") or []) for r in rows],
        "bad_scores": [bad(r.get("scores")) for r in rows],
        "has_error": [bool((r.get("provenance") or {}).get("error")) for r in rows],
    }
    return pl.DataFrame(data, schema=_SCHEMA).sort("timestamp")


def success() -> pl.Expr:
    """The success rule of the module docstring, as a boolean polars expression over :func:`request_frame`."""
    return (
        pl.col("status_code").is_between(200, 299)
        & ~pl.col("has_error")
        & ~pl.col("bad_scores")
        & (pl.col("item_ids").list.len() == pl.col("n_scores"))
    )


def _summary(frame: pl.DataFrame, catalog_size: int | None) -> dict[str, Any]:
    n = frame.height
    if n == 0:
        return {"requests": 0}
    ok = frame.filter(success())
    lat = frame["latency_ms"].to_numpy()
    p50, p95, p99 = (float(v) for v in np.percentile(lat, [50, 95, 99]))
    served = ok.select(pl.col("item_ids").explode().drop_nulls().n_unique()).item() if ok.height else 0
    first, last = frame["timestamp"].min(), frame["timestamp"].max()
    # The extremes of a non-empty Datetime column are datetimes.
    assert isinstance(first, datetime) and isinstance(last, datetime)
    span = (last - first).total_seconds()
    return {
        "requests": n,
        "successful": ok.height,
        "error_ratio": round(1.0 - ok.height / n, 6),
        "server_errors": int((frame["status_code"] >= 500).sum()),
        "client_errors": int(frame["status_code"].is_between(400, 499).sum()),
        "requests_per_s": round(n / span, 4) if span > 0 else None,
        "latency_ms": {"p50": round(p50, 3), "p95": round(p95, 3), "p99": round(p99, 3)},
        "fallback_rate": round(float(ok["is_fallback"].mean()), 6) if ok.height else None,  # type: ignore[arg-type]
        "items_served": int(served),
        "catalog_coverage": round(served / catalog_size, 6) if catalog_size else None,
    }


def compute_kpis(frame: pl.DataFrame, *, catalog_size: int | None = None) -> dict[str, Any]:
    """Traffic, latency percentiles, error ratio, fallback rate and catalog coverage, overall and per version.

    Args:
        frame: from :func:`request_frame`.
        catalog_size: items in the served model's catalog (coverage is ``None`` without it).

    Returns:
        ``{"overall": {...}, "by_model_version": {"<name>:<version>": {...}}, "by_endpoint": {...}}``.
    """
    by_version: dict[str, Any] = {}
    keyed = frame.with_columns(
        pl.concat_str(
            [pl.col("model_name").fill_null("none"), pl.col("model_version").cast(pl.String).fill_null("-")],
            separator=":",
        ).alias("_key")
    )
    for (key,), part in sorted(keyed.group_by("_key"), key=lambda kv: str(kv[0][0])):
        by_version[str(key)] = _summary(part, catalog_size)
    by_endpoint = {
        str(ep): _summary(part, catalog_size)
        for (ep,), part in sorted(frame.group_by("endpoint"), key=lambda kv: str(kv[0][0]))
    }
    return {"overall": _summary(frame, catalog_size), "by_model_version": by_version, "by_endpoint": by_endpoint}


@dataclass
class Availability:
    """Availability over a window and the minutes that breached the objective."""

    start: datetime
    end: datetime
    total: int
    successful: int
    objective: float
    breached_minutes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ratio(self) -> float | None:
        """Successful / total (``None`` without traffic)."""
        return self.successful / self.total if self.total else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "total": self.total,
            "successful": self.successful,
            "availability": None if self.ratio is None else round(self.ratio, 6),
            "objective": self.objective,
            "met": None if self.ratio is None else self.ratio >= self.objective,
            "breached_minutes": self.breached_minutes,
        }


def availability(frame: pl.DataFrame, start: datetime, end: datetime, *, objective: float = 0.999) -> Availability:
    """Availability of the requests with ``start <= timestamp < end``, and the minutes below ``objective``.

    Raises:
        ParameterError: ``end`` is not after ``start``, or the objective is not in (0, 1].
    """
    if end <= start:
        raise ParameterError(f"availability window: end {end.isoformat()} is not after start {start.isoformat()}")
    if not 0 < objective <= 1:
        raise ParameterError(f"availability objective must be in (0, 1], got {objective}")
    part = frame.filter(pl.col("timestamp").is_between(start, end, closed="left")).with_columns(success().alias("ok"))
    minutes = (
        part.group_by(pl.col("timestamp").dt.truncate("1m").alias("minute"))
        .agg(pl.len().alias("total"), pl.col("ok").sum().alias("successful"))
        .with_columns((pl.col("successful") / pl.col("total")).alias("availability"))
        .filter(pl.col("availability") < objective)
        .sort("minute")
    )
    breached = [
        {"minute": m.isoformat(), "total": t, "successful": s, "availability": round(a, 6)}
        for m, t, s, a in minutes.select("minute", "total", "successful", "availability").iter_rows()
    ]
    return Availability(start, end, part.height, int(part["ok"].sum()), objective, breached)


def model_switches(frame: pl.DataFrame, *, window: timedelta = timedelta(days=7)) -> dict[str, Any]:
    """Model switches seen in the request log and the most in any ``window`` (the best 7-day window).

    A switch is a successful request served by another model version than the successful request before it.
    """
    served = (
        frame.filter(success() & pl.col("model_version").is_not_null())
        .sort("timestamp")
        .with_columns(
            pl.concat_str([pl.col("model_name").fill_null(""), pl.col("model_version").cast(pl.String)], separator=":")
            .alias("key")
        )
    )  # fmt: skip
    changed = served.filter(pl.col("key").ne_missing(pl.col("key").shift(1)))
    switches = changed.slice(1) if changed.height else changed  # the first version seen is no switch
    times = switches["timestamp"].dt.epoch("us").to_numpy()
    best, best_start = 0, None
    if times.size:
        ends = np.searchsorted(times, times + int(window.total_seconds() * 1e6), side="left")
        counts = ends - np.arange(times.size)
        i = int(np.argmax(counts))
        best, best_start = int(counts[i]), switches["timestamp"][i]
    return {
        "switches": int(times.size),
        "window_days": window.total_seconds() / 86400,
        "best_window_switches": best,
        "best_window_start": best_start.isoformat() if best_start is not None else None,
        "versions": [
            {"model": k, "first_seen": t.isoformat()} for k, t in changed.select("key", "timestamp").iter_rows()
        ],
    }
