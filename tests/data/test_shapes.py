import time

import pytest
import torch

from softmaxlab.config import DataConfig
from softmaxlab.data import load_data
from softmaxlab.data.shapes import class_names, generate, layout
from softmaxlab.errors import UserError


def test_deterministic_from_seed():
    a = generate(64, 10, 16, seed=3)
    b = generate(64, 10, 16, seed=3)
    c = generate(64, 10, 16, seed=4)
    for u, v in zip(a, b, strict=True):
        assert torch.equal(u, v)
    assert not torch.equal(a[0], c[0])


def test_shapes_dtypes_and_balance():
    x, y, _coarse = generate(100, 10, 32, seed=0)
    assert x.shape == (100, 3, 32, 32) and x.dtype == torch.uint8
    assert y.dtype == torch.int64 and torch.bincount(y, minlength=10).tolist() == [10] * 10
    assert x.float().std() > 20  # not blank


@pytest.mark.parametrize("k", [2, 6, 10, 20, 37, 100, 360])
def test_hierarchy_is_consistent(k):
    names, coarse_names, coarse_of = class_names(k)
    assert len(names) == len(set(names)) == k
    s, c = layout(k)
    assert s * c >= k and len(coarse_names) == s
    assert sorted(set(coarse_of)) == list(range(s))  # every coarse class is used
    # The coarse label of a fine class is its shape, which its name ends with.
    for name, parent in zip(names, coarse_of, strict=True):
        assert name.endswith(coarse_names[parent])
    _, y, coarse = generate(3 * k, k, 8, seed=1)
    assert torch.equal(coarse, torch.tensor(coarse_of)[y])


def test_layout_prefers_balanced_groups():
    assert layout(10) == (5, 2)
    assert layout(100) == (10, 10)


def test_too_many_classes_is_user_error():
    with pytest.raises(UserError, match=r"data\.num_classes"):
        layout(361)


def test_dataset_splits_differ_and_carry_hierarchy():
    data = load_data(DataConfig(num_classes=6, image_size=16, train_size=60, val_size=30, test_size=30))
    assert (len(data.train), len(data.val), len(data.test)) == (60, 30, 30)
    assert not torch.equal(data.train.x[:30], data.val.x)
    assert data.num_classes == 6 and data.coarse_of is not None and data.coarse_classes is not None
    assert data.image_shape == (3, 16, 16)
    mean, std = data.channel_stats()
    assert len(mean) == 3 and all(0 < m < 1 for m in mean) and all(s > 0 for s in std)


def test_generation_is_fast():
    # Not a timing target (benchmarks do that): a guard against an accidental per-image loop,
    # which would be ~100x slower than this generous bound.
    t0 = time.perf_counter()
    generate(2000, 10, 32, seed=0)
    assert time.perf_counter() - t0 < 10


def test_unset_image_size_is_32_px():
    data = load_data(DataConfig(train_size=4, val_size=4, test_size=4))
    assert data.image_shape == (3, 32, 32)
