import torch

from softmaxlab.data import Normalize, TensorLoader, random_crop, random_flip


def make(n=50, **kw):
    x = torch.arange(n * 3 * 4 * 4, dtype=torch.int64).remainder(256).to(torch.uint8).view(n, 3, 4, 4)
    y = torch.arange(n)
    return TensorLoader(x, y, 16, Normalize([0.5] * 3, [0.25] * 3), **kw)


def test_normalize_matches_formula():
    x = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    norm = Normalize([0.1, 0.2, 0.3], [0.5, 0.6, 0.7])
    expected = (x.float() / 255 - torch.tensor([0.1, 0.2, 0.3])[:, None, None]) / torch.tensor([0.5, 0.6, 0.7])[
        :, None, None
    ]
    torch.testing.assert_close(norm(x), expected)


def test_unshuffled_covers_everything_in_order():
    loader = make()
    ys = torch.cat([y for _, y in loader])
    assert torch.equal(ys, torch.arange(50)) and len(loader) == 4


def test_shuffle_is_deterministic_per_seed_and_epoch():
    a, b, c = make(shuffle=True, seed=1), make(shuffle=True, seed=1), make(shuffle=True, seed=2)
    first = torch.cat([y for _, y in a])
    assert torch.equal(first, torch.cat([y for _, y in b]))
    assert not torch.equal(first, torch.cat([y for _, y in c]))
    assert sorted(first.tolist()) == list(range(50))
    a.set_epoch(1)
    assert not torch.equal(first, torch.cat([y for _, y in a]))
    a.set_epoch(0)
    assert torch.equal(first, torch.cat([y for _, y in a]))  # any epoch replays exactly


def test_drop_last():
    loader = make(drop_last=True)
    assert len(loader) == 3 and sum(y.numel() for _, y in loader) == 48


def test_augmented_batches_keep_shape_and_labels_follow_images():
    loader = make(shuffle=True, crop_padding=2, flip=True)
    for x, y in loader:
        assert x.shape == (y.numel(), 3, 4, 4) and x.dtype == torch.float32


def test_random_crop_is_a_shifted_window_of_the_padded_image():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(1, 256, (8, 3, 6, 6), dtype=torch.uint8)
    out = random_crop(x, 2, g)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(8):
        windows = [padded[i, :, dy : dy + 6, dx : dx + 6] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], w) for w in windows)
    assert random_crop(x, 0, g) is x


def test_random_flip_flips_about_half():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (400, 1, 2, 5), dtype=torch.uint8)
    out = random_flip(x, g)
    flipped = [torch.equal(o, i.flip(-1)) and not torch.equal(o, i) for o, i in zip(out, x, strict=True)]
    same = [torch.equal(o, i) for o, i in zip(out, x, strict=True)]
    assert all(f or s for f, s in zip(flipped, same, strict=True))
    assert 150 < sum(flipped) < 250
