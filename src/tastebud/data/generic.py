"""Delimited-text reading with errors that name the file and line, and the generic CSV/Parquet reader.

Every format reader parses through :func:`read_table`. It tries the fast typed polars parse first; only when
that parse fails, or leaves a required field empty, is the file read again as plain text to find the first
offending line (wrong number of fields, invalid UTF-8, a value that is not a number, an empty field). Good
files therefore pay nothing for the diagnosis, and bad files get one clear :class:`DataValidationError`.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import polars as pl

from tastebud.data.dataset import Dataset
from tastebud.errors import DataValidationError

#: Canonical columns a generic file may be mapped onto, interactions first.
INTERACTION_COLUMNS = ("user_id", "item_id", "rating", "value", "timestamp")
ITEM_META_COLUMNS = ("title", "year", "genres", "tags")

_HEAD_BYTES = 65536
# Lines are re-read as one column: this separator byte almost never occurs in text (and ragged lines are
# truncated anyway).
_LINE_SEPARATOR = "\x1f"


def check_file(path: Path, *, expected: str, encoding: str = "UTF-8", head: bytes | None = None) -> bytes:
    """Fail early on a missing, empty or UTF-16 file; return its first bytes.

    Args:
        path: the file.
        expected: what the file should hold, for messages ("tab-separated ratings").
        encoding: the encoding the format uses, named in the message.
        head: the first bytes when the caller has them already.
    """
    if head is None:
        if not path.is_file():
            raise DataValidationError(f"{path}: file not found (expected {expected})")
        with path.open("rb") as fh:
            head = fh.read(_HEAD_BYTES)
    if not head.strip():
        raise DataValidationError(f"{path}: the file is empty (expected {expected})")
    if head.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in head:
        raise DataValidationError(
            f"{path}: not {encoding} text (it looks like UTF-16 or binary data); expected {encoding}-encoded {expected}"
        )
    return head


def read_header(head: bytes, separator: str, quote_char: str | None) -> list[str]:
    """Column names on the first line of ``head`` (quote-aware, BOM stripped)."""
    first = head.split(b"\n", 1)[0].decode("utf-8", errors="replace").lstrip("\ufeff").rstrip("\r")
    if quote_char is None:
        return [c.strip() for c in first.split(separator)]
    try:
        row = next(csv.reader([first], delimiter=separator, quotechar=quote_char), [])
    except csv.Error:  # e.g. a stray carriage return inside the line: the names by the separator alone
        return [c.strip() for c in first.split(separator)]
    return [c.strip() for c in row]


def read_table(
    path: Path,
    schema: Mapping[str, pl.DataType | type[pl.DataType]],
    *,
    separator: str = ",",
    has_header: bool = True,
    quote_char: str | None = '"',
    required: Sequence[str] | None = None,
    optional: Sequence[str] = (),
    data: bytes | None = None,
    display_separator: str | None = None,
    encoding: str = "UTF-8",
    expected: str = "a table",
) -> pl.DataFrame:
    """Parse a delimited file into typed columns, or raise one error naming the first bad line.

    Args:
        path: the file (named in errors; read unless ``data`` is given).
        schema: columns to return with their dtypes. With a header these are header names (other columns are
            ignored); without one they are all the fields of a line, in order.
        separator: one-character field separator.
        has_header: whether the first line names the columns.
        quote_char: CSV quote character, or ``None`` for formats without quoting.
        required: columns that may not be empty (default: every column of ``schema``).
        optional: header columns that may be absent (they are then left out of the result).
        data: the file's content already converted to UTF-8 (latin-1 files, ``::`` separators); it must keep
            the file's lines so that line numbers stay right.
        display_separator: separator named in messages when ``data`` replaced the file's own.
        encoding: the file's encoding, named in messages.
        expected: what the file should hold, for messages.

    Raises:
        DataValidationError: empty file, UTF-16 or invalid UTF-8 text, missing column, a line with the wrong
            number of fields, a value of the wrong type, or an empty required field.
    """
    head = check_file(path, expected=expected, encoding=encoding, head=None if data is None else data[:_HEAD_BYTES])
    source: Any = path if data is None else io.BytesIO(data)
    kwargs: dict[str, Any]
    if has_header:
        header = read_header(head, separator, quote_char)
        missing = [c for c in schema if c not in header and c not in optional]
        if missing:
            raise DataValidationError(
                f"{path}: missing column{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}; "
                f"expected columns {list(schema)}, found {header}"
            )
        present = {c: t for c, t in schema.items() if c in header}
        overrides = {h: present.get(h, pl.String) for h in header}
        kwargs = {"columns": list(present), "schema_overrides": overrides, "has_header": True}
        n_fields = len(header)
    else:
        present = dict(schema)
        kwargs = {"schema": present, "has_header": False}
        n_fields = len(schema)
    required = list(present) if required is None else [c for c in required if c in present]
    diagnose_args: dict[str, Any] = {
        "path": path,
        "data": data,
        "schema": present,
        "separator": separator,
        "display_separator": display_separator or separator,
        "has_header": has_header,
        "quote_char": quote_char,
        "n_fields": n_fields,
        "required": required,
        "encoding": encoding,
    }
    try:
        frame = pl.read_csv(source, separator=separator, quote_char=quote_char, encoding="utf8", **kwargs)
    except pl.exceptions.PolarsError as err:
        _diagnose(**diagnose_args)
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataValidationError(f"{path}: could not be parsed as {expected} ({reason})") from err
    if frame.height == 0:
        raise DataValidationError(f"{path}: no data rows (expected {expected})")
    if any(frame[c].null_count() for c in required):
        _diagnose(**diagnose_args)
        col = next(c for c in required if frame[c].null_count())
        row = int(frame[col].is_null().arg_true()[0])
        raise DataValidationError(f"{path} line {row + 1 + has_header}: {col} is empty")
    return frame


def _diagnose(
    *,
    path: Path,
    data: bytes | None,
    schema: Mapping[str, Any],
    separator: str,
    display_separator: str,
    has_header: bool,
    quote_char: str | None,
    n_fields: int,
    required: Sequence[str],
    encoding: str,
) -> None:
    """Re-read a file that failed the typed parse as text and raise an error naming its first bad line.

    Returns without raising when no problem is found (the caller then reports the parser's own message).
    """

    def source() -> Any:
        return path if data is None else io.BytesIO(data)

    try:
        lines = pl.read_csv(
            source(),
            has_header=False,
            separator=_LINE_SEPARATOR,
            quote_char=None,
            schema={"line": pl.String},
            encoding="utf8-lossy",
            truncate_ragged_lines=True,
        )["line"]
    except pl.exceptions.PolarsError:
        return
    first_line = 1 + has_header
    invalid = lines.str.contains("\ufffd", literal=True).fill_null(False)
    if invalid.any():
        n = int(invalid.arg_true()[0]) + 1
        raise DataValidationError(
            f"{path} line {n}: not valid {encoding} text; expected {encoding}-encoded data (is the file in "
            "another encoding, such as latin-1 or UTF-16?)"
        )
    body = lines.slice(first_line - 1)
    stripped = body.str.replace_all(f"{quote_char}[^{quote_char}]*{quote_char}", "") if quote_char else body
    counts = (stripped.str.count_matches(separator, literal=True) + 1).fill_null(0)
    wrong = counts != n_fields
    if wrong.any():
        row = int(wrong.arg_true()[0])
        found = int(counts[row])
        what = "is empty" if found == 0 else f"has {found} field{'s' if found != 1 else ''}"
        raise DataValidationError(
            f"{path} line {row + first_line}: {what}; expected {n_fields} fields separated by {display_separator!r}"
        )
    del lines, body, stripped, counts
    text_kwargs: dict[str, Any] = (
        {"columns": list(schema), "infer_schema": False} if has_header else {"schema": {c: pl.String for c in schema}}
    )
    try:
        text = pl.read_csv(
            source(),
            has_header=has_header,
            separator=separator,
            quote_char=quote_char,
            encoding="utf8-lossy",
            **text_kwargs,
        )
    except pl.exceptions.PolarsError:
        return  # not even readable as text columns (e.g. quotes that merge fields): the parser's message stands
    problems: list[tuple[int, str]] = []
    for col, dtype in schema.items():
        values = text[col]
        if col in required and values.null_count():
            problems.append((int(values.is_null().arg_true()[0]), f"{col} is empty"))
        dt = dtype() if isinstance(dtype, type) else dtype
        if dt.is_numeric():
            cast = values.str.strip_chars().cast(dt, strict=False)
            bad = cast.is_null() & values.is_not_null()
            if bad.any():
                row = int(bad.arg_true()[0])
                kind = "an integer" if dt.is_integer() else "a number"
                problems.append((row, f"{col} {values[row]!r} is not {kind}"))
    if problems:
        row, message = min(problems)
        raise DataValidationError(f"{path} line {row + first_line}: {message}")


# ---------------------------------------------------------------------- generic CSV / Parquet
def read_generic(
    path: Path,
    *,
    fmt: str,
    mapping: Mapping[str, str] | None = None,
    name: str | None = None,
    meta: Mapping[str, Any] | None = None,
) -> Dataset:
    """Read any CSV/TSV or Parquet file of interactions, with an optional column mapping.

    Args:
        path: the file.
        fmt: ``"csv"`` (``.tsv`` and ``.tab`` files are tab-separated, others comma-separated unless the
            header line has tabs and no commas) or ``"parquet"``.
        mapping: canonical column -> column in the file, e.g. ``{"user_id": "uid", "item_id": "sku",
            "rating": "stars"}``. Canonical columns are ``user_id``, ``item_id``, ``rating``, ``value``,
            ``timestamp`` and item metadata ``title``, ``year``, ``genres``, ``tags`` (the first value per
            item is kept). Without a mapping, columns that already have canonical names (or ``userId``,
            ``movieId``) are used.
        name: dataset name (default: the file's stem).
        meta: provenance to keep.
    """
    mapping = dict(mapping or {})
    unknown = [k for k in mapping if k not in INTERACTION_COLUMNS + ITEM_META_COLUMNS]
    if unknown:
        raise DataValidationError(
            f"{path}: unknown mapping key{'s' if len(unknown) > 1 else ''} {unknown}; "
            f"expected some of {list(INTERACTION_COLUMNS + ITEM_META_COLUMNS)}"
        )
    frame = _read_parquet(path, mapping) if fmt == "parquet" else _read_generic_csv(path, mapping)
    frame = frame.rename({src: canon for canon, src in mapping.items() if src in frame.columns and src != canon})
    items = None
    meta_cols = [c for c in ITEM_META_COLUMNS if c in frame.columns]
    if meta_cols:
        item_col = "item_id" if "item_id" in frame.columns else None
        if item_col is not None:
            items = frame.select(item_col, *meta_cols).unique(item_col, keep="first", maintain_order=True)
        frame = frame.drop(meta_cols)
    return Dataset.from_frame(
        frame,
        items=items,
        name=name or path.stem,
        meta={**(meta or {}), "files": [path.name], "mapping": mapping},
        source=str(path),
    )


def _read_parquet(path: Path, mapping: Mapping[str, str]) -> pl.DataFrame:
    try:
        schema = pl.read_parquet_schema(path)
    except (pl.exceptions.PolarsError, OSError) as err:
        raise DataValidationError(f"{path}: not a readable Parquet file ({err})") from err
    missing = [src for src in mapping.values() if src not in schema]
    if missing:
        raise DataValidationError(
            f"{path}: missing column{'s' if len(missing) > 1 else ''} {missing} named in the mapping; "
            f"found columns {list(schema)}"
        )
    return pl.read_parquet(path)


def _read_generic_csv(path: Path, mapping: Mapping[str, str]) -> pl.DataFrame:
    head = check_file(path, expected="a table of interactions with a header line")
    separator = _guess_separator(path, head)
    header = read_header(head, separator, '"')
    wanted = {canon: mapping.get(canon, canon) for canon in INTERACTION_COLUMNS + ITEM_META_COLUMNS}
    aliases = {"user_id": ("userId", "user", "userid"), "item_id": ("itemId", "item", "movieId", "movie_id")}
    for canon, names in aliases.items():
        if canon not in mapping and wanted[canon] not in header:
            wanted[canon] = next((n for n in names if n in header), wanted[canon])
    missing = [f"{src!r}" for canon, src in wanted.items() if canon in ("user_id", "item_id") and src not in header]
    missing += [
        f"{src!r}" for canon, src in mapping.items() if src not in header and canon not in ("user_id", "item_id")
    ]
    if missing:
        raise DataValidationError(
            f"{path}: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)}; found {header}"
        )
    numeric = {"rating": pl.Float64, "value": pl.Float64}
    schema: dict[str, Any] = {}
    for canon, src in wanted.items():
        if src not in header:
            continue
        schema[src] = numeric.get(canon, pl.String)
    required = [wanted["user_id"], wanted["item_id"]] + [wanted[c] for c in ("value",) if wanted[c] in header]
    # Ids are read as strings: they may be anything, and an integer-looking first chunk proves nothing.
    frame = read_table(
        path, schema, separator=separator, required=required, data=None, expected="a table of interactions"
    )
    renames = {src: canon for canon, src in wanted.items() if src in frame.columns and src != canon}
    return frame.rename(renames)


def _guess_separator(path: Path, head: bytes) -> str:
    if path.suffix.lower() in (".tsv", ".tab"):
        return "\t"
    first = head.split(b"\n", 1)[0]
    if b"\t" in first and b"," not in first:
        return "\t"
    if b";" in first and b"," not in first and b"\t" not in first:
        return ";"
    return ","
