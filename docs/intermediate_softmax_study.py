"""Run the intermediate-softmax study and draw its figures.

    python docs/intermediate_softmax_study.py run    # all variants x seeds (about 25 min on 2 CPU cores)
    python docs/intermediate_softmax_study.py plot   # figures from runs/intermediate-softmax/*/metrics.jsonl

Run from the repository root; see docs/intermediate-softmax.md.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

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
}


def run_all() -> None:
    """Train every variant for every seed; seeds outermost so a cut-short study still covers every variant."""
    start = time.perf_counter()
    for seed in SEEDS:
        for variant, overrides in VARIANTS.items():
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
        run_all()
    if what in ("plot", "all"):
        plot_all()


def plot_all() -> None:
    raise NotImplementedError


if __name__ == "__main__":
    main(sys.argv[1:])
