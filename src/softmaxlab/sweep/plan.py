"""The plan of a sweep: its runs (grid x variants, less the excluded), their names and states.

The runs are the Cartesian product of the variants (one empty variant when there are none)
and the grid, minus the excluded combinations; each gets a directory ``runs/<name>`` named
after its overrides (``head-gumbel_tau-0.5_seed-0``). Variants are for options that only
make sense together (a head and its own settings), which a grid would have to exclude.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from softmaxlab import runs
from softmaxlab.config import Config, validate_config
from softmaxlab.dotted import flatten, set_dotted
from softmaxlab.errors import UserError
from softmaxlab.sweep.directory import RUNS_DIR, replaces_sweep, runs_in_flight
from softmaxlab.sweep.spec import SweepSpec, check_size

#: Run directory names longer than this are shortened (and made unique by a hash).
MAX_NAME = 100
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class SweepRun:
    """One combination of the grid: its directory name, overrides and validated config.

    ``config`` is None when the overrides fail validation; ``error`` then says why.
    """

    name: str
    overrides: dict[str, Any]
    config: Config | None
    error: str | None = None


def _value_label(value: Any) -> str:
    """A value as it reads in a directory name: ``0.5``, ``3``, ``8-16``, ``true``, ``none``."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value).replace("null", "none")
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "-".join(_value_label(v) for v in value)
    if isinstance(value, dict):
        return "-".join(f"{k}-{_value_label(v)}" for k, v in value.items())
    return str(value)


def _key_labels(keys: Sequence[str]) -> dict[str, str]:
    """Short labels of the grid keys: the last part (``tau``), the section for ``*.name``
    (``head``), the whole dotted key where two keys would share a label."""
    short = {k: (k.split(".")[-2] if k.endswith(".name") and "." in k else k.split(".")[-1]) for k in keys}
    counts = Counter(short.values())
    return {k: (s if counts[s] == 1 else k) for k, s in short.items()}


def run_name(overrides: dict[str, Any], labels: dict[str, str] | None = None) -> str:
    """A readable, filesystem-safe directory name of a run: ``label-value`` per grid key,
    joined by ``_``; characters other than letters, digits, ``.``, ``_``, ``-`` become ``-``.

    >>> run_name({"head.name": "gumbel", "head.tau": 0.5, "train.seed": 0})
    'head-gumbel_tau-0.5_seed-0'
    """
    labels = labels or _key_labels(list(overrides))
    parts = [f"{labels[k]}-{_value_label(v)}" for k, v in overrides.items()]
    return _UNSAFE.sub("-", "_".join(parts)).strip(".") or "run"


def _digest(overrides: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(overrides, sort_keys=True, default=str).encode()).hexdigest()[:8]


def _excluded(overrides: dict[str, Any], exclude: Sequence[dict[str, Any]]) -> bool:
    def matches(key: str, wanted: Any) -> bool:
        if key not in overrides:  # a variant that does not set the key
            return False
        options = wanted if isinstance(wanted, list) and not isinstance(overrides[key], list) else [wanted]
        return any(overrides[key] == w for w in options)

    return any(all(matches(k, w) for k, w in entry.items()) for entry in exclude)


def _combinations(spec: SweepSpec) -> list[dict[str, Any]]:
    """The overrides of every run, in grid order, without the excluded ones; keys in the order
    of ``spec.override_keys()``, so a name does not depend on how a variant is written."""
    keys = list(spec.grid)
    grid = [dict(zip(keys, values, strict=True)) for values in itertools.product(*spec.grid.values())]
    order = spec.override_keys()
    merged = [{**variant, **g} for variant in (spec.variants or [{}]) for g in grid]
    combos = [{k: m[k] for k in order if k in m} for m in merged]
    return [c for c in combos if not _excluded(c, spec.exclude)]


def expand_grid(base: Config, spec: SweepSpec) -> list[SweepRun]:
    """Every run of the sweep, in grid order, without the excluded combinations.

    Each run's config is ``base`` with its overrides and ``name`` set to the run's
    directory name, validated from what the base sets plus the overrides, so defaults that
    depend on another key follow the run's value (a run that changes ``model.name`` gets that
    model's options and default widths unless the base or the run sets ``model.widths``).
    Names are unique: names that would collide (or exceed :data:`MAX_NAME` characters) get a
    short hash of their overrides appended.
    A combination that fails validation (an option its head or dataset does not have, for
    example ``head.tau`` with ``head.name: softmax``) is kept with ``config=None`` and the
    error, so that it shows in the dry run and in results.csv as ``invalid``; exclude such
    combinations in ``sweep.exclude`` to leave them out.

    Raises:
        UserError: more than :data:`~softmaxlab.sweep.spec.MAX_RUNS` combinations, or two runs
            whose configs validate alike (:func:`check_distinct`).
    """
    check_size(spec)  # before the product is built (load_sweep checked it too, with the file's name)
    labels = _key_labels(spec.override_keys())
    combos = _combinations(spec)
    names = [run_name(c, labels) for c in combos]
    counts = Counter(names)
    plan: list[SweepRun] = []
    for combo, name in zip(combos, names, strict=True):
        if counts[name] > 1 or len(name) > MAX_NAME:
            name = f"{name[: MAX_NAME - 9]}-{_digest(combo)}"
        # What the base config set, not its resolved defaults: validated again with the run's
        # overrides, a default that depends on another key (model.widths on model.name) follows it.
        raw = base.model_dump(mode="json", exclude_unset=True)
        for key, value in combo.items():
            set_dotted(raw, key, value)
        raw["name"] = name
        try:
            plan.append(SweepRun(name, combo, validate_config(raw, f"sweep run {name}")))
        except UserError as exc:
            plan.append(SweepRun(name, combo, None, str(exc)))
    check_distinct(plan, spec)
    return plan


