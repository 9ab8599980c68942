"""One small registry type; every extension point (heads, activations, models, datasets)
uses it.

>>> COLOURS = Registry("colour")
>>> @COLOURS.register("red", summary="the colour of blood")
... def red():
...     return (255, 0, 0)
>>> COLOURS.create("red")
(255, 0, 0)
>>> COLOURS.names()
['red']
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from softmaxlab.errors import UserError

T = TypeVar("T", bound=Callable[..., Any])


class UnknownNameError(UserError, KeyError):
    """A name that is not registered. Subclasses ``KeyError`` for dict-like use."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


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

    def register(self, name: str | None = None, *, summary: str | None = None) -> Callable[[T], T]:
        """Decorator that registers a factory under ``name`` (default: its ``__name__``).

        ``summary`` is the one-line description shown by ``softmaxlab list``; by default the
        first line of the factory's docstring.
        """

        def decorator(factory: T) -> T:
            key = name or factory.__name__
            if key in self._entries:
                raise ValueError(f"{self.kind} {key!r} is already registered")
            self._entries[key] = factory
            doc = inspect.getdoc(factory) or ""
            self._summaries[key] = summary or (doc.splitlines()[0] if doc else "")
            return factory

        return decorator

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
