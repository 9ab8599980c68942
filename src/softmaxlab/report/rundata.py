"""Runs read back from disk, and grouped into variants, for the report.

A report is built from files only (``config.yaml``, ``metrics.jsonl``, ``summary.json``,
``figures/``), so it can be rebuilt for old runs without loading a model. Runs written
before a metric existed simply lack its key; nothing here assumes a key is present.

A *variant* is a set of runs that differ only in ``train.seed`` (and ``name``): its label
lists the config keys whose values differ across all the runs of the report, e.g.
``head=gumbel, lr=0.05`` (a ``section.name`` key is shown as its section, another key as
its last part where that is unambiguous, and paths without the directory they all share).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from softmaxlab import runs
from softmaxlab.errors import UserError

#: Config keys that do not define a variant: runs that differ only in these are seeds of one variant.
NOT_VARIANT_KEYS = ("name", "train.seed", "report.figures")
#: How deep below the report directory runs are looked for (a sweep may group them in folders).
SEARCH_DEPTH = 3


@dataclass
class RunRecord:
    """One run directory as read from disk; missing or unreadable files leave their part empty.

    ``problems`` lists one line per file that could not be read.
    """

    path: Path
    config: dict[str, Any]
    summary: dict[str, Any]
    history: list[dict[str, Any]]
    problems: list[str] = field(default_factory=list)
    variant: str = ""

    @property
    def status(self) -> str:
        """``finished``, ``diverged`` (from ``summary.json``) or ``unfinished`` (no summary yet)."""
        return str(self.summary.get("status", "unfinished"))

    @property
    def name(self) -> str:
        """The config's ``name``, else the directory's name."""
        return str(self.summary.get("name") or self.config.get("name") or self.path.name)

    @property
    def seed(self) -> Any:
        """``train.seed`` of the config (None when unknown)."""
        return self.config.get("train", {}).get("seed", self.summary.get("env", {}).get("seed"))

    @property
    def test(self) -> dict[str, Any]:
        """``summary["test"]``, or {} (a diverged or unfinished run)."""
        test = self.summary.get("test")
        return test if isinstance(test, dict) else {}

    @property
    def command(self) -> str:
        """The command that reproduces the run: ``summary.command`` when recorded, else
        ``softmaxlab run DIR/config.yaml``."""
        recorded = self.summary.get("command")
        if isinstance(recorded, list):
            return " ".join(str(a) for a in recorded)
        if isinstance(recorded, str) and recorded:
            return recorded
        return f"softmaxlab run {self.path.as_posix()}/{runs.CONFIG}"


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


def find_run_dirs(path: str | Path) -> list[Path]:
    """``path`` itself when it is a run directory (it holds ``config.yaml``), else the run
    directories below it (at most :data:`SEARCH_DEPTH` levels), oldest first.

    Runs are ordered by the time their ``config.yaml`` was written, so a demo's or a sweep's
    runs appear in the order they were run.

    Raises:
        UserError: ``path`` does not exist, is a file, or holds no run.
    """
    p = Path(path)
    if not p.exists():
        raise UserError(f"{str(p)!r} does not exist; pass a run directory or a directory of runs")
    if not p.is_dir():
        raise UserError(f"{str(p)!r} is a file; pass a run directory or a directory of runs")
    if (p / runs.CONFIG).is_file():
        return [p]
    found: list[Path] = []
    for depth in range(1, SEARCH_DEPTH + 1):
        for cfg in p.glob("/".join(["*"] * depth + [runs.CONFIG])):
            run = cfg.parent
            hidden = any(part.startswith(".") for part in run.relative_to(p).parts)
            if not hidden and not any(f in run.parents for f in found):  # not a run inside a run
                found.append(run)
    if not found:
        raise UserError(
            f"{str(p)!r} holds no runs (no {runs.CONFIG} in it or below); pass a run directory or a directory of runs"
        )
    return sorted(found, key=lambda r: ((r / runs.CONFIG).stat().st_mtime, r.as_posix()))


def _read(path: Path, parse: Any, problems: list[str], default: Any) -> Any:
    if not path.is_file():
        return default
    try:
        value = parse(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:
        problems.append(f"{path.name} could not be read ({type(exc).__name__})")
        return default
    if not isinstance(value, type(default)):
        problems.append(f"{path.name} does not hold a {type(default).__name__}")
        return default
    return value


def load_run(path: str | Path) -> RunRecord:
    """Read one run directory; never raises for missing or corrupt files (see ``problems``)."""
    p = Path(path)
    problems: list[str] = []
    config = _read(p / runs.CONFIG, yaml.safe_load, problems, {})
    summary = _read(p / runs.SUMMARY, json.loads, problems, {})

    def jsonl(text: str) -> list[Any]:
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    history = [r for r in _read(p / runs.METRICS, jsonl, problems, []) if isinstance(r, dict)]
    return RunRecord(p, config, summary, history, problems)


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config -> {dotted key: value}.

    >>> flatten({"head": {"name": "gumbel", "tau": 1.0}, "name": None})
    {'head.name': 'gumbel', 'head.tau': 1.0, 'name': None}
    """
    out: dict[str, Any] = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


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


_ABSENT = object()


def finite(value: Any) -> float | None:
    """``value`` as a float when it is a finite number, else None (missing keys, nulls, NaN, text).

    >>> finite(2), finite(None), finite(float("nan")), finite(True)
    (2.0, None, None, None)
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def varying_keys(records: list[RunRecord]) -> list[str]:
    """Dotted config keys whose values differ across ``records`` (seed and name left out), in config order."""
    flat = [flatten(r.config) for r in records]
    keys = list(dict.fromkeys(k for f in flat for k in f))
    out = []
    for k in keys:
        if k in NOT_VARIANT_KEYS:
            continue
        values = {json.dumps(f.get(k, _ABSENT), default=repr, sort_keys=True) for f in flat}
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

        return [", ".join(f"{names[k]}={format_value(value(k, f.get(k)))}" for k in shown) for f in flats]

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
