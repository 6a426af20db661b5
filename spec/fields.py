"""``cited``: a dataclass field with a default and the place its number comes from (``metadata["source"]``).

Its own module so that every spec config module (``spec.config``, ``spec.mvit``, ``spec.mvit_det``) can use it
without importing another: ``spec.config`` builds detector profiles from ``spec.mvit_det``'s backbones.
"""

from __future__ import annotations

from dataclasses import field
from typing import Any


def cited(value: Any, source: str) -> Any:
    """A dataclass field with a default and the place that number comes from."""
    return field(default=value, metadata={"source": source})
