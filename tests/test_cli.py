"""The command line: exit codes and one-line messages for bad input, files for good input."""

import json

import pytest
from typer.testing import CliRunner

from softmaxlab.cli import app

from .conftest import TINY

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args))


def sets(*overrides: str) -> list[str]:
    return [a for o in (*TINY, *overrides) for a in ("--set", o)]


def assert_bad_input(result, *fragments: str):
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    for f in fragments:
        assert f in lines[0], lines[0]


def test_run_writes_a_run_directory(tmp_path):
    out = tmp_path / "run"
    result = invoke("run", *sets("train.epochs=1"), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.stdout.replace("\n", "")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["epochs"] == 1
    assert f"report {out / 'report.html'}" in result.stdout.replace("\n", "")
    # `report` rebuilds it from the files: Markdown only here, so the HTML stays as the run wrote it
    (out / "report.md").unlink()
    before = (out / "report.html").stat().st_mtime_ns
    result = invoke("report", str(out), "--format", "md")
    assert result.exit_code == 0, result.output
    assert f"wrote {out / 'report.md'}" in result.stdout.replace("\n", "")
    assert (out / "report.md").read_text().startswith("# softmaxlab report: ")
    assert (out / "report.html").stat().st_mtime_ns == before


def test_report_bad_input_exits_2(tmp_path):
    assert_bad_input(invoke("report", str(tmp_path / "none")), "does not exist")
    assert_bad_input(invoke("report", str(tmp_path)), "holds no runs")
    (tmp_path / "config.yaml").write_text("name: x\n")
    assert_bad_input(invoke("report", str(tmp_path), "--format", "pdf"), "unknown report format")


def test_run_from_config_file(tmp_path):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("train:\n  epochs: 1\nhead:\n  name: log_softmax\n")
    result = invoke("run", str(cfg), *sets("train.epochs=1"), "--out", str(tmp_path / "r"))
    assert result.exit_code == 0, result.output
    assert "name: log_softmax" in (tmp_path / "r" / "config.yaml").read_text()


def test_run_set_of_another_head_drops_the_files_head_options_with_a_note(tmp_path):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("head:\n  name: gumbel\n  tau: 0.5\n  eval_rule: plain\n")
    result = invoke("run", str(cfg), *sets("train.epochs=1", "head.name=log_softmax"), "--out", str(tmp_path / "r"))
    assert result.exit_code == 0, result.output
    note = f"note: head.tau, head.eval_rule from {cfg} do not apply to head.name=log_softmax and were dropped"
    assert result.stdout.startswith(note), result.stdout
    assert "tau" not in (tmp_path / "r" / "config.yaml").read_text()
    # Without another component on the command line, no note.
    result = invoke("run", str(cfg), *sets("train.epochs=1", "head.tau=1"), "--out", str(tmp_path / "g"))
    assert result.exit_code == 0 and "note:" not in result.stdout, result.output


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        (["head.name=sofmax"], ["unknown head 'sofmax'", "valid: softmax, log_softmax"]),
        (["model.name=vgg"], ["unknown model 'vgg'", "simple_cnn"]),
        (["data.name=mnist"], ["unknown dataset 'mnist'", "shapes"]),
        (["train.epoch=3"], ["unknown config key 'train.epoch'", "did you mean 'train.epochs'"]),
        (["train.epochs=abc"], ["'train.epochs'", "integer"]),
        (["train.epochs=0"], ["'train.epochs'", "greater than or equal to 1"]),
        (["train.epochs=-1"], ["'train.epochs'"]),
        (["train.batch_size=0"], ["'train.batch_size'"]),
    ],
)
def test_bad_overrides_exit_2_and_write_nothing(tmp_path, overrides, fragments):
    out = tmp_path / "run"
    result = invoke("run", *sets(*overrides), "--out", str(out))
    assert_bad_input(result, *fragments)
    assert not out.exists()


