"""Signed manifests: Ed25519 key pairs and HMAC secrets, refusing unsigned, tampered and wrongly signed bundles."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest

from tastebud.config import Settings, build_settings
from tastebud.data.dataset import Dataset
from tastebud.data.split import Split
from tastebud.errors import BundleError, ConfigError
from tastebud.models import create
from tastebud.registry import ModelRegistry
from tastebud.registry.bundle import load_bundle, sha256_file, verify_bundle, write_bundle
from tastebud.registry.signing import (
    SIGNATURE,
    Signer,
    Verifier,
    generate_keypair,
    signer_from_settings,
    verifier_from_settings,
)


def _settings(home: Path, **signing: object) -> Settings:
    return build_settings(home=home, signing={k: str(v) for k, v in signing.items()})


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("keys")
    a_private, a_public = generate_keypair(root / "a")
    b_private, b_public = generate_keypair(root / "b")
    return {"private": a_private, "public": a_public, "other_private": b_private, "other_public": b_public}


@pytest.fixture(scope="module")
def fitted(small_split: Split):  # type: ignore[no-untyped-def]
    return create("ease").fit(small_split.train), {"popular": create("popular").fit(small_split.train)}


def _write(directory: Path, fitted, split: Split, signer: Signer | None) -> Path:  # type: ignore[no-untyped-def]
    model, fallback = fitted
    return write_bundle(
        model, directory, train=split.train, metrics={"ndcg_at_10": 0.2}, fallback=fallback, signer=signer
    )


def _tamper_and_recompute(bundle: Path, rel: str = "fallback/popular/popularity.npy") -> None:
    """Alter a file and write its new sha256 into the manifest: what checksums alone cannot catch."""
    target = bundle / rel
    arr = np.load(target).copy()
    arr[0] = arr.max() * 10  # a boosted item, all values still finite
    np.save(target, arr)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"][rel] = sha256_file(target)
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))


def test_keygen_writes_a_pair_and_keeps_the_private_key_private(tmp_path: Path) -> None:
    private, public = generate_keypair(tmp_path / "k")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in private.read_bytes() and b"PUBLIC KEY" in public.read_bytes()
    with pytest.raises(ConfigError, match="exists already"):
        generate_keypair(tmp_path / "k")
    generate_keypair(tmp_path / "k", overwrite=True)
    with pytest.raises(ConfigError, match=r"not an Ed25519 private key|cannot read"):
        verifier_from_settings(_settings(tmp_path, private_key_path=public))


def test_valid_signature_is_accepted_and_reported(
    tmp_path: Path, keys: dict[str, Path], fitted, small_split: Split
) -> None:
    signer = signer_from_settings(_settings(tmp_path, private_key_path=keys["private"]))
    assert signer is not None and signer.scheme == "ed25519"
    bundle = _write(tmp_path / "b", fitted, small_split, signer)
    record = json.loads((bundle / SIGNATURE).read_text())
    assert record["scheme"] == "ed25519" and record["key_id"] == signer.key_id
    assert SIGNATURE not in verify_bundle(bundle)["files"]  # it signs the manifest, so it is not listed in it
    verifier = verifier_from_settings(_settings(tmp_path, public_key_path=keys["public"]))
    loaded = load_bundle(bundle, verifier=verifier)
    assert loaded.signed and loaded.signature["key_id"] == signer.key_id
    # the private key alone also verifies (its public half is derived): the registering side
    assert load_bundle(bundle, verifier=verifier_from_settings(_settings(tmp_path, private_key_path=keys["private"])))
    # without a key nothing is verified: loads as before, reported not signed
    assert load_bundle(bundle).signed is False
    assert load_bundle(bundle, verifier=verifier_from_settings(_settings(tmp_path))).signed is False


def test_tampered_file_with_recomputed_checksum_is_refused(
    tmp_path: Path, keys: dict[str, Path], fitted, small_split: Split
) -> None:
    signer = signer_from_settings(_settings(tmp_path, private_key_path=keys["private"]))
    bundle = _write(tmp_path / "b", fitted, small_split, signer)
    _tamper_and_recompute(bundle)
    load_bundle(bundle)  # checksums alone let it through: the fault signing closes
    verifier = verifier_from_settings(_settings(tmp_path, public_key_path=keys["public"]))
    with pytest.raises(BundleError, match="signature does not verify") as info:
        load_bundle(bundle, verifier=verifier)
    assert "manifest.json" in str(info.value)


def test_unsigned_bundle_is_refused_when_a_key_is_configured(
    tmp_path: Path, keys: dict[str, Path], fitted, small_split: Split
) -> None:
    bundle = _write(tmp_path / "b", fitted, small_split, None)
    verifier = verifier_from_settings(_settings(tmp_path, public_key_path=keys["public"]))
    with pytest.raises(BundleError, match="not signed") as info:
        load_bundle(bundle, verifier=verifier)
    assert SIGNATURE in str(info.value)


def test_wrong_key_is_refused(tmp_path: Path, keys: dict[str, Path], fitted, small_split: Split) -> None:
    signer = signer_from_settings(_settings(tmp_path, private_key_path=keys["other_private"]))
    bundle = _write(tmp_path / "b", fitted, small_split, signer)
    verifier = verifier_from_settings(_settings(tmp_path, public_key_path=keys["public"]))
    with pytest.raises(BundleError, match="wrong key"):
        load_bundle(bundle, verifier=verifier)
    # a signature file copied from another bundle with the right key id still fails on the bytes
    good = _write(tmp_path / "good", fitted, small_split, signer_from_settings(
        _settings(tmp_path, private_key_path=keys["private"])))  # fmt: skip
    other = shutil.copytree(good, tmp_path / "other")
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["metrics"]["ndcg_at_10"] = 0.99  # a better-looking number for the gate
    (other / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    with pytest.raises(BundleError, match="signature does not verify"):
        verify_bundle(other, verifier=verifier)


def test_hmac_signing(tmp_path: Path, keys: dict[str, Path], fitted, small_split: Split) -> None:
    secret = "a-shared-secret-of-some-length"
    settings = _settings(tmp_path, hmac_key=secret)
    signer = signer_from_settings(settings)
    assert signer is not None and signer.scheme == "hmac-sha256"
    bundle = _write(tmp_path / "b", fitted, small_split, signer)
    assert secret not in (bundle / SIGNATURE).read_text()
    assert load_bundle(bundle, verifier=verifier_from_settings(settings)).signed
    with pytest.raises(BundleError, match="wrong key"):
        load_bundle(bundle, verifier=verifier_from_settings(_settings(tmp_path, hmac_key="another-secret-entirely")))
    with pytest.raises(BundleError, match=r"no HMAC key is configured"):
        load_bundle(bundle, verifier=verifier_from_settings(_settings(tmp_path, public_key_path=keys["public"])))
    _tamper_and_recompute(bundle)
    with pytest.raises(BundleError, match="signature does not verify"):
        load_bundle(bundle, verifier=verifier_from_settings(settings))
    with pytest.raises(ConfigError, match="at least 16 bytes"):
        signer_from_settings(_settings(tmp_path, hmac_key="short"))
    assert not Verifier().configured


def test_registry_with_a_key_refuses_unsigned_and_tampered_bundles(
    registry_settings: Settings, keys: dict[str, Path], fitted, small_split: Split, tmp_path: Path
) -> None:
    settings = build_settings(home=registry_settings.home, signing={"private_key_path": str(keys["private"])})
    registry = ModelRegistry(settings)
    unsigned = _write(tmp_path / "unsigned", fitted, small_split, None)
    with pytest.raises(BundleError, match="not signed"):
        registry.register(unsigned, "signed-model")
    signed = _write(tmp_path / "signed", fitted, small_split, signer_from_settings(settings))
    mv = registry.register(signed, "signed-model")
    assert mv.family == "ease" and mv.metrics["ndcg_at_10"] == 0.2
    stored = registry.bundle_path(mv)
    assert (stored / SIGNATURE).is_file()
    assert load_bundle(stored, verifier=registry.verifier).signed
    tampered = _write(tmp_path / "tampered", fitted, small_split, signer_from_settings(settings))
    _tamper_and_recompute(tampered)
    with pytest.raises(BundleError, match="signature does not verify"):
        registry.register(tampered, "signed-model")
    assert [v.version for v in registry.list_versions("signed-model")] == [mv.version]


def test_training_signs_and_serving_verifies(
    registry_settings: Settings, keys: dict[str, Path], small_data: Dataset
) -> None:
    from tastebud.pipeline.train import train
    from tastebud.serving.holder import settings_loader

    settings = build_settings(home=registry_settings.home, signing={"private_key_path": str(keys["private"])})
    result = train(small_data, "popular", settings=settings, name="signed-train")
    assert result.version is not None and (result.bundle_dir / SIGNATURE).is_file()
    path = ModelRegistry(settings).bundle_path(result.version)
    serving = build_settings(home=registry_settings.home, signing={"public_key_path": str(keys["public"])})
    assert settings_loader(serving)(path).signed
    wrong = build_settings(home=registry_settings.home, signing={"public_key_path": str(keys["other_public"])})
    with pytest.raises(BundleError, match="wrong key"):
        settings_loader(wrong)(path)


def test_signature_covers_shared_arrays(tmp_path: Path, keys: dict[str, Path], fitted, small_split: Split) -> None:
    signer = signer_from_settings(_settings(tmp_path, private_key_path=keys["private"]))
    model, fallback = fitted
    bundle = write_bundle(
        model, tmp_path / "b", train=small_split.train, metrics={}, fallback=fallback, signer=signer, share_min_bytes=0
    )
    verifier = verifier_from_settings(_settings(tmp_path, public_key_path=keys["public"]))
    manifest = load_bundle(bundle, verifier=verifier).manifest
    target = manifest["shared"]["model/seen_data.npy"]  # the model's and the popular fallback's ratings
    assert manifest["shared"]["fallback/popular/seen_data.npy"] == target
    _tamper_and_recompute(bundle, target)
    load_bundle(bundle)  # checksums alone let it through
    with pytest.raises(BundleError, match="signature does not verify"):
        load_bundle(bundle, verifier=verifier)
