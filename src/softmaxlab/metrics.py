"""Evaluation metrics and calibration, computed from the probabilities a head produced.

Metrics take probabilities, never logits, and nothing here re-applies a softmax: the head
decides what its distribution is. Counting and calibration metrics come from torchmetrics.
With p_i the (K,) distribution of image i, y_i its class, conf_i = max_k p_ik and
correct_i = [argmax_k p_ik = y_i]:

* accuracy = mean_i correct_i
* top-5 = mean_i [y_i among the 5 largest p_i.] (k capped at the class count)
* precision / recall / F1 per class, and their unweighted means over classes ("macro");
  ``per_class`` also holds each class's support (test images of that class)
* NLL = -mean_i log p_{i, y_i}, with p clamped to >= 1e-12 so exact zeros (sparse heads)
  give a large finite number instead of infinity; ``nll_clamped`` is the fraction of
  samples whose p_{i, y_i} was clamped, so a reader knows how much of the NLL is the clamp
* Brier = mean_i sum_k (p_ik - [k = y_i])^2
* ECE = sum_b (n_b / N) |acc_b - conf_b| and MCE = max_b |acc_b - conf_b| over 15
  equal-width confidence bins B_b (b = 0..14, [b/15, (b+1)/15), the last one closed at 1),
  where n_b is the number of images whose conf_i falls in B_b, acc_b the mean correct_i and
  conf_b the mean conf_i in it (empty bins count for nothing); ``reliability`` holds
  n_b, acc_b and conf_b, the data of a reliability diagram
* entropy = mean_i H(p_i), H(p) = -sum_k p_k log p_k in nats (0 log 0 = 0): how spread the
  predictions are, not how good they are (see :data:`NO_DIRECTION`)

Temperature scaling (Guo et al., 2017) recalibrates a trained softmax classifier with one
number: p_T = softmax(z / T), T > 0 fitted on held-out data by minimising the NLL. It keeps
every prediction (the arg max does not move) and changes only the confidence. Here it is
applied to the head's log-probabilities, p_T = softmax(log p / T): for a softmax over logits
z, log p = z - logsumexp(z) differs from z by a constant per image, which a softmax ignores,
so this is exactly softmax(z / T), recovered from the probabilities alone; for the
hierarchical and adaptive heads, whose distribution is not one softmax, it is p^(1/T)
renormalised, the same one-parameter sharpening or flattening. Heads whose probabilities are
not a softmax of their scores (sparsemax, entmax-1.5, sigmoid) declare
``temperature_scalable = False`` and get no temperature (see :func:`fit_head_temperature`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from softmaxlab.heads import Head
from softmaxlab.stats import ece_band

NLL_CLAMP = 1e-12
#: Equal-width confidence bins of ECE, MCE and the reliability data.
N_BINS = 15
#: Temperature scaling keeps T in [T_MIN, T_MAX]: a validation split that the model separates
#: perfectly has its NLL falling forever as T -> 0, and the clamp keeps that finite.
T_MIN, T_MAX = 0.01, 100.0
# The largest float32 below 1. torchmetrics (1.9) counts a confidence of exactly 1.0 in a hidden
# 16th bin of its own instead of the last bin (Lightning-AI/torchmetrics#3510), which changes ECE
# and MCE whenever a head is certain (sparse heads, saturated softmax). Confidences passed to it
# are capped here, which moves them into the last bin and changes no value by more than 6e-8.
_BELOW_ONE = float(torch.nextafter(torch.tensor(1.0), torch.tensor(0.0)))

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
    "ece": False,
    "mce": False,
    "ece_after_temperature": False,
    "nll_after_temperature": False,
}
#: Scalar metrics with no better direction, so tables show them without ranking or colour:
#: a low mean entropy is good when the confident predictions are right and bad when they are
#: not (calibration, ECE and NLL, is what says which).
NO_DIRECTION = frozenset({"entropy"})


def validate_probs(
    probs: Tensor, target: Tensor | None = None, source: str = "probabilities", atol: float = 1e-3
) -> None:
    """Raise ``ValueError`` unless ``probs`` is (N, K), N >= 1, in [0, 1] with rows summing to 1
    (and ``target``, when given, is (N,)). The message starts with ``source`` (e.g. the head)."""
    if probs.ndim != 2:
        raise ValueError(f"{source}: expected (N, K) probabilities, got shape {tuple(probs.shape)}")
    if target is not None and target.shape != (probs.shape[0],):
        raise ValueError(f"{source}: expected ({probs.shape[0]},) targets, got {tuple(target.shape)}")
    if probs.shape[0] == 0:
        raise ValueError(f"{source}: no samples to evaluate")
    p = probs.float()
    if not torch.isfinite(p).all() or (p < 0).any() or (p > 1).any():
        raise ValueError(f"{source}: probabilities must be finite and in [0, 1]")
    worst = (p.sum(dim=1) - 1).abs().max().item()
    if worst > atol:
        raise ValueError(f"{source}: rows must sum to 1 (largest deviation {worst:.3g}); is this a distribution?")


#: Beyond this many classes ``confusion_matrix`` is None: a dense K x K matrix of 100,000
#: classes would take 80 GB, and no figure could show it.
MAX_CONFUSION_CLASSES = 1000


def classification_metrics(probs: Tensor, target: Tensor, source: str = "probabilities") -> dict[str, Any]:
    """Every metric of the module docstring for (N, K) probabilities and (N,) integer targets,
    as Python values (lists for ``confusion_matrix``, ``per_class`` and ``reliability``);
    ``confusion_matrix`` is None beyond :data:`MAX_CONFUSION_CLASSES` classes.

    >>> p = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.6, 0.3, 0.1], [0.0, 0.0, 1.0]])
    >>> m = classification_metrics(p, torch.tensor([0, 1, 1, 2]))
    >>> m["accuracy"], m["per_class"]["recall"], m["confusion_matrix"]
    (0.75, [1.0, 0.5, 1.0], [[1, 0, 0], [1, 1, 0], [0, 0, 1]])
    """
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
    p_true = p.gather(1, target[:, None])
    if k <= MAX_CONFUSION_CLASSES:
        scores = {"precision": multiclass_precision, "recall": multiclass_recall, "f1": multiclass_f1_score}
        # torchmetrics' macro mean leaves out classes with neither test images nor predictions.
        macro = {f"{name}_macro": fn(p, target, num_classes=k, average="macro").item() for name, fn in scores.items()}
        per_class = {name: fn(p, target, num_classes=k, average="none").tolist() for name, fn in scores.items()}
    else:
        macro, per_class = _class_scores(p.argmax(dim=1), target, k)
    return {
        "accuracy": multiclass_accuracy(p, target, num_classes=k, average="micro").item(),
        "top5": multiclass_accuracy(p, target, num_classes=k, top_k=min(5, k), average="micro").item(),
        **macro,
        "nll": -p_true.clamp_min(NLL_CLAMP).log().mean().item(),
        "nll_clamped": (p_true < NLL_CLAMP).float().mean().item(),
        # sum_j (p_j - [j = y])^2 = sum_j p_j^2 - 2 p_y + 1, without an N x K one-hot matrix
        "brier": (p.pow(2).sum(dim=1) - 2 * p_true.squeeze(1) + 1).mean().item(),
        **calibration_metrics(p, target, source),
        "entropy": torch.special.entr(p).sum(dim=1).mean().item(),
        "confusion_matrix": multiclass_confusion_matrix(p, target, num_classes=k).tolist()
        if k <= MAX_CONFUSION_CLASSES
        else None,
        "per_class": {**per_class, "support": torch.bincount(target, minlength=k).tolist()},
        "ci95": bootstrap_ci(p, target),
    }


def _class_scores(pred: Tensor, target: Tensor, k: int) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Macro and per-class precision, recall and F1 of top-1 predictions as torchmetrics
    computes them (0 where undefined; the macro mean over the classes with test images or
    predictions), in O(N + K) memory: torchmetrics' multiclass scores count (target, pred)
    pairs in a K^2 bincount, 80 GB at 100,000 classes."""
    per_class, present = _weighted_scores(torch.ones(1, len(target), dtype=torch.float64), pred, target, k)
    macro = {f"{name}_macro": v[present].mean().item() for name, v in per_class.items()}
    return macro, {name: v[0].float().tolist() for name, v in per_class.items()}


