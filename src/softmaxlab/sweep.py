"""Studies over several runs: aggregation of their results over seeds.

``aggregate`` groups result rows by the keys that define a variant (everything but the
seed) and reports mean, sample standard deviation and count of each metric, so a table
never shows one lucky seed as if it were the answer.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from typing import Any


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """(mean, sample standard deviation (n - 1 in the denominator; 0 for one value), count).

    >>> mean_std([0.5, 0.7, 0.9])
    (0.7, 0.2, 3)
    """
    vals = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return math.nan, math.nan, 0
    std = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return round(statistics.fmean(vals), 12), round(std, 12), len(vals)


def aggregate(
    rows: Sequence[dict[str, Any]],
    group_by: Sequence[str],
    metrics: dict[str, Callable[[dict[str, Any]], float | None]],
) -> list[dict[str, Any]]:
    """One row per distinct ``group_by`` combination, in first-seen order.

    Each row holds the group keys and, for every metric name, ``<name>_mean``,
    ``<name>_std`` and ``<name>_n`` over the rows of that group; ``metrics`` maps a name to
    a function that extracts the value from a row.
    """
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in group_by), []).append(row)
    out = []
    for key, members in groups.items():
        agg: dict[str, Any] = dict(zip(group_by, key, strict=True))
        for name, get in metrics.items():
            m, s, n = mean_std([v for v in (get(r) for r in members) if v is not None])
            agg[f"{name}_mean"], agg[f"{name}_std"], agg[f"{name}_n"] = m, s, n
        out.append(agg)
    return out
