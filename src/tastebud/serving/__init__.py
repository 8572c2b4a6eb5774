"""The online serving API: FastAPI app, recommendation engine, hot-swappable model holder, provenance."""

from tastebud.serving.app import create_app, create_app_from_env
from tastebud.serving.engine import Engine, Filters, Result
from tastebud.serving.holder import ModelHolder, Served

__all__ = ["Engine", "Filters", "ModelHolder", "Result", "Served", "create_app", "create_app_from_env"]
