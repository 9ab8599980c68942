"""Output normalisers ("heads"): features -> scores, with their loss and probabilities.

Importing this package registers every head in :data:`HEADS`.
"""

from softmaxlab.heads import softmax  # noqa: F401  (registers the heads)
from softmaxlab.heads.base import HEADS, Head, build_head, check_probs

__all__ = ["HEADS", "Head", "build_head", "check_probs"]
