"""Synthetic interaction data with a planted structure that models can learn and tests can check.

The generator plants ``n_factors`` taste clusters. Every item belongs to one cluster (its genre is the
cluster's genre and its title uses the cluster's words); every user has a mixture of interests, mostly in one
cluster. An interaction is drawn in two steps: a cluster from the user's mixture (or, now and then, the whole
catalog), then an item of that cluster with Zipf-like popularity. User activity follows a power law too.
Explicit ratings grow with the user's affinity for the item's cluster; implicit play counts are heavy-tailed
and grow with it.

Generation is vectorised over blocks of users (about a million draws each), so memory stays modest and the
user x item matrix is never built. :func:`planted_clusters` recovers the planted cluster of every user and
item of a generated dataset from its ``meta["synthetic"]`` parameters.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import inspect
import itertools
import math
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl

from tastebud.data.dataset import Dataset
from tastebud.data.lastfm import LASTFM_FILE, LASTFM_TAGS_FILE
from tastebud.errors import DataValidationError, ParameterError

Kind = Literal["explicit", "implicit"]

GENRE_NAMES = (
    "Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
    "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
_ADJECTIVES = (
    "Crimson", "Silent", "Golden", "Broken", "Hidden", "Electric", "Frozen", "Burning", "Lonely", "Savage",
    "Gentle", "Midnight", "Iron", "Velvet", "Wild", "Hollow", "Bright", "Dark", "Lost", "Final", "Secret",
    "Endless", "Rusty", "Silver", "Quiet", "Restless", "Fading", "Distant", "Bitter", "Sweet", "Stormy",
    "Paper", "Glass", "Neon", "Ancient", "Little", "Crooked", "Scarlet", "Azure", "Wicked",
)  # fmt: skip
_NOUNS = (
    "Harbor", "River", "Empire", "Garden", "Mirror", "Road", "Kingdom", "Island", "Signal", "Shadow", "Dream",
    "Engine", "Forest", "Letter", "Machine", "Mountain", "Night", "Ocean", "Promise", "Station", "Storm",
    "Summer", "Tower", "Valley", "Voyage", "Winter", "Witness", "Horizon", "Circus", "Frontier",
)  # fmt: skip
#: Mood tags of the Last.fm-format sample: cluster ``c``'s artists carry ``MOOD_TAGS[c % 12]`` first.
MOOD_TAGS = (
    "chill", "party", "sad", "energetic", "focus", "romantic", "happy", "dark", "dreamy", "angry", "melancholic",
    "uplifting",
)  # fmt: skip
#: Style tags of the Last.fm-format sample: cluster ``c``'s artists carry ``STYLE_TAGS[c % 12]`` second.
STYLE_TAGS = (
    "ambient", "electronic", "indie", "rock", "jazz", "pop", "folk", "metal", "soul", "classical", "punk",
    "hip-hop",
)  # fmt: skip
#: Adjectives that belong to each cluster (so a content model can find clusters in titles).
_WORDS_PER_CLUSTER = 4
#: Share of draws that ignore the user's interests and pick from the whole catalog by popularity.
_NOISE_SHARE = 0.1
#: Weight of a user's main cluster in their interest mixture (the rest spreads over all clusters).
_MAIN_INTEREST = 0.8
#: A user interacts with at most this share of the catalog.
_MAX_USER_SHARE = 0.5
#: Rounds of drawing before the last short users are filled exactly.
_MAX_ROUNDS = 12
#: Target number of draws per block of users.
_BLOCK_DRAWS = 1 << 20


@dataclass(frozen=True)
class _Latent:
    """The planted structure, derived from the seed alone (independent of the interaction sampling)."""

    item_cluster: np.ndarray  # (n_items,) int32
    item_popularity: np.ndarray  # (n_items,) float64, Zipf weights
    item_factors: np.ndarray  # (n_items, K) float32, rows sum to 1
    item_bias: np.ndarray  # (n_items,) float32, quality for ratings
    user_cluster: np.ndarray  # (n_users,) int32
    user_factors: np.ndarray  # (n_users, K) float32, rows sum to 1
    user_activity: np.ndarray  # (n_users,) float64, Pareto weights
    user_bias: np.ndarray  # (n_users,) float32
    user_start: np.ndarray  # (n_users,) float64 in [0, 0.8): when the user joins, as a share of the period


def _latent(n_users: int, n_items: int, n_factors: int, popularity_exponent: float, seed: int) -> _Latent:
    rng = np.random.default_rng([seed, 0])
    # Balanced cluster sizes keep every cluster non-empty.
    item_cluster = rng.permutation(np.arange(n_items) % n_factors).astype(np.int32)
    ranks = rng.permutation(n_items) + 1.0
    item_popularity = ranks ** (-popularity_exponent)
    item_factors = _mixture(rng, item_cluster, n_factors)
    user_cluster = rng.integers(0, n_factors, n_users).astype(np.int32)
    user_factors = _mixture(rng, user_cluster, n_factors)
    return _Latent(
        item_cluster=item_cluster,
        item_popularity=item_popularity,
        item_factors=item_factors,
        item_bias=rng.normal(0.0, 0.35, n_items).astype(np.float32),
        user_cluster=user_cluster,
        user_factors=user_factors,
        user_activity=rng.pareto(1.3, n_users) + 1.0,
        user_bias=rng.normal(0.0, 0.3, n_users).astype(np.float32),
        user_start=rng.random(n_users) * 0.8,
    )


def _mixture(rng: np.random.Generator, main: np.ndarray, k: int) -> np.ndarray:
    """Rows of weights summing to 1: ``_MAIN_INTEREST`` on the main cluster, the rest Dirichlet-spread."""
    rest = rng.dirichlet(np.full(k, 0.3), size=len(main)).astype(np.float32) * (1.0 - _MAIN_INTEREST)
    rest[np.arange(len(main)), main] += _MAIN_INTEREST
    return rest


def synthetic_frames(
    n_users: int,
    n_items: int,
    n_interactions: int,
    *,
    kind: Kind = "explicit",
    n_factors: int = 8,
    n_genres: int = 12,
    popularity_exponent: float = 1.0,
    seed: int = 0,
    start: str | dt.date | dt.datetime = "2020-01-01",
    days: int = 365,
    half_stars: bool = False,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Generate interactions and an item catalog with a planted cluster structure.

    Args:
        n_users: users; each has at least one interaction, so the dataset has exactly this many.
        n_items: items in the catalog (all listed in the item frame, even those nobody picked).
        n_interactions: exact number of interactions, all distinct (user, item) pairs.
        kind: ``"explicit"`` gives a ``rating`` column (1 to 5), ``"implicit"`` a ``value`` column of play
            counts (integers >= 1, heavy-tailed).
        n_factors: number of planted taste clusters.
        n_genres: number of genre names; an item's first genre is its cluster's genre (clusters share genres
            when there are more clusters than genres).
        popularity_exponent: Zipf exponent of item popularity (0 is uniform).
        seed: everything is determined by it.
        start: first day of the period (UTC), as an ISO date, date or datetime.
        days: length of the period in days.
        half_stars: ratings in half stars (1.0, 1.5, ..., 5.0) instead of whole stars.

    Returns:
        ``(interactions, items)``: interactions with ``user_id``, ``item_id`` (integers from 1), ``rating`` or
        ``value`` and ``timestamp`` (epoch seconds); items with ``item_id``, ``title``, ``year``, ``genres``
        (list of str) and ``cluster`` (the planted cluster).

    Raises:
        ParameterError: a size or parameter is out of range, or the interactions cannot fit (each user can
            take at most half the catalog).
    """
    _check(n_users, n_items, n_interactions, kind, n_factors, n_genres, popularity_exponent, days)
    latent = _latent(n_users, n_items, n_factors, popularity_exponent, seed)
    counts = _allocate(latent.user_activity, n_interactions, _user_cap(n_items))
    users, items = _sample_pairs(latent, counts, n_items, seed)
    rng = np.random.default_rng([seed, 2])
    affinity = np.einsum("ij,ij->i", latent.user_factors[users], latent.item_factors[items])
    frame: dict[str, Any] = {
        "user_id": (users + 1).astype(np.int64),
        "item_id": (items + 1).astype(np.int64),
    }
    if kind == "explicit":
        frame["rating"] = _ratings(rng, affinity, latent, users, items, half_stars)
    else:
        frame["value"] = _play_counts(rng, affinity)
    frame["timestamp"] = _timestamps(rng, latent.user_start[users], start, days)
    return pl.DataFrame(frame), _item_frame(latent, n_genres, seed)


