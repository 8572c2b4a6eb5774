"""Operations: health, traffic, latency percentiles, error ratio, fallback rate and availability over a chosen
window (one aggregate query of the store's request log, :meth:`tastebud.store.Store.request_log_summary`, with the
success rule of :mod:`tastebud.monitoring.kpis`), the timeline of model switches, decisions and retrains, and the
running experiments with their lift intervals (the API's analysis).

The health row and the window's figures head the page; below them only the open tab runs (``st.tabs(on_change=
"rerun")``): the first paint carries the traffic chart and the requests per version; the latency chart, the timeline
(which reads the request log) and the experiments (which ask the API) run when their tab is opened."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import polars as pl
import streamlit as st

from tastebud.monitoring.kpis import model_switches, request_frame
from tastebud.studio import charts, resources

#: Selectable windows: label -> (length, chart bucket in seconds).
WINDOWS: dict[str, tuple[timedelta, int]] = {
    "15 minutes": (timedelta(minutes=15), 60),
    "1 hour": (timedelta(hours=1), 120),
    "24 hours": (timedelta(days=1), 1800),
    "7 days": (timedelta(days=7), 3 * 3600),
    "30 days": (timedelta(days=30), 12 * 3600),
}
#: Most request-log records the timeline reads for one window.
MAX_RECORDS = 200_000
#: Seconds the experiments' listing and analyses are reused (two API calls per visit otherwise).
EXPERIMENTS_TTL = 10
#: Seconds a window's request-log summary and the API's health are reused (visits and reruns within it share them).
SUMMARY_TTL = 5
#: Availability objective: a window or minute below it breaches (as :func:`tastebud.monitoring.kpis.availability`).
OBJECTIVE = 0.999


def render() -> None:
    st.title("📈 Operations")
    srv, name = resources.served_name()
    if srv is not None:
        health_row(name)
    window = st.segmented_control("Window", list(WINDOWS), default="24 hours", key="ops_window") or "24 hours"
    levels = service_kpis(window)
    # One chart on the first paint: each Vega view adds about a quarter of a second of browser work to a page load.
    traffic, latency, timeline, experiments = st.tabs(
        ["Traffic", "Latency", "Timeline", "Experiments"], key="ops_tab", on_change="rerun"
    )
    if not experiments.open:
        resources.keep_widget_state("ops_experiment")  # the chosen experiment stays while another tab is open
    with traffic:
        if traffic.open and levels is not None:
            traffic_panel(levels)
    with latency:
        if latency.open and levels is not None:
            latency_panel(levels)
    with timeline:
        if timeline.open:
            switch_timeline(name, requests(window))
    with experiments:
        if experiments.open:
            experiment_panel()


@st.cache_data(ttl=SUMMARY_TTL, show_spinner=False)
def _health(url: str) -> dict[str, Any]:
    return resources.client().health()


def health_row(name: str) -> None:
    health = resources.attempt(lambda: _health(resources.api_url()), "read the API's health")
    if health is None:
        return
    model = health.get("model") or {}
    cols = st.columns(4)
    cols[0].metric("API status", str(health.get("status")))
    cols[1].metric("Serving", f"{model.get('name', name)} v{model.get('version', '-')}", model.get("alias") or None)
    cols[2].metric("Uptime", f"{float(health.get('uptime_s') or 0) / 60:.1f} min")
    cols[3].metric("Loaded at", (str(health.get("loaded_at"))[11:19] + " UTC") if health.get("loaded_at") else "-")
    if health.get("last_error"):
        st.warning(f"Last load error: {health['last_error']}")


def requests(window: str) -> pl.DataFrame | None:
    """The request log of the window as a KPI frame (``None`` with a note when there is no store)."""
    store = resources.store()
    if store is None:
        st.info("No store yet: the request log appears once the API has answered requests.")
        return None
    span, _ = WINDOWS[window]
    since = datetime.now(UTC) - span
    records = resources.attempt(
        lambda: store.query_request_logs(since=since, limit=MAX_RECORDS, newest_first=True), "read the request log"
    )
    return None if records is None else request_frame(records)


@st.cache_data(ttl=SUMMARY_TTL, show_spinner=False, max_entries=32)
def _summary(store_url: str, window: str) -> list[dict[str, Any]]:
    store = resources.store()
    if store is None:
        return []
    span, bucket_s = WINDOWS[window]
    end = datetime.now(UTC) + timedelta(seconds=1)
    return store.request_log_summary(since=end - span, until=end, bucket_s=bucket_s)


def summary(window: str) -> dict[str, dict[str, dict[str, Any]]] | None:
    """The window's request-log summary as ``{level: {key: row}}`` (cached :data:`SUMMARY_TTL` seconds per store
    and window), or ``None`` with a note or banner when there is no store or it cannot be read."""
    if resources.store() is None:
        st.info("No store yet: the request log appears once the API has answered requests.")
        return None
    rows = resources.attempt(lambda: _summary(resources.settings().store_url, window), "read the request log")
    if rows is None:
        return None
    out: dict[str, dict[str, dict[str, Any]]] = {"all": {}, "version": {}, "bucket": {}, "minute": {}}
    for row in rows:
        out.setdefault(row["level"], {})[row["key"]] = row
    return out


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def service_kpis(window: str) -> dict[str, dict[str, dict[str, Any]]] | None:
    """The window's figures (requests, latency percentiles, error ratio, fallback rate, availability) and the minutes
    below the objective; returns the summary's levels for the tabs (``None``, with a note, when there is nothing)."""
    levels = summary(window)
    if levels is None:
        return None
    overall = levels["all"].get("")
    if overall is None:
        st.info(f"No requests in the last {window}.")
        return None
    n, ok = overall["requests"], overall["successful"]
    ratio = _ratio(ok, n)
    fallback = _ratio(overall["fallbacks"], ok)
    cols = st.columns(7)
    cols[0].metric("Requests", f"{n:,}")
    cols[1].metric("p50", f"{overall['p50']:.1f} ms")
    cols[2].metric("p95", f"{overall['p95']:.1f} ms")
    cols[3].metric("p99", f"{overall['p99']:.1f} ms")
    cols[4].metric("Error ratio", f"{1 - ok / n:.2%}")
    cols[5].metric("Fallback rate", "-" if fallback is None else f"{fallback:.1%}")
    met = ratio is not None and ratio >= OBJECTIVE
    cols[6].metric(
        "Availability",
        "-" if ratio is None else f"{ratio:.2%}",
        None if ratio is None else ("meets " if met else "below ") + f"{OBJECTIVE:.1%}",
        delta_color="normal" if met else "inverse",
        delta_arrow="off",
    )
    breached = [m for m in levels["minute"].values() if m["successful"] / m["requests"] < OBJECTIVE]
    if breached:
        st.warning(f"{len(breached)} minute(s) below the {OBJECTIVE:.1%} objective.")
    return levels


