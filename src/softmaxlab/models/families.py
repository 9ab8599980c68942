"""``model.name`` families: any timm or torchvision classifier, and the user's own factory.

* ``timm:<name>``: ``timm.create_model(name, num_classes=0, in_chans=C, **model.kwargs)``,
  which has no classifier; its features are ``head_hidden_size`` (else ``num_features``)
  wide, and its stages are the model's own stage containers, the stem never one of them
  (:func:`timm_stages`): ``layer1..4`` of a ResNet, ``stages.N`` (ConvNeXt, CSPNet, NFNet),
  ``layers.N`` (Swin), ``blocks.N`` (EfficientNet, MobileNet: timm's stages of blocks with one
  setting, resolution kept or not; ViT: its blocks), ``s1..4`` (RegNet); else the modules of
  its ``feature_info`` (which may begin at the stem).
* ``torchvision:<name>``: ``torchvision.models.get_model(name, **model.kwargs)`` with its
  last ``nn.Linear`` (of ``fc``, ``classifier``, ``heads`` or ``head``) replaced by the
  identity, so the features are that layer's ``in_features`` wide (VGG keeps its two hidden
  layers: 4096); its stages are ``layer1..layer4`` of a ResNet, else the children of
  ``features`` (VGG, MobileNet, EfficientNet, ConvNeXt, DenseNet, Swin), ``trunk_output``
  (RegNet), ``layers`` (MNASNet) or ``encoder.layers`` (ViT), else its top-level children
  with parameters. Images must have 3 channels. GoogLeNet and Inception v3 are built without
  their auxiliary classifiers (``aux_logits=False``, and ``init_weights=True`` as torchvision
  asks, unless ``model.kwargs`` says otherwise; with their weights torchvision drops them
  itself). Below the smallest image side that torchvision's weights name (``min_size``:
  75 px for Inception v3), a failing forward is a one-line error naming that size.
* ``path/to/file.py:factory`` or ``package.module:factory``: ``factory(**model.kwargs)``
  (see :func:`softmaxlab.models.external.load_factory`). Its features are its
  ``out_features`` attribute, else measured by a forward on a (1, C, 32, 32) example; its
  stages are its ``blocks`` attribute (a list or ``nn.ModuleList`` of its submodules), if
  any. With ``model.user_head: none`` its output is the logits: the head adds no linear layer
  and only normalises them and pairs them with its loss (:func:`logit_heads`).

Options (``model.*``, :class:`LibraryOptions` / :class:`FactoryOptions`): ``kwargs``,
``weights`` (a local state dict; a library classifier's own keys are left out, with a
warning), ``pretrained`` (library models: their own downloader; without a network, a
one-line error at once), ``dropout`` on the features, ``output`` (the entry of a tuple or
dict output that holds the features: an index or a key; see
:func:`softmaxlab.models.external.select_output`), and ``activation`` defaults to ``keep``:
the model's own activations. Another ``model.activation`` replaces the activation modules
(see :mod:`softmaxlab.models.wrap`).
"""

from __future__ import annotations

import re
import warnings
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, field_validator, model_validator
from torch import nn

from softmaxlab.activations import KEEP, BlockActivations
from softmaxlab.errors import UserError, short_error
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
    select_output,
)
from softmaxlab.models.wrap import PROBE_SIZES, ExternalBackbone, NetworkIO, external_backbone, set_submodule
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
    # The entry of a tuple or dict output that holds the features (or logits): an index (0, -1) or a
    # key (logits); unset, the output must be one tensor.
    output: int | str | None = None

    #: build_model counts the parameters on the meta device before building (see softmaxlab.models).
    counted_on_meta: ClassVar[bool] = True

    @field_validator("output", mode="before")
    @classmethod
    def _index_or_key(cls, v: Any) -> Any:
        # Before pydantic's union, which would take `true` for the index 1 and 1.5 for the key "1.5".
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, str))):
            raise ValueError("must be an index (0, -1) or a key (logits) of the model's tuple or dict output")
        return v


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


