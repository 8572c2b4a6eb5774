"""Promotion through the gate: first versions meet absolute floors; a champion without the metric is not passed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tastebud.config import Settings, build_settings
from tastebud.data.dataset import Dataset
from tastebud.pipeline.promote import promote
from tastebud.registry import ModelRegistry
from tastebud.registry.aliases import ModelVersion
from tastebud.registry.decisions import read_decisions


class ManifestRegistry:
    """A registry of manifests only (what the gate reads), with aliases and tags."""

    def __init__(self, manifests: dict[int, dict[str, Any]], champion: int | None = None) -> None:
        self.manifests = manifests
        self.aliases = {} if champion is None else {"champion": champion}
        self.tags: dict[tuple[int, str], str] = {}

    def get(self, name: str, version: int) -> ModelVersion:
        return ModelVersion(name, int(version), [], f"/nowhere/{version}", None)

    def get_alias(self, name: str, alias: str) -> int | None:
        return self.aliases.get(alias)

    def set_alias(self, name: str, alias: str, version: int) -> None:
        self.aliases[alias] = version

    def set_tag(self, name: str, version: int, key: str, value: str) -> None:
        self.tags[(version, key)] = value

    def manifest(self, mv: ModelVersion) -> dict[str, Any]:
        return self.manifests[mv.version]


def _manifest(metrics: dict[str, Any], *, family: str = "als", baseline: dict[str, Any] | None = None) -> dict:
    evaluation: dict[str, Any] = {"k": 10, "eval_snapshot_id": "e1"}
    if baseline is not None:
        evaluation["baseline"] = {"model": "popular", **baseline}
    return {"model": {"name": family}, "metrics": metrics, "extra": {"evaluation": evaluation}, "data": {}}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return build_settings(home=tmp_path)


def test_first_version_with_nan_metric_is_refused_and_logged(settings: Settings) -> None:
    # the manifest stores a NaN metric as null: it used to pass as "no champion yet"
    registry = ManifestRegistry({1: _manifest({"ndcg_at_10": None, "coverage": 0.4})})
    result = promote(registry, "m", 1, settings=settings, actor="t")  # type: ignore[arg-type]
    assert not result.promoted and registry.get_alias("m", "champion") is None
    decision = read_decisions(settings, "m")[-1]
    assert decision.action == "refused" and "candidate's ndcg_at_10 is missing" in decision.reason
    forced = promote(registry, "m", 1, settings=settings, force=True, actor="t")  # type: ignore[arg-type]
    assert forced.decision.action == "forced" and registry.get_alias("m", "champion") == 1


def test_first_version_must_beat_the_popularity_baseline(settings: Settings) -> None:
    registry = ManifestRegistry(
        {
            1: _manifest({"ndcg_at_10": 0.05}, baseline={"ndcg_at_10": 0.08}),
            2: _manifest({"ndcg_at_10": 0.05}, family="popular", baseline={"ndcg_at_10": 0.05}),
            3: _manifest({"ndcg_at_10": 0.11}, baseline={"ndcg_at_10": 0.08}),
        }
    )
    weak = promote(registry, "m", 1, settings=settings)  # type: ignore[arg-type]
    assert not weak.promoted and "popularity baseline 0.0800: does not beat it" in weak.decision.reason
    assert weak.decision.numbers["baseline"]["ndcg_at_10"] == 0.08
    # a popularity model is the baseline: it is not asked to beat itself
    assert promote(registry, "m", 2, settings=settings).promoted  # type: ignore[arg-type]
    registry.aliases.clear()
    assert promote(registry, "m", 3, settings=settings).promoted  # type: ignore[arg-type]


def test_champion_without_metric_and_no_way_to_recompute_is_refused(settings: Settings) -> None:
    registry = ManifestRegistry({1: _manifest({"coverage": 0.5}), 2: _manifest({"ndcg_at_10": 0.3})}, champion=1)
    result = promote(registry, "m", 2, settings=settings)  # type: ignore[arg-type]
    assert not result.promoted and registry.get_alias("m", "champion") == 1
    reason = read_decisions(settings, "m")[-1].reason
    assert "champion version 1 records no finite ndcg_at_10 and re-evaluation failed" in reason
    assert "cannot compare" in reason


def test_champion_without_metric_is_compared_on_recomputed_metrics(
    registry_settings: Settings, small_data: Dataset
) -> None:
    from tastebud.pipeline.train import train

    name = "gate-legacy-champion"
    registry = ModelRegistry(registry_settings)
    old = train(small_data, "popular", settings=registry_settings, name=name, registry=registry).version
    assert old is not None and promote(registry, name, old.version, settings=registry_settings).promoted
    # a champion registered before its manifest recorded the metric (simulated: the stored manifest lacks it)
    stored = registry.bundle_path(old) / "manifest.json"
    manifest = json.loads(stored.read_text())
    manifest["metrics"].pop("ndcg_at_10")
    stored.write_text(json.dumps(manifest))
    cand = train(small_data, "ease", settings=registry_settings, name=name, registry=registry).version
    assert cand is not None
    result = promote(ModelRegistry(registry_settings), name, cand.version, settings=registry_settings)
    assert result.gate.reevaluated and result.gate.champion is not None
    assert result.gate.champion["ndcg_at_10"] is not None
    assert result.promoted, result.gate.reasons
    assert "records no finite ndcg_at_10: both re-evaluated" in result.decision.reason
