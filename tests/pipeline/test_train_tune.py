"""``train(..., tune=N)`` (``tastebud train --tune N``): Optuna trials on the validation split before the final fit."""

from __future__ import annotations

from pathlib import Path

import pytest

from tastebud.config import Settings
from tastebud.data.dataset import Dataset
from tastebud.errors import ParameterError
from tastebud.pipeline.train import train


def test_tuned_parameters_are_fitted_and_recorded(
    registry_settings: Settings, small_data: Dataset, tmp_path: Path
) -> None:
    result = train(
        small_data,
        "itemknn",
        {"weighting": "cosine", "num_threads": 1},
        settings=registry_settings,
        track=False,
        register=False,
        bundle_dir=tmp_path / "bundle",
        tune=3,
    )
    tuning = result.manifest["extra"]["tuning"]
    assert tuning["trials"] == 3 and tuning["part"] == "validation" and tuning["metric"] == "ndcg@10"
    params = result.manifest["model"]["params"]
    assert params["weighting"] == "cosine"  # what the caller fixed is not searched
    assert params["n_neighbors"] == tuning["best_params"]["n_neighbors"]
    assert result.model.params() == params
    assert "tune_s" in result.timings


def test_no_tuning_by_default(registry_settings: Settings, small_data: Dataset, tmp_path: Path) -> None:
    result = train(
        small_data, "popular", settings=registry_settings, track=False, register=False, bundle_dir=tmp_path / "b"
    )
    assert "tuning" not in result.manifest["extra"]


def test_bad_tune_values_are_refused(registry_settings: Settings, small_data: Dataset) -> None:
    with pytest.raises(ParameterError, match="tune"):
        train(small_data, "ease", settings=registry_settings, track=False, register=False, tune=-1)
    with pytest.raises(ParameterError, match="search space"):
        train(small_data, "hybrid", settings=registry_settings, track=False, register=False, tune=2)
