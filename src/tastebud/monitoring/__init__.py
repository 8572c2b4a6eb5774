"""Monitoring: Prometheus metrics (drift, KPIs and replay evaluation join later)."""

from tastebud.monitoring.metrics import ServingMetrics

__all__ = ["ServingMetrics"]
