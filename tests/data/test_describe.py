"""`describe_dataset`: duplicate (user, item) rows are reported and density counts distinct pairs."""

from __future__ import annotations

import polars as pl
import pytest

from tastebud.data.dataset import Dataset
from tastebud.data.describe import describe_dataset


def test_repeated_rows_are_reported_and_density_stays_a_share() -> None:
    # 3 identical rows of one pair, twice another pair, once a third: 6 rows, 3 distinct pairs
    frame = pl.DataFrame(
        {
            "user_id": ["u1"] * 3 + ["u2"] * 2 + ["u2"],
            "item_id": ["i1"] * 3 + ["i1"] * 2 + ["i2"],
            "rating": [4.0] * 6,
        }
    )
    summary = describe_dataset(Dataset.from_frame(frame, name="dupes"))
    assert summary["interactions"] == 6
    assert summary["distinct_pairs"] == 3
    assert summary["duplicate_rows"] == 3 and summary["duplicate_share"] == pytest.approx(0.5)
    assert summary["duplicated_pairs"] == 2
    assert summary["density"] == pytest.approx(3 / (2 * 2))  # distinct pairs over users x items


def test_many_identical_rows_never_exceed_full_density() -> None:
    # the case: a million identical rows reported a density of 100,000,000%
    frame = pl.DataFrame({"user_id": ["u"] * 1_000_000, "item_id": ["i"] * 1_000_000})
    summary = describe_dataset(Dataset.from_frame(frame, name="same"))
    assert summary["density"] == 1.0
    assert summary["duplicate_rows"] == 999_999 and summary["duplicate_share"] == pytest.approx(0.999999)


def test_no_duplicates() -> None:
    frame = pl.DataFrame({"user_id": ["a", "a", "b"], "item_id": ["x", "y", "x"]})
    summary = describe_dataset(Dataset.from_frame(frame, name="clean"))
    assert summary["duplicate_rows"] == 0 and summary["duplicate_share"] == 0.0 and summary["duplicated_pairs"] == 0
    assert summary["density"] == pytest.approx(3 / 4)


def test_cli_describe_shows_duplicates(tmp_path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from tastebud.cli import main

    monkeypatch.setenv("COLUMNS", "200")
    path = tmp_path / "dupes.csv"
    pl.DataFrame({"user_id": ["u"] * 50 + ["v"], "item_id": ["i"] * 50 + ["j"], "rating": [3] * 51}).write_csv(path)
    code = main(["--home", str(tmp_path / "home"), "data", "describe", str(path)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "49 rows (96.08%) repeat 1 (user, item) pairs" in out
    assert "50.0000% (distinct pairs)" in out
