"""Where ``model.activation`` goes in a network softmaxlab did not write: a softmax only on
feature maps (never into the pooled inputs of squeeze-excitation gates), a pointwise one
everywhere; and how the backbone calls the network (:mod:`softmaxlab.models.wrap`)."""

from __future__ import annotations

import textwrap
import warnings

import pytest
import torch
from torch import nn

from softmaxlab.activations import AxisSoftmax, BlockActivations, SoftmaxActivationOptions
from softmaxlab.config import load_config
from softmaxlab.errors import UserError
from softmaxlab.models import build_model
from softmaxlab.models.wrap import ExternalBackbone, NetworkIO, probe_inputs, replace_activations

#: A user factory file: ``gated`` has a squeeze-excitation gate in its first stage and a stage
#: that is only a gate; ``fixed`` runs only on 20 px images.
GATED = """
from torch import nn


class SE(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1, self.act, self.fc2, self.gate = nn.Conv2d(c, 2, 1), nn.ReLU(), nn.Conv2d(2, c, 1), nn.Sigmoid()

    def forward(self, x):
        return x * self.gate(self.fc2(self.act(self.fc1(self.pool(x)))))  # act sees (B, 2, 1, 1)


class Gated(nn.Module):
    def __init__(self):
        super().__init__()
        self.stage1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), SE(8))
        self.stage2 = SE(8)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.blocks = [self.stage1, self.stage2]
        self.out_features = 8

    def forward(self, x):
        return self.pool(self.stage2(self.stage1(x)))


class Fixed(Gated):
    def forward(self, x):
        assert x.shape[-1] == 20, "20 px images only"
        return super().forward(x)


def gated():
    return Gated()


def fixed():
    return Fixed()
"""


@pytest.fixture
def gated(tmp_path):
    path = tmp_path / "gated.py"
    path.write_text(textwrap.dedent(GATED))
    return path


def build(*overrides: str, classes: int = 4) -> nn.Module:
    return build_model(load_config(None, list(overrides)), 3, classes)


def softmaxes(module: nn.Module) -> int:
    return sum(isinstance(m, AxisSoftmax) for m in module.modules())


# --------------------------------------------------------------------------- squeeze-excitation gates


@pytest.mark.parametrize(
    ("name", "gates"),
    [
        # timm's SqueezeExcite (act1, then the hard-sigmoid gate) in blocks 0, 2 (x3), 3 (x2), 4 (x3)
        (
            "timm:mobilenetv3_small_100",
            lambda net: [m.act1 for m in net.modules() if type(m).__name__ == "SqueezeExcite"],
        ),
        # torchvision's SqueezeExcitation (activation, then scale_activation)
        ("torchvision:mobilenet_v3_small", lambda net: [m.activation for m in net.modules() if hasattr(m, "fc1")]),
    ],
)
def test_a_softmax_leaves_the_activations_of_squeeze_excitation_gates_and_says_so_once(name, gates):
    with pytest.warns(
        UserWarning, match=r"9 activation module\(s\) in the stages .*: 9 pooled \(B, C, 1, 1\), as"
    ) as w:
        backbone = build(f"model.name={name}", "model.activation=softmax_hw").backbone
    assert sum("keep the model's own" in str(r.message) for r in w) == 1  # one note, not one line per module
    kept = gates(backbone.net)
    assert len(kept) == 9 and all(type(g) is nn.ReLU for g in kept)  # their own ReLU: the gates still gate
    assert softmaxes(backbone.net) > 0 and all(b.activation_name == "softmax_hw" for b in backbone.blocks)
    assert backbone(torch.randn(2, 3, 32, 32)).shape == (2, backbone.out_features)


def test_a_pointwise_activation_replaces_the_activations_of_gates_too():
    # timm's own act_layer reaches an EfficientNet's gates too; a GELU is well defined on a pooled vector
    backbone = build("model.name=timm:mobilenetv3_small_100", "model.activation=gelu").backbone
    gates = [m.act1 for m in backbone.net.modules() if type(m).__name__ == "SqueezeExcite"]
    assert len(gates) == 9 and all(type(g) is nn.GELU for g in gates)
    assert not any(type(m) is nn.ReLU for m in backbone.net.modules())


def test_the_rule_is_the_input_shape_so_a_users_gate_keeps_its_own_too(gated):
    with pytest.warns(UserWarning, match=r"1 activation module\(s\) .* 1 pooled \(B, C, 1, 1\), .* \(stage1\.3\.act, "):
        net = build(f"model.name={gated}:gated", "model.activation=softmax_c", "model.softmax_blocks=[0]").backbone.net
    assert isinstance(net.stage1[2], AxisSoftmax) and type(net.stage1[3].act) is nn.ReLU
    # A stage whose only activation is a gate's has nothing for a softmax: one line that says why.
    with pytest.raises(UserError) as err:
        build(f"model.name={gated}:gated", "model.activation=softmax_hw", "model.softmax_blocks=[1]")
    message = str(err.value)
    assert "has no activation module on a (B, C, H, W) feature map in stage 1 (stage2)" in message
    assert "pooled, channels-last or token inputs: stage2.act" in message and "\n" not in message


