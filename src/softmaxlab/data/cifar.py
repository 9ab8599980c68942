"""``cifar10`` and ``cifar100``: the official python-pickle releases.

``data.root`` is the folder that holds ``cifar-10-batches-py/`` or ``cifar-100-python/``
(the folder itself is accepted too). With ``data.download: true`` missing files are fetched
by torchvision's downloader, which verifies the archive's MD5 checksum; the URL, file name
and checksum are torchvision's own, so there is one source of truth for them.

The files are read with an unpickler that only builds dicts, lists, strings and numpy
arrays, so a tampered file cannot run code. CIFAR has no official validation split:
``data.val_fraction`` of the training images are held out, stratified and seeded by
``data.seed``. CIFAR-100 carries its two-level hierarchy: with ``data.labels: fine`` the 100
fine classes with each image's coarse label and ``coarse_of`` (the superclass of each fine
class, read from the files); with ``data.labels: coarse`` the 20 superclasses as the classes.
"""

from __future__ import annotations

import pickle
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from softmaxlab.data.base import DATASETS, ImageData, OnDiskOptions
from softmaxlab.data.common import assemble, expand_root
from softmaxlab.errors import UserError
from softmaxlab.untrusted import regular_file


@dataclass(frozen=True)
class CifarFormat:
    """Where the files of one release are and which keys they use."""

    name: str  # registry name
    title: str  # for messages
    folder: str  # the folder the official archive extracts to
    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: str
    labels_key: str  # fine labels in each batch
    names_key: str  # fine class names in the meta file
    torchvision_class: str  # torchvision.datasets class that holds the URL and checksum


CIFAR10 = CifarFormat(
    "cifar10",
    "CIFAR-10",
    "cifar-10-batches-py",
    tuple(f"data_batch_{i}" for i in range(1, 6)),
    ("test_batch",),
    "batches.meta",
    "labels",
    "label_names",
    "CIFAR10",
)
CIFAR100 = CifarFormat(
    "cifar100",
    "CIFAR-100",
    "cifar-100-python",
    ("train",),
    ("test",),
    "meta",
    "fine_labels",
    "fine_label_names",
    "CIFAR100",
)

#: The largest file read, in bytes: the largest official one (CIFAR-100's train, about 155 MB) with room to spare.
MAX_FILE_BYTES = 256 * 2**20

# (module, name) pairs a CIFAR pickle may reference: numpy array reconstruction only.
_ALLOWED = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that refuses every global except numpy's array reconstruction."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module.startswith("numpy.core"):  # numpy 2 renamed numpy.core to numpy._core
            try:
                return super().find_class("numpy._core" + module[len("numpy.core") :], name)
            except (ImportError, AttributeError):
                pass
        return super().find_class(module, name)


def _str_keys(obj: Any) -> Any:
    """Pickles written by Python 2 (the official ones) may have bytes keys and names."""
    if isinstance(obj, dict):
        return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}
    return obj


def _fix_command(fmt: CifarFormat, root: str, labels: str = "fine") -> str:
    coarse = " --set data.labels=coarse" if labels == "coarse" else ""
    return (
        f"softmaxlab run --set data.name={fmt.name}{coarse} --set data.root={shlex.quote(root)} "
        "--set data.download=true"
    )


def _corrupt(fmt: CifarFormat, path: Path, why: str) -> UserError:
    folder = path.parent
    return UserError(
        f"{fmt.title} file {str(path)!r} is corrupt ({why}); delete {str(folder)!r} and download it again with: "
        f"{_fix_command(fmt, str(folder.parent))}"
    )


#: What unpickling a damaged or tampered file may raise (not a bug of ours).
_PICKLE_ERRORS = (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError)


