"""`run_retrain` and `tastebud retrain`: lineage, refusals, single flight, crash safety and an honest gate.

Every test builds a *world*: a synthetic dataset cut in two, the older part (old users and items) written as the
champion's CSV and the rest (newer interactions, 30 brand-new users, 5 brand-new items) written to the test's own
event store as rating events. The champion is trained from the CSV and promoted. The MLflow store and the decision
log are shared by the session (each world registers its own model name); the event store, the locks and the retrain
history are the world's own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from tastebud.config import Settings, build_settings
from tastebud.data.synthetic import generate_synthetic
from tastebud.errors import DataValidationError
from tastebud.pipeline.holdout import score_holdout, select_holdout
from tastebud.pipeline.lineage import DEDUPE_RULE, load_merged, merge_events
from tastebud.pipeline.promote import promote
from tastebud.pipeline.retrain import RetrainOutcome, lock_name, run_retrain
from tastebud.pipeline.train import load_data, reproduce_manifest, train
from tastebud.registry import ModelRegistry, load_bundle, read_decisions
from tastebud.registry.aliases import CHAMPION
from tastebud.store import Store, create_store

NEW_USERS = [str(u) for u in range(1, 31)]
NEW_ITEMS = [str(i) for i in range(1, 6)]


@pytest.fixture(scope="module")
def world_frames() -> tuple[pl.DataFrame, pl.DataFrame]:
    """(champion data, events): 300 users x 150 items, 8,000 ratings; the events are the newest 15% by time plus
    every interaction of 30 new users and 5 new items (about 2,000 events)."""
    frame = generate_synthetic(300, 150, 8000, seed=5, name="world").to_frame()
    cut = int(np.quantile(frame["timestamp"].to_numpy(), 0.85))
    new = pl.col("user_id").is_in(NEW_USERS) | pl.col("item_id").is_in(NEW_ITEMS) | (pl.col("timestamp") >= cut)
    return frame.filter(~new), frame.filter(new).sort("timestamp")


@dataclass
class World:
    settings: Settings
    store: Store
    registry: ModelRegistry
    name: str
    champion: int
    events: pl.DataFrame
    overrides: dict[str, Any]

    def with_retrain(self, **retrain: Any) -> Settings:
        """The world's settings with other ``retrain`` settings."""
        return build_settings(**{**self.overrides, "retrain": {**self.overrides.get("retrain", {}), **retrain}})

    def write_events(self, frame: pl.DataFrame, prefix: str = "e") -> int:
        """Store ``frame``'s rows as rating events (value = rating, as the stream stores them)."""
        records = [
            {"event_id": f"{prefix}{n}", "user_id": r["user_id"], "item_id": r["item_id"], "kind": "rating",
             "rating": r["rating"], "value": r["rating"], "timestamp": r["timestamp"], "source": "test"}
            for n, r in enumerate(frame.iter_rows(named=True))
        ]  # fmt: skip
        return self.store.write_events(records)[0]

    def versions(self) -> list[int]:
        return [mv.version for mv in self.registry.list_versions(self.name)]


def make_world(
    registry_settings: Settings,
    tmp_path: Path,
    frames: tuple[pl.DataFrame, pl.DataFrame],
    name: str,
    *,
    model: str = "ease",
    params: dict[str, Any] | None = None,
    events: pl.DataFrame | None = None,
    retrain: dict[str, Any] | None = None,
) -> World:
    parent, all_events = frames
    csv = tmp_path / f"{name}.csv"
    parent.select("user_id", "item_id", "rating", "timestamp").write_csv(csv)
    overrides = {
        "home": str(registry_settings.home),
        "store": {"url": f"sqlite:///{tmp_path / 'store.db'}"},
        "retrain": retrain or {},
    }
    settings = build_settings(**overrides)
    registry = ModelRegistry(settings)
    result = train(str(csv), model, params or {}, settings=settings, fmt="csv", name=name, registry=registry)
    assert result.version is not None
    # force: a world needs a champion, even one (the ALS world's) that does not beat the popularity baseline
    promote(registry, name, result.version.version, settings=settings, actor="test", force=True)
    store = create_store(settings)
    store.init_schema()
    world = World(settings, store, registry, name, result.version.version, all_events, overrides)
    world.write_events(all_events if events is None else events)
    return world


