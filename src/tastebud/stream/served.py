"""Served responses through Kafka: the request log published as ``recommendation_served`` events, and read back.

In Kafka mode (``stream.bootstrap_servers`` set and ``stream.publish_served`` on) the serving process does not write
its request log itself. :class:`ServedPublisher` takes the place of the in-process
:class:`tastebud.store.RequestLogWriter` (same ``submit`` / ``flush`` / ``close``): each response's
:class:`~tastebud.store.schema.RequestLogRecord` is encoded (schema ``recommendation_served`` v2, which carries
every request-log field) and handed to librdkafka's local queue, and the ingest consumer
(:class:`tastebud.stream.consumer.EventConsumer`, subscribed to ``stream.served_topic``) writes the records to the
store's request log. The store skips a ``request_id`` it holds already, so a redelivered message adds no row.

Nothing is lost while the broker is away: records wait in the producer's queue (``stream.served_buffer`` messages
at most) and are retried, with ``acks=all``, until ``stream.served_timeout_s`` has passed. A retry may put a message
on the topic twice; the store keeps the first row of a ``request_id``, so the request log holds each record once.
A record that finds the queue full is dropped, counted (``tastebud_serving_request_log_dropped_total``) and logged
(at most a line every 10 s): the request never waits. A record the broker did not take in time is counted in
``tastebud_stream_produce_errors_total`` and the dropped counter, and logged; delivered ones in
``tastebud_stream_produced_messages_total``.
"""

from __future__ import annotations

import io
import logging
import math
import struct
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

import fastavro
import orjson

from tastebud.errors import DataValidationError, StreamError
from tastebud.stream.handlers import DEFAULT_RULES, EventRules, Rejected
from tastebud.stream.schemas import MAGIC, SCHEMA_IDS, MessageError, SchemaSet, default_schemas

if TYPE_CHECKING:
    from tastebud.store.schema import RequestLogRecord

log = logging.getLogger(__name__)

SCHEMA = "recommendation_served"
#: Least interval between log lines about dropped or failed records, seconds.
_WARN_INTERVAL_S = 10.0
#: How often the delivery thread serves librdkafka's callbacks when idle, seconds.
_POLL_S = 0.2
#: seconds between attempts to create a missing served topic while the broker cannot be reached
_TOPIC_RETRY_S = 10.0


def served_message(record: Any) -> dict[str, Any]:
    """A request-log record (a :class:`~tastebud.store.schema.RequestLogRecord` or a mapping with its fields) as a
    ``recommendation_served`` record."""
    get: Callable[..., Any] = (
        record.get if isinstance(record, Mapping) else lambda key, default=None: getattr(record, key, default)
    )
    timestamp = get("timestamp")
    if isinstance(timestamp, datetime):
        seconds = (timestamp if timestamp.tzinfo else timestamp.replace(tzinfo=UTC)).timestamp()
    else:
        seconds = float(timestamp)
    exact = [float(s) for s in get("scores") or ()]
    model_name = get("model_name")
    provenance, exposure = get("provenance"), get("exposure")
    return {
        "request_id": str(get("request_id")),
        "user_id": get("user_id"),
        "item_ids": [str(i) for i in get("item_ids") or ()],
        "scores": _float32_range(exact),
        "model_name": "" if model_name is None else str(model_name),
        "model_version": get("model_version"),
        "is_fallback": bool(get("is_fallback", False)),
        "variant": get("variant"),
        "timestamp": seconds,
        "endpoint": str(get("endpoint")),
        "item_id": get("item_id"),
        "alias": get("alias"),
        "latency_ms": float(get("latency_ms") or 0.0),
        "status_code": int(get("status_code") or 200),
        "fallback_reason": get("fallback_reason"),
        "provenance_json": None if provenance is None else orjson.dumps(provenance, default=str).decode(),
        "experiment": get("experiment"),
        "exposure_json": None if exposure is None else orjson.dumps(exposure, default=str).decode(),
        "exact_scores": exact,
        "model_name_missing": model_name is None,
    }


