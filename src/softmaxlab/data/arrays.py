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
(``np.array(names, dtype=str)``), not an object array. Before numpy reads anything, the
header of each member is checked against the bytes the archive stores for it, so a file of
a few kilobytes cannot make it allocate terabytes.
"""

from __future__ import annotations

import math
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from softmaxlab.data.base import DATASETS, HoldoutOptions, ImageData
from softmaxlab.data.common import assemble, expand_root
from softmaxlab.errors import UserError
from softmaxlab.untrusted import regular_file

KNOWN_ARRAYS = ("x", "y", "classes", "x_test", "y_test")
#: The most classes labels may imply without a ``classes`` array (ImageNet-21k has 21,841).
MAX_INFERRED_CLASSES = 100_000
#: The most classes a dataset may name (the hierarchical studies go to 100,000).
MAX_CLASSES = 100_000


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


def _class_names(arrays: dict[str, np.ndarray], y: np.ndarray, where: str) -> list[str]:
    """The names of the classes: the ``classes`` array (distinct strings), else "0".."K-1"
    with K = max(y) + 1, at most :data:`MAX_INFERRED_CLASSES`."""
    if "classes" not in arrays:
        top = int(y.max())
        if top >= MAX_INFERRED_CLASSES:  # the names alone of 2**40 classes would fill the memory
            raise UserError(
                f"array 'y' in {where} has the label {top:,}, which would make {top + 1:,} classes, more than the "
                f"{MAX_INFERRED_CLASSES:,} allowed without a 'classes' array; labels must be 0..K-1: relabel them "
                "or add a 'classes' array naming the K classes"
            )
        return [str(k) for k in range(top + 1)]
    names = arrays["classes"]
    if names.ndim != 1 or names.dtype.kind not in "US":
        raise UserError(f"array 'classes' in {where} must be strings of shape (K,), got {names.dtype} {names.shape}")
    if len(names) > MAX_CLASSES:
        raise UserError(
            f"array 'classes' in {where} names {len(names):,} classes, more than the {MAX_CLASSES:,} allowed; "
            "name only the classes the labels use"
        )
    classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names.tolist()]
    seen: set[str] = set()
    for name in classes:
        if not name.strip():
            raise UserError(f"array 'classes' in {where} has an empty class name; name every class")
        if name in seen:  # two labels of one name could not be told apart in any report or prediction
            raise UserError(f"array 'classes' in {where} names the class {name!r} twice; class names must differ")
        seen.add(name)
    return classes


def _to_tensors(x: np.ndarray, y: np.ndarray) -> tuple[Tensor, Tensor, None]:
    # (N, H, W, C) -> (N, C, H, W), contiguous so batches are one gather.
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))), torch.from_numpy(y), None


#: What reading a member's header may raise for a member that is not a .npy array.
_HEADER_ERRORS = (ValueError, OSError, EOFError, SyntaxError, RecursionError, MemoryError, NotImplementedError)


def _check_member(z: zipfile.ZipFile, info: zipfile.ZipInfo, where: str, file_size: int) -> None:
    """Refuse the member ``info`` unless it is a .npy array whose header fits its stored size.

    Why before ``np.load``: numpy allocates the array its header claims before reading it,
    so a header claiming (10**9, 64, 64, 3) in a file of a few kilobytes would ask for 12
    TB; and a member that is no .npy at all (a pickle added to the archive) would come
    back as raw bytes.
    """
    name = info.filename
    key = name.removesuffix(".npy")
    fix = "write the file again with numpy.savez"
    if not name.endswith(".npy"):
        raise UserError(f"{where} holds {name!r}, which is not a NumPy array (numpy.savez writes only .npy); {fix}")
    if info.compress_size > file_size:
        raise UserError(f"array {key!r} in {where} claims more bytes than the whole file holds; {fix}")
    try:
        with z.open(info) as f:
            version = np.lib.format.read_magic(f)
            if version not in ((1, 0), (2, 0), (3, 0)):
                raise ValueError(f"unknown .npy format version {version}")
            # Version 3.0 differs from 2.0 only in the text encoding of the header.
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(f)
            offset = f.tell()
    except (*_HEADER_ERRORS, zipfile.BadZipFile) as exc:
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
        raise UserError(f"array {key!r} in {where} is not a readable .npy array ({why}); {fix}") from None
    if dtype.hasobject:
        raise UserError(
            f"{where} holds an object array {key!r} (pickled, which is not read for safety); store class names "
            "as a string array, np.array(names, dtype=str), and images and labels as numeric arrays"
        )
    claimed = math.prod(shape) * dtype.itemsize  # Python ints: no overflow, whatever the header says
    if min(shape, default=0) < 0 or offset + claimed > info.file_size:
        raise UserError(
            f"array {key!r} in {where} claims shape {shape} of {dtype} ({claimed:,} bytes), but the file stores "
            f"{max(info.file_size - offset, 0):,} bytes of it; the file is truncated or was altered: {fix}"
        )


def _check_members(path: Path, where: str) -> None:
    """:func:`_check_member` for every member of the archive; a name stored twice is refused too."""
    file_size = path.stat().st_size
    with zipfile.ZipFile(path) as z:
        infos = z.infolist()
        twice = [name for name, count in Counter(info.filename for info in infos).items() if count > 1]
        if twice:  # np.load would read one of the two silently
            raise UserError(f"{where} stores {twice[0]!r} twice; write the file again with numpy.savez")
        for info in infos:
            _check_member(z, info, where, file_size)


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` at ``path``; missing and unreadable files are UserErrors.

    Each member's header is checked against its stored size before numpy reads it (see
    :func:`_check_member`), so nothing is allocated for what the file does not hold.
    """
    where = repr(str(path))
    regular_file(path, "npz file", "set data.root to the path of a .npz file")
    if not zipfile.is_zipfile(path):
        raise UserError(f"{where} is not a readable .npz file (not a zip archive); write it with numpy.savez")
    try:
        _check_members(path, where)
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise UserError(
                f"{where} holds an object array (pickled); "
                "store 'classes' as a string array: np.array(names, dtype=str)"
            ) from None
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
        raise UserError(f"{where} is not a readable .npz file ({why}); write it with numpy.savez") from None
    except (OSError, zipfile.BadZipFile, EOFError, NotImplementedError) as exc:
        raise UserError(
            f"{where} is not a readable .npz file ({type(exc).__name__}); write it with numpy.savez"
        ) from None


def load_npz(cfg: HoldoutOptions) -> ImageData:
    """The :class:`ImageData` of the ``.npz`` file at ``cfg.root``."""
    if cfg.root is None:
        raise UserError("data.root is not set: npz needs the path of a .npz file (--set data.root=PATH)")
    path = expand_root(cfg.root)
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
    classes = _class_names(arrays, y, where)
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
