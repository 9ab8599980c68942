import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from softmaxlab import runs
from softmaxlab.errors import UserError

from .conftest import TINY


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "a" / "f.json"
    runs.atomic_write_json(path, {"x": 1})
    runs.atomic_write_json(path, {"x": 2})
    assert json.loads(path.read_text()) == {"x": 2}
    assert sorted(p.name for p in path.parent.iterdir()) == ["f.json"]
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~runs._UMASK)


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "f.txt"
    runs.atomic_write_text(path, "old")

    def boom(f):
        f.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        runs._atomic(path, boom)
    assert path.read_text() == "old" and len(os.listdir(tmp_path)) == 1


def test_json_has_no_nan():
    text = runs.to_json({"a": float("nan"), "b": [float("inf"), 1.0]})
    assert json.loads(text) == {"a": None, "b": [None, 1.0]}


def test_jsonl_roundtrip(tmp_path):
    records = [{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.25}]
    runs.atomic_write_jsonl(tmp_path / "m.jsonl", records)
    assert runs.read_jsonl(tmp_path / "m.jsonl") == records


def test_prepare_refuses_existing_run_unless_overwrite(tmp_path):
    run = runs.prepare_run_dir(tmp_path / "r")
    (run / runs.SUMMARY).write_text("{}")
    (run / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match=r"already holds a finished run.*--overwrite"):
        runs.prepare_run_dir(run)
    assert (run / runs.SUMMARY).exists()
    runs.prepare_run_dir(run, overwrite=True)
    assert not (run / runs.SUMMARY).exists() and (run / "notes.txt").read_text() == "mine"


def test_prepare_refuses_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        runs.prepare_run_dir(tmp_path / "f")


def test_weights_load_with_weights_only(tmp_path):
    from softmaxlab.config import Config

    model = torch.nn.Linear(2, 3)
    runs.save_weights(tmp_path, model, Config(), ["a", "b", "c"], epoch=4)
    payload = runs.load_weights(tmp_path)
    assert payload["epoch"] == 4 and payload["classes"] == ["a", "b", "c"]
    torch.testing.assert_close(payload["state_dict"]["weight"], model.weight.detach())


def test_load_weights_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        runs.load_weights(tmp_path)
    (tmp_path / runs.WEIGHTS).write_bytes(b"not a zip")
    with pytest.raises(UserError, match="corrupt"):
        runs.load_weights(tmp_path)
    torch.save({"something": torch.zeros(1)}, tmp_path / runs.WEIGHTS)
    with pytest.raises(UserError, match="not a softmaxlab weights file"):
        runs.load_weights(tmp_path)


def test_load_state_checked_names_the_differences():
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 4))
    state = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 5)).state_dict()
    state["extra"] = torch.zeros(1)
    del state["0.bias"]
    with pytest.raises(UserError, match=r"missing keys: 0.bias; unexpected keys: extra; shapes differ: 1.weight"):
        runs.load_state_checked(model, state, "checkpoint 'x'")
    runs.load_state_checked(model, model.state_dict(), "checkpoint 'x'")  # a fitting state loads


def test_checkpoint_falls_back_to_previous_and_never_truncated(tmp_path):
    assert runs.load_checkpoint(tmp_path) is None
    runs.save_checkpoint(tmp_path, {"n": 1})
    runs.save_checkpoint(tmp_path, {"n": 2})
    assert runs.load_checkpoint(tmp_path)["n"] == 2
    (tmp_path / runs.CHECKPOINT).write_bytes(b"PK\x03\x04 truncated")
    assert runs.load_checkpoint(tmp_path)["n"] == 1
    with pytest.raises(RuntimeError):
        runs.save_checkpoint(tmp_path, {"n": 3}, during_write=lambda: (_ for _ in ()).throw(RuntimeError))
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def _run_dir(path, seed=0):
    path.mkdir(parents=True)
    (path / runs.CONFIG).write_text(f"name: {path.name}\ntrain:\n  seed: {seed}\n")
    return path


def test_runs_are_found_below_and_ordered_as_they_were_written(tmp_path):
    b = _run_dir(tmp_path / "b")
    a = _run_dir(tmp_path / "group" / "a", seed=1)
    os.utime(b / "config.yaml", (1, 1))  # b was written first
    assert runs.find_run_dirs(tmp_path) == [b, a]
    assert runs.find_run_dirs(a) == [a]  # a run directory is its own report
    _run_dir(tmp_path / ".hidden" / "c")
    _run_dir(a / "inner")  # a run inside a run is part of it
    assert runs.find_run_dirs(tmp_path) == [b, a]
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no runs"):
        runs.find_run_dirs(tmp_path / "empty")


