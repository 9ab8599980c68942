"""Loading a dataset writes nothing next to its data: no cache, no lock, no temporary file.

(The image folder's own cases, the user cache folder among them, are in test_imagefolder.py. A
CIFAR download with ``data.download: true`` extracts into ``data.root`` by design: that folder
is where the user asked the files to go.)
"""

import numpy as np

from softmaxlab.config import DataConfig
from softmaxlab.data import load_data


def test_npz_loading_writes_nothing_beside_the_file(tmp_path, files):
    rng = np.random.default_rng(0)
    folder = tmp_path / "arrays"
    folder.mkdir()
    np.savez(folder / "d.npz", x=rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8), y=np.arange(40) % 4)
    before = files.listing(folder)
    for extra in ({}, {"image_size": 12, "max_train_images": 8}):
        load_data(DataConfig(name="npz", root=str(folder / "d.npz"), **extra))
    assert files.listing(folder) == before


def test_cifar_loading_writes_nothing_into_its_folder(files):
    for name, extra in (("cifar10", {}), ("cifar100", {"labels": "coarse"})):
        root = files.cifar(name)
        before = files.listing(root)
        load_data(DataConfig(name=name, root=str(root), max_train_images=20, **extra))
        load_data(DataConfig(name=name, root=str(next(root.iterdir()))))  # the release folder itself
        assert files.listing(root) == before