class ChannelsLast(nn.Module):
    """A ConvNeXt block as timm writes it: its MLP (and GELU) on a channels-last (B, H, W, C) map."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc, self.act = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4, 4), nn.GELU()
        self.relu = nn.ReLU()

    def forward(self, x):
        x = self.relu(self.conv(x))  # (B, 4, H, W)
        return self.act(self.fc(x.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)  # GELU on (B, H, W, 4)


def test_a_softmax_leaves_activations_on_channels_last_maps_where_its_axes_would_be_w_and_c():
    net = nn.Sequential(ChannelsLast())
    activations = BlockActivations("softmax_hw", SoftmaxActivationOptions(), "m.py:make")
    with pytest.warns(UserWarning, match=r"1 channels-last \(B, H, W, C\) or not square \(0\.act, \.\.\.\)"):
        assert replace_activations(net, ["0"], activations, in_channels=3) == ["softmax_hw"]
    assert isinstance(net[0].relu, AxisSoftmax) and type(net[0].act) is nn.GELU


def test_the_probe_touches_no_statistics_and_falls_back_to_smaller_images(gated):
    from softmaxlab.models.external import build_user_model

    net = build_user_model(f"{gated}:gated")
    net.train()
    before = net.stage1[1].running_mean.clone()
    kinds = probe_inputs(net, [net.stage1[2], net.stage1[3].act], 3)
    assert kinds == {id(net.stage1[2]): "map", id(net.stage1[3].act): "pooled"}
    assert net.training and torch.equal(net.stage1[1].running_mean, before)
    assert probe_inputs(net, [net.stage1[2]], 3, sizes=(0,)) is None  # a size it cannot run on


def test_a_network_the_probe_cannot_run_gets_every_activation_and_a_warning(gated):
    with pytest.warns(UserWarning, match=r"runs on no \(1, 3, S, S\) example .*every activation module in the stages"):
        net = build(f"model.name={gated}:fixed", "model.activation=softmax_c", "model.softmax_blocks=[0]").backbone.net
    assert isinstance(net.stage1[3].act, AxisSoftmax)  # no evidence: as before the probe


def test_without_in_channels_nothing_is_probed():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.ReLU())
    activations = BlockActivations("softmax_hw", SoftmaxActivationOptions(), "m")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert replace_activations(net, ["1", "3"], activations) == ["softmax_hw", "softmax_hw"]
    assert softmaxes(net) == 2


# --------------------------------------------------------------------------- calling the network


def test_a_failure_below_the_librarys_smallest_image_is_one_line_naming_it():
    net = nn.Sequential(nn.Conv2d(3, 4, 9), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    backbone = ExternalBackbone(net, NetworkIO("torchvision:tiny", 3, 4, min_size=9), [])
    assert backbone(torch.randn(2, 3, 9, 9)).shape == (2, 4)
    with pytest.raises(UserError) as err:
        backbone(torch.randn(2, 3, 8, 8))
    message = str(err.value)
    assert message.startswith("model 'torchvision:tiny' fails on 8 x 8 px images (RuntimeError: ")
    assert message.endswith("at least 9 px: set data.image_size to 9 or more, or choose another model")
    assert "\n" not in message
    unknown = ExternalBackbone(net, NetworkIO("x.py:make", 3, 4), [])  # no minimum known: the error as it is
    with pytest.raises(RuntimeError, match="Kernel size can't be greater"):
        unknown(torch.randn(2, 3, 8, 8))


def test_the_backbone_selects_the_output_that_model_output_names():
    class Pair(nn.Module):
        def forward(self, x):
            return {"features": x.mean((2, 3)), "maps": x}

    assert ExternalBackbone(Pair(), NetworkIO("p", 3, 3, "features"), [])(torch.ones(2, 3, 4, 4)).shape == (2, 3)
    with pytest.raises(UserError, match=r"model 'p' outputs a dict of 2: features \(2, 3\), maps \(2, 3, 4, 4\); "):
        ExternalBackbone(Pair(), NetworkIO("p", 3, 3), [])(torch.ones(2, 3, 4, 4))
    with pytest.raises(UserError, match=r"model 'p' outputs \(2, 3, 4, 4\), not \(B, 3\) features"):
        ExternalBackbone(Pair(), NetworkIO("p", 3, 3, "maps"), [])(torch.ones(2, 3, 4, 4))


def test_the_note_of_kept_activations_is_said_in_training_not_when_a_run_is_reloaded(gated, tmp_path):
    from softmaxlab.checkpoint import load_trained
    from softmaxlab.models.wrap import KeptActivationsWarning
    from softmaxlab.train import fit

    model = [f"model.name={gated}:gated", "model.activation=softmax_c", "model.softmax_blocks=[0]"]
    data = ["data.num_classes=4", "data.image_size=16", "data.train_size=64", "data.val_size=32", "data.test_size=32"]
    with pytest.warns(KeptActivationsWarning, match="1 activation module"):
        fit(load_config(None, [*model, *data, "train.epochs=1", "train.batch_size=32"]), tmp_path / "run")
    with warnings.catch_warnings():
        warnings.simplefilter("error", KeptActivationsWarning)
        load_trained(tmp_path / "run")  # evaluate, predict, visualize and lint rebuild the model this way
