"""Data layer: readers, the Dataset type, validation, preparation, splits, snapshots and synthetic data."""

from tastebud.data.dataset import Dataset, IdMap

__all__ = ["Dataset", "IdMap"]