def _weighted_scores(w: Tensor, pred: Tensor, target: Tensor, k: int) -> tuple[dict[str, Tensor], Tensor]:
    """(R, K) per-class precision, recall and F1 when image i counts w_ri times in row r (0
    where undefined), and the (R, K) mask of the classes with images or predictions there."""
    zeros = torch.zeros(w.shape[0], k, dtype=torch.float64)
    tp = zeros.index_add(1, target, w * (pred == target))
    predicted, support = zeros.index_add(1, pred, w), zeros.index_add(1, target, w)
    present = (predicted + support) > 0
    per_class = {
        "precision": torch.where(predicted > 0, tp / predicted.clamp_min(1e-12), 0.0),
        "recall": torch.where(support > 0, tp / support.clamp_min(1e-12), 0.0),
        "f1": torch.where(present, 2 * tp / (predicted + support).clamp_min(1e-12), 0.0),
    }
    return per_class, present


def calibration_metrics(
    probs: Tensor, target: Tensor, source: str = "probabilities", n_bins: int = N_BINS
) -> dict[str, Any]:
    """``ece``, ``mce`` (torchmetrics' top-label calibration error, norms "l1" and "max") and
    ``reliability`` (:func:`reliability_bins`) over ``n_bins`` equal-width confidence bins.

    >>> p = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.55, 0.45]])
    >>> m = calibration_metrics(p, torch.tensor([0, 1, 0]))
    >>> round(m["ece"], 4), round(m["mce"], 4)  # bins: {0.9, 0.9} half right, {0.55} right
    (0.4167, 0.45)
    """
    from torchmetrics.functional.classification import multiclass_calibration_error

    validate_probs(probs, target, source)
    p = probs.float().clamp(max=_BELOW_ONE)  # see _BELOW_ONE: the last bin is closed at 1
    k = p.shape[1]
    ece = multiclass_calibration_error(p, target, num_classes=k, n_bins=n_bins, norm="l1")
    mce = multiclass_calibration_error(p, target, num_classes=k, n_bins=n_bins, norm="max")
    reliability = reliability_bins(probs, target, n_bins)
    band = ece_band(reliability["count"], reliability["confidence"])
    return {"ece": ece.item(), "mce": mce.item(), "ece_band": band, "reliability": reliability}


