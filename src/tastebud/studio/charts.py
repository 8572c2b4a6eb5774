"""The studio's Altair charts: each takes plain rows (dicts) and returns a chart for ``st.altair_chart``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import altair as alt
import pandas as pd


def _frame(rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame(list(rows))


def bars(rows: Sequence[dict[str, Any]], x: str, y: str, *, x_title: str | None = None, y_title: str | None = None,
         color: str | None = None) -> alt.Chart:  # fmt: skip
    """Horizontal bars of ``x`` per ``y`` (label), longest first."""
    enc: dict[str, Any] = {
        "x": alt.X(f"{x}:Q", title=x_title or x),
        "y": alt.Y(f"{y}:N", sort="-x", title=y_title or y),
        "tooltip": list(rows[0].keys()) if rows else [],
    }
    if color:
        enc["color"] = alt.Color(f"{color}:N")
    return alt.Chart(_frame(rows)).mark_bar().encode(**enc)


def metric_intervals(rows: Sequence[dict[str, Any]], metric: str) -> alt.LayerChart | alt.FacetChart:
    """Each version's mean of ``metric`` with its 95% interval (rows: ``version, mean, low, high``)."""
    data = _frame(rows)
    base = alt.Chart(data).encode(x=alt.X("version:N", title="version", sort=None, axis=alt.Axis(labelAngle=0)))
    points = base.mark_point(filled=True, size=90).encode(
        y=alt.Y("mean:Q", title=metric, scale=alt.Scale(zero=False)),
        color=alt.Color("label:N", title="aliases"),
        tooltip=["version", "label", "mean", "low", "high"],
    )
    whiskers = base.mark_errorbar(ticks=alt.MarkConfig(size=14), thickness=2).encode(
        y=alt.Y("low:Q", title=metric), y2="high:Q"
    )
    return alt.layer(whiskers, points).properties(height=320)


def lift_intervals(rows: Sequence[dict[str, Any]]) -> alt.LayerChart | alt.FacetChart:
    """Relative lifts with classical and always-valid intervals (rows: ``metric, interval, lift, low, high``)."""
    data = _frame(rows)
    base = alt.Chart(data).encode(y=alt.Y("metric:N", title=None), yOffset="interval:N")
    rules = base.mark_rule(strokeWidth=3).encode(
        x=alt.X("low:Q", title="relative lift", axis=alt.Axis(format="%")), x2="high:Q",
        color=alt.Color("interval:N", title="interval"),
        tooltip=["metric", "interval", alt.Tooltip("lift:Q", format=".2%"), alt.Tooltip("low:Q", format=".2%"),
                 alt.Tooltip("high:Q", format=".2%")],
    )  # fmt: skip
    points = base.mark_point(filled=True, size=70, color="black").encode(x="lift:Q")
    zero = alt.Chart(pd.DataFrame({"x": [0.0]})).mark_rule(strokeDash=[4, 4], color="gray").encode(x="x:Q")
    return alt.layer(rules, points, zero)


def drift_shares(signal: dict[str, Any]) -> alt.Chart:
    """A drift signal's reference and recent shares per bin, side by side."""
    rows = [
        {"bin": b, "distribution": which, "share": float(v)}
        for which in ("reference", "current")
        for b, v in zip(signal["bins"], signal[which], strict=True)
    ]
    return (
        alt.Chart(_frame(rows))
        .mark_bar()
        .encode(
            x=alt.X("bin:N", sort=list(signal["bins"]), title=signal["signal"]),
            xOffset="distribution:N",
            y=alt.Y("share:Q", axis=alt.Axis(format="%")),
            color=alt.Color("distribution:N"),
            tooltip=["bin", "distribution", alt.Tooltip("share:Q", format=".2%")],
        )
    )


def traffic(rows: Sequence[dict[str, Any]]) -> alt.Chart:
    """Requests per time bucket, stacked by outcome (rows: ``bucket, outcome, requests``; buckets in order)."""
    return (
        alt.Chart(_frame(rows))
        .mark_bar()
        .encode(
            x=alt.X("bucket:O", title="time (UTC)", sort=None, axis=alt.Axis(labelAngle=-45, labelOverlap=True)),
            y=alt.Y("requests:Q", stack=True),
            color=alt.Color("outcome:N", scale=alt.Scale(domain=["ok", "fallback", "error"],
                                                          range=["#4c78a8", "#f2cf5b", "#e45756"])),
            tooltip=["bucket", "outcome", "requests"],
        )
    )  # fmt: skip


def latency(rows: Sequence[dict[str, Any]]) -> alt.Chart:
    """Latency percentiles per time bucket (rows: ``bucket, percentile, ms``; buckets in order)."""
    return (
        alt.Chart(_frame(rows))
        .mark_line(point=True)
        .encode(
            x=alt.X("bucket:O", title="time (UTC)", sort=None, axis=alt.Axis(labelAngle=-45, labelOverlap=True)),
            y=alt.Y("ms:Q", title="latency (ms)"),
            color=alt.Color("percentile:N", sort=["p50", "p95", "p99"]),
            tooltip=["bucket", "percentile", alt.Tooltip("ms:Q", format=".2f")],
        )
    )


def timeline(rows: Sequence[dict[str, Any]]) -> alt.Chart:
    """Model switches, decisions and retrains on one time axis (rows: ``time, kind, what``)."""
    return (
        alt.Chart(_frame(rows))
        .mark_point(filled=True, size=120)
        .encode(
            x=alt.X("time:T", title="time (UTC)"),
            y=alt.Y("kind:N", title=None),
            color=alt.Color("kind:N", legend=None),
            shape=alt.Shape("kind:N", legend=None),
            tooltip=["time:T", "kind", "what"],
        )
    )


def overlap_heatmap(rows: Sequence[dict[str, Any]]) -> alt.LayerChart | alt.FacetChart:
    """Pairwise Jaccard overlap of lists (rows from :func:`tastebud.studio.ranking.overlap_matrix`)."""
    base = alt.Chart(_frame(rows)).encode(x=alt.X("a:N", title=None), y=alt.Y("b:N", title=None))
    cells = base.mark_rect().encode(
        color=alt.Color("jaccard:Q", scale=alt.Scale(domain=[0, 1], scheme="blues")),
        tooltip=["a", "b", "jaccard", "shared"],
    )
    text = base.mark_text().encode(text=alt.Text("jaccard:Q", format=".2f"))
    return alt.layer(cells, text)


__all__ = [
    "bars",
    "drift_shares",
    "latency",
    "lift_intervals",
    "metric_intervals",
    "overlap_heatmap",
    "timeline",
    "traffic",
]
