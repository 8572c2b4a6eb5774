"""The command line: help texts, clean errors (no tracebacks), and the data/evaluate commands end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import typer.main

from tastebud.cli import app, main


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("TASTEBUD_HOME", str(home))
    monkeypatch.delenv("TASTEBUD_CONFIG", raising=False)
    return home


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def ratings_csv(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    n_users, n_items = 60, 40
    rows = []
    for u in range(n_users):
        items = rng.choice(n_items, size=12, replace=False)
        for j, i in enumerate(items):
            rows.append((f"u{u}", f"i{i}", float(rng.integers(1, 6)), 1_600_000_000 + u * 100 + j))
    df = pl.DataFrame(rows, schema=["user_id", "item_id", "rating", "timestamp"], orient="row")
    path = tmp_path / "ratings.csv"
    df.write_csv(path)
    return path


def _commands() -> list[list[str]]:
    """Every command path of the app, e.g. ['data', 'fetch']."""
    root = typer.main.get_command(app)
    paths: list[list[str]] = []

    def walk(cmd: object, prefix: list[str]) -> None:
        sub = getattr(cmd, "commands", None)
        if sub:
            for name, child in sub.items():
                walk(child, [*prefix, name])
        else:
            paths.append(prefix)

    walk(root, [])
    return paths


def test_every_command_has_a_help_text(capsys: pytest.CaptureFixture[str]) -> None:
    paths = _commands()
    assert ["data", "describe"] in paths and ["demo"] in paths and ["evaluate"] in paths
    for path in [[], *paths]:
        code, out, _ = run(capsys, *path, "--help")
        assert code == 0, path
        assert "Usage" in out
        assert len(out.strip().splitlines()) > 4, f"{path} help is too thin"


def test_config_show_prints_effective_home(capsys: pytest.CaptureFixture[str], _home: Path) -> None:
    code, out, _ = run(capsys, "config", "show", "--json")
    assert code == 0
    assert str(_home) in out


def test_describe_a_csv_file(capsys: pytest.CaptureFixture[str], ratings_csv: Path) -> None:
    code, out, err = run(capsys, "data", "describe", str(ratings_csv), "--json")
    assert code == 0, err
    assert '"users": 60' in out
    assert '"interactions": 720' in out
    _, out2, _ = run(capsys, "data", "describe", str(ratings_csv), "--json")
    snap = [line for line in out.splitlines() if "snapshot_id" in line]
    assert snap and snap == [line for line in out2.splitlines() if "snapshot_id" in line]


def test_bad_file_gives_one_clean_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("user_id,item_id,rating\n1,2,5\n1,3,x\n")
    code, out, err = run(capsys, "data", "describe", str(bad), "--format", "csv")
    assert code == 1
    assert "Traceback" not in err + out
    assert "bad.csv" in err and "rating" in err


def test_missing_dataset_is_reported(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "data", "describe", "no-such-dataset")
    assert code == 1
    assert "no-such-dataset" in err
    assert "Traceback" not in err


def test_bad_flag_value_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "evaluate", "--k", "zero")
    assert code == 2
    assert "Traceback" not in err


def test_unknown_model_is_a_clean_error(capsys: pytest.CaptureFixture[str], ratings_csv: Path) -> None:
    code, _, err = run(capsys, "evaluate", "--dataset", str(ratings_csv), "--models", "nosuchmodel")
    assert code == 1
    assert "unknown model" in err and "nosuchmodel" in err


def test_prepare_and_split_write_datasets(
    capsys: pytest.CaptureFixture[str], ratings_csv: Path, tmp_path: Path
) -> None:
    prepared = tmp_path / "prepared"
    code, _, err = run(
        capsys,
        "data",
        "prepare",
        str(ratings_csv),
        "--out",
        str(prepared),
        "--min-user",
        "5",
        "--implicit-threshold",
        "3",
    )
    assert code == 0, err
    code, out, err = run(capsys, "data", "describe", str(prepared), "--json")
    assert code == 0, err
    described = json.loads(out)
    # What the two steps must leave, computed from the file itself: ratings >= 3 as value 1, then users with >= 5.
    kept = pl.read_csv(ratings_csv).filter(pl.col("rating") >= 3)
    kept = kept.filter(pl.len().over("user_id") >= 5)
    n_kept = kept.height
    assert 0 < n_kept < pl.read_csv(ratings_csv).height
    assert described["interactions"] == n_kept
    assert described["value"]["min"] == described["value"]["max"] == 1.0
    assert described["ratings"] == {f"{r:g}": n for r, n in kept.group_by("rating").len().sort("rating").iter_rows()}
    assert described["interactions_per_user"]["min"] >= 5
    splits = tmp_path / "splits"
    code, out, err = run(
        capsys,
        "data",
        "split",
        str(ratings_csv),
        "--method",
        "temporal-user",
        "--out",
        str(splits),
    )
    assert code == 0, err
    assert (splits / "train").is_dir() and (splits / "test").is_dir()
    assert "train" in out and "test" in out


def test_evaluate_on_a_dataset_writes_report(
    capsys: pytest.CaptureFixture[str], ratings_csv: Path, tmp_path: Path
) -> None:
    out_dir = tmp_path / "report"
    code, out, err = run(
        capsys,
        "evaluate",
        "--dataset",
        str(ratings_csv),
        "--models",
        "popular,ease",
        "--param",
        "ease.l2=50",
        "--k",
        "5",
        "--out",
        str(out_dir),
    )
    assert code == 0, err
    for name in ("comparison.md", "comparison.json", "comparison.png"):
        assert (out_dir / name).stat().st_size > 0
    assert "ease" in out and "popular" in out


def test_evaluate_with_user_split_files(capsys: pytest.CaptureFixture[str], ratings_csv: Path, tmp_path: Path) -> None:
    df = pl.read_csv(ratings_csv)
    train = tmp_path / "train.csv"
    test = tmp_path / "test.csv"
    df.filter(pl.col("timestamp") % 100 < 9).write_csv(train)
    df.filter(pl.col("timestamp") % 100 >= 9).write_csv(test)
    code, _, err = run(
        capsys,
        "evaluate",
        "--train",
        str(train),
        "--test",
        str(test),
        "--models",
        "popular",
        "--out",
        str(tmp_path / "r"),
    )
    assert code == 0, err
    assert (tmp_path / "r" / "comparison.json").exists()


def test_param_without_model_prefix_is_refused_for_several_models(
    capsys: pytest.CaptureFixture[str], ratings_csv: Path
) -> None:
    code, _, err = run(capsys, "evaluate", "--dataset", str(ratings_csv), "--models", "popular,ease", "--param", "l2=5")
    assert code == 1
    assert "prefix the model name" in err


def test_tune_saves_a_study(capsys: pytest.CaptureFixture[str], ratings_csv: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "study"
    code, out, err = run(
        capsys, "tune", "--model", "ease", "--dataset", str(ratings_csv), "--trials", "2", "--out", str(out_dir)
    )
    assert code == 0, err
    assert "best ndcg@10" in out
    assert (out_dir / "best.json").is_file() and (out_dir / "study.db").is_file()


def test_tune_refuses_zero_trials(capsys: pytest.CaptureFixture[str], ratings_csv: Path) -> None:
    code, _, err = run(capsys, "tune", "--dataset", str(ratings_csv), "--trials", "0")
    assert code == 2
    assert "Traceback" not in err
