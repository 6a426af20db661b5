"""ROIAlign: average bilinear samples of a feature map over a regular grid of bins inside each region.

Spec: d2-spec §2.11 and §3 (ROIAlign known values); detectron2 layers/roi_align.py, which calls
torchvision.ops.roi_align; the CPU/CUDA kernels define the semantics followed here.

Shape legend: N images; C channels; H, W the map size; R regions; (oh, ow) the output size; for one region
gh x gw samples per bin, so Sy = oh * gh sample rows and Sx = ow * gw sample columns.
rois rows are (batch_index, x1, y1, x2, y2) in input pixels; ``spatial_scale`` maps them onto the map
(1 / stride). With aligned=True, pixel i's centre is at continuous coordinate i + 0.5.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from spec import validate as v


def _axis_samples(start: float, bin_size: float, bins: int, grid: int, size: int,
                  dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Sample positions along one axis and their bilinear pieces.

    positions p = start + b * bin_size + (i + 0.5) * bin_size / grid for bin b < bins, sample i < grid,
    flattened bin-major to [bins * grid]. Returns (low, high, low_weight, high_weight, valid), each [bins * grid]:
    1. a sample with p < -1 or p > size is out of range: it contributes 0 (valid False).  # ROI.ALIGN_OUT_OF_RANGE
    2. otherwise p is clamped below at 0; low = floor(p); if low >= size - 1 then low = high = size - 1 and
       p snaps to low, else high = low + 1.
    3. the fraction l = p - low weights `high`, 1 - l weights `low`.
    """
    b = torch.arange(bins, dtype=dtype, device=device)[:, None]  # [bins, 1]
    i = torch.arange(grid, dtype=dtype, device=device)[None, :]  # [1, grid]
    p = (start + b * bin_size + (i + 0.5) * bin_size / grid).reshape(-1)  # [bins * grid]
    valid = (p >= -1.0) & (p <= size)
    p = p.clamp(min=0)
    low = torch.floor(p).to(torch.int64)
    at_edge = low >= size - 1
    low = torch.where(at_edge, torch.full_like(low, size - 1), low)
    high = torch.where(at_edge, low, low + 1)
    p = torch.where(at_edge, low.to(dtype), p)
    frac = p - low.to(dtype)
    return low, high, frac, 1.0 - frac, valid


def roi_align(features: Tensor, rois: Tensor, output_size: int | tuple[int, int], spatial_scale: float,
              sampling_ratio: int, aligned: bool) -> Tensor:
    """features [N, C, H, W], rois [R, 5] -> [R, C, oh, ow] in features' dtype (rois are cast to it).

    For each region (torchvision.ops.roi_align semantics):
    1. start = (x1, y1) * spatial_scale - offset, end = (x2, y2) * spatial_scale - offset, with offset 0.5
       when aligned else 0; size = end - start. aligned=False forces size >= 1 (each side); aligned=True
       has no minimum, so an empty or inverted region is allowed.
    2. bin size = size / (oh, ow).
    3. grid per bin: sampling_ratio if > 0, else ceil(size / output size) per axis, which is 0 for an
       empty region.                                                                       # ROI.ALIGN_SAMPLING
    4. each sample is a bilinear interpolation (see _axis_samples); weights (1-ly)(1-lx), (1-ly)lx,
       ly(1-lx), ly*lx on the four neighbours.
    5. bin value = sum of its samples / max(gh * gw, 1): out-of-range samples count in the denominator,
       and an empty region gives exactly 0.                                          # ROI.ALIGN_EMPTY
    Errors (ValueError unless a dtype is wrong): features not [N, C, H, W]; rois not [R, 5], non-finite, or
    with a batch index outside [0, N); different devices.                                # ROI.ALIGN_ERRORS
    """
    v.check_roi_features(features, "features")
    v.check_rois(rois, features.shape[0], "rois")
    v.check_same_device("features", features, "rois", rois)
    oh, ow = v.check_roi_align_args(output_size, spatial_scale, sampling_ratio)
    _, channels, height, width = features.shape
    dtype, device = features.dtype, features.device
    rois = rois.to(dtype)  # detectron2's ROIAlign casts the boxes to the input's dtype
    offset = 0.5 if aligned else 0.0

    outputs = []
    for row in rois.tolist():
        batch, x1, y1, x2, y2 = row
        # step 1: the region on the map
        start_x = x1 * spatial_scale - offset
        start_y = y1 * spatial_scale - offset
        roi_w = x2 * spatial_scale - offset - start_x
        roi_h = y2 * spatial_scale - offset - start_y
        if not aligned:
            roi_w = max(roi_w, 1.0)
            roi_h = max(roi_h, 1.0)
        # step 2-3: bins and the sampling grid
        bin_w = roi_w / ow
        bin_h = roi_h / oh
        grid_h = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_h / oh)
        grid_w = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_w / ow)
        count = max(grid_h * grid_w, 1)
        grid_h, grid_w = max(grid_h, 0), max(grid_w, 0)
        if grid_h == 0 or grid_w == 0 or height == 0 or width == 0:
            outputs.append(features.new_zeros(channels, oh, ow))  # no samples at all: exactly 0
            continue
        # step 4: all samples of this region at once
        y_lo, y_hi, ly, hy, y_ok = _axis_samples(start_y, bin_h, oh, grid_h, height, dtype, device)  # [Sy]
        x_lo, x_hi, lx, hx, x_ok = _axis_samples(start_x, bin_w, ow, grid_w, width, dtype, device)  # [Sx]
        fmap = features[int(batch)]  # [C, H, W]
        ok = (y_ok[:, None] & x_ok[None, :]).to(dtype)  # [Sy, Sx]
        w1 = hy[:, None] * hx[None, :] * ok  # weight of (y_lo, x_lo)
        w2 = hy[:, None] * lx[None, :] * ok  # (y_lo, x_hi)
        w3 = ly[:, None] * hx[None, :] * ok  # (y_hi, x_lo)
        w4 = ly[:, None] * lx[None, :] * ok  # (y_hi, x_hi)
        samples = (w1 * fmap[:, y_lo[:, None], x_lo[None, :]] + w2 * fmap[:, y_lo[:, None], x_hi[None, :]]
                   + w3 * fmap[:, y_hi[:, None], x_lo[None, :]] + w4 * fmap[:, y_hi[:, None], x_hi[None, :]])
        # step 5: average each bin's gh x gw samples
        bins = samples.reshape(channels, oh, grid_h, ow, grid_w).sum(dim=(2, 4))  # [C, oh, ow]
        outputs.append(bins / count)
    if not outputs:
        return features.new_zeros(0, channels, oh, ow)
    return torch.stack(outputs)
