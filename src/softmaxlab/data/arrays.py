"""``npz``: images and labels as NumPy arrays in one ``.npz`` file (``data.root``).

Arrays:

* ``x``: uint8 images (N, H, W, C), channels last as PIL and most notebooks produce them;
  (N, H, W) is read as one channel. Float images are accepted on the [0, 1] scale (or
  [0, 255] when their maximum is above 1) and stored as uint8, round(255 x) or round(x):
  the quantisation step 1/255 is below the noise of any camera. NaN or infinite pixels
  are an error that names the first image holding one.
* ``y``: (N,) integer labels in 0..K-1.
* ``classes`` (optional): (K,) strings, the name of each label; default "0", "1", ...
* ``x_test``, ``y_test`` (optional): a test split of the same image shape; without them
  ``data.test_fraction`` of the images are held out for testing.

``data.val_fraction`` of the training images are held out for validation (stratified,
seeded by ``data.seed``). Any other array is an error, so that a typo such as ``x_tset`` is
not silently ignored. The file is read without pickle: ``classes`` must be a string array
(``np.array(names, dtype=str)``), not an object array.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from softmaxlab.data.base import DATASETS, HoldoutOptions, ImageData
from softmaxlab.data.common import assemble
from softmaxlab.errors import UserError

KNOWN_ARRAYS = ("x", "y", "classes", "x_test", "y_test")


def _images(arrays: dict[str, np.ndarray], key: str, where: str) -> np.ndarray:
    """``arrays[key]`` as uint8 (N, H, W, C); float images are scaled and rounded."""
    x = arrays[key]
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.dtype.kind not in "uf" or (x.dtype.kind == "u" and x.dtype != np.uint8) or min(x.shape[1:]) < 1:
        raise UserError(
            f"array {key!r} in {where} must be uint8 (or float) images of shape (N, H, W, C), got {x.dtype} {x.shape}"
        )
    if x.dtype.kind == "f":
        finite = np.isfinite(x).all(axis=tuple(range(1, x.ndim)))  # per image; N may be 0
        if not finite.all():
            bad = np.flatnonzero(~finite)
            raise UserError(
                f"array {key!r} in {where} has NaN or infinite pixels in {len(bad)} image(s), the first at index "
                f"{bad[0]}; remove or repair those images"
            )
        lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
        if lo < 0 or hi > 255:
            raise UserError(
                f"array {key!r} in {where} has float pixels in [{lo:g}, {hi:g}]; expected [0, 1] or [0, 255]"
            )
        x = np.rint(x * 255 if hi <= 1 else x).astype(np.uint8)
    return x


def _labels(arrays: dict[str, np.ndarray], key: str, n: int, where: str) -> np.ndarray:
    y = arrays[key]
    if y.shape != (n,) or y.dtype.kind not in "iu":
        raise UserError(f"array {key!r} in {where} must be integer labels of shape ({n},), got {y.dtype} {y.shape}")
    return y.astype(np.int64)


def _to_tensors(x: np.ndarray, y: np.ndarray) -> tuple[Tensor, Tensor, None]:
    # (N, H, W, C) -> (N, C, H, W), contiguous so batches are one gather.
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))), torch.from_numpy(y), None


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` at ``path``; missing and unreadable files are UserErrors."""
    where = repr(str(path))
    if not path.is_file():
        raise UserError(f"npz file {where} does not exist; set data.root to the path of a .npz file")
    if not zipfile.is_zipfile(path):
        raise UserError(f"{where} is not a readable .npz file (not a zip archive); write it with numpy.savez")
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise UserError(
                f"{where} holds an object array (pickled); "
                "store 'classes' as a string array: np.array(names, dtype=str)"
            ) from None
        raise UserError(f"{where} is not a readable .npz file ({exc}); write it with numpy.savez") from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise UserError(
            f"{where} is not a readable .npz file ({type(exc).__name__}); write it with numpy.savez"
        ) from None


def load_npz(cfg: HoldoutOptions) -> ImageData:
    """The :class:`ImageData` of the ``.npz`` file at ``cfg.root``."""
    if cfg.root is None:
        raise UserError("data.root is not set: npz needs the path of a .npz file (--set data.root=PATH)")
    path = Path(cfg.root).expanduser()
    where = repr(str(path))
    arrays = read_npz(path)
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise UserError(f"{where} has no array {missing[0]!r} (found: {', '.join(arrays) or 'none'}); expected x and y")
    unknown = [k for k in arrays if k not in KNOWN_ARRAYS]
    if unknown:
        raise UserError(f"{where} has unexpected arrays {unknown}; expected only {', '.join(KNOWN_ARRAYS)}")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise UserError(f"{where} must hold both x_test and y_test or neither")

    x = _images(arrays, "x", where)
    y = _labels(arrays, "y", x.shape[0], where)
    if len(y) == 0:
        raise UserError(f"{where} holds no images (x has shape {x.shape})")
    if "classes" in arrays:
        names = arrays["classes"]
        if names.ndim != 1 or names.dtype.kind not in "US":
            raise UserError(
                f"array 'classes' in {where} must be strings of shape (K,), got {names.dtype} {names.shape}"
            )
        classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names.tolist()]
    else:
        classes = [str(k) for k in range(int(y.max()) + 1)]
    k = len(classes)
    if k < 2:
        raise UserError(f"{where} has a single class; a classifier needs at least 2")

    test = None
    labels = [("y", y)]
    if "x_test" in arrays:
        x_test = _images(arrays, "x_test", where)
        if x_test.shape[1:] != x.shape[1:]:
            raise UserError(
                f"array 'x_test' in {where} must have shape (N, {', '.join(map(str, x.shape[1:]))}) like x, "
                f"got {x_test.shape}"
            )
        y_test = _labels(arrays, "y_test", x_test.shape[0], where)
        labels.append(("y_test", y_test))
        test = _to_tensors(x_test, y_test)
    for key, lab in labels:
        if lab.size and (lab.min() < 0 or lab.max() >= k):
            raise UserError(f"array {key!r} in {where} has labels outside 0..{k - 1} (there are {k} classes)")
    return assemble(cfg, _to_tensors(x, y), classes, test=test)


@DATASETS.register("npz", options=HoldoutOptions)
def npz(cfg: HoldoutOptions) -> ImageData:
    """NumPy arrays x (N, H, W, C uint8) and y in a .npz file (data.root); optional classes, x_test, y_test."""
    return load_npz(cfg)
