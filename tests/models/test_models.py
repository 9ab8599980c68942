import itertools
import math

import pytest
import torch
from pydantic import Field
from torch import nn

from softmaxlab.activations import BlockActivations
from softmaxlab.config import load_config
from softmaxlab.errors import UserError
from softmaxlab.experiment import run_experiment
from softmaxlab.models import MODELS, Classifier, build_model
from softmaxlab.registry import Options
from softmaxlab.train import fit

from ..conftest import TINY, tiny_config


@pytest.mark.parametrize("name", MODELS.names())
def test_forward_backward(name):
    cfg = load_config(None, [f"model.name={name}", "model.widths=[4,8]"])
    model = build_model(cfg, 3, 7)
    assert isinstance(model, Classifier)
    x = torch.randn(2, 3, 16, 16)
    scores = model(x)
    assert scores.shape == (2, 7)
    model.head.loss(scores, torch.tensor([0, 6])).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_simple_cnn_features_and_activation_injected():
    cfg = load_config(None, ["model.widths=[4,8,12]", "model.activation=tanh", "model.batch_norm=false"])
    model = build_model(cfg, 1, 3)
    assert model.backbone.out_features == 12
    assert model.backbone(torch.randn(2, 1, 16, 16)).shape == (2, 12)
    assert all(b.activation_name == "tanh" for b in model.backbone.blocks)
    assert any(isinstance(m, torch.nn.Tanh) for m in model.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


def _activations(model):
    """The activation module of each block."""
    return [block[2] for block in model.backbone.blocks]


def test_softmax_blocks_places_the_softmax_only_in_the_listed_blocks():
    cfg = load_config(None, ["model.widths=[4,8,12]", "model.activation=softmax_hw", "model.softmax_blocks=[0,2]"])
    model = build_model(cfg, 3, 5)
    kinds = [type(a).__name__ for a in _activations(model)]
    assert kinds == ["SoftmaxHW", "ReLU", "SoftmaxHW"]
    assert [b.activation_name for b in model.backbone.blocks] == ["softmax_hw", "relu", "softmax_hw"]


def test_activation_sets_every_block_with_its_options():
    cfg = load_config(
        None,
        [
            "model.widths=[4,8]",
            "model.activation=softmax_c",
            "model.activation_temperature=2.5",
            "model.learn_activation_temperature=true",
            "model.softmax_rescale=true",
        ],
    )
    model = build_model(cfg, 3, 5)
    acts = _activations(model)
    assert all(type(a).__name__ == "SoftmaxC" and a.rescale and a.learn_temperature for a in acts)
    assert acts[0].log_temperature is not acts[1].log_temperature  # one temperature per block
    torch.testing.assert_close(acts[0].temperature.detach(), torch.tensor(2.5))
    names = {n for n, _ in model.named_parameters()}
    assert {"backbone.blocks.0.2.log_temperature", "backbone.blocks.1.2.log_temperature"} <= names


def test_softmax_block_out_of_range_is_a_user_error():
    from softmaxlab.errors import UserError

    cfg = load_config(None, ["model.widths=[4,8]", "model.activation=softmax_h", "model.softmax_blocks=[2]"])
    with pytest.raises(
        UserError, match=r"softmax_blocks=\[2\] but model 'simple_cnn' has 2 blocks; use indices 0 to 1"
    ):
        build_model(cfg, 3, 5)


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["model.softmax_blocks=[0]"], "'model.softmax_blocks'"),
        (["model.softmax_rescale=true"], "'model.softmax_rescale'"),
        (["model.activation_temperature=2"], "'model.activation_temperature'"),
        (["model.learn_activation_temperature=true"], "'model.learn_activation_temperature'"),
        (["model.activation=softmax_h", "model.activation_temperature=0"], "greater than 0"),
        (["model.activation=softmax_h", "model.softmax_blocks=[]"], "non-empty list of distinct"),
        (["model.activation=softmax_h", "model.softmax_blocks=[1,1]"], "distinct"),
        (["model.activation=softmax_h", "model.softmax_blocks=[-1]"], "0-based"),
    ],
)
def test_softmax_options_are_validated(overrides, fragment):
    from softmaxlab.errors import UserError

    with pytest.raises(UserError, match=fragment) as err:
        load_config(None, overrides)
    assert "\n" not in str(err.value)
    if "model.activation=softmax_h" not in overrides:
        assert "softmax activations only" in str(err.value)


