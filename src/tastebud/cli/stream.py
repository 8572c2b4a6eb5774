"""`tastebud stream` commands."""

from __future__ import annotations
