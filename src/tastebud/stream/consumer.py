"""Kafka consumer: poll a batch, decode and validate, write to the store, dead-letter the rest, then commit.

Delivery is at least once and the store makes it exactly once: offsets are committed only after the batch's events
are in the store (one transaction) and its bad messages are dead-lettered, and the store ignores an ``event_id`` it
holds already, so a batch redelivered after a crash is a no-op. Bad messages never stop the consumer: each goes to
the dead-letter topic with its reason and original bytes (to the store's dead-letter table when the topic cannot
take it). A broker that is unreachable at start or lost mid-run is retried with exponential backoff; each change of
state is logged once (not per message) and exported as ``tastebud_stream_consumer_state``.

With ``served_topic`` set it also consumes the ``recommendation_served`` events that serving publishes in Kafka
mode (:mod:`tastebud.stream.served`) into the store's request log, in the same batch transaction discipline: the
store skips a ``request_id`` it holds already, so a redelivered message adds no row, and a malformed one is
dead-lettered with its reason like a bad event.

This module only moves bytes; validation is :func:`tastebud.stream.handlers.handle_messages` (events) and
:func:`tastebud.stream.served.handle_served_messages` (served records).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tastebud.errors import DataValidationError, StoreError, StreamError
from tastebud.stream.handlers import DEFAULT_RULES, Event, EventRules, Rejected, handle_messages
from tastebud.stream.ingest import EventStore, count_rejected, write_dead_letters, write_events
from tastebud.stream.metrics import StreamMetrics
from tastebud.stream.producer import EventProducer
from tastebud.stream.schemas import SchemaSet, default_schemas
from tastebud.stream.served import handle_served_messages

log = logging.getLogger(__name__)

#: librdkafka settings of every consumer unless overridden. Offsets are committed by hand after the store write;
#: the reconnect backoff is librdkafka's own (exponential, capped).
CONSUMER_DEFAULTS: dict[str, Any] = {
    # librdkafka logs every failed reconnect at level 3; the client reports state changes itself (error callback),
    # so only critical library logs go through, via Python logging.
    "log_level": 2,
    "logger": logging.getLogger("tastebud.stream.kafka"),
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    "auto.offset.reset": "earliest",
    "session.timeout.ms": 10_000,
    "heartbeat.interval.ms": 1_000,
    "socket.connection.setup.timeout.ms": 3_000,
    "reconnect.backoff.ms": 100,
    "reconnect.backoff.max.ms": 5_000,
    "fetch.wait.max.ms": 100,
}
#: Kafka header names on a dead-lettered message.
DLQ_REASON, DLQ_CODE, DLQ_ORIGIN = "tastebud-dlq-reason", "tastebud-dlq-code", "tastebud-dlq-origin"

EventsCallback = Callable[[list[Event]], None]


@dataclass
class ConsumerStats:
    """Totals of one consumer's run."""

    batches: int = 0
    messages: int = 0
    inserted: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    dead_letters_to_table: int = 0
    commit_failures: int = 0
    #: request-log records (served events) newly written, and the ones the store held already
    served_inserted: int = 0
    served_duplicates: int = 0


@dataclass
class BatchResult:
    """What one batch did."""

    messages: int
    events: list[Event]
    inserted: int
    duplicates: int
    dead_lettered: int
    committed: bool