# ---------------------------------------------------------------------------------------------------- fast encoder
# The serving process encodes one message per response, so version 2 of the schema is written by hand here (Avro
# binary: zig-zag varints, length-prefixed UTF-8, little-endian IEEE floats, blocked arrays, union branch indexes):
# about a third of fastavro's generic writer's time for these records. ``SchemaSet.decode`` reads the bytes (tested
# field by field against the generic path).


def _long(n: int) -> bytes:
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n & ~0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SMALL = [_long(i) for i in range(4096)]
_NULL, _SOME = b"\x00", b"\x02"
_FALSE, _TRUE = b"\x00", b"\x01"
_FLOAT32_MAX = 3.4028234663852886e38


def _varint(n: int) -> bytes:
    return _SMALL[n] if 0 <= n < 4096 else _long(n)


def _text(value: str) -> bytes:
    data = value.encode("utf-8")
    return _varint(len(data)) + data


def _opt_text(value: str | None) -> bytes:
    return _NULL if value is None else _SOME + _text(value)


def _opt_json(value: Any) -> bytes:
    if value is None:
        return _NULL
    data = orjson.dumps(value, default=str)
    return _SOME + _varint(len(data)) + data


def _ids(values: Sequence[str]) -> bytes:
    if not values:
        return b"\x00"
    return _varint(len(values)) + b"".join(_text(str(v)) for v in values) + b"\x00"


def _float32_range(values: Sequence[float]) -> list[float]:
    """Values beyond float32's range as infinities of their sign (what the single-precision ``scores`` can hold)."""
    return [v if abs(v) <= _FLOAT32_MAX or v != v else math.copysign(math.inf, v) for v in values]


def encode_served(record: RequestLogRecord, header: bytes) -> bytes:
    """``header`` + the Avro body (schema ``recommendation_served`` v2) of a server-built request-log record."""
    ts = record.timestamp
    seconds = (ts if ts.tzinfo else ts.replace(tzinfo=UTC)).timestamp()
    scores = record.scores
    n = len(scores)
    if n:
        try:
            packed = struct.pack(f"<{n}f", *scores)
        except OverflowError:  # beyond float32: infinite in ``scores``; ``exact_scores`` keeps the value
            packed = struct.pack(f"<{n}f", *_float32_range(scores))
        floats = _varint(n) + packed + b"\x00"
        doubles = _varint(n) + struct.pack(f"<{n}d", *scores) + b"\x00"
    else:
        floats = doubles = b"\x00"
    name, version = record.model_name, record.model_version
    return b"".join((
        header,
        _text(record.request_id),
        _opt_text(record.user_id),
        _ids(record.item_ids),
        floats,
        _text("" if name is None else name),
        _NULL if version is None else _SOME + _long(int(version)),
        _TRUE if record.is_fallback else _FALSE,
        _opt_text(record.variant),
        struct.pack("<d", seconds),
        _text(record.endpoint),
        _opt_text(record.item_id),
        _opt_text(record.alias),
        struct.pack("<d", float(record.latency_ms)),
        _long(int(record.status_code)),
        _opt_text(record.fallback_reason),
        _opt_json(record.provenance),
        _opt_text(record.experiment),
        _opt_json(record.exposure),
        doubles,
        _TRUE if name is None else _FALSE,
    ))  # fmt: skip


