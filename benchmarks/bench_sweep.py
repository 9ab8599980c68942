"""What a sweep costs beyond its runs' training, and what running runs side by side buys.

An 8-run sweep (2 heads x 4 seeds of the default ``simple_cnn`` on ``shapes``, or on the
images of an ``.npz`` file with ``--data``; a short budget; ``--seeds`` sets how many) is
trained with ``softmaxlab sweep CONFIG --workers N`` for each N asked, each time into a
fresh directory, as a user runs it (a subprocess: imports, data loading, the workers'
start, every run's report and the sweep's tables included). For each N it prints the wall
time, the sum of the runs' own training time (``timing.total_train_seconds`` of each run's
``summary.json``: the epochs alone), the overhead ``wall / sum - 1`` where the runs trained
one at a time, and the speed-up of N workers over one. At one worker it also prints the sum
of the runs' whole times (``timing.wall_seconds``: data, model, epochs, validation, test),
the sweep's wall time beyond them, and that overhead in two parts: the fixed part is the
wall time of the same command run again on the finished sweep (which trains nothing: the
start, the plan, the tables and the sweep's report), the rest divided by the runs is what
the sweep spends on each run outside it (loading its data when not shared, its feature maps
and report, recording it).

    python benchmarks/bench_sweep.py [--workers 1 2] [--seeds 4] [--epochs 2] [--train-size 2000]
        [--data FILE.npz]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml


def sweep_config(epochs: int, train_size: int, seeds: int = 4, data: Path | None = None) -> dict:
    """The sweep: 2 heads x ``seeds`` seeds of the defaults with ``train_size`` training
    images of ``shapes`` (or of the ``.npz`` file ``data``)."""
    images = {"name": "shapes", "train_size": train_size, "val_size": 500, "test_size": 1000}
    if data is not None:
        images = {"name": "npz", "root": str(data.resolve()), "max_train_images": train_size}
    return {
        "name": "bench-sweep",
        "data": images,
        "train": {"epochs": epochs},
        "report": {"figures": False},
        "sweep": {"grid": {"head.name": ["softmax", "log_softmax"], "train.seed": list(range(seeds))}},
    }


def run_sweep(config: Path, out: Path, workers: int) -> tuple[float, float, float, int]:
    """(wall seconds, summed training seconds, summed run seconds, finished runs) of one
    sweep into ``out``; a run's seconds are its ``timing.wall_seconds`` (data, model, epochs,
    validation, test)."""
    command = [sys.executable, "-m", "softmaxlab", "sweep", str(config), "--out", str(out), "--workers", str(workers)]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - start
    summaries = [json.loads(p.read_text()) for p in sorted(out.glob("runs/*/summary.json"))]
    finished = [s["timing"] for s in summaries if s.get("status") == "finished"]
    trained = sum(t["total_train_seconds"] for t in finished)
    return wall, trained, sum(t.get("wall_seconds", 0.0) for t in finished), len(finished)


def load_seconds(config: Path, repeats: int = 3) -> float:
    """Median seconds of loading the sweep's dataset in this process: what each run after a
    worker's first no longer pays, since the runs that share a dataset load it once."""
    from softmaxlab.data import load_data
    from softmaxlab.sweep.spec import load_sweep

    cfg = load_sweep(config)[0]  # the base experiment: every run of the grid has its data
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        load_data(cfg.data)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-size", type=int, default=2000)
    parser.add_argument("--data", type=Path, help="an .npz file (x uint8 N x H x W x C, y) instead of shapes")
    args = parser.parse_args(argv)
    if args.data is not None and not args.data.is_file():
        parser.error(f"--data {args.data}: no such file; give an .npz file of images")
    root = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    try:
        config = root / "sweep.yaml"
        config.write_text(yaml.safe_dump(sweep_config(args.epochs, args.train_size, args.seeds, args.data)))
        images = args.data.name if args.data else "shapes"
        print(f"{2 * args.seeds} runs: simple_cnn on {images}, {args.train_size} training images, {args.epochs} epochs")
        print(f"loading the data: {load_seconds(config):.2f} s (median of 3), once per worker", flush=True)
        walls = {}
        for workers in args.workers:
            out = root / f"workers-{workers}"
            wall, trained, runs, finished = run_sweep(config, out, workers)
            walls[workers] = wall
            line = f"--workers {workers}: wall {wall:6.1f} s, training summed {trained:6.1f} s ({finished} runs)"
            if workers == 1:
                fixed = run_sweep(config, out, workers)[0]  # trains nothing: every run is finished
                line += f", overhead wall / training - 1 = {wall / trained - 1:+.0%}"
                fixed_part = f"fixed {fixed:.1f} s (the same command again, nothing to train)"
                if runs > 0:
                    per_run = (wall - fixed - runs) / max(1, finished)
                    line += f"\n  runs summed {runs:.1f} s (training, validation, test)"
                    line += f", wall / runs - 1 = {wall / runs - 1:+.0%}; {fixed_part}"
                    line += f", {per_run:.2f} s per run beyond the run itself"
                else:  # a version of softmaxlab whose summaries lack timing.wall_seconds
                    line += f"\n  the runs' own times are not recorded (no timing.wall_seconds); {fixed_part}"
            elif 1 in walls:
                line += f", speed-up over --workers 1: {walls[1] / wall:.2f}x"
            print(line, flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
