"""Datasets by name (:data:`DATASETS`) and the fast in-memory loader.

Importing this package registers every dataset: ``shapes`` (embedded, generated),
``cifar10`` and ``cifar100`` (official files), ``npz`` (NumPy arrays) and ``imagefolder``
(class folders of images, decoded once into a cache). Which ``data.*`` keys apply to which:

=====================================================  ==========================================
key                                                    datasets
=====================================================  ==========================================
``num_classes``, ``train_size``, ``val_size``,         shapes
``test_size``
``root``                                               cifar10, cifar100, npz, imagefolder
``download``                                           cifar10, cifar100
``labels``                                             cifar100
``val_fraction``                                       cifar10, cifar100, npz, imagefolder (no val folder)
``test_fraction``                                      npz without x_test, imagefolder without a test folder
``skip_corrupt``, ``cache_dir``                        imagefolder
``image_size``, ``seed``, ``crop_padding``, ``flip``   all
=====================================================  ==========================================
"""

from __future__ import annotations

from softmaxlab.config import DataConfig
from softmaxlab.data import shapes  # noqa: F401  (registers it first: the default is listed first)

# isort: split
from softmaxlab.data import arrays, cifar, imagefolder  # noqa: F401  (register the on-disk datasets)
from softmaxlab.data.base import DATASETS, ImageData, Split
from softmaxlab.data.loader import Normalize, TensorLoader, random_crop, random_flip
from softmaxlab.data.spec import parse_data_spec


def load_data(cfg: DataConfig) -> ImageData:
    """Build the dataset named ``cfg.name`` from the registry."""
    return DATASETS.create(cfg.name, cfg)


__all__ = [
    "DATASETS",
    "ImageData",
    "Normalize",
    "Split",
    "TensorLoader",
    "load_data",
    "parse_data_spec",
    "random_crop",
    "random_flip",
]
