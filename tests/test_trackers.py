"""TensorBoard and MLflow trackers (``train.loggers``) and ``softmaxlab export mlflow``.

What was written is read back with the trackers' own readers: TensorBoard's EventAccumulator
and MLflow's client, never by parsing their files. One MLflow store serves the module (a new
sqlite store costs seconds to create).
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from softmaxlab import runs, trackers
from softmaxlab.cli import app
from softmaxlab.errors import DivergedError, UserError
from softmaxlab.experiment import run_experiment
from softmaxlab.train import Hook, fit

from .conftest import tiny_config

pytest.importorskip("tensorboard")  # in the dev extra, so CI has both
mlflow = pytest.importorskip("mlflow")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.plugins.hparams import plugin_data_pb2  # noqa: E402

runner = CliRunner()

#: A tiny run (2 steps per epoch) with Gumbel's tau as head state.
SMALL = ["data.train_size=128", "data.val_size=64", "data.test_size=64", "head.name=gumbel"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    # In a folder of its own: MLflow puts a sqlite store's artifacts in ./mlruns where it runs.
    folder = tmp_path_factory.mktemp("mlflow")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        yield f"sqlite:///{folder / 'mlflow.db'}"


@pytest.fixture(scope="module")
def client(store):
    return mlflow.MlflowClient(tracking_uri=store)


def logged(store: str, *extra: str):
    return tiny_config(*SMALL, "train.loggers=[tensorboard, mlflow]", f"train.mlflow_uri={store}", *extra)


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag of the run's TensorBoard log: (step, value) in order, as TensorBoard shows them."""
    events = EventAccumulator(str(run_dir / trackers.TENSORBOARD_DIR), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def mlflow_runs(client, experiment: str) -> list:
    found = client.get_experiment_by_name(experiment)
    return [] if found is None else client.search_runs([found.experiment_id])


def history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


@pytest.fixture(scope="module")
def live(tmp_path_factory, store):
    """A 2-epoch run logged to both trackers."""
    return fit(logged(store), tmp_path_factory.mktemp("live") / "live")


# --------------------------------------------------------------------------- while training


def test_tensorboard_holds_each_epoch_record_and_the_test_metrics(live):
    found = scalars(live.run_dir)
    for record in live.history:
        for tag, value in trackers.epoch_scalars(record).items():
            assert (record["epoch"], pytest.approx(value)) in found[tag], tag
    assert [step for step, _ in found["val/accuracy"]] == [1, 2]
    assert found["val/accuracy"][-1][1] == pytest.approx(live.history[-1]["val_acc"])
    assert {"train/loss", "lr", "head/tau", "grad_norm/head.fc", "activation/block0/std"} <= set(found)
    assert found["test/accuracy"] == [(2, pytest.approx(live.summary["test"]["accuracy"]))]


def test_tensorboard_holds_the_config_as_hyperparameters(live):
    events = EventAccumulator(str(live.run_dir / trackers.TENSORBOARD_DIR))
    events.Reload()
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert hparams["train.lr"].number_value == pytest.approx(0.1)
    assert hparams["head.name"].string_value == "gumbel"
    assert hparams["model.widths"].string_value == "[8, 16]"


def test_mlflow_holds_the_config_each_epoch_and_the_summary(live, client):
    (run,) = mlflow_runs(client, "live")  # named after the run
    assert run.info.status == "FINISHED"
    assert json.loads((live.run_dir / trackers.MLFLOW_FILE).read_text())["run_id"] == run.info.run_id
    expected = {k: str(v) for k, v in trackers.hyperparameters(_config(live.run_dir)).items()}
    assert run.data.params == expected
    assert history(client, run.info.run_id, "val/loss") == [
        (r["epoch"], pytest.approx(r["val_loss"])) for r in live.history
    ]
    assert history(client, run.info.run_id, "head/tau") == [(1, 1.0), (2, 1.0)]
    assert run.data.metrics["test/accuracy"] == pytest.approx(live.summary["test"]["accuracy"])
    assert run.data.tags[trackers.RUN_ID_TAG] == trackers.run_key(live.run_dir)


def _config(run_dir: Path) -> dict:
    return runs.read_config(run_dir)


class _Killed(BaseException):
    pass


class _KillAt(Hook):
    """Stops the run after epoch ``epoch``'s checkpoint (before the trackers log it), or at ``step``."""

    def __init__(self, epoch: int = 0, step: int = 0) -> None:
        self.epoch, self.step = epoch, step

    def on_epoch_end(self, record):
        if record["epoch"] == self.epoch:
            raise _Killed

    def on_step_end(self, state):
        if state.steps_done == self.step:
            raise _Killed


def test_a_resumed_run_continues_the_same_logs_each_epoch_once(tmp_path, store, client):
    out = tmp_path / "resumed"
    cfg = logged(store, "train.epochs=3", "train.checkpoint_every=1")
    # Killed after epoch 1's checkpoint and before the trackers logged it, then in epoch 3
    # (step 5 of 6), after epochs 1 and 2 were logged: a gap to fill and epochs not to repeat.
    for kill in (_KillAt(epoch=1), _KillAt(step=5)):
        with contextlib.suppress(_Killed):
            fit(cfg, out, hooks=[kill], resume=True)
        (run,) = mlflow_runs(client, "resumed")
        assert run.info.status == "KILLED"
    result = fit(cfg, out, resume=True)
    (run,) = mlflow_runs(client, "resumed")  # the same MLflow run throughout
    assert run.info.status == "FINISHED"
    epochs = [(r["epoch"], pytest.approx(r["val_loss"])) for r in result.history]
    assert history(client, run.info.run_id, "val/loss") == epochs
    assert scalars(out)["val/loss"] == epochs
    assert scalars(out)["test/accuracy"] == [(3, pytest.approx(result.summary["test"]["accuracy"]))]


def test_a_diverged_run_is_marked_failed(tmp_path, store, client):
    cfg = tiny_config(
        "train.lr=500", "model.batch_norm=false", "train.epochs=1", "train.loggers=mlflow", f"train.mlflow_uri={store}"
    )
    with pytest.raises(DivergedError):
        fit(cfg, tmp_path / "diverged")
    (run,) = mlflow_runs(client, "diverged")
    assert run.info.status == "FAILED"
    assert run.data.tags[trackers.RUN_ID_TAG] == trackers.run_key(tmp_path / "diverged")


def test_a_run_whose_test_phase_fails_is_not_left_running(tmp_path, store, client, monkeypatch):
    from softmaxlab import train

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(train, "_test_metrics", full_disk)  # after the last epoch was logged
    cfg = tiny_config(*SMALL, "train.epochs=1", "train.loggers=mlflow", f"train.mlflow_uri={store}")
    with pytest.raises(OSError):
        fit(cfg, tmp_path / "untested")
    (run,) = mlflow_runs(client, "untested")
    assert run.info.status == "KILLED"  # resumable, as an interrupted run: not RUNNING for good


def test_trackers_are_opt_in(tmp_path):
    result = fit(tiny_config(*SMALL, "train.epochs=1"), tmp_path / "plain")
    assert not (result.run_dir / trackers.TENSORBOARD_DIR).exists()
    assert not (result.run_dir / trackers.MLFLOW_FILE).exists()


def test_an_overwritten_run_loses_the_old_runs_tracker_logs(tmp_path):
    run = tmp_path / "run"
    (run / trackers.TENSORBOARD_DIR).mkdir(parents=True)
    (run / trackers.TENSORBOARD_DIR / "events.out.tfevents.1").write_text("old")
    for name in (runs.CONFIG, trackers.MLFLOW_FILE):
        (run / name).write_text("old")
    runs.prepare_run_dir(run, overwrite=True)  # even when the new run logs to no tracker
    assert sorted(p.name for p in run.iterdir()) == [runs.FIGURES]


def test_the_config_offers_the_loggers_there_are():
    from typing import get_args

    from softmaxlab.config import TrainConfig

    (choice,) = get_args(TrainConfig.model_fields["loggers"].annotation)
    assert get_args(choice) == trackers.LOGGERS


def test_the_logger_options_validate():
    assert tiny_config("train.loggers=tensorboard").train.loggers == ["tensorboard"]
    with pytest.raises(UserError, match="names a logger twice"):
        tiny_config("train.loggers=[mlflow, mlflow]")
    with pytest.raises(UserError, match=r"'train\.loggers\.0'"):
        tiny_config("train.loggers=[wandb]")
    with pytest.raises(UserError, match=r"applies with mlflow in train\.loggers only"):
        tiny_config("train.loggers=[tensorboard]", "train.mlflow_uri=sqlite:///x.db")


# --------------------------------------------------------------------------- tags, names, URIs


def test_tags_of_the_loop_the_diagnostics_and_the_heads():
    record = {"epoch": 3, "val_coarse_acc": 0.5, "head_temperature": 2.0, "train_image_size": 16, "note": "x"}
    expected = {"val/coarse_accuracy": 0.5, "head/temperature": 2.0, "train/image_size": 16}
    assert trackers.epoch_scalars(record) == expected
    # Characters MLflow refuses in a metric name are replaced.
    assert trackers.epoch_scalars({"grad_norms": {"blocks[0]": 1.0}}) == {"grad_norm/blocks_0_": 1.0}


def test_the_sweep_layout_it_recognises_is_the_sweeps(tmp_path):
    from softmaxlab import sweep

    assert (trackers.SWEEP_FILE, trackers.SWEEP_RUNS) == (sweep.SWEEP_FILE, sweep.RUNS_DIR)
    run = tmp_path / "study" / "runs" / "seed-0"
    run.mkdir(parents=True)
    assert trackers.experiment_name(run, "seed-0") == "seed-0"  # no sweep.yaml: a run of its own
    (tmp_path / "study" / "sweep.yaml").write_text("{}")
    assert trackers.experiment_name(run, "seed-0") == "study"


def test_the_default_tracking_uri(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert trackers.tracking_uri(None) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracker:5000")
    assert trackers.tracking_uri(None) == "http://tracker:5000"
    assert trackers.tracking_uri("sqlite:///x.db") == "sqlite:///x.db"


# --------------------------------------------------------------------------- export


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """A directory of two finished runs (with their reports) that no tracker saw."""
    root = tmp_path_factory.mktemp("export") / "study"
    for seed in (0, 1):
        run_experiment(tiny_config(*SMALL, "train.epochs=1", f"train.seed={seed}"), root / f"seed-{seed}")
    return root


@pytest.fixture(scope="module")
def exported(study, store):
    return trackers.export_mlflow(study, store)


def test_export_sends_each_run_with_its_config_epochs_summary_and_files(study, exported, client):
    assert (exported.experiment, exported.exported, exported.skipped) == ("study", ["seed-0", "seed-1"], [])
    found = {r.info.run_name: r for r in mlflow_runs(client, "study")}
    assert set(found) == {"seed-0", "seed-1"}
    for name, run in found.items():
        run_dir = study / name
        summary = runs.read_summary(run_dir)
        record = runs.read_history(run_dir)[0]
        assert run.info.status == "FINISHED"
        assert run.data.params == {k: str(v) for k, v in trackers.hyperparameters(_config(run_dir)).items()}
        assert history(client, run.info.run_id, "val/accuracy") == [(1, pytest.approx(record["val_acc"]))]
        assert history(client, run.info.run_id, "test/accuracy") == [(1, pytest.approx(summary["test"]["accuracy"]))]
        assert run.data.tags[trackers.RUN_ID_TAG] == trackers.run_key(run_dir)
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {runs.CONFIG, runs.METRICS, runs.SUMMARY, runs.REPORT_HTML} <= artifacts


def test_export_twice_skips_what_is_there(study, exported, store, client):
    again = trackers.export_mlflow(study, store)
    assert again.exported == [] and [name for name, _ in again.skipped] == ["seed-0", "seed-1"]
    assert all("already in the store" in why for _, why in again.skipped)
    assert len(mlflow_runs(client, "study")) == 2


def test_export_replaces_an_export_that_was_cut_short(study, exported, store, client, tmp_path):
    copy = tmp_path / "other" / "seed-0"
    shutil.copytree(study / "seed-0", copy)
    with (copy / runs.METRICS).open("a") as f:  # another run's history: another key
        f.write("\n")
    key = trackers.run_key(copy)
    exp_id = trackers.experiment_id(client, "other")
    partial = client.create_run(exp_id, tags={trackers.EXPORT_TAG: key}).info.run_id
    result = trackers.export_mlflow(copy.parent, store)
    assert result.exported == ["seed-0"]
    assert client.get_run(partial).info.lifecycle_stage == "deleted"
    (run,) = mlflow_runs(client, "other")
    assert run.data.tags[trackers.RUN_ID_TAG] == key


def test_export_of_no_finished_run_writes_nothing(tmp_path, study):
    run = tmp_path / "unfinished"
    shutil.copytree(study / "seed-0", run)
    (run / runs.SUMMARY).unlink()
    uri = f"sqlite:///{tmp_path / 'new.db'}"
    with pytest.raises(UserError, match="holds no finished runs"):
        trackers.export_mlflow(tmp_path, uri)
    assert not (tmp_path / "new.db").exists()


def test_cli_export_skips_a_run_logged_while_it_trained(live, store):
    result = runner.invoke(app, ["export", "mlflow", str(live.run_dir), "--uri", store])
    assert result.exit_code == 0, result.output
    assert "exported 0 runs to MLflow experiment 'live'" in result.stdout and "skipped 1" in result.stdout
    assert "live: skipped (already in the store as run" in result.stderr


def test_cli_export_help_says_what_it_sends_and_that_it_is_idempotent():
    result = runner.invoke(app, ["export", "--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "Idempotent" in text and "mlflow" in text and "metrics.jsonl" in text
