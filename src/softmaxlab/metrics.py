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
* AURC = (1/N) sum_{j=1..N} risk_j, risk_j = (1/j) sum of (1 - correct_i) over the j images
  of largest conf_i (the risk-coverage curve at coverage j / N); a tie group's errors are
  spread evenly over its positions, the mean over all orders of the tied images
* AUROC of misclassification = P(conf_i > conf_j) + P(conf_i = conf_j) / 2 for a random
  right image i and wrong image j (None when all images are right or all wrong)
* class-wise ECE = (1/K) sum_k sum_b (n_bk / N) |freq_bk - conf_bk|, the ECE of each class's
  p_ik over all images in the same 15 bins: n_bk images with p_ik in B_b, freq_bk the
  fraction of them with y_i = k, conf_bk their mean p_ik (None beyond 1000 classes)

Temperature scaling (Guo et al., 2017) recalibrates a trained softmax classifier with one
number: p_T = softmax(z / T), T > 0 fitted on held-out data by minimising the NLL. It keeps
every prediction (the arg max does not move) and changes only the confidence. Here it is
applied to the head's log-probabilities, p_T = softmax(log p / T): for a softmax over logits
z, log p = z - logsumexp(z) differs from z by a constant per image, which a softmax ignores,
so this is exactly softmax(z / T), recovered from the probabilities alone; for the
hierarchical and adaptive heads, whose distribution is not one softmax, it is p^(1/T)
renormalised, the same one-parameter sharpening or flattening. Heads whose probabilities are
not a softmax of their scores (sparsemax, entmax-1.5, sigmoid) declare
``temperature_input = "scores"``: their own mapping of z / T is the recalibration
(sparsemax(z / T), entmax15(z / T), sigmoid(z / T) normalised), with T minimising the head's
own training loss of z / T on held-out data, as the NLL is softmax's (see
:func:`fit_head_temperature`), so every head's ECE after scaling is like for like.
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
    "aurc": False,
    "auroc_misclassification": True,
    "classwise_ece": False,
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
        **selective_metrics(p, target, source),
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


def temperature_inputs(head: Head, probs: Tensor, scores: Tensor | None = None) -> Tensor:
    """The (N, K) float64 values that temperature scaling divides by T for ``head``:
    :func:`temperature_logits` of its probabilities, or (``temperature_input = "scores"``)
    its scores, which the caller keeps (``train.evaluate(..., keep_probs=True)`` does)."""
    if head.temperature_input != "scores":
        return temperature_logits(probs)
    if scores is None:
        raise ValueError(f"head {head.name!r} is temperature-scaled on its scores; pass them")
    return scores.detach().double()


def scaled_log_probs(head: Head, inputs: Tensor, temperature: float) -> Tensor:
    """(N, K) float64 log p_T of :func:`temperature_inputs`: log_softmax(inputs / T), or the
    head's own log-probabilities of its scores divided by T (-inf where a sparse head gives 0)."""
    if head.temperature_input == "scores":
        with torch.no_grad():
            return head.log_probs(inputs / temperature).double()
    return torch.log_softmax(inputs / temperature, dim=1)


def temperature_scaled_probs(head: Head, probs: Tensor, temperature: float, scores: Tensor | None = None) -> Tensor:
    """(N, K) float32 p_T of a head's probabilities (and scores, for heads scaled on them)."""
    return scaled_log_probs(head, temperature_inputs(head, probs, scores), temperature).exp().float()


def fit_loss_temperature(head: Head, scores: Tensor, target: Tensor) -> float:
    """T* = argmin_T mean_i L(z_i / T, y_i) over T in [:data:`T_MIN`, :data:`T_MAX`], with L
    the head's own training loss of (N, K) scores z (float64): for softmax that loss is the
    NLL, so this is Guo et al.'s temperature scaling; for sigmoid it is the binary
    cross-entropy, for sparsemax / entmax-1.5 their Fenchel-Young losses.

    These losses are convex in their input, and z / T = s z is linear in s = 1 / T, so the
    objective is convex in s and has one minimum over log T: a bounded Brent search
    (``scipy.optimize.minimize_scalar``), deterministic.
    """
    from scipy.optimize import minimize_scalar

    z, y = scores.detach().double(), target.long()

    def objective(log_t: float) -> float:
        with torch.no_grad():
            return float(head.loss(z / math.exp(log_t), y))

    bounds = (math.log(T_MIN), math.log(T_MAX))
    result = minimize_scalar(objective, bounds=bounds, method="bounded", options={"xatol": 1e-6})
    t = math.exp(float(result.x))
    return min(T_MAX, max(T_MIN, t)) if math.isfinite(t) else 1.0