class EventConsumer:
    """Consume event topics into the store (see the module docstring).

    Args:
        store: the event store (``write_events``, ``write_dead_letters``).
        bootstrap_servers: ``host:port[,host:port]``.
        topics: topics to subscribe to.
        group_id: consumer group.
        dead_letter_topic: where bad messages go; ``None`` writes them to the store's table only.
        batch_size: most messages per batch (one store transaction).
        poll_timeout: longest wait for a batch, seconds.
        rules: validation limits.
        config: librdkafka settings overriding :data:`CONSUMER_DEFAULTS`.
        on_events: called with each batch's valid events after its offsets are committed (the serving process folds
            the users in); an exception in it is logged and does not stop the consumer.
        metrics: where to count (a private set when ``None``).
        schemas: message schemas (the shipped ones by default).
        backoff_initial: first wait after a failure (broker or store), seconds; doubles up to ``backoff_max``.
        backoff_max: longest wait between retries, seconds.
        lag_interval_s: how often to refresh the consumer-lag gauges, seconds.
        dead_letter_timeout: longest wait for the dead-letter topic to take a batch's bad messages, seconds.
        commit_async: commit offsets without waiting for the broker (the last ones synchronously at close).
        served_topic: topic of ``recommendation_served`` events to write to the store's request log (subscribed
            besides ``topics``); ``None``: none.
    """

    def __init__(
        self,
        store: EventStore,
        bootstrap_servers: str,
        *,
        topics: Sequence[str],
        group_id: str = "tastebud-consumer",
        dead_letter_topic: str | None = "tastebud.dead-letter",
        batch_size: int = 500,
        poll_timeout: float = 0.5,
        rules: EventRules = DEFAULT_RULES,
        config: Mapping[str, Any] | None = None,
        on_events: EventsCallback | None = None,
        metrics: StreamMetrics | None = None,
        schemas: SchemaSet | None = None,
        backoff_initial: float = 0.1,
        backoff_max: float = 5.0,
        lag_interval_s: float = 5.0,
        dead_letter_timeout: float = 5.0,
        commit_async: bool = True,
        served_topic: str | None = None,
    ) -> None:
        from confluent_kafka import Consumer  # Kafka is optional: imported only when a consumer is built

        if not topics and not served_topic:
            raise StreamError("the consumer needs at least one topic")
        self.store = store
        self.bootstrap_servers = bootstrap_servers
        self.served_topic = served_topic
        self.topics = list(dict.fromkeys([*topics, *([served_topic] if served_topic else [])]))
        self.dead_letter_topic = dead_letter_topic
        self.batch_size = batch_size
        self.poll_timeout = poll_timeout
        self.rules = rules
        self.on_events = on_events
        self.metrics = metrics if metrics is not None else StreamMetrics()
        self.schemas = schemas or default_schemas()
        self.backoff_initial, self.backoff_max = backoff_initial, backoff_max
        self.lag_interval_s = lag_interval_s
        self.dead_letter_timeout = dead_letter_timeout
        self.commit_async = commit_async
        self.stats = ConsumerStats()
        self.state = "starting"
        self.metrics.consumer_state.state("starting")
        self._stop = threading.Event()
        self._broker_down = False
        self._store_down = False
        self._lag_at = 0.0
        self._consumer = Consumer(
            {
                **CONSUMER_DEFAULTS,
                **dict(config or {}),
                "bootstrap.servers": bootstrap_servers,
                "group.id": group_id,
                "error_cb": self._on_error,
                "on_commit": self._on_commit,
            }
        )
        self._offsets: dict[tuple[str, int], int] = {}
        self._dlq: EventProducer | None = None
        if dead_letter_topic:
            self._dlq = EventProducer(
                bootstrap_servers,
                config={"message.timeout.ms": int(dead_letter_timeout * 1000)},
                metrics=self.metrics,
                schemas=self.schemas,
            )
        self._subscribed = False
        self._assigned = False

    @classmethod
    def from_settings(cls, settings: Any, store: EventStore, **kwargs: Any) -> EventConsumer:
        """A consumer of the ratings and interactions topics configured in ``settings.stream``."""
        stream = settings.stream
        if not stream.bootstrap_servers:
            raise StreamError("no Kafka broker configured: set TASTEBUD_STREAM__BOOTSTRAP_SERVERS (host:port)")
        kwargs.setdefault("topics", [stream.ratings_topic, stream.interactions_topic])
        kwargs.setdefault("served_topic", stream.served_topic if getattr(stream, "publish_served", False) else None)
        kwargs.setdefault("rules", EventRules.from_settings(settings))
        return cls(
            store,
            stream.bootstrap_servers,
            group_id=stream.group_id,
            dead_letter_topic=stream.dead_letter_topic,
            batch_size=stream.batch_size,
            **kwargs,
        )

    # ------------------------------------------------------------------------------------------------ running
    def run(
        self, *, max_messages: int | None = None, idle_timeout: float | None = None, max_seconds: float | None = None
    ) -> ConsumerStats:
        """Consume until :meth:`stop` (or a limit), then close.

        Args:
            max_messages: stop after at least this many messages.
            idle_timeout: stop after this many seconds without a message (counted while partitions are assigned).
            max_seconds: stop after this long in any case.
        """
        started = last_message = time.monotonic()
        backoff = self.backoff_initial
        try:
            while not self._stop.is_set():
                if self.state != "connected" or self._broker_down:
                    if not self._probe(timeout=max(min(backoff, 2.0), 0.5)):
                        self._stop.wait(backoff)
                        backoff = min(backoff * 2, self.backoff_max)
                        if max_seconds is not None and time.monotonic() - started > max_seconds:
                            break
                        continue
                    backoff = self.backoff_initial
                    last_message = time.monotonic()
                result = self.poll_once()
                now = time.monotonic()
                if result is not None and result.messages:
                    last_message = now
                if max_messages is not None and self.stats.messages >= max_messages:
                    break
                if not self._assigned:
                    last_message = now  # joining the group is not idleness
                if idle_timeout is not None and now - last_message > idle_timeout:
                    break
                if max_seconds is not None and now - started > max_seconds:
                    break
        finally:
            self.close()
        return self.stats

    def poll_once(self) -> BatchResult | None:
        """Consume one batch and process it; ``None`` when nothing arrived."""
        if not self._subscribed:
            self._consumer.subscribe(self.topics, on_assign=self._on_assign, on_revoke=self._on_revoke)
            self._subscribed = True
        messages = self._consumer.consume(self.batch_size, timeout=self.poll_timeout)
        data = []
        for m in messages:
            err = m.error()
            if err is None:
                data.append(m)
            elif err.code() != _partition_eof():
                self._on_error(err)
        self._maybe_update_lag()
        if not data:
            return None
        return self.process(data)

    def process(self, messages: Sequence[Any]) -> BatchResult:
        """Handle a batch of Kafka messages: store, dead-letter, commit, then call ``on_events``."""
        started = time.perf_counter()
        served_bad: list[tuple[Any, Rejected]] = []
        if self.served_topic is not None and any(m.topic() == self.served_topic for m in messages):
            served = [m for m in messages if m.topic() == self.served_topic]
            served_bad = self._served(served)
            event_messages = [m for m in messages if m.topic() != self.served_topic]
        else:
            event_messages = list(messages)
        events, rejected = handle_messages(
            [m.value() for m in event_messages], source="kafka", rules=self.rules, schemas=self.schemas
        )
        inserted, duplicates, store_rejected = self._retry(lambda: self._write(events), "store write")
        bad = [(event_messages[i], r) for i, r in rejected] + store_rejected + served_bad
        if bad:
            self._retry(lambda: self._dead_letter(bad), "dead-letter write")
        committed = self._commit(messages)
        refused_ids = {r.event_id for _, r in store_rejected}
        kept = [e for e in events if e.event_id not in refused_ids] if refused_ids else events
        self.stats.batches += 1
        self.stats.messages += len(messages)
        self.stats.inserted += inserted
        self.stats.duplicates += duplicates
        self.stats.dead_lettered += len(bad)
        self.metrics.batch_seconds.observe(time.perf_counter() - started)
        if self.on_events is not None and kept:
            try:
                self.on_events(kept)
            except Exception:  # a failing hook must not stop ingestion; the events are stored and committed
                log.exception("on_events callback failed", extra={"events": len(kept)})
        return BatchResult(len(messages), kept, inserted, duplicates, len(bad), committed)

    def stop(self) -> None:
        """Ask :meth:`run` to return after the current batch (thread-safe)."""
        self._stop.set()

    def close(self) -> None:
        """Leave the group and flush the dead-letter producer."""
        self.state = "stopped"
        self.metrics.consumer_state.state("stopped")
        with contextlib.suppress(RuntimeError):  # closed already
            self._final_commit()
            self._consumer.close()
        if self._dlq is not None:
            self._dlq.flush(self.dead_letter_timeout)

    # ------------------------------------------------------------------------------------------------ batch steps
    def _served(self, messages: Sequence[Any]) -> list[tuple[Any, Rejected]]:
        """Write the served events of a batch to the request log (retried while the store is down); the bad ones."""
        good, rejected = handle_served_messages([m.value() for m in messages], rules=self.rules, schemas=self.schemas)
        bad = [(messages[i], r) for i, r in rejected]
        if not good:
            return bad
        store: Any = self.store
        written = len(good)
        try:
            inserted = self._retry(lambda: store.write_request_logs([r for _, r in good]), "request log write")
        except DataValidationError:  # the store refused one record the handler let through: isolate it
            inserted = 0
            for i, record in good:
                try:
                    inserted += self._retry(functools.partial(store.write_request_logs, [record]), "request log write")
                except DataValidationError as err:
                    written -= 1
                    bad.append((messages[i], Rejected(str(err), messages[i].value(), "store_rejected")))
        self.stats.served_inserted += inserted
        self.stats.served_duplicates += written - inserted
        self.metrics.ingested.labels("kafka", "recommendation_served").inc(written)
        if written > inserted:
            self.metrics.duplicates.labels("kafka").inc(written - inserted)
        return bad

    def _write(self, events: list[Event]) -> tuple[int, int, list[tuple[Any, Rejected]]]:
        try:
            inserted, duplicates = write_events(self.store, events, source="kafka", metrics=self.metrics)
            return inserted, duplicates, []
        except DataValidationError:
            # The store refused the batch for one event the handlers let through: isolate it, keep the rest.
            return self._write_one_by_one(events)

    def _write_one_by_one(self, events: list[Event]) -> tuple[int, int, list[tuple[Any, Rejected]]]:
        inserted = duplicates = 0
        refused: list[tuple[Any, Rejected]] = []
        for event in events:
            try:
                i, d = write_events(self.store, [event], source="kafka", metrics=self.metrics)
            except DataValidationError as err:
                name, payload = event.to_message()
                data = self.schemas.encode(name, payload, check=False)
                refused.append((_Raw(data), Rejected(str(err), event, "store_rejected", event.event_id)))
                continue
            inserted, duplicates = inserted + i, duplicates + d
        return inserted, duplicates, refused

    def _dead_letter(self, bad: list[tuple[Any, Rejected]]) -> None:
        to_table: list[Rejected] = []
        if self._dlq is not None and self.dead_letter_topic:
            for msg, rej in bad:
                headers = [
                    (DLQ_REASON, rej.reason.encode("utf-8")),
                    (DLQ_CODE, rej.code.encode("utf-8")),
                    (DLQ_ORIGIN, _origin(msg).encode("utf-8")),
                ]
                self._dlq.send(self.dead_letter_topic, msg.value() or b"", key=msg.key(), headers=headers)
            if self._dlq.flush(self.dead_letter_timeout):
                self._dlq.purge()  # undelivered ones become failures and go to the table
            failed = {f.value for f in self._dlq.take_failures()}
            to_table = [_with_origin(rej, msg) for msg, rej in bad if (msg.value() or b"") in failed]
            if failed:
                log.warning("dead-letter topic unavailable; writing to the store's table", extra={"n": len(to_table)})
            count_rejected(self.metrics, [r for _, r in bad], "kafka")
        else:
            to_table = [_with_origin(rej, msg) for msg, rej in bad]
        if to_table:
            # The table is the fallback: a message is counted once above, or here when there is no topic.
            write_dead_letters(
                self.store, to_table, source="kafka", metrics=None if self._dlq is not None else self.metrics,
                max_bytes=self.rules.dead_letter_max_bytes,
            )  # fmt: skip
            if self._dlq is not None:
                self.metrics.dead_letter_fallback.inc(len(to_table))
            self.stats.dead_letters_to_table += len(to_table)

    def _commit(self, messages: Sequence[Any]) -> bool:
        from confluent_kafka import KafkaException, TopicPartition

        for m in messages:
            key = (m.topic(), m.partition())
            self._offsets[key] = max(self._offsets.get(key, -1), m.offset() + 1)
        offsets = [TopicPartition(t, p, o) for (t, p), o in self._offsets.items()]
        try:
            # Asynchronous by default: the batch is already stored, so a commit lost in a crash only means a
            # redelivery, which the store ignores; waiting for the broker's answer would cost a round trip per batch.
            # Two calls because the client's overloads want a literal ``asynchronous``.
            if self.commit_async:
                self._consumer.commit(offsets=offsets, asynchronous=True)
            else:
                self._consumer.commit(offsets=offsets, asynchronous=False)
            return True
        except KafkaException as err:
            self.stats.commit_failures += 1
            log.warning("offset commit failed; the batch may be redelivered", extra={"error": str(err.args[0])})
            return False

    def _final_commit(self) -> None:
        from confluent_kafka import KafkaException, TopicPartition

        if not self._offsets or not self.commit_async:
            return
        offsets = [TopicPartition(t, p, o) for (t, p), o in self._offsets.items()]
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as err:  # e.g. the partitions moved to another member: it starts from the last commit
            log.info("final offset commit failed: %s", err.args[0])

    def _on_commit(self, err: Any, _partitions: list[Any]) -> None:
        if err is not None:
            self.stats.commit_failures += 1
            log.warning("offset commit failed; the batch may be redelivered: %s", err)

    def _retry(self, step: Callable[[], Any], what: str) -> Any:
        """Run a store step until it succeeds: the batch is not committed before, so giving up would lose it."""
        backoff = self.backoff_initial
        while True:
            try:
                result = step()
            except StoreError as err:
                self.metrics.store_retries.inc()
                if not self._store_down:
                    log.error("store unavailable; retrying with backoff", extra={"what": what, "error": str(err)})
                    self._store_down = True
                if self._stop.wait(backoff):
                    raise StreamError(f"stopped while the store was unavailable during {what}: {err}") from err
                backoff = min(backoff * 2, self.backoff_max)
                continue
            if self._store_down:
                log.warning("store available again", extra={"what": what})
                self._store_down = False
            return result

    # ------------------------------------------------------------------------------------------------ broker state
    def _probe(self, timeout: float) -> bool:
        from confluent_kafka import KafkaException

        try:
            self._consumer.list_topics(timeout=timeout)
        except KafkaException:
            self._set_state("disconnected")
            return False
        self._broker_down = False
        self._set_state("connected")
        return True

    def _set_state(self, state: str) -> None:
        if state == self.state:
            return
        previous, self.state = self.state, state
        self.metrics.consumer_state.state(state)
        level = logging.WARNING if state == "disconnected" else logging.INFO
        log.log(level, "consumer %s (was %s), broker %s", state, previous, self.bootstrap_servers)

    def _on_error(self, err: Any) -> None:
        from confluent_kafka import KafkaError

        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            self._broker_down = True
            self._set_state("disconnected")
        elif err.code() == KafkaError._TRANSPORT:
            log.debug("transport error: %s", err)
        else:
            log.warning("Kafka error: %s", err)

    def _on_assign(self, _consumer: Any, partitions: list[Any]) -> None:
        self._assigned = bool(partitions)
        log.info("partitions assigned", extra={"partitions": [(p.topic, p.partition) for p in partitions]})

    def _on_revoke(self, _consumer: Any, partitions: list[Any]) -> None:
        from confluent_kafka import KafkaException, TopicPartition

        self._assigned = False
        # Hand the partitions over with their latest offsets, and forget them so that a later commit of this
        # member cannot move a new owner's offsets back.
        revoked = [(p.topic, p.partition) for p in partitions if (p.topic, p.partition) in self._offsets]
        if revoked:
            try:
                self._consumer.commit(
                    offsets=[TopicPartition(t, p, self._offsets[t, p]) for t, p in revoked], asynchronous=False
                )
            except KafkaException as err:
                log.info("commit on revoke failed: %s", err.args[0])
        for key in revoked:
            del self._offsets[key]

    def _maybe_update_lag(self) -> None:
        now = time.monotonic()
        if now - self._lag_at < self.lag_interval_s:
            return
        self._lag_at = now
        try:
            for tp in self._consumer.position(self._consumer.assignment()):
                _low, high = self._consumer.get_watermark_offsets(tp, timeout=1.0, cached=False)
                lag = high - tp.offset if tp.offset >= 0 else high
                self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(max(lag, 0))
        except Exception as err:  # lag is best effort: never let the gauge stop consumption
            log.debug("could not refresh consumer lag: %s", err)


class _Raw:
    """Stands in for a Kafka message when an event is dead-lettered after decoding (the store refused it)."""

    def __init__(self, value: bytes) -> None:
        self._value = value

    def value(self) -> bytes:
        return self._value

    def key(self) -> None:
        return None

    def topic(self) -> str:
        return "?"

    def partition(self) -> int:
        return -1

    def offset(self) -> int:
        return -1


def _origin(msg: Any) -> str:
    return f"{msg.topic()}/{msg.partition()}@{msg.offset()}"


def _with_origin(rej: Rejected, msg: Any) -> Rejected:
    return Rejected(f"{rej.reason} ({_origin(msg)})", msg.value() or b"", rej.code, rej.event_id)


def _partition_eof() -> int:
    from confluent_kafka import KafkaError

    return KafkaError._PARTITION_EOF
