"""Serving under running experiments: the variant's model answers, the exposure is logged, interleaving merges.

The app runs on the real SQLite store (experiments as data) with the in-memory registry of the serving tests:
version 1 is ALS (``champion``), version 2 item-KNN (``challenger``).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tastebud.config import Settings
from tastebud.experiments import Assigner, create_experiment, start_experiment, stop_experiment
from tastebud.serving import create_app
from tastebud.store import Store, create_store

from .conftest import FakeRegistry, FakeWriter


@pytest.fixture
def store(settings: Settings) -> Iterator[Store]:
    s = create_store(settings)
    s.init_schema()
    yield s
    s.close()


@pytest.fixture
def writer() -> FakeWriter:
    return FakeWriter()


@pytest.fixture
def client(settings: Settings, registry: FakeRegistry, store: Store, writer: FakeWriter) -> Iterator[TestClient]:
    registry.set_alias("ml", "challenger", 2)
    app = create_app(settings, registry=registry, request_log=writer, store=store)
    with TestClient(app, raise_server_exceptions=False) as c:
        deadline = time.monotonic() + 30
        while c.get("/health/ready").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        yield c


def start(store: Store, registry: FakeRegistry, settings: Settings, client: TestClient, **spec: Any) -> Any:
    base = {"variants": [{"name": "control", "ref": "champion"}, {"name": "treatment", "ref": "challenger"}]}
    experiment = create_experiment(store, registry, settings, {**base, **spec}, actor="test")
    started = start_experiment(store, registry, settings, experiment.name, actor="test")
    router = client.app.state.holder.router  # type: ignore[attr-defined]
    assert router is not None
    router.refresh()  # (its own thread may have picked the experiment up already)
    assert started.name in [e.name for e in router.experiments()]
    return started


def test_users_are_answered_by_their_variants_model_and_every_exposure_is_logged(
    client: TestClient, store: Store, registry: FakeRegistry, settings: Settings, writer: FakeWriter
) -> None:
    experiment = start(store, registry, settings, client, name="knn-vs-als")
    users = [f"user-{n}" for n in range(300)] + ["1", "2", "3"]
    types = {"control": "als", "treatment": "itemknn"}
    seen: Counter[str] = Counter()
    assigner = Assigner([experiment])
    for user in users:
        body = client.get(f"/recommend/{user}?k=5").json()
        assert body["experiment"] == "knn-vs-als"
        assert body["variant"] == assigner.variant("knn-vs-als", user)  # the same hash, any process
        assert body["model"]["type"] == types[body["variant"]]
        assert client.get(f"/recommend/{user}?k=5").json()["variant"] == body["variant"]  # sticky
        seen[body["variant"]] += 1
    assert 110 < seen["control"] < 190 and seen["control"] + seen["treatment"] == len(users)
    writer.flush()
    logged = [r for r in writer.store.records.values() if r["endpoint"] == "recommend"]
    assert len(logged) == 2 * len(users)
    assert all(r["experiment"] == "knn-vs-als" and r["variant"] in types for r in logged)
    assert all(len(r["item_ids"]) == 5 for r in logged)  # the exposed list, in position order
    metrics = client.get("/metrics").text
    assert 'tastebud_serving_experiment_exposures_total{experiment="knn-vs-als",variant="control"}' in metrics
    # stopped: everyone is back on the default model, without a variant
    stop_experiment(store, "knn-vs-als", actor="test")
    client.app.state.holder.router.refresh()  # type: ignore[attr-defined]
    assert client.app.state.holder.router.experiments() == []  # type: ignore[attr-defined]
    body = client.get("/recommend/user-1?k=5").json()
    assert body["variant"] is None and body.get("experiment") is None and body["model"]["version"] == 1


def test_interleaving_merges_both_rankers_and_logs_each_positions_team(
    client: TestClient, store: Store, registry: FakeRegistry, settings: Settings, writer: FakeWriter
) -> None:
    start(store, registry, settings, client, name="interleave", kind="interleaving")
    holder = client.app.state.holder  # type: ignore[attr-defined]
    router = holder.router
    for user in ["1", "2", "3", "4"]:
        body = client.get(f"/recommend/{user}?k=8&exclude_seen=true").json()
        assert body["variant"] == "interleaved"
        als = [i["item_id"] for i in holder.current.engine.recommend(user, 8).items]
        knn = [i["item_id"] for i in router.served_for(2).engine.recommend(user, 8).items]
        writer.flush()
        record = writer.store.records[body["provenance"]["request_id"]]
        teams = record["exposure"]["teams"]
        items = [it["item_id"] for it in body["recommendations"]]
        assert len(teams) == len(items) == 8 and record["item_ids"] == items
        assert set(teams) <= {"control", "treatment"} and abs(teams.count("control") - teams.count("treatment")) <= 1
        for item, team in zip(items, teams, strict=True):
            assert item in (als if team == "control" else knn)
        # each ranker's items keep that ranker's order
        for team, ranking in (("control", als), ("treatment", knn)):
            picked = [i for i, t in zip(items, teams, strict=True) if t == team]
            assert picked == sorted(picked, key=ranking.index)


def test_a_variant_whose_model_cannot_load_is_routed_nowhere(
    client: TestClient, store: Store, registry: FakeRegistry, settings: Settings
) -> None:
    registry.set_alias("ml", "broken", 3)  # version 3 is the corrupt bundle
    arms = [{"name": "control", "ref": "champion"}, {"name": "treatment", "ref": "broken"}]
    experiment = create_experiment(store, registry, settings, {"name": "broken", "variants": arms}, actor="test")
    with pytest.raises(Exception, match=r"(?i)verif|checksum|corrupt|bundle"):
        start_experiment(store, registry, settings, experiment.name, actor="test")  # refused at start
    router = client.app.state.holder.router  # type: ignore[attr-defined]
    router.refresh()
    assert len(router) == 0
    # the bundle was altered after a start: the serving process refuses to load it and routes nobody there
    from tastebud.serving.experiments import ExperimentRouter

    running = experiment.model_copy(update={"status": "running", "versions": {"control": 1, "treatment": 3}})
    holder = client.app.state.holder  # type: ignore[attr-defined]
    holder.router = ExperimentRouter(store, holder, list_running=lambda _store, _name: [running])
    holder.router.refresh()
    assert len(holder.router) == 0 and "version 3" in (holder.router.last_error or "")
    body = client.get("/recommend/1?k=5").json()
    assert body["variant"] is None and body["model"]["version"] == 1 and body["is_fallback"] is False


def test_experiments_endpoints_list_and_analyse_from_behaviour(
    client: TestClient, store: Store, registry: FakeRegistry, settings: Settings, writer: FakeWriter
) -> None:
    from tastebud.stream.ingest import ingest_events

    start(store, registry, settings, client, name="endpoints", mde=0.5)
    listed = client.get("/experiments").json()
    assert [e["name"] for e in listed["experiments"]] == ["endpoints"]
    assert listed["experiments"][0]["routed_here"] is True and listed["experiments"][0]["status"] == "running"
    assert [v["version"] for v in listed["experiments"][0]["variants"]] == [1, 2]
    bodies = [client.get(f"/recommend/{u}?k=5").json() for u in map(str, range(1, 121))]
    writer.flush()
    # the request log of this test lives in the fake writer: copy the exposures into the store the analysis reads
    store.write_request_logs(list(writer.store.records.values()))
    # every treatment user clicks their first item; no control user does anything (a 200 is not a success)
    clicks = [
        {"event_id": f"c{b['user_id']}", "user_id": b["user_id"], "item_id": b["recommendations"][0]["item_id"],
         "kind": "click", "timestamp": int(time.time()) + 1}
        for b in bodies if b["variant"] == "treatment"
    ]  # fmt: skip
    assert ingest_events(store, clicks).accepted == len(clicks)
    body = client.get("/experiments/endpoints").json()
    assert "status" in body, body
    assert body["status"] == "running" and sum(body["users"].values()) == 120
    primary = body["report"]["primary"]
    assert primary["mean_control"] == 0.0 and primary["mean_treatment"] == 1.0
    assert client.get("/experiments/endpoints").json() == body  # reused within the TTL
    assert client.get("/experiments/nope").status_code == 404
    assert client.get("/experiments/" + "x" * 500).status_code == 404
