"""Avro message schemas: load every version, encode and decode messages with a small self-describing header.

Every message is ``MAGIC | schema id | schema version | Avro body`` (three header bytes, then the record in Avro
binary without a container). The header travels inside the bytes, so it survives any transport (Kafka, HTTP, the
dead-letter table) and needs no schema registry.

Evolution rule, checked when the schemas are loaded: a new version of a schema only *appends* fields, each with a
default. That gives both directions of compatibility:

- a newer consumer reads an older message through Avro schema resolution (the missing fields take their defaults);
- an older consumer reads a newer message by decoding the fields it knows with its latest schema: Avro binary
  writes record fields in order, so the known fields are a prefix of the body and the appended ones are skipped.

Schema files live in ``stream/schemas/<name>.v<version>.avsc``.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, cast

import fastavro
from fastavro.validation import validate as _avro_validate

from tastebud.errors import DataValidationError

#: First byte of every Tastebud message: never valid UTF-8, so JSON or text sent by mistake is told apart at once.
MAGIC = 0xF5
#: Bytes before the Avro body: magic, schema id, schema version.
HEADER_SIZE = 3
#: Stable one-byte ids of the schemas (never reuse or renumber one).
SCHEMA_IDS: dict[str, int] = {"rating": 1, "interaction": 2, "recommendation_served": 3}
SCHEMA_NAMES: dict[int, str] = {v: k for k, v in SCHEMA_IDS.items()}
#: Directory of the schema files shipped with the package.
SCHEMA_DIR = Path(__file__).with_name("schemas")

_FILE_RE = re.compile(r"^(?P<name>[a-z_]+)\.v(?P<version>\d+)\.avsc$")
_DECODE_ERRORS = (EOFError, ValueError, UnicodeDecodeError, IndexError, StopIteration, OverflowError, TypeError)


class MessageError(DataValidationError):
    """A message cannot be decoded or does not match its schema.

    Attributes:
        code: low-cardinality reason code used as a metric label and in dead letters.
    """

    code = "invalid_message"

    def __init__(self, message: str, *, code: str = "invalid_message") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class SchemaVersion:
    """One version of one message schema."""

    name: str
    version: int
    schema: dict[str, Any]
    parsed: Any = field(repr=False)
    path: Path | None = None

    @property
    def field_names(self) -> list[str]:
        """Field names in order."""
        return [f["name"] for f in self.schema["fields"]]


@dataclass(frozen=True, slots=True)
class Decoded:
    """A decoded message: which schema and version the producer used, and the record."""

    name: str
    version: int
    record: dict[str, Any]
    #: True when the producer used a newer version than this process knows (extra fields were skipped).
    newer: bool = False


class SchemaSet:
    """Every known version of every message schema; encodes and decodes messages.

    Args:
        schemas: the versions to hold; by default every ``*.avsc`` file of :data:`SCHEMA_DIR`.

    Raises:
        MessageError: a schema is unknown by id, versions are not contiguous, or a version breaks the append-only
            evolution rule.
    """

    def __init__(self, schemas: Iterable[SchemaVersion] | None = None) -> None:
        versions = list(schemas) if schemas is not None else list(load_schema_dir(SCHEMA_DIR))
        self._versions: dict[str, dict[int, SchemaVersion]] = {}
        for sv in versions:
            if sv.name not in SCHEMA_IDS:
                raise MessageError(f"{sv.path or sv.name}: unknown schema name {sv.name!r}; known: {list(SCHEMA_IDS)}")
            self._versions.setdefault(sv.name, {})[sv.version] = sv
        for name, by_version in self._versions.items():
            numbers = sorted(by_version)
            if numbers != list(range(1, len(numbers) + 1)):
                raise MessageError(f"schema {name!r}: versions must be 1..n without gaps, found {numbers}")
            for v in numbers[1:]:
                check_evolution(by_version[v - 1], by_version[v])
        self._latest = {name: by_version[max(by_version)] for name, by_version in self._versions.items()}

    @property
    def names(self) -> list[str]:
        """Schema names held."""
        return sorted(self._versions)

    def latest(self, name: str) -> SchemaVersion:
        """The newest version of schema ``name``."""
        try:
            return self._latest[name]
        except KeyError:
            raise MessageError(f"unknown schema {name!r}; known: {self.names}", code="unknown_schema") from None

    def get(self, name: str, version: int) -> SchemaVersion:
        """One version of a schema."""
        try:
            return self._versions[name][version]
        except KeyError:
            raise MessageError(f"schema {name!r} has no version {version}", code="unknown_schema") from None

    def encode(self, name: str, record: Mapping[str, Any], *, version: int | None = None, check: bool = True) -> bytes:
        """Encode a record as a message: header plus Avro body.

        Args:
            name: schema name (``rating``, ``interaction``, ``recommendation_served``).
            record: field values; fields with defaults may be left out.
            version: schema version to write; the latest by default.
            check: validate the record against the schema first (clearer errors; a few microseconds).

        Raises:
            MessageError: the record does not match the schema (names the field).
        """
        sv = self.latest(name) if version is None else self.get(name, version)
        if check:
            validate_record(sv, record)
        buf = io.BytesIO()
        buf.write(bytes((MAGIC, SCHEMA_IDS[name], sv.version)))
        try:
            fastavro.schemaless_writer(buf, sv.parsed, dict(record))
        except (TypeError, ValueError, AttributeError, KeyError) as err:
            raise MessageError(f"{name} v{sv.version}: cannot encode record: {err}", code="invalid_record") from err
        return buf.getvalue()

    def decode(self, data: bytes) -> Decoded:
        """Decode a message produced by :meth:`encode` (this version of the code or another).

        Raises:
            MessageError: not a Tastebud message, unknown schema, truncated or corrupt body, or trailing bytes.
        """
        name, version = self.read_header(data)
        by_version = self._versions.get(name)
        if not by_version:
            raise MessageError(f"schema {name!r} (id {SCHEMA_IDS[name]}) is not loaded", code="unknown_schema")
        latest = self._latest[name]
        newer = version > latest.version
        writer = latest if newer else by_version.get(version)
        if writer is None:  # pragma: no cover - versions are contiguous, so only a newer one can be missing
            raise MessageError(f"schema {name!r} has no version {version}", code="unknown_schema")
        buf = io.BytesIO(data)
        buf.seek(HEADER_SIZE)
        # Same version: no resolution needed (faster). Older writer: resolve into the latest (defaults fill in).
        reader = None if newer or writer is latest else latest.parsed
        try:
            record = fastavro.schemaless_reader(buf, writer.parsed, reader)
        except _DECODE_ERRORS as err:
            raise MessageError(
                f"{name} v{version}: corrupt or truncated Avro body ({type(err).__name__}: {err})", code="decode_error"
            ) from err
        if not newer and buf.tell() != len(data):
            raise MessageError(
                f"{name} v{version}: {len(data) - buf.tell()} trailing bytes after the record", code="decode_error"
            )
        # Every message schema is an Avro record, so the reader returns a dict.
        return Decoded(name, version, cast(dict[str, Any], record), newer)

    @staticmethod
    def read_header(data: bytes) -> tuple[str, int]:
        """Schema name and version from a message's header."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise MessageError(f"message is {type(data).__name__}, expected bytes", code="not_bytes")
        if len(data) < HEADER_SIZE:
            raise MessageError(
                f"message of {len(data)} bytes is shorter than the {HEADER_SIZE}-byte header", code="bad_header"
            )
        if data[0] != MAGIC:
            raise MessageError(
                f"first byte 0x{data[0]:02x} is not the Tastebud magic byte 0x{MAGIC:02x}", code="bad_header"
            )
        name = SCHEMA_NAMES.get(data[1])
        if name is None:
            raise MessageError(
                f"unknown schema id {data[1]} in the header; known: {SCHEMA_NAMES}", code="unknown_schema"
            )
        if data[2] == 0:
            raise MessageError(f"{name}: schema version 0 in the header (versions start at 1)", code="bad_header")
        return name, data[2]


