"""Repository files in the docs site: whole-file includes and links to files outside docs/.

mkdocs knows only the files under ``docs/``, so a link from a page to ``../configs/x.yaml``
or ``../src/softmaxlab/linting.py`` fails a strict build. This hook resolves every relative
link of a page against the page's own location (or, for included text, against the
included file's) and points it at something the site has:

* a file that a page includes whole (below) -> that page: ``BENCHMARKS.md`` ->
  ``performance.md``, ``README.md`` -> ``index.md``, anchors kept;
* a file under ``docs/`` -> itself, as mkdocs resolves it;
* another file of the repository -> a copy of it in the site, ``repo/<its path>``
  (``repo/configs/studies/intermediate-softmax.yaml``); only the files pages link to are copied;
* a directory -> a generated page listing its files, each a link
  (``repo/configs/studies/full/index.md``, or ``studies/runs/index.md`` for a directory
  under ``docs/``);
* a path that exists nowhere, or outside the repository -> unchanged, so mkdocs reports it
  and ``mkdocs build --strict`` fails.

Links inside code (fenced blocks and code spans) are left alone.

A page includes a repository file whole with a line of its own::

    <!-- include: BENCHMARKS.md shift=1 -->

(path from the repository root; ``shift=N`` moves the included headings N levels down).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files, InclusionLevel

INCLUDE = re.compile(r"^<!-- include: (?P<path>\S+)(?: shift=(?P<shift>\d))? -->[ \t]*$", re.M)
FENCE = re.compile(r"^[ \t]*(?P<fence>```+|~~~+)[^\n]*\n.*?^[ \t]*(?P=fence)[ \t]*$", re.M | re.S)
CODE_SPAN = re.compile(r"(?P<ticks>`+).+?(?P=ticks)", re.S)
LINK = re.compile(r"(?P<head>!?\[(?:[^\]\\]|\\.)*\]\()(?P<target>[^)\s]+)(?P<tail>(?:\s+\"[^\"]*\")?\))")
HEADING = re.compile(r"^(#{1,6}) ", re.M)
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
#: Where the copies of repository files and the directory listings go in the site.
REPO_PREFIX = "repo"
#: Never copied or listed, even when linked.
SKIPPED = {".git", ".venv", "__pycache__", "site"}


@dataclass
class Target:
    """What a link resolved to: ``src_uri`` in the site (relative to docs/), and what to add
    for it: a repository file to copy (``copy``) or a directory to list (``listing``)."""

    src_uri: str
    copy: Path | None = None
    listing: Path | None = None


@dataclass
class Site:
    root: Path
    docs: Path
    #: Included repository file -> the src_uri of the page that includes it.
    included: dict[Path, str] = field(default_factory=dict)
    #: Generated listing pages (src_uri), whose links are already final.
    listings: set[str] = field(default_factory=set)


SITE: Site | None = None


def masked(text: str) -> tuple[str, list[str]]:
    """``text`` with its fenced blocks and code spans replaced by placeholders, and the
    replaced pieces (restore with :func:`unmasked`)."""
    pieces: list[str] = []

    def hide(match: re.Match) -> str:
        pieces.append(match.group(0))
        return f"\x00{len(pieces) - 1}\x00"

    return CODE_SPAN.sub(hide, FENCE.sub(hide, text)), pieces


def unmasked(text: str, pieces: list[str]) -> str:
    # Pieces may hold placeholders of earlier pieces (a code span inside a fence was not one).
    for _ in range(2):
        text = re.sub(r"\x00(\d+)\x00", lambda m: pieces[int(m.group(1))], text)
    return text


def resolve(site: Site, target: str, base: Path) -> Target | None:
    """What the relative link ``target`` (without its anchor) from a file in ``base`` points
    at in the site; None when it is not relative, or exists nowhere the site can show."""
    if not target or target.startswith(("#", "/")) or SCHEME.match(target):
        return None
    path = Path(os.path.normpath(base / target))
    if not path.exists() or not path.is_relative_to(site.root) or SKIPPED & set(path.relative_to(site.root).parts):
        return None
    if path in site.included:
        return Target(site.included[path])
    if path.is_relative_to(site.docs):
        rel = path.relative_to(site.docs).as_posix()
        if path.is_dir():
            return Target(f"{rel}/index.md" if rel != "." else "index.md", listing=path)
        return Target(rel)
    rel = path.relative_to(site.root).as_posix()
    if path.is_dir():
        return Target(f"{REPO_PREFIX}/{rel}/index.md", listing=path)
    return Target(f"{REPO_PREFIX}/{rel}", copy=path)


def rewrite_links(site: Site, text: str, base: Path, page_dir: str, found: list[Target] | None = None) -> str:
    """``text`` (from a file in ``base``) with each relative link pointing at its target in the
    site, relative to the page's directory ``page_dir`` (a src_uri directory); the targets are
    appended to ``found``."""
    body, pieces = masked(text)

    def link(match: re.Match) -> str:
        path, hash_, anchor = match.group("target").partition("#")
        resolved = resolve(site, path, base)
        if resolved is None:
            return match.group(0)
        if found is not None:
            found.append(resolved)
        href = os.path.relpath(resolved.src_uri, page_dir or ".")
        return f"{match.group('head')}{href}{hash_}{anchor}{match.group('tail')}"

    return unmasked(LINK.sub(link, body), pieces)


def shifted(text: str, levels: int) -> str:
    """``text`` with its headings (outside code) ``levels`` deeper."""
    if not levels:
        return text
    body, pieces = masked(text)
    return unmasked(HEADING.sub(lambda m: "#" * min(6, len(m.group(1)) + levels) + " ", body), pieces)


def expanded(site: Site, markdown: str, src_uri: str, found: list[Target] | None = None) -> str:
    """A page's markdown with its links rewritten and its includes in place."""
    page_dir = os.path.dirname(src_uri)
    base = site.docs / page_dir
    out, last = [], 0
    for match in INCLUDE.finditer(markdown):
        out.append(rewrite_links(site, markdown[last : match.start()], base, page_dir, found))
        path = site.root / match.group("path")
        if not path.is_file():
            raise PluginError(f"{src_uri}: cannot include {match.group('path')!r}: no such file in the repository")
        text = shifted(path.read_text(encoding="utf-8"), int(match.group("shift") or 0))
        out.append(rewrite_links(site, text, path.parent, page_dir, found))
        last = match.end()
    out.append(rewrite_links(site, markdown[last:], base, page_dir, found))
    return "".join(out)


