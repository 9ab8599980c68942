"""The user's own model: ``model.name=path/to/file.py:factory`` or ``package.module:factory``,
its features or (``model.user_head: none``) its logits, and every way it can be wrong."""

from __future__ import annotations

import collections
import math
import textwrap
from collections import Counter

import pytest
import torch
from torch import nn

from softmaxlab.config import load_config
from softmaxlab.errors import UserError
from softmaxlab.models import build_model
from softmaxlab.models.external import build_user_model, call_factory, load_factory, select_output
from softmaxlab.models.families import logit_heads
from softmaxlab.train import fit

from .test_library import FAST

#: A factory file: ``features`` (a conv net with two stages listed in `blocks`), ``logits`` (the
#: same with its own final layer), and factories that go wrong.
NETS = """
from torch import nn


class Net(nn.Module):
    def __init__(self, width=8, num_classes=None):
        super().__init__()
        self.stage1 = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.stage2 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, padding=1, stride=2), nn.GELU())
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(2 * width, num_classes) if num_classes else nn.Identity()
        self.blocks = [self.stage1, self.stage2]  # a plain list: references, registered once as stage1/stage2

    def forward(self, x):
        return self.fc(self.pool(self.stage2(self.stage1(x))))


def features(width=8):
    return Net(width)


def logits(num_classes=4, width=8):
    return Net(width, num_classes)


def raises(width=8):
    raise ValueError("width must be even")


def not_a_module():
    return 42


def maps():
    return nn.Conv2d(3, 4, 3)


def no_blocks():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())


class Pair(Net):
    def forward(self, x):
        features = self.pool(self.stage2(self.stage1(x)))
        return self.fc(features), features


class Named(Net):
    def forward(self, x):
        features = self.pool(self.stage2(self.stage1(x)))
        return {"logits": self.fc(features), "features": features}


def pair(num_classes=4):
    return Pair(8, num_classes)


def named(num_classes=4):
    return Named(8, num_classes)
"""


@pytest.fixture
def nets(tmp_path):
    path = tmp_path / "nets.py"
    path.write_text(textwrap.dedent(NETS))
    return path


def build(spec, *overrides, classes=4):
    return build_model(load_config(None, [f"model.name={spec}", *overrides]), 3, classes)


def test_features_get_the_head_and_each_parameter_is_registered_once(nets):
    model = build(f"{nets}:features", "model.kwargs={width: 6}")
    backbone = model.backbone
    assert backbone.out_features == 12  # measured on an example: the module has no out_features
    assert backbone.stage_paths == ("stage1", "stage2") and backbone.blocks[1] is backbone.net.stage2
    assert [b.activation_name for b in backbone.blocks] == ["relu", "gelu"]
    assert model.head.fc.in_features == 12 and model(torch.randn(2, 3, 16, 16)).shape == (2, 4)
    keys = list(model.state_dict())
    assert all(k.startswith(("backbone.net.stage", "head.fc.")) for k in keys), keys
    own = sum(p.numel() for p in load_factory(f"{nets}:features")(width=6).parameters())
    assert sum(p.numel() for p in model.parameters()) == own + 12 * 4 + 4


def test_a_module_path_finds_the_factory_and_a_file_its_neighbours(nets, monkeypatch, tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "zoo.py").write_text("from nets import features\n")  # nets.py is its neighbour
    monkeypatch.syspath_prepend(str(tmp_path))
    assert build("pkg.zoo:features").backbone.out_features == 16
    (tmp_path / "main.py").write_text("from nets import logits as make\n")
    assert build_user_model(f"{tmp_path / 'main.py'}:make", {"num_classes": 3}).fc.out_features == 3


def test_the_activation_goes_into_the_users_model(nets):
    net = build(f"{nets}:features", "model.activation=silu").backbone.net
    counts = Counter(type(m).__name__ for m in net.modules())
    assert counts["SiLU"] == 2 and counts["ReLU"] == counts["GELU"] == 0
    soft = build(f"{nets}:features", "model.activation=softmax_c", "model.softmax_blocks=[1]").backbone
    assert [b.activation_name for b in soft.blocks] == ["relu", "softmax_c"]


