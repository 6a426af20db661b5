"""Multi-level ROIAlign in one Triton kernel launch (torchvision / detectron2 semantics).

Shape legend
------------
L          number of feature levels
N, C       images and channels (the same on every level)
Hl, Wl     height and width of level l
R          number of regions (rows of ``rois``)
OH, OW     output size per region (``output_size``)
B          bins per region, ``B = OH * OW``, bin index ``b = ph * OW + pw``

Semantics (d2-spec §2.11, torchvision.ops.roi_align)
---------------------------------------------------
For ROI ``r`` with row ``(batch, x1, y1, x2, y2)`` on level ``l = levels[r]`` with scale ``s = 1 / strides[l]``:

1. ``start = (x1, y1) * s - offset``, ``end = (x2, y2) * s - offset``, ``offset = 0.5`` when ``aligned``
   else 0; ``size = end - start``.  ``aligned=False`` forces each side of ``size`` to be at least 1;
   ``aligned=True`` has no minimum (an empty or inverted region is allowed).
2. ``bin = size / (OH, OW)``.
3. Grid per bin: ``sampling_ratio`` samples per axis if it is > 0, else ``ceil(bin)`` per axis (dynamic per
   ROI; 0 for an empty region).
4. Sample ``(iy, ix)`` of bin ``(ph, pw)`` sits at ``y = start_y + ph * bin_h + (iy + 0.5) * bin_h / gy``
   (likewise x) and is a bilinear interpolation: ``y < -1`` or ``y > H`` (or x) contributes 0; otherwise
   a negative coordinate is clamped to 0, ``low = floor(y)``; ``low >= H - 1`` snaps ``low = high = H - 1``
   and ``y = low``, else ``high = low + 1``; weights ``(1-ly)(1-lx), (1-ly)lx, ly(1-lx), ly*lx``.
5. Bin value = sum of its samples / ``max(gy * gx, 1)`` (out-of-range samples count in the denominator; an
   empty region gives exactly 0).

The coordinate arithmetic mirrors torchvision's kernel operation by operation (IEEE division, no FMA
contraction), so float32 results agree with ``torchvision.ops.roi_align`` on the CPU to a few ulps.

Kernel layout
-------------
All levels are copied once into one flat channels-last buffer ``[sum_l N * Hl * Wl * C]`` (a single
channels-last level is used in place, without a copy); a small int64 table ``[L, 3]`` holds each level's
(element offset, Hl, Wl) and a table ``[L]`` its spatial scale.  One launch covers every ROI and level:
program ``(r, bt, ct)`` handles ROI ``r``, a tile of ``BLOCK_B`` bins and a tile of ``BLOCK_C`` channels.
It reads the ROI's level row from the tables, loops over the ROI's ``gy x gx`` sampling grid (a runtime
trip count), and for each sample gathers four ``[BLOCK_B, BLOCK_C]`` neighbour tiles (contiguous along
channels) into a float32 accumulator (float64 for float64 features).  The result is stored in the
features' dtype into a contiguous ``[R, C, OH, OW]`` output.

Guards (no host sync): a level outside ``[0, L)`` or a batch index that truncates outside ``[0, N)`` pools
0 instead of reading out of bounds; such inputs are rejected up front by the value checks of
``spec.validate`` unless the caller disabled them.  An ROI with a non-finite size gets an adaptive grid of 0
samples (pools 0), and the adaptive grid is capped at ``_MAX_GRID`` samples per axis (only bins wider than
1024 map pixels reach it), so no ROI can make the sampling loop run away.

The module imports without Triton (``TRITON_AVAILABLE`` is then False and a launch raises RuntimeError).
On the CPU the kernel only runs under the Triton interpreter (``TRITON_INTERPRET=1`` set before Triton is
imported).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Sequence

import torch
from torch import Tensor

from spec import validate as v
from spec.config import BASE_RCNN_FPN

try:  # Triton is optional: the module must import without it.
    import triton
    import triton.language as tl

    TRITON_AVAILABLE: bool = True
except Exception:  # pragma: no cover - depends on the environment
    triton = None
    tl = None
    TRITON_AVAILABLE = False

__all__ = ["TRITON_AVAILABLE", "multilevel_roi_align_triton", "roi_align_triton"]

_BOX = BASE_RCNN_FPN.box_head
_ROI = BASE_RCNN_FPN.roi_heads
_ROI_STRIDES = tuple(2**k for k in range(_ROI.min_level, _ROI.max_level + 1))  # P2..P5: (4, 8, 16, 32)

# Fixed launch configuration (no autotuning).  Checked offline with ptxas for sm_90 (no GPU run yet): a
# 1024-element float32 tile at 4 warps compiles to ~96 registers per thread with 128-bit channel loads and no
# spills (C % 16 == 0); 4096-element tiles spill.
_MAX_BLOCK_C = 64  # channels per program (256 contiguous bytes of float32 per pixel row)
_MAX_BLOCK_B = 64  # bins per program
_TILE_ELEMS = 1024  # BLOCK_B * BLOCK_C upper bound (half that for float64)
_NUM_WARPS = 4
_MAX_GRID = 1024  # cap on the adaptive samples per axis (bins wider than 1024 map pixels; never in practice)


if TRITON_AVAILABLE:

    @triton.jit
    def _div(x, y, IS_F64: tl.constexpr):
        """IEEE round-to-nearest x / y (plain fp32 `/` may lower to an approximate division on GPUs)."""
        if IS_F64:
            return x / y
        else:
            return tl.math.div_rn(x, y)

    @triton.jit
    def _axis_sample(p, size):
        """Bilinear pieces of sample coordinates ``p`` on an axis of ``size`` pixels (size >= 1).

        Returns (low, high, frac, ok): ``ok`` False for p < -1 or p > size (or NaN), which must contribute 0;
        otherwise p is clamped below at 0, low = floor(p), and low >= size - 1 snaps low = high = size - 1
        (frac 0), else high = low + 1 and frac = p - low.  Lanes with ``ok`` False get in-range indices.
        """
        size_f = size.to(p.dtype)
        ok = (p >= -1.0) & (p <= size_f)
        p = tl.where(ok, tl.maximum(p, 0.0), 0.0)
        low = p.to(tl.int32)  # p >= 0: truncation is floor
        edge = low >= size - 1
        low = tl.where(edge, size - 1, low)
        high = tl.where(edge, low, low + 1)
        p = tl.where(edge, low.to(p.dtype), p)
        frac = p - low.to(p.dtype)
        return low, high, frac, ok

    @triton.jit
    def _roi_align_kernel(
        feat_ptr,  # flat channels-last buffer of all levels, features' dtype
        rois_ptr,  # [R, 5] contiguous, compute dtype (float32 or float64)
        levels_ptr,  # *i64 [R] level of each ROI
        meta_ptr,  # *i64 [L, 3]: (element offset of the level in feat_ptr, Hl, Wl)
        scale_ptr,  # [L] spatial scale per level, compute dtype
        out_ptr,  # [R, C, OH, OW] contiguous, features' dtype
        num_images,  # N
        channels,  # C
        num_levels,  # L
        OH: tl.constexpr,
        OW: tl.constexpr,
        SAMPLING: tl.constexpr,  # fixed samples per axis (ignored when ADAPTIVE)
        ADAPTIVE: tl.constexpr,  # sampling_ratio <= 0: ceil(bin size) samples per axis
        ALIGNED: tl.constexpr,
        IS_F64: tl.constexpr,
        CH_ALIGN: tl.constexpr,  # power of two (<= 16) dividing channels: level offsets and pixel rows share it
        MAX_GRID: tl.constexpr,
        BLOCK_B: tl.constexpr,
        BLOCK_C: tl.constexpr,
    ):
        r = tl.program_id(0).to(tl.int64)  # ROI
        pid_b = tl.program_id(1)  # tile of bins
        pid_c = tl.program_id(2)  # tile of channels
        cdt = rois_ptr.dtype.element_ty  # compute dtype

        # The ROI's level: its offset in the flat buffer, its size and its scale.
        lvl = tl.load(levels_ptr + r)
        lvl_ok = (lvl >= 0) & (lvl < num_levels)
        lvl = tl.where(lvl_ok, lvl, 0)
        base = tl.load(meta_ptr + lvl * 3)  # i64, a multiple of channels
        if CH_ALIGN > 1:  # alignment hints that let the channel loads vectorize
            base = tl.multiple_of(base, CH_ALIGN)
            channels = tl.multiple_of(channels, CH_ALIGN)
        height = tl.load(meta_ptr + lvl * 3 + 1).to(tl.int32)
        width = tl.load(meta_ptr + lvl * 3 + 2).to(tl.int32)
        scale = tl.load(scale_ptr + lvl)

        batch_f = tl.load(rois_ptr + r * 5)
        x1 = tl.load(rois_ptr + r * 5 + 1)
        y1 = tl.load(rois_ptr + r * 5 + 2)
        x2 = tl.load(rois_ptr + r * 5 + 3)
        y2 = tl.load(rois_ptr + r * 5 + 4)
        # torchvision reads the batch index as (int) rois[r, 0] (truncation toward zero).
        batch_ok = (batch_f > -1.0) & (batch_f < num_images)
        batch = tl.where(batch_ok, batch_f, 0.0).to(tl.int64)
        roi_ok = lvl_ok & batch_ok & (height > 0) & (width > 0)

        # Step 1: the region on the map.
        start_x = x1 * scale
        start_y = y1 * scale
        end_x = x2 * scale
        end_y = y2 * scale
        if ALIGNED:
            start_x = start_x - 0.5
            start_y = start_y - 0.5
            end_x = end_x - 0.5
            end_y = end_y - 0.5
        roi_w = end_x - start_x
        roi_h = end_y - start_y
        if not ALIGNED:
            roi_w = tl.maximum(roi_w, 1.0)
            roi_h = tl.maximum(roi_h, 1.0)
        # Step 2: bin size.
        bin_w = _div(roi_w, tl.full([], OW, cdt), IS_F64)
        bin_h = _div(roi_h, tl.full([], OH, cdt), IS_F64)
        # Step 3: sampling grid (gy x gx samples per bin).
        if ADAPTIVE:
            gy_f = tl.ceil(bin_h)  # == ceil(roi_h / OH)
            gx_f = tl.ceil(bin_w)
            # Empty/inverted -> 0 samples; a non-finite size (x - x != 0) -> 0 samples; cap at MAX_GRID.
            gy_f = tl.where((gy_f > 0.0) & (roi_h - roi_h == 0.0), tl.minimum(gy_f, MAX_GRID), 0.0)
            gx_f = tl.where((gx_f > 0.0) & (roi_w - roi_w == 0.0), tl.minimum(gx_f, MAX_GRID), 0.0)
        else:
            gy_f = tl.full([], SAMPLING, cdt)
            gx_f = tl.full([], SAMPLING, cdt)
        gy = gy_f.to(tl.int32)
        gx = gx_f.to(tl.int32)
        count = tl.maximum(gy * gx, 1).to(cdt)

        bins = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)  # [BLOCK_B]
        bin_ok = bins < OH * OW
        chans = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)  # [BLOCK_C]
        chan_ok = chans < channels
        y_base = start_y + (bins // OW).to(cdt) * bin_h  # [BLOCK_B] start_y + ph * bin_h
        x_base = start_x + (bins % OW).to(cdt) * bin_w  # [BLOCK_B] start_x + pw * bin_w
        lane_ok = bin_ok & roi_ok
        img_rows = batch * height  # first row of this image in the level's [N * Hl, Wl] pixel grid
        level_ptr = feat_ptr + base

        acc = tl.zeros([BLOCK_B, BLOCK_C], dtype=cdt)
        fy = tl.full([], 0.5, cdt)  # iy + 0.5
        for _iy in range(0, gy):
            y = y_base + _div(fy * bin_h, gy_f, IS_F64)  # [BLOCK_B]
            y_lo, y_hi, ly, y_ok = _axis_sample(y, height)
            hy = 1.0 - ly
            row_lo = (img_rows + y_lo.to(tl.int64)) * width  # [BLOCK_B] pixel index of (y_lo, 0)
            row_hi = (img_rows + y_hi.to(tl.int64)) * width
            fx = tl.full([], 0.5, cdt)  # ix + 0.5
            for _ix in range(0, gx):
                x = x_base + _div(fx * bin_w, gx_f, IS_F64)  # [BLOCK_B]
                x_lo, x_hi, lx, x_ok = _axis_sample(x, width)
                hx = 1.0 - lx
                ok = lane_ok & y_ok & x_ok
                mask = ok[:, None] & chan_ok[None, :]  # [BLOCK_B, BLOCK_C]
                w1 = tl.where(ok, hy * hx, 0.0)[:, None]  # (y_lo, x_lo)
                w2 = tl.where(ok, hy * lx, 0.0)[:, None]  # (y_lo, x_hi)
                w3 = tl.where(ok, ly * hx, 0.0)[:, None]  # (y_hi, x_lo)
                w4 = tl.where(ok, ly * lx, 0.0)[:, None]  # (y_hi, x_hi)
                p1 = (row_lo + x_lo)[:, None] * channels + chans[None, :]  # [BLOCK_B, BLOCK_C] i64
                p2 = (row_lo + x_hi)[:, None] * channels + chans[None, :]
                p3 = (row_hi + x_lo)[:, None] * channels + chans[None, :]
                p4 = (row_hi + x_hi)[:, None] * channels + chans[None, :]
                v1 = tl.load(level_ptr + p1, mask=mask, other=0.0).to(cdt)
                v2 = tl.load(level_ptr + p2, mask=mask, other=0.0).to(cdt)
                v3 = tl.load(level_ptr + p3, mask=mask, other=0.0).to(cdt)
                v4 = tl.load(level_ptr + p4, mask=mask, other=0.0).to(cdt)
                acc += ((w1 * v1 + w2 * v2) + w3 * v3) + w4 * v4
                fx += 1.0
            fy += 1.0

        # Step 5: average over the grid (0 samples -> 0 / 1 = 0).
        result = _div(acc, tl.broadcast_to(count, [BLOCK_B, BLOCK_C]), IS_F64)
        bins_per_roi = OH * OW
        out_offs = r * channels * bins_per_roi + chans[None, :].to(tl.int64) * bins_per_roi + bins[:, None]
        tl.store(
            out_ptr + out_offs,
            result.to(out_ptr.dtype.element_ty),
            mask=bin_ok[:, None] & chan_ok[None, :],
        )


def _is_interpreted() -> bool:
    if not TRITON_AVAILABLE:
        return False
    if type(_roi_align_kernel).__name__ == "InterpretedFunction":
        return True
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def _require_triton(features: Tensor) -> None:
    if not TRITON_AVAILABLE:
        raise RuntimeError("roi_align_triton requires the `triton` package, which is not installed")
    if features.device.type == "cpu" and not _is_interpreted():
        raise ValueError(
            "features are on the CPU; the Triton ROIAlign kernel needs GPU tensors "
            "(or TRITON_INTERPRET=1 set before importing triton)"
        )


def _device_guard(t: Tensor):
    """``torch.cuda.device(t.device)`` for CUDA tensors (Triton launches on the current device)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _check_levels(levels: object, num_rois: int, num_levels: int) -> Tensor:
    """levels: an integer tensor [R] with values in [0, L) (the value check is skipped when disabled)."""
    lv = v.check_tensor(levels, "levels")
    if lv.dtype == torch.bool or lv.is_floating_point() or lv.is_complex():
        raise TypeError(f"levels must be an integer tensor (int64), got {lv.dtype}")
    if lv.dim() != 1 or lv.shape[0] != num_rois:
        raise ValueError(f"levels must have shape [R] = [{num_rois}] (one level per ROI), got {list(lv.shape)}")
    if v.value_checks_enabled() and lv.numel():
        bad = (lv < 0) | (lv >= num_levels)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise ValueError(f"levels must lie in [0, {num_levels}) (an index into features); "
                             f"row {i} has {int(lv[i])}")
    return lv


