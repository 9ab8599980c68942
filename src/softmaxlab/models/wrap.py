"""A network softmaxlab did not write, as a backbone: :class:`ExternalBackbone`, its stages,
and ``model.activation`` put into it.

* The network is kept whole (``backbone.net``); its stages (``backbone.blocks``) are found
  by their paths in it each time they are asked for, so every parameter is registered once
  and a stage that an activation replaced is still found.
* :class:`NetworkIO` says how the backbone calls it and reads its output: the element of a
  tuple or dict output that ``model.output`` names (:func:`~softmaxlab.models.external.select_output`),
  and the library's smallest image side, below which a failing forward says so in one line.
* :func:`replace_activations` swaps the network's activation *modules*
  (:func:`activation_types`: the ReLU family, GELU, SiLU / Swish, Mish, Hardswish, ...) for
  fresh modules of ``model.activation``. Gates and outputs (``Sigmoid``, ``Hardsigmoid`` of
  squeeze-excitation, ``Tanh``, attention's softmax) are no activations and stay, and so do
  activations a forward calls as functions (``F.relu``: torchvision's DenseNet and Inception
  have some), which no module replacement can reach.
* A pointwise activation replaces every activation module, those inside squeeze-excitation
  and other gating blocks included: a GELU is as well defined on a gate's pooled (B, C, 1, 1)
  vector as on a map, and "ReLU -> GELU" studies mean every ReLU (as timm's own ``act_layer``
  reaches an EfficientNet's gates).
* A softmax activation normalises over the axes of (B, C, H, W) feature maps, so it goes only
  where there are maps: inside the stages (``model.softmax_blocks``: the listed ones), and
  there only into the activation modules whose input is such a map. A probe forward
  (:func:`probe_inputs`: one square zero image at :data:`PROBE_SIZES`, eval mode, hooks on the
  activation modules) tells them apart (:func:`input_kind`): a module whose every input is
  1 x 1 (a squeeze-excitation gate's pooled vector, where a softmax over H x W is the constant
  1 and the gate a constant), channels-last (B, H, W, C) (timm's ConvNeXt MLP: "H x W" would be
  W and the channels) or not 4-D (a transformer's tokens) keeps the model's own, and one
  warning counts them by kind and names one of each. The probe runs at 128 px, where a
  stride-32 network's last maps are still 4 x 4, so a map that the data's image size makes
  1 x 1 (a ResNet's ``layer4`` at 32 px) still counts as a map and gets the softmax (the linter
  then says it passes no information on). The other activations keep the model's own.
"""

from __future__ import annotations

import itertools
import sys
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from softmaxlab.activations import KEEP, BlockActivations, is_softmax
from softmaxlab.errors import UserError, short_error
from softmaxlab.models.external import select_output


class KeptActivationsWarning(UserWarning):
    """A softmax ``model.activation`` left some activation modules as they were (their inputs are
    no feature maps); said when the model is built for training, not again when a trained run's
    model is rebuilt to evaluate, predict or lint it."""


#: torch's activation modules that ``model.activation`` replaces.
TORCH_ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.RReLU,
    nn.ELU,
    nn.CELU,
    nn.SELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
)

#: Registry names of activation classes, for the names of stages that keep their own.
_OWN_NAMES = {"ReLU": "relu", "LeakyReLU": "leaky_relu", "GELU": "gelu", "SiLU": "silu", "Swish": "silu"}


#: timm's own activation modules (``timm.layers.activations``) that ``model.activation`` replaces.
TIMM_ACTIVATIONS = ("Swish", "Mish", "HardSwish", "HardMish", "GELU", "GELUTanh", "QuickGELU")

#: Image sides of the probe forward (:func:`probe_inputs`), tried in order until the network
#: runs: 128 px leaves a stride-32 network's last maps 4 x 4, so an input that is 1 x 1 there is
#: pooled; 224 for models of one fixed input size (ViT); 32 for small models of the user's.
PROBE_SIZES = (128, 224, 32)


def activation_types() -> tuple[type[nn.Module], ...]:
    """:data:`TORCH_ACTIVATIONS`, and :data:`TIMM_ACTIVATIONS` once timm is imported (a network
    without timm imported holds none of them: a torchvision or user model need not pay for it)."""
    timm_act = sys.modules.get("timm.layers.activations")
    extra = tuple(getattr(timm_act, n) for n in TIMM_ACTIVATIONS if hasattr(timm_act, n)) if timm_act else ()
    return TORCH_ACTIVATIONS + extra


