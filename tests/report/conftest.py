"""Run directories written directly (no training), so that report tests take milliseconds.

They hold what ``fit`` writes: a resolved ``config.yaml``, ``metrics.jsonl``, ``summary.json``
(with or without the calibration keys) and ``figures/feature_maps.png``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from softmaxlab.runs import save_predictions

from ..conftest import tiny_config

CLASSES = ["red circle", "cyan circle", "red square", "cyan square"]


def _reliability(shift: float) -> dict:
    """15 bins, the first five empty (null means), as ``metrics.reliability_bins`` writes them."""
    count = [0] * 5 + [10] * 10
    confidence = [None] * 5 + [(b + 0.5) / 15 for b in range(5, 15)]
    accuracy = [None] * 5 + [max(0.0, min(1.0, c - shift)) for c in confidence[5:]]
    return {"bins": 15, "count": count, "confidence": confidence, "accuracy": accuracy}


def _activation_stats(epoch: int, seed: int) -> dict:
    """Two blocks' output statistics as ``diagnostics.activation_stats`` writes them."""
    return {
        f"block{b}": {"mean": 0.4 / (b + 1) + 0.01 * seed, "std": 0.5 / epoch, "near_zero": 0.2 + 0.1 * b}
        for b in range(2)
    }


def write_run(
    path: Path,
    *overrides: str,
    seed: int = 0,
    accuracy: float = 0.8,
    status: str = "finished",
    calibration: bool = True,
    epochs: int = 3,
    diagnostics: bool = True,
    predictions: bool = False,
) -> Path:
    """A run directory at ``path`` for the tiny config with ``overrides`` and ``seed``.

    ``calibration`` writes what newer runs record (ECE, reliability bins, bootstrap
    intervals, the ECE band); ``diagnostics`` each epoch's ``activation_stats``;
    ``predictions`` a ``predictions.npz`` whose first ``accuracy`` of the 64 test images are right.
    """
    cfg = tiny_config(f"name={path.name}", f"train.seed={seed}", f"train.epochs={epochs}", *overrides)
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(cfg.to_yaml())
    done = epochs if status == "finished" else epochs - 1
    history = []
    for e in range(1, done + 1):
        record = {
            "epoch": e,
            "train_loss": 1.4 / e + 0.01 * seed,
            "train_acc": accuracy * e / epochs - 0.05,
            "val_loss": 1.3 / e + 0.02 * seed,
            "val_acc": accuracy * e / epochs + 0.01 * seed,
            "epoch_seconds": 1.0 + 0.1 * seed + (0.5 if cfg.head.name == "gumbel" else 0.0),
            "train_images_per_second": 1000.0,
            "lr": 0.05,
            "grad_norms": {"backbone.blocks.0.0": 0.5 / e, "backbone.blocks.1.0": 0.3 / e, "head.fc": 0.2 / e},
            "activation_stats": _activation_stats(e, seed) if diagnostics else {},
        }
        if cfg.head.name == "gumbel":
            record["tau"] = 0.9**e if cfg.head.tau_schedule == "exponential" else cfg.head.tau
        history.append(record)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
    env = {"python": "3.11.7", "torch": "2.4.0", "device": "cpu", "seed": seed}
    if status == "diverged":
        message = f"training diverged at epoch {epochs}, step 7: non-finite loss"
        summary = {
            "status": "diverged",
            "name": cfg.name,
            "head": cfg.head.name,
            "classes": CLASSES,
            "diverged": {"epoch": epochs, "step": 7, "message": message},
            "epochs": done,
            "env": env,
        }
    else:
        n = 64
        right = round(accuracy * n)
        test = {
            "accuracy": accuracy,
            "top5": 1.0,
            "f1_macro": accuracy - 0.02,
            "nll": 1.0 - accuracy,
            "brier": 0.5 - accuracy / 2,
            "confusion_matrix": [[right if i == j else (n - right) // 3 for j in range(4)] for i in range(4)],
        }
        summary = {
            "status": "finished",
            "name": cfg.name,
            "head": cfg.head.name,
            "classes": CLASSES,
            "epochs": done,
            "test": test,
            "timing": {"mean_epoch_seconds": history[0]["epoch_seconds"], "train_images_per_second": 1000.0},
            "env": env,
        }
        if calibration:
            test.update(
                ece=0.1 - accuracy / 20,
                ece_after_temperature=0.02,
                nll_after_temperature=0.9 - accuracy,
                reliability=_reliability(0.1),
                reliability_after_temperature=_reliability(0.01),
            )
            test["ci95"] = {"accuracy": [accuracy - 0.1, accuracy + 0.1], "nll": [0.9 - accuracy, 1.1 - accuracy]}
            test["ece_band"] = {"mean": 0.03, "p95": 0.05}
            test["ece_band_after_temperature"] = {"mean": 0.02, "p95": 0.04}
            summary["temperature"] = 1.5
            summary["temperature_note"] = "fitted on the validation split by minimising NLL"
    (path / "summary.json").write_text(json.dumps(summary))
    if predictions and status == "finished":
        targets = torch.arange(n) % len(CLASSES)
        predicted = torch.where(torch.arange(n) < right, targets, (targets + 1) % len(CLASSES))
        save_predictions(
            path / "predictions.npz", torch.nn.functional.one_hot(predicted, len(CLASSES)).float(), targets
        )
    (path / "figures").mkdir()
    Image.new("RGB", (60, 30), (30, 120, 200)).save(path / "figures" / "feature_maps.png")
    return path


def write_study(root: Path) -> Path:
    """Three variants of two seeds each (softmax, gumbel with annealed tau, sparsemax with
    one diverged seed): six runs in the directory ``root``, written in this order; the
    softmax and gumbel runs kept their predictions."""
    runs = []
    for seed in (0, 1):
        runs.append(write_run(root / f"softmax-{seed}", seed=seed, accuracy=0.8, predictions=True))
        gumbel = ("head.name=gumbel", "head.tau_schedule=exponential")
        runs.append(write_run(root / f"gumbel-{seed}", *gumbel, seed=seed, accuracy=0.7, predictions=True))
    runs.append(write_run(root / "sparsemax-0", "head.name=sparsemax", seed=0, accuracy=0.6))
    runs.append(write_run(root / "sparsemax-1", "head.name=sparsemax", seed=1, status="diverged"))
    for i, run in enumerate(runs):  # the report orders runs by when their config was written
        os.utime(run / "config.yaml", (1e9 + i, 1e9 + i))
    return root


@pytest.fixture
def study(tmp_path) -> Path:
    """A study directory of its own (tests may change its files)."""
    return write_study(tmp_path / "study")


@pytest.fixture(scope="session")
def study_report(tmp_path_factory) -> Path:
    """A study directory with its full report (HTML and Markdown) written once, to be read only:
    drawing the figures is what costs time."""
    from softmaxlab.report.build import write_report

    root = write_study(tmp_path_factory.mktemp("report") / "study")
    write_report(root)
    return root
