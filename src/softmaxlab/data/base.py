"""The in-memory dataset type and the dataset registry.

Every dataset, whatever its source, becomes an :class:`ImageData`: train / validation / test
splits as uint8 NCHW tensors with integer labels, the class names, and optionally a
two-level hierarchy (coarse labels). Keeping uint8 in memory is 4x smaller than float32 and
lets the loader augment and normalise whole batches at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from softmaxlab.registry import Registry

DATASETS: Registry[Callable[..., ImageData]] = Registry("dataset")


@dataclass
class Split:
    """One split: images ``x`` (N, C, H, W) uint8 and labels ``y`` (N,) int64."""

    x: Tensor
    y: Tensor
    coarse: Tensor | None = None  # (N,) int64 coarse labels when the data has a hierarchy

    def __post_init__(self) -> None:
        if self.x.dtype != torch.uint8 or self.x.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {self.x.dtype} {tuple(self.x.shape)}")
        if self.y.shape != (self.x.shape[0],):
            raise ValueError(f"labels must have shape ({self.x.shape[0]},), got {tuple(self.y.shape)}")

    def __len__(self) -> int:
        return self.x.shape[0]


@dataclass
class ImageData:
    """A dataset ready for training: splits, class names and an optional hierarchy."""

    train: Split
    val: Split
    test: Split
    classes: list[str]
    coarse_classes: list[str] | None = None
    coarse_of: Tensor | None = None  # (K,) int64: coarse class of each fine class

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W)."""
        c, h, w = self.train.x.shape[1:]
        return int(c), int(h), int(w)

    def channel_stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of the training images, on the [0, 1] scale."""
        x = self.train.x.float().div_(255)
        dims = (0, 2, 3)
        mean = x.mean(dim=dims)
        std = x.std(dim=dims).clamp_min(1e-3)
        return mean.tolist(), std.tolist()
