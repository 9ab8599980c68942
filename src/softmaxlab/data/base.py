"""The in-memory dataset type and the dataset registry.

Every dataset, whatever its source, becomes an :class:`ImageData`: train / validation / test
splits as uint8 NCHW tensors with integer labels, the class names, and optionally a
two-level hierarchy (coarse labels). Keeping uint8 in memory is 4x smaller than float32 and
lets the loader augment and normalise whole batches at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from pydantic import Field, ValidationInfo, field_validator
from torch import Tensor

from softmaxlab.registry import Options, Registry

#: Datasets by name: ``factory(options) -> ImageData``, each registered with its options
#: (a subclass of :class:`DataOptions`), which become its ``data.*`` config keys.
DATASETS: Registry[Callable[..., ImageData]] = Registry("dataset")

#: The largest ``data.image_size``, in px.
MAX_IMAGE_SIZE = 4096


#: The options of :class:`DataOptions` that only the training loader reads: two configs that
#: differ in them alone load the same images.
AUGMENTATION_OPTIONS = frozenset({"crop_padding", "flip", "random_resized_crop", "rrc_scale", "rrc_ratio"})


class DataOptions(Options):
    """The ``data.*`` options of every dataset: image size, the seed of the data, augmentation."""

    # Images are generated / resized (square) to this side. Unset = the dataset's own size, written into
    # the run's config.yaml once the data is loaded: npz as stored (the shorter side when not square),
    # cifar10 / cifar100 and shapes 32, imagefolder 64 (its images differ in size).
    # At most MAX_IMAGE_SIZE: one 4096 px RGB image is 50 MB as uint8 and 200 MB as float32, so a larger
    # side is a typo (100000 would ask for 30 GB per image) rather than a study.
    image_size: int | None = Field(None, ge=8, le=MAX_IMAGE_SIZE)
    seed: int = 0  # seed of the data itself (generation, splits), separate from train.seed
    # Quick checks on any dataset: train on a stratified subset of this many training images (each class
    # in its share, at least one image per class; seeded by data.seed), taken after the validation split,
    # which stays whole, as does the test split. Unset = every training image. shapes' train_size instead
    # sets how many images are generated.
    max_train_images: int | None = Field(None, ge=1)
    crop_padding: int = Field(4, ge=0)  # random-crop augmentation: pad by this many pixels
    flip: bool = True  # random horizontal flips
    # Random-resized crop (for larger images, e.g. 64 px and up): crop a box covering a fraction of the
    # image area in rrc_scale, with aspect ratio (w / h) in rrc_ratio, and resize it back; replaces the
    # padded crop above (crop_padding is then unused).
    random_resized_crop: bool = False
    rrc_scale: tuple[float, float] = (0.35, 1.0)
    rrc_ratio: tuple[float, float] = (3 / 4, 4 / 3)

    @field_validator("rrc_scale", "rrc_ratio")
    @classmethod
    def _range(cls, v: tuple[float, float], info: ValidationInfo) -> tuple[float, float]:
        # Finite too: a ratio of .inf passes "low <= high" but makes crops of zero height.
        upper = 1.0 if info.field_name == "rrc_scale" else math.inf
        if not (all(math.isfinite(b) for b in v) and 0 < v[0] <= v[1] <= upper):
            bound = "0 < low <= high <= 1" if upper == 1.0 else "0 < low <= high, both finite"
            raise ValueError(f"must be [low, high] with {bound}, got {list(v)}")
        return v


class OnDiskOptions(DataOptions):
    """Options of the datasets read from files."""

    # cifar10 / cifar100: the folder holding (or to receive) cifar-10-batches-py/ or cifar-100-python/;
    # npz: the .npz file; imagefolder: the folder of class folders.
    root: str | None = None
    # Share of the training images held out for validation when there is no official validation split
    # (stratified by class, seeded by data.seed).
    val_fraction: float = Field(0.1, gt=0, lt=1)


class HoldoutOptions(OnDiskOptions):
    """Options of the file datasets that may come without a test split (npz, imagefolder)."""

    test_fraction: float = Field(0.2, gt=0, lt=1)  # without a test split: share of all images held out for testing


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
    # One line each about what loading did that the user should know (where a cache was filled, its size);
    # the run prints them. Data never prints itself, so a library caller decides where they go.
    notes: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split_sizes(self) -> str:
        """``"5,400 train / 600 val / 2,000 test images"``: the run's first line shows it."""
        return f"{len(self.train):,} train / {len(self.val):,} val / {len(self.test):,} test images"

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W)."""
        c, h, w = self.train.x.shape[1:]
        return int(c), int(h), int(w)

    def channel_stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of the training images, on the [0, 1] scale.

        Sums in float64 over chunks of images, so a large dataset never exists as float32
        all at once (the uint8 images of the full Intel set at 150 px are about 1 GB).
        """
        x = self.train.x
        c = x.shape[1]
        total = torch.zeros(c, dtype=torch.float64, device=x.device)
        squares = torch.zeros(c, dtype=torch.float64, device=x.device)
        chunk = max(1, 2**22 // max(1, x[0].numel()))  # about 32 MB of float64 at a time
        for lo in range(0, x.shape[0], chunk):
            part = x[lo : lo + chunk].to(torch.float64).div_(255)
            total += part.sum(dim=(0, 2, 3))
            squares += part.square().sum(dim=(0, 2, 3))
        n = x.shape[0] * x.shape[2] * x.shape[3]
        mean = total / n
        var = (squares - n * mean.square()) / max(n - 1, 1)  # unbiased, as torch.std
        std = var.clamp_min(0).sqrt().clamp_min(1e-3)
        return mean.float().tolist(), std.float().tolist()
