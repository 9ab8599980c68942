"""``comparisons.csv``: every variant of a sweep against a reference variant, paired by seed.

A variant is a combination of the sweep's overrides but ``train.seed``; two runs pair when
they share the seed (the same initialisation and data order, so a paired test removes that
part of the spread). For each (variant, metric) the row has the mean difference variant -
reference, its 95 % t interval, the paired t-test's p-value and its Holm correction over the
variants, and for accuracy the exact McNemar test on per-image correctness from the runs'
``predictions.npz`` (:func:`softmaxlab.stats.compare_variants`, with scipy's tests).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from softmaxlab import runs
from softmaxlab.config import Config, validate_config
from softmaxlab.dotted import flatten, select_reference, set_dotted
from softmaxlab.errors import UserError
from softmaxlab.metrics import HIGHER_IS_BETTER, NO_DIRECTION
from softmaxlab.stats import COMPARISON_COLUMNS, RunOutcome, compare_variants
from softmaxlab.sweep.directory import COMPARISONS_FILE, RUNS_DIR
from softmaxlab.sweep.plan import SweepRun
from softmaxlab.sweep.spec import SEED_KEY, SweepSpec

#: The metrics compared when ``sweep.compare_metrics`` is not given.
DEFAULT_METRICS = ("accuracy", "f1_macro", "nll", "ece")


def variant_keys(spec: SweepSpec) -> list[str]:
    """The override keys that tell variants apart: all but the seed."""
    return [k for k in spec.override_keys() if k != SEED_KEY]


def variant_label(overrides: dict[str, Any], keys: list[str]) -> str:
    """``key=value, ...`` of a run's variant overrides (JSON values), ``base`` when it has none.

    >>> variant_label({"head.name": "gumbel", "head.tau": 0.5, "train.seed": 1}, ["head.name", "head.tau"])
    'head.name=gumbel, head.tau=0.5'
    """
    parts = [f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in overrides.items() if k in keys]
    return ", ".join(parts) or "base"


def compared_metrics(spec: SweepSpec, source: str = "the sweep") -> list[str]:
    """``sweep.compare_metrics`` (default :data:`DEFAULT_METRICS`); a name that is no scalar
    test metric is a UserError listing them."""
    known = [*HIGHER_IS_BETTER, *sorted(NO_DIRECTION)]
    for name in spec.compare_metrics:
        if name not in known:
            raise UserError(
                f"sweep.compare_metrics in {source}: {name!r} is not a test metric of the runs; "
                f"choose from: {', '.join(known)}"
            )
    return list(spec.compare_metrics) or list(DEFAULT_METRICS)


def reference_label(plan: list[SweepRun], spec: SweepSpec, base: Config, source: str = "the sweep") -> str:
    """The label of the reference variant that ``sweep.compare_to`` names
    (:func:`softmaxlab.dotted.select_reference`: the variant that is the base config with
    ``compare_to`` applied, else the one variant holding every value of it), else the first
    run's. A ``compare_to`` that names no variant, or several, is a UserError listing them."""
    keys = variant_keys(spec)
    firsts: dict[str, SweepRun] = {}
    for r in plan:
        firsts.setdefault(variant_label(r.overrides, keys), r)
    labels = list(firsts)
    if not spec.compare_to:
        return labels[0]
    unknown = [k for k in spec.compare_to if k not in keys]
    if unknown:
        raise UserError(
            f"sweep.compare_to in {source}: {unknown[0]!r} is not a key that tells the variants apart; "
            f"use {', '.join(keys) or 'a sweep.variants or sweep.grid key'}"
        )
    valid = [label for label, r in firsts.items() if r.config is not None]
    flats = [flatten(firsts[label].config.to_dict()) for label in valid]
    found = [valid[i] for i in select_reference(flats, _applied(base, spec.compare_to), keys, spec.compare_to)]
    if len(found) != 1:
        problem = "names no variant of the sweep" if not found else f"matches {len(found)} variants"
        shown = "; ".join(labels[:6]) + (" ..." if len(labels) > 6 else "")
        raise UserError(f"sweep.compare_to in {source} {problem}; name exactly one of: {shown}")
    return found[0]


def _applied(base: Config, overrides: dict[str, Any]) -> dict[str, Any] | None:
    """The flattened config of ``base`` with ``overrides`` set, validated (its components'
    defaults filled in); None when they do not validate together."""
    raw = base.to_dict()
    for key, value in overrides.items():
        set_dotted(raw, key, value)
    try:
        return flatten(validate_config(raw, "sweep.compare_to").to_dict())
    except UserError:
        return None


def check_comparison(plan: list[SweepRun], spec: SweepSpec, base: Config, source: str = "the sweep") -> None:
    """Refuse, before anything trains, a ``compare_to`` or ``compare_metrics`` that the
    comparison at the end would not accept (:func:`reference_label`, :func:`compared_metrics`)."""
    compared_metrics(spec, source)
    reference_label(plan, spec, base, source)


def _outcome(run_dir: Path, metrics: list[str], notes: list[str]) -> RunOutcome | None:
    summary = runs.read_summary(run_dir) or {}
    if summary.get("status") != "finished":
        return None
    test = summary.get("test") or {}
    values = {m: test.get(m) if isinstance(test.get(m), (int, float)) else None for m in metrics}
    try:
        kept = runs.read_predictions(run_dir)
    except runs.UnreadableFileError as exc:
        notes.append(f"{run_dir.name}: {exc.problem}")
        kept = None
    if kept is None:
        return RunOutcome(values)
    return RunOutcome(values, kept["predicted"], kept["targets"])


def comparison_rows(
    out: Path, plan: list[SweepRun], outcome: dict[str, tuple[str, str | None]], spec: SweepSpec, base: Config
) -> tuple[list[dict[str, Any]], list[str]]:
    """The rows of ``comparisons.csv`` and the notes on what could not be compared, from the
    finished runs on disk (``outcome``: the status of each run by name)."""
    keys, metrics = variant_keys(spec), compared_metrics(spec)
    reference = reference_label(plan, spec, base)
    notes: list[str] = []
    variants: dict[str, dict[Any, RunOutcome]] = {}
    for run in plan:
        label = variant_label(run.overrides, keys)
        by_seed = variants.setdefault(label, {})
        if outcome.get(run.name, ("pending",))[0] != "finished":
            continue
        found = _outcome(out / RUNS_DIR / run.name, metrics, notes)
        seed = run.config.train.seed if run.config is not None else run.overrides.get(SEED_KEY)
        if found is not None:
            by_seed[seed] = found
    done = [o for by_seed in variants.values() for o in by_seed.values()]
    missing = [m for m in metrics if not any(o.metrics.get(m) is not None for o in done)]
    if missing and done:
        notes.append(f"no run recorded {', '.join(missing)} (older runs): those rows are empty")
    rows, more = compare_variants(variants, reference, metrics)
    return rows, [*notes, *more]


def write_comparisons(
    out: Path, plan: list[SweepRun], outcome: dict[str, tuple[str, str | None]], spec: SweepSpec, base: Config
) -> list[str]:
    """Write ``comparisons.csv`` (:func:`comparison_rows`; a header only when there is one
    variant) under the sweep directory's lock; returns the notes."""
    rows, notes = comparison_rows(out, plan, outcome, spec, base)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, COMPARISON_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(row[k]) for k in COMPARISON_COLUMNS})
    with runs.lock_dir(out):
        runs.atomic_write_text(out / COMPARISONS_FILE, buffer.getvalue())
    return notes


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)  # every digit: p-values are compared to scipy's
    return value
