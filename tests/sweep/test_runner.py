"""The sweep command end to end (softmaxlab.sweep.runner): ``--set`` on the base experiment,
a library backbone, and the rerun that resumes."""

import yaml
from typer.testing import CliRunner

from softmaxlab import runs, sweep
from softmaxlab.cli import app

from .conftest import write_sweep

#: A library backbone on a handful of 32 px images, one epoch: a few seconds.
LIBRARY = [
    "data.image_size=32",
    "data.train_size=32",
    "data.val_size=16",
    "data.test_size=16",
    "train.batch_size=16",
    "diagnostics.enabled=false",
]


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def test_sweep_set_trains_on_a_library_backbone_and_the_same_command_resumes(tmp_path, monkeypatch):
    # The sweep's report without its figures (tests/report draws them): they would double the time.
    real_report = sweep.runner.write_run_report
    monkeypatch.setattr(sweep.runner, "write_run_report", lambda out, figures, what: real_report(out, False, what))
    path, out = write_sweep(tmp_path / "s.yaml", {"train.seed": [0]}, extra=LIBRARY), tmp_path / "out"
    argv = ["sweep", str(path), "--set", "model.name=timm:resnet18", "-s", "train.lr=0.05", "--out", str(out)]
    result = invoke(*argv)
    assert result.exit_code == 0, result.output
    note = f"note: model.widths from {path} does not apply to model.name=timm:resnet18 and was dropped"
    assert result.stdout.startswith(note), result.stdout
    trained = yaml.safe_load((out / sweep.RUNS_DIR / "seed-0" / runs.CONFIG).read_text())
    assert trained["model"]["name"] == "timm:resnet18" and "widths" not in trained["model"]
    assert trained["train"]["lr"] == 0.05
    # sweep.yaml records the base as the command line made it.
    record = yaml.safe_load((out / sweep.SWEEP_FILE).read_text())
    assert record["base"]["model"] == trained["model"] and record["base"]["train"]["lr"] == 0.05
    summary = out / sweep.RUNS_DIR / "seed-0" / runs.SUMMARY
    finished = summary.stat().st_mtime_ns
    # The same command trains nothing new; the dry run lists the run as finished.
    again = invoke(*argv)
    assert again.exit_code == 0, again.output
    assert "1 of 1 runs already done" in again.stderr and summary.stat().st_mtime_ns == finished
    listed = invoke(*argv, "--dry-run")
    assert listed.exit_code == 0 and "finished" in listed.stdout and listed.stdout.startswith(note)
    # Another --set, or none, is another base config: refused, the dry run included.
    for other in (["--set", "model.name=torchvision:resnet18"], []):
        refused = invoke("sweep", str(path), *other, "--out", str(out), "--dry-run")
        assert refused.exit_code == 2 and "holds a sweep with another base config" in refused.stderr, refused.output
    assert summary.stat().st_mtime_ns == finished
