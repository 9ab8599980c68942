"""The sweep directory: growing, replacing, runs still in jobs (softmaxlab.sweep.directory)."""

import json
import os

import pytest

from softmaxlab import sweep
from softmaxlab.errors import UserError

from .conftest import read_csv, write_sweep


def test_a_grown_sweep_keeps_its_runs_and_a_shrunk_one_is_refused(tmp_path):
    out = tmp_path / "out"
    sweep.run_sweep(write_sweep(tmp_path / "a.yaml", {"train.seed": [0]}), out)
    first = (out / "runs" / "seed-0" / "summary.json").stat().st_mtime_ns
    # One more seed and a variant: the finished run is kept, not retrained; the new ones train.
    grown = write_sweep(tmp_path / "b.yaml", {"train.seed": [0, 1]}, variants=[{"head.name": "softmax"}])
    plan = sweep.expand_grid(*sweep.load_sweep(grown))
    assert [r.name for r in plan] == ["head-softmax_seed-0", "head-softmax_seed-1"]  # names include variants
    grown = write_sweep(tmp_path / "b.yaml", {"train.seed": [0, 1]})
    sweep.run_sweep(grown, out)
    assert (out / "runs" / "seed-0" / "summary.json").stat().st_mtime_ns == first
    rows = read_csv(out / sweep.RESULTS_FILE)
    assert [(r["run"], r["status"]) for r in rows] == [("seed-0", "finished"), ("seed-1", "finished")]
    # A grid without one of the directory's runs would orphan it: refused, naming the run.
    with pytest.raises(UserError, match=r"another sweep grid \(its run 'seed-0' is not in this grid\)"):
        sweep.run_sweep(write_sweep(tmp_path / "c.yaml", {"train.seed": [1]}), out)
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["seed-0", "seed-1"]


def test_submitit_refuses_a_run_still_in_an_earlier_job(tmp_path):
    pytest.importorskip("submitit")
    path, out = write_sweep(tmp_path / "s.yaml", {"train.seed": [0]}), tmp_path / "out"
    base, spec = sweep.load_sweep(path)
    sweep.prepare_sweep_dir(out, base, spec)
    # An earlier sweep command submitted the run as local job <this process id>, still alive.
    (out / sweep.JOBS_FILE).write_text(json.dumps({"cluster": "local", "jobs": {"seed-0": str(os.getpid())}}))
    for launcher, overwrite in (("submitit", False), ("local", False), ("local", True)):
        with pytest.raises(UserError, match=f"still in job {os.getpid()}.*scancel"):
            sweep.run_sweep(path, out, launcher=launcher, cluster="local", overwrite=overwrite)
    assert not (out / sweep.RUNS_DIR).exists() and (out / sweep.JOBS_FILE).exists()


@pytest.mark.parametrize(
    ("state", "refused"),
    [
        ("RUNNING", True),
        ("PENDING", True),
        ("PREEMPTED", True),
        ("UNKNOWN", True),
        ("REQUEUED", True),
        ("COMPLETED", False),
        ("CANCELLED", False),
        ("TIMEOUT", False),
        ("FAILED", False),
    ],
)
def test_slurm_jobs_count_as_running_unless_their_state_is_an_end(tmp_path, monkeypatch, state, refused):
    out = tmp_path / "out"
    out.mkdir()
    (out / sweep.JOBS_FILE).write_text(json.dumps({"cluster": "slurm", "jobs": {"a": "101", "b": "102"}}))
    (out / sweep.RUNS_DIR / "b").mkdir(parents=True)
    (out / sweep.RUNS_DIR / "b" / "summary.json").write_text("{}")  # finished: its job is not asked about
    asked = []
    monkeypatch.setattr(
        sweep.directory, "_slurm_states", lambda folder, ids: asked.extend(ids) or dict.fromkeys(ids, state)
    )
    if refused:
        with pytest.raises(UserError, match=f"job 101 \\({state}\\)"):
            sweep.check_no_job_in_flight(out)
    else:
        sweep.check_no_job_in_flight(out)
    assert asked == ["101"]
