"""``shapes``: the embedded offline dataset.

Procedurally generated RGB images of coloured shapes on noisy backgrounds, with random
position, scale and rotation, deterministic from a seed. A fine class is a (shape, colour)
pair and its coarse class is the shape, which gives a two-level hierarchy for any number of
classes (up to 10 shapes x 36 colours = 360).

Each shape is drawn from a level function f(u, v) over canonical coordinates
``(u, v) = R(-theta) (p - c) / s`` (pixel p, centre c, scale s, rotation theta); the shape is
``f < 1`` and its edge is anti-aliased by ``alpha = clamp((1 - f) / width + 1/2, 0, 1)``
with ``width`` about one pixel. Everything is vectorised over images.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import Tensor

from softmaxlab.data.base import DATASETS, DataOptions, ImageData, Split
from softmaxlab.errors import UserError


def _polygon(u: Tensor, v: Tensor, sides: int, inradius: float, phase: float) -> Tensor:
    """max_i (n_i . (u, v)) / inradius over the outward normals n_i of a regular polygon."""
    angles = torch.tensor([phase + 2 * math.pi * i / sides for i in range(sides)])
    proj = u[..., None] * torch.cos(angles) + v[..., None] * torch.sin(angles)
    return proj.amax(dim=-1) / inradius


def _level(shape: str, u: Tensor, v: Tensor) -> Tensor:
    """Level function of each shape: inside where the value is below 1."""
    r = torch.sqrt(u * u + v * v)
    if shape == "circle":
        return r
    if shape == "square":
        return torch.maximum(u.abs(), v.abs()) / 0.8
    if shape == "diamond":  # a rhombus 2:1, so no rotation turns it into the square
        return u.abs() / 1.0 + v.abs() / 0.5
    if shape == "triangle":
        return _polygon(u, v, 3, 0.5, math.pi / 2)
    if shape == "hexagon":
        return _polygon(u, v, 6, 0.87, 0.0)
    if shape == "ring":
        return (r - 0.72).abs() / 0.28
    if shape == "cross":
        return torch.minimum(torch.maximum(u.abs() / 0.3, v.abs()), torch.maximum(v.abs() / 0.3, u.abs()))
    if shape == "star":  # five rounded petals
        phi = torch.atan2(v, u)
        return r / (0.62 + 0.38 * torch.cos(5 * phi))
    if shape == "crescent":  # disc minus a shifted disc
        r2 = torch.sqrt((u - 0.45) ** 2 + v * v)
        return torch.maximum(r, 2 - r2 / 0.8)
    if shape == "half_disc":
        return torch.maximum(r, 1 + 3 * v)
    raise ValueError(shape)


SHAPES = ("circle", "square", "triangle", "cross", "ring", "star", "diamond", "crescent", "hexagon", "half_disc")
_HUE_NAMES = ("red", "orange", "yellow", "lime", "green", "teal", "cyan", "azure", "blue", "violet", "magenta", "pink")
MAX_COLOURS = 36
DEFAULT_SIZE = 32  # px, when data.image_size is unset
#: The most pixels (images x height x width, over the three splits) shapes generates.
MAX_PIXELS = 2**28


def layout(num_classes: int) -> tuple[int, int]:
    """(number of shapes S, number of colours C) with S * C >= K, S near sqrt(K).

    Prefers an exact factorisation so every coarse class has the same number of fine
    classes (10 -> 5 x 2, 100 -> 10 x 10, 6 -> 3 x 2); otherwise the last shape gets fewer colours.
    """
    k = num_classes
    if k < 2 or k > len(SHAPES) * MAX_COLOURS:
        raise UserError(f"shapes supports 2 to {len(SHAPES) * MAX_COLOURS} classes, got {k}; set data.num_classes")
    # More shapes than colours where possible: shape is the harder, more interesting cue.
    divisors = [s for s in range(2, len(SHAPES) + 1) if k % s == 0 and s * s >= k and k // s <= MAX_COLOURS]
    if divisors:
        s = min(divisors)
    else:
        s = max(2, min(len(SHAPES), math.ceil(math.sqrt(k))))
        while math.ceil(k / s) > MAX_COLOURS:
            s += 1
    return s, math.ceil(k / s)


def _hue_name(hue_deg: float, num_colours: int) -> str:
    if num_colours > len(_HUE_NAMES):
        return f"hue{round(hue_deg):03d}"
    return _HUE_NAMES[round(hue_deg / 30) % 12]


def class_names(num_classes: int) -> tuple[list[str], list[str], list[int]]:
    """Fine class names, coarse class names, and the coarse class of each fine class."""
    s, c = layout(num_classes)
    names, coarse_of = [], []
    for k in range(num_classes):
        shape, colour = divmod(k, c)
        names.append(f"{_hue_name(360 * colour / c, c)} {SHAPES[shape]}")
        coarse_of.append(shape)
    return names, list(SHAPES[:s]), coarse_of


def _hsv_to_rgb(h: Tensor, s: Tensor, v: Tensor) -> Tensor:
    """(N,) hue in [0, 1), saturation, value -> (N, 3) RGB in [0, 1]."""
    k = torch.stack([(5 + h * 6) % 6, (3 + h * 6) % 6, (1 + h * 6) % 6], dim=-1)
    f = torch.clamp(torch.minimum(k, 4 - k), 0, 1)
    return v[:, None] - v[:, None] * s[:, None] * f


def generate(n: int, num_classes: int = 10, image_size: int = 32, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Generate ``n`` images: (x uint8 (n, 3, H, W), fine labels (n,), coarse labels (n,)).

    Labels are balanced (each class appears n // K or n // K + 1 times) in random order.
    """
    g = torch.Generator().manual_seed(seed)
    s_count, c_count = layout(num_classes)
    _, _, coarse_of = class_names(num_classes)
    y = torch.arange(n) % num_classes
    y = y[torch.randperm(n, generator=g)]
    shape_id, colour_id = y // c_count, y % c_count

    def rand(*size: int) -> Tensor:
        return torch.rand(*size, generator=g)

    h = w = image_size
    # Pixel centres on [-1, 1].
    axis = (torch.arange(h, dtype=torch.float32) + 0.5) / h * 2 - 1
    py, px = torch.meshgrid(axis, axis, indexing="ij")
    scale = 0.32 + 0.28 * rand(n)  # shape radius as a fraction of the half-image
    cx = (rand(n) * 2 - 1) * (0.95 - scale)
    cy = (rand(n) * 2 - 1) * (0.95 - scale)
    theta = rand(n) * 2 * math.pi
    cos, sin = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
    dx = (px[None] - cx[:, None, None]) / scale[:, None, None]
    dy = (py[None] - cy[:, None, None]) / scale[:, None, None]
    u = cos * dx + sin * dy  # (n, H, W) canonical coordinates
    v = -sin * dx + cos * dy
    level = torch.empty(n, h, w)
    for sid in range(s_count):
        idx = (shape_id == sid).nonzero().squeeze(1)
        if idx.numel():
            level[idx] = _level(SHAPES[sid], u[idx], v[idx])
    edge = (2.0 / h) / scale[:, None, None]  # one pixel in canonical units
    alpha = ((1 - level) / edge + 0.5).clamp_(0, 1)[:, None]  # (n, 1, H, W)

    # Shape colour: the class hue with jitter of +-30 % of the gap between hues.
    hue = (colour_id.float() + (rand(n) - 0.5) * 0.6) / c_count % 1.0
    fg = _hsv_to_rgb(hue, 0.55 + 0.45 * rand(n), 0.55 + 0.45 * rand(n))[:, :, None, None]
    # Background: a grey level with a slight tint, a linear ramp and pixel noise.
    base = 0.15 + 0.7 * rand(n, 1, 1, 1) + 0.08 * (rand(n, 3, 1, 1) - 0.5)
    ramp_dir = rand(n) * 2 * math.pi
    ramp = torch.cos(ramp_dir)[:, None, None] * px + torch.sin(ramp_dir)[:, None, None] * py
    bg = base + 0.15 * ramp[:, None]
    img = bg * (1 - alpha) + fg * alpha
    img += 0.07 * torch.randn(n, 3, h, w, generator=g)
    x = img.clamp_(0, 1).mul_(255).round_().to(torch.uint8)
    coarse = torch.tensor(coarse_of)[y]
    return x, y, coarse


