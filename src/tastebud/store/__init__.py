"""The event store and request log: the only package that speaks SQL.

SQLite (WAL mode) in the home directory by default, PostgreSQL when ``settings.store.url`` names one::

    store = create_store(settings)
    store.init_schema()
    writer = RequestLogWriter(store, maxsize=settings.serving.request_log_queue)
    writer.start()
    writer.submit({"request_id": "...", "timestamp": datetime.now(UTC), "endpoint": "recommend", ...})
    writer.submit(RequestLogRecord("...", datetime.now(UTC), "recommend", ...))  # the server's own, unvalidated
    writer.close()
"""

from tastebud.store.schema import (
    RequestLogRecord,
    dead_letters,
    events,
    experiment_changes,
    experiments,
    locks,
    metadata,
    request_logs,
    retrains,
)
from tastebud.store.sql import SUPPORTED_BACKENDS, Store, create_store
from tastebud.store.writer import RequestLogWriter

__all__ = [
    "SUPPORTED_BACKENDS",
    "RequestLogRecord",
    "RequestLogWriter",
    "Store",
    "create_store",
    "dead_letters",
    "events",
    "experiment_changes",
    "experiments",
    "locks",
    "metadata",
    "request_logs",
    "retrains",
]
