"""The model registry and :class:`Classifier` = backbone + head.

A backbone is an ``nn.Module`` (images (B, C, H, W) -> features (B, F)) with
``out_features`` = F and ``blocks``: an ``nn.ModuleList`` of its stages, each with an
``activation_name``. Diagnostics (activation statistics) and feature-map pictures hook the
outputs of ``blocks``. A backbone has one stage per entry of ``model.widths``; its own default
widths (used when ``model.widths`` is unset) are registered in :data:`DEFAULT_WIDTHS`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from torch import Tensor, nn

from softmaxlab.errors import UserError
from softmaxlab.registry import Registry

if TYPE_CHECKING:
    from softmaxlab.config import ModelConfig

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")

#: The block widths each registered model uses when ``model.widths`` is unset; the config
#: writes them out (see ``ModelConfig.widths``) so the resolved config.yaml shows them.
DEFAULT_WIDTHS: dict[str, tuple[int, ...]] = {}


def default_widths(name: str) -> list[int]:
    """The default block widths of the registered model ``name``."""
    MODELS.get(name)  # an unknown name is an UnknownNameError listing the valid ones
    if name not in DEFAULT_WIDTHS:
        raise KeyError(f"model {name!r} registers no default widths in softmaxlab.models.base.DEFAULT_WIDTHS")
    return list(DEFAULT_WIDTHS[name])


def block_widths(cfg: ModelConfig) -> list[int]:
    """Output channels of each block: ``model.widths`` times the ``model.width`` multiplier.

    >>> from softmaxlab.config import ModelConfig
    >>> block_widths(ModelConfig(name="resnet12", width=0.25))
    [16, 40, 80, 160]
    """
    return [max(1, round(w * cfg.width)) for w in cfg.widths]


def check_input_size(x: Tensor, num_pools: int, model: str) -> None:
    """A UserError when ``x`` (B, C, H, W) is too small for ``num_pools`` 2x2 max-pools.

    A plain shape comparison (no device sync); without it PyTorch fails deep in a pooling
    layer with "Output size is too small".
    """
    side = min(x.shape[-2:])
    if side < 2**num_pools:
        raise UserError(
            f"model {model!r} with {num_pools} blocks halves the image {num_pools} times and needs images of at "
            f"least {2**num_pools} px, got {side} px; raise data.image_size or use fewer model.widths"
        )


class Classifier(nn.Module):
    """images (B, C, H, W) -> backbone -> features (B, F) -> head -> scores (B, K)."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))
