"""The ``sweep:`` section of a sweep config and its validation.

A sweep config is a normal experiment config (the base) plus a ``sweep:`` section::

    sweep:
      grid:                      # dotted config keys -> the values each takes
        head.name: [softmax, gumbel]
        head.tau: [0.5, 1, 3]
        train.seed: [0, 1, 2]
      exclude:                   # combinations left out: every key of an entry must match
        - {head.name: softmax, head.tau: [0.5, 3]}
      variants:                  # optional: named sets of overrides, each crossed with the grid
        - {head.name: softmax}
        - {head.name: temperature, head.learn_temperature: true}
      compare_to: {head.name: softmax}   # optional: the reference of comparisons.csv
      compare_metrics: [accuracy, f1_macro, nll, ece]   # optional: the metrics compared
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from softmaxlab.config import (
    Config,
    apply_command_line,
    closest_key,
    config_keys,
    parse_override,
    read_yaml,
    validate_config,
)
from softmaxlab.dotted import canonical
from softmaxlab.errors import UserError

#: The grid key whose values are seeds of one variant (the means of aggregate.csv are over it).
SEED_KEY = "train.seed"
#: The most runs one sweep may have (variants x grid, before sweep.exclude): each run is
#: validated, named and listed up front, so a grid of millions would hang the command and
#: fill memory before anything trained.
MAX_RUNS = 10_000


class SweepSpec(BaseModel):
    """The ``sweep:`` section of a sweep config.

    ``grid`` maps dotted config keys to the list of values each takes; the runs are the
    Cartesian product of the lists (in key order, the last key varying fastest).
    ``exclude`` lists partial combinations ({key: value or [values]}); a run whose
    overrides match every key of one entry is left out. ``variants`` lists sets of
    overrides ({key: value}) that are each crossed with the grid. ``compare_to`` names the
    reference variant of ``comparisons.csv`` by some of its overrides (default: the first
    variant or grid combination) and ``compare_metrics`` the test metrics compared (default
    :data:`softmaxlab.sweep.compare.DEFAULT_METRICS`); both say how runs are analysed, not
    what they compute, so changing them keeps the runs. ``submitit`` holds the
    parameters of the submitit executor used by ``--launcher submitit`` (for Slurm, e.g.
    ``slurm_partition``, ``timeout_min``, ``gpus_per_node``, ``cpus_per_task``); they say
    where runs train, not what they compute, so changing them never invalidates a sweep.
    """

    model_config = ConfigDict(extra="forbid")

    grid: dict[str, list[Any]] = Field(default_factory=dict)
    exclude: list[dict[str, Any]] = Field(default_factory=list)
    variants: list[dict[str, Any]] = Field(default_factory=list)
    compare_to: dict[str, Any] = Field(default_factory=dict)
    compare_metrics: list[str] = Field(default_factory=list)
    submitit: dict[str, Any] = Field(default_factory=dict)

    def override_keys(self) -> list[str]:
        """Every key a run may override: the variants' keys (first seen first), then the grid's."""
        return list(dict.fromkeys([k for v in self.variants for k in v] + list(self.grid)))


def load_sweep(
    path: str | Path, overrides: Sequence[str] = (), *, on_note: Callable[[str], None] | None = None
) -> tuple[Config, SweepSpec]:
    """The base experiment (a normal, validated :class:`Config`) and the ``sweep:`` section
    of the YAML file at ``path``; bad keys and values are one-line UserErrors.

    ``overrides`` (``k=v``, the command line's ``--set``) change the base experiment as
    :func:`~softmaxlab.config.load_config` changes a config, before the grid and the variants
    (which still override the base); ``on_note`` gets the line naming the file's options that
    an override's component does not declare and that were dropped
    (:func:`~softmaxlab.config.apply_command_line`).
    """
    raw = read_yaml(path)
    section = raw.pop("sweep", None)
    if not isinstance(section, dict):
        raise UserError(f"{str(path)!r} has no 'sweep:' section; add sweep.grid, e.g. grid: {{train.seed: [0, 1, 2]}}")
    for item in overrides:
        if parse_override(item)[0][0] == "sweep":  # (a malformed item fails here, as in `run`)
            raise UserError(f"--set {item!r}: --set changes the base experiment; edit the sweep: section in {path}")
    dropped = apply_command_line(raw, list(overrides), str(path))
    base = validate_config(raw, f"{path} (base experiment)" + (" / the command line" if overrides else ""))
    try:
        spec = SweepSpec.model_validate(section)
    except ValidationError as err:
        e = err.errors()[0]
        where = ".".join(str(p) for p in ("sweep", *e["loc"]))
        raise UserError(f"invalid {where!r} in {path}: {e['msg']}; see docs/guide/sweeps.md") from None
    check_spec(spec, str(path))
    if dropped is not None and on_note is not None:
        on_note(dropped.note())
    return base, spec


def check_spec(spec: SweepSpec, source: str = "the sweep") -> None:
    """Grid and variant keys must be config leaves (not ``name``); grid keys take non-empty
    lists of distinct values; a key is either in the grid or in the variants; variants are
    distinct; exclude entries may only name grid or variant keys."""
    if not spec.grid and not spec.variants:
        raise UserError(f"sweep.grid in {source} is empty; give at least one key with a list of values")
    leaves = set(config_keys()[1])
    _check_variants(spec, leaves, source)
    _check_grid(spec, leaves, source)
    check_size(spec, source)
    for entry in spec.exclude:
        unknown = [k for k in entry if k not in spec.override_keys()]
        if unknown or not entry:
            raise UserError(
                f"sweep.exclude in {source}: {unknown[0] if unknown else '{}'!r} is not a sweep.grid or "
                "sweep.variants key; an exclude entry maps those keys to the value (or list of values) to leave out"
            )


def count_runs(spec: SweepSpec) -> int:
    """The number of combinations of the sweep (variants x grid values, before
    ``sweep.exclude``), from the list lengths: the product is never built."""
    return max(1, len(spec.variants)) * math.prod(len(values) for values in spec.grid.values())


def check_size(spec: SweepSpec, source: str = "the sweep") -> None:
    """Refuse a sweep of more than :data:`MAX_RUNS` combinations (:func:`count_runs`)."""
    count = count_runs(spec)
    if count > MAX_RUNS:
        where = "the sweep" if source == "the sweep" else f"the sweep in {source}"
        raise UserError(
            f"{where} has {count:,} runs (variants x sweep.grid, before sweep.exclude), more than the "
            f"{MAX_RUNS:,} a sweep may have; shorten the lists in sweep.grid or split it into several sweeps"
        )


def _check_variants(spec: SweepSpec, leaves: set[str], source: str) -> None:
    seen: set[str] = set()
    for i, variant in enumerate(spec.variants):
        if not variant:
            raise UserError(f"sweep.variants[{i}] in {source} is empty; give it at least one key: value")
        for key in variant:
            if key == "name" or key not in leaves:
                why = (
                    "each run is named after its overrides"
                    if key == "name"
                    else f"unknown config key{closest_key(key)}"
                )
                raise UserError(f"sweep.variants[{i}] in {source}: {key!r}: {why}")
            if key in spec.grid:
                raise UserError(
                    f"sweep.variants[{i}] in {source} sets {key!r}, which sweep.grid also varies; "
                    "set each key in one of them"
                )
        text = canonical(variant)
        if text in seen:
            raise UserError(f"sweep.variants[{i}] in {source} repeats an earlier variant; list each once")
        seen.add(text)


def _check_grid(spec: SweepSpec, leaves: set[str], source: str) -> None:
    for key, values in spec.grid.items():
        if key == "name":
            raise UserError(f"sweep.grid in {source} may not vary 'name': each run is named after its overrides")
        if key not in leaves:
            raise UserError(f"sweep.grid in {source}: unknown config key {key!r}{closest_key(key)}")
        if not values:
            raise UserError(f"sweep.grid.{key} in {source} is an empty list; give at least one value")
        repeat = _first_repeat(values)
        if repeat is not None:
            first, again = (json.dumps(v) for v in repeat)
            written = "" if first == again else f" (as {first} and {again})"
            raise UserError(
                f"sweep.grid.{key} in {source} lists the value {first} twice{written}; list each value once"
            )


def _first_repeat(values: list[Any]) -> tuple[Any, Any] | None:
    """The first value of ``values`` that repeats an earlier one (:func:`canonical`), with it."""
    seen: dict[str, int] = {}
    for i, value in enumerate(values):
        first = seen.setdefault(canonical(value), i)
        if first != i:
            return values[first], value
    return None
