"""Every Prometheus metric Tastebud exports, declared in one place.

Metric names follow ``tastebud_<subsystem>_<name>_<unit>``; labels stay low-cardinality (routes are path
templates, never user or item ids). The metrics live on a :class:`~prometheus_client.CollectorRegistry` owned
by a :class:`ServingMetrics` object, so that every app (and every test) has its own set and nothing is
registered at import time.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

#: Latency buckets (seconds): dense below 10 ms, where scoring lives, then up to a few seconds.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
#: Bundle load buckets (seconds).
LOAD_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

__all__ = ["CONTENT_TYPE_LATEST", "LATENCY_BUCKETS", "ServingMetrics"]


class ServingMetrics:
    """The serving API's metrics on one registry.

    Args:
        registry: where to register; a fresh :class:`CollectorRegistry` when ``None``.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
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
        self.model_info = Gauge(
            "tastebud_serving_model_info",
            "The model being served (value 1): registered name, version, family, data snapshot and git SHA.",
            ["name", "version", "model", "snapshot_id", "git_sha"],
            registry=r,
        )
        self.model_loaded = Gauge(
            "tastebud_serving_model_loaded_bool", "1 while a model is loaded and served, else 0.", registry=r
        )
        self.model_loaded_timestamp = Gauge(
            "tastebud_serving_model_loaded_timestamp_seconds",
            "Unix time the served model was loaded.",
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
        self.request_log_dropped = Counter(
            "tastebud_serving_request_log_dropped_total",
            "Request-log records dropped because the background writer's queue was full.",
            registry=r,
        )
        self.request_log_errors = Counter(
            "tastebud_serving_request_log_errors_total",
            "Errors of the background request-log writer (records it could not write).",
            registry=r,
        )

    def set_model(self, *, name: str, version: int | None, model: str, snapshot_id: str, git_sha: str) -> None:
        """Record the model now served (the info gauge holds exactly one series)."""
        self.model_info.clear()
        self.model_info.labels(
            name=name, version=str(version) if version is not None else "", model=model,
            snapshot_id=snapshot_id, git_sha=git_sha,
        ).set(1)  # fmt: skip
        self.model_loaded.set(1)

    def render(self) -> bytes:
        """The registry in Prometheus text format."""
        return generate_latest(self.registry)
