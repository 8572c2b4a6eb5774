"""Fixtures of the studio tests: a home with two registered versions (champion and challenger), a decision, a
drift report, and one real API server over it (``tastebud serve`` in a child process), shared by a test module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from live_server import ServerProcess, free_port

MODEL_NAME = "studio-test"
ADMIN_TOKEN = "s3cret"  # what ServerProcess configures


def build_home(home: Path) -> None:
    """Train and register ALS (v1, champion) and item-KNN (v2, challenger) on synthetic movies, with evaluation
    artifacts (bootstrap intervals), a promotion decision and a drift report."""
    from tastebud.config import build_settings
    from tastebud.data.synthetic import generate_synthetic
    from tastebud.experiments.definitions import create_experiment
    from tastebud.monitoring.drift import DriftReport, SignalDrift, Thresholds
    from tastebud.monitoring.report import write_drift_report
    from tastebud.pipeline.train import train
    from tastebud.registry import CHAMPION, Decision, ModelRegistry, append_decision
    from tastebud.store import create_store

    settings = build_settings(home=home)
    data = generate_synthetic(200, 120, 4000, seed=3)
    registry = ModelRegistry(settings)
    als = {"factors": 8, "iterations": 4, "random_state": 1, "num_threads": 1}
    train(data, "als", als, settings=settings, name=MODEL_NAME, registry=registry)
    train(data, "itemknn", {}, settings=settings, name=MODEL_NAME, registry=registry)
    registry.set_alias(MODEL_NAME, CHAMPION, 1)
    append_decision(settings, Decision("2026-12-01T10:00:00+00:00", MODEL_NAME, "promoted", 1, None, "tests",
                                       "first champion", {"ndcg_at_10": 0.1}))  # fmt: skip
    store = create_store(settings)
    store.init_schema()
    variants = ({"name": "control", "ref": "champion"}, {"name": "treatment", "ref": "challenger"})
    spec = {"name": "ease-vs-knn", "model_name": MODEL_NAME, "weights": (50.0, 50.0), "variants": variants}
    create_experiment(store, registry, settings, spec, "tests")  # a draft: listed, not routed, nothing to analyse
    store.close()
    signal = SignalDrift("item_popularity", ["1", "2-3", "4-7"], np.array([0.5, 0.3, 0.2]), np.array([0.4, 0.4, 0.2]),
                         100, 80, 0.04, 0.02, "ok")  # fmt: skip
    report = DriftReport([signal], Thresholds(), reference={"snapshot": "test"}, window={"start": "a", "end": "b"})
    write_drift_report(report, settings.home / "monitoring" / "drift" / "20261201T000000Z", plots=False)


@pytest.fixture(scope="module")
def studio_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("studio") / "home"
    build_home(home)
    return home


@pytest.fixture(scope="module")
def api(studio_home: Path) -> Iterator[ServerProcess]:
    """One ``tastebud serve`` over the studio home for the whole module."""
    server = ServerProcess(studio_home, MODEL_NAME, workers=1)
    with server:
        yield server


@pytest.fixture
def closed_url() -> str:
    """A URL on which nothing listens."""
    return f"http://127.0.0.1:{free_port()}"