def validate_record(sv: SchemaVersion, record: Mapping[str, Any]) -> None:
    """Check a record against one schema version.

    Raises:
        MessageError: unknown fields, or a missing or mistyped field (named).
    """
    if not isinstance(record, Mapping):
        raise MessageError(f"{sv.name}: record is {type(record).__name__}, expected a mapping", code="invalid_record")
    extra = set(record) - set(sv.field_names)
    if extra:
        raise MessageError(f"{sv.name} v{sv.version}: unknown fields {sorted(extra)}", code="invalid_record")
    for f in sv.schema["fields"]:
        if f["name"] not in record and "default" not in f:
            raise MessageError(
                f"{sv.name} v{sv.version}: required field {f['name']!r} is missing", code="invalid_record"
            )
    try:
        _avro_validate(dict(record), sv.parsed, raise_errors=True)
    except Exception as err:  # fastavro raises ValidationError (a ValueError) with the offending field paths
        raise MessageError(f"{sv.name} v{sv.version}: {err}", code="invalid_record") from err


def check_evolution(old: SchemaVersion, new: SchemaVersion) -> None:
    """Check that ``new`` only appends fields with defaults to ``old`` (see the module docstring).

    Raises:
        MessageError: a field was removed, renamed, reordered or retyped, or an appended field has no default.
    """
    old_fields, new_fields = old.schema["fields"], new.schema["fields"]
    where = f"schema {new.name!r} v{new.version}"
    if len(new_fields) < len(old_fields):
        raise MessageError(f"{where} drops fields of v{old.version}; versions may only append fields")
    for a, b in zip(old_fields, new_fields, strict=False):
        if a["name"] != b["name"] or a["type"] != b["type"]:
            raise MessageError(
                f"{where}: field {b['name']!r} differs from v{old.version}'s {a['name']!r} "
                "(fields may only be appended, never renamed, reordered or retyped)"
            )
    for f in new_fields[len(old_fields) :]:
        if "default" not in f:
            raise MessageError(f"{where}: appended field {f['name']!r} needs a default so older messages decode")


