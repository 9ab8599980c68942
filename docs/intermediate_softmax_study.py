"""Run the intermediate-softmax study and draw its figures.

    python docs/intermediate_softmax_study.py run    # the sweep: 9 variants x 3 seeds (resumable)
    python docs/intermediate_softmax_study.py plot   # figures from runs/intermediate-softmax-study/
    python docs/intermediate_softmax_study.py        # both
    python docs/intermediate_softmax_study.py batchnorm  # BatchNorm's inputs at initialisation

Run from the repository root; see docs/intermediate-softmax.md. ``run`` is
``softmaxlab sweep configs/studies/intermediate-softmax.yaml --workers 2``; the tables of the
doc come from ``python docs/studies/build.py``.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

CONFIG = "configs/studies/intermediate-softmax.yaml"
SWEEP = Path("runs/intermediate-softmax-study")
FIGURES = Path("docs/figures")


def variant_of(row: dict) -> str:
    """The short variant name of a results.csv row (the names used in the figures)."""
    name = row["model.activation"]
    if row.get("model.softmax_rescale") == "true":
        name += "-rescale"
    if row.get("model.learn_activation_temperature") == "true":
        name += "-learnT"
    blocks = row.get("model.softmax_blocks")
    if blocks:
        name += {"[2]": "-last", "[0, 1]": "-first2"}.get(blocks, f"-{blocks}")  # results.csv holds JSON
    return name


def _runs() -> dict[str, list[Path]]:
    """Variant -> the directories of its finished runs."""
    with open(SWEEP / "results.csv", newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["status"] == "finished"]
    out: dict[str, list[Path]] = {}
    for row in rows:
        out.setdefault(variant_of(row), []).append(SWEEP / "runs" / row["run"])
    return out


def run_all() -> None:
    cmd = ["softmaxlab", "sweep", CONFIG, "--workers", "2"]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def main(argv: list[str]) -> None:
    what = argv[0] if argv else "all"
    if what in ("run", "all"):
        run_all()
    if what in ("plot", "all"):
        plot_all()
    if what == "batchnorm":
        print_batchnorm_at_init()


# --------------------------------------------------------------------------- BatchNorm at init


def batchnorm_at_init(eps: float, seed: int, images: int = 256) -> list[tuple[float, float]]:
    """Per BatchNorm of a freshly initialised softmax_hw ``simple_cnn`` (widths 32-64-128, batch
    statistics): (mean over channels of the per-channel input variance, mean over channels of the
    per-channel output std) on the first ``images`` Intel images at 32 px, standardised per channel.

    With input variance v and eps, BatchNorm outputs (x - mean) / sqrt(v + eps), whose std is
    sqrt(v / (v + eps)): near 1 only while v is much larger than eps.
    """
    import torch
    import torch.nn.functional as F

    from softmaxlab.config import load_config
    from softmaxlab.models import build_model

    data = np.load("../shared/data/intel64-train.npz")
    x = torch.from_numpy(data["x"][:images]).permute(0, 3, 1, 2).float() / 255
    x = F.interpolate(x, size=32, mode="bilinear", antialias=True, align_corners=False)
    x = (x - x.mean((0, 2, 3), keepdim=True)) / x.std((0, 2, 3), keepdim=True)
    torch.manual_seed(seed)
    overrides = ["model.widths=[32,64,128]", "model.activation=softmax_hw", f"model.bn_eps={eps}"]
    model = build_model(load_config(None, overrides), 3, 6).train()
    rows: list[tuple[float, float]] = []

    def record(_module, inputs, output) -> None:
        rows.append((inputs[0].var((0, 2, 3), unbiased=False).mean().item(), output.std((0, 2, 3)).mean().item()))

    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.register_forward_hook(record)
    with torch.no_grad():
        model(x)
    return rows


def print_batchnorm_at_init() -> None:
    """The table of docs/intermediate-softmax.md: BatchNorm's input variance and output std per block."""
    print("| BatchNorm eps | block | input variance (seeds 0, 1, 2) | output std (seeds 0, 1, 2) |")
    print("| --- | --- | --- | --- |")
    for eps in (1e-5, 1e-10):
        per_seed = [batchnorm_at_init(eps, seed) for seed in (0, 1, 2)]
        for block in range(len(per_seed[0])):
            var = ", ".join(f"{rows[block][0]:.2g}" for rows in per_seed)
            std = ", ".join(f"{rows[block][1]:.2f}" for rows in per_seed)
            print(f"| {eps:g} | {block} | {var} | {std} |")


# --------------------------------------------------------------------------- figures

#: Colour per variant, the same in every figure.
COLOURS = {
    "relu": "black",
    "softmax_h": "tab:blue",
    "softmax_w": "tab:cyan",
    "softmax_hw": "tab:red",
    "softmax_hw-rescale": "tab:green",
    "softmax_hw-learnT": "tab:olive",
    "softmax_hw-last": "tab:orange",
    "softmax_hw-first2": "tab:purple",
    "softmax_c": "tab:brown",
}


def load_records(variant: str) -> list[list[dict]]:
    """The metrics.jsonl records of each finished run of ``variant`` (one list per seed)."""
    return [
        [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines() if line.strip()]
        for d in _runs().get(variant, [])
    ]


