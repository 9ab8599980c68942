import math

import pytest

from softmaxlab.sweep import aggregate, mean_std


def test_mean_std_sample_std():
    m, s, n = mean_std([1.0, 2.0, 3.0, 4.0])
    assert (m, n) == (2.5, 4) and s == pytest.approx(math.sqrt(5 / 3))
    assert mean_std([2.0]) == (2.0, 0.0, 1)
    m, s, n = mean_std([])
    assert math.isnan(m) and n == 0
    assert mean_std([1.0, float("nan"), 3.0])[2] == 2  # non-finite values are not averaged


def test_aggregate_groups_in_first_seen_order():
    rows = [
        {"head": "b", "seed": 0, "acc": 0.5},
        {"head": "a", "seed": 0, "acc": 0.8},
        {"head": "b", "seed": 1, "acc": 0.7},
    ]
    out = aggregate(rows, ["head"], {"acc": lambda r: r["acc"]})
    assert [r["head"] for r in out] == ["b", "a"]
    assert out[0]["acc_mean"] == pytest.approx(0.6) and out[0]["acc_n"] == 2
    assert out[1]["acc_std"] == 0.0


# --- sweeps -------------------------------------------------------------------------------

import csv  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import yaml  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from softmaxlab import runs, sweep  # noqa: E402
from softmaxlab.cli import app  # noqa: E402
from softmaxlab.config import apply_overrides  # noqa: E402
from softmaxlab.errors import UserError  # noqa: E402

from .conftest import TINY  # noqa: E402

#: The tiny config, one epoch, smaller splits: a run takes a fraction of a second once warm.
SWEEP_BASE = [*TINY, "train.epochs=1", "data.train_size=256", "data.val_size=64", "data.test_size=64"]


def write_sweep(path, grid, exclude=None, extra=(), variants=None):
    """A sweep config file: the tiny base plus ``sweep.grid`` / ``sweep.exclude`` / ``sweep.variants``."""
    raw = apply_overrides({}, [*SWEEP_BASE, *extra])
    raw["sweep"] = {"grid": grid, **({"exclude": exclude} if exclude else {})}
    if variants is not None:
        raw["sweep"]["variants"] = variants
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_grid_expansion_names_and_exclusion(tmp_path):
    grid = {"head.name": ["softmax", "gumbel"], "head.tau": [0.5, 1, 3], "train.seed": [0, 1]}
    path = write_sweep(tmp_path / "s.yaml", grid, exclude=[{"head.name": "softmax", "head.tau": [0.5, 3]}])
    base, spec = sweep.load_sweep(path)
    plan = sweep.expand_grid(base, spec)
    # 2 x 3 x 2 = 12 combinations, minus softmax with tau 0.5 or 3 (2 x 2 seeds).
    assert len(plan) == 8
    assert plan[0].name == "head-softmax_tau-1_seed-0"
    assert "head-gumbel_tau-0.5_seed-1" in [r.name for r in plan]
    assert len({r.name for r in plan}) == len(plan)
    assert all(r.config is not None and r.config.name == r.name for r in plan)
    gumbel = next(r for r in plan if r.name == "head-gumbel_tau-3_seed-1")
    assert (gumbel.config.head.tau, gumbel.config.train.seed) == (3.0, 1)
    assert sweep.run_name({"data.seed": 1, "train.seed": 2, "model.widths": [8, 16]}) == (
        "data.seed-1_train.seed-2_widths-8-16"
    )


