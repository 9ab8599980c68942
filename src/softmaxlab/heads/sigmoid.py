"""One-vs-rest sigmoid: K independent binary classifiers instead of one K-way softmax."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from softmaxlab.heads.base import HEADS, Head, at_least_float32


@HEADS.register("sigmoid")
class SigmoidHead(Head):
    """One-vs-rest sigmoid(z_k), binary cross-entropy; probs = sigmoids normalised to sum to 1.

    Each class k has its own yes/no probability q_k = sigmoid(z_k), trained with binary
    cross-entropy against the one-hot target, summed over classes and averaged over the
    batch: L = -sum_k [y = k] log q_k + [y != k] log(1 - q_k). The q_k need not sum to 1
    (an image can be "none of these" or "several"), so for multiclass metrics the head
    reports p_k = q_k / sum_j q_j, computed in the log domain
    (log p_k = logsigmoid(z_k) - logsumexp_j logsigmoid(z_j)) so that it stays finite when
    every q_k underflows. Prediction is arg max_k q_k = arg max_k p_k. Post-hoc temperature
    scaling divides the logits: p_T,k = sigmoid(z_k / T) / sum_j sigmoid(z_j / T), T fitted
    by minimising this head's binary cross-entropy of z / T on the validation split.
    """

    temperature_input = "scores"
    temperature_note = (
        "p_T = sigmoid(z / T) normalised to sum to 1, T minimising the binary cross-entropy of z / T (softmax(log p "
        "/ T) would not rescale K independent sigmoids as it rescales logits)"
    )

    def loss(self, scores: Tensor, target: Tensor) -> Tensor:
        """Binary cross-entropy of every class against the one-hot target, summed over K, mean over B."""
        z = at_least_float32(scores)
        one_hot = torch.zeros_like(z).scatter_(1, target[:, None], 1.0)  # (F.one_hot syncs on CUDA)
        return F.binary_cross_entropy_with_logits(z, one_hot, reduction="sum") / z.shape[0]

    def log_probs(self, scores: Tensor) -> Tensor:
        """log(q_k / sum_j q_j) with q = sigmoid(z)."""
        log_q = F.logsigmoid(at_least_float32(scores))
        return log_q - torch.logsumexp(log_q, dim=-1, keepdim=True)
