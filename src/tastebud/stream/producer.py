"""Kafka producer of Tastebud messages (confluent-kafka): events, served recommendations and dead letters.

This module only moves bytes; encoding lives in :mod:`tastebud.stream.schemas` and :mod:`tastebud.stream.handlers`.
Delivery is confirmed by callbacks: :meth:`EventProducer.flush` waits for them, and failed deliveries are kept (with
their bytes) until :meth:`EventProducer.take_failures` hands them to the caller, so nothing is lost silently.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tastebud.errors import StreamError
from tastebud.stream.handlers import Event, encode_event
from tastebud.stream.metrics import StreamMetrics
from tastebud.stream.schemas import SchemaSet, default_schemas

log = logging.getLogger(__name__)

#: librdkafka settings of every producer unless overridden: batch for throughput, fail fast when the broker is gone.
PRODUCER_DEFAULTS: dict[str, Any] = {
    # librdkafka logs every failed reconnect at level 3; the client reports state changes itself (error callback),
    # so only critical library logs go through, via Python logging.
    "log_level": 2,
    "logger": logging.getLogger("tastebud.stream.kafka"),
    "linger.ms": 5,
    "batch.num.messages": 10_000,
    "queue.buffering.max.messages": 200_000,
    "message.timeout.ms": 10_000,
    "socket.connection.setup.timeout.ms": 3_000,
    "reconnect.backoff.ms": 50,
    "reconnect.backoff.max.ms": 2_000,
    "acks": "all",
}


@dataclass(frozen=True, slots=True)
class DeliveryFailure:
    """A message the broker did not take."""

    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]] | None
    error: str


class EventProducer:
    """Send Tastebud messages to Kafka.

    Args:
        bootstrap_servers: ``host:port[,host:port]``.
        ratings_topic: topic of rating events.
        interactions_topic: topic of interaction events.
        served_topic: topic of served recommendation lists.
        config: librdkafka settings overriding :data:`PRODUCER_DEFAULTS`.
        metrics: counters of delivered and failed messages.
        schemas: schemas to encode with (the shipped ones by default).
    """

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        ratings_topic: str = "tastebud.ratings",
        interactions_topic: str = "tastebud.interactions",
        served_topic: str = "tastebud.recommendations-served",
        config: Mapping[str, Any] | None = None,
        metrics: StreamMetrics | None = None,
        schemas: SchemaSet | None = None,
    ) -> None:
        from confluent_kafka import Producer  # Kafka is optional: imported only when a producer is built

        self.bootstrap_servers = bootstrap_servers
        self.ratings_topic, self.interactions_topic, self.served_topic = ratings_topic, interactions_topic, served_topic
        self.metrics = metrics
        self.schemas = schemas or default_schemas()
        self._producer = Producer(
            {
                **PRODUCER_DEFAULTS,
                **dict(config or {}),
                "bootstrap.servers": bootstrap_servers,
                "error_cb": self._on_error,
            }
        )
        self._broker_down = False
        self._failures: list[DeliveryFailure] = []
        self.delivered = 0
        self.failed = 0

    @classmethod
    def from_settings(cls, stream: Any, **kwargs: Any) -> EventProducer:
        """A producer for ``settings.stream`` (raises :class:`StreamError` without ``bootstrap_servers``)."""
        if not stream.bootstrap_servers:
            raise StreamError("no Kafka broker configured: set TASTEBUD_STREAM__BOOTSTRAP_SERVERS (host:port)")
        return cls(
            stream.bootstrap_servers,
            ratings_topic=stream.ratings_topic,
            interactions_topic=stream.interactions_topic,
            served_topic=stream.served_topic,
            **kwargs,
        )

    # ------------------------------------------------------------------------------------------------ sending
    def send(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | str | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        """Queue one message; waits (serving delivery callbacks) while the local queue is full."""
        kwargs: dict[str, Any] = {"key": key, "on_delivery": self._delivery_callback(topic, key, value, headers)}
        if headers:
            kwargs["headers"] = headers
        while True:
            try:
                self._producer.produce(topic, value, **kwargs)
                return
            except BufferError:
                self._producer.poll(0.05)  # the queue drains as deliveries complete

    def send_event(self, event: Event) -> None:
        """Encode an event and send it to its topic, keyed by user so one user's events stay in order."""
        name, data = encode_event(event, schemas=self.schemas)
        self.send(self.ratings_topic if name == "rating" else self.interactions_topic, data, key=event.user_id)

    def send_events(self, events: Iterable[Event], *, poll_every: int = 10_000) -> int:
        """Send many events; returns how many were queued (call :meth:`flush` to wait for delivery)."""
        n = 0
        for n, event in enumerate(events, start=1):
            self.send_event(event)
            if n % poll_every == 0:
                self._producer.poll(0)
        return n

    def send_served(self, record: Mapping[str, Any]) -> None:
        """Send one served recommendation list (the ``recommendation_served`` schema)."""
        data = self.schemas.encode("recommendation_served", record)
        self.send(self.served_topic, data, key=record.get("user_id") or record.get("request_id"))

    def poll(self, timeout: float = 0.0) -> int:
        """Serve delivery callbacks; returns how many were served."""
        return self._producer.poll(timeout)

    def flush(self, timeout: float = 10.0) -> int:
        """Wait until every queued message is delivered or failed; returns how many are still queued."""
        return self._producer.flush(timeout)

    def purge(self) -> None:
        """Drop what is still queued or in flight; each becomes a failure (see :meth:`take_failures`)."""
        self._producer.purge(in_queue=True, in_flight=True)
        self._producer.flush(0)

    def take_failures(self) -> list[DeliveryFailure]:
        """Messages that failed since the last call (the caller decides where they go)."""
        failures, self._failures = self._failures, []
        return failures

    def __len__(self) -> int:
        """Messages queued and not yet delivered."""
        return len(self._producer)

    def close(self, timeout: float = 10.0) -> None:
        """Flush; log loudly if messages could not be delivered."""
        remaining = self.flush(timeout)
        if remaining or self._failures:
            log.error(
                "producer closed with undelivered messages",
                extra={"queued": remaining, "failed": len(self._failures)},
            )

    # ------------------------------------------------------------------------------------------------ internals
    def _on_error(self, err: Any) -> None:
        from confluent_kafka import KafkaError

        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            if not self._broker_down:  # once per outage, not per retry
                log.warning("producer: Kafka broker %s unreachable; messages wait in the queue", self.bootstrap_servers)
            self._broker_down = True
        else:
            log.debug("producer: Kafka error: %s", err)

    def _delivery_callback(
        self, topic: str, key: bytes | str | None, value: bytes, headers: list[tuple[str, bytes]] | None
    ) -> Any:
        def done(err: Any, _msg: Any) -> None:
            if err is None:
                self._broker_down = False
                self.delivered += 1
                if self.metrics is not None:
                    self.metrics.produced.labels(topic).inc()
                return
            self.failed += 1
            raw_key = key.encode() if isinstance(key, str) else key
            self._failures.append(DeliveryFailure(topic, raw_key, value, headers, str(err)))
            if self.metrics is not None:
                self.metrics.produce_errors.labels(topic).inc()

        return done


