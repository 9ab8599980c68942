"""Runs grouped into variants, for the report.

A report is built from files only (``config.yaml``, ``metrics.jsonl``, ``summary.json``,
``figures/``, read by :func:`softmaxlab.runs.read_run`), so it can be rebuilt for old runs
without loading a model. Runs written before a metric existed simply lack its key; nothing
here assumes a key is present.

A *variant* is a set of runs that differ only in ``train.seed`` (and ``name``): its label
lists the config keys whose values differ across all the runs of the report, e.g.
``head=gumbel, lr=0.05`` (a ``section.name`` key is shown as its section, another key as
its last part where that is unambiguous, and paths without the directory they all share).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

from softmaxlab.dotted import flatten
from softmaxlab.runs import RunRecord

#: Config keys that do not define a variant: runs that differ only in these are seeds of one variant.
NOT_VARIANT_KEYS = ("name", "train.seed", "report.figures")


@dataclass
class Variant:
    """Runs that differ only in their seed; ``color`` is the variant's colour in every figure."""

    label: str
    runs: list[RunRecord]
    color: str = "C0"

    @property
    def finished(self) -> list[RunRecord]:
        """The runs that ran to their end (diverged and unfinished runs left out)."""
        return [r for r in self.runs if r.status == "finished"]


def format_value(value: Any) -> str:
    """A config value as it reads in YAML: ``true``, ``null``, ``[8, 16]``, ``0.1``."""
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return f"{value:g}"
    return json.dumps(value)


def short_keys(keys: list[str]) -> dict[str, str]:
    """How each of ``keys`` reads in a label: a ``section.name`` key as its section, any other
    as its last part, unless two of ``keys`` would then read the same (those stay whole).

    >>> short_keys(["head.name", "train.lr", "head.tau"])
    {'head.name': 'head', 'train.lr': 'lr', 'head.tau': 'tau'}
    >>> short_keys(["train.lr", "head.lr"])
    {'train.lr': 'train.lr', 'head.lr': 'head.lr'}
    """

    def short(key: str) -> str:
        return key[: -len(".name")] if key.endswith(".name") else key.rsplit(".", 1)[-1]

    counts = Counter(short(k) for k in keys)
    return {k: short(k) if counts[short(k)] == 1 else k for k in keys}


def shared_directory(values: list[Any]) -> str:
    """The directory part (up to a ``/``) that every path among ``values`` starts with, ``""``
    if they share none; labels leave it out (a path is a string with a ``/`` in it). Removing
    a common prefix keeps distinct paths distinct.

    >>> shared_directory(["data/a/x.npz", "data/a/y.npz", None, 3])
    'data/a/'
    >>> shared_directory(["data/x.npz", "other/x.npz"])
    ''
    """
    directories = [v.split("/")[:-1] for v in values if isinstance(v, str) and "/" in v]
    shared = []
    for parts in zip(*directories, strict=False):
        if len(set(parts)) > 1:
            break
        shared.append(parts[0])
    return "/".join(shared) + "/" if shared else ""


def finite(value: Any) -> float | None:
    """``value`` as a float when it is a finite number, else None (missing keys, nulls, NaN, text).

    >>> finite(2), finite(None), finite(float("nan")), finite(True)
    (2.0, None, None, None)
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def varying_keys(records: list[RunRecord]) -> list[str]:
    """Dotted config keys whose values differ across the ``records`` that have them (seed and
    name left out), in config order. A key only some runs have (an option of their head, which
    the others' heads do not have) varies only if those runs disagree on it: the difference is
    the component's, which its ``name`` key shows."""
    flat = [flatten(r.config) for r in records]
    keys = list(dict.fromkeys(k for f in flat for k in f))
    out = []
    for k in keys:
        if k in NOT_VARIANT_KEYS:
            continue
        values = {json.dumps(f[k], default=repr, sort_keys=True) for f in flat if k in f}
        if len(values) > 1:
            out.append(k)
    return out


def label_keys(records: list[RunRecord], keys: list[str]) -> list[str]:
    """The varying ``keys`` worth showing in labels: an option of a section whose ``name`` is
    shown is dropped when the variants stay told apart without it (``head.tau_schedule``
    varies only because ``head.name`` does)."""

    def groups(ks: list[str]) -> int:
        return len({tuple(json.dumps(flatten(r.config).get(k), default=repr) for k in ks) for r in records})

    shown = list(keys)
    total = groups(shown)
    for k in reversed(keys):
        section = k.rsplit(".", 1)[0]
        if k.endswith(".name") or f"{section}.name" not in shown:
            continue
        rest = [x for x in shown if x != k]
        if groups(rest) == total:
            shown = rest
    return shown


def group_variants(records: list[RunRecord], palette: list[str] | None = None) -> tuple[list[Variant], list[str]]:
    """Group runs into variants (first-seen order); returns the variants and the varying keys.

    Each record's ``variant`` is set to its label: the keys of :func:`label_keys` named as
    :func:`short_keys` names them, paths less their :func:`shared_directory`. When
    every run has the same config but the seed, the label is ``head=<head name>``. Colours
    are taken from ``palette`` in order (default: matplotlib's ``C0``, ``C1``, ...).
    """
    keys = varying_keys(records)
    shown = label_keys(records, keys)
    names = short_keys(shown)  # distinct whenever the keys are
    flats = [flatten(r.config) for r in records]

    def labels(directory: dict[str, str]) -> list[str]:
        def value(k: str, v: Any) -> Any:
            d = directory.get(k, "")
            return v[len(d) :] if d and isinstance(v, str) and v.startswith(d) else v

        return [", ".join(f"{names[k]}={format_value(value(k, f[k]))}" for k in shown if k in f) for f in flats]

    texts, whole = labels({k: shared_directory([f.get(k) for f in flats]) for k in shown}), labels({})
    if len(set(texts)) < len(set(whole)):  # a path and a plain value became alike: keep paths whole
        texts = whole
    groups: dict[str, list[RunRecord]] = {}
    for r, flat, text in zip(records, flats, texts, strict=True):
        if not keys:
            text = f"head={format_value(flat.get('head.name', r.summary.get('head', '?')))}"
        r.variant = text
        groups.setdefault(text, []).append(r)
    colours = palette or [f"C{i}" for i in range(len(groups))]
    variants = [Variant(label, members, colours[i % len(colours)]) for i, (label, members) in enumerate(groups.items())]
    return variants, keys