def request_log_record(served: Mapping[str, Any], where: str = "message") -> dict[str, Any]:
    """A decoded ``recommendation_served`` record as a request-log row, validated by the store's own rules
    (:func:`tastebud.store.schema.request_log_row`).

    A version 1 message (no request-log fields) gets the defaults of version 2: endpoint ``recommend``, status
    200, no provenance.

    Raises:
        DataValidationError: a field is missing or invalid, or a JSON field is not a JSON object (named).
    """
    from tastebud.store.schema import request_log_row

    def _json(key: str) -> dict[str, Any] | None:
        text = served.get(key)
        if text is None:
            return None
        try:
            value = orjson.loads(text)
        except (TypeError, ValueError) as err:
            raise DataValidationError(f"{where}: field {key!r} is not valid JSON ({err})") from None
        if not isinstance(value, dict):
            raise DataValidationError(f"{where}: field {key!r} is {type(value).__name__} JSON, expected an object")
        return value

    exact = served.get("exact_scores") or []
    scores = exact if exact else served.get("scores") or []
    if len(scores) != len(served.get("item_ids") or []):
        raise DataValidationError(
            f"{where}: {len(scores)} scores for {len(served.get('item_ids') or [])} item_ids (they must align)"
        )
    timestamp = served.get("timestamp")
    if not isinstance(timestamp, int | float) or not math.isfinite(timestamp) or timestamp < 0:
        raise DataValidationError(f"{where}: field 'timestamp' {timestamp!r} is not epoch seconds")
    record = {
        "request_id": served.get("request_id"),
        "timestamp": datetime.fromtimestamp(float(timestamp), UTC),
        "endpoint": served.get("endpoint") or "recommend",
        "user_id": served.get("user_id"),
        "item_id": served.get("item_id"),
        "model_name": None if served.get("model_name_missing") else served.get("model_name"),
        "model_version": served.get("model_version"),
        "alias": served.get("alias"),
        "item_ids": list(served.get("item_ids") or []),
        "scores": list(scores),
        "latency_ms": served.get("latency_ms", 0.0),
        "status_code": served.get("status_code", 200),
        "is_fallback": served.get("is_fallback", False),
        "fallback_reason": served.get("fallback_reason"),
        "variant": served.get("variant"),
        "provenance": _json("provenance_json"),
        "experiment": served.get("experiment"),
        "exposure": _json("exposure_json"),
    }
    if not record["request_id"]:
        raise DataValidationError(f"{where}: field 'request_id' is empty")
    return request_log_row(record)  # the store's own checks, so a bad record is refused here with its reason


def handle_served_messages(
    payloads: Sequence[bytes], *, rules: EventRules = DEFAULT_RULES, schemas: SchemaSet | None = None
) -> tuple[list[tuple[int, RequestLogRecord]], list[tuple[int, Rejected]]]:
    """Decode and validate messages of the served topic.

    Returns:
        ``(index, RequestLogRecord)`` for the good ones (validated here, so the store writes them on its fast path)
        and ``(index, Rejected)`` for the others (not a Tastebud message, another schema, a bad field) with the
        reason.
    """
    from tastebud.store.schema import RequestLogRecord as record_type

    schemas = schemas or default_schemas()
    good: list[tuple[int, RequestLogRecord]] = []
    bad: list[tuple[int, Rejected]] = []
    for i, data in enumerate(payloads):
        size = len(data) if isinstance(data, bytes | bytearray | memoryview) else 0
        if size > rules.max_message_bytes:
            reason = f"served message of {size} bytes is larger than the limit of {rules.max_message_bytes} bytes"
            bad.append((i, Rejected(reason, data, "too_large")))
            continue
        try:
            decoded = schemas.decode(data)
        except MessageError as err:
            bad.append((i, Rejected(f"served topic: {err}", data, err.code)))
            continue
        rid = decoded.record.get("request_id")
        rid = rid if isinstance(rid, str) and len(rid) <= rules.max_id_length else None
        if decoded.name != SCHEMA:
            reason = f"served topic: a {decoded.name} message, expected {SCHEMA}"
            bad.append((i, Rejected(reason, data, "wrong_schema")))
            continue
        where = f"{SCHEMA} v{decoded.version} message (request_id {rid!r})"
        try:
            good.append((i, record_type(**request_log_record(decoded.record, where))))
        except DataValidationError as err:
            bad.append((i, Rejected(str(err), data, "invalid_record", rid)))
    return good, bad


