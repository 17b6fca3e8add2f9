"""A table of named plug-ins of one sort (training methods, model kinds): each registered once,
looked up with a one-line error that names the argument and the registered names."""

from __future__ import annotations

from typing import TypeVar

from .errors import InvalidInputError

T = TypeVar("T")


class Registry(dict[str, T]):
    """name → plug-in, in registration order."""

    def __init__(self, argument: str) -> None:
        super().__init__()
        self.argument = argument   # the setting that names one: "method", "parametrization"

    def add(self, name: str, item: T) -> T:
        if name in self:
            raise ValueError(f"{self.argument}: {name!r} is registered already")
        self[name] = item
        return item

    def remove(self, name: str) -> None:
        """Forget `name` (for tests that register a throw-away plug-in)."""
        self.pop(name, None)

    def lookup(self, name: object) -> T:
        if not isinstance(name, str) or name not in self:
            raise InvalidInputError(f"{self.argument}: {name!r} is not one of {', '.join(self)}")
        return self[name]


__all__ = ["Registry"]
