"""``simple_cnn``: conv-activation-pool blocks, as in the usual notebooks.

Block i: ``Conv3x3(c_{i-1} -> c_i) -> [BatchNorm] -> activation -> MaxPool2x2``; then global
average pooling gives the features (B, c_last). The head is not part of the backbone. Each
block's activation comes from ``model.activation`` / ``model.softmax_blocks``
(:class:`softmaxlab.activations.BlockActivations`).
"""

from __future__ import annotations

import itertools

from pydantic import Field
from torch import Tensor, nn

from softmaxlab.activations import BlockActivations
from softmaxlab.models.base import MODELS, ConvNetOptions, check_input_size


class ConvBlock(nn.Sequential):
    """Conv3x3 -> [BatchNorm] -> activation -> MaxPool2x2: (B, C_in, H, W) -> (B, C_out, H/2, W/2).

    ``activation_name`` is the activation's registry name (figure titles, diagnostics).
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
        layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=not batch_norm)]
        if batch_norm:
            layers.append(nn.BatchNorm2d(c_out, eps=bn_eps))
        layers += [activation, nn.MaxPool2d(2)]
        super().__init__(*layers)
        self.activation_name = activation_name


class SimpleCNN(nn.Module):
    """Stacked :class:`ConvBlock` s (``self.blocks``), global average pooling and optional dropout."""

    def __init__(self, in_channels: int, options: ConvNetOptions, activations: BlockActivations) -> None:
        super().__init__()
        widths = [in_channels, *options.block_widths()]
        names = activations.names(len(options.widths))
        self.blocks = nn.ModuleList(
            ConvBlock(c_in, c_out, activations.build(name), name, options.batch_norm, options.bn_eps)
            for (c_in, c_out), name in zip(itertools.pairwise(widths), names, strict=True)
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(options.dropout) if options.dropout > 0 else nn.Identity()
        self.out_features = widths[-1]

    def forward(self, x: Tensor) -> Tensor:
        check_input_size(x, len(self.blocks), "simple_cnn")
        for block in self.blocks:
            x = block(x)  # (B, c_i, H / 2^i, W / 2^i)
        return self.dropout(self.pool(x).flatten(1))  # (B, c_last)


class SimpleCNNOptions(ConvNetOptions):
    """Options of ``simple_cnn``."""

    widths: list[int] = Field(default_factory=lambda: [32, 64, 128, 256])  # output channels of each block


@MODELS.register("simple_cnn", options=SimpleCNNOptions)
def simple_cnn(in_channels: int, options: SimpleCNNOptions, activations: BlockActivations) -> SimpleCNN:
    """Conv-BN-activation-maxpool blocks (widths `model.widths`) and global average pooling."""
    return SimpleCNN(in_channels, options, activations)