@pytest.fixture
def world(registry_settings: Settings, tmp_path: Path, world_frames: Any, request: pytest.FixtureRequest) -> World:
    """A world with every event stored, champion EASE, the model named after the test."""
    return make_world(registry_settings, tmp_path, world_frames, f"rt-{request.node.name[:40]}")


def _pending(world: World) -> list[int]:
    return [
        mv.version for mv in world.registry.list_versions(world.name) if mv.tags.get("tastebud.retrain") == "pending"
    ]


# ---------------------------------------------------------------------------------------------------- the happy path
def test_retrain_promotes_with_lineage_gate_decision_and_history(world: World) -> None:
    stages: list[str] = []
    through = world.store.last_event_id()
    out = run_retrain(world.settings, model_name=world.name, trigger="volume", store=world.store,
                      on_stage=stages.append)  # fmt: skip
    assert out.outcome == "promoted", out.reason
    assert stages == ["locked", "data", "evaluated", "registered", "decision_logged", "decided"]
    assert out.version is not None and out.version != world.champion and out.champion_version == world.champion
    assert world.registry.get_alias(world.name, CHAMPION) == out.version
    assert out.n_new_events == world.events.height and out.n_interactions is not None
    assert out.fit_s is not None and 0 < out.fit_s < out.duration_s

    # the bundle: lineage, the events cutoff serving relies on, a data spec that rebuilds the same snapshot
    mv = world.registry.get(world.name, out.version)
    assert mv.tags["tastebud.retrain"] == "promoted" and mv.tags["tastebud.retrain.trigger"] == "volume"
    manifest = world.registry.manifest(mv)
    extra = manifest["extra"]
    assert extra["events_through_id"] == through
    lineage = extra["lineage"]
    assert lineage["parent_version"] == world.champion and lineage["dedupe_rule"] == DEDUPE_RULE
    assert lineage["events"]["after_id"] == 0 and lineage["events"]["through_id"] == through
    assert lineage["events"]["count"] == world.events.height
    assert lineage["new_users"] == len(NEW_USERS) and lineage["new_items"] == len(NEW_ITEMS)
    champion_spec = world.registry.manifest(world.registry.get(world.name, world.champion))["extra"]["data_spec"]
    assert lineage["parent_snapshot_id"] == champion_spec["snapshot_id"]
    spec = extra["data_spec"]
    assert spec["parent"] == champion_spec and spec["events"] == {"after_id": 0, "through_id": through,
                                                                  "count": world.events.height}  # fmt: skip
    rebuilt = load_data(spec, world.settings, store=world.store)
    assert rebuilt.snapshot_id == spec["snapshot_id"] == manifest["data"]["snapshot_id"] == lineage["snapshot_id"]
    # brand-new users and items are part of the new model
    bundle = load_bundle(world.registry.bundle_path(mv))
    assert bundle.model.users_ is not None and bundle.model.items_ is not None
    assert set(NEW_USERS) <= set(bundle.model.users_.to_list())
    assert set(NEW_ITEMS) <= set(bundle.model.items_.to_list())

    # gate numbers, recorded in the outcome, the manifest, the decision log and the history
    gate = out.gate
    assert gate["passed"] is True and gate["primary"] == "ndcg_at_10"
    assert gate["candidate"]["ndcg_at_10"] >= gate["champion"]["ndcg_at_10"] * 1.01
    assert gate["holdout"]["users"] >= 20 and gate["holdout"]["new_users"] > 0
    assert gate["champion_sources"]["fold_in"] > 0  # new users' earlier events folded into the champion
    assert extra["retrain"]["gate"] == json.loads(json.dumps(gate))
    assert manifest["metrics"]["ndcg_at_10"] == pytest.approx(gate["candidate"]["ndcg_at_10"])
    decision = read_decisions(world.settings, world.name)[-1]
    assert (decision.action, decision.version, decision.previous) == ("promoted", out.version, world.champion)
    assert decision.trigger == "volume" and decision.numbers["candidate"] == gate["candidate"]
    row = world.store.retrain_history(world.name)[0]
    assert row["id"] == out.retrain_id and row["outcome"] == "promoted" and row["trigger"] == "volume"
    assert (row["version"], row["champion_version"], row["n_new_events"]) == (out.version, world.champion,
                                                                             world.events.height)  # fmt: skip
    assert row["gate"]["candidate"] == gate["candidate"] and row["finished_at"] is not None
    assert row["duration_s"] == pytest.approx(out.duration_s, abs=0.5) and row["fit_s"] == pytest.approx(out.fit_s)
    json.dumps(out.to_dict())  # JSON-able

    # the next run has nothing new to learn
    again = run_retrain(world.settings, model_name=world.name, store=world.store)
    assert again.outcome == "no_new_data" and again.version is None and "0 new events" in again.reason
    assert world.versions()[-1] == out.version


