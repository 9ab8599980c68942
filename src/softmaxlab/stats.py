"""Statistics over runs: mean and spread over seeds, grouping, paired tests between
variants, and the noise floor of ECE.

Pure functions of plain numbers (no torch, no files), shared by the sweep's tables, the
report and the studies' documents, so that a mean ± std, an interval or a p-value means the
same everywhere. The tests themselves are scipy's (``scipy.stats.ttest_rel``,
``scipy.stats.binomtest``); what is here is which numbers go into them.

>>> mean_std([0.5, 0.7, 0.9])
(0.7, 0.2, 3)
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


def mean_std(values: Sequence[float | None]) -> tuple[float, float, int]:
    """(mean, sample standard deviation (n - 1 in the denominator; 0 for one value), count)
    of the finite values; ``(nan, nan, 0)`` when there are none.

    >>> mean_std([1.0, None, float("nan"), 3.0])
    (2.0, 1.414213562373, 2)
    """
    vals = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return math.nan, math.nan, 0
    std = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return round(statistics.fmean(vals), 12), round(std, 12), len(vals)


def group_key(row: dict[str, Any], keys: Sequence[str]) -> str:
    """The values of ``keys`` in ``row`` as one hashable text; values may be lists
    (``model.softmax_blocks: [2]``), so it is their JSON."""
    return json.dumps([row[k] for k in keys], sort_keys=True, default=str)


def aggregate(
    rows: Sequence[dict[str, Any]],
    group_by: Sequence[str],
    metrics: dict[str, Callable[[dict[str, Any]], float | None]],
) -> list[dict[str, Any]]:
    """One row per distinct ``group_by`` combination, in first-seen order.

    Each row holds the group keys and, for every metric name, ``<name>_mean``,
    ``<name>_std`` and ``<name>_n`` (:func:`mean_std`) over the rows of that group;
    ``metrics`` maps a name to a function that extracts the value from a row (None: no value).

    >>> rows = [{"head": "a", "acc": 0.5}, {"head": "a", "acc": 0.7}, {"head": "b", "acc": 0.9}]
    >>> [(r["head"], r["acc_mean"], r["acc_n"]) for r in aggregate(rows, ["head"], {"acc": lambda r: r["acc"]})]
    [('a', 0.6, 2), ('b', 0.9, 1)]
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(group_key(row, group_by), []).append(row)
    out = []
    for members in groups.values():
        agg: dict[str, Any] = {k: members[0][k] for k in group_by}
        for name, get in metrics.items():
            m, s, n = mean_std([get(r) for r in members])
            agg[f"{name}_mean"], agg[f"{name}_std"], agg[f"{name}_n"] = m, s, n
        out.append(agg)
    return out


def ece_noise_floor(
    count: Sequence[int | None], confidence: Sequence[float | None], draws: int = 2000, seed: int = 0
) -> float | None:
    """The mean ECE that a perfectly calibrated model would still show on these test images.

    Each reliability bin b keeps its n_b images and mean confidence c_b, but each image is
    right with probability exactly c_b: the number right is drawn as Binomial(n_b, c_b),
    and ECE = sum_b (n_b / N) |right_b / n_b - c_b| is averaged over ``draws`` draws
    (NumPy, seeded). An ECE near this value is as calibrated as this many images can tell.
    None when no bin holds an image.

    >>> round(ece_noise_floor([0, 1000], [None, 0.9]), 3)  # sqrt(0.9 * 0.1 / 1000) * sqrt(2 / pi)
    0.008
    """
    eces = _calibrated_eces(count, confidence, draws, seed)
    return None if eces is None else float(eces.mean())


def ece_band(
    count: Sequence[int | None], confidence: Sequence[float | None], draws: int = 2000, seed: int = 0
) -> dict[str, float] | None:
    """The ECE a perfectly calibrated model with these confidences would show on these test
    images (see :func:`ece_noise_floor`): ``{"mean", "p95"}`` over the draws. An ECE below
    ``p95`` is not evidence of miscalibration at the 5 % level. None when no bin holds an image.

    >>> band = ece_band([0, 1000], [None, 0.9])
    >>> round(band["mean"], 3), round(band["p95"], 3)
    (0.008, 0.018)
    """
    eces = _calibrated_eces(count, confidence, draws, seed)
    if eces is None:
        return None
    return {"mean": float(eces.mean()), "p95": float(np.quantile(eces, 0.95))}


def _calibrated_eces(
    count: Sequence[int | None], confidence: Sequence[float | None], draws: int, seed: int
) -> np.ndarray | None:
    """``draws`` ECEs of a perfectly calibrated model: right_b ~ Binomial(n_b, c_b) per bin."""
    n = np.array([c or 0 for c in count], dtype=np.int64)
    conf = np.array([c if c is not None else 0.0 for c in confidence], dtype=np.float64)
    keep = n > 0
    if not keep.any():
        return None
    n, conf = n[keep], conf[keep]
    right = np.random.default_rng(seed).binomial(n, conf, size=(draws, len(n)))
    return (np.abs(right / n - conf) * n / n.sum()).sum(axis=1)


