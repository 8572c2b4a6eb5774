"""Prometheus metrics of the event path (HTTP ingest and the Kafka consumer and producer).

Names follow ``tastebud_stream_<name>_<unit>``; labels stay low-cardinality (sources, event kinds, reason codes,
topics and partitions, never user or item ids). Like the serving metrics, they live on a registry owned by a
:class:`StreamMetrics` object, so nothing is registered at import and every process (or test) has its own set;
the serving process passes its own registry to put both on one ``/metrics``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, Histogram

#: States of the Kafka consumer (the ``tastebud_stream_consumer_state`` enum).
CONSUMER_STATES = ("starting", "connected", "disconnected", "stopped")
#: Batch processing buckets (seconds): decode, validate, store write, dead letters and commit of one batch.
BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class StreamMetrics:
    """The event path's metrics on one registry.

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
            registry=r,
        )
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
