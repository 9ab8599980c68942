"""``imagefolder``: a tree of class folders of images (``data.root``), decoded once into a cache.

Layouts, tried in this order:

1. Kaggle's Intel Image Classification: ``seg_train/seg_train/<class>/`` and optionally
   ``seg_test/seg_test/<class>/`` (a single ``seg_train/<class>/`` level works too).
2. ``train/<class>/``, usually with ``test/<class>/``, optionally ``val/`` (or ``valid/``).
3. ``<class>/`` folders directly under the root: ``data.test_fraction`` of the images are
   held out for testing, stratified and seeded by ``data.seed``.

Without a validation folder ``data.val_fraction`` of the training images are held out.
Images (jpg, png, bmp, gif, tif, webp, ...) are found recursively inside each class folder;
other files and hidden entries are ignored. Every image becomes RGB resized to
``data.image_size`` square (bilinear, antialiased), 64 px when unset (``DEFAULT_SIZE``).

Why a cache: decoding JPEGs costs far more than a small CNN's epoch on the decoded pixels.
The tree is decoded once, in parallel threads (PIL releases the GIL while decoding and
resizing), into a uint8 ``images-<key>.npy`` of shape (N, 3, S, S) with an
``index-<key>.json`` beside it. The key hashes the file list with each file's size and
modification time and the image size, so an added, removed or edited image, or a new
``data.image_size``, builds a new cache, and anything else is a hit that reads the
memory-mapped array without decoding. The cache lives in ``data.cache_dir``, by default
``<root>/.softmaxlab-cache/``, or the user cache folder (``~/.cache/softmaxlab/``) when the
root is read-only.
Both files are written to a temporary name and renamed, so an interrupted build leaves no
half-written cache and parallel runs of a sweep can build it at the same time.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from softmaxlab.data.base import DATASETS, HoldoutOptions, ImageData
from softmaxlab.data.common import assemble
from softmaxlab.errors import UserError
from softmaxlab.runs import atomic_write_text

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
CACHE_VERSION = 1  # bump when the decoding changes, so old caches are not reused
SPLITS = ("train", "val", "test")
# px, when data.image_size is unset: the images of a tree differ in size, so none is "its own". The Intel
# scenes at 64 px score 3.4 points above the same images at 32 px with the default recipe (README "Why
# these defaults").
DEFAULT_SIZE = 64


class ImageFolderOptions(HoldoutOptions):
    """Options of ``imagefolder``."""

    skip_corrupt: bool = False  # skip unreadable images with a warning (false: stop, naming them)
    # Where decoded images are cached; None = <root>/.softmaxlab-cache, or the user cache folder
    # (~/.cache/softmaxlab) when the root is read-only.
    cache_dir: str | None = None


_SHOWN_BAD = 3  # bad files named in an error message


@dataclass
class Tree:
    """The images of a tree: paths relative to the root, labels, and the split of each."""

    root: Path
    classes: list[str]
    files: list[str]  # relative POSIX paths, sorted within each split and class
    labels: list[int]
    splits: list[str]  # "train", "val" or "test" for each file (as given by the layout)


# ---------------------------------------------------------------- finding the images


def _unwrap(folder: Path) -> Path:
    """``seg_train/seg_train`` -> the inner folder (the Kaggle archive nests each split)."""
    inner = folder / folder.name
    return inner if inner.is_dir() else folder


def find_layout(root: Path) -> dict[str, Path]:
    """The folder of class folders of each split the layout provides ("train", maybe "val", "test")."""
    if (root / "seg_train").is_dir():
        found = {"train": _unwrap(root / "seg_train")}
        if (root / "seg_test").is_dir():
            found["test"] = _unwrap(root / "seg_test")
        return found
    if (root / "train").is_dir():
        found = {"train": root / "train"}
        if (root / "test").is_dir():
            found["test"] = root / "test"
        for name in ("val", "valid", "validation"):
            if (root / name).is_dir():
                found["val"] = root / name
                break
        return found
    return {"train": root}


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_in(folder: Path, root: Path) -> list[str]:
    """Relative POSIX paths (to ``root``) of the images anywhere under ``folder``, sorted.

    Plain strings, not Path objects: a tree of tens of thousands of images is listed on
    every run, cache hit or not, so this is kept cheap.
    """
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = Path(os.path.relpath(dirpath, root)).as_posix()  # once per folder, not per file
        found.extend(
            f"{rel}/{f}" for f in sorted(filenames) if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)
        )
    return found


def scan(root: Path) -> Tree:
    """Find the layout, the classes and every image under ``root``; bad trees are UserErrors."""
    if not root.is_dir():
        what = "does not exist" if not root.exists() else "is not a folder"
        raise UserError(f"image folder {str(root)!r} {what}; set data.root to a folder of class folders")
    layout = find_layout(root)
    class_dirs = _visible_dirs(layout["train"])
    classes = [d.name for d in class_dirs]
    if not classes:
        raise UserError(
            f"no class folders in {str(layout['train'])!r}; expected <class>/<image> folders "
            "(or train/ and test/, or Kaggle's seg_train/seg_train/)"
        )
    files: list[str] = []
    labels: list[int] = []
    splits: list[str] = []
    for split, folder in layout.items():
        dirs = class_dirs if split == "train" else _visible_dirs(folder)
        unknown = [d.name for d in dirs if d.name not in classes]
        if unknown:
            raise UserError(
                f"{str(folder)!r} has class folders that the training folder {str(layout['train'])!r} lacks: "
                f"{', '.join(unknown[:5])}; every class needs training images"
            )
        for d in dirs:
            images = _images_in(d, root)
            if not images:
                raise UserError(
                    f"class folder {str(d)!r} holds no images ({', '.join(IMAGE_EXTENSIONS)}); add images or remove it"
                )
            label = classes.index(d.name)
            files.extend(images)
            labels.extend([label] * len(images))
            splits.extend([split] * len(images))
    if len(classes) < 2:
        raise UserError(f"{str(layout['train'])!r} has a single class folder ({classes[0]}); a classifier needs two")
    return Tree(root, classes, files, labels, splits)


# ---------------------------------------------------------------- the cache


def cache_key(tree: Tree, image_size: int) -> str:
    """SHA-256 over the file list with sizes and modification times, the image size and
    the cache version: any change to the images or the decoding gives a new key."""
    h = hashlib.sha256()
    h.update(json.dumps([CACHE_VERSION, image_size, tree.classes]).encode())
    root = str(tree.root)
    for rel, split in zip(tree.files, tree.splits, strict=True):
        st = os.stat(os.path.join(root, rel))
        h.update(f"\n{split}\0{rel}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return h.hexdigest()


def _user_cache_dir(root: Path) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "softmaxlab" / "imagefolder" / hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
        return True
    except OSError:
        return False


def cache_folder(cfg: ImageFolderOptions, root: Path) -> Path | None:
    """Where the cache of ``root`` lives; None when no folder can be written."""
    if cfg.cache_dir is not None:
        folder = Path(cfg.cache_dir).expanduser()
        if not _writable(folder):
            raise UserError(f"data.cache_dir {str(folder)!r} cannot be written; choose a writable folder")
        return folder
    # A root without any write permission bit is left alone even when the process could
    # write there anyway (as root): shared, read-only data stays untouched.
    if root.stat().st_mode & 0o222 and _writable(root / ".softmaxlab-cache"):
        return root / ".softmaxlab-cache"
    user = _user_cache_dir(root)
    return user if _writable(user) else None


def _read_cache(folder: Path, key: str, n: int, image_size: int) -> tuple[np.ndarray, dict[str, Any]] | None:
    index_path, array_path = folder / f"index-{key[:16]}.json", folder / f"images-{key[:16]}.npy"
    try:
        index = json.loads(index_path.read_text())
        if index.get("key") != key:
            return None
        x = np.load(array_path, mmap_mode="r")
    except (OSError, ValueError):
        return None
    if x.shape != (n, 3, image_size, image_size) or x.dtype != np.uint8:
        return None
    return x, index


def _prune(folder: Path, root: Path, image_size: int, keep: str) -> None:
    """Remove older caches of the same root and image size (superseded by a changed tree)."""
    for index_path in folder.glob("index-*.json"):
        tag = index_path.stem[len("index-") :]
        if tag == keep[:16]:
            continue
        try:
            index = json.loads(index_path.read_text())
        except (OSError, ValueError):
            continue
        if index.get("root") == str(root.resolve()) and index.get("image_size") == image_size:
            for stale in (index_path, folder / f"images-{tag}.npy"):
                stale.unlink(missing_ok=True)


# ---------------------------------------------------------------- decoding


def decode_image(path: Path, size: int) -> np.ndarray:
    """One image file -> uint8 (3, size, size) RGB; raises OSError / ValueError when unreadable."""
    with Image.open(path) as im:
        # JPEG only: let the decoder scale down by a power of two while staying >= 2x the target.
        im.draft("RGB", (2 * size, 2 * size))
        rgb = im.convert("RGB")
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(rgb).transpose(2, 0, 1)


def _decode_chunk(paths: list[Path], start: int, out: np.ndarray, size: int) -> list[tuple[int, str]]:
    """Decode ``paths`` into ``out[start:]``; the (index, reason) of each unreadable file."""
    bad = []
    for i, path in enumerate(paths, start):
        try:
            out[i] = decode_image(path, size)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            bad.append((i, f"{type(exc).__name__}: {exc}".splitlines()[0][:200]))
    return bad


def _progress(total: int, label: str) -> tuple[Callable[[int], None], Callable[[], None]]:
    """(advance, stop) of a rich progress bar on a terminal; no-ops otherwise."""
    if not sys.stderr.isatty():
        return (lambda n: None), (lambda: None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True
    )
    bar.start()
    task = bar.add_task(label, total=total)
    return (lambda n: bar.advance(task, n)), bar.stop


def decode_tree(tree: Tree, size: int, out: np.ndarray, workers: int | None = None) -> list[tuple[int, str]]:
    """Decode every image of ``tree`` into ``out`` (N, 3, size, size) in parallel threads.

    Returns the (index, reason) of each unreadable file, sorted by index.
    """
    n = len(tree.files)
    workers = workers or min(32, os.cpu_count() or 1)
    chunk = max(1, min(256, -(-n // (4 * workers))))  # a few chunks per worker, for balance and progress
    paths = [tree.root / f for f in tree.files]
    advance, stop = _progress(n, f"decoding {n} images")
    bad: list[tuple[int, str]] = []
    try:
        with ThreadPoolExecutor(workers) as pool:
            futures = [
                (pool.submit(_decode_chunk, paths[lo : lo + chunk], lo, out, size), min(chunk, n - lo))
                for lo in range(0, n, chunk)
            ]
            for future, count in futures:
                bad.extend(future.result())
                advance(count)
    finally:
        stop()
    return sorted(bad)


def build_cache(tree: Tree, size: int, folder: Path | None, key: str) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """Decode the tree into ``folder`` (or into memory when it is None): (images, bad files)."""
    n = len(tree.files)
    shape = (n, 3, size, size)
    if folder is None:
        out = np.zeros(shape, dtype=np.uint8)
        return out, decode_tree(tree, size, out)
    array_path = folder / f"images-{key[:16]}.npy"
    tmp = array_path.with_name(f".{array_path.name}.{os.getpid()}.tmp")
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        bad = decode_tree(tree, size, out)
        out.flush()
        del out
        os.replace(tmp, array_path)
    finally:
        tmp.unlink(missing_ok=True)
    index = {
        "version": CACHE_VERSION,
        "key": key,
        "root": str(tree.root.resolve()),
        "image_size": size,
        "classes": tree.classes,
        "files": tree.files,
        "bad": [[i, reason] for i, reason in bad],
    }
    atomic_write_text(folder / f"index-{key[:16]}.json", json.dumps(index))
    _prune(folder, tree.root, size, key)
    return np.load(array_path, mmap_mode="r"), bad


def load_tree(cfg: ImageFolderOptions, tree: Tree) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """(images (N, 3, S, S) uint8, possibly memory-mapped, bad files) from the cache or by decoding."""
    size = cfg.image_size if cfg.image_size is not None else DEFAULT_SIZE
    key = cache_key(tree, size)
    folder = cache_folder(cfg, tree.root)
    if folder is not None:
        hit = _read_cache(folder, key, len(tree.files), size)
        if hit is not None:
            x, index = hit
            return x, [(int(i), str(reason)) for i, reason in index.get("bad", [])]
    else:
        warnings.warn(
            f"no writable cache folder for {str(tree.root)!r}; decoding every run (set data.cache_dir)", stacklevel=3
        )
    return build_cache(tree, size, folder, key)


# ---------------------------------------------------------------- the dataset


def load_imagefolder(cfg: ImageFolderOptions) -> ImageData:
    """The :class:`ImageData` of the image tree at ``cfg.root``."""
    if cfg.root is None:
        raise UserError("data.root is not set: imagefolder needs a folder of class folders (--set data.root=PATH)")
    tree = scan(Path(cfg.root).expanduser())
    if not tree.files:
        raise UserError(f"no images under {cfg.root!r}")
    x, bad = load_tree(cfg, tree)
    if bad:
        shown = "; ".join(f"{tree.files[i]} ({reason})" for i, reason in bad[:_SHOWN_BAD])
        more = f" and {len(bad) - _SHOWN_BAD} more" if len(bad) > _SHOWN_BAD else ""
        if not cfg.skip_corrupt:
            raise UserError(
                f"{len(bad)} unreadable image file(s) under {cfg.root!r}: {shown}{more}; "
                "fix or remove them, or set data.skip_corrupt=true to skip them"
            )
        warnings.warn(f"skipped {len(bad)} unreadable image file(s) under {cfg.root!r}: {shown}{more}", stacklevel=2)
    good = np.ones(len(tree.files), dtype=bool)
    good[[i for i, _ in bad]] = False
    labels = torch.tensor(tree.labels, dtype=torch.int64)
    split_of = np.array(tree.splits)
    parts: dict[str, tuple[torch.Tensor, torch.Tensor, None]] = {}
    for split in SPLITS:
        if split not in tree.splits:
            continue
        idx = np.flatnonzero((split_of == split) & good)
        if len(idx) == 0:
            raise UserError(f"no readable {split} images under {cfg.root!r}; all of them are unreadable")
        # Fancy indexing copies the rows out of the memory map into memory.
        parts[split] = (torch.from_numpy(x[idx]), labels[torch.from_numpy(idx)], None)
    return assemble(cfg, parts["train"], tree.classes, test=parts.get("test"), val=parts.get("val"))


@DATASETS.register("imagefolder", options=ImageFolderOptions)
def imagefolder(cfg: ImageFolderOptions) -> ImageData:
    """Class folders of images (data.root; Kaggle Intel and train/test layouts), decoded once into a cache."""
    return load_imagefolder(cfg)