def test_missing_and_non_yaml_config(tmp_path):
    assert_bad_input(invoke("run", str(tmp_path / "none.yaml")), "does not exist")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {epochs: 3\n")
    assert_bad_input(invoke("run", str(bad), "--out", str(tmp_path / "r")), "not valid YAML")
    assert not (tmp_path / "r").exists()


def test_finished_run_is_not_overwritten(tmp_path):
    out = tmp_path / "run"
    assert invoke("run", *sets("train.epochs=1"), "--out", str(out)).exit_code == 0
    before = (out / "summary.json").read_bytes()
    assert_bad_input(
        invoke("run", *sets("train.epochs=1"), "--out", str(out)), "already holds a finished run", "--overwrite"
    )
    assert (out / "summary.json").read_bytes() == before
    again = invoke("run", *sets("train.epochs=1", "train.seed=5"), "--out", str(out), "--overwrite")
    assert again.exit_code == 0, again.output
    assert json.loads((out / "summary.json").read_text())["env"]["seed"] == 5


def test_diverged_run_exits_3(tmp_path):
    result = invoke(
        "run", *sets("train.epochs=1", "train.lr=1e30", "train.schedule=constant"), "--out", str(tmp_path / "d")
    )
    assert result.exit_code == 3, result.output
    assert "diverged" in result.stderr and "Traceback" not in result.output
    assert json.loads((tmp_path / "d" / "summary.json").read_text())["status"] == "diverged"


@pytest.mark.parametrize("what", ["heads", "activations", "models", "datasets"])
def test_list_is_generated_from_the_registry(what):
    from softmaxlab.activations import ACTIVATIONS
    from softmaxlab.data import DATASETS
    from softmaxlab.heads import HEADS
    from softmaxlab.models import MODELS

    registry = {"heads": HEADS, "activations": ACTIVATIONS, "models": MODELS, "datasets": DATASETS}[what]
    result = invoke("list", what)
    assert result.exit_code == 0
    for name in registry:
        assert name in result.stdout
        for option in registry.options(name).model_fields:  # each component's own config keys
            assert option in result.stdout


def test_list_unknown_kind():
    assert_bad_input(invoke("list", "optimizers"), "cannot list 'optimizers'", "heads")


def test_demo_refuses_existing_demo(tmp_path):
    (tmp_path / "demo.md").write_text("old")
    assert_bad_input(invoke("demo", "--out", str(tmp_path)), "already holds a demo")
    assert (tmp_path / "demo.md").read_text() == "old"


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("vis") / "run"
    result = invoke(
        "run", *sets("train.epochs=1", "model.activation=softmax_hw", "model.softmax_blocks=[1]"), "--out", str(out)
    )
    assert result.exit_code == 0, result.output
    return out


def test_visualize_writes_a_png(trained_run, tmp_path):
    from PIL import Image

    image = tmp_path / "photo.jpg"
    Image.new("RGB", (40, 30), (10, 200, 30)).save(image)
    result = invoke("visualize", str(trained_run), str(image), "--channels", "4")
    default = trained_run / "figures" / "feature_maps-photo.png"
    assert result.exit_code == 0, result.output
    assert default.name in result.stdout.replace("\n", "")
    with Image.open(default) as png:  # 4 panels wide, 2 blocks of one row each
        assert png.format == "PNG" and png.size == (480, 320)
    out = tmp_path / "maps.png"
    assert invoke("visualize", str(trained_run), str(image), "--out", str(out)).exit_code == 0
    with Image.open(out) as png:  # rows of 8 panels: block 0 has 8 channels (1 row), block 1 16 (2 rows)
        assert png.size == (960, 3 * 120 + 2 * 40)


def test_visualize_bad_inputs_exit_2(trained_run, tmp_path):
    assert_bad_input(invoke("visualize", str(trained_run), str(tmp_path / "none.png")), "does not exist")
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    assert_bad_input(invoke("visualize", str(trained_run), str(bad)), "cannot read", "as an image")
    assert_bad_input(invoke("visualize", str(tmp_path), str(bad)), "model.pt", "does not exist")


def test_evaluate_writes_json_and_prints_a_table(trained_run, tmp_path):
    out = tmp_path / "eval.json"
    result = invoke("evaluate", str(trained_run), "--data", "shapes", "--split", "val", "--out", str(out))
    assert result.exit_code == 0, result.output
    for fragment in ("after temperature", "f1_macro", "ece", "entropy", f"wrote {out}"):
        assert fragment in result.stdout.replace("\n", ""), fragment
    evaluation = json.loads(out.read_text())
    summary = json.loads((trained_run / "summary.json").read_text())
    assert evaluation["split"] == "val" and evaluation["temperature"] == summary["temperature"]
    assert set(evaluation["metrics"]) == set(summary["test"])  # the same keys as summary.json's test section
    assert evaluation["metrics"]["accuracy"] == pytest.approx(summary["val"]["accuracy"])


def test_evaluate_on_other_class_names_exits_2(trained_run, tmp_path):
    import numpy as np

    path = tmp_path / "abc.npz"
    x = np.random.default_rng(0).integers(0, 256, (60, 16, 16, 3), dtype=np.uint8)
    np.savez(path, x=x, y=np.arange(60) % 3, classes=np.array(["ant", "bee", "cat"]))
    result = invoke("evaluate", str(trained_run), "--data", f"npz:{path}", "--out", str(tmp_path / "e.json"))
    assert_bad_input(result, "class names", "3 classes, the run 4", "not in the run 'ant', 'bee', 'cat'")
    assert not (tmp_path / "e.json").exists()
    assert_bad_input(invoke("evaluate", str(trained_run), "--data", "mnist"), "unknown dataset spec 'mnist'")


def test_predict_prints_top_k(trained_run, tmp_path):
    from PIL import Image

    image = tmp_path / "photo.jpg"
    Image.new("RGB", (40, 30), (10, 200, 30)).save(image)
    result = invoke("predict", str(trained_run), str(image), "--top-k", "2")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "after temperature scaling (T = " in lines[0] and lines[1] == str(image)
    assert [line.split()[0] for line in lines[2:]] == ["1.", "2."]
    as_json = invoke("predict", str(trained_run), str(image), str(image), "--json")
    assert as_json.exit_code == 0, as_json.output
    predictions = json.loads(as_json.stdout)["predictions"]
    assert len(predictions) == 2 and len(predictions[0]["top"]) == 4  # --top-k 5 capped at 4 classes
    assert predictions[0]["top"][0]["probability"] == pytest.approx(float(lines[2].split()[-1]), abs=1e-4)


def test_predict_bad_inputs_exit_2(trained_run, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    assert_bad_input(invoke("predict", str(trained_run), str(bad)), "cannot read", "as an image")
    assert_bad_input(invoke("predict", str(tmp_path), str(bad)), "model.pt", "does not exist")
    assert_bad_input(invoke("predict", str(trained_run), str(bad), "--top-k", "0"), "--top-k must be at least 1")


def test_run_with_a_dataset_spec(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    path = tmp_path / "arrays.npz"
    np.savez(path, x=rng.integers(0, 256, (120, 16, 16, 3), dtype=np.uint8), y=np.arange(120) % 3)
    out = tmp_path / "r"
    plain = ["data.image_size=16", "model.widths=[8,16]", "train.epochs=1", "train.batch_size=32", "train.device=cpu"]
    args = [a for o in plain for a in ("--set", o)]
    result = invoke("run", "--data", f"npz:{path}", *args, "--out", str(out))
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"] == "npz" and len(summary["classes"]) == 3
    assert_bad_input(invoke("run", "--data", "mnist", "--out", str(tmp_path / "x")), "unknown dataset spec 'mnist'")
    # A shapes-only key with another dataset is refused, not silently ignored.
    ignored = invoke("run", "--data", f"npz:{path}", "--set", "data.num_classes=5", "--out", str(tmp_path / "y"))
    assert_bad_input(ignored, "'data.num_classes'", "applies to shapes only")


def test_warnings_are_one_line(tmp_path):
    result = invoke("run", *sets("train.epochs=1", "head.name=double_softmax"), "--out", str(tmp_path / "d"))
    assert result.exit_code == 0, result.output
    warning = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "double-softmax pitfall" in warning[0]
    assert ".py:" not in result.stderr  # no source file and line


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["run", "--epochs", "3"], "No such option: --epochs; see 'softmaxlab run --help'"),
        (["list"], "Missing argument"),
        (["nope"], "No such command 'nope'"),
        (["run", "--set", "train.epochs=0"], "'train.epochs'"),
    ],
)
def test_console_script_usage_errors_are_one_line(capsys, argv, fragment):
    from softmaxlab.cli import main

    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0], err


