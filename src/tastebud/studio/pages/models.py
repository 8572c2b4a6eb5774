"""Models: registered versions with metrics and aliases, offline comparison with 95% intervals, the decision log,
drift reports, and promote / roll back through the API's admin routes: the promotion gate, the registry's champion
alias and the decision log, as ``tastebud models promote|rollback``, then the API serves the new champion (the
server checks the admin token). Each tab runs only when it is open (``st.tabs(on_change="rerun")``)."""

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
    versions = resources.attempt(lambda: resources.versions(name), "read the registry")
    if versions is None:
        st.stop()
    assert versions is not None
    if not versions:
        st.warning(f"No version of **{name}** is registered yet: `tastebud train` registers one.")
        return
    st.caption(f"Model **{name}** · {len(versions)} version(s)"
               + (f" · the API serves version {srv.version}" if srv is not None else ""))  # fmt: skip
    # Only the open tab runs: the first paint is the versions and their comparison.
    overview, decisions, drift, admin = st.tabs(
        ["Versions", "Decisions", "Drift", "Promote / roll back"], key="models_tab", on_change="rerun"
    )
    # The other tabs' choices stay while one is open (never the admin token: it goes when its tab is left).
    for tab, keys in ((overview, ("models_metric",)), (drift, ("drift_report", "drift_signal")),
                      (admin, ("promote_version", "promote_force"))):  # fmt: skip
        if not tab.open:
            resources.keep_widget_state(*keys)
    with overview:
        if overview.open:
            version_table(versions, srv)
            comparison(versions)
    with decisions:
        if decisions.open:
            decision_log(name)
    with drift:
        if drift.open:
            drift_report()
    with admin:
        if admin.open:
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
        row.update(
            {key: _rounded(mv.metrics.get(key)) for key in ("ndcg_at_10", "recall_at_10", "coverage", "novelty")}
        )
        rows.append(row)
    # A static table: a few rows, drawn at once (an interactive grid costs the browser more than the rest of the tab).
    st.table(pd.DataFrame(rows), hide_index=True, width="stretch")


def _rounded(value: Any, digits: int = 4) -> Any:
    return round(value, digits) if isinstance(value, float) else value


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


def switch_panel(versions: list[Any], srv: resources.Served | None, name: str) -> None:
    from tastebud.pipeline.promote import previous_champion
    from tastebud.registry.decisions import champion_history, read_decisions

    st.caption(
        "Promotion runs the gate against the champion and moves the registry's champion alias when it passes "
        "(`POST /admin/models/promote`, as `tastebud models promote`); roll back returns the alias to the previous "
        "champion (`POST /admin/models/rollback`). Each decision is logged (actor `studio`) and the API then serves "
        "the new champion. The server checks the admin token."
    )
    show_outcome()
    token = st.text_input("Admin token", type="password", key="admin_token")
    numbers = sorted((mv.version for mv in versions), reverse=True)
    version = st.selectbox("Version", numbers, key="promote_version", format_func=lambda v: f"version {v}")
    force = st.checkbox("Force past the gate (recorded as a forced promotion)", key="promote_force")
    champion = next((mv.version for mv in versions if "champion" in mv.aliases), None)
    try:
        history = champion_history(read_decisions(resources.settings(), name))
    except Exception:
        history = []
    target = previous_champion(history, champion)
    promote, rollback = st.columns(2)
    if promote.button("⬆ Promote to champion", key="promote", type="primary"):
        admin_call(token, "promote", version, force=force)
    if rollback.button(f"↩ Roll back to version {target}" if target else "↩ Roll back", key="rollback",
                       disabled=target is None):  # fmt: skip
        admin_call(token, "rollback", target)
    if target is None:
        st.caption("Nothing to roll back to: no earlier champion in the decision log.")


def show_outcome() -> None:
    """The outcome of the last promotion or rollback (kept across the rerun that refreshes the page)."""
    outcome = st.session_state.pop("promote_outcome", None)
    if not outcome:
        return
    kind, text, reasons = outcome
    show = {"success": st.success, "warning": st.warning}.get(kind, st.error)
    show(text + "".join(f"\n- {reason}" for reason in reasons))


def outcome_text(action: str, answer: dict[str, Any]) -> tuple[str, str, list[str]]:
    """(kind, text, reasons) of a 2xx answer of the promote or rollback route."""
    decision = answer.get("decision") or {}
    now = (answer.get("serving") or {}).get("version")
    before = (answer.get("previous") or {}).get("version")
    served = f"the API now serves version {now} (was {before})."
    if action == "rollback":
        text = (
            f"**Rolled back**: champion is version {decision.get('version')} again (was {decision.get('previous')}); "
        )
        return "success", text + served, []
    reasons = [str(r) for r in answer.get("reasons") or []]
    if decision.get("action") == "forced":
        return "warning", f"**Forced** version {decision.get('version')} to champion past the gate; " + served, reasons
    return "success", f"**Promoted** version {decision.get('version')} to champion (gate passed); " + served, reasons


def admin_call(token: str, action: str, version: int | None, *, force: bool = False) -> None:
    """Promote ``version`` or roll back (to ``version``, the expected previous champion) through the API."""
    if not token:
        st.warning("Enter the admin token first: the API refuses promotions and rollbacks without it.")
        return
    api = resources.client()
    try:
        with st.spinner("Running the promotion gate…" if action == "promote" else "Rolling back…"):
            if action == "promote":
                assert version is not None
                answer = api.promote(token, version, force=force)
            else:
                answer = api.rollback(token, version)
    except ApiError as err:
        refused(err, action, version)
        return
    st.session_state["promote_outcome"] = outcome_text(action, answer)
    resources.refresh_served()
    st.rerun()  # every part of the page shows the new champion, served version and decision


def refused(err: ApiError, action: str, version: int | None) -> None:
    body = err.body
    if err.refused:
        st.error(f"**Refused by the API** ({err.status}): the admin token is wrong or lacks the admin scope. "
                 "Nothing was changed.", icon="🔒")  # fmt: skip
    elif err.code == "gate_refused":
        previous = (body.get("decision") or {}).get("previous")
        reasons = [str(r) for r in body.get("reasons") or []]
        text = f"**The gate refused version {version}**: champion stays version {previous} (decision logged)."
        st.session_state["promote_outcome"] = ("error", text, reasons)
        st.rerun()  # the decision log shows the refusal
    elif err.code == "bundle_refused":
        moved = (body.get("decision") or {}).get("version")
        st.error(f"**The API refused the bundle** of version {moved}: the champion alias moved, the API keeps "
                 f"serving what it served. {err}")  # fmt: skip
    elif err.status == 409:
        st.warning(f"**Nothing to do**: {body.get('message') or err}")
    else:
        resources.api_banner(err, f"{action} version {version}" if version is not None else action)


if __name__ == "__main__":
    render()
