"""Event streaming: Avro schemas, validation shared by HTTP and Kafka, ingest, the Kafka consumer and producer, replay.

The pure parts (schemas, handlers, ingest) import no Kafka client; ``consumer``, ``producer`` and ``replay`` import
confluent-kafka or httpx only when a client is built.
"""

from tastebud.stream.handlers import (
    EVENT_KINDS,
    INTERACTION_KINDS,
    Event,
    EventRules,
    Rejected,
    handle_message,
    handle_messages,
    normalise_event,
    normalise_events,
)
from tastebud.stream.ingest import IngestResult, ingest_events
from tastebud.stream.metrics import StreamMetrics
from tastebud.stream.schemas import MessageError, SchemaSet, decode, default_schemas, encode

__all__ = [
    "EVENT_KINDS",
    "INTERACTION_KINDS",
    "Event",
    "EventRules",
    "IngestResult",
    "MessageError",
    "Rejected",
    "SchemaSet",
    "StreamMetrics",
    "decode",
    "default_schemas",
    "encode",
    "handle_message",
    "handle_messages",
    "ingest_events",
    "normalise_event",
    "normalise_events",
]
