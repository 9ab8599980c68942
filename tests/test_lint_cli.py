"""``softmaxlab lint``: targets (files, modules, libraries, run directories), losses, exit codes 0 / 4 / 2."""

from __future__ import annotations

import json
import sys
import textwrap
import warnings

import pytest
from typer.testing import CliRunner

from softmaxlab.cli import app
from softmaxlab.heads.check import SoftmaxPitfallWarning
from softmaxlab.train import fit

from .conftest import tiny_config

runner = CliRunner()

NETS = """
import torch
import torch.nn.functional as F
from torch import nn


def body():
    return [nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)]


def good():
    return nn.Sequential(*body())


def ends_in_softmax():
    return nn.Sequential(*body(), nn.Softmax(dim=1))


class Hidden(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4, 4)

    def forward(self, x):
        x = self.conv(x).flatten(2).softmax(-1).unflatten(2, (30, 30))  # a spatial softmax
        return self.fc(F.max_pool2d(x, 30).flatten(1))


instance = good()


def broken():
    raise RuntimeError("no weights here")


def number():
    return 3


class Stringy(nn.Module):
    def forward(self, x):
        return "no tensor"


def nll_of_log(output, target):
    return F.nll_loss(torch.log(output), target)


def raising_loss(output, target):
    raise ValueError("wants three arguments")
"""


@pytest.fixture
def nets(tmp_path, monkeypatch):
    """A folder holding nets.py; the working directory."""
    (tmp_path / "nets.py").write_text(NETS)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def lint(*args: str):
    return runner.invoke(app, ["lint", *args])


def test_a_clean_model_exits_0(nets):
    result = lint("nets.py:good", "--loss", "torch.nn.CrossEntropyLoss")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "no softmax pitfalls found"
    assert lint("nets.py:instance", "--loss", "CrossEntropyLoss").exit_code == 0  # an instance; torch.nn's name


def test_an_error_finding_exits_4_with_the_finding_and_its_fix(nets):
    result = lint(str(nets / "nets.py") + ":ends_in_softmax", "--loss", "torch.nn.CrossEntropyLoss")
    assert result.exit_code == 4, result.output
    text = result.stdout.replace("\n", " ")
    assert "error: double_softmax at 5: softmax probabilities (F.softmax in Softmax)" in text
    assert "fix: remove the softmax" in text and text.rstrip().endswith("1 error")


def test_json_output(nets):
    result = lint("nets.py:ends_in_softmax", "--loss", "nets.py:nll_of_log", "--json")
    assert result.exit_code == 0, result.output  # a warning only
    payload = json.loads(result.stdout)
    assert list(payload) == ["target", "findings"] and payload["target"] == "nets.py:ends_in_softmax"
    [finding] = payload["findings"]
    assert set(finding) == {"kind", "severity", "where", "message", "fix", "source"}
    assert (finding["kind"], finding["severity"], finding["where"]) == ("log_of_softmax", "warning", "5")
    clean = json.loads(lint("nets.py:good", "--json").stdout)
    assert clean == {"target": "nets.py:good", "findings": []}


def test_the_model_alone_and_an_intermediate_softmax(nets):
    result = lint("nets.py:Hidden", "--json")
    assert result.exit_code == 0, result.output
    [finding] = json.loads(result.stdout)["findings"]
    assert finding["kind"] == "intermediate_softmax" and finding["where"] == "Tensor.softmax"
    assert "over height and width of a (B, C, H, W) map" in finding["message"]
    line = next(i for i, text in enumerate(NETS.splitlines(), 1) if "a spatial softmax" in text)
    assert finding["source"] == f"nets.py:{line}"  # the line of the model's file that calls it
    note = json.loads(lint("nets.py:ends_in_softmax", "--json").stdout)["findings"]
    assert [f["kind"] for f in note] == ["softmax_output"]


def test_a_module_factory(tmp_path, monkeypatch):
    package = tmp_path / "lintcase_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(NETS)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        result = lint("lintcase_pkg.nets:ends_in_softmax", "--loss", "torch.nn.NLLLoss", "--json")
        assert result.exit_code == 4, result.output
        assert [f["kind"] for f in json.loads(result.stdout)["findings"]] == ["softmax_into_nll"]
    finally:
        for name in ("lintcase_pkg", "lintcase_pkg.nets"):
            sys.modules.pop(name, None)


