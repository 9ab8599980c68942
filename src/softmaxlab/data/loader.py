"""A fast loader over in-memory uint8 tensors with batched augmentation.

Why not ``torch.utils.data.DataLoader``: for data that already sits in memory, per-sample
``__getitem__`` calls and collation dominate the cost of a small CNN. Here a batch is one
fancy-indexing gather from the uint8 tensor; random crops and flips are done for the whole
batch at once on the uint8 data (4x less memory traffic than float), and normalisation is a
single fused multiply-add to float32. The shuffling and augmentation randomness comes from a
generator seeded by ``(seed, epoch)``, so any epoch can be replayed exactly, e.g. on resume.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def crop_offsets(batch: int, padding: int, generator: torch.Generator) -> Tensor:
    """(2, B) random crop offsets (dy, dx) in [0, 2 * padding], drawn on the generator's device."""
    return torch.randint(0, 2 * padding + 1, (2, batch), generator=generator, device=generator.device)


def crop_at(x: Tensor, padding: int, offsets: Tensor) -> Tensor:
    """Crops of a batch at given offsets: zero-pad by ``padding`` and cut out the original size.

    x: (B, C, H, W), offsets: (2, B) -> (B, C, H, W). Implemented as a strided view of every
    window of the padded batch, (B, C, 2p+1, 2p+1, H, W), from which one window per image
    is picked: on uint8 CPU batches this measured about 10x faster than a gather with
    per-pixel row and column indices (3 ms against 30 ms for 128 x 3 x 32 x 32, p = 4).
    """
    if padding == 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))  # (B, C, H + 2p, W + 2p)
    offsets = offsets.to(x.device)
    windows = padded.unfold(2, h, 1).unfold(3, w, 1)  # (B, C, 2p+1, 2p+1, H, W), a view
    batch = torch.arange(b, device=x.device)
    return windows.permute(0, 2, 3, 1, 4, 5)[batch, offsets[0], offsets[1]]  # (B, C, H, W)


def random_crop(x: Tensor, padding: int, generator: torch.Generator) -> Tensor:
    """Random crops of a (B, C, H, W) batch with zero padding ``padding`` (see :func:`crop_at`)."""
    if padding == 0:
        return x
    return crop_at(x, padding, crop_offsets(x.shape[0], padding, generator))


def flip_at(x: Tensor, flip: Tensor) -> Tensor:
    """Flip horizontally the images of a (B, C, H, W) batch where the (B,) mask ``flip`` is true."""
    return torch.where(flip.to(x.device)[:, None, None, None], x.flip(-1), x)


def random_flip(x: Tensor, generator: torch.Generator) -> Tensor:
    """Flip each image of a (B, C, H, W) batch horizontally with probability 1/2."""
    return flip_at(x, torch.rand(x.shape[0], generator=generator, device=generator.device) < 0.5)


def resized_crop_boxes(
    batch: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator,
) -> Tensor:
    """(B, 4) random boxes (cx, cy, w, h) in units of the image side, as RandomResizedCrop draws them.

    Area fraction a ~ U(scale), aspect r = w / h log-uniform in ``ratio``, so w = sqrt(a r)
    and h = sqrt(a / r), each clamped to 1 (torchvision retries instead; clamping keeps the
    batch vectorised and only matters for extreme ratios); the centre is uniform over the
    positions where the box fits.
    """
    u = torch.rand(4, batch, generator=generator, device=generator.device, dtype=torch.float64)
    area = scale[0] + (scale[1] - scale[0]) * u[0]
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[1]
    w = (area * log_r.exp()).sqrt().clamp(max=1.0)
    h = (area / log_r.exp()).sqrt().clamp(max=1.0)
    cx = w / 2 + (1 - w) * u[2]
    cy = h / 2 + (1 - h) * u[3]
    return torch.stack([cx, cy, w, h], dim=1).float()


def resized_crop_at(x: Tensor, boxes: Tensor) -> Tensor:
    """Crop each image of a (B, C, H, W) batch to its box and resize it back to H x W (bilinear).

    One ``affine_grid`` + ``grid_sample`` for the whole batch (no per-image Python loop):
    the box (cx, cy, w, h) in [0, 1] units maps the output grid [-1, 1]^2 onto
    [2 cx - 1 - w, 2 cx - 1 + w] x [2 cy - 1 - h, 2 cy - 1 + h]. Samples within half an
    output pixel of the box edge interpolate towards the pixels just outside it (a crop of
    the continuous image; torchvision crops first and clamps there). Returns float32 in the
    input's value range.
    """
    b = x.shape[0]
    boxes = boxes.to(x.device)
    theta = torch.zeros(b, 2, 3, device=x.device)
    theta[:, 0, 0], theta[:, 0, 2] = boxes[:, 2], 2 * boxes[:, 0] - 1
    theta[:, 1, 1], theta[:, 1, 2] = boxes[:, 3], 2 * boxes[:, 1] - 1
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)