# --------------------------------------------------------------------------- widths defaults


@pytest.mark.parametrize("name", MODELS.names())
def test_every_model_has_default_widths_written_into_the_config(name):
    cfg = load_config(None, [f"model.name={name}"])
    assert cfg.model.widths == MODELS.options(name)().widths  # the default its options declare
    # The resolved config states the widths, so reloading it builds the same model.
    assert load_config(None, [f"model.name={name}", f"model.widths={cfg.model.widths}"]) == cfg


def test_default_widths_per_model():
    assert load_config().model.widths == [32, 64, 128, 256]
    assert load_config(None, ["model.name=resnet12"]).model.widths == [64, 160, 320, 640]
    assert load_config(None, ["model.name=resnet12", "model.widths=null"]).model.widths == [64, 160, 320, 640]


def test_too_small_images_are_a_user_error():
    from softmaxlab.errors import UserError

    model = build_model(load_config(None, ["model.name=resnet12", "model.widths=[4,4,4,4]"]), 3, 2)
    with pytest.raises(UserError, match="needs images of at least 16 px, got 8 px"):
        model(torch.randn(1, 3, 8, 8))


# --------------------------------------------------------------------------- resnet12


def test_resnet12_features_default_and_from_widths():
    default = build_model(load_config(None, ["model.name=resnet12"]), 3, 10).backbone
    assert default.out_features == 640 and len(default.blocks) == 4
    narrow = build_model(load_config(None, ["model.name=resnet12", "model.widths=[4,6,8,5]"]), 1, 3)
    assert narrow.backbone.out_features == 5
    assert narrow.backbone(torch.randn(2, 1, 16, 16)).shape == (2, 5)
    assert [b.activation_name for b in narrow.backbone.blocks] == ["relu"] * 4


def _conv_bn_params(c_in, c_out, k):
    return c_in * c_out * k * k + 2 * c_out  # conv without bias + BatchNorm weight and bias


def test_resnet12_parameter_count_is_the_published_12_4_million():
    # Block c_in -> c: three 3x3 conv-BN layers and a 1x1 conv-BN shortcut; pooling has no
    # parameters. For 3 -> 64 -> 160 -> 320 -> 640 this gives 76,160 + 564,480 + 2,357,760 +
    # 9,425,920 = 12,424,320, the "12.4M" that MetaOptNet (Lee et al., 2019) reports for it.
    widths = [3, 64, 160, 320, 640]
    expected = sum(
        _conv_bn_params(c_in, c, 3) + 2 * _conv_bn_params(c, c, 3) + _conv_bn_params(c_in, c, 1)
        for c_in, c in itertools.pairwise(widths)
    )
    assert expected == 12_424_320
    model = build_model(load_config(None, ["model.name=resnet12"]), 3, 10)
    assert sum(p.numel() for p in model.backbone.parameters()) == expected
    # The softmax head adds one Linear(640 -> 10): 6,400 weights + 10 biases.
    assert sum(p.numel() for p in model.parameters()) == expected + 640 * 10 + 10 == 12_430_730


def _resnet_activations(model):
    """The activation module of each residual block."""
    return [block.activation for block in model.backbone.blocks]


def test_resnet12_softmax_blocks_places_the_softmax_only_in_the_listed_blocks():
    from softmaxlab.activations import AxisSoftmax

    cfg = load_config(
        None,
        ["model.name=resnet12", "model.widths=[4,4,4,4]", "model.activation=softmax_c", "model.softmax_blocks=[1,3]"],
    )
    model = build_model(cfg, 3, 5)
    assert [type(a).__name__ for a in _resnet_activations(model)] == ["ReLU", "SoftmaxC", "ReLU", "SoftmaxC"]
    assert [b.activation_name for b in model.backbone.blocks] == ["relu", "softmax_c", "relu", "softmax_c"]
    # No other softmax module hides anywhere in the ReLU blocks.
    has_softmax = [any(isinstance(m, AxisSoftmax) for m in block.modules()) for block in model.backbone.blocks]
    assert has_softmax == [False, True, False, True]


