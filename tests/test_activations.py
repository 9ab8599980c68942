import pytest
import torch

from softmaxlab.activations import ACTIVATIONS, build_activation


@pytest.mark.parametrize("name", ACTIVATIONS.names())
def test_shape_preserving_and_differentiable(name):
    x = torch.randn(2, 3, 4, 5, requires_grad=True)
    y = build_activation(name)(x.clone())
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_relu_matches_torch():
    x = torch.randn(10)
    torch.testing.assert_close(build_activation("relu")(x.clone()), torch.relu(x))
