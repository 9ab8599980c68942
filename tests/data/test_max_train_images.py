"""``data.max_train_images``: a stratified, seeded subset of the training split, on every dataset."""

import numpy as np
import pytest
import torch

from softmaxlab.config import DataConfig, load_config
from softmaxlab.data import ImageData, Split, load_data
from softmaxlab.data.common import limit_train, stratified_subset, subset_counts
from softmaxlab.errors import UserError
from softmaxlab.progress import Progress
from softmaxlab.train import fit

from ..conftest import tiny_config


@pytest.mark.parametrize(
    ("counts", "n", "want"),
    [
        ([60, 30, 10], 10, [6, 3, 1]),  # exact shares
        ([50, 30, 20], 7, [4, 2, 1]),  # 3.5, 2.1, 1.4: the largest remainder gets the last image
        ([10, 10, 10], 4, [2, 1, 1]),  # equal remainders: the lower class index
        ([97, 2, 1], 5, [3, 1, 1]),  # at least one of each: taken back from the class above its share
        ([100, 1, 1], 3, [1, 1, 1]),
        ([5, 0, 5], 4, [2, 0, 2]),  # a class without training images gets none
        ([4, 6], 10, [4, 6]),  # all of them
    ],
)
def test_subset_counts_are_proportional_with_one_of_each_class(counts, n, want):
    assert subset_counts(counts, n) == want


def test_subset_counts_for_many_classes_sum_to_n_and_keep_every_class():
    counts = [1] * 500 + [10_000]
    keep = subset_counts(counts, 600)
    assert sum(keep) == 600 and min(keep) == 1 and keep[-1] == 100


def test_stratified_subset_has_exact_counts_and_is_seeded():
    y = torch.tensor([0] * 60 + [1] * 30 + [2] * 10)[torch.randperm(100, generator=torch.Generator().manual_seed(1))]
    idx = stratified_subset(y, 10, seed=0)
    assert torch.bincount(y[idx]).tolist() == [6, 3, 1]
    assert torch.equal(idx, idx.sort().values) and len(idx.unique()) == 10  # file order, no repeats
    assert torch.equal(stratified_subset(y, 10, seed=0), idx)  # reproducible
    assert not torch.equal(stratified_subset(y, 10, seed=1), idx)  # another data.seed, other images


