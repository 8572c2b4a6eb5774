"""Property-based fuzzing of the readers: whatever bytes a file holds, reading it either gives a dataset or raises
one of the documented errors (:class:`DataValidationError`, :class:`DatasetNotFoundError`), never anything else.

The generated files mix valid rows of each format with mutated ones (a field dropped, doubled or replaced by
arbitrary text, stray separators, invalid UTF-8, NUL bytes, huge numbers), so the readers' error paths are reached
past their first line as well as on it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from tastebud.data.lastfm import LASTFM_FILE
from tastebud.data.readers import read_dataset
from tastebud.errors import DatasetNotFoundError, DataValidationError

DOCUMENTED = (DataValidationError, DatasetNotFoundError)

#: format name -> (file name, header line or "", a valid row builder, field separator)
FORMATS = {
    "movielens-csv": ("ratings.csv", "userId,movieId,rating,timestamp\n", "{u},{i},{r}.0,{t}", ","),
    "ml-100k": ("u.data", "", "{u}\t{i}\t{r}\t{t}", "\t"),
    "ml-1m": ("ratings.dat", "", "{u}::{i}::{r}::{t}", "::"),
    "lastfm-360k": (LASTFM_FILE, "", "user{u}\tmbid-{i}\tartist {i}\t{p}", "\t"),
    "recbole": (
        "data.inter",
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n",
        "{u}\t{i}\t{r}\t{t}",
        "\t",
    ),
    "csv": ("plain.csv", "user_id,item_id,rating,timestamp\n", "{u},{i},{r},{t}", ","),
}

junk_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)) | st.sampled_from(["\x00", ",", "\t", ":", '"']),
    max_size=12,
)
numbers = st.one_of(
    st.integers(min_value=-3, max_value=2000),
    st.sampled_from([10**30, -(10**20), 0]),
)


@st.composite
def row(draw: st.DrawFn, template: str, sep: str) -> bytes:
    """One line: valid for the format, or mutated."""
    values = {"u": draw(numbers), "i": draw(numbers), "r": draw(st.integers(0, 6)), "t": draw(numbers),
              "p": draw(numbers)}  # fmt: skip
    line = template.format(**values)
    mutation = draw(st.sampled_from(["none", "none", "none", "drop", "extra", "junk", "bytes", "empty"]))
    fields = line.split(sep)
    if mutation == "drop" and len(fields) > 1:
        fields.pop(draw(st.integers(0, len(fields) - 1)))
    elif mutation == "extra":
        fields.append(draw(junk_text))
    elif mutation == "junk":
        fields[draw(st.integers(0, len(fields) - 1))] = draw(junk_text)
    elif mutation == "empty":
        fields = [""] * len(fields)
    data = sep.join(fields).encode("utf-8", "surrogatepass")
    if mutation == "bytes":
        data += draw(st.binary(max_size=8))
    return data


@st.composite
def dataset_file(draw: st.DrawFn) -> tuple[str, str, bytes]:
    fmt = draw(st.sampled_from(sorted(FORMATS)))
    name, header, template, sep = FORMATS[fmt]
    rows = draw(st.lists(row(template, sep), max_size=30))
    keep_header = draw(st.booleans()) if header else False
    body = (header.encode() if keep_header or draw(st.integers(0, 3)) else b"") + b"\n".join(rows)
    if draw(st.integers(0, 9)) == 0:
        body = draw(st.binary(max_size=200))  # sometimes nothing like the format at all
    return fmt, name, body


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=dataset_file())
@example(case=("csv", "ratings.csv", b"0,0,0,0\r\x01\n0,0,0,0\n0,0,0,0\n"))  # a stray CR in the header line
def test_readers_raise_only_documented_errors(case: tuple[str, str, bytes]) -> None:
    fmt, name, body = case
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "data"
        directory.mkdir()
        (directory / name).write_bytes(body)
        source = directory / name if fmt in ("csv", "recbole") else directory
        try:
            dataset = read_dataset(source, format=fmt)
        except DOCUMENTED as err:
            event(f"{fmt}: {type(err).__name__}")
            message = str(err)
            assert message and "Traceback" not in message
            assert len(message) < 2_000, "an error message must stay short whatever the input"
        else:
            event(f"{fmt}: read")
            assert dataset.n_interactions >= 0