@dataclass(frozen=True)
class NetworkIO:
    """How a backbone calls a network softmaxlab did not write, and reads its output (the model
    family fills it in from the network and its ``model.*`` options)."""

    name: str  # model.name: the messages name it
    in_channels: int  # C of the images: the probe forward's example has as many
    out_features: int  # F of the (B, F) features; K of the (B, K) logits with outputs_logits
    output: int | str | None = None  # model.output: the entry of a tuple or dict output that holds them
    outputs_logits: bool = False  # model.user_head=none: the network ends with the classifier's own final layer
    # The smallest image side the library gives the model (torchvision's weights' min_size): below
    # it a forward that fails is a UserError naming that size (1: none known, failures stay as they are).
    min_size: int = 1
    probe_sizes: tuple[int, ...] = PROBE_SIZES  # image sides probe_inputs tries, in order


class ExternalBackbone(nn.Module):
    """images (B, C, H, W) -> ``net`` -> the output tensor ``io.output`` names -> features (B, F)
    -> optional dropout.

    Args:
        net: the network, whose (selected) output must be (B, ``io.out_features``) (checked on
            every forward: a shape comparison, no device sync).
        io: how to call it and read its output (:class:`NetworkIO`).
        stage_paths: the qualified names in ``net`` of its stages (``layer1``, ``stages.0``).
        dropout: ``model.dropout`` on the features.
    """

    def __init__(self, net: nn.Module, io: NetworkIO, stage_paths: Sequence[str], dropout: float = 0.0) -> None:
        super().__init__()
        self.net = net
        self.io = io
        self.out_features = io.out_features
        self.stage_paths = tuple(stage_paths)
        self.model_name = io.name
        self.outputs_logits = io.outputs_logits
        self._label = f"model {io.name!r}"  # for select_output's messages, formatted once
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @property
    def blocks(self) -> list[nn.Module]:
        """The stages: references into ``net`` (a list, not a ModuleList, so nothing is registered twice)."""
        return [self.net.get_submodule(p) for p in self.stage_paths]

    def forward(self, x: Tensor) -> Tensor:
        out = select_output(self._net_forward(x), self.io.output, model=self._label)
        if out.dim() != 2 or out.shape[1] != self.out_features:
            raise UserError(
                f"model {self.model_name!r} outputs {tuple(out.shape)}, not (B, {self.out_features}) "
                f"{'logits' if self.outputs_logits else 'features'}; end the network with global pooling and a flatten"
            )
        return self.dropout(out)  # (B, F)

    def _net_forward(self, x: Tensor) -> object:
        """``net(x)``; a failure on images smaller than the library's smallest size is a UserError."""
        try:
            return self.net(x)
        except (RuntimeError, AssertionError) as exc:  # a kernel larger than the map; ViT's size assertion
            if isinstance(exc, torch.OutOfMemoryError) or min(x.shape[-2:]) >= self.io.min_size:
                raise
            raise UserError(
                f"model {self.model_name!r} fails on {x.shape[-2]} x {x.shape[-1]} px images ({short_error(exc)}); "
                f"its library gives it images of at least {self.io.min_size} px: set data.image_size to "
                f"{self.io.min_size} or more, or choose another model"
            ) from None


def set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    """Put ``module`` at the qualified name ``path`` of ``root`` (``classifier.6``)."""
    parent, _, child = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def stage_of(path: str, stage_paths: Sequence[str]) -> int | None:
    """The index of the stage that holds the module at ``path`` (None: outside every stage)."""
    return next((i for i, s in enumerate(stage_paths) if path == s or path.startswith(s + ".")), None)


def own_activation_name(module: nn.Module) -> str:
    """The name of the first activation module inside ``module`` (``relu``, ``gelu``), or its class name."""
    kinds = activation_types()
    first = next((m for m in module.modules() if isinstance(m, kinds)), None)
    cls = type(first if first is not None else module).__name__
    return _OWN_NAMES.get(cls, cls.lower())


#: What :func:`input_kind` calls an activation's input: a (B, C, H, W) feature map, or one of
#: the inputs a softmax over a map's axes does not fit, with the words the warning uses.
MAP = "map"
INPUT_KINDS = {
    "pooled": "pooled (B, C, 1, 1), as in squeeze-excitation gates",
    "channels_last": "channels-last (B, H, W, C) or not square",
    "other": "not 4-D (tokens, vectors)",
}


def input_kind(x: object) -> str:
    """:data:`MAP` for a (B, C, H, W) feature map larger than 1 x 1, else the :data:`INPUT_KINDS`
    key of ``x``, an activation's input in a forward of a *square* image (:func:`probe_inputs`).

    On a square image a channels-first map is square; a 4-D input that is not square in its
    last two axes is channels-last (timm's ConvNeXt MLP and MaxViT: (B, H, W, C)), where a
    softmax over "H x W" would normalise over W and the channels.

    >>> input_kind(torch.zeros(2, 8, 4, 4)), input_kind(torch.zeros(2, 8, 1, 1)), input_kind(torch.zeros(2, 4, 4, 96))
    ('map', 'pooled', 'channels_last')
    """
    if not isinstance(x, Tensor) or x.dim() != 4:
        return "other"
    if x.shape[-2] * x.shape[-1] == 1:
        return "pooled"
    return MAP if x.shape[-2] == x.shape[-1] else "channels_last"


