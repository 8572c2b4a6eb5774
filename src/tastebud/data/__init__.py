"""Data layer: readers, the Dataset type, validation, preparation, splits, snapshots and synthetic data."""

from tastebud.data.dataset import Dataset, IdMap
from tastebud.data.fetch import fetch_dataset
from tastebud.data.io import load_dataset, save_dataset
from tastebud.data.prepare import PrepareConfig, prepare
from tastebud.data.readers import detect_format, read_dataset
from tastebud.data.split import Split, make_split
from tastebud.data.synthetic import generate_synthetic

__all__ = [
    "Dataset",
    "IdMap",
    "PrepareConfig",
    "Split",
    "detect_format",
    "fetch_dataset",
    "generate_synthetic",
    "load_dataset",
    "make_split",
    "prepare",
    "read_dataset",
    "save_dataset",
]
