import io
import warnings

import torch
from PIL import Image

from softmaxlab.report.figures import (
    DPI,
    PANEL_INCHES,
    TITLE_INCHES,
    epoch_time_figure,
    feature_map_figure,
    figure_png,
    grad_norm_figure,
    learning_curves_figure,
    reliability_figure,
    save_png,
    tile_maps,
    wrap_label,
)


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


def test_long_variant_labels_wrap_and_leave_room_for_the_axes():
    # A sweep over five keys gives labels of about 100 characters: on one line they made
    # constrained layout collapse the reliability axes to nothing (a warning, an empty plot).
    labels = [
        f"root=intel64-train.npz, image_size={s}, widths=[32, 64, 128, 256], lr={lr}, low_res_fraction=0"
        for s in (32, 64)
        for lr in (0.0125, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6)
    ]
    assert all(len(line) <= 48 for label in labels for line in wrap_label(label).splitlines())
    history = [
        {"epoch": e, "train_loss": 1 / e, "val_loss": 1 / e, "train_acc": 0.5, "val_acc": 0.5, "grad_norms": {"fc": e}}
        for e in (1, 2)
    ]
    bins = ([0.3, 0.6, 0.9], [0.2, 0.6, 0.95], [10, 10, 10])
    variants = [(label, f"C{i}") for i, label in enumerate(labels)]
    figures = [
        reliability_figure([(panel, [(label, c, *bins) for label, c in variants]) for panel in ("before", "after")]),
        learning_curves_figure([(label, c, [history]) for label, c in variants]),
        epoch_time_figure([(label, c, 1.0, 0.1) for label, c in variants]),
        grad_norm_figure([(label, c, [history]) for label, c in variants]),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "constrained_layout not applied" included
        for fig in figures:
            figure_png(fig)
    for ax in figures[0].axes:  # the square diagrams keep most of the figure's width
        assert ax.get_position().width * figures[0].get_figwidth() > 3.0
    for fig in figures[1:]:  # the plots keep a readable height above the legend
        assert all(ax.get_position().height * fig.get_figheight() > 1.5 for ax in fig.axes)