def test_retrains_chain_and_reproduce(
    registry_settings: Settings, tmp_path: Path, world_frames: tuple[pl.DataFrame, pl.DataFrame]
) -> None:
    events = world_frames[1]
    half = events.height // 2
    w = make_world(registry_settings, tmp_path, world_frames, "rt-chain", events=events.head(half),
                   retrain={"min_holdout_users": 5})  # fmt: skip
    first = run_retrain(w.settings, model_name=w.name, store=w.store, force=True)
    assert first.version is not None and first.outcome in ("promoted", "refused")
    # whatever the gate said, chain on a champion that is a retrained version
    if first.outcome == "refused":
        w.registry.set_alias(w.name, CHAMPION, first.version)
    cutoff = w.store.last_event_id()
    w.write_events(events.tail(events.height - half), prefix="late")
    second = run_retrain(w.settings, model_name=w.name, store=w.store)
    assert second.version is not None and second.champion_version == first.version
    manifest = w.registry.manifest(w.registry.get(w.name, second.version))
    spec = manifest["extra"]["data_spec"]
    assert spec["events"]["after_id"] == cutoff and spec["events"]["through_id"] == w.store.last_event_id()
    assert spec["parent"]["parent"] is not None  # chained on the first retrain's merged snapshot
    assert manifest["extra"]["lineage"]["parent_snapshot_id"] == spec["parent"]["snapshot_id"]
    assert load_data(spec, w.settings).snapshot_id == spec["snapshot_id"]  # replayed from the store named in settings
    # `models reproduce` of a retrained version: the comparison fit again, the same numbers
    again = reproduce_manifest(manifest, w.settings)
    assert again == pytest.approx(manifest["metrics"])
    # the lineage refuses a store that lost events
    with w.store.engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM events WHERE id = (SELECT max(id) FROM events)")
    with pytest.raises(DataValidationError, match="events were deleted"):
        load_data(spec, w.settings)


# ---------------------------------------------------------------------------------------------------- refusals
@pytest.fixture(scope="module")
def refusal_world(registry_settings: Settings, tmp_path_factory: pytest.TempPathFactory, world_frames: Any) -> World:
    return make_world(registry_settings, tmp_path_factory.mktemp("refusals"), world_frames, "rt-refusals")


@pytest.mark.parametrize(
    ("retrain", "words"),
    [
        ({"min_interactions": 100_000}, ["interactions", "retrain.min_interactions"]),
        ({"min_users": 5_000}, ["users", "retrain.min_users"]),
        ({"min_items": 5_000}, ["items with interactions", "retrain.min_items"]),
        ({"max_new_share": 0.1}, ["new events are", "retrain.max_new_share", "implausible"]),
    ],
)
def test_degenerate_data_is_refused_without_training(
    refusal_world: World, retrain: dict[str, Any], words: list[str]
) -> None:
    w = refusal_world
    before = w.versions()
    out = run_retrain(w.with_retrain(**retrain), model_name=w.name, store=w.store)
    assert out.outcome == "rejected_data" and not out.ok
    assert all(word in out.reason for word in words), out.reason
    assert out.version is None and out.fit_s is None
    assert w.versions() == before and w.registry.get_alias(w.name, CHAMPION) == w.champion
    row = w.store.retrain_history(w.name, limit=1)[0]
    assert row["outcome"] == "rejected_data" and row["reason"] == out.reason and row["version"] is None


