"""One small registry type; every extension point (heads, activations, models, datasets)
uses it. A component registers with its own options (an :class:`Options` model), from
which the experiment config builds its section; the component never sees the config.

>>> class Shade(Options):
...     dark: bool = False  # a darker red
>>> COLOURS = Registry("colour")
>>> @COLOURS.register("red", summary="the colour of blood", options=Shade)
... def red(options):
...     return (128 if options.dark else 255, 0, 0)
>>> COLOURS.create("red", Shade(dark=True))
(128, 0, 0)
>>> COLOURS.names(), COLOURS.options("red").model_fields["dark"].default
(['red'], False)

A *family* resolves every name of a pattern to one factory, which takes the name first
(``timm:<name>`` for any timm model); named entries come first:

>>> @COLOURS.register_family("grey:<level>", lambda name: name.startswith("grey:"))
... def grey(name, options):
...     level = int(name.partition(":")[2])
...     return (level, level, level)
>>> COLOURS.create("grey:7", Options()), "grey:7" in COLOURS, "blue" in COLOURS
((7, 7, 7), True, False)
"""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict

from softmaxlab.errors import UserError

T = TypeVar("T", bound=Callable[..., Any])


class Options(BaseModel):
    """The options a component declares where it registers: a pydantic model whose fields
    become the keys of its config section (``head.tau`` of the ``gumbel`` head).

    Unknown keys are errors and assignments are validated. Give every field a default and a
    comment (``tau: float = Field(1.0, gt=0)  # what it does``); a component without options
    uses this class itself.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    #: How errors name the components that own these options when the chosen one does not
    #: ("the softmax activations"); None: by their registry names.
    owners_label: ClassVar[str | None] = None


class UnknownNameError(UserError, KeyError):
    """A name that is not registered. Subclasses ``KeyError`` for dict-like use."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class NamedOptions(Protocol):
    """A component's options with the registry name they belong to: a config section such as
    ``head``, which is an instance of the chosen head's :class:`Options` with its ``name``."""

    name: str


@dataclass(frozen=True)
class Family:
    """Every name that ``matches`` accepts, resolved to one ``factory(name, *args, **kwargs)``.

    ``label`` shows the names' form in lists and errors (``timm:<name>``); ``suggest`` may
    turn a name that no entry or family has into a close one of the family's (``resnet18``
    -> ``torchvision:resnet18``), or None.
    """

    label: str
    matches: Callable[[str], bool]
    factory: Callable[..., Any]
    summary: str
    options: type[Options]
    suggest: Callable[[str], str | None] | None = None


def _summary_of(factory: Any) -> str:
    doc = inspect.getdoc(factory) or ""
    return doc.splitlines()[0] if doc else ""


def _check_options(kind: str, options: Any) -> None:
    if not (isinstance(options, type) and issubclass(options, Options)):
        raise TypeError(f"options of a {kind} must be a subclass of softmaxlab.Options, got {options!r}")


