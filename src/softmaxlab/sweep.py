"""Studies over several runs: grid expansion, parallel and resumable execution, aggregation.

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

The runs are the Cartesian product of the variants (one empty variant when there are none)
and the grid, minus the excluded combinations; each gets a directory ``runs/<name>`` named
after its overrides (``head-gumbel_tau-0.5_seed-0``). Variants are for options that only
make sense together (a head and its own settings), which a grid would have to exclude.

``aggregate`` groups result rows by the keys that define a variant (everything but the
seed) and reports mean, sample standard deviation and count of each metric, so a table
never shows one lucky seed as if it were the answer.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import hashlib
import io
import itertools
import json
import math
import os
import re
import shutil
import signal
import statistics
import threading
import warnings
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from softmaxlab.config import Config, read_yaml, validate_config
from softmaxlab.errors import UserError
from softmaxlab.runs import CONFIG, SUMMARY, atomic_write_text, is_finished


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """(mean, sample standard deviation (n - 1 in the denominator; 0 for one value), count).

    >>> mean_std([0.5, 0.7, 0.9])
    (0.7, 0.2, 3)
    """
    vals = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return math.nan, math.nan, 0
    std = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return round(statistics.fmean(vals), 12), round(std, 12), len(vals)


def group_key(row: dict[str, Any], keys: Sequence[str]) -> str:
    """The values of ``keys`` in ``row`` as one hashable text; values may be lists
    (``model.softmax_blocks: [2]``), so it is their JSON."""
    return json.dumps([row[k] for k in keys], sort_keys=True, default=str)


def aggregate(
    rows: Sequence[dict[str, Any]],
    group_by: Sequence[str],
    metrics: dict[str, Callable[[dict[str, Any]], float | None]],
) -> list[dict[str, Any]]:
    """One row per distinct ``group_by`` combination, in first-seen order.

    Each row holds the group keys and, for every metric name, ``<name>_mean``,
    ``<name>_std`` and ``<name>_n`` over the rows of that group; ``metrics`` maps a name to
    a function that extracts the value from a row.
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(group_key(row, group_by), []).append(row)
    out = []
    for members in groups.values():
        agg: dict[str, Any] = {k: members[0][k] for k in group_by}
        for name, get in metrics.items():
            m, s, n = mean_std([v for v in (get(r) for r in members) if v is not None])
            agg[f"{name}_mean"], agg[f"{name}_std"], agg[f"{name}_n"] = m, s, n
        out.append(agg)
    return out


# ---------------------------------------------------------------------------------------
# Sweeps: a base experiment and a grid of dotted keys -> lists of values.

#: Files of a sweep directory (the runs are in ``RUNS_DIR``, one directory each).
SWEEP_FILE = "sweep.yaml"
RESULTS_FILE = "results.csv"
AGGREGATE_FILE = "aggregate.csv"
RUNS_DIR = "runs"
#: The sweep directory's record of submitted jobs: {run name: job id}.
JOBS_FILE = "jobs.json"
#: Where runs train: local processes, or submitit jobs (Slurm on clusters).
LAUNCHERS = ("local", "submitit")
#: The grid key whose values are seeds of one variant (the means of aggregate.csv are over it).
SEED_KEY = "train.seed"
#: Run directory names longer than this are shortened (and made unique by a hash).
MAX_NAME = 100
#: What a run row's ``status`` says: trained to its end, non-finite loss, an error, not
#: trained because its overrides fail validation, not trained yet (dry run).
STATUSES = ("finished", "diverged", "failed", "invalid", "pending")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class SweepSpec(BaseModel):
    """The ``sweep:`` section of a sweep config.

    ``grid`` maps dotted config keys to the list of values each takes; the runs are the
    Cartesian product of the lists (in key order, the last key varying fastest).
    ``exclude`` lists partial combinations ({key: value or [values]}); a run whose
    overrides match every key of one entry is left out. ``variants`` lists sets of
    overrides ({key: value}) that are each crossed with the grid. ``submitit`` holds the
    parameters of the submitit executor used by ``--launcher submitit`` (for Slurm, e.g.
    ``slurm_partition``, ``timeout_min``, ``gpus_per_node``, ``cpus_per_task``); they say
    where runs train, not what they compute, so changing them never invalidates a sweep.
    """

    model_config = ConfigDict(extra="forbid")

    grid: dict[str, list[Any]] = Field(default_factory=dict)
    exclude: list[dict[str, Any]] = Field(default_factory=list)
    variants: list[dict[str, Any]] = Field(default_factory=list)
    submitit: dict[str, Any] = Field(default_factory=dict)

    def override_keys(self) -> list[str]:
        """Every key a run may override: the variants' keys (first seen first), then the grid's."""
        return list(dict.fromkeys([k for v in self.variants for k in v] + list(self.grid)))


