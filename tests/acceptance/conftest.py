"""Fixtures of the acceptance tests: one EASE model trained on the real MovieLens-100K, bundled once per session.

The golden queries serve the bundle through the real app (``create_app`` under ``TestClient``); the load test serves
it from the real registry through ``tastebud serve`` in a child process.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fakes import OneVersionRegistry as OneBundleRegistry
from fakes import wait_ready
from tastebud.data.dataset import Dataset
from tastebud.models import create
from tastebud.registry.bundle import write_bundle

__all__ = ["MODEL_NAME", "OneBundleRegistry", "wait_ready"]

MODEL_NAME = "ml100k-acceptance"


@pytest.fixture(scope="session")
def ml100k_bundle(ml100k: Dataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """EASE (defaults) fitted on all of ML-100K, with the popular and content fallbacks (about 2 s)."""
    fallback = {"popular": create("popular").fit(ml100k), "content": create("content").fit(ml100k)}
    model = create("ease").fit(ml100k)
    directory = tmp_path_factory.mktemp("acceptance") / "ease"
    return write_bundle(model, directory, train=ml100k, metrics={"ndcg_at_10": 0.45}, fallback=fallback)
