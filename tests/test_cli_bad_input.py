"""The bad-input corpus: every way a config, a dataset or a run directory can be wrong.

Each case runs one command through the CLI and must end with exit code 2, exactly one line
on stderr that names the problem, no traceback, and every file that existed before it
(configs, data, run directories) byte-for-byte unchanged, with nothing new written.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import pickle
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from softmaxlab import runs
from softmaxlab.cli import app
from softmaxlab.config import validate_config
from softmaxlab.errors import UserError
from softmaxlab.train import Hook, fit

from .conftest import TINY

runner = CliRunner()

#: A 1-epoch tiny run on the embedded data: the run directory every run-directory case copies.
RUN_SETS = [*TINY, "train.epochs=1", "data.train_size=128", "data.val_size=64", "data.test_size=64"]


#: The same minus the options of the embedded data, for runs on other datasets.
DATA_SETS = [s for s in RUN_SETS if not s.startswith(("data.num_classes", "data.train_size", "data.val", "data.test"))]


def sets(*overrides: str) -> list[str]:
    return [a for o in (*RUN_SETS, *overrides) for a in ("--set", o)]


def data_sets(*overrides: str) -> list[str]:
    return [a for o in (*DATA_SETS, *overrides) for a in ("--set", o)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trained") / "run"
    result = runner.invoke(app, ["run", *sets(), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


@dataclass
class Ctx:
    """What a case may use: its own folder and a fresh copy of the trained run in it."""

    tmp: Path
    trained: Path

    def run(self) -> Path:
        copy = self.tmp / "run"
        if not copy.exists():
            shutil.copytree(self.trained, copy)
        return copy

    def write(self, name: str, text: str) -> Path:
        path = self.tmp / name
        path.write_text(text, encoding="utf-8")
        return path

    def files(self, name: str, files: dict[str, str]) -> Path:
        """A folder ``name`` holding ``files`` (name -> text)."""
        path = self.tmp / name
        path.mkdir()
        for file, text in files.items():
            (path / file).write_text(text, encoding="utf-8")
        return path

    def npz(self, name: str = "d.npz", n: int = 40, **arrays: np.ndarray) -> Path:
        rng = np.random.default_rng(0)
        data = {"x": rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8), "y": np.arange(n) % 4}
        data.update(arrays)
        path = self.tmp / name
        np.savez(path, **{k: v for k, v in data.items() if v is not None})
        return path

    def folder(self, classes: tuple[str, ...] = ("a", "b"), per_class: int = 4) -> Path:
        from PIL import Image

        root = self.tmp / "images"
        for c in classes:
            (root / c).mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (20, 20), (i * 40, 100, 50)).save(root / c / f"{i}.jpg")
        return root


def npz_run(ctx: Ctx, path: Path, *extra: str) -> list[str]:
    return ["run", *data_sets("data.name=npz", f"data.root={path}", *extra), "--out", str(ctx.tmp / "out")]


def malicious(ctx: Ctx, target: Path) -> None:
    """A checkpoint whose unpickling would create ``ctx.tmp / 'pwned'``."""
    import os

    marker = ctx.tmp / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"format": runs.CHECKPOINT_FORMAT, "model": Evil()}, target)


def interrupted(ctx: Ctx) -> Path:
    """The trained run as if killed after writing its config: no summary, no weights."""
    run = ctx.run()
    for name in (runs.SUMMARY, runs.WEIGHTS):
        (run / name).unlink()
    return run


def cifar_with_foreign_pickle(ctx: Ctx) -> Path:
    folder = ctx.tmp / "cifar" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        (folder / name).write_bytes(pickle.dumps({"data": "not images"}))
    return ctx.tmp / "cifar"


def sweep_file(ctx: Ctx, sweep: object, name: str = "s.yaml") -> Path:
    from softmaxlab.config import apply_overrides

    raw = apply_overrides({}, RUN_SETS)
    if sweep is not None:
        raw["sweep"] = sweep
    return ctx.write(name, yaml.safe_dump(raw))


def changed_sweep(ctx: Ctx) -> list[str]:
    """A sweep directory written by one base config, then the same command with another base."""
    out = ctx.tmp / "sw"
    first = sweep_file(ctx, {"grid": {"train.seed": [0]}}, "a.yaml")
    assert runner.invoke(app, ["sweep", str(first), "--out", str(out), "--dry-run"]).exit_code == 0
    from softmaxlab import sweep as sweep_mod

    base, spec = sweep_mod.load_sweep(first)
    sweep_mod.prepare_sweep_dir(out, base, spec)
    raw = yaml.safe_load(first.read_text())
    raw["train"]["lr"] = 0.2
    second = ctx.write("b.yaml", yaml.safe_dump(raw))
    return ["sweep", str(second), "--out", str(out)]


def shrunk_sweep(ctx: Ctx) -> list[str]:
    """A sweep directory holding run seed-0 (started), then the same base with a grid without it."""
    out = ctx.tmp / "sw"
    first = sweep_file(ctx, {"grid": {"train.seed": [0, 1]}}, "a.yaml")
    from softmaxlab import sweep as sweep_mod

    base, spec = sweep_mod.load_sweep(first)
    sweep_mod.prepare_sweep_dir(out, base, spec)
    (out / sweep_mod.RUNS_DIR / "seed-0").mkdir(parents=True)
    return ["sweep", str(sweep_file(ctx, {"grid": {"train.seed": [1]}}, "b.yaml")), "--out", str(out)]


#: Progressive resizing with its first epoch (of 2) at 8 px.
LOW_RES_8 = ("train.low_res_size=8", "train.low_res_fraction=0.5", "train.epochs=2")

Case = tuple[str, Callable[[Ctx], list[str]], str]

CASES: list[Case] = [
    # --- configs --------------------------------------------------------------------------
    ("unknown key", lambda c: ["run", *sets("train.epoch=3")], "did you mean 'train.epochs'"),
    ("unknown section", lambda c: ["run", *sets("optim.lr=3")], "unknown config key 'optim'"),
    ("wrong type", lambda c: ["run", *sets("train.epochs=abc")], "'train.epochs'"),
    ("list for a number", lambda c: ["run", *sets("train.lr=[1,2]")], "'train.lr'"),
    ("gumbel tau 0", lambda c: ["run", *sets("head.name=gumbel", "head.tau=0")], "'head.tau'"),
    ("gumbel tau negative", lambda c: ["run", *sets("head.name=gumbel", "head.tau=-1")], "'head.tau'"),
    ("val_fraction 1", lambda c: ["run", *sets("data.val_fraction=1")], "'data.val_fraction'"),
    ("temperature 0", lambda c: ["run", *sets("head.name=temperature", "head.temperature=0")], "'head.temperature'"),
    ("option of another head", lambda c: ["run", *sets("head.tau=2")], "applies to head.name=gumbel only"),
    ("unknown head", lambda c: ["run", *sets("head.name=sofmax")], "unknown head 'sofmax'"),
    ("unknown activation", lambda c: ["run", *sets("model.activation=softmax_x")], "softmax_x"),
    ("unknown model", lambda c: ["run", *sets("model.name=vgg")], "unknown model 'vgg'"),
    (
        "hierarchical on 2 classes",
        lambda c: ["run", *sets("head.name=hierarchical", "data.num_classes=2")],
        "at least 2 groups",
    ),
    ("adaptive cutoffs past K", lambda c: ["run", *sets("head.name=adaptive", "head.cutoffs=[2,9]")], "head.cutoffs"),
    ("softmax block out of range", lambda c: ["run", *sets("model.softmax_blocks=[7]")], "softmax_blocks"),
    ("fp16 on the CPU", lambda c: ["run", *sets("train.amp=fp16")], "fp16"),
    ("low-res size below 8", lambda c: ["run", *sets("train.low_res_size=4", *LOW_RES_8[1:])], "'train.low_res_size'"),
    ("low-res fraction 1", lambda c: ["run", *sets("train.low_res_fraction=1")], "'train.low_res_fraction'"),
    ("low-res fraction of no epoch", lambda c: ["run", *sets("train.low_res_fraction=0.1", "train.epochs=8")], "0.125"),
    ("progressive resizing in 1 epoch", lambda c: ["run", *sets("train.low_res_fraction=0.5")], "epochs >= 2"),
    ("low-res size without progressive resizing", lambda c: ["run", *sets("train.low_res_size=12")], "> 0 only"),
    (
        "low-res images too small for the model",  # 4 blocks need 16 px; the first epochs would train at 8
        lambda c: ["run", *sets("model.widths=[8,8,8,8]", *LOW_RES_8)],
        "raise train.low_res_size",
    ),
    ("unsafe run name", lambda c: ["run", *sets("name=a/b")], "'name'"),
    ("override without =", lambda c: ["run", "--set", "train.epochs"], "train.epochs"),
    ("missing config file", lambda c: ["run", str(c.tmp / "none.yaml")], "does not exist"),
    ("config not YAML", lambda c: ["run", str(c.write("bad.yaml", "train: {epochs: 3\n"))], "not valid YAML"),
    ("config a list", lambda c: ["run", str(c.write("list.yaml", "- 1\n- 2\n"))], "list.yaml"),
    # --- data -----------------------------------------------------------------------------
    ("npz missing", lambda c: npz_run(c, c.tmp / "none.npz"), "does not exist"),
    ("npz empty file", lambda c: npz_run(c, c.write("e.npz", "")), "not a readable .npz"),
    ("npz corrupt", lambda c: npz_run(c, c.write("c.npz", "PK\x03\x04 garbage")), "not a readable .npz"),
    (
        "npz mismatched arrays",
        lambda c: npz_run(c, c.npz(y=np.arange(39) % 4)),
        "labels of shape (40,), got int64 (39,)",
    ),
    (
        "npz NaN pixels",
        lambda c: npz_run(c, c.npz(x=nan_images())),
        "NaN or infinite pixels in 1 image(s), the first at index 7",
    ),
    ("npz float pixels out of range", lambda c: npz_run(c, c.npz(x=np.full((40, 16, 16, 3), -3.0))), "[-3, -3]"),
    ("npz int16 pixels", lambda c: npz_run(c, c.npz(x=np.zeros((40, 16, 16, 3), np.int16))), "int16"),
    ("npz without labels", lambda c: npz_run(c, c.npz(y=None)), "no array 'y'"),
    ("npz one class", lambda c: npz_run(c, c.npz(y=np.zeros(40, np.int64))), "single class"),
    ("npz no images", lambda c: npz_run(c, c.npz(n=0)), "no images"),
    ("npz no float images", lambda c: npz_run(c, c.npz(n=0, x=np.zeros((0, 16, 16, 3), np.float32))), "no images"),
    ("npz negative labels", lambda c: npz_run(c, c.npz(y=np.arange(40) % 4 - 1)), "labels outside 0..2"),
    (
        "image folder missing",
        lambda c: [
            "run",
            *data_sets("data.name=imagefolder", f"data.root={c.tmp / 'nowhere'}"),
            "--out",
            str(c.tmp / "o"),
        ],
        "nowhere",
    ),
    (
        "image folder empty",
        # The run directory outside the data: it is created (to hold its lock) before the data is read.
        lambda c: ["run", *data_sets("data.name=imagefolder", f"data.root={c.tmp}"), "--out", str(c.tmp.parent / "o")],
        "no class folders",
    ),
    (
        "image folder with a corrupt JPEG",
        lambda c: [
            "run",
            *data_sets("data.name=imagefolder", f"data.root={corrupt_jpeg(c)}"),
            "--out",
            str(c.tmp / "o"),
        ],
        "skip_corrupt",
    ),
    (
        "cifar10 not downloaded",
        lambda c: ["run", *data_sets("data.name=cifar10", f"data.root={c.tmp}"), "--out", str(c.tmp / "o")],
        "download",
    ),
    (
        "cifar10 batches of another format",
        lambda c: [
            "run",
            *data_sets("data.name=cifar10", f"data.root={cifar_with_foreign_pickle(c)}"),
            "--out",
            str(c.tmp),
        ],
        "no list of class names",
    ),
    ("unknown dataset spec", lambda c: ["evaluate", str(c.run()), "--data", "mnist"], "unknown dataset spec"),
    ("spec without path", lambda c: ["evaluate", str(c.run()), "--data", "npz"], "needs a path"),
    # --- run directories ------------------------------------------------------------------
    ("resume a missing directory", lambda c: ["resume", str(c.tmp / "gone")], "gone"),
    ("resume without config.yaml", lambda c: ["resume", str(c.tmp)], "no config.yaml"),
    ("resume a finished run", lambda c: ["resume", str(c.run())], "already holds a finished run"),
    ("resume a foreign pickle", lambda c: ["resume", str(foreign_checkpoint(c))], "not loaded"),
    ("resume truncated checkpoints", lambda c: ["resume", str(truncated_checkpoints(c))], "cannot be read"),
    ("run over a finished run", lambda c: ["run", *sets(), "--out", str(c.run())], "--overwrite"),
    (
        "run continues with another config",
        lambda c: ["run", *sets("train.lr=0.3"), "--out", str(interrupted(c))],
        "train.lr 0.1 -> 0.3",
    ),
    ("run output is a file", lambda c: ["run", *sets(), "--out", str(c.write("f", "x"))], "is a file"),
    ("evaluate without weights", lambda c: ["evaluate", str(no_weights(c)), "--data", "shapes"], "model.pt"),
    (
        "evaluate wrong architecture",
        lambda c: ["evaluate", str(wrong_architecture(c)), "--data", "shapes"],
        "shapes differ",
    ),
    (
        "evaluate foreign pickle weights",
        lambda c: ["evaluate", str(foreign_weights(c)), "--data", "shapes"],
        "was not loaded",
    ),
    ("predict a non-image", lambda c: ["predict", str(c.run()), str(c.write("x.jpg", "text"))], "as an image"),
    ("predict a missing image", lambda c: ["predict", str(c.run()), str(c.tmp / "none.png")], "none.png"),
    ("report of no runs", lambda c: ["report", str(c.tmp)], "holds no runs"),
    ("sweep without a sweep section", lambda c: ["sweep", str(sweep_file(c, None))], "no 'sweep:' section"),
    ("sweep over an unknown key", lambda c: ["sweep", str(sweep_file(c, {"grid": {"head.tua": [1]}}))], "head.tua"),
    ("sweep with another base", changed_sweep, "--overwrite"),
    ("sweep grid without a run of its directory", shrunk_sweep, "its run 'seed-0' is not in this grid"),
    ("dry run of a sweep with another base", lambda c: [*changed_sweep(c), "--dry-run"], "--overwrite"),
    (
        "dry run of a grid without a run of its directory",
        lambda c: [*shrunk_sweep(c), "--dry-run"],
        "its run 'seed-0' is not in this grid",
    ),
    # --- configs, run directories and weights, hardening round two -----------------------
    ("config an alias bomb", lambda c: ["run", str(c.write("bomb.yaml", ALIAS_BOMB))], "through its YAML aliases"),
    ("config alias bomb on the command line", lambda c: ["run", "--set", f"name={ALIAS_BOMB}"], "YAML aliases"),
    ("config with a key twice", lambda c: ["run", str(c.write("d.yaml", "train:\n  lr: 0.1\n  lr: 0.3\n"))], "twice"),
    ("config a directory", lambda c: ["run", str(c.tmp)], "is a directory"),
    ("config a named pipe", lambda c: ["run", str(fifo(c, "c.yaml"))], "not a regular file"),
    ("seed beyond 2**32", lambda c: ["run", *sets(f"train.seed={2**70}")], "'train.seed'"),
    ("seed true", lambda c: ["run", *sets("train.seed=true")], "'train.seed'"),
    ("seed 1.0", lambda c: ["run", *sets("train.seed=1.0")], "'train.seed'"),
    ("a block of 1e8 channels", lambda c: ["run", *sets("model.widths=[100000000]")], "at most 16384 per block"),
    (
        "a model of 20 billion parameters",
        lambda c: ["run", *sets("model.widths=[16384,16384,16384,16384,16384,16384,16384,16384,16384,16384]")],
        "parameters, more than the 2,000,000,000 allowed",
    ),
    ("evaluate weights cut in half", lambda c: ["evaluate", str(half_weights(c)), "--data", "shapes"], "truncated"),
    ("predict with weights cut in half", lambda c: ["predict", str(half_weights(c)), str(an_image(c))], "truncated"),
    (
        "evaluate weights with a non-tensor state value",
        lambda c: [
            "evaluate",
            str(tampered_weights(c, lambda w: w["state_dict"].update(x=[1, 2]))),
            "--data",
            "shapes",
        ],
        "not a mapping of names to tensors",
    ),
    (
        "predict with weights naming no classes",
        lambda c: ["predict", str(tampered_weights(c, lambda w: w.pop("classes"))), str(an_image(c))],
        "no list of class names",
    ),
    (
        "predict with weights of a zero std",
        lambda c: [
            "predict",
            str(tampered_weights(c, lambda w: w["normalization"].update(std=[0.0] * len(w["normalization"]["std"])))),
            str(an_image(c)),
        ],
        "positive standard deviations",
    ),
    (
        "evaluate weights whose config asks for a huge model",
        lambda c: [
            "evaluate",
            str(tampered_weights(c, lambda w: w["config"]["model"].update(widths=[16384] * 10))),
            "--data",
            "shapes",
        ],
        "parameters, more than",
    ),
    (
        "predict a folder without images",
        lambda c: ["predict", str(c.run()), str(c.files("docs", {"notes.txt": "no image"}))],
        "holds no image (.jpg, .jpeg, .png",
    ),
    (
        "predict --csv onto an existing file",
        lambda c: ["predict", str(c.run()), str(an_image(c)), "--csv", str(c.write("p.csv", "kept"))],
        "already exists; choose another path or pass --overwrite",
    ),
    (
        "predict --overwrite without --csv",
        lambda c: ["predict", str(c.run()), str(an_image(c)), "--overwrite"],
        "no --csv was given; drop --overwrite or add --csv",
    ),
    (
        "predict --json with --csv",
        lambda c: ["predict", str(c.run()), str(an_image(c)), "--json", "--csv", str(c.tmp / "p.csv")],
        "--json and --csv both choose the output",
    ),
    (
        "predict --csv into a missing folder",
        lambda c: ["predict", str(c.run()), str(an_image(c)), "--csv", str(c.tmp / "no" / "p.csv")],
        "does not exist; create it first",
    ),
    (
        "resume with a config.yaml that is a key twice",
        lambda c: ["resume", str(doubled_key_config(c))],
        "'lr' set twice",
    ),
    # --- data, hardening round two ---
    (
        "npz lying header",  # x's .npy header claims 10**12 bytes; numpy would allocate them before reading
        lambda c: (
            (p := c.npz()).write_bytes(p.read_bytes().replace(b"(40, 16, 16, 3)", b"(999999999999,)", 1))
            and npz_run(c, p)
        ),
        "claims shape (999999999999,)",
    ),
    (
        "npz pickle member",
        lambda c: npz_run(c, c.npz(classes=np.array(["a", "b", "c", "d"], dtype=object))),
        "object array 'classes'",
    ),
    (
        "npz huge label",
        lambda c: npz_run(c, c.npz(y=np.array([2**40] + [i % 4 for i in range(39)]))),
        "more than the 100,000 allowed",
    ),
    (
        "npz duplicate class names",
        lambda c: npz_run(c, c.npz(classes=np.array(["a", "b", "a", "c"]))),
        "names the class 'a' twice",
    ),
    (
        "image folder with a link loop",
        lambda c: [
            "run",
            *data_sets("data.name=imagefolder", f"data.root={((r := c.folder()) / 'a' / 'loop').symlink_to('.') or r}"),
            "--out",
            str(c.tmp / "o"),
        ],
        "would be counted twice",
    ),
    (
        "image folder with a dangling link",
        lambda c: [
            "run",
            *data_sets(
                "data.name=imagefolder",
                f"data.root={((r := c.folder()) / 'a' / 'gone.jpg').symlink_to(c.tmp / 'nowhere.jpg') or r}",
            ),
            "--out",
            str(c.tmp / "o"),
        ],
        "is a dangling symbolic link",
    ),
    (
        "image folder with a named pipe",
        lambda c: [
            "run",
            *data_sets("data.name=imagefolder", f"data.root={os.mkfifo((r := c.folder()) / 'a' / 'x.jpg') or r}"),
            "--out",
            str(c.tmp / "o"),
        ],
        "not a regular file",
    ),
    (
        "image folder with a decompression bomb",
        lambda c: [
            "run",
            *data_sets(
                "data.name=imagefolder",
                f"data.root={((r := c.folder()) / 'a' / 'bomb.ppm').write_text('P6 30000 30000 255 ') and r}",
            ),
            "--out",
            str(c.tmp / "o"),
        ],
        "DecompressionBombError",
    ),
    (
        "cifar10 with a pickle claiming 2**60 bytes",
        lambda c: (
            (cifar_with_foreign_pickle(c) / "cifar-10-batches-py" / "batches.meta").write_bytes(
                b"\x80\x04\x8e" + (2**60).to_bytes(8, "little") + b"abc."
            )
            and ["run", *data_sets("data.name=cifar10", f"data.root={c.tmp / 'cifar'}"), "--out", str(c.tmp / "o")]
        ),
        "declares an object larger than the memory",
    ),
    ("data.root in an unknown home", lambda c: npz_run(c, "~nosuchuser/x.npz"), "no such user or home directory"),
    (
        "rrc_ratio inf",
        lambda c: ["run", *sets("data.random_resized_crop=true", "data.rrc_ratio=[1, .inf]")],
        "both finite",
    ),
    ("image_size 100000", lambda c: ["run", *sets("data.image_size=100000")], "less than or equal to 4096"),
    ("predict a named pipe", lambda c: ["predict", str(c.run()), str(fifo(c, "p.png"))], "not a regular file"),
    (
        "predict a decompression bomb",
        lambda c: ["predict", str(c.run()), str(c.write("bomb.ppm", "P6 30000 30000 255 "))],
        "too large to decode safely",
    ),
    # --- sweeps, hardening round two ---
    (
        "sweep of 27 million runs",
        lambda c: [
            "sweep",
            str(
                sweep_file(
                    c,
                    {
                        "grid": {
                            "train.seed": list(range(300)),
                            "data.seed": list(range(300)),
                            "train.lr": [i / 1000 for i in range(1, 301)],
                        }
                    },
                )
            ),
        ],
        "has 27,000,000 runs",
    ),
    (
        "sweep with seeds [1, 1.0, true]",
        lambda c: ["sweep", str(sweep_file(c, {"grid": {"train.seed": [1, 1.0, True]}}))],
        "sweep.grid.train.seed in",
    ),
    (
        "sweep with a corrupt sweep.yaml",
        lambda c: [
            "sweep",
            str(sweep_file(c, {"grid": {"train.seed": [0]}})),
            "--out",
            str((d := c.tmp / "sw").mkdir() or ((d / "sweep.yaml").write_text("base: [unclosed\n") and d)),
        ],
        "is not valid YAML (line 2); pass --overwrite",
    ),
    (
        "dry run with a corrupt sweep.yaml",
        lambda c: [
            "sweep",
            str(sweep_file(c, {"grid": {"train.seed": [0]}})),
            "--out",
            str((d := c.tmp / "sw").mkdir() or ((d / "sweep.yaml").write_text("base: [unclosed\n") and d)),
            "--dry-run",
        ],
        "is not valid YAML (line 2); pass --overwrite",
    ),
    (
        "sweep with a tagged sweep.yaml",
        lambda c: [
            "sweep",
            str(sweep_file(c, {"grid": {"train.seed": [0]}})),
            "--out",
            str(
                (d := c.tmp / "sw").mkdir()
                or (
                    (d / "sweep.yaml").write_text(f"!!python/object/apply:os.system ['touch {c.tmp / 'pwned'}']\n")
                    and d
                )
            ),
        ],
        "is not valid YAML (line 1); pass --overwrite",
    ),
    (
        "sweep with a sweep.yaml that is a list",
        lambda c: [
            "sweep",
            str(sweep_file(c, {"grid": {"train.seed": [0]}})),
            "--out",
            str((d := c.tmp / "sw").mkdir() or ((d / "sweep.yaml").write_text("- base\n- sweep\n") and d)),
        ],
        "holds a list, not the mappings 'base' and 'sweep'",
    ),
    (
        "sweep with a sweep.yaml of wrong types",
        lambda c: [
            "sweep",
            str(sweep_file(c, {"grid": {"train.seed": [0]}})),
            "--out",
            str((d := c.tmp / "sw").mkdir() or ((d / "sweep.yaml").write_text("base: 3\nsweep: grid\n") and d)),
        ],
        "holds a mapping, not the mappings 'base' and 'sweep'",
    ),
    (
        "sweep with a sweep.yaml that is a directory",
        lambda c: [
            "sweep",
            str(sweep_file(c, {"grid": {"train.seed": [0]}})),
            "--out",
            str((d := c.tmp / "sw" / "sweep.yaml").mkdir(parents=True) or d.parent),
            "--overwrite",
        ],
        "is a directory, not a file; remove it or choose another --out",
    ),
    (
        "sweep with a sweep.yaml that is a named pipe",
        lambda c: [
            "sweep",
            str(sweep_file(c, {"grid": {"train.seed": [0]}})),
            "--out",
            str((c.tmp / "sw").mkdir() or fifo(c, "sw/sweep.yaml").parent),
        ],
        "not a regular file",
    ),
    (
        "sweep with a tampered jobs.json",
        lambda c: [
            "sweep",
            str(sweep_file(c, {"grid": {"train.seed": [0]}})),
            "--out",
            str((d := c.tmp / "sw").mkdir() or ((d / "jobs.json").write_text('{"jobs": "x"}') and d)),
        ],
        "is not the record of submitted jobs a sweep writes",
    ),
    # --- found by an outside review of the round ---------------------------------------------
    (
        "evaluate --out a named pipe",
        lambda c: ["evaluate", str(c.run()), "--data", "shapes", "--out", str(fifo(c, "e.json"))],
        "not a regular file",
    ),
    (
        "evaluate --out a symbolic link",
        lambda c: ["evaluate", str(c.run()), "--data", "shapes", "--out", str(link(c, "e.json"))],
        "is a symbolic link",
    ),
    ("shapes too big to generate", lambda c: ["run", *sets("data.train_size=1000000000")], "lower data.train_size"),
    (
        "npz naming two million classes",
        lambda c: npz_run(c, c.npz(classes=np.array([f"c{i}" for i in range(200_001)]))),
        "more than the 100,000 allowed",
    ),
    ("npz with an empty class name", lambda c: npz_run(c, c.npz(classes=np.array(["", "b", "c", "d"]))), "empty"),
    (
        "predict with NaN weights",
        lambda c: ["predict", str(tampered_weights(c, nan_state)), str(an_image(c))],
        "non-finite weights",
    ),
    ("resume a checkpoint whose position was altered", lambda c: ["resume", str(altered_checkpoint(c))], "altered"),
    # --- comparisons and the new head and model options -------------------------------------
    (
        "sweep compare_to naming no variant",
        lambda c: ["sweep", str(sweep_file(c, {"grid": {"train.seed": [0, 1]}, "compare_to": {"train.seed": 5}}))],
        "not a key that tells the variants apart",
    ),
    (
        "sweep compare_to a value no variant has",
        lambda c: [
            "sweep",
            str(sweep_file(c, {"variants": [{"head.name": "softmax"}], "compare_to": {"head.name": "gumbel"}})),
        ],
        "names no variant of the sweep",
    ),
    (
        "sweep comparing a metric the runs do not have",
        lambda c: ["sweep", str(sweep_file(c, {"grid": {"train.seed": [0, 1]}, "compare_metrics": ["acc"]}))],
        "'acc' is not a test metric",
    ),
    ("eval_rule on a softmax head", lambda c: ["run", *sets("head.eval_rule=plain")], "head.name=gumbel only"),
    ("an unknown eval_rule", lambda c: ["run", *sets("head.name=gumbel", "head.eval_rule=mean")], "'head.eval_rule'"),
    (
        "eval_samples without the sample_mean rule",
        lambda c: ["run", *sets("head.name=gumbel", "head.eval_samples=4")],
        "eval_rule=sample_mean only",
    ),
    ("bn_eps without batch norm", lambda c: ["run", *sets("model.batch_norm=false", "model.bn_eps=1e-3")], "bn_eps"),
    ("bn_eps 0", lambda c: ["run", *sets("model.bn_eps=0")], "'model.bn_eps'"),
    (
        "evaluate where its predictions file would replace a directory",
        lambda c: ["evaluate", str(c.run()), "--data", "shapes", "--out", str(predictions_taken(c))],
        "e.predictions.npz' is a directory",
    ),
    # --- library models and user factories ---------------------------------------------------
    ("an unknown timm model", lambda c: ["run", *model_sets("model.name=timm:resnt18")], "'timm:resnet18'"),
    ("a library model without its prefix", lambda c: ["run", *sets("model.name=resnet18")], "'timm:resnet18'"),
    (
        "library kwargs that softmaxlab sets",
        lambda c: ["run", *model_sets("model.name=timm:resnet18", "model.kwargs={num_classes: 3}")],
        "'num_classes' is set by softmaxlab",
    ),
    (
        "library kwargs the model refuses",
        lambda c: ["run", *model_sets("model.name=torchvision:resnet18", "model.kwargs={depth: 3}")],
        "check model.kwargs",
    ),
    (
        "library weights that do not exist",
        lambda c: ["run", *model_sets("model.name=timm:resnet18", f"model.weights={c.tmp / 'nope.pt'}")],
        "does not exist",
    ),
    (
        "library weights that do not fit",
        lambda c: ["run", *model_sets("model.name=timm:resnet18", f"model.weights={foreign_state(c)}")],
        "does not fit this model (missing keys: conv1.weight",
    ),
    (
        "pretrained and a weights file",
        lambda c: ["run", *model_sets("model.name=timm:resnet18", "model.pretrained=true", "model.weights=w.pt")],
        "keep one of them",
    ),
    (
        "keep on a built-in model",
        lambda c: ["run", *sets("model.activation=keep")],
        "model 'simple_cnn' builds its own",
    ),
    (
        "a factory file that does not exist",
        lambda c: ["run", *model_sets(f"model.name={c.tmp / 'nope.py'}:make")],
        "does not exist",
    ),
    (
        "a factory the file lacks",
        lambda c: ["run", *model_sets(f"model.name={user_nets(c)}:mak")],
        "did you mean 'make'",
    ),
    ("a factory that raises", lambda c: ["run", *model_sets(f"model.name={user_nets(c)}:broken")], "raised ValueError"),
    (
        "a factory of no module",
        lambda c: ["run", *model_sets(f"model.name={user_nets(c)}:number")],
        "not a torch.nn.Module",
    ),
    ("a factory of feature maps", lambda c: ["run", *model_sets(f"model.name={user_nets(c)}:maps")], "not (1, F)"),
    (
        "a factory's logits into a head with its own layers",
        lambda c: ["run", *model_sets(f"model.name={user_nets(c)}:make", "model.user_head=none", "head.name=adaptive")],
        "cannot take the model's logits",
    ),
    (
        "a softmax activation in a factory's model without stages",
        lambda c: ["run", *model_sets(f"model.name={user_nets(c)}:make", "model.activation=softmax_hw")],
        "exposes none",
    ),
    # --- sweep --set, and the file's options of a component the command line replaces -------
    ("sweep --set without '='", lambda c: ["sweep", str(seed_sweep(c)), "--set", "train.epochs"], "section.key=value"),
    (
        "sweep --set of an unknown key",
        lambda c: ["sweep", str(seed_sweep(c)), "--set", "train.epoch=3"],
        "did you mean 'train.epochs'",
    ),
    (
        "sweep --set of the sweep section",
        lambda c: ["sweep", str(seed_sweep(c)), "--set", "sweep.grid={train.seed: [1]}"],
        "--set changes the base experiment",
    ),
    (
        "sweep --set of an option the model chosen with --set lacks",
        lambda c: ["sweep", str(seed_sweep(c)), "-s", "model.name=timm:resnet18", "-s", "model.widths=[8]"],
        "applies to model.name=simple_cnn and resnet12 only",
    ),
    ("sweep rerun with another --set", lambda c: other_set_sweep(c), "holds a sweep with another base config"),
    (
        "run --set of an option the model chosen with --set lacks",
        lambda c: ["run", str(run_file(c)), "--set", "model.name=timm:resnet18", "--set", "model.batch_norm=false"],
        "'model.batch_norm'",
    ),
    # --- lint: its input shape, keyword arguments and loss names ----------------------------
    ("lint input shape of two values", lambda c: ["lint", "timm:resnet18", "--input-shape", "32,32"], "is not C,H,W"),
    ("lint --kwarg without a value", lambda c: ["lint", "timm:resnet18", "--kwarg", "num_classes"], "NAME=VALUE"),
    ("lint --kwarg timm refuses", lambda c: ["lint", "timm:resnet18", "--kwarg", "nope=1"], "; check --kwarg"),
    (
        "lint --kwarg on a run directory",
        lambda c: ["lint", str(c.run()), "--kwarg", "width=4"],
        "--kwarg does not apply to the run directory",
    ),
    (
        "lint --loss alias of no such loss",
        lambda c: ["lint", "timm:resnet18", "--loss", "nn.CrossEntropy", "--json"],
        "did you mean 'nn.CrossEntropyLoss'",
    ),
    # --- data.max_train_images: more than the training split, fewer than the classes -------------
    (
        "max_train_images above the shapes training split",
        lambda c: ["run", *sets("data.max_train_images=500"), "--out", str(c.tmp / "out")],
        "data.max_train_images=500 is more than the 128 training images",
    ),
    (
        "max_train_images below the classes",
        lambda c: ["run", *sets("data.max_train_images=3"), "--out", str(c.tmp / "out")],
        "data.max_train_images=3 is below the 4 classes",
    ),
    (
        "max_train_images above an npz training split",
        lambda c: npz_run(c, c.npz(), "data.max_train_images=40"),
        "data.max_train_images=40 is more than the 29 training images",
    ),
    (
        "max_train_images below an image folder's classes",
        lambda c: [
            "run",
            *data_sets("data.name=imagefolder", f"data.root={c.folder()}", "data.max_train_images=1"),
            "--out",
            str(c.tmp / "out"),
        ],
        "data.max_train_images=1 is below the 2 classes",
    ),
    (
        "max_train_images of zero",
        lambda c: ["run", *sets("data.max_train_images=0"), "--out", str(c.tmp / "out")],
        "'data.max_train_images' in the command line: Input should be greater than or equal to 1",
    ),
    # --- visualize: a model with no stages has no feature maps (a blank PNG before) --------------
    (
        "visualize a run of a factory without stages",
        lambda c: (
            runner.invoke(app, ["run", *model_sets(f"model.name={user_nets(c)}:make"), "--out", str(c.tmp / "r")]),
            ["visualize", str(c.tmp / "r"), str(an_image(c))],  # the default --out: RUN_DIR/figures/
        )[1],
        "exposes no stages, so it has no feature maps to show; give the network your factory returns a `blocks`",
    ),
    # --- trackers: train.loggers and `export mlflow` (missing extras: test_a_missing_tracker_extra_...) ---
    ("an unknown logger", lambda c: ["run", *sets("train.loggers=[wandb]")], "'train.loggers.0'"),
    ("a logger listed twice", lambda c: ["run", *sets("train.loggers=[mlflow, mlflow]")], "names a logger twice"),
    (
        "an MLflow URI without the mlflow logger",
        lambda c: ["run", *sets("train.mlflow_uri=sqlite:///x.db")],
        "applies with mlflow in train.loggers only",
    ),
    (
        "an MLflow store that cannot be opened",
        lambda c: ["run", *sets("train.loggers=mlflow", "train.mlflow_uri=nosuch://x"), "--out", str(c.tmp / "out")],
        "cannot open the MLflow tracking store 'nosuch://x'",
    ),
    ("export of a directory without runs", lambda c: ["export", "mlflow", str(c.tmp)], "holds no runs"),
    (
        "export of a directory without finished runs",
        lambda c: ["export", "mlflow", str(interrupted(c)), "--uri", f"sqlite:///{c.tmp / 'mlflow.db'}"],
        "holds no finished runs (1 unfinished or unreadable)",
    ),
    # --- lint: the eval-mode forward, and lazy models it copies ------------------------------------
    (
        "lint a model that fails in eval mode",
        lambda c: ["lint", eval_net(c, "1 / 0")],
        "the model fails in eval mode on a batch of shape (2, 3, 32, 32) (ZeroDivisionError",
    ),
    (
        "lint a model without a tensor in eval mode",
        lambda c: ["lint", eval_net(c, "None")],
        "the model returned a NoneType without a tensor in eval mode",
    ),
    (
        "lint a lazy model that cannot be copied",
        lambda c: [
            "lint",
            str(
                c.write(
                    "lz.py",
                    "import threading, torch\nclass Net(torch.nn.Module):\n    def __init__(self):\n"
                    "        super().__init__()\n        self.fc = torch.nn.LazyLinear(4)\n"
                    "        self.lock = threading.Lock()  # deepcopy refuses it\n"
                    "    def forward(self, x):\n        return self.fc(x.mean((2, 3)))\n",
                )
            )
            + ":Net",
        ],
        "lazy modules that are not initialised yet and cannot be copied",
    ),
    # --- model.output and library models' input sizes -----------------------------------------
    (
        "a factory whose forward returns a tuple, without model.output",
        lambda c: [
            "run",
            *model_sets(
                "model.name="
                + str(
                    c.write(
                        "pair.py",
                        "import torch\nclass Net(torch.nn.Module):\n    def __init__(self):\n"
                        "        super().__init__()\n        self.conv = torch.nn.Conv2d(3, 4, 3)\n"
                        "    def forward(self, x):\n        f = self.conv(x).mean((2, 3))\n        return f, f\n",
                    )
                )
                + ":Net"
            ),
        ],
        "choose the tensor to use with model.output: 0 or 1",
    ),
    (
        "model.output that is neither an index nor a key",
        lambda c: ["run", *model_sets(f"model.name={user_nets(c)}:make", "model.output=1.5")],
        "must be an index (0, -1) or a key (logits)",
    ),
    (
        "a torchvision model on images below its smallest size",
        lambda c: ["run", *model_sets("model.name=torchvision:googlenet", "data.image_size=8")],
        "its library gives it images of at least 15 px: set data.image_size to 15 or more",
    ),
]


def model_sets(*overrides: str) -> list[str]:
    """:func:`sets` without the built-in models' ``model.widths`` (library and user models lack it)."""
    return [a for o in (*(s for s in RUN_SETS if not s.startswith("model.widths")), *overrides) for a in ("--set", o)]


