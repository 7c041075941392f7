"""Named registries that kernels and reward models join, read by recipes and the CLI.

An entry is an object or a lazy reference "module:attribute", imported on first use, so
registering a kernel or a reward model costs nothing until a recipe asks for it (and the
library never imports task code at import time).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Any

__all__ = ["Registry", "RegistryError", "resolve_reference"]


class RegistryError(LookupError):
    """An unknown name, or a reference that cannot be imported."""


def resolve_reference(ref: str) -> Any:
    """"package.module:Name.attr" → the object (ImportError / AttributeError say which part)."""
    mod_name, sep, attr = ref.partition(":")
    if not sep or not mod_name or not attr:
        raise ValueError(f"expected 'module:Name', got {ref!r}")
    obj: Any = importlib.import_module(mod_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


class Registry:
    """name → object, where an object may be given as a lazy "module:attr" string."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Any] = {}

    def register(self, name: str, target: Any, *, replace: bool = False) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} needs a non-empty name, got {name!r}")
        if name in self._entries and not replace:
            raise ValueError(f"{self.kind} {name!r} is already registered (pass replace=True)")
        self._entries[name] = target

    def get(self, name: str) -> Any:
        try:
            target = self._entries[name]
        except KeyError:
            raise RegistryError(f"unknown {self.kind} {name!r} (known: {', '.join(self)})") from None
        if isinstance(target, str):
            try:
                target = resolve_reference(target)
            except (ImportError, AttributeError) as e:
                raise RegistryError(f"{self.kind} {name!r} is not available in this installation ({e})") from None
            self._entries[name] = target
        return target

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def names(self) -> list[str]:
        return list(self._entries)
