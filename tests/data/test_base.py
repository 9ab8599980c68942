"""The options every dataset shares (:class:`softmaxlab.data.base.DataOptions`), as the config validates them."""

import pytest

from softmaxlab.config import load_config
from softmaxlab.data.base import MAX_IMAGE_SIZE
from softmaxlab.errors import UserError


@pytest.mark.parametrize(
    ("override", "error"),
    [
        ("data.rrc_ratio=[1, .inf]", r"'data\.rrc_ratio'.*both finite, got \[1\.0, inf\]"),
        ("data.rrc_ratio=[.inf, .inf]", r"'data\.rrc_ratio'.*both finite"),
        ("data.rrc_ratio=[.nan, 1]", r"'data\.rrc_ratio'.*both finite"),
        ("data.rrc_ratio=[1, .nan]", r"'data\.rrc_ratio'.*both finite"),
        ("data.rrc_scale=[.nan, 1]", r"'data\.rrc_scale'.*0 < low <= high <= 1"),
        ("data.rrc_scale=[-.inf, 1]", r"'data\.rrc_scale'"),
        ("data.image_size=100000", r"'data\.image_size'.*less than or equal to 4096 \(got 100000\)"),
    ],
)
def test_non_finite_crop_ranges_and_huge_image_sizes_are_refused(override, error):
    # A ratio of .inf passed "0 < low <= high" and made crops of zero height.
    with pytest.raises(UserError, match=error):
        load_config(None, [override])


def test_the_largest_image_size_and_finite_ranges_are_accepted():
    cfg = load_config(None, [f"data.image_size={MAX_IMAGE_SIZE}", "data.rrc_ratio=[0.5, 2]", "data.rrc_scale=[0.1, 1]"])
    assert cfg.data.image_size == 4096 and cfg.data.rrc_ratio == (0.5, 2.0)
