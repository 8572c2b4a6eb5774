"""Drift between the training snapshot and recent traffic: PSI and KL divergence per signal.

Five signals, each reduced to a distribution over a few named bins that mean the same thing on both sides:

- ``rating``: the rating values (one bin per value when there are few, else reference quantiles);
- ``item_popularity``: the share of interactions on items by how popular they were in the reference
  (log2 buckets of the item's reference count, plus ``unseen`` for items new since the snapshot);
- ``user_activity``: the share of interactions by how active their user was in the reference (same buckets,
  plus ``new`` for users unknown to the reference);
- ``genre_mix``: the share of interactions per genre (an item with several genres splits its weight);
- ``score``: the scores of served recommendations (request log), binned at the reference's quantiles.

Ids are only ever keys: buckets come from counts, never from the id values, so relabelling users or items (the same
way on both sides) cannot change any number here. Histogramming ids as if they were numbers would make drift depend
on how ids happen to be assigned.

``psi = sum((q - p) * ln(q / p))`` and ``kl = sum(q * ln(q / p))`` with ``p`` the reference and ``q`` the current
shares; both get additive smoothing of half an observation per bin, so an empty bin gives a large but finite value.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import numpy as np
import polars as pl

from tastebud.errors import DataValidationError, ParameterError
from tastebud.monitoring.metrics import DRIFT_SIGNALS, DriftMetrics

__all__ = [
    "DriftReport",
    "SignalDrift",
    "Thresholds",
    "compute_drift",
    "events_frame",
    "export_gauges",
    "kl_divergence",
    "psi",
    "served_scores",
]

#: Level names by rank (also the value of the ``tastebud_monitor_drift_level`` gauge).
LEVELS = ("ok", "warn", "alert")
#: Most distinct rating values binned one per value; beyond, quantile bins.
MAX_CATEGORIES = 20
#: Quantile bins of continuous signals (ratings with many values, scores).
N_QUANTILE_BINS = 10


@dataclass(frozen=True)
class Thresholds:
    """PSI levels at which a signal warns and alerts (the usual rule of thumb: 0.1 and 0.25)."""

    warn: float = 0.1
    alert: float = 0.25

    def __post_init__(self) -> None:
        if not 0 < self.warn <= self.alert:
            raise ParameterError(f"drift thresholds: need 0 < warn <= alert, got warn={self.warn}, alert={self.alert}")

    def level(self, value: float) -> str:
        """``ok``, ``warn`` or ``alert`` for a PSI value."""
        return "alert" if value >= self.alert else "warn" if value >= self.warn else "ok"


@dataclass(frozen=True)
class SignalDrift:
    """Drift of one signal: its bins, both distributions (shares) and the divergences."""

    signal: str
    bins: list[str]
    reference: np.ndarray
    current: np.ndarray
    n_reference: float
    n_current: float
    psi: float
    kl: float
    level: str
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "signal": self.signal,
            "psi": _round(self.psi),
            "kl": _round(self.kl),
            "level": self.level,
            "n_reference": self.n_reference,
            "n_current": self.n_current,
            "bins": self.bins,
            "reference": [round(float(v), 6) for v in self.reference],
            "current": [round(float(v), 6) for v in self.current],
            "note": self.note,
        }


@dataclass
class DriftReport:
    """The drift of every signal that could be computed, with what was compared."""

    signals: list[SignalDrift]
    thresholds: Thresholds
    reference: dict[str, Any] = field(default_factory=dict)
    window: dict[str, Any] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def level(self) -> str:
        """The worst level over the signals (``ok`` when none was computed)."""
        ranks = [LEVELS.index(s.level) for s in self.signals]
        return LEVELS[max(ranks, default=0)]

    def get(self, signal: str) -> SignalDrift | None:
        """The drift of ``signal``, or None when it was skipped."""
        return next((s for s in self.signals if s.signal == signal), None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "level": self.level,
            "thresholds": {"warn": self.thresholds.warn, "alert": self.thresholds.alert},
            "reference": self.reference,
            "window": self.window,
            "signals": [s.to_dict() for s in self.signals],
            "skipped": self.skipped,
        }


# --- divergences -------------------------------------------------------------------------------------------------


def _shares(counts: np.ndarray, smoothing: float = 0.5) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.float64)
    smoothed = counts + smoothing
    return smoothed / smoothed.sum()


def psi(reference_counts: Sequence[float] | np.ndarray, current_counts: Sequence[float] | np.ndarray) -> float:
    """Population stability index between two histograms over the same bins (counts, smoothed).

    Raises:
        ParameterError: the histograms differ in length or are empty.
    """
    p, q = _pair(reference_counts, current_counts)
    return float(np.sum((q - p) * np.log(q / p)))


def kl_divergence(
    reference_counts: Sequence[float] | np.ndarray, current_counts: Sequence[float] | np.ndarray
) -> float:
    """KL divergence ``KL(current || reference)`` in nats, over the same bins (counts, smoothed)."""
    p, q = _pair(reference_counts, current_counts)
    return float(np.sum(q * np.log(q / p)))


def _pair(reference: Sequence[float] | np.ndarray, current: Sequence[float] | np.ndarray) -> tuple[np.ndarray, ...]:
    ref, cur = np.asarray(reference, dtype=np.float64), np.asarray(current, dtype=np.float64)
    if ref.shape != cur.shape or ref.ndim != 1 or ref.size == 0:
        raise ParameterError(f"histograms must be 1-d with the same bins, got {ref.shape} and {cur.shape}")
    return _shares(ref), _shares(cur)


# --- signals -----------------------------------------------------------------------------------------------------


#: Bin labels with the reference and current counts per bin.
_Histograms = tuple[list[str], np.ndarray, np.ndarray]


def _log2_bucket(counts: pl.Expr) -> pl.Expr:
    # 1 -> "1", 2..3 -> "2-3", 4..7 -> "4-7": the buckets depend on counts only, never on the ids.
    return counts.cast(pl.Float64).log(2).floor().cast(pl.Int32)


def _bucket_label(b: int) -> str:
    lo, hi = 2**b, 2 ** (b + 1) - 1
    return str(lo) if lo == hi else f"{lo}-{hi}"


def _count_buckets(reference: pl.DataFrame, current: pl.DataFrame, key: str, unknown: str) -> _Histograms:
    """Histograms of interactions by the log2 bucket of their ``key``'s reference count."""
    ref_counts = reference.group_by(key).agg(pl.len().alias("n")).with_columns(_log2_bucket(pl.col("n")).alias("b"))
    ref_hist = ref_counts.group_by("b").agg(pl.col("n").sum().alias("count"))
    cur = current.select(key).join(ref_counts.select(key, "b"), on=key, how="left")
    cur_hist = cur.group_by("b").agg(pl.len().alias("count"))
    top = int(cast(int | None, ref_hist["b"].max()) or 0) if ref_hist.height else 0
    buckets = list(range(top + 1))
    ref_map = dict(zip(ref_hist["b"].to_list(), ref_hist["count"].to_list(), strict=True))
    cur_map = dict(zip(cur_hist["b"].to_list(), cur_hist["count"].to_list(), strict=True))
    labels = [_bucket_label(b) for b in buckets] + [unknown]
    ref_arr = np.array([ref_map.get(b, 0) for b in buckets] + [0], dtype=np.float64)
    cur_arr = np.array([cur_map.get(b, 0) for b in buckets] + [cur_map.get(None, 0)], dtype=np.float64)
    return labels, ref_arr, cur_arr


