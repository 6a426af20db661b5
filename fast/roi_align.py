"""ROIAlign as one sparse-times-dense product: a weighted row gather from a channels-last map.

Same contract and semantics as reference/roi_align.py and torchvision.ops.roi_align (d2-spec §2.11):
adaptive grid ceil(roi size / output size) per ROI and axis (or a fixed sampling_ratio), samples beyond one
pixel outside the map contribute 0 but count in the denominator max(gy * gx, 1), an empty ROI pools 0.

Algorithm (device-agnostic torch, no Python loop over ROIs):
1. Geometry for all ROIs at once, in the reference's operation order and precision: the box is cast to the
   features' dtype, region sizes and grids (a ceil) are computed in float64, sample positions in the
   features' dtype (float32 or float64).
2. Bilinear sampling is separable: a sample's four weights are (y weight) x (x weight), and its
   out-of-range rule is (y valid) and (x valid). Per ROI, axis and bin, the samples' weights (and the
   1 / count denominator, on the y axis) are summed per distinct row: K slots of (row, weight), with
   K <= grid + 1 for the adaptive grid (neighbouring samples share rows) and K <= 2 grid in general.
   A bin thereby reads Ky x Kx distinct pixels instead of 4 gy gx samples.
3. Output row (roi, ph, pw) = sum over the Ky x Kx slot pairs of wy * wx * F[pixel, :], where F is the level's
   [N * H * W, C] channels-last view (free for channels-last maps, one transposing copy otherwise). This is
   ``F.embedding_bag(mode="sum", per_sample_weights=...)``: fused gather + weighted sum, parallel over bins.
4. Slot counts differ between ROIs. ROIs are sorted by (level, Ky, Kx) and cut into a bounded number of
   segments (merged while padding costs less than a call), each padded to its own largest counts and split
   into chunks of at most CHUNK_ENTRIES (bin, pixel) entries, so memory stays bounded.

The result is [R, C, oh, ow] with channels-last strides (``out.permute(0, 2, 3, 1)`` is contiguous); it
supports autograd with respect to the features (the boxes get no gradient, as in torchvision). A zero
weight still multiplies its pixel, so a non-finite feature value can reach a neighbouring bin.

Shape legend: N images; C channels; H, W one map's size; R regions; (oh, ow) the output size; L levels;
g a grid (samples per bin and axis); K slots (distinct rows or columns one bin reads).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from spec import validate as v

CHUNK_ENTRIES = 1 << 20  # padded (bin, pixel) entries per embedding_bag call: ~12 MB of indices and weights
# Output bytes per embedding_bag call. Below glibc's mmap threshold (at most 32 MiB, raised dynamically once
# a process has freed buffers that large), chunk results are recycled heap memory instead of fresh mmaps that
# page-fault on first touch (~3 ms per 4 MiB here): the only large fresh buffer is the returned output.
CHUNK_OUTPUT_BYTES = 8 << 20
SEGMENT_COST = 1 << 13  # a separate call costs about as much as this many padded entries (merge below it)


def _grid_geometry(rois: Tensor, scale: Tensor, out_hw: tuple[int, int], sampling_ratio: int, aligned: bool,
                   dtype: torch.dtype, compute: torch.dtype) -> tuple[Tensor, ...]:
    """rois [R, 5], scale float64 [R] -> per axis (start, bin size) in the compute dtype and grid int64 [R].

    The reference's precision: the box is cast to the features' dtype (as detectron2's ROIAlign casts it),
    then start = box * scale - offset, size = end - start, bin = size / out and grid = ceil(size / out) are
    computed in float64, so grid sizes equal the float64 oracle's; start and bin are then rounded to the
    compute dtype, in which the sample positions are formed. (torchvision's float32 kernel rounds start and
    end to float32 before the size: a size within rounding of an integer multiple of out, 0 included, can
    get another grid there.)
    """
    boxes = rois[:, 1:].detach().to(dtype).to(torch.float64)  # [R, 4] (x1, y1, x2, y2)
    offset = 0.5 if aligned else 0.0
    ends = boxes * scale[:, None] - offset  # [R, 4] float64
    start_x, start_y, end_x, end_y = ends.unbind(1)
    size_x, size_y = end_x - start_x, end_y - start_y
    if not aligned:  # legacy ROIAlign: every side at least one pixel
        size_x, size_y = size_x.clamp(min=1.0), size_y.clamp(min=1.0)
    oh, ow = out_hw
    bin_y, bin_x = size_y / oh, size_x / ow
    if sampling_ratio > 0:
        grid_y = torch.full_like(start_y, sampling_ratio, dtype=torch.int64)
        grid_x = grid_y
    else:  # ceil(size / out) per ROI; 0 (or negative: no samples) for an empty or inverted ROI
        grid_y = _ceil_grid(bin_y)
        grid_x = _ceil_grid(bin_x)
    return start_y.to(compute), bin_y.to(compute), grid_y, start_x.to(compute), bin_x.to(compute), grid_x


def _ceil_grid(ratio: Tensor) -> Tensor:
    """ceil as int64, with a non-finite ratio (only possible with value checks off) giving 0 samples."""
    g = torch.ceil(ratio)
    return torch.where(torch.isfinite(g), g, torch.zeros((), dtype=g.dtype, device=g.device)).to(torch.int64)


def _axis_slots(start: Tensor, bin_size: Tensor, grid: Tensor, extent: Tensor, bins: int,
                max_grid: int) -> tuple[Tensor, Tensor, Tensor]:
    """Merged bilinear weights along one axis.

    start, bin_size [R] (compute dtype), grid int64 [R], extent int64 [R] (the map's H or W for each ROI)
    -> (rows int64 [R, bins, K]: the distinct rows a bin reads, ascending, weights [R, bins, K]: each row's
    summed bilinear weight, support int64 [R, bins]: how many slots are used); K = max support (>= 1).
    Unused slots hold row 0 and weight 0.

    Sample i of bin b sits at p = (start + b * bin) + ((i + 0.5) * bin) / grid (torchvision's order). It is
    valid when i < grid and -1 <= p <= extent; then p is clamped at 0, low = floor(p); low >= extent - 1
    snaps low = high = extent - 1 and p = low, else high = low + 1; row low gets 1 - (p - low), high p - low.
    Neighbouring samples share rows: the adaptive grid reads at most grid + 1 distinct rows per bin.
    """
    dt, device, num = start.dtype, start.device, start.shape[0]
    if max_grid == 0:  # no ROI has a sample
        zeros = torch.zeros(num, bins, 1, dtype=torch.int64, device=device)
        return zeros, zeros.to(dt), zeros[:, :, 0]
    b = torch.arange(bins, dtype=dt, device=device)[None, :, None]  # [1, bins, 1]
    i = torch.arange(max_grid, dtype=dt, device=device)[None, None, :]  # [1, 1, g]
    step = bin_size[:, None, None]
    g = grid.clamp(min=1).to(dt)[:, None, None]
    pos = (start[:, None, None] + b * step) + ((i + 0.5) * step) / g  # [R, bins, g]
    size = extent.to(dt)[:, None, None]
    valid = (i < grid[:, None, None].to(dt)) & (pos >= -1.0) & (pos <= size) & (size > 0)
    zero = torch.zeros((), dtype=dt, device=device)
    pos = torch.where(valid, pos, zero).clamp_(min=0.0)
    low = torch.floor(pos)
    edge = low >= size - 1
    low = torch.where(edge, (size - 1).clamp(min=0.0), low)
    frac = torch.where(edge, zero, pos - low)  # p snaps to low at the edge
    row_low = low.to(torch.int64)
    row_high = torch.where(edge, row_low, row_low + 1)
    sentinel = torch.iinfo(torch.int64).max  # invalid samples sort last and open no slot
    rows = torch.stack([row_low, row_high], dim=3).masked_fill_(~valid[..., None], sentinel).flatten(2)  # [R,b,2g]
    weights = torch.stack([(1.0 - frac) * valid, frac * valid], dim=3).flatten(2)
    rows, perm = torch.sort(rows, dim=2)
    weights = weights.gather(2, perm)
    ok = rows != sentinel
    new = ok.clone()
    new[:, :, 1:] &= rows[:, :, 1:] != rows[:, :, :-1]
    slot = new.cumsum(dim=2)  # 1-based slot of each valid entry
    support = slot[:, :, -1]
    k = max(int(support.max()), 1)
    slot = torch.where(ok, slot - 1, k)  # invalid entries go to a spare slot k, dropped below
    out_rows = torch.zeros(num, bins, k + 1, dtype=torch.int64, device=device)
    out_rows.scatter_(2, slot, torch.where(ok, rows, 0))
    out_w = torch.zeros(num, bins, k + 1, dtype=dt, device=device).scatter_add_(2, slot, weights)
    return out_rows[:, :, :k], out_w[:, :, :k], support


def pool_levels(maps: Sequence[Tensor], rois: Tensor, level: Tensor, scales: Sequence[float],
                out_hw: tuple[int, int], sampling_ratio: int, aligned: bool) -> Tensor:
    """ROIAlign of every ROI on its own map; inputs already validated.

    maps: L maps [N, C, Hl, Wl] (one dtype and device); rois [R, 5]; level int64 [R], an index into maps
    (-1: no map, pools 0); scales: spatial scale per map -> [R, C, oh, ow] (channels-last strides).
    """
    first = maps[0]
    channels, dtype, device = first.shape[1], first.dtype, first.device
    oh, ow = out_hw
    num_rois, bins = rois.shape[0], oh * ow
    if num_rois == 0 or channels == 0:
        return first.new_zeros(num_rois, oh, ow, channels).permute(0, 3, 1, 2)
    compute = torch.float64 if dtype == torch.float64 else torch.float32

    # per-ROI map: extent and row offset of its image inside the level's [N * H * W, C] view
    heights = torch.tensor([m.shape[2] for m in maps] + [0], device=device)  # a last "no map" entry of size 0
    widths = torch.tensor([m.shape[3] for m in maps] + [0], device=device)
    scale_t = torch.tensor([float(s) for s in scales] + [1.0], dtype=torch.float64, device=device)
    lvl = torch.where(level >= 0, level, len(maps))
    height, width = heights[lvl], widths[lvl]
    image = rois[:, 0].detach().to(torch.int64)  # torchvision truncates the batch index
    row0 = image * height * width

    start_y, bin_y, grid_y, start_x, bin_x, grid_x = _grid_geometry(rois, scale_t[lvl], out_hw, sampling_ratio,
                                                                    aligned, dtype, compute)
    count = (grid_y * grid_x).clamp(min=1).to(compute)  # torchvision's max(gy * gx, 1)
    max_gy = int(grid_y.max().clamp(min=0))
    max_gx = int(grid_x.max().clamp(min=0))
    rows_y, wy, ky = _axis_slots(start_y, bin_y, grid_y, height, oh, max_gy)  # [R, oh, Ky] x2, [R, oh]
    cols_x, wx, kx = _axis_slots(start_x, bin_x, grid_x, width, ow, max_gx)  # [R, ow, Kx] x2, [R, ow]
    wy = wy / count[:, None, None]  # the denominator rides on the row weights

    # flat row indices into the level's [N * H * W, C] view, split into a y part and an x part
    y_term = row0[:, None, None] + rows_y * width[:, None, None]
    x_term = cols_x
    index_dtype = torch.int32 if max(m.numel() // max(channels, 1) for m in maps) < 2**31 else torch.int64
    y_term, x_term = y_term.to(index_dtype), x_term.to(index_dtype)

    # segments: ROIs of one level with similar slot counts; ROIs that read nothing stay 0
    win_y, win_x = ky.amax(dim=1), kx.amax(dim=1)  # [R] per-ROI slot counts
    active = (level >= 0) & (win_y > 0) & (win_x > 0)
    span = (wy.shape[2] + 1) * (wx.shape[2] + 1)
    key = torch.where(active, lvl * span + win_y * (wx.shape[2] + 1) + win_x, -1)
    key_sorted, order = torch.sort(key, stable=True)
    groups, sizes = torch.unique_consecutive(key_sorted, return_counts=True)
    groups_l, sizes_l = groups.tolist(), sizes.tolist()
    num_inactive = sizes_l[0] if groups_l and groups_l[0] < 0 else 0

    # per-ROI tables in sorted order, so that every chunk reads plain slices; weights in the features' dtype
    y_term, x_term = y_term[order], x_term[order]
    wy, wx = wy[order].to(dtype), wx[order].to(dtype)
    bufs: dict[int, Tensor] = {}
    out = (torch.zeros if num_inactive else torch.empty)(num_rois, bins * channels, dtype=dtype, device=device)
    max_rows = max(1, CHUNK_OUTPUT_BYTES // (bins * channels * first.element_size()))
    for lvl_id, s, e, pad_y, pad_x in _segments(groups_l, sizes_l, span, wx.shape[2] + 1, bins, num_inactive,
                                                max_rows):
        if lvl_id not in bufs:  # [N * H * W, C] rows of C contiguous values (a copy only for non-channels-last)
            bufs[lvl_id] = _rows_view(maps[lvl_id])
        n = e - s
        yt, xt = y_term[s:e, :, None, :pad_y, None], x_term[s:e, None, :, None, :pad_x]  # [n,oh,1,Ky,1], [n,1,ow,1,Kx]
        wyr, wxr = wy[s:e, :, None, :pad_y, None], wx[s:e, None, :, None, :pad_x]
        idx = torch.add(yt, xt).view(n * bins, pad_y * pad_x)  # flat pixel of each (bin, ky, kx) entry
        wgt = torch.mul(wyr, wxr).view(n * bins, pad_y * pad_x)
        pooled = F.embedding_bag(idx, bufs[lvl_id], mode="sum", per_sample_weights=wgt)  # [n * bins, C]
        out.index_copy_(0, order[s:e], pooled.view(n, bins * channels))
    return out.view(num_rois, oh, ow, channels).permute(0, 3, 1, 2)


def _rows_view(fmap: Tensor) -> Tensor:
    """[N, C, H, W] -> [N * H * W, C] with contiguous rows: a view of a channels-last map, else one copy."""
    rows = fmap.permute(0, 2, 3, 1).reshape(-1, fmap.shape[1])
    if rows.is_contiguous():
        return rows
    return fmap.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1).reshape(-1, fmap.shape[1])


def _segments(groups: list[int], sizes: list[int], span: int, stride_x: int, bins: int, start: int,
              max_rows: int):
    """Yield (level, first, end, Ky, Kx) runs of the sorted ROIs: a loop over (level, Ky, Kx) groups.

    Adjacent groups of one level merge while padding them to common slot counts costs fewer entries than a
    separate call (SEGMENT_COST); each run is then cut into chunks of at most CHUNK_ENTRIES entries and
    max_rows ROIs.
    """
    runs: list[list[int]] = []  # [level, first, end, Ky, Kx]
    pos = start
    for key, size in zip(groups, sizes):
        if key < 0:
            continue
        level, rest = divmod(key, span)
        ky, kx = divmod(rest, stride_x)
        if runs and runs[-1][0] == level:
            run = runs[-1]
            n_run = run[2] - run[1]
            my, mx = max(run[3], ky), max(run[4], kx)
            merged = (n_run + size) * my * mx * bins
            apart = (n_run * run[3] * run[4] + size * ky * kx) * bins + SEGMENT_COST
            if merged <= apart:
                run[2], run[3], run[4] = pos + size, my, mx
                pos += size
                continue
        runs.append([level, pos, pos + size, ky, kx])
        pos += size
    for level, first, end, ky, kx in runs:
        per_roi = bins * ky * kx
        step = max(1, min(CHUNK_ENTRIES // per_roi, max_rows))
        for s in range(first, end, step):
            yield level, s, min(s + step, end), ky, kx


def roi_align(features: Tensor, rois: Tensor, output_size: int | tuple[int, int], spatial_scale: float,
              sampling_ratio: int, aligned: bool) -> Tensor:
    """features [N, C, H, W], rois [R, 5] (batch_index, x1, y1, x2, y2) -> [R, C, oh, ow] in features' dtype.

    torchvision.ops.roi_align's argument order and semantics (see the module docstring). The output has
    channels-last strides; call ``.contiguous()`` for NCHW strides. On CUDA with Triton, the forward-only
    Triton kernel runs when no gradient is needed.
    Errors (ValueError unless a dtype is wrong): features not [N, C, H, W]; rois not [R, 5], non-finite, or
    with a batch index outside [0, N); different devices; a bad output_size, spatial_scale or sampling_ratio.
    """
    fmap = v.check_roi_features(features, "features")
    v.check_rois(rois, fmap.shape[0], "rois")
    v.check_same_device("features", fmap, "rois", rois)
    out_hw = v.check_roi_align_args(output_size, spatial_scale, sampling_ratio)
    if use_triton(fmap):
        from fast.kernels.roi_align_triton import roi_align_triton

        with v.value_checks(False):  # validated above
            return roi_align_triton(fmap, rois, out_hw, float(spatial_scale), sampling_ratio, aligned)
    level = torch.zeros(rois.shape[0], dtype=torch.int64, device=fmap.device)
    return pool_levels([fmap], rois, level, [float(spatial_scale)], out_hw, sampling_ratio, aligned)


def use_triton(*maps: Tensor) -> bool:
    """True when the forward-only Triton kernel applies: CUDA maps, Triton importable, no gradient needed."""
    if not maps[0].is_cuda:
        return False
    if torch.is_grad_enabled() and any(m.requires_grad for m in maps):
        return False
    try:
        from fast.kernels.roi_align_triton import TRITON_AVAILABLE
    except ImportError:  # pragma: no cover - the module guards its own Triton import
        return False
    return bool(TRITON_AVAILABLE)
