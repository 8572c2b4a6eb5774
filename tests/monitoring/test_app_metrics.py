"""The app's /metrics under traffic, the request log of failures, and the deploy/ files against what is exported."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tastebud.config import Settings
from tastebud.data.dataset import Dataset
from tastebud.monitoring.drift import DriftReport, SignalDrift, Thresholds, write_gauges
from tastebud.monitoring.metrics import DRIFT_TEXTFILE, LATENCY_BUCKETS, RETRAIN_TEXTFILE
from tastebud.monitoring.retrain import write_retrain_gauges
from tastebud.store import create_store

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "tastebud.json"


def scrape(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    out = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def drive(client: TestClient, train: Dataset) -> dict[str, int]:
    """One request of each kind; returns the status code of each."""
    user, item = str(train.users.ids[0]), str(train.items.ids[0])
    calls = {
        "recommend": client.get(f"/recommend/{user}?k=5"),
        "recommend_unknown": client.get("/recommend/nobody-at-all?k=5"),
        "similar": client.get(f"/similar/{item}?k=5"),
        "popular": client.get("/popular?k=5"),
        "bad_k": client.get(f"/recommend/{user}?k=0"),
        "unknown_item": client.get("/similar/no-such-item?k=5"),
    }
    return {name: r.status_code for name, r in calls.items()}


def test_traffic_moves_counters_and_histograms(client: TestClient, train: Dataset) -> None:
    before = scrape(client)
    assert value(before, "tastebud_serving_model_loaded_bool") == 1
    started = time.perf_counter()
    status = drive(client, train)
    elapsed = time.perf_counter() - started  # the client's wall time around all six requests
    assert status["recommend"] == status["similar"] == status["popular"] == 200
    assert status["bad_k"] == 422 and status["unknown_item"] >= 400
    after = scrape(client)
    route = "/recommend/{user_id}"
    ok = {"route": route, "method": "GET", "status": "200"}
    assert (
        value(after, "tastebud_serving_requests_total", **ok) - value(before, "tastebud_serving_requests_total", **ok)
        == 2
    )
    bad = {**ok, "status": "422"}
    assert value(after, "tastebud_serving_requests_total", **bad) == 1
    # The histogram saw the same two requests, in seconds: each took part of the client's wall time around them,
    # so the sum lies in (0, elapsed] and every bucket at or above `elapsed` holds both (a histogram fed
    # milliseconds, or one that dropped or double-counted an observation, fails here).
    assert value(after, "tastebud_serving_request_seconds_count", **ok) == 2
    assert 0 < value(after, "tastebud_serving_request_seconds_sum", **ok) <= elapsed
    buckets = [value(after, "tastebud_serving_request_seconds_bucket", **ok, le=str(b)) for b in LATENCY_BUCKETS]
    buckets.append(value(after, "tastebud_serving_request_seconds_bucket", **ok, le="+Inf"))
    assert buckets == sorted(buckets) and buckets[-1] == 2  # cumulative, ending at the count
    assert all(n == 2 for b, n in zip(LATENCY_BUCKETS, buckets, strict=False) if b >= elapsed), (elapsed, buckets)
    fallback = {"endpoint": "recommend", "model_version": "1", "fallback_reason": "unknown_user"}
    assert value(after, "tastebud_serving_recommendations_total", **fallback) == 1
    personal = {**fallback, "fallback_reason": "none"}
    assert value(after, "tastebud_serving_recommendations_total", **personal) == 1
    assert value(after, "tastebud_serving_recommendations_total", endpoint="popular", model_version="1",
                 fallback_reason="none") == 1  # fmt: skip
    # the personal list was scored once and cached; asking again is a hit (the unknown user never enters the cache)
    assert value(after, "tastebud_serving_result_cache_total", outcome="miss") == 1
    assert value(after, "tastebud_serving_result_cache_total", outcome="hit") == 0
    user = str(train.users.ids[0])
    first, again = client.get(f"/recommend/{user}?k=5"), client.get(f"/recommend/{user}?k=5")
    assert first.json()["recommendations"] == again.json()["recommendations"]
    assert first.json()["provenance"]["request_id"] != again.json()["provenance"]["request_id"]
    cached = scrape(client)
    assert value(cached, "tastebud_serving_result_cache_total", outcome="hit") == 2
    assert value(cached, "tastebud_serving_result_cache_total", outcome="miss") == 1
    info = [k for k in after if k[0] == "tastebud_serving_model_info" and after[k] == 1]
    assert len(info) == 1 and ("version", "1") in info[0][1]
    assert value(after, "tastebud_serving_model_switches_total", trigger="startup", outcome="success") == 1


def test_failed_requests_are_logged_with_their_status(settings: Settings, bundle: Path, train: Dataset) -> None:
    from tastebud.serving import create_app

    from .conftest import OneVersionRegistry, wait_ready

    with TestClient(create_app(settings, registry=OneVersionRegistry(bundle))) as client:
        wait_ready(client)
        status = drive(client, train)
    # Leaving the client drained the background writer into the store.
    with create_store(settings) as store:
        records = store.query_request_logs()
    by_status: dict[int, list[dict]] = {}
    for r in records:
        by_status.setdefault(r["status_code"], []).append(r)
    assert len(records) == len(status)
    assert sorted(r["status_code"] for r in records) == sorted(status.values())
    (bad,) = by_status[422]
    assert bad["endpoint"] == "recommend" and bad["user_id"] == str(train.users.ids[0])
    assert bad["provenance"]["error"]["code"] == "invalid_request" and bad["model_version"] == 1
    failed_similar = by_status[status["unknown_item"]]
    assert failed_similar[0]["endpoint"] == "similar" and failed_similar[0]["item_ids"] == []
    assert all(not r["provenance"].get("error") for r in by_status[200])


def promql_metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression reads (recording rules, with a colon, are not metrics)."""
    names = set(re.findall(r"(?<![\w:])(tastebud_[a-z0-9_]+)", expr))
    return {re.sub(r"_(bucket|count|sum)$", "", n) if n.endswith(("_bucket", "_count", "_sum")) else n for n in names}


