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
    SHARED_SCHEMA_VERSION,
    bundle_size,
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


# ---------------------------------------------------------------------------------------------------- shared arrays
@pytest.fixture
def shared_dir(tmp_path: Path, fitted, small_split: Split) -> Path:
    """The fixture's model and fallbacks, with every array they hold byte for byte stored once."""
    model, fallback = fitted
    return write_bundle(
        model,
        tmp_path / "shared",
        train=small_split.train,
        metrics={"ndcg_at_10": 0.2},
        fallback=fallback,
        share_min_bytes=0,
    )


def _files_named(directory: Path, name: str) -> list[str]:
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob(name))


def test_seen_matrix_is_stored_once_and_loaded_once(shared_dir: Path, fitted, small_split: Split) -> None:
    manifest = verify_bundle(shared_dir)
    assert manifest["schema_version"] == SHARED_SCHEMA_VERSION
    links = manifest["shared"]
    # the model, the popular and the content fallback each hold the training interactions' pattern
    owners = ("model", "fallback/popular", "fallback/content")
    for name in ("seen_indices.npy", "seen_indptr.npy"):
        assert _files_named(shared_dir, name) == []
        targets = {links[f"{owner}/{name}"] for owner in owners if f"{owner}/{name}" in links}
        assert len(targets) == 1
    assert links["fallback/content/weights_indices.npy"] == links["model/seen_indices.npy"]
    assert links["model/seen_data.npy"] == links["fallback/popular/seen_data.npy"]  # both hold the ratings
    shared_files = [f for f in manifest["files"] if f.startswith("shared/")]
    assert sorted(shared_files) == sorted(set(links.values()))
    # no other file of the bundle duplicates one of the model's arrays
    digests = [d for f, d in manifest["files"].items() if f.endswith(".npy")]
    assert len(digests) == len(set(digests))
    bundle = load_bundle(shared_dir)
    seen = [bundle.model.seen_, bundle.fallback["popular"].seen_, bundle.fallback["content"].seen_]
    assert all(np.shares_memory(seen[0].indices, s.indices) for s in seen[1:])
    assert not seen[0].indices.flags.writeable  # one array for all three: none may change it for the others
    model, fallback = fitted
    users = small_split.train.users.ids[:20].tolist()
    for loaded, original in [(bundle.model, model), *((bundle.fallback[n], fallback[n]) for n in fallback)]:
        before, after = original.recommend(users, k=10, explain=True), loaded.recommend(users, k=10, explain=True)
        assert before.item_ids == after.item_ids and before.explanations == after.explanations
        for a, b in zip(before.scores, after.scores, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6)
    assert bundle_size(shared_dir) < bundle_size(
        write_bundle(
            model,
            shared_dir.parent / "whole",
            train=small_split.train,
            metrics={},
            fallback=fallback,
            share_min_bytes=None,
        )
    )


def test_shared_arrays_below_the_threshold_stay_in_place(bundle_dir: Path) -> None:
    # the fixture's arrays are all smaller than SHARE_MIN_BYTES: the layout every bundle had before
    manifest = verify_bundle(bundle_dir)
    assert "shared" not in manifest and manifest["schema_version"] == BUNDLE_SCHEMA_VERSION
    assert len(_files_named(bundle_dir, "seen_indices.npy")) == 2  # model and popular (content derives its own)


def test_old_layout_bundle_still_loads(bundle_dir: Path, fitted, small_split: Split) -> None:
    """A bundle written before shared arrays: every model holds its own seen matrix, content its profiles."""
    from tastebud.models import _scoring as sc
    from tastebud.models.content import _l2_rows, _pattern

    content = fitted[1]["content"]
    directory = bundle_dir / "fallback" / "content"
    meta = json.loads((directory / "model.json").read_text())
    meta["seen"] = sc.save_csr(directory, "seen", _pattern(content.weights_))
    profiles = _l2_rows(content.weights_ @ content.item_vectors_)
    meta["matrices"]["user_profiles"] = sc.save_csr(directory, "user_profiles", profiles)
    (directory / "model.json").write_text(json.dumps(meta))
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    manifest["files"] = {
        p.relative_to(bundle_dir).as_posix(): sha256_file(p)
        for p in bundle_dir.rglob("*")
        if p.is_file() and p.name != "manifest.json"
    }
    (bundle_dir / "manifest.json").write_text(json.dumps(manifest))
    bundle = load_bundle(bundle_dir)
    assert bundle.fallback["content"].user_profiles_ is not None  # read, not rebuilt
    users = small_split.train.users.ids[:20].tolist()
    assert bundle.fallback["content"].recommend(users, k=10).item_ids == content.recommend(users, k=10).item_ids
    assert bundle.model.recommend(users, k=10).item_ids == fitted[0].recommend(users, k=10).item_ids


def test_shared_file_is_covered_by_checksums(shared_dir: Path) -> None:
    manifest = read_manifest(shared_dir)
    target = shared_dir / manifest["shared"]["model/seen_indices.npy"]
    original = target.read_bytes()
    target.write_bytes(original[:-4])
    with pytest.raises(BundleError, match=r"shared/[0-9a-f]+\.npy: sha256 mismatch"):
        load_bundle(shared_dir)
    target.unlink()
    with pytest.raises(BundleError, match=r"shared/[0-9a-f]+\.npy: file listed in the manifest is missing"):
        load_bundle(shared_dir)
    target.write_bytes(original)
    load_bundle(shared_dir)
    # a stray copy where a link is recorded is refused, not silently preferred
    (shared_dir / "model" / "seen_indices.npy").write_bytes(original)
    with pytest.raises(BundleError, match=r"model/seen_indices\.npy: unexpected file"):
        load_bundle(shared_dir)


@pytest.mark.parametrize(
    ("rel", "target", "message"),
    [
        ("model/seen_indices.npy", "shared/../items.json", "not a file under shared/"),
        ("model/seen_indices.npy", "shared/absent.npy", "not a file under shared/"),
        ("../outside.npy", None, "not a file of a model"),
    ],
)
def test_malformed_shared_links_are_refused(shared_dir: Path, rel: str, target: str | None, message: str) -> None:
    manifest = json.loads((shared_dir / "manifest.json").read_text())
    manifest["shared"][rel] = target or next(iter(manifest["shared"].values()))
    (shared_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=message):
        load_bundle(shared_dir)
    manifest["shared"] = {}
    manifest["schema_version"] = 1
    (shared_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"unexpected file|missing"):  # links dropped: the models lack arrays
        load_bundle(shared_dir)


def test_shared_arrays_need_schema_version_2(shared_dir: Path) -> None:
    manifest = json.loads((shared_dir / "manifest.json").read_text())
    manifest["schema_version"] = 1
    (shared_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="field 'shared' needs schema_version 2"):
        load_bundle(shared_dir)
