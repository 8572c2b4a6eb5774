"""What keeps training cheap at scale: validation on a seeded sample of users, the bundle linked, not copied,
into the embedded MLflow store."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from tastebud.config import Settings
from tastebud.data.dataset import Dataset
from tastebud.data.split import Split
from tastebud.errors import ParameterError
from tastebud.evaluation.protocol import evaluate
from tastebud.models import create
from tastebud.pipeline.train import reproduce, train
from tastebud.registry import ModelRegistry, load_bundle

train_module = importlib.import_module("tastebud.pipeline.train")  # the module (the package re-exports ``train``)


def test_validation_sample_is_seeded_and_sized(small_split: Split) -> None:
    model = create("popular").fit(small_split.train)
    whole = evaluate(model, small_split, part="validation")
    a = evaluate(model, small_split, part="validation", seed=1, max_users=40)
    again = evaluate(model, small_split, part="validation", seed=1, max_users=40)
    other = evaluate(model, small_split, part="validation", seed=2, max_users=40)
    assert a.n_users == 40 and a.user_ids == again.user_ids and a.means == again.means
    assert set(a.user_ids) <= set(whole.user_ids) and a.user_ids != other.user_ids
    # the interval is the sample's: wider than the one over every validation user
    lo, hi = a.ci["ndcg"]
    w_lo, w_hi = whole.ci["ndcg"]
    assert hi - lo > w_hi - w_lo
    # a sample as large as the part is the part itself
    assert evaluate(model, small_split, part="validation", max_users=whole.n_users).user_ids == whole.user_ids
    with pytest.raises(ParameterError, match="max_users must be positive"):
        evaluate(model, small_split, part="validation", max_users=0)


def test_training_validates_on_a_recorded_sample(
    registry_settings: Settings, small_data: Dataset, small_split: Split, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert train_module.VALIDATION_MAX_USERS >= 10_000  # documented: ML-1M and smaller are scored whole
    assert train_module.validation_sample(small_split) is None
    assert train_module.validation_sample(small_split, 40) == 40
    monkeypatch.setattr(train_module, "VALIDATION_MAX_USERS", 40)
    result = train(small_data, "als", {"factors": 8, "iterations": 3}, settings=registry_settings, name="sample")
    evaluation = result.manifest["extra"]["evaluation"]
    assert evaluation["max_users"] == 40 and evaluation["n_users"] == 40 == result.report.n_users
    assert result.report.n_users < evaluate(result.model, result.split, part="validation").n_users
    # the gate's baseline was measured on the same users: the popular fallback evaluated on that sample
    popular = evaluate(
        result.fallback["popular"], result.split, part="validation", seed=result.manifest["extra"]["seed"], max_users=40
    )
    assert evaluation["baseline"]["ndcg_at_10"] == pytest.approx(popular.means["ndcg"])
    # reproduction re-draws the recorded sample: the metrics come back exactly
    assert result.version is not None
    rep = reproduce(ModelRegistry(registry_settings), "sample", result.version.version, registry_settings)
    assert rep.passed and rep.max_difference == 0.0


def test_registered_bundle_is_linked_not_copied(registry_settings: Settings, small_data: Dataset) -> None:
    result = train(small_data, "als", {"factors": 8, "iterations": 3}, settings=registry_settings, name="linked")
    assert result.version is not None
    registry = ModelRegistry(registry_settings)
    stored = registry.bundle_path(result.version)
    assert stored != result.bundle_dir and stored.is_relative_to(registry_settings.mlflow_dir)
    files = sorted(p.relative_to(result.bundle_dir) for p in result.bundle_dir.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(stored) for p in stored.rglob("*") if p.is_file())
    for rel in files:  # one inode: registering added no bytes on disk
        assert (stored / rel).stat().st_ino == (result.bundle_dir / rel).stat().st_ino
    loaded = load_bundle(stored)
    users = result.split.train.users.ids[:5].tolist()
    assert loaded.model.recommend(users, k=5).item_ids == result.model.recommend(users, k=5).item_ids
    np.testing.assert_array_equal(loaded.model.item_factors_, result.model.item_factors_)
