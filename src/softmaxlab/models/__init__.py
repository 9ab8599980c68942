"""Backbones by name (:data:`MODELS`): images -> features; the head is added separately.

``model.name`` is a built-in (``simple_cnn``, ``resnet12``), a library model (``timm:<name>``,
``torchvision:<name>``) or the user's own factory (``path/to/file.py:factory``,
``package.module:factory``): see :mod:`softmaxlab.models.families`.
"""

from __future__ import annotations

import inspect
from typing import Protocol

import torch
from torch import Tensor, nn

from softmaxlab.activations import BlockActivations
from softmaxlab.errors import UserError
from softmaxlab.heads import HEADS, build_head
from softmaxlab.models import simple_cnn  # noqa: F401  (registers the default model first: `softmaxlab list`)

# isort: split
from softmaxlab.models import resnet12  # noqa: F401  (registers the other models)

# isort: split
from softmaxlab.models import families  # registers the library and user families (after the built-ins)
from softmaxlab.models.base import MODELS, Classifier, ConvNetOptions
from softmaxlab.registry import NamedOptions, Options


class ModelSection(NamedOptions, Protocol):
    """The ``model`` config section: a registered model's options plus ``activation`` and its options."""

    activation: str


class ModelAndHead(Protocol):
    """What :func:`build_model` reads of an experiment config: its ``model`` and ``head`` sections."""

    model: ModelSection
    head: NamedOptions


def build_backbone(cfg: ModelSection, in_channels: int) -> nn.Module:
    """The backbone ``cfg.name``, built by its factory ``factory(in_channels, options, activations)``
    with ``cfg`` as its options (see :mod:`softmaxlab.models.base`)."""
    return _call_factory(cfg.name, in_channels, cfg, BlockActivations(cfg.activation, cfg, cfg.name))


def _call_factory(name: str, in_channels: int, options: Options, activations: BlockActivations) -> nn.Module:
    """Call the factory of ``name``.

    Raises:
        UserError: a factory that cannot be called as ``factory(in_channels, options,
            activations)``, that returns no ``nn.Module``, or whose module has no integer
            ``out_features`` (the feature size the head needs).
    """
    factory = MODELS.get(name)
    try:
        inspect.signature(factory).bind(in_channels, options, activations)
    except TypeError as exc:
        raise UserError(
            f"model {name!r}: its factory {getattr(factory, '__name__', factory)!r} cannot be called as "
            f"factory(in_channels, options, activations) ({exc}); register a factory with that signature, or "
            "name a library classifier (model.name=torchvision:<name>, timm:<name>) or your own "
            "(model.name=path/to/file.py:factory) instead"
        ) from None
    except ValueError:  # no signature to inspect (a builtin): the call itself says what is wrong
        pass
    backbone = factory(in_channels, options, activations)
    if not isinstance(backbone, nn.Module) or not isinstance(getattr(backbone, "out_features", None), int):
        raise UserError(
            f"model {name!r}: its factory must return an nn.Module with an integer out_features (the size of "
            f"the features it outputs), got {type(backbone).__name__}"
        )
    return backbone


#: The most parameters a model may have (8 GB of float32 weights): a limit is the only defence
#: against a config (or a model.pt) that asks for a model too big to build.
MAX_PARAMETERS = 2_000_000_000


def build_model(
    cfg: ModelAndHead,
    in_channels: int,
    num_classes: int,
    coarse_of: Tensor | None = None,
    *,
    initial_weights: bool = True,
) -> Classifier:
    """Backbone ``cfg.model.name`` + head ``cfg.head.name`` for ``num_classes`` classes.

    The backbone is first built on the ``meta`` device (shapes, no memory) to count its
    parameters: beyond :data:`MAX_PARAMETERS` it is a UserError, before anything is allocated
    (not for a user's factory, whose code runs once). ``initial_weights=False`` skips
    ``model.pretrained`` and ``model.weights``, for a caller that loads trained weights next
    (a run's ``model.pt``: no download, no file that may have moved).
    """
    model_cfg = cfg.model if initial_weights else without_initial_weights(cfg.model)
    if getattr(type(model_cfg), "counted_on_meta", True):
        with torch.device("meta"):
            size = sum(p.numel() for p in build_backbone(without_initial_weights(model_cfg), in_channels).parameters())
        if size > MAX_PARAMETERS:
            raise UserError(
                f"model {cfg.model.name!r} with these options has {size:,} parameters, more than the "
                f"{MAX_PARAMETERS:,} allowed; lower model.widths or model.width, or choose a smaller model"
            )
    backbone = build_backbone(model_cfg, in_channels)
    return Classifier(backbone, _head_for(cfg.head, backbone, num_classes, coarse_of))


def without_initial_weights(options: ModelSection) -> ModelSection:
    """``options`` with ``pretrained`` off and no ``weights`` file, where the model has those options."""
    fields = type(options).model_fields  # type: ignore[attr-defined]
    update = {k: v for k, v in (("pretrained", False), ("weights", None)) if k in fields}
    return options.model_copy(update=update) if update else options  # type: ignore[attr-defined]


def _head_for(cfg: NamedOptions, backbone: nn.Module, num_classes: int, coarse_of: Tensor | None) -> nn.Module:
    """The head on the backbone's features; on the logits of a backbone that outputs them
    (``model.user_head: none``), a head without a linear layer of its own.

    Raises:
        UserError: a head with output layers of its own on logits, or logits of another
            number of classes than the data's.
    """
    if not getattr(backbone, "outputs_logits", False):
        return build_head(cfg, backbone.out_features, num_classes, coarse_of)
    if not HEADS.get(cfg.name).maps_logits:
        raise UserError(
            f"head.name={cfg.name} has output layers of its own and cannot take the model's logits "
            f"(model.user_head=none); use one of {', '.join(families.logit_heads())}, or model.user_head=linear"
        )
    if backbone.out_features != num_classes:
        raise UserError(
            f"model {backbone.model_name!r} outputs {backbone.out_features} logits and the data has {num_classes} "
            "classes; make the factory output one per class (model.kwargs), or use model.user_head=linear"
        )
    head = build_head(cfg, 1, num_classes, coarse_of)  # a 1 x K layer, not K x K: take_logits drops it
    head.take_logits()
    return head


def backbone_parameters(name: str, in_channels: int = 3) -> int:
    """Parameters of the backbone ``name`` with its default options (the head adds F x K + K)."""
    backbone = _call_factory(name, in_channels, MODELS.options(name)(), BlockActivations("relu", Options(), name))
    return sum(p.numel() for p in backbone.parameters())


__all__ = [
    "MODELS",
    "Classifier",
    "ConvNetOptions",
    "backbone_parameters",
    "build_backbone",
    "build_model",
    "without_initial_weights",
]
