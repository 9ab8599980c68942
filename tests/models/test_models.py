import pytest
import torch

from softmaxlab.config import load_config
from softmaxlab.models import MODELS, Classifier, build_model


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
