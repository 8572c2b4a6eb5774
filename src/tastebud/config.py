"""Runtime settings: one :class:`Settings` object, read from ``TASTEBUD_*`` variables and an optional YAML file.

Nothing here runs at import: :func:`get_settings` builds the settings lazily. Hyperparameters are not settings;
they live in each model's config class.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from tastebud.errors import ConfigError

#: Environment variable naming an optional YAML settings file.
CONFIG_FILE_ENV = "TASTEBUD_CONFIG"


class DataSettings(BaseModel):
    """Where datasets come from and how they are fetched."""

    allow_download: bool = Field(True, description="Try GroupLens downloads before the offline fallback.")
    download_timeout_s: float = Field(20.0, gt=0, description="Timeout of one download attempt, seconds.")
    recbole_version: str = Field("1.2.1", description="RecBole wheel that carries the offline ML-100K copy.")


class RegistrySettings(BaseModel):
    """Experiment tracking, the model registry and promotion gates."""

    tracking_uri: str | None = Field(
        None,
        description="MLflow tracking URI; None uses MLFLOW_TRACKING_URI if set, else an SQLite store in the home.",
    )
    experiment: str = Field("tastebud", description="MLflow experiment that training runs are logged to.")
    promotion_margin: float = Field(
        0.01, ge=0.0, description="Relative NDCG@10 gain a challenger needs over the champion (0.01 = 1%)."
    )
    coverage_tolerance: float = Field(
        0.10, ge=0.0, description="Largest relative drop in catalog coverage a promotion may cause."
    )
    rmse_tolerance: float = Field(0.02, ge=0.0, description="Largest relative RMSE increase a promotion may cause.")
    min_primary_metric: float = Field(
        0.0,
        ge=0.0,
        description="Absolute floor of every candidate, first version or not: its primary metric (NDCG@k) must be "
        "finite and above this (0: any model that ranks at all).",
    )
    beat_baseline: bool = Field(
        True,
        description="A candidate must rank better (primary metric) than the popularity baseline measured on the "
        "same validation data, where its manifest records that baseline (popularity models themselves are exempt).",
    )


class StoreSettings(BaseModel):
    """The event store and request log (SQLAlchemy)."""

    url: str | None = Field(
        None, description="SQLAlchemy URL, e.g. postgresql+psycopg://user@host/db; None uses SQLite in the home."
    )


class SparkSettings(BaseModel):
    """The Spark engine of ALS (``tastebud train --model als --engine spark``; needs the ``spark`` extra and Java)."""

    master: str = Field(
        "local[*]",
        description="Spark master URL: local[*] (every core of this machine), local[N], spark://host:7077, yarn, "
        "k8s://https://host:443.",
    )
    app_name: str = Field("tastebud-als", description="Spark application name (shown in the Spark UI).")
    driver_memory: str = Field(
        "2g",
        description="spark.driver.memory of a session this process starts (with local[*] the whole job runs "
        "in the driver, so this bounds training).",
    )
    shuffle_partitions: int = Field(
        8, ge=1, description="spark.sql.shuffle.partitions (Spark's default of 200 is slow for one machine)."
    )
    blocks: int | None = Field(
        None, ge=1, description="ALS user and item blocks (numUserBlocks/numItemBlocks); None: Spark's default (10)."
    )
    checkpoint_interval: int = Field(
        5,
        ge=1,
        description="ALS checkpoints its factors every this many sweeps, which cuts the lineage Spark serialises "
        "with each task (without it, 15 sweeps of ML-100K overflow a 512 KiB thread stack).",
    )
    checkpoint_dir: str | None = Field(
        None,
        description="Where ALS checkpoints go (hdfs://..., s3a://... for a cluster: every executor must reach it); "
        "None: a temporary directory of this machine for a local master, removed when the session stops.",
    )
    conf: dict[str, str] = Field(
        default_factory=dict, description="Further Spark configuration, key to value (e.g. spark.executor.memory)."
    )


class ServingSettings(BaseModel):
    """The recommendation API."""

    host: str = Field("127.0.0.1", description="Interface to listen on.")
    port: int = Field(8000, ge=1, le=65535, description="TCP port.")
    workers: int = Field(1, ge=1, description="uvicorn worker processes.")
    model_name: str = Field("movielens-100k", description="Registered model to serve.")
    alias: str = Field("champion", description="Registry alias to serve and watch.")
    watch_interval_s: float = Field(5.0, ge=0.0, description="Seconds between alias checks; 0 disables watching.")
    admin_token: str | None = Field(None, description="Bearer token for /admin endpoints; no default (admin off).")
    max_k: int = Field(100, ge=1, description="Largest k a request may ask for.")
    sparse_history_threshold: int = Field(
        5, ge=0, description="Users with fewer interactions get content/hybrid scores (sparse_history)."
    )
    request_log_queue: int = Field(10_000, ge=1, description="Bound of the background request-log queue.")
    result_cache_size: int = Field(
        10_000,
        ge=0,
        description="Personal lists kept per worker and model (by user and request parameters), so a user's repeated "
        "request is not scored again; a user with new events is always scored afresh. 0 disables the cache. "
        "A list of 10 with explanations takes about 9 KB (10,000 lists: about 90 MB per worker; lists of 100 ten "
        "times that).",
    )
    ann_ef_search: int | None = Field(
        None,
        ge=1,
        description="HNSW candidate list size for served models with a FAISS HNSW index (None keeps the bundle's): "
        "lower is faster, higher recalls more.",
    )
    event_poll_s: float = Field(
        0.1,
        ge=0.0,
        description="Seconds between a serving process's reads of the event store: how soon an event stored by "
        "another worker, replica or the Kafka ingest consumer changes this process's answers. 0 stops following "
        "(only this process's own POST /events then count, until the next start or model switch).",
    )
    overlay_max_bytes: int = Field(
        128 * 1024 * 1024,
        ge=0,
        description="Bytes the real-time overlays (events newer than the served model) may take per process; the "
        "least recently active users go first. About 0.8 KB for a user with 10 new items, 12 KB with 200.",
    )
    overlay_max_users: int = Field(100_000, ge=0, description="Users with real-time overlays per process.")
    overlay_max_items: int = Field(200, ge=1, description="Newest items kept in one user's real-time overlay.")
    blas_threads: int = Field(
        1,
        ge=0,
        description="BLAS and OpenMP (FAISS) threads per server process (0 leaves the library defaults); one "
        "request's scoring is too small to gain from more, and extra threads contend across workers.",
    )
    max_body_bytes: int = Field(
        1024 * 1024,
        ge=1024,
        description="Largest request body, bytes (default 1 MiB), checked before the body is read (Content-Length) "
        "and while it streams in (chunked): a larger one is a 413. Also the largest Kafka event message handled; a "
        "larger one is dead-lettered unread.",
    )
    max_events_per_request: int = Field(
        1000, ge=1, description="Most events one POST /events may carry; more is a 422 before any event is read."
    )
    max_id_chars: int = Field(
        128,
        ge=1,
        le=128,
        description="Longest id (user, item, event, request), characters, at every entry point (HTTP and Kafka); "
        "longer is a 422 or a rejected event. At most 128, the width of the store's event_id column.",
    )
    max_event_field_chars: int = Field(
        64,
        ge=16,
        description="Longest string in an event's other fields (kind, timestamp, a rating sent as text); longer is "
        "rejected before it is parsed.",
    )
    max_reported_rejections: int = Field(
        20,
        ge=0,
        description="Rejected events listed with their reasons in a POST /events response; rejected_total counts "
        "them all.",
    )
    dead_letter_max_bytes: int = Field(
        4096,
        ge=0,
        description="Bytes of a rejected event or message kept in the dead-letter table; the original's size and "
        "sha256 are kept with it (one dead letter per source and payload hash, so a resend adds none).",
    )
    offload_ms: float = Field(
        1.0,
        ge=0.0,
        description="Requests of a kind (recommend, similar, popular) whose scoring measured this many milliseconds "
        "or more when the model loaded run in a worker thread, so that a large catalog never stalls the event loop "
        "(health checks, cheap requests) of the process; cheaper ones run inline, sparing the thread hand-off "
        "(about 0.05-0.1 ms). 0 sends every request to a thread; a huge value keeps every request inline.",
    )
    batch_max: int = Field(
        32,
        ge=1,
        description="Most plain GET/POST /recommend requests (known user, no filters, no real-time events, no "
        "experiment, result-cache miss) one worker scores together in one batch: the requests waiting at the same "
        "time share one matrix-matrix product over the item factors instead of one product each. A batch runs as "
        "soon as the event loop is free (no timer: an idle server answers a lone request at once), in a worker "
        "thread when offload_ms says the model's requests leave the loop (see batch_inline_ms). 1 disables "
        "batching.",
    )
    batch_inline_ms: float = Field(
        20.0,
        ge=0.0,
        description="A batch of requests that offload_ms sends to a thread is scored on the event loop instead when "
        "it is expected to take at most this many milliseconds (its size times the cost per request of the batches "
        "so far; before the first, of one request alone): the loop pauses at most about this long, and the "
        "thread's hand-offs, which cost more than they spare on a busy worker, are avoided. 0 sends every such "
        "batch to the thread.",
    )
    coalesce_writes: bool = Field(
        True,
        description="Send each HTTP response (status line, headers and body) in one system call: uvicorn writes "
        "headers and body separately, two sends and two TCP segments per response "
        "(tastebud.serving.http.CoalescingHttpProtocol). false: uvicorn's own protocol.",
    )
    opentelemetry: Literal["auto", "on", "off"] = Field(
        "auto",
        description="FastAPI's own OpenTelemetry instrumentation of each HTTP request (spans, request metrics, "
        "logs), exported by the OpenTelemetry providers the process configures. auto: on when the environment "
        "configures OpenTelemetry (a variable named OTEL_..., or FASTAPI_OTEL_AUTO_CONFIGURE=true), off "
        "otherwise; on: always (for providers set up in code); off: never. Tastebud's Prometheus metrics do not "
        "depend on it. Left on without a provider, FastAPI looks for one on every request (about 5 us).",
    )
    batch_wait_ms: float = Field(
        2.0,
        ge=0.0,
        description="A batch smaller than the recent batches of its worker is held up to this many milliseconds "
        "for the rest of its wave (released as soon as it reaches their size): under a steady load a request that "
        "misses a batch otherwise waits for that batch and the next. A hold that ends at this limit lowers the "
        "expected size to what came; after a quiet spell (50 ms, or 10 times this limit, without a batch) a lone "
        "request is not held. 0: never hold.",
    )


class StreamSettings(BaseModel):
    """Event streaming: Kafka topics and the consumer."""

    bootstrap_servers: str | None = Field(
        None, description="Kafka bootstrap servers (host:port,...); None uses the embedded HTTP event path only."
    )
    ratings_topic: str = Field("tastebud.ratings", description="Topic of rating events.")
    interactions_topic: str = Field("tastebud.interactions", description="Topic of interaction events.")
    served_topic: str = Field("tastebud.recommendations-served", description="Topic of served recommendations.")
    dead_letter_topic: str = Field("tastebud.dead-letter", description="Topic of messages that failed validation.")
    group_id: str = Field("tastebud-consumer", description="Consumer group id.")
    batch_size: int = Field(500, ge=1, description="Messages per consumer batch (one store transaction).")
    consume_in_server: bool = Field(False, description="Run the Kafka consumer inside the serving process.")
    publish_served: bool = Field(
        True,
        description="With bootstrap_servers set, serving publishes each request-log record as a "
        "recommendation_served event on served_topic (the ingest consumer writes it to the store) instead of "
        "writing it itself; False keeps the in-process writer.",
    )
    served_buffer: int = Field(
        100_000, ge=1, description="Served events the serving process buffers while the broker is slow or away; "
        "more are dropped and counted (tastebud_serving_request_log_dropped_total).",
    )  # fmt: skip
    served_timeout_s: float = Field(
        300.0, gt=0.0, description="How long a buffered served event is retried before it counts as lost, seconds.",
    )  # fmt: skip


class RetrainSettings(BaseModel):
    """Retraining (``tastebud retrain run``): data floors, the fresh holdout, the single-flight lock."""

    min_users: int = Field(20, ge=1, description="Fewest users the merged data (champion data + events) may have.")
    min_items: int = Field(20, ge=1, description="Fewest items with interactions the merged data may have.")
    min_interactions: int = Field(500, ge=1, description="Fewest interactions the merged data may have.")
    max_new_share: float = Field(
        0.5,
        gt=0.0,
        le=1.0,
        description="Largest share of the merged interactions that the new events may make up (events / merged); "
        "more is implausible (a flood, a replay gone wrong) and the data is rejected.",
    )
    min_new_events: int = Field(
        1, ge=1, description="Fewest new events since the champion's cutoff for a retrain (fewer: no_new_data)."
    )
    holdout_fraction: float = Field(
        0.2,
        gt=0.0,
        lt=1.0,
        description="Share of the new events (the newest by event time, first-time pairs only) held out to compare "
        "candidate and champion.",
    )
    min_holdout_users: int = Field(
        20, ge=1, description="Fewest holdout users for the gate to promote; fewer and the candidate is refused."
    )
    lock_ttl_s: float = Field(
        120.0,
        gt=0.0,
        description="Lease of the retrain lock, seconds; renewed every third of it while a retrain works. A lock "
        "whose lease ran out (or whose owner is a dead process on this host) is taken over.",
    )
    settle_s: float = Field(
        5.0,
        ge=0.0,
        description="PostgreSQL only: events received in the last this many seconds wait for the next retrain "
        "(their ids may not be final yet). SQLite ids are final at once.",
    )


class SigningSettings(BaseModel):
    """Signed bundle manifests (``tastebud models keygen``).

    Ed25519: training and registration sign with the private key; serving verifies with the public key and never
    holds a secret. HMAC-SHA256 (one shared secret) is the alternative for a single trusted host. With any
    verification key set (a public key, a private key -- its public half is derived --, or an HMAC key) unsigned
    or mis-signed bundles are refused; with none, bundles load as before and provenance says ``signed: false``.
    """

    private_key_path: Path | None = Field(
        None, description="Ed25519 private key (PEM, PKCS8) that signs manifests at training and registration."
    )
    public_key_path: Path | None = Field(
        None, description="Ed25519 public key (PEM) that verifies manifests; what serving should hold."
    )
    hmac_key: SecretStr | None = Field(
        None, description="Shared HMAC-SHA256 secret (TASTEBUD_SIGNING__HMAC_KEY) used instead of Ed25519 keys."
    )


class AuthSettings(BaseModel):
    """API keys with scopes and rate limits of the HTTP API (``tastebud keys new``; README "Security").

    Keys are stored as the sha256 hex digests of the keys (never the keys themselves), each with its scopes:
    ``read`` (recommendations, items, models, experiments), ``read-private`` (a user's history, a request's trace;
    implies ``read``), ``write-events`` (``POST /events``) and ``admin`` (``/admin/...``; implies every scope).
    With no key configured (and ``required`` off) the API is open as before, except ``/admin`` routes, which
    ``serving.admin_token`` (an admin key in clear, kept for compatibility) guards.
    """

    keys: dict[str, list[Literal["read", "read-private", "write-events", "admin"]]] = Field(
        default_factory=dict,
        description="sha256 hex of each API key -> its scopes (TASTEBUD_AUTH__KEYS as JSON; tastebud keys new "
        "prints it); any key configured makes every non-public route need a key.",
    )
    required: bool = Field(
        False,
        description="Refuse to start without a key (auth.keys or serving.admin_token) and require keys on every "
        "non-public route (production).",
    )
    rate_limit_per_key: str | None = Field(
        None,
        description="Rate limit of each API key in the `limits` notation (1000/second, or several: "
        "50/second;2000/minute); None: none.",
    )
    rate_limit_per_client: str | None = Field(
        None,
        description="Rate limit of each client address (before authentication, so failed attempts count too); "
        "None: none.",
    )
    rate_limit_strategy: Literal["fixed-window", "sliding-window-counter", "moving-window"] = Field(
        "fixed-window",
        description="`limits` strategy: fixed-window (cheapest; up to twice the limit across a window's edge), "
        "sliding-window-counter (smoother) or moving-window (exact, keeps every hit).",
    )
    rate_limit_storage_uri: str = Field(
        "memory://",
        description="`limits` storage of the counters: memory:// (per process: with N workers the effective limit "
        "is N times the setting) or a shared one such as redis://host:6379.",
    )

    @field_validator("keys")
    @classmethod
    def _hashed_keys(cls, keys: dict[str, list[str]]) -> dict[str, list[str]]:
        out = {}
        for digest, scopes in keys.items():
            norm = digest.strip().lower()
            if len(norm) != 64 or any(c not in "0123456789abcdef" for c in norm):
                raise ValueError("keys are sha256 hex digests of API keys (64 hex characters): see `tastebud keys new`")
            out[norm] = scopes
        return out

    @field_validator("rate_limit_per_key", "rate_limit_per_client")
    @classmethod
    def _rate_limit(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        from limits import parse_many

        try:
            parse_many(value)
        except ValueError as err:
            raise ValueError(f"not a rate limit such as '100/second' ({err})") from err
        return value


class Settings(BaseSettings):
    """Effective settings of a Tastebud installation."""

    model_config = SettingsConfigDict(
        env_prefix="TASTEBUD_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    home: Path = Field(Path(".tastebud"), description="Directory holding everything Tastebud writes.")
    seed: int = Field(42, description="Default random seed for splits and training.")
    log_level: str = Field("WARNING", description="Logging level of the command line and the server.")
    data: DataSettings = Field(default_factory=DataSettings, description="Dataset fetching.")
    registry: RegistrySettings = Field(default_factory=RegistrySettings, description="Tracking and registry.")
    store: StoreSettings = Field(default_factory=StoreSettings, description="Event store and request log.")
    serving: ServingSettings = Field(default_factory=ServingSettings, description="The HTTP API.")
    stream: StreamSettings = Field(default_factory=StreamSettings, description="Event streaming.")
    retrain: RetrainSettings = Field(default_factory=RetrainSettings, description="Retraining.")
    signing: SigningSettings = Field(default_factory=SigningSettings, description="Signed bundle manifests.")
    auth: AuthSettings = Field(default_factory=AuthSettings, description="API keys and rate limits.")
    spark: SparkSettings = Field(default_factory=SparkSettings, description="Spark engine of ALS training.")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Precedence: explicit arguments > environment > YAML file > defaults.
        return (init_settings, env_settings, _YamlSource(settings_cls))

    @property
    def data_dir(self) -> Path:
        """Fetched and prepared datasets."""
        return self.home / "data"

    @property
    def cache_dir(self) -> Path:
        """Downloads kept for re-use (archives, wheels)."""
        return self.home / "cache"

    @property
    def bundles_dir(self) -> Path:
        """Model bundles written by training (before and after registration)."""
        return self.home / "bundles"

    @property
    def mlflow_dir(self) -> Path:
        """The embedded MLflow store: ``mlflow.db`` and ``artifacts/``."""
        return self.home / "mlflow"

    @property
    def store_url(self) -> str:
        """SQLAlchemy URL of the event store and request log."""
        return self.store.url or f"sqlite:///{(self.home / 'tastebud.db').resolve()}"

    @property
    def runs_dir(self) -> Path:
        """Evaluation reports, plots and tuning studies."""
        return self.home / "runs"


class _YamlSource(PydanticBaseSettingsSource):
    """Reads the YAML file named by ``TASTEBUD_CONFIG`` (if any)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = os.environ.get(CONFIG_FILE_ENV)
        if not path:
            return {}
        return load_yaml_settings(Path(path))


def load_yaml_settings(path: Path) -> dict[str, Any]:
    """Read a YAML settings file into a dict, with clear errors."""
    if not path.is_file():
        raise ConfigError(f"{path}: settings file not found (named by {CONFIG_FILE_ENV})")
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level, got {type(content).__name__}")
    return content


def build_settings(**overrides: Any) -> Settings:
    """Build settings from overrides, environment and YAML, turning validation errors into ``ConfigError``."""
    try:
        return Settings(**overrides)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in err.errors())
        raise ConfigError(f"invalid settings: {problems}") from err


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, built on first use."""
    return build_settings()
