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
import json
from collections.abc import Sequence
from typing import Any

from softmaxlab.errors import UserError


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


def canonical(value: Any) -> str:
    """``value`` as JSON with equal numbers written alike: true, 1 and 1.0 are one value in
    Python and, for a number key, in the config (a sweep over them trains one run thrice).

    >>> canonical([1.0, True]) == canonical([1, 1])
    True
    """

    def norm(v: Any) -> Any:
        if isinstance(v, bool):
            return int(v)
        if isinstance(v, float) and v.is_integer():
            return int(v)
        if isinstance(v, list):
            return [norm(x) for x in v]
        if isinstance(v, dict):
            return {str(k): norm(x) for k, x in v.items()}
        return v

    try:
        return json.dumps(norm(value), sort_keys=True, default=str)
    except RecursionError:
        raise UserError("a value in sweep.grid or sweep.variants nests too deeply to compare; flatten it") from None


def select_reference(
    flats: Sequence[dict[str, Any]], reference: dict[str, Any] | None, keys: Sequence[str], wanted: dict[str, Any]
) -> list[int]:
    """The indices of ``flats`` (one flattened config per variant) that ``wanted`` (a sweep's
    ``compare_to``) names; the sweep's comparisons and the report both choose by this rule.

    Exactly: the variants whose value of every key of ``keys`` (the keys that tell the variants
    apart) is the one ``reference`` has, the flattened config of the base with ``wanted``
    applied, so ``{model.activation: softmax_hw}`` names the variant that changes nothing
    else. When none is (or there is no ``reference``: base and ``wanted`` do not validate
    together), the variants that hold every value of ``wanted``.

    >>> flats = [{"a": 1, "b": None}, {"a": 1, "b": 2}, {"a": 3, "b": 2}]
    >>> select_reference(flats, {"a": 1, "b": None}, ["a", "b"], {"a": 1})  # the one that changes only a
    [0]
    >>> select_reference(flats, {"a": 0, "b": 2}, ["a", "b"], {"b": 2})  # none exactly: all with b = 2
    [1, 2]
    """

    def value(flat: dict[str, Any], key: str) -> str | None:
        return canonical(flat[key]) if key in flat else None

    if reference is not None:
        exact = [i for i, f in enumerate(flats) if all(value(f, k) == value(reference, k) for k in keys)]
        if exact:
            return exact
    want = {k: canonical(v) for k, v in wanted.items()}
    return [i for i, f in enumerate(flats) if all(value(f, k) == v for k, v in want.items())]
