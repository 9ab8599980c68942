"""The benchmark scripts of benchmarks/ run end to end on tiny data (their numbers are not checked here)."""

import importlib.util
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from softmaxlab.data.shapes import generate

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def time_to_accuracy():
    return load_script("bench_time_to_accuracy")


def test_time_to_reach_a_target(time_to_accuracy):
    curve = [(1.0, 0.5), (2.0, 0.7), (3.0, 0.9)]
    assert time_to_accuracy.time_to(curve, 0.7) == (3.0, 2)
    assert time_to_accuracy.time_to(curve, 0.5) == (1.0, 1)
    assert time_to_accuracy.time_to(curve, 0.95) is None


def test_time_to_accuracy_runs_on_a_tiny_npz(time_to_accuracy, tmp_path, capsys):
    x, y, _ = generate(240, num_classes=3, image_size=16, seed=0)
    path = tmp_path / "tiny.npz"
    np.savez(path, x=x.permute(0, 2, 3, 1).numpy(), y=y.numpy())
    args = ["--data", str(path), "--seeds", "0,1", "--notebook-epochs", "2", "--set", "train.epochs=2"]
    sets = ["--set", "model.widths=[8,16]", "--set", "train.low_res_fraction=0.5", "--set", "train.low_res_size=8"]
    variant = ["--variant", "flip:train.eval_flip=true,train.lr=0.05"]
    time_to_accuracy.main([*args, *sets, *variant])
    out = capsys.readouterr().out
    assert "defaults with train.epochs=2, model.widths=[8,16], train.low_res_fraction=0.5, train.low_res_size=8" in out
    assert "2 epochs at 8-16 px" in out  # the npz's own 16 px, the first epoch at 8
    assert re.search(
        r"; flip: softmaxlab defaults with .*, train\.eval_flip=true, train\.lr=0\.05 \(.*eval_flip True\)$",
        out,
        re.M,
    )
    seeds = re.findall(r"^seed (\d): target ([\d.]+) \(notebook's best\), notebook (.+)$", out, re.M)
    assert [s[0] for s in seeds] == ["0", "1"]
    for _, target, notebook in seeds:
        assert 0 < float(target) <= 1
        assert re.fullmatch(r"[\d.]+ s \(epoch [12]\)", notebook)  # the notebook reaches its own best
    rows = re.findall(r"^  (defaults|flip|flip \(single view\)): (.+?); ours / notebook ([\d.]+|inf); ", out, re.M)
    assert [r[0] for r in rows] == ["defaults", "flip", "flip (single view)"] * 2
    assert all(r[1] == "never" or re.fullmatch(r"[\d.]+ s \(epoch [12]\)", r[1]) for r in rows)
    summary = out.split("final val acc, mean (min-max):\n")[1].splitlines()
    assert [line.split()[0] for line in summary] == ["defaults", "flip", "flip"]
    assert all(re.search(r" ([\d.]+|inf) \(([\d.]+|inf)-([\d.]+|inf)\) ", line) for line in summary)


def test_lint_benchmark_runs_on_a_small_model(capsys):
    load_script("bench_lint").main(["--target", "torchvision:resnet18", "--input-shape", "3,32,32", "--repeats", "1"])
    out = capsys.readouterr().out
    assert "softmaxlab lint torchvision:resnet18 --input-shape 3,32,32" in out and "0 findings" in out
    assert re.search(r"^lint / forward: median [\d.]+ \(min ", out, re.M)


def test_sweep_benchmark_times_a_small_sweep(capsys):
    load_script("bench_sweep").main(["--workers", "1", "--seeds", "1", "--epochs", "1", "--train-size", "200"])
    out = capsys.readouterr().out
    assert re.search(r"^--workers 1: wall +[\d.]+ s, training summed +[\d.]+ s \(2 runs\), overhead ", out, re.M), out
    assert re.search(r"^loading the data: [\d.]+ s \(median of 3\), once per worker$", out, re.M), out
    assert re.search(r"^  runs summed [\d.]+ s .*, wall / runs - 1 = [+-]\d+%; fixed [\d.]+ s ", out, re.M), out


@pytest.mark.parametrize("variant", ["defaults:train.epochs=2", "noop", "noop:"])
def test_time_to_accuracy_refuses_a_variant_without_a_new_name_or_overrides(time_to_accuracy, variant, capsys):
    with pytest.raises(SystemExit) as exit_info:
        time_to_accuracy.main(["--data", "missing.npz", "--variant", variant])
    assert exit_info.value.code == 2 and "give a new name and at least one override" in capsys.readouterr().err


def test_sweep_benchmark_refuses_a_missing_data_file(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_script("bench_sweep").main(["--data", str(tmp_path / "missing.npz")])
    assert exit_info.value.code == 2 and "no such file" in capsys.readouterr().err
