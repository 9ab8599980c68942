"""The report as data: sections of tables, figures, notes and code, rendered twice.

:mod:`softmaxlab.report.build` fills a :class:`Report` once;
:mod:`softmaxlab.report.html` and :mod:`softmaxlab.report.markdown` render the same object,
so the HTML and Markdown reports cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Cell:
    """One table cell: the text shown, the value it sorts by, and marks.

    ``sort`` is a number (sorted numerically) or text; None sorts last in either direction.
    ``best`` marks the best value of its column (what "best" requires is the table's to say);
    ``significant`` marks a difference that is significant; ``status`` (e.g. ``"diverged"``)
    styles the whole row; ``wrap`` lets long text (a variant's label) break across lines so
    that wide tables fit the page. A ``\n`` in ``text`` is a line break in HTML, a space in
    Markdown.
    """

    text: str
    sort: float | str | None = None
    best: bool = False
    status: str | None = None
    significant: bool = False
    wrap: bool = False


@dataclass
class Table:
    """A sortable table; ``key`` names it in the HTML (``id="table-<key>"``)."""

    key: str
    headers: list[str]
    rows: list[list[Cell]]
    #: Tooltips of the headers (what the column measures), by header text.
    hints: dict[str, str] = field(default_factory=dict)
    #: A title shown above the table ("" for none).
    title: str = ""


@dataclass
class Image:
    """A PNG figure: ``name`` is its file stem under ``figures/`` in the Markdown report.

    ``source`` is an existing file the image was read from (a run's feature maps): the
    Markdown report links to it instead of writing a copy.
    """

    name: str
    png: bytes
    alt: str
    caption: str = ""
    source: Path | None = None


@dataclass
class Note:
    """One line of text: what a section shows, or why part of it is missing."""

    text: str


@dataclass
class Code:
    """A block of literal text (a command, a config) under a one-line title; a ``collapsed``
    block is folded away until the reader opens it."""

    title: str
    text: str
    language: str = ""
    collapsed: bool = False


Block = Table | Image | Note | Code


@dataclass
class Section:
    """A titled part of the report; ``key`` is its anchor (``id="<key>"``)."""

    key: str
    title: str
    blocks: list[Block] = field(default_factory=list)


@dataclass
class Report:
    """The whole report: a title, introductory lines and the sections in order."""

    title: str
    intro: list[str]
    sections: list[Section]

    def section(self, key: str) -> Section:
        """The section with anchor ``key`` (KeyError when absent)."""
        for s in self.sections:
            if s.key == key:
                return s
        raise KeyError(key)
