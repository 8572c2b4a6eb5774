"""Experiments as data: what an A/B test, an interleaving test or a canary compares, and its life cycle.

An experiment is declared once (:func:`create_experiment`: validated, every variant's ref checked against the
registry, a random salt drawn and stored), started (:func:`start_experiment`: every variant's bundle resolved,
fetched and verified, no overlap with a running experiment of the same model and traffic layer) and stopped
(:func:`stop_experiment`). Its row in the store is the one source of truth: every serving process polls
:func:`running_experiments` and assigns users with :class:`tastebud.experiments.assignment.Assigner`. Every
change, a refused start included, is kept in the store's ``experiment_changes`` with its time, actor and details.

**Traffic layers.** An experiment takes the range ``[start, end)`` (percent) of its layer's hash space, a hash of
the user id keyed by the model and the layer only, so experiments of one layer whose ranges do not overlap never
share a user. Two running experiments of the same model may only share a layer when their ranges are disjoint;
different layers are independent (a user may then be in both).
"""

from __future__ import annotations

import math
import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, NoReturn, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tastebud.config import Settings
from tastebud.errors import ExperimentError, RegistryError, TastebudError
from tastebud.store import Store

#: Kinds of experiment: users split between variants (``ab``), one list interleaved from two variants
#: (``interleaving``), or a small share of users sent to a new model (``canary``, one variant or more).
KINDS = ("ab", "interleaving", "canary")
#: Life cycle: draft -> running -> stopped (a draft may be stopped without ever running).
STATUSES = ("draft", "running", "stopped")
#: Metrics an experiment may name as primary or secondary (computed from exposures and attributed events).
METRICS = ("hit_rate", "click_rate", "rating_rate", "plays", "mean_rating")
#: Guardrails an experiment may watch; all four by default.
GUARDRAILS = ("p95_latency", "error_ratio", "fallback_rate", "coverage")
#: The layer experiments take when none is named.
DEFAULT_LAYER = "default"
#: Experiment and layer names: lower case letters, digits, ``-`` and ``_``, up to 64 characters.
NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
#: Variant names: letters, digits, ``.``, ``-`` and ``_``, up to 32 characters (they go into the request log).
VARIANT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$"
#: A variant's ref: a registry alias (``champion``, ``challenger``) or a version number (``3``).
REF_PATTERN = r"^[A-Za-z0-9_-]{1,255}$"

Kind = Literal["ab", "interleaving", "canary"]
Status = Literal["draft", "running", "stopped"]


class Variant(BaseModel):
    """One arm of an experiment: a name and the model version it serves."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=VARIANT_PATTERN)
    """What the request log records for users in this arm (``control``, ``treatment``)."""
    ref: str = Field(pattern=REF_PATTERN)
    """A registry alias of the experiment's model (``champion``) or a version number (``"3"``)."""

    @property
    def version(self) -> int | None:
        """The version number when ``ref`` is one, else None (an alias)."""
        return int(self.ref) if self.ref.isdigit() else None


