"""What ``softmaxlab lint TARGET [--loss LOSS] [--input-shape C,H,W] [--kwarg NAME=VALUE]...`` checks, built from
its arguments.

TARGET is one of

* a run directory written by ``softmaxlab run``: the trained model, built from its
  ``config.yaml`` and ``model.pt`` as ``softmaxlab evaluate`` builds it, checked with its
  head's own loss (``head.loss``) on the run's image size and class count;
* ``path/to/file.py:factory`` (the file imported as Python runs a script: its folder first on
  the import path) or ``package.module:factory``: ``factory(**kwargs)`` (or an ``nn.Module``
  instance of that name, used as it is);
* ``timm:<name>`` or ``torchvision:<name>``: the library's classifier, its own head included,
  with random weights, built with ``**kwargs``.

The ``kwargs`` are the ``--kwarg NAME=VALUE`` options (:func:`parse_kwargs`), what
``model.kwargs`` is to ``softmaxlab run``.

LOSS is ``path/to/file.py:NAME`` or ``package.module:NAME`` (a loss class, built without
arguments; a loss instance; or a function ``loss(output, target)``), or a dotted name such as
``torch.nn.CrossEntropyLoss``. As code writes them, ``nn.`` stands for ``torch.nn.`` and
``F.`` for ``torch.nn.functional.`` (:data:`LOSS_ALIASES`: ``nn.CrossEntropyLoss``,
``F.cross_entropy``); a bare ``CrossEntropyLoss`` is looked up in ``torch.nn``.

The example batch is :data:`~softmaxlab.linting.BATCH` random images of ``--input-shape``
(default 3,32,32; a run's own channels and image size).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn

from softmaxlab.errors import UserError, short_error
from softmaxlab.inference import load_trained_run
from softmaxlab.linting import BATCH, Finding, lint, random_batch
from softmaxlab.models.external import LIBRARIES, call_factory, create_library_model, import_module, load_factory
from softmaxlab.untrusted import load_yaml

#: The (C, H, W) of the example images when neither --input-shape nor a run says otherwise.
DEFAULT_INPUT_SHAPE = (3, 32, 32)

#: The first part of a dotted --loss as code abbreviates it (``from torch import nn``,
#: ``import torch.nn.functional as F``) -> the module it stands for.
LOSS_ALIASES = {"nn": "torch.nn", "F": "torch.nn.functional"}

_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
_LOSS_FORMS = "torch.nn.CrossEntropyLoss, nn.CrossEntropyLoss, F.cross_entropy or path/to/file.py:NAME"


@dataclass
class LintTarget:
    """A model with the loss and the example batch (and targets, for a run) to lint it with."""

    model: nn.Module
    loss: Callable[..., Any] | None
    example: Tensor
    target: Tensor | None = None
    output: int | str | None = None  # --output: the entry of a tuple or dict output the loss takes

    def lint(self) -> list[Finding]:
        """:func:`softmaxlab.linting.lint` of this target."""
        return lint(self.model, self.loss, self.example, target=self.target, output=self.output)


def parse_input_shape(text: str) -> tuple[int, int, int]:
    """``"3,224,224"`` -> ``(3, 224, 224)``: exactly three positive integers, channels, height, width.

    >>> parse_input_shape("3, 32,32")
    (3, 32, 32)
    """
    parts = [p.strip() for p in text.split(",")]
    # ASCII digits only: str.isdigit() accepts "²", which int() then refuses with a traceback.
    if len(parts) != 3 or not all(re.fullmatch(r"[0-9]+", p) and int(p) > 0 for p in parts):
        raise UserError(
            f"--input-shape {text!r} is not C,H,W: write 3 positive integers (channels, height, width) separated "
            "by commas, e.g. 3,224,224"
        )
    c, h, w = (int(p) for p in parts)
    return c, h, w


def parse_kwargs(items: Sequence[str]) -> dict[str, Any]:
    """``--kwarg NAME=VALUE`` options -> ``{NAME: VALUE}``, each value parsed as YAML as ``--set`` parses its
    values (an empty one is None).

    >>> parse_kwargs(["num_classes=100", "drop_rate=0.1", "act_layer=gelu", "widths=[8, 16]"])
    {'num_classes': 100, 'drop_rate': 0.1, 'act_layer': 'gelu', 'widths': [8, 16]}

    Raises:
        UserError: an item without ``=`` or whose NAME is not a Python identifier, a NAME
            given twice, a VALUE that is not valid YAML.
    """
    kwargs: dict[str, Any] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        name = name.strip()
        if not sep or not name.isidentifier():
            raise UserError(
                f"--kwarg {item!r} must look like NAME=VALUE with NAME a keyword argument, e.g. --kwarg num_classes=100"
            )
        if name in kwargs:
            raise UserError(f"--kwarg {name} is given twice ({name}={kwargs[name]!r} and {item}); keep one")
        # Unlike --set, whose value the config then validates, invalid YAML is refused here:
        # the constructor would get a string it did not ask for.
        kwargs[name] = load_yaml(raw, f"--kwarg {item!r}") if raw.strip() else None
    return kwargs


def load_loss(spec: str) -> Callable[..., Any]:
    """The loss named by ``spec`` (see the module docstring): a class is built without arguments.

    Raises:
        UserError: no such file, module or name; a class that cannot be built without
            arguments; a name that is not callable.
    """
    if ":" in spec:
        where = spec.rpartition(":")[0]
        if where.endswith(".py") and not Path(where).is_file():  # load_factory would call it a model file
            raise UserError(f"--loss {spec!r}: no file {where!r}; pass path/to/file.py:NAME with an existing file")
        try:
            obj: Any = load_factory(spec)
        except UserError as exc:
            raise UserError(f"--loss {spec!r}: {exc}") from None
    else:
        obj = _dotted_loss(spec)
    if isinstance(obj, type):
        try:
            return obj()
        except Exception as exc:
            raise UserError(
                f"--loss {spec!r} cannot be built without arguments ({short_error(exc)}); give it defaults, or name an "
                "instance or a function loss(output, target) in a file"
            ) from None
    if not callable(obj):
        raise UserError(f"--loss {spec!r} is a {type(obj).__name__}, not a loss; name a class or a function")
    return obj


def _dotted_loss(spec: str) -> Any:
    """What the dotted ``spec`` names, its first part expanded by :data:`LOSS_ALIASES`; a bare name is
    ``torch.nn``'s."""
    if not _DOTTED.fullmatch(spec):
        raise UserError(f"--loss {spec!r} is not a dotted name; write e.g. {_LOSS_FORMS}")
    first, _, rest = spec.partition(".")
    full = f"{LOSS_ALIASES[first]}.{rest}" if first in LOSS_ALIASES and rest else spec
    module_name, _, attr = full.rpartition(".")
    module = _import_loss_module(spec, module_name or "torch.nn")
    obj = getattr(module, attr, None)
    if obj is None:
        hint = _closest_loss(module, attr, spec.rpartition(".")[0])
        raise UserError(f"--loss {spec!r}: {module.__name__} has no {attr!r}{hint}")
    return obj


