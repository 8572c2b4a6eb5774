"""Fixtures of the monitoring tests: a small real bundle, a registry of one version, an app on a real store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from fakes import OneVersionRegistry, wait_ready
from tastebud.config import Settings, build_settings
from tastebud.data.dataset import Dataset
from tastebud.data.synthetic import generate_synthetic
from tastebud.models import create
from tastebud.registry.bundle import write_bundle
from tastebud.serving import create_app

__all__ = ["OneVersionRegistry", "wait_ready"]


@pytest.fixture(scope="session")
def train() -> Dataset:
    """150 users x 80 items of synthetic data with titles, years and genres."""
    return generate_synthetic(150, 80, 3000, seed=5)


@pytest.fixture(scope="session")
def bundle(train: Dataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An item-KNN bundle written with the real ``write_bundle`` (popular and content fallbacks)."""
    root = tmp_path_factory.mktemp("bundle")
    fallback = {"popular": create("popular").fit(train), "content": create("content").fit(train)}
    return write_bundle(
        create("itemknn").fit(train), root / "itemknn", train=train, metrics={"ndcg_at_10": 0.1}, fallback=fallback
    )


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return build_settings(home=tmp_path, serving={"model_name": "ml", "watch_interval_s": 0, "max_k": 50})


@pytest.fixture
def client(settings: Settings, bundle: Path) -> Iterator[TestClient]:
    """The app with its own SQLite request store and background writer, champion loaded."""
    with TestClient(create_app(settings, registry=OneVersionRegistry(bundle))) as c:
        wait_ready(c)
        yield c
