"""A griffe extension for the API pages: softmaxlab's docstrings are written for ``help()``
and doctest (reST-style roles, ``>>>`` examples, ``::`` literal blocks); this turns them into
the Markdown that mkdocstrings renders, without changing the sources.

* ``:func:`~softmaxlab.stats.ece_band``` -> ``ece_band``, ``:class:`Options``` -> ``Options``;
* a run of ``>>>`` lines and their output -> a ``pycon`` code block;
* a paragraph ending in ``::`` -> ending in ``:`` (the indented block after it is code).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:func|class|meth|mod|data|attr|exc|obj):`(~?)([^`]+)`")


def markdown(doc: str) -> str:
    doc = ROLE.sub(lambda m: f"`{m.group(2).rsplit('.', 1)[-1] if m.group(1) else m.group(2)}`", doc)
    lines, out, i = doc.splitlines(), [], 0
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith(">>>"):
            indent = line[: len(line) - len(line.lstrip())]
            block = []
            while i < len(lines) and lines[i].strip():
                block.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i].strip())
                i += 1
            out += [f"{indent}```pycon", *(indent + b for b in block), f"{indent}```"]
            continue
        if line.rstrip().endswith("::") and not line.rstrip().endswith(":::"):
            line = line.rstrip()[:-1]
        out.append(line)
        i += 1
    return "\n".join(out)


class PlainDocstrings(griffe.Extension):
    """Rewrite every docstring once, as its object is loaded."""

    def on_instance(self, *, obj: Any, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown(obj.docstring.value)
