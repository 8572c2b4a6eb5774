"""``tastebud serve --workers 2`` on the real registry and store: every worker serves every user's new events.

A brand-new user posts three ratings to whichever worker takes the connection; every following request, on fresh
connections spread over both workers, is personalised within a second; both workers applied the events (the
summed counter); after a restart the store gives them back.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from live_server import ServerProcess
from tastebud.config import build_settings
from tastebud.data.dataset import Dataset

pytestmark = [pytest.mark.slow, pytest.mark.integration]

NOW = int(time.time()) - 60


def test_two_workers_one_live_state_and_a_restart_keeps_it(
    tmp_path: Path, bundles: dict[str, Path], train: Dataset
) -> None:
    from tastebud.registry import ModelRegistry

    home = tmp_path / "home"
    settings = build_settings(home=home)
    registry = ModelRegistry(settings)
    v1 = registry.register(bundles["als"], "ml")
    registry.set_alias("ml", "champion", v1.version)
    liked = [str(i) for i in train.items.ids[[10, 11, 12]]]
    events = [
        {"event_id": f"w{n}", "user_id": "brand-new", "item_id": item, "rating": 5, "timestamp": NOW + n}
        for n, item in enumerate(liked)
    ]
    server = ServerProcess(home, "ml", workers=2)
    with server:
        before = server.get("/recommend/brand-new?k=5").json()
        assert before["fallback_reason"] == "unknown_user"
        posted = time.monotonic()
        r = server.post("/events", json=events)
        assert r.status_code == 200 and r.json()["accepted"] == 3, r.text
        answers = []
        while len(answers) < 20:  # fresh connections: both workers answer some of them
            answers.append(server.get("/recommend/brand-new?k=5").json())
            if answers[-1]["is_fallback"]:
                assert time.monotonic() - posted < 1.0, "a worker did not apply the events within 1 s"
                answers.clear()
        assert all(a["realtime_events"] == 3 for a in answers)
        assert all(not set(liked) & {it["item_id"] for it in a["recommendations"]} for a in answers)
        # every worker applied the three events itself (the counter sums the workers)
        deadline = time.monotonic() + 2
        while server.metric("tastebud_serving_realtime_events_total") < 6:
            assert time.monotonic() < deadline, server.metric("tastebud_serving_realtime_events_total")
            time.sleep(0.05)
        assert server.metric("tastebud_serving_realtime_events_total") == 6
        lists = {tuple(it["item_id"] for it in a["recommendations"]) for a in answers}
        assert len(lists) == 1  # the same answer whichever worker gave it
    with ServerProcess(home, "ml", workers=2) as again:  # nothing in memory survives: only the store
        after = [again.get("/recommend/brand-new?k=5").json() for _ in range(10)]
        assert all(a["is_fallback"] is False and a["realtime_events"] == 3 for a in after)
        assert {tuple(it["item_id"] for it in a["recommendations"]) for a in after} == lists
