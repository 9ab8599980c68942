"""Intermediate activations by name (:data:`ACTIVATIONS`).

Each entry maps an (N, C, H, W) feature map to a map of the same shape: a factory
``() -> nn.Module``, or, for an activation registered with options, ``(options) -> nn.Module``
(its options are ``model.*`` config keys). Two kinds here:

* pointwise (``relu``, ``gelu``, ...), without options (and ``keep``, no module at all: a
  library model or user factory keeps its own activations; their default);
* the softmax family (``softmax_h``, ``softmax_w``, ``softmax_hw``, ``softmax_c``): a
  subclass of :class:`AxisSoftmax` that normalises over some axes of the map, registered
  with :class:`SoftmaxActivationOptions` (the config keys) and built from
  :class:`SoftmaxOptions` (the module's arguments: temperature, learned temperature, rescaling).

:func:`build_activation` builds either kind by name. The softmax family registers
:class:`SoftmaxActivationOptions` (``model.activation_temperature``, ``model.softmax_blocks``,
...); :class:`BlockActivations` is what a backbone is given: which activation each of its
blocks gets, and a fresh module of it per block.

>>> x = torch.randn(2, 3, 4, 5)
>>> y = build_activation("softmax_hw")(x)
>>> torch.allclose(y.sum(dim=(2, 3)), torch.ones(2, 3))
True
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from pydantic import Field, field_validator
from torch import Tensor, nn

from softmaxlab.errors import UserError
from softmaxlab.registry import Options, Registry

ACTIVATIONS: Registry[Callable[..., nn.Module]] = Registry("activation")


# --------------------------------------------------------------------------- pointwise


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


#: ``model.activation: keep``, the default of library models and user factories: their own
#: activation modules stay as they are (the built-in models have none of their own).
KEEP = "keep"


def keep_refused(model: str = "a built-in model") -> UserError:
    """The error for ``model.activation: keep`` on a model that has no activations of its own."""
    return UserError(
        f"model.activation={KEEP} keeps the activations of a library model or user factory; {model} "
        f"builds its own activation modules: choose {', '.join(n for n in ACTIVATIONS.names() if n != KEEP)}"
    )


@ACTIVATIONS.register(KEEP)
def keep() -> nn.Module:
    """the model's own activations, unchanged (library models and user factories only; their default)."""
    raise keep_refused()


# --------------------------------------------------------------------------- softmax family


def axis_softmax(x: Tensor, dims: tuple[int, ...], temperature: float | Tensor = 1.0, rescale: bool = False) -> Tensor:
    """Softmax of ``x / T`` over the contiguous axes ``dims``, optionally rescaled.

    With S the set of positions spanned by ``dims`` (e.g. all (h, w) for dims (2, 3)) and
    n = |S|::

        y_s = r * exp(x_s / T) / sum_{s' in S} exp(x_{s'} / T),   r = n if rescale else 1

    so the entries over S sum to 1 (mean 1/n), or to n (mean 1) with ``rescale``.

    >>> y = axis_softmax(torch.zeros(1, 2, 2, 2), (2, 3))
    >>> y[0, 0]
    tensor([[0.2500, 0.2500],
            [0.2500, 0.2500]])
    >>> axis_softmax(torch.zeros(1, 2, 2, 2), (2, 3), rescale=True).mean().item()
    1.0
    """
    first, last = dims[0], dims[-1]
    if list(dims) != list(range(first, last + 1)):
        raise ValueError(f"dims must be contiguous axes, got {dims}")
    z = x / temperature
    # Several axes are flattened into one: (N, C, H, W) -> (N, C, H*W) for dims (2, 3).
    y = z.softmax(dim=first) if first == last else z.flatten(first, last).softmax(dim=first).view_as(z)
    if rescale:
        y = y * math.prod(x.shape[d] for d in dims)
    return y


@dataclass(frozen=True)
class SoftmaxOptions:
    """The arguments of one softmax activation module (:class:`AxisSoftmax`); from the config,
    :meth:`SoftmaxActivationOptions.module_options` makes them."""

    temperature: float = 1.0  # T: the input is divided by T before the softmax
    learn_temperature: bool = False  # learn log T, starting at log(temperature)
    rescale: bool = False  # multiply by the number of positions normalised over (mean 1)