def queried_names() -> dict[str, set[str]]:
    rules = yaml.safe_load(ALERTS.read_text())
    out: dict[str, set[str]] = {}
    for group in rules["groups"]:
        for rule in group["rules"]:
            out[rule.get("alert") or rule["record"]] = promql_metric_names(rule["expr"])
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        out[f"panel {panel['title']}"] = set().union(*(promql_metric_names(t["expr"]) for t in panel["targets"]))
    for note in dashboard["annotations"]["list"]:
        out[f"annotation {note['name']}"] = promql_metric_names(note["expr"])
    return out


def exported_names(text: str) -> set[str]:
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(s.name for s in family.samples)
    # The text format announces a counter's family without ``_total``; its samples keep it.
    return names | {n + "_total" for n in names}


def test_every_queried_metric_is_exported(client: TestClient, train: Dataset, settings: Settings) -> None:
    drive(client, train)
    signal = SignalDrift("rating", ["1", "2"], [0.5, 0.5], [0.4, 0.6], 10, 10, 0.02, 0.01, "ok")  # type: ignore[arg-type]
    write_gauges(DriftReport([signal], Thresholds()), settings.home / DRIFT_TEXTFILE)
    retrain = SimpleNamespace(outcome="refused", started_at=None, duration_s=12.0, n_interactions=900,
                              n_new_events=40, gate={"passed": False})  # fmt: skip
    write_retrain_gauges(retrain, settings.home / RETRAIN_TEXTFILE, schedule_s=3600)
    text = client.get("/metrics").text
    exported = exported_names(text)
    queried = queried_names()
    assert sum(len(v) for v in queried.values()) > 20  # the parser found the queries
    missing = {where: sorted(names - exported) for where, names in queried.items() if names - exported}
    assert not missing, f"queried but not exported: {missing}"
    # Every rule and panel reads a metric or a recording rule defined in alerts.yml, and that rule exists.
    records = {r["record"] for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"] if "record" in r}
    texts = {**{r.get("alert") or r["record"]: r["expr"] for g in yaml.safe_load(ALERTS.read_text())["groups"]
                for r in g["rules"]},
             **{f"panel {p['title']}": " ".join(t["expr"] for t in p["targets"])
                for p in json.loads(DASHBOARD.read_text())["panels"]}}  # fmt: skip
    for where, expr in texts.items():
        used = set(re.findall(r"tastebud:[a-z0-9_:]+", expr))
        assert used <= records, f"{where} reads undefined recording rules {used - records}"
        assert queried[where] or used, f"{where} reads no metric"
    # The drift and retrain files were appended to the scrape.
    assert 'tastebud_monitor_drift_psi_ratio{signal="rating"} 0.02' in text
    assert 'tastebud_retrain_last_outcome{outcome="refused"} 1.0' in text


def test_queried_names_parser_can_fail() -> None:
    assert promql_metric_names('rate(tastebud_x_seconds_bucket{a="b"}[5m]) / tastebud:rec:rule') == {
        "tastebud_x_seconds"
    }
    assert "tastebud_not_exported_total" not in exported_names("# TYPE tastebud_a_total counter\ntastebud_a_total 1\n")


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed (scripts/ensure-promtool.sh)")
def test_promtool_accepts_rules_and_config() -> None:
    rules = subprocess.run(["promtool", "check", "rules", str(ALERTS)], capture_output=True, text=True)
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert "SUCCESS" in rules.stdout
    config = subprocess.run(
        ["promtool", "check", "config", "prometheus.yml"], cwd=ALERTS.parent, capture_output=True, text=True
    )
    assert config.returncode == 0, config.stdout + config.stderr
