"""Fixtures for the dataset tests: CIFAR files in the official pickle format, image trees.

Everything is written into ``tmp_path``; nothing here needs the network or ``../shared``.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import struct
import threading
import zlib
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def cifar100_coarse_of(k: int) -> int:
    """The test hierarchy: 5 fine classes per superclass, not contiguous (7 is coprime to 20)."""
    return (7 * k) % 20


def _dump(path: Path, obj: dict) -> None:
    # Protocol 2 with str keys: what Python 2's cPickle wrote, as read back with encoding="latin1".
    with path.open("wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar(root: Path, kind: str = "cifar10", per_batch: int = 20, seed: int = 0) -> Path:
    """Write a small CIFAR release in the official format under ``root``; returns its folder.

    cifar10: ``cifar-10-batches-py/data_batch_1..5``, ``test_batch`` (``per_batch`` images
    each) and ``batches.meta``. cifar100: ``cifar-100-python/train`` (5 x ``per_batch``
    images), ``test`` and ``meta``; every fine class appears in train (labels cycle 0..99
    when there are at least 100 images).
    """
    rng = np.random.default_rng(seed)

    def batch(n: int, label: str, offset: int) -> dict:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [(offset + i) % (10 if kind == "cifar10" else 100) for i in range(n)]
        out = {"batch_label": label, "data": data, "filenames": [f"img_{offset + i:05d}.png" for i in range(n)]}
        if kind == "cifar10":
            out["labels"] = labels
        else:
            out["fine_labels"] = labels
            out["coarse_labels"] = [cifar100_coarse_of(k) for k in labels]
        return out

    if kind == "cifar10":
        folder = root / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        for i in range(1, 6):
            _dump(folder / f"data_batch_{i}", batch(per_batch, f"training batch {i} of 5", i * per_batch))
        _dump(folder / "test_batch", batch(per_batch, "testing batch 1 of 1", 0))
        _dump(
            folder / "batches.meta", {"num_cases_per_batch": per_batch, "label_names": CIFAR10_NAMES, "num_vis": 3072}
        )
    else:
        folder = root / "cifar-100-python"
        folder.mkdir(parents=True)
        _dump(folder / "train", batch(5 * per_batch, "training batch 1 of 1", 0))
        _dump(folder / "test", batch(per_batch, "testing batch 1 of 1", 0))
        meta = {
            "fine_label_names": [f"fine{k:02d}" for k in range(100)],
            "coarse_label_names": [f"coarse{c:02d}" for c in range(20)],
        }
        _dump(folder / "meta", meta)
    return folder


def write_image(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (20, 12), mode: str = "RGB") -> None:
    """A small image of one colour with a lighter square, saved in the format of its suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", size, colour)
    img.paste((255, 255, 255), (2, 2, 6, 6))
    img.convert(mode).save(path)


def write_png_claiming(path: Path, width: int, height: int) -> None:
    """A PNG of a few hundred bytes whose header (IHDR) claims ``width`` x ``height`` pixels:
    a tiny real image with the two sizes and the chunk's CRC patched."""
    write_image(path, (10, 20, 30), size=(4, 4))
    data = bytearray(path.read_bytes())
    # 8-byte signature, then the IHDR chunk: length (4), type (4), width (4), height (4), ..., CRC.
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))


def finishes(call: Callable[[], object], fifo: Path | None = None, timeout: float = 30.0) -> object:
    """``call()``'s result, or the exception it raised, run in a thread that must end within
    ``timeout`` seconds: a scan that opens a FIFO would block forever (pytest-timeout is not
    installed). On a hang, a writer opened on ``fifo`` ends the read so the process can exit."""
    outcome: list[object] = []

    def target() -> None:
        try:
            outcome.append(call())
        except BaseException as exc:  # handed back to the test, which asserts on it
            outcome.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        if fifo is not None:
            with contextlib.suppress(OSError):  # ENXIO: nobody is reading it after all
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # the blocked reader gets EOF
            thread.join(timeout)
        raise AssertionError(f"still running after {timeout:.0f} s (blocked on a FIFO?)")
    return outcome[0]


def listing(root):
    """Every entry under ``root``, hidden ones and folders included: (kind, size, mtime_ns). A
    folder's mtime changes when anything is created in it, even a temporary file removed again."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            kind = "dir" if name in dirnames else "file"
            out[os.path.relpath(os.path.join(dirpath, name), root)] = (kind, st.st_size, st.st_mtime_ns)
    st = os.stat(root)
    out["."] = ("dir", st.st_size, st.st_mtime_ns)
    return out


CLASS_COLOURS = {"cat": (200, 30, 30), "dog": (30, 200, 30), "eel": (30, 30, 200)}


def write_tree(folder: Path, per_class: int = 5, classes: tuple[str, ...] = ("cat", "dog", "eel")) -> None:
    """``folder/<class>/<i>.png|jpg``: alternating PNG and JPEG images of each class's colour."""
    for c in classes:
        for i in range(per_class):
            write_image(folder / c / f"{i:02d}.{'png' if i % 2 == 0 else 'jpg'}", CLASS_COLOURS[c])


@pytest.fixture
def files(tmp_path: Path) -> SimpleNamespace:
    """The writers above, for test modules (which cannot import this conftest by name).

    ``files.cifar(kind, **kw)`` writes a release under a fresh root and returns the root;
    ``files.tree``, ``files.image``, ``files.png_claiming``: :func:`write_tree`, :func:`write_image`,
    :func:`write_png_claiming`; ``files.finishes``: :func:`finishes`; ``files.listing``: :func:`listing`;
    ``files.shared``: the real data folder ``../shared/data`` (may be absent).
    """

    def cifar(kind: str = "cifar10", **kwargs) -> Path:
        root = tmp_path / f"{kind}-root"
        write_cifar(root, kind, **kwargs)
        return root

    return SimpleNamespace(
        cifar=cifar,
        tree=write_tree,
        image=write_image,
        png_claiming=write_png_claiming,
        finishes=finishes,
        listing=listing,
        shared=SHARED_DATA,
        colours=CLASS_COLOURS,
        cifar10_names=CIFAR10_NAMES,
        coarse_of=cifar100_coarse_of,
    )
