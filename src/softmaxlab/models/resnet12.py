"""``resnet12``: the ResNet-12 of few-shot learning (TADAM, MetaOptNet, FEAT), activation injected.

Four residual blocks of widths 64-160-320-640 (``model.widths`` replaces them; one block per
width), each three 3x3 convolutions with a 1x1 projection shortcut, then a 2x2 max-pool.
For an input (B, C, H, W) and widths c_1..c_n::

    block i (c_{i-1} -> c_i):                           # in: (B, c_{i-1}, H_i, W_i)
        y = act(BN(Conv3x3(x)))                         # (B, c_i, H_i, W_i)
        y = act(BN(Conv3x3(y)))                         # (B, c_i, H_i, W_i)
        y = BN(Conv3x3(y))                              # (B, c_i, H_i, W_i)
        y = act(y + BN(Conv1x1(x)))                     # residual add, then the activation
        y = MaxPool2x2(y)                               # (B, c_i, H_i / 2, W_i / 2)
    features = Dropout(GlobalAvgPool(block_n(...)))     # (B, c_n): (B, 640) by default

With 3 input channels and the default widths the backbone has 12,424,320 parameters
(convolutions without bias, BatchNorm weight and bias), the usual "12.4 M" of the literature.
The original uses LeakyReLU(0.1) and DropBlock; here each block's activation comes from
``model.activation`` / ``model.softmax_blocks`` exactly as in ``simple_cnn``
(:class:`softmaxlab.activations.BlockActivations`), and ``model.dropout`` drops features.
"""

from __future__ import annotations

import itertools

from pydantic import Field
from torch import Tensor, nn

from softmaxlab.activations import BlockActivations
from softmaxlab.models.base import MODELS, ConvNetOptions, check_input_size


def _conv_bn(c_in: int, c_out: int, kernel_size: int, batch_norm: bool, bn_eps: float = 1e-5) -> nn.Sequential:
    """Conv(k x k, 'same' padding) -> [BatchNorm]: (B, c_in, H, W) -> (B, c_out, H, W)."""
    conv = nn.Conv2d(c_in, c_out, kernel_size, padding=kernel_size // 2, bias=not batch_norm)
    return nn.Sequential(conv, nn.BatchNorm2d(c_out, eps=bn_eps) if batch_norm else nn.Identity())


class ResidualBlock(nn.Module):
    """Three conv-BN layers, a conv-BN shortcut, the activation after the add, a 2x2 max-pool.

    (B, c_in, H, W) -> (B, c_out, H / 2, W / 2). The one ``activation`` module is applied at
    all three points (as torchvision's BasicBlock reuses its ReLU), so a learned softmax
    temperature is one parameter per block, as ``model.learn_activation_temperature`` says.
    ``activation_name`` is its registry name (figure titles, diagnostics).
    """

    def __init__(
        self,
        c_in: int,
        c_out: int,
        activation: nn.Module,
        activation_name: str,
        batch_norm: bool = True,
        bn_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.conv1 = _conv_bn(c_in, c_out, 3, batch_norm, bn_eps)
        self.conv2 = _conv_bn(c_out, c_out, 3, batch_norm, bn_eps)
        self.conv3 = _conv_bn(c_out, c_out, 3, batch_norm, bn_eps)
        self.shortcut = _conv_bn(c_in, c_out, 1, batch_norm, bn_eps)  # projects c_in -> c_out channels
        self.activation = activation
        self.pool = nn.MaxPool2d(2)
        self.activation_name = activation_name

    def forward(self, x: Tensor) -> Tensor:
        y = self.activation(self.conv1(x))  # (B, c_out, H, W)
        y = self.activation(self.conv2(y))  # (B, c_out, H, W)
        y = self.activation(self.conv3(y) + self.shortcut(x))  # (B, c_out, H, W)
        return self.pool(y)  # (B, c_out, H / 2, W / 2)


class ResNet12(nn.Module):
    """:class:`ResidualBlock` s (``self.blocks``), global average pooling and optional dropout."""

    def __init__(self, in_channels: int, options: ConvNetOptions, activations: BlockActivations) -> None:
        super().__init__()
        widths = [in_channels, *options.block_widths()]
        names = activations.names(len(options.widths))
        self.blocks = nn.ModuleList(
            ResidualBlock(c_in, c_out, activations.build(name), name, options.batch_norm, options.bn_eps)
            for (c_in, c_out), name in zip(itertools.pairwise(widths), names, strict=True)
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(options.dropout) if options.dropout > 0 else nn.Identity()
        self.out_features = widths[-1]

    def forward(self, x: Tensor) -> Tensor:
        check_input_size(x, len(self.blocks), "resnet12")
        for block in self.blocks:
            x = block(x)  # (B, c_i, H / 2^i, W / 2^i)
        return self.dropout(self.pool(x).flatten(1))  # (B, c_last)


class ResNet12Options(ConvNetOptions):
    """Options of ``resnet12``."""

    widths: list[int] = Field(default_factory=lambda: [64, 160, 320, 640])  # output channels of each block


@MODELS.register("resnet12", options=ResNet12Options)
def resnet12(in_channels: int, options: ResNet12Options, activations: BlockActivations) -> ResNet12:
    """Few-shot ResNet-12: residual blocks of three 3x3 convs + max-pool (widths 64-160-320-640)."""
    return ResNet12(in_channels, options, activations)
