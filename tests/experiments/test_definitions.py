"""Experiments as data: validation, the life cycle, refused starts, overlaps and concurrent starts."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from tastebud.config import Settings
from tastebud.errors import BundleError, ExperimentError
from tastebud.experiments import (
    Experiment,
    ExperimentSpec,
    create_experiment,
    experiment_changes,
    get_experiment,
    list_experiments,
    parse_range,
    parse_variant,
    parse_weights,
    running_experiments,
    start_experiment,
    stop_experiment,
)
from tastebud.store import Store, create_store

#: The default model of the ``settings`` fixture, and the fake registry's model; the real registry's model.
MODEL, REAL_MODEL = "m", "exp-model"


def ok_loader(registry: Any, mv: Any) -> None:
    """A start check that accepts every version (the fake registry has no bundles)."""


def spec(name: str = "exp", **fields: Any) -> dict[str, Any]:
    """A valid A/B spec: control=champion, treatment=challenger (override any field)."""
    return {
        "name": name,
        "variants": [{"name": "control", "ref": "champion"}, {"name": "treatment", "ref": "challenger"}],
        **fields,
    }


def create(store: Store, registry: Any, settings: Settings, name: str = "exp", **fields: Any) -> Experiment:
    return create_experiment(store, registry, settings, spec(name, **fields), actor="ana")


def start(store: Store, registry: Any, settings: Settings, name: str = "exp", actor: str = "bo") -> Experiment:
    return start_experiment(store, registry, settings, name, actor, loader=ok_loader)


# --- create ---------------------------------------------------------------------------------------------------


def test_create_fills_defaults_draws_a_salt_and_records_the_change(
    store: Store, registry: Any, settings: Settings
) -> None:
    experiment = create(store, registry, settings)
    assert experiment.model_name == MODEL  # settings.serving.model_name
    assert experiment.weights == (50.0, 50.0) and experiment.kind == "ab" and experiment.status == "draft"
    assert experiment.holdout == 0 and experiment.traffic_range == (0, 100) and experiment.traffic == 100
    assert experiment.layer == "default" and experiment.primary_metric == "hit_rate"
    assert experiment.guardrails == ("p95_latency", "error_ratio", "fallback_rate", "coverage")
    assert (experiment.mde, experiment.alpha, experiment.power, experiment.horizon_s) == (0.02, 0.05, 0.8, 86400)
    assert len(experiment.salt) == 32 and int(experiment.salt, 16) >= 0
    assert experiment.created_by == "ana" and experiment.versions == {}
    assert get_experiment(store, "exp") == experiment  # the stored row reads back as the same experiment
    other = create(store, registry, settings, "exp-2")
    assert other.salt != experiment.salt
    changes = experiment_changes(store, "exp")
    assert [(c["action"], c["actor"]) for c in changes] == [("created", "ana")]
    assert changes[0]["details"]["variants"][1] == {"name": "treatment", "ref": "challenger"}


def test_three_equal_weights_and_explicit_fields(store: Store, registry: Any, settings: Settings) -> None:
    variants = [{"name": n, "ref": r} for n, r in (("a", "champion"), ("b", "challenger"), ("c", "3"))]
    experiment = create(
        store, registry, settings, variants=variants, holdout=10, layer="ranking", traffic_range=(20, 45),
        secondary_metrics=["click_rate", "plays"], guardrails=["coverage"], horizon_s=3600, min_lift=0.01,
    )  # fmt: skip
    assert sum(experiment.weights) == pytest.approx(100) and len(set(experiment.weights)) == 1
    assert experiment.traffic == 25 and experiment.guardrails == ("coverage",)
    assert get_experiment(store, "exp") == experiment
    spec_only = ExperimentSpec.model_validate(spec("x", weights=[90, 10]))
    assert spec_only.model_name is None and spec_only.variant("treatment").ref == "challenger"
    from_spec = create_experiment(store, registry, settings, spec_only, "ana")
    assert from_spec.weights == (90, 10) and from_spec.model_name == MODEL
    copied = create_experiment(store, registry, settings, from_spec.model_copy(update={"name": "y"}), "ana")
    assert copied.salt != from_spec.salt and copied.weights == from_spec.weights  # a stored one as a template
    with pytest.raises(ExperimentError, match="has no variant 'ghost'"):
        spec_only.variant("ghost")


def _variants(*pairs: str) -> list[dict[str, str]]:
    return [{"name": p.split("=")[0], "ref": p.split("=")[1]} for p in pairs]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"weights": [60, 50]}, "weights must sum to 100, got 60,50"),
        ({"weights": [100]}, "1 weight(s) given for 2 variants"),
        ({"weights": [100, 0]}, "each weight must be a percentage above 0"),
        ({"variants": _variants("only=champion")}, "needs at least 2 variant(s), got 1"),
        ({"kind": "interleaving", "variants": _variants("a=1", "b=2", "c=3")}, "exactly 2 variants, got 3"),
        ({"kind": "canary", "variants": []}, "needs at least 1 variant(s), got 0"),
        ({"variants": _variants("a=champion", "a=challenger")}, "variant names must be unique; repeated: a"),
        ({"name": "Bad Name"}, "name: 'Bad Name' is not allowed"),
        ({"name": "x" * 65}, "is not allowed"),
        ({"variants": _variants("a b=champion", "c=challenger")}, "variants.0.name: 'a b' is not allowed"),
        ({"variants": _variants("a=champion", "b=nope")}, "variant 'b': model 'm' has no alias 'nope'"),
        ({"variants": _variants("a=champion", "b=7")}, "variant 'b': model 'm' has no version 7"),
        ({"model_name": "unregistered"}, "model 'unregistered' has no alias 'champion'"),
        ({"kind": "bandit"}, "kind: Input should be 'ab', 'interleaving' or 'canary'"),
        ({"primary_metric": "ndcg"}, "unknown metric 'ndcg'"),
        ({"secondary_metrics": ["hit_rate"]}, "must not repeat the primary metric"),
        ({"guardrails": ["p99_latency"]}, "unknown guardrail(s) p99_latency"),
        ({"traffic_range": (60, 40)}, "traffic range must satisfy 0 <= start < end <= 100, got 60-40"),
        ({"traffic_range": (0, 120)}, "got 0-120"),
        ({"holdout": 100}, "holdout: Input should be less than 100"),
        ({"layer": "Layer 1"}, "layer: 'Layer 1' is not allowed"),
        ({"mde": 0}, "mde: Input should be greater than 0"),
        ({"alpha": 1}, "alpha: Input should be less than 1"),
        ({"power": 0}, "power: Input should be greater than 0"),
        ({"horizon_s": -1}, "horizon_s: Input should be greater than 0"),
        ({"min_lift": -0.1}, "min_lift: Input should be greater than or equal to 0"),
        ({"colour": "red"}, "colour: Extra inputs are not permitted"),
    ],
)
def test_invalid_specs_are_refused_with_one_clear_line(
    store: Store, registry: Any, settings: Settings, fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(ExperimentError) as info:
        create(store, registry, settings, **fields)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert store.list_experiments() == [] and store.experiment_changes() == []


def test_names_are_unique(store: Store, registry: Any, settings: Settings) -> None:
    create(store, registry, settings)
    with pytest.raises(ExperimentError, match=r"experiment 'exp' exists already \(draft, created by ana\)"):
        create(store, registry, settings, weights=[90, 10])
    assert get_experiment(store, "exp").weights == (50, 50)


def test_parsers_of_what_people_type() -> None:
    assert parse_variant("control=champion").ref == "champion"
    assert parse_variant(" t = 3 ").version == 3 and parse_variant("t=champion").version is None
    for bad in ("control", "=champion", "control=", "a b=champion"):
        with pytest.raises(ExperimentError, match="variant"):
            parse_variant(bad)
    assert parse_weights("50,25,25") == (50, 25, 25)
    with pytest.raises(ExperimentError, match="expected percentages"):
        parse_weights("50;50")
    assert parse_range("0-100") == (0, 100) and parse_range(" 12.5 - 40 ") == (12.5, 40)
    with pytest.raises(ExperimentError, match="expected START-END"):
        parse_range("10")


# --- start and stop -------------------------------------------------------------------------------------------


def test_life_cycle_pins_versions_and_records_every_change(store: Store, registry: Any, settings: Settings) -> None:
    create(store, registry, settings)
    assert running_experiments(store, MODEL) == []
    started = start(store, registry, settings)
    assert started.status == "running" and started.started_at is not None
    assert started.versions == {"control": 1, "treatment": 2}
    assert running_experiments(store, MODEL) == [started] and running_experiments(store, "other") == []
    with pytest.raises(ExperimentError, match="not started: it is running already"):
        start(store, registry, settings)
    stopped = stop_experiment(store, "exp", "cy", reason="enough data")
    assert stopped.status == "stopped" and stopped.stopped_at is not None and stopped.versions == started.versions
    assert running_experiments(store, MODEL) == []
    with pytest.raises(ExperimentError, match="is stopped already"):
        stop_experiment(store, "exp", "cy")
    with pytest.raises(ExperimentError, match=r"it is stopped .*create a new experiment"):
        start(store, registry, settings)
    changes = experiment_changes(store, "exp")
    assert [(c["action"], c["actor"]) for c in changes] == [
        ("created", "ana"), ("started", "bo"), ("start_refused", "bo"), ("stopped", "cy"), ("start_refused", "bo"),
    ]  # fmt: skip
    assert changes[1]["details"] == {"versions": {"control": 1, "treatment": 2}}
    assert changes[3]["details"] == {"was": "running", "reason": "enough data"}
    assert [e.name for e in list_experiments(store, "stopped")] == ["exp"]
    with pytest.raises(ExperimentError, match="unknown status"):
        list_experiments(store, "paused")


def test_unknown_experiments_are_named(store: Store, registry: Any, settings: Settings) -> None:
    for call in (
        lambda: start(store, registry, settings, "ghost"),
        lambda: stop_experiment(store, "ghost", "cy"),
        lambda: get_experiment(store, "ghost"),
    ):
        with pytest.raises(ExperimentError, match="no experiment named 'ghost'"):
            call()


def test_a_draft_can_be_retired(store: Store, registry: Any, settings: Settings) -> None:
    create(store, registry, settings)
    retired = stop_experiment(store, "exp", "cy")
    assert retired.status == "stopped" and retired.started_at is None


def test_start_is_refused_when_an_alias_disappeared(store: Store, registry: Any, settings: Settings) -> None:
    create(store, registry, settings)
    del registry.aliases[MODEL]["challenger"]
    with pytest.raises(ExperimentError, match=r"variant 'treatment' .*has no alias 'challenger'"):
        start(store, registry, settings)
    assert get_experiment(store, "exp").status == "draft"
    refusal = experiment_changes(store, "exp")[-1]
    assert refusal["action"] == "start_refused" and refusal["details"]["variant"] == "treatment"


def test_a_failing_loader_refuses_the_start(store: Store, registry: Any, settings: Settings) -> None:
    create(store, registry, settings)
    seen: list[int] = []

    def loader(reg: Any, mv: Any) -> None:
        seen.append(mv.version)
        if mv.version == 2:
            raise BundleError("model/arrays.npy: checksum mismatch")

    with pytest.raises(ExperimentError, match="cannot be served: model/arrays\\.npy: checksum mismatch"):
        start_experiment(store, registry, settings, "exp", "bo", loader=loader)
    assert seen == [1, 2] and get_experiment(store, "exp").status == "draft"


# --- the real registry: bundles verified before anything runs --------------------------------------------------


def test_start_refused_for_a_corrupt_bundle_leaves_a_draft(tmp_path: Path, real_settings: Settings) -> None:
    from tastebud.registry import ModelRegistry

    registry = ModelRegistry(real_settings)
    with create_store(url=f"sqlite:///{tmp_path / 'store.db'}") as store:
        store.init_schema()
        variants = _variants("control=champion", "treatment=3")  # version 3's bundle has a flipped byte
        create_experiment(store, registry, real_settings, {"name": "corrupt", "variants": variants}, "ana")
        with pytest.raises(ExperimentError) as info:
            start_experiment(store, registry, real_settings, "corrupt", "bo")
        message = str(info.value)
        assert "experiment 'corrupt' not started: variant 'treatment' (3) cannot be served" in message
        assert "checksum" in message or "sha256" in message
        assert get_experiment(store, "corrupt").status == "draft"
        assert running_experiments(store, REAL_MODEL) == []
        refusal = experiment_changes(store, "corrupt")[-1]
        assert refusal["action"] == "start_refused" and refusal["actor"] == "bo"
        assert refusal["details"]["variant"] == "treatment" and "cannot be served" in refusal["details"]["reason"]

        create_experiment(store, registry, real_settings, {"name": "sound", "variants": _variants(
            "control=champion", "treatment=challenger")}, "ana")  # fmt: skip
        started = start_experiment(store, registry, real_settings, "sound", "bo")
        assert started.status == "running" and started.versions == {"control": 1, "treatment": 2}


def test_create_checks_refs_in_the_real_registry(tmp_path: Path, real_settings: Settings) -> None:
    from tastebud.registry import ModelRegistry

    registry = ModelRegistry(real_settings)
    with create_store(url=f"sqlite:///{tmp_path / 'store.db'}") as store:
        store.init_schema()
        for ref, message in (("9", "has no version 9"), ("staging", "has no alias 'staging'")):
            variants = _variants("control=champion", f"treatment={ref}")
            with pytest.raises(ExperimentError, match=message):
                create_experiment(store, registry, real_settings, {"name": "refs", "variants": variants}, "ana")


# --- overlaps -------------------------------------------------------------------------------------------------


def test_overlapping_experiments_of_one_model_and_layer_do_not_run_together(
    store: Store, registry: Any, settings: Settings
) -> None:
    create(store, registry, settings, "first", traffic_range=(0, 50))
    create(store, registry, settings, "second", traffic_range=(40, 100))
    create(store, registry, settings, "beside", traffic_range=(50, 100))
    create(store, registry, settings, "elsewhere", layer="ranking")
    start(store, registry, settings, "first")
    with pytest.raises(ExperimentError) as info:
        start(store, registry, settings, "second")
    assert str(info.value) == (
        "experiment 'second' not started: its traffic 40-100 overlaps running experiment(s) 'first' (traffic 0-50) "
        "of model 'm' in layer 'default'; stop them, or use another --layer or a --traffic-range that does not overlap"
    )
    assert get_experiment(store, "second").status == "draft"
    assert experiment_changes(store, "second")[-1]["action"] == "start_refused"
    start(store, registry, settings, "beside")  # [0, 50) and [50, 100) are disjoint
    start(store, registry, settings, "elsewhere")  # another layer
    assert [e.name for e in running_experiments(store, MODEL)] == ["first", "beside", "elsewhere"]
    stop_experiment(store, "first", "cy")
    stop_experiment(store, "beside", "cy")
    assert start(store, registry, settings, "second").status == "running"


def test_other_models_never_overlap(store: Store, registry: Any, settings: Settings) -> None:
    registry.versions["n"] = {1}
    registry.aliases["n"] = {"champion": 1}
    create(store, registry, settings, "on-m")
    create(store, registry, settings, "on-n", model_name="n", variants=_variants("a=champion", "b=1"))
    start(store, registry, settings, "on-m")
    start(store, registry, settings, "on-n")
    assert [e.name for e in running_experiments(store, "n")] == ["on-n"]


# --- concurrency ----------------------------------------------------------------------------------------------


def _race(store: Store, registry: Any, settings: Settings, names: list[str]) -> tuple[list[str], list[str]]:
    """Start ``names`` at once from one thread each; (the names that started, the refusal messages)."""
    barrier = threading.Barrier(len(names))
    won: list[str] = []
    refused: list[str] = []
    errors: list[BaseException] = []

    def run(name: str) -> None:
        try:
            barrier.wait(timeout=10)
            start(store, registry, settings, name, actor=f"t-{threading.get_ident()}")
            won.append(name)
        except ExperimentError as err:
            refused.append(str(err))
        except BaseException as err:  # collected: an assert in a thread would be lost
            errors.append(err)

    threads = [threading.Thread(target=run, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    return won, refused


def test_two_concurrent_starts_exactly_one_succeeds(store: Store, registry: Any, settings: Settings) -> None:
    create(store, registry, settings)
    won, refused = _race(store, registry, settings, ["exp", "exp"])
    assert won == ["exp"] and len(refused) == 1 and "running already" in refused[0]
    actions = [c["action"] for c in experiment_changes(store, "exp")]
    assert actions.count("started") == 1 and actions.count("start_refused") == 1


def test_concurrent_starts_of_overlapping_experiments_one_runs(store: Store, registry: Any, settings: Settings) -> None:
    names = [f"race-{n}" for n in range(4)]
    for n, name in enumerate(names):
        create(store, registry, settings, name, traffic_range=(n * 10, 100))
    won, refused = _race(store, registry, settings, names)
    assert len(won) == 1 and len(refused) == 3 and all("overlaps running experiment" in r for r in refused)
    assert [e.name for e in running_experiments(store, MODEL)] == won


def test_concurrent_starts_through_two_store_objects(tmp_path: Path, registry: Any, settings: Settings) -> None:
    """Two processes' worth of stores (separate engines on one file): still exactly one start."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    with create_store(url=url) as first, create_store(url=url) as second:
        first.init_schema()
        create(first, registry, settings)
        barrier = threading.Barrier(2)
        results: list[str] = []

        def run(store: Store) -> None:
            barrier.wait(timeout=10)
            try:
                start(store, registry, settings)
                results.append("started")
            except ExperimentError:
                results.append("refused")

        threads = [threading.Thread(target=run, args=(s,)) for s in (first, second)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(results) == ["refused", "started"]
