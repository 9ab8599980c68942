"""Datasets by name (:data:`DATASETS`) and the fast in-memory loader.

Importing this package registers every dataset.
"""

from __future__ import annotations

from softmaxlab.config import DataConfig
from softmaxlab.data import shapes  # noqa: F401  (registers the datasets)
from softmaxlab.data.base import DATASETS, ImageData, Split
from softmaxlab.data.loader import Normalize, TensorLoader, random_crop, random_flip


def load_data(cfg: DataConfig) -> ImageData:
    """Build the dataset named ``cfg.name`` from the registry."""
    return DATASETS.create(cfg.name, cfg)


__all__ = ["DATASETS", "ImageData", "Normalize", "Split", "TensorLoader", "load_data", "random_crop", "random_flip"]
