"""``softmaxlab.inference.read_image`` (what ``softmaxlab predict`` and ``visualize`` read) on
files that are not plain images: the same untrusted-image checks as the image-folder decoding."""

import os
import warnings

import pytest
import torch

from softmaxlab.errors import UserError
from softmaxlab.inference import read_image


def test_an_image_is_read_resized(tmp_path, files):
    files.image(tmp_path / "a.png", (200, 30, 30))
    x = read_image(tmp_path / "a.png", 8, 3)
    assert x.shape == (1, 3, 8, 8) and x.dtype == torch.uint8


def test_an_image_claiming_huge_dimensions_is_refused(tmp_path, files):
    files.png_claiming(tmp_path / "bomb.png", 30000, 30000)
    with pytest.raises(UserError) as err:
        read_image(tmp_path / "bomb.png", 8, 3)
    msg = str(err.value)
    assert "\n" not in msg and f"image file '{tmp_path / 'bomb.png'}' is too large to decode safely" in msg
    assert "(Image size (900000000 pixels) exceeds limit of" in msg and msg.endswith("; pass a smaller image")


def test_an_image_between_one_and_two_times_the_limit_is_refused_too(tmp_path, files, monkeypatch):
    # PIL only warns there (DecompressionBombWarning) and decodes it.
    files.image(tmp_path / "a.png", (200, 30, 30))  # 20 x 12 = 240 px
    monkeypatch.setattr("PIL.Image.MAX_IMAGE_PIXELS", 200)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(UserError, match=r"too large to decode safely \(Image size \(240 pixels\) exceeds limit"):
            read_image(tmp_path / "a.png", 8, 3)


@pytest.mark.parametrize(
    ("make", "error"),
    [
        (lambda p: p.mkdir(), "is a directory, not a file"),
        (lambda p: os.mkfifo(p), r"is not a regular file \(a pipe, socket or device\)"),
        (lambda p: p.symlink_to(p.parent / "gone.png"), "is a dangling symbolic link"),
        (lambda p: None, "does not exist"),
    ],
    ids=["folder", "fifo", "dangling link", "missing"],
)
def test_something_else_than_a_file_says_what_it_is(tmp_path, files, make, error):
    path = tmp_path / "x.png"
    make(path)
    outcome = files.finishes(lambda: read_image(path, 8, 3), fifo=path)
    assert isinstance(outcome, UserError), outcome
    assert str(outcome) == f"image file '{path}' {error.replace(chr(92), '')}; pass the path of a PNG or JPEG image"