def test_resnet12_softmax_is_applied_at_all_three_points_of_the_block():
    cfg = load_config(None, ["model.name=resnet12", "model.widths=[4]", "model.activation=softmax_c"])
    block = build_model(cfg, 3, 2).backbone.blocks[0]
    calls = []
    block.activation.register_forward_hook(lambda _m, _i, out: calls.append(out))
    block(torch.randn(2, 3, 8, 8))
    assert len(calls) == 3
    for out in calls:  # softmax over channels: each pixel sums to 1
        torch.testing.assert_close(out.sum(dim=1), torch.ones(2, 8, 8))


def test_resnet12_options_learned_temperature_per_block_no_batch_norm_dropout():
    cfg = load_config(
        None,
        [
            "model.name=resnet12",
            "model.widths=[4,8]",
            "model.activation=softmax_hw",
            "model.learn_activation_temperature=true",
            "model.batch_norm=false",
            "model.dropout=0.5",
        ],
    )
    model = build_model(cfg, 3, 5)
    names = {n for n, _ in model.named_parameters()}
    assert {n for n in names if "temperature" in n} == {
        "backbone.blocks.0.activation.log_temperature",
        "backbone.blocks.1.activation.log_temperature",
    }
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert all(m.bias is not None for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert isinstance(model.backbone.dropout, torch.nn.Dropout) and model.backbone.dropout.p == 0.5


def test_resnet12_softmax_block_out_of_range_is_a_user_error():
    from softmaxlab.errors import UserError

    cfg = load_config(None, ["model.name=resnet12", "model.activation=softmax_h", "model.softmax_blocks=[4]"])
    with pytest.raises(UserError, match=r"model 'resnet12' has 4 blocks; use indices 0 to 3"):
        build_model(cfg, 3, 5)


def test_resnet12_fits_end_to_end_with_block_diagnostics(tmp_path):
    # 4 steps of 64 images: the point is the wiring (blocks, hooks, figures), not learning.
    cfg = tiny_config("model.name=resnet12", "model.widths=[8,16,16,32]", "train.epochs=1", "data.train_size=256")
    result = run_experiment(cfg, tmp_path / "run")
    (record,) = result.history
    assert math.isfinite(record["train_loss"]) and math.isfinite(record["val_loss"])
    assert list(record["activation_stats"]) == ["block0", "block1", "block2", "block3"]
    assert all(math.isfinite(v) for stats in record["activation_stats"].values() for v in stats.values())
    assert result.model.backbone.out_features == 32
    assert 0.0 <= result.summary["test"]["accuracy"] <= 1.0
    assert (result.run_dir / "figures" / "feature_maps.png").stat().st_size > 0
    assert result.run_dir.joinpath("config.yaml").read_text().count("- 16") == 2  # widths 8-16-16-32 written out


def test_width_multiplier_scales_every_block():
    cfg = load_config(None, ["model.name=resnet12", "model.width=0.25"])
    model = build_model(cfg, 3, 10)
    assert model.backbone.out_features == 160
    convs = [m.out_channels for m in model.backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    assert set(convs) == {16, 40, 80, 160}


def test_backbone_parameters_of_the_defaults():
    from softmaxlab.models import backbone_parameters

    # As derived in test_resnet12_parameter_count_is_the_published_12_4_million.
    assert backbone_parameters("resnet12") == 12_424_320


# --------------------------------------------------------------------------- a user's own model


class TinyOptions(Options):
    """Options of ``tiny``."""

    width: int = Field(6, ge=1)  # channels of the one convolution


class TinyNet(nn.Module):
    def __init__(self, in_channels, width, activation):
        super().__init__()
        self.conv, self.activation = nn.Conv2d(in_channels, width, 3, padding=1), activation
        self.out_features = width

    def forward(self, x):
        return self.activation(self.conv(x)).mean(dim=(2, 3))  # (B, width)


def tiny(in_channels: int, options: TinyOptions, activations: BlockActivations) -> nn.Module:
    """One convolution and global average pooling."""
    return TinyNet(in_channels, options.width, activations.build(activations.names(1)[0]))


#: The tiny config without the built-in models' widths (a user's model has options of its own).
NO_WIDTHS = [s for s in TINY if not s.startswith("model.widths")]


@pytest.fixture
def registered():
    added = []

    def register(name, factory, options=TinyOptions):
        MODELS.register(name, options=options)(factory)
        added.append(name)

    yield register
    for name in added:
        MODELS.unregister(name)


def test_a_users_model_registered_the_documented_way_trains(registered, tmp_path):
    registered("tiny", tiny)
    cfg = load_config(None, [*NO_WIDTHS, "model.name=tiny", "model.width=5", "train.epochs=1", "model.activation=gelu"])
    assert cfg.to_dict()["model"] == {"name": "tiny", "activation": "gelu", "width": 5}  # no widths: its own options
    result = fit(cfg, tmp_path / "tiny")
    assert result.model.backbone.out_features == 5 and isinstance(result.model.backbone.activation, nn.GELU)
    assert result.summary["model"] == "tiny" and 0 <= result.summary["test"]["accuracy"] <= 1
    with pytest.raises(UserError, match=r"'model\.widths'.*applies to model\.name=simple_cnn and resnet12 only"):
        tiny_config("model.name=tiny", "model.widths=[4]")


def test_a_wrong_factory_signature_is_exit_2_with_one_line(registered, tmp_path, capsys):
    from softmaxlab.cli import main

    def old_style(in_channels, cfg):  # what models took before they owned their options
        return TinyNet(in_channels, 4, nn.ReLU())

    registered("old", old_style)
    with pytest.raises(UserError, match=r"model 'old': its factory 'old_style' cannot be called as factory\("):
        build_model(load_config(None, ["model.name=old"]), 3, 5)
    with pytest.raises(SystemExit) as exc:
        main(["run", "--out", str(tmp_path / "r"), *(f"--set={s}" for s in (*NO_WIDTHS, "model.name=old"))])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1 and "cannot be called as factory" in err
    assert not (tmp_path / "r").exists()  # refused before anything was written
    registered("no_features", lambda in_channels, options, activations: nn.Identity())
    with pytest.raises(UserError, match=r"must return an nn\.Module with an integer out_features"):
        build_model(load_config(None, ["model.name=no_features"]), 3, 5)


@pytest.mark.parametrize("name", ["simple_cnn", "resnet12"])
def test_bn_eps_reaches_every_batch_norm_and_applies_with_batch_norm_only(name):
    cfg = load_config(None, [f"model.name={name}", "model.widths=[4,8]", "model.bn_eps=1e-10"])
    norms = [m for m in build_model(cfg, 3, 5).modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(m.eps == 1e-10 for m in norms)
    default = build_model(load_config(None, [f"model.name={name}", "model.widths=[4,8]"]), 3, 5)
    assert all(m.eps == 1e-5 for m in default.modules() if isinstance(m, nn.BatchNorm2d))
    with pytest.raises(UserError, match=r"model\.batch_norm=true only"):
        load_config(None, [f"model.name={name}", "model.batch_norm=false", "model.bn_eps=1e-3"])


def test_a_small_bn_eps_normalises_softmax_activations_to_unit_variance():
    """Softmax over a 16 x 16 map of near-equal inputs (a network at initialisation) has values
    ~1/256 and a per-channel variance ~1e-6: with PyTorch's eps 1e-5 BatchNorm divides by
    ~sqrt(1.1e-5), and its output std is ~0.3, not 1."""
    torch.manual_seed(0)
    x = torch.softmax(0.25 * torch.randn(32, 8, 256), dim=-1).view(32, 8, 16, 16)
    assert x.var(dim=(0, 2, 3)).max() < 2e-6
    stds = {eps: nn.BatchNorm2d(8, eps=eps).train()(x).std(dim=(0, 2, 3)).mean().item() for eps in (1e-5, 1e-10)}
    assert stds[1e-5] < 0.5 and stds[1e-10] == pytest.approx(1.0, abs=0.01)
