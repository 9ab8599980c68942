"""``model.name`` families: any timm or torchvision classifier, and the user's own factory.

* ``timm:<name>``: ``timm.create_model(name, num_classes=0, in_chans=C, **model.kwargs)``,
  which has no classifier; its features are ``head_hidden_size`` (else ``num_features``)
  wide, and its stages are the modules of its ``feature_info``.
* ``torchvision:<name>``: ``torchvision.models.get_model(name, **model.kwargs)`` with its
  last ``nn.Linear`` (of ``fc``, ``classifier``, ``heads`` or ``head``) replaced by the
  identity, so the features are that layer's ``in_features`` wide (VGG keeps its two hidden
  layers: 4096); its stages are ``layer1..layer4`` of a ResNet, else the children of
  ``features`` (VGG, MobileNet, EfficientNet, ConvNeXt, DenseNet, Swin), ``trunk_output``
  (RegNet), ``layers`` (MNASNet) or ``encoder.layers`` (ViT), else its top-level children
  with parameters. Images must have 3 channels.
* ``path/to/file.py:factory`` or ``package.module:factory``: ``factory(**model.kwargs)``
  (see :func:`softmaxlab.models.external.load_factory`). Its features are its
  ``out_features`` attribute, else measured by a forward on a (1, C, 32, 32) example; its
  stages are its ``blocks`` attribute (a list or ``nn.ModuleList`` of its submodules), if
  any. With ``model.user_head: none`` its output is the logits: the head adds no linear layer
  and only normalises them and pairs them with its loss (:func:`logit_heads`).

Options (``model.*``, :class:`LibraryOptions` / :class:`FactoryOptions`): ``kwargs``,
``weights`` (a local state dict; a library classifier's own keys are left out, with a
warning), ``pretrained`` (library models: their own downloader), ``dropout`` on the
features, and ``activation`` defaults to ``keep``: the model's own activations. Another
``model.activation`` replaces the activation modules (see :mod:`softmaxlab.models.wrap`).
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, field_validator, model_validator
from torch import nn

from softmaxlab.activations import KEEP, BlockActivations
from softmaxlab.errors import UserError
from softmaxlab.heads import HEADS
from softmaxlab.models.base import MODELS
from softmaxlab.models.external import (
    BOTH_WEIGHTS,
    build_user_model,
    construct_library_model,
    is_factory_spec,
    is_library_model,
    load_weights_file,
    load_weights_into,
)
from softmaxlab.models.wrap import ExternalBackbone, external_backbone, set_submodule
from softmaxlab.registry import Options

#: The side of the example image a user factory's features are measured on (without ``out_features``).
EXAMPLE_SIZE = 32
#: Constructor arguments that softmaxlab sets itself (the head owns the classes).
RESERVED_KWARGS = ("num_classes", "pretrained", "weights", "in_chans")


class ExternalOptions(Options):
    """Options of every model softmaxlab did not write (library models and user factories)."""

    activation: str = Field(KEEP, frozen=True)  # their default model.activation: the model's own activations
    kwargs: dict[str, Any] = Field(default_factory=dict)  # keyword arguments of the constructor or factory
    weights: str | None = None  # a local state dict loaded at build: .safetensors, or a torch file (weights_only)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)  # dropout on the features, before the head

    #: build_model counts the parameters on the meta device before building (see softmaxlab.models).
    counted_on_meta: ClassVar[bool] = True


class LibraryOptions(ExternalOptions):
    """Options of ``timm:<name>`` and ``torchvision:<name>``."""

    pretrained: bool = False  # the library's pretrained weights, through its own downloader (needs a network)

    @field_validator("kwargs")
    @classmethod
    def _not_reserved(cls, v: dict[str, Any]) -> dict[str, Any]:
        taken = [k for k in RESERVED_KWARGS if k in v]
        if taken:
            raise ValueError(
                f"{taken[0]!r} is set by softmaxlab (the head owns the classes; model.pretrained and model.weights "
                "load weights; in_chans follows the data); remove it"
            )
        return v

    @model_validator(mode="after")
    def _one_source_of_weights(self) -> LibraryOptions:
        if self.pretrained and self.weights is not None:
            raise ValueError(BOTH_WEIGHTS)
        return self


class FactoryOptions(ExternalOptions):
    """Options of ``path/to/file.py:factory`` and ``package.module:factory``."""

    # linear: the factory outputs features and the head adds its linear layer; none: it outputs the
    # logits (B, K) itself, its final layer stays, and the head only normalises them (logit_heads()).
    user_head: Literal["linear", "none"] = "linear"

    #: The user's code runs once, on the real device: a second run on the meta device would surprise it.
    counted_on_meta: ClassVar[bool] = False

    @model_validator(mode="after")
    def _no_dropout_on_logits(self) -> FactoryOptions:
        if self.user_head == "none" and self.dropout > 0:
            raise ValueError("model.dropout drops features, and with model.user_head=none the model outputs logits")
        return self


# --------------------------------------------------------------------------- timm


def _suggest(name: str) -> str | None:
    """``timm:<name>`` or ``torchvision:<name>`` for a bare name that a library has, else None."""
    if ":" in name or not name.strip():
        return None
    for library in ("timm", "torchvision"):
        try:
            if is_library_model(library, name):
                return f"{library}:{name}"
        except ImportError:  # an error message must not fail for want of a library
            continue
    return None


def _load_headless(net: nn.Module, path: str, classifier: tuple[str, ...], name: str) -> None:
    """Load the state dict in ``path`` into ``net``, leaving out the keys of the library's
    classifier (``classifier``: its qualified names), with a warning that says which."""
    state = load_weights_file(path)
    dropped = [k for k in state if any(k == c or k.startswith(c + ".") for c in classifier)]
    load_weights_into(net, {k: v for k, v in state.items() if k not in dropped}, f"model.weights {path!r}")
    if dropped:
        shown = ", ".join(sorted(dropped)[:4]) + (" ..." if len(dropped) > 4 else "")  # files differ in order
        warnings.warn(
            f"model.weights {path!r}: left out {name}'s classifier ({shown}); the head replaces it", stacklevel=3
        )


def _timm_stages(net: nn.Module) -> list[str]:
    """The modules of timm's ``feature_info`` (the stages where the resolution changes)."""
    paths = [info.get("module") for info in getattr(net, "feature_info", None) or [] if isinstance(info, dict)]
    names = {p for p, _ in net.named_modules()}
    return [p for p in paths if p in names]