def test_variants_are_crossed_with_the_grid(tmp_path):
    variants = [
        {"head.name": "softmax"},
        {"head.name": "temperature", "head.learn_temperature": True},
        {"head.name": "gumbel", "head.tau": 3},
    ]
    path = write_sweep(
        tmp_path / "s.yaml", {"train.seed": [0, 1]}, exclude=[{"head.tau": 3, "train.seed": 1}], variants=variants
    )
    base, spec = sweep.load_sweep(path)
    plan = sweep.expand_grid(base, spec)
    assert [r.name for r in plan] == [
        "head-softmax_seed-0",
        "head-softmax_seed-1",
        "head-temperature_learn_temperature-true_seed-0",
        "head-temperature_learn_temperature-true_seed-1",
        "head-gumbel_tau-3_seed-0",  # seed 1 excluded; the exclude key tau is unset in the others
    ]
    assert all(r.config is not None for r in plan)
    assert plan[2].config.head.learn_temperature and plan[4].config.head.tau == 3.0
    assert plan[0].config.head.tau == 1.0  # a key a variant leaves unset keeps the base value
    # The dry run has a column per variant or grid key, blank where a variant does not set it.
    result = CliRunner().invoke(app, ["sweep", str(path), "--out", str(tmp_path / "o"), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "head.learn_temp" in result.output and "5 runs" in result.output


def test_a_variant_of_another_model_gets_that_models_default_widths(tmp_path):
    from softmaxlab.models.base import default_widths

    variants = [{"model.name": "simple_cnn"}, {"model.name": "resnet12"}]
    raw = apply_overrides({}, [s for s in SWEEP_BASE if not s.startswith("model.widths")])
    raw["sweep"] = {"grid": {"train.seed": [0]}, "variants": variants}
    (tmp_path / "unset.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    plan = sweep.expand_grid(*sweep.load_sweep(tmp_path / "unset.yaml"))
    assert [r.config.model.widths for r in plan] == [default_widths("simple_cnn"), default_widths("resnet12")]
    # Widths the base sets are the base's for every variant.
    path = write_sweep(tmp_path / "set.yaml", {"train.seed": [0]}, variants=variants)
    plan = sweep.expand_grid(*sweep.load_sweep(path))
    assert [r.config.model.widths for r in plan] == [[8, 16], [8, 16]]


@pytest.mark.parametrize(
    ("variants", "fragment"),
    [
        ([{}], "is empty"),
        ([{"head.nmae": "softmax"}], "did you mean"),
        ([{"train.seed": 3}], "which sweep.grid also varies"),
        ([{"head.name": "softmax"}, {"head.name": "softmax"}], "repeats"),
        ([{"name": "x"}], "named after its overrides"),
    ],
)
def test_bad_variants_are_user_errors(tmp_path, variants, fragment):
    path = write_sweep(tmp_path / "s.yaml", {"train.seed": [0]}, variants=variants)
    with pytest.raises(UserError, match=fragment):
        sweep.load_sweep(path)


def test_names_stay_unique_and_invalid_combinations_are_recorded(tmp_path):
    # "a/b" and "a-b" would both read "a-b": a hash keeps them apart.
    assert sweep.run_name({"model.activation": "a/b"}) == "activation-a-b"
    path = write_sweep(tmp_path / "s.yaml", {"head.name": ["softmax", "gumbel"], "head.tau": [1, 2]})
    plan = sweep.expand_grid(*sweep.load_sweep(path))
    bad = [r for r in plan if r.config is None]
    assert [r.name for r in bad] == ["head-softmax_tau-2"]
    assert "head.tau" in bad[0].error and "gumbel" in bad[0].error


@pytest.mark.parametrize(
    ("grid", "exclude", "fragment"),
    [
        ({"head.tua": [1]}, None, "did you mean"),
        ({"train.seed": []}, None, "empty list"),
        ({"train.seed": [0, 0]}, None, "twice"),
        ({"name": ["a"]}, None, "'name'"),
        ({"train.seed": [0]}, [{"head.name": "softmax"}], "not a sweep.grid or sweep.variants key"),
    ],
)
def test_bad_sweep_configs_are_user_errors(tmp_path, grid, exclude, fragment):
    path = write_sweep(tmp_path / "s.yaml", grid, exclude)
    with pytest.raises(UserError, match=fragment):
        sweep.load_sweep(path)


def test_dry_run_lists_runs_and_writes_nothing(tmp_path):
    path = write_sweep(tmp_path / "s.yaml", {"head.name": ["softmax", "log_softmax"], "train.seed": [0, 1]})
    result = CliRunner().invoke(app, ["sweep", str(path), "--out", str(tmp_path / "out"), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "head-log_softmax_seed-1" in result.output and "pending" in result.output
    assert "4 runs" in result.output
    assert not (tmp_path / "out").exists()


def test_dry_run_with_overwrite_shows_the_runs_it_would_replace(tmp_path):
    out = tmp_path / "out"
    first = write_sweep(tmp_path / "a.yaml", {"train.seed": [0]})
    assert CliRunner().invoke(app, ["sweep", str(first), "--out", str(out)]).exit_code == 0
    listed = CliRunner().invoke(app, ["sweep", str(first), "--out", str(out), "--dry-run"])
    assert "finished" in listed.output and "replacing" not in listed.output
    other = write_sweep(tmp_path / "b.yaml", {"train.seed": [0]}, extra=["train.lr=0.2"])
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    result = CliRunner().invoke(app, ["sweep", str(other), "--out", str(out), "--dry-run", "--overwrite"])
    assert result.exit_code == 0, result.output
    assert "pending" in result.output and "finished" not in result.output and "replacing the sweep" in result.output
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before  # nothing removed


def test_failed_runs_are_recorded_and_do_not_stop_the_others(tmp_path, monkeypatch):
    from softmaxlab import train

    real_fit = train.fit

    def flaky_fit(cfg, out_dir, **kwargs):
        if cfg.train.seed == 1:
            raise RuntimeError("boom\nsecond line")
        return real_fit(cfg, out_dir, **kwargs)

    monkeypatch.setattr(train, "fit", flaky_fit)
    path = write_sweep(tmp_path / "s.yaml", {"train.seed": [0, 1, 2]})
    result = sweep.run_sweep(path, tmp_path / "out")
    assert [r["status"] for r in result.rows] == ["finished", "failed", "finished"]
    assert result.rows[1]["error"] == "RuntimeError: boom second line"
    assert read_csv(tmp_path / "out" / sweep.RESULTS_FILE)[1]["status"] == "failed"


def test_aggregate_csv_means_and_stds_over_seeds(tmp_path):
    grid = {"head.name": ["softmax", "log_softmax"], "train.seed": [0, 1, 2]}
    path, out = write_sweep(tmp_path / "s.yaml", grid), tmp_path / "out"
    sweep.run_sweep(path, out)
    rows = read_csv(out / sweep.RESULTS_FILE)
    table = {r["head.name"]: r for r in read_csv(out / sweep.AGGREGATE_FILE)}
    assert set(table) == {"softmax", "log_softmax"}
    for head, agg in table.items():
        accs = [float(r["test.accuracy"]) for r in rows if r["head.name"] == head]
        mean = sum(accs) / 3
        std = math.sqrt(sum((a - mean) ** 2 for a in accs) / 2)
        assert float(agg["test.accuracy_mean"]) == pytest.approx(mean, abs=1e-9)
        assert float(agg["test.accuracy_std"]) == pytest.approx(std, abs=1e-9)
        assert agg["test.accuracy_n"] == "3" and agg["runs"] == "3"


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


def test_aggregate_groups_list_values():
    # Override values can be lists (model.softmax_blocks: [2]); they group by value.
    rows = [{"blocks": [2], "acc": 0.5}, {"blocks": [0, 1], "acc": 0.8}, {"blocks": [2], "acc": 0.7}]
    out = aggregate(rows, ["blocks"], {"acc": lambda r: r["acc"]})
    assert [(r["blocks"], r["acc_n"]) for r in out] == [([2], 2), ([0, 1], 1)]
    assert out[0]["acc_mean"] == pytest.approx(0.6)


def test_aggregate_csv_of_variants_groups_by_every_variant_key(tmp_path):
    variants = [{"head.name": "softmax"}, {"head.name": "gumbel", "head.tau": 2}, {"model.widths": [8, 8]}]
    path, out = write_sweep(tmp_path / "s.yaml", {"train.seed": [0, 1]}, variants=variants), tmp_path / "out"
    sweep.run_sweep(path, out)
    rows = read_csv(out / sweep.RESULTS_FILE)
    assert [(r["head.name"], r["head.tau"], r["model.widths"]) for r in rows] == (
        [("softmax", "", "")] * 2 + [("gumbel", "2", "")] * 2 + [("", "", "[8, 8]")] * 2
    )
    assert {r["status"] for r in rows} == {"finished"}
    table = read_csv(out / sweep.AGGREGATE_FILE)
    assert [(r["head.name"], r["head.tau"], r["model.widths"], r["runs"]) for r in table] == [
        ("softmax", "", "", "2"),
        ("gumbel", "2", "", "2"),
        ("", "", "[8, 8]", "2"),
    ]
    accs = [float(r["test.accuracy"]) for r in rows[2:4]]
    assert float(table[1]["test.accuracy_mean"]) == pytest.approx(sum(accs) / 2, abs=1e-9)


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


# --- the submitit launcher (its local executor: each run a job in its own process) --------


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


def test_dry_run_shows_runs_still_in_an_earlier_job_and_refuses_bad_options(tmp_path):
    path, out = write_sweep(tmp_path / "s.yaml", {"train.seed": [0, 1]}), tmp_path / "out"
    base, spec = sweep.load_sweep(path)
    sweep.prepare_sweep_dir(out, base, spec)
    (out / sweep.JOBS_FILE).write_text(json.dumps({"cluster": "local", "jobs": {"seed-0": str(os.getpid())}}))
    before = sorted(p.name for p in out.rglob("*"))
    listed = CliRunner().invoke(app, ["sweep", str(path), "--out", str(out), "--dry-run"])
    assert listed.exit_code == 0, listed.output
    rows = {line.split()[0]: line for line in listed.stdout.splitlines() if line.strip().startswith("seed-")}
    assert f"in job {os.getpid()} (its process is alive)" in rows["seed-0"] and "pending" in rows["seed-1"]
    assert "1 in an earlier command's jobs" in listed.stdout.replace("\n", "")
    refused = CliRunner().invoke(app, ["sweep", str(path), "--out", str(out), "--dry-run", "--launcher", "slurm"])
    assert refused.exit_code == 2 and refused.stderr.strip().splitlines() == [refused.stderr.strip()]
    assert "unknown launcher" in refused.stderr
    assert sorted(p.name for p in out.rglob("*")) == before


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
    monkeypatch.setattr(sweep, "_slurm_states", lambda folder, ids: asked.extend(ids) or dict.fromkeys(ids, state))
    if refused:
        with pytest.raises(UserError, match=f"job 101 \\({state}\\)"):
            sweep._check_no_job_in_flight(out)
    else:
        sweep._check_no_job_in_flight(out)
    assert asked == ["101"]


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
