"""Multi-level ROI pooling in one pass: every ROI's level, geometry and sampling weights at once.

Same contract as reference/poolers.py (d2-spec §2.11; detectron2 ROIPooler, torchvision MultiScaleRoIAlign
for the torchvision profile). Differences from the reference's loop over levels:
- ``assign_levels`` is the same formula on the whole [R, 4] batch, in the boxes' dtype (bitwise equal).
- ``multilevel_roi_align`` computes every ROI's level, bilinear rows/columns and weights in one vectorized
  pass (fast.roi_align.pool_levels); only the fused gather + weighted sum (``F.embedding_bag``) runs once
  per (level, window size) segment, on that level's channels-last [N * H * W, C] view. Output rows are
  written straight to their input positions (ROI.POOLER_ORDER).
- On CUDA with Triton importable and no gradient needed, the forward-only one-launch Triton kernel
  (fast/kernels/roi_align_triton.py) pools all levels instead.

Shape legend: R regions over the whole batch; L pooled levels (P2..P5); level i has stride strides[i] = 2**k_i
and map [N, C, Hi, Wi]; (oh, ow) the output size. rois rows are (batch_index, x1, y1, x2, y2) in input pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from fast.roi_align import pool_levels, use_triton
from spec import validate as v
from spec.config import BASE_RCNN_FPN

_ROI = BASE_RCNN_FPN.roi_heads
_BOX = BASE_RCNN_FPN.box_head


def assign_levels(boxes: Tensor, min_level: int = _ROI.min_level, max_level: int = _ROI.max_level,
                  canonical_box_size: float = _ROI.canonical_box_size, canonical_level: int = _ROI.canonical_level,
                  eps: float = _ROI.level_eps, eps_in_log: bool = _ROI.level_eps_in_log) -> Tensor:
    """boxes [R, 4] -> int64 [R]: the FPN level k in [min_level, max_level] of each box.

    k = floor(canonical_level + log2(sqrt(area) / canonical_box_size + eps)) (eps_in_log, detectron2) or
    floor(canonical_level + log2(sqrt(area) / canonical_box_size) + eps) (torchvision), clamped; computed in
    the boxes' dtype with the reference's operations, so ties at 112 / 224 / 448 round the same way.
    """
    v.check_level_args(boxes, min_level, max_level, canonical_box_size)
    wh = boxes[:, 2:] - boxes[:, :2]  # [R, 2]
    size = torch.sqrt(wh[:, 0] * wh[:, 1])
    if eps_in_log:
        raw = canonical_level + torch.log2(size / canonical_box_size + eps)
    else:
        raw = canonical_level + torch.log2(size / canonical_box_size) + eps
    return torch.floor(raw).clamp_(min=min_level, max=max_level).to(torch.int64)


def multilevel_roi_align(features: Sequence[Tensor], rois: Tensor, output_size: int = _BOX.pooler_resolution,
                         strides: Sequence[int] = BASE_RCNN_FPN.pooled_strides,
                         sampling_ratio: int = _BOX.pooler_sampling_ratio,
                         aligned: bool = _BOX.aligned, canonical_box_size: float = _ROI.canonical_box_size,
                         canonical_level: int = _ROI.canonical_level, eps: float = _ROI.level_eps,
                         eps_in_log: bool = _ROI.level_eps_in_log) -> Tensor:
    """features: L maps [N, C, Hi, Wi]; rois [R, 5] -> [R, C, oh, ow] in features' dtype, rows in input order.

    Level i is FPN level k_i = log2(strides[i]); min/max level are those of the first and last map. Each ROI
    is pooled on the map of its assign_levels level with spatial scale 1 / stride. The output has
    channels-last strides (``.contiguous()`` gives NCHW). Maps in channels-last memory format (fast.FPN's
    output) are read in place; NCHW maps are transposed once per level that has ROIs.
    """
    maps, (min_level, max_level), out_hw = v.check_pooler_args(features, rois, strides, output_size,
                                                               sampling_ratio)

    k = assign_levels(rois[:, 1:].detach(), min_level, max_level, canonical_box_size, canonical_level, eps,
                      eps_in_log)  # [R]
    level = k - min_level  # check_level_features: strides double from map to map, so map i is level min + i
    if use_triton(*maps):
        from fast.kernels.roi_align_triton import multilevel_roi_align_triton

        with v.value_checks(False):  # validated above; skip the kernel's repeated (host-syncing) value scans
            return multilevel_roi_align_triton(maps, rois, level, out_hw, strides, sampling_ratio, aligned)
    return pool_levels(maps, rois, level, [1.0 / s for s in strides], out_hw, sampling_ratio, aligned)
