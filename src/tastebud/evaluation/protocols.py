"""The named offline evaluation protocols: which interactions each holds out, made from one dataset.

A protocol is a split method with its parameters fixed, so that a name means the same holdout everywhere (the
CLI's ``--protocol``, the benchmarks, the quality floors):

* ``random``: per-user random 80/20. Each user with at least 2 interactions has ``round(0.2 n)`` of them (at
  least 1, never all) drawn into test by a seeded hash of (seed, user, item); seed 42 by default. Order plays no
  part, so this protocol rewards models of taste, not of what comes next.
* ``temporal-user``: per-user temporal 80/20. The same counts, but each user's *newest* 20% is held out
  (timestamp order, ties broken by a fixed hash). Every user is evaluated on their own future; other users'
  interactions at any time stay in train, as in most published per-user temporal protocols.
* ``leave-last-out``: each user's last interaction (by timestamp, same tie-break) is held out; users with a
  single interaction stay wholly in train. No validation interaction is taken out of train.

:func:`protocol_split` makes a protocol's split; :func:`validation_split` carves a validation holdout of the same
kind from a split's training part, for tuning that never looks at test.
"""

from __future__ import annotations

from tastebud.data.dataset import Dataset
from tastebud.data.split import (
    Split,
    make_split,
    split_leave_last_out,
    split_random,
    split_temporal_user,
)
from tastebud.errors import ParameterError

#: Protocol name -> what it holds out (the names ``--protocol`` takes, in the order reports show them).
PROTOCOLS: dict[str, str] = {
    "random": "per-user random 80/20 (seeded)",
    "temporal-user": "per-user temporal 80/20: each user's newest 20% held out",
    "leave-last-out": "each user's last interaction held out",
}
#: Share of each user's interactions held out by ``random`` and ``temporal-user``.
TEST_FRACTION = 0.2


def protocol_name(protocol: str) -> str:
    """The canonical name of ``protocol`` (case and ``_``/``-`` forgiven).

    Raises:
        ParameterError: not a protocol name.
    """
    name = protocol.strip().lower().replace("_", "-")
    if name not in PROTOCOLS:
        raise ParameterError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)} (or 'all')")
    return name


def parse_protocols(text: str) -> list[str]:
    """Protocol names from a comma-separated list; ``all`` means every protocol, in :data:`PROTOCOLS` order.

    Raises:
        ParameterError: an unknown name, a repeated one, or an empty list.
    """
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise ParameterError("give at least one protocol (random, temporal-user, leave-last-out or all)")
    if any(p.lower() == "all" for p in parts):
        return list(PROTOCOLS)
    names = [protocol_name(p) for p in parts]
    if len(set(names)) != len(names):
        raise ParameterError(f"protocol listed twice in {text!r}")
    return names


def protocol_split(dataset: Dataset, protocol: str, *, seed: int = 42) -> Split:
    """Split ``dataset`` by a protocol of :data:`PROTOCOLS`, or by any other split method of ``data.split``.

    Other methods (such as ``temporal-global``) run with their own defaults; ``seed`` only matters to
    ``random``.

    Raises:
        ParameterError: an unknown protocol or split method.
        SplitError: the protocol needs timestamps the dataset lacks, or a part would be empty.
    """
    name = protocol.strip().lower().replace("_", "-")
    if name == "random":
        return split_random(dataset, TEST_FRACTION, seed=seed)
    if name == "temporal-user":
        return split_temporal_user(dataset, TEST_FRACTION)
    if name == "leave-last-out":
        return split_leave_last_out(dataset, validation=False, min_user_interactions=2)
    return make_split(dataset, name)


def validation_split(split: Split, protocol: str, *, seed: int = 42) -> Split:
    """The same protocol applied to ``split.train``: its test part is a validation holdout for tuning.

    For ``temporal-user`` it holds out each user's newest 20% of their training interactions (the slice just
    before their test), for ``leave-last-out`` their last training interaction; test is never touched.
    """
    return protocol_split(split.train, protocol, seed=seed)
