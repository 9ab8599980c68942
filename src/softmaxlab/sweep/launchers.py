"""Where the runs of a sweep train, behind one interface, and the one loop that schedules them.

* :class:`InlineLauncher`: one run at a time in this process (``--workers 1``);
* :class:`ProcessLauncher`: up to N runs in spawned local processes, each with its share of
  the cores as torch threads;
* :class:`SubmititLauncher`: each run a job of the submitit package (Slurm on clusters),
  its job id recorded in ``jobs.json`` so that a rerun does not submit it twice.

:func:`schedule` keeps at most ``workers`` runs in flight on a launcher and records each
result as it ends; interrupted (Ctrl-C, SIGTERM), it stops the runs in flight, which a rerun
resumes from their checkpoints.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from softmaxlab.config import Config
from softmaxlab.data import ImageData, load_data, loading_key
from softmaxlab.errors import DivergedError, UserError
from softmaxlab.experiment import run_experiment
from softmaxlab.sweep.directory import RUNS_DIR, read_jobs, write_jobs
from softmaxlab.sweep.plan import SweepRun
from softmaxlab.sweep.spec import SweepSpec

#: (status, one-line error or None) of a run that ended.
Outcome = tuple[str, str | None]


class LaunchError(Exception):
    """A run that could not be started; the others go on (recorded as ``failed`` with this text)."""


#: The dataset of the last run this process trained, by its :func:`~softmaxlab.data.loading_key`:
#: the runs of a sweep mostly share one, so a worker loads and decodes it once, not once per
#: run. One entry, so that a sweep over datasets holds one of them in memory at a time (a grid
#: whose fastest-changing key is a data option that changes the images loads it for every run).
_DATA: dict[str, ImageData] = {}


def shared_data(cfg: Config) -> ImageData:
    """The dataset of ``cfg.data``, loaded once per process for all the runs that share it.

    Training never changes an :class:`ImageData` (the demo's runs share one the same way);
    a reused one comes without its loading notes (a cache filled, its size), which the run
    that loaded it has reported.
    """
    key = loading_key(cfg.data)
    if key in _DATA:
        return replace(_DATA[key], notes=[])
    _DATA.clear()  # before loading: the old dataset and the new one are never both held
    _DATA[key] = data = load_data(cfg.data)
    return data


def grouped_by_data(todo: list[SweepRun]) -> list[SweepRun]:
    """``todo`` with the runs that load the same images next to each other (in the order of
    each dataset's first run, the runs of one in their own order), so that a worker's
    :func:`shared_data` loads each dataset once rather than once per change of dataset."""
    keys = [loading_key(run.config.data) for run in todo]
    group: dict[str, int] = {}
    for key in keys:
        group.setdefault(key, len(group))
    return [todo[i] for i in sorted(range(len(todo)), key=lambda i: group[keys[i]])]  # stable


def forget_data() -> None:
    """Drop the dataset :func:`shared_data` holds (the runs this process trains have ended)."""
    _DATA.clear()


def train_run(config: dict[str, Any], run_dir: str) -> Outcome:
    """Train one run (continuing it when interrupted): its report included; (status, error).

    Runs in a worker process or job: every exception is caught and returned as text, so one
    failed run never stops the others. The dataset comes from :func:`shared_data`.
    """
    try:
        cfg = Config.model_validate(config)
        run_experiment(cfg, run_dir, resume=True, data=shared_data(cfg))
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


#: prctl(2)'s option that names the signal the kernel sends a process when its parent dies.
_PR_SET_PDEATHSIG = 1


def _init_worker(threads: int, parent_pid: int) -> None:
    """A worker process's setup: its share of the cores, and its end with the sweep's."""
    torch.set_num_threads(threads)
    die_with_parent(parent_pid)


def die_with_parent(parent_pid: int, *, pdeathsig: bool = True, interval: float = 1.0) -> None:
    """End this process when its parent ``parent_pid`` (the sweep) dies, SIGKILL included,
    which runs no cleanup: an orphaned worker would train on for minutes beside a rerun.

    On Linux the kernel sends SIGKILL at once (``prctl(PR_SET_PDEATHSIG)``, through ctypes).
    It fires when the parent *thread* that spawned the process exits; ProcessPoolExecutor
    spawns from the thread that calls ``submit`` (from its manager thread only to replace
    workers with ``max_tasks_per_child``, unused here), which is the thread that runs
    :func:`schedule` and so outlives the pool. A parent that died before the call is caught
    by comparing ``os.getppid()`` with ``parent_pid``. The portable fallback (macOS, a
    sandbox that refuses prctl) runs everywhere: a daemon thread polls ``os.getppid()`` every
    ``interval`` seconds and exits when it changes (the orphan was adopted).
    """
    if pdeathsig and sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # no libc or no prctl: the poll remains
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent_pid:  # gone already: no signal will come
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent_pid, interval), name="die-with-parent", daemon=True).start()


def _watch_parent(parent_pid: int, interval: float) -> None:
    while os.getppid() == parent_pid:
        time.sleep(interval)
    os._exit(1)  # no cleanup: the run resumes from its last checkpoint when the sweep is rerun


class Launcher:
    """Starts runs and tells when they end. :meth:`wait` blocks until at least one job of
    ``jobs`` is done (or a polling interval passed) and returns the done ones."""

    def submit(self, run: SweepRun, run_dir: Path) -> Any:
        """Start ``run`` in ``run_dir``; a job handle (LaunchError: it could not start)."""
        raise NotImplementedError

    def wait(self, jobs: list[Any]) -> list[Any]:
        raise NotImplementedError

    def result(self, job: Any) -> Outcome:
        """How a done job ended."""
        raise NotImplementedError

    def stop(self, jobs: list[Any]) -> None:
        """Interrupted: stop the jobs in flight now."""

    def close(self) -> None:
        """Release what the launcher holds (after the last job, or after :meth:`stop`)."""


@dataclass(eq=False)
class _InlineJob:
    run: SweepRun
    run_dir: Path
    outcome: Outcome | None = None


class InlineLauncher(Launcher):
    """One run at a time, trained here, in this process, when it is waited for."""

    def submit(self, run: SweepRun, run_dir: Path) -> _InlineJob:
        return _InlineJob(run, run_dir)

    def wait(self, jobs: list[_InlineJob]) -> list[_InlineJob]:
        job = jobs[0]
        job.outcome = train_run(job.run.config.to_dict(), str(job.run_dir))
        return [job]

    def result(self, job: _InlineJob) -> Outcome:
        return job.outcome


class ProcessLauncher(Launcher):
    """Spawned local processes (no fork of a process that holds torch threads), each with
    ``max(1, cores // workers)`` torch threads, each ending when this process dies
    (:func:`die_with_parent`; submit from one thread that lives as long as the launcher)."""

    def __init__(self, workers: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.pool = ProcessPoolExecutor(
            workers, mp_context=context, initializer=_init_worker, initargs=(worker_threads(workers), os.getpid())
        )

    def submit(self, run: SweepRun, run_dir: Path) -> Future:
        try:
            return self.pool.submit(train_run, run.config.to_dict(), str(run_dir))
        except BrokenProcessPool as exc:  # a worker died abruptly: the pool takes no more runs
            raise LaunchError(f"not started: the worker pool broke ({exc}); rerun the command") from None

    def wait(self, jobs: list[Future]) -> list[Future]:
        done, _ = wait(jobs, return_when=FIRST_COMPLETED)
        return list(done)

    def result(self, job: Future) -> Outcome:
        try:
            return job.result()
        except Exception as exc:  # the worker process died (killed, out of memory)
            return "failed", f"worker process died: {type(exc).__name__}: {exc}"

    def stop(self, jobs: list[Future]) -> None:
        # ``_processes`` is private; Python 3.14 has ``terminate_workers()`` for it.
        for process in list((getattr(self.pool, "_processes", None) or {}).values()):
            process.terminate()
        self.pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        self.pool.shutdown(wait=True)


def submitit_executor(folder: Path, spec: SweepSpec, cluster: str | None, name: str) -> Any:
    """A submitit ``AutoExecutor`` writing its logs under ``folder`` with the
    ``sweep.submitit`` parameters; a missing package or a bad parameter is a UserError."""
    try:
        import submitit  # an optional dependency: pip install 'softmaxlab[submitit]'
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


def check_submitit(spec: SweepSpec, cluster: str | None, name: str) -> None:
    """Bad launcher settings are refused before anything is written (submitit makes its
    log folder as soon as an executor exists, so the check uses a throwaway one)."""
    with tempfile.TemporaryDirectory() as tmp:
        executor = submitit_executor(Path(tmp), spec, cluster, name)
    if cluster is None and executor.cluster == "local":
        warnings.warn(
            "no Slurm found (srun is not on PATH): the jobs run on this machine; pass --cluster local to say so",
            stacklevel=4,
        )


class SubmititLauncher(Launcher):
    """Each run a submitit job; job ids go to ``jobs.json`` so that a rerun does not submit a
    run that a job still trains. Polls every ``poll_seconds`` (15 s on Slurm, 0.5 s otherwise)."""

    def __init__(self, executor: Any, out: Path, poll_seconds: float | None = None) -> None:
        self.executor, self.out = executor, out
        self.poll = poll_seconds if poll_seconds is not None else (15.0 if executor.cluster == "slurm" else 0.5)
        self.jobs = read_jobs(out)[1]
        self.submitted = 0

    def submit(self, run: SweepRun, run_dir: Path) -> Any:
        try:
            job = self.executor.submit(train_run, run.config.to_dict(), str(run_dir))
        except Exception as exc:  # sbatch refused: a bad partition, a job limit, a busy scheduler
            line = " ".join(str(exc).split())[:300] or type(exc).__name__
            if self.submitted == 0:  # the first one: most likely the settings, so say so and stop
                raise UserError(f"submitting run {run.name!r} failed: {line}; check sweep.submitit") from None
            raise LaunchError(f"submission failed: {line}") from None
        self.submitted += 1
        self.jobs[run.name] = str(job.job_id)
        write_jobs(self.out, self.executor.cluster, self.jobs)
        return job

    def wait(self, jobs: list[Any]) -> list[Any]:
        done = [job for job in jobs if job.done()]
        if not done:
            time.sleep(self.poll)
        return done

    def result(self, job: Any) -> Outcome:
        try:
            return job.result()
        except Exception as exc:  # the job itself failed: killed, timed out, out of memory
            text = " ".join(str(exc).split())[:300]
            return "failed", f"job {job.job_id} failed: {type(exc).__name__}: {text}"

    def stop(self, jobs: list[Any]) -> None:
        for job in jobs:
            with contextlib.suppress(Exception):  # best effort while stopping
                job.cancel(check=False)


def schedule(
    todo: list[SweepRun],
    workers: int,
    launcher: Launcher,
    out: Path,
    record: Callable[[str, str, str | None], None],
    update: Callable[[int], None],
) -> None:
    """Train ``todo`` on ``launcher``, at most ``workers`` at a time, in order; ``record(name,
    status, error)`` as each ends, ``update(running)`` whenever the count in flight may have
    changed. Interrupted, the runs in flight are stopped (a rerun resumes them)."""
    pending, running = list(todo), {}
    try:
        while pending or running:
            while pending and len(running) < workers:
                run = pending.pop(0)
                try:
                    running[launcher.submit(run, out / RUNS_DIR / run.name)] = run.name
                except LaunchError as exc:
                    record(run.name, "failed", str(exc))
            update(len(running))
            if running:
                for job in launcher.wait(list(running)):
                    record(running.pop(job), *launcher.result(job))
    except BaseException:
        launcher.stop(list(running))
        raise
    finally:
        launcher.close()
        forget_data()  # a dataset this process loaded for its runs (the sweep's process lives on)


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
