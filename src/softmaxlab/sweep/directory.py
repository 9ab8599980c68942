"""The sweep directory: its files, whether a command may write it, and runs still in jobs.

A sweep directory holds ``sweep.yaml`` (the resolved base config and the grid), ``runs/``
(one run directory each), ``results.csv``, ``aggregate.csv``, the report, and with
submitit ``submitit/`` (job logs) and ``jobs.json`` (the jobs an earlier command submitted).
Every command that writes it holds its write lock (:func:`softmaxlab.runs.lock_dir`, the file
``.softmaxlab.lock`` in it) for as long as it writes, so a second command on the same
``--out`` is refused at once; the lock file and the leftovers of killed atomic writes are
not content (a directory holding only them is empty).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Collection
from pathlib import Path
from typing import Any

import yaml

from softmaxlab import runs
from softmaxlab.config import Config, validate_config
from softmaxlab.errors import UserError
from softmaxlab.runs import atomic_write_text, is_finished
from softmaxlab.sweep.spec import SweepSpec
from softmaxlab.untrusted import YamlError, load_yaml, read_text, regular_file

SWEEP_FILE = "sweep.yaml"
RESULTS_FILE = "results.csv"
AGGREGATE_FILE = "aggregate.csv"
COMPARISONS_FILE = "comparisons.csv"
RUNS_DIR = "runs"
#: The sweep directory's record of submitted jobs: {"cluster": ..., "jobs": {run name: job id}}.
JOBS_FILE = "jobs.json"
#: Slurm job states after which the job no longer runs (sacct's names; anything else,
#: UNKNOWN included, counts as possibly running).
SLURM_ENDED = frozenset(
    {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE"}
)
#: The hint of a ``sweep.yaml`` that cannot be read as the record a sweep writes.
_RECORD_HINT = "pass --overwrite to replace that sweep or choose another --out"
#: A run name and a job id as jobs.json may hold them (Slurm array and heterogeneous job ids
#: included, submitit's DEBUG_<n> too): nothing that reads as a path outside the sweep.
_RUN_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$")
_JOB_ID = re.compile(r"^[A-Za-z0-9_.+-]{1,64}$")


def default_sweep_dir(config_path: str | Path, base: Config, root: str | Path = "runs") -> Path:
    """``runs/<base name>``, else ``runs/<config file stem>``."""
    return Path(root) / (base.name or Path(config_path).stem)


def sweep_record(base: Config, spec: SweepSpec) -> dict[str, Any]:
    """What ``sweep.yaml`` holds: the resolved base config and the grid (not the launcher settings)."""
    sweep = spec.model_dump(mode="json", exclude={"submitit"})
    for key in ("variants", "compare_to", "compare_metrics"):  # records of sweeps without them stay as they were
        if not sweep[key]:
            del sweep[key]
    return {"base": base.to_dict(), "sweep": sweep}


def _saved_record(path: Path, overwrite: bool) -> Any:
    """``sweep.yaml`` with its base config as this version resolves it (earlier versions wrote
    flat sections that hold every component's options); None for one that is not a record a
    sweep writes when ``overwrite`` (the caller replaces it).

    The file may have been edited or damaged since, so it is read as untrusted: safe YAML
    (no ``!!python`` tags, no repeated keys, no alias bombs), a mapping of two mappings.
    A directory or FIFO in its place is refused even with ``overwrite``, which replaces only
    what a sweep writes (and reading a FIFO would block forever).
    """
    regular_file(path, "sweep record", "remove it or choose another --out")
    try:
        saved = load_yaml(read_text(path, "sweep record", _RECORD_HINT), f"sweep record {str(path)!r}")
    except YamlError as exc:  # its own hint says to fix the syntax; here the file is ours to replace
        if overwrite:
            return None
        raise UserError(f"{str(exc).rsplit('; ', 1)[0]}; {_RECORD_HINT}") from None
    except UserError:
        if overwrite:
            return None
        raise
    if not (isinstance(saved, dict) and isinstance(saved.get("base"), dict) and isinstance(saved.get("sweep"), dict)):
        if overwrite:
            return None
        found = "a mapping" if isinstance(saved, dict) else f"a {type(saved).__name__}"
        raise UserError(
            f"sweep record {str(path)!r} holds {found}, not the mappings 'base' and 'sweep' a sweep writes; "
            f"{_RECORD_HINT}"
        )
    # One that no longer validates is compared as written (and so as another base config).
    with contextlib.suppress(UserError, TypeError, ValueError):
        saved["base"] = validate_config(saved["base"], str(path), legacy=True).to_dict()
    return saved


def _holds_files(out_dir: Path) -> bool:
    """Whether ``out_dir`` holds anything but the write lock and atomic writes' leftovers."""
    return any(p.name != runs.LOCK and not runs.ATOMIC_TMP.match(p.name) for p in out_dir.iterdir())


def prepare_sweep_dir(
    out_dir: Path, base: Config, spec: SweepSpec, overwrite: bool = False, names: Collection[str] | None = None
) -> None:
    """Create the sweep directory and write ``sweep.yaml``. A directory holding another sweep
    is refused unless ``overwrite``, which removes that sweep's runs and tables first, with one
    exception: a sweep that has grown (same base config, and every run already in the
    directory is one of ``names``, the runs of the new grid, e.g. after adding a seed or a
    variant) keeps its runs, since a run's name fixes its overrides and so its config.

    Holds the directory's write lock (:func:`softmaxlab.runs.lock_dir`; re-entrant, so
    :func:`~softmaxlab.sweep.runner.run_sweep` holds it around this too); under it the
    leftovers of atomic writes that a killed sweep left are removed (:func:`softmaxlab.runs.remove_stale_tmp`).
    """
    with runs.lock_dir(out_dir):
        replaced = replaces_sweep(out_dir, base, spec, overwrite, names)
        runs.remove_stale_tmp(out_dir)
        if replaced:
            for folder in (RUNS_DIR, "submitit"):
                shutil.rmtree(out_dir / folder, ignore_errors=True)
            for name in (RESULTS_FILE, AGGREGATE_FILE, COMPARISONS_FILE, JOBS_FILE):
                (out_dir / name).unlink(missing_ok=True)
        atomic_write_text(out_dir / SWEEP_FILE, yaml.safe_dump(sweep_record(base, spec), sort_keys=False))


def replaces_sweep(
    out_dir: Path, base: Config, spec: SweepSpec, overwrite: bool = False, names: Collection[str] | None = None
) -> bool:
    """Whether :func:`prepare_sweep_dir` would remove the runs in ``out_dir`` (another sweep,
    with ``overwrite``); a UserError where it would refuse. Reads only: the dry run asks it too."""
    record = sweep_record(base, spec)
    path = out_dir / SWEEP_FILE
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"sweep output {str(out_dir)!r} is a file, not a directory; choose another --out")
    if path.exists() or path.is_symlink():
        saved = _saved_record(path, overwrite)
        if saved is None:  # not a record a sweep writes, and --overwrite: replaced
            return True
        return saved != record and not _grown(out_dir, saved, record, names, overwrite)
    if out_dir.is_dir() and _holds_files(out_dir) and not overwrite:
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


