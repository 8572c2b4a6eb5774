"""Training from a path imports what its later stages need (TF-IDF, the MLflow store) in a background thread
during the data stage: the run's results are those of a run without it, and a module that fails to import there
is left to fail where it is used."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

from tastebud.config import build_settings
from tastebud.data.dataset import Dataset
from tastebud.data.io import save_dataset

train_module = importlib.import_module("tastebud.pipeline.train")


def test_preload_imports_in_the_background_and_skips_failures() -> None:
    sys.modules.pop("tastebud.data.describe", None)
    thread = train_module.preload_modules(("tastebud.no_such_module_here", "tastebud.data.describe"))
    thread.join(timeout=60)
    assert not thread.is_alive() and thread.daemon
    assert "tastebud.data.describe" in sys.modules  # imported past the failing one
    assert "tastebud.no_such_module_here" not in sys.modules


def test_train_from_a_path_gives_the_same_results_with_and_without_preload(
    small_data: Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = save_dataset(small_data, tmp_path / "data")
    calls: list[tuple[str, ...]] = []
    real = train_module.preload_modules

    def spy(names: tuple[str, ...]):  # type: ignore[no-untyped-def]
        calls.append(names)
        return real(names)

    monkeypatch.setattr(train_module, "preload_modules", spy)
    params = {"factors": 8, "iterations": 3}
    with_preload = train_module.train(
        str(data), "als", params, settings=build_settings(home=tmp_path / "a"), track=False, register=False
    )
    assert calls == [train_module.PRELOAD_MODULES]  # no MLflow import without tracking

    class Joined:
        def join(self) -> None:
            pass

    monkeypatch.setattr(train_module, "preload_modules", lambda names: Joined())
    without = train_module.train(
        str(data), "als", params, settings=build_settings(home=tmp_path / "b"), track=False, register=False
    )
    assert with_preload.metrics == without.metrics
    assert with_preload.split.train.snapshot_id == without.split.train.snapshot_id
    assert set(with_preload.fallback) == set(without.fallback)
