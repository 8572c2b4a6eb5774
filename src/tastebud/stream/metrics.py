"""Prometheus metrics of the event path: declared in :mod:`tastebud.monitoring.metrics`, re-exported here.

Every metric lives in that one module; this name stays importable so that the stream code and its callers need
not change.
"""

from __future__ import annotations

from tastebud.monitoring.metrics import BATCH_BUCKETS, CONSUMER_STATES, StreamMetrics

__all__ = ["BATCH_BUCKETS", "CONSUMER_STATES", "StreamMetrics"]
