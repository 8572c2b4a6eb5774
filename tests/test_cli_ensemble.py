"""`tastebud train --model ensemble`: members by name, and a blend of registered versions (--from-registry)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tastebud.cli import main
from tastebud.config import build_settings
from tastebud.data.synthetic import synthetic_frames
from tastebud.registry import ModelRegistry
from tastebud.registry.bundle import load_bundle


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cli-ensemble")
    frame, _ = synthetic_frames(120, 60, 2000, seed=5)
    path = root / "ratings.csv"
    frame.write_csv(path)
    return root / "home", path


def run(capsys: pytest.CaptureFixture[str], home: Path, *args: str) -> tuple[int, str]:
    code = main(["--home", str(home), *args])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_train_ensemble_by_members_then_from_registry(
    cli_env: tuple[Path, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("COLUMNS", "250")
    home, data = cli_env
    base = ["--dataset", str(data), "--name", "ens"]
    code, out = run(
        capsys, home, "train", *base, "--model", "ensemble", "--members", "ease,itemknn", "--param", "ease.l2=50"
    )
    assert code == 0, out
    assert "registered ens version 1" in out and "ndcg_at_10" in out
    registry = ModelRegistry(build_settings(home=home))
    manifest = registry.manifest(registry.get("ens", 1))
    assert manifest["model"]["name"] == "ensemble"
    assert manifest["model"]["params"]["members"] == ["ease", "itemknn"]
    assert manifest["model"]["params"]["member_params"] == {"ease": {"l2": 50}}

    # two single models on the same data and seed, then a blend of them that trains nothing
    for model in ("ease", "itemknn"):
        code, out = run(capsys, home, "train", *base, "--model", model)
        assert code == 0, out
    code, out = run(capsys, home, "train", "--model", "ensemble", "--from-registry", "ens:2,ens:3", "--name", "ens")
    assert code == 0, out
    assert "registered ens version 4" in out
    bundle = load_bundle(registry.bundle_path(registry.get("ens", 4)))
    assert bundle.name == "ensemble"
    assert bundle.manifest["extra"]["ensemble"]["from_registry"] == ["ens:2", "ens:3"]
    registered = {v: load_bundle(registry.bundle_path(registry.get("ens", v))).model for v in (2, 3)}
    by_name = {m.name: m for m in registered.values()}
    # the registered models are reused as they are (not refitted): a member ranks exactly as its version does
    assert bundle.model.members_
    users = [str(u) for u in bundle.model.users_.ids[:20].tolist()]  # type: ignore[union-attr]
    for member in bundle.model.members_:
        assert member.recommend(users, k=5).item_ids == by_name[member.name].recommend(users, k=5).item_ids


def test_ensemble_flags_are_refused_elsewhere(cli_env: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    home, data = cli_env
    code, out = run(capsys, home, "train", "--dataset", str(data), "--model", "ease", "--members", "ease,als")
    assert code == 1 and "ensemble only" in out
    code, out = run(capsys, home, "train", "--model", "ensemble", "--from-registry", "ens")
    assert code == 1 and "name:version" in out
    code, out = run(capsys, home, "train", "--dataset", str(data), "--model", "ensemble", "--members", "ease,nope")
    assert code == 1 and "nope" in out