def load_schema_file(path: Path) -> SchemaVersion:
    """Read one ``<name>.v<version>.avsc`` file."""
    match = _FILE_RE.match(path.name)
    if not match:
        raise MessageError(f"{path}: schema files are named <name>.v<version>.avsc")
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
        parsed = fastavro.parse_schema(schema)
    except (OSError, json.JSONDecodeError, fastavro.schema.SchemaParseException) as err:
        raise MessageError(f"{path}: not a valid Avro schema: {err}") from err
    return SchemaVersion(match["name"], int(match["version"]), schema, parsed, path)


def load_schema_dir(directory: Path) -> list[SchemaVersion]:
    """Read every schema file of a directory."""
    return [load_schema_file(p) for p in sorted(directory.glob("*.avsc"))]


def schema_version(name: str, version: int, schema: dict[str, Any]) -> SchemaVersion:
    """Build a :class:`SchemaVersion` from a schema dict (used for tests and tools)."""
    return SchemaVersion(name, version, schema, fastavro.parse_schema(schema))


@lru_cache(maxsize=1)
def default_schemas() -> SchemaSet:
    """The schemas shipped with this package (loaded once per process)."""
    return SchemaSet()


def encode(name: str, record: Mapping[str, Any], *, check: bool = True) -> bytes:
    """Encode a record with the latest shipped version of schema ``name``."""
    return default_schemas().encode(name, record, check=check)


def decode(data: bytes) -> Decoded:
    """Decode a message with the shipped schemas."""
    return default_schemas().decode(data)
