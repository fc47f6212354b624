"""One registry helper for every kind of plug-in: methods, attacks, detectors, scorers.

A registry maps a name (what a user writes in params.yaml) to an entry. An entry may be given
as the object itself or as a lazy reference "package.module:Attribute", imported on first use:
that keeps `import trust.config` free of torch (the config needs only the names), while
`get` returns the real class. An unknown name is one `ValueError` that names
the params key that chose it and every registered name.
"""

from __future__ import annotations

import importlib
from typing import Any, Generic, Iterator, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, key: str):
        self.kind = kind  # e.g. "method"
        self.key = key  # the params key that chooses an entry, e.g. "finetune.method.name"
        self._entries: dict[str, T | str] = {}

    def add(self, name: str, entry: T | str) -> T | str:
        """Register `entry` (an object, or "module:attr" imported on first `get`) under `name`."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        if isinstance(entry, str) and ":" not in entry:
            raise ValueError(f"{self.kind} {name!r}: a lazy entry is 'package.module:Attribute', got {entry!r}")
        self._entries[name] = entry
        return entry

    def register(self, name: str):
        """Decorator form of `add`."""

        def deco(obj: T) -> T:
            self.add(name, obj)
            return obj

        return deco

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise ValueError(f"{self.key}: unknown {self.kind} {name!r}; choose one of: {', '.join(self._entries)}")
        entry = self._entries[name]
        if isinstance(entry, str):
            module, attr = entry.split(":", 1)
            entry = getattr(importlib.import_module(module), attr)
            self._entries[name] = entry
        return entry  # type: ignore[return-value]

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def items(self) -> Iterator[tuple[str, Any]]:
        for name in self._entries:
            yield name, self.get(name)