def seed_sweep(ctx: Ctx) -> Path:
    """A sweep config of the tiny run (a simple_cnn with its model.widths) over one seed."""
    return sweep_file(ctx, {"grid": {"train.seed": [0]}})


def run_file(ctx: Ctx) -> Path:
    """A config file of the tiny run (a simple_cnn with its model.widths)."""
    from softmaxlab.config import apply_overrides

    return ctx.write("r.yaml", yaml.safe_dump(apply_overrides({}, RUN_SETS)))


def other_set_sweep(ctx: Ctx) -> list[str]:
    """A sweep directory written with ``--set model.name=timm:resnet18``, then the same command
    with another --set."""
    from softmaxlab import sweep as sweep_mod

    path, out = seed_sweep(ctx), ctx.tmp / "sw"
    sweep_mod.prepare_sweep_dir(out, *sweep_mod.load_sweep(path, ["model.name=timm:resnet18"]))
    return ["sweep", str(path), "--set", "model.name=torchvision:resnet18", "--out", str(out)]


#: A user's factory file: ``make`` (features), and factories that go wrong.
USER_NETS = """
from torch import nn

def make(num_classes=4):
    layers = [nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes)]
    return nn.Sequential(*layers)

def broken():
    raise ValueError("no such width")

def number():
    return 7

def maps():
    return nn.Conv2d(3, 4, 3)
"""