class ServedPublisher:
    """Publishes request-log records as ``recommendation_served`` events; a drop-in for the request-log writer.

    Args:
        bootstrap_servers: ``host:port[,host:port]``.
        topic: the served topic.
        buffer: most records waiting in the local queue (broker slow or away); more are dropped and counted.
        timeout_s: how long a record may wait for the broker (retried meanwhile) before it counts as failed.
        config: librdkafka settings overriding the defaults below.
        metrics: :class:`tastebud.monitoring.metrics.ServingMetrics` whose ``stream.produced`` /
            ``stream.produce_errors`` (by topic) and ``request_log_dropped`` count delivered, failed and given-up
            records (``None``: counted in attributes only).
        schemas: message schemas (the shipped ones by default).

    ``store`` is ``None``: this writer does not hold a store (``/trace`` reads the one the app opens).
    """

    store: Any = None

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        topic: str = "tastebud.recommendations-served",
        buffer: int = 100_000,
        timeout_s: float = 300.0,
        config: Mapping[str, Any] | None = None,
        metrics: Any = None,
        schemas: SchemaSet | None = None,
        create_topic: bool = True,
    ) -> None:
        from confluent_kafka import Producer  # Kafka is optional: imported only when a publisher is built

        if buffer < 1 or timeout_s <= 0:
            raise StreamError(f"ServedPublisher needs buffer >= 1 and timeout_s > 0; got {buffer}, {timeout_s}")
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.metrics = metrics
        self.schemas = schemas or default_schemas()
        self.timeout_s = timeout_s
        from tastebud.store.schema import RequestLogRecord

        #: records of this type (the server's own) go through :func:`encode_served` when it writes this version
        self._fast_type: type | None = RequestLogRecord if self.schemas.latest(SCHEMA).version == 2 else None
        self._sv = self.schemas.latest(SCHEMA)
        self._header = bytes((MAGIC, SCHEMA_IDS[SCHEMA], self._sv.version))
        self._producer = Producer(
            {
                "log_level": 2,
                "logger": logging.getLogger("tastebud.stream.kafka"),
                # Not librdkafka's idempotent mode: its sequence state does not survive a broker that lost its
                # log (Tansu with memory storage, a replaced single broker), and the producer then stalls. A retry
                # that duplicates a message is harmless: the store keeps the first row of a request_id.
                "enable.idempotence": False,
                "acks": "all",
                "retries": 2_147_483_647,  # until message.timeout.ms
                "message.timeout.ms": int(timeout_s * 1000),
                "queue.buffering.max.messages": buffer,
                "queue.buffering.max.kbytes": 1_048_576,
                "linger.ms": 200,  # fewer broker wake-ups: at a few hundred records/s, 5 ms cost ~60 µs each
                "batch.num.messages": 10_000,
                "compression.type": "none",
                "socket.connection.setup.timeout.ms": 3_000,
                "reconnect.backoff.ms": 100,
                "reconnect.backoff.max.ms": 2_000,
                **dict(config or {}),
                "bootstrap.servers": bootstrap_servers,
                "error_cb": self._on_error,
                # Reports only for failures: successes are counted in bulk by the delivery thread, with no Python
                # call per message.
                "delivery.report.only.error": True,
                "on_delivery": self._on_delivery,
            }
        )
        self._lock = threading.Lock()
        #: records queued, acknowledged by the broker, failed (not taken in time) and dropped (queue full)
        self.submitted = self.delivered = self.failed = self.dropped = 0
        if metrics is not None:
            self._produced = metrics.stream.produced.labels(topic)
            self._produce_errors = metrics.stream.produce_errors.labels(topic)
        self._broker_down = False
        self._last_warning = -_WARN_INTERVAL_S
        self._stop = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None
        #: whether the delivery thread still has to make sure the topic exists (a broker that does not create
        #: topics on first use would otherwise hold every record until it times out)
        self._topic_pending = create_topic

    @classmethod
    def from_settings(cls, settings: Any, **kwargs: Any) -> ServedPublisher:
        """A publisher for ``settings.stream`` (raises :class:`StreamError` without ``bootstrap_servers``)."""
        stream = settings.stream
        if not stream.bootstrap_servers:
            raise StreamError("no Kafka broker configured: set TASTEBUD_STREAM__BOOTSTRAP_SERVERS (host:port)")
        return cls(
            stream.bootstrap_servers,
            topic=stream.served_topic,
            buffer=stream.served_buffer,
            timeout_s=stream.served_timeout_s,
            **kwargs,
        )

    # --- the writer interface ------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the thread that serves delivery reports (once)."""
        if self._thread is None and not self._closed:
            self._thread = threading.Thread(target=self._run, name="tastebud-served-publisher", daemon=True)
            self._thread.start()

    def submit(self, record: Any) -> bool:
        """Encode a record and queue it for the broker; never blocks. False: dropped (queue full or closed)."""
        if self._closed:
            return False
        if type(record) is self._fast_type:
            data = encode_served(cast("RequestLogRecord", record), self._header)
        else:  # any mapping with the request-log fields, or other schemas: the generic writer
            buf = io.BytesIO()
            buf.write(self._header)
            fastavro.schemaless_writer(buf, self._sv.parsed, served_message(record))
            data = buf.getvalue()
        try:
            self._producer.produce(self.topic, data)
        except BufferError:
            self.dropped += 1
            self._warn("served-event buffer full (%d records waiting for the broker); record dropped", len(self))
            return False
        self.submitted += 1
        return True

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued record is delivered or failed; True when none is left."""
        left = self._producer.flush(timeout)
        self._count_delivered()
        return left == 0

    def close(self, timeout: float = 10.0) -> bool:
        """Stop taking records, deliver what is queued (up to ``timeout``), stop the thread; True when all went."""
        self._closed = True
        left = self._producer.flush(timeout)
        self._count_delivered()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        if left:
            log.error("served-event publisher closed with %d records undelivered (broker %s)", left,
                      self.bootstrap_servers)  # fmt: skip
        return left == 0

    def __len__(self) -> int:
        """Records queued and not yet delivered or failed."""
        return len(self._producer)

    # --- internals -----------------------------------------------------------------------------------------------
    def _run(self) -> None:
        next_try = 0.0
        while not self._stop.is_set():
            if self._topic_pending and time.monotonic() >= next_try:
                self._ensure_topic()
                next_try = time.monotonic() + _TOPIC_RETRY_S
            self._producer.poll(_POLL_S)
            self._count_delivered()

    def _ensure_topic(self) -> None:
        """Create the served topic when it is missing (off the request path; retried while the broker is away)."""
        from tastebud.stream.producer import ensure_topics

        try:
            created = ensure_topics(self.bootstrap_servers, [self.topic], timeout=3.0)
        except StreamError as err:
            # its own line every _TOPIC_RETRY_S at most (not through _warn, whose interval the buffer shares)
            log.warning("served topic %s not checked yet (%s); retrying in %.0f s", self.topic, err, _TOPIC_RETRY_S)
            return
        self._topic_pending = False
        if created:
            log.info("created the served topic %s on %s", self.topic, self.bootstrap_servers)

    def _count_delivered(self) -> None:
        """Count the records acknowledged since the last call: submitted, not failed, no longer queued."""
        with self._lock:
            done = self.submitted - self.failed - len(self._producer)
            new = done - self.delivered
            if new <= 0:
                return
            self.delivered = done
        self._broker_down = False
        if self.metrics is not None:
            self._produced.inc(new)

    def _on_delivery(self, err: Any, _msg: Any) -> None:
        if err is None:  # only with delivery.report.only.error overridden: counted by _count_delivered
            return
        with self._lock:
            self.failed += 1
        if self.metrics is not None:
            self._produce_errors.inc()
            self.metrics.request_log_dropped.inc()
        self._warn("served event not delivered to %s (%s); its request-log record is lost", self.topic, err)

    def _on_error(self, err: Any) -> None:
        from confluent_kafka import KafkaError

        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            if not self._broker_down:  # once per outage
                log.warning("served-event publisher: broker %s unreachable; records wait in the queue (up to %g s)",
                            self.bootstrap_servers, self.timeout_s)  # fmt: skip
            self._broker_down = True
        elif err.fatal():
            log.error("served-event publisher: fatal Kafka error: %s", err)
        else:
            log.debug("served-event publisher: Kafka error: %s", err)

    def _warn(self, message: str, *args: Any) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last_warning < _WARN_INTERVAL_S:
                return
            self._last_warning = now
        log.warning(message, *args)


__all__ = ["ServedPublisher", "handle_served_messages", "request_log_record", "served_message"]