#: timm's containers of stages, looked for in this order among the top-level children:
#: ``stages`` (ConvNeXt, CSPNet, NFNet, ResNetV2, MaxViT), ``layers`` (Swin, FocalNet), ``blocks``
#: (EfficientNet and MobileNet: one entry per stage of blocks with one setting; ViT: its blocks),
#: ``levels`` (NesT).
TIMM_STAGE_CONTAINERS = ("stages", "layers", "blocks", "levels")
#: Top-level stages numbered from 1: ResNet's ``layer1..4`` (SENet's ``layer0`` is its stem),
#: RegNet's ``s1..4``, Visformer's ``stage1..3``.
_NUMBERED_STAGE = re.compile(r"(layer|stage|s)([1-9][0-9]*)")


def timm_stages(net: nn.Module) -> list[str]:
    """The qualified names of a timm model's stages, as its own code groups them and the stem
    never among them: the children of the first of :data:`TIMM_STAGE_CONTAINERS` it has (at
    least two), else its top-level children numbered 1, 2, ... (:data:`_NUMBERED_STAGE`, at
    least two), else the modules of its ``feature_info``.

    ``feature_info`` (timm's feature-extraction taps) is the last resort because it names where
    the resolution changes, not the stages: it starts at the stem (ResNet's ``act1``) and skips
    the stages that keep the resolution (blocks 3 and 5 of EfficientNet-B0), so its index i is
    not what a user calls stage i.
    """
    children = dict(net.named_children())
    for name in TIMM_STAGE_CONTAINERS:
        container = children.get(name)
        if isinstance(container, (nn.Sequential, nn.ModuleList)) and len(container) > 1:
            return [f"{name}.{child}" for child, _ in container.named_children()]
    numbered: dict[str, dict[int, str]] = {}
    for child in children:
        match = _NUMBERED_STAGE.fullmatch(child)
        if match:
            numbered.setdefault(match[1], {})[int(match[2])] = child
    for found in numbered.values():
        if len(found) > 1 and sorted(found) == list(range(1, len(found) + 1)):
            return [found[i] for i in sorted(found)]
    paths = [info.get("module") for info in getattr(net, "feature_info", None) or [] if isinstance(info, dict)]
    names = {p for p, _ in net.named_modules() if p}  # "" (the whole model: TResNet's stem tap) is no stage
    return [p for p in paths if p in names]


def _timm_io(net: nn.Module, name: str, in_channels: int, options: LibraryOptions) -> NetworkIO:
    """How to call a timm model: its features' width, and its pretrained config's sizes (its
    ``min_input_size``, where it states one; its ``input_size`` for the probe of a model that
    takes only that size)."""
    cfg = net.pretrained_cfg if isinstance(getattr(net, "pretrained_cfg", None), dict) else {}
    min_input, own = cfg.get("min_input_size"), cfg.get("input_size")
    sizes = PROBE_SIZES + ((int(own[-1]),) if own and int(own[-1]) not in PROBE_SIZES else ())
    return NetworkIO(
        name,
        in_channels,
        int(getattr(net, "head_hidden_size", None) or net.num_features),
        options.output,
        min_size=int(min(min_input[-2:])) if min_input else 1,
        probe_sizes=sizes,
    )


@MODELS.register_family("timm:<name>", lambda name: name.startswith("timm:"), options=LibraryOptions, suggest=_suggest)
def timm_backbone(name: str, in_channels: int, options: LibraryOptions, activations: BlockActivations) -> nn.Module:
    """Any timm model (timm.list_models()) without its classifier."""
    net = construct_library_model(name, options.pretrained, options.kwargs, {"num_classes": 0, "in_chans": in_channels})
    if options.weights is not None:
        classifier = net.pretrained_cfg.get("classifier") if isinstance(net.pretrained_cfg, dict) else None
        classifier = (classifier,) if isinstance(classifier, str) else tuple(classifier or ())
        _load_headless(net, options.weights, classifier, name)
    io = _timm_io(net, name, in_channels, options)
    return external_backbone(net, io, timm_stages(net), activations, options.dropout)


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


