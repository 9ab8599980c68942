"""Sweep configs for the tests: the tiny base config plus a sweep: section."""

import csv

import yaml

from softmaxlab.config import apply_overrides

from ..conftest import TINY

#: The tiny config, one epoch, smaller splits: a run takes a fraction of a second once warm.
SWEEP_BASE = [*TINY, "train.epochs=1", "data.train_size=256", "data.val_size=64", "data.test_size=64"]


def write_sweep(path, grid, exclude=None, extra=(), variants=None):
    """A sweep config file: the tiny base plus ``sweep.grid`` / ``sweep.exclude`` / ``sweep.variants``."""
    raw = apply_overrides({}, [*SWEEP_BASE, *extra])
    raw["sweep"] = {"grid": grid, **({"exclude": exclude} if exclude else {})}
    if variants is not None:
        raw["sweep"]["variants"] = variants
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))
