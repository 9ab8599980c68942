"""The model registry, the options of the built-in backbones, and :class:`Classifier` = backbone + head.

A backbone is an ``nn.Module`` (images (B, C, H, W) -> features (B, F)) with
``out_features`` = F and, optionally, ``blocks``: its stages (an ``nn.ModuleList``, or a
list of submodules registered elsewhere, as :class:`softmaxlab.models.wrap.ExternalBackbone`
gives for library and user models), each with an ``activation_name``. Diagnostics
(activation statistics) and feature-map pictures hook the outputs of ``blocks``.

A model registers a factory ``factory(in_channels, options, activations) -> backbone`` with
its options model, which becomes its ``model.*`` config keys::

    class TinyOptions(Options):
        width: int = Field(16, ge=1)  # channels of the one convolution

    @MODELS.register("tiny", options=TinyOptions)
    def tiny(in_channels: int, options: TinyOptions, activations: BlockActivations) -> nn.Module:
        \"\"\"One conv block and global average pooling.\"\"\"
        return TinyNet(in_channels, options.width, activations.build(activations.names(1)[0]))

Names of a pattern (``timm:<name>``, ``path/to/file.py:factory``) are registry families
(:meth:`~softmaxlab.registry.Registry.register_family`, see :mod:`softmaxlab.models.families`),
whose factories take the name first.

``activations`` (:class:`softmaxlab.activations.BlockActivations`) carries
``model.activation`` and its options: which activation each block gets, and a fresh module
per block.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import Field, ValidationInfo, field_validator, model_validator
from torch import Tensor, nn

from softmaxlab.errors import UserError
from softmaxlab.registry import Options, Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


#: The most output channels of one block, and the most blocks, of the built-in conv nets.
MAX_WIDTH = 16384
MAX_BLOCKS = 32


class ConvNetOptions(Options):
    """Options of the built-in conv nets (``simple_cnn``, ``resnet12``); each sets its own
    default ``widths`` (here they must be given)."""

    widths: list[int]  # output channels of each block (one block per entry)
    width: float = Field(1.0, gt=0)  # multiplier of every width (rounded, at least 1): resnet12 at 0.25 is 16-40-80-160
    batch_norm: bool = True  # BatchNorm after every convolution
    # BatchNorm's eps, added to the batch variance: PyTorch's 1e-5 dwarfs the ~1e-6 variance of
    # softmax outputs over a feature map, so normalised softmax activations have std ~0.3, not 1.
    bn_eps: float = Field(1e-5, gt=0, le=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)  # dropout before the head

    @field_validator("widths", mode="before")
    @classmethod
    def _default_when_null(cls, v: Any, info: ValidationInfo) -> Any:
        # `model.widths: null` (or unset) means the model's own default, written out in config.yaml.
        field = cls.model_fields[info.field_name]
        return field.get_default(call_default_factory=True) if v is None and not field.is_required() else v

    @field_validator("widths")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if not v or any(w < 1 for w in v):
            raise ValueError("must be a non-empty list of positive integers")
        if len(v) > MAX_BLOCKS:
            raise ValueError(f"must have at most {MAX_BLOCKS} blocks")
        return v

    @field_validator("bn_eps")
    @classmethod
    def _batch_norm_only(cls, v: float, info: ValidationInfo) -> float:
        if v != cls.model_fields["bn_eps"].default and not info.data.get("batch_norm", True):
            raise ValueError("applies to model.batch_norm=true only")
        return v

    @model_validator(mode="after")
    def _not_huge(self) -> ConvNetOptions:
        # A limit is the only defence here: a model of 1e8 channels would fill memory when built.
        if max(self.block_widths()) > MAX_WIDTH:
            widest = max(self.block_widths())
            raise ValueError(f"model.widths times model.width gives {widest} channels; at most {MAX_WIDTH} per block")
        return self

    def block_widths(self) -> list[int]:
        """Output channels of each block: ``widths`` times the ``width`` multiplier.

        >>> ConvNetOptions(widths=[64, 160, 320, 640], width=0.25).block_widths()
        [16, 40, 80, 160]
        """
        return [max(1, round(w * self.width)) for w in self.widths]


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
