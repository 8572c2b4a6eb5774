"""Bundles: round trip, checksums, corruption cases, refusing empty models, atomic writes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tastebud.data.split import Split
from tastebud.errors import BundleError
from tastebud.models import Recommender, create
from tastebud.registry.bundle import (
    BUNDLE_SCHEMA_VERSION,
    git_sha,
    load_bundle,
    read_manifest,
    sha256_file,
    verify_bundle,
    write_bundle,
)


@pytest.fixture(scope="module")
def fitted(small_split: Split) -> tuple[Recommender, dict[str, Recommender]]:
    model = create("als", factors=8, iterations=3, random_state=0).fit(small_split.train)
    fallback = {
        "popular": create("popular").fit(small_split.train),
        "content": create("content").fit(small_split.train),
    }
    return model, fallback


@pytest.fixture
def bundle_dir(tmp_path: Path, fitted, small_split: Split) -> Path:
    model, fallback = fitted
    return write_bundle(
        model,
        tmp_path / "bundle",
        train=small_split.train,
        metrics={"ndcg_at_10": 0.25, "coverage": 0.5, "rmse": float("nan")},
        fallback=fallback,
        extra={"split": {"method": "random", "params": {"test_fraction": 0.2}, "seed": 3}, "note": "x"},
    )


def test_manifest_fields(bundle_dir: Path, small_split: Split) -> None:
    manifest = verify_bundle(bundle_dir)
    assert manifest["schema_version"] == BUNDLE_SCHEMA_VERSION
    assert manifest["model"]["name"] == "als"
    assert manifest["model"]["class"] == "tastebud.models.als:ALSRecommender"
    assert manifest["model"]["params"]["factors"] == 8
    assert manifest["data"]["snapshot_id"] == small_split.train.snapshot_id
    assert manifest["data"]["n_interactions"] == small_split.train.n_interactions
    assert manifest["data"]["split"]["seed"] == 3
    assert manifest["metrics"] == {"ndcg_at_10": 0.25, "coverage": 0.5, "rmse": None}
    assert manifest["fallback"] == ["content", "popular"]
    assert manifest["extra"] == {"note": "x"}
    assert manifest["created_at"].endswith("+00:00")
    files = {p.relative_to(bundle_dir).as_posix() for p in bundle_dir.rglob("*") if p.is_file()}
    assert set(manifest["files"]) == files - {"manifest.json"}
    assert "items.json" in manifest["files"]
    assert any(f.startswith("fallback/popular/") for f in manifest["files"])
    # Plain arrays and JSON only: nothing a loader could execute.
    assert {p.suffix for p in bundle_dir.rglob("*") if p.is_file()} <= {".npy", ".json"}


def test_round_trip_gives_identical_recommendations(bundle_dir: Path, fitted, small_split: Split) -> None:
    model, fallback = fitted
    bundle = load_bundle(bundle_dir)
    users = small_split.train.users.ids[:20].tolist()
    before, after = model.recommend(users, k=10), bundle.model.recommend(users, k=10)
    assert before.item_ids == after.item_ids
    for a, b in zip(before.scores, after.scores, strict=True):
        np.testing.assert_array_equal(a, b)
    pop_before = fallback["popular"].recommend(users[:3], k=5).item_ids
    assert bundle.fallback["popular"].recommend(users[:3], k=5).item_ids == pop_before
    assert set(bundle.fallback) == {"popular", "content"}
    assert bundle.name == "als"
    assert bundle.snapshot_id == small_split.train.snapshot_id
    assert bundle.item_meta["item_id"].to_list() == model.items_.to_list()
    assert bundle.item_meta.columns == ["item_id", "title", "year", "genres", "tags"]


def _corrupt_truncate(d: Path) -> str:
    target = d / "model" / "item_factors.npy"
    target.write_bytes(target.read_bytes()[:-16])
    return "model/item_factors.npy"


def _corrupt_alter(d: Path) -> str:
    target = d / "items.json"
    target.write_text(target.read_text().replace('"', "'", 1))
    return "items.json"


def _corrupt_missing(d: Path) -> str:
    (d / "fallback" / "popular" / "popularity.npy").unlink()
    return "fallback/popular/popularity.npy"


def _corrupt_extra(d: Path) -> str:
    (d / "model" / "evil.npy").write_bytes(b"x")
    return "model/evil.npy"


@pytest.mark.parametrize(
    ("corrupt", "words"),
    [
        (_corrupt_truncate, "sha256 mismatch"),
        (_corrupt_alter, "sha256 mismatch"),
        (_corrupt_missing, "missing"),
        (_corrupt_extra, "unexpected file"),
    ],
)
def test_corrupt_bundles_are_refused_naming_the_file(bundle_dir: Path, corrupt, words: str) -> None:
    name = corrupt(bundle_dir)
    with pytest.raises(BundleError, match=words) as info:
        load_bundle(bundle_dir)
    assert name in str(info.value)


@pytest.mark.parametrize(
    ("rel", "value"),
    [
        ("model/item_factors.npy", np.nan),
        ("model/user_factors.npy", np.inf),
        ("fallback/popular/popularity.npy", np.nan),
    ],
)
def test_non_finite_arrays_are_refused_on_load_even_with_recomputed_checksums(
    bundle_dir: Path, rel: str, value: float
) -> None:
    target = bundle_dir / rel
    arr = np.load(target).copy()
    arr.flat[3] = value
    np.save(target, arr)
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    manifest["files"][rel] = sha256_file(target)
    (bundle_dir / "manifest.json").write_text(json.dumps(manifest))
    verify_bundle(bundle_dir)  # the checksums agree: only the values are broken
    with pytest.raises(BundleError, match=r"refusing to load .* holds 1 NaN/inf values") as info:
        load_bundle(bundle_dir)
    assert rel in str(info.value)


def test_schema_version_and_manifest_problems(bundle_dir: Path) -> None:
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    manifest["schema_version"] = 99
    (bundle_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="schema_version 99"):
        verify_bundle(bundle_dir)
    (bundle_dir / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match=r"manifest\.json: not valid JSON"):
        verify_bundle(bundle_dir)
    (bundle_dir / "manifest.json").unlink()
    with pytest.raises(BundleError, match=r"manifest\.json: missing file"):
        load_bundle(bundle_dir)
    with pytest.raises(BundleError, match="not found"):
        read_manifest(bundle_dir / "nope")


def test_manifest_cannot_name_another_class(bundle_dir: Path) -> None:
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    manifest["model"]["class"] = "os:system"
    (bundle_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="does not match"):
        load_bundle(bundle_dir)


def test_refuses_unfitted_model(tmp_path: Path, small_split: Split) -> None:
    with pytest.raises(BundleError, match="not fitted"):
        write_bundle(create("ease"), tmp_path / "b", train=small_split.train, metrics={})
    assert not (tmp_path / "b").exists()


def test_refuses_nan_and_empty_arrays(tmp_path: Path, small_split: Split) -> None:
    model = create("als", factors=4, iterations=1).fit(small_split.train)
    model.item_factors_ = model.item_factors_.copy()
    model.item_factors_[0, 0] = np.nan
    with pytest.raises(BundleError, match=r"item_factors\.npy holds 1 NaN/inf"):
        write_bundle(model, tmp_path / "b", train=small_split.train, metrics={})
    model.item_factors_ = np.zeros_like(model.item_factors_)
    model.user_factors_ = np.zeros_like(model.user_factors_)
    with pytest.raises(BundleError, match=r"item_factors\.npy is all zeros"):
        write_bundle(model, tmp_path / "b", train=small_split.train, metrics={})
    model.item_factors_ = model.item_factors_[:, :0]
    model.user_factors_ = model.user_factors_[:, :0]
    with pytest.raises(BundleError, match=r"item_factors.npy is empty \(shape \(80, 0\)\)"):
        write_bundle(model, tmp_path / "b", train=small_split.train, metrics={})
    assert not (tmp_path / "b").exists()


def test_refuses_non_numeric_metric(tmp_path: Path, fitted, small_split: Split) -> None:
    with pytest.raises(BundleError, match="metric 'ndcg' is not a number"):
        write_bundle(fitted[0], tmp_path / "b", train=small_split.train, metrics={"ndcg": "high"})


def test_failed_write_keeps_the_previous_bundle(bundle_dir: Path, small_split: Split) -> None:
    before = read_manifest(bundle_dir)["created_at"], sorted(p.name for p in bundle_dir.rglob("*"))
    with pytest.raises(BundleError):
        write_bundle(create("ease"), bundle_dir, train=small_split.train, metrics={})
    verify_bundle(bundle_dir)
    assert (read_manifest(bundle_dir)["created_at"], sorted(p.name for p in bundle_dir.rglob("*"))) == before
    assert not [p for p in bundle_dir.parent.iterdir() if p.name.startswith(".")]


def test_git_sha_outside_a_checkout_is_unknown(tmp_path: Path) -> None:
    assert git_sha(tmp_path) == "unknown"
    assert git_sha(tmp_path / "does-not-exist") == "unknown"


def test_copied_bundle_still_verifies(bundle_dir: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(bundle_dir, tmp_path / "copy")
    assert verify_bundle(copy)["files"] == verify_bundle(bundle_dir)["files"]
