"""The sweep directory: growing, replacing, runs still in jobs, its write lock, damaged records
(softmaxlab.sweep.directory)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from softmaxlab import runs, sweep
from softmaxlab.cli import app
from softmaxlab.errors import UserError

from .conftest import SWEEP_BASE, read_csv, write_sweep


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


# --------------------------------------------------------------------------- the write lock


def _hold_lock(directory):
    """Another process holding the write lock of ``directory`` until its stdin closes."""
    code = "import sys\nfrom softmaxlab import runs\nwith runs.lock_dir(sys.argv[1]):\n"
    code += "    print('locked', flush=True)\n    sys.stdin.read()\n"
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(directory)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert holder.stdout.readline() == b"locked\n"
    return holder


def test_a_sweep_directory_another_process_writes_is_refused_at_once(tmp_path):
    path, out = write_sweep(tmp_path / "s.yaml", {"train.seed": [0]}), tmp_path / "out"
    holder = _hold_lock(out)
    try:
        before = sorted(p.name for p in out.iterdir())
        for extra in ([], ["--overwrite"]):
            refused = CliRunner().invoke(app, ["sweep", str(path), "--out", str(out), *extra])
            assert refused.exit_code == 2, refused.output
            lines = refused.stderr.strip().splitlines()
            assert len(lines) == 1 and f"being written by another softmaxlab process (pid {holder.pid})" in lines[0]
        # A run into the sweep directory is refused too (fit takes the same lock).
        run = CliRunner().invoke(app, ["run", *[a for s in SWEEP_BASE for a in ("--set", s)], "--out", str(out)])
        assert run.exit_code == 2 and f"pid {holder.pid}" in run.stderr, run.output
        # The dry run writes nothing, so it takes no lock and is not refused.
        listed = CliRunner().invoke(app, ["sweep", str(path), "--out", str(out), "--dry-run"])
        assert listed.exit_code == 0 and "pending" in listed.stdout, listed.output
        assert sorted(p.name for p in out.iterdir()) == before == [runs.LOCK]
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert not out.exists()  # the refused commands wrote nothing: the holder removed what it made


def test_the_sweep_holds_its_lock_throughout_and_removes_stale_tmp_files(tmp_path):
    path, out = write_sweep(tmp_path / "s.yaml", {"train.seed": [0]}), tmp_path / "out"
    held = []

    class Check(sweep.SweepProgress):
        def update(self, done, running, failed):
            held.append((out / runs.LOCK).read_text().strip())

    sweep.run_sweep(path, out, progress=Check())
    assert held and set(held) == {str(os.getpid())} and not (out / runs.LOCK).exists()
    # A sweep killed between writing and renaming leaves its atomic writes' temporary files.
    stale = [
        out / ".results.csv.a1b2c3d4.tmp",
        out / ".report.html.zz_9x8y7.tmp",
        out / "figures" / ".acc.png.q1w2e3r4.tmp",
    ]
    kept = [
        out / ".notes.tmp",
        out / "mine.a1b2c3d4.tmp",
        out / ".x.toolong123.tmp",
        out / "runs" / "seed-0" / ".y.abcdefgh.tmp",
    ]
    for p in stale + kept:
        p.parent.mkdir(exist_ok=True)
        p.write_text("partial")
    sweep.run_sweep(path, out)  # the run is finished: only the tables and the report again
    assert [p for p in stale if p.exists()] == [] and all(p.exists() for p in kept)
    assert not (out / runs.LOCK).exists()


def test_a_left_lock_file_and_tmp_files_are_not_content(tmp_path):
    # A lock file of a killed process (its flock went with it) or a tmp of a killed write in an
    # otherwise empty directory: neither is "another sweep" or a non-empty directory.
    path, out = write_sweep(tmp_path / "s.yaml", {"train.seed": [0]}), tmp_path / "out"
    out.mkdir()
    (out / runs.LOCK).write_text("999999\n")
    (out / ".sweep.yaml.abcd1234.tmp").write_text("partial")
    assert not sweep.dry_run(path, out).replaced
    base, spec = sweep.load_sweep(path)
    sweep.prepare_sweep_dir(out, base, spec)
    assert sorted(p.name for p in out.iterdir()) == [sweep.SWEEP_FILE]


# --------------------------------------------------------------------------- untrusted records


def _fifo(path):
    os.mkfifo(path)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("base: [unclosed\n", "is not valid YAML (line 2); pass --overwrite"),
        ("!!python/object/apply:os.system ['touch pwned']\n", "is not valid YAML (line 1); pass --overwrite"),
        ("- base\n- sweep\n", "holds a list, not the mappings 'base' and 'sweep'"),
        ("base: 3\nsweep: grid\n", "holds a mapping, not the mappings 'base' and 'sweep'"),
        ("base: {}\nbase: {}\nsweep: {}\n", "sets 'base' twice"),
        ("", "holds a NoneType"),
        (os.mkdir, "is a directory, not a file; remove it or choose another --out"),
        (_fifo, "is not a regular file"),
    ],
    ids=["not-yaml", "python-tag", "list", "wrong-types", "repeated-key", "empty", "directory", "fifo"],
)
def test_a_damaged_sweep_record_is_one_line_naming_it(tmp_path, content, fragment):
    path, out = write_sweep(tmp_path / "s.yaml", {"train.seed": [0]}), tmp_path / "out"
    out.mkdir()
    record = out / sweep.SWEEP_FILE
    if callable(content):
        content(record)
    else:
        record.write_text(content)
    (out / sweep.RESULTS_FILE).write_text("run\n")
    for call in (sweep.dry_run, sweep.run_sweep):
        with pytest.raises(UserError) as caught:
            call(path, out)
        message = str(caught.value)
        assert str(record) in message and fragment in message and "choose another --out" in message
        assert "\n" not in message
    assert sorted(p.name for p in out.iterdir()) == [sweep.RESULTS_FILE, sweep.SWEEP_FILE]
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()
    # --overwrite replaces a record a sweep could have written, never a directory or a FIFO.
    if callable(content):
        with pytest.raises(UserError, match="remove it or choose another --out"):
            sweep.dry_run(path, out, overwrite=True)
    else:
        assert sweep.dry_run(path, out, overwrite=True).replaced
        base, spec = sweep.load_sweep(path)
        sweep.prepare_sweep_dir(out, base, spec, overwrite=True)
        assert sorted(p.name for p in out.iterdir()) == [sweep.SWEEP_FILE]
        assert not sweep.dry_run(path, out).replaced


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        "[1, 2]",
        "[" * 100_000,
        json.dumps({"cluster": 1, "jobs": {}}),
        json.dumps({"cluster": "local", "jobs": []}),
        json.dumps({"cluster": "local", "jobs": {"../../elsewhere": "1"}}),
        json.dumps({"cluster": "slurm", "jobs": {"seed-0": ["101"]}}),
        json.dumps({"cluster": "slurm", "jobs": {"seed-0": "101; rm -rf ~"}}),
        os.mkdir,
        _fifo,
    ],
    ids=["not-json", "list", "deep", "cluster", "jobs-list", "path", "id-list", "id-shell", "directory", "fifo"],
)
def test_a_tampered_jobs_record_is_refused_not_guessed(tmp_path, content):
    out = tmp_path / "out"
    out.mkdir()
    record = out / sweep.JOBS_FILE
    if callable(content):
        content(record)
    else:
        record.write_text(content)
    with pytest.raises(UserError) as caught:
        sweep.check_no_job_in_flight(out)
    message = str(caught.value)
    assert str(record) in message and "remove it once no job of an earlier sweep command runs" in message
    assert "\n" not in message
    # The record a sweep writes still reads.
    if record.is_dir():
        record.rmdir()
    else:
        record.unlink()
    sweep.directory.write_jobs(out, "slurm", {"seed-0": "101_3", "head-gumbel_tau-0.5": "DEBUG_140"})
    assert sweep.directory.read_jobs(out) == ("slurm", {"seed-0": "101_3", "head-gumbel_tau-0.5": "DEBUG_140"})