def user_nets(ctx: Ctx) -> Path:
    return ctx.write("nets.py", USER_NETS)


def foreign_state(ctx: Ctx) -> Path:
    """A state dict of another model than timm's resnet18."""
    path = ctx.tmp / "other.pt"
    torch.save({"weight": torch.zeros(2, 2)}, path)
    return path


def predictions_taken(ctx: Ctx) -> Path:
    """An --out whose predictions.npz beside it is a directory: nothing may be written."""
    (ctx.tmp / "e.predictions.npz").mkdir()
    return ctx.tmp / "e.json"


def link(ctx: Ctx, name: str) -> Path:
    (ctx.tmp / "target.txt").write_text("kept")
    (ctx.tmp / name).symlink_to(ctx.tmp / "target.txt")
    return ctx.tmp / name


def nan_state(weights: dict) -> None:
    for value in weights["state_dict"].values():
        if value.is_floating_point():
            value.fill_(float("nan"))


class _Stop(BaseException):
    pass


class _StopAtEpochEnd(Hook):
    def on_epoch_end(self, record):
        raise _Stop  # after the epoch's checkpoint, before the summary


def altered_checkpoint(ctx: Ctx) -> Path:
    """An interrupted run whose checkpoint says it has done -1 epochs (it would train again from
    an epoch 0 and write epochs twice into metrics.jsonl)."""
    run = interrupted(ctx)
    other = ctx.tmp / "other"
    with contextlib.suppress(_Stop):
        fit(validate_config(yaml.safe_load((run / runs.CONFIG).read_text())), other, hooks=[_StopAtEpochEnd()])
    payload = torch.load(other / runs.CHECKPOINT, weights_only=True)
    shutil.rmtree(other)
    payload["epochs_done"] = -1
    torch.save(payload, run / runs.CHECKPOINT)
    return run


