"""Name -> object registries for datasets, models and methods.

Each registrable thing registers itself with a decorator in its own file; the package's
``__init__`` imports every module of the package, so adding a dataset, model or method
touches only its file (plus a config), never a central list. A registry defined below the
package that fills it (the method configs in ``config.py``) names that package and imports
it at its first lookup, so ``load_config`` works without ``import kdistill`` importing torch.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A named mapping with helpful errors for unknown names."""

    def __init__(self, kind: str, filled_by: str | None = None) -> None:
        self.kind = kind
        self.filled_by = filled_by  # the package whose import registers the entries (imported at the first lookup)
        self._entries: dict[str, T] = {}

    def _fill(self) -> None:
        """Import the registering package (a no-op once imported, or while it is being imported)."""
        if self.filled_by is not None:
            importlib.import_module(self.filled_by)

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._entries and self._entries[name] is not obj:
                raise KeyError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        self._fill()
        if name not in self._entries:
            close = difflib.get_close_matches(name, self._entries, n=3)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise KeyError(
                f"unknown {self.kind} {name!r}.{hint} Known {self.kind}s: {', '.join(sorted(self._entries))}"
            )
        return self._entries[name]

    def names(self) -> list[str]:
        self._fill()
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        self._fill()
        return name in self._entries


def import_submodules(package_name: str, package_path: list[str]) -> None:
    """Import every module (and subpackage) of a package so their decorators run."""
    for module in pkgutil.walk_packages(package_path, prefix=package_name + "."):
        if not module.name.rsplit(".", 1)[-1].startswith("_"):
            importlib.import_module(module.name)
