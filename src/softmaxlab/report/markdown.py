"""Markdown tables: the plain-text form of every softmaxlab comparison, and the Markdown report."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from softmaxlab.report.document import Code, Image, Note, Report, Table


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


def _escape_cell(text: str) -> str:
    """A table cell's text with ``|`` escaped, on one line."""
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(report: Report, links: Mapping[str, str]) -> str:
    """The report as Markdown: the same tables and notes as the HTML, best values in bold.

    ``links`` maps each figure's name to its path relative to the report (a PNG beside it).
    """
    lines = [f"# {report.title}", "", *(f"{line}  " for line in report.intro), ""]
    for section in report.sections:
        lines += [f"## {section.title}", ""]
        for block in section.blocks:
            if isinstance(block, Table):
                rows = [[_escape_cell(f"**{c.text}**" if c.best else c.text) for c in row] for row in block.rows]
                lines += [markdown_table([_escape_cell(h) for h in block.headers], rows), ""]
            elif isinstance(block, Image):
                lines += [f"![{block.alt}]({links[block.name]})", ""]
                if block.caption:
                    lines += [f"*{block.caption}*", ""]
            elif isinstance(block, Note):
                lines += [block.text, ""]
            elif isinstance(block, Code):
                fence = f"```{block.language}\n{block.text.rstrip()}\n```"
                if block.collapsed:
                    lines += [f"<details><summary>{block.title}</summary>", "", fence, "", "</details>", ""]
                else:
                    lines += [f"{block.title}:", "", fence, ""]
    return "\n".join(lines).rstrip() + "\n"
