"""Outcomes of an experiment, from behaviour: logged lists (exposures) joined with the events that followed them.

An **exposure** is one logged ``/recommend`` request of the experiment (:meth:`tastebud.store.Store.exposures_frame`):
the user, the variant, the list shown (position = index) and, for interleaved lists, the team (ranker) behind each
position. An **outcome** is an event (:meth:`tastebud.store.Store.events_frame`) of that user on an item of a list
they were shown, strictly after the showing and at most ``horizon_s`` seconds later; it is credited to the latest
such showing (:func:`attribute`).

Success comes only from events. A request answered 200 whose items the user never touched is *no* success, however
well it was served: the status code says the service worked, not that the recommendation did. Status codes, latency
and fallbacks are the experiment's guardrails (:func:`guardrails`), never its outcome.

What counts (module constants, so that the analysis and its readers see one definition):

- *engagement*: an event of a kind in :data:`ENGAGEMENT_KINDS` (``view``, ``click``, ``play``, ``like``; a ``skip``
  is not engagement);
- *positive rating*: a ``rating`` event with ``rating >= 4`` (:data:`POSITIVE_RATING`);
- *plays*: the sum of ``value`` over ``play`` events (a play count on Last.fm-like data; each play event counts 1
  when its value is missing).

All functions are pure polars: frames in, frames out. Timestamps are UTC ``Datetime("us", "UTC")``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final

import polars as pl

from tastebud.errors import DataValidationError, ParameterError

__all__ = [
    "ATTRIBUTED_SCHEMA",
    "ENGAGEMENT_KINDS",
    "EVENT_SCHEMA",
    "EXPOSURE_SCHEMA",
    "GUARDRAIL_SCHEMA",
    "INTERLEAVING_SCHEMA",
    "METRIC_COLUMNS",
    "PER_USER_SCHEMA",
    "PLAY_KINDS",
    "POSITIVE_RATING",
    "TIME_SERIES_SCHEMA",
    "attribute",
    "guardrails",
    "interleaving_credit",
    "per_user_metrics",
    "time_series",
]

#: Event kinds that count as engagement with a shown item (hit rate, click rate, interleaving credit).
ENGAGEMENT_KINDS: Final[tuple[str, ...]] = ("view", "click", "play", "like")
#: Event kinds whose ``value`` sums to the ``plays`` metric.
PLAY_KINDS: Final[tuple[str, ...]] = ("play",)
#: Smallest rating that counts as a positive outcome.
POSITIVE_RATING: Final[float] = 4.0

_TIME = pl.Datetime("us", "UTC")

#: Columns of an exposures frame (what :meth:`tastebud.store.Store.exposures_frame` returns). ``teams`` is null
#: unless the list was interleaved; then it names, per position, the variant whose ranker gave that item.
EXPOSURE_SCHEMA: Final[pl.Schema] = pl.Schema(
    {
        "request_id": pl.String(),
        "timestamp": _TIME,
        "user_id": pl.String(),
        "variant": pl.String(),
        "item_ids": pl.List(pl.String()),
        "teams": pl.List(pl.String()),
        "latency_ms": pl.Float64(),
        "status_code": pl.Int64(),
        "is_fallback": pl.Boolean(),
    }
)
#: Columns of an events frame (what :meth:`tastebud.store.Store.events_frame` returns).
EVENT_SCHEMA: Final[pl.Schema] = pl.Schema(
    {
        "user_id": pl.String(),
        "item_id": pl.String(),
        "kind": pl.String(),
        "rating": pl.Float64(),
        "value": pl.Float64(),
        "timestamp": _TIME,
    }
)
#: Columns of :func:`attribute`: the event's own, then the exposure it is credited to.
ATTRIBUTED_SCHEMA: Final[pl.Schema] = pl.Schema(
    {
        **EVENT_SCHEMA,
        "request_id": pl.String(),
        "variant": pl.String(),
        "position": pl.Int64(),
        "exposed_at": _TIME,
    }
)
#: The per-user metrics, in :data:`tastebud.experiments.definitions.METRICS` order; each has a ``pre_`` twin.
METRIC_COLUMNS: Final[tuple[str, ...]] = ("hit_rate", "click_rate", "rating_rate", "plays", "mean_rating")
#: Columns of :func:`per_user_metrics`.
PER_USER_SCHEMA: Final[pl.Schema] = pl.Schema(
    {
        "user_id": pl.String(),
        "variant": pl.String(),
        "first_exposure": _TIME,
        "exposures": pl.Int64(),
        "variant_errors": pl.Int64(),
        **{m: pl.Float64() for m in METRIC_COLUMNS},
        **{f"pre_{m}": pl.Float64() for m in METRIC_COLUMNS},
    }
)
#: Columns of :func:`guardrails` (the guardrail names of :data:`tastebud.experiments.definitions.GUARDRAILS`).
GUARDRAIL_SCHEMA: Final[pl.Schema] = pl.Schema(
    {
        "variant": pl.String(),
        "requests": pl.Int64(),
        "p95_latency": pl.Float64(),
        "error_ratio": pl.Float64(),
        "fallback_rate": pl.Float64(),
        "items_shown": pl.Int64(),
        "coverage": pl.Float64(),
    }
)
#: Columns of :func:`interleaving_credit`.
INTERLEAVING_SCHEMA: Final[pl.Schema] = pl.Schema({"user_id": pl.String(), "team": pl.String(), "wins": pl.Int64()})
#: Columns of :func:`time_series`.
TIME_SERIES_SCHEMA: Final[pl.Schema] = pl.Schema(
    {
        "time": _TIME,
        "variant": pl.String(),
        "users": pl.Int64(),
        "n": pl.Int64(),
        "sum": pl.Float64(),
        "sum_sq": pl.Float64(),
        "mean": pl.Float64(),
    }
)


def _check(frame: pl.DataFrame, schema: pl.Schema, what: str) -> pl.DataFrame:
    """``frame`` with the columns of ``schema`` that it needs, cast to their types (timestamps to UTC, us)."""
    missing = [name for name in schema if name not in frame.columns]
    if missing:
        raise DataValidationError(f"{what} frame lacks column(s) {', '.join(missing)}")
    return frame.with_columns(pl.col(name).cast(dtype) for name, dtype in schema.items())


def _positive(kind: pl.Expr = pl.col("kind"), rating: pl.Expr = pl.col("rating")) -> pl.Expr:
    return (kind == "rating") & (rating >= POSITIVE_RATING)


def _engaged(kind: pl.Expr = pl.col("kind")) -> pl.Expr:
    return kind.is_in(ENGAGEMENT_KINDS)


def _horizon(horizon_s: float) -> pl.Expr:
    if not horizon_s > 0:
        raise ParameterError(f"attribution horizon must be a positive number of seconds, got {horizon_s!r}")
    return pl.duration(microseconds=round(horizon_s * 1_000_000))


def _pair_key(seed: int) -> pl.Expr:
    """A 64-bit hash of ``(user_id, item_id)``: an integer join key, far faster to match than two strings.

    The xor of the two ids' hashes (each with its own seed) is as good a pair hash and 3x cheaper than hashing a
    struct of both.
    """
    return pl.col("user_id").hash(seed=2 * seed) ^ pl.col("item_id").hash(seed=2 * seed + 1)


def _shown(exposures: pl.DataFrame) -> pl.DataFrame:
    """One row per shown item, by time: exposure row ``_ex``, ``position``, ``exposed_at``, the pair's keys.

    The strings stay out of it (``user_id`` and ``item_id`` only go into the keys), so sorting and joining move
    integers only.
    """
    lists = exposures.select("timestamp", "user_id", "item_ids").with_row_index("_ex")
    if not lists["timestamp"].is_sorted():  # the store's frames come sorted
        lists = lists.sort("timestamp")
    return (
        lists.filter(pl.col("user_id").is_not_null())
        .select(
            "_ex",
            "user_id",
            pl.col("item_ids").alias("item_id"),
            pl.col("timestamp").alias("exposed_at"),
            pl.int_ranges(0, pl.col("item_ids").list.len(), dtype=pl.Int64).alias("position"),
        )
        .explode("item_id", "position")
        .drop_nulls("item_id")
        .select(
            "_ex", "position", "exposed_at", _pair_key(1).alias("_k1"), _pair_key(2).alias("_k2"), "user_id", "item_id"
        )
    )


def _latest_showing(events: pl.DataFrame, shown: pl.DataFrame, by: list[str]) -> pl.DataFrame:
    """For each event row ``_ev`` (sorted by time), the latest strictly earlier showing with equal ``by`` columns."""
    return events.join_asof(
        shown,
        left_on="timestamp",
        right_on="exposed_at",
        by=by,
        strategy="backward",
        allow_exact_matches=False,
        check_sortedness=False,  # both sides are sorted by time
    ).filter(pl.col("exposed_at").is_not_null())


def _attributed_rows(exposures: pl.DataFrame, events: pl.DataFrame, horizon: pl.Expr) -> pl.DataFrame:
    """Row numbers of attributed events and their exposures: ``_ev, _ex, position, exposed_at``, by event time.

    The as-of join matches on a 64-bit hash of the (user, item) pair rather than on the two strings (5x faster at
    a million lists). A second, independent hash checks every match; the events whose pair shares its first hash
    with another pair (odds of about 1e-6 among 10 million shown pairs) are matched again on the strings.
    """
    shown = _shown(exposures)
    ev = (
        events.select("timestamp", "user_id", "item_id")
        .with_row_index("_ev")
        .select("_ev", "timestamp", _pair_key(1).alias("_k1"), _pair_key(2).alias("_k2"))
    )
    # Only pairs found on both sides can match: dropping the others first (most events are on items never shown,
    # most shown items draw no event) takes a third off the work of the as-of join and of sorting the events.
    right = shown.select("_ex", "position", "exposed_at", "_k1", "_k2").filter(pl.col("_k1").is_in(ev["_k1"].implode()))
    ev = ev.filter(pl.col("_k1").is_in(right["_k1"].implode())).sort("timestamp")
    matched = _latest_showing(ev, right, ["_k1"])
    collided = matched.filter(pl.col("_k2") != pl.col("_k2_right"))
    matched = matched.filter(pl.col("_k2") == pl.col("_k2_right"))
    if collided.height:
        redo = (
            events.select("timestamp", "user_id", "item_id")
            .with_row_index("_ev")
            .join(collided.select("_ev"), on="_ev", how="semi")
            .sort("timestamp")
        )
        candidates = shown.join(collided.select("_k1").unique(), on="_k1", how="semi").sort("exposed_at")
        exact = _latest_showing(redo, candidates.drop("_k1", "_k2"), ["user_id", "item_id"])
        keep = ["_ev", "timestamp", "_ex", "position", "exposed_at"]
        matched = pl.concat([matched.select(keep), exact.select(keep)]).sort("timestamp")
    return matched.filter(pl.col("timestamp") - pl.col("exposed_at") <= horizon).select(
        "_ev", "_ex", "position", "exposed_at"
    )


def attribute(exposures: pl.DataFrame, events: pl.DataFrame, *, horizon_s: float) -> pl.DataFrame:
    """Credit each event to the latest earlier showing of its item to its user, if within ``horizon_s``.

    An event is attributed when its user was shown its item strictly before the event (an event at the very instant
    of the request was not caused by the list) and at most ``horizon_s`` seconds before it. Of several such
    showings the latest wins. Events on items the user was never shown, before any showing or beyond the horizon
    are dropped.

    Args:
        exposures: columns of :data:`EXPOSURE_SCHEMA` (``teams`` may be absent).
        events: columns of :data:`EVENT_SCHEMA`.
        horizon_s: how long after a showing an event still counts, in seconds.

    Returns:
        The attributed events, with the columns of :data:`ATTRIBUTED_SCHEMA`: the event's ``user_id, item_id, kind,
        rating, value, timestamp``, then the exposure's ``request_id, variant, position`` (0-based) and
        ``exposed_at``; sorted by event time.

    Raises:
        ParameterError: a horizon that is not positive.
        DataValidationError: a frame without a needed column.
    """
    horizon = _horizon(horizon_s)
    exposures = _check(exposures, _without(EXPOSURE_SCHEMA, "teams"), "exposures")
    events = _check(events, EVENT_SCHEMA, "events")
    rows = _attributed_rows(exposures, events, horizon)
    return pl.concat(
        [
            events.select(EVENT_SCHEMA.names())[rows["_ev"]],
            exposures.select("request_id", "variant")[rows["_ex"]],
            rows.select("position", "exposed_at"),
        ],
        how="horizontal",
    )


def _without(schema: pl.Schema, *names: str) -> pl.Schema:
    return pl.Schema({k: v for k, v in schema.items() if k not in names})


def _event_flags(events: pl.DataFrame) -> pl.DataFrame:
    """The events with what the metrics need of each, computed once: ``_engaged``, ``_positive``, ``_play`` (the
    play value, 0 for other kinds) and ``_rating`` (null unless a rating)."""
    return events.select(
        "user_id",
        "item_id",
        "timestamp",
        _engaged().alias("_engaged"),
        _positive().fill_null(False).alias("_positive"),
        pl.when(pl.col("kind").is_in(PLAY_KINDS)).then(pl.col("value").fill_null(1.0)).otherwise(0.0).alias("_play"),
        pl.when(pl.col("kind") == "rating").then(pl.col("rating")).alias("_rating"),
    )


def _outcome_aggs(prefix: str, lists: pl.Expr | None) -> list[pl.Expr]:
    """Per-user aggregations of :func:`_event_flags` columns; ``lists`` divides the engagement count."""
    clicks = pl.col("_engaged").sum().cast(pl.Float64)
    return [
        (pl.col("_engaged") | pl.col("_positive")).any().cast(pl.Float64).alias(f"{prefix}hit_rate"),
        (clicks if lists is None else clicks / lists).alias(f"{prefix}click_rate"),
        pl.col("_positive").any().cast(pl.Float64).alias(f"{prefix}rating_rate"),
        pl.col("_play").sum().cast(pl.Float64).alias(f"{prefix}plays"),
        pl.col("_rating").mean().cast(pl.Float64).alias(f"{prefix}mean_rating"),
    ]


def per_user_metrics(
    exposures: pl.DataFrame,
    events: pl.DataFrame,
    *,
    horizon_s: float,
    start: datetime,
    end: datetime,
    pre_period_s: float | None = None,
) -> pl.DataFrame:
    """One row per exposed user with their variant, their outcome metrics and the same metrics before exposure.

    Exposures with ``start <= timestamp < end`` and a user id count. A user belongs to the variant of their first
    exposure; exposures of the same user under another variant are a data error (assignment is per user): they
    are left out of the user's metrics and counted in ``variant_errors``, so that the analysis can report them.
    Every logged request of the experiment is an exposure, server errors included (their list is empty): leaving
    them out would drop the users a failing variant failed.

    Metrics, from attributed events only (:func:`attribute`; ``events`` should reach ``horizon_s`` past ``end``):

    - ``hit_rate``: 1.0 when any attributed event is engagement or a positive rating, else 0.0; a user whose
      lists all came back 200 but who never touched a shown item scores 0.0;
    - ``click_rate``: attributed engagement events / ``exposures``;
    - ``rating_rate``: 1.0 when any attributed rating is positive, else 0.0;
    - ``plays``: sum of ``value`` over attributed ``play`` events (1 per event without a value);
    - ``mean_rating``: mean of the attributed ratings, null when there is none.

    The ``pre_`` columns are the same metrics over the user's events on *any* item in
    ``[first_exposure - pre_period_s, first_exposure)``, the covariates of CUPED (they cannot be moved by the
    variant). ``pre_click_rate`` is the number of engagement events there (there are no lists to divide by);
    ``events`` must reach ``pre_period_s`` before ``start`` for them.

    Args:
        exposures: columns of :data:`EXPOSURE_SCHEMA`, one experiment's.
        events: columns of :data:`EVENT_SCHEMA`.
        horizon_s: attribution horizon in seconds.
        start: first instant of the analysis window (timezone-aware).
        end: end of the window, exclusive.
        pre_period_s: length of the pre-exposure period in seconds (default: ``horizon_s``).

    Returns:
        Columns of :data:`PER_USER_SCHEMA`: ``user_id, variant, first_exposure, exposures, variant_errors``, the five
        metrics and their ``pre_`` twins; sorted by variant, then user.

    Raises:
        ParameterError: a horizon or pre-period that is not positive, or ``end`` not after ``start``.
        DataValidationError: a frame without a needed column.
    """
    pre_s = horizon_s if pre_period_s is None else pre_period_s
    pre, horizon = _horizon(pre_s), _horizon(horizon_s)
    if end <= start:
        raise ParameterError(f"analysis window: end {end.isoformat()} is not after start {start.isoformat()}")
    exposures = _check(exposures, _without(EXPOSURE_SCHEMA, "teams"), "exposures")
    window = exposures.filter(
        pl.col("user_id").is_not_null() & (pl.col("timestamp") >= start) & (pl.col("timestamp") < end)
    ).select(_without(EXPOSURE_SCHEMA, "teams").names())
    if window.height == 0:
        return pl.DataFrame(schema=PER_USER_SCHEMA)
    if not window["timestamp"].is_sorted():  # the store's frames come sorted by time, then request id
        window = window.sort("timestamp", "request_id")
    # Each user gets an integer key _u (the row of their first exposure): grouping on it is cheaper than on ids.
    window = window.with_row_index("_row").with_columns(
        pl.col("_row").first().over("user_id").alias("_u"),
        pl.col("variant").first().over("user_id").alias("_assigned"),
    )
    users = window.filter(pl.col("_row") == pl.col("_u")).select(
        "_u", "user_id", "variant", pl.col("timestamp").alias("first_exposure")
    )
    window = window.with_columns(pl.col("variant").eq_missing(pl.col("_assigned")).alias("_kept"))
    counts = window.group_by("_u").agg(
        pl.col("_kept").sum().cast(pl.Int64).alias("exposures"),
        (~pl.col("_kept")).sum().cast(pl.Int64).alias("variant_errors"),
    )
    kept = window.filter(pl.col("_kept"))
    flags = _event_flags(_check(events, EVENT_SCHEMA, "events"))
    rows = _attributed_rows(kept, flags, horizon)
    post = (
        flags.select("_engaged", "_positive", "_play", "_rating")[rows["_ev"]]
        .with_columns(kept["_u"][rows["_ex"]])
        .join(counts.select("_u", "exposures"), on="_u")
        .group_by("_u")
        .agg(_outcome_aggs("", pl.col("exposures").first()))
    )
    first = pl.col("first_exposure")
    before = (
        flags.drop("item_id")
        .join(users.select("user_id", "_u", "first_exposure"), on="user_id")
        .filter((pl.col("timestamp") < first) & (pl.col("timestamp") >= first - pre))
        .group_by("_u")
        .agg(_outcome_aggs("pre_", None))
    )
    zero = [c for c in PER_USER_SCHEMA.names() if c.endswith(("hit_rate", "click_rate", "rating_rate", "plays"))]
    return (
        users.join(counts, on="_u")
        .join(post, on="_u", how="left")
        .join(before, on="_u", how="left")
        .with_columns(pl.col(zero).fill_null(0.0))
        .select(PER_USER_SCHEMA.names())
        .cast(PER_USER_SCHEMA)
        .sort("variant", "user_id", nulls_last=True)
    )


def guardrails(exposures: pl.DataFrame, catalog_size: int | None) -> pl.DataFrame:
    """Operational health per variant: traffic, p95 latency, server error ratio, fallback rate and coverage.

    - ``requests``: logged requests;
    - ``p95_latency``: 95th percentile of ``latency_ms`` over every request (linear interpolation, as numpy);
    - ``error_ratio``: share of requests with a status >= 500. A 4xx is the client's mistake (an unknown filter, a
      bad parameter), not the variant's, and does not count;
    - ``fallback_rate``: share of the 2xx requests answered by the fallback (null without any);
    - ``items_shown``: distinct items in the variant's lists; ``coverage``: ``items_shown / catalog_size`` (null
      without a catalog size).

    Args:
        exposures: columns of :data:`EXPOSURE_SCHEMA` (``teams`` may be absent).
        catalog_size: items in the catalog the variants recommend from.

    Returns:
        Columns of :data:`GUARDRAIL_SCHEMA`, one row per variant, sorted by variant.

    Raises:
        DataValidationError: a frame without a needed column.
    """
    exposures = _check(exposures, _without(EXPOSURE_SCHEMA, "teams"), "exposures")
    ok = pl.col("status_code").is_between(200, 299)
    per_variant = exposures.group_by("variant").agg(
        pl.len().cast(pl.Int64).alias("requests"),
        pl.col("latency_ms").quantile(0.95, interpolation="linear").alias("p95_latency"),
        (pl.col("status_code") >= 500).mean().alias("error_ratio"),
        pl.col("is_fallback").filter(ok).mean().alias("fallback_rate"),
        # Counted by a 64-bit hash: 3x faster than comparing the strings; two ids sharing a hash (which would
        # undercount by one) has odds below 1e-7 even among a million distinct items.
        pl.col("item_ids").explode().drop_nulls().hash(seed=0).n_unique().cast(pl.Int64).alias("items_shown"),
    )
    coverage = pl.col("items_shown") / catalog_size if catalog_size else pl.lit(None, dtype=pl.Float64)
    return (
        per_variant.with_columns(coverage.alias("coverage"))
        .select(GUARDRAIL_SCHEMA.names())
        .cast(GUARDRAIL_SCHEMA)
        .sort("variant", nulls_last=True)
    )


def interleaving_credit(exposures: pl.DataFrame, events: pl.DataFrame, *, horizon_s: float) -> pl.DataFrame:
    """Per user and team, the shown items of interleaved lists that earned engagement or a positive rating.

    Only exposures whose ``teams`` is set (interleaved lists) take part. Each attributed event that is engagement
    or a positive rating credits the team at its position; a shown item earns its team one credit however many
    events it drew (a view then a play of one item is one preference, not two).

    Args:
        exposures: columns of :data:`EXPOSURE_SCHEMA`.
        events: columns of :data:`EVENT_SCHEMA`.
        horizon_s: attribution horizon in seconds.

    Returns:
        Columns of :data:`INTERLEAVING_SCHEMA` (a long frame): ``user_id, team, wins``, one row for each team that
        appeared in the user's interleaved lists (``wins`` 0 when it earned nothing); sorted by user, then team.

    Raises:
        ParameterError: a horizon that is not positive.
        DataValidationError: a frame without a needed column.
    """
    exposures = _check(exposures, EXPOSURE_SCHEMA, "exposures")
    interleaved = exposures.filter(
        pl.col("teams").is_not_null() & (pl.col("teams").list.len() > 0) & pl.col("user_id").is_not_null()
    )
    credited = (
        attribute(interleaved, events, horizon_s=horizon_s)
        .filter(_engaged() | _positive())
        .unique(["request_id", "position"])
        .join(interleaved.select("request_id", "teams"), on="request_id")
        .select("user_id", pl.col("teams").list.get(pl.col("position"), null_on_oob=True).alias("team"))
        .drop_nulls("team")
        .group_by("user_id", "team")
        .agg(pl.len().cast(pl.Int64).alias("wins"))
    )
    present = interleaved.select("user_id", pl.col("teams").alias("team")).explode("team").drop_nulls().unique()
    return (
        present.join(credited, on=["user_id", "team"], how="left")
        .with_columns(pl.col("wins").fill_null(0))
        .select(INTERLEAVING_SCHEMA.names())
        .cast(INTERLEAVING_SCHEMA)
        .sort("user_id", "team")
    )


def time_series(per_user: pl.DataFrame, metric: str, points: int = 20) -> pl.DataFrame:
    """Cumulative per-variant sums and counts of ``metric`` over first-exposure time, for a lift-over-time plot.

    ``points`` instants are spread evenly from the first to the last first exposure (both included). At each, for
    each variant: the users exposed so far, how many of them have a value of ``metric`` (``mean_rating`` is null for
    users without a rating) and the sum and sum of squares of those values, from which a mean and its standard
    error follow.

    Args:
        per_user: from :func:`per_user_metrics`.
        metric: a metric column of it (``hit_rate``, ``pre_plays``, ...).
        points: how many instants (at least 1; 1 gives the end only).

    Returns:
        Columns of :data:`TIME_SERIES_SCHEMA`: ``time, variant, users, n, sum, sum_sq, mean`` (``mean`` null while
        ``n`` is 0); sorted by time, then variant.

    Raises:
        ParameterError: an unknown metric or fewer than 1 point.
    """
    if metric not in per_user.columns or metric in ("user_id", "variant", "first_exposure"):
        raise ParameterError(f"unknown metric {metric!r}; per-user metrics are {', '.join(METRIC_COLUMNS)}")
    if points < 1:
        raise ParameterError(f"time series needs at least 1 point, got {points}")
    if per_user.height == 0:
        return pl.DataFrame(schema=TIME_SERIES_SCHEMA)
    value = pl.col(metric).cast(pl.Float64)
    cumulative = (
        per_user.select("variant", pl.col("first_exposure").cast(_TIME).alias("time"), value.alias("_v"))
        .sort("time")
        .with_columns(
            pl.int_range(1, pl.len() + 1).over("variant").cast(pl.Int64).alias("users"),
            pl.col("_v").is_not_null().cast(pl.Int64).cum_sum().over("variant").alias("n"),
            pl.col("_v").fill_null(0.0).cum_sum().over("variant").alias("sum"),
            (pl.col("_v") ** 2).fill_null(0.0).cum_sum().over("variant").alias("sum_sq"),
        )
        .drop("_v")
    )
    first = per_user["first_exposure"].cast(_TIME).dt.epoch("us").min()
    last = per_user["first_exposure"].cast(_TIME).dt.epoch("us").max()
    assert isinstance(first, int) and isinstance(last, int)
    steps = [last] if points == 1 else [first + (last - first) * i // (points - 1) for i in range(points)]
    grid = (
        pl.DataFrame({"time": pl.Series(steps, dtype=pl.Int64).cast(_TIME)})
        .join(per_user.select(pl.col("variant").unique()), how="cross")
        .sort("time")
    )
    return (
        grid.join_asof(cumulative, on="time", by="variant", strategy="backward", check_sortedness=False)
        .with_columns(pl.col("users", "n").fill_null(0), pl.col("sum", "sum_sq").fill_null(0.0))
        .with_columns(pl.when(pl.col("n") > 0).then(pl.col("sum") / pl.col("n")).alias("mean"))
        .select(TIME_SERIES_SCHEMA.names())
        .cast(TIME_SERIES_SCHEMA)
        .sort("time", "variant", nulls_last=True)
    )
