"""Figures drawn with matplotlib's object API (no pyplot: no global state, no display).

* :func:`feature_map_figure`: one panel per channel of each block's output for one image.
* :func:`save_png`: write a figure as a PNG atomically.
* :func:`bench_figure`: the head cost benchmark, time against classes on log-log axes.
* :func:`figure_png`: a figure as PNG bytes (embedded in the HTML report).

The report's figures take each variant as ``(label, colour, ...)``, so one variant has the
same colour in every figure; a band is mean ± sample standard deviation over seeds:

* :func:`learning_curves_figure`: loss and accuracy per epoch, training and validation, chance level.
* :func:`confusion_figure`: a row-normalised confusion matrix with the class names.
* :func:`reliability_figure`: accuracy against confidence per bin, before / after temperature
  scaling, with the share of images per bin below.
* :func:`grad_norm_figure`: each layer's mean weight-gradient norm per epoch.
* :func:`activation_stats_figure`: each block's output mean, std and near-zero fraction at the last epoch.
* :func:`gumbel_tau_figure`: accuracy against the Gumbel-softmax temperature tau.
* :func:`epoch_time_figure`: mean epoch time per variant as bars.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator
from torch import Tensor

from softmaxlab import runs
from softmaxlab.errors import UserError
from softmaxlab.report.rundata import finite
from softmaxlab.stats import mean_std

#: Resolution of saved figures, dots per inch.
DPI = 100
#: Side of one feature-map panel, inches.
PANEL_INCHES = 1.2
#: Height of a block's title line, inches.
TITLE_INCHES = 0.4


#: Characters per line of a variant label in a legend, a title or on an axis.
LABEL_CHARS = 48


def wrap_label(label: str, width: int = LABEL_CHARS) -> str:
    """``label`` on lines of at most ``width`` characters, broken between its ``key=value``
    parts (a part longer than ``width`` keeps a line to itself).

    >>> print(wrap_label("head=gumbel, lr=0.05, widths=[32, 64, 128, 256]", 24))
    head=gumbel, lr=0.05,
    widths=[32, 64, 128, 256]
    """
    lines = [""]
    for part in re.split(r"(?<=,) (?=[\w.]+=)", label):
        if lines[-1] and len(lines[-1]) + 1 + len(part) > width:
            lines.append(part)
        else:
            lines[-1] = f"{lines[-1]} {part}" if lines[-1] else part
    return "\n".join(lines)


def tile_maps(maps: Tensor, columns: int, pad: int = 1) -> Tensor:
    """(n, H, W) maps -> one (rows (H + pad) - pad, columns (W + pad) - pad) mosaic.

    Each map is min-max scaled to [0, 1] on its own; the gaps and unused cells are NaN
    (drawn as background).

    >>> tile_maps(torch.arange(8.0).view(2, 2, 2), columns=2)
    tensor([[0.0000, 0.3333,    nan, 0.0000, 0.3333],
            [0.6667, 1.0000,    nan, 0.6667, 1.0000]])
    """
    n, h, w = maps.shape
    rows = max(1, math.ceil(n / columns))
    flat = maps.reshape(n, -1).float()
    lo, hi = flat.min(dim=1, keepdim=True).values, flat.max(dim=1, keepdim=True).values
    scaled = ((flat - lo) / (hi - lo).clamp_min(1e-12)).view(n, h, w)
    out = torch.full((rows * (h + pad) - pad, columns * (w + pad) - pad), float("nan"))
    for k in range(n):
        r, c = divmod(k, columns)
        out[r * (h + pad) : r * (h + pad) + h, c * (w + pad) : c * (w + pad) + w] = scaled[k]
    return out


def feature_map_figure(
    maps: Sequence[Tensor], activations: Sequence[str], channels: int = 16, columns: int = 8
) -> Figure:
    """A grid per block of its first ``channels`` feature maps, titled with the block's activation.

    Args:
        maps: each block's output for one image, (C_i, H_i, W_i).
        activations: each block's activation name.
        channels: the most channels drawn per block.
        columns: panels per row; a block with more channels wraps onto more rows.

    Every panel has its own colour scale (a spatial softmax's values are ~1/(H W), a ReLU's
    ~1): the pictures show where each map is large, the block title the block's value range.
    The figure is ``min(channels, columns) * PANEL_INCHES`` wide and, per block,
    ``rows * PANEL_INCHES + TITLE_INCHES`` high. One image per block (a mosaic, see
    :func:`tile_maps`) keeps drawing fast enough to do at the end of every run.
    """
    shown = [min(channels, m.shape[0]) for m in maps]
    cols = max(1, min(columns, max(shown, default=1)))
    rows = [max(1, math.ceil(n / cols)) for n in shown]
    heights = [r * PANEL_INCHES + TITLE_INCHES for r in rows]
    total = sum(heights) or PANEL_INCHES
    fig = Figure(figsize=(cols * PANEL_INCHES, total), dpi=DPI)
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="white")
    top = total
    for i, (m, name, n, r, height) in enumerate(zip(maps, activations, shown, rows, heights, strict=True)):
        c, h, w = m.shape
        top -= height
        # [left, bottom, width, height] as fractions of the figure; the title sits above.
        ax = fig.add_axes((0.0, top / total, 1.0, r * PANEL_INCHES / total))
        ax.set_axis_off()
        ax.imshow(tile_maps(m[:n], cols).numpy(), cmap=cmap, interpolation="nearest", aspect="auto")
        fig.text(
            0.5,
            (top + r * PANEL_INCHES + TITLE_INCHES / 2) / total,
            f"block {i}: {name}, {n} of {c} channels, {h}x{w}, values {m.min().item():.3g} to {m.max().item():.3g}",
            ha="center",
            va="center",
            fontsize=8,
        )
    return fig


def figure_png(fig: Figure) -> bytes:
    """``fig`` encoded as PNG at :data:`DPI`."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def save_png(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG at ``path`` (atomically; parent folders created); returns the path."""
    p = Path(path)
    try:
        runs.atomic_write_bytes(p, figure_png(fig))
    except OSError as exc:
        raise UserError(f"cannot write {str(p)!r}: {exc.strerror or exc}; choose another --out") from None
    return p


