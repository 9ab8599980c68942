"""Three famous mistakes, kept on purpose so they can be reproduced and explained.

* ``double_softmax``: the network outputs p = softmax(z) and is trained with cross-entropy,
  which applies a second softmax: L = -log softmax(p)_y. Since p lies in the simplex, the
  best the loss can do is p = one_hot(y), giving

      L >= -log(e / (e + K - 1)) = ln(1 + (K - 1) / e)   (1.04 for K = 6, 3.62 for K = 100)

  and the gradient dL/dz = J_softmax(z)^T (softmax(p) - one_hot(y)) is damped twice: the
  second softmax is nearly uniform, and the first one's Jacobian vanishes as p saturates.
* ``softmax_nll``: the network outputs p = softmax(z) and is trained with ``NLLLoss``, which
  expects log-probabilities and takes the target's entry as it is: L = -p_y, bounded in
  [-1, 0]. Its gradient dL/dz = -p_y (e_y - p) vanishes as p_y -> 0, so an image the model
  is confidently wrong about teaches it nothing (cross-entropy's gradient there is largest),
  and every image with p_y near 1 stops counting too.
* ``naive_softmax``: p = exp(z) / sum_j exp(z_j) without subtracting max_j z_j first. In
  float32 exp overflows to inf for z > 88.7 (float16: z > 11.1) and inf / inf = NaN, so a
  run whose logits grow ends in a non-finite loss (a clean divergence in ``fit``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from softmaxlab.heads.base import HEADS, Head, at_least_float32


def double_softmax_floor(num_classes: int) -> float:
    """The lowest value of cross-entropy(softmax(z)) over all z: ln(1 + (K - 1) / e).

    >>> round(double_softmax_floor(6), 2), round(double_softmax_floor(100), 2)
    (1.04, 3.62)
    """
    return math.log1p((num_classes - 1) / math.e)


def naive_softmax(z: Tensor, dim: int = -1) -> Tensor:
    """exp(z) / sum_j exp(z_j) with no max shift: overflows (NaN) once some z_j > ~88 in float32."""
    e = z.exp()
    return e / e.sum(dim=dim, keepdim=True)


@HEADS.register("double_softmax")
class DoubleSoftmaxHead(Head):
    """PITFALL: outputs softmax(z) into cross-entropy; loss floor ln(1+(K-1)/e), damped gradients.

    Scores are the probabilities p = softmax(z) the network outputs; the loss is
    ``F.cross_entropy(p, y)``, i.e. -log softmax(p)_y, which never goes below
    ln(1 + (K-1)/e) (see :func:`double_softmax_floor`). Evaluation uses p itself, the
    distribution a user of such a model would read off its output; accuracy is unaffected
    by the second softmax (it is monotone), calibration and learning speed are not.
    """

    temperature_scalable = True
    temperature_note = "p_T = softmax(log p / T) = softmax(z / T), the logits before the network's softmax layer"

    def forward(self, features: Tensor) -> Tensor:
        """p = softmax(W f + b): the network ends in a softmax layer."""
        return torch.softmax(self.fc(features), dim=-1)

    def loss(self, scores: Tensor, target: Tensor) -> Tensor:
        """L = cross_entropy(p, y) = -p_y + log sum_k exp(p_k): the second softmax."""
        return F.cross_entropy(scores, target)

    def probs(self, scores: Tensor) -> Tensor:
        """p itself, renormalised in at least float32."""
        p = at_least_float32(scores)
        return p / p.sum(dim=-1, keepdim=True)

    def log_probs(self, scores: Tensor) -> Tensor:
        """log p; -inf where the softmax underflowed to exactly 0."""
        return self.probs(scores).log()


@HEADS.register("softmax_nll")
class SoftmaxNLLHead(Head):
    """PITFALL: outputs softmax(z) into NLLLoss, so loss = -p_y; no gradient where p_y -> 0.

    Scores are the probabilities p = softmax(z) the network outputs; the loss is
    ``F.nll_loss(p, y)`` = -mean_i p_{i, y_i}, which expects log-probabilities and so never
    takes a log. dL/dz = -p_y (e_y - p): small when the model is wrong with confidence, the
    opposite of the log-likelihood. Evaluation uses p, as for ``double_softmax``.
    """

    temperature_note = DoubleSoftmaxHead.temperature_note

    # The network and its evaluation are the double softmax's (it ends in a softmax); the loss is not.
    forward = DoubleSoftmaxHead.forward
    probs = DoubleSoftmaxHead.probs
    log_probs = DoubleSoftmaxHead.log_probs

    def loss(self, scores: Tensor, target: Tensor) -> Tensor:
        """L = nll_loss(p, y) = -p_y: the probability where a log-probability belongs."""
        return F.nll_loss(scores, target)


@HEADS.register("naive_softmax")
class NaiveSoftmaxHead(Head):
    """PITFALL: exp(z)/sum exp(z) without the max shift; overflows to NaN for logits > ~88.

    Scores are the logits z; p = exp(z) / sum_j exp(z_j) computed literally in at least
    float32 (as every head normalises; bfloat16 has float32's range, so the overflow is the
    same), and the loss is -log p_y with the log taken afterwards. Identical to ``softmax``
    while the logits stay small; a non-finite loss once they do not (then ``fit`` stops with
    a :class:`~softmaxlab.errors.DivergedError`).
    """

    def loss(self, scores: Tensor, target: Tensor) -> Tensor:
        """L = -log(exp(z_y) / sum_k exp(z_k)), without the max shift."""
        return F.nll_loss(self.log_probs(scores), target)

    def probs(self, scores: Tensor) -> Tensor:
        """exp(z) / sum exp(z), literally: NaN or inf once exp overflows."""
        return naive_softmax(at_least_float32(scores))

    def log_probs(self, scores: Tensor) -> Tensor:
        """log of :meth:`probs` (no log-sum-exp trick)."""
        return self.probs(scores).log()
