"""Anchors, vectorized: cell anchors from a sizes x ratios broadcast, all levels' grids in one pass each.

Same contract as reference/anchors.py (seed RPN part 2; d2-spec §2.3). Grids are generated directly in the
cell anchors' dtype and device (no float64 detour, no host round trip), and ``AnchorCache`` memoises them per
feature-map size, so a detector pays for anchors once per input size.

Shape legend: A cell anchors per location; L levels; Hi, Wi level i's size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from spec import validate as v
from spec.config import BASE_RCNN_FPN

_ANCHORS = BASE_RCNN_FPN.anchors


def cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float], round_to_int: bool = False,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
    """[S * R, 4] cell anchors, size-major then ratio; area = size^2, ratio = h / w."""
    s = torch.as_tensor(sizes, dtype=torch.float64).flatten()
    r = torch.as_tensor(aspect_ratios, dtype=torch.float64).flatten()
    if s.numel() == 0 or r.numel() == 0:
        raise ValueError("sizes and aspect_ratios must be non-empty")
    if not bool((s > 0).all()) or not bool((r > 0).all()):
        raise ValueError(f"anchor sizes and aspect ratios must be positive, got {s.tolist()} and {r.tolist()}")
    w = torch.sqrt((s[:, None] ** 2) / r[None, :])  # [S, R]
    h = r[None, :] * w
    half = torch.stack([w, h], dim=-1).reshape(-1, 2) / 2.0  # [S*R, 2]
    anchors = torch.cat([-half, half], dim=1).to(dtype=dtype, device=device)
    return anchors.round() if round_to_int else anchors


def grid_anchors(feature_sizes: Sequence[tuple[int, int]], strides: Sequence[int], cell_anchors: Sequence[Tensor],
                 offset: float = _ANCHORS.offset) -> list[Tensor]:
    """One [Hi * Wi * A, 4] tensor per level, in (y, x, anchor) order."""
    v.check_grid_args(feature_sizes, strides, cell_anchors)
    out = []
    for (height, width), stride, cells in zip(feature_sizes, strides, cell_anchors):
        kw = dict(dtype=cells.dtype, device=cells.device)
        sx = (torch.arange(width, **kw) + offset) * stride  # [Wi]
        sy = (torch.arange(height, **kw) + offset) * stride  # [Hi]
        shifts = torch.empty(height, width, 1, 4, **kw)  # [Hi, Wi, 1, (x, y, x, y)]
        shifts[..., 0::2] = sx[None, :, None, None]
        shifts[..., 1::2] = sy[:, None, None, None]
        out.append((shifts + cells).reshape(-1, 4))  # [Hi*Wi*A, 4]
    return out


class AnchorCache:
    """Grid anchors memoised by (feature sizes, device): anchors depend on nothing else.

    The returned tensors are shared between calls; treat them as read-only.
    """

    def __init__(self, sizes: Sequence[Sequence[float]] = _ANCHORS.sizes,
                 aspect_ratios: Sequence[Sequence[float]] = _ANCHORS.aspect_ratios,
                 strides: Sequence[int] = _ANCHORS.strides, offset: float = _ANCHORS.offset,
                 round_to_int: bool = _ANCHORS.round_cell_anchors, max_entries: int = 16):
        self.cells = [cell_anchors(s, r, round_to_int) for s, r in zip(sizes, aspect_ratios)]
        self.strides = tuple(strides)
        self.offset = offset
        self.max_entries = max_entries
        self._cache: dict[tuple, list[Tensor]] = {}

    def __call__(self, feature_sizes: Sequence[tuple[int, int]], device: torch.device | str = "cpu") -> list[Tensor]:
        key = (tuple(tuple(int(x) for x in fs) for fs in feature_sizes), str(torch.device(device)))
        hit = self._cache.get(key)
        if hit is None:
            if len(self._cache) >= self.max_entries:
                self._cache.pop(next(iter(self._cache)))  # evict the oldest size
            cells = [c.to(device) for c in self.cells]
            hit = self._cache[key] = grid_anchors(feature_sizes, self.strides, cells, self.offset)
        return hit