@pytest.mark.parametrize("target", ["timm:resnet18", "torchvision:mobilenet_v3_small"])
def test_library_models_are_clean(target):
    pytest.importorskip(target.partition(":")[0])
    result = lint(target, "--loss", "torch.nn.CrossEntropyLoss", "--input-shape", "3,32,32")
    assert result.exit_code == 0, result.output
    assert "no softmax pitfalls found" in result.stdout


@pytest.fixture(scope="module")
def double_softmax_run(tmp_path_factory):
    """A tiny trained run of the double-softmax head with a spatial softmax in its second block."""
    cfg = tiny_config(
        "head.name=double_softmax",
        "model.activation=softmax_hw",
        "model.softmax_blocks=[1]",
        "train.epochs=1",
        "data.train_size=128",
        "data.val_size=32",
        "data.test_size=32",
        "diagnostics.enabled=false",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SoftmaxPitfallWarning)  # fit's own first-batch lint
        return fit(cfg, tmp_path_factory.mktemp("lint") / "run").run_dir


def test_a_run_directory_is_linted_with_its_head_loss(double_softmax_run):
    result = lint(str(double_softmax_run), "--json")
    assert result.exit_code == 4, result.output
    found = [(f["kind"], f["where"]) for f in json.loads(result.stdout)["findings"]]
    assert found == [("double_softmax", "head"), ("intermediate_softmax", "backbone.blocks.1.2")]
    other = lint(str(double_softmax_run), "--loss", "torch.nn.NLLLoss", "--json")
    assert other.exit_code == 4 and json.loads(other.stdout)["findings"][0]["kind"] == "softmax_into_nll"


def test_fit_warns_each_finding_once(tmp_path):
    cfg = tiny_config("head.name=softmax_nll", "train.epochs=1", "data.train_size=64", "diagnostics.enabled=false")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(cfg, tmp_path / "run")
    pitfalls = [str(w.message) for w in caught if issubclass(w.category, SoftmaxPitfallWarning)]
    assert len(pitfalls) == 1 and pitfalls[0].startswith("softmax_into_nll (error) at head: ")


BAD = textwrap.dedent(
    """
    raise ImportError("a dependency is missing")
    """
)

#: (case, arguments after `lint`, a fragment of the one-line error); run in the folder of nets.py.
BAD_INPUT = [
    ("missing file", ["missing.py:make"], "missing.py"),
    ("file that fails to import", ["bad.py:make"], "importing 'bad.py' failed (ImportError: a dependency is missing)"),
    ("no such factory", ["nets.py:nope"], "has no 'nope'"),
    ("factory that raises", ["nets.py:broken"], "raised RuntimeError: no weights here"),
    ("factory that returns no module", ["nets.py:number"], "not a torch.nn.Module"),
    ("model that returns no tensor", ["nets.py:Stringy"], "returned a str without a tensor"),
    ("wrong input shape", ["nets.py:good", "--input-shape", "1,32,32"], "fails on a batch of shape (2, 1, 32, 32)"),
    ("malformed input shape", ["nets.py:good", "--input-shape", "3,x,32"], "--input-shape '3,x,32' is not C,H,W"),
    ("zero in the input shape", ["nets.py:good", "--input-shape", "3,0,32"], "positive integers"),
    ("unknown loss class", ["nets.py:good", "--loss", "torch.nn.NoSuchLoss"], "torch.nn has no 'NoSuchLoss'"),
    ("loss module missing", ["nets.py:good", "--loss", "nosuchpkg.Loss"], "no module 'nosuchpkg'"),
    ("loss file missing", ["nets.py:good", "--loss", "losses.py:loss"], "--loss 'losses.py:loss': no file"),
    ("no such loss in the file", ["nets.py:good", "--loss", "nets.py:nope"], "--loss 'nets.py:nope': "),
    ("loss that cannot be built", ["nets.py:good", "--loss", "torch.nn.MultiheadAttention"], "without arguments"),
    ("loss that cannot be called", ["nets.py:good", "--loss", "torch.nn.TripletMarginLoss"], "cannot be called"),
    ("loss function that raises", ["nets.py:good", "--loss", "nets.py:raising_loss"], "wants three arguments"),
    ("no target form", ["nothing"], "cannot lint 'nothing'"),
    ("unknown timm model", ["timm:resnet18x"], "timm has no model 'resnet18x'"),
    ("folder without a run", ["."], "model.pt"),
]


@pytest.mark.parametrize(("case", "args", "fragment"), BAD_INPUT, ids=[c[0] for c in BAD_INPUT])
def test_bad_input_exits_2_with_one_line(nets, case, args, fragment):
    (nets / "bad.py").write_text(BAD)
    result = lint(*args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output and fragment in lines[0], lines[0]