def test_console_script_success_exits_0(capsys):
    from softmaxlab.cli import main

    with pytest.raises(SystemExit) as info:
        main(["list", "models"])
    assert info.value.code == 0 and "resnet12" in capsys.readouterr().out


def test_resume_continues_an_interrupted_run(tmp_path):
    out = tmp_path / "run"
    assert invoke("run", *sets("train.epochs=2", "data.train_size=128"), "--out", str(out)).exit_code == 0
    whole = json.loads((out / "summary.json").read_text())["test"]
    (out / "summary.json").unlink()  # as if killed after the last epoch's checkpoint
    from softmaxlab import runs

    assert not (out / runs.CHECKPOINT).exists()  # a finished run keeps no checkpoint: start over from config.yaml
    result = invoke("resume", str(out))
    assert result.exit_code == 0, result.output
    assert json.loads((out / "summary.json").read_text())["test"] == whole
    assert_bad_input(invoke("resume", str(out)), "already holds a finished run")
    assert_bad_input(invoke("resume", str(tmp_path)), "no config.yaml")


def test_resume_refuses_a_malicious_checkpoint(tmp_path):
    import os

    import torch

    from softmaxlab import runs

    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("train:\n  epochs: 1\n")
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"format": runs.CHECKPOINT_FORMAT, "model": Evil()}, out / runs.CHECKPOINT)
    assert_bad_input(invoke("resume", str(out)), "not loaded")
    assert not marker.exists()


