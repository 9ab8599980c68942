"""What ``softmaxlab lint TARGET [--loss LOSS] [--input-shape C,H,W]`` checks, built from its arguments.

TARGET is one of

* a run directory written by ``softmaxlab run``: the trained model, built from its
  ``config.yaml`` and ``model.pt`` as ``softmaxlab evaluate`` builds it, checked with its
  head's own loss (``head.loss``) on the run's image size and class count;
* ``path/to/file.py:factory`` (the file imported as Python runs a script: its folder first on
  the import path) or ``package.module:factory``: ``factory()`` called without arguments
  (or an ``nn.Module`` instance of that name, used as it is);
* ``timm:<name>`` or ``torchvision:<name>``: the library's classifier, its own head included,
  with random weights.

LOSS is ``path/to/file.py:NAME`` or ``package.module:NAME`` (a loss class, built without
arguments; a loss instance; or a function ``loss(output, target)``), or a dotted name such as
``torch.nn.CrossEntropyLoss`` (a bare ``CrossEntropyLoss`` is looked up in ``torch.nn``).

The example batch is :data:`~softmaxlab.linting.BATCH` random images of ``--input-shape``
(default 3,32,32; a run's own channels and image size).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from softmaxlab.errors import UserError, short_error
from softmaxlab.inference import load_trained_run
from softmaxlab.linting import BATCH, Finding, lint, random_batch
from softmaxlab.models.external import LIBRARIES, call_factory, create_library_model, load_factory

#: The (C, H, W) of the example images when neither --input-shape nor a run says otherwise.
DEFAULT_INPUT_SHAPE = (3, 32, 32)


@dataclass
class LintTarget:
    """A model with the loss and the example batch (and targets, for a run) to lint it with."""

    model: nn.Module
    loss: Callable[..., Any] | None
    example: Tensor
    target: Tensor | None = None

    def lint(self) -> list[Finding]:
        """:func:`softmaxlab.linting.lint` of this target."""
        return lint(self.model, self.loss, self.example, target=self.target)


def parse_input_shape(text: str) -> tuple[int, ...]:
    """``"3,224,224"`` -> ``(3, 224, 224)``: positive integers, one per axis of an image.

    >>> parse_input_shape("3, 32,32")
    (3, 32, 32)
    """
    parts = [p.strip() for p in text.split(",")]
    if not all(p.isdigit() and int(p) > 0 for p in parts):
        raise UserError(
            f"--input-shape {text!r} is not C,H,W: write positive integers separated by commas, e.g. 3,224,224"
        )
    return tuple(int(p) for p in parts)


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
        module_name, _, attr = spec.rpartition(".")
        module_name = module_name or "torch.nn"
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            raise UserError(
                f"--loss {spec!r}: no module {module_name!r}; name a class such as torch.nn.CrossEntropyLoss, or "
                "path/to/file.py:NAME"
            ) from None
        obj = getattr(module, attr, None)
        if obj is None:
            raise UserError(f"--loss {spec!r}: {module_name} has no {attr!r}; check the name")
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


def load_target(spec: str, loss: str | None = None, input_shape: str | None = None) -> LintTarget:
    """The :class:`LintTarget` of ``softmaxlab lint SPEC [--loss LOSS] [--input-shape C,H,W]``.

    Raises:
        UserError: a spec of no known form, a file or module that cannot be imported, a
            factory that raises or returns no module, an unknown library model, a directory
            that holds no trained run, a bad input shape or loss.
    """
    shape = parse_input_shape(input_shape) if input_shape is not None else None
    loss_fn = load_loss(loss) if loss is not None else None
    if Path(spec).is_dir():
        return _run_target(Path(spec), loss_fn, shape)
    library = spec.partition(":")[0]
    if library in LIBRARIES:
        model = create_library_model(spec)
    elif ":" in spec:
        factory = load_factory(spec)
        model = factory if isinstance(factory, nn.Module) else call_factory(spec, factory)
    else:
        raise UserError(
            f"cannot lint {spec!r}: pass a run directory, path/to/file.py:factory, package.module:factory, "
            "timm:<name> or torchvision:<name>"
        )
    return LintTarget(model, loss_fn, random_batch(model, shape or DEFAULT_INPUT_SHAPE))


def _run_target(run_dir: Path, loss: Callable[..., Any] | None, shape: tuple[int, ...] | None) -> LintTarget:
    """A trained run's model with its head's loss (or ``loss``), on its image size, with class targets."""
    run = load_trained_run(run_dir)
    size = run.cfg.data.image_size
    shape = shape or (len(run.normalization["mean"]), size, size)
    target = torch.randint(0, len(run.classes), (BATCH,), generator=torch.Generator().manual_seed(0))
    target = target if loss is None else None  # a --loss of the user's own gets fake targets
    return LintTarget(run.model, loss or run.model.head.loss, random_batch(run.model, shape), target)


def lint_target(spec: str, loss: str | None = None, input_shape: str | None = None) -> list[Finding]:
    """The findings of ``softmaxlab lint SPEC [--loss LOSS] [--input-shape C,H,W]`` (see :func:`load_target`)."""
    return load_target(spec, loss, input_shape).lint()


__all__ = ["DEFAULT_INPUT_SHAPE", "LintTarget", "lint_target", "load_loss", "load_target", "parse_input_shape"]