@dataclass(frozen=True)
class SweepRun:
    """One combination of the grid: its directory name, overrides and validated config.

    ``config`` is None when the overrides fail validation; ``error`` then says why.
    """

    name: str
    overrides: dict[str, Any]
    config: Config | None
    error: str | None = None


@dataclass
class SweepResult:
    """What :func:`run_sweep` did: the sweep directory, one row per run (as in results.csv),
    the aggregate rows and the report (None when it could not be written)."""

    out_dir: Path
    rows: list[dict[str, Any]]
    aggregate: list[dict[str, Any]]
    report: Path | None = None

    def count(self, status: str) -> int:
        """Number of runs with ``status``."""
        return sum(r["status"] == status for r in self.rows)


def load_sweep(path: str | Path) -> tuple[Config, SweepSpec]:
    """The base experiment (a normal, validated :class:`Config`) and the ``sweep:`` section
    of the YAML file at ``path``; bad keys and values are one-line UserErrors."""
    raw = read_yaml(path)
    section = raw.pop("sweep", None)
    if not isinstance(section, dict):
        raise UserError(f"{str(path)!r} has no 'sweep:' section; add sweep.grid, e.g. grid: {{train.seed: [0, 1, 2]}}")
    base = validate_config(raw, f"{path} (base experiment)")
    try:
        spec = SweepSpec.model_validate(section)
    except ValidationError as err:
        e = err.errors()[0]
        where = ".".join(str(p) for p in ("sweep", *e["loc"]))
        raise UserError(f"invalid {where!r} in {path}: {e['msg']}; see the Sweeps section of the README") from None
    check_spec(spec, str(path))
    return base, spec


def check_spec(spec: SweepSpec, source: str = "the sweep") -> None:
    """Grid and variant keys must be config leaves (not ``name``); grid keys take non-empty
    lists of distinct values; a key is either in the grid or in the variants; variants are
    distinct; exclude entries may only name grid or variant keys."""
    from softmaxlab.config import _closest, _valid_keys

    leaves = {k for k in _valid_keys(Config) if not any(v.startswith(k + ".") for v in _valid_keys(Config))}
    if not spec.grid and not spec.variants:
        raise UserError(f"sweep.grid in {source} is empty; give at least one key with a list of values")
    seen_variants: set[str] = set()
    for i, variant in enumerate(spec.variants):
        if not variant:
            raise UserError(f"sweep.variants[{i}] in {source} is empty; give it at least one key: value")
        for key in variant:
            if key == "name" or key not in leaves:
                why = "each run is named after its overrides" if key == "name" else f"unknown config key{_closest(key)}"
                raise UserError(f"sweep.variants[{i}] in {source}: {key!r}: {why}")
            if key in spec.grid:
                raise UserError(
                    f"sweep.variants[{i}] in {source} sets {key!r}, which sweep.grid also varies; "
                    "set each key in one of them"
                )
        text = json.dumps(variant, sort_keys=True)
        if text in seen_variants:
            raise UserError(f"sweep.variants[{i}] in {source} repeats an earlier variant; list each once")
        seen_variants.add(text)
    for key, values in spec.grid.items():
        if key == "name":
            raise UserError(f"sweep.grid in {source} may not vary 'name': each run is named after its overrides")
        if key not in leaves:
            raise UserError(f"sweep.grid in {source}: unknown config key {key!r}{_closest(key)}")
        if not values:
            raise UserError(f"sweep.grid.{key} in {source} is an empty list; give at least one value")
        if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
            raise UserError(f"sweep.grid.{key} in {source} lists a value twice; list each value once")
    for entry in spec.exclude:
        unknown = [k for k in entry if k not in spec.override_keys()]
        if unknown or not entry:
            raise UserError(
                f"sweep.exclude in {source}: {unknown[0] if unknown else '{}'!r} is not a sweep.grid or "
                "sweep.variants key; an exclude entry maps those keys to the value (or list of values) to leave out"
            )


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
    name = _UNSAFE.sub("-", "_".join(parts)).strip(".") or "run"
    return name