def listed_files(directory: Path) -> list[Path]:
    """The files under ``directory`` (recursively, sorted), without hidden and skipped ones."""
    return sorted(
        p
        for p in directory.rglob("*")
        if p.is_file() and not any(part.startswith(".") or part in SKIPPED for part in p.relative_to(directory).parts)
    )


def listing_page(site: Site, directory: Path, src_uri: str) -> str:
    """A page listing the files of ``directory``, each a link (to its copy outside docs/)."""
    shown = directory.relative_to(site.root).as_posix()
    lines = [f"# {shown}/", "", f"The files of the repository's `{shown}/`:", ""]
    here = os.path.dirname(src_uri)
    for path in listed_files(directory):
        target = resolve(site, os.path.relpath(path, directory), directory)
        if target is not None:
            lines.append(f"- [{path.relative_to(directory).as_posix()}]({os.path.relpath(target.src_uri, here)})")
    return "\n".join(lines) + "\n"


def on_config(config, **kwargs):
    global SITE
    root = Path(config.config_file_path).resolve().parent
    SITE = Site(root=root, docs=Path(config.docs_dir).resolve())
    return config


def on_files(files: Files, config, **kwargs) -> Files:
    """Record the includes, then add a copy of every repository file the pages link to and a
    listing page for every directory they link to."""
    assert SITE is not None
    SITE.included.clear()
    SITE.listings.clear()
    pages = [f for f in files.documentation_pages() if f.abs_src_path]
    for f in pages:
        for match in INCLUDE.finditer(f.content_string):
            SITE.included[(SITE.root / match.group("path")).resolve()] = f.src_uri
    found: list[Target] = []
    for f in pages:
        expanded(SITE, f.content_string, f.src_uri, found)
    todo, seen = list(found), set()
    while todo:  # a listing links to files (copies) of its own
        target = todo.pop()
        if target.src_uri in seen or files.get_file_from_path(target.src_uri) is not None:
            continue
        seen.add(target.src_uri)
        if target.copy is not None:
            files.append(File.generated(config, target.src_uri, abs_src_path=str(target.copy)))
        elif target.listing is not None:
            content = listing_page(SITE, target.listing, target.src_uri)
            files.append(File.generated(config, target.src_uri, content=content, inclusion=InclusionLevel.NOT_IN_NAV))
            SITE.listings.add(target.src_uri)
            for path in listed_files(target.listing):
                child = resolve(SITE, os.path.relpath(path, target.listing), target.listing)
                if child is not None:
                    todo.append(child)
    return files


def on_page_markdown(markdown: str, page, config, files, **kwargs) -> str:
    assert SITE is not None
    if page.file.src_uri in SITE.listings:
        return markdown
    return expanded(SITE, markdown, page.file.src_uri)