def _unpickle(fmt: CifarFormat, path: Path) -> dict[str, Any]:
    """The dict pickled in ``path``, read with :class:`_ArrayUnpickler`.

    A pickle states the length of each string before it: a few bytes claiming a 2**60-byte
    one make the unpickler ask for that much memory (MemoryError, or OverflowError past the
    address space). Files larger than any official one are refused before reading, and
    those errors are a corrupt file like any other.
    """
    regular_file(path, f"{fmt.title} file", f"download it again with: {_fix_command(fmt, str(path.parent.parent))}")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise _corrupt(fmt, path, f"{size / 2**20:,.0f} MiB, larger than any official file")
    try:
        with path.open("rb") as f:
            obj = _ArrayUnpickler(f, encoding="latin1").load()
    except _PICKLE_ERRORS as exc:
        raise _corrupt(fmt, path, f"not a readable pickle: {type(exc).__name__}") from None
    except (MemoryError, OverflowError):
        raise _corrupt(fmt, path, "it declares an object larger than the memory") from None
    obj = _str_keys(obj)
    if not isinstance(obj, dict):
        raise _corrupt(fmt, path, f"expected a dict, found {type(obj).__name__}")
    return obj


def _names(fmt: CifarFormat, meta: dict[str, Any], key: str, path: Path) -> list[str]:
    names = meta.get(key)
    if not isinstance(names, list | tuple) or len(names) < 2:
        raise _corrupt(fmt, path, f"no list of class names under {key!r}")
    return [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names]


def _labels(fmt: CifarFormat, batch: dict[str, Any], key: str, n: int, k: int, path: Path) -> Tensor:
    labels = batch.get(key)
    try:
        y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    except (TypeError, ValueError):
        y = None
    if y is None or y.shape != (n,):
        raise _corrupt(fmt, path, f"{key!r} must be {n} integer labels")
    if n and (int(y.min()) < 0 or int(y.max()) >= k):
        raise _corrupt(fmt, path, f"{key!r} has labels outside 0..{k - 1}")
    return y


def _read_batch(fmt: CifarFormat, path: Path, num_fine: int, num_coarse: int) -> tuple[Tensor, Tensor, Tensor | None]:
    """One batch file -> (x uint8 (n, 3, 32, 32), fine labels (n,), coarse labels (n,) or None)."""
    batch = _unpickle(fmt, path)
    data = batch.get("data")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise _corrupt(fmt, path, f"'data' must be a uint8 array of shape (N, 3072), found {got}")
    n = data.shape[0]
    # Each row is 1024 red, then 1024 green, then 1024 blue values, row-major: already NCHW.
    x = torch.from_numpy(np.ascontiguousarray(data).reshape(n, 3, 32, 32).copy())
    y = _labels(fmt, batch, fmt.labels_key, n, num_fine, path)
    coarse = _labels(fmt, batch, "coarse_labels", n, num_coarse, path) if num_coarse else None
    return x, y, coarse


def _find_folder(fmt: CifarFormat, root: Path) -> Path | None:
    if (root / fmt.folder).is_dir():
        return root / fmt.folder
    if root.name == fmt.folder and root.is_dir():
        return root
    return None


def _missing_files(fmt: CifarFormat, folder: Path | None) -> list[str]:
    names = [*fmt.train, *fmt.test, fmt.meta]
    # exists(), not is_file(): a folder or a pipe in a file's place is named as such by _unpickle.
    return names if folder is None else [n for n in names if not (folder / n).exists()]


