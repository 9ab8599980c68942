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
Symbolic links are followed, but a second way into a folder or file already listed (a link
loop, a link to another class or split) is refused, since its images would count twice; so
is an image name that is no regular file (a dangling link, a FIFO, a folder), before
anything opens it. An image whose header claims more than PIL's ``Image.MAX_IMAGE_PIXELS``
pixels is an unreadable file, never decoded.

Why a cache: decoding JPEGs costs far more than a small CNN's epoch on the decoded pixels.
The tree is decoded once, in parallel threads (PIL releases the GIL while decoding and
resizing), into a uint8 ``images-<key>.npy`` of shape (N, 3, S, S) with an
``index-<key>.json`` beside it. The key hashes the tree's absolute path, its listing (each
image's relative name, size and modification time), the classes and the image size, so an
added, removed, replaced or touched image, or a new ``data.image_size``, builds a new cache,
two folders never share one, and anything else is a hit that reads the memory-mapped array
without decoding. The cache lives in ``data.cache_dir`` when set, by default in the user cache
folder: ``$XDG_CACHE_HOME/softmaxlab/imagefolder/<digest of the root>/`` (``~/.cache/...``
without XDG_CACHE_HOME). Nothing is ever written into the image folder itself. The run that
fills a cache says where and how big it is (:attr:`ImageData.notes`).
The array is decoded into a temporary file of its own (pid and a random part in the name)
and renamed into place, then the index is written the same way, so an interrupted build
leaves no half-written cache and parallel runs of a sweep can build it at the same time (the
last rename wins; all hold the same pixels); the array's space is reserved before decoding,
so a full disk is a one-line error, not a crash. An index that does not match the tree in
every field is a cache miss: the tree is decoded again. Older caches of the same folder and
image size are removed once a new one is in place.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import secrets
import stat
import sys
import tempfile
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from softmaxlab import runs
from softmaxlab.data.base import DATASETS, HoldoutOptions, ImageData
from softmaxlab.data.common import assemble, expand_root, user_cache_dir
from softmaxlab.errors import WRITE_ERRNOS, UserError
from softmaxlab.untrusted import regular_file

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
CACHE_VERSION = 2  # bump when the decoding or the key changes, so old caches are not reused
SPLITS = ("train", "val", "test")
# px, when data.image_size is unset: the images of a tree differ in size, so none is "its own". The Intel
# scenes at 64 px score 3.4 points above the same images at 32 px with the default recipe (docs/guide/defaults.md).
DEFAULT_SIZE = 64


class ImageFolderOptions(HoldoutOptions):
    """Options of ``imagefolder``."""

    skip_corrupt: bool = False  # skip unreadable images with a warning (false: stop, naming them)
    # Where decoded images are cached; None = the user cache folder, $XDG_CACHE_HOME/softmaxlab/imagefolder/
    # (~/.cache/softmaxlab/imagefolder/ without XDG_CACHE_HOME), one subfolder per image folder. Nothing
    # is written into the image folder itself unless this points there.
    cache_dir: str | None = None


_SHOWN_BAD = 3  # bad files named in an error message
#: The largest cache index read, per image: a path and a reason of a few hundred bytes each, with room to spare.
_MAX_INDEX_BYTES_PER_FILE = 8192


@dataclass
class Tree:
    """The images of a tree: paths relative to the root, labels, and the split of each."""

    root: Path
    classes: list[str]
    files: list[str]  # relative POSIX paths, sorted within each split and class
    labels: list[int]
    splits: list[str]  # "train", "val" or "test" for each file (as given by the layout)
    # (size, mtime_ns) of each file as the scan found it: the cache key needs them, and the scan has
    # stat()ed every file already, so they are not asked for twice on every run.
    stats: list[tuple[int, int]] = field(default_factory=list)


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