#: Constructor arguments softmaxlab gives torchvision models built without their weights, unless
#: model.kwargs sets them: GoogLeNet and Inception v3 return their auxiliary classifiers' outputs
#: in training (a named tuple, of 1000 classes the head does not own) unless aux_logits=False, and
#: warn unless init_weights is given. With weights, torchvision itself requires aux_logits=True,
#: loads the auxiliary classifiers and drops them again (as none were asked for).
TORCHVISION_DEFAULTS: dict[str, dict[str, Any]] = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}
#: Auxiliary classifiers a torchvision model may have (None when turned off).
_AUX_CLASSIFIERS = ("aux1", "aux2", "AuxLogits")


def _torchvision_min_size(arch: str) -> int:
    """The smallest image side torchvision's weights of ``arch`` name (their ``min_size``; 1 without)."""
    import torchvision

    try:
        meta = torchvision.models.get_model_weights(arch).DEFAULT.meta
    except (ValueError, KeyError, AttributeError):  # a model without weights
        return 1
    return int(min(meta.get("min_size", (1, 1))))


@MODELS.register_family("torchvision:<name>", lambda name: name.startswith("torchvision:"), options=LibraryOptions)
def torchvision_backbone(
    name: str, in_channels: int, options: LibraryOptions, activations: BlockActivations
) -> nn.Module:
    """Any torchvision classifier without its last linear layer (and auxiliary classifiers)."""
    if in_channels != 3:
        raise UserError(
            f"{name!r} takes 3-channel images and the data has {in_channels}; use a timm model (it adapts its first "
            "convolution) or data with 3 channels"
        )
    arch = name.partition(":")[2].strip()
    defaults = {} if options.pretrained else TORCHVISION_DEFAULTS.get(arch, {})
    net = construct_library_model(name, options.pretrained, {**defaults, **options.kwargs})
    classifier, out_features = remove_classifier(net, name)
    if options.weights is not None:  # a full model's file: its turned-off auxiliary classifiers are left out too
        aux = tuple(a for a in _AUX_CLASSIFIERS if hasattr(net, a) and getattr(net, a) is None)
        _load_headless(net, options.weights, (classifier, *aux), name)
    io = NetworkIO(name, in_channels, out_features, options.output, min_size=_torchvision_min_size(arch))
    return external_backbone(net, io, _torchvision_stages(net), activations, options.dropout)


# --------------------------------------------------------------------------- user factories


def _features_of(net: nn.Module, name: str, in_channels: int, output: int | str | None) -> int:
    """``net.out_features``, else the width of its output (the entry ``output`` names:
    ``model.output``) for a (1, C, 32, 32) example of zeros (in eval mode: no BatchNorm
    statistics or random numbers are touched)."""
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
            f"({short_error(exc)}); give the module an "
            "out_features attribute (the width of its output)"
        ) from None
    finally:
        net.train(was_training)
    out = select_output(out, output, model=name)
    if out.dim() != 2:
        raise UserError(
            f"{name} outputs {tuple(out.shape)} for one image, not (1, F); end it with global pooling and a flatten"
        )
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
    out_features = _features_of(net, name, in_channels, options.output)
    io = NetworkIO(name, in_channels, out_features, options.output, outputs_logits=options.user_head == "none")
    return external_backbone(net, io, _user_stages(net, name), activations, options.dropout)


def logit_heads() -> list[str]:
    """The heads that can take a user model's logits (``model.user_head: none``): those whose
    scores are a function of the logits alone (:attr:`softmaxlab.heads.Head.maps_logits`)."""
    return [n for n in HEADS.names() if HEADS.get(n).maps_logits]


__all__ = [
    "TIMM_STAGE_CONTAINERS",
    "TORCHVISION_DEFAULTS",
    "ExternalBackbone",
    "FactoryOptions",
    "LibraryOptions",
    "logit_heads",
    "remove_classifier",
    "timm_stages",
]
