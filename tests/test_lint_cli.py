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


def sized(width=8, softmax=False):
    layers = [nn.Conv2d(3, width, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 4)]
    return nn.Sequential(*layers, *([nn.Softmax(dim=1)] if softmax else []))


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


class Pair(nn.Module):  # (probabilities, logits), as models that return both for inference do

    def __init__(self):
        super().__init__()
        self.net = good()

    def forward(self, x):
        z = self.net(x)
        return {"probs": z.softmax(-1), "logits": z} if getattr(self, "as_dict", False) else (z.softmax(-1), z)
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


@pytest.mark.parametrize(
    ("loss", "kind"),
    [
        ("nn.CrossEntropyLoss", "double_softmax"),
        ("F.cross_entropy", "double_softmax"),
        ("nn.functional.nll_loss", "softmax_into_nll"),
        ("F.nll_loss", "softmax_into_nll"),
    ],
)
def test_losses_named_as_code_names_them(nets, loss, kind):
    result = lint("nets.py:ends_in_softmax", "--loss", loss, "--json")
    assert result.exit_code == 4, result.output
    assert [f["kind"] for f in json.loads(result.stdout)["findings"]] == [kind]


def test_kwargs_reach_the_factory_parsed_as_yaml(nets):
    # softmax=false must arrive as False: the string "false" would be truthy and add a softmax.
    for value, code in (("true", 4), ("false", 0)):
        kwargs = ["--kwarg", "width=4", "--kwarg", f"softmax={value}"]
        result = lint("nets.py:sized", *kwargs, "--loss", "nn.CrossEntropyLoss")
        assert result.exit_code == code, result.output


def test_kwargs_reach_a_library_constructor():
    pytest.importorskip("timm")
    from softmaxlab.lint_targets import load_target, parse_kwargs

    target = load_target("timm:resnet18", kwargs=parse_kwargs(["num_classes=7"]), input_shape="3,16,16")
    assert target.model.get_classifier().out_features == 7 and target.example.shape == (2, 3, 16, 16)
    refused = lint("timm:resnet18", "--kwarg", "nope=1")
    assert refused.exit_code == 2 and "unexpected keyword argument 'nope'" in refused.stderr
    assert refused.stderr.rstrip().endswith("; check --kwarg")  # not the config's model.kwargs


def test_kwargs_that_reach_no_constructor_exit_2(nets, double_softmax_run):
    for args, fragment in (
        (["nets.py:instance", "--kwarg", "width=4"], "it is an nn.Module instance"),
        ([str(double_softmax_run), "--kwarg", "width=4"], "does not apply to the run directory"),
    ):
        result = lint(*args)
        assert result.exit_code == 2 and fragment in result.stderr, result.output


def test_json_errors_are_an_object_on_stdout_too(nets, monkeypatch):
    import softmaxlab.lint_targets

    result = lint("nets.py:nope", "--json")
    assert result.exit_code == 2
    [line] = result.stderr.strip().splitlines()
    assert json.loads(result.stdout) == {"target": "nets.py:nope", "error": line[len("error: ") :], "exit_code": 2}
    assert lint("nets.py:nope").stdout == ""  # text mode: the stderr line only

    def fails(error):
        def lint_target(*args, **kwargs):
            raise error

        monkeypatch.setattr(softmaxlab.lint_targets, "lint_target", lint_target)
        return lint("nets.py:good", "--json")

    denied = fails(PermissionError(13, "Permission denied", "/data/nets.py"))
    assert denied.exit_code == 2 and json.loads(denied.stdout)["error"] in denied.stderr
    crashed = fails(RuntimeError("a bug"))  # exit 1 and its traceback, and still an object
    assert crashed.exit_code == 1 and isinstance(crashed.exception, RuntimeError)
    assert json.loads(crashed.stdout) == {"target": "nets.py:good", "error": "RuntimeError: a bug", "exit_code": 1}


def test_json_of_findings_keeps_its_shape(nets):
    for target, code in (("nets.py:ends_in_softmax", 4), ("nets.py:good", 0)):
        result = lint(target, "--loss", "nn.CrossEntropyLoss", "--json")
        assert result.exit_code == code and result.stderr == ""
        assert list(json.loads(result.stdout)) == ["target", "findings"]


def test_help_names_the_loss_aliases_the_kwargs_and_the_json_error():
    result = runner.invoke(app, ["lint", "--help"], env={"COLUMNS": "400"})  # one line per option
    assert result.exit_code == 0
    options = {line.split()[1]: line for line in result.stdout.splitlines() if line.strip("│ ").startswith("--")}
    assert "nn.CrossEntropyLoss" in options["--loss"] and "F.cross_entropy" in options["--loss"]
    assert "F. is torch.nn.functional." in options["--loss"]
    assert "NAME=VALUE" in options["--kwarg"] and "repeatable" in options["--kwarg"]
    assert "{target, error, exit_code}" in options["--json"] and "3 positive integers" in options["--input-shape"]


