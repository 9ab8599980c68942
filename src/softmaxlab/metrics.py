"""Evaluation metrics computed from the probabilities a head produced.

Metrics take probabilities, never logits, and nothing here re-applies a softmax: the head
decides what its distribution is. Counting metrics come from torchmetrics.

* accuracy = mean_i [argmax_k p_ik = y_i]
* top-5 = mean_i [y_i among the 5 largest p_i.] (k capped at the class count)
* precision / recall / F1: unweighted means over classes ("macro")
* NLL = -mean_i log p_{i, y_i}, with p clamped to >= 1e-12 so exact zeros (sparse heads)
  give a large finite number instead of infinity; ``nll_clamped`` is the fraction of
  samples whose p_{i, y_i} was clamped, so a reader knows how much of the NLL is the clamp
* Brier = mean_i sum_k (p_ik - [k = y_i])^2
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

NLL_CLAMP = 1e-12

#: Whether a larger value is better, for sorting and colouring tables without special cases.
HIGHER_IS_BETTER = {
    "accuracy": True,
    "top5": True,
    "precision_macro": True,
    "recall_macro": True,
    "f1_macro": True,
    "nll": False,
    "nll_clamped": False,
    "brier": False,
}


def validate_probs(probs: Tensor, target: Tensor, source: str = "probabilities", atol: float = 1e-3) -> None:
    """Raise ``ValueError`` unless ``probs`` is (N, K) in [0, 1] with rows summing to 1."""
    if probs.ndim != 2:
        raise ValueError(f"{source}: expected (N, K) probabilities, got shape {tuple(probs.shape)}")
    if target.shape != (probs.shape[0],):
        raise ValueError(f"{source}: expected ({probs.shape[0]},) targets, got {tuple(target.shape)}")
    p = probs.float()
    if not torch.isfinite(p).all() or (p < 0).any() or (p > 1).any():
        raise ValueError(f"{source}: probabilities must be finite and in [0, 1]")
    worst = (p.sum(dim=1) - 1).abs().max().item()
    if worst > atol:
        raise ValueError(f"{source}: rows must sum to 1 (largest deviation {worst:.3g}); is this a distribution?")


def classification_metrics(probs: Tensor, target: Tensor, source: str = "probabilities") -> dict[str, Any]:
    """Every metric above for (N, K) probabilities and (N,) integer targets, as Python values."""
    # Imported here: torchmetrics takes seconds to import, and most commands never need it.
    from torchmetrics.functional.classification import (
        multiclass_accuracy,
        multiclass_confusion_matrix,
        multiclass_f1_score,
        multiclass_precision,
        multiclass_recall,
    )

    validate_probs(probs, target, source)
    p = probs.float()
    k = p.shape[1]
    common = {"num_classes": k, "average": "macro"}
    one_hot = F.one_hot(target, k).float()
    p_true = p.gather(1, target[:, None])
    return {
        "accuracy": multiclass_accuracy(p, target, num_classes=k, average="micro").item(),
        "top5": multiclass_accuracy(p, target, num_classes=k, top_k=min(5, k), average="micro").item(),
        "precision_macro": multiclass_precision(p, target, **common).item(),
        "recall_macro": multiclass_recall(p, target, **common).item(),
        "f1_macro": multiclass_f1_score(p, target, **common).item(),
        "nll": -p_true.clamp_min(NLL_CLAMP).log().mean().item(),
        "nll_clamped": (p_true < NLL_CLAMP).float().mean().item(),
        "brier": (p - one_hot).pow(2).sum(dim=1).mean().item(),
        "confusion_matrix": multiclass_confusion_matrix(p, target, num_classes=k).tolist(),
    }
