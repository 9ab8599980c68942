"""Datasets by name (:data:`DATASETS`) and the fast in-memory loader.

Importing this package registers every dataset: ``shapes`` (embedded, generated),
``cifar10`` and ``cifar100`` (official files), ``npz`` (NumPy arrays) and ``imagefolder``
(class folders of images, decoded once into a cache). Each registers its own options
(``softmaxlab list datasets`` shows them); those of every dataset (image size, the data's
seed, augmentation) are :class:`~softmaxlab.data.base.DataOptions`.
"""

from __future__ import annotations

import json

from softmaxlab.data import shapes  # noqa: F401  (registers it first: the default is listed first)

# isort: split
from softmaxlab.data import arrays, cifar, imagefolder  # noqa: F401  (register the on-disk datasets)
from softmaxlab.data.base import AUGMENTATION_OPTIONS, DATASETS, DataOptions, ImageData, Split
from softmaxlab.data.common import limit_train, user_cache_dir
from softmaxlab.data.loader import Normalize, TensorLoader, random_crop, random_flip
from softmaxlab.data.spec import parse_data_spec
from softmaxlab.registry import NamedOptions


def load_data(cfg: NamedOptions) -> ImageData:
    """Build the dataset named ``cfg.name`` from the registry, with ``cfg`` (the ``data``
    config section, an instance of the dataset's options) as its options; then, with
    ``data.max_train_images``, keep a stratified subset of its training split (here, once for
    every dataset, rather than in each of them)."""
    data = DATASETS.create(cfg.name, cfg)
    return limit_train(data, getattr(cfg, "max_train_images", None), getattr(cfg, "seed", 0))


def loading_key(cfg: NamedOptions) -> str:
    """The options of ``cfg`` (a ``data`` section) that decide what :func:`load_data`
    returns, as sorted JSON: equal keys, equal images (the loader's augmentation options
    are left out, as they do not change what is loaded)."""
    return json.dumps(cfg.model_dump(mode="json", exclude=set(AUGMENTATION_OPTIONS)), sort_keys=True)


__all__ = [
    "DATASETS",
    "DataOptions",
    "ImageData",
    "Normalize",
    "Split",
    "TensorLoader",
    "load_data",
    "loading_key",
    "parse_data_spec",
    "random_crop",
    "random_flip",
    "user_cache_dir",
]
