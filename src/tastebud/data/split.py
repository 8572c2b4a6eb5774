"""Train/validation/test splits that share one vocabulary, deterministic for a seed.

Every split assigns each interaction a part (train, validation or test) with vectorised numpy over one sort of
the interactions, so it scales to tens of millions of rows. Parts share the parent's vocabulary
(``Dataset.with_interactions``), so their matrices have one shape. Random choices come from a hash of
(seed, user, item) instead of a random stream over rows, so a split depends on the data, not on row order.

No (user, item) pair ends up in both train and a held-out part: when a dataset repeats pairs, a random split
moves all rows of a pair to the latest part any of them drew, and temporal splits drop the earlier rows of a
pair that is held out (moving them would put old interactions in the future). Run ``prepare.dedupe`` first to
avoid both.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from tastebud.data.dataset import Dataset
from tastebud.data.snapshot import _CHUNK, _mix_into, digest_of_rows, row_hashes, snapshot_id_of_digest
from tastebud.errors import DataWarning, ParameterError, SplitError

logger = logging.getLogger(__name__)

TRAIN, VALIDATION, TEST = 0, 1, 2
_PART_NAMES = ("train", "validation", "test")
#: How many example ids ``meta`` lists for users with too few interactions or cold users.
MAX_EXAMPLES = 20
#: Salt of the tie-break hash of temporal splits (they take no seed, yet must break ties without bias).
_TIE_SALT = 0x5EED


@dataclass
class Split:
    """A train/test (and optional validation) split of one dataset.

    All parts share the parent's user and item vocabularies, so their matrices have one shape and indices
    agree.

    Attributes:
        train: interactions to learn from.
        test: held-out interactions to evaluate on.
        validation: optional held-out interactions for tuning (carved from what would otherwise be train).
        meta: how the split was made (method, parameters, seed, users with too few interactions, counts).
    """

    train: Dataset
    test: Dataset
    validation: Dataset | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def parts(self) -> dict[str, Dataset]:
        """The parts by name (``train``, ``validation`` when present, ``test``)."""
        out = {"train": self.train}
        if self.validation is not None:
            out["validation"] = self.validation
        out["test"] = self.test
        return out

    @property
    def snapshot_id(self) -> str:
        """Content hash of the split: the snapshot ids of its parts, by name."""
        text = ";".join(f"{name}={part.snapshot_id}" for name, part in self.parts().items())
        return hashlib.sha256(f"tastebud-split-v1;{text}".encode()).hexdigest()[:16]

    def describe(self) -> dict[str, Any]:
        """JSON-friendly summary: method, parameters, snapshot ids and sizes of every part."""
        parts = {
            name: {
                "interactions": part.n_interactions,
                "users": int(part.interactions["user_idx"].n_unique()),
                "items": int(part.interactions["item_idx"].n_unique()),
                "snapshot_id": part.snapshot_id,
            }
            for name, part in self.parts().items()
        }
        return {
            "snapshot_id": self.snapshot_id,
            "method": self.meta.get("method"),
            "params": self.meta.get("params", {}),
            "seed": self.meta.get("seed"),
            "parent_snapshot_id": self.meta.get("parent_snapshot_id"),
            "shape": list(self.train.shape),
            "parts": parts,
            **{k: v for k, v in self.meta.items() if k not in {"method", "params", "seed", "parent_snapshot_id"}},
        }


# ---------------------------------------------------------------------- public split functions
def split_random(
    ds: Dataset,
    test_fraction: float = 0.2,
    validation_fraction: float = 0.0,
    seed: int = 42,
    min_user_interactions: int = 2,
) -> Split:
    """Hold out a random fraction of each user's interactions.

    Each user with at least ``min_user_interactions`` interactions gets ``round(test_fraction * n)`` of them
    (at least 1, and never all) in test, then ``round(validation_fraction * n)`` (at least 1 when the fraction
    is positive, as long as one row remains for train) in validation. Users with fewer stay wholly in train
    and are reported in ``meta["users_too_few"]``.

    Raises:
        ParameterError: a fraction is out of range or the minimum is below 2.
        SplitError: test (or a requested validation) would be empty.
    """
    params = _check_fractions(test_fraction, validation_fraction)
    _check_min(min_user_interactions, 2)
    users = ds.interactions["user_idx"].to_numpy()
    key = _pair_hash(users, ds.interactions["item_idx"].to_numpy(), seed)
    order = _order(ds, [pl.Series(key)])
    part, too_few = _per_user_parts(users, order, ds.n_users, test_fraction, validation_fraction, min_user_interactions)
    part, moved = _resolve_pairs(ds, part, drop=False)
    params.update(min_user_interactions=min_user_interactions)
    extra = {"duplicate_rows_moved": moved} if moved else {}
    return _build(ds, "random", params, seed, part, users_too_few=too_few, **extra)


def split_temporal_user(
    ds: Dataset,
    test_fraction: float = 0.2,
    validation_fraction: float = 0.0,
    min_user_interactions: int = 2,
) -> Split:
    """Hold out the latest fraction of each user's interactions (by timestamp; ties broken by a fixed hash).

    Counts follow :func:`split_random`; validation is the slice just before test.

    Raises:
        ParameterError: a fraction is out of range or the minimum is below 2.
        SplitError: the dataset has no timestamps, or a part would be empty.
    """
    params = _check_fractions(test_fraction, validation_fraction)
    _check_min(min_user_interactions, 2)
    _need_timestamps(ds, "temporal-user")
    users = ds.interactions["user_idx"].to_numpy()
    order = _order(ds, _time_keys(ds))
    part, too_few = _per_user_parts(users, order, ds.n_users, test_fraction, validation_fraction, min_user_interactions)
    part, dropped = _resolve_pairs(ds, part, drop=True)
    params.update(min_user_interactions=min_user_interactions)
    extra = {"duplicate_rows_dropped": dropped} if dropped else {}
    return _build(ds, "temporal-user", params, None, part, users_too_few=too_few, **extra)


def split_temporal_global(
    ds: Dataset,
    cut: dt.datetime | dt.date | str | int | float | None = None,
    test_fraction: float = 0.2,
    validation_fraction: float = 0.0,
) -> Split:
    """Split at one point in time: interactions at or after the cut are test, earlier ones train.

    Args:
        ds: the dataset (needs timestamps).
        cut: the test start, as a datetime (naive means UTC), a date, an ISO-8601 string or epoch seconds.
            ``None`` puts the cut at the time quantile that leaves ``test_fraction`` of interactions in test.
        test_fraction: used only when ``cut`` is ``None``.
        validation_fraction: the latest interactions before the cut, as a fraction of all interactions, go
            to validation.

    Users in test who have nothing in train are reported in ``meta["cold_users"]`` (and items likewise).

    Raises:
        ParameterError: a fraction is out of range or ``cut`` cannot be read as a time.
        SplitError: the dataset has no timestamps, or a part would be empty.
    """
    params = _check_fractions(test_fraction, validation_fraction)
    _need_timestamps(ds, "temporal-global")
    stamps = ds.interactions["timestamp"].to_numpy()
    n = len(stamps)
    if cut is None:
        n_test = max(1, _round_half_up(test_fraction * n))
        cut_s = int(np.partition(stamps, n - n_test)[n - n_test])
    else:
        cut_s = _to_epoch(cut)
        params = {"cut": cut_s, "validation_fraction": validation_fraction}
    part = np.where(stamps >= cut_s, TEST, TRAIN).astype(np.int8)
    val_cut = None
    if validation_fraction > 0:
        before = np.flatnonzero(part == TRAIN)
        n_val = max(1, _round_half_up(validation_fraction * n))
        if n_val >= len(before):
            raise SplitError(
                f"temporal-global: validation_fraction={validation_fraction} needs {n_val} interactions "
                f"before the cut, but only {len(before)} are there"
            )
        pre = stamps[before]
        val_cut = int(np.partition(pre, len(pre) - n_val)[len(pre) - n_val])
        part[before[pre >= val_cut]] = VALIDATION
    part, dropped = _resolve_pairs(ds, part, drop=True)
    extra: dict[str, Any] = {"cut": cut_s, "cut_iso": _iso(cut_s)}
    if val_cut is not None:
        extra.update(validation_cut=val_cut, validation_cut_iso=_iso(val_cut))
    if dropped:
        extra["duplicate_rows_dropped"] = dropped
    split = _build(ds, "temporal-global", params, None, part, **extra)
    split.meta.update(_cold(ds, part))
    return split


def split_leave_last_out(ds: Dataset, validation: bool = True, min_user_interactions: int = 3) -> Split:
    """Hold out each user's last interaction for test and, with ``validation``, the one before for validation.

    Ties of timestamps are broken by a fixed hash of (user, item), so the pick does not favour any item id.
    Users with fewer than ``min_user_interactions`` stay wholly in train and are reported.

    Raises:
        ParameterError: the minimum is too small to leave an interaction in train.
        SplitError: the dataset has no timestamps, or no user qualifies.
    """
    _check_min(min_user_interactions, 3 if validation else 2)
    _need_timestamps(ds, "leave-last-out")
    users = ds.interactions["user_idx"].to_numpy()
    order = _order(ds, _time_keys(ds))
    pos_from_end, counts = _positions(users, order, ds.n_users, from_end=True)
    part = np.full(len(users), TRAIN, dtype=np.int8)
    eligible = counts[users] >= min_user_interactions
    part[eligible & (pos_from_end == 0)] = TEST
    if validation:
        part[eligible & (pos_from_end == 1)] = VALIDATION
    part, dropped = _resolve_pairs(ds, part, drop=True)
    params = {"validation": validation, "min_user_interactions": min_user_interactions}
    extra = {"duplicate_rows_dropped": dropped} if dropped else {}
    too_few = np.flatnonzero((counts > 0) & (counts < min_user_interactions))
    return _build(ds, "leave-last-out", params, None, part, users_too_few=too_few, **extra)


#: Split methods by the name the CLI and configs use.
SPLITS: dict[str, Callable[..., Split]] = {
    "random": split_random,
    "temporal-user": split_temporal_user,
    "temporal-global": split_temporal_global,
    "leave-last-out": split_leave_last_out,
}


def make_split(ds: Dataset, method: str, **params: Any) -> Split:
    """Split ``ds`` with the method called ``method`` (a key of :data:`SPLITS`; ``_`` works for ``-``).

    Raises:
        ParameterError: unknown method or parameter, or a parameter out of range.
        SplitError: a part would be empty, or the method needs timestamps the dataset lacks.
    """
    name = method.strip().lower().replace("_", "-")
    func = SPLITS.get(name)
    if func is None:
        raise ParameterError(f"unknown split method {method!r}; expected one of {sorted(SPLITS)}")
    allowed = func.__code__.co_varnames[1 : func.__code__.co_argcount]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ParameterError(f"split {name!r}: unknown parameter(s) {unknown}; allowed: {list(allowed)}")
    return func(ds, **params)


# ---------------------------------------------------------------------- helpers
def _check_fractions(test_fraction: float, validation_fraction: float) -> dict[str, Any]:
    if not (isinstance(test_fraction, int | float) and 0 < test_fraction < 1):
        raise ParameterError(f"test_fraction must be a number in (0, 1), got {test_fraction!r}")
    if not (isinstance(validation_fraction, int | float) and 0 <= validation_fraction < 1):
        raise ParameterError(f"validation_fraction must be a number in [0, 1), got {validation_fraction!r}")
    if test_fraction + validation_fraction >= 1:
        raise ParameterError(
            f"test_fraction + validation_fraction must be below 1 to leave data for train, got "
            f"{test_fraction} + {validation_fraction}"
        )
    return {"test_fraction": float(test_fraction), "validation_fraction": float(validation_fraction)}


def _check_min(min_user_interactions: int, lowest: int) -> None:
    if not isinstance(min_user_interactions, int | np.integer) or min_user_interactions < lowest:
        raise ParameterError(
            f"min_user_interactions must be an integer >= {lowest} (one interaction must stay in train), "
            f"got {min_user_interactions!r}"
        )


def _need_timestamps(ds: Dataset, method: str) -> None:
    if not ds.has_timestamps:
        missing = ds.interactions["timestamp"].null_count()
        raise SplitError(
            f"{method} split needs timestamps, but dataset {ds.name!r} has {missing} of {ds.n_interactions} "
            f"interactions without one; use the 'random' split or data with timestamps"
        )


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


def _pair_hash(users: np.ndarray, items: np.ndarray, salt: int) -> np.ndarray:
    """A 63-bit pseudo-random key per (user, item, salt), identical on every machine.

    ``_mix(((user << 32) | item) ^ salt_word) >> 1``, computed in cache-sized chunks.
    """
    salt_word = np.uint64(int(hashlib.sha256(str(salt).encode()).hexdigest()[:16], 16))
    n = len(users)
    out = np.empty(n, dtype=np.uint64)
    scratch = np.empty(min(n, _CHUNK), dtype=np.uint64)
    for start in range(0, n, _CHUNK):
        stop = min(start + _CHUNK, n)
        h, tmp = out[start:stop], scratch[: stop - start]
        h[:] = users[start:stop].astype(np.uint64)
        np.left_shift(h, np.uint64(32), out=h)
        tmp[:] = items[start:stop].astype(np.uint64)
        np.bitwise_or(h, tmp, out=h)
        np.bitwise_xor(h, salt_word, out=h)
        _mix_into(h, tmp)
        np.right_shift(h, np.uint64(1), out=h)
    return out.view(np.int64)


def _time_keys(ds: Dataset) -> list[pl.Series]:
    inter = ds.interactions
    tie = _pair_hash(inter["user_idx"].to_numpy(), inter["item_idx"].to_numpy(), _TIE_SALT)
    return [inter["timestamp"], pl.Series(tie)]


def _order(ds: Dataset, keys: list[pl.Series]) -> np.ndarray:
    """Row order sorted by user, then ``keys``, then row (polars sorts on several threads)."""
    if len(keys) == 1 and keys[0].dtype == pl.Int64:
        order = _order_by_packed_key(ds.interactions["user_idx"].to_numpy(), keys[0].to_numpy(), ds.n_users)
        if order is not None:
            return order
    frame = pl.DataFrame([ds.interactions["user_idx"], *[k.alias(f"_k{i}") for i, k in enumerate(keys)]])
    return frame.select(pl.arg_sort_by(frame.columns, maintain_order=True)).to_series().to_numpy()


def _order_by_packed_key(users: np.ndarray, key: np.ndarray, n_users: int) -> np.ndarray | None:
    """:func:`_order` for one non-negative 63-bit key by sorting one 64-bit word, or ``None`` where it cannot tell.

    The word holds the user in its high bits and the key's leading bits below, so it orders rows by user, then
    key. When no two rows share a word, that order is strict, hence the one :func:`_order` gives (the row only
    breaks ties); when some do (rows of one user whose keys agree in their leading bits, or repeat), ``None``.
    """
    if len(users) < 2 or n_users < 1:
        return None
    user_bits = max(1, int(n_users - 1).bit_length())
    if user_bits > 62 or users.min() < 0 or users.max() >= n_users or key.min() < 0:
        return None
    key_bits = 63 - user_bits  # the word stays below 2**63: a non-negative int64
    word = (users.astype(np.int64) << np.int64(key_bits)) | (key >> np.int64(63 - key_bits))
    order = np.argsort(word)
    ranked = word[order]
    if (ranked[1:] == ranked[:-1]).any():
        return None
    return order


def _positions(
    users: np.ndarray, order: np.ndarray, n_users: int, *, from_end: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Position of every row within its user (in ``order``), and the count of rows per user."""
    counts = np.bincount(users, minlength=n_users)
    pos = np.empty(len(users), dtype=np.int64)
    pos[order] = _sorted_positions(counts, from_end=from_end)
    return pos, counts


