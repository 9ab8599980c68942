from pathlib import Path

import pytest
import torch

from softmaxlab.config import DataConfig, load_config
from softmaxlab.data import DATASETS, load_data, parse_data_spec
from softmaxlab.data.common import expand_root, holdout_counts, resize, stratified_split
from softmaxlab.errors import UserError


@pytest.mark.parametrize(
    ("spec", "overrides"),
    [
        ("shapes", {"name": "shapes"}),
        ("cifar10", {"name": "cifar10"}),
        ("cifar100", {"name": "cifar100", "labels": "fine"}),
        ("cifar100:fine", {"name": "cifar100", "labels": "fine"}),
        ("cifar100:coarse", {"name": "cifar100", "labels": "coarse"}),
        (
            "imagefolder:../shared/data/intel-jpeg-sample",
            {"name": "imagefolder", "root": "../shared/data/intel-jpeg-sample"},
        ),
        ("npz:/data/a:b.npz", {"name": "npz", "root": "/data/a:b.npz"}),
    ],
)
def test_parse_data_spec(spec, overrides):
    assert parse_data_spec(spec) == overrides
    DataConfig(**overrides)  # every spec is a valid config


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ("cifar", r"unknown dataset spec 'cifar'; valid: shapes, cifar10, cifar100, cifar100:coarse"),
        ("npz", r"needs a path: npz:PATH"),
        ("imagefolder:", r"needs a path: imagefolder:PATH"),
        ("cifar100:medium", r"cifar100 takes no 'medium' option"),
        ("cifar10:coarse", r"cifar10 takes no 'coarse' option"),
    ],
)
def test_bad_data_specs(spec, error):
    with pytest.raises(UserError, match=error):
        parse_data_spec(spec)


def test_every_dataset_is_registered_shapes_first():
    assert DATASETS.names() == ["shapes", "npz", "cifar10", "cifar100", "imagefolder"]


@pytest.mark.parametrize("key", ["data.val_fraction=0", "data.val_fraction=1", "data.test_fraction=1.5"])
def test_fractions_are_validated(key):
    with pytest.raises(UserError, match=key.split("=")[0].replace(".", r"\.")):
        load_config(None, [key])


@pytest.mark.parametrize("counts", [[10, 10, 1], [1] * 7, [3, 50, 7, 2], [100]])
@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5, 0.9])
def test_holdout_counts(counts, fraction):
    held = holdout_counts(counts, fraction)
    assert sum(held) == round(fraction * sum(counts))
    assert all(0 <= h <= n for h, n in zip(held, counts, strict=True))
    if all(n >= 2 for n in counts) and fraction < 0.5:  # every class keeps training images
        assert all(h < n for h, n in zip(held, counts, strict=True))


def test_stratified_split_partitions_and_is_seeded():
    y = torch.arange(103) % 4
    keep, held = stratified_split(y, 0.2, seed=0)
    assert sorted(torch.cat([keep, held]).tolist()) == list(range(103))
    assert torch.bincount(y[held]).tolist() == [6, 5, 5, 5]  # 21 in all; the remainder to the lowest class
    assert torch.equal(held, stratified_split(y, 0.2, seed=0)[1])
    assert not torch.equal(held, stratified_split(y, 0.2, seed=1)[1])
    assert not torch.equal(held, stratified_split(y, 0.2, seed=0, salt=1)[1])


def test_resize_uint8():
    x = torch.randint(0, 256, (5, 3, 16, 16), dtype=torch.uint8)
    assert resize(x, 16) is x
    small = resize(x, 8, chunk=2)
    assert small.shape == (5, 3, 8, 8) and small.dtype == torch.uint8
    flat = torch.full((2, 1, 9, 9), 77, dtype=torch.uint8)
    assert (resize(flat, 4) == 77).all()


def test_channel_stats_match_the_plain_formula():
    from softmaxlab.data import ImageData, Split

    x = torch.randint(0, 256, (300, 3, 64, 64), dtype=torch.uint8)
    x[:, 1] //= 4  # channels with different statistics
    y = torch.zeros(300, dtype=torch.int64)
    data = ImageData(Split(x, y), Split(x[:2], y[:2]), Split(x[:2], y[:2]), classes=["a", "b"])
    mean, std = data.channel_stats()
    xf = x.float() / 255
    torch.testing.assert_close(torch.tensor(mean), xf.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(torch.tensor(std), xf.std(dim=(0, 2, 3)))


def test_expand_root_expands_the_home():
    assert expand_root("~/x") == Path.home() / "x"
    assert expand_root("rel/x") == Path("rel/x")


@pytest.mark.parametrize("name", ["npz", "imagefolder", "cifar10"])
def test_a_root_in_the_home_of_an_unknown_user_says_so(name):
    # Path.expanduser raises a bare RuntimeError ("Could not determine home directory") here.
    with pytest.raises(UserError) as err:
        load_data(DataConfig(name=name, root="~nosuchuser-sml/x"))
    msg = str(err.value)
    assert msg == (
        "data.root='~nosuchuser-sml/x' starts with '~nosuchuser-sml', but there is no such user or home directory "
        "here; write the full path"
    )


def test_a_cache_dir_in_the_home_of_an_unknown_user_says_so(tmp_path, files):
    files.tree(tmp_path)
    with pytest.raises(UserError, match=r"^data\.cache_dir='~nosuchuser-sml' starts with"):
        load_data(DataConfig(name="imagefolder", root=str(tmp_path), cache_dir="~nosuchuser-sml"))