# --------------------------------------------------------------------------- jobs of earlier commands


def read_jobs(out: Path) -> tuple[str | None, dict[str, str]]:
    """(cluster, {run name: job id}) of the jobs an earlier command submitted; (None, {}) when
    there is no ``jobs.json``.

    Raises:
        UserError: a ``jobs.json`` that is not the record a sweep writes (edited, damaged, a
            directory or FIFO): which jobs still run is then unknown, so it is neither guessed
            nor overwritten.
    """
    path = out / JOBS_FILE
    if not path.exists() and not path.is_symlink():
        return None, {}
    hint = "remove it once no job of an earlier sweep command runs, or choose another --out"
    text = read_text(path, "job record", hint)
    try:
        record = json.loads(text)
    except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
        record = None
    jobs = record.get("jobs") if isinstance(record, dict) else None
    if not (
        isinstance(jobs, dict)
        and isinstance(record.get("cluster"), str)
        and all(isinstance(v, str) and _RUN_NAME.match(k) and _JOB_ID.match(v) for k, v in jobs.items())
    ):
        raise UserError(f"job record {str(path)!r} is not the record of submitted jobs a sweep writes; {hint}")
    return record["cluster"], dict(jobs)


def write_jobs(out: Path, cluster: str, jobs: dict[str, str]) -> None:
    """Record the submitted jobs (see :func:`read_jobs`), holding the sweep directory's lock."""
    with runs.lock_dir(out):
        atomic_write_text(out / JOBS_FILE, json.dumps({"cluster": cluster, "jobs": jobs}, indent=1) + "\n")


def _slurm_states(folder: Path, job_ids: list[str]) -> dict[str, str]:
    """The Slurm state of each job (one sacct query for all of them, through submitit)."""
    import submitit  # an optional dependency: only sweeps that used Slurm get here

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
    cluster, jobs = read_jobs(out)
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


def check_no_job_in_flight(out: Path) -> None:
    """Refuse (UserError) while a run that is not finished is in a job of an earlier sweep
    command that may still run (:func:`runs_in_flight`): two jobs would write one run directory."""
    running = runs_in_flight(out)
    if running:
        name = next(iter(running))
        raise UserError(
            f"run {name!r} is still in {running[name]} submitted by an earlier sweep command "
            f"({len(running)} such run(s)); wait for it to end or cancel it (scancel), then run the same command again"
        )