def reliability_bins(probs: Tensor, target: Tensor, n_bins: int = N_BINS) -> dict[str, Any]:
    """The data of a reliability diagram: per confidence bin, how many images, how confident
    and how accurate.

    conf_i = max_k p_ik falls in bin b when edge_b <= conf_i < edge_{b+1}, with the edges
    ``torch.linspace(0, 1, n_bins + 1)`` in float32 (those of torchmetrics' calibration
    error) and the last bin closed at 1. Returns ``{"bins": n_bins, "count": [n_b],
    "confidence": [mean conf_i], "accuracy": [mean correct_i]}``; both means are None for
    an empty bin. ECE = sum_b count_b |accuracy_b - confidence_b| / N.

    >>> r = reliability_bins(torch.tensor([[0.9, 0.1], [1.0, 0.0]]), torch.tensor([0, 1]), n_bins=2)
    >>> r["count"], r["confidence"], r["accuracy"]
    ([0, 2], [None, 0.949999988079071], [None, 0.5])
    """
    conf, pred = probs.float().max(dim=1)  # (N,), (N,)
    correct = (pred == target).double()
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float32)
    index = (torch.bucketize(conf, edges, right=True) - 1).clamp(0, n_bins - 1)  # (N,) bin of each image
    count = torch.bincount(index, minlength=n_bins)
    conf_sum = torch.bincount(index, weights=conf.double(), minlength=n_bins)
    correct_sum = torch.bincount(index, weights=correct, minlength=n_bins)

    def mean(sums: Tensor) -> list[float | None]:
        return [s / n if n else None for s, n in zip(sums.tolist(), count.tolist(), strict=True)]

    return {"bins": n_bins, "count": count.tolist(), "confidence": mean(conf_sum), "accuracy": mean(correct_sum)}


