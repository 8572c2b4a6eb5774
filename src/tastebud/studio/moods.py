"""Mood presets (``moods.yaml``): each mood names movie genres and music tags; a mood filters or lifts a list."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tastebud.errors import ConfigError

MOODS_FILE = Path(__file__).with_name("moods.yaml")


@dataclass(frozen=True)
class Mood:
    """One preset: its key, label, emoji, and the genres (movies) and tags (music) that fit it."""

    key: str
    label: str
    emoji: str
    genres: frozenset[str]
    tags: frozenset[str]

    @property
    def title(self) -> str:
        return f"{self.emoji} {self.label}".strip()

    def terms(self) -> frozenset[str]:
        """Every genre and tag of the mood, lower case."""
        return frozenset(t.lower() for t in self.genres | self.tags)

    def matches(self, item: Mapping[str, Any]) -> bool:
        """Whether one of the item's genres or tags is one of the mood's (case-insensitive)."""
        return bool(self.terms() & {str(t).lower() for t in item_terms(item)})


def item_terms(item: Mapping[str, Any]) -> list[str]:
    """An item's genres and tags (either may be missing)."""
    return [*(item.get("genres") or ()), *(item.get("tags") or ())]


def load_moods(path: Path = MOODS_FILE) -> dict[str, Mood]:
    """The moods of ``path``, in file order.

    Raises:
        ConfigError: the file is not a mapping of moods with ``label`` and lists of ``genres``/``tags``.
    """
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: cannot read the moods ({err})") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of mood name -> {{label, genres, tags}}")
    moods = {}
    for key, spec in raw.items():
        if not isinstance(spec, dict) or not isinstance(spec.get("label"), str):
            raise ConfigError(f"{path}: mood {key!r} needs a label")
        lists = {name: spec.get(name) or [] for name in ("genres", "tags")}
        for name, values in lists.items():
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                raise ConfigError(f"{path}: mood {key!r}: {name} must be a list of strings")
        moods[str(key)] = Mood(
            str(key), spec["label"], str(spec.get("emoji") or ""), frozenset(lists["genres"]), frozenset(lists["tags"])
        )
    return moods


def split_mood(items: Iterable[dict[str, Any]], mood: Mood) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(matches, others)`` of the items for the mood, each in the items' order."""
    hits: list[dict[str, Any]] = []
    others: list[dict[str, Any]] = []
    for it in items:
        (hits if mood.matches(it) else others).append(it)
    return hits, others


def apply_mood(items: Iterable[dict[str, Any]], mood: Mood, *, strict: bool = False) -> list[dict[str, Any]]:
    """The items with the mood's matches first (each group keeps its order); only the matches when ``strict``."""
    hits, others = split_mood(items, mood)
    return hits if strict else hits + others


__all__ = ["MOODS_FILE", "Mood", "apply_mood", "item_terms", "load_moods", "split_mood"]