def _digest(overrides: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(overrides, sort_keys=True, default=str).encode()).hexdigest()[:8]


def _excluded(overrides: dict[str, Any], exclude: Sequence[dict[str, Any]]) -> bool:
    def matches(key: str, wanted: Any) -> bool:
        if key not in overrides:  # a variant that does not set the key
            return False
        options = wanted if isinstance(wanted, list) and not isinstance(overrides[key], list) else [wanted]
        return any(overrides[key] == w for w in options)

    return any(all(matches(k, w) for k, w in entry.items()) for entry in exclude)


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    *sections, leaf = key.split(".")
    node = raw
    for s in sections:
        node = node.setdefault(s, {})
    node[leaf] = copy.deepcopy(value)


def expand_grid(base: Config, spec: SweepSpec) -> list[SweepRun]:
    """Every run of the sweep, in grid order, without the excluded combinations.

    Each run's config is ``base`` with its overrides and ``name`` set to the run's
    directory name, validated from what the base sets plus the overrides, so defaults that
    depend on another key follow the run's value (a run that changes ``model.name`` gets that
    model's default widths unless the base or the run sets ``model.widths``). Names are unique:
    names that would collide (or exceed :data:`MAX_NAME` characters) get a short hash of their
    overrides appended.
    A combination that fails validation (an option its head or dataset would ignore, for
    example ``head.tau`` with ``head.name: softmax``) is kept with ``config=None`` and the
    error, so that it shows in the dry run and in results.csv as ``invalid``; exclude such
    combinations in ``sweep.exclude`` to leave them out.
    """
    keys = list(spec.grid)
    labels = _key_labels(spec.override_keys())
    grid = [dict(zip(keys, values, strict=True)) for values in itertools.product(*spec.grid.values())]
    # Overrides in the order of spec.override_keys(), so a name does not depend on how a variant is written.
    order = spec.override_keys()
    merged = [{**variant, **g} for variant in (spec.variants or [{}]) for g in grid]
    combos = [{k: m[k] for k in order if k in m} for m in merged]
    combos = [c for c in combos if not _excluded(c, spec.exclude)]
    names = [run_name(c, labels) for c in combos]
    counts = Counter(names)
    runs_: list[SweepRun] = []
    for combo, name in zip(combos, names, strict=True):
        if counts[name] > 1 or len(name) > MAX_NAME:
            name = f"{name[: MAX_NAME - 9]}-{_digest(combo)}"
        # What the base config set, not its resolved defaults: validated again with the run's
        # overrides, a default that depends on another key (model.widths on model.name) follows it.
        raw = base.model_dump(mode="json", exclude_unset=True)
        for key, value in combo.items():
            _set_dotted(raw, key, value)
        raw["name"] = name
        try:
            runs_.append(SweepRun(name, combo, validate_config(raw, f"sweep run {name}")))
        except UserError as exc:
            runs_.append(SweepRun(name, combo, None, str(exc)))
    return runs_


def default_sweep_dir(config_path: str | Path, base: Config, root: str | Path = "runs") -> Path:
    """``runs/<base name>``, else ``runs/<config file stem>``."""
    return Path(root) / (base.name or Path(config_path).stem)


def _sweep_record(base: Config, spec: SweepSpec) -> dict[str, Any]:
    sweep = spec.model_dump(mode="json", exclude={"submitit"})
    if not sweep["variants"]:  # records of sweeps without variants stay as they were
        del sweep["variants"]
    return {"base": base.to_dict(), "sweep": sweep}


