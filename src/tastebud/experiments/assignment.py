"""Deterministic assignment of users to experiment variants: a hash of the user id, no state, the same everywhere.

**The hash.** ``bucket(key, user_id)`` is the first 8 bytes of ``sha256(key + "\\x1f" + user_id)`` (UTF-8), read
as a big-endian unsigned integer, modulo 10,000. It depends on its two strings only, never on Python's ``hash``
(randomised per process), a model's id maps or the time, so every serving process, a restart, another machine and
an offline analysis (any language with sha256) agree, for users no model has seen too. The bias of the modulo is
below 1e-15. The user id is hashed in the normal form of the one id rule (:mod:`tastebud.ids`: surrounding
whitespace stripped), the form the events and the request log store, so ``" 196 "`` is assigned as ``"196"``.

**Who gets what.** For an experiment on model ``m`` in layer ``L`` with traffic range ``[start, end)`` percent:

1. *traffic*: the user is in the experiment when ``bucket("m\\x1fL", user_id)`` lies in ``[100 * start, 100 * end)``.
   The key is the model and layer only, so experiments of one layer with disjoint ranges never share a user.
2. *holdout and variant*: ``b = bucket(salt, user_id)`` with the experiment's own random salt. The first
   ``100 * holdout`` buckets are the holdout (no variant: the default champion); the rest are cut in proportion to
   the weights, in variant order.

A user's variant depends on the salt, holdout and weights only: widening the traffic range adds users without
moving anyone already in, and a new experiment (a new salt) splits users independently of every earlier one.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass

from tastebud.experiments.definitions import ExperimentSpec
from tastebud.ids import canonical_id

#: Buckets of the hash space: weights, holdout and traffic ranges resolve to 0.01 percent.
BUCKETS = 10_000
_SEPARATOR = "\x1f"  # ASCII unit separator: cannot occur in a salt, and keeps "ab"+"c" apart from "a"+"bc"


def bucket(salt: str, user_id: str, buckets: int = BUCKETS) -> int:
    """The user's bucket in ``[0, buckets)`` under ``salt``: sha256 of ``salt + "\\x1f" + user_id`` (UTF-8), the
    first 8 bytes as a big-endian unsigned integer, modulo ``buckets``."""
    digest = hashlib.sha256(f"{salt}{_SEPARATOR}{canonical_id(user_id)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % buckets


def layer_key(model_name: str, layer: str) -> str:
    """The hash key of a traffic layer: shared by every experiment of the model in that layer."""
    return f"{model_name}{_SEPARATOR}{layer}"


def assign(experiment: ExperimentSpec, user_id: str) -> str | None:
    """The variant ``user_id`` gets in ``experiment``, or None when outside its traffic range or in its holdout.

    The experiment must carry its salt (an :class:`~tastebud.experiments.definitions.Experiment`). For many
    requests use :class:`Assigner`, which gives the same answers from precomputed boundaries.
    """
    return _Plan(experiment).variant(user_id)


@dataclass(frozen=True, slots=True)
class Assignment:
    """A user's place in one running experiment.

    Attributes:
        experiment: the experiment's name.
        variant: the variant's name (what the request log records).
        ref: the variant's ref as declared (``champion``, ``"3"``).
        version: the version the ref was pinned to when the experiment started (None if unknown).
        kind: ``ab``, ``interleaving`` or ``canary``.
    """

    experiment: str
    variant: str
    ref: str
    version: int | None
    kind: str


class _Plan:
    """One experiment's assignment, precomputed: hash prefixes, the traffic window and the variant boundaries."""

    __slots__ = ("assignments", "bounds", "hi", "holdout", "layer_hash", "lo", "names", "salt_hash")

    def __init__(self, experiment: ExperimentSpec) -> None:
        salt = getattr(experiment, "salt", None)
        if not salt:
            raise ValueError(f"experiment {experiment.name!r} has no salt: assign stored experiments only")
        self.salt_hash = hashlib.sha256(f"{salt}{_SEPARATOR}".encode())
        start, end = experiment.traffic_range
        self.lo, self.hi = round(start * BUCKETS / 100), round(end * BUCKETS / 100)
        full = self.lo == 0 and self.hi == BUCKETS
        key = layer_key(str(experiment.model_name), experiment.layer)
        self.layer_hash = None if full else hashlib.sha256(f"{key}{_SEPARATOR}".encode())
        self.holdout = round(experiment.holdout * BUCKETS / 100)
        span, total, bounds = BUCKETS - self.holdout, 0.0, []
        for weight in experiment.weights:
            total += weight
            bounds.append(self.holdout + round(span * total / 100))
        bounds[-1] = BUCKETS  # the weights sum to 100 up to rounding: the last variant ends the space
        self.bounds = bounds
        self.names = [v.name for v in experiment.variants]
        versions = getattr(experiment, "versions", {}) or {}
        self.assignments = [
            Assignment(experiment.name, v.name, v.ref, versions.get(v.name), experiment.kind)
            for v in experiment.variants
        ]

    def index(self, user_id: str) -> int | None:
        """The variant's position, or None (outside the traffic range, or in the holdout)."""
        data = canonical_id(user_id).encode()
        if self.layer_hash is not None:
            h = self.layer_hash.copy()
            h.update(data)
            if not self.lo <= int.from_bytes(h.digest()[:8], "big") % BUCKETS < self.hi:
                return None
        h = self.salt_hash.copy()
        h.update(data)
        b = int.from_bytes(h.digest()[:8], "big") % BUCKETS
        return None if b < self.holdout else bisect_right(self.bounds, b)

    def variant(self, user_id: str) -> str | None:
        i = self.index(user_id)
        return None if i is None else self.names[i]


class Assigner:
    """Assigns users to the variants of a set of running experiments; what a serving process holds.

    Built once per poll of :func:`~tastebud.experiments.definitions.running_experiments` (compare the new list
    with :attr:`experiments` to know when to rebuild); each request then costs one or two sha256 of a short string
    and a bisect per experiment (a few microseconds). Immutable, so safe to share between threads.
    """

    def __init__(self, experiments: Iterable[ExperimentSpec] = ()) -> None:
        """Precompute every experiment's boundaries (in the given order, which :meth:`assign` honours)."""
        self.experiments: tuple[ExperimentSpec, ...] = tuple(experiments)
        self._plans = [_Plan(e) for e in self.experiments]
        self._by_name = {e.name: plan for e, plan in zip(self.experiments, self._plans, strict=True)}

    def __len__(self) -> int:
        return len(self._plans)

    def assign(self, user_id: str) -> Assignment | None:
        """The user's assignment in the first experiment (in the given order, start order from
        ``running_experiments``) that takes them, or None when none does."""
        for plan in self._plans:
            i = plan.index(user_id)
            if i is not None:
                return plan.assignments[i]
        return None

    def assign_all(self, user_id: str) -> list[Assignment]:
        """The user's assignment in every experiment that takes them (several only across layers)."""
        out = []
        for plan in self._plans:
            i = plan.index(user_id)
            if i is not None:
                out.append(plan.assignments[i])
        return out

    def variant(self, experiment: str, user_id: str) -> str | None:
        """The variant of ``user_id`` in the experiment called ``experiment`` (None: not in it, or held out).

        Raises:
            KeyError: no such experiment in this assigner.
        """
        return self._by_name[experiment].variant(user_id)