@MODELS.register_family("timm:<name>", lambda name: name.startswith("timm:"), options=LibraryOptions, suggest=_suggest)
def timm_backbone(name: str, in_channels: int, options: LibraryOptions, activations: BlockActivations) -> nn.Module:
    """Any timm model (timm.list_models()) without its classifier."""
    net = construct_library_model(name, options.pretrained, options.kwargs, {"num_classes": 0, "in_chans": in_channels})
    if options.weights is not None:
        classifier = net.pretrained_cfg.get("classifier") if isinstance(net.pretrained_cfg, dict) else None
        classifier = (classifier,) if isinstance(classifier, str) else tuple(classifier or ())
        _load_headless(net, options.weights, classifier, name)
    out_features = int(getattr(net, "head_hidden_size", None) or net.num_features)
    return external_backbone(net, name, out_features, _timm_stages(net), activations, options.dropout)


# --------------------------------------------------------------------------- torchvision


def remove_classifier(net: nn.Module, name: str) -> tuple[str, int]:
    """Replace the last ``nn.Linear`` of a torchvision classifier (in ``fc``, ``classifier``,
    ``heads`` or ``head``) by the identity; returns its qualified name and ``in_features``."""
    for attr in ("fc", "classifier", "heads", "head"):
        container = getattr(net, attr, None)
        if not isinstance(container, nn.Module):
            continue
        linears = [(p, m) for p, m in container.named_modules() if isinstance(m, nn.Linear)]
        if linears:
            path, last = linears[-1]
            full = f"{attr}.{path}" if path else attr
            set_submodule(net, full, nn.Identity())
            return full, last.in_features
    raise UserError(
        f"{name!r} has no final nn.Linear in fc, classifier, heads or head for the softmaxlab head to replace; "
        "use the timm model of that name, or your own factory (model.name=path/to/file.py:factory)"
    )