def bench_figure(results: Sequence[dict], title: str = "head forward+backward") -> Figure:
    """Log-log plot of the median forward+backward time against the number of classes, one line per head.

    ``results`` are the rows of :func:`softmaxlab.bench.bench_heads` (``head``, ``classes``,
    ``status``, ``median_ms``); skipped rows are left out of the lines.
    """
    fig = Figure(figsize=(7, 4.5), dpi=DPI)
    ax = fig.add_subplot()
    heads = list(dict.fromkeys(r["head"] for r in results))
    for name in heads:
        points = sorted((r["classes"], r["median_ms"]) for r in results if r["head"] == name and r["status"] == "ok")
        if points:
            ks, ms = zip(*points, strict=True)
            ax.plot(ks, ms, marker="o", markersize=3, label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("classes K")
    ax.set_ylabel("median forward+backward time (ms)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    if heads:
        ax.legend(fontsize=7, ncols=2)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- report figures

#: Records of one run's epochs (``metrics.jsonl``); a variant has one per seed.
Histories = Sequence[Sequence[dict]]


def epoch_stats(histories: Histories, get: Callable[[dict], object]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(epochs, mean, sample std) over the runs of ``get(record)`` at each epoch any run recorded.

    Records where ``get`` gives no finite number are skipped; one run gives std 0.

    >>> epoch_stats([[{"epoch": 1, "v": 1.0}, {"epoch": 2, "v": 2.0}], [{"epoch": 1, "v": 3.0}]], lambda r: r["v"])
    (array([1, 2]), array([2., 2.]), array([1.41421356, 0.        ]))
    """
    by_epoch: dict[int, list[float]] = {}
    for history in histories:
        for record in history:
            value, epoch = finite(get(record)), record.get("epoch")
            if value is not None and isinstance(epoch, int):
                by_epoch.setdefault(epoch, []).append(value)
    epochs = sorted(by_epoch)
    stats = [mean_std(by_epoch[e]) for e in epochs]
    return np.array(epochs, dtype=int), np.array([s[0] for s in stats]), np.array([s[1] for s in stats])


def _band(ax: Axes, x: np.ndarray, mean: np.ndarray, std: np.ndarray, color: str, **line: object) -> None:
    """A line at the mean with a shaded band of ± one standard deviation (when it is not 0)."""
    ax.plot(x, mean, color=color, marker="o", markersize=2.5, **line)
    if len(x) and np.any(std > 0):
        ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.15, linewidth=0)


def _integer_epochs(ax: Axes) -> None:
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.grid(True, alpha=0.3)


def _legend_below(fig: Figure, handles: list, labels: list[str]) -> None:
    """One legend under all the axes (constrained layout makes room for it), in as many
    columns (up to 3) as the wrapped labels fit across the figure."""
    if handles:
        labels = [wrap_label(label) for label in labels]
        longest = max(len(line) for label in labels for line in label.splitlines())
        fits = int(fig.get_figwidth() // (0.07 * longest + 0.7))  # 8 pt characters, the handle and gap
        ncols = max(1, min(3, len(labels), fits))
        # The figure grows by the legend's height (8 pt lines, a gap per row), so the axes keep theirs.
        rows = [labels[i : i + ncols] for i in range(0, len(labels), ncols)]
        fig.set_figheight(fig.get_figheight() + sum(0.15 * max(x.count("\n") + 1 for x in r) + 0.1 for r in rows))
        fig.legend(handles, labels, loc="outside lower center", ncols=ncols, fontsize=8, frameon=False)


def learning_curves_figure(variants: Sequence[tuple[str, str, Histories]], chance: Sequence[float] = ()) -> Figure:
    """Loss (left) and accuracy (right) per epoch: validation solid, training dashed.

    ``variants`` are ``(label, colour, histories)``; each line is the mean over a variant's
    runs with a band of ± one sample standard deviation. ``chance`` are the chance
    accuracies 1/K of the runs' class counts K (fractions), drawn as dotted lines: a curve
    on such a line has learned nothing.
    """
    fig = Figure(figsize=(10, 4.2), dpi=DPI, layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    for label, color, histories in variants:
        for ax, key, scale in ((ax_loss, "loss", 1.0), (ax_acc, "acc", 100.0)):
            for split, style in (("train", "--"), ("val", "-")):
                x, mean, std = epoch_stats(histories, lambda r, k=f"{split}_{key}": r.get(k))
                tag = label if (split, key) == ("val", "loss") else None
                _band(ax, x, mean * scale, std * scale, color, linestyle=style, label=tag)
    ax_loss.set_ylabel("loss (nats per image)")
    ax_acc.set_ylabel("accuracy (%)")
    ax_loss.set_title("loss", fontsize=9)
    ax_acc.set_title("accuracy", fontsize=9)
    for ax in (ax_loss, ax_acc):
        _integer_epochs(ax)
    styles = [Line2D([], [], color="0.3", linestyle="-"), Line2D([], [], color="0.3", linestyle="--")]
    names = ["validation", "training"]
    for level in sorted(set(chance)):
        ax_acc.axhline(100 * level, color="0.35", linestyle=":", linewidth=1.2, zorder=1)
    if chance:
        styles.append(Line2D([], [], color="0.35", linestyle=":", linewidth=1.2))
        levels = ", ".join(f"{100 * c:.3g} %" for c in sorted(set(chance)))
        names.append(f"chance 1/K ({levels})")
    ax_acc.legend(styles, names, fontsize=7, loc="best")
    _legend_below(fig, *ax_loss.get_legend_handles_labels())
    return fig


#: Beyond this many classes a confusion matrix is colour only: its cells are too small for
#: numbers (at 30 classes on the 12-inch figure a cell is about 0.3 inch, 9-point text still fits).
MAX_ANNOTATED_CLASSES = 30


def text_colour(rgb: Sequence[float]) -> str:
    """``"white"`` or ``"black"``, whichever contrasts more with the background ``rgb`` (in [0, 1]).

    By WCAG 2, with relative luminance L = 0.2126 R + 0.7152 G + 0.0722 B of the linearised
    channels, the contrast with white is 1.05 / (L + 0.05) and with black (L + 0.05) / 0.05:
    they are equal at L = sqrt(1.05 * 0.05) - 0.05 ≈ 0.179, so white text below it.

    >>> text_colour((0.03, 0.19, 0.42)), text_colour((0.78, 0.86, 0.94)), text_colour((0.5, 0.5, 0.5))
    ('white', 'black', 'black')
    """

    def linear(c: float) -> float:
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (linear(float(c)) for c in rgb[:3])
    return "white" if 0.2126 * r + 0.7152 * g + 0.0722 * b < 0.179 else "black"


def cell_font_size(k: int, side: float) -> float:
    """The font size (points) of the numbers in a ``k`` x ``k`` matrix drawn ``side`` inches wide:
    ``"100"`` is about 1.7 font sizes wide and must fit in the 0.8 side / k of a cell (about
    0.8 of the figure is the matrix), so 0.4 of the cell, between 5 and 9 points.

    >>> cell_font_size(4, 3.5), cell_font_size(30, 12.0), cell_font_size(30, 8.0)
    (9.0, 9.0, 6.14)
    """
    cell = 0.8 * side * 72 / k
    return round(min(9.0, max(5.0, 0.4 * cell)), 2)


def confusion_figure(matrix: Sequence[Sequence[float]], classes: Sequence[str], title: str) -> Figure:
    """The confusion matrix with each row divided by its sum (rows = true class), class names on the axes.

    Each cell holds its percentage of the row, in black or white by its colour
    (:func:`text_colour`), at :func:`cell_font_size`; empty cells are left blank. Beyond
    :data:`MAX_ANNOTATED_CLASSES` classes the cells are colour only, and beyond 30 classes
    only every n-th class name is written.
    """
    cm = np.asarray(matrix, dtype=float)
    k = cm.shape[0]
    totals = cm.sum(axis=1, keepdims=True)
    rates = 100 * np.divide(cm, totals, out=np.zeros_like(cm), where=totals > 0)
    names = [str(c) for c in classes] if len(classes) == k else [str(i) for i in range(k)]
    side = min(12.0, max(3.5, 2.0 + 0.35 * k))
    fig = Figure(figsize=(side + 1.4, side + 0.4), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["Blues"]
    image = ax.imshow(rates, cmap=cmap, vmin=0.0, vmax=100.0)
    ticks = list(range(0, k, max(1, math.ceil(k / 30))))
    ax.set_xticks(ticks, [names[i] for i in ticks], rotation=45 if k <= 10 else 90, ha="right", fontsize=7)
    ax.set_yticks(ticks, [names[i] for i in ticks], fontsize=7)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if k > MAX_ANNOTATED_CLASSES:
        title += f" (colour only: {k} classes)"
    ax.set_title(wrap_label(title, max(32, int(fig.get_figwidth() * 12))), fontsize=9)  # 9 pt: ~12 characters per inch
    if k <= MAX_ANNOTATED_CLASSES:
        size = cell_font_size(k, side)
        for (i, j), v in np.ndenumerate(rates):
            if cm[i, j] > 0:
                text = f"{v:.0f}" if v >= 0.5 else "<1"
                ax.text(j, i, text, ha="center", va="center", fontsize=size, color=text_colour(cmap(v / 100)))
    fig.colorbar(image, ax=ax, shrink=0.8, label="% of the true class's test images")
    return fig


#: One reliability line: (label, colour, mean confidence per bin, accuracy per bin, images per bin).
ReliabilityLine = tuple[str, str, Sequence[float | None], Sequence[float | None], Sequence[int]]
#: A reliability bin with fewer images than this, or than :data:`MIN_BIN_SHARE` of the
#: variant's images, is drawn hollow and left out of the line (see :func:`sparse_bins`).
MIN_BIN_IMAGES = 10
MIN_BIN_SHARE = 0.01
#: The legend entry of the hollow circles.
FEW_IMAGES_LABEL = f"bin with < {MIN_BIN_IMAGES} images or < {MIN_BIN_SHARE * 100:g} % of the variant's (off the line)"


def sparse_bins(count: Sequence[int | None]) -> list[bool]:
    """Which bins hold images, but too few for their accuracy to mean much: fewer than
    :data:`MIN_BIN_IMAGES`, or fewer than :data:`MIN_BIN_SHARE` of all the images. The
    accuracy of a bin of n images has a standard error of up to 0.5 / sqrt(n), 0.16 at
    n = 10: drawn as line points, such bins make spikes that are noise.

    >>> sparse_bins([0, 5, 12, 983])  # 1 % of 1000 images is 10
    [False, True, False, False]
    """
    n = [c or 0 for c in count]
    least = max(MIN_BIN_IMAGES, MIN_BIN_SHARE * sum(n))
    return [0 < c < least for c in n]


def _reliability_line(ax: Axes, ax_n: Axes, line: ReliabilityLine) -> None:
    """One variant's line through its well-filled bins, its sparse bins hollow, and the share
    of its images per bin as a step line on ``ax_n``."""
    label, color, confidence, accuracy, count = line
    sparse = sparse_bins(count)
    points = [
        (c, a, s)
        for c, a, n, s in zip(confidence, accuracy, count, sparse, strict=False)
        if c is not None and a is not None and n
    ]
    full = [(c, a) for c, a, s in points if not s]
    if full:
        xs, ys = zip(*full, strict=True)
        ax.plot(xs, ys, color=color, marker="o", markersize=3, label=wrap_label(label))
    thin = [(c, a) for c, a, s in points if s]
    if thin:
        xs, ys = zip(*thin, strict=True)
        # Not clipped: a bin of one or two images is often at accuracy 0 or 1, on the frame.
        ax.plot(xs, ys, linestyle="none", marker="o", markersize=4, mfc="none", mec=color, alpha=0.7, clip_on=False)
    total = sum(n or 0 for n in count)
    if total:
        share = np.array([(n or 0) / total for n in count])
        ax_n.stairs(share, np.linspace(0.0, 1.0, len(count) + 1), color=color, linewidth=1.2)


def reliability_figure(panels: Sequence[tuple[str, Sequence[ReliabilityLine]]]) -> Figure:
    """Reliability diagrams side by side (e.g. before and after temperature scaling).

    In each panel a variant is a line through (mean confidence, accuracy) of its confidence
    bins; a calibrated model lies on the diagonal, a line below it is over-confident. Bins
    with few images (:func:`sparse_bins`) are hollow circles off the line. Below each
    diagram, the share of each variant's images in each bin (equal-width bins on [0, 1]).
    """
    rows = [2 + sum(1 + wrap_label(line[0]).count("\n") for line in lines) for _, lines in panels]
    entries = max(rows, default=1)  # legend rows below the axes ("calibrated", "few images" and the variants)
    cols = max(1, len(panels))
    fig = Figure(figsize=(4.8 * cols, 6.0 + 0.16 * entries), dpi=DPI, layout="constrained")
    grid = fig.subplots(2, cols, squeeze=False, height_ratios=[4.0, 1.2], sharex="col")
    for ax, ax_n, (title, lines) in zip(grid[0], grid[1], panels, strict=False):
        ax.plot([0, 1], [0, 1], color="0.6", linestyle=":", label="calibrated")
        for line in lines:
            _reliability_line(ax, ax_n, line)
        if any(any(sparse_bins(line[4])) for line in lines):
            ax.plot([], [], linestyle="none", marker="o", mfc="none", mec="0.4", label=FEW_IMAGES_LABEL)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_ylabel("accuracy in the bin (fraction)")
        ax.set_title(title, fontsize=9)
        ax.grid(True, alpha=0.3)
        ax_n.set_ylabel("share of images", fontsize=8)
        ax_n.set_xlabel("confidence (largest probability, bin mean)")
        ax_n.set_ylim(bottom=0)
        ax_n.tick_params(labelsize=7)
        ax_n.grid(True, alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        ax_n.legend(handles, labels, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.5), frameon=False)
    return fig


def spread_indices(n: int, m: int) -> list[int]:
    """``m`` indices spread evenly over ``range(n)``, first and last included (all when n <= m).

    >>> spread_indices(10, 4)
    [0, 3, 6, 9]
    """
    if n <= m:
        return list(range(n))
    return sorted({round(i * (n - 1) / (m - 1)) for i in range(m)})


def grad_norm_figure(variants: Sequence[tuple[str, str, Histories]], max_panels: int = 12) -> Figure:
    """Mean weight-gradient L2 norm of each layer per epoch (``grad_norms``), log scale.

    One variant: one panel, a line per layer (input to output: dark to light). Several: a
    panel per layer (at most ``max_panels``, spread from the first layer to the last) with
    a line per variant.
    """
    layers = list(dict.fromkeys(k for _, _, hs in variants for h in hs for r in h for k in (r.get("grad_norms") or {})))

    def norms(layer: str) -> Callable[[dict], float | None]:
        def get(r: dict) -> float | None:
            v = finite((r.get("grad_norms") or {}).get(layer))
            return v if v is not None and v > 0 else None  # log scale

        return get

    if len(variants) == 1:
        fig = Figure(figsize=(8, 4.2), dpi=DPI, layout="constrained")
        ax = fig.add_subplot()
        colours = matplotlib.colormaps["viridis"](np.linspace(0, 0.9, max(1, len(layers))))
        for layer, color in zip(layers, colours, strict=True):
            x, mean, std = epoch_stats(variants[0][2], norms(layer))
            _band(ax, x, mean, std, color, label=layer)
        ax.set_yscale("log")
        ax.set_ylabel("mean ||dL/dW||₂ over the epoch's steps")
        ax.set_title(wrap_label(f"{variants[0][0]}: gradient norm per layer", 80), fontsize=9)
        _integer_epochs(ax)
        _legend_below(fig, *ax.get_legend_handles_labels())
        return fig
    shown = [layers[i] for i in spread_indices(len(layers), max_panels)]
    cols = max(1, min(4, len(shown)))
    rows = max(1, math.ceil(len(shown) / cols))
    fig = Figure(figsize=(3.2 * cols, 2.5 * rows + 0.8), dpi=DPI, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, layer in zip(axes, shown, strict=False):
        for label, color, histories in variants:
            x, mean, std = epoch_stats(histories, norms(layer))
            _band(ax, x, mean, std, color, label=label)
        ax.set_yscale("log")
        ax.set_title(layer, fontsize=8)
        _integer_epochs(ax)
        ax.tick_params(which="both", labelsize=7)  # log axes label minor ticks within a decade
    for ax in axes[len(shown) :]:
        ax.set_axis_off()
    fig.supylabel("mean ||dL/dW||₂ over the epoch's steps", fontsize=9)
    if len(shown) < len(layers):
        fig.suptitle(f"{len(shown)} of {len(layers)} layers, spread from input to output", fontsize=9)
    handles = [Line2D([], [], color=color) for _, color, _ in variants]
    _legend_below(fig, handles, [label for label, _, _ in variants])
    return fig


#: The statistics of :func:`softmaxlab.diagnostics.activation_stats` drawn per block, with their axis titles.
ACTIVATION_STATS = {
    "mean": "mean of the block's output",
    "std": "standard deviation of the output",
    "near_zero": "fraction of outputs < 1e-6",
}


def activation_stats_figure(variants: Sequence[tuple[str, str, Sequence[dict]]]) -> Figure:
    """Per block, the last epoch's mean, standard deviation and near-zero fraction of its
    output on the fixed validation probe (``activation_stats`` of ``metrics.jsonl``).

    ``variants`` are ``(label, colour, stats)`` with one ``{block: {"mean", "std",
    "near_zero"}}`` per run; a bar is the mean over the runs, its error bar ± one sample
    standard deviation. A panel whose values are all positive and span more than two decades
    (a spatial softmax's outputs are ~1/(H W), a ReLU's ~1) is drawn on a log scale.
    """
    blocks = list(dict.fromkeys(b for _, _, runs_ in variants for stats in runs_ for b in stats))
    fig = Figure(figsize=(12, 3.8), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, len(ACTIVATION_STATS))
    width = 0.8 / max(1, len(variants))
    for ax, (key, title) in zip(axes, ACTIVATION_STATS.items(), strict=True):
        drawn = []
        for i, (label, color, runs_) in enumerate(variants):
            stats = [mean_std([finite((s.get(b) or {}).get(key)) for s in runs_]) for b in blocks]
            mean = np.array([m if n else np.nan for m, _, n in stats])
            std = np.array([sd if n > 1 else 0.0 for _, sd, n in stats])
            x = np.arange(len(blocks)) + (i - (len(variants) - 1) / 2) * width
            ax.bar(x, mean, width, yerr=std if np.any(std > 0) else None, color=color, label=label, capsize=2)
            drawn += [m for m in mean if np.isfinite(m)]
        positive = [m for m in drawn if m > 0]
        if drawn and len(positive) == len(drawn) and max(positive) / min(positive) > 100:
            ax.set_yscale("log")
        ax.set_xticks(range(len(blocks)), blocks, fontsize=8)
        ax.set_title(f"{title} (last epoch)", fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
        ax.tick_params(axis="y", labelsize=7)
    handles = [Line2D([], [], color=color, linewidth=6) for _, color, _ in variants]
    _legend_below(fig, handles, [label for label, _, _ in variants])
    return fig


def gumbel_tau_figure(
    per_epoch: Sequence[tuple[str, str, Histories]],
    per_setting: Sequence[tuple[str, str, float, float, float]] = (),
) -> Figure:
    """Accuracy against the Gumbel-softmax temperature tau.

    ``per_epoch``: ``(label, colour, histories)`` whose records carry ``tau``; validation
    accuracy at each epoch against that epoch's tau (mean over seeds; tau falls as it is
    annealed). ``per_setting``: ``(label, colour, head.tau, mean, std)`` of test accuracy,
    one point per configured starting tau. An empty group gets no panel.
    """
    panels = int(bool(per_epoch)) + int(bool(per_setting))
    fig = Figure(figsize=(4.8 * max(1, panels), 4.0), dpi=DPI, layout="constrained")
    axes = list(fig.subplots(1, max(1, panels), squeeze=False)[0])
    if per_epoch:
        ax = axes.pop(0)
        for label, color, histories in per_epoch:
            _, tau, _ = epoch_stats(histories, lambda r: r.get("tau"))
            _, acc, acc_std = epoch_stats(histories, lambda r: r.get("val_acc"))
            n = min(len(tau), len(acc))
            ax.errorbar(
                tau[:n], acc[:n] * 100, yerr=acc_std[:n] * 100, color=color, marker="o", ms=3, label=wrap_label(label)
            )
        ax.set_xlabel("tau at the end of the epoch")
        ax.set_ylabel("validation accuracy (%)")
        ax.set_title("per epoch (mean over seeds)", fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    if per_setting:
        ax = axes.pop(0)
        for label, color, tau0, mean, std in per_setting:
            ax.errorbar(
                [tau0], [mean * 100], yerr=[std * 100], color=color, marker="o", capsize=3, label=wrap_label(label)
            )
        ax.set_xscale("log")
        ax.set_xlabel("head.tau (starting temperature)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title("per setting (mean ± std over seeds)", fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    return fig


def epoch_time_figure(bars: Sequence[tuple[str, str, float, float]]) -> Figure:
    """Mean epoch time per variant as horizontal bars, ± one sample standard deviation over seeds.

    ``bars`` are ``(label, colour, mean seconds, std seconds)``.
    """
    n = len(bars)
    labels = [wrap_label(b[0]) for b in bars]
    per_bar = max(0.4, 0.16 * max((label.count("\n") + 1 for label in labels), default=1))  # 8 pt lines
    fig = Figure(figsize=(8, 1.2 + per_bar * n), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    means, stds = [b[2] for b in bars], [b[3] for b in bars]
    ax.barh(range(n), means, xerr=stds, color=[b[1] for b in bars], capsize=3)
    ax.set_yticks(range(n), labels, fontsize=8)
    ax.invert_yaxis()
    for i, (m, s) in enumerate(zip(means, stds, strict=True)):
        ax.text(m + s, i, f"  {m:.2f} s", va="center", fontsize=7)
    ax.set_xlabel("mean epoch time (s)")
    ax.margins(x=0.15)
    ax.grid(True, axis="x", alpha=0.3)
    return fig
