"""Dotted keys (``train.lr``) over nested dicts: the one flattener and setter.

>>> flatten({"head": {"name": "gumbel", "tau": 1.0}, "name": None})
{'head.name': 'gumbel', 'head.tau': 1.0, 'name': None}
>>> tree = {}
>>> set_dotted(tree, "train.lr", 0.1)
>>> tree
{'train': {'lr': 0.1}}
"""

from __future__ import annotations

import copy
from typing import Any


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {dotted key: leaf value}, in the dict's order."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    """Set ``tree[a][b]... = value`` for the dotted ``key`` (in place), creating sections;
    the value is copied, so later changes to it do not reach ``tree``."""
    *sections, leaf = key.split(".")
    node = tree
    for section in sections:
        node = node.setdefault(section, {})
    node[leaf] = copy.deepcopy(value)


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``"key old -> new"`` for every dotted key whose value differs between two nested dicts.

    >>> differences({"train": {"lr": 0.1, "epochs": 2}}, {"train": {"lr": 0.2, "epochs": 2}})
    ['train.lr 0.1 -> 0.2']
    """
    a, b = flatten(old), flatten(new)
    return [f"{k} {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
