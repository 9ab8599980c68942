"""The two standard heads: softmax with cross-entropy and log-softmax with NLL.

They are the same model. ``cross_entropy(z, y) = nll(log_softmax(z), y)``, so with the
same seed both heads follow the same optimisation path and make the same predictions;
a study that finds one "better" paired one of them with the wrong loss.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from softmaxlab.heads.base import HEADS, Head, at_least_float32


@HEADS.register("softmax")
class SoftmaxHead(Head):
    """Logits z; loss = cross-entropy(z, y); p = softmax(z) (the standard classifier)."""

    def loss(self, scores: Tensor, target: Tensor) -> Tensor:
        """L = -z_y + log sum_k exp(z_k), averaged over the batch (max-shifted by torch)."""
        return F.cross_entropy(scores, target)

    def log_probs(self, scores: Tensor) -> Tensor:
        """log p_k = z_k - log sum_j exp(z_j)."""
        return F.log_softmax(at_least_float32(scores), dim=-1)


@HEADS.register("log_softmax")
class LogSoftmaxHead(Head):
    """Outputs log p = log_softmax(z); loss = NLL(log p, y). Identical model to softmax."""

    def forward(self, features: Tensor) -> Tensor:
        """s = log_softmax(W f + b): the network itself outputs log-probabilities."""
        return F.log_softmax(self.fc(features), dim=-1)

    def loss(self, scores: Tensor, target: Tensor) -> Tensor:
        """L = -s_y, the negative log-likelihood of the target."""
        return F.nll_loss(scores, target)

    def log_probs(self, scores: Tensor) -> Tensor:
        """The scores already are log-probabilities (renormalised in at least float32)."""
        return F.log_softmax(at_least_float32(scores), dim=-1)
