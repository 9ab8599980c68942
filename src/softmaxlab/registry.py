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
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterator
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


class Registry(Generic[T]):
    """Maps names to factories (classes or functions) of one kind of component.

    Register with the :meth:`register` decorator, build with :meth:`create`, list with
    :meth:`names`. An unknown name raises :class:`UnknownNameError` listing the valid names
    and the closest match.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._summaries: dict[str, str] = {}
        self._options: dict[str, type[Options]] = {}

    def register(
        self, name: str | None = None, *, summary: str | None = None, options: type[Options] = Options
    ) -> Callable[[T], T]:
        """Decorator that registers a factory under ``name`` (default: its ``__name__``).

        ``summary`` is the one-line description shown by ``softmaxlab list``; by default the
        first line of the factory's docstring. ``options`` is the component's own
        :class:`Options` model (none by default).
        """
        if not (isinstance(options, type) and issubclass(options, Options)):
            raise TypeError(f"options of a {self.kind} must be a subclass of softmaxlab.Options, got {options!r}")

        def decorator(factory: T) -> T:
            key = name or factory.__name__
            if key in self._entries:
                raise ValueError(f"{self.kind} {key!r} is already registered")
            self._entries[key] = factory
            doc = inspect.getdoc(factory) or ""
            self._summaries[key] = summary or (doc.splitlines()[0] if doc else "")
            self._options[key] = options
            return factory

        return decorator

    def options(self, name: str) -> type[Options]:
        """The :class:`Options` model that ``name`` registered with."""
        self.get(name)
        return self._options[name]

    def name_of(self, factory: Any) -> str | None:
        """The name ``factory`` is registered under (None when it is not registered)."""
        return next((k for k, v in self._entries.items() if v is factory), None)

    def unregister(self, name: str) -> None:
        """Remove ``name`` (a component registered for a while, e.g. by a test)."""
        self.get(name)
        for table in (self._entries, self._summaries, self._options):
            del table[name]

    def get(self, name: str) -> T:
        """The factory registered as ``name``."""
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        """One line: the unknown name, the closest valid name and all valid names."""
        close = difflib.get_close_matches(str(name), self._entries, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown {self.kind} {name!r}{hint}; valid: {', '.join(self.names())}"

    def create(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call the factory registered as ``name`` with the given arguments."""
        return self.get(name)(*args, **kwargs)

    def names(self) -> list[str]:
        """Registered names in registration order."""
        return list(self._entries)

    def summary(self, name: str) -> str:
        """The one-line description of ``name``."""
        self.get(name)
        return self._summaries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
