"""The model registry and :class:`Classifier` = backbone + head.

A backbone is an ``nn.Module`` (images (B, C, H, W) -> features (B, F)) with
``out_features`` = F and ``blocks``: an ``nn.ModuleList`` of its stages, each with an
``activation_name``. Diagnostics (activation statistics) and feature-map pictures hook the
outputs of ``blocks``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from softmaxlab.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


class Classifier(nn.Module):
    """images (B, C, H, W) -> backbone -> features (B, F) -> head -> scores (B, K)."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))
