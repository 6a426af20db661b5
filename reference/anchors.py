"""Anchors: the cell anchors of each level, and their placement on every grid point of a pyramid.

Spec: seed RPN part 2; d2-spec §1.3, §2.3; detectron2 modeling/anchor_generator.py (DefaultAnchorGenerator).

Shape legend: A cell anchors per location (sizes x ratios = 3 here); L levels; Hi, Wi level i's size.
Aspect ratio a = h / w. Cell anchors are XYXY centred at 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from spec import validate as v
from spec.config import BASE_RCNN_FPN

_ANCHORS = BASE_RCNN_FPN.anchors


def cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float], round_to_int: bool = False,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
    """[len(sizes) * len(aspect_ratios), 4] anchors centred at 0, size-major then ratio.  # ANCHOR.CELL_ORDER

    For size s and ratio a: area = s^2, w = sqrt(s^2 / a), h = a * w.                   # ANCHOR.CELL_SHAPE
    detectron2 keeps the exact values; torchvision rounds the corners (round_to_int).   # ANCHOR.CELL_ROUNDING
    """
    if len(sizes) == 0 or len(aspect_ratios) == 0:
        raise ValueError("sizes and aspect_ratios must be non-empty")
    rows = []
    for size in sizes:
        if not size > 0:
            raise ValueError(f"anchor sizes must be positive, got {size}")
        area = float(size) ** 2
        for ratio in aspect_ratios:
            if not ratio > 0:
                raise ValueError(f"aspect ratios must be positive, got {ratio}")
            w = math.sqrt(area / ratio)
            h = ratio * w
            rows.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
    anchors = torch.tensor(rows, dtype=dtype, device=device)
    return anchors.round() if round_to_int else anchors


def grid_anchors(feature_sizes: Sequence[tuple[int, int]], strides: Sequence[int], cell_anchors: Sequence[Tensor],
                 offset: float = _ANCHORS.offset) -> list[Tensor]:
    """Every cell anchor at every grid point of every level: one [Hi * Wi * A, 4] tensor per level.

    Grid point (y, x) of a level with stride S sits at ((x + offset) S, (y + offset) S).   # ANCHOR.OFFSET
    Index within a level = (y * Wi + x) * A + a: y outer, then x, then anchor.            # ANCHOR.GRID_ORDER
    Each level has A * Hi * Wi anchors.                                                   # ANCHOR.PER_LEVEL_COUNT
    """
    v.check_grid_args(feature_sizes, strides, cell_anchors)
    levels = []
    for (height, width), stride, cells in zip(feature_sizes, strides, cell_anchors):
        shift_x = (torch.arange(width, dtype=torch.float64, device=cells.device) + offset) * stride  # [Wi]
        shift_y = (torch.arange(height, dtype=torch.float64, device=cells.device) + offset) * stride  # [Hi]
        ys, xs = torch.meshgrid(shift_y, shift_x, indexing="ij")  # [Hi, Wi] each, y outer
        shifts = torch.stack([xs, ys, xs, ys], dim=-1).reshape(-1, 1, 4)  # [Hi*Wi, 1, 4]
        anchors = shifts + cells.to(torch.float64)[None, :, :]  # [Hi*Wi, A, 4]
        levels.append(anchors.reshape(-1, 4).to(dtype=cells.dtype, device=cells.device))  # [Hi*Wi*A, 4]
    return levels
