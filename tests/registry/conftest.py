"""Fixtures of the registry tests: small synthetic data and one embedded MLflow store per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tastebud.config import Settings, build_settings
from tastebud.data.dataset import Dataset
from tastebud.data.split import Split, make_split
from tastebud.data.synthetic import generate_synthetic


@pytest.fixture(scope="session")
def small_data() -> Dataset:
    """150 users x 80 items, 2,500 explicit interactions with genres and titles."""
    return generate_synthetic(150, 80, 2500, seed=3, name="small")


@pytest.fixture(scope="session")
def small_split(small_data: Dataset) -> Split:
    return make_split(small_data, "random", test_fraction=0.2, validation_fraction=0.1, seed=3)


@pytest.fixture(scope="session")
def registry_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings whose home holds one embedded MLflow store shared by the session (tests use distinct names)."""
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    home: Path = tmp_path_factory.mktemp("registry-home")
    return build_settings(home=home)