class _Seen:
    """The real folders and files (``st_dev``, ``st_ino``) a scan has reached, each with the path it
    was first reached by.

    ``os.walk(followlinks=True)`` alone follows a link loop (``loop -> .``) until the path is
    too long, listing every image once per turn; a link from one class or split to another
    lists the same images under two labels, or test images among the training ones. A second
    way into the same folder or file is therefore refused; links to anything not yet reached
    (a folder elsewhere on the disk) are still followed.
    """

    def __init__(self) -> None:
        self.dirs: dict[tuple[int, int], str] = {}
        self.files: dict[tuple[int, int], str] = {}

    def add_dir(self, path: str, st: os.stat_result) -> None:
        first = self.dirs.setdefault((st.st_dev, st.st_ino), path)
        if first != path:
            raise UserError(
                f"{path!r} is the same folder as {first!r} (reached again through a symbolic link): its images "
                "would be counted twice; remove the link"
            )

    def add_file(self, path: str, st: os.stat_result) -> None:
        first = self.files.setdefault((st.st_dev, st.st_ino), path)
        if first != path:
            raise UserError(
                f"{path!r} is the same file as {first!r} (a symbolic or hard link): the image would be counted "
                "twice; remove one of them"
            )


def _stat(path: str, image: bool) -> os.stat_result:
    """``os.stat(path)`` of an entry found by the scan; for an image name, only a regular file.

    Checked before anything opens the file: opening a FIFO named ``x.jpg`` blocks forever,
    and a dangling link or a folder named ``x.jpg`` is no image either.
    """
    try:
        st = os.stat(path)
    except OSError:
        st = None
    if st is None or (image and not stat.S_ISREG(st.st_mode)):
        if image:
            regular_file(path, "image file", "remove it or rename it: a file with an image extension must be an image")
        raise UserError(f"cannot read {path!r} (it vanished or cannot be accessed); check the image folder")
    return st


def _entries(folder: str) -> list[os.DirEntry[str]]:
    """The visible entries of ``folder``, sorted by name."""
    try:
        with os.scandir(folder) as it:
            return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError as exc:  # os.walk skips an unreadable folder silently, and its images with it
        why = exc.strerror or type(exc).__name__
        raise UserError(f"cannot read the folder {folder!r} ({why}); make it readable or remove it") from None


def _images_in(folder: Path, root: Path, seen: _Seen) -> tuple[list[str], list[tuple[int, int]]]:
    """Relative POSIX paths (to ``root``) of the images anywhere under ``folder``, and the
    (size, mtime_ns) of each; in the order of a top-down ``os.walk`` with sorted names.

    Plain strings, not Path objects: a tree of tens of thousands of images is listed on
    every run, cache hit or not, so this is kept cheap (one ``stat`` per entry).
    """
    found: list[str] = []
    stats: list[tuple[int, int]] = []
    stack = [str(folder)]
    while stack:
        dirpath = stack.pop()
        rel = Path(os.path.relpath(dirpath, root)).as_posix()  # once per folder, not per file
        subdirs = []
        for entry in _entries(dirpath):
            if entry.name.lower().endswith(IMAGE_EXTENSIONS):
                st = _stat(entry.path, image=True)
                seen.add_file(entry.path, st)
                found.append(f"{rel}/{entry.name}")
                stats.append((st.st_size, st.st_mtime_ns))
            elif entry.is_dir():  # follows links, as os.walk(followlinks=True) did
                seen.add_dir(entry.path, _stat(entry.path, image=False))
                subdirs.append(entry.path)
        stack.extend(reversed(subdirs))  # depth first, in name order: the files keep os.walk's order
    return found, stats


def _class_dirs(layout: dict[str, Path], classes: list[str], train_dirs: list[Path]) -> dict[str, list[Path]]:
    """The class folders of each split; a class that the training folder lacks is a UserError."""
    found = {}
    for split, folder in layout.items():
        dirs = train_dirs if split == "train" else _visible_dirs(folder)
        unknown = [d.name for d in dirs if d.name not in classes]
        if unknown:
            raise UserError(
                f"{str(folder)!r} has class folders that the training folder {str(layout['train'])!r} lacks: "
                f"{', '.join(unknown[:5])}; every class needs training images"
            )
        found[split] = dirs
    return found


