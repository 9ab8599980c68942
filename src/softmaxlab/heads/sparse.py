"""Sparse normalisers from the ``entmax`` package, trained with their Fenchel-Young losses.

Both map logits z to the simplex by a regularised arg max (Peters et al., 2019):

    alpha-entmax(z) = argmax_{p in simplex} p.z + H_alpha(p),
    H_alpha(p) = sum_k (p_k - p_k^alpha) / (alpha (alpha - 1))

alpha = 2 is sparsemax, the Euclidean projection onto the simplex,
p_k = max(0, z_k - t(z)) with t chosen so that sum_k p_k = 1; alpha = 1.5 is entmax-1.5,
p_k = max(0, (z_k / 2 - t(z)))^2. Unlike softmax they give exact zeros to low-scoring
classes, so log p can be -inf: the NLL metric clamps p (see :mod:`softmaxlab.metrics`).
The matching loss is the Fenchel-Young loss L(z, y) = H_alpha(p*) + (p* - e_y).z, which is
finite and has gradient p* - e_y, so these heads are not trained with -log p_y.

Both use a full sort (``k=None``): the package's partial sort asks the host whether the
support fits in k, a sync on every step.
"""

from __future__ import annotations

from entmax import entmax15, entmax15_loss, sparsemax, sparsemax_loss
from torch import Tensor

from softmaxlab.heads.base import HEADS, Head, at_least_float32


@HEADS.register("sparsemax")
class SparsemaxHead(Head):
    """sparsemax(z) = Euclidean projection onto the simplex (exact zeros); sparsemax loss.

    p = argmin_{p in simplex} ||p - z||^2 = max(0, z - t(z)); L = Fenchel-Young sparsemax loss
    (1 - ||p||^2) / 2 + (p - e_y).z. Probabilities contain exact zeros; post-hoc
    temperature scaling maps z / T: p_T = sparsemax(z / T), T minimising the sparsemax loss
    of z / T on the validation split (a larger T widens the support).
    """

    temperature_input = "scores"
    temperature_note = (
        "p_T = sparsemax(z / T), T minimising the sparsemax loss of z / T (softmax(log p / T) is undefined on "
        "the exact zeros)"
    )

    def loss(self, scores: Tensor, target: Tensor) -> Tensor:
        """Mean sparsemax loss (``entmax.SparsemaxLoss``), computed in at least float32."""
        return sparsemax_loss(at_least_float32(scores), target).mean()

    def probs(self, scores: Tensor) -> Tensor:
        """sparsemax(z) in at least float32."""
        return sparsemax(at_least_float32(scores), dim=-1)

    def log_probs(self, scores: Tensor) -> Tensor:
        """log sparsemax(z): -inf for the classes outside the support."""
        return self.probs(scores).log()


@HEADS.register("entmax15")
class Entmax15Head(Head):
    """entmax-1.5(z): sparse, between softmax and sparsemax; entmax-1.5 loss.

    p = argmax_{p in simplex} p.z + H_1.5(p) = max(0, z / 2 - t(z))^2; L = Fenchel-Young
    entmax-1.5 loss. Probabilities contain exact zeros; post-hoc temperature scaling maps
    z / T: p_T = entmax15(z / T), T minimising the entmax-1.5 loss of z / T on the validation
    split.
    """

    temperature_input = "scores"
    temperature_note = (
        "p_T = entmax15(z / T), T minimising the entmax-1.5 loss of z / T (softmax(log p / T) is undefined on "
        "the exact zeros)"
    )

    def loss(self, scores: Tensor, target: Tensor) -> Tensor:
        """Mean entmax-1.5 loss (``entmax.Entmax15Loss``), computed in at least float32."""
        return entmax15_loss(at_least_float32(scores), target, k=None).mean()

    def probs(self, scores: Tensor) -> Tensor:
        """entmax15(z) in at least float32."""
        return entmax15(at_least_float32(scores), dim=-1)

    def log_probs(self, scores: Tensor) -> Tensor:
        """log entmax15(z): -inf for the classes outside the support."""
        return self.probs(scores).log()
