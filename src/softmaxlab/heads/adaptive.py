"""Adaptive softmax (Grave et al., 2017) for many classes: ``torch.nn.AdaptiveLogSoftmaxWithLoss``.

The classes are split by cutoffs c_1 < ... < c_n into a head [0, c_1) and tail clusters
[c_i, c_{i+1}). The head softmax runs over the head classes plus one entry per cluster;
each cluster has its own softmax over its classes, computed from a projection of the
features whose width shrinks by ``div_value`` per cluster:

    p(k) = p_head(k)                         for k in the head
    p(k) = p_head(cluster i) p_i(k | i)      for k in cluster i

Training evaluates only the clusters the batch's targets fall in. The class order matters:
adaptive softmax pays off when the first classes are the frequent ones.
"""

from __future__ import annotations

import math

import torch
from pydantic import field_validator
from torch import Tensor, nn

from softmaxlab.errors import UserError
from softmaxlab.heads.base import HEADS, Head, at_least_float32
from softmaxlab.registry import Options


def default_cutoffs(num_classes: int) -> list[int]:
    """Cutoffs at K/20 and K/4 (those that fall inside 1..K-1), else K/2.

    >>> default_cutoffs(100_000), default_cutoffs(100), default_cutoffs(10), default_cutoffs(2)
    ([5000, 25000], [5, 25], [2], [1])
    """
    k = num_classes
    cuts = sorted({c for c in (k // 20, k // 4) if 0 < c < k})
    return cuts or [max(1, k // 2)]


class AdaptiveOptions(Options):
    """Options of the ``adaptive`` head."""

    cutoffs: list[int] | None = None  # increasing class cutoffs of the clusters; None = from K (default_cutoffs)

    @field_validator("cutoffs")
    @classmethod
    def _increasing(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (not v or v[0] < 1 or any(v[i + 1] <= v[i] for i in range(len(v) - 1))):
            raise ValueError("must be a non-empty, strictly increasing list of positive class counts")
        return v


@HEADS.register("adaptive", options=AdaptiveOptions)
class AdaptiveSoftmaxHead(Head):
    """Adaptive softmax (torch AdaptiveLogSoftmaxWithLoss): head + shrinking tail clusters for many classes.

    Cutoffs from ``head.cutoffs`` or :func:`default_cutoffs`; projections shrink by 4 per
    cluster (less for tiny feature sizes). The scores are the features (the module needs them and the targets to pick
    clusters); loss = -mean log p(y) from the module's forward, log-probabilities for the
    metrics from its ``log_prob`` over all classes. torch's implementation asks the host
    which samples fall in each cluster (a sync per cluster per step).
    """

    maps_logits = False  # its output layers are its own: it cannot take a model's logits
    uses_fc = False
    temperature_note = (
        "the head-and-clusters distribution is no single softmax, so T rescales its log-probabilities: "
        "p_T = softmax(log p / T), proportional to p^(1/T), which keeps every prediction"
    )

    options: AdaptiveOptions

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        options: AdaptiveOptions | None = None,
        coarse_of: Tensor | None = None,
    ) -> None:
        super().__init__(in_features, num_classes, options, coarse_of)
        cutoffs = self.options.cutoffs or default_cutoffs(num_classes)
        if cutoffs[-1] > num_classes - 1:
            raise UserError(
                f"head.cutoffs {cutoffs} must stay below the {num_classes} classes; "
                f"set head.cutoffs to increasing values under {num_classes} (or leave it unset)"
            )
        self.cutoffs = list(cutoffs)
        # Cluster i projects the features to F // div^i dimensions: 4 as in the paper, less when
        # F is too small for every cluster to keep at least one dimension.
        div_value = min(4.0, float(max(1, math.floor(in_features ** (1 / len(self.cutoffs))))))
        self.asm = nn.AdaptiveLogSoftmaxWithLoss(
            in_features, num_classes, self.cutoffs, div_value=div_value, head_bias=True
        )

    def forward(self, features: Tensor) -> Tensor:
        """The (B, F) features themselves; the module's layers are applied in loss / log_probs."""
        return features

    def loss(self, scores: Tensor, target: Tensor) -> Tensor:
        """-mean log p(y), evaluating the head and only the clusters that hold targets."""
        return self.asm(scores, target).loss

    def log_probs(self, scores: Tensor) -> Tensor:
        """(B, K) log p(k) for every class (``AdaptiveLogSoftmaxWithLoss.log_prob``), in at least float32.

        Outside autocast, in the weights' dtype: the module normalises its cluster outputs
        itself, and under bfloat16 autocast the rows of p would sum to 1 only within about 0.5 %.
        """
        with torch.autocast(scores.device.type, enabled=False):
            return at_least_float32(self.asm.log_prob(scores.to(self.asm.head.weight.dtype)))
