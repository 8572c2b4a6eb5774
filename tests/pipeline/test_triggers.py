"""Retrain triggers: volume (events and new users), drift (planted and not), schedule, and the checker on a store."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from tastebud.config import Settings, build_settings
from tastebud.data.dataset import Dataset
from tastebud.data.synthetic import generate_synthetic
from tastebud.errors import ParameterError
from tastebud.models import create
from tastebud.pipeline.schedule import parse_cron
from tastebud.pipeline.train import data_spec
from tastebud.pipeline.triggers import (
    DEFAULT_DRIFT_SIGNALS,
    TriggerChecker,
    TriggerConfig,
    check_drift,
    check_manual,
    check_schedule,
    check_volume,
    parse_drift_signals,
)
from tastebud.registry.bundle import write_bundle
from tastebud.store import create_store

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def data() -> Dataset:
    """120 users x 60 items, 3,000 ratings with genres (the champion's training data)."""
    return generate_synthetic(120, 60, 3000, seed=7, name="trig")


@pytest.fixture(scope="module")
def reference(data: Dataset) -> pl.DataFrame:
    return data.to_frame()


def sample(frame: pl.DataFrame, n: int, seed: int = 0) -> pl.DataFrame:
    """``n`` events drawn from ``frame`` (the reference distribution)."""
    rng = np.random.default_rng(seed)
    return frame[rng.choice(frame.height, n, replace=True).tolist()]


def user_events(users: list[str], n: int) -> pl.DataFrame:
    return pl.DataFrame({"user_id": [users[i % len(users)] for i in range(n)], "item_id": ["i"] * n})


# --- volume -------------------------------------------------------------------------------------------------------


def test_volume_fires_at_n_events_and_not_at_n_minus_one() -> None:
    known = [f"u{i}" for i in range(10)]
    at = check_volume(user_events(known, 100), known_users=known, champion_users=10, min_events=100)
    below = check_volume(user_events(known, 99), known_users=known, champion_users=10, min_events=100)
    assert at.fired and at.trigger == "volume" and at.numbers["new_events"] == 100
    assert "100 new events" in at.reason
    assert not below.fired and below.numbers["new_events"] == 99 and "below" in below.reason


def test_volume_new_users_percentage_of_the_champions_users() -> None:
    known = [f"u{i}" for i in range(200)]
    # 10 new users among known ones: 10 / 200 = 5 %.
    events = user_events(known[:50] + [f"new{i}" for i in range(10)], 600)
    at = check_volume(events, known_users=known, champion_users=200, min_new_users_pct=5.0)
    above = check_volume(events, known_users=known, champion_users=200, min_new_users_pct=5.5)
    assert at.fired and at.numbers["new_users"] == 10 and at.numbers["new_users_pct"] == pytest.approx(5.0)
    assert not above.fired and "5.00%" in above.reason
    # Known users only: never fires on the percentage, however many events.
    only_known = check_volume(user_events(known, 5000), known_users=known, champion_users=200, min_new_users_pct=0.1)
    assert not only_known.fired and only_known.numbers["new_users"] == 0


def test_volume_either_threshold_fires_and_none_set_never_does() -> None:
    known = ["a", "b"]
    events = user_events(["a", "z"], 4)
    both = check_volume(events, known_users=known, champion_users=2, min_events=1000, min_new_users_pct=50)
    assert both.fired and "new users" in both.reason and "new events" not in both.reason
    unset = check_volume(events, known_users=known, champion_users=2)
    assert not unset.fired and unset.reason == "no volume threshold set"


# --- drift --------------------------------------------------------------------------------------------------------


def test_drift_does_not_fire_on_events_from_the_reference_distribution(data: Dataset, reference: pl.DataFrame) -> None:
    check = check_drift(reference, sample(reference, 1500), item_meta=data.item_meta)
    assert not check.fired, check.reason
    assert set(check.numbers["psi"]) == set(DEFAULT_DRIFT_SIGNALS)
    assert all(v < 0.1 for v in check.numbers["psi"].values()), check.numbers


def test_drift_fires_on_planted_rating_shift(data: Dataset, reference: pl.DataFrame) -> None:
    assert reference["rating"].n_unique() > 2  # the reference has mixed ratings
    planted = sample(reference, 1500).with_columns(pl.lit(1.0).alias("rating"))
    check = check_drift(reference, planted, item_meta=data.item_meta)
    assert check.fired and check.trigger == "drift"
    assert check.numbers["levels"]["rating"] == "alert" and "rating PSI" in check.reason


def test_drift_fires_on_planted_popularity_shift(reference: pl.DataFrame) -> None:
    counts = reference.group_by("item_id").len().sort("len")
    rare = counts["item_id"].head(10).to_list()  # the least popular items get all the traffic
    shifted = sample(reference.filter(pl.col("item_id").is_in(rare)), 1500)
    check = check_drift(reference, shifted, signals=["item_popularity"])
    assert check.fired and check.numbers["levels"] == {"item_popularity": "alert"}


def test_user_activity_is_excluded_by_default(reference: pl.DataFrame) -> None:
    # The same taste from users the reference never saw: user activity alerts, nothing else moves.
    newcomers = sample(reference, 1500).with_columns(("new-" + pl.col("user_id")).alias("user_id"))
    assert not check_drift(reference, newcomers).fired
    watched = check_drift(reference, newcomers, signals=[*DEFAULT_DRIFT_SIGNALS, "user_activity"])
    assert watched.fired and "user_activity" in watched.reason


def test_drift_needs_enough_events(reference: pl.DataFrame) -> None:
    planted = sample(reference, 150).with_columns(pl.lit(1.0).alias("rating"))
    check = check_drift(reference, planted, min_events=200)
    assert not check.fired and "needs 200" in check.reason
    assert check_drift(reference, planted, min_events=100).fired


def test_drift_signals_are_validated() -> None:
    assert parse_drift_signals(None) == DEFAULT_DRIFT_SIGNALS
    assert parse_drift_signals("rating, genre_mix,rating") == ("rating", "genre_mix")
    with pytest.raises(ParameterError, match="ids are keys"):
        parse_drift_signals("user_id")
    with pytest.raises(ParameterError, match="unknown"):
        parse_drift_signals(["score"])
    with pytest.raises(ParameterError, match="none given"):
        parse_drift_signals(" , ")


# --- schedule and manual ------------------------------------------------------------------------------------------


def test_schedule_fires_once_the_interval_passed() -> None:
    every = timedelta(hours=6)
    assert check_schedule(None, every=every, now=NOW).fired
    assert check_schedule(NOW - every, every=every, now=NOW).fired
    early = check_schedule(NOW - every + timedelta(minutes=1), every=every, now=NOW)
    assert not early.fired and "next due" in early.reason


def test_schedule_with_cron_fires_when_a_fire_time_passed_since_the_last_success() -> None:
    cron = parse_cron("0 */6 * * *")
    assert check_schedule(NOW.replace(hour=5, minute=59), cron=cron, now=NOW.replace(hour=6, minute=0, second=1)).fired
    assert not check_schedule(NOW.replace(hour=6, minute=0, second=30), cron=cron, now=NOW.replace(hour=11)).fired
    with pytest.raises(ParameterError):
        check_schedule(None, now=NOW)


def test_manual_always_fires() -> None:
    assert check_manual().fired and check_manual().trigger == "manual"


# --- the checker on a registry and a store ------------------------------------------------------------------------


@dataclass
class FakeVersion:
    name: str
    version: int
    source: str


class FakeRegistry:
    """A champion alias over bundle directories (what the checker reads of the registry)."""

    def __init__(self, bundles: dict[int, Path], champion: int) -> None:
        self.bundles, self.champion = bundles, champion

    def get_alias(self, name: str, alias: str) -> int | None:
        return self.champion if alias == "champion" else None

    def get(self, name: str, version: int) -> FakeVersion:
        return FakeVersion(name, version, str(self.bundles[version]))

    def bundle_path(self, mv: FakeVersion) -> Path:
        return Path(mv.source)

    def manifest(self, mv: FakeVersion) -> dict[str, Any]:
        from tastebud.registry.bundle import read_manifest

        return read_manifest(Path(mv.source))


def champion_bundle(data: Dataset, path: Path, cutoff: int) -> Path:
    extra = {"data_spec": data_spec(data), "events_through_id": cutoff}
    return write_bundle(create("popular").fit(data), path, train=data, metrics={"ndcg_at_10": 0.1}, extra=extra)


def events_of(frame: pl.DataFrame, prefix: str) -> list[dict[str, Any]]:
    return [
        {"event_id": f"{prefix}{i}", "user_id": u, "item_id": it, "kind": "rating", "rating": float(r),
         "timestamp": NOW - timedelta(hours=1) + timedelta(seconds=i)}
        for i, (u, it, r) in enumerate(frame.select("user_id", "item_id", "rating").iter_rows())
    ]  # fmt: skip


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return build_settings(home=tmp_path / "home")


def test_checker_counts_events_after_the_champions_cutoff(
    settings: Settings, data: Dataset, reference: pl.DataFrame, tmp_path: Path
) -> None:
    with create_store(settings) as store:
        store.init_schema()
        store.write_events(events_of(sample(reference, 40, seed=1), "old"))  # ids 1..40: the champion saw them
        registry = FakeRegistry({1: champion_bundle(data, tmp_path / "b1", cutoff=40)}, champion=1)
        checker = TriggerChecker(settings, "m", TriggerConfig(volume_events=30), registry=registry, store=store)
        store.write_events(events_of(sample(reference, 29, seed=2), "new"))
        (below,) = checker.check()
        assert not below.fired and below.numbers["new_events"] == 29 and below.numbers["since_event_id"] == 40
        store.write_events(events_of(sample(reference, 1, seed=3), "one-more"))
        (at,) = checker.check()
        assert at.fired and at.numbers["new_events"] == 30 and checker.last_event_id == 70


def test_checker_counts_new_users_against_the_bundles_users(
    settings: Settings, data: Dataset, reference: pl.DataFrame, tmp_path: Path
) -> None:
    registry = FakeRegistry({1: champion_bundle(data, tmp_path / "b1", cutoff=0)}, champion=1)
    newcomers = sample(reference, 12).with_columns(pl.Series("user_id", [f"n{i}" for i in range(12)]))
    with create_store(settings) as store:
        store.init_schema()
        store.write_events(events_of(sample(reference, 100, seed=4), "known") + events_of(newcomers, "new"))
        config = TriggerConfig(volume_new_users_pct=10.0)
        (check,) = TriggerChecker(settings, "m", config, registry=registry, store=store).check()
    assert check.numbers["champion_users"] == data.n_users == 120
    assert check.numbers["new_users"] == 12 and check.fired  # 12 / 120 = 10 %


def test_checker_drift_rebuilds_the_champions_data(
    settings: Settings, data: Dataset, reference: pl.DataFrame, tmp_path: Path
) -> None:
    registry = FakeRegistry({1: champion_bundle(data, tmp_path / "b1", cutoff=0)}, champion=1)
    config = TriggerConfig(drift=True, drift_min_events=300)
    with create_store(settings) as store:
        store.init_schema()
        checker = TriggerChecker(settings, "m", config, registry=registry, store=store)
        store.write_events(events_of(sample(reference, 400, seed=5), "same"))
        (same,) = checker.check()
        assert not same.fired and same.numbers["events"] == 400, same.reason
        store.write_events(events_of(sample(reference, 2000, seed=6).with_columns(pl.lit(1.0).alias("rating")), "ones"))
        (planted,) = checker.check()
    assert planted.fired and planted.numbers["levels"]["rating"] == "alert"


def test_checker_after_an_attempt_counts_only_later_events_until_the_champion_changes(
    settings: Settings, data: Dataset, reference: pl.DataFrame, tmp_path: Path
) -> None:
    bundles = {1: champion_bundle(data, tmp_path / "b1", cutoff=0)}
    registry = FakeRegistry(bundles, champion=1)
    with create_store(settings) as store:
        store.init_schema()
        store.write_events(events_of(sample(reference, 50, seed=7), "a"))
        checker = TriggerChecker(settings, "m", TriggerConfig(volume_events=50), registry=registry, store=store)
        assert checker.check()[0].fired
        checker.note_attempt()  # the retrain left champion 1 in place (refused)
        again = TriggerChecker(settings, "m", TriggerConfig(volume_events=50), registry=registry, store=store)
        (after,) = again.check()  # a new process reads the attempt from the store
        assert not after.fired and after.numbers["since_event_id"] == 50 and "last attempt" in after.reason
        store.write_events(events_of(sample(reference, 50, seed=8), "b"))
        assert again.check()[0].fired
        # A new champion trained through id 60 resets the count to its own cutoff.
        bundles[2] = champion_bundle(data, tmp_path / "b2", cutoff=60)
        registry.champion = 2
        (fresh,) = again.check()
    assert fresh.numbers["since_event_id"] == 60 and fresh.numbers["new_events"] == 40 and not fresh.fired


def test_the_last_attempt_is_shared_through_the_store_and_an_old_state_file_is_imported(
    settings: Settings, data: Dataset, reference: pl.DataFrame, tmp_path: Path
) -> None:
    """Schedulers on two machines (two homes, one store) share what was tried; a triggers.json of an earlier version
    is imported once."""
    import json

    registry = FakeRegistry({1: champion_bundle(data, tmp_path / "b1", cutoff=0)}, champion=1)
    other_home = build_settings(home=tmp_path / "other-home", store={"url": settings.store_url})
    legacy = settings.home / "pipeline" / "triggers.json"
    legacy.parent.mkdir(parents=True)
    legacy.write_text(json.dumps({"model_name": "m", "champion_version": 1, "through_id": 30, "at": "x"}))
    with create_store(settings) as store:
        store.init_schema()
        store.write_events(events_of(sample(reference, 50, seed=7), "a"))
        (check,) = TriggerChecker(settings, "m", TriggerConfig(volume_events=10), registry=registry).check()
        assert check.numbers["since_event_id"] == 30 and check.numbers["new_events"] == 20
        assert not legacy.exists() and legacy.with_name("triggers.json.imported").is_file()
        checker = TriggerChecker(settings, "m", TriggerConfig(volume_events=10), registry=registry)
        checker.check()
        checker.note_attempt()
        assert store.get_trigger_state("m")["through_id"] == 50  # type: ignore[index]
    (elsewhere,) = TriggerChecker(other_home, "m", TriggerConfig(volume_events=10), registry=registry).check()
    assert elsewhere.numbers["since_event_id"] == 50 and not elsewhere.fired


def test_checker_without_a_champion_does_not_fire(settings: Settings) -> None:
    registry = FakeRegistry({}, champion=None)  # type: ignore[arg-type]
    checks = TriggerChecker(settings, "m", TriggerConfig(volume_events=1, drift=True), registry=registry).check()
    assert [c.trigger for c in checks] == ["volume", "drift"]
    assert not any(c.fired for c in checks) and "no champion" in checks[0].reason


def test_trigger_config_is_validated() -> None:
    with pytest.raises(ParameterError):
        TriggerConfig(volume_events=0)
    with pytest.raises(ParameterError):
        TriggerConfig(volume_new_users_pct=0)
    with pytest.raises(ParameterError):
        TriggerConfig(drift=True, drift_signals=("item_id",))
    assert not TriggerConfig().any and TriggerConfig(drift=True).any
