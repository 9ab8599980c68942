"""A network softmaxlab did not write, as a backbone: :class:`ExternalBackbone`, its stages,
and ``model.activation`` put into it.

* The network is kept whole (``backbone.net``); its stages (``backbone.blocks``) are found
  by their paths in it each time they are asked for, so every parameter is registered once
  and a stage that an activation replaced is still found.
* :func:`replace_activations` swaps the network's activation *modules*
  (:func:`activation_types`: the ReLU family, GELU, SiLU / Swish, Mish, Hardswish, ...) for
  fresh modules of ``model.activation``. Gates and outputs (``Sigmoid``, ``Hardsigmoid`` of
  squeeze-excitation, ``Tanh``, attention's softmax) are no activations and stay, and so do
  activations a forward calls as functions (``F.relu``: torchvision's DenseNet and Inception
  have some), which no module replacement can reach.
* A pointwise activation replaces every activation module; a softmax activation, which
  normalises (N, C, H, W) maps, only those inside the stages (``model.softmax_blocks``: the
  listed ones), so the other activations keep the model's own.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from torch import Tensor, nn

from softmaxlab.activations import KEEP, BlockActivations, is_softmax
from softmaxlab.errors import UserError

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


def activation_types() -> tuple[type[nn.Module], ...]:
    """:data:`TORCH_ACTIVATIONS`, and :data:`TIMM_ACTIVATIONS` once timm is imported (a network
    without timm imported holds none of them: a torchvision or user model need not pay for it)."""
    timm_act = sys.modules.get("timm.layers.activations")
    extra = tuple(getattr(timm_act, n) for n in TIMM_ACTIVATIONS if hasattr(timm_act, n)) if timm_act else ()
    return TORCH_ACTIVATIONS + extra


class ExternalBackbone(nn.Module):
    """images (B, C, H, W) -> ``net`` -> features (B, F) -> optional dropout.

    Args:
        net: the network, which must output (B, ``out_features``) (checked on every forward:
            a shape comparison, no device sync).
        out_features: F.
        stage_paths: the qualified names in ``net`` of its stages (``layer1``, ``stages.0``).
        name: the ``model.name`` it was built for (errors name it).
        dropout: ``model.dropout`` on the features.
        outputs_logits: ``net`` ends with the classifier's own final layer (``model.user_head:
            none``): its output is the logits and the head adds no linear layer.
    """

    def __init__(
        self,
        net: nn.Module,
        out_features: int,
        stage_paths: Sequence[str],
        name: str,
        dropout: float = 0.0,
        outputs_logits: bool = False,
    ) -> None:
        super().__init__()
        self.net = net
        self.out_features = out_features
        self.stage_paths = tuple(stage_paths)
        self.model_name = name
        self.outputs_logits = outputs_logits
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @property
    def blocks(self) -> list[nn.Module]:
        """The stages: references into ``net`` (a list, not a ModuleList, so nothing is registered twice)."""
        return [self.net.get_submodule(p) for p in self.stage_paths]

    def forward(self, x: Tensor) -> Tensor:
        out = self.net(x)
        if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[1] != self.out_features:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise UserError(
                f"model {self.model_name!r} outputs {got}, not (B, {self.out_features}) "
                f"{'logits' if self.outputs_logits else 'features'}; end the network with global pooling and a "
                "flatten, and turn auxiliary outputs off in model.kwargs (e.g. aux_logits: false)"
            )
        return self.dropout(out)  # (B, F)


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


def replace_activations(net: nn.Module, stage_paths: Sequence[str], activations: BlockActivations) -> list[str]:
    """Replace the activation modules of ``net`` with fresh ones of ``model.activation``; returns
    the activation name of each stage.

    A module reached from several places (torchvision's BasicBlock applies one ReLU three
    times) gets one new module, so a learned softmax temperature stays one per such module.
    The new module is in-place only where the old one was (an in-place ReLU where a GELU
    was could overwrite a tensor kept for a residual connection).

    Raises:
        UserError: a listed stage (or, without a list, the whole network) has no activation module.
    """
    if activations.name == KEEP:
        return [own_activation_name(net.get_submodule(p)) for p in stage_paths]
    targets = _targets(stage_paths, activations)
    kinds = activation_types()
    found = [(p, m) for p, m in net.named_modules(remove_duplicate=False) if p and isinstance(m, kinds)]
    chosen = [(p, m) for p, m in found if targets is None or stage_of(p, stage_paths) in targets]
    fresh: dict[int, nn.Module] = {}
    for path, old in chosen:
        if id(old) not in fresh:
            new = activations.build(activations.name)
            if hasattr(new, "inplace"):
                new.inplace = bool(getattr(old, "inplace", False))
            fresh[id(old)] = new
        set_submodule(net, path, fresh[id(old)])
    _check_replaced(chosen, stage_paths, targets, activations)
    hit = {stage_of(p, stage_paths) for p, _ in chosen}
    return [
        activations.name if i in hit else own_activation_name(net.get_submodule(p)) for i, p in enumerate(stage_paths)
    ]


def _check_replaced(
    chosen: list[tuple[str, nn.Module]],
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
    raise UserError(
        f"model.activation={activations.name}: model {activations.model!r} has no activation module{where} to "
        "replace (activations called as functions, F.relu, cannot be); choose other model.softmax_blocks, "
        f"model.activation={KEEP}, or another model"
    )


def external_backbone(
    net: nn.Module,
    name: str,
    out_features: int,
    stage_paths: Sequence[str],
    activations: BlockActivations,
    dropout: float = 0.0,
    outputs_logits: bool = False,
) -> ExternalBackbone:
    """``net`` with ``model.activation`` in it (:func:`replace_activations`) and each stage
    tagged with its ``activation_name`` (figure titles, diagnostics), as a backbone."""
    names = replace_activations(net, stage_paths, activations)
    for path, activation_name in zip(stage_paths, names, strict=True):
        net.get_submodule(path).activation_name = activation_name
    return ExternalBackbone(net, out_features, stage_paths, name, dropout, outputs_logits)


__all__ = ["ExternalBackbone", "activation_types", "external_backbone", "replace_activations"]
