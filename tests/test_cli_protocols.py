"""`tastebud evaluate --protocol`: one protocol, or every model on several protocols side by side."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from tastebud.cli import main


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("TASTEBUD_HOME", str(home))
    monkeypatch.delenv("TASTEBUD_CONFIG", raising=False)
    return home


@pytest.fixture
def ratings_csv(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for u in range(50):
        for j, i in enumerate(rng.choice(30, size=10, replace=False)):
            rows.append((f"u{u}", f"i{i}", 1_600_000_000 + u * 100 + j))
    path = tmp_path / "ratings.csv"
    pl.DataFrame(rows, schema=["user_id", "item_id", "timestamp"], orient="row").write_csv(path)
    return path


def test_protocol_all_writes_the_side_by_side_report(
    capsys: pytest.CaptureFixture[str], ratings_csv: Path, tmp_path: Path
) -> None:
    out_dir = tmp_path / "report"
    args = ["evaluate", "-d", str(ratings_csv), "--protocol", "all", "--models", "popular,seqtrans"]
    code = main([*args, "-p", "seqtrans.l2=5", "--k", "5", "--out", str(out_dir)])
    out, err = capsys.readouterr()
    assert code == 0, err
    for name in ("protocols.md", "protocols.json", "protocols.png"):
        assert (out_dir / name).stat().st_size > 0
    data = json.loads((out_dir / "protocols.json").read_text())
    assert list(data["protocols"]) == ["random", "temporal-user", "leave-last-out"]
    assert set(data["table"]) == {"popular", "seqtrans"}
    assert "temporal-user" in out and "leave-last-out" in out


@pytest.mark.parametrize("protocol", ["temporal-user", "leave-last-out"])
def test_one_protocol_writes_one_comparison(
    capsys: pytest.CaptureFixture[str], ratings_csv: Path, tmp_path: Path, protocol: str
) -> None:
    out_dir = tmp_path / "one"
    code = main(["evaluate", "-d", str(ratings_csv), "--protocol", protocol, "-m", "popular", "-o", str(out_dir)])
    _, err = capsys.readouterr()
    assert code == 0, err
    data = json.loads((out_dir / "comparison.json").read_text())
    assert data["meta"]["split"] == protocol
    assert data["models"][0]["split_meta"]["method"] == protocol


def test_unknown_protocol_is_a_clean_error(capsys: pytest.CaptureFixture[str], ratings_csv: Path) -> None:
    code = main(["evaluate", "-d", str(ratings_csv), "--protocol", "weekly", "-m", "popular"])
    _, err = capsys.readouterr()
    assert code == 1 and "unknown protocol" in err and "Traceback" not in err
