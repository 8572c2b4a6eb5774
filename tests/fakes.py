"""Test-local recommenders, a one-version registry and helpers shared by several test files."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import numpy as np

from tastebud.errors import RegistryError
from tastebud.models.base import Recommendations, Recommender, top_k


class ItemScoreModel(Recommender):
    """Ranks every user's unseen items by one fixed score per item (``scores_``, set by a subclass's ``fit``).

    Only ``recommend`` is implemented: evaluation needs nothing else.
    """

    scores_: np.ndarray

    def recommend(
        self,
        user_ids: Sequence[str],
        k: int = 10,
        *,
        exclude_seen: bool = True,
        candidates: Sequence[str] | None = None,
        explain: bool = False,
    ) -> Recommendations:
        assert self.users_ is not None and self.items_ is not None
        rows = self.users_.index(user_ids, kind="user")
        scores = np.tile(self.scores_, (len(rows), 1))
        scores[self.seen_[rows].toarray() > 0] = -np.inf
        idx, val = top_k(scores, k)
        ids = [[str(self.items_.ids[i]) for i in row if i >= 0] for row in idx]
        return Recommendations(list(user_ids), ids, [v[: len(r)] for v, r in zip(val, ids, strict=True)])

    def similar_items(self, item_ids: Sequence[str], k: int = 10) -> Recommendations:
        raise NotImplementedError

    def save(self, directory: Path) -> None:
        raise NotImplementedError

    @classmethod
    def load(cls, directory: Path) -> Self:
        raise NotImplementedError


@dataclass
class Version:
    """A registered version as serving reads it."""

    name: str
    version: int
    aliases: list[str]
    source: str
    run_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    created_at: str = "2026-01-01T00:00:00Z"
    metrics: dict[str, float] = field(default_factory=dict)


class OneVersionRegistry:
    """A registry holding one bundle as version 1, alias ``champion`` (the shape serving needs; no MLflow)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def get(self, name: str, version: int) -> Version:
        if version != 1:
            raise RegistryError(f"model {name!r} has no version {version}")
        return Version(name, 1, ["champion"], str(self.path))

    def list_versions(self, name: str) -> list[Version]:
        return [self.get(name, 1)]

    def resolve(self, name: str, ref: int | str) -> Version:
        if str(ref) not in {"1", "champion"}:
            raise RegistryError(f"model {name!r} has no alias or version {ref!r}")
        return self.get(name, 1)

    def get_alias(self, name: str, alias: str) -> int | None:
        return 1 if alias == "champion" else None

    def bundle_path(self, mv: Version) -> Path:
        return Path(mv.source)


def wait_ready(client: Any, timeout: float = 60.0) -> None:
    """Wait until the app under ``client`` (a ``TestClient``) has loaded its model."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/health/ready").status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError(f"no model loaded in {timeout} s: {client.get('/health').json()}")
