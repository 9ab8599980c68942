"""Markdown tables: the plain-text form of every softmaxlab comparison."""

from __future__ import annotations

import math
from collections.abc import Sequence


def format_mean_std(mean: float, std: float, digits: int = 3, scale: float = 1.0) -> str:
    """``"0.812 ± 0.004"``; ``"n/a"`` when the mean is not finite.

    >>> format_mean_std(0.81234, 0.0041)
    '0.812 ± 0.004'
    >>> format_mean_std(0.81234, 0.0041, digits=1, scale=100)
    '81.2 ± 0.4'
    """
    if mean is None or not math.isfinite(mean):
        return "n/a"
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured Markdown table; the first column is left-aligned, the rest right.

    >>> print(markdown_table(["head", "acc"], [["softmax", "0.9"]]))
    | head | acc |
    | :--- | ---: |
    | softmax | 0.9 |
    """
    align = [":---"] + ["---:"] * (len(headers) - 1)
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