def traffic_panel(levels: dict[str, dict[str, dict[str, Any]]]) -> None:
    """Requests per time bucket by outcome, and requests, error ratio and fallback rate per served version."""
    chart = st.empty()  # the chart's place comes before the table, but it is drawn after it: the table first
    # A static table: a few rows, drawn at once (an interactive grid costs the browser more than the figures).
    st.table(pd.DataFrame([
        {"model": key, "requests": v["requests"], "p95 ms": f"{v['p95']:.1f}",
         "error ratio": f"{1 - v['successful'] / v['requests']:.2%}",
         "fallback rate": "-" if not v["successful"] else f"{v['fallbacks'] / v['successful']:.1%}"}
        for key, v in sorted(levels["version"].items())
    ]), hide_index=True, width="stretch")  # fmt: skip
    chart.altair_chart(charts.traffic(buckets(levels["bucket"])[0]), width="stretch")


def latency_panel(levels: dict[str, dict[str, dict[str, Any]]]) -> None:
    """Latency percentiles per time bucket, and per served version."""
    chart = st.empty()
    st.table(pd.DataFrame([
        {"model": key, "requests": v["requests"], "p50 ms": f"{v['p50']:.1f}", "p95 ms": f"{v['p95']:.1f}",
         "p99 ms": f"{v['p99']:.1f}"}
        for key, v in sorted(levels["version"].items())
    ]), hide_index=True, width="stretch")  # fmt: skip
    chart.altair_chart(charts.latency(buckets(levels["bucket"])[1]), width="stretch")


