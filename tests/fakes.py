"""Test-local recommenders shared by several test files."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Self

import numpy as np

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
