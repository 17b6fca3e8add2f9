"""Outputs that read as a dataclass, a tuple and a dict, as diffusers' `BaseOutput` does.

`out.images`, `out["images"]`, `out[0]` and `out.to_tuple()[0]` are the same object; fields
left None are not keys (and are skipped by the tuple), so `[0]` is always the first field that
has a value. Our own code, not diffusers': the package does not depend on diffusers.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import fields
from typing import Any


class BaseOutput(OrderedDict):
    """Base of the `@dataclass` outputs of the pipeline and the scheduler."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                super().__setitem__(f.name, value)

    def __getitem__(self, key: str | int | slice) -> Any:
        if isinstance(key, str):
            return super().__getitem__(key)
        return self.to_tuple()[key]

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        super().__setattr__(key, value)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self.keys() and value is not None:
            super().__setitem__(name, value)
        super().__setattr__(name, value)

    def to_tuple(self) -> tuple[Any, ...]:
        """The values of the fields that are set, in field order."""
        return tuple(self[k] for k in self.keys())

    def __reduce__(self):
        return type(self), tuple(getattr(self, f.name) for f in fields(self))