def test_user_head_none_keeps_the_users_final_layer(nets):
    model = build(f"{nets}:logits", "model.user_head=none", "head.name=sparsemax")
    assert isinstance(model.head.fc, nn.Identity) and model.backbone.outputs_logits
    assert sum(p.numel() for p in model.head.parameters()) == 0  # no linear layer of its own
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 4)
    assert logit_heads() == [h for h in logit_heads() if h not in ("hierarchical", "adaptive")]
    assert {"softmax", "log_softmax", "temperature", "sigmoid", "sparsemax", "entmax15", "gumbel"} <= set(logit_heads())


def test_a_user_factory_trains_on_features_and_on_logits(nets, tmp_path):
    runs = (
        ("features", []),
        ("logits", ["model.user_head=none", "head.name=log_softmax"]),
        ("named", ["model.output=features"]),  # a dict output, in training and in evaluation
    )
    for name, extra in runs:
        cfg = load_config(None, [*FAST, f"model.name={nets}:{name}", *extra])
        result = fit(cfg, tmp_path / name)
        (record,) = result.history
        assert math.isfinite(record["train_loss"]) and list(record["activation_stats"]) == ["block0", "block1"]
        assert result.summary["model"] == f"{nets}:{name}" and 0 <= result.summary["test"]["accuracy"] <= 1


def test_model_output_picks_the_features_or_the_logits_of_a_tuple_or_dict(nets):
    features = build(f"{nets}:pair", "model.output=1").backbone
    assert features.out_features == 16 and features(torch.randn(2, 3, 16, 16)).shape == (2, 16)
    logits = build(f"{nets}:named", "model.output=logits", "model.user_head=none").backbone
    assert logits.outputs_logits and logits(torch.randn(2, 3, 16, 16)).shape == (2, 4)
    last = build(f"{nets}:pair", "model.output=-1").backbone  # from the end, as Python counts
    assert last.out_features == 16


@pytest.mark.parametrize(
    ("name", "overrides", "message"),
    [
        ("pair", [], "outputs a tuple of 2: 0 (1, 4), 1 (1, 16); choose the tensor to use with model.output: 0 or 1"),
        (
            "named",
            [],
            "outputs a dict of 2: logits (1, 4), features (1, 16); choose the tensor to use with model.output: "
            "logits or features",
        ),
        ("named", ["model.output=feature"], "model.output='feature': the output of NETS:named has no such entry"),
        ("pair", ["model.output=logits"], "model.output='logits': the output of NETS:pair has no such entry"),
        ("pair", ["model.output=2"], "(a tuple of 2: 0 (1, 4), 1 (1, 16)); set model.output: 0 or 1"),
    ],
)
def test_a_tuple_or_dict_output_without_a_fitting_model_output_is_one_line(nets, name, overrides, message):
    with pytest.raises(UserError) as err:
        build(f"{nets}:{name}", *overrides)
    assert message.replace("NETS", str(nets)) in str(err.value) and "\n" not in str(err.value), str(err.value)


@pytest.mark.parametrize("value", ["true", "1.5", "[0]"])
def test_model_output_is_an_index_or_a_key(value):
    with pytest.raises(UserError, match=r"'model\.output'.*must be an index \(0, -1\) or a key \(logits\)"):
        load_config(None, ["model.name=nets.py:pair", f"model.output={value}"])


def test_select_output_never_indexes_a_tensor_and_reads_named_tuples_by_name():
    x = torch.ones(2, 3)
    assert select_output(x, 0) is x  # output[0] would be the first image: a tensor is the answer itself
    aux = collections.namedtuple("InceptionOutputs", ["logits", "aux_logits"])(x, None)
    assert select_output(aux, "logits") is x and select_output(aux, 0) is x
    with pytest.raises(UserError, match=r"aux_logits': the output of the model has a NoneType there, not a tensor"):
        select_output(aux, "aux_logits")
    with pytest.raises(UserError, match=r"m outputs a str, not a tensor, a tuple or a dict"):
        select_output("logits", None, model="m")


