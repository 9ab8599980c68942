"""Dataset specs on the command line: ``shapes``, ``cifar10``, ``cifar100``, ``cifar100:coarse``,
``imagefolder:PATH``, ``npz:PATH``.

A spec names the dataset and, for the file-based ones, where it is; it becomes ``data.*``
config overrides, so everything else (image size, splits, seed) still comes from the config.

>>> parse_data_spec("cifar100:coarse")
{'name': 'cifar100', 'labels': 'coarse'}
>>> parse_data_spec("npz:../shared/data/intel64-train.npz")
{'name': 'npz', 'root': '../shared/data/intel64-train.npz'}
"""

from __future__ import annotations

from typing import Any

from softmaxlab.errors import UserError

SPEC_FORMS = ("shapes", "cifar10", "cifar100", "cifar100:coarse", "imagefolder:PATH", "npz:PATH")
_PATH_DATASETS = ("imagefolder", "npz")


def parse_data_spec(spec: str) -> dict[str, Any]:
    """``"imagefolder:PATH"`` -> ``{"name": "imagefolder", "root": "PATH"}``: ``data.*`` overrides.

    The name is everything before the first ``:``, so a path may contain ``:``. ``cifar100``
    (and ``cifar100:fine``) set ``labels: fine`` explicitly, so the spec wins over a config
    that asked for coarse labels. CIFAR's folder comes from ``data.root`` in the config.
    Anything else is a UserError that lists the valid forms.
    """
    name, sep, arg = spec.strip().partition(":")
    valid = f"valid: {', '.join(SPEC_FORMS)}"
    if name in _PATH_DATASETS:
        if not arg.strip():
            raise UserError(f"dataset spec {spec!r} needs a path: {name}:PATH")
        return {"name": name, "root": arg.strip()}
    if name == "cifar100" and arg in ("", "fine", "coarse"):
        return {"name": name, "labels": arg or "fine"}
    if name in ("shapes", "cifar10") and not sep:
        return {"name": name}
    if name in ("shapes", "cifar10", "cifar100"):
        raise UserError(f"dataset spec {spec!r}: {name} takes no {arg!r} option; {valid}")
    raise UserError(f"unknown dataset spec {spec!r}; {valid}")
