"""Tastebud: a recommender system from raw interactions to served, monitored recommendations."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tastebud")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
