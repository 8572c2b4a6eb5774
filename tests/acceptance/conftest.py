"""Fixtures of the acceptance tests: one EASE model trained on the real MovieLens-100K, bundled once per session.

The golden queries serve the bundle through the real app (``create_app`` under ``TestClient``); the load test serves
it from the real registry through ``tastebud serve`` in a child process.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tastebud.data.dataset import Dataset
from tastebud.errors import RegistryError
from tastebud.models import create
from tastebud.registry.bundle import write_bundle

MODEL_NAME = "ml100k-acceptance"


@pytest.fixture(scope="session")
def ml100k_bundle(ml100k: Dataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """EASE (defaults) fitted on all of ML-100K, with the popular and content fallbacks (about 2 s)."""
    fallback = {"popular": create("popular").fit(ml100k), "content": create("content").fit(ml100k)}
    model = create("ease").fit(ml100k)
    directory = tmp_path_factory.mktemp("acceptance") / "ease"
    return write_bundle(model, directory, train=ml100k, metrics={"ndcg_at_10": 0.45}, fallback=fallback)


@dataclass
class _Version:
    name: str
    version: int
    aliases: list[str]
    source: str
    run_id: str | None = None
    created_at: str = "2026-01-01T00:00:00Z"


class OneBundleRegistry:
    """A registry holding one bundle as version 1, alias ``champion`` (the shape serving needs; no MLflow)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def get(self, name: str, version: int) -> _Version:
        if version != 1:
            raise RegistryError(f"model {name!r} has no version {version}")
        return _Version(name, 1, ["champion"], str(self.path))

    def list_versions(self, name: str) -> list[_Version]:
        return [self.get(name, 1)]

    def resolve(self, name: str, ref: int | str) -> _Version:
        if str(ref) not in {"1", "champion"}:
            raise RegistryError(f"model {name!r} has no alias or version {ref!r}")
        return self.get(name, 1)

    def get_alias(self, name: str, alias: str) -> int | None:
        return 1 if alias == "champion" else None

    def bundle_path(self, mv: _Version) -> Path:
        return Path(mv.source)


def wait_ready(client: TestClient, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/health/ready").status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError(f"no model loaded in {timeout} s: {client.get('/health').json()}")