def test_one_reader_per_file_strict_and_lenient(tmp_path):
    run = _run_dir(tmp_path / "r")
    assert runs.read_summary(run) is None and runs.read_history(run) == []
    assert runs.read_config(run) == {"name": "r", "train": {"seed": 0}}
    (run / runs.SUMMARY).write_text("{not json")
    (run / runs.METRICS).write_text('{"epoch": 1}\n[1]\n')
    with pytest.raises(UserError, match=r"summary.json could not be read \(JSONDecodeError\)"):
        runs.read_summary(run)
    assert runs.read_history(run) == [{"epoch": 1}]  # a record that is not an object is skipped
    record = runs.read_run(run)  # a report's reader: never raises, says what it could not read
    assert record.summary == {} and record.history == [{"epoch": 1}] and record.seed == 0
    assert record.problems == ["summary.json could not be read (JSONDecodeError)"] and record.status == "unfinished"
    (run / runs.SUMMARY).write_text("[1, 2]")
    with pytest.raises(UserError, match=r"summary\.json does not hold a dict"):
        runs.read_summary(run)


# --- the write lock of a run or sweep directory ---------------------------------------------

_HOLD = """import sys, time
from softmaxlab import runs
with runs.lock_dir(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


def _holder(directory: Path) -> subprocess.Popen:
    """Another process holding the lock of ``directory`` (until killed)."""
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(directory)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_locked_directory_is_refused_naming_the_holder_and_freed_when_it_dies(tmp_path):
    holder = _holder(tmp_path / "run")
    try:
        busy = rf"being written by another softmaxlab process \(pid {holder.pid}\)"
        with pytest.raises(UserError, match=busy), runs.lock_dir(tmp_path / "run"):
            pass
    finally:
        holder.kill()  # SIGKILL: no cleanup ran, the OS released the lock
        holder.wait()
    with runs.lock_dir(tmp_path / "run"):  # free again, although the lock file was left behind
        assert (tmp_path / "run" / runs.LOCK).is_file()
    assert not (tmp_path / "run" / runs.LOCK).exists()


def test_the_lock_is_reentrant_in_one_process_and_leaves_no_trace(tmp_path):
    with runs.lock_dir(tmp_path / "new"):
        with runs.lock_dir(tmp_path / "new"):
            pass
        assert (tmp_path / "new" / runs.LOCK).is_file()
    assert not (tmp_path / "new").exists()  # created for the lock, left empty: removed
    (tmp_path / "kept").mkdir()
    with runs.lock_dir(tmp_path / "kept"):
        pass
    assert (tmp_path / "kept").is_dir() and not any((tmp_path / "kept").iterdir())
    with runs.lock_dir(tmp_path / "runs" / "sweep" / "run"):  # parents made for it go too
        pass
    assert not (tmp_path / "runs").exists()
    with runs.lock_dir(tmp_path / "runs" / "sweep" / "run"):
        (tmp_path / "runs" / "sweep" / "note.txt").write_text("x")  # a parent that got a file stays
    assert sorted(p.name for p in (tmp_path / "runs").rglob("*")) == ["note.txt", "sweep"]


def test_a_second_run_on_a_directory_in_training_is_refused_and_the_first_is_untouched(tmp_path):
    """Two real `softmaxlab run` processes on one --out: without the lock the second (with
    --overwrite) deleted the first's files and wrote its own config beside the first's weights."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "softmaxlab", "run", "--out", str(out)]
    first = [*TINY, "train.epochs=500", "train.lr=0.05"]  # far longer than the test: killed below
    a = subprocess.Popen(
        [*cmd, *(x for s in first for x in ("--set", s))], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 60
        while not (out / runs.METRICS).is_file() and a.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert a.poll() is None and (out / runs.METRICS).is_file()
        second = [*TINY, "train.lr=0.3"]
        b = subprocess.run(
            [*cmd, "--overwrite", *(x for s in second for x in ("--set", s))], capture_output=True, text=True
        )
        assert b.returncode == 2, b.stderr
        assert f"being written by another softmaxlab process (pid {a.pid})" in b.stderr
        assert a.poll() is None  # still training, its files its own
        assert yaml.safe_load((out / runs.CONFIG).read_text())["train"]["lr"] == 0.05
    finally:
        a.kill()
        a.wait()


def test_overwrite_removes_the_old_report_and_figures_with_the_run(tmp_path):
    run = tmp_path / "run"
    (run / runs.FIGURES).mkdir(parents=True)
    for name in (*runs.RUN_FILES, *runs.DERIVED_FILES, "figures/curves.png", "notes.txt", "figures/mine.svg"):
        (run / name).write_text("old")
    runs.prepare_run_dir(run, overwrite=True)
    # A new run killed before its first report must not sit beside the old one's report.
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*")) == ["figures", "figures/mine.svg", "notes.txt"]


def test_stale_temporary_files_of_killed_writes_are_removed_and_nothing_else(tmp_path):
    (tmp_path / "figures").mkdir()
    (tmp_path / "runs" / "a").mkdir(parents=True)
    stale = [".report.html.k3j_9x0q.tmp", "figures/.curves.png.abcdefgh.tmp"]
    kept = ["report.html", ".notes.tmp", "mine.abcdefgh.tmp", "runs/a/.config.yaml.abcdefgh.tmp"]
    for name in (*stale, *kept):
        (tmp_path / name).write_text("x")
    removed = runs.remove_stale_tmp(tmp_path)
    assert sorted(str(p.relative_to(tmp_path)) for p in removed) == sorted(stale)
    assert all((tmp_path / name).exists() for name in kept)


def test_a_checkpoint_that_is_no_regular_file_falls_back_to_the_previous_one(tmp_path):
    torch.save({"format": runs.CHECKPOINT_FORMAT, "steps_done": 3}, tmp_path / runs.CHECKPOINT_PREV)
    (tmp_path / runs.CHECKPOINT).mkdir()
    assert runs.load_checkpoint(tmp_path)["steps_done"] == 3
    (tmp_path / runs.CHECKPOINT).rmdir()
    (tmp_path / runs.CHECKPOINT).symlink_to(tmp_path / "gone")
    assert runs.load_checkpoint(tmp_path)["steps_done"] == 3


def test_an_atomic_write_never_replaces_a_device_pipe_or_link(tmp_path):
    """The rename would put a plain file where /dev/null, a pipe or a link was."""
    os.mkfifo(tmp_path / "pipe.json")
    (tmp_path / "target.json").write_text("kept")
    (tmp_path / "link.json").symlink_to(tmp_path / "target.json")
    (tmp_path / "dir.json").mkdir()
    for name, problem in [
        ("pipe.json", "not a regular file"),
        ("link.json", "symbolic link"),
        ("dir.json", "directory"),
    ]:
        with pytest.raises(UserError, match=problem):
            runs.atomic_write_json(tmp_path / name, {"x": 1})
    assert (tmp_path / "link.json").is_symlink() and (tmp_path / "target.json").read_text() == "kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.json", "link.json", "pipe.json", "target.json"]