def test_non_finite_event_values_are_refused(refusal_world: World) -> None:
    w = refusal_world
    before = w.versions()
    bad = {"event_id": "bad-inf", "user_id": "u-inf", "item_id": "7", "kind": "view", "value": float("inf"),
           "timestamp": 1_700_000_000}  # fmt: skip
    w.store.write_events([bad], validated=True)  # the trusted path checks nothing, so the retrain must
    try:
        out = run_retrain(w.settings, model_name=w.name, store=w.store)
        assert out.outcome == "rejected_data" and "not a finite number" in out.reason and "bad-inf" in out.reason
        assert w.versions() == before
    finally:
        with w.store.engine.begin() as conn:
            conn.exec_driver_sql("DELETE FROM events WHERE event_id = 'bad-inf'")


def test_merge_rejects_nan_and_keeps_ratings(world_frames: Any) -> None:
    from tastebud.data.dataset import Dataset

    frame = {"user_id": ["a", "a", "b"], "item_id": ["x", "y", "x"], "rating": [4.0, 2.0, 5.0], "timestamp": [10] * 3}
    parent = Dataset.from_frame(pl.DataFrame(frame))
    events = [
        {"id": 1, "event_id": "1", "user_id": "a", "item_id": "x", "kind": "view", "rating": None, "value": 1.0,
         "timestamp": 20},  # later view: a's rating of x stays 4, the value becomes the view's
        {"id": 2, "event_id": "2", "user_id": "a", "item_id": "y", "kind": "rating", "rating": 5.0, "value": 5.0,
         "timestamp": 5},  # older than the dataset row: the dataset row wins
        {"id": 3, "event_id": "3", "user_id": "c", "item_id": "z", "kind": "rating", "rating": 3.0, "value": 3.0,
         "timestamp": 30},  # a new user and a new item
        {"id": 4, "event_id": "4", "user_id": "b", "item_id": "x", "kind": "rating", "rating": 1.0, "value": 1.0,
         "timestamp": 10},  # same time as the dataset row: the event wins
    ]  # fmt: skip
    merged = merge_events(parent, events)
    rows = {(r["user_id"], r["item_id"]): r for r in merged.dataset.to_frame().iter_rows(named=True)}
    assert len(rows) == 4 and merged.new_users == 1 and merged.new_items == 1 and merged.n_events == 4
    assert (rows["a", "x"]["rating"], rows["a", "x"]["value"], rows["a", "x"]["timestamp"]) == (4.0, 1.0, 20)
    assert (rows["a", "y"]["rating"], rows["a", "y"]["timestamp"]) == (2.0, 10)
    assert rows["b", "x"]["rating"] == 1.0 and rows["c", "z"]["rating"] == 3.0
    frame = merged.dataset.to_frame()
    flags = dict(zip(zip(frame["user_id"], frame["item_id"], strict=True), merged.novel.tolist(), strict=True))
    assert flags == {("a", "x"): False, ("a", "y"): False, ("b", "x"): False, ("c", "z"): True}
    with pytest.raises(DataValidationError, match=r"stored event id 9 \('nan'\): value nan"):
        merge_events(parent, [{**events[0], "id": 9, "event_id": "nan", "value": float("nan")}])


def test_no_new_data_unless_forced(
    registry_settings: Settings, tmp_path: Path, world_frames: tuple[pl.DataFrame, pl.DataFrame]
) -> None:
    w = make_world(registry_settings, tmp_path, world_frames, "rt-nothing", events=world_frames[1].head(0))
    out = run_retrain(w.settings, model_name=w.name, store=w.store)
    assert out.outcome == "no_new_data" and out.ok and out.version is None and out.n_new_events == 0
    assert w.versions() == [w.champion]
    forced = run_retrain(w.settings, model_name=w.name, store=w.store, force=True)
    assert forced.outcome == "refused" and "no fresh holdout" in forced.reason
    assert forced.version is not None and w.registry.get_alias(w.name, CHAMPION) == w.champion
    assert [r["outcome"] for r in w.store.retrain_history(w.name)] == ["refused", "no_new_data"]


def test_a_model_without_champion_fails_clearly(world: World) -> None:
    out = run_retrain(world.settings, model_name="rt-no-such-model", store=world.store)
    assert out.outcome == "failed" and "has no champion" in out.reason and "tastebud models promote" in out.reason


