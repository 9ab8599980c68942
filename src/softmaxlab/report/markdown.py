"""Markdown tables: the plain-text form of every softmaxlab comparison, and the Markdown report."""

from __future__ import annotations

import math
import re
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


#: Characters that would turn text into Markdown markup (emphasis, links, code), escaped with ``\\``.
_MARKUP = str.maketrans({c: "\\" + c for c in "\\`*_[]"})
_HTML = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})


def escape(text: str, code: bool = True) -> str:
    r"""``text`` shown literally in Markdown: run names, class names and config values may hold
    characters that a renderer would read as markup or raw HTML (``report.html`` escapes them
    too). ``code=False`` keeps backticks, for the report's own notes that quote a command.

    >>> print(escape("<b>a_b</b> [x](y)"))
    &lt;b&gt;a\_b&lt;/b&gt; \[x\](y)
    """
    text = text.translate(_HTML)
    return text.translate(_MARKUP) if code else text.translate({k: v for k, v in _MARKUP.items() if k != ord("`")})


def _escape_cell(text: str) -> str:
    """A table cell's text, escaped (:func:`escape`, and ``|``), on one line."""
    return escape(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(report: Report, links: Mapping[str, str]) -> str:
    """The report as Markdown: the same tables and notes as the HTML, best values in bold.

    ``links`` maps each figure's name to its path relative to the report (a PNG beside it).
    """
    lines = [f"# {escape(report.title)}", "", *(f"{escape(line)}  " for line in report.intro), ""]
    for section in report.sections:
        lines += [f"## {escape(section.title)}", ""]
        for block in section.blocks:
            if isinstance(block, Table):
                rows = [
                    [f"**{_escape_cell(c.text)}**" if c.best else _escape_cell(c.text) for c in row]
                    for row in block.rows
                ]
                if block.title:
                    lines += [f"**{escape(block.title)}**", ""]
                lines += [markdown_table([_escape_cell(h) for h in block.headers], rows), ""]
            elif isinstance(block, Image):
                lines += [f"![{escape(block.alt)}]({links[block.name]})", ""]
                if block.caption:
                    lines += [f"*{escape(block.caption)}*", ""]
            elif isinstance(block, Note):
                lines += [escape(block.text, code=False), ""]
            elif isinstance(block, Code):
                fence = "`" * max(3, _longest_backtick_run(block.text) + 1)  # a fence the text cannot close
                body = f"{fence}{block.language}\n{block.text.rstrip()}\n{fence}"
                if block.collapsed:
                    lines += [f"<details><summary>{escape(block.title)}</summary>", "", body, "", "</details>", ""]
                else:
                    lines += [f"{escape(block.title)}:", "", body, ""]
    return "\n".join(lines).rstrip() + "\n"


def _longest_backtick_run(text: str) -> int:
    return max((len(run) for run in re.findall(r"`+", text)), default=0)