def scan(root: Path) -> Tree:
    """Find the layout, the classes and every image under ``root``; bad trees are UserErrors."""
    if not root.is_dir():
        what = "does not exist" if not root.exists() else "is not a folder"
        raise UserError(f"image folder {str(root)!r} {what}; set data.root to a folder of class folders")
    layout = find_layout(root)
    train_dirs = _visible_dirs(layout["train"])
    classes = [d.name for d in train_dirs]
    if not classes:
        raise UserError(
            f"no class folders in {str(layout['train'])!r}; expected <class>/<image> folders "
            "(or train/ and test/, or Kaggle's seg_train/seg_train/)"
        )
    by_split = _class_dirs(layout, classes, train_dirs)
    # The root and the folders above it, the split folders and every class folder are known before
    # any is walked, so that a link to one of them is refused at the link, whichever class is walked first.
    seen = _Seen()
    above = list(reversed(root.resolve().parents))
    for folder in [*above, root, *layout.values(), *(d for dirs in by_split.values() for d in dirs)]:
        seen.add_dir(str(folder), _stat(str(folder), image=False))
    tree = Tree(root, classes, [], [], [])
    for split, dirs in by_split.items():
        for d in dirs:
            images, stats = _images_in(d, root, seen)
            if not images:
                raise UserError(
                    f"class folder {str(d)!r} holds no images ({', '.join(IMAGE_EXTENSIONS)}); add images or remove it"
                )
            tree.files.extend(images)
            tree.stats.extend(stats)
            tree.labels.extend([classes.index(d.name)] * len(images))
            tree.splits.extend([split] * len(images))
    if len(classes) < 2:
        raise UserError(f"{str(layout['train'])!r} has a single class folder ({classes[0]}); a classifier needs two")
    return tree


# ---------------------------------------------------------------- the cache


def cache_key(tree: Tree, image_size: int) -> str:
    """SHA-256 over the tree's absolute path, its listing (split, relative name, size and
    modification time of every image), the classes, the image size and the cache version: a
    changed folder or decoding gives a new key, and two folders never share one."""
    h = hashlib.sha256()
    h.update(json.dumps([CACHE_VERSION, str(tree.root.resolve()), image_size, tree.classes]).encode())
    root = str(tree.root)
    stats = tree.stats or [(st.st_size, st.st_mtime_ns) for st in (os.stat(os.path.join(root, f)) for f in tree.files)]
    for rel, split, (size, mtime_ns) in zip(tree.files, tree.splits, stats, strict=True):
        h.update(f"\n{split}\0{rel}\0{size}\0{mtime_ns}".encode())
    return h.hexdigest()


def default_cache_folder(root: Path) -> Path:
    """``<user cache folder>/imagefolder/<16 hex digits of the root's absolute path>``: one folder
    per image folder, so its caches are found (and removed) without reading any other's."""
    digest = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    return user_cache_dir() / "imagefolder" / digest


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
        return True
    except OSError:
        return False


def cache_folder(cfg: ImageFolderOptions, root: Path) -> Path | None:
    """Where the cache of ``root`` lives: ``data.cache_dir``, else :func:`default_cache_folder`;
    None when the default cannot be written (the tree is then decoded on every run).

    Never inside the image folder unless ``data.cache_dir`` says so: data folders are often
    shared, read-only or synced, and tens of MB of decoded pixels do not belong there.
    """
    if cfg.cache_dir is not None:
        folder = expand_root(cfg.cache_dir, "data.cache_dir")
        if not _writable(folder):
            raise UserError(f"data.cache_dir {str(folder)!r} cannot be written; choose a writable folder")
        return folder
    folder = default_cache_folder(root)
    if folder.resolve().is_relative_to(root.resolve()):  # XDG_CACHE_HOME inside the data
        raise UserError(
            f"the user cache folder {str(folder)!r} lies inside the image folder {str(root)!r}, which is never "
            "written to; set data.cache_dir (or XDG_CACHE_HOME) to a folder outside it"
        )
    return folder if _writable(folder) else None


def _index_bad(index: Any, tree: Tree, key: str, image_size: int) -> list[tuple[int, str]] | None:
    """The bad files recorded by a cache index, or None when the index is not the one of this
    tree and image size: anything else in it (edited by hand, torn, from another version) is a
    cache miss, so the tree is decoded again and the index rewritten."""
    if not isinstance(index, dict):
        return None
    expected = {"version": CACHE_VERSION, "key": key, "image_size": image_size, "classes": tree.classes}
    if any(index.get(k) != v for k, v in expected.items()) or index.get("files") != tree.files:
        return None
    bad = index.get("bad")
    n = len(tree.files)
    if not isinstance(bad, list):
        return None
    out = []
    for item in bad:
        if not (isinstance(item, list) and len(item) == 2 and type(item[0]) is int and isinstance(item[1], str)):
            return None
        if not 0 <= item[0] < n:
            return None
        out.append((item[0], item[1]))
    return sorted(set(out))