# --------------------------------------------------------------------------- temperature scaling


def temperature_logits(probs: Tensor) -> Tensor:
    """The (N, K) float64 logits that temperature scaling divides: log p, with p clamped to
    >= the smallest normal float32 (so log p >= -87.3 and stays finite).

    For a softmax head log p = z - logsumexp(z): the logits up to a constant per row, which
    softmax ignores, so softmax(log p / T) = softmax(z / T). The clamp only touches
    probabilities that float32 cannot hold anyway (exact zeros, denormals).
    """
    return probs.double().clamp_min(torch.finfo(torch.float32).tiny).log()


def apply_temperature(probs: Tensor, temperature: float) -> Tensor:
    """p_T = softmax(log p / T) (float32, (N, K)); T = 1 gives ``probs`` back (up to the
    clamp of :func:`temperature_logits`), T > 1 flattens, T < 1 sharpens.

    >>> apply_temperature(torch.tensor([[0.8, 0.2]]), 2.0)  # sqrt(0.8) : sqrt(0.2) = 2 : 1
    tensor([[0.6667, 0.3333]])
    """
    return torch.softmax(temperature_logits(probs) / temperature, dim=1).float()


def fit_temperature(logits: Tensor, target: Tensor, max_iter: int = 100) -> float:
    """T* = argmin_T -mean_i log softmax(z_i / T)_{y_i} for (N, K) finite logits z and (N,)
    targets; deterministic.

    Minimised over log T (so T stays positive) by L-BFGS with a strong-Wolfe line search,
    from T = 1, in float64; the result is clamped to [:data:`T_MIN`, :data:`T_MAX`]. Any
    per-row shift of the logits gives the same T, so :func:`temperature_logits` of a
    softmax head's probabilities gives the T of its logits. On a few thousand cached
    validation outputs this takes milliseconds.
    """
    z = logits.detach().double()
    if z.ndim != 2 or target.shape != (z.shape[0],) or z.shape[0] == 0:
        raise ValueError(f"fit_temperature needs (N, K) logits and (N,) targets, N >= 1; got {tuple(z.shape)}")
    if not torch.isfinite(z).all():
        raise ValueError("fit_temperature needs finite logits; clamp log-probabilities with temperature_logits")
    y = target.long()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [log_t], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn="strong_wolfe"
    )

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(z * torch.exp(-log_t), y)
        loss.backward()
        return loss

    with torch.enable_grad():  # callers may sit under torch.no_grad
        optimizer.step(closure)
    t = math.exp(log_t.item())
    return min(T_MAX, max(T_MIN, t)) if math.isfinite(t) else 1.0


def fit_head_temperature(head: Head, probs: Tensor, target: Tensor, source: str) -> tuple[float | None, str]:
    """(T, note) for a trained head from its (N, K) probabilities on held-out data (the
    validation split): T by :func:`fit_temperature` on :func:`temperature_logits`, or None
    when the head declares ``temperature_scalable = False`` or there are no images. The note
    is one sentence for ``summary.json``: what T does to this head, or why there is none.
    """
    name = head.name
    if not head.temperature_scalable:
        return None, f"{name}: {head.temperature_note}"
    if target.shape[0] == 0:
        return None, f"{name}: no validation images to fit a temperature on"
    validate_probs(probs, target, source)
    temperature = fit_temperature(temperature_logits(probs), target)
    return temperature, f"{name}: fitted on the validation split by minimising NLL; {head.temperature_note}"


