"""The model registry over MLflow: embedded SQLite store, and a real tracking server (integration)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tastebud.config import Settings, build_settings
from tastebud.data.split import Split
from tastebud.errors import BundleError, RegistryError
from tastebud.models import create
from tastebud.registry import ModelRegistry, load_bundle, write_bundle
from tastebud.registry.aliases import local_path


def _bundle(tmp: Path, split: Split, model: str = "ease", ndcg: float = 0.2) -> Path:
    fitted = create(model).fit(split.train)
    return write_bundle(
        fitted,
        tmp / f"bundle-{model}",
        train=split.train,
        metrics={"ndcg_at_10": ndcg, "coverage": 0.5},
        fallback={"popular": create("popular").fit(split.train)},
    )


def test_importing_the_registry_does_not_import_mlflow() -> None:
    code = "import sys, tastebud.registry, tastebud.registry.bundle; print('mlflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _exercise(registry: ModelRegistry, name: str, bundle: Path, split: Split) -> None:
    assert registry.list_versions(name) == []
    assert registry.get_alias(name, "champion") is None
    v1 = registry.register(bundle, name, tags={"purpose": "test"})
    v2 = registry.register(bundle, name)
    assert (v1.version, v2.version) == (1, 2)
    assert v1.metrics == {"ndcg_at_10": 0.2, "coverage": 0.5}
    assert v1.tags["tastebud.model_family"] == "ease" and v1.tags["purpose"] == "test"
    assert v1.tags["tastebud.snapshot_id"] == split.train.snapshot_id
    assert v1.run_id
    registry.set_alias(name, "champion", 2)
    registry.set_alias(name, "challenger", 1)
    assert registry.get_alias(name, "champion") == 2
    assert registry.resolve(name, "champion").version == 2
    assert registry.resolve(name, "1").version == 1
    listed = registry.list_versions(name)
    assert [(v.version, v.aliases) for v in listed] == [(1, ["challenger"]), (2, ["champion"])]
    # family and snapshot come from the manifest, not from the (editable) tags
    assert [(v.family, v.snapshot_id) for v in listed] == [("ease", split.train.snapshot_id)] * 2
    with pytest.raises(RegistryError, match="no version 7"):
        registry.get(name, 7)
    with pytest.raises(RegistryError, match="no alias 'gold'"):
        registry.resolve(name, "gold")
    with pytest.raises(RegistryError):
        registry.set_alias(name, "champion", 9)
    loaded = load_bundle(registry.bundle_path(registry.resolve(name, "champion")))
    users = split.train.users.ids[:5].tolist()
    assert loaded.model.recommend(users, k=5).item_ids == load_bundle(bundle).model.recommend(users, k=5).item_ids


def test_embedded_registry(registry_settings: Settings, small_split: Split, tmp_path: Path) -> None:
    registry = ModelRegistry(registry_settings)
    bundle = _bundle(tmp_path, small_split)
    _exercise(registry, "embedded-model", bundle, small_split)
    assert (registry_settings.mlflow_dir / "mlflow.db").is_file()
    source = local_path(registry.get("embedded-model", 1).source)
    assert source is not None and source.is_relative_to(registry_settings.mlflow_dir.resolve())


def test_register_refuses_corrupt_bundle(registry_settings: Settings, small_split: Split, tmp_path: Path) -> None:
    registry = ModelRegistry(registry_settings)
    bundle = _bundle(tmp_path, small_split)
    (bundle / "model" / "weights.npy").write_bytes(b"truncated")
    with pytest.raises(BundleError, match=r"weights\.npy: sha256 mismatch"):
        registry.register(bundle, "corrupt-model")
    assert registry.list_versions("corrupt-model") == []


def test_register_refuses_non_finite_arrays(registry_settings: Settings, small_split: Split, tmp_path: Path) -> None:
    import json

    import numpy as np

    from tastebud.registry.bundle import sha256_file

    registry = ModelRegistry(registry_settings)
    bundle = _bundle(tmp_path, small_split)
    target = bundle / "model" / "weights.npy"
    arr = np.load(target).copy()
    arr[0, 1] = np.nan
    np.save(target, arr)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"]["model/weights.npy"] = sha256_file(target)
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"refusing to register .*model/weights\.npy holds 1 NaN/inf"):
        registry.register(bundle, "nan-model")
    assert registry.list_versions("nan-model") == []


def test_provenance_tags_are_reserved(registry_settings: Settings, small_split: Split, tmp_path: Path) -> None:
    registry = ModelRegistry(registry_settings)
    bundle = _bundle(tmp_path, small_split)
    for key in ("tastebud.model_family", "tastebud.snapshot_id", "tastebud.git_sha"):
        with pytest.raises(RegistryError, match=f"tags {key} are reserved"):
            registry.register(bundle, "reserved-tags", tags={key: "forged", "purpose": "x"})
    assert registry.list_versions("reserved-tags") == []
    mv = registry.register(bundle, "reserved-tags", tags={"purpose": "x", "family": "mine"})
    assert mv.tags["tastebud.model_family"] == "ease" and mv.tags["family"] == "mine"
    assert mv.tags["tastebud.snapshot_id"] == small_split.train.snapshot_id
    # a tag edited afterwards in MLflow changes nothing that is read back: the manifest is the source
    registry.client.set_model_version_tag("reserved-tags", str(mv.version), "tastebud.model_family", "forged")
    again = ModelRegistry(registry_settings).get("reserved-tags", mv.version)
    assert again.tags["tastebud.model_family"] == "forged" and again.family == "ease"


def test_manifest_of_a_remote_bundle_fetches_only_the_manifest(
    registry_settings: Settings, small_split: Split, tmp_path: Path
) -> None:
    from dataclasses import replace

    mv = ModelRegistry(registry_settings).register(_bundle(tmp_path, small_split), "remote-manifest")
    assert mv.run_id is not None
    remote = replace(mv, source=f"runs:/{mv.run_id}/bundle")  # not a local path: fetched through MLflow
    fresh = ModelRegistry(registry_settings)
    manifest = fresh.manifest(remote)
    assert manifest["model"]["name"] == "ease" and manifest["data"]["snapshot_id"] == small_split.train.snapshot_id
    cached = fresh.cache_dir / "remote-manifest"
    assert sorted(p.relative_to(cached).as_posix() for p in cached.rglob("*") if p.is_file()) == [
        f"{mv.version}.manifest/manifest.json"
    ]


def test_bundle_path_detects_corruption_in_store(
    registry_settings: Settings, small_split: Split, tmp_path: Path
) -> None:
    registry = ModelRegistry(registry_settings)
    mv = registry.register(_bundle(tmp_path, small_split), "tampered-model")
    stored = registry.bundle_path(mv)
    (stored / "items.json").write_text("[]")
    with pytest.raises(BundleError, match=r"items\.json: sha256 mismatch"):
        load_bundle(stored)


# ---------------------------------------------------------------------------------------------------- server
@pytest.fixture
def mlflow_server(mlflow_server_url: str) -> str:
    """The session's real ``mlflow server`` (tests/mlflow_server.py): artifacts proxied as ``mlflow-artifacts:/``."""
    return mlflow_server_url


@pytest.mark.integration
@pytest.mark.slow
def test_registry_on_tracking_server(mlflow_server: str, small_split: Split, tmp_path: Path) -> None:
    settings = build_settings(home=tmp_path / "home", registry={"tracking_uri": mlflow_server})
    registry = ModelRegistry(settings)
    _exercise(registry, "server-model", _bundle(tmp_path, small_split), small_split)
    assert not (settings.mlflow_dir / "mlflow.db").exists()  # nothing went to the embedded store


@pytest.mark.integration
@pytest.mark.slow
def test_training_run_on_tracking_server(mlflow_server: str, small_data, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    from tastebud.pipeline.train import train

    settings = build_settings(home=tmp_path / "home", registry={"tracking_uri": mlflow_server})
    result = train(small_data, "popular", settings=settings, name="server-train")
    run = MlflowClient(tracking_uri=mlflow_server).get_run(result.run_id)
    assert run.data.params["data.snapshot_id"] == result.manifest["data"]["snapshot_id"]
    assert run.data.metrics["ndcg_at_10"] == pytest.approx(result.metrics["ndcg_at_10"])
    assert result.version is not None and result.version.version == 1
    assert ModelRegistry(settings).get_alias("server-train", "challenger") == 1
