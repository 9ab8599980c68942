"""The :class:`Head` base class and the head registry.

A head owns the classifier's final linear layer (some heads need their own parameters) and
pairs what it outputs with the loss it must be trained with::

    model = backbone (images -> features (B, F)) + head (features -> scores (B, K))

* ``forward(features) -> scores``: what the network outputs (logits, log-probabilities, ...).
* ``loss(scores, target) -> scalar``: the training loss that belongs to those scores.
* ``log_probs(scores) -> (B, K)``: log p(class | image) used for evaluation.
* ``probs(scores) -> (B, K)``: a proper distribution over the classes (rows sum to 1).
* ``predict(scores) -> (B,)``: the predicted class.

The scores are whatever the head's loss needs: logits for most heads, probabilities for the
``double_softmax`` pitfall, and the features themselves for heads whose loss evaluates only
part of the output layer (``hierarchical``, ``adaptive``).

Adding a head is one subclass and one decorator; a head with options declares them as an
:class:`~softmaxlab.registry.Options` model, which becomes its ``head.*`` config keys::

    class FocalOptions(Options):
        gamma: float = Field(2.0, ge=0)  # focusing exponent: (1 - p_y)^gamma weights the loss

    @HEADS.register("focal", options=FocalOptions)
    class FocalHead(Head):
        \"\"\"One line shown by `softmaxlab list heads`.\"\"\"

        options: FocalOptions

        def loss(self, scores, target): ...  # self.options.gamma
        def log_probs(self, scores): ...
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor, nn

from softmaxlab.registry import NamedOptions, Options, Registry

HEADS: Registry[type[Head]] = Registry("head")


class Head(nn.Module):
    """Base class: a linear layer ``z = W f + b`` followed by a normaliser.

    Args:
        in_features: F, the backbone's feature size.
        num_classes: K.
        options: the head's own options (the ``head`` section of the experiment config, which
            is an instance of the options model the head registered with); defaults when None.
        coarse_of: optional ``(K,)`` long tensor mapping each fine class to its coarse class,
            for heads that use a class hierarchy.
    """

    #: Whether post-hoc temperature scaling is meaningful for this head.
    temperature_scalable: ClassVar[bool] = True
    #: What post-hoc temperature scaling divides by T (see softmaxlab.metrics): ``log_probs``,
    #: the head's log-probabilities (p_T = softmax(log p / T), exactly softmax(z / T) for a
    #: softmax of logits z), or ``scores``, the head's own scores z, which it maps as it maps
    #: them in training (p_T = the head's distribution of z / T, T fitted on its own loss).
    temperature_input: ClassVar[str] = "log_probs"
    #: One sentence for ``summary.json``'s ``temperature_note``: what a fitted temperature T
    #: does to this head's distribution, or why none is fitted (see softmaxlab.metrics).
    temperature_note: ClassVar[str] = (
        "p_T = softmax(log p / T), which equals dividing the logits by T (log p is the logits minus a "
        "constant per image)"
    )
    #: Whether the head uses the base linear layer ``fc`` (K x F); heads with their own output
    #: layers set this to False so a 100,000-class head does not allocate an unused matrix.
    uses_fc: ClassVar[bool] = True
    #: Whether the scores are a function of the logits z = fc(f) alone (the head normalises what
    #: ``fc`` outputs), so a model that outputs the logits itself can feed the head with ``fc``
    #: left out (:meth:`take_logits`, ``model.user_head: none``). Heads with output layers of
    #: their own (hierarchical, adaptive) set False.
    maps_logits: ClassVar[bool] = True

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        options: Options | None = None,
        coarse_of: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.num_classes = num_classes
        name = HEADS.name_of(type(self))
        self.options = options if options is not None else HEADS.options(name)() if name else Options()
        self.fc = nn.Linear(in_features, num_classes) if self.uses_fc else None

    def forward(self, features: Tensor) -> Tensor:
        """(B, F) features -> (B, K) scores; the base returns the logits z = W f + b."""
        return self.fc(features)

    def take_logits(self) -> None:
        """Take the logits (B, K) from the model instead of computing them: ``fc`` becomes the
        identity, so only the normaliser and the loss pairing remain (``model.user_head: none``)."""
        if not self.maps_logits:
            raise ValueError(f"head {self.name!r} has output layers of its own and cannot take logits")
        self.fc = nn.Identity()
        self.in_features = self.num_classes

    def loss(self, scores: Tensor, target: Tensor) -> Tensor:
        """Mean training loss of a batch of scores against (B,) integer targets."""
        raise NotImplementedError

    def log_probs(self, scores: Tensor) -> Tensor:
        """(B, K) log-probabilities log p(k | x) of the evaluation distribution."""
        raise NotImplementedError

    def probs(self, scores: Tensor) -> Tensor:
        """(B, K) probabilities p(k | x); each row sums to 1."""
        return self.log_probs(scores).exp()

    def predict(self, scores: Tensor) -> Tensor:
        """(B,) predicted classes: arg max_k p(k | x)."""
        return self.probs(scores).argmax(dim=-1)

    def step_update(self, step: int, total_steps: int) -> None:
        """Called before every optimisation step (e.g. to anneal a temperature)."""

    @property
    def name(self) -> str:
        """The name this head is registered under (its class name when it is not registered)."""
        return HEADS.name_of(type(self)) or type(self).__name__

    def epoch_record(self, reduce: Reduce | None = None) -> dict[str, Any]:
        """Head state worth logging once per epoch in ``metrics.jsonl`` (e.g. a temperature).

        ``reduce`` sums a tensor over the training processes (identity for one process): a
        head that tallies something on its shard of the data must pass its sums through it,
        as torchmetrics' ``dist_reduce_fx="sum"`` does, before turning them into a rate.
        """
        return {}


class Reduce(Protocol):
    """Sums a tensor over the training processes (see :func:`softmaxlab.distributed.all_reduce`)."""

    def __call__(self, values: Tensor) -> Tensor: ...


def at_least_float32(x: Tensor) -> Tensor:
    """``x`` in float32 when it is in a lower precision (float16, bfloat16), else unchanged.

    Heads normalise in at least float32 (AMP gives them float16 scores), and keep float64
    for gradcheck.
    """
    return x.float() if x.is_floating_point() and torch.finfo(x.dtype).bits < 32 else x


def build_head(cfg: NamedOptions, in_features: int, num_classes: int, coarse_of: Tensor | None = None) -> Head:
    """Create the head named ``cfg.name`` from the registry, with ``cfg`` as its options."""
    return HEADS.create(cfg.name, in_features, num_classes, cfg, coarse_of)


def check_probs(probs: Tensor, atol: float = 1e-3) -> bool:
    """Whether each row of ``probs`` is a distribution: values in [0, 1], rows sum to 1."""
    p = probs.detach().float()
    in_range = bool(((p >= 0) & (p <= 1)).all())
    sums_to_one = bool(torch.allclose(p.sum(dim=-1), torch.ones(p.shape[0], device=p.device), atol=atol))
    return in_range and sums_to_one