def _torchvision_stages(net: nn.Module) -> list[str]:
    """ResNet's ``layer1..4``; else the children of the first container the family keeps its stages in."""
    if all(hasattr(net, f"layer{i}") for i in range(1, 5)):
        return [f"layer{i}" for i in range(1, 5)]
    modules = dict(net.named_modules())
    for container in ("features", "trunk_output", "layers", "encoder.layers"):
        found = modules.get(container)
        if isinstance(found, (nn.Sequential, nn.ModuleList)) and len(found):
            return [f"{container}.{child}" for child, _ in found.named_children()]
    return [child for child, m in net.named_children() if any(True for _ in m.parameters())]


@MODELS.register_family("torchvision:<name>", lambda name: name.startswith("torchvision:"), options=LibraryOptions)
def torchvision_backbone(
    name: str, in_channels: int, options: LibraryOptions, activations: BlockActivations
) -> nn.Module:
    """Any torchvision classifier without its last linear layer."""
    if in_channels != 3:
        raise UserError(
            f"{name!r} takes 3-channel images and the data has {in_channels}; use a timm model (it adapts its first "
            "convolution) or data with 3 channels"
        )
    net = construct_library_model(name, options.pretrained, options.kwargs)
    classifier, out_features = remove_classifier(net, name)
    if options.weights is not None:
        _load_headless(net, options.weights, (classifier,), name)
    return external_backbone(net, name, out_features, _torchvision_stages(net), activations, options.dropout)


# --------------------------------------------------------------------------- user factories


def _features_of(net: nn.Module, name: str, in_channels: int) -> int:
    """``net.out_features``, else the width of its output for a (1, C, 32, 32) example of zeros
    (in eval mode: no BatchNorm statistics or random numbers are touched)."""
    declared = getattr(net, "out_features", None)
    if isinstance(declared, int) and not isinstance(declared, bool) and declared > 0:
        return declared
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            out = net(torch.zeros(1, in_channels, EXAMPLE_SIZE, EXAMPLE_SIZE))
    except Exception as exc:
        raise UserError(
            f"{name}: a forward on a (1, {in_channels}, {EXAMPLE_SIZE}, {EXAMPLE_SIZE}) example failed "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); give the module an "
            "out_features attribute (the width of its output)"
        ) from None
    finally:
        net.train(was_training)
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserError(f"{name} outputs {got} for one image, not (1, F); end it with global pooling and a flatten")
    return int(out.shape[1])


def _user_stages(net: nn.Module, name: str) -> list[str]:
    """The qualified names of the modules in ``net.blocks`` (none without that attribute)."""
    blocks = getattr(net, "blocks", None)
    if blocks is None:
        return []
    path_of = {id(m): p for p, m in net.named_modules() if p}
    if isinstance(blocks, nn.Module) and not isinstance(blocks, (nn.ModuleList, nn.Sequential)):
        blocks = [blocks]
    paths = [path_of.get(id(b)) for b in blocks]
    if not all(isinstance(b, nn.Module) for b in blocks) or None in paths:
        raise UserError(f"{name}: its `blocks` must list submodules of the network (its stages)")
    return paths


@MODELS.register_family(
    "package.module:factory",
    lambda name: is_factory_spec(name) and not name.partition(":")[0].endswith(".py"),
    options=FactoryOptions,
)
@MODELS.register_family(
    "path/to/file.py:factory",
    lambda name: is_factory_spec(name) and name.partition(":")[0].endswith(".py"),
    options=FactoryOptions,
)
def factory_backbone(name: str, in_channels: int, options: FactoryOptions, activations: BlockActivations) -> nn.Module:
    """Your factory(**model.kwargs): features, or logits (model.user_head=none)."""
    net = build_user_model(name, options.kwargs)
    if options.weights is not None:
        load_weights_into(net, load_weights_file(options.weights), f"model.weights {options.weights!r}")
    out_features = _features_of(net, name, in_channels)
    logits = options.user_head == "none"
    return external_backbone(net, name, out_features, _user_stages(net, name), activations, options.dropout, logits)


def logit_heads() -> list[str]:
    """The heads that can take a user model's logits (``model.user_head: none``): those whose
    scores are a function of the logits alone (:attr:`softmaxlab.heads.Head.maps_logits`)."""
    return [n for n in HEADS.names() if HEADS.get(n).maps_logits]


__all__ = ["ExternalBackbone", "FactoryOptions", "LibraryOptions", "logit_heads", "remove_classifier"]
