"""Output normalisers ("heads"): features -> scores, with their loss and probabilities.

Importing this package registers every head in :data:`HEADS`.
"""

# Imported for their @HEADS.register side effect; this order is the order of `softmaxlab list heads`.
# isort: off
from softmaxlab.heads import softmax, pitfalls, temperature, gumbel, sparse, sigmoid, hierarchical, adaptive  # noqa: F401

# isort: on
from softmaxlab.heads.base import HEADS, Head, build_head, check_probs
from softmaxlab.heads.check import DoubleSoftmaxWarning, SoftmaxNLLWarning, SoftmaxPitfallWarning, check_logits

__all__ = [
    "HEADS",
    "DoubleSoftmaxWarning",
    "Head",
    "SoftmaxNLLWarning",
    "SoftmaxPitfallWarning",
    "build_head",
    "check_logits",
    "check_probs",
]
