"""The API on the real registry (MLflow, SQLite) and the real request store: champion at startup, trace, watcher."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tastebud.config import Settings
from tastebud.serving import create_app

from .test_recommend import wait_ready

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_real_registry_and_store(settings: Settings, bundles: dict[str, Path]) -> None:
    from tastebud.registry import ModelRegistry

    registry = ModelRegistry(settings)
    v1 = registry.register(bundles["als"], "ml")
    registry.set_alias("ml", "champion", v1.version)
    with TestClient(create_app(settings)) as client:  # builds its own registry, store and writer
        wait_ready(client, timeout=120)
        body = client.get("/recommend/nobody?k=3").json()
        assert body["model"]["version"] == v1.version and body["fallback_reason"] == "unknown_user"
        trace = client.get(f"/trace/{body['provenance']['request_id']}")
        assert trace.status_code == 200, trace.text
        record = trace.json()
        assert record["item_ids"] == [i["item_id"] for i in body["recommendations"]]
        assert record["provenance"]["git_sha"] == body["provenance"]["git_sha"]
        listed = client.get("/models").json()
        assert listed["aliases"] == {"champion": v1.version}

        v2 = registry.register(bundles["itemknn"], "ml")
        registry.set_alias("ml", "champion", v2.version)
        assert client.app.state.holder.poll_alias() is True
        assert client.get("/recommend/nobody?k=3").json()["model"]["version"] == v2.version