def prepare_sweep_dir(
    out_dir: Path, base: Config, spec: SweepSpec, overwrite: bool = False, names: Collection[str] | None = None
) -> None:
    """Create the sweep directory and write ``sweep.yaml`` (the resolved base config and
    the grid). A directory holding another sweep is refused unless ``overwrite``, which
    removes that sweep's runs and tables first, with one exception: a sweep that has grown
    (same base config, and every run already in the directory is one of ``names``, the runs
    of the new grid, e.g. after adding a seed or a variant) keeps its runs, since a run's
    name fixes its overrides and so its config."""
    if replaces_sweep(out_dir, base, spec, overwrite, names):
        for folder in (RUNS_DIR, "submitit"):
            shutil.rmtree(out_dir / folder, ignore_errors=True)
        for name in (RESULTS_FILE, AGGREGATE_FILE, JOBS_FILE):
            (out_dir / name).unlink(missing_ok=True)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(
            f"cannot create sweep directory {str(out_dir)!r}: {exc.strerror}; choose another --out"
        ) from None
    atomic_write_text(out_dir / SWEEP_FILE, yaml.safe_dump(_sweep_record(base, spec), sort_keys=False))


def replaces_sweep(
    out_dir: Path, base: Config, spec: SweepSpec, overwrite: bool = False, names: Collection[str] | None = None
) -> bool:
    """Whether :func:`prepare_sweep_dir` would remove the runs in ``out_dir`` (another sweep,
    with ``overwrite``); a UserError where it would refuse. Reads only: the dry run asks it too."""
    record = _sweep_record(base, spec)
    path = out_dir / SWEEP_FILE
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"sweep output {str(out_dir)!r} is a file, not a directory; choose another --out")
    if path.is_file():
        saved = yaml.safe_load(path.read_text(encoding="utf-8"))
        return saved != record and not _grown(out_dir, saved, record, names, overwrite)
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise UserError(f"{str(out_dir)!r} is not empty and holds no sweep; choose another --out or pass --overwrite")
    return False


def _grown(out_dir: Path, saved: Any, record: dict[str, Any], names: Collection[str] | None, overwrite: bool) -> bool:
    """Whether the sweep in ``out_dir`` (``saved``, not ``record``) has only grown: same base
    config and each of its runs one of ``names``. Otherwise a UserError unless ``overwrite``."""
    same_base = (saved or {}).get("base") == record["base"]
    runs_dir = out_dir / RUNS_DIR
    existing = sorted(p.name for p in runs_dir.iterdir() if p.is_dir()) if runs_dir.is_dir() else []
    dropped = [n for n in existing if names is None or n not in names]
    if same_base and names is not None and not dropped:
        return True
    if not overwrite:
        what = "sweep grid" if same_base else "base config"
        gone = f" (its run {dropped[0]!r} is not in this grid)" if same_base and names is not None else ""
        raise UserError(
            f"{str(out_dir)!r} holds a sweep with another {what}{gone}; pass --overwrite to replace its runs "
            "or choose another --out"
        )
    return False


def run_state(out_dir: Path, run: SweepRun) -> str:
    """``invalid``, ``finished`` / ``diverged`` (it has a summary), ``unfinished`` (started,
    resumable) or ``pending`` (not started)."""
    if run.config is None:
        return "invalid"
    run_dir = out_dir / RUNS_DIR / run.name
    if is_finished(run_dir):
        return str(_read_summary(run_dir).get("status", "finished"))
    return "unfinished" if (run_dir / CONFIG).is_file() else "pending"


