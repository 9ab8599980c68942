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


def test_shards_of_a_global_batch_are_exactly_the_single_process_batch():
    # Every rank draws the same permutation and augmentation and keeps its slice, so the
    # ranks together see what one process sees, image for image.
    kw = {"shuffle": True, "crop_padding": 1, "flip": True, "drop_last": True, "seed": 3}
    whole = list(make(**kw))
    shards = [list(make(shard=(rank, 2), **kw)) for rank in range(2)]
    assert all(len(s) == len(whole) for s in shards)
    for i, (x, y) in enumerate(whole):
        assert [s[i][1].numel() for s in shards] == [8, 8]
        torch.testing.assert_close(torch.cat([s[i][0] for s in shards]), x)
        assert torch.equal(torch.cat([s[i][1] for s in shards]), y)


def test_resized_crop_boxes_follow_scale_and_ratio():
    from softmaxlab.data.loader import resized_crop_boxes

    g = torch.Generator().manual_seed(0)
    cx, cy, w, h = resized_crop_boxes(4000, (0.25, 0.5), (0.5, 2.0), g).double().unbind(1)
    area, ratio = w * h, w / h
    assert area.min() >= 0.25 - 1e-6 and area.max() <= 0.5 + 1e-6  # no clamping needed in this range
    assert ratio.min() >= 0.5 - 1e-6 and ratio.max() <= 2.0 + 1e-6
    assert ratio.log().mean().abs() < 0.05  # log-uniform about 1
    assert (cx - w / 2 >= -1e-6).all() and (cx + w / 2 <= 1 + 1e-6).all()  # the box lies inside the image
    assert (cy - h / 2 >= -1e-6).all() and (cy + h / 2 <= 1 + 1e-6).all()


def test_resized_crop_of_the_full_box_is_the_image_and_a_quarter_box_is_an_upscaled_corner():
    from softmaxlab.data.loader import resized_crop_at

    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    full = torch.tensor([[0.5, 0.5, 1.0, 1.0]] * 2)
    torch.testing.assert_close(resized_crop_at(x, full), x.float())
    corner = torch.tensor([[0.25, 0.25, 0.5, 0.5]] * 2)  # top-left quarter, resized 2x
    out = resized_crop_at(x, corner)
    expected = torch.nn.functional.interpolate(x[:, :, :4, :4].float(), scale_factor=2, mode="bilinear")
    # The last row and column interpolate towards the pixel just outside the box, where
    # crop-then-resize clamps at the box edge.
    torch.testing.assert_close(out[..., :7, :7], expected[..., :7, :7])


def test_resized_crop_loader_gives_normalised_batches():
    loader = make(shuffle=True, flip=True, resized_crop=((0.35, 1.0), (0.75, 4 / 3)))
    for x, y in loader:
        assert x.shape == (y.numel(), 3, 4, 4) and x.dtype == torch.float32 and torch.isfinite(x).all()


def test_resize_halves_by_averaging_and_commutes_with_normalisation():
    from softmaxlab.data.loader import resize

    # Columns alternating 0 / 255: halved, a subsample would keep only one of the two values;
    # the antialiased filter (weights 1/8, 3/8, 3/8, 1/8 across four columns) averages them.
    stripes = (torch.arange(8) % 2 * 255).to(torch.uint8).expand(1, 3, 8, 8)
    half = resize(stripes, 4)
    torch.testing.assert_close(half[..., 1:3], torch.full((1, 3, 4, 2), 127.5))
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    norm = Normalize([0.5] * 3, [0.25] * 3)
    torch.testing.assert_close(norm(resize(x, 6)), resize(norm(x), 6))
    assert resize(x, 8).equal(x.float())


def test_a_loader_with_a_size_gives_that_size_and_the_same_draws():
    # Progressive resizing changes the size between epochs, never the order or the augmentation.
    from softmaxlab.data.loader import resize

    x = torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8)
    y = torch.arange(40)
    full = TensorLoader(x, y, 16, Normalize([0.5] * 3, [0.25] * 3), shuffle=True, crop_padding=2, flip=True, seed=3)
    small = TensorLoader(
        x, y, 16, Normalize([0.5] * 3, [0.25] * 3), shuffle=True, crop_padding=2, flip=True, seed=3, size=4
    )
    for (xf, yf), (xs, ys) in zip(full, small, strict=True):
        assert xs.shape == (len(ys), 3, 4, 4) and ys.equal(yf)
        torch.testing.assert_close(xs, resize(xf, 4))
