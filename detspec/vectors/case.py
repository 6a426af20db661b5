"""How a golden-vector case is written in Python: the ``Case`` record and the input-array helpers that
``spec_cases`` and ``seeded_cases`` build cases with."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from detspec.vectors.format import INPUT_FLOAT


@dataclass
class Case:
    component: str
    name: str
    description: str
    args: list[tuple[str, Any]]  # positional, in order: (name, ndarray | list[ndarray] | JSON value)
    kwargs: dict[str, Any] = field(default_factory=dict)
    expected: Any = None  # the return value's structure with numpy leaves (spec cases); None = ask the oracle
    set_outputs: tuple[str, ...] = ()  # output names compared as sets
    oracle_kwargs: dict[str, Any] = field(default_factory=dict)  # extra keyword arguments for the oracle only

    @property
    def source(self) -> str:
        return "oracle" if self.expected is None else "spec"


def f32(values: Any) -> np.ndarray:
    return np.asarray(values, dtype=INPUT_FLOAT)


def f64(values: Any) -> np.ndarray:
    return np.asarray(values, dtype=np.float64)


def i64(values: Any) -> np.ndarray:
    return np.asarray(values, dtype=np.int64)


def random_boxes(rng: np.random.Generator, n: int, extent: float = 100.0, min_size: float = 1.0,
           max_size: float = 40.0) -> np.ndarray:
    """[n, 4] float32 XYXY boxes with top-left in [0, extent) and sides in [min_size, max_size)."""
    xy = rng.uniform(0.0, extent, size=(n, 2))
    wh = rng.uniform(min_size, max_size, size=(n, 2))
    return f32(np.concatenate([xy, xy + wh], axis=1).reshape(n, 4))


def jitter(rng: np.random.Generator, boxes: np.ndarray, scale: float) -> np.ndarray:
    """Boxes moved by up to `scale` x their size (stay ordered)."""
    b = boxes.astype(np.float64)
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    size = np.stack([w, h, w, h], axis=1)
    moved = b + rng.uniform(-scale, scale, size=b.shape) * size
    x1, x2 = np.minimum(moved[:, 0], moved[:, 2] - 0.5), np.maximum(moved[:, 2], moved[:, 0] + 0.5)
    y1, y2 = np.minimum(moved[:, 1], moved[:, 3] - 0.5), np.maximum(moved[:, 3], moved[:, 1] + 0.5)
    return f32(np.stack([x1, y1, x2, y2], axis=1))
