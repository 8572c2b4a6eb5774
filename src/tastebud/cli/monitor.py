"""`tastebud monitor` commands."""

from __future__ import annotations