def resize(x: Tensor, size: int) -> Tensor:
    """A (B, C, H, W) batch resized to (B, C, size, size), float32 in the input's value range.

    Bilinear with antialiasing (a triangle filter widened by the scale factor when shrinking,
    as PIL and torchvision resize), so a downscaled image is an average of its pixels rather
    than a subsample of them. Resizing before :class:`Normalize` gives the same result as after
    it: both are affine per channel and the filter weights sum to 1.
    """
    return F.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)


class Normalize:
    """uint8 [0, 255] -> float32 ``(x / 255 - mean) / std`` per channel, in one multiply-add.

    With ``channels_last`` the result is laid out NHWC in memory (same shape), matching a
    model converted with ``model.to(memory_format=torch.channels_last)``.
    """

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        device: torch.device | str = "cpu",
        channels_last: bool = False,
    ) -> None:
        std_t = torch.tensor(std, dtype=torch.float32, device=device)
        mean_t = torch.tensor(mean, dtype=torch.float32, device=device)
        self.scale = (1 / (255 * std_t))[None, :, None, None]
        self.shift = (-mean_t / std_t)[None, :, None, None]
        self.mean, self.std = list(mean), list(std)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, x: Tensor) -> Tensor:
        return torch.addcmul(self.shift, x.float(), self.scale).contiguous(memory_format=self.memory_format)


class TensorLoader:
    """Batches of ``(normalised float images, labels)`` from uint8 tensors held in memory.

    Args:
        x: (N, C, H, W) uint8 images (on the device the batches should be on).
        y: (N,) int64 labels.
        batch_size: images per batch (the global batch when sharded).
        normalize: uint8 -> float transform applied to each batch.
        shuffle: draw a fresh permutation each epoch.
        crop_padding: random-crop padding in pixels (0 = no crop).
        flip: random horizontal flips.
        resized_crop: ``(scale, ratio)`` of a random-resized crop (area fraction and aspect
            ranges, as torchvision's RandomResizedCrop); replaces the padded crop.
        drop_last: drop the last incomplete batch (keeps BatchNorm statistics sane).
        size: side of the batches' images after augmentation (None = as stored); changed between
            epochs by progressive resizing (:func:`resize`). Square images only.
        seed: base seed; epoch ``e`` uses a generator seeded with ``(seed, e)``.
        shard: ``(rank, world_size)``: every rank draws the same permutation and the same
            augmentation for each global batch and keeps its contiguous slice of it, so the
            union of the ranks' batches is exactly the single-process batch.
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        batch_size: int,
        normalize: Normalize,
        *,
        shuffle: bool = False,
        crop_padding: int = 0,
        flip: bool = False,
        resized_crop: tuple[tuple[float, float], tuple[float, float]] | None = None,
        drop_last: bool = False,
        size: int | None = None,
        seed: int = 0,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.normalize = normalize
        self.shuffle, self.crop_padding, self.flip = shuffle, crop_padding, flip
        self.resized_crop = resized_crop
        self.drop_last = drop_last
        self.size = size
        self.seed = seed
        self.rank, self.world_size = shard
        self.epoch = 0
        # CPU generators for CPU data; on CUDA the random numbers are drawn on the device.
        self._device = x.device

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose permutation and augmentation the next iteration uses."""
        self.epoch = epoch

    def __len__(self) -> int:
        n = self.x.shape[0]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _generator(self) -> torch.Generator:
        g = torch.Generator(device=self._device)
        g.manual_seed(self.seed * 1_000_003 + self.epoch)
        return g

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        n = self.x.shape[0]
        g = self._generator()
        order = torch.randperm(n, generator=g, device=self._device) if self.shuffle else None
        for i in range(len(self)):
            lo, hi = i * self.batch_size, min(n, (i + 1) * self.batch_size)
            b = hi - lo
            # The random numbers of the whole global batch, in a fixed order, on every rank.
            boxes = offsets = flips = None
            if self.resized_crop is not None:
                boxes = resized_crop_boxes(b, *self.resized_crop, g)
            elif self.crop_padding > 0:
                offsets = crop_offsets(b, self.crop_padding, g)
            if self.flip:
                flips = torch.rand(b, generator=g, device=g.device) < 0.5
            # This rank's contiguous slice of the global batch (all of it for one process).
            a, z = self.rank * b // self.world_size, (self.rank + 1) * b // self.world_size
            if order is None:
                xb, yb = self.x[lo + a : lo + z], self.y[lo + a : lo + z]
            else:
                idx = order[lo + a : lo + z]
                # index_select is several times faster than x[idx] for uint8 on the CPU
                xb, yb = self.x.index_select(0, idx), self.y.index_select(0, idx)
            if boxes is not None:
                xb = resized_crop_at(xb, boxes[a:z])
            elif offsets is not None:
                xb = crop_at(xb, self.crop_padding, offsets[:, a:z])
            if flips is not None:
                xb = flip_at(xb, flips[a:z])
            if self.size is not None and self.size != xb.shape[-1]:
                # After a resized crop too: sampling the box straight at the smaller size would
                # alias (grid_sample has no antialiasing), cropping at full size does not.
                xb = resize(xb, self.size)
            yield self.normalize(xb), yb
