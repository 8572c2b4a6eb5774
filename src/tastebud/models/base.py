"""The :class:`Recommender` interface every model meets, and the :class:`Recommendations` it returns."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from tastebud.data.dataset import Dataset, IdMap
from tastebud.errors import BundleError, NotFittedError, ParameterError


class ModelConfig(BaseModel):
    """Base of every model's hyperparameters: unknown fields are refused, values validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass
class Recommendations:
    """One row per query id: item ids and scores, best first. A row may be shorter than ``k``.

    Attributes:
        query_ids: the user ids (``recommend``) or item ids (``similar_items``) asked about, in order.
        item_ids: per query, external item ids best first.
        scores: per query, float scores aligned with ``item_ids``.
        explanations: optional, per query and per item, the query user's item ids that contributed most
            (``None`` where the model cannot explain).
    """

    query_ids: list[str]
    item_ids: list[list[str]]
    scores: list[np.ndarray]
    explanations: list[list[list[str]]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.query_ids)

    def row(self, i: int) -> list[tuple[str, float]]:
        """Pairs (item id, score) of row ``i``."""
        return list(zip(self.item_ids[i], (float(s) for s in self.scores[i]), strict=True))

    def as_dict(self) -> dict[str, list[str]]:
        """Query id -> item ids."""
        return dict(zip(self.query_ids, self.item_ids, strict=True))


@dataclass(frozen=True, slots=True)
class RankedRow:
    """One user's top-k in the model's own index space: what serving needs per request, without id strings.

    Attributes:
        items: indices into the model's ``items_``, best first.
        scores: float scores aligned with ``items``.
        because: per item, indices into ``items_`` of the user's items that explain it, strongest first
            (``None`` where the model cannot explain or was not asked to).
    """

    items: np.ndarray
    scores: np.ndarray
    because: list[list[int]] | None = None