def _import_loss_module(spec: str, module_name: str) -> ModuleType:
    """:func:`~softmaxlab.models.external.import_module`, its failures as one line about ``--loss spec``."""
    try:
        return import_module(module_name, missing=f"name a loss such as {_LOSS_FORMS}")
    except UserError as exc:
        raise UserError(f"--loss {spec!r}: {exc}") from None


def _closest_loss(module: ModuleType, attr: str, prefix: str) -> str:
    """`` (did you mean 'nn.CrossEntropyLoss'?)`` for a name close to one of ``module``'s, written with the
    user's ``prefix`` (``nn``), or ``F.name`` for torch.nn.functional's function named as torch.nn's."""
    if module is nn and not prefix and hasattr(nn.functional, attr):  # --loss cross_entropy
        return f" (did you mean 'F.{attr}'?)"
    public = [n for n in dir(module) if not n.startswith("_")]
    close = difflib.get_close_matches(attr, public, n=1)
    if not close:
        return "; check the name"
    name = f"{prefix}.{close[0]}" if prefix else close[0]
    return f" (did you mean {name!r}?)"


def load_target(
    spec: str, loss: str | None = None, input_shape: str | None = None, *, kwargs: Mapping[str, Any] | None = None
) -> LintTarget:
    """The :class:`LintTarget` of ``softmaxlab lint SPEC [--loss LOSS] [--input-shape C,H,W] [--kwarg ...]``;
    ``kwargs`` (:func:`parse_kwargs`) go to a library model's constructor or a factory.

    Raises:
        UserError: a spec of no known form, a file or module that cannot be imported, a
            factory that raises or returns no module, an unknown library model, keyword
            arguments its constructor refuses or that reach no constructor (a run directory,
            an instance), a directory that holds no trained run, a bad input shape or loss.
    """
    shape = parse_input_shape(input_shape) if input_shape is not None else None
    loss_fn = load_loss(loss) if loss is not None else None
    kwargs = dict(kwargs or {})
    if spec.strip() and Path(spec).is_dir():  # Path("") is the working directory: not a target
        if kwargs:
            raise UserError(
                f"--kwarg does not apply to the run directory {spec!r}: its model is built from its config.yaml "
                "(model.kwargs); drop --kwarg"
            )
        return _run_target(Path(spec), loss_fn, shape)
    model = _build_model(spec, kwargs)
    return LintTarget(model, loss_fn, _example(model, shape or DEFAULT_INPUT_SHAPE))