def fit_head_temperature(
    head: Head, probs: Tensor, target: Tensor, source: str, scores: Tensor | None = None
) -> tuple[float | None, str]:
    """(T, note) for a trained head from its (N, K) probabilities (and scores, for heads
    scaled on them) on held-out data (the validation split): T by :func:`fit_temperature`
    on :func:`temperature_logits`, or by :func:`fit_loss_temperature` on the scores; None
    when the head declares ``temperature_scalable = False`` or there are no images. The note
    is one sentence for ``summary.json``: what T does to this head, or why there is none.
    """
    name = head.name
    if not head.temperature_scalable:
        return None, f"{name}: {head.temperature_note}"
    if target.shape[0] == 0:
        return None, f"{name}: no validation images to fit a temperature on"
    validate_probs(probs, target, source)
    inputs = temperature_inputs(head, probs, scores)
    if head.temperature_input == "scores":
        temperature, how = fit_loss_temperature(head, inputs, target), "by minimising its loss"
    else:
        temperature, how = fit_temperature(inputs, target), "by minimising NLL"
    return temperature, f"{name}: fitted on the validation split {how}; {head.temperature_note}"


def after_temperature(
    probs: Tensor, target: Tensor, temperature: float | None, head: Head | None = None, scores: Tensor | None = None
) -> dict[str, Any]:
    """``ece_after_temperature``, ``ece_band_after_temperature``, ``nll_after_temperature`` and
    ``reliability_after_temperature`` of p_T (:func:`scaled_log_probs`; softmax(log p / T)
    when no ``head`` is given), with the NLL clamped as ``nll``; all None when
    ``temperature`` is None (the keys are always there)."""
    if temperature is None:
        keys = ("ece", "ece_band", "nll", "reliability")
        return {f"{key}_after_temperature": None for key in keys}
    if head is None:
        log_p = torch.log_softmax(temperature_logits(probs) / temperature, dim=1)  # (N, K) float64
    else:
        log_p = scaled_log_probs(head, temperature_inputs(head, probs, scores), temperature)
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


# --------------------------------------------------------------------------- selective prediction


def selective_metrics(probs: Tensor, target: Tensor, source: str = "probabilities") -> dict[str, float | None]:
    """``aurc`` (:func:`aurc`) and ``auroc_misclassification`` (:func:`misclassification_auroc`):
    how well conf_i = max_k p_ik puts the right predictions above the wrong ones; and
    ``classwise_ece`` (:func:`classwise_ece`): how calibrated every class's probability is.

    >>> p = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    >>> m = selective_metrics(p, torch.tensor([0, 0, 0, 1]))  # by confidence: right, wrong, right, right
    >>> round(m["aurc"], 4), round(m["auroc_misclassification"], 4), round(m["classwise_ece"], 4)
    (0.2708, 0.3333, 0.4)
    """
    validate_probs(probs, target, source)
    conf, pred = probs.float().max(dim=1)  # (N,), (N,): the prediction of every other metric
    correct = pred == target
    return {
        "aurc": aurc(conf, correct),
        "auroc_misclassification": misclassification_auroc(conf, correct),
        "classwise_ece": classwise_ece(probs, target),
    }


def aurc(conf: Tensor, correct: Tensor) -> float:
    """Area under the risk-coverage curve (Geifman & El-Yaniv, 2017) of (N,) confidences and
    (N,) right/wrong flags: AURC = (1/N) sum_{j=1..N} risk_j, risk_j the error rate of the j
    most confident images (coverage j / N). Lower is better: 0 when every image is right, 1
    when every one is wrong, the error rate when the confidence says nothing (all tied).

    Ties: which tied images are among "the j most confident" is arbitrary, and the input
    order must not decide it. A tie group's errors are spread evenly over its positions:
    with s images above the group and g images, e of them wrong, in it, the top j images
    (s < j <= s + g) hold errors_above + (j - s) e / g errors. As risk_j is linear in that
    count, this is the mean AURC over all orders of the tied images: a tie neither helps nor
    hurts, as in the AUROC, where a tied pair counts 1/2. (Giving the whole group the risk at
    its end would rank a tie like an all-wrong-first order for the coverages inside it.)

    A perfect ranking (every right image above every wrong one) with e of N wrong has the
    smallest AURC possible at that accuracy, (1/N) sum_{j=N-e+1..N} (j - N + e) / j, about
    r + (1 - r) ln(1 - r) at error rate r = e / N, not 0 (E-AURC is the excess over it).

    >>> round(aurc(torch.tensor([0.9, 0.9, 0.5]), torch.tensor([True, False, True])), 4)  # orders: 0.2778, 0.6111
    0.4444
    """
    order = conf.argsort(descending=True)
    conf, wrong = conf[order], (~correct.bool())[order].double()  # (N,), (N,) most confident first
    _, group, size = torch.unique_consecutive(conf, return_inverse=True, return_counts=True)  # (N,), (G,)
    errors = torch.zeros(len(size), dtype=torch.float64, device=conf.device).index_add_(0, group, wrong)  # (G,)
    above = (errors.cumsum(0) - errors)[group]  # (N,) errors in the more confident groups
    start = (size.cumsum(0) - size)[group]  # (N,) images in the more confident groups
    j = torch.arange(1, len(conf) + 1, dtype=torch.float64, device=conf.device)  # (N,) images covered
    risk = (above + (j - start) * errors[group] / size[group]) / j  # (N,)
    return risk.mean().item()