def test_weights_of_a_users_model(nets, tmp_path):
    net = load_factory(f"{nets}:features")()
    torch.save(net.state_dict(), tmp_path / "w.pt")
    backbone = build(f"{nets}:features", f"model.weights={tmp_path / 'w.pt'}").backbone
    torch.testing.assert_close(backbone.net.stage1[0].weight, net.stage1[0].weight)
    torch.save({"stage1.0.weight": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(
        UserError, match=r"does not fit this model \(missing keys: stage1\.0\.bias, .*shapes differ: stage1"
    ):
        build(f"{nets}:features", f"model.weights={tmp_path / 'bad.pt'}")


@pytest.mark.parametrize(
    ("name", "overrides", "fragment"),
    [
        ("missing.py:features", [], "model file 'missing.py' does not exist"),
        ("NETS:featurs", [], "has no 'featurs' (did you mean 'features'?)"),
        ("NETS:raises", [], "raised ValueError: width must be even when called with kwargs {}"),
        ("NETS:not_a_module", [], "returned int, not a torch.nn.Module"),
        ("NETS:maps", [], "outputs (1, 4, 30, 30) for one image, not (1, F)"),
        ("NETS:features", ["model.kwargs={depth: 2}"], "unexpected keyword argument 'depth'"),
        ("NETS:no_blocks", ["model.activation=softmax_hw"], "exposes none; give the network a `blocks` attribute"),
        ("NETS:logits", ["model.user_head=none", "head.name=hierarchical"], "cannot take the model's logits"),
        ("NETS:logits", ["model.user_head=none", "model.kwargs={num_classes: 7}"], "outputs 7 logits and the data"),
        ("no_such_module_here:make", [], "no module 'no_such_module_here'"),
    ],
)
def test_bad_user_factories_are_one_line_user_errors(nets, name, overrides, fragment):
    with pytest.raises(UserError) as err:
        build(name.replace("NETS", str(nets)), *overrides)
    assert fragment in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_a_file_that_fails_to_import_is_one_line(tmp_path):
    (tmp_path / "broken.py").write_text("import torch\nraise RuntimeError('no GPU here')\n")
    with pytest.raises(UserError, match=r"importing '.*broken\.py' failed \(RuntimeError: no GPU here\); fix the file"):
        load_factory(f"{tmp_path / 'broken.py'}:make")
    (tmp_path / "syntax.py").write_text("def make(:\n")
    with pytest.raises(UserError, match=r"syntax\.py' failed \(SyntaxError"):
        load_factory(f"{tmp_path / 'syntax.py'}:make")


def test_options_of_user_factories_are_validated():
    with pytest.raises(UserError, match=r"model\.dropout drops features"):
        load_config(None, ["model.name=nets.py:logits", "model.user_head=none", "model.dropout=0.5"])
    with pytest.raises(UserError, match=r"'model\.user_head'"):
        load_config(None, ["model.name=nets.py:logits", "model.user_head=softmax"])
    with pytest.raises(UserError, match=r"'model\.pretrained'.*applies to model\.name=timm:<name> and torchvision"):
        load_config(None, ["model.name=nets.py:logits", "model.pretrained=true"])
    assert load_config(None, ["model.name=nets.py:logits"]).model.activation == "keep"


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_factories_that_exit_or_return_torchscript_are_one_line_and_compiled_ones_are_unwrapped():
    def exits():
        raise SystemExit(3)

    with pytest.raises(UserError, match=r"raised SystemExit"):
        call_factory("nets.py:exits", exits)
    with pytest.raises(UserError, match=r"TorchScript module.*before torch\.jit\.script"):
        call_factory("nets.py:scripted", lambda: torch.jit.script(nn.Linear(2, 2)))
    net = nn.Linear(2, 2)
    assert call_factory("nets.py:compiled", lambda: torch.compile(net)) is net


def test_a_run_of_a_factory_named_by_a_relative_path_says_where_to_load_it_from(nets, tmp_path, monkeypatch):
    from softmaxlab.checkpoint import load_trained

    monkeypatch.chdir(nets.parent)
    fit(load_config(None, [*FAST, "model.name=nets.py:features"]), tmp_path / "run")
    assert load_trained(tmp_path / "run")[1].model.name == "nets.py:features"  # from where it was trained
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    with pytest.raises(UserError, match=r"names its file from the folder the run was trained in: run this command"):
        load_trained(tmp_path / "run")
