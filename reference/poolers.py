"""Multi-level ROI pooling: give each region an FPN level by its size, then ROIAlign it on that level's map.

Spec: d2-spec §2.11 and §3 (level assignment); detectron2 modeling/poolers.py (assign_boxes_to_levels,
ROIPooler); torchvision ops/poolers.py (LevelMapper, MultiScaleRoIAlign) for the torchvision profile.

Shape legend: R regions over the whole batch; L pooled levels (P2..P5); level i has stride strides[i] = 2**k_i
and map [N, C, Hi, Wi]; (oh, ow) the output size. rois rows are (batch_index, x1, y1, x2, y2) in input pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from reference.roi_align import roi_align
from spec import validate as v
from spec.config import BASE_RCNN_FPN

_ROI = BASE_RCNN_FPN.roi_heads
_BOX = BASE_RCNN_FPN.box_head


def assign_levels(boxes: Tensor, min_level: int = _ROI.min_level, max_level: int = _ROI.max_level,
                  canonical_box_size: float = _ROI.canonical_box_size, canonical_level: int = _ROI.canonical_level,
                  eps: float = _ROI.level_eps, eps_in_log: bool = _ROI.level_eps_in_log) -> Tensor:
    """boxes [R, 4] -> int64 [R]: the absolute FPN level k in [min_level, max_level] of each box.

    size = sqrt((x2 - x1) * (y2 - y1)), computed in the boxes' dtype;
    eps_in_log (detectron2):  k = floor(canonical_level + log2(size / canonical_box_size + eps))   # ROI.LEVEL_FORMULA
    otherwise (torchvision):  k = floor(canonical_level + log2(size / canonical_box_size) + eps)
                                                                                           # ROI.LEVEL_EPS_TORCHVISION
    then clamped to [min_level, max_level]. With the spec's numbers: size < 112 -> 2, [112, 224) -> 3,
    [224, 448) -> 4, >= 448 -> 5. Boxes must be finite with x2 >= x1 and y2 >= y1 (ValueError otherwise).
    """
    v.check_level_args(boxes, min_level, max_level, canonical_box_size)
    width = boxes[:, 2] - boxes[:, 0]
    height = boxes[:, 3] - boxes[:, 1]
    size = torch.sqrt(width * height)
    if eps_in_log:
        raw = canonical_level + torch.log2(size / canonical_box_size + eps)
    else:
        raw = canonical_level + torch.log2(size / canonical_box_size) + eps
    level = torch.floor(raw).clamp(min=min_level, max=max_level)
    return level.to(torch.int64)


def multilevel_roi_align(features: Sequence[Tensor], rois: Tensor, output_size: int = _BOX.pooler_resolution,
                         strides: Sequence[int] = BASE_RCNN_FPN.pooled_strides,
                         sampling_ratio: int = _BOX.pooler_sampling_ratio,
                         aligned: bool = _BOX.aligned, canonical_box_size: float = _ROI.canonical_box_size,
                         canonical_level: int = _ROI.canonical_level, eps: float = _ROI.level_eps,
                         eps_in_log: bool = _ROI.level_eps_in_log) -> Tensor:
    """features: L maps [N, C, Hi, Wi]; rois [R, 5] -> [R, C, oh, ow] in features' dtype.

    1. level i is FPN level k_i = log2(strides[i]); min/max level are those of the first and last map.
    2. each region gets k = assign_levels(its box, min, max, canonical_box_size, canonical_level, eps,
       eps_in_log), and is pooled by roi_align on map k - min_level with spatial_scale 1 / stride.
                                                                                          # ROI.POOLER_LEVELS
    3. output row r is region r: the input row order is kept, whichever level pooled it.  # ROI.POOLER_ORDER
    Errors: see spec.validate.check_level_features and check_rois; boxes must also be finite and ordered.
    """
    maps, (min_level, max_level), (oh, ow) = v.check_pooler_args(features, rois, strides, output_size,
                                                                 sampling_ratio)
    levels_k = range(min_level, max_level + 1)  # map i is FPN level min_level + i (strides double)

    level_of_roi = assign_levels(rois[:, 1:], min_level, max_level, canonical_box_size, canonical_level,
                                 eps, eps_in_log)  # [R]
    channels = maps[0].shape[1]
    out = maps[0].new_zeros(rois.shape[0], channels, oh, ow)
    for fmap, stride, k in zip(maps, strides, levels_k):
        rows = (level_of_roi == k).nonzero().flatten()  # the regions this level pools, in input order
        if rows.numel() == 0:
            continue
        out[rows] = roi_align(fmap, rois[rows], (oh, ow), 1.0 / stride, sampling_ratio, aligned)
    return out
