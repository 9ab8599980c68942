"""Statistics over runs: mean and spread over seeds, grouping, and the noise floor of ECE.

Pure functions of plain numbers (no torch, no files), shared by the sweep's tables, the
report and the studies' documents, so that a mean ± std means the same everywhere.

>>> mean_std([0.5, 0.7, 0.9])
(0.7, 0.2, 3)
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Sequence
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