def _read_summary(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / SUMMARY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


class SweepProgress:
    """Silent sweep progress: the hooks :func:`run_sweep` calls. Subclass to show something."""

    def start(self, total: int, done: int) -> None:
        """The sweep begins: ``total`` runs, ``done`` of them already finished (skipped)."""

    def update(self, done: int, running: int, failed: int) -> None:
        """Counts changed: runs done (any status), running now, failed so far."""

    def run_end(self, name: str, status: str, error: str | None) -> None:
        """A run ended with ``status`` (``error``: one line, for failed runs)."""

    def stop(self) -> None:
        """The sweep ended."""


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _train_run(config: dict[str, Any], run_dir: str) -> tuple[str, str | None]:
    """Train one run (continuing it when interrupted); (status, one-line error or None).

    Runs in a worker process: every exception is caught and returned as text, so one
    failed run never stops the others.
    """
    from softmaxlab.errors import DivergedError
    from softmaxlab.train import fit

    try:
        fit(Config.model_validate(config), run_dir, resume=True)
    except DivergedError as exc:
        return "diverged", str(exc)
    except Exception as exc:  # one failed run must not stop the sweep
        text = " ".join(str(exc).split()) or type(exc).__name__
        return "failed", f"{type(exc).__name__}: {text}" if not isinstance(exc, UserError) else text
    return "finished", None


def worker_threads(workers: int, cores: int | None = None) -> int:
    """Torch threads per worker: the cores divided between the workers, at least one."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // workers)


def check_sweep(
    config_path: str | Path,
    out_dir: str | Path | None = None,
    *,
    workers: int = 1,
    launcher: str = "local",
    cluster: str | None = None,
) -> tuple[Config, SweepSpec, Path]:
    """The sweep's base config, grid and directory, after the checks of the options, the
    sweep config and the submitit settings that :func:`run_sweep` makes before it writes
    anything (``--dry-run`` makes them too; whether the directory holds another sweep is
    :func:`replaces_sweep`'s question, runs still in an earlier command's jobs
    :func:`runs_in_flight`'s).

    Raises:
        UserError: what the sweep command would refuse.
    """
    if workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    if launcher not in LAUNCHERS:
        raise UserError(f"unknown launcher {launcher!r}; choose one of: {', '.join(LAUNCHERS)}")
    base, spec = load_sweep(config_path)
    out = Path(out_dir) if out_dir is not None else default_sweep_dir(config_path, base)
    if launcher == "submitit":
        _check_submitit(spec, cluster, base.name or out.name)
    return base, spec, out


def run_sweep(
    config_path: str | Path,
    out_dir: str | Path | None = None,
    *,
    workers: int = 1,
    overwrite: bool = False,
    progress: SweepProgress | None = None,
    launcher: str = "local",
    cluster: str | None = None,
) -> SweepResult:
    """Train every run of the sweep config at ``config_path`` and write the sweep directory.

    ``workers`` runs train at a time. ``launcher="local"``: each in its own (spawned)
    process with ``max(1, cores // workers)`` torch threads. ``launcher="submitit"``: each
    as a job of the submitit package (``pip install 'softmaxlab[submitit]'``) on
    ``cluster`` (``slurm``, ``local``, ``debug``; None: Slurm where ``srun`` is on PATH, else
    local) with the ``sweep.submitit`` parameters; job logs go to ``<sweep>/submitit/``.
    Finished and diverged runs already in the directory are skipped, interrupted ones
    continue from their last checkpoint, missing ones start; a failed or diverged run is
    recorded and the others go on. At the end:
    ``results.csv`` (one row per run), ``aggregate.csv`` (mean, sample std and count over
    ``train.seed`` of every variant) and the report of all runs.

    Raises:
        UserError: a bad sweep config, ``workers`` < 1, or a directory that holds another sweep.
    """
    base, spec, out = check_sweep(config_path, out_dir, workers=workers, launcher=launcher, cluster=cluster)
    plan = expand_grid(base, spec)
    executor = None
    # Before anything is removed or trained (--overwrite included, any launcher): a run that a
    # job of an earlier command still trains must not get a second writer.
    _check_no_job_in_flight(out)
    prepare_sweep_dir(out, base, spec, overwrite, {r.name for r in plan})
    if launcher == "submitit":
        executor = _submitit_executor(out / "submitit", spec, cluster, base.name or out.name)
    progress = progress or SweepProgress()
    outcome: dict[str, tuple[str, str | None]] = {}
    for run in plan:
        state = run_state(out, run)
        if state in ("invalid", "finished", "diverged"):
            outcome[run.name] = (state, run.error)
    todo = [r for r in plan if r.name not in outcome]
    failed = 0

    def record(name: str, status: str, error: str | None) -> None:
        nonlocal failed
        outcome[name] = (status, error)
        failed += status == "failed"
        progress.run_end(name, status, error)
        write_results(out, plan, outcome, spec)

    progress.start(len(plan), len(outcome))
    try:
        if executor is not None:
            _run_submitit(
                out, todo, workers, executor, record, lambda running: progress.update(len(outcome), running, failed)
            )
        elif workers == 1:
            with sigterm_interrupts():
                for run in todo:
                    progress.update(len(outcome), 1, failed)
                    record(run.name, *_train_run(run.config.to_dict(), str(out / RUNS_DIR / run.name)))
        else:
            with sigterm_interrupts():
                _run_parallel(
                    out, todo, workers, outcome, record, lambda running: progress.update(len(outcome), running, failed)
                )
        progress.update(len(outcome), 0, failed)
    finally:
        progress.stop()
    rows, agg = write_results(out, plan, outcome, spec)
    report = _write_report(out, base)
    return SweepResult(out, rows, agg, report)


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM (a scheduler's or ``kill``'s polite stop) raises KeyboardInterrupt inside, as Ctrl-C
    does, so that the local runs in flight are stopped with the sweep rather than left training
    as orphans; outside the main thread (where signals cannot be handled) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _run_parallel(
    out: Path,
    todo: list[SweepRun],
    workers: int,
    outcome: dict[str, tuple[str, str | None]],
    record: Callable[[str, str, str | None], None],
    update: Callable[[int], None],
) -> None:
    """At most ``workers`` runs in flight in spawned processes; results recorded as they end."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    context = multiprocessing.get_context("spawn")  # no fork of a process that holds torch threads
    pending = list(todo)
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_init_worker, initargs=(worker_threads(workers),)
    ) as pool:
        running: dict[Any, str] = {}
        try:
            while pending or running:
                while pending and len(running) < workers:
                    run = pending.pop(0)
                    try:
                        future = pool.submit(_train_run, run.config.to_dict(), str(out / RUNS_DIR / run.name))
                    except BrokenProcessPool as exc:  # a worker died abruptly: the pool takes no more runs
                        record(run.name, "failed", f"not started: the worker pool broke ({exc}); rerun the command")
                        continue
                    running[future] = run.name
                update(len(running))
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    name = running.pop(future)
                    try:
                        status, error = future.result()
                    except Exception as exc:  # the worker process died (killed, out of memory)
                        status, error = "failed", f"worker process died: {type(exc).__name__}: {exc}"
                    record(name, status, error)
        except BaseException:
            # Interrupted (Ctrl-C, SIGTERM): stop the runs in flight now (a rerun resumes them from
            # their checkpoints) instead of waiting for them. ``_processes`` is private; Python 3.14
            # has ``terminate_workers()`` for it.
            for process in list((getattr(pool, "_processes", None) or {}).values()):
                process.terminate()
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def _submitit_executor(folder: Path, spec: SweepSpec, cluster: str | None, name: str) -> Any:
    """A submitit ``AutoExecutor`` writing its logs under ``folder`` with the
    ``sweep.submitit`` parameters; a missing package or a bad parameter is a UserError."""
    try:
        import submitit
    except ImportError:
        raise UserError("--launcher submitit needs the submitit package: pip install 'softmaxlab[submitit]'") from None
    try:
        executor = submitit.AutoExecutor(folder=folder / "%j", cluster=cluster)
        executor.update_parameters(**{"name": name, **spec.submitit})
    except (ValueError, TypeError, NameError, RuntimeError, AssertionError) as exc:  # submitit asserts types
        line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"submitit rejected the launcher settings ({line}); check sweep.submitit and --cluster"
        ) from None
    return executor


def _check_submitit(spec: SweepSpec, cluster: str | None, name: str) -> None:
    """Bad launcher settings are refused before anything is written (submitit makes its
    log folder as soon as an executor exists, so the check uses a throwaway one)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        executor = _submitit_executor(Path(tmp), spec, cluster, name)
    if cluster is None and executor.cluster == "local":
        warnings.warn(
            "no Slurm found (srun is not on PATH): the jobs run on this machine; pass --cluster local to say so",
            stacklevel=4,
        )


def _read_jobs(out: Path) -> tuple[str | None, dict[str, str]]:
    """(cluster, {run name: job id}) of the jobs an earlier command submitted."""
    try:
        record = json.loads((out / JOBS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, {}
    if not isinstance(record, dict) or not isinstance(record.get("jobs"), dict):
        return None, {}
    return record.get("cluster"), {str(k): str(v) for k, v in record["jobs"].items()}


#: Slurm job states after which the job no longer runs (sacct's names; anything else,
#: UNKNOWN included, counts as possibly running).
SLURM_ENDED = frozenset(
    {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE"}
)


def _slurm_states(folder: Path, job_ids: list[str]) -> dict[str, str]:
    """The Slurm state of each job (one sacct query for all of them, through submitit)."""
    import submitit

    jobs = [submitit.SlurmJob(folder, job_id) for job_id in job_ids]
    return {job.job_id: str(job.state).split()[0].upper() if job.state else "UNKNOWN" for job in jobs}


def _pid_alive(pid: str) -> bool:
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists but belongs to someone else
        return True
    return True


def runs_in_flight(out: Path) -> dict[str, str]:
    """``{run name: "job <id> (<why>)"}`` for each run of the sweep directory ``out`` that is not
    finished and is in a job of an earlier sweep command that may still run. Slurm jobs count
    as running unless their state is a known end (:data:`SLURM_ENDED`); local jobs while their
    process lives."""
    cluster, jobs = _read_jobs(out)
    open_jobs = {name: job for name, job in jobs.items() if not is_finished(out / RUNS_DIR / name)}
    if not open_jobs:
        return {}
    if cluster == "slurm":
        try:
            states = _slurm_states(out / "submitit", list(open_jobs.values()))
        except ImportError:
            states = {job: "UNKNOWN (submitit is not installed)" for job in open_jobs.values()}
        running = {name: job for name, job in open_jobs.items() if states.get(job, "UNKNOWN") not in SLURM_ENDED}
        return {name: f"job {job} ({states.get(job, 'UNKNOWN')})" for name, job in running.items()}
    if cluster == "local":
        return {name: f"job {job} (its process is alive)" for name, job in open_jobs.items() if _pid_alive(job)}
    return {}


def _check_no_job_in_flight(out: Path) -> None:
    """Refuse (UserError) while a run that is not finished is in a job of an earlier sweep
    command that may still run (:func:`runs_in_flight`): two jobs would write one run directory."""
    running = runs_in_flight(out)
    if running:
        name = next(iter(running))
        raise UserError(
            f"run {name!r} is still in {running[name]} submitted by an earlier sweep command "
            f"({len(running)} such run(s)); wait for it to end or cancel it (scancel), then run the same command again"
        )


def _run_submitit(
    out: Path,
    todo: list[SweepRun],
    workers: int,
    executor: Any,
    record: Callable[[str, str, str | None], None],
    update: Callable[[int], None],
    poll_seconds: float | None = None,
) -> None:
    """At most ``workers`` submitit jobs in flight; results recorded as they end. Job ids
    go to ``jobs.json`` so that a rerun does not submit a run that a job still trains."""
    import time

    poll = poll_seconds if poll_seconds is not None else (15.0 if executor.cluster == "slurm" else 0.5)
    pending, running = list(todo), {}
    _, jobs = _read_jobs(out)
    submitted = 0
    try:
        while pending or running:
            while pending and len(running) < workers:
                run = pending.pop(0)
                try:
                    job = executor.submit(_train_run, run.config.to_dict(), str(out / RUNS_DIR / run.name))
                except Exception as exc:  # sbatch refused: a bad partition, a job limit, a busy scheduler
                    line = " ".join(str(exc).split())[:300] or type(exc).__name__
                    if submitted == 0 and not running:
                        raise UserError(f"submitting run {run.name!r} failed: {line}; check sweep.submitit") from None
                    record(run.name, "failed", f"submission failed: {line}")
                    continue
                submitted += 1
                running[job] = run.name
                jobs[run.name] = str(job.job_id)
                record_text = json.dumps({"cluster": executor.cluster, "jobs": jobs}, indent=1) + "\n"
                atomic_write_text(out / JOBS_FILE, record_text)
            update(len(running))
            finished = [job for job in running if job.done()]
            if not finished:
                time.sleep(poll)
            for job in finished:
                name = running.pop(job)
                try:
                    status, error = job.result()
                except Exception as exc:  # the job itself failed: killed, timed out, out of memory
                    text = " ".join(str(exc).split())[:300]
                    status, error = "failed", f"job {job.job_id} failed: {type(exc).__name__}: {text}"
                record(name, status, error)
    except BaseException:
        # Interrupted (Ctrl-C): cancel the jobs in flight; a rerun resumes their runs.
        for job in running:
            with contextlib.suppress(Exception):  # best effort while stopping
                job.cancel(check=False)
        raise


def _summary_metrics(summary: dict[str, Any]) -> dict[str, Any]:
    """Every scalar number of a run's summary, by dotted key (``test.accuracy``, ``timing.mean_epoch_seconds``)."""
    out: dict[str, Any] = {}
    for section in ("test", "val", "timing"):
        for key, value in (summary.get(section) or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[f"{section}.{key}"] = value
    for key in ("temperature", "epochs"):
        if isinstance(summary.get(key), (int, float)) and not isinstance(summary.get(key), bool):
            out[key] = summary[key]
    return out


def _csv_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return ""
    if isinstance(value, (list, dict, bool)) or value is None:
        return "" if value is None else json.dumps(value)
    return value


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(row.get(k)) for k in columns})
    atomic_write_text(path, buffer.getvalue())