class ExperimentSpec(BaseModel):
    """What a person declares: the variants, their weights, who is in, and how the result is judged.

    Every field is validated on construction; :func:`create_experiment` turns a failure into one
    :class:`ExperimentError` line.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN)
    """Unique name, lower case: ``[a-z0-9][a-z0-9-_]{0,63}``."""
    kind: Kind = "ab"
    """``ab``, ``interleaving`` (exactly two variants) or ``canary``."""
    model_name: str | None = Field(None, min_length=1, max_length=255)
    """The registered model whose versions the variants name; default ``settings.serving.model_name``."""
    variants: tuple[Variant, ...]
    """The arms, in order (the first is conventionally the control)."""
    weights: tuple[float, ...]
    """Percent of the experiment's (non-holdout) users per variant, one per variant, summing to 100; default
    equal. The hash space has 10,000 buckets, so weights are honoured to 0.01 percent."""
    holdout: float = Field(0.0, ge=0.0, lt=100.0)
    """Percent of the users in the traffic range kept out of every variant and served the default champion."""
    layer: str = Field(DEFAULT_LAYER, pattern=NAME_PATTERN)
    """Traffic layer: running experiments of one model and layer must take disjoint traffic ranges."""
    traffic_range: tuple[float, float] = (0.0, 100.0)
    """``(start, end)`` percent of the layer's hash space in the experiment: users with ``start <= h < end``."""
    primary_metric: str = "hit_rate"
    """The metric that decides: one of :data:`METRICS`."""
    secondary_metrics: tuple[str, ...] = ()
    """Further metrics reported (from :data:`METRICS`, not the primary)."""
    guardrails: tuple[str, ...] = GUARDRAILS
    """Operational metrics that must not get worse (from :data:`GUARDRAILS`)."""
    mde: float = Field(0.02, gt=0.0, le=10.0)
    """Minimum detectable effect, relative to the control (0.02: 2%), for sample sizes."""
    alpha: float = Field(0.05, gt=0.0, lt=1.0)
    """Significance level (two-sided)."""
    power: float = Field(0.8, gt=0.0, lt=1.0)
    """Power at the minimum detectable effect."""
    horizon_s: float = Field(86_400.0, gt=0.0)
    """Attribution horizon in seconds: an event counts for an exposure up to this long after it (default 24 h)."""
    min_lift: float = Field(0.0, ge=0.0)
    """Practical significance: the relative lift a winner must show beyond statistical significance."""

    @model_validator(mode="before")
    @classmethod
    def _equal_weights(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and data.get("weights") is None and isinstance(data.get("variants"), Sequence):
            n = len(data["variants"])
            data = {**data, "weights": tuple(100.0 / n for _ in range(n))} if n else {**data, "weights": ()}
        return data

    @field_validator("secondary_metrics", "guardrails", mode="before")
    @classmethod
    def _listed(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _consistent(self) -> ExperimentSpec:
        names = [v.name for v in self.variants]
        least = {"ab": 2, "interleaving": 2, "canary": 1}[self.kind]
        if len(names) < least:
            raise ValueError(f"an experiment of kind {self.kind!r} needs at least {least} variant(s), got {len(names)}")
        if self.kind == "interleaving" and len(names) != 2:
            raise ValueError(f"an interleaving experiment interleaves exactly 2 variants, got {len(names)}")
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"variant names must be unique; repeated: {', '.join(repeated)}")
        if len(self.weights) != len(names):
            raise ValueError(f"{len(self.weights)} weight(s) given for {len(names)} variants; give one per variant")
        # A canary ramped to 100% sends every user of its range to the treatment: its control may then weigh 0.
        lowest = 0.0 if self.kind == "canary" else math.nextafter(0.0, 1.0)
        if any(not lowest <= w <= 100.0 for w in self.weights):
            above = "0 or above (a canary's)" if self.kind == "canary" else "above 0"
            raise ValueError(f"each weight must be a percentage {above}, got {_percents(self.weights)}")
        if abs(sum(self.weights) - 100.0) > 1e-6:
            raise ValueError(f"weights must sum to 100, got {_percents(self.weights)} (sum {sum(self.weights):g})")
        start, end = self.traffic_range
        if not 0.0 <= start < end <= 100.0:
            raise ValueError(f"traffic range must satisfy 0 <= start < end <= 100, got {start:g}-{end:g}")
        for metric in (self.primary_metric, *self.secondary_metrics):
            if metric not in METRICS:
                raise ValueError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")
        if self.primary_metric in self.secondary_metrics or len(set(self.secondary_metrics)) < len(
            self.secondary_metrics
        ):
            raise ValueError("secondary metrics must be distinct and must not repeat the primary metric")
        unknown = [g for g in self.guardrails if g not in GUARDRAILS]
        if unknown:
            raise ValueError(f"unknown guardrail(s) {', '.join(unknown)}; choose from {', '.join(GUARDRAILS)}")
        if len(set(self.guardrails)) < len(self.guardrails):
            raise ValueError("guardrails must be distinct")
        return self

    @property
    def traffic(self) -> float:
        """Percent of the layer's users in the experiment (``end - start`` of the traffic range)."""
        return self.traffic_range[1] - self.traffic_range[0]

    def variant(self, name: str) -> Variant:
        """The variant called ``name``.

        Raises:
            ExperimentError: there is none.
        """
        for variant in self.variants:
            if variant.name == name:
                return variant
        raise ExperimentError(f"experiment {self.name!r} has no variant {name!r}")


class Experiment(ExperimentSpec):
    """A stored experiment: the declared spec plus its salt, status and history fields.

    ``model_name`` is always set. ``versions`` pins the version each variant resolved to (and was verified at) when
    the experiment started; it is empty for a draft.
    """

    model_name: str = Field(min_length=1, max_length=255)
    salt: str = Field(pattern=r"^[0-9a-f]{8,64}$")
    """Random hex drawn at creation: keys the assignment hash, so experiments split users independently."""
    status: Status = "draft"
    created_at: datetime
    started_at: datetime | None = None
    stopped_at: datetime | None = None
    created_by: str = Field(min_length=1)
    versions: dict[str, int] = Field(default_factory=dict)
    """Variant name -> the registered version resolved and verified at start (empty while a draft)."""

    def definition(self) -> dict[str, Any]:
        """The JSON stored in the ``definition`` column: the spec and the pinned versions."""
        return self.model_dump(mode="json", include={*ExperimentSpec.model_fields, "versions"})

    def to_row(self) -> dict[str, Any]:
        """The experiment as a row of the store's ``experiments`` table."""
        return {
            "name": self.name,
            "model_name": self.model_name,
            "kind": self.kind,
            "status": self.status,
            "layer": self.layer,
            "traffic_start": self.traffic_range[0],
            "traffic_end": self.traffic_range[1],
            "definition": self.definition(),
            "salt": self.salt,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "stopped_at": self.stopped_at,
            "created_by": self.created_by,
        }

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Experiment:
        """An experiment from its store row; the columns win over the JSON for status, times and identity."""
        known = {*ExperimentSpec.model_fields, "versions"}
        fields = {k: v for k, v in (row.get("definition") or {}).items() if k in known}
        for key in ("name", "model_name", "kind", "salt", "status", "created_at", "started_at", "stopped_at",
                    "created_by"):  # fmt: skip
            fields[key] = row[key]
        return cls.model_validate(fields)


def overlaps(a: ExperimentSpec, b: ExperimentSpec) -> bool:
    """Whether two distinct experiments of one model and layer take overlapping traffic ranges (``[start, end)``)."""
    return (
        a.name != b.name
        and a.model_name == b.model_name
        and a.layer == b.layer
        and a.traffic_range[0] < b.traffic_range[1]
        and b.traffic_range[0] < a.traffic_range[1]
    )


# --- the registry, as far as experiments need it ---------------------------------------------------------------


class RegistryLike(Protocol):
    """What experiments need of :class:`tastebud.registry.ModelRegistry` (tests pass an in-memory fake)."""

    def get(self, name: str, version: int) -> Any:
        """A version (with ``name`` and ``version``); raises :class:`RegistryError` when missing."""

    def get_alias(self, name: str, alias: str) -> int | None:
        """The version an alias points at, or None."""

    def bundle_path(self, mv: Any) -> Path:
        """A local directory holding the version's bundle (downloaded when remote)."""


#: Checks that a variant's version can be served: called as ``loader(registry, model_version)``; raises
#: (a :class:`TastebudError`, ``OSError`` or ``ValueError``) when it cannot.
BundleLoader = Callable[[RegistryLike, Any], object]


def verify_variant_bundle(registry: RegistryLike, mv: Any) -> None:
    """The default start check: fetch the version's bundle and verify every file's checksum (and the manifest's
    signature, when the registry has a verification key configured).

    Raises:
        BundleError: the bundle is missing, cannot be downloaded, a file is corrupt, or it is unsigned or
            mis-signed while a key is configured.
    """
    # Imported here: the bundle format belongs to the registry, and only starting an experiment needs it.
    from tastebud.registry.bundle import verify_bundle

    verify_bundle(registry.bundle_path(mv), verifier=getattr(registry, "verifier", None))


def resolve_variant(registry: RegistryLike, model_name: str, variant: Variant) -> Any:
    """The registered version a variant's ref names right now.

    Raises:
        RegistryError: the alias is not set or the version does not exist.
    """
    version = variant.version
    if version is None:
        version = registry.get_alias(model_name, variant.ref)
        if version is None:
            raise RegistryError(f"model {model_name!r} has no alias {variant.ref!r}")
    return registry.get(model_name, version)


# --- parsing what people type ----------------------------------------------------------------------------------


def parse_variant(text: str) -> Variant:
    """``"control=champion"`` or ``"treatment=3"`` as a :class:`Variant`.

    Raises:
        ExperimentError: not ``NAME=REF``, or a name or ref with characters that are not allowed.
    """
    name, sep, ref = text.partition("=")
    if not sep or not name.strip() or not ref.strip():
        raise ExperimentError(f"variant {text!r}: expected NAME=REF, e.g. control=champion or treatment=3")
    try:
        return Variant(name=name.strip(), ref=ref.strip())
    except ValidationError as err:
        raise ExperimentError(f"variant {text!r}: {_problems(err)}") from err


def parse_weights(text: str) -> tuple[float, ...]:
    """``"50,50"`` or ``"90,10"`` as percentages.

    Raises:
        ExperimentError: a part is not a number.
    """
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError as err:
        raise ExperimentError(f"weights {text!r}: expected percentages separated by commas, e.g. 50,50") from err


def parse_range(text: str) -> tuple[float, float]:
    """``"0-100"`` or ``"0-12.5"`` as a ``(start, end)`` traffic range in percent.

    Raises:
        ExperimentError: not two numbers joined by ``-``.
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*-\s*(\d+(?:\.\d+)?)\s*", text)
    if not match:
        raise ExperimentError(f"traffic range {text!r}: expected START-END in percent, e.g. 0-100 or 50-100")
    return float(match.group(1)), float(match.group(2))


# --- life cycle ------------------------------------------------------------------------------------------------


def create_experiment(
    store: Store,
    registry: RegistryLike,
    settings: Settings,
    spec: ExperimentSpec | Mapping[str, Any],
    actor: str,
) -> Experiment:
    """Validate and store a new experiment as a draft, with a fresh random salt; records the ``created`` change.

    Args:
        store: where experiments live (its schema initialised).
        registry: checks that every variant's ref exists for the model.
        settings: ``serving.model_name`` is the default model.
        spec: the declaration, an :class:`ExperimentSpec` or a mapping of its fields.
        actor: who creates it.

    Raises:
        ExperimentError: an invalid field (weights not summing to 100, too few variants, repeated names ...), a
            ref that names no alias or version of the model, or a name already taken.
    """
    fields = (
        spec.model_dump(include=set(ExperimentSpec.model_fields)) if isinstance(spec, ExperimentSpec) else dict(spec)
    )
    fields["model_name"] = fields.get("model_name") or settings.serving.model_name
    where = f"experiment {fields.get('name')!r}"
    try:
        checked = ExperimentSpec.model_validate(fields)
    except ValidationError as err:
        raise ExperimentError(f"{where}: {_problems(err)}") from err
    model_name = str(checked.model_name)
    for variant in checked.variants:
        try:
            resolve_variant(registry, model_name, variant)
        except RegistryError as err:
            raise ExperimentError(
                f"{where}: variant {variant.name!r}: {err} (see `tastebud models list {model_name}`)"
            ) from err
    experiment = Experiment.model_validate(
        {
            **checked.model_dump(),
            "model_name": model_name,
            "salt": secrets.token_hex(16),
            "status": "draft",
            "created_at": datetime.now(UTC),
            "created_by": actor,
        }
    )
    if not store.insert_experiment(experiment.to_row(), actor=actor, details=experiment.definition()):
        existing = get_experiment(store, experiment.name)
        raise ExperimentError(
            f"{where} exists already ({existing.status}, created by {existing.created_by}); pick another name"
        )
    return experiment


def start_experiment(
    store: Store,
    registry: RegistryLike,
    settings: Settings,
    name: str,
    actor: str,
    *,
    loader: BundleLoader = verify_variant_bundle,
) -> Experiment:
    """Start a draft: resolve and verify every variant's bundle, then flip it to ``running`` atomically.

    Nothing is half-started: the status changes in one conditional update after every check has passed, and
    only while no running experiment of the same model and layer overlaps its traffic range (checked again in
    that same update, so two starts racing cannot both win). The versions the variants resolved to are pinned in
    :attr:`Experiment.versions`. A refusal is recorded as a ``start_refused`` change with the reason.

    Args:
        store: where experiments live.
        registry: resolves each variant's ref to a version and its bundle.
        settings: the settings of the caller (kept for a signature shared with :func:`create_experiment`).
        name: the experiment.
        actor: who starts it.
        loader: checks one variant's version can be served, called as ``loader(registry, version)``; the
            default fetches its bundle and verifies every checksum.

    Raises:
        ExperimentError: unknown experiment, not a draft, an overlap, or a variant that cannot be resolved,
            fetched or verified (the status stays ``draft``).
    """
    del settings  # nothing in it changes how a start is checked today
    experiment = get_experiment(store, name)
    if experiment.status != "draft":
        _refuse(store, experiment, actor, _not_draft(experiment))
    clash = [other for other in running_experiments(store, experiment.model_name) if overlaps(experiment, other)]
    if clash:
        _refuse(store, experiment, actor, _overlap_reason(experiment, clash))
    versions: dict[str, int] = {}
    for variant in experiment.variants:
        try:
            mv = resolve_variant(registry, experiment.model_name, variant)
            loader(registry, mv)
        except (TastebudError, OSError, ValueError) as err:
            reason = f"variant {variant.name!r} ({variant.ref}) cannot be served: {err}"
            _refuse(store, experiment, actor, reason, variant=variant.name)
        versions[variant.name] = int(mv.version)
    started = experiment.model_copy(update={"versions": versions})
    if not store.mark_experiment_running(
        name, actor=actor, details={"versions": versions}, definition=started.definition()
    ):
        # Lost a race: started or stopped by someone else, or an overlapping experiment started meanwhile.
        now = get_experiment(store, name)
        if now.status != "draft":
            _refuse(store, now, actor, _not_draft(now))
        clash = [other for other in running_experiments(store, now.model_name) if overlaps(now, other)]
        _refuse(store, now, actor, _overlap_reason(now, clash) if clash else "its row changed meanwhile; try again")
    return get_experiment(store, name)


def stop_experiment(store: Store, name: str, actor: str, *, reason: str | None = None) -> Experiment:
    """Stop a running experiment (or retire a draft); serving processes drop it at their next poll.

    Raises:
        ExperimentError: unknown experiment, or stopped already.
    """
    experiment = get_experiment(store, name)
    details = {"was": experiment.status, "reason": reason}
    if experiment.status == "stopped" or not store.mark_experiment_stopped(name, actor=actor, details=details):
        stopped = get_experiment(store, name)
        raise ExperimentError(f"experiment {name!r} is stopped already (since {_when(stopped.stopped_at)})")
    return get_experiment(store, name)


def get_experiment(store: Store, name: str) -> Experiment:
    """The stored experiment ``name``.

    Raises:
        ExperimentError: there is none.
    """
    row = store.get_experiment(name)
    if row is None:
        raise ExperimentError(f"no experiment named {name!r} (see `tastebud experiment list`)")
    return Experiment.from_row(row)


def list_experiments(store: Store, status: str | None = None, *, model_name: str | None = None) -> list[Experiment]:
    """Stored experiments, oldest first, optionally of one status and one model.

    Raises:
        ExperimentError: an unknown status.
    """
    if status is not None and status not in STATUSES:
        raise ExperimentError(f"unknown status {status!r}; choose from {', '.join(STATUSES)}")
    return [Experiment.from_row(row) for row in store.list_experiments(model_name=model_name, status=status)]


def running_experiments(store: Store, model_name: str) -> list[Experiment]:
    """The running experiments of ``model_name``, in start order: what every serving process polls."""
    running = list_experiments(store, "running", model_name=model_name)
    return sorted(running, key=lambda e: (e.started_at or e.created_at, e.name))


def experiment_changes(store: Store, name: str) -> list[dict[str, Any]]:
    """Every recorded change of ``name``, oldest first: ``time``, ``actor``, ``action``, ``details``."""
    return store.experiment_changes(name)


# --- internals -------------------------------------------------------------------------------------------------


def _refuse(store: Store, experiment: Experiment, actor: str, reason: str, **details: Any) -> NoReturn:
    """Record a refused start, then raise it as one line."""
    store.record_experiment_change(
        experiment.name, actor=actor, action="start_refused", details={"reason": reason, **details}
    )
    raise ExperimentError(f"experiment {experiment.name!r} not started: {reason}")


def _not_draft(experiment: Experiment) -> str:
    if experiment.status == "running":
        return f"it is running already (since {_when(experiment.started_at)})"
    return f"it is stopped (since {_when(experiment.stopped_at)}); create a new experiment to run it again"


def _overlap_reason(experiment: Experiment, clash: Sequence[Experiment]) -> str:
    others = ", ".join(f"{o.name!r} (traffic {_span(o.traffic_range)})" for o in clash)
    return (
        f"its traffic {_span(experiment.traffic_range)} overlaps running experiment(s) {others} of model "
        f"{experiment.model_name!r} in layer {experiment.layer!r}; stop them, or use another --layer or a "
        "--traffic-range that does not overlap"
    )


def _span(traffic_range: tuple[float, float]) -> str:
    return f"{traffic_range[0]:g}-{traffic_range[1]:g}"


def _when(value: datetime | None) -> str:
    return "?" if value is None else value.isoformat(timespec="seconds")


def _percents(values: Sequence[float]) -> str:
    return ",".join(f"{v:g}" for v in values)


def _problems(err: ValidationError) -> str:
    """A pydantic error as one line: ``field: message`` for each problem."""
    out = []
    for problem in err.errors():
        loc = ".".join(str(p) for p in problem["loc"])
        msg = str(problem["msg"]).removeprefix("Value error, ")
        if problem["type"] == "string_pattern_mismatch":
            msg = f"{problem.get('input')!r} is not allowed ({msg.lower()})"
        out.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(out)
