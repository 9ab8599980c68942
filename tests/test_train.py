import json
import math
import os
import signal

import pytest
import torch

from softmaxlab import runs
from softmaxlab.config import load_config
from softmaxlab.errors import DivergedError, UserError
from softmaxlab.train import Hook, _timing, fit, lr_factor

from .conftest import TINY, tiny_config

EPOCH_KEYS = {
    *("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "epoch_seconds", "lr", "grad_norms"),
    "train_image_size",
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    return fit(tiny_config("name=tiny"), out)


def test_two_epochs_beat_chance_clearly(tiny_run):
    # 4 classes: chance is 0.25; colour alone gives 0.5, so more needs some shape too.
    assert tiny_run.summary["test"]["accuracy"] > 0.45
    assert tiny_run.history[-1]["train_loss"] < tiny_run.history[0]["train_loss"]


def test_the_default_recipe_learns(tmp_path):
    # The defaults (model, widths, optimiser, learning rate, schedule, batch size, augmentation),
    # with only the data and the number of epochs made small: 96 optimisation steps on 4,096
    # 10-class shapes images. Chance is 0.10; seeds 0-2 reached 0.53-0.73 validation accuracy.
    cfg = load_config(
        None,
        [
            *("data.train_size=4096", "data.val_size=500", "data.test_size=500", "train.epochs=3"),
            *("train.device=cpu", "diagnostics.enabled=false", "report.figures=false"),
        ],
    )
    result = fit(cfg, tmp_path / "defaults")
    assert result.history[-1]["val_acc"] > 0.35
    assert cfg.data.image_size is None and load_config(result.run_dir / "config.yaml").data.image_size == 32
    assert result.history[-1]["train_loss"] < 0.8 * result.history[0]["train_loss"]


def test_run_directory_files_and_keys(tiny_run):
    d = tiny_run.run_dir
    for f in ("config.yaml", "metrics.jsonl", "summary.json", "model.pt"):
        assert (d / f).is_file(), f
    assert (d / "figures").is_dir()
    records = runs.read_jsonl(d / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2]
    for r in records:
        assert set(r) >= EPOCH_KEYS
        assert 0 <= r["train_acc"] <= 1 and 0 <= r["val_acc"] <= 1 and r["epoch_seconds"] > 0
    summary = json.loads((d / "summary.json").read_text())
    assert summary["status"] == "finished"
    test = summary["test"]
    assert 0 <= test["accuracy"] <= 1 and test["nll"] > 0
    cm = torch.tensor(test["confusion_matrix"])
    assert cm.shape == (4, 4) and cm.sum() == 256
    assert test["accuracy"] == pytest.approx(cm.diag().sum().item() / 256)
    timing = summary["timing"]
    assert timing["mean_epoch_seconds"] > 0 and timing["train_images_per_second"] > 0
    # The whole run (data, model, validation, test) takes longer than its epochs' training.
    assert timing["wall_seconds"] > timing["total_train_seconds"] > 0
    env = summary["env"]
    assert {"python", "torch", "softmaxlab", "device", "seed"} <= set(env) and env["device"] == "cpu"


def test_rerun_from_written_config_reproduces_metrics(tiny_run, tmp_path):
    cfg = load_config(tiny_run.run_dir / "config.yaml")
    again = fit(cfg, tmp_path / "again")
    assert again.summary["test"]["confusion_matrix"] == tiny_run.summary["test"]["confusion_matrix"]
    assert again.summary["test"]["nll"] == pytest.approx(tiny_run.summary["test"]["nll"], rel=1e-5)
    for a, b in zip(again.history, tiny_run.history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)


def test_existing_run_is_refused_and_kept(tiny_run):
    before = (tiny_run.run_dir / "summary.json").read_text()
    with pytest.raises(UserError, match="already holds a finished run"):
        fit(tiny_config(), tiny_run.run_dir)
    assert (tiny_run.run_dir / "summary.json").read_text() == before


def test_softmax_and_log_softmax_agree(tmp_path):
    a = fit(tiny_config("train.epochs=1"), tmp_path / "a")
    b = fit(tiny_config("train.epochs=1", "head.name=log_softmax"), tmp_path / "b")
    assert a.summary["test"]["accuracy"] == pytest.approx(b.summary["test"]["accuracy"], abs=0.02)


def test_divergence_is_recorded_and_raised(tmp_path):
    cfg = tiny_config("train.lr=1e30", "train.schedule=constant", "train.epochs=1")
    with pytest.raises(DivergedError) as info:
        fit(cfg, tmp_path / "d")
    assert info.value.epoch == 1 and info.value.step >= 0
    summary = json.loads((tmp_path / "d" / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["diverged"]["epoch"] == 1
    assert info.value.run_dir == tmp_path / "d"


@pytest.mark.parametrize("schedule", ["onecycle", "cosine", "constant"])
def test_lr_schedules_are_pure_and_bounded(schedule):
    values = [lr_factor(s, 50, schedule, 0.2) for s in range(50)]
    assert values == [lr_factor(s, 50, schedule, 0.2) for s in range(50)]
    assert all(0 <= v <= 1 for v in values) and max(values) == pytest.approx(1.0)
    if schedule != "constant":
        assert values[-1] == pytest.approx(0.0, abs=1e-9) and values[0] < 0.2


def test_optimizers(tmp_path):
    for opt in ("adam", "adamw"):
        result = fit(tiny_config("train.epochs=1", f"train.optimizer={opt}", "train.lr=3e-3"), tmp_path / opt)
        assert result.summary["test"]["accuracy"] > 0.25


def test_non_finite_validation_loss_is_a_divergence(tmp_path, monkeypatch):
    import softmaxlab.train as train_module

    real = train_module.evaluate

    def nan_loss(*args, **kwargs):
        return {**real(*args, **kwargs), "loss": float("nan")}

    monkeypatch.setattr(train_module, "evaluate", nan_loss)
    with pytest.raises(DivergedError, match="non-finite validation loss"):
        fit(tiny_config("train.epochs=1"), tmp_path / "v")
    summary = json.loads((tmp_path / "v" / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["diverged"]["step"] == -1


def test_bfloat16_autocast_and_channels_last_train(tmp_path):
    result = fit(tiny_config("train.amp=bf16", "train.channels_last=true"), tmp_path / "bf16")
    assert result.summary["test"]["accuracy"] > 0.4
    assert all(math.isfinite(r["train_loss"]) for r in result.history)
    # The weights stay float32 and load into a plain model.
    payload = runs.load_weights(result.run_dir)
    assert all(v.dtype in (torch.float32, torch.int64) for v in payload["state_dict"].values())


def test_float16_needs_cuda(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA present: float16 is allowed")
    with pytest.raises(UserError, match="needs CUDA"):
        fit(tiny_config("train.amp=fp16"), tmp_path / "fp16")
    assert not (tmp_path / "fp16").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA paths: float16 + loss scaling, compile")
@pytest.mark.parametrize(
    "extra", [["train.amp=fp16"], ["train.amp=bf16", "train.channels_last=true"], ["train.compile=true"]]
)
def test_cuda_paths(tmp_path, extra):
    result = fit(tiny_config("train.device=cuda", *extra), tmp_path / "cuda")
    assert result.summary["env"]["device"].startswith("cuda")
    assert result.summary["test"]["accuracy"] > 0.4
    keys = set(runs.load_weights(result.run_dir)["state_dict"])
    assert not any(k.startswith("_orig_mod") for k in keys)  # compile keeps the plain names


def test_model_too_deep_for_the_images_writes_nothing(tmp_path):
    with pytest.raises(UserError, match="needs images of at least 64 px"):
        fit(tiny_config("data.image_size=32", "model.widths=[4,4,4,4,4,4]"), tmp_path / "deep")
    assert not (tmp_path / "deep").exists()


# --------------------------------------------------------------------------- checkpoint and resume

#: 4 steps per epoch, a checkpoint after every step, a head with state (Gumbel tau), and
#: progressive resizing (epoch 1 at 12 px, 2 and 3 at 16): the kill points below straddle the change.
RESUME = [
    "data.train_size=256",
    "data.val_size=64",
    "data.test_size=64",
    "train.epochs=3",
    "train.checkpoint_every=1",
    "train.low_res_size=12",
    "train.low_res_fraction=0.4",
    "head.name=gumbel",
    "head.tau_schedule=exponential",
    "diagnostics.probe_size=16",
]
_TIMING = ("epoch_seconds", "train_images_per_second")


def _outcome(run_dir):
    """What must not change on resume: test metrics, temperature, and each epoch's record but its timing."""
    summary = json.loads((run_dir / "summary.json").read_text())
    history = [{k: v for k, v in r.items() if k not in _TIMING} for r in runs.read_jsonl(run_dir / "metrics.jsonl")]
    return summary["test"], summary["temperature"], history


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _outcome(fit(tiny_config(*RESUME), tmp_path_factory.mktemp("whole") / "run").run_dir)
    finally:
        torch.set_num_threads(threads)


class _Killed(BaseException):
    pass


class _KillAt(Hook):
    """Stops the run at ``point``: ``step:N`` right after optimisation step N (before that
    step's checkpoint), ``checkpoint:N`` halfway through writing the checkpoint of step N."""

    def __init__(self, point):
        self.point = point

    def on_step_end(self, state):
        if self.point == f"step:{state.steps_done}":
            raise _Killed

    def on_checkpoint_write(self, steps_done):
        if self.point == f"checkpoint:{steps_done}":
            raise _Killed


def test_progressive_resizing_trains_the_first_epochs_on_smaller_images(uninterrupted):
    history = uninterrupted[2]
    assert [r["train_image_size"] for r in history] == [12, 16, 16]


def test_throughput_is_the_median_over_the_epochs_at_full_size():
    def epoch(size, images_per_second):
        return {"epoch_seconds": 2.0, "train_images_per_second": images_per_second, "train_image_size": size}

    # The fast 12 px epoch would make the median over all three 300 images/s.
    timing = _timing([epoch(12, 900.0), epoch(16, 100.0), epoch(16, 300.0)])
    assert timing == {"mean_epoch_seconds": 2.0, "total_train_seconds": 6.0, "train_images_per_second": 200.0}
    # Records written before train_image_size existed: every epoch counts.
    old = [{"epoch_seconds": 1.0, "train_images_per_second": v} for v in (900.0, 100.0, 300.0)]
    assert _timing(old)["train_images_per_second"] == 300.0


# step:4 = end of epoch 1 (before its checkpoint), step:5 = start of epoch 2, step:6 = its middle.
@pytest.mark.parametrize("point", ["step:4", "step:5", "step:6", "checkpoint:9"])
def test_interrupted_run_resumes_exactly(uninterrupted, tmp_path, point):
    torch.set_num_threads(1)
    cfg = tiny_config(*RESUME)
    with pytest.raises(_Killed):
        fit(cfg, tmp_path / "run", hooks=[_KillAt(point)])
    assert not runs.is_finished(tmp_path / "run") and (tmp_path / "run" / runs.CHECKPOINT).is_file()
    fit(cfg, tmp_path / "run", resume=True)
    assert _outcome(tmp_path / "run") == uninterrupted
    assert not (tmp_path / "run" / runs.CHECKPOINT).exists()  # finished: the weights are in model.pt


def test_sigkill_during_checkpoint_write_resumes_exactly(uninterrupted, tmp_path):
    import subprocess
    import sys

    script = (
        "import os, signal, sys, torch; torch.set_num_threads(1)\n"
        "from softmaxlab.config import load_config\n"
        "from softmaxlab.train import Hook, fit\n"
        "class Kill(Hook):\n"
        "    def on_checkpoint_write(self, steps_done):\n"
        "        if steps_done == 6:\n"
        "            os.kill(os.getpid(), signal.SIGKILL)\n"
        f"fit(load_config(None, {[*TINY, *RESUME]!r}), sys.argv[1], hooks=[Kill()])\n"
    )
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", script, str(run_dir)], capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert list(run_dir.glob(".checkpoint.pt.*.tmp"))  # the half-written checkpoint, ignored
    torch.set_num_threads(1)
    fit(tiny_config(*RESUME), run_dir, resume=True)
    assert _outcome(run_dir) == uninterrupted
    assert not list(run_dir.glob(".checkpoint.pt.*"))


def test_truncated_checkpoint_falls_back_to_the_previous_one(uninterrupted, tmp_path):
    torch.set_num_threads(1)
    with pytest.raises(_Killed):
        fit(tiny_config(*RESUME), tmp_path / "run", hooks=[_KillAt("step:7")])
    ckpt = tmp_path / "run" / runs.CHECKPOINT
    ckpt.write_bytes(ckpt.read_bytes()[:1000])  # as if the disk had lost the end of the file
    fit(tiny_config(*RESUME), tmp_path / "run", resume=True)
    assert _outcome(tmp_path / "run") == uninterrupted


@pytest.mark.parametrize("damage", ["half", "einval"])
def test_a_checkpoint_cut_in_half_or_unreadable_falls_back_to_the_previous_one(
    uninterrupted, tmp_path, monkeypatch, damage
):
    """Truncation shows as different loader errors depending on where the file ends (torch
    raised OSError Errno 22 for one): every one of them is a fallback, not a traceback."""
    torch.set_num_threads(1)
    with pytest.raises(_Killed):
        fit(tiny_config(*RESUME), tmp_path / "run", hooks=[_KillAt("step:6")])
    ckpt = tmp_path / "run" / runs.CHECKPOINT
    if damage == "half":
        ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    else:
        real, calls = torch.load, []

        def load(f, *args, **kwargs):
            calls.append(f)
            if len(calls) == 1:  # checkpoint.pt
                raise OSError(22, "Invalid argument")
            return real(f, *args, **kwargs)

        monkeypatch.setattr(torch, "load", load)
    assert runs.load_checkpoint(tmp_path / "run")["steps_done"] == 4  # checkpoint.prev.pt (.pt: step 5)
    monkeypatch.undo()
    if damage == "einval":
        ckpt.unlink()  # what the fallback read: the previous checkpoint alone
    fit(tiny_config(*RESUME), tmp_path / "run", resume=True)
    assert _outcome(tmp_path / "run") == uninterrupted


def test_a_divergence_mid_epoch_keeps_the_last_good_checkpoints(tmp_path):
    """With a checkpoint after every step, the steps after the first non-finite loss write
    none: both kept checkpoints hold finite weights from before it."""
    cfg = tiny_config("train.lr=500", "train.checkpoint_every=1", "model.batch_norm=false", "train.epochs=2")
    with pytest.raises(DivergedError) as info:
        fit(cfg, tmp_path / "d")
    bad = info.value.step
    assert info.value.epoch == 1 and 0 < bad < 15  # mid-epoch (16 steps), not at its first step
    newest, previous = (
        torch.load(tmp_path / "d" / n, weights_only=True) for n in (runs.CHECKPOINT, runs.CHECKPOINT_PREV)
    )
    assert (newest["steps_done"], previous["steps_done"]) == (bad, bad - 1)
    for checkpoint in (newest, previous):
        assert all(torch.isfinite(v).all() for v in checkpoint["model"].values())
    assert runs.load_checkpoint(tmp_path / "d")["steps_done"] == bad


@pytest.fixture(scope="module")
def killed(tmp_path_factory):
    """A run stopped at step 5 (of 12): config.yaml and checkpoints, no summary."""
    run_dir = tmp_path_factory.mktemp("killed") / "run"
    with pytest.raises(_Killed):
        fit(tiny_config(*RESUME), run_dir, hooks=[_KillAt("step:5")])
    return run_dir


@pytest.mark.parametrize(
    ("key", "value", "shown"),
    [
        ("train", ("lr", 0.3), "train.lr 0.1 -> 0.3"),
        ("train", ("epochs", 5), "train.epochs 3 -> 5"),
        ("head", ("name", "softmax"), "head.name 'gumbel' -> 'softmax'"),
    ],
)
def test_resume_refuses_a_config_yaml_edited_after_the_checkpoint(killed, tmp_path, key, value, shown):
    import shutil

    import yaml
    from typer.testing import CliRunner

    from softmaxlab.cli import app

    run_dir = shutil.copytree(killed, tmp_path / "run")
    raw = yaml.safe_load((run_dir / runs.CONFIG).read_text())
    raw[key][value[0]] = value[1]
    if key == "head":  # the gumbel head's own options go with it
        raw["head"] = {"name": "softmax"}
    (run_dir / runs.CONFIG).write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(app, ["resume", str(run_dir)])
    assert result.exit_code == 2, result.output
    assert "written under another config" in result.stderr and shown in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert (run_dir / runs.CHECKPOINT).is_file() and not runs.is_finished(run_dir)


def test_a_run_interrupted_under_an_earlier_version_resumes(killed, tmp_path):
    """Its checkpoint and config.yaml lack the options added since (model.bn_eps, the Gumbel
    head's evaluation rule), which take their defaults: that is no edit."""
    import shutil

    import yaml

    from softmaxlab.experiment import resume_experiment

    run_dir = shutil.copytree(killed, tmp_path / "run")
    raw = yaml.safe_load((run_dir / runs.CONFIG).read_text())
    for section, keys in (("model", ("bn_eps",)), ("head", ("eval_rule", "eval_samples", "eval_seed"))):
        for key in keys:
            del raw[section][key]
    (run_dir / runs.CONFIG).write_text(yaml.safe_dump(raw))
    for name in (runs.CHECKPOINT, runs.CHECKPOINT_PREV):
        checkpoint = torch.load(run_dir / name, weights_only=False)
        checkpoint["config"] = raw
        torch.save(checkpoint, run_dir / name)
    result = resume_experiment(run_dir)
    assert result.summary["status"] == "finished" and runs.is_finished(run_dir)


def test_resume_contract(tmp_path):
    cfg = tiny_config("train.epochs=1", "data.train_size=128")
    fresh = fit(cfg, tmp_path / "run", resume=True)  # no run yet: starts fresh
    again = fit(cfg, tmp_path / "run", resume=True)  # finished: returned as it is
    assert again.summary == fresh.summary and len(again.history) == 1
    with pytest.raises(UserError, match="another config"):
        fit(tiny_config("train.epochs=2", "data.train_size=128"), tmp_path / "run", resume=True)


def test_an_unset_image_size_is_written_out_and_its_run_resumes(tmp_path):
    # Unset = the size the data was loaded at: written into config.yaml (which predict and
    # evaluate read), and the same unset config resumes the run, unfinished or finished.
    cfg = tiny_config("train.epochs=1", "data.train_size=128", "data.image_size=null")
    assert cfg.data.image_size is None
    run = fit(cfg, tmp_path / "run").run_dir
    assert load_config(run / "config.yaml").data.image_size == 32
    (run / "summary.json").unlink()  # as if interrupted after its last checkpoint
    resumed = fit(cfg, run, resume=True)
    assert resumed.summary["status"] == "finished"
    assert fit(cfg, run, resume=True).summary == resumed.summary  # finished: returned as it is
    with pytest.raises(UserError, match=r"data\.image_size 32 -> 16"):
        fit(tiny_config("train.epochs=1", "data.train_size=128"), run, resume=True)


def test_malicious_checkpoint_is_refused_and_never_executed(tmp_path):
    run = fit(tiny_config("train.epochs=1", "data.train_size=128"), tmp_path / "run").run_dir
    (run / "summary.json").unlink()  # as if interrupted
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"format": runs.CHECKPOINT_FORMAT, "model": Evil()}, run / runs.CHECKPOINT)
    with pytest.raises(UserError, match="not loaded"):
        fit(tiny_config("train.epochs=1", "data.train_size=128"), run, resume=True)
    assert not marker.exists()


def test_a_model_that_cannot_take_the_images_is_a_one_line_user_error():
    from softmaxlab.train import check_forward

    class FixedSize(torch.nn.Module):  # as a timm ViT built for 224 px refuses 32 px images
        def forward(self, x):
            assert x.shape[-1] == 224, f"Input height ({x.shape[-1]}) doesn't match model (224)."
            return x

    with pytest.raises(UserError, match=r"fails on images of shape \(3, 32, 32\) \(AssertionError: Input height") as e:
        check_forward(FixedSize(), (3, 32, 32), torch.device("cpu"))
    assert "\n" not in str(e.value) and "model.kwargs" in str(e.value)


def test_eval_flip_averages_the_scores_of_each_image_and_its_mirror_image():
    from softmaxlab.data import Normalize, TensorLoader
    from softmaxlab.distributed import World
    from softmaxlab.models import build_model
    from softmaxlab.train import evaluate, flip_averaged

    torch.manual_seed(0)
    cfg = tiny_config()
    model = build_model(cfg, 3, 4).eval()
    images, y = torch.randint(0, 256, (40, 3, 16, 16), dtype=torch.uint8), torch.randint(0, 4, (40,))
    loader = TensorLoader(images, y, 16, Normalize([0.5] * 3, [0.25] * 3, torch.device("cpu")))
    x = torch.cat([xb for xb, _ in loader])  # the normalised images the model sees
    with torch.no_grad():
        averaged, single = flip_averaged(model, x)
        expected = (model(x) + model(x.flip(-1))) / 2
        assert torch.allclose(averaged, expected, atol=1e-6) and torch.allclose(single, model(x))
        assert not torch.allclose(averaged, single, atol=1e-4)  # a mirror image is another input
    plain = evaluate(model, loader, World(), keep_probs=True)
    flipped = evaluate(model, loader, World(), keep_probs=True, flip=True)
    assert "acc_single_view" not in plain
    assert flipped["acc_single_view"] == pytest.approx(plain["acc"])
    assert torch.allclose(flipped["probs"], model.head.probs(expected.detach()), atol=1e-6)
    assert flipped["acc"] == pytest.approx((flipped["probs"].argmax(1) == y).float().mean().item())
    assert flipped["loss"] == pytest.approx(model.head.loss(expected, y).item(), rel=1e-5)


def test_a_run_with_eval_flip_records_both_accuracies_each_epoch(tmp_path):
    result = fit(tiny_config("train.epochs=2", "train.eval_flip=true"), tmp_path / "run")
    for record in result.history:
        assert 0 <= record["val_acc_single_view"] <= 1 and 0 <= record["val_acc"] <= 1
    plain = fit(tiny_config("train.epochs=2"), tmp_path / "plain")
    assert "val_acc_single_view" not in plain.history[-1]
    # Training is untouched by the option: the same weights, so the single view is the plain run's accuracy.
    assert [r["val_acc_single_view"] for r in result.history] == pytest.approx([r["val_acc"] for r in plain.history])
    assert [r["train_loss"] for r in result.history] == [r["train_loss"] for r in plain.history]
