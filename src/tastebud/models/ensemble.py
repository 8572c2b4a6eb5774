"""Ensemble: a weighted blend of any registered models, the weights learned on a validation split.

Every member scores every item for a user; each member's score vector is normalised per user over the items
that may be recommended to them (the whole catalog minus what they have seen, whatever the candidate filter,
so a filter never changes a score), by z-score or min-max (``blend="score"``, the "weighted" hybrid of Burke,
"Hybrid recommender systems: survey and experiments", UMUAI 2002), or replaced by its reciprocal rank
``1 / (rrf_k + rank)`` (``blend="rank"``, Cormack, Clarke and Büttcher, "Reciprocal rank fusion outperforms
Condorcet and individual rank learning methods", SIGIR 2009). The blend is ``Σ_m w_m · normalised_m``.

**Weights are learned without touching the evaluation data.** :meth:`EnsembleRecommender.fit` carves a
validation part out of the data it is given (a per-user random ``validation_fraction`` of each user's
interactions, :func:`tastebud.data.split.split_random` with ``random_state``), fits every member on the rest,
and searches the weights that maximise NDCG@``k`` on the validation part: coordinate ascent over a grid
(``weight_step``), from equal weights, until a round changes nothing. With ``n_folds`` > 1 this is repeated on
carves of further seeds and the search maximises the NDCG averaged over them (repeated random sub-sampling
validation), which keeps the weights from chasing one small carve's noise. The members are then fitted again on
all the data given, and a member whose weight came out 0 is dropped (it would only cost serving time). In the
training pipeline that data is the training part, so the test part is never seen. :meth:`from_models` combines
members fitted elsewhere and learns the weights on a held-out part they never saw (the pipeline's validation
part).

What the ensemble does for each serving feature:

- ``recommend`` / ``recommend_row``: the blend above, one normalisation per member and one top-k.
- ``recommend_history`` (real-time overlays, new users): the blend of the members that can score a history
  (``history_scoring``); the others sit out and the weights of the rest are used as they are. An ensemble
  without such a member raises ``NotImplementedError`` there.
- explanations: from the highest-weight member that can explain, asked about the blended list's items.
- ``similar_items``: the highest-weight member's (item-item similarity has no per-user normalisation to blend).

Members must share one user and item vocabulary (they do when fitted on one dataset). Persistence: the
ensemble's ``model.json`` (with the member list and the learned weights), its id maps and seen matrix, and one
directory per member under ``members/`` written by the member's own ``save``.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, Self

import numpy as np
import scipy.sparse as sp
from pydantic import ConfigDict, Field, field_validator, model_validator

from tastebud.data.dataset import Dataset
from tastebud.errors import BundleError, NotFittedError, ParameterError
from tastebud.models import _scoring as sc
from tastebud.models._blend import (
    BlockFn,
    RowFn,
    learn_weights,
    linear_block,
    normalise_row,
    scorers,
)
from tastebud.models.base import ModelConfig, RankedRow, Recommendations, Recommender

logger = logging.getLogger(__name__)

#: Name pattern of a member's directory under ``members/`` (``<position>-<model name>``).
_MEMBER_DIR = re.compile(r"^[0-9]{1,3}-[a-z0-9_]+$")


class EnsembleConfig(ModelConfig):
    """Hyperparameters of :class:`EnsembleRecommender`."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid", frozen=True)

    members: list[str] = Field(default_factory=lambda: ["ease", "als", "slim", "rp3beta"])
    """``--model`` names of the members (a list, or one comma-separated string such as ``"ease,als"``). The default
    set had the best validation NDCG of those tried on ML-100K (bench/RESULTS.md, "Ensembles")."""
    member_params: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Parameters per member name (validated by each member's config class)."""
    blend: Literal["score", "rank"] = "score"
    """``score``: weighted sum of per-user normalised scores; ``rank``: weighted reciprocal-rank fusion."""
    normalize: Literal["zscore", "minmax"] = "zscore"
    """Per-user normalisation of each member's scores over the recommendable items (``blend="score"``)."""
    rrf_k: float = Field(60.0, gt=0.0)
    """Rank offset of reciprocal-rank fusion, ``1 / (rrf_k + rank)`` (``blend="rank"``; 60 as in the paper)."""
    weights: list[float] | None = None
    """Fixed weights aligned with ``members`` (no validation split, no search); ``None`` learns them."""
    validation_fraction: float = Field(0.15, gt=0.0, lt=1.0)
    """Share of each user's interactions held out to learn the weights on."""
    n_folds: int = Field(3, ge=1, le=10)
    """Validation carves (each with its own seed, members fitted on the rest) whose NDCG the weights maximise on
    average: one carve's NDCG is noisy enough on small data that the search chases it."""
    k: int = Field(10, ge=1)
    """List length of the NDCG the weights maximise."""
    weight_step: float = Field(0.05, gt=0.0, le=0.5)
    """Grid step of the coordinate ascent: each weight is tried at ``0, step, 2·step, ..., 1``."""
    max_rounds: int = Field(5, ge=1)
    """Most rounds of the coordinate ascent (it stops earlier when a round changes nothing)."""
    max_validation_users: int = Field(5000, ge=1)
    """Most validation users the search scores (a seeded sample beyond that), bounding its memory and time."""
    random_state: int = 42
    """Seed of the validation split and the user sample; passed to members that take a ``random_state``."""

    @field_validator("members", mode="before")
    @classmethod
    def _split_names(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("members")
    @classmethod
    def _known_members(cls, names: list[str]) -> list[str]:
        from tastebud.models import MODELS

        if not names:
            raise ValueError("an ensemble needs at least one member")
        for name in names:
            if name == "ensemble":
                raise ValueError("an ensemble cannot contain another ensemble")
            if name not in MODELS:
                raise ValueError(
                    f"unknown model {name!r}; choose from: {', '.join(m for m in MODELS if m != 'ensemble')}"
                )
        if len(set(names)) != len(names):
            raise ValueError(f"each member may appear once (got {names})")
        return names

    @model_validator(mode="after")
    def _consistent(self) -> EnsembleConfig:
        from pydantic import ValidationError

        from tastebud.models import model_class

        unknown = sorted(set(self.member_params) - set(self.members))
        if unknown:
            raise ValueError(f"member_params for {unknown}, which are not members ({self.members})")
        for name, params in self.member_params.items():
            try:
                model_class(name).config_class(**params)
            except ValidationError as err:
                problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
                raise ValueError(f"member_params[{name!r}]: {problems}") from None
        if self.weights is not None:
            w = np.asarray(self.weights, dtype=np.float64)
            if len(w) != len(self.members):
                raise ValueError(f"{len(w)} weights for {len(self.members)} members")
            if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
                raise ValueError("weights must be finite, >= 0, and not all 0")
        return self


def member_params_from_flat(params: dict[str, Any]) -> dict[str, Any]:
    """Move ``<member>.<name>=value`` keys of flat CLI parameters into ``member_params``.

    ``--param ease.l2=300`` with ``--model ensemble`` becomes ``member_params={"ease": {"l2": 300}}``; other keys
    stay as they are.
    """
    out: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for key, value in params.items():
        member, dot, name = key.partition(".")
        if dot and member and name:
            nested.setdefault(member, {})[name] = value
        else:
            out[key] = value
    if nested:
        merged = {m: dict(p) for m, p in dict(out.get("member_params") or {}).items()}
        for member, values in nested.items():
            merged.setdefault(member, {}).update(values)
        out["member_params"] = merged
    return out


class EnsembleRecommender(Recommender):
    """Weighted blend of fitted members (see the module docstring).

    Learned state: ``members_`` (fitted members with a non-zero weight), ``weights_`` (aligned, summing to 1),
    ``validation_`` (what the weight search saw and found: JSON-able), and the shared vocabulary and seen matrix.
    """

    name = "ensemble"
    config_class = EnsembleConfig
    config: EnsembleConfig

    def __init__(self, config: EnsembleConfig | None = None, **params: Any) -> None:
        super().__init__(config, **params)
        self.members_: list[Recommender] | None = None
        self.weights_: np.ndarray | None = None
        self.validation_: dict[str, Any] = {}
        self._row_fns: list[RowFn] = []
        self._block_fns: list[BlockFn] = []
        self._explainer: int | None = None
        self._linear_explain: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None

    # ------------------------------------------------------------------ construction
    def _create_members(self, names: Sequence[str]) -> list[Recommender]:
        from tastebud.models import create, model_class

        out = []
        for name in names:
            params = dict(self.config.member_params.get(name, {}))
            if "random_state" in model_class(name).config_class.model_fields:
                params.setdefault("random_state", self.config.random_state)
            out.append(create(name, **params))
        return out

    def fit(self, dataset: Dataset) -> Self:
        """Learn the weights on a validation part of ``dataset``, then fit the members on all of it."""
        cfg = self.config
        names = list(cfg.members)
        if cfg.weights is not None:
            weights = np.asarray(cfg.weights, dtype=np.float64)
            self.validation_ = {"learned": False}
        elif len(names) == 1:
            weights = np.ones(1)
            self.validation_ = {"learned": False}
        else:
            from tastebud.data.split import split_random

            t0 = time.perf_counter()
            folds, snapshots = [], []
            for fold in range(cfg.n_folds):
                inner = split_random(dataset, test_fraction=cfg.validation_fraction, seed=cfg.random_state + fold)
                members = [m.fit(inner.train) for m in self._create_members(names)]
                folds.append((members, inner.test, inner.train.matrix("value")))
                snapshots.append(inner.test.snapshot_id)
            weights, self.validation_ = learn_weights(folds, cfg, names=names)
            self.validation_["search_seconds"] = round(time.perf_counter() - t0, 3)
            self.validation_["validation_snapshot_ids"] = snapshots
        keep = np.flatnonzero(weights > 0)
        members = [m.fit(dataset) for m in self._create_members([names[i] for i in keep])]
        self._attach(members, weights[keep], dataset.matrix("value"))
        return self

    @classmethod
    def from_models(
        cls,
        members: Sequence[Recommender],
        validation: Dataset | None = None,
        *,
        weights: Sequence[float] | None = None,
        **params: Any,
    ) -> EnsembleRecommender:
        """An ensemble of already fitted members; the weights are ``weights`` or learned on ``validation``.

        Args:
            members: fitted models sharing one vocabulary, each of a different registered family.
            validation: interactions none of the members was fitted on (same vocabulary), to learn the weights.
            weights: fixed weights instead (aligned with ``members``).
            params: other :class:`EnsembleConfig` fields (``blend``, ``normalize``, ``k`` ...).

        Raises:
            NotFittedError: a member is not fitted.
            ParameterError: neither or both of ``validation`` and ``weights``, or vocabularies differ.
        """
        for member in members:
            if not member.is_fitted:
                raise NotFittedError(f"ensemble: the {member.name} member must be fitted before it is combined")
        if (validation is None) == (weights is None):
            raise ParameterError("ensemble.from_models: give either a validation part or fixed weights")
        names = [m.name for m in members]
        model = cls(
            members=names,
            member_params={m.name: m.params() for m in members},
            weights=None if weights is None else [float(w) for w in weights],
            **params,
        )
        seen = _richest_seen(members)
        if weights is None:
            assert validation is not None
            _check_vocabulary(members, validation)
            w, model.validation_ = learn_weights([(list(members), validation, seen)], model.config, names=names)
            model.validation_["validation_snapshot_ids"] = [validation.snapshot_id]
        else:
            w = np.asarray(weights, dtype=np.float64)
            model.validation_ = {"learned": False}
        keep = np.flatnonzero(w > 0)
        model._attach([members[int(i)] for i in keep], w[keep], seen)
        return model

    def _attach(
        self, members: list[Recommender], weights: np.ndarray, seen: sp.csr_matrix, *, normalised: bool = False
    ) -> None:
        """Adopt fitted members and their weights (scaled to sum 1 unless ``normalised``); set up the scorers."""
        _check_vocabulary(members)
        first = members[0]
        assert first.users_ is not None and first.items_ is not None
        self.members_ = list(members)
        weights = np.asarray(weights, dtype=np.float64)
        # saved weights already sum to 1: dividing again could change their last bit, and so the scores
        self.weights_ = weights if normalised else weights / float(np.sum(weights))
        self.users_, self.items_ = first.users_, first.items_
        seen = sp.csr_matrix(seen, dtype=np.float32)
        seen.sort_indices()
        self.seen_ = seen
        paths = [scorers(m) for m in members]
        self._row_fns = [r for r, _ in paths]
        self._block_fns = [b for _, b in paths]
        self._explainer = self._find_explainer()
        self._linear_explain = None if self._explainer is None else linear_block(members[self._explainer])
        logger.info(
            "ensemble ready",
            extra={"members": [m.name for m in members], "weights": [round(float(w), 4) for w in self.weights_]},
        )

    def _find_explainer(self) -> int | None:
        """Position of the highest-weight member whose ``recommend_row`` explains (probed on user 0)."""
        assert self.members_ is not None and self.weights_ is not None and self.users_ is not None
        if len(self.users_) == 0:
            return None
        for i in np.argsort(-self.weights_, kind="stable").tolist():
            try:
                probe = self.members_[i].recommend_row(0, 1, explain=True)
            except (NotImplementedError, ValueError, IndexError):
                continue
            if probe.because is not None:
                return int(i)
        return None

    @property
    def member_names(self) -> list[str]:
        """Names of the fitted members, aligned with ``weights_``."""
        self.check_fitted()
        assert self.members_ is not None
        return [m.name for m in self.members_]

    def check_fitted(self) -> None:
        if self.members_ is None:
            raise NotFittedError(f"{self.name} model is not fitted: call fit(dataset) or from_models(...)")

    # ------------------------------------------------------------------ scoring
    def recommend(
        self,
        user_ids: Sequence[str],
        k: int = 10,
        *,
        exclude_seen: bool = True,
        candidates: Sequence[str] | None = None,
        explain: bool = False,
    ) -> Recommendations:
        """Top-``k`` items by the blended, normalised member scores (see the module docstring)."""
        self.check_fitted()
        assert self.users_ is not None and self.items_ is not None
        k = sc.check_k(k)
        rows = self.users_.index(user_ids, kind="user")
        cands = sc.resolve_candidates(self.items_, candidates)
        exclude = self.seen_[rows] if exclude_seen else None
        n_items = len(self.items_)
        chunk_cells = sc.MAX_CELLS // max(1, len(self._block_fns))

        def score(chunk: np.ndarray, cols: np.ndarray | None) -> np.ndarray:
            blended = self.blend(chunk, exclude_seen=exclude_seen)
            return blended if cols is None else blended[:, cols]

        idx, scores = sc.rank(score, rows, k, n_items=n_items, exclude=exclude, candidates=cands, max_cells=chunk_cells)
        explanations = None
        if explain and self._explainer is not None:
            explanations = [
                sc.id_lists(self.items_.ids, self._explain_items(int(u), rec))
                for u, rec in zip(rows.tolist(), idx, strict=True)
            ]
        return sc.build_recommendations(list(user_ids), idx, scores, self.items_, explanations)

    def blend(self, rows: np.ndarray, *, exclude_seen: bool = True) -> np.ndarray:
        """Blended scores of users ``rows`` for every item; seen items ``-inf`` when ``exclude_seen``.

        Row by row through the serving path, so that a batch and a single request blend the very same numbers.
        """
        self.check_fitted()
        assert self.items_ is not None
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), len(self.items_)))
        indptr, indices = self.seen_.indptr, self.seen_.indices
        for i, row in enumerate(rows.tolist()):
            seen = indices[indptr[row] : indptr[row + 1]] if exclude_seen else indices[:0]

            def at(fn: RowFn, r: int = row) -> np.ndarray:
                return fn(r)

            out[i] = self._blend_row(at, seen)
        return out

    def recommend_row(
        self,
        row: int,
        k: int = 10,
        *,
        exclude_seen: bool = True,
        candidates: np.ndarray | None = None,
        explain: bool = False,
    ) -> RankedRow:
        """One user's top-``k`` in index space: each member's score row, normalised and blended (see the base)."""
        self.check_fitted()
        k = sc.check_k(k)
        lo, hi = self.seen_.indptr[row], self.seen_.indptr[row + 1]
        seen = self.seen_.indices[lo:hi] if exclude_seen else self.seen_.indices[:0]
        blended = self._blend_row(lambda fn: fn(row), seen)
        scores = blended if candidates is None else blended[candidates]
        items, ranked = sc.rank_one(scores, k, seen, candidates)
        because = self._explain_items(row, items) if explain and self._explainer is not None else None
        return RankedRow(items, ranked, because)

    def _blend_row(self, member_row: Callable[[RowFn], np.ndarray], seen: np.ndarray) -> np.ndarray:
        """Blend of one user's member score rows (``member_row(row_fn)`` gives a member's); ``seen``: left out."""
        assert self.weights_ is not None and self.items_ is not None
        n = len(self.items_)
        n_valid = n - len(seen)
        out = np.zeros(n)
        valid: np.ndarray | None = None
        zscore = self.config.blend == "score" and self.config.normalize == "zscore"
        for w, fn in zip(self.weights_.tolist(), self._row_fns, strict=True):
            scores = np.array(member_row(fn), dtype=np.float64)
            if zscore and n_valid > 0 and np.isfinite(scores).all():
                # z-score over the unseen items from whole-vector sums minus the seen items' (no boolean masks:
                # this runs once per member per request); the same numbers as normalise_row up to rounding
                mean = (scores.sum() - scores[seen].sum()) / n_valid
                scores -= mean
                left = scores[seen]
                std = np.sqrt(max(np.dot(scores, scores) - np.dot(left, left), 0.0) / n_valid)
                if std > 0:
                    out += scores * (w / std)
                continue
            if valid is None:
                valid = np.ones(n, dtype=bool)
                valid[seen] = False
            out += w * normalise_row(scores, valid, self.config)
        out[seen] = -np.inf
        return out

    def _explain_items(self, row: int, items: np.ndarray) -> list[list[int]]:
        """Per item of ``items``, the user's items that explain it, by the explaining member (empty: none)."""
        if self._explainer is None or len(items) == 0:
            return [[] for _ in items]
        assert self.members_ is not None
        member = self.members_[self._explainer]
        linear = self._linear_explain
        if linear is not None:
            # what the member's own explanation computes, without scoring every item again: for x_u W the
            # user's item j contributes x_uj * W[j, i] to item i
            seen = member.seen_
            lo, hi = seen.indptr[row], seen.indptr[row + 1]
            idx, vals = seen.indices[lo:hi], seen.data[lo:hi]
            contrib = np.asarray(linear(idx, items), dtype=np.float64) * vals[:, None]
            return sc.top_contributors(contrib, idx)
        order = np.unique(items)
        ranked = member.recommend_row(row, len(order), exclude_seen=False, candidates=order, explain=True)
        why = dict(zip(ranked.items.tolist(), ranked.because or [], strict=False))
        return [list(why.get(int(i), [])) for i in items.tolist()]

    # ------------------------------------------------------------------ scoring a history
    history_scoring = True

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
        """Top-``k`` for a history: the blend of the members that can score one (see the module docstring).

        Raises:
            NotImplementedError: no member can score a history.
        """
        from tastebud.models._history import recommend_history

        self.check_fitted()
        if not self._history_members():
            raise NotImplementedError(f"no member of this ensemble ({', '.join(self.member_names)}) scores a history")
        return recommend_history(
            self, item_ids, values, k, exclude_seen=exclude_seen, candidates=candidates, explain=explain,
            score_fn=lambda idx, vals: self._history_blend(idx, vals, exclude_seen=exclude_seen),
        )  # fmt: skip

    def _history_members(self) -> list[int]:
        assert self.members_ is not None
        return [i for i, m in enumerate(self.members_) if getattr(m, "history_scoring", False)]

    def _history_blend(self, idx: np.ndarray, values: np.ndarray, *, exclude_seen: bool) -> np.ndarray:
        assert self.members_ is not None and self.weights_ is not None and self.items_ is not None
        valid = np.ones(len(self.items_), dtype=bool)
        if exclude_seen:
            valid[idx] = False
        out = np.zeros(len(valid))
        for i in self._history_members():
            raw = np.asarray(self.members_[i]._history_scores(idx, values), dtype=np.float64)  # type: ignore[attr-defined]
            out += self.weights_[i] * normalise_row(raw, valid, self.config)
        return np.where(valid, out, -np.inf)

    def _explain_history(self, idx: np.ndarray, values: np.ndarray, rec: np.ndarray) -> list[list[str]]:
        """By the highest-weight history member that explains a history."""
        assert self.members_ is not None and self.weights_ is not None
        for i in np.argsort(-self.weights_, kind="stable").tolist():
            explainer = getattr(self.members_[i], "_explain_history", None)
            if explainer is not None and getattr(self.members_[i], "history_scoring", False):
                return explainer(idx, values, rec)  # type: ignore[no-any-return]
        return [[] for _ in rec]

    def similar_items(self, item_ids: Sequence[str], k: int = 10) -> Recommendations:
        """Similar items of the highest-weight member."""
        self.check_fitted()
        assert self.members_ is not None and self.weights_ is not None
        return self.members_[int(np.argmax(self.weights_))].similar_items(item_ids, k)

    # ------------------------------------------------------------------ persistence
    def save(self, directory: Path) -> None:
        """Write ``model.json`` (members, weights, validation), id maps, seen matrix and ``members/<i>-<name>/``."""
        self.check_fitted()
        assert self.members_ is not None and self.weights_ is not None
        directory = Path(directory)
        entries = []
        for i, (member, weight) in enumerate(zip(self.members_, self.weights_.tolist(), strict=True)):
            sub = f"{i}-{member.name}"
            member.save(directory / "members" / sub)
            klass = type(member)
            entries.append(
                {"name": member.name, "class": f"{klass.__module__}:{klass.__qualname__}", "dir": sub, "weight": weight}
            )
        sc.save_state(self, directory, {"members": entries, "validation": self.validation_})

    @classmethod
    def load(cls, directory: Path) -> Self:
        """Read an ensemble written by :meth:`save`; member classes come only from the registered models."""
        from tastebud.models import model_class

        directory = Path(directory)
        model, meta = sc.load_state(cls, directory)
        entries = meta.get("members")
        if not isinstance(entries, list) or not entries:
            raise BundleError(f"{directory}/model.json: missing or empty 'members' list")
        members, weights = [], []
        for entry in entries:
            try:
                name, sub, weight = str(entry["name"]), str(entry["dir"]), float(entry["weight"])
                klass = model_class(name)
            except (ParameterError, KeyError, TypeError, ValueError) as err:
                raise BundleError(f"{directory}/model.json: invalid member {entry!r} ({err})") from err
            if name == cls.name or not _MEMBER_DIR.match(sub):
                raise BundleError(f"{directory}/model.json: invalid member {entry!r}")
            if entry.get("class") != f"{klass.__module__}:{klass.__qualname__}":
                raise BundleError(
                    f"{directory}/model.json: member {name!r} was saved as {entry.get('class')!r}, "
                    "which is not the registered class"
                )
            if not (np.isfinite(weight) and weight > 0):
                raise BundleError(f"{directory}/model.json: member {name!r} has weight {weight!r}")
            members.append(klass.load(directory / "members" / sub))
            weights.append(weight)
        try:
            _check_vocabulary(members)
        except ParameterError as err:
            raise BundleError(f"{directory}: {err}") from err
        assert model.users_ is not None and model.items_ is not None and members[0].items_ is not None
        if members[0].items_ != model.items_ or members[0].users_ != model.users_:
            raise BundleError(f"{directory}: the members' vocabulary differs from the ensemble's")
        model.validation_ = dict(meta.get("validation") or {})
        model._attach(members, np.asarray(weights), model.seen_, normalised=True)
        return model


def _check_vocabulary(members: Sequence[Recommender], validation: Dataset | None = None) -> None:
    """Every member (and ``validation``) must share one user and item vocabulary."""
    first = members[0]
    for member in members[1:]:
        if member.items_ != first.items_ or member.users_ != first.users_:
            raise ParameterError(
                f"ensemble members {first.name!r} and {member.name!r} have different user or item vocabularies: "
                "fit them on one dataset"
            )
    if validation is not None and (validation.items != first.items_ or validation.users != first.users_):
        raise ParameterError("the validation part does not share the members' vocabulary: split one dataset")


def _richest_seen(members: Sequence[Recommender]) -> sp.csr_matrix:
    """The seen matrix with interaction values (not only 1s) among the members', else the first's."""
    for member in members:
        seen = sp.csr_matrix(member.seen_)
        if seen.nnz and not np.all(seen.data == 1):
            return seen
    return sp.csr_matrix(members[0].seen_)
