"""Name -> factory registries (backbones, algorithms, recipes, datasets).

Every addressable component is registered under a snake_case key equal to its
module name, so ``create_model("conv4")`` and ``fastadapt.models.conv4`` name
the same thing. Unknown keys fail with the valid choices and a close match.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


def suggest(name: str, choices: list[str]) -> str:
    """Return a ``"; did you mean 'x'?"`` hint for ``name`` among ``choices``, or ``""``."""
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""


class UnknownNameError(KeyError):
    """An unknown registry key; ``str()`` is the plain message (``KeyError`` would quote it)."""

    def __str__(self) -> str:
        return str(self.args[0])


class Registry(Generic[T]):
    """A mapping from names to objects with helpful lookup errors.

    Args:
        kind: what the registry holds, used in error messages (``"backbone"``).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering an object under ``name``; re-registration is an error."""

        def decorator(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        """The object registered as ``name``; raises ``UnknownNameError`` naming the valid choices."""
        try:
            return self._entries[name]
        except KeyError:
            names = sorted(self._entries)
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}{suggest(name, names)} "
                f"(registered: {', '.join(names) or 'none'})"
            ) from None

    def names(self) -> list[str]:
        """Sorted registered names."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
