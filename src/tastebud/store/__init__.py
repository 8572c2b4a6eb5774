"""The event store, request log, experiments, retrain locks and history, and the registry's decision log: the only
package that speaks SQL.

SQLite (WAL mode) in the home directory by default, PostgreSQL when ``settings.store.url`` names one::

    store = create_store(settings)
    store.init_schema()  # upgrades the schema to the newest migration (tastebud.store.migrate)
    writer = RequestLogWriter(store, maxsize=settings.serving.request_log_queue)
    writer.start()
    writer.submit({"request_id": "...", "timestamp": datetime.now(UTC), "endpoint": "recommend", ...})
    writer.submit(RequestLogRecord("...", datetime.now(UTC), "recommend", ...))  # the server's own, unvalidated
    writer.close()
"""

from tastebud.store.schema import (
    RequestLogRecord,
    dead_letters,
    decisions,
    events,
    experiment_changes,
    experiments,
    locks,
    metadata,
    request_logs,
    retrains,
    trigger_state,
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
    "decisions",
    "events",
    "experiment_changes",
    "experiments",
    "locks",
    "metadata",
    "request_logs",
    "retrains",
    "trigger_state",
]