def _sorted_positions(counts: np.ndarray, *, from_end: bool = False) -> np.ndarray:
    """Position of every row within its user, rows in :func:`_order` (users ascending, ``counts`` rows each)."""
    starts = np.cumsum(counts) - counts
    # ``order`` sorts by user first, so the users of the sorted rows are each user repeated ``counts`` times
    base = starts + counts - 1 if from_end else starts
    pos_sorted = np.repeat(base, counts)
    if from_end:
        np.subtract(pos_sorted, np.arange(len(pos_sorted)), out=pos_sorted)
    else:
        np.subtract(np.arange(len(pos_sorted)), pos_sorted, out=pos_sorted)
    return pos_sorted


def _per_user_parts(
    users: np.ndarray,
    order: np.ndarray,
    n_users: int,
    test_fraction: float,
    validation_fraction: float,
    min_user_interactions: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Part of every row when the last rows of each user (in ``order``) are held out; and too-few users."""
    counts = np.bincount(users, minlength=n_users)
    eligible = counts >= min_user_interactions
    n_test = np.maximum(1, np.floor(test_fraction * counts + 0.5)).astype(np.int64)
    n_test = np.where(eligible, np.minimum(n_test, counts - 1), 0)
    n_val = np.zeros_like(n_test)
    if validation_fraction > 0:
        n_val = np.maximum(1, np.floor(validation_fraction * counts + 0.5)).astype(np.int64)
        n_val = np.where(eligible, np.clip(n_val, 0, counts - n_test - 1), 0)
    # in the order of ``order`` (users ascending), then put back in row order
    pos = _sorted_positions(counts, from_end=True)
    part_sorted = np.full(len(users), TRAIN, dtype=np.int8)
    part_sorted[pos < np.repeat(n_test + n_val, counts)] = VALIDATION
    part_sorted[pos < np.repeat(n_test, counts)] = TEST
    part = np.empty(len(users), dtype=np.int8)
    part[order] = part_sorted
    too_few = np.flatnonzero((counts > 0) & ~eligible)
    return part, too_few


def _resolve_pairs(ds: Dataset, part: np.ndarray, *, drop: bool) -> tuple[np.ndarray, int]:
    """Make every (user, item) pair live in one part; returns the parts and how many rows changed.

    ``drop`` marks rows of a pair that sit in an earlier part than the pair's latest one with -1 (removed);
    otherwise they move to the latest part.
    """
    inter = ds.interactions
    pair = inter["user_idx"].cast(pl.Int64) * ds.n_items + inter["item_idx"].cast(pl.Int64)
    if pair.n_unique() == len(pair):
        return part, 0
    frame = pl.DataFrame({"pair": pair, "part": pl.Series(part)})
    top = frame.select(pl.col("part").max().over("pair")).to_series().to_numpy()
    changed = part != top
    n_changed = int(changed.sum())
    if n_changed:
        part = part.copy()
        part[changed] = -1 if drop else top[changed]
        action = "dropped from" if drop else "moved out of"
        warnings.warn(
            f"dataset {ds.name!r} repeats (user, item) pairs: {n_changed} rows were {action} earlier parts "
            f"so that no pair is in two parts; run prepare.dedupe first to avoid this",
            DataWarning,
            stacklevel=3,
        )
    return part, n_changed


def _build(
    ds: Dataset,
    method: str,
    params: dict[str, Any],
    seed: int | None,
    part: np.ndarray,
    *,
    users_too_few: np.ndarray | None = None,
    **extra: Any,
) -> Split:
    """Turn per-row parts into a :class:`Split` (datasets sharing the parent vocabulary) with its meta."""
    has_validation = params.get("validation_fraction", 0) > 0 or params.get("validation") is True
    series = pl.Series(part)
    # One pass of row hashes gives the snapshot ids of every part (and of the parent when not known yet): the
    # digest is a sum over rows, so a part's is the sum over its rows.
    hashes = row_hashes(ds.interactions)
    if "snapshot_id" not in ds.__dict__:
        ds.__dict__["snapshot_id"] = snapshot_id_of_digest(digest_of_rows(hashes), ds.users, ds.items, ds.item_meta)
    parts: dict[str, Dataset] = {}
    for code, name in enumerate(_PART_NAMES):
        if name == "validation" and not has_validation:
            continue
        mask = part == code
        rows = ds.interactions.filter(series == code)
        if rows.height == 0:
            raise SplitError(
                f"{method} split of dataset {ds.name!r} ({ds.n_interactions} interactions, "
                f"{ds.n_users} users) leaves the {name} part empty; use other parameters or more data"
            )
        parts[name] = ds.with_interactions(rows, split={"method": method, "part": name})
        digest = digest_of_rows(hashes[mask])
        parts[name].__dict__["snapshot_id"] = snapshot_id_of_digest(digest, ds.users, ds.items, ds.item_meta)
    meta: dict[str, Any] = {
        "method": method,
        "params": params,
        "seed": seed,
        "parent_snapshot_id": ds.snapshot_id,
        "counts": {name: p.n_interactions for name, p in parts.items()},
    }
    if users_too_few is not None:
        meta["users_too_few"] = len(users_too_few)
        meta["users_too_few_examples"] = ds.users.ids[users_too_few[:MAX_EXAMPLES]].astype(str).tolist()
    meta.update(extra)
    logger.info("split", extra={"dataset": ds.name, "method": method, "counts": meta["counts"]})
    return Split(train=parts["train"], test=parts["test"], validation=parts.get("validation"), meta=meta)


def _cold(ds: Dataset, part: np.ndarray) -> dict[str, Any]:
    """Users and items of the held-out parts that never occur in train."""
    out: dict[str, Any] = {}
    train = part == TRAIN
    held = part > TRAIN
    for col, label, vocab in (("user_idx", "users", ds.users), ("item_idx", "items", ds.items)):
        idx = ds.interactions[col].to_numpy()
        in_train = np.zeros(len(vocab), dtype=bool)
        in_train[idx[train]] = True
        in_held = np.zeros(len(vocab), dtype=bool)
        in_held[idx[held]] = True
        cold = np.flatnonzero(in_held & ~in_train)
        out[f"cold_{label}"] = len(cold)
        out[f"cold_{label}_examples"] = vocab.ids[cold[:MAX_EXAMPLES]].astype(str).tolist()
    return out


def _to_epoch(cut: Any) -> int:
    """Epoch seconds (UTC) of a datetime, date, ISO-8601 string or number."""
    if isinstance(cut, bool):
        raise ParameterError(f"cut must be a time, got {cut!r}")
    if isinstance(cut, int | float | np.integer | np.floating):
        if not math.isfinite(cut):
            raise ParameterError(f"cut must be a finite number of epoch seconds, got {cut!r}")
        return math.floor(cut)
    if isinstance(cut, str):
        text = cut.strip()
        try:
            return int(text)
        except ValueError:
            pass
        try:
            cut = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError as err:
            raise ParameterError(f"cut {text!r} is neither epoch seconds nor an ISO-8601 date or time") from err
    if isinstance(cut, dt.datetime):
        if cut.tzinfo is None:
            cut = cut.replace(tzinfo=dt.UTC)
        return math.floor(cut.timestamp())
    if isinstance(cut, dt.date):
        return int(dt.datetime(cut.year, cut.month, cut.day, tzinfo=dt.UTC).timestamp())
    raise ParameterError(f"cut must be a datetime, date, ISO-8601 string or epoch seconds, got {type(cut).__name__}")


def _iso(epoch: int) -> str | None:
    try:
        return dt.datetime.fromtimestamp(epoch, tz=dt.UTC).isoformat()
    except (OverflowError, OSError, ValueError):  # far outside the calendar: the number is still recorded
        return None
