"""Fixtures of the monitoring tests: a small real bundle, a registry of one version, an app on a real store."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tastebud.config import Settings, build_settings
from tastebud.data.dataset import Dataset
from tastebud.data.synthetic import generate_synthetic
from tastebud.errors import RegistryError
from tastebud.models import create
from tastebud.registry.bundle import write_bundle
from tastebud.serving import create_app


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


@dataclass
class Version:
    name: str
    version: int
    aliases: list[str]
    source: str
    run_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    created_at: str = "2026-01-01T00:00:00Z"
    metrics: dict[str, float] = field(default_factory=dict)


class OneVersionRegistry:
    """A registry with version 1 as ``champion`` (the shape serving needs)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def get(self, name: str, version: int) -> Version:
        if version != 1:
            raise RegistryError(f"no version {version}")
        return Version(name, 1, ["champion"], str(self.path))

    def list_versions(self, name: str) -> list[Version]:
        return [self.get(name, 1)]

    def resolve(self, name: str, ref: int | str) -> Version:
        if str(ref) not in {"1", "champion"}:
            raise RegistryError(f"no alias or version {ref!r}")
        return self.get(name, 1)

    def get_alias(self, name: str, alias: str) -> int | None:
        return 1 if alias == "champion" else None

    def bundle_path(self, mv: Version) -> Path:
        return Path(mv.source)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return build_settings(home=tmp_path, serving={"model_name": "ml", "watch_interval_s": 0, "max_k": 50})


def wait_ready(client: TestClient, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/health/ready").status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError("no model loaded in time")


@pytest.fixture
def client(settings: Settings, bundle: Path) -> Iterator[TestClient]:
    """The app with its own SQLite request store and background writer, champion loaded."""
    with TestClient(create_app(settings, registry=OneVersionRegistry(bundle))) as c:
        wait_ready(c)
        yield c
