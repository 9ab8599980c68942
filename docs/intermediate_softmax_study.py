"""Run the intermediate-softmax study and draw its figures.

    python docs/intermediate_softmax_study.py run [VARIANT ...]  # all (or the named) variants x seeds
    python docs/intermediate_softmax_study.py                    # run everything, then plot
    python docs/intermediate_softmax_study.py plot               # figures from runs/intermediate-softmax/*/

Run from the repository root; see docs/intermediate-softmax.md.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CONFIG = "configs/intermediate-softmax.yaml"
RUNS = Path("runs/intermediate-softmax")
FIGURES = Path("docs/figures")
SEEDS = (0, 1)
# variant name -> --set overrides on top of the config.
VARIANTS: dict[str, list[str]] = {
    "relu": ["model.activation=relu"],
    "softmax_h": ["model.activation=softmax_h"],
    "softmax_w": ["model.activation=softmax_w"],
    "softmax_hw": ["model.activation=softmax_hw"],
    "softmax_hw-rescale": ["model.activation=softmax_hw", "model.softmax_rescale=true"],
    "softmax_hw-last": ["model.activation=softmax_hw", "model.softmax_blocks=[2]"],
    # Added after the first 12 runs: the spatial softmax everywhere except the last block.
    "softmax_hw-first2": ["model.activation=softmax_hw", "model.softmax_blocks=[0,1]"],
}


def run_all(names: list[str]) -> None:
    """Train the variants ``names`` (all when empty) for every seed; seeds outermost so that a
    study cut short still covers every variant."""
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        sys.exit(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    start = time.perf_counter()
    for seed in SEEDS:
        for variant, overrides in VARIANTS.items():
            if names and variant not in names:
                continue
            out = RUNS / f"{variant}-seed{seed}"
            sets = [*overrides, f"train.seed={seed}", f"name={variant}-seed{seed}"]
            cmd = ["softmaxlab", "run", CONFIG, *(a for s in sets for a in ("--set", s)), "--out", str(out)]
            cmd.append("--overwrite")
            print(" ".join(cmd), flush=True)
            subprocess.run(cmd, check=True)
    print(f"all runs: {time.perf_counter() - start:.0f} s wall", flush=True)


def main(argv: list[str]) -> None:
    what = argv[0] if argv else "all"
    if what in ("run", "all"):
        run_all(argv[1:])
    if what in ("plot", "all"):
        plot_all()


# --------------------------------------------------------------------------- figures

#: Colour per variant, the same in every figure.
COLOURS = {
    "relu": "black",
    "softmax_h": "tab:blue",
    "softmax_w": "tab:cyan",
    "softmax_hw": "tab:red",
    "softmax_hw-rescale": "tab:green",
    "softmax_hw-last": "tab:orange",
    "softmax_hw-first2": "tab:purple",
}


def load_records(variant: str) -> list[list[dict]]:
    """The metrics.jsonl records of each seed's run of ``variant`` that exists (one list per seed)."""
    out = []
    for seed in SEEDS:
        path = RUNS / f"{variant}-seed{seed}" / "metrics.jsonl"
        if path.is_file():
            out.append([json.loads(line) for line in path.read_text().splitlines() if line.strip()])
    return out


def load_summary(variant: str) -> list[dict]:
    """The summary.json of each seed's finished run of ``variant``."""
    paths = (RUNS / f"{variant}-seed{seed}" / "summary.json" for seed in SEEDS)
    return [json.loads(p.read_text()) for p in paths if p.is_file()]


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
        for variant in ("relu", "softmax_hw", "softmax_hw-rescale", "softmax_hw-last", "softmax_hw-first2"):
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
    for variant in ("relu", "softmax_hw", "softmax_hw-rescale"):
        src = RUNS / f"{variant}-seed0" / "figures" / "feature_maps.png"
        if src.is_file():
            dst = FIGURES / f"intermediate-softmax-feature-maps-{variant}.png"
            shutil.copyfile(src, dst)
            print("wrote", dst)
    print_table()


def print_table() -> None:
    """The results table of docs/intermediate-softmax.md: test accuracy, mean +- std over seeds."""
    print("| variant | seeds | test accuracy (mean ± std) | per seed | val acc by epoch (mean) |")
    print("| --- | --- | --- | --- | --- |")
    for variant in COLOURS:
        summaries, runs = load_summary(variant), load_records(variant)
        if not summaries:
            continue
        acc = np.array([s["test"]["accuracy"] for s in summaries])
        std = acc.std(ddof=1) if len(acc) > 1 else float("nan")
        n = min(len(r) for r in runs)
        val = np.array([[rec["val_acc"] for rec in r[:n]] for r in runs]).mean(0)
        per_seed = ", ".join(f"{a:.3f}" for a in acc)
        curve = " ".join(f"{v:.2f}" for v in val)
        print(f"| {variant} | {len(acc)} | {acc.mean():.3f} ± {std:.3f} | {per_seed} | {curve} |")


if __name__ == "__main__":
    main(sys.argv[1:])