def download(fmt: CifarFormat, root: Path) -> None:
    """Download and extract the official archive into ``root`` with torchvision's downloader.

    The archive's MD5 checksum is verified (torchvision raises when it does not match).
    """
    import torchvision.datasets
    from torchvision.datasets import utils

    source = getattr(torchvision.datasets, fmt.torchvision_class)
    try:
        root.mkdir(parents=True, exist_ok=True)
        utils.download_and_extract_archive(
            source.url, download_root=str(root), filename=source.filename, md5=source.tgz_md5
        )
    except (OSError, RuntimeError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(
            f"downloading {fmt.title} from {source.url} failed ({reason}); check the network, or download and "
            f"extract {source.filename} into {str(root)!r} by hand"
        ) from None


class CifarOptions(OnDiskOptions):
    """Options of ``cifar10`` (and, with ``labels``, of ``cifar100``)."""

    download: bool = False  # fetch missing files (torchvision's downloader, MD5-checked)


class Cifar100Options(CifarOptions):
    """Options of ``cifar100``."""

    labels: Literal["fine", "coarse"] = "fine"  # the 100 fine classes (with the hierarchy) or the 20 coarse


def locate(fmt: CifarFormat, cfg: CifarOptions) -> Path:
    """The folder with the official files, downloading them first when allowed."""
    labels = getattr(cfg, "labels", "fine")
    if cfg.root is None:
        raise UserError(
            f"data.root is not set: {fmt.name} needs the folder that holds (or will hold) {fmt.folder}/; "
            f"download it with: {_fix_command(fmt, 'data', labels)}"
        )
    root = expand_root(cfg.root)
    folder = _find_folder(fmt, root)
    missing = _missing_files(fmt, folder)
    if missing and cfg.download:
        download(fmt, root)
        folder = _find_folder(fmt, root)
        missing = _missing_files(fmt, folder)
    if folder is None:
        raise UserError(
            f"{fmt.title} not found: {str(root)!r} has no {fmt.folder}/ folder; download it with: "
            f"{_fix_command(fmt, cfg.root, labels)}"
        )
    if missing:
        raise UserError(
            f"{fmt.title} in {str(folder)!r} is incomplete (missing {', '.join(missing)}); download it again with: "
            f"{_fix_command(fmt, cfg.root, labels)}"
        )
    return folder


def _coarse_of(fmt: CifarFormat, fine: Tensor, coarse: Tensor, num_fine: int, folder: Path) -> Tensor:
    """(K,) the superclass of each fine class, from the (fine, coarse) label pairs."""
    coarse_of = torch.full((num_fine,), -1, dtype=torch.int64)
    coarse_of[fine] = coarse
    if (coarse_of[fine] != coarse).any():
        k = int(fine[coarse_of[fine] != coarse][0])
        raise _corrupt(fmt, folder / fmt.train[0], f"fine class {k} appears under two coarse classes")
    if (coarse_of < 0).any():
        k = int((coarse_of < 0).nonzero()[0])
        raise _corrupt(fmt, folder / fmt.train[0], f"fine class {k} has no images, so its coarse class is unknown")
    return coarse_of


def load_cifar(fmt: CifarFormat, cfg: CifarOptions) -> ImageData:
    """Read the official files of ``fmt`` into an :class:`ImageData`."""
    folder = locate(fmt, cfg)
    meta = _unpickle(fmt, folder / fmt.meta)
    classes = _names(fmt, meta, fmt.names_key, folder / fmt.meta)
    coarse_classes = _names(fmt, meta, "coarse_label_names", folder / fmt.meta) if fmt is CIFAR100 else None
    num_coarse = len(coarse_classes) if coarse_classes else 0

    def read(files: tuple[str, ...]) -> tuple[Tensor, Tensor, Tensor | None]:
        parts = [_read_batch(fmt, folder / f, len(classes), num_coarse) for f in files]
        x, y = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        coarse = torch.cat([p[2] for p in parts if p[2] is not None]) if num_coarse else None
        return x, y, coarse

    train, test = read(fmt.train), read(fmt.test)
    if coarse_classes is None:
        return assemble(cfg, train, classes, test=test)
    assert train[2] is not None and test[2] is not None
    if getattr(cfg, "labels", "fine") == "coarse":  # the 20 superclasses are the classes; no hierarchy below them
        return assemble(cfg, (train[0], train[2], None), coarse_classes, test=(test[0], test[2], None))
    fine, coarse = torch.cat([train[1], test[1]]), torch.cat([train[2], test[2]])
    coarse_of = _coarse_of(fmt, fine, coarse, len(classes), folder)
    return assemble(cfg, train, classes, test=test, coarse_classes=coarse_classes, coarse_of=coarse_of)


@DATASETS.register("cifar10", options=CifarOptions)
def cifar10(cfg: CifarOptions) -> ImageData:
    """CIFAR-10: 10 classes, 50,000 training and 10,000 test images of 32x32 (official files)."""
    return load_cifar(CIFAR10, cfg)


@DATASETS.register("cifar100", options=Cifar100Options)
def cifar100(cfg: Cifar100Options) -> ImageData:
    """CIFAR-100: 100 fine classes in 20 superclasses (data.labels: fine | coarse), official files."""
    return load_cifar(CIFAR100, cfg)