def toy_data(per_class=(8, 4, 2)):
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(per_class)])
    x = torch.arange(len(y), dtype=torch.uint8)[:, None, None, None].expand(-1, 1, 2, 2).contiguous()
    split = Split(x, y, coarse=y // 2)
    val, test = Split(x[:3], y[:3]), Split(x[:5], y[:5])
    return ImageData(split, val, test, classes=["a", "b", "c"])


def test_limit_train_keeps_images_with_their_labels_and_the_other_splits_whole():
    data = toy_data()
    small = limit_train(data, 7, seed=0)
    assert torch.bincount(small.train.y).tolist() == [4, 2, 1]
    # Each kept image is still the one of its label (x holds the image's index in the full split).
    index = small.train.x[:, 0, 0, 0].long()
    assert torch.equal(data.train.y[index], small.train.y) and torch.equal(small.train.coarse, small.train.y // 2)
    assert small.val is data.val and small.test is data.test
    assert limit_train(data, None, seed=0) is data and limit_train(data, 14, seed=0) is data


@pytest.mark.parametrize(
    ("n", "error"),
    [
        (15, r"^data\.max_train_images=15 is more than the 14 training images .*lower it to at most 14"),
        (2, r"^data\.max_train_images=2 is below the 3 classes .*raise it to 3 or more$"),
    ],
)
def test_too_many_or_fewer_than_the_classes_is_a_user_error(n, error):
    with pytest.raises(UserError, match=error):
        limit_train(toy_data(), n, seed=0)


def test_the_option_exists_for_every_dataset_and_is_at_least_one():
    for name in ("shapes", "npz", "imagefolder", "cifar10", "cifar100"):
        assert load_config(None, [f"data.name={name}", "data.max_train_images=5"]).data.max_train_images == 5
    assert load_config().data.max_train_images is None
    with pytest.raises(UserError, match=r"data\.max_train_images.*greater than or equal to 1"):
        load_config(None, ["data.max_train_images=0"])


def sizes(data):
    return len(data.train), len(data.val), len(data.test)


def check_subset(full, small, n):
    """``small`` is ``full`` with n of its training images, in proportion; val and test unchanged."""
    assert len(small.train) == n
    assert torch.equal(small.val.x, full.val.x) and torch.equal(small.test.x, full.test.x)
    want = subset_counts(torch.bincount(full.train.y, minlength=full.num_classes).tolist(), n)
    assert torch.bincount(small.train.y, minlength=full.num_classes).tolist() == want

    # Every kept image is one of the full training split, with its label (images are random, so distinct).
    def rows(split):
        return [(bytes(img.flatten().tolist()), int(label)) for img, label in zip(split.x, split.y, strict=True)]

    assert set(rows(small.train)) <= set(rows(full.train))


def test_shapes(tmp_path):
    opts = {"num_classes": 4, "image_size": 8, "train_size": 40, "val_size": 8, "test_size": 12}
    full = load_data(DataConfig(name="shapes", **opts))
    small = load_data(DataConfig(name="shapes", **opts, max_train_images=10))
    check_subset(full, small, 10)
    assert torch.bincount(small.train.y).tolist() == [3, 3, 2, 2]  # 10 of each class: 2.5 each, ties to the lower
    assert torch.equal(small.train.coarse, small.coarse_of[small.train.y])
    other = load_data(DataConfig(name="shapes", **opts, max_train_images=10, seed=1))
    assert not torch.equal(other.test.x, small.test.x)  # data.seed seeds the subset as the data itself


def test_npz(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    np.savez(path, x=rng.integers(0, 256, (60, 8, 8, 3), dtype=np.uint8), y=np.arange(60) % 3)
    full = load_data(DataConfig(name="npz", root=str(path)))
    small = load_data(DataConfig(name="npz", root=str(path), max_train_images=9))
    assert sizes(full) == (43, 5, 12) and sizes(small) == (9, 5, 12)
    check_subset(full, small, 9)


def test_image_folder(tmp_path, files):
    files.tree(tmp_path / "tree", per_class=10)
    full = load_data(DataConfig(name="imagefolder", root=str(tmp_path / "tree"), image_size=8))
    small = load_data(DataConfig(name="imagefolder", root=str(tmp_path / "tree"), image_size=8, max_train_images=6))
    assert sizes(full) == (22, 2, 6) and sizes(small) == (6, 2, 6)
    assert torch.bincount(small.train.y).tolist() == [2, 2, 2]
    assert torch.equal(small.val.x, full.val.x) and torch.equal(small.test.x, full.test.x)


def test_cifar10(files):
    root = files.cifar("cifar10")  # 100 training images, 10 of each class; 10 held out for validation
    full = load_data(DataConfig(name="cifar10", root=str(root)))
    small = load_data(DataConfig(name="cifar10", root=str(root), max_train_images=20))
    assert sizes(full) == (90, 10, 20) and sizes(small) == (20, 10, 20)
    check_subset(full, small, 20)
    assert torch.bincount(small.train.y).tolist() == [2] * 10


def test_cifar100_keeps_the_coarse_label_of_each_image(files):
    root = files.cifar("cifar100", per_batch=100)  # 500 training images, 5 of each fine class
    small = load_data(DataConfig(name="cifar100", root=str(root), max_train_images=100))
    assert len(small.train) == 100 and torch.bincount(small.train.y, minlength=100).min() == 1
    assert torch.equal(small.train.coarse, small.coarse_of[small.train.y])


def test_too_many_on_a_dataset_names_both_numbers(files):
    root = files.cifar("cifar10")
    with pytest.raises(UserError, match=r"max_train_images=91 is more than the 90 training images"):
        load_data(DataConfig(name="cifar10", root=str(root), max_train_images=91))


class Lines(Progress):
    def __init__(self):
        self.lines = []

    def note(self, text):
        self.lines.append(text)

    def epoch_end(self, record):
        self.lines.append(f"epoch {record['epoch']}")


def test_a_run_first_prints_its_split_sizes_and_trains_on_the_subset(tmp_path):
    cfg = tiny_config("train.epochs=1", "data.train_size=128", "data.max_train_images=64")
    progress = Lines()
    result = fit(cfg, tmp_path / "run", progress=progress)
    assert progress.lines == ["data: shapes, 64 train / 128 val / 256 test images", "epoch 1"]
    assert result.summary["status"] == "finished"
