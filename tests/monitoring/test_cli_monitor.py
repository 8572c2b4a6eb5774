"""`tastebud monitor drift|report|replay` on a seeded store and a saved dataset."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from tastebud.cli import main
from tastebud.config import build_settings
from tastebud.data.io import save_dataset
from tastebud.data.synthetic import generate_synthetic
from tastebud.store import create_store

END = datetime(2026, 3, 1, tzinfo=UTC)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    ds = generate_synthetic(120, 60, 3000, seed=7)
    save_dataset(ds, tmp_path / "ref")
    frame = ds.to_frame()
    rng = np.random.default_rng(0)
    rows = frame[rng.choice(frame.height, 600, replace=False)]
    events = [
        {"event_id": f"e{i}", "user_id": u, "item_id": it, "kind": "rating", "rating": float(r),
         "timestamp": END - timedelta(hours=23) + timedelta(minutes=i)}
        for i, (u, it, r) in enumerate(rows.select("user_id", "item_id", "rating").iter_rows())
    ]  # fmt: skip
    logs = [
        {"request_id": f"r{i}", "timestamp": END - timedelta(hours=23, minutes=1) + timedelta(minutes=i),
         "endpoint": "recommend", "user_id": e["user_id"], "model_name": "ml", "model_version": 1,
         "item_ids": [e["item_id"], "x"], "scores": [1.0, 0.5], "latency_ms": 2.0, "status_code": 200}
        for i, e in enumerate(events[:100])
    ] + [{"request_id": "bad", "timestamp": END - timedelta(hours=1), "endpoint": "recommend",
          "latency_ms": 1.0, "status_code": 503, "provenance": {"error": {"code": "no_model"}}}]  # fmt: skip
    with create_store(build_settings(home=tmp_path)) as store:
        store.init_schema()
        store.write_events(events)
        store.write_request_logs(logs)
    return tmp_path


def test_report_json(home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "kpis.json"
    code = main(["--home", str(home), "monitor", "report", "--since", "72h", "--until", END.isoformat(),
                 "--out", str(out), "--json"])  # fmt: skip
    assert code == 0
    result = json.loads(out.read_text())
    assert result["kpis"]["overall"]["requests"] == 101
    assert result["availability"]["successful"] == 100 and len(result["availability"]["breached_minutes"]) == 1
    assert main(["--home", str(home), "monitor", "report", "--until", END.isoformat()]) == 0
    assert "availability" in capsys.readouterr().out


def test_replay(home: Path, tmp_path: Path) -> None:
    out = tmp_path / "replay.json"
    code = main(["--home", str(home), "monitor", "replay", "--since", "7d", "--until", END.isoformat(),
                 "--horizon", "24h", "--out", str(out)])  # fmt: skip
    assert code == 0
    overall = json.loads(out.read_text())["overall"]
    # Each logged list holds the item of the event one minute later: every list hits.
    assert overall["lists"] == 100 and overall["hit_rate"] == 1.0 and overall["precision"] == 0.5


def test_drift_writes_report_and_gauges(home: Path, tmp_path: Path) -> None:
    code = main(["--home", str(home), "monitor", "drift", "--reference", str(home / "ref"), "--window", "24h",
                 "--until", END.isoformat(), "--out", str(tmp_path / "drift")])  # fmt: skip
    assert code == 0  # a sample of the reference itself: no alert
    report = json.loads((tmp_path / "drift" / "report.json").read_text())
    assert report["window"]["events"] == 600
    assert {s["signal"] for s in report["signals"]} >= {"rating", "item_popularity", "user_activity", "genre_mix"}
    assert (home / "monitoring" / "drift.prom").read_text().count("tastebud_monitor_drift_psi_ratio{") >= 4
    assert main(["--home", str(home), "monitor", "drift", "--reference", str(home / "ref"), "--window", "x"]) == 1
