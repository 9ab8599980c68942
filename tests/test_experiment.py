"""One experiment: the training, then the feature maps, then the report (softmaxlab.experiment)."""

import json

import pytest

from softmaxlab import runs
from softmaxlab.errors import DivergedError, UserError
from softmaxlab.experiment import FEATURE_MAPS, resume_experiment, run_experiment
from softmaxlab.report.build import write_report
from softmaxlab.train import Hook, fit

from .conftest import tiny_config


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return run_experiment(tiny_config("name=tiny"), tmp_path_factory.mktemp("run"))


def test_an_experiment_ends_by_writing_the_report(tiny_run):
    d = tiny_run.run_dir
    assert tiny_run.report == d / "report.html" and (d / "report.md").is_file()
    html = tiny_run.report.read_text()
    assert '<td data-sort="head=softmax" class="wrap">head=softmax</td>' in html
    assert "report.figures: false" in html  # the tiny config leaves the figures to `softmaxlab report`
    write_report(d, "html")  # the same run's report with its figures, from its files only
    html = tiny_run.report.read_text()
    assert "report.figures: false" not in html and html.count('<img src="data:image/png;base64,') >= 4


def test_the_feature_maps_are_drawn_from_what_the_training_computed(tiny_run, tmp_path):
    assert (tiny_run.run_dir / FEATURE_MAPS).stat().st_size > 0
    assert [name for name, _ in tiny_run.feature_maps] == ["relu", "relu"]
    assert [tuple(m.shape) for _, m in tiny_run.feature_maps] == [(8, 8, 8), (16, 4, 4)]  # widths 8-16, 16 px
    # The training alone draws nothing and writes no report.
    bare = fit(tiny_config("train.epochs=1"), tmp_path / "bare")
    assert bare.report is None and bare.feature_maps is not None
    assert not (bare.run_dir / FEATURE_MAPS).exists() and not (bare.run_dir / "report.html").exists()


def test_a_diverged_run_gets_its_report(tmp_path):
    cfg = tiny_config("train.lr=1e30", "train.schedule=constant", "train.epochs=1")
    with pytest.raises(DivergedError) as info:
        run_experiment(cfg, tmp_path / "d")
    assert info.value.epoch == 1 and info.value.run_dir == tmp_path / "d"
    assert json.loads((tmp_path / "d" / "summary.json").read_text())["status"] == "diverged"
    assert '<tr class="diverged">' in (tmp_path / "d" / "report.html").read_text()
    assert not (tmp_path / "d" / FEATURE_MAPS).exists()


def test_a_finished_run_is_returned_with_the_report_it_has(tiny_run):
    before = tiny_run.report.stat().st_mtime_ns
    again = run_experiment(tiny_config("name=tiny"), tiny_run.run_dir, resume=True)
    assert again.resumed_finished and again.summary == json.loads((tiny_run.run_dir / "summary.json").read_text())
    assert again.report == tiny_run.report and tiny_run.report.stat().st_mtime_ns == before  # not rewritten


class _Stop(BaseException):
    pass


class _StopAfterFirstEpoch(Hook):
    def on_epoch_end(self, record):
        raise _Stop


def test_resume_experiment_continues_a_stopped_run_with_its_own_config(tmp_path):
    with pytest.raises(_Stop):
        run_experiment(tiny_config(), tmp_path / "run", hooks=[_StopAfterFirstEpoch()])
    assert not runs.is_finished(tmp_path / "run") and (tmp_path / "run" / runs.CHECKPOINT).is_file()
    result = resume_experiment(tmp_path / "run")
    assert [r["epoch"] for r in result.history] == [1, 2] and result.report == tmp_path / "run" / "report.html"
    with pytest.raises(UserError, match="already holds a finished run; nothing to resume"):
        resume_experiment(tmp_path / "run")
    with pytest.raises(UserError, match=r"holds no config\.yaml"):
        resume_experiment(tmp_path)


def test_hooks_see_every_step_and_epoch_in_order(tmp_path):
    seen = []

    class Record(Hook):
        def on_fit_start(self, label, epochs, steps_per_epoch):
            seen.append(("start", label, epochs, steps_per_epoch))

        def on_step_end(self, state):
            seen.append(("step", state.steps_done))

        def on_epoch_end(self, record):
            seen.append(("epoch", record["epoch"]))

        def on_fit_end(self):
            seen.append(("end",))

    fit(tiny_config("name=h", "data.train_size=128"), tmp_path / "h", hooks=[Record()])
    # 128 images in batches of 64: 2 steps per epoch, 2 epochs.
    assert seen == [
        ("start", "h", 2, 2),
        *[("step", 1), ("step", 2), ("epoch", 1)],
        *[("step", 3), ("step", 4), ("epoch", 2)],
        ("end",),
    ]


def test_a_diverged_run_returned_again_keeps_its_report(tmp_path):
    cfg = tiny_config("train.lr=1e30", "train.schedule=constant", "train.epochs=1")
    with pytest.raises(DivergedError):
        run_experiment(cfg, tmp_path / "d")
    before = (tmp_path / "d" / "report.html").stat().st_mtime_ns
    with pytest.raises(DivergedError) as again:
        run_experiment(cfg, tmp_path / "d", resume=True)
    assert again.value.epoch == 1 and (tmp_path / "d" / "report.html").stat().st_mtime_ns == before


def test_a_finished_run_without_its_report_gets_one(tiny_run, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_run.run_dir, copy)
    (copy / "report.html").unlink()  # as if stopped between summary.json and the report
    again = run_experiment(tiny_config("name=tiny"), copy, resume=True)
    assert again.resumed_finished and again.report == copy / "report.html" and again.report.is_file()