def ensure_topics(
    bootstrap_servers: str,
    topics: Iterable[str],
    *,
    partitions: int = 1,
    timeout: float = 10.0,
) -> list[str]:
    """Create the topics that do not exist yet; returns the ones created.

    Raises:
        StreamError: the broker cannot be reached within ``timeout`` or refuses to create a topic.
    """
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(
        {"bootstrap.servers": bootstrap_servers, "socket.connection.setup.timeout.ms": int(timeout * 1000)}
    )
    wanted = list(dict.fromkeys(topics))
    try:
        existing = set(admin.list_topics(timeout=timeout).topics)
    except KafkaException as err:
        raise StreamError(f"Kafka broker {bootstrap_servers} unreachable: {err.args[0]}") from err
    missing = [t for t in wanted if t not in existing]
    if not missing:
        return []
    futures = admin.create_topics(
        [NewTopic(t, num_partitions=partitions, replication_factor=1) for t in missing], request_timeout=timeout
    )
    created = []
    for topic, future in futures.items():
        try:
            future.result(timeout=timeout)
            created.append(topic)
        except KafkaException as err:
            if err.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise StreamError(f"cannot create topic {topic!r} on {bootstrap_servers}: {err.args[0]}") from err
    if created:
        # Metadata of a new topic can lag its creation by a moment; wait so the first produce does not fail.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not set(created) <= set(admin.list_topics(timeout=timeout).topics):
            time.sleep(0.05)
        log.info("created topics", extra={"topics": created, "partitions": partitions})
    return created