def generate_synthetic(
    n_users: int = 1000,
    n_items: int = 500,
    n_interactions: int = 20_000,
    *,
    name: str = "synthetic",
    **params: Any,
) -> Dataset:
    """Generate a synthetic :class:`Dataset` (see :func:`synthetic_frames` for the parameters).

    ``meta["synthetic"]`` records every parameter, which is all :func:`planted_clusters` needs.
    """
    interactions, items = synthetic_frames(n_users, n_items, n_interactions, **params)
    defaults = {
        name: p.default
        for name, p in inspect.signature(synthetic_frames).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }
    settings = {
        "n_users": n_users,
        "n_items": n_items,
        "n_interactions": n_interactions,
        **defaults,
        **params,
    }
    settings = {k: (v.isoformat() if isinstance(v, dt.date) else v) for k, v in settings.items()}
    meta = {"source": "synthetic", "synthetic": settings}
    return Dataset.from_frame(interactions, items=items.drop("cluster"), name=name, meta=meta, source=name)


def write_lastfm_sample(
    directory: Path,
    n_users: int = 1000,
    n_items: int = 500,
    n_interactions: int = 20_000,
    *,
    n_factors: int = 8,
    seed: int = 0,
) -> Path:
    """Write a music sample in the Last.fm-360K layout, with mood tags that follow the planted clusters.

    ``directory`` gets two header-less TSV files that :func:`tastebud.data.lastfm.read_lastfm` reads:

    - ``usersha1-artmbid-artname-plays.tsv``: user sha1, artist MusicBrainz id (empty for about 3 % of the
      artists, as in the real release), artist name, plays; rows grouped by user, most played first;
    - ``artist_tags.tsv``: artist mbid (empty where the plays file has none), artist name, tag; an artist's
      tags in order of weight. Every artist of cluster ``c`` carries the mood ``MOOD_TAGS[c % 12]`` and the
      style ``STYLE_TAGS[c % 12]``, a third of them a second, random mood: a mood filter picks mostly one
      taste cluster, as real tags roughly do.

    Interactions come from :func:`synthetic_frames` (``kind="implicit"``, so play counts rise with the user's
    affinity); the same arguments give the same files.

    Returns:
        ``directory``.
    """
    interactions, items = synthetic_frames(
        n_users, n_items, n_interactions, kind="implicit", n_factors=n_factors, seed=seed
    )
    rng = np.random.default_rng([seed, 4])
    cluster = items["cluster"].to_numpy()
    names = _artist_names(rng, cluster)
    mbids = [str(uuid.UUID(bytes=rng.bytes(16), version=4)) for _ in range(n_items)]
    for i in np.flatnonzero(rng.random(n_items) < 0.03):
        mbids[i] = ""
    sha1 = np.array([hashlib.sha1(f"tastebud-sample:{seed}:{u}".encode()).hexdigest() for u in range(n_users + 1)])
    artists = pl.DataFrame({"item_id": items["item_id"], "mbid": pl.Series(mbids, dtype=pl.String), "artist": names})
    plays = (
        interactions.with_columns(pl.Series("user", sha1[interactions["user_id"].to_numpy()], dtype=pl.String))
        .join(artists, on="item_id", how="left")
        .sort(["user_id", "value", "item_id"], descending=[False, True, False])
        .select(
            "user",
            "mbid",
            "artist",
            pl.col("value").cast(pl.Int64).alias("plays"),
        )
    )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tags = _artist_tags(rng, cluster, artists)
    for frame, name in ((plays, LASTFM_FILE), (tags, LASTFM_TAGS_FILE)):
        frame.write_csv(directory / name, separator="\t", include_header=False, quote_style="never")
    return directory