def test_an_interrupt_exits_130_with_a_resume_hint_where_something_resumes(tmp_path, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("softmaxlab.train._train_epochs", interrupt)  # after the run directory is written
    monkeypatch.setattr("softmaxlab.models.backbone_parameters", interrupt)
    out = tmp_path / "my run"
    run = invoke("run", *sets(), "--out", str(out))
    listing = invoke("list", "models")
    assert run.exit_code == listing.exit_code == 130
    assert run.stderr.strip().splitlines()[-1] == (
        f"interrupted: softmaxlab resume '{out}' continues from the last checkpoint"  # the real path, quoted
    )
    assert listing.stderr.strip() == "interrupted"  # nothing to continue: no hint
    monkeypatch.setattr("softmaxlab.train.fit", interrupt)  # before anything is written
    early = invoke("run", *sets(), "--out", str(tmp_path / "other"))
    assert early.stderr.strip() == "interrupted: nothing to resume was written yet; run the same command again"


def test_flags_are_shown_as_flags_and_a_value_after_one_is_explained():
    for command in ("run", "demo", "sweep", "predict", "lint", "evaluate"):
        shown = invoke(command, "--help")
        assert shown.exit_code == 0 and "<bool>" not in shown.output, command
    assert "--overwrite" in invoke("run", "--help").output
    assert_bad_input(invoke("run", "--overwrite", "true"), "flags such as --overwrite take no value")
