import math

import pytest
import torch
from torch import nn

from softmaxlab.activations import (
    ACTIVATIONS,
    KEEP,
    AxisSoftmax,
    SoftmaxOptions,
    axis_softmax,
    build_activation,
    is_softmax,
    softmax_names,
)
from softmaxlab.errors import UserError

#: The axes each softmax activation normalises over, on an (N, C, H, W) map.
AXES = {"softmax_h": (2,), "softmax_w": (3,), "softmax_hw": (2, 3), "softmax_c": (1,)}


@pytest.mark.parametrize("name", [n for n in ACTIVATIONS.names() if n != KEEP])
def test_shape_preserving_and_differentiable(name):
    x = torch.randn(2, 3, 4, 5, requires_grad=True)
    y = build_activation(name)(x.clone())
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_keep_is_no_module_and_says_where_it_applies():
    # `keep` leaves a library or user model's own activations; there is no module to build.
    with pytest.raises(UserError, match="factory; a built-in model builds its own activation modules: choose relu"):
        build_activation(KEEP)


def test_a_softmax_activation_refuses_inputs_that_are_no_feature_maps():
    with pytest.raises(UserError, match=r"softmax_hw normalises \(N, C, H, W\) feature maps.*\(2, 5, 7\)"):
        build_activation("softmax_hw")(torch.randn(2, 5, 7))


def test_relu_matches_torch():
    x = torch.randn(10)
    torch.testing.assert_close(build_activation("relu")(x.clone()), torch.relu(x))


def test_softmax_family_is_registered():
    assert softmax_names() == list(AXES)
    assert not is_softmax("relu")


@pytest.mark.parametrize("name", list(AXES))
@pytest.mark.parametrize("rescale", [False, True])
def test_softmax_sums_over_its_axes(name, rescale):
    x = torch.randn(2, 3, 4, 5) * 5
    y = build_activation(name, SoftmaxOptions(rescale=rescale))(x)
    n = math.prod(x.shape[d] for d in AXES[name])
    sums = y.sum(dim=AXES[name])
    torch.testing.assert_close(sums, torch.full_like(sums, n if rescale else 1.0))
    assert (y >= 0).all()
    if rescale:
        torch.testing.assert_close(y.mean(), torch.tensor(1.0))


def test_softmax_c_matches_softmax2d_and_hw_matches_flattened_softmax():
    x = torch.randn(2, 3, 4, 5)
    torch.testing.assert_close(build_activation("softmax_c")(x), nn.Softmax2d()(x))
    torch.testing.assert_close(build_activation("softmax_hw")(x), x.view(2, 3, 20).softmax(-1).view(2, 3, 4, 5))
    torch.testing.assert_close(build_activation("softmax_h")(x), x.softmax(dim=2))
    torch.testing.assert_close(build_activation("softmax_w")(x), x.softmax(dim=3))


def test_worked_values():
    # Column (0, log 3) over H: exp -> (1, 3) / 4.
    x = torch.tensor([0.0, math.log(3.0)]).view(1, 1, 2, 1)
    torch.testing.assert_close(axis_softmax(x, (2,)).flatten(), torch.tensor([0.25, 0.75]))
    # T = 2 halves the logits: (0, log 3 / 2) -> (1, sqrt 3) / (1 + sqrt 3).
    s3 = math.sqrt(3.0)
    torch.testing.assert_close(axis_softmax(x, (2,), 2.0).flatten(), torch.tensor([1 / (1 + s3), s3 / (1 + s3)]))


@pytest.mark.parametrize("name", list(AXES))
def test_gradcheck_with_learned_temperature(name):
    module = build_activation(name, SoftmaxOptions(temperature=0.7, learn_temperature=True, rescale=True)).double()
    x = torch.randn(2, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(module, (x,))


def test_large_inputs_stay_finite():
    x = torch.tensor([1e4, -1e4, 0.0]).view(1, 1, 1, 3).repeat(2, 3, 2, 1)
    for name in AXES:
        y = build_activation(name)(x)
        assert torch.isfinite(y).all(), name


def test_temperature_divides_the_input():
    x = torch.randn(2, 3, 4, 5)
    hot = build_activation("softmax_hw", SoftmaxOptions(temperature=4.0))(x)
    torch.testing.assert_close(hot, build_activation("softmax_hw")(x / 4.0))
    assert hot.std() < build_activation("softmax_hw")(x).std()  # a higher T flattens the maps


def test_learned_temperature_is_a_parameter_that_learns():
    module = build_activation("softmax_hw", SoftmaxOptions(temperature=2.0, learn_temperature=True))
    assert isinstance(module, AxisSoftmax)
    (param,) = list(module.parameters())
    torch.testing.assert_close(module.temperature, torch.tensor(2.0))
    opt = torch.optim.SGD(module.parameters(), lr=1.0)
    x = torch.randn(2, 3, 4, 5)
    before = param.item()
    module(x).pow(2).sum().backward()  # any loss that depends on T
    assert param.grad is not None and param.grad.abs() > 0
    opt.step()
    assert param.item() != before
    assert "learned=True" in repr(module)


def test_fixed_temperature_has_no_parameters():
    assert list(build_activation("softmax_h", SoftmaxOptions(temperature=3.0)).parameters()) == []


def test_options_rejected_for_pointwise_activations():
    with pytest.raises(UserError, match="takes no softmax options"):
        build_activation("relu", SoftmaxOptions(rescale=True))
    with pytest.raises(ValueError, match="positive"):
        build_activation("softmax_h", SoftmaxOptions(temperature=0.0))


def test_an_activation_registered_with_options_is_built_with_them():
    from pydantic import Field

    from softmaxlab.config import load_config
    from softmaxlab.models import build_model
    from softmaxlab.registry import Options

    class Slope(Options):
        negative_slope: float = Field(0.01, ge=0)  # of the leaky part

    ACTIVATIONS.register("sloped", options=Slope)(lambda options: nn.LeakyReLU(options.negative_slope))
    try:
        model = build_model(
            load_config(None, ["model.widths=[4,8]", "model.activation=sloped", "model.negative_slope=0.3"]), 3, 2
        )
        slopes = [m.negative_slope for m in model.modules() if isinstance(m, nn.LeakyReLU)]
        assert slopes == [0.3, 0.3]  # one per block, with the configured option
    finally:
        ACTIVATIONS.unregister("sloped")
