"""Monitoring: Prometheus metrics (``metrics``), drift (``drift``), KPIs and availability (``kpis``), replay
evaluation (``replay``) and reports (``report``).

Only the metrics are imported here: serving imports this package on its start-up path, and the analysis modules
pull in polars and matplotlib, so import them by module (``from tastebud.monitoring.drift import compute_drift``).
"""

from tastebud.monitoring.metrics import DriftMetrics, ServingMetrics, StreamMetrics

__all__ = ["DriftMetrics", "ServingMetrics", "StreamMetrics"]
