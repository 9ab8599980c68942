"""Recognise the two softmax pairing pitfalls in a model's outputs.

A model that ends in ``nn.Softmax`` outputs probabilities p. ``nn.CrossEntropyLoss`` (or any
head that applies a softmax) then computes softmax(p), which is nearly uniform: the loss
cannot go below ln(1 + (K-1)/e) and the gradients are damped by a second softmax Jacobian
(the double softmax). ``nn.NLLLoss`` expects log p and computes -p_y instead, whose gradient
vanishes where the model is wrong (softmax into NLL). The outputs give both away: every
value is in [0, 1] and every row sums to 1, which raw logits and log-probabilities (all
<= 0) almost never do.

>>> check_logits(torch.tensor([[2.0, -1.0, 0.5]])) is None
True
>>> check_logits(torch.tensor([[0.7, 0.2, 0.1]])).startswith("these outputs look like probabilities")
True
"""

from __future__ import annotations

import torch
from torch import Tensor

from softmaxlab.heads.pitfalls import double_softmax_floor


class SoftmaxPitfallWarning(UserWarning):
    """Outputs that look like probabilities are about to go into a loss that wants logits
    or log-probabilities."""


class DoubleSoftmaxWarning(SoftmaxPitfallWarning):
    """Outputs that look like probabilities are about to go through another softmax."""


class SoftmaxNLLWarning(SoftmaxPitfallWarning):
    """Outputs that look like probabilities are about to go into NLLLoss as log-probabilities."""


def looks_like_probabilities(outputs: Tensor) -> bool:
    """Whether (..., K) ``outputs`` are finite, all in [0, 1], with every row summing to 1.

    The tolerance on the row sums is 1e-3, or 1e-2 in float16 / bfloat16.
    """
    x = outputs.detach()
    if x.ndim == 0 or x.shape[-1] < 2 or x.numel() == 0:
        return False
    atol = 1e-2 if x.dtype in (torch.float16, torch.bfloat16) else 1e-3
    x = x.float()
    if not bool(torch.isfinite(x).all()) or bool(((x < 0) | (x > 1)).any()):
        return False
    return bool(((x.sum(dim=-1) - 1).abs() <= atol).all())


def check_logits(outputs: Tensor, *, strict: bool = False, loss: str = "cross_entropy") -> str | None:
    """Explain the pitfall if ``outputs`` look like probabilities, else None.

    Call it on what your model returns before it goes into its loss: ``loss`` is
    ``"cross_entropy"`` (``nn.CrossEntropyLoss`` or a softmax head: the double softmax) or
    ``"nll"`` (``nn.NLLLoss``: softmax into NLL). Returns None for logits and
    log-probabilities; for probability-like outputs (all values in [0, 1], rows summing to
    1) returns a one-sentence explanation, or raises it as a ``ValueError`` when ``strict``.
    """
    if loss not in ("cross_entropy", "nll"):
        raise ValueError(f"loss must be 'cross_entropy' or 'nll', got {loss!r}")
    if not looks_like_probabilities(outputs):
        return None
    k = outputs.shape[-1]
    if loss == "nll":
        message = (
            "these outputs look like probabilities (all in [0, 1], rows sum to 1), so passing them to NLLLoss, "
            "which expects log-probabilities, is the softmax-into-NLL pitfall (loss -p_y, whose gradient vanishes "
            "where the model is wrong): end the model in log_softmax instead of softmax (head.name=log_softmax), "
            "or pass raw logits to cross-entropy"
        )
    else:
        floor = double_softmax_floor(k)
        message = (
            "these outputs look like probabilities (all in [0, 1], rows sum to 1), so applying softmax or "
            f"cross-entropy to them is the double-softmax pitfall (loss stuck above ln(1 + (K-1)/e) = {floor:.2f} "
            f"for K = {k}, damped gradients): remove the final softmax from the model and pass raw logits, "
            "or take their log and use an NLL loss (head.name=log_softmax)"
        )
    if strict:
        raise ValueError(message)
    return message
