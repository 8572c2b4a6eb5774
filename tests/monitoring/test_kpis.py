"""KPIs, availability (what counts as success), model switches, and replay evaluation on hand-made request logs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl
import pytest

from tastebud.errors import ParameterError
from tastebud.monitoring.drift import events_frame
from tastebud.monitoring.kpis import availability, compute_kpis, model_switches, request_frame
from tastebud.monitoring.replay import replay_evaluate

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def rec(i: int, at: datetime, **kw: Any) -> dict[str, Any]:
    base = {
        "request_id": f"r{i}", "timestamp": at, "endpoint": "recommend", "user_id": "u1", "model_name": "ml",
        "model_version": 1, "variant": None, "latency_ms": float(i + 1), "status_code": 200, "is_fallback": False,
        "item_ids": ["a", "b"], "scores": [0.9, 0.5], "provenance": {"request_id": f"r{i}"},
    }  # fmt: skip
    return {**base, **kw}


def test_success_needs_a_correct_response_not_just_a_2xx() -> None:
    records = [
        rec(0, T0),
        rec(1, T0, item_ids=[], scores=[]),  # an empty list (filters matched nothing) is correct
        rec(2, T0, status_code=503, item_ids=[], scores=[], provenance={"error": {"code": "no_model"}}),
        rec(3, T0, provenance={"error": {"code": "internal_error"}}),  # 200 on an error body
        rec(4, T0, scores=[0.9, None]),  # a NaN score stored as null
        rec(5, T0, item_ids=["a"], scores=[0.9, 0.5]),  # malformed list
        rec(6, T0, status_code=422, item_ids=[], scores=[]),
    ]
    a = availability(request_frame(records), T0, T0 + timedelta(minutes=1), objective=0.99)
    assert (a.total, a.successful) == (7, 2)
    assert a.ratio == pytest.approx(2 / 7)
    assert [m["minute"] for m in a.breached_minutes] == [T0.isoformat()]


def test_availability_window_and_breached_minutes() -> None:
    start = T0 - timedelta(hours=72)
    records = [rec(i, start + timedelta(minutes=i)) for i in range(300)]
    records += [rec(1000, start + timedelta(minutes=10, seconds=30), status_code=500, item_ids=[], scores=[])]
    records += [rec(2000, T0 + timedelta(hours=145), status_code=500)]  # outside the window
    frame = request_frame(records)
    a = availability(frame, start, T0 + timedelta(hours=144), objective=0.999)
    assert a.total == 301 and a.successful == 300
    assert [m["minute"] for m in a.breached_minutes] == [(start + timedelta(minutes=10)).isoformat()]
    assert a.to_dict()["met"] is False
    with pytest.raises(ParameterError):
        availability(frame, T0, T0)


def test_kpis_per_model_version() -> None:
    records = [rec(i, T0 + timedelta(seconds=i), model_version=1 + (i >= 50), is_fallback=i % 10 == 0,
                   item_ids=[f"i{i % 7}", "x"]) for i in range(100)]  # fmt: skip
    records.append(rec(500, T0, status_code=500, item_ids=[], scores=[]))
    kpis = compute_kpis(request_frame(records), catalog_size=16)
    overall = kpis["overall"]
    assert overall["requests"] == 101 and overall["server_errors"] == 1
    assert overall["error_ratio"] == pytest.approx(1 / 101, abs=1e-6)
    assert overall["fallback_rate"] == pytest.approx(0.1)
    assert overall["items_served"] == 8 and overall["catalog_coverage"] == pytest.approx(0.5)
    assert overall["latency_ms"]["p50"] < overall["latency_ms"]["p95"] < overall["latency_ms"]["p99"]
    assert set(kpis["by_model_version"]) == {"ml:1", "ml:2"}
    assert kpis["by_model_version"]["ml:2"]["requests"] == 50


def test_model_switches_best_window() -> None:
    versions = [(0, 1), (1, 2), (2, 3), (20, 4), (21, 5), (22, 6), (23, 7)]  # (day, version)
    records = [rec(i, T0 + timedelta(days=d), model_version=v) for i, (d, v) in enumerate(versions)]
    records.append(rec(99, T0 + timedelta(days=22, hours=1), model_version=6, status_code=500))  # failures ignored
    out = model_switches(request_frame(records), window=timedelta(days=7))
    assert out["switches"] == 6
    assert out["best_window_switches"] == 4  # days 20..23 hold versions 4, 5, 6, 7
    assert out["best_window_start"] == (T0 + timedelta(days=20)).isoformat()


def test_replay_hits_within_the_horizon_per_version_and_variant() -> None:
    requests = request_frame([
        rec(0, T0, user_id="u1", item_ids=["a", "b"], variant="A"),
        rec(1, T0, user_id="u2", item_ids=["c", "d"], model_version=2, variant="B"),
        rec(2, T0, user_id="u3", item_ids=["e", "f"], model_version=2, variant="B"),
        rec(3, T0, user_id="u4", item_ids=["g", "h"], status_code=500),  # not a list that was shown
    ])  # fmt: skip
    events = events_frame([
        {"user_id": "u1", "item_id": "a", "timestamp": T0 + timedelta(hours=1)},  # hit
        {"user_id": "u1", "item_id": "b", "timestamp": T0 - timedelta(hours=1)},  # before: no hit
        {"user_id": "u2", "item_id": "c", "timestamp": T0 + timedelta(hours=30)},  # after the horizon
        {"user_id": "u2", "item_id": "z", "timestamp": T0 + timedelta(hours=2)},  # active, no hit
        {"user_id": "u4", "item_id": "g", "timestamp": T0 + timedelta(hours=1)},
    ])  # fmt: skip
    out = replay_evaluate(requests, events, horizon=timedelta(hours=24))
    assert out["overall"]["lists"] == 3 and out["overall"]["lists_followed"] == 2
    assert out["overall"]["hit_rate"] == pytest.approx(1 / 3, abs=1e-6)
    assert out["overall"]["precision"] == pytest.approx(0.5 / 3, abs=1e-6)
    assert out["overall"]["hit_rate_active"] == pytest.approx(0.5)
    by_version = {r["model_version"]: r for r in out["by_model_version"]}
    assert by_version[1]["hit_rate"] == 1.0 and by_version[2]["hit_rate"] == 0.0
    by_variant = {r["variant"]: r for r in out["by_variant"]}
    assert by_variant["A"]["precision"] == 0.5 and by_variant["B"]["lists"] == 2
    longer = replay_evaluate(requests, events, horizon=timedelta(hours=48))
    assert longer["overall"]["hit_rate"] == pytest.approx(2 / 3, abs=1e-6)
    with pytest.raises(ParameterError):
        replay_evaluate(requests, events, horizon=timedelta(0))


def test_empty_logs() -> None:
    empty = request_frame([])
    assert compute_kpis(empty)["overall"] == {"requests": 0}
    assert availability(empty, T0, T0 + timedelta(hours=1)).ratio is None
    assert replay_evaluate(empty, events_frame([]))["overall"] == {"lists": 0}
    assert isinstance(empty, pl.DataFrame) and model_switches(empty)["switches"] == 0