def nan_images() -> np.ndarray:
    x = np.random.default_rng(0).random((40, 16, 16, 3), dtype=np.float32)
    x[7, 3, 4, 1] = np.nan
    return x


def corrupt_jpeg(ctx: Ctx) -> Path:
    root = ctx.folder()
    (root / "a" / "0.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


def foreign_checkpoint(ctx: Ctx) -> Path:
    run = interrupted(ctx)
    malicious(ctx, run / runs.CHECKPOINT)
    return run


def truncated_checkpoints(ctx: Ctx) -> Path:
    """Both checkpoints cut short, as by a crash of the file system rather than of the run."""
    run = interrupted(ctx)
    whole = (run / runs.WEIGHTS.replace("model", "model")).parent / "whole.pt"
    torch.save({"format": runs.CHECKPOINT_FORMAT, "model": {"w": torch.zeros(1000)}}, whole)
    data = whole.read_bytes()
    whole.unlink()
    for name in (runs.CHECKPOINT, runs.CHECKPOINT_PREV):
        (run / name).write_bytes(data[: len(data) // 2])
    return run


def no_weights(ctx: Ctx) -> Path:
    run = ctx.run()
    (run / runs.WEIGHTS).unlink()
    return run


def wrong_architecture(ctx: Ctx) -> Path:
    run = ctx.run()
    saved = torch.load(run / runs.WEIGHTS, weights_only=True)
    saved["state_dict"] = {k: torch.zeros(3, *v.shape[1:]) if v.dim() else v for k, v in saved["state_dict"].items()}
    torch.save(saved, run / runs.WEIGHTS)
    return run


def foreign_weights(ctx: Ctx) -> Path:
    run = ctx.run()
    malicious(ctx, run / runs.WEIGHTS)
    return run


def tampered_weights(ctx: Ctx, change: Callable[[dict], None]) -> Path:
    """The trained run with its model.pt payload changed by ``change``."""
    run = ctx.run()
    saved = torch.load(run / runs.WEIGHTS, weights_only=True)
    change(saved)
    torch.save(saved, run / runs.WEIGHTS)
    return run


def eval_net(c: Ctx, in_eval: str) -> str:
    """A model file whose forward returns ``in_eval`` in eval mode (features in training); its target."""
    code = (
        "import torch\nclass Net(torch.nn.Module):\n    def forward(self, x):\n"
        f"        return x.mean((2, 3)) if self.training else {in_eval}\n"
    )
    return f"{c.write('ev.py', code)}:Net"


def half_weights(ctx: Ctx) -> Path:
    """model.pt cut to half its size, as by a disk that lost its end."""
    run = ctx.run()
    data = (run / runs.WEIGHTS).read_bytes()
    (run / runs.WEIGHTS).write_bytes(data[: len(data) // 2])
    return run


def fifo(ctx: Ctx, name: str) -> Path:
    """A named pipe: opening it for reading would wait for a writer forever."""
    path = ctx.tmp / name
    os.mkfifo(path)
    return path


def an_image(ctx: Ctx) -> Path:
    from PIL import Image

    Image.new("RGB", (20, 20), (10, 100, 50)).save(ctx.tmp / "x.png")
    return ctx.tmp / "x.png"


#: Nine levels of nine aliases: 387 million values from 700 bytes of YAML.
ALIAS_BOMB = "a0: &a0 [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 10)
)


def doubled_key_config(ctx: Ctx) -> Path:
    run = interrupted(ctx)
    text = (run / runs.CONFIG).read_text()
    (run / runs.CONFIG).write_text(text.replace("train:\n", "train:\n  lr: 0.5\n", 1))
    return run


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``root``: its content hash and modification time."""
    return {
        str(p.relative_to(root)): (hashlib.sha1(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_the_corpus_is_big_and_its_cases_distinct():
    names = [name for name, _, _ in CASES]
    assert len(names) >= 30 and len(set(names)) == len(names)


@pytest.mark.parametrize(("name", "make", "fragment"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_line_and_changes_nothing(tmp_path, trained, name, make, fragment):
    ctx = Ctx(tmp_path / "case", trained)
    ctx.tmp.mkdir()
    argv = make(ctx)
    before = snapshot(ctx.tmp)
    here = set(os.listdir())  # the working directory gains nothing either (no runs/ left behind)
    result = runner.invoke(app, argv)
    assert result.exit_code == 2, f"{name}: exit {result.exit_code}\n{result.output}"
    assert set(os.listdir()) == here, f"{name}: wrote {sorted(set(os.listdir()) - here)} in the working directory"
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"{name}: {result.stderr}"
    assert lines[0].startswith("error: ") and fragment in lines[0], f"{name}: {lines[0]}"
    assert not (ctx.tmp / "pwned").exists()
    after = snapshot(ctx.tmp)
    # The decoded-image cache of an image folder is kept even when some files are unreadable
    # (it records which), so that the next run with data.skip_corrupt=true does not decode again.
    new = {k for k in set(after) - set(before) if ".softmaxlab-cache" not in Path(k).parts}
    assert not new, f"{name}: wrote {sorted(new)}"
    assert {k: after[k] for k in before} == before, f"{name}: files changed"


# --- a full disk and an unwritable output directory ---------------------------------------


def _fail_fsync_of(monkeypatch, fragment: str, after: int, code: int = errno.ENOSPC) -> None:
    """Make ``os.fsync`` fail with ``code`` for files whose name holds ``fragment``, from the
    ``after``-th such file on: the disk fills up at that write (Linux: names via /proc)."""
    real, seen = os.fsync, []

    def fsync(fd: int) -> None:
        if fragment in os.readlink(f"/proc/self/fd/{fd}"):
            seen.append(fd)
            if len(seen) >= after:
                raise OSError(code, os.strerror(code))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name open files")
def test_disk_full_at_a_checkpoint_exits_2_and_the_run_continues_later(tmp_path, monkeypatch):
    out = tmp_path / "run"
    argv = ["run", *sets("train.epochs=3"), "--out", str(out)]
    _fail_fsync_of(monkeypatch, f".{runs.CHECKPOINT}.", after=2)  # epoch 1's checkpoint fits, epoch 2's not
    result = runner.invoke(app, argv)
    assert result.exit_code == 2, result.output
    # Epoch 1 was trained and reported; then one line for the error, and nothing after it.
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert errors == lines[-1:] and "the disk is full" in errors[0] and runs.CHECKPOINT in errors[0], lines
    assert "Traceback" not in result.output
    assert not list(out.glob(".*.tmp")) and not (out / runs.SUMMARY).exists()
    assert runs.load_checkpoint(out)["epochs_done"] == 1  # the last complete checkpoint, intact
    monkeypatch.undo()  # space freed: the same command continues the run
    again = runner.invoke(app, argv)
    assert again.exit_code == 0, again.output
    epochs = [json.loads(line)["epoch"] for line in (out / runs.METRICS).read_text().splitlines()]
    assert epochs == [1, 2, 3]


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name open files")
def test_disk_full_writing_the_weights_exits_2(tmp_path, monkeypatch):
    # torch.save would turn the failed write into a RuntimeError: the weights are serialised first.
    out = tmp_path / "run"
    _fail_fsync_of(monkeypatch, f".{runs.WEIGHTS}.", after=1)
    result = runner.invoke(app, ["run", *sets(), "--out", str(out)])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and runs.WEIGHTS in errors[0] and "the disk is full" in errors[0]
    assert not list(out.glob(".*.tmp")) and not (out / runs.WEIGHTS).exists()


def test_other_permission_errors_are_named_neutrally():
    from softmaxlab.errors import access_error

    error = access_error(PermissionError(errno.EACCES, "Permission denied", "/data/x.yaml"))
    assert str(error) == "cannot access '/data/x.yaml': Permission denied; check the path's permissions and free space"
    assert access_error(OSError(errno.EIO, "I/O error")) is None  # not bad input: a bug report


def test_disk_full_writing_a_file_keeps_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    path.write_text('{"old": true}\n')
    _fail_fsync_of(monkeypatch, "summary.json", after=1)
    with pytest.raises(UserError, match=r"summary\.json.*the disk is full"):
        runs.atomic_write_json(path, {"new": True})
    assert path.read_text() == '{"old": true}\n' and [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_unwritable_output_directory_exits_2(tmp_path, monkeypatch):
    import tempfile

    out = tmp_path / "locked" / "run"
    real = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and str(tmp_path / "locked") in str(dir):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(dir))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    result = runner.invoke(app, ["run", *sets(), "--out", str(out)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "it is not writable" in lines[0] and str(out) in lines[0], lines
    assert not [p for p in out.rglob("*") if p.is_file()]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root may write anywhere")
def test_read_only_output_directory_exits_2(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        result = runner.invoke(app, ["run", *sets(), "--out", str(locked / "run")])
    finally:
        locked.chmod(0o755)
    assert result.exit_code == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and "locked" in result.stderr


@pytest.mark.parametrize(
    ("extra", "argv"),
    [
        ("tensorboard", lambda c: ["run", *sets("train.loggers=[tensorboard]"), "--out", str(c.tmp / "out")]),
        ("mlflow", lambda c: ["export", "mlflow", str(c.run()), "--uri", f"sqlite:///{c.tmp / 'mlflow.db'}"]),
    ],
)
def test_a_missing_tracker_extra_exits_2_naming_it_and_writes_nothing(tmp_path, trained, monkeypatch, extra, argv):
    import sys

    ctx = Ctx(tmp_path / "case", trained)
    ctx.tmp.mkdir()
    args = argv(ctx)
    before = snapshot(ctx.tmp)
    monkeypatch.setitem(sys.modules, extra, None)  # as if not installed: importing it fails
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"pip install 'softmaxlab[{extra}]'" in lines[0], lines
    assert snapshot(ctx.tmp) == before and not (ctx.tmp / "out").exists()
