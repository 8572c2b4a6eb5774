"""Training, the registry and serving against a real ``mlflow server --artifacts-destination ...``.

Bundles travel through the server's artifact proxy (``mlflow-artifacts:/`` URIs): training uploads them, serving
downloads them into its cache and verifies the signature and every checksum after the download. A bundle altered
inside the server's artifact destination is refused and the model served before keeps serving.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tastebud.config import Settings, build_settings
from tastebud.data.dataset import Dataset
from tastebud.errors import BundleError
from tastebud.pipeline.promote import promote, rollback
from tastebud.pipeline.train import TrainResult, train
from tastebud.registry import ModelRegistry
from tastebud.serving import create_app

pytestmark = [pytest.mark.slow, pytest.mark.integration]

NAME = "served-through-server"


def _settings(home: Path, url: str) -> Settings:
    return build_settings(
        home=home,
        registry={"tracking_uri": url},
        serving={"model_name": NAME, "watch_interval_s": 0},
        signing={"hmac_key": "a-test-secret-of-enough-length-0123456789"},
    )


def _stored_bundle(root: Path, source: str) -> Path:
    """Where the server keeps a ``mlflow-artifacts:/<path>`` bundle: ``<artifacts-destination>/<path>``."""
    assert source.startswith("mlflow-artifacts:/"), source
    path = root / "artifacts" / source.removeprefix("mlflow-artifacts:").lstrip("/")
    assert (path / "manifest.json").is_file(), f"{path}: bundle not in the server's artifact destination"
    return path


def _wait_ready(client: TestClient, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/health/ready").status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError(f"not ready after {timeout}s: {client.get('/health').json()}")


def _recommend(client: TestClient, user: str) -> dict:
    response = client.get(f"/recommend/{user}?k=5")
    assert response.status_code == 200, response.text
    return response.json()


def _check_provenance(body: dict, result: TrainResult) -> None:
    assert result.version is not None
    assert body["model"]["version"] == result.version.version
    prov = body["provenance"]
    assert prov["model_name"] == NAME and prov["model_version"] == result.version.version
    assert prov["model_type"] == result.manifest["model"]["name"]
    assert prov["data_snapshot_id"] == result.manifest["data"]["snapshot_id"]
    assert prov["bundle_created_at"] == result.manifest["created_at"]
    assert prov["signed"] is True


def test_train_register_promote_serve_switch_and_refuse_tampered(
    mlflow_server_url: str, mlflow_server_root: Path, small_data: Dataset, tmp_path: Path
) -> None:
    settings = _settings(tmp_path / "home", mlflow_server_url)
    registry = ModelRegistry(settings)
    user = str(small_data.users.ids[0])

    # train -> register (challenger) -> promote through the gate
    first = train(small_data, "popular", settings=settings, name=NAME)
    assert first.version is not None and first.version.version == 1
    assert registry.get_alias(NAME, "challenger") == 1
    stored_first = _stored_bundle(mlflow_server_root, first.version.source)
    assert (
        json.loads((stored_first / "manifest.json").read_text())["data"]["snapshot_id"]
        == first.manifest["data"]["snapshot_id"]
    )
    assert promote(registry, NAME, 1, settings=settings).promoted
    assert not (settings.mlflow_dir / "mlflow.db").exists()  # nothing went to an embedded store

    with TestClient(create_app(settings)) as client:
        _wait_ready(client)
        _check_provenance(_recommend(client, user), first)
        # the bundle was downloaded through the proxy into the serving cache, verified
        cached = registry.cache_dir / NAME / "1"
        assert (cached / "manifest.json").read_bytes() == (stored_first / "manifest.json").read_bytes()
        holder = client.app.state.holder

        # a second version, promoted (forced past the gate: popular vs itemknn on tiny data), hot-switched
        second = train(small_data, "itemknn", settings=settings, name=NAME)
        assert second.version is not None and second.version.version == 2
        assert promote(registry, NAME, 2, settings=settings, force=True).decision.action in ("promoted", "forced")
        assert holder.poll_alias() is True
        _check_provenance(_recommend(client, user), second)

        # rollback returns the champion to version 1, and the server follows
        assert rollback(registry, NAME, settings=settings).version == 1
        assert holder.poll_alias() is True
        _check_provenance(_recommend(client, user), first)

        # a file altered inside the server's artifact destination: refused after download, version 1 keeps serving
        third = train(small_data, "popular", settings=settings, name=NAME, seed=5)
        assert third.version is not None and third.version.version == 3
        stored_third = _stored_bundle(mlflow_server_root, third.version.source)
        items = stored_third / "items.json"
        items.write_bytes(items.read_bytes().replace(b'"', b"'", 2))
        refused = r"mlflow-artifacts:/.*downloaded bundle refused: bundle/items\.json: sha256 mismatch"
        with pytest.raises(BundleError, match=refused):  # the gate re-reads the candidate: refused there too
            promote(registry, NAME, 3, settings=settings, force=True)
        assert registry.get_alias(NAME, "champion") == 1
        registry.set_alias(NAME, "champion", 3)  # moved outside Tastebud (the MLflow UI): serving refuses it itself
        assert holder.poll_alias() is False
        assert "items.json: sha256 mismatch" in (holder.last_error or "")
        _check_provenance(_recommend(client, user), first)
        assert not (registry.cache_dir / NAME / "3").exists()  # never cached
        with pytest.raises(BundleError, match=refused):
            ModelRegistry(settings).bundle_path(registry.get(NAME, 3))
        health = client.get("/health").json()
        assert "sha256 mismatch" in json.dumps(health)

        # the checksum recomputed in the manifest too: the signature check refuses it
        fourth = train(small_data, "popular", settings=settings, name=NAME, seed=6)
        assert fourth.version is not None
        stored_fourth = _stored_bundle(mlflow_server_root, fourth.version.source)
        items = stored_fourth / "items.json"
        items.write_bytes(items.read_bytes().replace(b'"', b"'", 2))
        manifest = json.loads((stored_fourth / "manifest.json").read_text())
        manifest["files"]["items.json"] = hashlib.sha256(items.read_bytes()).hexdigest()
        (stored_fourth / "manifest.json").write_text(json.dumps(manifest, indent=2))
        registry.set_alias(NAME, "champion", fourth.version.version)
        assert holder.poll_alias() is False
        assert "signature does not verify" in (holder.last_error or "")
        assert not (registry.cache_dir / NAME / str(fourth.version.version)).exists()
        _check_provenance(_recommend(client, user), first)
