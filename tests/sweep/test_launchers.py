"""Where runs train: local processes, submitit; interrupts (softmaxlab.sweep.launchers)."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from softmaxlab import runs, sweep
from softmaxlab.cli import app
from softmaxlab.errors import UserError

from .conftest import read_csv, write_sweep


def test_two_worker_sweep_killed_midway_then_rerun_finishes_every_run_once(tmp_path):
    # One test for the parallel path, the kill and the reruns: each fresh process pays
    # seconds of imports, so the workers are started once.
    grid = {"head.name": ["softmax", "log_softmax"], "train.seed": [0, 1]}
    path = write_sweep(tmp_path / "s.yaml", grid, extra=["train.checkpoint_every=2"])
    out, names = tmp_path / "out", sorted(f"head-{h}_seed-{s}" for h in grid["head.name"] for s in (0, 1))
    cmd = [sys.executable, "-m", "softmaxlab", "sweep", str(path), "--out", str(out), "--workers", "2"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (out / sweep.RESULTS_FILE).exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its workers, at once
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    before = read_csv(out / sweep.RESULTS_FILE)  # written by the parallel path after its first run
    assert sorted(r["run"] for r in before) == names
    assert "finished" in {r["status"] for r in before} and "pending" in {r["status"] for r in before}
    done_before = {p.parent.name: p.stat().st_mtime_ns for p in out.glob("runs/*/summary.json")}
    assert 1 <= len(done_before) < 4
    _wait_until_unlocked(out / "runs")  # the killed workers' runs, before the rerun takes them
    # The same command again (one worker here, warm): finishes the rest, skips the finished.
    result = CliRunner().invoke(app, ["sweep", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = read_csv(out / sweep.RESULTS_FILE)
    assert sorted(r["run"] for r in rows) == names and {r["status"] for r in rows} == {"finished"}
    assert all(0 <= float(r["test.accuracy"]) <= 1 for r in rows)
    assert all((out / "runs" / n / "summary.json").stat().st_mtime_ns == t for n, t in done_before.items())
    assert (out / "report.html").is_file() and (out / sweep.AGGREGATE_FILE).is_file()
    # Another base config for the same directory: exit 2 unless --overwrite.
    changed = write_sweep(tmp_path / "s2.yaml", grid, extra=["train.lr=0.01"])
    refused = CliRunner().invoke(app, ["sweep", str(changed), "--out", str(out)])
    assert refused.exit_code == 2 and "another base config" in refused.output


def _locked(directory):
    """Whether a process holds the write lock of ``directory`` (:func:`softmaxlab.runs.lock_dir`)."""
    try:
        with runs.lock_dir(directory):
            return False
    except UserError:
        return True


def _wait_until_unlocked(runs_dir, timeout=30.0):
    """Wait until no run under ``runs_dir`` is locked by a process of a killed sweep.

    SIGKILL reaches every process of the group at once, but a worker lets go of its run's
    lock (an flock) only when the kernel has torn it down, which can come after the sweep
    process itself was reaped: a rerun that is warm, as one in this process is, would find
    the run still locked and record it as failed ("being written by another softmaxlab
    process"), which is right for a live writer and is what the rerun must not race.
    """
    deadline = time.monotonic() + timeout
    while any(_locked(d) for d in runs_dir.iterdir() if d.is_dir()):
        assert time.monotonic() < deadline, f"a run under {runs_dir} is still locked {timeout:g} s after the kill"
        time.sleep(0.01)


def _workers(pid):
    """Pids of the spawned worker processes whose parent is ``pid`` (from /proc; not the
    resource tracker that multiprocessing starts beside them)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid and b"spawn_main" in cmdline:
            found.append(int(stat.parent.name))
    return found


def _running(pid):
    """Whether ``pid`` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")
def test_sigterm_stops_a_local_sweep_and_its_workers(tmp_path):
    # A scheduler's stop (SIGTERM to the sweep process only) must not leave its workers training
    # as orphans, which a rerun would then race; the sweep exits 130 with one line.
    extra = ["train.epochs=2000", "train.checkpoint_every=2"]  # minutes per run: stopped, not finished
    path = write_sweep(tmp_path / "s.yaml", {"train.seed": [0, 1]}, extra=extra)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "softmaxlab", "sweep", str(path), "--out", str(out), "--workers", "2"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while len(list(out.glob(f"runs/*/{runs.CHECKPOINT}"))) < 2 and proc.poll() is None:
            assert time.monotonic() < deadline, "the runs did not start"
            time.sleep(0.02)
        workers = _workers(proc.pid)
        assert len(workers) == 2 and proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        err = proc.stderr.read().decode()
        assert proc.returncode == 130, err[-2000:]
        assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("interrupted: ")
        deadline = time.monotonic() + 30
        while any(_running(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_running(w) for w in workers)
        assert not list(out.glob(f"runs/*/{runs.SUMMARY}"))  # stopped mid-run, resumable from the checkpoints
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")
def test_sigkill_of_a_local_sweep_ends_its_workers_and_its_lock(tmp_path):
    # SIGKILL runs no cleanup in the sweep: its workers must notice their parent is gone
    # themselves, or they train on for minutes beside the rerun.
    # One run, so one worker process is spawned: each costs seconds of imports.
    path = write_sweep(tmp_path / "s.yaml", {"train.seed": [0]}, extra=["train.epochs=2000"])
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "softmaxlab", "sweep", str(path), "--out", str(out), "--workers", "2"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    workers = []
    try:
        deadline = time.monotonic() + 120
        while not (workers := _workers(proc.pid)) or not list(out.glob(f"runs/*/{runs.CONFIG}")):
            assert proc.poll() is None and time.monotonic() < deadline, "the runs did not start"
            time.sleep(0.02)
        # While it runs, a second sweep on its directory is refused at once, naming it.
        refused = CliRunner().invoke(app, ["sweep", str(path), "--out", str(out)])
        assert refused.exit_code == 2 and f"another softmaxlab process (pid {proc.pid})" in refused.stderr
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 10
        while any(_running(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_running(w) for w in workers), "the workers outlived their sweep"
        assert sweep.dry_run(path, out).states == ["unfinished"]
        with runs.lock_dir(out):  # the killed sweep's lock went with it
            pass
    finally:
        for pid in [proc.pid, *workers]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()


class _Exited(Exception):
    pass


def test_a_worker_whose_parent_is_gone_exits(monkeypatch):
    # The portable fallback alone (no prctl), in this process with os._exit caught: a worker
    # whose parent died before its initializer ran exits at once; one adopted later (its
    # parent id changes) exits at the next poll.
    from softmaxlab.sweep import launchers

    def exit_(code):
        raise _Exited(code)

    monkeypatch.setattr(os, "_exit", exit_)
    with pytest.raises(_Exited):
        launchers.die_with_parent(os.getppid() + 1, pdeathsig=False)
    parents = iter([41, 41, 41, 1])
    monkeypatch.setattr(os, "getppid", lambda: next(parents))
    with pytest.raises(_Exited):
        launchers._watch_parent(41, 0.001)
    assert next(parents, None) is None  # it polled until the parent changed, then exited


def test_submitit_local_executor_trains_every_run_as_a_job(tmp_path):
    pytest.importorskip("submitit")
    path = write_sweep(tmp_path / "s.yaml", {"head.name": ["softmax", "log_softmax"]})
    raw = yaml.safe_load(path.read_text())
    raw["sweep"]["submitit"] = {"timeout_min": 10}
    path.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["sweep", str(path), "--out", str(out), "--workers", "2", "--launcher", "submitit", "--cluster", "local"]
    )
    assert result.exit_code == 0, result.output
    rows = read_csv(out / sweep.RESULTS_FILE)
    assert [r["status"] for r in rows] == ["finished", "finished"], rows
    record = json.loads((out / sweep.JOBS_FILE).read_text())
    jobs = record["jobs"]
    assert record["cluster"] == "local" and sorted(jobs) == ["head-log_softmax", "head-softmax"]
    # Each job ran in its own process, whose log submitit kept under <sweep>/submitit/<job id>/.
    for job_id in jobs.values():
        assert list((out / "submitit" / job_id).glob("*_log.out")), job_id
    # Launcher settings say where runs train, not what they compute: changing them keeps the sweep.
    raw["sweep"]["submitit"] = {"timeout_min": 20}
    path.write_text(yaml.safe_dump(raw))
    again = CliRunner().invoke(
        app, ["sweep", str(path), "--out", str(out), "--launcher", "submitit", "--cluster", "local"]
    )
    assert again.exit_code == 0, again.output
    assert json.loads((out / sweep.JOBS_FILE).read_text())["jobs"] == jobs  # nothing submitted again


def test_a_refused_first_submission_is_a_user_error(tmp_path, monkeypatch):
    submitit = pytest.importorskip("submitit")

    def refuse(self, fn, *args, **kwargs):
        raise RuntimeError("sbatch: error: invalid partition specified: gpu")

    monkeypatch.setattr(submitit.AutoExecutor, "submit", refuse)
    path = write_sweep(tmp_path / "s.yaml", {"train.seed": [0, 1]})
    with pytest.raises(UserError, match="submitting run 'seed-0' failed: sbatch: error: invalid partition"):
        sweep.run_sweep(path, tmp_path / "out", launcher="submitit", cluster="local")


def test_submitit_bad_settings_are_user_errors(tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    path = write_sweep(tmp_path / "s.yaml", {"train.seed": [0]})
    raw = yaml.safe_load(path.read_text())
    raw["sweep"]["submitit"] = {"slurm_partiton": "gpu"}
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(UserError, match=r"submitit rejected the launcher settings.*slurm_partiton"):
        sweep.run_sweep(path, tmp_path / "out", launcher="submitit", cluster="local")
    raw["sweep"]["submitit"] = {"timeout_min": "60"}  # submitit checks types with assert
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(UserError, match="submitit rejected the launcher settings"):
        sweep.run_sweep(path, tmp_path / "out", launcher="submitit", cluster="local")
    with pytest.raises(UserError, match="unknown launcher 'ray'"):
        sweep.run_sweep(path, tmp_path / "out", launcher="ray")
    monkeypatch.setitem(sys.modules, "submitit", None)  # as if not installed
    with pytest.raises(UserError, match=r"pip install 'softmaxlab\[submitit\]'"):
        sweep.run_sweep(path, tmp_path / "out", launcher="submitit")
    assert not (tmp_path / "out").exists()


def test_runs_that_share_a_dataset_load_it_once_and_train_as_alone(tmp_path, monkeypatch):
    from softmaxlab import train
    from softmaxlab.config import Config, apply_overrides
    from softmaxlab.experiment import run_experiment
    from softmaxlab.sweep import launchers

    from .conftest import SWEEP_BASE

    loads = []
    real_load = launchers.load_data
    monkeypatch.setattr(launchers, "load_data", lambda cfg: loads.append(cfg.train_size) or real_load(cfg))
    monkeypatch.setattr(train, "load_data", lambda cfg: pytest.fail("a sweep run loaded its own data"))
    real_report = sweep.runner.write_run_report
    monkeypatch.setattr(sweep.runner, "write_run_report", lambda out, figures, what: real_report(out, False, what))
    grid = {"data.train_size": [256, 128], "data.flip": [True, False], "head.name": ["softmax", "log_softmax"]}
    sweep.run_sweep(write_sweep(tmp_path / "s.yaml", grid), tmp_path / "out")
    # Once per set of images (augmentation options do not change what is loaded), not once per run.
    assert loads == [256, 128]
    assert launchers._DATA == {}  # released with the sweep
    monkeypatch.undo()
    # A run on the shared dataset trains exactly as the same run with its own.
    (swept,) = (tmp_path / "out" / sweep.RUNS_DIR).glob("flip-false_train_size-128_head-log_softmax")
    swept = json.loads((swept / runs.SUMMARY).read_text())
    overrides = [*SWEEP_BASE, "data.train_size=128", "data.flip=false", "head.name=log_softmax"]
    alone = run_experiment(Config.model_validate(apply_overrides({}, overrides)), tmp_path / "alone").summary
    assert swept["test"] == alone["test"] and swept["val"] == alone["val"]


def test_a_shared_dataset_comes_without_the_notes_of_its_loading(monkeypatch):
    from softmaxlab.config import Config, apply_overrides
    from softmaxlab.data import load_data
    from softmaxlab.sweep import launchers

    from .conftest import SWEEP_BASE

    monkeypatch.setattr(launchers, "load_data", lambda cfg: replace(load_data(cfg), notes=["cache filled"]))
    cfg = Config.model_validate(apply_overrides({}, SWEEP_BASE))
    try:
        first, second = launchers.shared_data(cfg), launchers.shared_data(cfg)
    finally:
        launchers.forget_data()
    assert first.notes == ["cache filled"] and second.notes == []
    assert second.train.x is first.train.x  # the same tensors, not a second copy