def _build_model(spec: str, kwargs: dict[str, Any]) -> nn.Module:
    """The library model or the factory's module that ``spec`` names, built with ``kwargs``."""
    if spec.partition(":")[0] in LIBRARIES:
        return create_library_model(spec, kwargs=kwargs, option="--kwarg")
    if ":" in spec:
        factory = load_factory(spec)
        if not isinstance(factory, nn.Module):
            return call_factory(spec, factory, kwargs)
        if kwargs:
            raise UserError(
                f"--kwarg cannot reach {spec!r}: it is an nn.Module instance, used as it is; name a function or class "
                "that builds it, or drop --kwarg"
            )
        return factory
    hint = "; name the factory in the file: path/to/file.py:factory" if spec.endswith(".py") else ""
    raise UserError(
        f"cannot lint {spec!r}{hint}; pass a run directory, path/to/file.py:factory, package.module:factory, "
        "timm:<name> or torchvision:<name>"
    )


def _run_target(run_dir: Path, loss: Callable[..., Any] | None, shape: tuple[int, ...] | None) -> LintTarget:
    """A trained run's model with its head's loss (or ``loss``), on its image size, with class targets."""
    run = load_trained_run(run_dir)
    size = run.cfg.data.image_size
    shape = shape or (len(run.normalization["mean"]), size, size)
    target = torch.randint(0, len(run.classes), (BATCH,), generator=torch.Generator().manual_seed(0))
    target = target if loss is None else None  # a --loss of the user's own gets fake targets
    return LintTarget(run.model, loss or run.model.head.loss, _example(run.model, shape), target)


def _example(model: nn.Module, shape: tuple[int, ...]) -> Tensor:
    """:func:`~softmaxlab.linting.random_batch` of ``shape``; a UserError when memory cannot hold it."""
    try:
        return random_batch(model, shape)
    except RuntimeError as exc:  # torch's allocators say so with a RuntimeError (OutOfMemoryError on a GPU)
        raise UserError(
            f"cannot allocate {BATCH} example images of shape {shape} ({short_error(exc)}); pass a smaller "
            "--input-shape C,H,W"
        ) from None


def lint_target(
    spec: str,
    loss: str | None = None,
    input_shape: str | None = None,
    *,
    kwargs: Mapping[str, Any] | None = None,
    output: str | None = None,
) -> list[Finding]:
    """The findings of ``softmaxlab lint SPEC [--loss LOSS] [--input-shape C,H,W] [--kwarg ...]
    [--output I|KEY]`` (see :func:`load_target`; ``output``: :func:`parse_output`)."""
    target = load_target(spec, loss, input_shape, kwargs=kwargs)
    target.output = parse_output(output)
    return target.lint()


def parse_output(text: str | None) -> int | str | None:
    """``--output``: an entry of a tuple (an integer, negative from the end) or a key of a dict.

    >>> parse_output("-1"), parse_output("logits"), parse_output(None)
    (-1, 'logits', None)
    """
    if text is None:
        return None
    if not text.strip():
        raise UserError("--output is empty; give the index of a tuple's entry (0, 1, -1) or the key of a dict's")
    return int(text) if re.fullmatch(r"[-+]?[0-9]+", text.strip()) else text.strip()


__all__ = [
    "DEFAULT_INPUT_SHAPE",
    "LOSS_ALIASES",
    "LintTarget",
    "lint_target",
    "load_loss",
    "load_target",
    "parse_input_shape",
    "parse_kwargs",
]
