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

#: Fewest users a model's batched ``recommend_rows`` (the factor models, EASE) scores together: below it, each
#: user's own path costs no more. At ML-25M size (60,000 items, d=64, one BLAS thread, load 5-6) per user, one
#: matrix-matrix product against matrix-vector products: 2 users 0.85 against 0.92 ms, 4 users 0.44 against 0.72 ms,
#: 8 users 0.31 against 0.70 ms (see "Serving at scale" in bench/RESULTS.md).
GEMM_MIN_ROWS = 4


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

    def recommend_rows(
        self,
        rows: Sequence[int] | np.ndarray,
        k: int | Sequence[int] = 10,
        *,
        exclude_seen: bool | Sequence[bool] = True,
        explain: bool | Sequence[bool] = False,
    ) -> list[RankedRow]:
        """Top-``k`` of several users at once (a serving batch): one :class:`RankedRow` per entry of ``rows``.

        Entry ``i`` is :meth:`recommend_row` of ``rows[i]`` with the same arguments; ``k``, ``exclude_seen`` and
        ``explain`` are one value for every row or one per row. This default loops over :meth:`recommend_row`;
        models that can share the scoring override it (the factor models score the whole batch with one
        matrix-matrix product, reading the item factors once instead of once per user).

        Raises:
            ParameterError: a row outside ``users_``, or per-row arguments of another length than ``rows``.
        """
        assert self.users_ is not None
        rows_, ks, excl, expl = per_row_args(rows, len(self.users_), k, exclude_seen, explain)
        return [
            self.recommend_row(u, kk, exclude_seen=e, explain=x)
            for u, kk, e, x in zip(rows_.tolist(), ks, excl, expl, strict=True)
        ]

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


def per_row_args(
    rows: Sequence[int] | np.ndarray,
    n_users: int,
    k: int | Sequence[int],
    exclude_seen: bool | Sequence[bool],
    explain: bool | Sequence[bool],
) -> tuple[np.ndarray, list[int], list[bool], list[bool]]:
    """:meth:`Recommender.recommend_rows`' arguments as (rows, then one ``k``, ``exclude_seen``, ``explain`` per row).

    Raises:
        ParameterError: a row outside ``0 .. n_users - 1``, or a per-row list of another length than ``rows``.
    """
    arr = np.asarray(rows)
    if arr.ndim != 1 or (len(arr) and not np.issubdtype(arr.dtype, np.integer)):
        raise ParameterError(f"rows must be a 1-D sequence of user indices (got shape {arr.shape}, {arr.dtype})")
    arr = arr.astype(np.int64, copy=False)
    if len(arr) and (arr.min() < 0 or arr.max() >= n_users):
        bad = int(arr[(arr < 0) | (arr >= n_users)][0])
        raise ParameterError(f"user row {bad} is outside 0..{n_users - 1}")
    n = len(arr)

    def each(value: Any, name: str) -> list[Any]:
        if isinstance(value, bool | int | np.integer | np.bool_):
            return [value] * n
        values = list(value)
        if len(values) != n:
            raise ParameterError(f"{name}: {len(values)} values for {n} rows")
        return values

    excl = [bool(x) for x in each(exclude_seen, "exclude_seen")]
    return arr, each(k, "k"), excl, [bool(x) for x in each(explain, "explain")]