class Recommender(ABC):
    """A recommendation model: fit on a :class:`Dataset`, recommend with external ids, save without pickle.

    Subclasses set ``name`` (the CLI's ``--model`` value) and ``config_class`` (a :class:`ModelConfig`).
    ``__init__`` only validates and stores the config; learned state has a trailing underscore and is set in ``fit``.
    """

    name: ClassVar[str]
    config_class: ClassVar[type[ModelConfig]]

    def __init__(self, config: ModelConfig | None = None, **params: Any) -> None:
        if config is not None and params:
            raise ParameterError("give either a config object or keyword parameters, not both")
        self.config = config if config is not None else build_config(self.config_class, params, self.name)
        self.users_: IdMap | None = None
        self.items_: IdMap | None = None
        self.seen_: Any = None  # csr_matrix of what each user interacted with in training

    # ------------------------------------------------------------------ interface
    @abstractmethod
    def fit(self, dataset: Dataset) -> Self:
        """Learn from ``dataset``; returns self."""

    @abstractmethod
    def recommend(
        self,
        user_ids: Sequence[str],
        k: int = 10,
        *,
        exclude_seen: bool = True,
        candidates: Sequence[str] | None = None,
        explain: bool = False,
    ) -> Recommendations:
        """Top-``k`` items per user (external ids in and out), optionally restricted to ``candidates``.

        With ``explain=True`` a model that can explain fills ``Recommendations.explanations`` (per item, the
        user's own items that contributed most); others leave it ``None``.
        """

    @abstractmethod
    def similar_items(self, item_ids: Sequence[str], k: int = 10) -> Recommendations:
        """Top-``k`` most similar items per item (the query item itself excluded)."""

    @abstractmethod
    def save(self, directory: Path) -> None:
        """Write the fitted model as ``.npy`` arrays and JSON into ``directory``."""

    @classmethod
    @abstractmethod
    def load(cls, directory: Path) -> Self:
        """Read a model written by :meth:`save`."""

    def recommend_row(
        self,
        row: int,
        k: int = 10,
        *,
        exclude_seen: bool = True,
        candidates: np.ndarray | None = None,
        explain: bool = False,
    ) -> RankedRow:
        """Top-``k`` for the user at index ``row`` of ``users_``, in index space (the serving path).

        Same ranking as :meth:`recommend` for that user. This default goes through :meth:`recommend` and maps
        the ids back; models override it where one user can be ranked without building id lists (one request
        costs tens of microseconds there, so the id strings and per-call validation of :meth:`recommend`
        would dominate).

        Args:
            row: the user's index in ``users_``.
            k: list length.
            exclude_seen: leave out the user's training items.
            candidates: sorted unique item indices to rank among (``None``: every item).
            explain: fill ``because`` (models that can explain).
        """
        assert self.users_ is not None and self.items_ is not None
        ids = self.items_.ids
        cand_ids = None if candidates is None else [str(x) for x in ids[candidates].tolist()]
        recs = self.recommend(
            [str(self.users_.ids[row])], k, exclude_seen=exclude_seen, candidates=cand_ids, explain=explain
        )
        lookup = self.items_.lookup
        items = np.fromiter((lookup[i] for i in recs.item_ids[0]), dtype=np.int64, count=len(recs.item_ids[0]))
        because = None
        if recs.explanations is not None:
            because = [[lookup[j] for j in names] for names in recs.explanations[0]]
        return RankedRow(items, np.asarray(recs.scores[0], dtype=np.float64), because)

    # ------------------------------------------------------------------ scoring a history
    #: True when the model scores arbitrary histories (:meth:`recommend_history`).
    history_scoring: ClassVar[bool] = False

    def recommend_history(
        self,
        item_ids: Sequence[str],
        values: Sequence[float] | np.ndarray | None = None,
        k: int = 10,
        *,
        exclude_seen: bool = True,
        candidates: Sequence[str] | None = None,
        explain: bool = False,
    ) -> Recommendations:
        """Top-``k`` items for someone whose history is ``item_ids`` (with ``values``), without retraining.

        The history replaces the training row a user would have: factor models fold it in (the exact
        per-user least-squares solve against the fixed item factors), item-item models multiply it by their
        item-item matrix, the content model builds the profile from it, the hybrid does both. Serving uses it
        to score a user's training history plus the events that arrived since. For a known user's own
        training history (:meth:`user_history`) the scores equal ``recommend``'s wherever the model's user
        state is a function of that history.

        Args:
            item_ids: the history's items (a repeated item keeps its last value).
            values: interaction values aligned with ``item_ids`` (default 1.0 each), in the units of
                :meth:`user_history`.
            k: list length.
            exclude_seen: leave out the history's items.
            candidates: restrict to these item ids.
            explain: name, per item, the history items that contributed most (models that can explain).

        Returns:
            One row with query id ``"history"``.

        Raises:
            NotImplementedError: the model cannot score a history (``history_scoring`` is False).
            UnknownItemError: an item id is not in the model's vocabulary.
        """
        if not self.history_scoring:
            raise NotImplementedError(f"{self.name} cannot score an arbitrary history")
        from tastebud.models._history import recommend_history

        return recommend_history(
            self, item_ids, values, k, exclude_seen=exclude_seen, candidates=candidates, explain=explain
        )

    def user_history(self, user_id: str) -> tuple[list[str], np.ndarray]:
        """A known user's training history as ``(item ids, values)``, the input :meth:`recommend_history` takes.

        Raises:
            UnknownUserError: the model has not seen ``user_id``.
        """
        self.check_fitted()
        assert self.users_ is not None and self.items_ is not None
        u = int(self.users_.index([user_id], kind="user")[0])
        seen = self.seen_.tocsr() if not hasattr(self.seen_, "indptr") else self.seen_
        lo, hi = seen.indptr[u], seen.indptr[u + 1]
        ids = [str(x) for x in self.items_.ids[seen.indices[lo:hi]].tolist()]
        return ids, np.asarray(seen.data[lo:hi], dtype=np.float64)

    # ------------------------------------------------------------------ helpers for subclasses
    @property
    def is_fitted(self) -> bool:
        return self.users_ is not None

    def check_fitted(self) -> None:
        if not self.is_fitted:
            raise NotFittedError(f"{self.name} model is not fitted: call fit(dataset) first")

    def params(self) -> dict[str, Any]:
        """Hyperparameters, exactly as logged and written to manifests."""
        return self.config.model_dump(mode="json")


