"""Keep the files of a finished study sweep that the docs are built from, without the weights.

    python docs/studies/keep.py runs/<sweep name> [--predictions]

Copies ``sweep.yaml``, ``results.csv``, ``aggregate.csv``, ``comparisons.csv`` and, per
finished run, ``config.yaml``, ``summary.json`` and ``metrics.jsonl`` into
``docs/studies/runs/<sweep name>/`` (replacing an earlier copy of that sweep), so that
``python docs/studies/build.py`` rebuilds every table of the studies without retraining.
``--predictions`` keeps each run's ``predictions.npz`` too (0.1-1 MB a run): a sweep resumed
from this copy then still has every run's predictions for McNemar in ``comparisons.csv``.
A run that learned an activation temperature keeps its ``model.pt`` (the docs read the
temperatures from it). The copy of a run is a complete run directory for ``softmaxlab sweep``:
put the folder back as ``runs/<sweep name>`` and the sweep trains only what is missing.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import yaml

KEPT = Path(__file__).resolve().parent / "runs"
SWEEP_FILES = ("sweep.yaml", "results.csv", "aggregate.csv", "comparisons.csv")
RUN_FILES = ("config.yaml", "summary.json", "metrics.jsonl")


def learns_temperature(run: Path) -> bool:
    """Whether the run's resolved config learns an activation temperature."""
    config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")) or {}
    return bool((config.get("model") or {}).get("learn_activation_temperature"))


def keep(sweep: Path, predictions: bool) -> Path:
    """Copy the kept files of ``sweep`` into a fresh ``KEPT / sweep.name``; return it."""
    if not (sweep / "results.csv").is_file():
        raise SystemExit(f"{sweep} has no results.csv: run the sweep first (softmaxlab sweep CONFIG)")
    staging = KEPT / f".{sweep.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name in SWEEP_FILES:
        if (sweep / name).is_file():
            shutil.copy2(sweep / name, staging / name)
    for run in sorted((sweep / "runs").iterdir()):
        if not (run / "summary.json").is_file():
            continue  # unfinished: a resumed sweep trains it again from the start
        files = [*RUN_FILES, *(["predictions.npz"] if predictions else [])]
        files += ["model.pt"] if learns_temperature(run) else []
        (staging / "runs" / run.name).mkdir(parents=True)
        for name in files:
            if (run / name).is_file():
                shutil.copy2(run / name, staging / "runs" / run.name / name)
    target = KEPT / sweep.name
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", type=Path, help="a sweep directory (runs/<sweep name>)")
    parser.add_argument("--predictions", action="store_true", help="keep each run's predictions.npz too")
    args = parser.parse_args()
    target = keep(args.sweep, args.predictions)
    size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
    print(f"kept {sum(1 for _ in (target / 'runs').iterdir())} runs of {args.sweep} in {target} ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
    sys.exit(main())