def _artist_names(rng: np.random.Generator, cluster: np.ndarray) -> list[str]:
    """Distinct band names built from the cluster's adjectives (like the catalog's titles)."""
    n = len(cluster)
    adjective = (cluster * _WORDS_PER_CLUSTER + rng.integers(0, _WORDS_PER_CLUSTER, n)) % len(_ADJECTIVES)
    noun = rng.integers(0, len(_NOUNS), n)
    style = rng.integers(0, 4, n)
    patterns = ("The {a} {p}", "{a} {n}", "{a} {n} Orchestra", "DJ {a} {n}")
    names: list[str] = []
    seen: set[str] = set()
    for i in range(n):
        word = _NOUNS[noun[i]]
        plural = word + ("es" if word.endswith("s") else "s")
        name = patterns[style[i]].format(a=_ADJECTIVES[adjective[i]], n=word, p=plural)
        if name in seen:
            name = f"{name} {i + 1}"
        seen.add(name)
        names.append(name)
    return names


def _artist_tags(rng: np.random.Generator, cluster: np.ndarray, artists: pl.DataFrame) -> pl.DataFrame:
    """One row per (artist, tag): the cluster's mood, its style, and for a third a second random mood."""
    n = len(cluster)
    mood = cluster % len(MOOD_TAGS)
    style = cluster % len(STYLE_TAGS)
    extra = rng.integers(0, len(MOOD_TAGS), n)
    has_extra = (rng.random(n) < 1 / 3) & (extra != mood)
    rows: list[tuple[str, str, str]] = []
    for i, (mbid, name) in enumerate(zip(artists["mbid"].to_list(), artists["artist"].to_list(), strict=True)):
        tags = [MOOD_TAGS[mood[i]], STYLE_TAGS[style[i]]] + ([MOOD_TAGS[extra[i]]] if has_extra[i] else [])
        rows.extend((mbid, name, tag) for tag in tags)
    return pl.DataFrame(rows, schema=["mbid", "artist", "tag"], orient="row")