def _values_histogram(ref: np.ndarray, cur: np.ndarray, *, categorical: bool) -> _Histograms:
    """Histograms of a numeric signal: one bin per value when ``categorical``, else reference quantile bins."""
    if categorical:
        values = np.unique(np.concatenate([ref, cur]))
        labels = [f"{v:g}" for v in values]
        ref_arr = np.array([(ref == v).sum() for v in values], dtype=np.float64)
        cur_arr = np.array([(cur == v).sum() for v in values], dtype=np.float64)
        return labels, ref_arr, cur_arr
    inner = np.unique(np.quantile(ref, np.linspace(0, 1, N_QUANTILE_BINS + 1)[1:-1]))
    edges = np.concatenate([[-np.inf], inner, [np.inf]])
    labels = [f"< {inner[0]:.4g}"] if inner.size else ["all"]
    labels += [f"{lo:.4g} .. {hi:.4g}" for lo, hi in itertools.pairwise(inner)]
    if inner.size:
        labels.append(f">= {inner[-1]:.4g}")
    ref_arr = np.histogram(ref, bins=edges)[0].astype(np.float64)
    cur_arr = np.histogram(cur, bins=edges)[0].astype(np.float64)
    return labels, ref_arr, cur_arr


def _genre_histogram(reference: pl.DataFrame, current: pl.DataFrame, item_meta: pl.DataFrame) -> _Histograms | None:
    genres = item_meta.select(pl.col("item_id").cast(pl.String), "genres").filter(pl.col("genres").list.len() > 0)
    if genres.height == 0:
        return None
    weights = genres.with_columns((1.0 / pl.col("genres").list.len()).alias("w")).explode("genres")

    def hist(frame: pl.DataFrame) -> pl.DataFrame:
        joined = frame.select("item_id").join(weights, on="item_id", how="left")
        joined = joined.with_columns(
            pl.col("genres").fill_null("(unknown)"), pl.col("w").fill_null(1.0)
        )  # items without metadata count as one unknown genre
        return joined.group_by("genres").agg(pl.col("w").sum().alias("count"))

    ref_h, cur_h = hist(reference), hist(current)
    labels = sorted(set(ref_h["genres"].to_list()) | set(cur_h["genres"].to_list()))
    ref_map = dict(zip(ref_h["genres"].to_list(), ref_h["count"].to_list(), strict=True))
    cur_map = dict(zip(cur_h["genres"].to_list(), cur_h["count"].to_list(), strict=True))
    return (
        labels,
        np.array([ref_map.get(g, 0.0) for g in labels]),
        np.array([cur_map.get(g, 0.0) for g in labels]),
    )


