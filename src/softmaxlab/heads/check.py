"""Recognise the double-softmax pitfall in a model's outputs.

A model that ends in ``nn.Softmax`` outputs probabilities p; ``nn.CrossEntropyLoss`` (or any
head that applies a softmax) then computes softmax(p), which is nearly uniform: the loss
cannot go below ln(1 + (K-1)/e) and the gradients are damped by a second softmax Jacobian.
The outputs give it away: every value is in [0, 1] and every row sums to 1, which raw
logits almost never do.

>>> check_logits(torch.tensor([[2.0, -1.0, 0.5]])) is None
True
>>> check_logits(torch.tensor([[0.7, 0.2, 0.1]])).startswith("these outputs look like probabilities")
True
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from softmaxlab.heads.pitfalls import double_softmax_floor


class DoubleSoftmaxWarning(UserWarning):
    """Outputs that look like probabilities are about to go through another softmax."""


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


def check_logits(outputs: Tensor, *, strict: bool = False) -> str | None:
    """Explain the double-softmax pitfall if ``outputs`` look like probabilities, else None.

    Call it on what your model returns before it goes into ``nn.CrossEntropyLoss`` or a
    softmax head. Returns None for logits; for probability-like outputs (all values in
    [0, 1], rows summing to 1) returns a one-sentence explanation, or raises it as a
    ``ValueError`` when ``strict``.
    """
    if not looks_like_probabilities(outputs):
        return None
    k = outputs.shape[-1]
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


def warn_if_probabilities(outputs: Tensor) -> None:
    """Issue a :class:`DoubleSoftmaxWarning` when ``outputs`` look like probabilities.

    Reads the outputs back to the host once, so call it on one batch, not every step.
    """
    message = check_logits(outputs)
    if message is not None:
        warnings.warn(message, DoubleSoftmaxWarning, stacklevel=2)
