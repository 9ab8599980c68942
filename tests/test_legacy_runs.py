"""Run directories written before the config sections were composed from the components'
options (flat sections with every head's and dataset's options) still evaluate, predict,
visualize, report, resume and grow as sweeps. The fixtures are described in
tests/fixtures/legacy-runs/README.md; each test works on a copy."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from softmaxlab import runs, sweep
from softmaxlab.cli import app
from softmaxlab.config import load_config, load_run_config
from softmaxlab.experiment import resume_experiment
from softmaxlab.inference import evaluate_run, predict_images, visualize_run
from softmaxlab.report.build import write_report
from softmaxlab.train import fit

LEGACY = Path(__file__).parent / "fixtures" / "legacy-runs"


@pytest.fixture
def legacy(tmp_path):
    """A copy of the fixture folder: ``legacy("gumbel-finished")`` is its run directory."""

    def copy(name: str) -> Path:
        target = tmp_path / name
        shutil.copytree(LEGACY / name, target)
        return target

    return copy


def test_a_flat_legacy_config_loads_with_only_the_chosen_components_options(legacy):
    run = legacy("gumbel-finished")
    flat = yaml.safe_load((run / runs.CONFIG).read_text())
    assert flat["head"]["temperature"] == 1.0 and flat["data"]["root"] is None  # every option, as before
    cfg = load_run_config(run)
    assert (cfg.head.name, cfg.head.tau) == ("gumbel", 0.5)
    resolved = cfg.to_dict()
    assert "temperature" not in resolved["head"] and "hard" not in resolved["head"]
    assert "root" not in resolved["data"] and "activation_temperature" not in resolved["model"]
    assert load_config(run / runs.CONFIG) == cfg  # the file as a user config: the same config


def test_a_legacy_run_evaluates_predicts_visualizes_and_reports(legacy, tmp_path):
    run = legacy("gumbel-finished")
    summary = json.loads((run / runs.SUMMARY).read_text())
    result = evaluate_run(run, "shapes")  # the run's own data options: its own test split
    assert result["images"] == 64 and result["metrics"]["accuracy"] == pytest.approx(summary["test"]["accuracy"])
    assert result["temperature"] == pytest.approx(summary["temperature"])
    image = tmp_path / "a.png"
    Image.new("RGB", (20, 20), (200, 30, 30)).save(image)
    top = predict_images(run, [image], top_k=2)["predictions"][0]["top"]
    assert len(top) == 2 and top[0]["probability"] >= top[1]["probability"]
    assert visualize_run(run, image).stat().st_size > 0
    written = write_report(run, "both")
    assert sorted(p.name for p in written) == ["report.html", "report.md"]
    assert all("head=gumbel" in p.read_text() for p in written)


def test_a_legacy_checkpoint_resumes_to_the_run_left_alone(legacy, tmp_path):
    torch.set_num_threads(1)  # the fixture was trained with one thread
    run = legacy("softmax-unfinished")
    resumed = resume_experiment(run)
    alone = fit(load_run_config(run), tmp_path / "alone")
    assert [r["epoch"] for r in resumed.history] == [1, 2]
    assert resumed.summary["test"]["nll"] == alone.summary["test"]["nll"]
    assert resumed.summary["test"]["confusion_matrix"] == alone.summary["test"]["confusion_matrix"]
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in alone.history]
    assert not (run / runs.CHECKPOINT).exists() and (run / "report.html").is_file()


def test_the_resume_command_takes_a_legacy_run(legacy):
    run = legacy("softmax-unfinished")
    result = CliRunner().invoke(app, ["resume", str(run)])
    assert result.exit_code == 0, result.output
    assert json.loads((run / runs.SUMMARY).read_text())["status"] == "finished"


def test_a_legacy_sweep_grows_without_retraining_its_runs(legacy, tmp_path):
    folder = legacy("sweep")
    out, done = folder / "out", folder / "out" / "runs" / "seed-0" / runs.SUMMARY
    before = done.stat().st_mtime_ns
    raw = yaml.safe_load((folder / "sweep-config.yaml").read_text())
    raw["sweep"]["grid"]["train.seed"] = [0, 1]
    config = tmp_path / "grown.yaml"
    config.write_text(yaml.safe_dump(raw))
    listed = CliRunner().invoke(app, ["sweep", str(config), "--out", str(out), "--dry-run"])
    assert listed.exit_code == 0 and "replacing" not in listed.output, listed.output
    result = sweep.run_sweep(config, out)
    assert [(r["run"], r["status"]) for r in result.rows] == [("seed-0", "finished"), ("seed-1", "finished")]
    assert done.stat().st_mtime_ns == before  # the legacy run was kept, not trained again