def build_config(config_class: type[ModelConfig], params: dict[str, Any], model: str) -> ModelConfig:
    """Validate ``params`` through ``config_class``, turning errors into a clear ``ParameterError``."""
    try:
        return config_class(**params)
    except ValidationError as err:
        problems = []
        for e in err.errors():
            loc = ".".join(str(p) for p in e["loc"]) or "(params)"
            if e["type"] == "extra_forbidden":
                allowed = ", ".join(sorted(config_class.model_fields))
                problems.append(f"unknown parameter {loc!r} (allowed: {allowed})")
            else:
                problems.append(f"{loc}: {e['msg']} (got {e.get('input')!r})")
        raise ParameterError(f"{model}: " + "; ".join(problems)) from err


def write_json(path: Path, obj: Any) -> None:
    """Write JSON (UTF-8, sorted keys)."""
    path.write_text(json.dumps(obj, indent=2, sort_keys=True), encoding="utf-8")


def read_json(path: Path) -> Any:
    """Read JSON with a clear error naming the file."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise BundleError(f"{path}: missing file") from err
    except json.JSONDecodeError as err:
        raise BundleError(f"{path}: not valid JSON ({err})") from err


#: Paths that a bundle stores once elsewhere (model file -> shared file), and the arrays already read from each
#: shared file, while :func:`linked_arrays` is active.
_LINKS: ContextVar[tuple[Mapping[Path, Path], dict[Path, np.ndarray]] | None] = ContextVar("_LINKS", default=None)


@contextmanager
def linked_arrays(links: Mapping[Path, Path]) -> Iterator[None]:
    """Within the block, :func:`load_array` reads ``links[path]`` for a ``path`` stored once elsewhere.

    A bundle keeps an array that several of its models hold byte for byte (the training interactions of the
    model and its fallbacks) once, under ``shared/`` (:mod:`tastebud.registry.bundle`). Every model that reads
    it within one block gets the same read-only array, so it is held in memory once too.
    """
    token = _LINKS.set(({Path(k): Path(v) for k, v in links.items()}, {}))
    try:
        yield
    finally:
        _LINKS.reset(token)


def load_array(path: Path) -> np.ndarray:
    """Load a ``.npy`` array without pickle, with a clear error naming the file."""
    active = _LINKS.get()
    if active is not None and Path(path) in active[0]:
        target = active[0][Path(path)]
        if target not in active[1]:
            arr = _read_array(target)
            arr.flags.writeable = False  # one array for several models: none may change it for the others
            active[1][target] = arr
        return active[1][target]
    return _read_array(path)


def _read_array(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError as err:
        raise BundleError(f"{path}: missing file") from err
    except (ValueError, OSError, EOFError) as err:
        raise BundleError(f"{path}: unreadable array ({err})") from err


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise top-``k`` of a 2-D score array (``-inf`` entries dropped), best first.

    Returns (indices, scores), each a 2-D array of shape (rows, min(k, n_cols)); positions with ``-inf``
    score carry index -1.
    """
    n = scores.shape[1]
    kk = min(k, n)
    if kk <= 0:
        return np.empty((scores.shape[0], 0), dtype=np.int64), np.empty((scores.shape[0], 0), dtype=scores.dtype)
    part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk] if kk < n else np.tile(np.arange(n), (scores.shape[0], 1))
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    idx = np.take_along_axis(part, order, axis=1)
    val = np.take_along_axis(part_scores, order, axis=1)
    idx = np.where(np.isneginf(val), -1, idx)
    return idx, val