def test_parse_input_shape_wants_exactly_three_positive_integers():
    from softmaxlab.errors import UserError
    from softmaxlab.lint_targets import parse_input_shape

    assert parse_input_shape(" 1,8, 9 ") == (1, 8, 9)
    for text in ("32,32", "1,3,32,32", "3,32,", "", "3,²,32", "3,-1,32", "3,+2,32"):
        with pytest.raises(UserError, match=r"is not C,H,W: write 3 positive integers"):
            parse_input_shape(text)


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
    ("input shape of two values", ["nets.py:good", "--input-shape", "32,32"], "--input-shape '32,32' is not C,H,W"),
    ("input shape of four values", ["nets.py:good", "--input-shape", "2,3,32,32"], "3 positive integers"),
    ("input shape of a superscript digit", ["nets.py:good", "--input-shape", "3,²,32"], "is not C,H,W"),
    ("input shape too big for memory", ["nets.py:good", "--input-shape", "3,99999,99999"], "smaller --input-shape"),
    ("kwarg without a value", ["nets.py:sized", "--kwarg", "width"], "--kwarg 'width' must look like NAME=VALUE"),
    ("kwarg of no identifier", ["nets.py:sized", "--kwarg", "1w=2"], "must look like NAME=VALUE"),
    ("kwarg given twice", ["nets.py:sized", "--kwarg", "width=2", "--kwarg", "width=3"], "given twice"),
    ("kwarg of invalid YAML", ["nets.py:sized", "--kwarg", "width=[2,"], "--kwarg 'width=[2,' is not valid YAML"),
    ("kwarg the factory refuses", ["nets.py:sized", "--kwarg", "depth=2"], "unexpected keyword argument 'depth'"),
    ("loss alias of no such loss", ["nets.py:good", "--loss", "nn.CrossEntropy"], "mean 'nn.CrossEntropyLoss'?)"),
    ("F. function named as torch.nn's", ["nets.py:good", "--loss", "nll_loss"], "(did you mean 'F.nll_loss'?)"),
    ("loss of no dotted name", ["nets.py:good", "--loss", ".."], "--loss '..' is not a dotted name"),
    ("loss module that fails to import", ["nets.py:good", "--loss", "bad.Loss"], "importing 'bad' failed (ImportError"),
    ("unknown loss class", ["nets.py:good", "--loss", "torch.nn.NoSuchLoss"], "torch.nn has no 'NoSuchLoss'"),
    ("loss module missing", ["nets.py:good", "--loss", "nosuchpkg.Loss"], "no module 'nosuchpkg'"),
    ("loss file missing", ["nets.py:good", "--loss", "losses.py:loss"], "--loss 'losses.py:loss': no file"),
    ("no such loss in the file", ["nets.py:good", "--loss", "nets.py:nope"], "--loss 'nets.py:nope': "),
    ("loss that cannot be built", ["nets.py:good", "--loss", "torch.nn.MultiheadAttention"], "without arguments"),
    ("loss that cannot be called", ["nets.py:good", "--loss", "torch.nn.TripletMarginLoss"], "cannot be called"),
    ("loss function that raises", ["nets.py:good", "--loss", "nets.py:raising_loss"], "wants three arguments"),
    ("no target form", ["nothing"], "cannot lint 'nothing'"),
    ("a file without its factory", ["nets.py"], "name the factory in the file"),
    ("an empty target", [""], "cannot lint ''"),
    ("unknown timm model", ["timm:resnet18x"], "timm has no model 'resnet18x'"),
    ("folder without a run", ["."], "model.pt"),
]


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
@pytest.mark.parametrize(("case", "args", "fragment"), BAD_INPUT, ids=[c[0] for c in BAD_INPUT])
def test_bad_input_exits_2_with_one_line(nets, case, args, fragment, as_json):
    (nets / "bad.py").write_text(BAD)
    result = lint(*args, *(["--json"] if as_json else []))
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output and fragment in lines[0], lines[0]
    if as_json:  # the same message as one object on stdout, for scripts
        assert json.loads(result.stdout) == {"target": args[0], "error": lines[0][len("error: ") :], "exit_code": 2}
    else:
        assert result.stdout == ""


def test_output_picks_the_entry_of_a_tuple_or_dict_that_the_loss_takes(nets):
    ce = ("--loss", "nn.CrossEntropyLoss")
    first = lint("nets.py:Pair", *ce)  # the default: the first tensor, here the probabilities
    assert first.exit_code == 4 and "double_softmax" in first.stdout
    assert lint("nets.py:Pair", *ce, "--output", "1").exit_code == 0
    assert lint("nets.py:Pair", *ce, "--output", "-1").exit_code == 0
    assert lint("nets.py:Pair", *ce, "--output", "0").exit_code == 4
    wrong = lint("nets.py:Pair", *ce, "--output", "logits")
    assert wrong.exit_code == 2 and "--output logits: the output of the model has no such entry" in wrong.stderr
    assert "set --output 0 or 1" in wrong.stderr


def test_lint_output_on_a_dict_names_the_key():
    import torch

    from softmaxlab.linting import lint as lint_model

    namespace: dict = {}
    exec(NETS, namespace)
    model = namespace["Pair"]()
    model.as_dict = True
    ce = torch.nn.CrossEntropyLoss()
    assert [f.kind for f in lint_model(model, ce, output="logits")] == []
    assert "double_softmax" in [f.kind for f in lint_model(model, ce, output="probs")]