def check_distinct(plan: list[SweepRun], spec: SweepSpec) -> None:
    """Refuse two runs whose configs are equal once validated (names aside): values that differ
    as written but not as the config reads them (``train.lr: [0.1, "0.1"]``, or two variants
    that each set what the base has) would train one run twice and count it as n = 2 in
    aggregate.csv. (Equal numbers, ``[1, 1.0, true]``, are refused before, by
    :func:`~softmaxlab.sweep.spec.check_spec`.)"""
    seen: dict[str, SweepRun] = {}
    for run in plan:
        if run.config is None:
            continue
        resolved = {k: v for k, v in run.config.to_dict().items() if k != "name"}
        first = seen.setdefault(json.dumps(resolved, sort_keys=True, default=str), run)
        if first is run:
            continue
        keys = [k for k in spec.override_keys() if _written(first, k) != _written(run, k)]
        key = keys[0] if keys else spec.override_keys()[0]
        value = json.dumps(flatten(first.config.to_dict()).get(key))
        if key in spec.grid:
            raise UserError(
                f"sweep.grid.{key} repeats a value: {_written(first, key)} and {_written(run, key)} are the same "
                f"value once validated ({value}), so two runs would train alike; list each value once"
            )
        raise UserError(
            f"sweep.variants give runs {first.name!r} and {run.name!r} the same config ({key!r} "
            f"{_written(first, key)} and {_written(run, key)} both validate to {value}); drop one of the variants"
        )


def _written(run: SweepRun, key: str) -> str:
    """An override as written in the sweep config (JSON, so ``1``, ``1.0`` and ``true`` differ)."""
    return json.dumps(run.overrides[key]) if key in run.overrides else "(unset)"


def run_state(out_dir: Path, run: SweepRun) -> str:
    """``invalid``, ``finished`` / ``diverged`` (it has a summary), ``unfinished`` (started,
    resumable) or ``pending`` (not started)."""
    if run.config is None:
        return "invalid"
    run_dir = out_dir / RUNS_DIR / run.name
    if runs.is_finished(run_dir):
        try:
            summary = runs.read_summary(run_dir) or {}
        except UserError:
            summary = {}
        return str(summary.get("status", "finished"))
    return "unfinished" if (run_dir / runs.CONFIG).is_file() else "pending"


@dataclass
class SweepPlan:
    """What the sweep command would do (``--dry-run``): each run with its state, and the directory.

    ``states`` gives each run's state: ``invalid: <why>``, ``finished``, ``diverged``,
    ``unfinished``, ``pending``, or ``in job <id> (<why>)`` for a run an earlier command's job
    still trains. ``replaced``: the command replaces another sweep there (``--overwrite``).
    """

    out_dir: Path
    keys: list[str]
    runs: list[SweepRun]
    states: list[str]
    replaced: bool
    in_flight: int

    def summary(self) -> str:
        """One line: how many runs, where, and what stands in the way."""
        note = " (replacing the sweep there: --overwrite)" if self.replaced else ""
        if self.in_flight:
            note += f"; {self.in_flight} in an earlier command's jobs: the sweep command refuses to start till they end"
        return f"{len(self.runs)} runs in {self.out_dir}{note}"


def plan_sweep(base: Config, spec: SweepSpec, out_dir: Path, overwrite: bool = False) -> SweepPlan:
    """The runs of the sweep and the state each has in ``out_dir``, as the sweep command
    would find them; reads only. A UserError where the command would refuse the directory."""
    plan = expand_grid(base, spec)
    replaced = replaces_sweep(out_dir, base, spec, overwrite, {r.name for r in plan})
    in_flight = runs_in_flight(out_dir)
    states = []
    for run in plan:
        state = "pending" if replaced and run.config is not None else run_state(out_dir, run)
        state = f"in {in_flight[run.name]}" if run.name in in_flight else state
        states.append(state + (f": {run.error}" if run.error else ""))
    return SweepPlan(out_dir, spec.override_keys(), plan, states, replaced, len(in_flight))