def after_temperature(probs: Tensor, target: Tensor, temperature: float | None) -> dict[str, Any]:
    """``ece_after_temperature``, ``nll_after_temperature`` and ``reliability_after_temperature``
    of p_T = :func:`apply_temperature` (probs, T), with the NLL clamped as ``nll``; all None
    when ``temperature`` is None (the keys are always there)."""
    if temperature is None:
        keys = ("ece", "ece_band", "nll", "reliability")
        return {f"{key}_after_temperature": None for key in keys}
    log_p = torch.log_softmax(temperature_logits(probs) / temperature, dim=1)  # (N, K) float64
    nll = -log_p.gather(1, target[:, None]).clamp_min(math.log(NLL_CLAMP)).mean().item()
    cal = calibration_metrics(log_p.exp().float(), target, "temperature-scaled probabilities")
    return {
        "ece_after_temperature": cal["ece"],
        "ece_band_after_temperature": cal["ece_band"],  # from the after-temperature confidences
        "nll_after_temperature": nll,
        "reliability_after_temperature": cal["reliability"],
    }


#: Bootstrap resamples of the test images behind ``test.ci95``.
BOOTSTRAP_RESAMPLES = 1000


def bootstrap_ci(
    probs: Tensor, target: Tensor, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0, n_bins: int = N_BINS
) -> dict[str, list[float] | None]:
    """95 % percentile-bootstrap intervals over the test images: ``{metric: [low, high]}`` for
    ``accuracy``, ``f1_macro`` (None beyond :data:`MAX_CONFUSION_CLASSES` classes), ``nll``,
    ``brier`` and ``ece``.

    Resample r draws the N images with replacement (seeded); w_ri counts how often image i
    was drawn. Every metric is a function of weighted sums, so all resamples are computed at
    once: a per-image mean is w_r . x / N; the ECE is sum_b |sum_{i in b} w_ri (correct_i -
    conf_i)| / N over the reliability bins; macro F1 is the mean over classes present in the
    resample of 2 tp_k / (predicted_k + support_k), each a weighted count by class.
    """
    n, k = probs.shape
    conf, pred = probs.double().max(dim=1)
    correct = (pred == target).double()
    p_true = probs.double().gather(1, target[:, None]).squeeze(1)
    draws = torch.randint(0, n, (resamples, n), generator=torch.Generator().manual_seed(seed))
    w = torch.zeros(resamples, n, dtype=torch.float64).scatter_add_(
        1, draws, torch.ones(resamples, n, dtype=torch.float64)
    )
    per_image = {
        "accuracy": correct,
        "nll": -p_true.clamp_min(NLL_CLAMP).log(),
        "brier": probs.double().pow(2).sum(dim=1) - 2 * p_true + 1,
    }
    values = {name: w @ x / n for name, x in per_image.items()}
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float32)
    bins = (torch.bucketize(conf.float(), edges, right=True) - 1).clamp(0, n_bins - 1)
    gaps = torch.zeros(resamples, n_bins, dtype=torch.float64).index_add_(1, bins, w * (correct - conf))
    values["ece"] = gaps.abs().sum(dim=1) / n
    values["f1_macro"] = _bootstrap_f1(w, pred, target, k) if k <= MAX_CONFUSION_CLASSES else None
    return {
        name: None if v is None else torch.quantile(v, torch.tensor([0.025, 0.975], dtype=v.dtype)).tolist()
        for name, v in values.items()
    }


def _bootstrap_f1(w: Tensor, pred: Tensor, target: Tensor, k: int) -> Tensor:
    """(R,) macro F1 of each resample (see :func:`_weighted_scores`)."""
    per_class, present = _weighted_scores(w, pred, target, k)
    return per_class["f1"].sum(dim=1) / present.sum(dim=1)