class SoftmaxActivationOptions(Options):
    """The ``model.*`` config keys of the softmax activations (softmax_h, softmax_w, softmax_hw,
    softmax_c): the module's arguments under the names the model section gives them, and
    which blocks get the softmax."""

    owners_label = "the softmax activations"

    activation_temperature: float = Field(1.0, gt=0)  # T: the input is divided by T before the softmax
    learn_activation_temperature: bool = False  # learn log T (one per block), starting at activation_temperature
    softmax_rescale: bool = False  # multiply by the number of positions normalised over: mean 1, not 1/n
    softmax_blocks: list[int] | None = None  # 0-based blocks that get `activation` (relu in the others); None = all

    @field_validator("softmax_blocks")
    @classmethod
    def _block_indices(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (not v or min(v) < 0 or len(set(v)) != len(v)):
            raise ValueError("must be a non-empty list of distinct 0-based block indices")
        return v

    def module_options(self) -> SoftmaxOptions:
        """The arguments of each block's :class:`AxisSoftmax`."""
        return SoftmaxOptions(self.activation_temperature, self.learn_activation_temperature, self.softmax_rescale)


class AxisSoftmax(nn.Module):
    """Softmax over the axes :attr:`dims` of an (N, C, H, W) map (see :func:`axis_softmax`).

    Subclasses set :attr:`dims`. A learned temperature is one scalar parameter ``log T``
    per module (so per block), kept positive by the exponential.
    """

    dims: ClassVar[tuple[int, ...]] = ()

    def __init__(self, options: SoftmaxOptions | SoftmaxActivationOptions | None = None) -> None:
        super().__init__()
        if isinstance(options, SoftmaxActivationOptions):  # the model config section
            options = options.module_options()
        options = options or SoftmaxOptions()
        if not options.temperature > 0:
            raise ValueError(f"temperature must be positive, got {options.temperature}")
        self.rescale = options.rescale
        self.learn_temperature = options.learn_temperature
        if options.learn_temperature:
            self.log_temperature = nn.Parameter(torch.tensor(math.log(options.temperature)))
        else:
            self.fixed_temperature = options.temperature

    @property
    def temperature(self) -> float | Tensor:
        """T: a float, or a 0-d tensor (with gradient) when learned."""
        return self.log_temperature.exp() if self.learn_temperature else self.fixed_temperature

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:  # a shape test, no sync: placed in a library model where no maps are (ViT tokens)
            raise UserError(
                f"activation {ACTIVATIONS.name_of(type(self)) or type(self).__name__} normalises (N, C, H, W) feature "
                f"maps but got an input of shape {tuple(x.shape)}; place it in stages of convolution maps only "
                "(model.softmax_blocks) or choose a pointwise model.activation"
            )
        return axis_softmax(x, self.dims, self.temperature, self.rescale)  # (N, C, H, W)

    def extra_repr(self) -> str:
        t = self.log_temperature.detach().exp().item() if self.learn_temperature else self.fixed_temperature
        return f"dims={self.dims}, temperature={t:g}, learned={self.learn_temperature}, rescale={self.rescale}"


@ACTIVATIONS.register("softmax_h", options=SoftmaxActivationOptions)
class SoftmaxH(AxisSoftmax):
    """softmax over the height H of each column: sum over h of y(n, c, h, w) = 1."""

    dims = (2,)


@ACTIVATIONS.register("softmax_w", options=SoftmaxActivationOptions)
class SoftmaxW(AxisSoftmax):
    """softmax over the width W of each row: sum over w of y(n, c, h, w) = 1."""

    dims = (3,)


@ACTIVATIONS.register("softmax_hw", options=SoftmaxActivationOptions)
class SoftmaxHW(AxisSoftmax):
    """spatial softmax over H x W of each channel: sum over (h, w) of y(n, c, h, w) = 1."""

    dims = (2, 3)


@ACTIVATIONS.register("softmax_c", options=SoftmaxActivationOptions)
class SoftmaxC(AxisSoftmax):
    """softmax over the channels C at each pixel (as nn.Softmax2d): sum over c of y(n, c, h, w) = 1."""

    dims = (1,)


# --------------------------------------------------------------------------- building


def is_softmax(name: str) -> bool:
    """Whether the registered activation ``name`` is one of the softmax family."""
    factory = ACTIVATIONS.get(name)
    return isinstance(factory, type) and issubclass(factory, AxisSoftmax)


def softmax_names() -> list[str]:
    """The registered softmax activations."""
    return [n for n in ACTIVATIONS.names() if is_softmax(n)]


def build_activation(name: str, options: SoftmaxOptions | None = None) -> nn.Module:
    """A fresh activation module by registry name; ``options`` only for the softmax family."""
    if is_softmax(name):
        return ACTIVATIONS.create(name, options)
    if options is not None and options != SoftmaxOptions():
        raise UserError(f"activation {name!r} takes no softmax options; use one of {', '.join(softmax_names())}")
    return ACTIVATIONS.create(name)


@dataclass(frozen=True)
class BlockActivations:
    """Which activation each block of a backbone gets, and a fresh module of it per block.

    ``name`` (``model.activation``) in every block or, when ``options.softmax_blocks`` lists
    block indices, the (softmax) ``name`` in those blocks and ``relu`` in the others.
    ``options`` are the activation's own (:class:`SoftmaxActivationOptions` for the softmax
    family, none for the pointwise ones); ``model`` names the backbone in errors.

    >>> BlockActivations("softmax_hw", SoftmaxActivationOptions(softmax_blocks=[2])).names(3)
    ['relu', 'relu', 'softmax_hw']
    """

    name: str = "relu"
    options: Options = field(default_factory=Options)
    model: str = "the model"

    def names(self, num_blocks: int) -> list[str]:
        """The activation name of each of ``num_blocks`` blocks (UserError: a listed block it lacks)."""
        if self.name == KEEP:
            raise keep_refused(f"model {self.model!r}")
        blocks = getattr(self.options, "softmax_blocks", None)
        if blocks is None:
            return [self.name] * num_blocks
        bad = [i for i in blocks if not 0 <= i < num_blocks]
        if bad:
            raise UserError(
                f"model.softmax_blocks={blocks} but model {self.model!r} has {num_blocks} blocks; "
                f"use indices 0 to {num_blocks - 1}"
            )
        return [self.name if i in blocks else "relu" for i in range(num_blocks)]

    def build(self, name: str) -> nn.Module:
        """A fresh module of the activation ``name`` (one of :meth:`names`): ``factory()``, or
        ``factory(options)`` for an activation registered with options (these options, or its
        defaults in a block that gets another activation than the configured one)."""
        registered = ACTIVATIONS.options(name)
        if registered is Options:
            return ACTIVATIONS.create(name)
        return ACTIVATIONS.create(name, self.options if isinstance(self.options, registered) else registered())
