"""The report as one self-contained HTML file.

Figures are embedded as base64 PNG ``data:`` URIs and the style sheet and the table-sorting
script are inline, so the file opens from disk, offline, and makes no network request.
Every table sorts by a column when its header is clicked (again: the other way); cells
carry the value they sort by in ``data-sort``, and cells without a value sort last.
"""

from __future__ import annotations

import base64
from html import escape

from softmaxlab.report.document import Block, Cell, Code, Image, Note, Report, Table

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1400px;
       padding: 0 1rem; color: #1d2430; line-height: 1.45; overflow-wrap: break-word; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.25rem; margin-top: 2.2rem; border-bottom: 1px solid #d8dde6; }
nav a { margin-right: 0.9rem; white-space: nowrap; }
table { border-collapse: collapse; margin: 0.8rem 0; font-size: 0.84rem; }
caption { text-align: left; font-weight: 600; padding-bottom: 0.3rem; }
th, td { border: 1px solid #d8dde6; padding: 0.25rem 0.45rem; white-space: nowrap; vertical-align: top; }
div.scroll { overflow-x: auto; }
th { background: #eef1f6; cursor: pointer; user-select: none; white-space: normal; min-width: 3.5rem; }
th:hover { background: #dfe5ef; }
th[aria-sort="ascending"]::after { content: " \\25B2"; font-size: 0.7em; }
th[aria-sort="descending"]::after { content: " \\25BC"; font-size: 0.7em; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.wrap { white-space: normal; overflow-wrap: anywhere; min-width: 11rem; max-width: 18rem; }
td.best { font-weight: 700; background: #e3f4e1; }
td.significant { background: #fff3c4; }
tr.diverged td { color: #a11; background: #fbeaea; }
tr.chance td { color: #6b7280; font-style: italic; }
tr.unfinished td, tr.partial td:first-child { color: #8a6100; }
figure { margin: 1rem 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eef1f6; }
figcaption, p.note { color: #4a5568; font-size: 0.9rem; }
pre { background: #f6f8fa; padding: 0.6rem; overflow-x: auto; font-size: 0.82rem; }
details summary, p.code-title { cursor: pointer; font-size: 0.9rem; margin: 0.4rem 0 0.2rem; }
"""
# Sort a table's rows by the clicked column: numbers numerically, text alphabetically,
# empty data-sort values last in both directions; a second click reverses the order.
SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  var headers = table.tHead.rows[0].cells;
  Array.prototype.forEach.call(headers, function (th, col) {
    th.addEventListener("click", function () {
      var ascending = th.getAttribute("aria-sort") !== "ascending";
      Array.prototype.forEach.call(headers, function (h) { h.setAttribute("aria-sort", "none"); });
      th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = a.cells[col].getAttribute("data-sort"), y = b.cells[col].getAttribute("data-sort");
        if (x === null || x === "") { return (y === null || y === "") ? 0 : 1; }
        if (y === null || y === "") { return -1; }
        var nx = Number(x), ny = Number(y);
        var order = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
        return ascending ? order : -order;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});
"""


def _cell(cell: Cell) -> str:
    classes = []
    if isinstance(cell.sort, (int, float)):
        classes.append("num")
    flags = (("best", cell.best), ("significant", cell.significant), ("wrap", cell.wrap))
    classes += [name for name, on in flags if on]
    attrs = f' data-sort="{escape(str(cell.sort))}"' if cell.sort is not None else ""
    if classes:
        attrs += f' class="{" ".join(classes)}"'
    if cell.best:
        attrs += ' title="best in this column"'
    elif cell.significant:
        attrs += ' title="significant after correction"'
    text = "<br>".join(escape(line) for line in cell.text.split("\n"))
    return f"<td{attrs}>{text}</td>"


def _table(table: Table) -> str:
    head = "".join(
        f'<th scope="col" aria-sort="none" title="{escape(table.hints.get(h) or "click to sort")}">{escape(h)}</th>'
        for h in table.headers
    )
    rows = []
    for row in table.rows:
        status = next((c.status for c in row if c.status), None)
        cls = f' class="{escape(status)}"' if status else ""
        rows.append(f"<tr{cls}>" + "".join(_cell(c) for c in row) + "</tr>")
    body = "\n".join(rows)
    caption = f"<caption>{escape(table.title)}</caption>\n" if table.title else ""
    return (
        f'<div class="scroll"><table class="sortable" id="table-{escape(table.key)}">\n{caption}'
        f"<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table></div>"
    )


def _block(block: Block) -> str:
    if isinstance(block, Table):
        return _table(block)
    if isinstance(block, Image):
        data = base64.b64encode(block.png).decode("ascii")
        caption = f"<figcaption>{escape(block.caption)}</figcaption>" if block.caption else ""
        return f'<figure><img src="data:image/png;base64,{data}" alt="{escape(block.alt)}">{caption}</figure>'
    if isinstance(block, Note):
        return f'<p class="note">{escape(block.text)}</p>'
    if isinstance(block, Code):
        pre = f"<pre><code>{escape(block.text.rstrip())}</code></pre>"
        if block.collapsed:
            return f"<details><summary>{escape(block.title)}</summary>{pre}</details>"
        return f'<p class="code-title">{escape(block.title)}</p>{pre}'
    raise TypeError(f"unknown report block {type(block).__name__}")


def render_html(report: Report) -> str:
    """The whole report as one HTML document (UTF-8 text)."""
    nav = " ".join(f'<a href="#{escape(s.key)}">{escape(s.title)}</a>' for s in report.sections)
    intro = "\n".join(f"<p>{escape(line)}</p>" for line in report.intro)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        '<head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(report.title)}</title>",
        f"<style>{CSS}</style></head>",
        "<body>",
        f"<h1>{escape(report.title)}</h1>",
        intro,
        f"<nav>{nav}</nav>",
    ]
    for section in report.sections:
        parts.append(f'<section id="{escape(section.key)}">')
        parts.append(f"<h2>{escape(section.title)}</h2>")
        parts.extend(_block(b) for b in section.blocks)
        parts.append("</section>")
    parts += [f"<script>{SCRIPT}</script>", "</body>", "</html>", ""]
    return "\n".join(parts)