def _signal(name: str, hists: _Histograms, thresholds: Thresholds, note: str | None = None) -> SignalDrift:
    labels, ref, cur = hists
    keep = (ref > 0) | (cur > 0)  # bins empty on both sides carry no information
    labels = [lab for lab, k in zip(labels, keep.tolist(), strict=True) if k]
    ref, cur = ref[keep], cur[keep]
    value = psi(ref, cur)
    return SignalDrift(
        signal=name, bins=list(labels), reference=ref / ref.sum(), current=cur / cur.sum(),
        n_reference=round(float(ref.sum()), 3), n_current=round(float(cur.sum()), 3),
        psi=value, kl=kl_divergence(ref, cur), level=thresholds.level(value), note=note,
    )  # fmt: skip


def compute_drift(
    reference: pl.DataFrame,
    current: pl.DataFrame,
    *,
    item_meta: pl.DataFrame | None = None,
    reference_scores: np.ndarray | Sequence[float] | None = None,
    current_scores: np.ndarray | Sequence[float] | None = None,
    thresholds: Thresholds | None = None,
    min_events: int = 1,
) -> DriftReport:
    """Drift of every signal between a reference (training) frame and the current (recent) one.

    Args:
        reference: interactions with ``user_id``, ``item_id`` (strings) and an optional ``rating``.
        current: recent events, same columns.
        item_meta: ``item_id`` and ``genres`` (list of strings) for the genre mix; skipped when ``None``.
        reference_scores: scores served in the reference period (for the score signal; skipped when ``None``).
        current_scores: scores served in the recent window.
        thresholds: PSI levels (default 0.1 warn, 0.25 alert).
        min_events: fewest recent events (or served scores) a signal needs; fewer skip it with a reason.

    Raises:
        DataValidationError: a frame lacks ``user_id`` or ``item_id``.
    """
    thresholds = thresholds or Thresholds()
    reference, current = _ids_as_strings(reference, "reference"), _ids_as_strings(current, "current")
    signals: list[SignalDrift] = []
    skipped: dict[str, str] = {}
    if current.height < min_events:
        for name in ("rating", "item_popularity", "user_activity", "genre_mix"):
            skipped[name] = f"{current.height} recent events (need {min_events})"
    else:
        ref_r, cur_r = _ratings(reference), _ratings(current)
        if ref_r.size and cur_r.size:
            categorical = np.unique(np.concatenate([ref_r, cur_r])).size <= MAX_CATEGORIES
            signals.append(_signal("rating", _values_histogram(ref_r, cur_r, categorical=categorical), thresholds))
        else:
            skipped["rating"] = "no ratings on " + ("the reference" if not ref_r.size else "recent events")
        signals.append(_signal("item_popularity", _count_buckets(reference, current, "item_id", "unseen"), thresholds))
        signals.append(_signal("user_activity", _count_buckets(reference, current, "user_id", "new"), thresholds))
        genre = _genre_histogram(reference, current, item_meta) if item_meta is not None else None
        if genre is not None:
            signals.append(_signal("genre_mix", genre, thresholds))
        else:
            skipped["genre_mix"] = "no item genres"
    ref_s = _finite(reference_scores)
    cur_s = _finite(current_scores)
    if ref_s.size and cur_s.size >= min_events:
        signals.append(_signal("score", _values_histogram(ref_s, cur_s, categorical=False), thresholds))
    else:
        skipped["score"] = (
            "no served scores in the reference period" if not ref_s.size else f"{cur_s.size} served scores recently"
        )
    return DriftReport(signals=signals, thresholds=thresholds, skipped=skipped)