def _flat_channels_last(maps: Sequence[Tensor]) -> tuple[Tensor, list[int]]:
    """All maps [N, C, Hl, Wl] as one flat channels-last buffer, and each level's element offset in it."""
    sizes = [m.numel() for m in maps]
    offsets = [sum(sizes[:i]) for i in range(len(maps))]
    if len(maps) == 1:
        nhwc = maps[0].permute(0, 2, 3, 1)  # [N, H, W, C]
        if nhwc.is_contiguous():  # already channels-last: use it in place
            return nhwc.reshape(-1), offsets
    flat = torch.empty(sum(sizes), dtype=maps[0].dtype, device=maps[0].device)
    for m, off, n in zip(maps, offsets, sizes):
        flat[off : off + n].view(m.shape[0], m.shape[2], m.shape[3], m.shape[1]).copy_(m.permute(0, 2, 3, 1))
    return flat, offsets


def _launch(
    maps: Sequence[Tensor],
    rois: Tensor,
    levels: Tensor,
    out_hw: tuple[int, int],
    scales: Sequence[float],
    sampling_ratio: int,
    aligned: bool,
) -> Tensor:
    """Validated inputs -> [R, C, OH, OW] in the maps' dtype (one kernel launch)."""
    first = maps[0]
    num_images, channels = first.shape[0], first.shape[1]
    oh, ow = out_hw
    num_rois = rois.shape[0]
    out = torch.empty((num_rois, channels, oh, ow), dtype=first.dtype, device=first.device)
    if num_rois == 0 or channels == 0:
        return out.zero_()
    _require_triton(first)

    is_f64 = first.dtype == torch.float64
    cdt = torch.float64 if is_f64 else torch.float32
    dev = first.device
    # detectron2's ROIAlign casts the boxes to the features' dtype; coordinates are then computed in cdt.
    rois_c = rois.to(first.dtype).to(cdt).contiguous()
    levels_c = levels.to(device=dev, dtype=torch.int64).contiguous()
    flat, offsets = _flat_channels_last(maps)
    meta_rows = [[off, m.shape[2], m.shape[3]] for off, m in zip(offsets, maps)]
    # Tiny host->device tables; non_blocking avoids a stream synchronisation for the pageable copy.
    meta = torch.tensor(meta_rows, dtype=torch.int64).to(dev, non_blocking=True)
    scale_t = torch.tensor([float(s) for s in scales], dtype=cdt).to(dev, non_blocking=True)

    tile = _TILE_ELEMS // 2 if is_f64 else _TILE_ELEMS
    block_c = min(triton.next_power_of_2(channels), _MAX_BLOCK_C)
    block_b = min(triton.next_power_of_2(oh * ow), _MAX_BLOCK_B, max(tile // block_c, 1))
    grid = (num_rois, triton.cdiv(oh * ow, block_b), triton.cdiv(channels, block_c))
    adaptive = sampling_ratio <= 0
    with _device_guard(first):
        _roi_align_kernel[grid](
            flat,
            rois_c,
            levels_c,
            meta,
            scale_t,
            out,
            num_images,
            channels,
            len(maps),
            OH=oh,
            OW=ow,
            SAMPLING=1 if adaptive else int(sampling_ratio),
            ADAPTIVE=adaptive,
            ALIGNED=bool(aligned),
            IS_F64=is_f64,
            CH_ALIGN=math.gcd(channels, 16),
            MAX_GRID=_MAX_GRID,
            BLOCK_B=block_b,
            BLOCK_C=block_c,
            num_warps=_NUM_WARPS,
            enable_fp_fusion=False,  # no mul+add -> FMA contraction (ignored by the interpreter)
        )
    return out


def _check_same_device(maps: Sequence[Tensor], rois: Tensor, levels: Tensor | None) -> None:
    dev = maps[0].device
    if rois.device != dev:
        raise ValueError(f"rois is on {rois.device} but features are on {dev}")
    if levels is not None and levels.device != dev:
        raise ValueError(f"levels is on {levels.device} but features are on {dev}")


def multilevel_roi_align_triton(
    features: Sequence[Tensor],
    rois: Tensor,
    levels: Tensor,
    output_size: int = _BOX.pooler_resolution,
    strides: Sequence[int] = _ROI_STRIDES,
    sampling_ratio: int = _BOX.pooler_sampling_ratio,
    aligned: bool = _BOX.aligned,
) -> Tensor:
    """ROIAlign of every ROI on its own level, all levels and ROIs in one Triton launch.

    Args:
        features: L maps [N, C, Hl, Wl] (any memory format; same N, C, dtype, device), level l has stride
            ``strides[l]`` and spatial scale ``1 / strides[l]``.
        rois: [R, 5] floating rows (batch_index, x1, y1, x2, y2) in input pixels.
        levels: integer [R] (int64), ``levels[r]`` indexes ``features`` (already assigned by the caller).
        output_size: OH = OW (or a pair (OH, OW)).
        strides: one positive power-of-two stride per level, doubling from level to level.
        sampling_ratio: samples per bin axis; <= 0 = adaptive ``ceil(roi size / output size)``.
        aligned: the -0.5 pixel shift (ROIAlignV2); False forces each ROI side to be >= 1.

    Returns:
        [R, C, OH, OW] contiguous in the features' dtype (accumulated in float32; float64 for float64),
        rows in the order of ``rois``.
    """
    maps = v.check_level_features(features, strides)
    rois = v.check_rois(rois, maps[0].shape[0], "rois")
    out_hw = v.check_roi_align_args(output_size, 1.0 / float(strides[0]), sampling_ratio)
    levels = _check_levels(levels, rois.shape[0], len(maps))
    _check_same_device(maps, rois, levels)
    return _launch(maps, rois, levels, out_hw, [1.0 / float(s) for s in strides], sampling_ratio, aligned)


def roi_align_triton(
    features: Tensor,
    rois: Tensor,
    output_size: int = _BOX.pooler_resolution,
    spatial_scale: float = 1.0,
    sampling_ratio: int = _BOX.pooler_sampling_ratio,
    aligned: bool = _BOX.aligned,
) -> Tensor:
    """Single-level ROIAlign (torchvision.ops.roi_align argument order) on the same kernel.

    features [N, C, H, W], rois [R, 5] (batch_index, x1, y1, x2, y2) -> [R, C, OH, OW] in features' dtype.
    """
    fmap = v.check_roi_features(features, "features")
    rois = v.check_rois(rois, fmap.shape[0], "rois")
    out_hw = v.check_roi_align_args(output_size, spatial_scale, sampling_ratio)
    _check_same_device([fmap], rois, None)
    levels = torch.zeros(rois.shape[0], dtype=torch.int64, device=fmap.device)
    return _launch([fmap], rois, levels, out_hw, [float(spatial_scale)], sampling_ratio, aligned)
