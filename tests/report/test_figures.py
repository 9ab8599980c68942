import io

import torch
from PIL import Image

from softmaxlab.report.figures import DPI, PANEL_INCHES, TITLE_INCHES, feature_map_figure, save_png, tile_maps


def test_tile_maps_scales_each_map_and_pads_with_nan():
    maps = torch.stack([torch.zeros(2, 3), torch.arange(6.0).view(2, 3) * 100])
    tiled = tile_maps(maps, columns=3)
    assert tiled.shape == (2, 3 * 4 - 1)
    assert torch.isnan(tiled[:, 3]).all() and torch.isnan(tiled[:, 8:]).all()  # gap, empty cell
    assert tiled[:, 4:7].min() == 0 and tiled[:, 4:7].max() == 1  # scaled on its own
    assert tile_maps(torch.rand(5, 2, 2), columns=2).shape == (3 * 3 - 1, 2 * 3 - 1)


def test_feature_map_figure_size_and_png(tmp_path):
    maps = [torch.rand(8, 8, 8), torch.rand(20, 4, 4)]  # 8 and 12 channels shown, 8 per row
    fig = feature_map_figure(maps, ["relu", "softmax_hw"], channels=12, columns=8)
    path = save_png(fig, tmp_path / "sub" / "maps.png")
    with Image.open(path) as img:
        assert img.format == "PNG"
        height = (1 + 2) * PANEL_INCHES + 2 * TITLE_INCHES  # block 0: 1 row, block 1: 2 rows
        assert img.size == (round(8 * PANEL_INCHES * DPI), round(height * DPI))
    texts = [t.get_text() for t in fig.texts]
    assert texts[0].startswith("block 0: relu, 8 of 8 channels, 8x8")
    assert texts[1].startswith("block 1: softmax_hw, 12 of 20 channels, 4x4")


def test_few_channels_make_a_narrow_figure():
    fig = feature_map_figure([torch.rand(3, 4, 4)], ["relu"], channels=16)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    assert Image.open(buf).size == (round(3 * PANEL_INCHES * DPI), round((PANEL_INCHES + TITLE_INCHES) * DPI))
