"""Reading files that softmaxlab did not write, with bounds: every read of a user's file goes
through here or through a loader that checks sizes before it allocates.

* :func:`regular_file`: a path that must be a readable regular file (not a directory, a FIFO
  that would block forever, a device or a dangling link);
* :func:`read_text`: its text, refused beyond a size limit;
* :func:`load_yaml`: YAML with PyYAML's safe loader, plus two checks it lacks: a mapping
  with the same key twice is refused (PyYAML keeps the last silently), and so is a document
  whose aliases expand to more than :data:`MAX_YAML_VALUES` values (a "billion laughs"
  bomb of a few hundred bytes would otherwise fill memory when the config is printed or
  validated).
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import yaml

from softmaxlab.errors import UserError

#: The largest text file (a config, a sweep spec) read, in bytes.
MAX_TEXT_BYTES = 16 * 2**20
#: The most values (scalars, lists, mappings) a YAML document may expand to through its aliases.
MAX_YAML_VALUES = 100_000


class YamlError(UserError):
    """A YAML text that is not valid, repeats a key, or expands beyond the limit; ``reason``
    says which in a few words."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def regular_file(path: str | Path, what: str, hint: str) -> Path:
    """``path`` when it is a regular file (after following links); else a :class:`UserError`
    saying what it is instead, ending with ``hint`` (what to pass)."""
    p = Path(path)
    try:
        mode = p.stat().st_mode
    except FileNotFoundError:
        problem = "is a dangling symbolic link" if p.is_symlink() else "does not exist"
        raise UserError(f"{what} {str(p)!r} {problem}; {hint}") from None
    except OSError as exc:  # a loop of links, a name too long, no permission
        raise UserError(f"{what} {str(p)!r} cannot be opened ({exc.strerror or type(exc).__name__}); {hint}") from None
    if stat.S_ISDIR(mode):
        raise UserError(f"{what} {str(p)!r} is a directory, not a file; {hint}")
    if not stat.S_ISREG(mode):
        raise UserError(f"{what} {str(p)!r} is not a regular file (a pipe, socket or device); {hint}")
    return p


def read_text(path: str | Path, what: str, hint: str, limit: int = MAX_TEXT_BYTES) -> str:
    """The UTF-8 text of the regular file ``path`` (see :func:`regular_file`), at most ``limit`` bytes."""
    p = regular_file(path, what, hint)
    size = p.stat().st_size
    if size > limit:
        raise UserError(f"{what} {str(p)!r} is {size:,} bytes, more than the {limit:,} allowed; {hint}")
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{what} {str(p)!r} is not UTF-8 text; {hint}") from None
    except OSError as exc:
        raise UserError(f"{what} {str(p)!r} cannot be read ({exc.strerror or type(exc).__name__}); {hint}") from None


class _Loader(yaml.SafeLoader):
    """The safe loader, refusing a key written twice in one mapping (a key merged in with
    ``<<`` may still be overridden, as YAML intends)."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, yaml.Node] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:  # an unhashable key: the safe loader refuses it itself
                    continue
                if first is not key_node:
                    raise _Duplicate(key, first.start_mark.line + 1, key_node.start_mark.line + 1)
        return super().construct_mapping(node, deep=deep)


class _Duplicate(Exception):
    def __init__(self, key: Any, first: int, again: int) -> None:
        self.key, self.first, self.again = key, first, again


def _expanded_size(node: yaml.Node, limit: int) -> int:
    """How many values ``node`` stands for once every alias is expanded (stops past ``limit``).

    An alias is the same node object reached twice, so sizes are memoised per node: the
    count takes time linear in the document, not in its expansion.
    """
    sizes: dict[int, int] = {}

    def size(n: yaml.Node, depth: int) -> int:
        if id(n) in sizes:
            return sizes[id(n)]
        if depth > 1000:
            return limit + 1  # a recursive alias (``&a [*a]``) never ends
        sizes[id(n)] = limit + 1  # while counting: a node reached from inside itself is infinite
        if isinstance(n, yaml.SequenceNode):
            total = 1 + sum(size(child, depth + 1) for child in n.value)
        elif isinstance(n, yaml.MappingNode):
            total = 1 + sum(size(k, depth + 1) + size(v, depth + 1) for k, v in n.value)
        else:
            total = 1
        sizes[id(n)] = min(total, limit + 1)
        return sizes[id(n)]

    return size(node, 0)


def load_yaml(text: str, source: str) -> Any:
    """The value of the YAML document ``text`` (safe tags only); ``source`` names it in errors.

    Raises:
        YamlError: invalid YAML (with its line), a repeated mapping key, or more than
            :data:`MAX_YAML_VALUES` values once aliases are expanded.
    """
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, MAX_YAML_VALUES) > MAX_YAML_VALUES:
            raise YamlError(
                f"{source} expands to more than {MAX_YAML_VALUES:,} values through its YAML aliases; "
                "write the values out instead of nesting aliases",
                "too many aliases",
            )
        return loader.construct_document(node)
    except _Duplicate as dup:
        raise YamlError(
            f"{source} sets {str(dup.key)!r} twice in one mapping (lines {dup.first} and {dup.again}); keep one",
            f"{str(dup.key)!r} set twice",
        ) from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise YamlError(f"{source} is not valid YAML{line}; fix the syntax", f"not valid YAML{line}") from None
    except RecursionError:
        raise YamlError(f"{source} nests too deeply to be read; flatten it", "nested too deeply") from None
    finally:
        loader.dispose()