def planted_clusters(ds: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """The planted cluster of every user and every item of a generated dataset, by index.

    Works on derived datasets too (splits, k-cores, compacted), since it maps the ids back.

    Raises:
        DataValidationError: the dataset was not made by :func:`generate_synthetic`.
    """
    settings = ds.meta.get("synthetic")
    if not isinstance(settings, dict):
        raise DataValidationError(f"dataset {ds.name!r} was not generated by generate_synthetic (no meta['synthetic'])")
    latent = _latent(
        settings["n_users"],
        settings["n_items"],
        settings.get("n_factors", 8),
        settings.get("popularity_exponent", 1.0),
        settings.get("seed", 0),
    )
    user_numbers = ds.users.ids.astype(np.int64) - 1
    item_numbers = ds.items.ids.astype(np.int64) - 1
    return latent.user_cluster[user_numbers], latent.item_cluster[item_numbers]


# ---------------------------------------------------------------------- sizes
def _check(
    n_users: int,
    n_items: int,
    n_interactions: int,
    kind: str,
    n_factors: int,
    n_genres: int,
    popularity_exponent: float,
    days: int,
) -> None:
    for label, value in (("n_users", n_users), ("n_items", n_items), ("n_interactions", n_interactions)):
        if not isinstance(value, int | np.integer) or value < 1:
            raise ParameterError(f"synthetic: {label} must be a positive integer, got {value!r}")
    if kind not in ("explicit", "implicit"):
        raise ParameterError(f"synthetic: kind must be 'explicit' or 'implicit', got {kind!r}")
    if not 1 <= n_factors <= n_items:
        raise ParameterError(f"synthetic: n_factors must be between 1 and n_items={n_items}, got {n_factors}")
    if n_genres < 1:
        raise ParameterError(f"synthetic: n_genres must be >= 1, got {n_genres}")
    if not math.isfinite(popularity_exponent) or popularity_exponent < 0:
        raise ParameterError(f"synthetic: popularity_exponent must be >= 0, got {popularity_exponent}")
    if days < 1:
        raise ParameterError(f"synthetic: days must be >= 1, got {days}")
    if n_interactions < n_users:
        raise ParameterError(
            f"synthetic: n_interactions={n_interactions} is below n_users={n_users}; every user needs one"
        )
    cap = _user_cap(n_items)
    if n_interactions > n_users * cap:
        raise ParameterError(
            f"synthetic: {n_interactions} interactions do not fit {n_users} users taking at most {cap} of "
            f"{n_items} items each; use more users or items"
        )


def _user_cap(n_items: int) -> int:
    return max(1, math.ceil(_MAX_USER_SHARE * n_items))


def _allocate(weights: np.ndarray, total: int, cap: int) -> np.ndarray:
    """Interactions per user: one each, the rest proportional to ``weights``, none above ``cap``."""
    counts = np.ones(len(weights), dtype=np.int64)
    remaining = total - len(weights)
    while remaining > 0:
        free = counts < cap
        share = np.where(free, weights, 0.0)
        share = remaining * share / share.sum()
        add = np.minimum(np.floor(share).astype(np.int64), cap - counts)
        if add.sum() == 0:
            # Fewer than one interaction per free user is left: give them to the largest shares.
            candidates = np.flatnonzero(free)
            top = candidates[np.argsort(-share[candidates], kind="stable")[:remaining]]
            add[top] = 1
        counts += add
        remaining -= int(add.sum())
    return counts


# ---------------------------------------------------------------------- sampling
class _ItemSampler:
    """Draws items by popularity, within a cluster or from the whole catalog, with one searchsorted each."""

    def __init__(self, latent: _Latent) -> None:
        self.by_cluster = np.argsort(latent.item_cluster, kind="stable")
        clusters = latent.item_cluster[self.by_cluster]
        weights = latent.item_popularity[self.by_cluster]
        cum = np.cumsum(weights)
        seg_end = np.searchsorted(clusters, clusters, side="right") - 1
        seg_start = np.searchsorted(clusters, clusters, side="left")
        before = np.where(seg_start > 0, cum[seg_start - 1], 0.0)
        # Cluster c's items hold the cumulative shares c + (0, 1]: a draw c + u lands in cluster c.
        self.cluster_cdf = clusters + (cum - before) / (cum[seg_end] - before)
        self.global_cdf = np.cumsum(latent.item_popularity) / latent.item_popularity.sum()
        self.n_items = len(clusters)

    def within(self, cluster: np.ndarray, u: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(self.cluster_cdf, cluster + u, side="right")
        return self.by_cluster[np.minimum(pos, self.n_items - 1)]

    def popular(self, u: np.ndarray) -> np.ndarray:
        return np.minimum(np.searchsorted(self.global_cdf, u, side="right"), self.n_items - 1)


def _sample_pairs(latent: _Latent, counts: np.ndarray, n_items: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (user, item) pairs, ``counts[u]`` per user, sampled block by block of users."""
    sampler = _ItemSampler(latent)
    interest_cdf = np.cumsum(latent.user_factors, axis=1)
    bounds = np.searchsorted(np.cumsum(counts), np.arange(_BLOCK_DRAWS, counts.sum(), _BLOCK_DRAWS), side="right")
    edges = [0, *np.unique(bounds).tolist(), len(counts)]
    users_out, items_out = [], []
    for block, (lo, hi) in enumerate(itertools.pairwise(edges)):
        if hi <= lo:
            continue
        rng = np.random.default_rng([seed, 1, block])
        keys = _sample_block(rng, sampler, interest_cdf[lo:hi], counts[lo:hi], n_items)
        users_out.append((keys // n_items + lo).astype(np.int32))
        items_out.append((keys % n_items).astype(np.int32))
    return np.concatenate(users_out), np.concatenate(items_out)


def _sample_block(
    rng: np.random.Generator, sampler: _ItemSampler, interest_cdf: np.ndarray, need: np.ndarray, n_items: int
) -> np.ndarray:
    """Keys ``local_user * n_items + item`` of distinct pairs, ``need[u]`` per local user.

    Draws with replacement, keeps each user's first distinct items, and draws again for users still short.
    Users who exhausted their interests (heavy users) get uniform draws after a few rounds, and the last few
    stragglers are filled exactly.
    """
    n_block = len(need)
    selected = np.empty(0, dtype=np.int64)
    have = np.zeros(n_block, dtype=np.int64)
    for round_no in range(_MAX_ROUNDS):
        short = need - have
        if not short.any():
            return selected
        draws = np.ceil(short * (1.25 + 0.5 * round_no)).astype(np.int64) + (short > 0)
        local = np.repeat(np.arange(n_block), draws)
        items = _draw_items(rng, sampler, interest_cdf, local, uniform=round_no >= 6, n_items=n_items)
        candidates = np.concatenate([selected, local.astype(np.int64) * n_items + items])
        selected, have = _first_distinct(candidates, need, n_items)
    short_users = np.flatnonzero(need > have)
    extra = []
    for user in short_users:  # rare: users near the cap after many rounds
        taken = selected[selected // n_items == user] % n_items
        free = np.setdiff1d(np.arange(n_items), taken)
        extra.append(user * n_items + rng.choice(free, need[user] - have[user], replace=False))
    return np.sort(np.concatenate([selected, *extra])) if extra else selected


def _draw_items(
    rng: np.random.Generator,
    sampler: _ItemSampler,
    interest_cdf: np.ndarray,
    local: np.ndarray,
    *,
    uniform: bool,
    n_items: int,
) -> np.ndarray:
    if uniform:
        return rng.integers(0, n_items, len(local))
    u = rng.random(len(local))
    cluster = (rng.random(len(local))[:, None] > interest_cdf[local]).sum(axis=1)
    cluster = np.minimum(cluster, interest_cdf.shape[1] - 1)
    items = sampler.within(cluster, u)
    noise = rng.random(len(local)) < _NOISE_SHARE
    items[noise] = sampler.popular(u[noise])
    return items


def _first_distinct(candidates: np.ndarray, need: np.ndarray, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Each user's first ``need[u]`` distinct keys (in ``candidates`` order), sorted, and counts per user."""
    keys, first = np.unique(candidates, return_index=True)
    users = keys // n_items
    order = np.lexsort((first, users))
    counts = np.bincount(users, minlength=len(need))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pos = np.arange(len(keys)) - starts[users[order]]
    keep = order[pos < need[users[order]]]
    keep.sort()
    kept = keys[keep]
    return kept, np.minimum(counts, need)


def _ratings(
    rng: np.random.Generator,
    affinity: np.ndarray,
    latent: _Latent,
    users: np.ndarray,
    items: np.ndarray,
    half_stars: bool,
) -> np.ndarray:
    """Ratings that rise with affinity, plus user and item biases and noise, on a 1-5 star scale."""
    raw = 2.9 + 2.4 * affinity + latent.user_bias[users] + latent.item_bias[items] + rng.normal(0, 0.6, len(users))
    steps = 2.0 if half_stars else 1.0
    return np.clip(np.round(raw * steps) / steps, 1.0, 5.0).astype(np.float32)


def _play_counts(rng: np.random.Generator, affinity: np.ndarray) -> np.ndarray:
    """Heavy-tailed play counts (lognormal, integers >= 1) that rise with affinity."""
    log_plays = rng.normal(0.2 + 3.0 * affinity, 1.2)
    return np.minimum(np.floor(np.exp(log_plays)) + 1, 1e6).astype(np.float32)


def _timestamps(rng: np.random.Generator, user_start: np.ndarray, start: Any, days: int) -> np.ndarray:
    """Epoch seconds: each user is active from their joining time to the end of the period."""
    if isinstance(start, str):
        start = dt.datetime.fromisoformat(start)
    if not isinstance(start, dt.datetime):
        start = dt.datetime(start.year, start.month, start.day)
    if start.tzinfo is None:
        start = start.replace(tzinfo=dt.UTC)
    origin = int(start.timestamp())
    span = days * 86_400
    share = user_start + rng.random(len(user_start)) * (1.0 - user_start)
    return origin + np.floor(share * span).astype(np.int64)


def _item_frame(latent: _Latent, n_genres: int, seed: int) -> pl.DataFrame:
    """Catalog: titles use the cluster's adjectives, the first genre is the cluster's genre."""
    rng = np.random.default_rng([seed, 3])
    n_items = len(latent.item_cluster)
    cluster = latent.item_cluster
    names = [GENRE_NAMES[g] if g < len(GENRE_NAMES) else f"Genre {g + 1}" for g in range(n_genres)]
    genre_names = pl.Series(names, dtype=pl.String)
    adjective = (cluster * _WORDS_PER_CLUSTER + rng.integers(0, _WORDS_PER_CLUSTER, n_items)) % len(_ADJECTIVES)
    noun = rng.integers(0, len(_NOUNS), n_items)
    # A second genre for some items, drawn at random: real catalogs are not perfectly clustered.
    second = rng.integers(0, n_genres, n_items)
    has_second = (rng.random(n_items) < 0.3) & (second != cluster % n_genres)
    frame = pl.DataFrame(
        {
            "item_id": np.arange(1, n_items + 1, dtype=np.int64),
            "adjective": pl.Series(_ADJECTIVES).gather(adjective),
            "noun": pl.Series(_NOUNS).gather(noun),
            "year": rng.integers(1950, 2024, n_items).astype(np.int32),
            "first": genre_names.gather(cluster % n_genres),
            "second": genre_names.gather(second),
            "has_second": has_second,
            "cluster": cluster,
        }
    )
    return frame.select(
        "item_id",
        pl.format("{} {} {}", "adjective", "noun", "item_id").alias("title"),
        "year",
        pl.when("has_second")
        .then(pl.concat_list("first", "second"))
        .otherwise(pl.concat_list("first"))
        .alias("genres"),
        "cluster",
    )
