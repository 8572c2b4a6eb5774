"""Serving refuses unsigned, tampered and non-finite bundles and keeps the old model; provenance says signed."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tastebud.config import Settings
from tastebud.registry.bundle import sha256_file
from tastebud.registry.signing import Signer, generate_keypair, signer_from_settings
from tastebud.serving import create_app

from .conftest import FakeRegistry, FakeWriter
from .test_recommend import wait_ready

AUTH = {"Authorization": "Bearer s3cret"}


def _recompute(bundle: Path, rel: str) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"][rel] = sha256_file(bundle / rel)
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))


def _boost_popularity(bundle: Path, value: float | None = None) -> None:
    """Alter the popularity fallback and recompute its checksum (a forged bundle that checksums alone accept)."""
    rel = "fallback/popular/popularity.npy"
    arr = np.load(bundle / rel).copy()
    arr[0] = arr.max() * 10 if value is None else value
    np.save(bundle / rel, arr)
    _recompute(bundle, rel)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return generate_keypair(tmp_path_factory.mktemp("serving-keys"))


@pytest.fixture
def signed_registry(bundles: dict[str, Path], keys: tuple[Path, Path], settings: Settings, tmp_path: Path):  # type: ignore[no-untyped-def]
    signing = settings.model_copy(update={"signing": settings.signing.model_copy(update={"private_key_path": keys[0]})})
    signer = signer_from_settings(signing)
    assert isinstance(signer, Signer)
    good = shutil.copytree(bundles["als"], tmp_path / "good")
    signer.sign_bundle(good)
    unsigned = shutil.copytree(bundles["itemknn"], tmp_path / "unsigned")
    tampered = shutil.copytree(good, tmp_path / "tampered")
    _boost_popularity(tampered)
    return FakeRegistry("ml", {1: good, 2: unsigned, 3: tampered}, {"champion": 1})


@pytest.fixture
def signed_client(settings: Settings, signed_registry: FakeRegistry, keys: tuple[Path, Path]) -> Iterator[TestClient]:
    serving = settings.model_copy(update={"signing": settings.signing.model_copy(update={"public_key_path": keys[1]})})
    with TestClient(create_app(serving, registry=signed_registry, request_log=FakeWriter())) as c:
        wait_ready(c)
        yield c


def test_unsigned_and_tampered_bundles_are_refused_old_model_keeps_serving(signed_client: TestClient) -> None:
    body = signed_client.get("/recommend/nobody?k=1").json()
    assert body["model"]["version"] == 1 and body["provenance"]["signed"] is True
    for version, words in ((2, "not signed"), (3, "signature does not verify")):
        r = signed_client.post("/admin/models/switch", json={"version": version}, headers=AUTH)
        assert r.status_code == 409, r.text
        assert r.json()["error"] == "bundle_refused" and words in r.json()["message"]
        assert signed_client.get("/recommend/nobody?k=1").json()["model"]["version"] == 1


def test_without_a_key_provenance_says_not_signed(settings: Settings, registry: FakeRegistry) -> None:
    with TestClient(create_app(settings, registry=registry, request_log=FakeWriter())) as c:
        wait_ready(c)
        assert c.get("/recommend/nobody?k=1").json()["provenance"]["signed"] is False


def test_non_finite_bundle_is_refused_old_model_keeps_serving(
    settings: Settings, bundles: dict[str, Path], tmp_path: Path
) -> None:
    broken = shutil.copytree(bundles["itemknn"], tmp_path / "nan")
    _boost_popularity(broken, value=float("nan"))
    registry = FakeRegistry("ml", {1: bundles["als"], 2: broken}, {"champion": 1})
    with TestClient(create_app(settings, registry=registry, request_log=FakeWriter())) as c:
        wait_ready(c)
        r = c.post("/admin/models/switch", json={"version": 2}, headers=AUTH)
        assert r.status_code == 409, r.text
        message = r.json()["message"]
        assert "NaN/inf" in message and "fallback/popular/popularity.npy" in message
        assert c.get("/recommend/nobody?k=1").json()["model"]["version"] == 1