def plot_curves(fig) -> None:
    """Train and validation accuracy per epoch: mean over seeds (thick), each seed (thin)."""
    axes = fig.subplots(1, 2, sharey=True)
    for ax, key, title in zip(axes, ("train_acc", "val_acc"), ("train accuracy", "validation accuracy"), strict=True):
        for variant, colour in COLOURS.items():
            runs = load_records(variant)
            if not runs:
                continue
            n = min(len(r) for r in runs)
            epochs = np.arange(1, n + 1)
            curves = np.array([[rec[key] for rec in r[:n]] for r in runs])  # (seeds, epochs)
            for c in curves:
                ax.plot(epochs, c, color=colour, lw=0.7, alpha=0.5)
            ax.plot(epochs, curves.mean(0), color=colour, lw=2, label=f"{variant} (n={len(runs)})")
        ax.axhline(1 / 6, color="grey", ls=":", lw=1)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (dotted: chance, 1/6)")
    axes[1].legend(fontsize=7, loc="lower right")


def plot_grad_norms(fig) -> None:
    """Per-layer mean weight-gradient norm, first and last epoch, mean over seeds, log scale.

    Solid: the conv layers and the final linear layer; dashed: the BatchNorm scales (gamma).
    """
    axes = fig.subplots(1, 2, sharey=True)
    for ax, which in zip(axes, ("first", "last"), strict=True):
        for variant in (
            "relu",
            "softmax_hw",
            "softmax_hw-rescale",
            "softmax_hw-learnT",
            "softmax_hw-last",
            "softmax_c",
        ):
            runs = load_records(variant)
            if not runs:
                continue
            recs = [r[0] if which == "first" else r[-1] for r in runs]
            norms = np.array([list(rec["grad_norms"].values()) for rec in recs])  # (seeds, layers)
            names = list(recs[0]["grad_norms"])
            weights = [i for i, n in enumerate(names) if n.endswith(".0") or n.startswith("head")]
            bns = [i for i, n in enumerate(names) if n.endswith(".1")]
            colour = COLOURS[variant]
            ax.plot(range(len(weights)), norms[:, weights].mean(0), "o-", color=colour, label=variant)
            ax.plot(range(len(bns)), norms[:, bns].mean(0), "x--", color=colour, lw=1)
            for v in norms:
                ax.plot(range(len(weights)), v[weights], ".", color=colour, alpha=0.5, ms=3)
        ax.set_yscale("log")
        ax.set_xticks(range(4))
        ax.set_xticklabels(["block 0", "block 1", "block 2", "head fc"])
        ax.set_title(f"{which} epoch (solid: conv / fc weight, dashed: BN gamma)", fontsize=9)
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("mean ||dL/dW|| over the epoch's steps")
    axes[1].legend(fontsize=7)


def plot_activation_stats(fig) -> None:
    """Per block, last epoch: the fraction of outputs below 1e-6 and the mean output (log scale)."""
    axes = fig.subplots(1, 2)
    variants = [v for v in COLOURS if load_records(v)]
    width = 0.8 / max(len(variants), 1)
    for i, variant in enumerate(variants):
        recs = [r[-1]["activation_stats"] for r in load_records(variant)]
        blocks = list(recs[0])
        x = np.arange(len(blocks)) + (i - (len(variants) - 1) / 2) * width
        near_zero = np.array([[rec[b]["near_zero"] for b in blocks] for rec in recs]).mean(0)
        mean = np.array([[rec[b]["mean"] for b in blocks] for rec in recs]).mean(0)
        axes[0].bar(x, near_zero, width, color=COLOURS[variant], label=variant)
        axes[1].bar(x, mean, width, color=COLOURS[variant], label=variant)
    for ax, title in zip(axes, ("fraction of block outputs < 1e-6", "mean block output"), strict=True):
        ax.set_xticks(np.arange(3))
        ax.set_xticklabels([f"block {b}" for b in range(3)])
        ax.set_title(title + " (last epoch)")
        ax.grid(alpha=0.3, axis="y")
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=7)


def plot_all() -> None:
    """Write docs/figures/intermediate-softmax-*.png and copy the relu / softmax_hw feature maps (seed 0)."""
    from matplotlib.figure import Figure

    from softmaxlab.report.figures import save_png

    for name, draw, size in (
        ("curves", plot_curves, (10, 4)),
        ("grad-norms", plot_grad_norms, (10, 4.2)),
        ("activation-stats", plot_activation_stats, (10, 3.8)),
    ):
        fig = Figure(figsize=size, layout="constrained")
        draw(fig)
        print("wrote", save_png(fig, FIGURES / f"intermediate-softmax-{name}.png"))
    runs = _runs()
    for variant in ("relu", "softmax_hw", "softmax_hw-rescale"):
        if runs.get(variant):
            src = sorted(runs[variant])[0] / "figures" / "feature_maps.png"
            dst = FIGURES / f"intermediate-softmax-feature-maps-{variant}.png"
            shutil.copyfile(src, dst)
            print("wrote", dst)


if __name__ == "__main__":
    main(sys.argv[1:])
