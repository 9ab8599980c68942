"""``run_sweep``: train every run of a sweep config, resumably, and write its tables and report."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from softmaxlab import runs
from softmaxlab.config import Config
from softmaxlab.errors import UserError
from softmaxlab.experiment import write_run_report
from softmaxlab.sweep.compare import check_comparison, write_comparisons
from softmaxlab.sweep.directory import check_no_job_in_flight, default_sweep_dir, prepare_sweep_dir
from softmaxlab.sweep.launchers import (
    InlineLauncher,
    Launcher,
    ProcessLauncher,
    SubmititLauncher,
    check_submitit,
    grouped_by_data,
    schedule,
    sigterm_interrupts,
    submitit_executor,
)
from softmaxlab.sweep.plan import SweepPlan, SweepRun, expand_grid, plan_sweep, run_state
from softmaxlab.sweep.results import write_results
from softmaxlab.sweep.spec import SweepSpec, load_sweep

#: Where runs train: local processes, or submitit jobs (Slurm on clusters).
LAUNCHERS = ("local", "submitit")
#: What a run row's ``status`` says: trained to its end, non-finite loss, an error, not
#: trained because its overrides fail validation, not trained yet (dry run).
STATUSES = ("finished", "diverged", "failed", "invalid", "pending")


@dataclass
class SweepResult:
    """What :func:`run_sweep` did: the sweep directory, one row per run (as in results.csv),
    the aggregate rows, the report (None when it could not be written) and the notes of
    ``comparisons.csv``."""

    out_dir: Path
    rows: list[dict[str, Any]]
    aggregate: list[dict[str, Any]]
    report: Path | None = None
    #: What comparisons.csv could not compare, one sentence each (a single seed, old runs).
    notes: list[str] = field(default_factory=list)

    def count(self, status: str) -> int:
        """Number of runs with ``status``."""
        return sum(r["status"] == status for r in self.rows)


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


def check_sweep(
    config_path: str | Path,
    out_dir: str | Path | None = None,
    *,
    workers: int = 1,
    launcher: str = "local",
    cluster: str | None = None,
    overrides: Sequence[str] = (),
    on_note: Callable[[str], None] | None = None,
) -> tuple[Config, SweepSpec, Path]:
    """The sweep's base config (with ``overrides``: :func:`~softmaxlab.sweep.spec.load_sweep`),
    grid and directory, after the checks of the options, the sweep config and the submitit
    settings that :func:`run_sweep` makes before it writes anything (the directory's own checks
    are :func:`~softmaxlab.sweep.plan.plan_sweep`'s).

    Raises:
        UserError: what the sweep command would refuse.
    """
    if workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    if launcher not in LAUNCHERS:
        raise UserError(f"unknown launcher {launcher!r}; choose one of: {', '.join(LAUNCHERS)}")
    base, spec = load_sweep(config_path, overrides, on_note=on_note)
    out = Path(out_dir) if out_dir is not None else default_sweep_dir(config_path, base)
    if launcher == "submitit":
        check_submitit(spec, cluster, base.name or out.name)
    return base, spec, out


def dry_run(
    config_path: str | Path,
    out_dir: str | Path | None = None,
    *,
    workers: int = 1,
    overwrite: bool = False,
    launcher: str = "local",
    cluster: str | None = None,
    overrides: Sequence[str] = (),
    on_note: Callable[[str], None] | None = None,
) -> SweepPlan:
    """What :func:`run_sweep` with these arguments would do, without training or writing:
    every run with its state (:func:`~softmaxlab.sweep.plan.plan_sweep`).

    Raises:
        UserError: what the sweep command would refuse.
    """
    base, spec, out = check_sweep(
        config_path, out_dir, workers=workers, launcher=launcher, cluster=cluster, overrides=overrides, on_note=on_note
    )
    plan = plan_sweep(base, spec, out, overwrite)
    check_comparison(plan.runs, spec, base, str(config_path))
    return plan


def _launcher(launcher: str, workers: int, out: Path, spec: SweepSpec, cluster: str | None, name: str) -> Launcher:
    if launcher == "submitit":
        return SubmititLauncher(submitit_executor(out / "submitit", spec, cluster, name), out)
    return InlineLauncher() if workers == 1 else ProcessLauncher(workers)


def run_sweep(
    config_path: str | Path,
    out_dir: str | Path | None = None,
    *,
    workers: int = 1,
    overwrite: bool = False,
    progress: SweepProgress | None = None,
    launcher: str = "local",
    cluster: str | None = None,
    overrides: Sequence[str] = (),
    on_note: Callable[[str], None] | None = None,
) -> SweepResult:
    """Train every run of the sweep config at ``config_path`` and write the sweep directory.

    ``workers`` runs train at a time. ``launcher="local"``: each in its own (spawned)
    process with ``max(1, cores // workers)`` torch threads (in this process when
    ``workers`` is 1). ``launcher="submitit"``: each as a job of the submitit package
    (``pip install 'softmaxlab[submitit]'``) on ``cluster`` (``slurm``, ``local``, ``debug``;
    None: Slurm where ``srun`` is on PATH, else local) with the ``sweep.submitit``
    parameters; job logs go to ``<sweep>/submitit/``. Finished and diverged runs already in
    the directory are skipped, interrupted ones continue from their last checkpoint, missing
    ones start; a failed or diverged run is recorded and the others go on. At the end:
    ``results.csv`` (one row per run), ``aggregate.csv`` (mean, sample std and count over
    ``train.seed`` of every variant), ``comparisons.csv`` (every variant against
    ``sweep.compare_to``, paired by seed: :mod:`softmaxlab.sweep.compare`) and the report of
    all runs.

    ``overrides`` (``k=v``, the command line's ``--set``) change the base experiment before the
    grid and the variants are expanded; ``sweep.yaml`` records the base with them, so the same
    overrides continue the sweep and other ones are another base config. ``on_note`` gets the
    line naming the file's options that an override's component does not declare and that were
    dropped (:func:`~softmaxlab.sweep.spec.load_sweep`).

    The sweep directory's write lock (:func:`softmaxlab.runs.lock_dir`) is held throughout.

    Raises:
        UserError: a bad sweep config, ``workers`` < 1, a directory that holds another sweep
            or that another process is writing.
    """
    base, spec, out = check_sweep(
        config_path, out_dir, workers=workers, launcher=launcher, cluster=cluster, overrides=overrides, on_note=on_note
    )
    plan = expand_grid(base, spec)
    check_comparison(plan, spec, base, str(config_path))  # before anything trains
    # One writer per sweep directory, for the whole sweep: a second sweep command (or a run)
    # on this --out is refused at once instead of interleaving its files with ours.
    with runs.lock_dir(out):
        # Before anything is removed or trained (--overwrite included, any launcher): a run that a
        # job of an earlier command still trains must not get a second writer.
        check_no_job_in_flight(out)
        prepare_sweep_dir(out, base, spec, overwrite, {r.name for r in plan})
        where = _launcher(launcher, workers, out, spec, cluster, base.name or out.name)
        outcome = _train_missing(out, plan, spec, workers, where, progress or SweepProgress())
        rows, agg = write_results(out, plan, outcome, spec)
        notes = write_comparisons(out, plan, outcome, spec, base)
        # The comparison figures even when the runs' own reports have none (report.figures: false
        # saves a second per run, not per sweep); a report that cannot be written is a warning.
        report = write_run_report(out, figures=True, what="sweep")
    return SweepResult(out, rows, agg, report, notes)


def _train_missing(
    out: Path, plan: list[SweepRun], spec: SweepSpec, workers: int, launcher: Launcher, progress: SweepProgress
) -> dict[str, tuple[str, str | None]]:
    """Train the runs of ``plan`` that are not done; {run name: (status, error)} of every run
    with an outcome. results.csv is rewritten as each run ends."""
    outcome: dict[str, tuple[str, str | None]] = {}
    for run in plan:
        state = run_state(out, run)
        if state in ("invalid", "finished", "diverged"):
            outcome[run.name] = (state, run.error)
    todo = grouped_by_data([r for r in plan if r.name not in outcome])
    failed = 0

    def record(name: str, status: str, error: str | None) -> None:
        nonlocal failed
        outcome[name] = (status, error)
        failed += status == "failed"
        progress.run_end(name, status, error)
        write_results(out, plan, outcome, spec)

    def update(running: int) -> None:
        progress.update(len(outcome), running, failed)

    progress.start(len(plan), len(outcome))
    local = not isinstance(launcher, SubmititLauncher)
    try:
        with sigterm_interrupts() if local else contextlib.nullcontext():
            schedule(todo, workers, launcher, out, record, update)
        update(0)
    finally:
        progress.stop()
    return outcome