def _read_cache(folder: Path, tree: Tree, key: str, image_size: int) -> tuple[np.ndarray, list[tuple[int, str]]] | None:
    """(images, bad files) of the cache of ``key`` in ``folder``; None on any miss."""
    index_path, array_path = folder / f"index-{key[:16]}.json", folder / f"images-{key[:16]}.npy"
    n = len(tree.files)
    try:
        if index_path.stat().st_size > _MAX_INDEX_BYTES_PER_FILE * (n + 100):  # not ours: do not read it all
            return None
        bad = _index_bad(json.loads(index_path.read_text(encoding="utf-8")), tree, key, image_size)
        if bad is None:
            return None
        x = np.load(array_path, mmap_mode="r")  # allow_pickle=False: an object array is a miss
    except (OSError, ValueError, RecursionError):  # absent, unreadable, not JSON, not a .npy of its size
        return None
    if x.shape != (n, 3, image_size, image_size) or x.dtype != np.uint8 or not x.flags.c_contiguous:
        return None
    return x, bad


def _prune(folder: Path, root: Path, image_size: int, keep: str) -> None:
    """Remove older caches of the same root and image size (superseded by a changed tree).

    Best effort: a cache that cannot be read or removed is only wasted space.
    """
    for index_path in folder.glob("index-*.json"):
        tag = index_path.stem[len("index-") :]
        if tag == keep[:16]:
            continue
        try:
            index = json.loads(index_path.read_text(encoding="utf-8"))
            mine = isinstance(index, dict) and index.get("root") == str(root.resolve())
            if mine and index.get("image_size") == image_size:
                for stale in (index_path, folder / f"images-{tag}.npy"):
                    stale.unlink(missing_ok=True)
        except (OSError, ValueError, RecursionError):
            continue


# ---------------------------------------------------------------- decoding


def decode_image(path: Path, size: int) -> np.ndarray:
    """One image file -> uint8 (3, size, size) RGB; raises OSError / ValueError when unreadable,
    and PIL's decompression-bomb error (or warning, when :func:`decode_tree` makes it an error)
    when the header claims more than ``Image.MAX_IMAGE_PIXELS`` pixels."""
    with Image.open(path) as im:
        # JPEG only: let the decoder scale down by a power of two while staying >= 2x the target.
        im.draft("RGB", (2 * size, 2 * size))
        rgb = im.convert("RGB")
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(rgb).transpose(2, 0, 1)


#: What decoding one file may raise for a file that is not a readable image (not a bug).
_UNREADABLE = (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning)


def _decode_chunk(paths: list[Path], start: int, out: np.ndarray, size: int) -> list[tuple[int, str]]:
    """Decode ``paths`` into ``out[start:]``; the (index, reason) of each unreadable file."""
    bad = []
    for i, path in enumerate(paths, start):
        try:
            out[i] = decode_image(path, size)
        except _UNREADABLE as exc:
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

    Returns the (index, reason) of each unreadable file, sorted by index. An image whose
    header claims more than ``Image.MAX_IMAGE_PIXELS`` pixels is one of them: PIL refuses
    twice that itself and only warns between 1x and 2x, when decoding would still take
    gigabytes in each of the threads.
    """
    n = len(tree.files)
    workers = workers or min(32, os.cpu_count() or 1)
    chunk = max(1, min(256, -(-n // (4 * workers))))  # a few chunks per worker, for balance and progress
    paths = [tree.root / f for f in tree.files]
    advance, stop = _progress(n, f"decoding {n} images")
    bad: list[tuple[int, str]] = []
    # The warnings filters are process-wide, so this one reaches the worker threads; it lasts
    # exactly as long as they run.
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
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


def _reserve(path: Path, shape: tuple[int, ...]) -> None:
    """Create the ``.npy`` file ``path`` of uint8 ``shape`` with all its blocks allocated.

    Why: a write into a memory map that finds the disk full is not an OSError but SIGBUS,
    which kills the process without a message and leaves the partial file behind. With the
    space reserved first (``posix_fallocate``, or zeros written where the file system has no
    fallocate), a full disk is an ENOSPC here, before anything is decoded.
    """
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False, "shape": shape}
    # O_EXCL: a name another process (a sweep's other worker) is filling is never opened twice.
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as f:
        np.lib.format.write_array_header_2_0(f, header)
        total = f.tell() + math.prod(shape)
        fallocate = getattr(os, "posix_fallocate", None)  # absent on macOS
        if fallocate is not None:
            try:
                fallocate(f.fileno(), 0, total)
                return
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    raise
        zeros = bytes(2**20)
        while f.tell() < total:
            f.write(zeros[: total - f.tell()])
        f.flush()


def _cache_error(exc: OSError, path: Path) -> UserError:
    """The one-line error for an OSError while writing the cache file ``path``."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        what = "the disk is full"
    elif exc.errno in WRITE_ERRNOS:
        what = "it is not writable"
    else:
        what = "the write failed"
    return UserError(
        f"cannot write the image cache {str(path)!r}: {what} ({exc.strerror or type(exc).__name__}); nothing was "
        "kept: free space there or set data.cache_dir to a folder with room, then run the same command again"
    )