def write_results(
    out: Path, plan: list[SweepRun], outcome: dict[str, tuple[str, str | None]], spec: SweepSpec
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Write ``results.csv`` (one row per run: name, overrides, status, error, every summary
    metric; ``pending`` for runs not trained yet) and ``aggregate.csv`` (per combination of
    the grid keys but ``train.seed``: the number of runs and, for each metric, mean, sample
    standard deviation and count over the finished runs). Returns both tables' rows."""
    rows = []
    for run in plan:
        status, error = outcome.get(run.name, ("pending", None))
        row: dict[str, Any] = {"run": run.name, **run.overrides, "status": status, "error": error or ""}
        if status in ("finished", "diverged"):
            row.update(_summary_metrics(_read_summary(out / RUNS_DIR / run.name)))
        rows.append(row)
    keys = spec.override_keys()
    # A variant that does not set a key has the base config's value there: an empty cell.
    rows = [{**{k: r.get(k) for k in ("run", *keys)}, **r} for r in rows]
    _write_csv(out / RESULTS_FILE, rows)
    metric_keys = list(dict.fromkeys(k for r in rows for k in r if k not in {"run", "status", "error", *keys}))
    group_by = [k for k in keys if k != SEED_KEY]
    # Every remaining combination gets a row; only finished runs enter the means.
    agg = aggregate(
        [{**r, "_": 0} for r in rows],
        group_by or ["_"],
        {k: (lambda r, k=k: r.get(k) if r["status"] == "finished" else None) for k in metric_keys},
    )
    counts = Counter(group_key(r, group_by) for r in rows)
    finished = Counter(group_key(r, group_by) for r in rows if r["status"] == "finished")
    table = []
    for a in agg:
        key = group_key(a, group_by)
        head = {k: a[k] for k in group_by}
        table.append(
            {
                **head,
                "runs": counts[key],
                "finished": finished[key],
                **{k: v for k, v in a.items() if k not in group_by and k != "_"},
            }
        )
    _write_csv(out / AGGREGATE_FILE, table)
    return rows, table


def _write_report(out: Path, base: Config) -> Path | None:
    """The report of every run of the sweep, with its comparison figures even when the runs'
    own reports have none (``report.figures: false`` saves a second per run, not per sweep);
    a report that cannot be written is a warning."""
    from softmaxlab.train import write_run_report

    return write_run_report(out, base, what="sweep", figures=True)
