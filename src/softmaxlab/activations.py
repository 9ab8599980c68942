"""Intermediate activations by name (:data:`ACTIVATIONS`).

Each entry is a factory ``() -> nn.Module`` that maps an (N, C, H, W) feature map to a map
of the same shape.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from softmaxlab.registry import Registry

ACTIVATIONS: Registry[Callable[[], nn.Module]] = Registry("activation")


@ACTIVATIONS.register("relu")
def relu() -> nn.Module:
    """max(0, x)."""
    return nn.ReLU(inplace=True)


@ACTIVATIONS.register("leaky_relu")
def leaky_relu() -> nn.Module:
    """max(0.01 x, x)."""
    return nn.LeakyReLU(0.01, inplace=True)


@ACTIVATIONS.register("gelu")
def gelu() -> nn.Module:
    """x * Phi(x), Phi the standard normal CDF."""
    return nn.GELU()


@ACTIVATIONS.register("silu")
def silu() -> nn.Module:
    """x * sigmoid(x) (swish)."""
    return nn.SiLU(inplace=True)


@ACTIVATIONS.register("tanh")
def tanh() -> nn.Module:
    """tanh(x)."""
    return nn.Tanh()


@ACTIVATIONS.register("sigmoid")
def sigmoid() -> nn.Module:
    """1 / (1 + exp(-x))."""
    return nn.Sigmoid()


def build_activation(name: str) -> nn.Module:
    """A fresh activation module by registry name."""
    return ACTIVATIONS.create(name)