def _ids_as_strings(frame: pl.DataFrame, what: str) -> pl.DataFrame:
    missing = [c for c in ("user_id", "item_id") if c not in frame.columns]
    if missing:
        raise DataValidationError(f"{what} interactions: missing column(s) {', '.join(missing)}")
    return frame.with_columns(pl.col("user_id").cast(pl.String), pl.col("item_id").cast(pl.String))


def _ratings(frame: pl.DataFrame) -> np.ndarray:
    if "rating" not in frame.columns:
        return np.empty(0)
    values = frame["rating"].drop_nulls().cast(pl.Float64).to_numpy()
    return values[np.isfinite(values)]


def _finite(values: Any) -> np.ndarray:
    if values is None:
        return np.empty(0)
    arr = np.asarray(values, dtype=np.float64).ravel()
    return arr[np.isfinite(arr)]


# --- inputs and outputs ------------------------------------------------------------------------------------------


def events_frame(records: Iterable[Mapping[str, Any]]) -> pl.DataFrame:
    """Store event records (``query_events``) as a frame ``user_id, item_id, kind, rating, timestamp``."""
    rows = list(records)
    schema: dict[str, pl.DataType | type[pl.DataType]] = {
        "user_id": pl.String, "item_id": pl.String, "kind": pl.String, "rating": pl.Float64,
        "timestamp": pl.Datetime("us", "UTC"),
    }  # fmt: skip
    if not rows:
        return pl.DataFrame(schema=schema)
    return pl.DataFrame(
        {
            "user_id": [str(r["user_id"]) for r in rows],
            "item_id": [str(r["item_id"]) for r in rows],
            "kind": [r.get("kind") for r in rows],
            "rating": [r.get("rating") for r in rows],
            "timestamp": [r.get("timestamp") for r in rows],
        },
        schema=schema,
    )


def served_scores(records: Iterable[Mapping[str, Any]], *, endpoint: str = "recommend") -> np.ndarray:
    """Scores of the successful personal (non-fallback) lists of ``endpoint`` in request-log records."""
    out = [
        s
        for r in records
        if r.get("endpoint") == endpoint and 200 <= int(r.get("status_code", 0)) < 300 and not r.get("is_fallback")
        for s in (r.get("scores") or [])
        if s is not None
    ]
    return np.asarray(out, dtype=np.float64)


def export_gauges(
    report: DriftReport, metrics: DriftMetrics | None = None, *, at: datetime | None = None
) -> DriftMetrics:
    """Set the drift gauges from ``report`` (signals that were skipped get no series)."""
    metrics = metrics or DriftMetrics()
    for s in report.signals:
        if s.signal not in DRIFT_SIGNALS:  # pragma: no cover - every signal name is declared
            continue
        metrics.psi.labels(signal=s.signal).set(s.psi)
        metrics.kl.labels(signal=s.signal).set(s.kl)
        metrics.level.labels(signal=s.signal).set(LEVELS.index(s.level))
        metrics.warn_threshold.labels(signal=s.signal).set(report.thresholds.warn)
        metrics.alert_threshold.labels(signal=s.signal).set(report.thresholds.alert)
    metrics.checked.set((at or datetime.now().astimezone()).timestamp())
    return metrics


def write_gauges(report: DriftReport, path: Path) -> Path:
    """Write the drift gauges of ``report`` to a Prometheus text file (what ``/metrics`` appends)."""
    return export_gauges(report).write(path)


def _round(value: float) -> float:
    return round(float(value), 6)