def probe_inputs(
    net: nn.Module, modules: Iterable[nn.Module], in_channels: int, sizes: Sequence[int] = PROBE_SIZES
) -> dict[int, str] | None:
    """For each of ``modules`` that a forward of ``net`` calls, by ``id``: the :func:`input_kind`
    of its input (:data:`MAP` if any of its calls gets a map: a module shared by several places).

    The forward is of one (1, C, S, S) image of zeros, S the first of ``sizes`` that ``net``
    runs on (None: it runs on none), in eval mode without gradients: no BatchNorm statistic
    or random number is touched, and the training mode is restored.
    """
    kinds: dict[int, str] = {}

    def record(module: nn.Module, args: tuple) -> None:
        kind = input_kind(next((a for a in args if isinstance(a, Tensor)), None))
        if kinds.get(id(module)) in (None, kind) or kind == MAP:
            kinds[id(module)] = kind
        # (returns None: a pre-hook that returns a value would replace the module's input)

    handles = [m.register_forward_pre_hook(record) for m in {id(m): m for m in modules}.values()]
    device = next((t.device for t in itertools.chain(net.parameters(), net.buffers())), None)
    was_training = net.training
    net.eval()
    try:
        for side in sizes:
            kinds.clear()
            try:
                with torch.no_grad():
                    net(torch.zeros(1, in_channels, side, side, device=device))
            except torch.OutOfMemoryError:
                raise
            except Exception:  # this size does not fit the network (a ViT's fixed size): the next one
                continue
            return dict(kinds)
        return None
    finally:
        net.train(was_training)
        for handle in handles:
            handle.remove()


def _targets(stage_paths: Sequence[str], activations: BlockActivations) -> set[int] | None:
    """The stages whose activations are replaced; None: every activation module, in a stage or not."""
    if not is_softmax(activations.name):
        return None
    if not stage_paths:
        raise UserError(
            f"model.activation={activations.name} goes into the stages of a model, and {activations.model!r} "
            "exposes none; give the network a `blocks` attribute (a list of its stages) or choose a pointwise "
            "model.activation"
        )
    names = activations.names(len(stage_paths))  # checks model.softmax_blocks against the stages
    return {i for i, n in enumerate(names) if n == activations.name}


def replace_activations(
    net: nn.Module,
    stage_paths: Sequence[str],
    activations: BlockActivations,
    in_channels: int | None = None,
    probe_sizes: Sequence[int] = PROBE_SIZES,
) -> list[str]:
    """Replace the activation modules of ``net`` with fresh ones of ``model.activation``; returns
    the activation name of each stage.

    A softmax activation goes into the stages only, and there (given ``in_channels``, for the
    probe forward of :func:`probe_inputs`) only into the modules whose input is a spatial map;
    the others keep their own, with one warning (the module docstring says why). Without
    ``in_channels``, or on the meta device (where a model is built to count its parameters),
    there is no probe and every activation module of the stages is replaced.

    A module reached from several places (torchvision's BasicBlock applies one ReLU three
    times) gets one new module, so a learned softmax temperature stays one per such module.
    The new module is in-place only where the old one was (an in-place ReLU where a GELU
    was could overwrite a tensor kept for a residual connection).

    Raises:
        UserError: a listed stage (or, without a list, the whole network) has no activation
            module (on a feature map, for a softmax) to replace.
    """
    if activations.name == KEEP:
        return [own_activation_name(net.get_submodule(p)) for p in stage_paths]
    targets = _targets(stage_paths, activations)
    types = activation_types()
    found = [(p, m) for p, m in net.named_modules(remove_duplicate=False) if p and isinstance(m, types)]
    chosen = [(p, m) for p, m in found if targets is None or stage_of(p, stage_paths) in targets]
    kept = _off_the_maps(net, chosen, activations, in_channels, probe_sizes) if targets is not None else []
    kept_ids = {id(m) for _, m, _ in kept}
    chosen = [(p, m) for p, m in chosen if id(m) not in kept_ids]
    fresh: dict[int, nn.Module] = {}
    for path, old in chosen:
        if id(old) not in fresh:
            new = activations.build(activations.name)
            if hasattr(new, "inplace"):
                new.inplace = bool(getattr(old, "inplace", False))
            fresh[id(old)] = new
        set_submodule(net, path, fresh[id(old)])
    _check_replaced(chosen, kept, stage_paths, targets, activations)
    _warn_kept(kept, activations)
    hit = {stage_of(p, stage_paths) for p, _ in chosen}
    return [
        activations.name if i in hit else own_activation_name(net.get_submodule(p)) for i, p in enumerate(stage_paths)
    ]


