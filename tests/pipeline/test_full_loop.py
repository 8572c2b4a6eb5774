"""The whole loop against a real server: serve v1, replay events (brand-new users and items among them), a volume
trigger retrains, the gate promotes, the server switches, and the new users are served by the new model itself.

``tastebud serve --workers 2`` on the real MLflow registry and SQLite store; the trigger is ``tastebud retrain
schedule --once`` as a cron job would run it. A client asks for recommendations the whole time: not one request
may fail.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from live_server import ServerProcess
from tastebud.config import build_settings
from tastebud.data.synthetic import generate_synthetic

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def world_split(root: Path) -> tuple[Path, list[dict], list[str]]:
    """A synthetic world cut in two: what v1 learns (old users and items, older interactions) and the events.

    Returns the champion's data file, the events (oldest first) and the brand-new users' ids.
    """
    world = generate_synthetic(400, 200, 16_000, seed=11).to_frame()
    users = sorted(world["user_id"].unique().to_list())
    items = sorted(world["item_id"].unique().to_list())
    new_users = set(users[-40:])
    new_items = set(items[-20:])
    cut = int(np.quantile(world["timestamp"].to_numpy(), 0.88))
    old = (
        ~pl.col("user_id").is_in(list(new_users)) & ~pl.col("item_id").is_in(list(new_items))
        & (pl.col("timestamp") < cut)
    )  # fmt: skip
    champion = world.filter(old)
    path = root / "world-v1.parquet"
    champion.select("user_id", "item_id", "rating", "timestamp").write_parquet(path)
    later = world.filter(~old).sort("timestamp")
    events = [
        {"event_id": f"loop-{n}", "user_id": r["user_id"], "item_id": r["item_id"], "rating": float(r["rating"]),
         "timestamp": int(r["timestamp"])}
        for n, r in enumerate(later.iter_rows(named=True))
    ]  # fmt: skip
    return path, events, sorted(new_users)


class Client(threading.Thread):
    """Asks for recommendations without pause until stopped; keeps every status code."""

    def __init__(self, server: ServerProcess, users: list[str]) -> None:
        super().__init__(daemon=True)
        self.server, self.users = server, users
        self.codes: list[int] = []
        self.errors: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        import httpx

        n = 0
        with httpx.Client(base_url=self.server.url, timeout=10) as http:
            while not self.stop.is_set():
                try:
                    self.codes.append(http.get(f"/recommend/{self.users[n % len(self.users)]}?k=10").status_code)
                except httpx.HTTPError as err:
                    self.errors.append(repr(err))
                n += 1
                time.sleep(0.005)


def test_the_loop_renews_the_model_from_live_events(tmp_path: Path) -> None:
    from tastebud.pipeline.promote import promote
    from tastebud.pipeline.train import train
    from tastebud.registry import ModelRegistry

    home = tmp_path / "home"
    settings = build_settings(home=home)
    data, events, new_users = world_split(tmp_path)
    first = train(str(data), "als", {"factors": 16, "iterations": 8}, settings=settings, name="world", fmt="parquet")
    assert first.version is not None
    registry = ModelRegistry(settings)
    assert promote(registry, "world", first.version.version, settings=settings).promoted
    v1 = first.version.version

    with ServerProcess(home, "world", workers=2) as server:
        probe = new_users[:5]
        client = Client(server, [*probe, "1", "2", "3"])
        client.start()
        try:
            before = server.get(f"/recommend/{probe[0]}").json()
            assert before["model"]["version"] == v1 and before["fallback_reason"] == "unknown_user"
            for start in range(0, len(events), 500):
                r = server.post("/events", json=events[start : start + 500])
                assert r.status_code == 200 and not r.json()["rejected"], r.text[:500]
            live = server.get(f"/recommend/{probe[0]}").json()
            assert live["is_fallback"] is False and live["realtime_events"] > 0  # overlays serve them for now

            env = {**os.environ, "TASTEBUD_HOME": str(home)}
            env.pop("MLFLOW_TRACKING_URI", None)
            run = subprocess.run(
                [sys.executable, "-m", "tastebud.cli", "retrain", "schedule", "--once", "--model-name", "world",
                 "--volume-events", "1000", "--no-drift"],
                env=env, capture_output=True, text=True, timeout=600,
            )  # fmt: skip
            assert run.returncode == 0, run.stdout + run.stderr
            assert "volume" in run.stdout and "promoted" in run.stdout, run.stdout
            v2 = registry.get_alias("world", "champion")
            assert v2 is not None and v2 != v1

            deadline = time.monotonic() + 30
            while True:  # the watcher of every worker moves to v2
                answers = [server.get(f"/recommend/{probe[0]}").json() for _ in range(10)]
                if all(a["model"]["version"] == v2 for a in answers):
                    break
                assert time.monotonic() < deadline, [a["model"]["version"] for a in answers]
                time.sleep(0.5)
            for user in probe:  # served by the model that learned them: no overlay, no fallback
                for _ in range(4):
                    body = server.get(f"/recommend/{user}").json()
                    assert body["model"]["version"] == v2 and body["is_fallback"] is False
                    assert body.get("realtime_events") is None, body.get("realtime_events")
            history = subprocess.run(
                [sys.executable, "-m", "tastebud.cli", "retrain", "history", "--model-name", "world"],
                env=env, capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert history.returncode == 0 and "promoted" in history.stdout, history.stdout + history.stderr
        finally:
            client.stop.set()
            client.join(15)
    assert len(client.codes) > 100
    failed = [c for c in client.codes if c != 200]
    assert not failed and not client.errors, (failed[:10], client.errors[:5])