#: Columns per block of the block-maximum bound of :func:`top_k` (and of the one-user and batch rankings of
#: :mod:`tastebud.models._scoring`).
TOP_BLOCK = 128
#: Rows with more than this many times ``k`` blocks whose maximum reaches the bound are ranked by the full partition.
_TOP_POOL = 4


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise top-``k`` of a 2-D score array (``-inf`` entries dropped), best first.

    Returns (indices, scores), each a 2-D array of shape (rows, min(k, n_cols)); positions with ``-inf``
    score carry index -1.

    On wide arrays (at least ``4 * k`` blocks of 128 columns, e.g. 60,000 items) the ``k``-th largest of the
    rows' block maxima bounds each row's ``k``-th largest score from below, so only the few scores at or above it
    are sorted. Rows whose top ``k + 1`` scores are all distinct have one answer, which this gives; rows with a
    tie among them (whose order :func:`numpy.argpartition` decides), NaN scores, or a pool too large to be worth
    it take the full partition, so every row is exactly what the full partition gives.
    """
    n = scores.shape[1]
    kk = min(k, n)
    if kk <= 0:
        return np.empty((scores.shape[0], 0), dtype=np.int64), np.empty((scores.shape[0], 0), dtype=scores.dtype)
    if kk < n and n // TOP_BLOCK >= 4 * kk and scores.shape[0] and np.issubdtype(scores.dtype, np.floating):
        return _top_k_bounded(scores, kk)
    return _top_k_full(scores, kk)


def _top_k_full(scores: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`top_k` by one :func:`numpy.argpartition` of every row (``0 < kk <= n_cols``)."""
    n = scores.shape[1]
    part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk] if kk < n else np.tile(np.arange(n), (scores.shape[0], 1))
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    idx = np.take_along_axis(part, order, axis=1)
    val = np.take_along_axis(part_scores, order, axis=1)
    idx = np.where(np.isneginf(val), -1, idx)
    return idx, val


def _top_k_bounded(scores: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`top_k` of a wide floating-point array through the block-maximum bound (``kk < n_cols``)."""
    n_rows, n = scores.shape
    n_blocks = n // TOP_BLOCK
    body = n_blocks * TOP_BLOCK
    blocks = scores[:, :body].reshape(n_rows, n_blocks, TOP_BLOCK)
    block_max = blocks.max(axis=2)
    # kk distinct blocks hold kk distinct scores at least this large: every top-kk score is >= the bound, and
    # lies in a block whose maximum is >= the bound (or in the columns past the last whole block)
    bound = np.partition(block_max, n_blocks - kk, axis=1)[:, n_blocks - kk]
    tail = scores[:, body:]
    bad = np.isnan(block_max).any(axis=1) | np.isnan(tail).any(axis=1) | ~(bound > -np.inf)
    hit = block_max >= bound[:, None]
    n_hit = np.count_nonzero(hit, axis=1)
    bad |= n_hit > _TOP_POOL * kk  # many blocks tie with the bound (near-constant rows): rank those in full
    hit[bad] = False
    n_hit[bad] = 0
    width = int(n_hit.max(initial=0))
    # each row's hit blocks side by side (rows padded with -inf), then the tail columns
    pool_val = np.full((n_rows, width, TOP_BLOCK), -np.inf, dtype=scores.dtype)
    pool_col = np.full((n_rows, width, TOP_BLOCK), -1, dtype=np.int64)
    rows, block = np.nonzero(hit)
    slot = np.arange(len(rows)) - (np.cumsum(n_hit) - n_hit)[rows]
    pool_val[rows, slot] = blocks[rows, block]
    pool_col[rows, slot] = block[:, None] * TOP_BLOCK + np.arange(TOP_BLOCK)
    pool_val = np.concatenate([pool_val.reshape(n_rows, -1), tail], axis=1)
    pool_col = np.concatenate([pool_col.reshape(n_rows, -1), np.broadcast_to(np.arange(body, n), tail.shape)], axis=1)
    m = pool_val.shape[1]
    if m > kk + 1:
        part = np.argpartition(-pool_val, kk, axis=1)[:, : kk + 1]
        pool_val = np.take_along_axis(pool_val, part, axis=1)
        pool_col = np.take_along_axis(pool_col, part, axis=1)
    order = np.argsort(-pool_val, axis=1, kind="stable")
    val = np.take_along_axis(pool_val, order, axis=1)
    idx = np.take_along_axis(pool_col, order, axis=1)
    # a tie among the top kk + 1 (the padding is -inf, below every top-kk score): argpartition decides its order
    if val.shape[1] > kk:
        tied = (val[:, 1 : kk + 1] == val[:, :kk]).any(axis=1)
    else:
        tied = (val[:, 1:] == val[:, :-1]).any(axis=1)
    val, idx = np.ascontiguousarray(val[:, :kk]), np.ascontiguousarray(idx[:, :kk])
    redo = np.flatnonzero(bad | tied)
    if len(redo):
        idx[redo], val[redo] = _top_k_full(scores[redo], kk)
    return idx, val
