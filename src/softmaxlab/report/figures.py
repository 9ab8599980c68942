"""Figures drawn with matplotlib's object API (no pyplot: no global state, no display).

* :func:`feature_map_figure`: one panel per channel of each block's output for one image.
* :func:`save_png`: write a figure as a PNG atomically.
* :func:`bench_figure`: the head cost benchmark, time against classes on log-log axes.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import torch
from matplotlib.figure import Figure
from torch import Tensor

from softmaxlab.errors import UserError

#: Resolution of saved figures, dots per inch.
DPI = 100
#: Side of one feature-map panel, inches.
PANEL_INCHES = 1.2
#: Height of a block's title line, inches.
TITLE_INCHES = 0.4


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


def save_png(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG at ``path`` (atomically; parent folders created); returns the path."""
    from softmaxlab import runs

    p = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    try:
        runs.atomic_write_bytes(p, buf.getvalue())
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