def paired_comparison(variant: Sequence[float], reference: Sequence[float]) -> dict[str, Any]:
    """Variant minus reference over paired runs (the same seed): ``n_pairs``, ``mean_diff``,
    the 95 % t interval ``ci95_low`` / ``ci95_high`` of the mean difference and ``p_value``
    of the two-sided paired t-test (``scipy.stats.ttest_rel``).

    With d_s = variant_s - reference_s over n pairs, the interval is
    mean(d) ± t_{0.975, n-1} sd(d) / sqrt(n). Interval and p-value are None with fewer than
    two pairs and when every difference is the same non-zero number (sd 0: the t-test is
    undefined); when every difference is 0 (identical runs) the interval is [0, 0] and p is 1.

    >>> c = paired_comparison([0.80, 0.82, 0.81], [0.78, 0.79, 0.80])
    >>> c["n_pairs"], round(c["mean_diff"], 4), round(c["p_value"], 3)
    (3, 0.02, 0.074)
    """
    from scipy import stats as sps  # scipy takes a while to import; only comparisons need it

    pairs = [(float(a), float(b)) for a, b in zip(variant, reference, strict=True) if _finite(a) and _finite(b)]
    d = np.array([a - b for a, b in pairs], dtype=np.float64)
    out: dict[str, Any] = {"n_pairs": len(d), "mean_diff": float(d.mean()) if len(d) else None}
    out.update(ci95_low=None, ci95_high=None, p_value=None)
    if len(d) < 2:
        return out
    sd = float(d.std(ddof=1))
    if sd == 0 or sd < 1e-12 * max(1.0, abs(out["mean_diff"])):
        # No spread: identical runs (every difference 0) are no evidence of a difference; equal
        # non-zero differences (accuracy moves in steps of 1/N, so two seeds can agree exactly)
        # leave the t-test undefined, which is no evidence either way: no test.
        if out["mean_diff"] == 0:
            return {**out, "ci95_low": 0.0, "ci95_high": 0.0, "p_value": 1.0}
        return out
    half = float(sps.t.ppf(0.975, len(d) - 1)) * sd / math.sqrt(len(d))
    p = float(sps.ttest_rel([a for a, _ in pairs], [b for _, b in pairs]).pvalue)
    return {**out, "ci95_low": out["mean_diff"] - half, "ci95_high": out["mean_diff"] + half, "p_value": p}


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down correction of a family of p-values (None stays None and is not
    counted): the i-th smallest of m becomes max over j <= i of min(1, (m - j + 1) p_(j)),
    which controls the family-wise error rate (``statsmodels``' ``multipletests(method="holm")``).

    >>> [None if p is None else round(p, 6) for p in holm([0.01, 0.04, None, 0.03])]
    [0.03, 0.06, None, 0.06]
    """
    present = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    m, running = len(present), 0.0
    out: list[float | None] = [None] * len(p_values)
    for rank, (p, i) in enumerate(present):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def mcnemar_exact(variant_correct: Sequence[bool], reference_correct: Sequence[bool]) -> dict[str, Any]:
    """Exact McNemar test on per-image correctness of two classifiers on the same images:
    b = images only the variant gets right, c = only the reference; under the null of equal
    accuracy b ~ Binomial(b + c, 1/2), two-sided p from ``scipy.stats.binomtest`` (1 when
    b + c = 0: the two never disagree on correctness).

    >>> r = mcnemar_exact([1, 1, 1, 0, 1, 1], [0, 0, 0, 0, 1, 1])
    >>> r["only_variant"], r["only_reference"], r["p_value"]
    (3, 0, 0.25)
    """
    from scipy import stats as sps

    a = np.asarray(variant_correct, dtype=bool)
    r = np.asarray(reference_correct, dtype=bool)
    if a.shape != r.shape:
        raise ValueError(f"McNemar needs correctness of the same images, got {a.shape} and {r.shape}")
    b, c = int((a & ~r).sum()), int((~a & r).sum())
    p = 1.0 if b + c == 0 else float(sps.binomtest(b, b + c, 0.5).pvalue)
    return {"only_variant": b, "only_reference": c, "p_value": p}


def _finite(v: Any) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)


@dataclass
class RunOutcome:
    """What a paired comparison needs of one finished run: its scalar metrics by name, and,
    when its predictions were kept, the predicted class and true class of each test image
    (``(N,)`` integer arrays, in the order of the test split)."""

    metrics: dict[str, float | None]
    predicted: np.ndarray | None = None
    targets: np.ndarray | None = None


#: The columns of one comparison row, in order (``comparisons.csv``).
COMPARISON_COLUMNS = (
    "variant",
    "reference",
    "metric",
    "n_pairs",
    "mean_diff",
    "ci95_low",
    "ci95_high",
    "p_value",
    "p_holm",
    "mcnemar_p",
    "identical_predictions",
)


def compare_variants(
    variants: dict[str, dict[Any, RunOutcome]], reference: str, metrics: Sequence[str]
) -> tuple[list[dict[str, Any]], list[str]]:
    """Every variant against ``reference``, paired by seed: one row per (variant, metric)
    with the columns of :data:`COMPARISON_COLUMNS`, and notes (one sentence each) on what
    could not be computed.

    ``variants`` maps a variant's label to its runs by seed. A pair is a seed that both the
    variant and the reference ran to the end. ``mean_diff``, the interval and ``p_value`` come
    from :func:`paired_comparison` of the metric over the pairs; ``p_holm`` is Holm's
    correction (:func:`holm`) over the rows of that metric. Rows of ``accuracy`` also carry
    ``mcnemar_p`` (:func:`mcnemar_exact` on per-image correctness pooled over the pairs) and
    ``identical_predictions`` (every pair predicts every test image the same), both None
    when a pair lacks kept predictions or its test images differ.

    The two tests answer different questions. ``p_value`` / ``p_holm`` are about the variant:
    would another seed's run differ too? Its spread over seeds is in the test. ``mcnemar_p``
    is about these trained runs: do they differ on these test images more than chance
    disagreement would? Seed-to-seed variation is not in it (pooling counts one image under
    three seeds as three pairs), so with a recipe whose runs vary a lot from seed to seed it
    rejects far more often than 5 % when the variants do not differ; a claim about a variant
    rests on ``p_holm``. A variant with fewer pairs than runs (a seed that diverged or did not
    finish) gets a note: the comparison is over its survivors.
    """
    if reference not in variants:
        raise ValueError(f"no variant {reference!r} to compare to; the variants are {', '.join(variants)}")
    notes: list[str] = []
    rows = []
    base = variants[reference]
    for label, runs_by_seed in variants.items():
        if label == reference:
            continue
        seeds = [s for s in runs_by_seed if s in base]
        unpaired = len(set(runs_by_seed) | set(base)) - len(seeds)
        if unpaired and runs_by_seed:
            notes.append(f"{label}: {len(seeds)} seeds paired, {unpaired} without a finished run of both")
        for metric in metrics:
            row = {"variant": label, "reference": reference, "metric": metric}
            row.update(
                paired_comparison(
                    [runs_by_seed[s].metrics.get(metric) for s in seeds], [base[s].metrics.get(metric) for s in seeds]
                )
            )
            row["mcnemar_p"], row["identical_predictions"] = None, None
            if row["n_pairs"] >= 2 and row["p_value"] is None:
                notes.append(f"{label}: {metric} differs by the same amount on every seed, so it has no t-test")
            if metric == "accuracy":
                row.update(_per_image(label, [(runs_by_seed[s], base[s]) for s in seeds], notes))
            rows.append(row)
    for metric in metrics:
        family = [r for r in rows if r["metric"] == metric]
        for r, p in zip(family, holm([r["p_value"] for r in family]), strict=True):
            r["p_holm"] = p
    if rows and max(r["n_pairs"] for r in rows) < 2:
        notes.insert(0, "no intervals or p-values: paired comparisons need at least 2 seeds that both variants ran")
    return [{c: r.get(c) for c in COMPARISON_COLUMNS} for r in rows], notes


def _per_image(label: str, pairs: list[tuple[RunOutcome, RunOutcome]], notes: list[str]) -> dict[str, Any]:
    """``mcnemar_p`` and ``identical_predictions`` of a variant's accuracy row (see
    :func:`compare_variants`)."""
    none = {"mcnemar_p": None, "identical_predictions": None}
    if not pairs:
        return none
    if any(o.predicted is None or o.targets is None for pair in pairs for o in pair):
        notes.append(f"{label}: no McNemar test, a run of the pair has no predictions.npz (an older run)")
        return none
    if any(a.targets.shape != b.targets.shape or (a.targets != b.targets).any() for a, b in pairs):
        notes.append(f"{label}: no McNemar test, the paired runs were tested on different images")
        return none
    variant = np.concatenate([a.predicted == a.targets for a, _ in pairs])
    ref = np.concatenate([b.predicted == b.targets for _, b in pairs])
    identical = all(bool((a.predicted == b.predicted).all()) for a, b in pairs)
    return {"mcnemar_p": mcnemar_exact(variant, ref)["p_value"], "identical_predictions": identical}
