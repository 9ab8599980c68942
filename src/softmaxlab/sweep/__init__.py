"""Studies over several runs: a grid of config overrides, trained in parallel and resumably,
with tables of mean and spread over seeds.

* :mod:`~softmaxlab.sweep.spec`: the ``sweep:`` section (grid, exclude, variants, submitit) and its checks;
* :mod:`~softmaxlab.sweep.plan`: the runs (their names, configs and states) and the dry run;
* :mod:`~softmaxlab.sweep.directory`: the sweep directory, and runs still in earlier commands' jobs;
* :mod:`~softmaxlab.sweep.launchers`: where runs train (here, local processes, submitit) and the scheduling loop;
* :mod:`~softmaxlab.sweep.results`: ``results.csv`` and ``aggregate.csv``;
* :mod:`~softmaxlab.sweep.compare`: ``comparisons.csv``, every variant against a reference, paired by seed;
* :mod:`~softmaxlab.sweep.runner`: :func:`run_sweep`, which puts them together.
"""

from softmaxlab.sweep.compare import DEFAULT_METRICS, comparison_rows, write_comparisons
from softmaxlab.sweep.directory import (
    AGGREGATE_FILE,
    COMPARISONS_FILE,
    JOBS_FILE,
    RESULTS_FILE,
    RUNS_DIR,
    SWEEP_FILE,
    check_no_job_in_flight,
    default_sweep_dir,
    prepare_sweep_dir,
    replaces_sweep,
    runs_in_flight,
)
from softmaxlab.sweep.launchers import worker_threads
from softmaxlab.sweep.plan import MAX_NAME, SweepPlan, SweepRun, expand_grid, plan_sweep, run_name, run_state
from softmaxlab.sweep.results import write_results
from softmaxlab.sweep.runner import LAUNCHERS, STATUSES, SweepProgress, SweepResult, check_sweep, dry_run, run_sweep
from softmaxlab.sweep.spec import MAX_RUNS, SEED_KEY, SweepSpec, check_spec, load_sweep

__all__ = [
    "AGGREGATE_FILE",
    "COMPARISONS_FILE",
    "DEFAULT_METRICS",
    "JOBS_FILE",
    "LAUNCHERS",
    "MAX_NAME",
    "MAX_RUNS",
    "RESULTS_FILE",
    "RUNS_DIR",
    "SEED_KEY",
    "STATUSES",
    "SWEEP_FILE",
    "SweepPlan",
    "SweepProgress",
    "SweepResult",
    "SweepRun",
    "SweepSpec",
    "check_no_job_in_flight",
    "check_spec",
    "check_sweep",
    "comparison_rows",
    "default_sweep_dir",
    "dry_run",
    "expand_grid",
    "load_sweep",
    "plan_sweep",
    "prepare_sweep_dir",
    "replaces_sweep",
    "run_name",
    "run_state",
    "run_sweep",
    "runs_in_flight",
    "worker_threads",
    "write_comparisons",
    "write_results",
]
