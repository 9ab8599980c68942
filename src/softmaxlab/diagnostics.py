"""Gradient flow and feature maps: why does a network with softmax activations stall?

* :class:`GradNorms`: for every parameterised layer (a module with a ``weight``), the mean
  over an epoch's steps of ``||dL/dW||_2``. Accumulated on the device (two kernel launches
  per step, no host sync) and read once per epoch.
* :func:`activation_stats`: for each block of the backbone, the mean and standard deviation
  of its output and the fraction of values below 1e-6 (dead ReLUs, vanished softmax
  entries), on a fixed batch, via forward hooks that exist only during that forward pass.
* :class:`Diagnostics`: both, as ``fit`` records them in every epoch of ``metrics.jsonl``
  (``diagnostics.enabled: false`` gives empty dicts), and the feature maps of the first
  validation image at the end.
* :func:`block_outputs`, :func:`feature_maps`: the output of each block for one image (drawn
  by :func:`softmaxlab.report.figures.feature_map_figure`).

Compute only: nothing here draws or writes a file. A backbone exposes its stages as
``backbone.blocks`` (see :mod:`softmaxlab.models.base`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from softmaxlab.data import TensorLoader

#: Output values below this count as (near) zero in ``activation_stats``.
NEAR_ZERO = 1e-6


# --------------------------------------------------------------------------- gradient norms


def parameterised_layers(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(qualified module name, weight) of every module that owns a trainable ``weight``.

    >>> [name for name, _ in parameterised_layers(nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)))]
    ['0', '2']
    """
    layers = []
    for name, module in model.named_modules():
        weight = module._parameters.get("weight")  # own parameter only, not a child's
        if isinstance(weight, nn.Parameter) and weight.requires_grad:
            layers.append((name, weight))
    return layers


class GradNorms:
    """Mean L2 norm of each parameterised layer's weight gradient over the steps since the
    last :meth:`read`.

    Call :meth:`update` after each ``loss.backward()``; it queues one fused norm and one
    fused add on the device and never waits for them.
    """

    def __init__(self, model: nn.Module) -> None:
        layers = parameterised_layers(model)
        self.names = [name for name, _ in layers]
        self.weights = [w for _, w in layers]
        self._sums: list[Tensor] = [torch.zeros((), device=w.device) for w in self.weights]
        self._zero = [torch.zeros((), device=w.device, dtype=w.dtype) for w in self.weights]
        self.steps = 0

    def update(self) -> None:
        """Add this step's gradient norms to the running sums (on the device)."""
        grads = [w.grad if w.grad is not None else z for w, z in zip(self.weights, self._zero, strict=True)]
        # torch._foreach_norm is what clip_grad_norm_ uses: one launch for all the tensors.
        torch._foreach_add_(self._sums, torch._foreach_norm(grads))
        self.steps += 1

    def read(self) -> dict[str, float]:
        """{layer name: mean gradient norm} (one host sync), and reset; {} before any step."""
        if not self.steps or not self.weights:
            return {}
        means = (torch.stack(self._sums) / self.steps).tolist()
        for s in self._sums:
            s.zero_()
        self.steps = 0
        return dict(zip(self.names, means, strict=True))

    def state_dict(self) -> dict[str, Any]:
        """The running sums (on the CPU) and step count, for a checkpoint."""
        return {"sums": [s.detach().cpu() for s in self._sums], "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`'s sums and step count."""
        for mine, saved in zip(self._sums, state["sums"], strict=True):
            mine.copy_(saved)
        self.steps = state["steps"]


# --------------------------------------------------------------------------- block outputs


def blocks_of(model: nn.Module) -> list[nn.Module]:
    """The stages of a :class:`~softmaxlab.models.Classifier`'s backbone (``backbone.blocks``), or []."""
    backbone = getattr(model, "backbone", model)
    return list(getattr(backbone, "blocks", []))


@torch.no_grad()
def block_outputs(model: nn.Module, x: Tensor) -> list[Tensor]:
    """The output of each block for the batch ``x``, in eval mode (the mode is restored after).

    Forward hooks catch the outputs; they are removed before returning, so training never
    pays for them.
    """
    blocks = blocks_of(model)
    outputs: dict[int, Tensor] = {}
    handles = [
        block.register_forward_hook(lambda _m, _inp, out, i=i: outputs.__setitem__(i, out.detach()))
        for i, block in enumerate(blocks)
    ]
    was_training = model.training
    model.eval()
    try:
        getattr(model, "backbone", model)(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return [outputs[i] for i in range(len(blocks))]


def activation_stats(model: nn.Module, x: Tensor) -> dict[str, dict[str, float]]:
    """{``block<i>``: {``mean``, ``std``, ``near_zero``}} of each block's output on ``x``.

    ``near_zero`` is the fraction of output values below :data:`NEAR_ZERO` (1e-6). The
    numbers are computed on the device and read back in one transfer.
    """
    outputs = block_outputs(model, x)
    if not outputs:
        return {}
    rows = []
    for out in outputs:
        o = out.float()
        rows.append(torch.stack([o.mean(), o.std(), (o < NEAR_ZERO).float().mean()]))
    values = torch.stack(rows).tolist()  # (blocks, 3)
    return {f"block{i}": dict(zip(("mean", "std", "near_zero"), v, strict=True)) for i, v in enumerate(values)}


def feature_maps(model: nn.Module, x: Tensor) -> list[tuple[str, Tensor]]:
    """(activation name, (C_i, H_i, W_i) output on the CPU) of each block for the one image ``x`` (1, C, H, W).

    Blocks whose output is no (1, C, H, W) map (a library ViT's tokens) are left out: there is no picture of them.
    """
    names = [getattr(b, "activation_name", type(b).__name__) for b in blocks_of(model)]
    outputs = block_outputs(model, x)
    return [(n, m[0].float().cpu()) for n, m in zip(names, outputs, strict=True) if m.dim() == 4]


class Diagnostics:
    """What ``fit`` records each epoch besides loss and accuracy.

    Args:
        model: the classifier being trained.
        val_loader: the validation loader; its first ``probe_size`` images are the fixed
            batch for :func:`activation_stats` and its first image the one of
            :meth:`feature_maps`.
        enabled: ``diagnostics.enabled``; False records empty dicts and no feature maps.
        probe_size: ``diagnostics.probe_size``.
    """

    def __init__(self, model: nn.Module, val_loader: TensorLoader, enabled: bool = True, probe_size: int = 256) -> None:
        self.model, self.val_loader, self.enabled, self.probe_size = model, val_loader, enabled, probe_size
        self.grad_norms = GradNorms(model) if enabled else None

    def epoch_record(self) -> dict[str, Any]:
        """``grad_norms`` and ``activation_stats`` for the epoch's metrics record (empty when disabled)."""
        if self.grad_norms is None:
            return {"grad_norms": {}, "activation_stats": {}}
        probe = self.val_loader.normalize(self.val_loader.x[: self.probe_size])
        return {"grad_norms": self.grad_norms.read(), "activation_stats": activation_stats(self.model, probe)}

    def feature_maps(self) -> list[tuple[str, Tensor]] | None:
        """:func:`feature_maps` of the first validation image; None when disabled or without blocks."""
        if not self.enabled or not blocks_of(self.model):
            return None
        return feature_maps(self.model, self.val_loader.normalize(self.val_loader.x[:1])) or None
