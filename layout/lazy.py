"""Lazy package attributes (PEP 562) for ``reference`` and ``fast``: model components load on first use.

``__getattr__, __dir__ = lazy_attributes(globals(), {"ResNet": "reference.resnet", ...})`` in a package's
``__init__``: the first ``package.ResNet`` imports reference.resnet, binds the name in the package and returns it.
Eager names (the geometry core) stay plain imports; the lazy ones keep torch.nn machinery out of ``import
package``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_attributes(namespace: dict[str, Any], table: Mapping[str, str]) -> tuple[Callable[[str], Any],
                                                                                   Callable[[], list[str]]]:
    """(module ``__getattr__``, module ``__dir__``) for the package whose globals are ``namespace``;
    ``table`` maps each lazy name to the module that defines it."""
    package = namespace["__name__"]

    def __getattr__(name: str) -> Any:
        if name in table:
            value = getattr(importlib.import_module(table[name]), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(table))

    return __getattr__, __dir__