# ---------------------------------------------------------------------------------------------------- single flight
def test_concurrent_retrains_single_flight(world: World) -> None:
    release, results = threading.Event(), {}

    def hold(stage: str) -> None:
        if stage == "locked":  # the winner waits here until the loser has answered
            assert release.wait(60)

    def go(n: int) -> None:
        results[n] = run_retrain(world.settings, model_name=world.name, trigger=f"t{n}", on_stage=hold)

    barrier = threading.Barrier(2)
    threads = [threading.Thread(target=lambda n=n: (barrier.wait(), go(n))) for n in range(2)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while not results and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(results) == 1, "neither run answered busy while the other held the lock"
    (loser,) = results.values()
    release.set()
    for thread in threads:
        thread.join(120)
    outcomes = sorted(r.outcome for r in results.values())
    assert outcomes == ["busy", "promoted"], [(r.outcome, r.reason) for r in results.values()]
    assert loser.outcome == "busy" and "another retrain" in loser.reason and loser.fit_s is None
    assert loser.duration_s < 10 and loser.version is None
    assert len(world.versions()) == 2  # the champion and one retrained version
    history = world.store.retrain_history(world.name)
    assert sorted(r["outcome"] for r in history) == ["busy", "promoted"]
    assert world.store.get_lock(lock_name(world.name)) is None  # released


def test_a_live_holder_on_this_host_makes_others_busy_and_a_dead_one_is_taken_over(world: World) -> None:
    name = lock_name(world.name)
    live = f"{os.uname().nodename}:{os.getpid()}:someone"
    assert world.store.acquire_lock(name, live, 600)
    busy = run_retrain(world.settings, model_name=world.name, store=world.store)
    assert busy.outcome == "busy" and "someone" in busy.reason
    assert world.store.release_lock(name, live)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_owner = f"{os.uname().nodename}:{int(dead.stdout)}:gone"
    assert world.store.acquire_lock(name, dead_owner, 600)
    out = run_retrain(world.settings, model_name=world.name, store=world.store)
    assert out.outcome == "promoted", out.reason
    assert any("took over the lock" in note and "gone" in note for note in out.recovered)


# ---------------------------------------------------------------------------------------------------- crash safety
def _run_child_until(world: World, stage: str, tmp_path: Path) -> int:
    """Start a retrain in a child process, wait until it reaches ``stage``, SIGKILL it; its pid."""
    marker = tmp_path / f"reached-{stage}"
    script = Path(__file__).with_name("_retrain_proc.py")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, str(script), json.dumps(world.overrides), world.name, stage, str(marker)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while not marker.exists():
            if proc.poll() is not None:
                pytest.fail(f"the child retrain exited ({proc.returncode}) before {stage!r}: {proc.stdout.read()}")  # type: ignore[union-attr]
            if time.monotonic() > deadline:
                pytest.fail(f"the child retrain did not reach {stage!r}")
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(30)
    return proc.pid


@pytest.mark.slow
def test_sigkill_after_registration_leaves_nothing_half_registered(world: World, tmp_path: Path) -> None:
    _run_child_until(world, "registered", tmp_path)
    (pending,) = _pending(world)  # the killed run's version, never decided
    killed_row = world.store.retrain_history(world.name)[0]
    assert killed_row["outcome"] == "running" and killed_row["version"] == pending
    assert world.store.get_lock(lock_name(world.name)) is not None  # nobody released it
    assert world.registry.get_alias(world.name, CHAMPION) == world.champion

    out = run_retrain(world.settings, model_name=world.name, store=world.store)  # starts clean
    assert out.outcome == "promoted", out.reason
    assert any("took over the lock" in note for note in out.recovered)
    assert any(f"version {pending}: abandoned" in note for note in out.recovered)
    assert _pending(world) == []
    assert world.registry.get(world.name, pending).tags["tastebud.retrain"] == "abandoned"
    # the decision log: every version is decided or abandoned, and the champion is the last promotion
    decisions = read_decisions(world.settings, world.name)
    assert {d.version: d.action for d in decisions} == {world.champion: "promoted", pending: "abandoned",
                                                        out.version: "promoted"}  # fmt: skip
    assert decisions[1].trigger == "schedule"  # the killed run's trigger
    assert world.registry.get_alias(world.name, CHAMPION) == out.version
    history = {r["id"]: r for r in world.store.retrain_history(world.name)}
    assert history[killed_row["id"]]["outcome"] == "killed"
    assert "abandoned" in history[killed_row["id"]]["reason"] and history[out.retrain_id]["outcome"] == "promoted"
    leftovers = [p.name for p in (world.settings.bundles_dir / world.name).iterdir() if p.name.startswith(".")]
    assert leftovers == []


@pytest.mark.slow
def test_sigkill_after_the_decision_is_logged_is_completed_by_the_next_run(world: World, tmp_path: Path) -> None:
    _run_child_until(world, "decision_logged", tmp_path)
    (pending,) = _pending(world)
    decision = read_decisions(world.settings, world.name)[-1]
    assert (decision.version, decision.action) == (pending, "promoted")
    assert world.registry.get_alias(world.name, CHAMPION) == world.champion  # killed before the alias moved

    out = run_retrain(world.settings, model_name=world.name, store=world.store)
    assert out.outcome == "no_new_data"  # the killed run's version learned every event
    assert any("completed its 'promoted' decision" in note for note in out.recovered)
    assert world.registry.get_alias(world.name, CHAMPION) == pending
    assert world.registry.get(world.name, pending).tags["tastebud.retrain"] == "promoted"
    assert _pending(world) == []
    assert [d.action for d in read_decisions(world.settings, world.name)] == ["promoted", "promoted"]


# ---------------------------------------------------------------------------------------------------- an honest gate
@pytest.fixture(scope="module")
def als_world(registry_settings: Settings, tmp_path_factory: pytest.TempPathFactory, world_frames: Any) -> World:
    params = {"factors": 16, "iterations": 15, "regularization": 0.05}
    return make_world(
        registry_settings, tmp_path_factory.mktemp("als"), world_frames, "rt-als", model="als", params=params
    )


def test_a_degenerate_candidate_is_refused(als_world: World) -> None:
    w = als_world
    out = run_retrain(w.settings, model_name=w.name, store=w.store, params={"factors": 1, "iterations": 1})
    assert out.outcome == "refused", out.reason
    assert out.gate["candidate"]["ndcg_at_10"] < out.gate["champion"]["ndcg_at_10"]
    assert "not enough" in out.reason and w.registry.get_alias(w.name, CHAMPION) == w.champion
    assert w.registry.get(w.name, out.version).tags["tastebud.retrain"] == "refused"
    assert read_decisions(w.settings, w.name)[-1].action == "refused"
    # promoting it by hand goes through the same numbers: its comparison with this champion, as recorded
    assert out.version is not None
    again = promote(w.registry, w.name, out.version, settings=w.settings, actor="test")
    assert not again.promoted and again.gate.candidate["ndcg_at_10"] == out.gate["candidate"]["ndcg_at_10"]


def test_the_champion_is_scored_with_fold_in_as_serving_would(als_world: World) -> None:
    w = als_world
    manifest = w.registry.manifest(w.registry.get(w.name, w.champion))
    merged = load_merged({"parent": manifest["extra"]["data_spec"], "events": {"after_id": 0,
                          "through_id": w.store.last_event_id()}}, w.settings, store=w.store)  # fmt: skip
    holdout = select_holdout(merged, 0.2)
    champion = load_bundle(w.registry.bundle_path(w.registry.get(w.name, w.champion)))
    popular = champion.fallback["popular"]
    folded = score_holdout(champion.model, popular, holdout)
    plain = score_holdout(champion.model, popular, holdout, overlays=False)
    assert champion.model.users_ is not None
    known = set(champion.model.users_.to_list())
    new_with_history = [u for u in holdout.users if u not in known and u in holdout.overlays]
    assert new_with_history and folded.sources["fold_in"] == len(holdout.overlays)
    lookup = holdout.test.items.lookup
    for user in new_with_history[:5]:  # a brand-new user gets the champion's fold-in of their earlier events
        items, values = holdout.overlays[user]
        keep = [i for i, item in enumerate(items) if item in champion.model.items_.lookup]  # type: ignore[union-attr]
        expected = champion.model.recommend_history([items[i] for i in keep], values[keep], 10).item_ids[0]
        row = folded.recs[holdout.users.index(user)]
        assert [lookup[i] for i in expected] == row[: len(expected)].tolist()
        plain_row = plain.recs[holdout.users.index(user)]  # without fold-in: the popular list
        assert plain_row.tolist() == [lookup[i] for i in popular.popular_items(10).item_ids[0]]  # type: ignore[attr-defined]
    # without fold-in the champion would look worse than it serves: the gate would favour any candidate
    assert folded.metrics["ndcg_at_10"] > plain.metrics["ndcg_at_10"]
    # the holdout holds only first-time pairs from events, newest by time
    assert holdout.test.n_interactions == int(np.ceil(0.2 * (merged.from_events & merged.novel).sum()))
    eligible = merged.dataset.to_frame().filter(pl.Series(merged.from_events & merged.novel))
    held = holdout.test.to_frame().select("user_id", "item_id", pl.lit(True).alias("held"))
    eligible = eligible.join(held, on=["user_id", "item_id"], how="left")
    assert eligible["held"].sum() == holdout.test.n_interactions  # every held-out pair is an eligible one
    assert eligible.filter(pl.col("held").is_null())["timestamp"].max() <= holdout.test.to_frame()["timestamp"].min()


# ---------------------------------------------------------------------------------------------------- the command
def test_cli_retrain_run_and_history(
    world_frames: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tastebud.cli import main

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    home = tmp_path / "home"
    w = make_world(build_settings(home=home), tmp_path, world_frames, "rt-cli")
    # the CLI's store is the home's own: move the world's events there
    with create_store(build_settings(home=home)) as home_store:
        home_store.init_schema()
        home_store.write_events(
            [{k: e[k] for k in ("event_id", "user_id", "item_id", "kind", "rating", "value", "timestamp")}
             for e in w.store.events_after(0)]
        )  # fmt: skip

    def run(*args: str) -> tuple[int, str, str]:
        code = main(["--home", str(home), "retrain", *args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    code, out, err = run("run", "--model-name", "rt-cli", "--trigger", "manual")
    assert code == 0, out + err
    assert "promoted rt-cli version 2" in out and "ndcg_at_10" in out and "fold-in" in out
    assert "s fitting" in out and "new events" in out
    code, out, err = run("run", "--model-name", "rt-cli")
    assert code == 0 and "no_new_data" in out
    with create_store(build_settings(home=home)) as home_store:
        assert home_store.acquire_lock(lock_name("rt-cli"), f"{os.uname().nodename}:{os.getpid()}:other", 600)
    code, out, err = run("run", "--model-name", "rt-cli", "--force")
    assert code == 1 and out == "" and err.count("\n") == 1 and "retrain busy" in err and "Traceback" not in err
    code, out, err = run("run", "--model-name", "rt-missing")
    assert code == 1 and "retrain failed" in err and "has no champion" in err
    code, out, err = run("history", "--model-name", "rt-cli")
    assert code == 0
    for word in ("promoted", "no_new_data", "busy", "0.", "manual"):
        assert word in out
    code, out, err = run("history", "--model-name", "rt-cli", "--json", "--limit", "1")
    assert code == 0 and json.loads(out)[0]["outcome"] == "busy"
    code, out, err = run("run", "--help")
    assert code == 0 and "holdout" in out and "Exit code" in out


def test_outcome_to_dict_is_json() -> None:
    from datetime import UTC, datetime

    out = RetrainOutcome("busy", "held", "manual", "m", datetime(2026, 1, 1, tzinfo=UTC))
    assert json.loads(json.dumps(out.to_dict()))["started_at"] == "2026-01-01T00:00:00+00:00"
    assert not out.ok


def test_retrain_with_tune_runs_the_trials_and_registers_the_tuned_parameters(world: World) -> None:
    """``--tune N``: N Optuna trials on the pre-holdout data, their best parameters in the registered version."""
    w = world
    champion_params = w.registry.manifest(w.registry.get(w.name, w.champion))["model"]["params"]
    out = run_retrain(w.settings, model_name=w.name, store=w.store, tune=3, seed=5)
    assert out.outcome in {"promoted", "refused"}, out.reason
    assert out.version is not None and out.timings["tune_s"] > 0
    params = w.registry.manifest(w.registry.get(w.name, out.version))["model"]["params"]
    assert params["l2"] != champion_params["l2"]  # the champion's 500 was replaced by a trial's value
    assert 10.0 <= params["l2"] <= 2000.0  # EASE's declared search space
    studies = list((w.settings.runs_dir / "retrain" / w.name).rglob("study.db"))
    assert len(studies) == 1