def _tmp_name(path: Path) -> Path:
    """A temporary name beside ``path``, distinct for every process and call (pid and a random part):
    two processes filling the same cache each write their own file, and the last rename wins."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def _size_text(n: int) -> str:
    """``2.3 MB`` (decimal units, as ``du --si`` and file managers show them)."""
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def build_cache(tree: Tree, size: int, folder: Path | None, key: str) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """Decode the tree into ``folder`` (or into memory when it is None): (images, bad files).

    Any OSError writing the cache (a full disk, above all) is a UserError naming the file;
    the temporary files are removed and no cache is left half-written. Safe when several
    processes build the same cache at once: each decodes into its own temporary file and
    renames it into place, and every one of them holds the same pixels.
    """
    n = len(tree.files)
    shape = (n, 3, size, size)
    if folder is None:
        out = np.zeros(shape, dtype=np.uint8)
        return out, decode_tree(tree, size, out)
    array_path, index_path = folder / f"images-{key[:16]}.npy", folder / f"index-{key[:16]}.json"
    tmp = _tmp_name(array_path)
    try:
        _reserve(tmp, shape)
        out = np.lib.format.open_memmap(tmp, mode="r+")
        bad = decode_tree(tree, size, out)
        out.flush()
        del out
        # The array first: an array without its index is a miss, an index without its array too.
        os.replace(tmp, array_path)
    except OSError as exc:
        raise _cache_error(exc, array_path) from None
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
    runs.atomic_write_text(index_path, json.dumps(index))  # a UserError naming the file when it fails
    _prune(folder, tree.root, size, key)
    return np.load(array_path, mmap_mode="r"), bad


def load_tree(cfg: ImageFolderOptions, tree: Tree) -> tuple[np.ndarray, list[tuple[int, str]], str | None]:
    """(images (N, 3, S, S) uint8, possibly memory-mapped, bad files, note) from the cache or by
    decoding; the note, when this call filled the cache, says where and how big it is."""
    size = cfg.image_size if cfg.image_size is not None else DEFAULT_SIZE
    key = cache_key(tree, size)
    folder = cache_folder(cfg, tree.root)
    if folder is None:
        warnings.warn(
            f"no writable cache folder for {str(tree.root)!r}; decoding every run (set data.cache_dir)", stacklevel=3
        )
        return (*build_cache(tree, size, None, key), None)
    hit = _read_cache(folder, tree, key, size)
    if hit is not None:
        return (*hit, None)
    x, bad = build_cache(tree, size, folder, key)
    # The pixels' size, not the files' (stat-ing them again races a parallel run's pruning): within 0.1 %.
    note = f"cached {len(tree.files):,} decoded images of {size} px in {str(folder)!r} ({_size_text(x.nbytes)})"
    return x, bad, note


# ---------------------------------------------------------------- the dataset


def load_imagefolder(cfg: ImageFolderOptions) -> ImageData:
    """The :class:`ImageData` of the image tree at ``cfg.root``."""
    if cfg.root is None:
        raise UserError("data.root is not set: imagefolder needs a folder of class folders (--set data.root=PATH)")
    tree = scan(expand_root(cfg.root))
    if not tree.files:
        raise UserError(f"no images under {cfg.root!r}")
    x, bad, note = load_tree(cfg, tree)
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
    data = assemble(cfg, parts["train"], tree.classes, test=parts.get("test"), val=parts.get("val"))
    data.notes.extend([note] if note else [])
    return data


@DATASETS.register("imagefolder", options=ImageFolderOptions)
def imagefolder(cfg: ImageFolderOptions) -> ImageData:
    """Class folders of images (data.root; Kaggle Intel and train/test layouts), decoded once into a cache."""
    return load_imagefolder(cfg)