def misclassification_auroc(conf: Tensor, correct: Tensor) -> float | None:
    """AUROC of (N,) confidences for telling right (positive) from wrong images, by
    torchmetrics' exact ``binary_auroc``: the probability that a random right image is more
    confident than a random wrong one, a tie counting 1/2 (Mann-Whitney U / (n_right n_wrong)).
    1 is a perfect ranking, 0.5 chance; None when every image is right or every one is wrong
    (there is no pair to compare)."""
    from torchmetrics.functional.classification import binary_auroc

    if int(correct.sum()) in (0, len(correct)):
        return None
    # conf is in [0, 1], so binary_auroc takes it as it is (it applies a sigmoid only outside [0, 1]).
    return binary_auroc(conf, correct.long()).item()


#: (image, class) entries per bincount of :func:`classwise_ece`: chunks of images keep its bin
#: indices and weights near 64 MB instead of 1.2 GB at 50,000 images and 1000 classes.
_CLASSWISE_ENTRIES = 1 << 22


def classwise_ece(probs: Tensor, target: Tensor, n_bins: int = N_BINS) -> float | None:
    """Class-wise ECE (Kull et al., 2019; Nixon et al., 2019): the ECE of each class's
    probability p_ik over all N images, averaged over the K classes,
    (1/K) sum_k sum_b (n_bk / N) |freq_bk - conf_bk|, where p_ik falls in bin b by the edges
    of :func:`reliability_bins` (the last bin closed at 1), n_bk counts the images there,
    freq_bk is the fraction of them with y_i = k and conf_bk their mean p_ik (empty bins count
    for nothing). Top-label ECE sees only max_k p_ik; this also sees the probabilities a head
    gives the classes it does not predict. None beyond :data:`MAX_CONFUSION_CLASSES` classes.

    >>> classwise_ece(torch.tensor([[1.0, 0.0], [0.5, 0.5]]), torch.tensor([0, 1]))  # each class: |0 or 1 - 0.5| / 2
    0.25
    """
    n, k = probs.shape
    if k > MAX_CONFUSION_CLASSES:
        return None
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float32, device=probs.device)
    offset = torch.arange(k, device=probs.device) * n_bins  # (K,) first (class, bin) index of each class
    # n_bk conf_bk and n_bk freq_bk are sums, so ECE_k = sum_b |sum_{i in b} ([y_i = k] - p_ik)| / N.
    conf_sum = torch.zeros(k * n_bins, dtype=torch.float64, device=probs.device)
    rows = max(1, _CLASSWISE_ENTRIES // k)
    for lo in range(0, n, rows):
        p = probs[lo : lo + rows].float()  # (R, K)
        pair = _bin_index(p, edges) + offset  # (R, K) (class, bin) of each p_ik
        conf_sum += torch.bincount(pair.flatten(), weights=p.flatten().double(), minlength=k * n_bins)
    # Image i is a hit only for its own class, in the bin of p_{i, y_i}: an O(N) count.
    p_true = probs.float().gather(1, target[:, None]).squeeze(1)  # (N,)
    hits = torch.bincount(_bin_index(p_true, edges) + offset[target], minlength=k * n_bins)
    return ((hits - conf_sum).abs().sum() / (n * k)).item()


def _bin_index(x: Tensor, edges: Tensor) -> Tensor:
    """The bin of each value: b with edges[b] <= x < edges[b + 1], the last bin closed at 1."""
    return (torch.bucketize(x, edges, right=True) - 1).clamp(0, len(edges) - 2)
