"""What every dataset shares: expanding ``data.root``, the user cache folder, stratified
hold-out splits and training subsets, resizing, and assembling the :class:`ImageData` from arrays.

Splits and subsets are deterministic functions of ``data.seed`` (not ``train.seed``), so every
run of a sweep over training seeds sees the same images, and stratified, so a small split still
holds every class in its proportion.

>>> y = torch.tensor([0] * 8 + [1] * 4)
>>> keep, held = stratified_split(y, 0.25, seed=0)
>>> len(keep), len(held), torch.bincount(y[held]).tolist()
(9, 3, [2, 1])
>>> torch.bincount(y[stratified_subset(y, 6, seed=0)]).tolist()
[4, 2]
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from softmaxlab.data.base import DataOptions, ImageData, Split
from softmaxlab.errors import UserError


def expand_root(path: str, key: str = "data.root") -> Path:
    """``path`` (the value of the config key ``key``) with a leading ``~`` or ``~user`` expanded.

    ``Path.expanduser`` raises a bare RuntimeError for a user without a home directory (and
    ``os.path.expanduser`` would keep ``~nosuchuser`` as a folder name); either way the user
    meant a home that is not there, which is a UserError that says so.
    """
    try:
        return Path(path).expanduser()
    except RuntimeError:
        user = path.split("/", 1)[0]
        raise UserError(
            f"{key}={path!r} starts with {user!r}, but there is no such user or home directory here; "
            "write the full path"
        ) from None


def user_cache_dir() -> Path:
    """The user's cache folder of softmaxlab: ``$XDG_CACHE_HOME/softmaxlab``, else ``~/.cache/softmaxlab``.

    The one place that rule lives (the image-folder cache and the docs follow it). Read on each
    call, not once at import, so a changed ``XDG_CACHE_HOME`` (a test's, a job script's) is seen.
    A relative ``XDG_CACHE_HOME`` is ignored, as the XDG specification asks: it would put the
    cache wherever the command happens to run. Nothing is created here.
    """
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    if os.path.isabs(xdg):
        return Path(xdg) / "softmaxlab"
    try:
        home = Path.home()
    except RuntimeError:  # no HOME and no password entry (some containers)
        raise UserError(
            "there is no home directory for the user cache folder; set XDG_CACHE_HOME or data.cache_dir"
        ) from None
    return home / ".cache" / "softmaxlab"


def holdout_counts(counts: list[int], fraction: float) -> list[int]:
    """How many images of each class to hold out so the total is ``round(fraction * N)``.

    Each class gets ``floor(fraction * n_c)``; the rest of the total goes one by one to the
    classes with the largest remainders (ties to the lower class index), first without
    taking a class's last training image, then, only if the total is still short (classes of
    one image), with.

    >>> holdout_counts([10, 10, 1], 0.1)
    [1, 1, 0]
    >>> holdout_counts([1, 1, 1, 1], 0.5)
    [1, 1, 0, 0]
    """
    total = min(round(fraction * sum(counts)), sum(counts))
    held = [int(fraction * n) for n in counts]
    by_remainder = sorted(range(len(counts)), key=lambda c: (-(fraction * counts[c] - held[c]), c))
    for keep_one in (1, 0):
        for c in by_remainder:
            if sum(held) < total and held[c] < counts[c] - keep_one:
                held[c] += 1
    return held


def stratified_split(y: Tensor, fraction: float, seed: int, salt: int = 0) -> tuple[Tensor, Tensor]:
    """Indices ``(kept, held_out)`` with about ``fraction`` of each class held out.

    Which images of a class are held out is decided by one permutation drawn from
    ``(seed, salt)``; both index tensors are sorted, so the kept images stay in file order.
    y: (N,) int64 -> (N - H,), (H,) int64.
    """
    g = torch.Generator().manual_seed(seed * 1_000_003 + salt)
    perm = torch.randperm(len(y), generator=g)
    y_perm = y[perm]
    num_classes = int(y.max()) + 1 if len(y) else 0
    counts = torch.bincount(y, minlength=num_classes).tolist()
    held_parts = []
    for c, h in enumerate(holdout_counts(counts, fraction)):
        if h:
            held_parts.append(perm[y_perm == c][:h])
    held = torch.cat(held_parts).sort().values if held_parts else torch.empty(0, dtype=torch.int64)
    mask = torch.ones(len(y), dtype=torch.bool)
    mask[held] = False
    return mask.nonzero().squeeze(1), held


def subset_counts(counts: list[int], n: int) -> list[int]:
    """How many images of each class a subset of ``n`` of them keeps: each class's share
    ``n * n_c / N`` rounded by largest remainder (ties to the lower class index), but at least one
    image of every class that has any; the images that this floor adds are taken back from the
    classes furthest above their share. Needs ``present classes <= n <= N``.

    >>> subset_counts([60, 30, 10], 10)
    [6, 3, 1]
    >>> subset_counts([100, 1, 1], 3)
    [1, 1, 1]
    >>> subset_counts([7, 2, 1], 5)
    [3, 1, 1]
    """
    total = sum(counts)
    if not sum(c > 0 for c in counts) <= n <= total:  # the loops below could not end
        raise ValueError(f"a subset of {n} cannot keep one image of each class of {counts}")
    keep = [max(1, n * c // total) if c else 0 for c in counts]
    # Integer arithmetic throughout ((n * n_c) mod N is a remainder in units of 1/N), so ties are exact.
    missing = n - sum(keep)
    by_remainder = sorted(range(len(counts)), key=lambda c: (-(n * counts[c] % total), c))
    for c in by_remainder:  # one pass suffices: fewer images are missing than classes have a remainder
        if missing > 0 and keep[c] < counts[c]:
            keep[c] += 1
            missing -= 1
    # Too many only through the floor of one (then nothing was added above). Every class above one image
    # is at or below its share; one taken from each puts it below every other, so the same order repeats.
    above = [c for c in range(len(counts)) if keep[c] > 1]
    above.sort(key=lambda c: (n * counts[c] - keep[c] * total, -c))
    while missing < 0:
        for c in above:
            if missing < 0 and keep[c] > 1:
                keep[c] -= 1
                missing += 1
    return keep


def stratified_subset(y: Tensor, n: int, seed: int, salt: int = 3) -> Tensor:
    """Sorted indices of ``n`` images, :func:`subset_counts` of each class, drawn by one
    permutation from ``(seed, salt)`` (salts 1 and 2 are the test and validation splits').
    y: (N,) int64 -> (n,) int64.
    """
    g = torch.Generator().manual_seed(seed * 1_000_003 + salt)
    perm = torch.randperm(len(y), generator=g)
    y_perm = y[perm]
    counts = torch.bincount(y, minlength=int(y.max()) + 1 if len(y) else 0).tolist()
    parts = [perm[y_perm == c][:k] for c, k in enumerate(subset_counts(counts, n)) if k]
    return torch.cat(parts).sort().values if parts else torch.empty(0, dtype=torch.int64)


def limit_train(data: ImageData, n: int | None, seed: int) -> ImageData:
    """``data`` with a stratified subset of ``n`` training images (``data.max_train_images``);
    the validation and test splits are kept whole. ``n`` None: ``data`` as it is.

    Raises:
        UserError: ``n`` above the training images there are, or below the number of classes
            (a class without a training image could never be predicted).
    """
    if n is None:
        return data
    have, k = len(data.train), data.num_classes
    if n > have:
        raise UserError(
            f"data.max_train_images={n} is more than the {have} training images this dataset has (after its "
            f"validation split); lower it to at most {have} or unset it"
        )
    if n < k:
        raise UserError(
            f"data.max_train_images={n} is below the {k} classes (at least one training image of each is kept); "
            f"raise it to {k} or more"
        )
    if n == have:
        return data
    idx = stratified_subset(data.train.y, n, seed)
    train = Split(*_pick((data.train.x, data.train.y, data.train.coarse), idx))
    return dataclasses.replace(data, train=train)


def resize(x: Tensor, size: int, chunk: int = 1024) -> Tensor:
    """uint8 (N, C, H, W) -> uint8 (N, C, size, size), bilinear with antialiasing.

    Done in chunks so a large dataset never exists as float32 all at once.
    """
    if x.shape[-2:] == (size, size):
        return x
    out = torch.empty((x.shape[0], x.shape[1], size, size), dtype=torch.uint8)
    for lo in range(0, x.shape[0], chunk):
        part = x[lo : lo + chunk].float()
        part = F.interpolate(part, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[lo : lo + chunk] = part.round_().clamp_(0, 255).to(torch.uint8)
    return out


def _pick(arrays: tuple[Tensor, Tensor, Tensor | None], idx: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
    # index_select, not x[idx]: on CPU uint8 images it is an order of magnitude faster.
    x, y, coarse = arrays
    return x.index_select(0, idx), y.index_select(0, idx), None if coarse is None else coarse.index_select(0, idx)


def _check_holdout(n_held: int, n_kept: int, what: str, key: str, fraction: float) -> None:
    if n_held == 0 or n_kept == 0:
        raise UserError(
            f"{key}={fraction} leaves an empty {what} split ({n_kept} kept, {n_held} held out); "
            f"use more images or change {key}"
        )


def assemble(
    cfg: DataOptions,
    train: tuple[Tensor, Tensor, Tensor | None],
    classes: list[str],
    *,
    test: tuple[Tensor, Tensor, Tensor | None] | None = None,
    val: tuple[Tensor, Tensor, Tensor | None] | None = None,
    coarse_classes: list[str] | None = None,
    coarse_of: Tensor | None = None,
) -> ImageData:
    """The :class:`ImageData` from ``(x, y, coarse)`` arrays, carving missing splits from train.

    x: (N, C, H, W) uint8, y: (N,) int64, coarse: (N,) int64 or None. Without ``test``,
    ``cfg.test_fraction`` of train becomes the test split; without ``val``,
    ``cfg.val_fraction`` of the rest becomes the validation split (both stratified and seeded
    by ``cfg.seed``; ``cfg`` has these options when the dataset can lack the split, see
    :class:`~softmaxlab.data.base.HoldoutOptions`). Images are resized to ``cfg.image_size`` when their side differs;
    unset, they keep their size, or become squares of their shorter side when not square.
    """
    x, y, coarse = train
    if test is None:
        fraction = cfg.test_fraction  # type: ignore[attr-defined]  (HoldoutOptions)
        keep, held = stratified_split(y, fraction, cfg.seed, salt=1)
        _check_holdout(len(held), len(keep), "test", "data.test_fraction", fraction)
        test, (x, y, coarse) = _pick((x, y, coarse), held), _pick((x, y, coarse), keep)
    if val is None:
        fraction = cfg.val_fraction  # type: ignore[attr-defined]  (OnDiskOptions)
        keep, held = stratified_split(y, fraction, cfg.seed, salt=2)
        _check_holdout(len(held), len(keep), "validation", "data.val_fraction", fraction)
        val, (x, y, coarse) = _pick((x, y, coarse), held), _pick((x, y, coarse), keep)
    size = cfg.image_size if cfg.image_size is not None else min(x.shape[-2:])
    splits = []
    for sx, sy, sc in ((x, y, coarse), val, test):
        splits.append(Split(resize(sx, size), sy, sc))
    return ImageData(*splits, classes=classes, coarse_classes=coarse_classes, coarse_of=coarse_of)
