"""Every Prometheus metric Tastebud exports, declared in one place.

Metric names follow ``tastebud_<subsystem>_<name>_<unit>`` (``_total`` for counters, ``_seconds`` for latencies);
labels stay low-cardinality (routes are path templates, never user or item ids). The metrics live on a
:class:`~prometheus_client.CollectorRegistry` owned by a metrics object, so that every app (and every test) has its
own set and nothing is registered at import time.

Several uvicorn workers: when ``PROMETHEUS_MULTIPROC_DIR`` is set before a process imports ``prometheus_client``,
every value is kept in a memory-mapped file in that directory and :func:`render` reads all the processes' files
through a :class:`~prometheus_client.multiprocess.MultiProcessCollector`, so a scrape of any worker returns the
whole server's counts rather than one worker's share. ``tastebud serve --workers N`` creates and removes the
directory. Gauges declare how their per-process values combine (``multiprocess_mode``).

This module imports nothing from Tastebud (like ``errors.py``), so that every layer may import it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

logger = logging.getLogger(__name__)

#: Latency buckets (seconds): dense below 10 ms, where scoring lives, then up to a few seconds.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
#: Bundle load buckets (seconds).
LOAD_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Batch processing buckets (seconds): decode, validate, store write, dead letters and commit of one batch.
BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
#: Scoring batch size buckets (requests per batch of plain ``/recommend`` requests).
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
#: States of the Kafka consumer (the ``tastebud_stream_consumer_state`` enum).
CONSUMER_STATES = ("starting", "connected", "disconnected", "stopped")
#: Signals the drift monitor compares (the ``signal`` label of the drift gauges).
DRIFT_SIGNALS = ("rating", "item_popularity", "user_activity", "genre_mix", "score")
#: Environment variable that switches prometheus_client to multiprocess mode.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Where ``tastebud monitor drift`` writes its gauges, relative to the home directory; ``/metrics`` appends it.
DRIFT_TEXTFILE = Path("monitoring") / "drift.prom"
#: Where every retrain (scheduled or by hand) writes its gauges, relative to the home directory.
RETRAIN_TEXTFILE = Path("monitoring") / "retrain.prom"
#: Outcomes of a retrain (the ``outcome`` label of ``tastebud_retrain_last_outcome``).
RETRAIN_OUTCOMES = ("promoted", "refused", "rejected_data", "no_new_data", "busy", "failed")

__all__ = [
    "BATCH_BUCKETS",
    "CONSUMER_STATES",
    "CONTENT_TYPE_LATEST",
    "DRIFT_SIGNALS",
    "DRIFT_TEXTFILE",
    "LATENCY_BUCKETS",
    "LOAD_BUCKETS",
    "MULTIPROC_ENV",
    "RETRAIN_OUTCOMES",
    "RETRAIN_TEXTFILE",
    "DriftMetrics",
    "RetrainMetrics",
    "ServingMetrics",
    "StreamMetrics",
    "mark_process_dead",
    "multiprocess_dir",
    "render",
]


def multiprocess_dir() -> Path | None:
    """The multiprocess directory of this process, or ``None`` in single-process mode."""
    value = os.environ.get(MULTIPROC_ENV) or os.environ.get(MULTIPROC_ENV.lower())
    return Path(value) if value else None


def render(registry: CollectorRegistry, textfiles: Sequence[Path] = ()) -> bytes:
    """The metrics in Prometheus text format: every worker's in multiprocess mode, else ``registry``'s.

    Args:
        registry: this process's registry (used as is in single-process mode).
        textfiles: exposition files written by other commands (``tastebud monitor drift`` writes its gauges
            this way, the node-exporter "textfile" pattern); appended when they exist.
    """
    directory = multiprocess_dir()
    if directory is not None and directory.is_dir():
        from prometheus_client.multiprocess import MultiProcessCollector

        merged = CollectorRegistry()
        MultiProcessCollector(merged, path=str(directory))
        body = generate_latest(merged)
    else:
        body = generate_latest(registry)
    for path in textfiles:
        try:
            extra = Path(path).read_bytes()
        except FileNotFoundError:
            continue
        except OSError as err:  # a broken side file must not break the scrape
            logger.warning("metrics text file %s unreadable: %s", path, err)
            continue
        body += extra if extra.endswith(b"\n") else extra + b"\n"
    return body


def mark_process_dead(pid: int | None = None) -> None:
    """Drop this (or ``pid``'s) live gauges from the multiprocess directory; a no-op in single-process mode.

    Call it when a worker shuts down, so that ``live*`` gauges stop counting it.
    """
    directory = multiprocess_dir()
    if directory is None or not directory.is_dir():
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid if pid is not None else os.getpid(), str(directory))


class StreamMetrics:
    """The event path's metrics (HTTP ingest, the Kafka consumer and producer) on one registry.

    The serving app creates one on its own registry (``ServingMetrics.stream``) so ``/metrics`` shows both.

    Args:
        registry: where to register; a fresh :class:`CollectorRegistry` when ``None``.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.ingested = Counter(
            "tastebud_stream_ingested_events_total",
            "Valid events written to the store, by source and kind (duplicates included; new = this - duplicates).",
            ["source", "kind"],
            registry=r,
        )
        self.duplicates = Counter(
            "tastebud_stream_duplicate_events_total",
            "Events already in the store (a redelivery or a retry), by source.",
            ["source"],
            registry=r,
        )
        self.dead_lettered = Counter(
            "tastebud_stream_dead_lettered_events_total",
            "Messages or events that failed validation, by source and reason code.",
            ["source", "reason"],
            registry=r,
        )
        self.dead_letter_fallback = Counter(
            "tastebud_stream_dead_letter_fallback_messages_total",
            "Dead letters written to the store's table because the dead-letter topic was unavailable.",
            registry=r,
        )
        self.consumer_lag = Gauge(
            "tastebud_stream_consumer_lag_messages",
            "Messages between the consumer's position and the end of each partition.",
            ["topic", "partition"],
            multiprocess_mode="livemax",
            registry=r,
        )
        # Enums are not aggregated in multiprocess mode; the consumer is one process, so that does not matter.
        self.consumer_state = Enum(
            "tastebud_stream_consumer_state",
            "State of the Kafka consumer.",
            states=list(CONSUMER_STATES),
            registry=r,
        )
        self.batch_seconds = Histogram(
            "tastebud_stream_batch_seconds",
            "Time to process one consumer batch (decode, validate, store write, dead letters, commit).",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.store_retries = Counter(
            "tastebud_stream_store_retries_total",
            "Batch writes to the store that failed and were retried.",
            registry=r,
        )
        self.produced = Counter(
            "tastebud_stream_produced_messages_total",
            "Messages the producer delivered, by topic.",
            ["topic"],
            registry=r,
        )
        self.produce_errors = Counter(
            "tastebud_stream_produce_errors_total",
            "Messages the producer failed to deliver, by topic.",
            ["topic"],
            registry=r,
        )


class ServingMetrics:
    """The serving API's metrics on one registry (the event path's too, as :attr:`stream`).

    Args:
        registry: where to register; a fresh :class:`CollectorRegistry` when ``None``.
        textfiles: exposition files appended to every scrape (see :func:`render`).
    """

    def __init__(self, registry: CollectorRegistry | None = None, textfiles: Sequence[Path] = ()) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.textfiles: list[Path] = [Path(p) for p in textfiles]
        self._model_labels: dict[str, str] | None = None
        # labelled children by label values: ``labels()`` per request costs a lock, a tuple and string keys
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._list_children: dict[tuple[str, int | None, str | None], Any] = {}
        self._cache_children: tuple[Any, Any] | None = None
        self._exposure_children: dict[tuple[str, str], Any] = {}
        r = self.registry
        self.requests = Counter(
            "tastebud_serving_requests_total",
            "HTTP requests answered, by route template, method and status code.",
            ["route", "method", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "tastebud_serving_request_seconds",
            "Time to answer an HTTP request, by route template, method and status code.",
            ["route", "method", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.recommendations = Counter(
            "tastebud_serving_recommendations_total",
            "Recommendation lists served, by endpoint, model version and fallback reason ('none' when personal).",
            ["endpoint", "model_version", "fallback_reason"],
            registry=r,
        )
        # livemax: a version is listed while at least one live worker serves it.
        self.model_info = Gauge(
            "tastebud_serving_model_info",
            "The model being served (value 1): registered name, version, family, data snapshot and git SHA.",
            ["name", "version", "model", "snapshot_id", "git_sha"],
            multiprocess_mode="livemax",
            registry=r,
        )
        # livemin: 0 as soon as one live worker has no model, which is what the alert must see.
        self.model_loaded = Gauge(
            "tastebud_serving_model_loaded_bool",
            "1 while a model is loaded and served (by every worker), else 0.",
            multiprocess_mode="livemin",
            registry=r,
        )
        self.model_loaded_timestamp = Gauge(
            "tastebud_serving_model_loaded_timestamp_seconds",
            "Unix time the served model was loaded (the latest load of any worker).",
            multiprocess_mode="livemax",
            registry=r,
        )
        self.model_switches = Counter(
            "tastebud_serving_model_switches_total",
            "Model loads and switches, by trigger (startup, admin, watcher) and outcome (success, failed).",
            ["trigger", "outcome"],
            registry=r,
        )
        self.model_load_seconds = Histogram(
            "tastebud_serving_model_load_seconds",
            "Time to load, verify and prepare a bundle (successful loads).",
            buckets=LOAD_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "tastebud_serving_batch_size",
            "Requests per scoring batch of plain /recommend requests (serving.batch_max; 1: scored alone).",
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.batch_holds = Counter(
            "tastebud_serving_batch_holds_total",
            "Scoring batches held for the rest of their wave (serving.batch_wait_ms), by outcome: filled (reached "
            "the size of the recent batches) or timeout (the wait ran out, which lowers the size expected).",
            ["outcome"],
            registry=r,
        )
        self.result_cache = Counter(
            "tastebud_serving_result_cache_total",
            "Personal lists answered from the result cache (outcome=hit) or scored and cached (outcome=miss).",
            ["outcome"],
            registry=r,
        )
        self.request_log_dropped = Counter(
            "tastebud_serving_request_log_dropped_total",
            "Request-log records dropped: the background writer's queue was full, or their write failed after "
            "retries (database locked or full; see tastebud_serving_request_log_errors_total).",
            registry=r,
        )
        self.request_log_errors = Counter(
            "tastebud_serving_request_log_errors_total",
            "Errors of the background request-log writer (records it could not write).",
            registry=r,
        )
        self.events_received = Counter(
            "tastebud_serving_events_received_total",
            "Events received by POST /events, by outcome (accepted, duplicate, conflict, rejected).",
            ["outcome"],
            registry=r,
        )
        self.rejected_requests = Counter(
            "tastebud_serving_rejected_requests_total",
            "Requests refused whole before their content was handled, by reason (body_too_large: over "
            "serving.max_body_bytes; too_many_events: over serving.max_events_per_request; an authentication or "
            "rate-limit refusal: its error code).",
            ["reason"],
            registry=r,
        )
        self.realtime_seconds = Histogram(
            "tastebud_serving_realtime_score_seconds",
            "Time to score a user's history plus their real-time events (fold-in for factor models).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.realtime_events = Counter(
            "tastebud_serving_realtime_events_total",
            "Stored events this process applied to its real-time overlays (every process applies every event).",
            registry=r,
        )
        self.experiment_exposures = Counter(
            "tastebud_serving_experiment_exposures_total",
            "Recommendation lists served under a running experiment, by experiment and variant.",
            ["experiment", "variant"],
            registry=r,
        )
        self.model_loaded.set(0)
        self.stream = StreamMetrics(r)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one answered request and observe its latency, by route template, method and status."""
        key = (route, method, status)
        pair = self._request_children.get(key)
        if pair is None:
            labels = (route, method, str(status))
            pair = self._request_children[key] = (self.requests.labels(*labels), self.request_seconds.labels(*labels))
        pair[0].inc()
        pair[1].observe(seconds)

    def count_exposure(self, experiment: str, variant: str | None) -> None:
        """Count one list served under ``experiment``."""
        key = (experiment, variant or "")
        child = self._exposure_children.get(key)
        if child is None:
            child = self._exposure_children[key] = self.experiment_exposures.labels(*key)
        child.inc()

    def count_cache(self, hit: bool) -> None:
        """Count one lookup of the personal result cache."""
        children = self._cache_children
        if children is None:
            children = self._cache_children = (self.result_cache.labels("miss"), self.result_cache.labels("hit"))
        children[hit].inc()

    def count_list(self, endpoint: str, model_version: int | None, fallback_reason: str | None) -> None:
        """Count one recommendation list served (``fallback_reason`` ``None``: personal)."""
        key = (endpoint, model_version, fallback_reason)
        child = self._list_children.get(key)
        if child is None:
            child = self._list_children[key] = self.recommendations.labels(
                endpoint=endpoint,
                model_version="" if model_version is None else str(model_version),
                fallback_reason=fallback_reason or "none",
            )
        child.inc()

    def set_model(self, *, name: str, version: int | None, model: str, snapshot_id: str, git_sha: str) -> None:
        """Record the model now served (the info gauge holds exactly one series per process)."""
        labels = {
            "name": name, "version": str(version) if version is not None else "", "model": model,
            "snapshot_id": snapshot_id, "git_sha": git_sha,
        }  # fmt: skip
        if self._model_labels is not None and self._model_labels != labels:
            # In multiprocess mode clear() cannot erase the value already in the shared file: zero it first.
            self.model_info.labels(**self._model_labels).set(0)
        self.model_info.clear()
        self.model_info.labels(**labels).set(1)
        self._model_labels = labels
        self.model_loaded.set(1)

    def render(self) -> bytes:
        """Every metric in Prometheus text format (all workers' in multiprocess mode, plus the text files)."""
        return render(self.registry, self.textfiles)


class DriftMetrics:
    """Gauges of the latest drift check (``tastebud monitor drift``), one series per signal.

    The drift command writes them to a text file that the serving ``/metrics`` appends (see :func:`render`), so
    Prometheus reads them from the same target as everything else.

    Args:
        registry: where to register; a fresh :class:`CollectorRegistry` when ``None``.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.psi = Gauge(
            "tastebud_monitor_drift_psi_ratio",
            "Population stability index of each signal between the reference snapshot and the recent window.",
            ["signal"],
            registry=r,
        )
        self.kl = Gauge(
            "tastebud_monitor_drift_kl_divergence_nats",
            "KL divergence (recent || reference) of each signal, in nats.",
            ["signal"],
            registry=r,
        )
        self.level = Gauge(
            "tastebud_monitor_drift_level",
            "Drift level of each signal by its PSI thresholds: 0 ok, 1 warn, 2 alert.",
            ["signal"],
            registry=r,
        )
        self.warn_threshold = Gauge(
            "tastebud_monitor_drift_warn_threshold_ratio", "PSI at which a signal warns.", ["signal"], registry=r
        )
        self.alert_threshold = Gauge(
            "tastebud_monitor_drift_alert_threshold_ratio", "PSI at which a signal alerts.", ["signal"], registry=r
        )
        self.checked = Gauge(
            "tastebud_monitor_drift_last_check_timestamp_seconds",
            "Unix time of the latest drift check.",
            registry=r,
        )

    def write(self, path: Path) -> Path:
        """Write the gauges to ``path`` in Prometheus text format (atomically: a scrape never sees half a file)."""
        return _write_textfile(self.registry, path)


class RetrainMetrics:
    """Gauges of the latest retrain (``tastebud retrain run`` or the schedule service), written as a text file.

    Like the drift gauges, they go to a text file in the home (:data:`RETRAIN_TEXTFILE`) that the serving
    ``/metrics`` appends, so the staleness alert compares them with the configured schedule on the same target.

    Args:
        registry: where to register; a fresh :class:`CollectorRegistry` when ``None``.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.last_run = Gauge(
            "tastebud_retrain_last_run_timestamp_seconds", "Unix time the latest retrain finished.", registry=r
        )
        self.last_success = Gauge(
            "tastebud_retrain_last_success_timestamp_seconds",
            "Unix time the latest successful retrain finished (promoted, refused by the gate, or no new data).",
            registry=r,
        )
        self.last_outcome = Gauge(
            "tastebud_retrain_last_outcome",
            "Outcome of the latest retrain: 1 for its outcome, 0 for the others.",
            ["outcome"],
            registry=r,
        )
        self.duration = Gauge(
            "tastebud_retrain_duration_seconds", "Wall time of the latest retrain, in seconds.", registry=r
        )
        self.data_interactions = Gauge(
            "tastebud_retrain_data_interactions", "Interactions the latest retrain trained on.", registry=r
        )
        self.new_events = Gauge(
            "tastebud_retrain_new_events",
            "Stored events since the champion's cutoff that the latest retrain read.",
            registry=r,
        )
        self.gate_passed = Gauge(
            "tastebud_retrain_gate_passed",
            "1 when the latest retrain's candidate passed the promotion gate, 0 when it was refused; NaN when no "
            "gate ran (no new data, rejected data, busy, failed).",
            registry=r,
        )
        self.schedule = Gauge(
            "tastebud_retrain_schedule_seconds",
            "Configured interval between scheduled retrains, in seconds (the staleness alert allows twice this).",
            registry=r,
        )

    def write(self, path: Path) -> Path:
        """Write the gauges to ``path`` in Prometheus text format (atomically: a scrape never sees half a file)."""
        return _write_textfile(self.registry, path)


def _write_textfile(registry: CollectorRegistry, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(generate_latest(registry))
    os.replace(tmp, path)
    return path