def test_predictions_npz_keeps_what_an_analysis_needs_at_any_class_count(tmp_path):
    torch.manual_seed(0)
    y = torch.tensor([0, 3, 2, 1])
    z = torch.randn(4, 5)
    runs.save_predictions(tmp_path / runs.PREDICTIONS, torch.softmax(z, 1), y, scores=z)
    kept = runs.read_predictions(tmp_path)
    assert kept["probs"].shape == (4, 5) and (kept["scores"] == z.numpy()).all()
    assert kept["predicted"].tolist() == z.argmax(1).tolist() and kept["targets"].tolist() == y.tolist()
    many = torch.softmax(torch.randn(4, 2000), 1)
    many[1] = 1 / 2000  # a uniform row: ties broken as argmax breaks them
    runs.save_predictions(tmp_path / "big.npz", many, y, scores=torch.randn(4, 2000))
    big = runs.read_predictions(tmp_path, "big.npz")
    assert "probs" not in big and "scores" not in big and int(big["num_classes"]) == 2000
    assert big["predicted"].tolist() == many.argmax(1).tolist() and big["top_probs"].shape == (4, 100)
    assert np.allclose(big["target_probs"], many[torch.arange(4), y].numpy())
    (tmp_path / "bad.npz").write_bytes(b"not an archive")
    with pytest.raises(runs.UnreadableFileError, match="could not be read"):
        runs.read_predictions(tmp_path, "bad.npz")
