"""Models: registered versions with metrics and aliases, offline comparison with 95% intervals, the decision log,
drift reports, and promote / roll back through the API's admin switch (the server checks the admin token)."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd
import streamlit as st

from tastebud.studio import charts, resources
from tastebud.studio.client import ApiError

#: Ranking metrics of the offline comparison (the evaluation's names; the manifest adds ``_at_<k>``).
METRICS = ("ndcg", "recall", "precision", "map", "mrr", "hit_rate")


def render() -> None:
    st.title("🧪 Models")
    srv, name = resources.served_name()
    versions = resources.attempt(lambda: resources.registry().list_versions(name), "read the registry")
    if versions is None:
        st.stop()
    assert versions is not None
    if not versions:
        st.warning(f"No version of **{name}** is registered yet: `tastebud train` registers one.")
        return
    st.caption(f"Model **{name}** · {len(versions)} version(s)"
               + (f" · the API serves version {srv.version}" if srv is not None else ""))  # fmt: skip
    overview, decisions, drift, admin = st.tabs(["Versions", "Decisions", "Drift", "Promote / roll back"])
    with overview:
        version_table(versions, srv)
        comparison(versions)
    with decisions:
        decision_log(name)
    with drift:
        drift_report()
    with admin:
        switch_panel(versions, srv, name)


def version_table(versions: list[Any], srv: resources.Served | None) -> None:
    rows = []
    for mv in sorted(versions, key=lambda v: -v.version):
        row: dict[str, Any] = {
            "version": mv.version,
            "aliases": ", ".join(mv.aliases),
            "served": "●" if srv is not None and srv.version == mv.version else "",
            "family": mv.family,
            "created": mv.created_at,
            "snapshot": mv.snapshot_id,
        }
        row.update({key: mv.metrics.get(key) for key in ("ndcg_at_10", "recall_at_10", "coverage", "novelty")})
        rows.append(row)
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")


def comparison_rows(versions: list[Any], metric: str) -> list[dict[str, Any]]:
    """Per version: the mean of ``metric`` and its 95% bootstrap interval (the interval only where the version's
    evaluation artifact is readable; else the manifest's value alone)."""
    rows = []
    for mv in sorted(versions, key=lambda v: v.version):
        evaluation = resources.evaluation_of(mv.source)
        label = ", ".join(mv.aliases) or "-"
        if evaluation is not None and metric in (evaluation.get("means") or {}):
            low, high = (evaluation.get("ci") or {}).get(metric, (None, None))
            mean = evaluation["means"][metric]
        else:
            mean = next((v for k, v in mv.metrics.items() if k.startswith(f"{metric}_at_")), None)
            low = high = None
        if mean is not None:
            rows.append({"version": f"v{mv.version} {mv.family}", "label": label, "mean": mean,
                         "low": mean if low is None else low, "high": mean if high is None else high})  # fmt: skip
    return rows


def comparison(versions: list[Any]) -> None:
    st.subheader("Offline comparison")
    metric = st.selectbox("Metric", METRICS, key="models_metric", format_func=lambda m: f"{m}@10")
    rows = comparison_rows(versions, metric)
    if not rows:
        st.caption(f"No version recorded {metric}.")
        return
    st.altair_chart(charts.metric_intervals(rows, f"{metric}@10"), width="stretch")
    st.caption("Means over validation users with 95% bootstrap intervals (from each version's evaluation run; "
               "a point without whiskers has no recorded interval).")  # fmt: skip


def decision_log(name: str) -> None:
    from tastebud.registry import read_decisions

    decisions = resources.attempt(lambda: read_decisions(resources.settings(), name), "read the decision log")
    if not decisions:
        st.caption("No decisions recorded yet (promotions, refusals, rollbacks).")
        return
    rows = [
        {"time": d.time, "action": d.action, "version": d.version, "previous": d.previous, "actor": d.actor,
         "trigger": d.trigger or "", "reason": d.reason}
        for d in reversed(decisions)
    ]  # fmt: skip
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")


def drift_report() -> None:
    reports = resources.drift_reports()
    if not reports:
        st.caption("No drift report yet: `tastebud monitor drift --reference <model>@champion` writes one.")
        return
    path = st.selectbox("Report", reports, format_func=lambda p: p.parent.name, key="drift_report")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        st.error(f"Cannot read {path}: {err}")
        return
    level = report.get("level", "?")
    show = {"ok": st.success, "warn": st.warning, "alert": st.error}.get(level, st.info)
    show(f"Overall drift level: **{level}**")
    signals = report.get("signals") or []
    if signals:
        st.dataframe(pd.DataFrame([{k: s.get(k) for k in ("signal", "psi", "kl", "level", "n_reference", "n_current")}
                                   for s in signals]), hide_index=True, width="stretch")  # fmt: skip
        pick = st.selectbox("Signal", [s["signal"] for s in signals], key="drift_signal")
        signal = next(s for s in signals if s["signal"] == pick)
        st.altair_chart(charts.drift_shares(signal), width="stretch")
    for skipped, reason in (report.get("skipped") or {}).items():
        st.caption(f"{skipped}: skipped ({reason})")


def rollback_target(history: list[int], served: int | None, champion: int | None) -> int | None:
    """Where "roll back" goes: the champion when something else is served, else the champion before it."""
    if champion is not None and served is not None and served != champion:
        return champion
    earlier = [v for v in history[:-1] if v != served]
    return earlier[-1] if earlier else None


def switch_panel(versions: list[Any], srv: resources.Served | None, name: str) -> None:
    from tastebud.registry.decisions import champion_history, read_decisions

    st.caption(
        "Switches what the API serves (`POST /admin/models/switch`); the server checks the admin token. "
        "Moving the registry's champion alias through the promotion gate is `tastebud models promote`."
    )
    if "switch_message" in st.session_state:
        st.success(st.session_state.pop("switch_message"))
    token = st.text_input("Admin token", type="password", key="admin_token")
    numbers = sorted((mv.version for mv in versions), reverse=True)
    version = st.selectbox("Version", numbers, key="promote_version", format_func=lambda v: f"version {v}")
    champion = next((mv.version for mv in versions if "champion" in mv.aliases), None)
    try:
        history = champion_history(read_decisions(resources.settings(), name))
    except Exception:
        history = []
    target = rollback_target(history, srv.version if srv else None, champion)
    promote, rollback = st.columns(2)
    if promote.button("⬆ Promote (serve it now)", key="promote", type="primary"):
        switch(token, version)
    if rollback.button(f"↩ Roll back to version {target}" if target else "↩ Roll back", key="rollback",
                       disabled=target is None):  # fmt: skip
        switch(token, target)
    if target is None:
        st.caption("Nothing to roll back to: no earlier champion in the decision log.")


def switch(token: str, version: int | None) -> None:
    if not token:
        st.warning("Enter the admin token first: the API refuses switches without it.")
        return
    try:
        answer = resources.client().switch(token, version=version)
    except ApiError as err:
        if err.refused:
            st.error(f"**Refused by the API** ({err.status}): the admin token is wrong or lacks the admin scope. "
                     "Nothing was switched.", icon="🔒")  # fmt: skip
        elif err.status == 409:
            st.error(f"**The API refused the bundle** of version {version}; it keeps serving what it served. {err}")
        else:
            resources.api_banner(err, f"switch to version {version}")
        return
    before = (answer.get("previous") or {}).get("version")
    st.session_state["switch_message"] = f"The API now serves version {answer['serving']['version']} (was {before})."
    resources.refresh_served()
    st.rerun()  # every part of the page shows the new served version


if __name__ == "__main__":
    render()
