"""`tastebud train` and `tastebud models ...` end to end on a small CSV dataset."""

from __future__ import annotations

from pathlib import Path

import pytest

from tastebud.cli import main
from tastebud.data.synthetic import synthetic_frames


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cli-models")
    frame, _ = synthetic_frames(120, 60, 2000, seed=5)
    path = root / "ratings.csv"
    frame.write_csv(path)
    return root / "home", path


def run(capsys: pytest.CaptureFixture[str], home: Path, *args: str) -> tuple[int, str]:
    code = main(["--home", str(home), *args])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_train_list_promote_rollback_decisions(
    cli_env: tuple[Path, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("COLUMNS", "250")  # rich tables would otherwise cut columns on a narrow terminal
    home, data = cli_env
    base = ["--dataset", str(data), "--name", "cli-model"]
    code, out = run(capsys, home, "train", *base, "--model", "ease", "--param", "l2=100")
    assert code == 0, out
    assert "registered cli-model version 1" in out and "ndcg_at_10" in out
    code, out = run(capsys, home, "train", *base, "--model", "popular")
    assert code == 0, out

    code, out = run(capsys, home, "models", "promote", "cli-model", "1", "--actor", "ci")
    assert code == 0 and "promoted" in out
    code, out = run(capsys, home, "models", "promote", "cli-model", "2")
    assert code == 1 and "refused" in out and "vs champion" in out
    code, out = run(capsys, home, "models", "promote", "cli-model", "2", "--force")
    assert code == 0 and "forced" in out

    code, out = run(capsys, home, "models", "list", "cli-model")
    assert code == 0 and "champion" in out and "ease" in out and "popular" in out
    # family and snapshot are read from the manifest: a forged MLflow tag does not show
    from tastebud.config import build_settings
    from tastebud.registry import ModelRegistry

    client = ModelRegistry(build_settings(home=home)).client
    client.set_model_version_tag("cli-model", "1", "tastebud.model_family", "forged-family")
    client.set_model_version_tag("cli-model", "1", "tastebud.snapshot_id", "forgedsnap")
    code, out = run(capsys, home, "models", "list", "cli-model")
    assert code == 0 and "ease" in out and "forged" not in out
    code, out = run(capsys, home, "models", "show", "cli-model", "champion")
    assert code == 0 and '"schema_version": 1' in out and '"popular"' in out

    code, out = run(capsys, home, "models", "rollback", "cli-model")
    assert code == 0 and "champion is version 1 (was 2)" in out
    code, out = run(capsys, home, "models", "decisions", "cli-model")
    assert code == 0
    for word in ("promoted", "refused", "forced", "rolled_back", "ci"):
        assert word in out

    code, out = run(capsys, home, "models", "reproduce", "cli-model", "1")
    assert code == 0 and "reproduced" in out and "NOT" not in out


def test_errors_are_one_clean_line(
    cli_env: tuple[Path, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    home, _ = cli_env
    code, out = run(capsys, home, "models", "show", "nothing-here", "3")
    assert code == 1 and "error:" in out and "Traceback" not in out
    code, out = run(capsys, home, "models", "rollback", "nothing-here")
    assert code == 1 and "no champion" in out


def test_keygen_writes_a_key_pair(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys = tmp_path / "keys"
    code, out = run(capsys, tmp_path / "home", "models", "keygen", "--out", str(keys))
    assert code == 0, out
    assert (keys / "tastebud-signing.key").is_file() and (keys / "tastebud-signing.pub").is_file()
    assert "TASTEBUD_SIGNING__PRIVATE_KEY_PATH" in out and "TASTEBUD_SIGNING__PUBLIC_KEY_PATH" in out
    code, out = run(capsys, tmp_path / "home", "models", "keygen", "--out", str(keys))
    assert code == 1 and "exists already" in out and "Traceback" not in out
    code, out = run(capsys, tmp_path / "home", "models", "keygen")
    assert code == 0 and (tmp_path / "home" / "keys" / "tastebud-signing.pub").is_file()