class ShapesOptions(DataOptions):
    """Options of ``shapes``."""

    num_classes: int = Field(10, ge=2)  # number of fine classes
    train_size: int = Field(6000, ge=1)  # generated training images
    val_size: int = Field(1000, ge=1)  # generated validation images
    test_size: int = Field(2000, ge=1)  # generated test images


@DATASETS.register("shapes", options=ShapesOptions)
def shapes(cfg: ShapesOptions) -> ImageData:
    """Embedded offline data: coloured shapes (fine = shape x colour, coarse = shape)."""
    names, coarse_names, coarse_of = class_names(cfg.num_classes)
    size = cfg.image_size if cfg.image_size is not None else DEFAULT_SIZE
    pixels = (cfg.train_size + cfg.val_size + cfg.test_size) * size * size
    if pixels > MAX_PIXELS:  # a limit is the only defence: generation allocates all of them at once
        raise UserError(
            f"shapes of {cfg.train_size + cfg.val_size + cfg.test_size:,} images at {size} px are {pixels:,} pixels, "
            f"more than the {MAX_PIXELS:,} generated at most (e.g. {MAX_PIXELS // 32**2:,} images at 32 px); "
            "lower data.train_size, data.val_size, data.test_size or data.image_size"
        )
    splits = []
    for offset, n in enumerate((cfg.train_size, cfg.val_size, cfg.test_size)):
        x, y, coarse = generate(n, cfg.num_classes, size, seed=cfg.seed * 1_000_003 + offset)
        splits.append(Split(x, y, coarse))
    return ImageData(*splits, classes=names, coarse_classes=coarse_names, coarse_of=torch.tensor(coarse_of))
