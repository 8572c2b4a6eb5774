"""Malformed input gives one DataValidationError naming the file and the line or column, never a traceback."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from tastebud.data.readers import read_dataset
from tastebud.errors import DataValidationError

HEADER = "userId,movieId,rating,timestamp\n"


def _ratings_lines(n: int) -> list[str]:
    return [f"{1 + i % 7},{10 + i % 13},{1 + i % 5}.0,{964_982_703 + i}\n" for i in range(n)]


def _ml_dir(tmp_path: Path, body: str | bytes, name: str = "ratings.csv") -> Path:
    d = tmp_path / "ml"
    d.mkdir(exist_ok=True)
    path = d / name
    if isinstance(body, bytes):
        path.write_bytes(body)
    else:
        path.write_text(body)
    return d


def _error(source: Path, **kwargs: object) -> str:
    with pytest.raises(DataValidationError) as info:
        read_dataset(source, **kwargs)  # type: ignore[arg-type]
    return str(info.value)


def test_non_numeric_rating_names_file_line_column_and_value(tmp_path: Path) -> None:
    lines = _ratings_lines(1000)
    lines[810] = "5,20,x,964983513\n"  # data row 811 is line 812 counting the header
    message = _error(_ml_dir(tmp_path, HEADER + "".join(lines)))
    assert message.endswith("ratings.csv line 812: rating 'x' is not a number")


def test_non_integer_id(tmp_path: Path) -> None:
    lines = _ratings_lines(50)
    lines[4] = "7,abc,3.0,964983513\n"
    assert "ratings.csv line 6: movieId 'abc' is not an integer" in _error(_ml_dir(tmp_path, HEADER + "".join(lines)))


def test_missing_column_lists_expected_and_found(tmp_path: Path) -> None:
    message = _error(_ml_dir(tmp_path, "userId,movieId,timestamp\n1,2,3\n"))
    assert "ratings.csv: missing column 'rating'" in message
    assert "found ['userId', 'movieId', 'timestamp']" in message


@pytest.mark.parametrize(
    ("bad_line", "expected"),
    [
        ("1,2,3.0,964982703,extra\n", "line 4: has 5 fields; expected 4 fields separated by ','"),
        ("1,2\n", "line 4: has 2 fields; expected 4 fields separated by ','"),
        ("\n", "line 4: is empty; expected 4 fields"),
    ],
)
def test_wrong_number_of_fields(tmp_path: Path, bad_line: str, expected: str) -> None:
    lines = _ratings_lines(5)
    lines.insert(2, bad_line)
    assert expected in _error(_ml_dir(tmp_path, HEADER + "".join(lines)))


def test_empty_file_and_header_only(tmp_path: Path) -> None:
    assert "ratings.csv: the file is empty" in _error(_ml_dir(tmp_path, ""))
    assert "ratings.csv: no data rows" in _error(_ml_dir(tmp_path, HEADER))


def test_utf16_file_says_utf8_was_expected(tmp_path: Path) -> None:
    body = (HEADER + "".join(_ratings_lines(3))).encode("utf-16")
    message = _error(_ml_dir(tmp_path, body))
    assert "not UTF-8 text" in message and "looks like UTF-16" in message and "expected UTF-8" in message


def test_invalid_utf8_in_a_text_column_names_the_line(tmp_path: Path) -> None:
    d = _ml_dir(tmp_path, HEADER + "".join(_ratings_lines(3)))
    (d / "movies.csv").write_bytes(b"movieId,title,genres\n10,Fine (1995),Drama\n11,Caf\xe9 (1999),Drama\n")
    message = _error(d)
    assert "movies.csv line 3: not valid UTF-8 text" in message and "latin-1" in message


def test_empty_required_field(tmp_path: Path) -> None:
    lines = _ratings_lines(5)
    lines[3] = "1,,3.0,964982703\n"
    assert "ratings.csv line 5: movieId is empty" in _error(_ml_dir(tmp_path, HEADER + "".join(lines)))


def test_negative_play_count(tmp_path: Path) -> None:
    path = tmp_path / "usersha1-artmbid-artname-plays.tsv"
    path.write_text("u1\t\tA\t3\nu1\t\tB\t-4\n")
    message = _error(path)
    assert "plays.tsv line 2: plays -4 is negative" in message


def test_lastfm_non_integer_plays_and_extra_field(tmp_path: Path) -> None:
    path = tmp_path / "usersha1-artmbid-artname-plays.tsv"
    path.write_text("u1\t\tA\t3\nu1\t\tB\tlots\n")
    assert "plays.tsv line 2: plays 'lots' is not an integer" in _error(path)
    path.write_text("u1\t\tA\t3\nu1\t\tB\t4\t5\n")
    assert "plays.tsv line 2: has 5 fields; expected 4 fields separated by '\\t'" in _error(path)


def test_ml100k_u_data_bad_line(tmp_path: Path) -> None:
    d = tmp_path / "ml-100k"
    d.mkdir()
    (d / "u.data").write_text("196\t242\t3\t881250949\n186\t302\t3.5x\t891717742\n")
    assert "u.data line 2: rating '3.5x' is not a number" in _error(d)


def test_ml1m_reports_double_colon_separator(tmp_path: Path) -> None:
    d = tmp_path / "ml-1m"
    d.mkdir()
    (d / "ratings.dat").write_text("1::1193::5::978300760\n1::661::3\n")
    assert "ratings.dat line 2: has 3 fields; expected 4 fields separated by '::'" in _error(d)


def test_recbole_header_without_types(tmp_path: Path) -> None:
    path = tmp_path / "x.inter"
    path.write_text("user_id\titem_id\n1\t2\n")
    assert "x.inter line 1: header field 'user_id' is not 'name:type'" in _error(path)


def test_generic_csv_missing_mapped_column_and_bad_value(tmp_path: Path) -> None:
    path = tmp_path / "shop.csv"
    path.write_text("uid,sku,stars\na,x,4\nb,y,five\n")
    assert "shop.csv: missing column 'when'" in _error(
        path, mapping={"user_id": "uid", "item_id": "sku", "timestamp": "when"}
    )
    assert "shop.csv line 3: stars 'five' is not a number" in _error(
        path, mapping={"user_id": "uid", "item_id": "sku", "rating": "stars"}
    )


def test_generic_parquet_that_is_not_parquet(tmp_path: Path) -> None:
    path = tmp_path / "data.parquet"
    path.write_text("not parquet")
    assert "data.parquet: not a readable Parquet file" in _error(path)


def test_generic_parquet_negative_value_names_row(tmp_path: Path) -> None:
    path = tmp_path / "data.parquet"
    pl.DataFrame({"user_id": ["a", "b"], "item_id": ["x", "y"], "value": [1.0, -2.0]}).write_parquet(path)
    message = _error(path)
    assert "row 2" in message and "negative" in message


def test_errors_are_found_past_the_first_parse_chunk(tmp_path: Path) -> None:
    # far enough down that polars' schema inference and first chunks have passed
    lines = _ratings_lines(200_000)
    lines[-3] = "1,2,3.0,yesterday\n"
    assert "ratings.csv line 199999: timestamp 'yesterday' is not an integer" in _error(
        _ml_dir(tmp_path, HEADER + "".join(lines))
    )


def test_timestamp_beyond_64_bits_is_a_clear_error(tmp_path: Path) -> None:
    """Found by the readers' fuzz test: a float timestamp too large for epoch seconds raised polars' own error."""
    path = tmp_path / "data.inter"
    path.write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t2\t3\t1e30\n")
    assert "timestamp 1e+30 is not epoch seconds" in _error(path, format="recbole")