def buckets(rows: dict[str, dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Requests per bucket by outcome (ok, fallback, error) and latency percentiles per bucket, oldest first, from
    the summary's ``bucket`` rows (keyed by the bucket's start in epoch seconds)."""
    traffic, latency = [], []
    for key in sorted(rows, key=int):
        row = rows[key]
        bucket = datetime.fromtimestamp(int(key), UTC).strftime("%m-%d %H:%M")
        counts = {"ok": row["successful"] - row["fallbacks"], "fallback": row["fallbacks"],
                  "error": row["requests"] - row["successful"]}  # fmt: skip
        for outcome, count in counts.items():
            traffic.append({"bucket": bucket, "outcome": outcome, "requests": int(count)})
        for p in ("p50", "p95", "p99"):
            latency.append({"bucket": bucket, "percentile": p, "ms": float(row[p])})
    return traffic, latency


def timeline_rows(name: str, frame: pl.DataFrame | None) -> list[dict[str, Any]]:
    """Decisions, retrains and switches seen in the request log, as ``time, kind, what`` rows (newest first)."""
    from tastebud.registry import read_decisions

    rows: list[dict[str, Any]] = []
    try:
        for d in read_decisions(resources.settings(), name):
            rows.append({"time": pd.Timestamp(d.time), "kind": "decision",
                         "what": f"{d.action} v{d.version} (was {d.previous}): {d.reason}"})  # fmt: skip
    except Exception as err:
        st.warning(f"Cannot read the decision log: {err}")
    store = resources.store()
    if store is not None:
        try:
            for r in store.retrain_history(name, limit=200):
                rows.append({"time": pd.Timestamp(r["started_at"]), "kind": "retrain",
                             "what": f"{r['trigger']} → {r['outcome']}" + (f" v{r['version']}" if r.get("version")
                                                                           else "")})  # fmt: skip
        except Exception as err:
            st.warning(f"Cannot read the retrain history: {err}")
    if frame is not None and frame.height:
        for v in model_switches(frame)["versions"]:
            rows.append({"time": pd.Timestamp(v["first_seen"]), "kind": "served", "what": f"now serving {v['model']}"})
    for row in rows:
        stamp = row["time"]
        row["time"] = stamp if stamp.tzinfo is None else stamp.tz_convert("UTC").tz_localize(None)  # UTC, naive
    return sorted(rows, key=lambda r: r["time"], reverse=True)


def switch_timeline(name: str, frame: pl.DataFrame | None) -> None:
    rows = timeline_rows(name, frame)
    if not rows:
        st.caption("No decisions, retrains or switches recorded yet.")
        return
    st.altair_chart(charts.timeline(rows), width="stretch")
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")


def lift_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Relative lifts with their classical and always-valid intervals, per metric of an analysis report."""
    rows = []
    for comparison in [report.get("primary"), *(report.get("secondary") or [])]:
        if not comparison or comparison.get("rel_lift") is None:
            continue
        for interval, key in (("classical", "rel_ci"), ("always-valid", "seq_rel_ci")):
            bounds = comparison.get(key) or [None, None]
            if None in bounds:
                continue
            rows.append({"metric": comparison["metric"], "interval": interval, "lift": comparison["rel_lift"],
                         "low": bounds[0], "high": bounds[1]})  # fmt: skip
    return rows


@st.cache_data(ttl=EXPERIMENTS_TTL, show_spinner=False)
def _experiments(url: str) -> dict[str, Any]:
    return resources.client().experiments()


@st.cache_data(ttl=EXPERIMENTS_TTL, show_spinner=False, max_entries=64)
def _analysis(url: str, name: str) -> dict[str, Any]:
    return resources.client().experiment(name)


def experiment_panel() -> None:
    listing = resources.attempt(lambda: _experiments(resources.api_url()), "list the experiments")
    if listing is None:
        return
    experiments = listing.get("experiments") or []
    if not experiments:
        st.caption("No experiments: `tastebud experiment create` defines one.")
        return
    st.dataframe(pd.DataFrame([
        {"name": e["name"], "kind": e["kind"], "status": e["status"], "started": e.get("started_at"),
         "variants": ", ".join(f"{v['name']}={v['ref']} ({v['weight']:g})" for v in e.get("variants") or [])}
        for e in experiments
    ]), hide_index=True, width="stretch")  # fmt: skip
    pick = st.selectbox("Experiment", [e["name"] for e in experiments], key="ops_experiment")
    analysis = resources.attempt(lambda: _analysis(resources.api_url(), pick), f"analyse experiment {pick!r}")
    if analysis is None:
        return
    decision = analysis.get("decision")
    st.markdown(f"**Decision: {decision or 'none yet'}** — {analysis.get('reason') or ''}")
    users = analysis.get("users") or {}
    if users:
        st.caption("Users per variant: " + ", ".join(f"{k} {v:,}" for k, v in users.items()))
    rows = lift_rows(analysis.get("report") or {})
    if rows:
        st.altair_chart(charts.lift_intervals(rows), width="stretch")
    else:
        st.caption("No lift to show yet (too few users with outcomes).")


if __name__ == "__main__":
    render()