class Registry(Generic[T]):
    """Maps names to factories (classes or functions) of one kind of component.

    Register with the :meth:`register` decorator (or :meth:`register_family` for a pattern
    of names), build with :meth:`create`, list with :meth:`names` and :meth:`families`. An
    unknown name raises :class:`UnknownNameError` listing the valid names and the closest match.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._summaries: dict[str, str] = {}
        self._options: dict[str, type[Options]] = {}
        self._families: list[Family] = []

    def register(
        self,
        name: str | Callable[..., Any] | None = None,
        *,
        summary: str | None = None,
        options: type[Options] = Options,
    ) -> Any:
        """Decorator that registers a factory under ``name`` (default: its ``__name__``).

        ``summary`` is the one-line description shown by ``softmaxlab list``; by default the
        first line of the factory's docstring. ``options`` is the component's own
        :class:`Options` model (none by default). Used bare (``@REGISTRY.register``, or
        ``REGISTRY.register(factory)``), it registers the factory under its ``__name__`` at once.
        """
        _check_options(self.kind, options)
        if callable(name):  # the bare form: without it the factory would silently stay unregistered
            return self.register(None, summary=summary, options=options)(name)
        if name is not None and not isinstance(name, str):
            raise TypeError(f"a {self.kind} is registered under a string name, got {name!r}")

        def decorator(factory: T) -> T:
            key = name or factory.__name__
            if key in self._entries:
                raise ValueError(f"{self.kind} {key!r} is already registered")
            self._entries[key] = factory
            self._summaries[key] = summary or _summary_of(factory)
            self._options[key] = options
            return factory

        return decorator

    def register_family(
        self,
        label: str,
        matches: Callable[[str], bool],
        *,
        summary: str | None = None,
        options: type[Options] = Options,
        suggest: Callable[[str], str | None] | None = None,
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator that registers ``factory(name, *args, **kwargs)`` for every name that
        ``matches`` accepts and no entry has (see :class:`Family`); families are tried in
        registration order."""
        _check_options(self.kind, options)

        def decorator(factory: Callable[..., Any]) -> Callable[..., Any]:
            if any(f.label == label for f in self._families):
                raise ValueError(f"{self.kind} family {label!r} is already registered")
            self._families.append(Family(label, matches, factory, summary or _summary_of(factory), options, suggest))
            return factory

        return decorator

    def family_of(self, name: str) -> Family | None:
        """The family that resolves ``name`` (None for a registered name or one of no family)."""
        if not isinstance(name, str) or name in self._entries:
            return None
        return next((f for f in self._families if f.matches(name)), None)

    def families(self) -> list[Family]:
        """The registered families in registration order."""
        return list(self._families)

    def choices(self) -> list[tuple[str, type[Options]]]:
        """(name or family label, options model) of every entry and family: who owns which option."""
        return [(n, self._options[n]) for n in self._entries] + [(f.label, f.options) for f in self._families]

    def options(self, name: str) -> type[Options]:
        """The :class:`Options` model that ``name`` (or its family) registered with."""
        family = self.family_of(name)
        if family is not None:
            return family.options
        self.get(name)
        return self._options[name]

    def name_of(self, factory: Any) -> str | None:
        """The name ``factory`` is registered under (None when it is not registered)."""
        return next((k for k, v in self._entries.items() if v is factory), None)

    def unregister(self, name: str) -> None:
        """Remove ``name``, an entry or a family label (registered for a while, e.g. by a test)."""
        if any(f.label == name for f in self._families):
            self._families = [f for f in self._families if f.label != name]
            return
        if name not in self._entries:
            raise UnknownNameError(self.unknown_message(name))
        for table in (self._entries, self._summaries, self._options):
            del table[name]

    def get(self, name: str) -> T:
        """The factory registered as ``name``; for a name of a family, its factory with the name bound."""
        if isinstance(name, str) and name in self._entries:
            return self._entries[name]
        family = self.family_of(name)
        if family is not None:
            return functools.partial(family.factory, name)  # type: ignore[return-value]
        raise UnknownNameError(self.unknown_message(name))

    def unknown_message(self, name: str) -> str:
        """One line: the unknown name, the closest valid name (or a family's) and all valid names."""
        close = difflib.get_close_matches(str(name), self._entries, n=1)
        suggestions = [s(str(name)) for f in self._families if (s := f.suggest) is not None]
        close = [c for c in suggestions if c] or close
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        valid = [*self.names(), *(f.label for f in self._families)]
        return f"unknown {self.kind} {name!r}{hint}; valid: {', '.join(valid)}"

    def create(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call the factory registered as ``name`` with the given arguments."""
        return self.get(name)(*args, **kwargs)

    def names(self) -> list[str]:
        """Registered names in registration order."""
        return list(self._entries)

    def summary(self, name: str) -> str:
        """The one-line description of ``name`` (or of its family)."""
        family = self.family_of(name)
        if family is not None:
            return family.summary
        self.get(name)
        return self._summaries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries or (isinstance(name, str) and self.family_of(name) is not None)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
