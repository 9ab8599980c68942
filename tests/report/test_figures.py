import io
import warnings

import torch
from PIL import Image

from softmaxlab.report.figures import (
    DPI,
    MAX_ANNOTATED_CLASSES,
    PANEL_INCHES,
    TITLE_INCHES,
    activation_stats_figure,
    confusion_figure,
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
        activation_stats_figure(
            [(label, c, [{"block0": {"mean": 0.3, "std": 0.5, "near_zero": 0.2}}]) for label, c in variants]
        ),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "constrained_layout not applied" included
        for fig in figures:
            figure_png(fig)
    for ax in figures[0].axes:  # the square diagrams keep most of the figure's width
        assert ax.get_position().width * figures[0].get_figwidth() > 3.0
    for fig in figures[1:]:  # the plots keep a readable height above the legend
        assert all(ax.get_position().height * fig.get_figheight() > 1.5 for ax in fig.axes)


def _line(ax, label):
    return next(line for line in ax.lines if line.get_label() == label)


def test_reliability_bins_with_few_images_are_hollow_and_counts_are_drawn_below():
    # 1000 images: the bin of 3 images (accuracy 1.0, a spike) is off the line, the empty one not drawn
    confidence, accuracy, count = [None, 0.35, 0.6, 0.9], [None, 1.0, 0.55, 0.85], [0, 3, 500, 497]
    fig = reliability_figure([("before", [("v", "C0", confidence, accuracy, count)])])
    diagram, counts = fig.axes
    assert list(_line(diagram, "v").get_xdata()) == [0.6, 0.9]
    hollow = [line for line in diagram.lines if line.get_marker() == "o" and line.get_markerfacecolor() == "none"]
    assert [list(line.get_xdata()) for line in hollow if len(line.get_xdata())] == [[0.35]]
    assert "bin with < 10 images or < 1 % of the variant's" in " ".join(t.get_text() for t in counts.get_legend().texts)
    (steps,) = counts.patches  # the share of the images per bin, as steps over the 4 bins
    assert list(steps.get_data().values) == [0.0, 0.003, 0.5, 0.497]


def test_learning_curves_show_chance_level():
    history = [{"epoch": e, "train_loss": 1.0, "val_loss": 1.0, "train_acc": 0.3, "val_acc": 0.3} for e in (1, 2)]
    fig = learning_curves_figure([("v", "C0", [history])], chance=[0.25])
    ax_acc = fig.axes[1]
    assert any(list(line.get_ydata()) == [25.0, 25.0] and line.get_linestyle() == ":" for line in ax_acc.lines)
    assert "chance 1/K (25 %)" in [t.get_text() for t in ax_acc.get_legend().texts]


def test_confusion_numbers_contrast_with_their_cell_and_shrink_or_go_with_many_classes():
    fig = confusion_figure([[95, 5], [50, 50]], ["a", "b"], "t")
    texts = {t.get_text(): t for t in fig.axes[0].texts}
    assert texts["95"].get_color() == "white" and texts["5"].get_color() == "black"  # dark blue, pale blue
    many = [[10 if i == j else 1 for j in range(MAX_ANNOTATED_CLASSES)] for i in range(MAX_ANNOTATED_CLASSES)]
    sizes = {t.get_fontsize() for t in confusion_figure(many, [], "t").axes[0].texts}
    assert len(sizes) == 1 and 5 <= sizes.pop() <= 9
    k = MAX_ANNOTATED_CLASSES + 1
    fig = confusion_figure([[1] * k for _ in range(k)], [], "t")
    assert not fig.axes[0].texts and "colour only: 31 classes" in fig.axes[0].get_title()


def test_activation_stats_figure_per_block_and_variant():
    runs_a = [
        {"block0": {"mean": 0.5, "std": 0.6, "near_zero": 0.1}, "block1": {"mean": 1e-4, "std": 1e-4, "near_zero": 0.9}}
    ]
    runs_b = [
        {"block0": {"mean": 0.4, "std": 0.5, "near_zero": 0.2}, "block1": {"mean": 0.3, "std": 0.4, "near_zero": 0.3}}
    ] * 2
    fig = activation_stats_figure([("a", "C0", runs_a), ("b", "C1", runs_b)])
    mean, _, near_zero = fig.axes[:3]
    assert [t.get_text() for t in mean.get_xticklabels()] == ["block0", "block1"]
    assert len(mean.patches) == 4 and mean.get_yscale() == "log"  # a spatial softmax's 1e-4 beside 0.5
    assert near_zero.get_yscale() == "linear"
    assert [round(b.get_height(), 3) for b in near_zero.patches] == [0.1, 0.9, 0.2, 0.3]