def _off_the_maps(
    net: nn.Module,
    chosen: list[tuple[str, nn.Module]],
    activations: BlockActivations,
    in_channels: int | None,
    sizes: Sequence[int],
) -> list[tuple[str, nn.Module, str]]:
    """The (path, module, :func:`input_kind`) of the modules of ``chosen`` whose inputs are no
    (B, C, H, W) maps (:func:`probe_inputs`), which keep their own activation. Modules the
    probe forward does not call are no evidence and are replaced; so is every module when the
    probe cannot run (with a warning)."""
    # The meta pass that counts parameters (its model, or one a constructor had to build on the
    # CPU) needs no probe: the count is the same but for a few softmax temperatures.
    on_meta = torch.get_default_device().type == "meta" or any(
        t.is_meta for t in itertools.chain(net.parameters(), net.buffers())
    )
    if in_channels is None or on_meta or not chosen:
        return []
    kinds = probe_inputs(net, [m for _, m in chosen], in_channels, sizes)
    if kinds is None:
        warnings.warn(
            f"model.activation={activations.name}: {activations.model!r} runs on no (1, {in_channels}, S, S) example "
            f"for S in {tuple(sizes)}, so the activations off the feature maps (squeeze-excitation gates, "
            "channels-last or token inputs) could not be told apart: every activation module in the stages is "
            "replaced",
            UserWarning,
            stacklevel=2,
        )
        return []
    return [(p, m, kinds[id(m)]) for p, m in chosen if kinds.get(id(m), MAP) != MAP]


def _warn_kept(kept: list[tuple[str, nn.Module, str]], activations: BlockActivations) -> None:
    """One warning for the activation modules that kept the model's own (:func:`_off_the_maps`),
    counted by the kind of their input (:data:`INPUT_KINDS`), each with its first path."""
    if not kept:
        return
    first: dict[str, str] = {}
    count: dict[str, set[int]] = {}
    for path, module, kind in kept:
        first.setdefault(kind, path)
        count.setdefault(kind, set()).add(id(module))
    parts = [f"{len(count[k])} {INPUT_KINDS[k]} ({first[k]}, ...)" for k in INPUT_KINDS if k in count]
    warnings.warn(
        KeptActivationsWarning(
            f"model.activation={activations.name}: {len({id(m) for _, m, _ in kept})} activation module(s) in the "
            f"stages of {activations.model!r} keep the model's own, as their inputs are no (B, C, H, W) feature "
            f"maps: {'; '.join(parts)}; a softmax there would be constant or normalise other axes"
        ),
        stacklevel=2,
    )


def _check_replaced(
    chosen: list[tuple[str, nn.Module]],
    kept: list[tuple[str, nn.Module, str]],
    stage_paths: Sequence[str],
    targets: set[int] | None,
    activations: BlockActivations,
) -> None:
    """A UserError when ``model.activation`` found nothing to replace where it was asked to go."""
    hit = {stage_of(p, stage_paths) for p, _ in chosen}
    listed = getattr(activations.options, "softmax_blocks", None) is not None
    empty = sorted((targets or set()) - hit) if listed else []
    if chosen and not empty:
        return
    where = f" in stage {empty[0]} ({stage_paths[empty[0]]})" if empty else "" if targets is None else " in its stages"
    there = [p for p, _, _ in kept if not empty or stage_of(p, stage_paths) == empty[0]]
    what = " on a (B, C, H, W) feature map" if there else ""
    why = (
        f"those there take pooled, channels-last or token inputs: {there[0]}, ..."
        if there
        else "activations called as functions, F.relu, cannot be"
    )
    raise UserError(
        f"model.activation={activations.name}: model {activations.model!r} has no activation module{what}{where} to "
        f"replace ({why}); choose other model.softmax_blocks, model.activation={KEEP}, or another model"
    )


def external_backbone(
    net: nn.Module,
    io: NetworkIO,
    stage_paths: Sequence[str],
    activations: BlockActivations,
    dropout: float = 0.0,
) -> ExternalBackbone:
    """``net`` with ``model.activation`` in it (:func:`replace_activations`, probed at
    ``io.probe_sizes``) and each stage tagged with its ``activation_name`` (figure titles,
    diagnostics), as a backbone."""
    names = replace_activations(net, stage_paths, activations, io.in_channels, io.probe_sizes)
    for path, activation_name in zip(stage_paths, names, strict=True):
        net.get_submodule(path).activation_name = activation_name
    return ExternalBackbone(net, io, stage_paths, dropout)


__all__ = [
    "INPUT_KINDS",
    "PROBE_SIZES",
    "ExternalBackbone",
    "NetworkIO",
    "activation_types",
    "external_backbone",
    "input_kind",
    "probe_inputs",
    "replace_activations",
]
