"""The one rule for external ids (users, items, events, requests) at every entry point.

Every place that takes an id from outside goes through :func:`normalise_id`: ``POST /events`` and the Kafka consumer
(``event_id``, ``user_id``, ``item_id``), ``/recommend`` (path and body), ``/similar``, ``/items/{id}``,
``/users/{id}/history`` and ``/trace/{id}``. The experiment assignment hashes the same normal form
(:func:`canonical_id`), so a user is one user whichever door they come through.

The rule:

- a string (an integer is turned into its decimal string); surrounding whitespace is stripped: ``" 196 "`` is
  user ``196``;
- not empty after stripping;
- at most :data:`MAX_ID_LENGTH` characters (128: the store's ``event_id`` column; a deployment may set a lower
  bound, ``serving.max_id_chars``);
- no control characters (``U+0000``-``U+001F``, ``U+007F``-``U+009F``, NUL included) and no lone UTF-16 surrogates
  (which no database can store as UTF-8).

A value that breaks it raises :class:`InvalidIdError`, which names the field and the rule and never echoes more of
the value than a short :func:`preview`.
"""

from __future__ import annotations

import re
from typing import Any

from tastebud.errors import DataValidationError

#: Longest id, in characters (the store's ``event_id`` column is 128 wide; user and item ids 255).
MAX_ID_LENGTH = 128
#: Characters of a raw value an error message may quote.
PREVIEW_CHARS = 64

_FORBIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


class InvalidIdError(DataValidationError):
    """An id breaks the id rule.

    Attributes:
        field: the id's field (``user_id``, ``item_id``, ...).
        rule: what is wrong, without the field name (``is empty``, ``has 300 characters, ...``).
        reason_code: low-cardinality code for metrics and dead letters (``missing_field`` or ``invalid_field``).
    """

    code = "invalid_id"

    def __init__(self, field: str, rule: str, reason_code: str = "invalid_field") -> None:
        super().__init__(f"{field} {rule}")
        self.field, self.rule, self.reason_code = field, rule, reason_code


def normalise_id(value: Any, field: str = "id", *, max_length: int = MAX_ID_LENGTH) -> str:
    """The normal form of an id (see the module docstring).

    Args:
        value: the id as received: a string or an integer.
        field: its name, for the error.
        max_length: longest id allowed, characters (never above :data:`MAX_ID_LENGTH`).

    Raises:
        InvalidIdError: naming the field and the rule.
    """
    max_length = min(max_length, MAX_ID_LENGTH)
    if isinstance(value, str):
        text = value.strip()
    elif isinstance(value, int) and not isinstance(value, bool):
        if value.bit_length() > 4 * max_length:  # more digits than allowed (and str() of a huge int is refused)
            raise InvalidIdError(field, f"is an integer of more than {max_length} digits")
        text = str(value)
    elif value is None:
        raise InvalidIdError(field, "is required", "missing_field")
    else:
        raise InvalidIdError(field, f"must be a string or an integer, got {type(value).__name__} {preview(value)}")
    if not text:
        raise InvalidIdError(field, "is empty", "missing_field")
    if len(text) > max_length:
        raise InvalidIdError(field, f"has {len(text)} characters, more than the limit of {max_length}")
    bad = _FORBIDDEN.search(text)
    if bad is not None:
        raise InvalidIdError(
            field,
            f"contains the control character U+{ord(bad.group()):04X} at position {bad.start()} "
            "(ids are printable text)",
        )
    return text


def canonical_id(value: str) -> str:
    """The normal form of an id already known to be valid, or to be used as is (hashing): surrounding whitespace
    stripped. Never raises; :func:`normalise_id` is the check."""
    return value.strip()


def preview(value: Any, limit: int = PREVIEW_CHARS) -> str:
    """A short ``repr`` of a raw value for messages: whole when short, else its first ``limit`` characters and its
    length (``'aaaa…' (50000000 characters)``). Containers are described by type and size only when long."""
    if isinstance(value, str | bytes | bytearray):
        if len(value) <= limit:
            return repr(value)
        unit = "characters" if isinstance(value, str) else "bytes"
        return f"{value[:limit]!r}… ({len(value)} {unit})"
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 4 * limit:
        return f"<integer of {value.bit_length()} bits>"
    if isinstance(value, list | tuple | dict | set) and len(value) > 8:
        return f"<{type(value).__name__} of {len(value)} elements>"
    try:
        text = repr(value)
    except Exception:  # a repr that fails must not fail the message
        return f"<{type(value).__name__}>"
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"
