"""Greedy non-maximum suppression (NMS) with two Triton kernels.

Shape legend
------------
N  number of boxes (already sorted by descending score for ``nms_sorted_mask``)
W  number of 64-bit words per mask row, ``W = ceil(N / 64)``

Semantics (exact)
-----------------
Boxes are XYXY float32 with widths ``x2 - x1`` (no ``+1``).  For a pair (i, j)::

    iw    = max(min(x2_i, x2_j) - max(x1_i, x1_j), 0)
    ih    = max(min(y2_i, y2_j) - max(y1_i, y1_j), 0)
    inter = iw * ih
    IoU   = inter / (area_i + area_j - inter)   if inter > 0 else 0

all in float32 with correctly rounded operations (no FMA contraction, IEEE
division), so the IoU is bit-identical to torchvision's CPU ``nms``.  Greedy
NMS walks the boxes in the given order; box j is suppressed iff some earlier
*kept* box i < j has ``IoU(i, j) > iou_threshold`` (strictly greater).  The
threshold is a Python float (double); comparing a float32 IoU ``v`` against a
double ``t`` is equivalent to comparing ``v > t32`` where ``t32`` is ``t``
rounded *down* to float32, which is what the kernel receives.

Algorithm
---------
1. ``_iou_mask_kernel`` -- one program per (block of ``BLOCK_R`` rows, block of
   64 columns).  It computes the [BLOCK_R, 64] IoU tile and packs, for every
   row i, the 64 bits "column j > i and IoU(i, j) > thr" into one int64 word:
   bit k of word ``mask[i, c]`` describes column ``j = 64 * c + k``.
   Result: ``mask`` int64 [N, W] (upper-triangular in bit space).
2. ``_greedy_sweep_kernel`` -- a single program walks the rows in order while
   keeping a "removed" bit vector of W words in registers.  Row i is kept iff
   its own bit is not set in "removed"; if kept, its mask row is OR-ed into
   "removed".  It writes the keep flags (int8 [N]).

Memory is O(N^2 / 8) bytes for the bitmask (N = 10_000 -> 12.5 MB).

The module imports without Triton installed (``TRITON_AVAILABLE`` is then
False and the kernels raise ``RuntimeError`` when called with N > 0).  On CPU
the kernels only run under the Triton interpreter (``TRITON_INTERPRET=1`` set
before Triton is imported).
"""

from __future__ import annotations

import contextlib
import math
import os

import torch

try:  # Triton is optional: the module must import without it.
    import triton
    import triton.language as tl

    TRITON_AVAILABLE: bool = True
except Exception:  # pragma: no cover - depends on the environment
    triton = None
    tl = None
    TRITON_AVAILABLE = False

__all__ = ["TRITON_AVAILABLE", "iou_bitmask", "nms_sorted_mask", "nms_triton"]

# Fixed launch configuration (no autotuning).
_WORD_BITS = 64  # columns per packed mask word (int64)
_BLOCK_R = 32  # rows per program of the mask kernel
_MASK_NUM_WARPS = 4
_SWEEP_NUM_WARPS = 1  # the sweep is latency bound; one warp avoids cross-warp reductions


if TRITON_AVAILABLE:

    @triton.jit
    def _iou_mask_kernel(
        boxes_ptr,  # *f32 [N, 4] contiguous, XYXY
        mask_ptr,  # *i64 [N, W] output bitmask
        N,  # number of boxes
        W,  # words per mask row = ceil(N / 64)
        thr,  # f32 threshold (already rounded down to float32 on the host)
        BLOCK_R: tl.constexpr,
        WORD_BITS: tl.constexpr,
    ):
        pid_r = tl.program_id(0)  # block of rows
        pid_c = tl.program_id(1)  # mask word index == block of 64 columns

        rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)  # [BLOCK_R]
        lanes = tl.arange(0, WORD_BITS)  # [64] bit position inside the word
        cols = pid_c * WORD_BITS + lanes  # [64]
        row_ok = rows < N
        col_ok = cols < N

        # Row boxes (the earlier / higher-scored box i).
        rx1 = tl.load(boxes_ptr + rows * 4 + 0, mask=row_ok, other=0.0)
        ry1 = tl.load(boxes_ptr + rows * 4 + 1, mask=row_ok, other=0.0)
        rx2 = tl.load(boxes_ptr + rows * 4 + 2, mask=row_ok, other=0.0)
        ry2 = tl.load(boxes_ptr + rows * 4 + 3, mask=row_ok, other=0.0)
        # Column boxes (the later box j).
        cx1 = tl.load(boxes_ptr + cols * 4 + 0, mask=col_ok, other=0.0)
        cy1 = tl.load(boxes_ptr + cols * 4 + 1, mask=col_ok, other=0.0)
        cx2 = tl.load(boxes_ptr + cols * 4 + 2, mask=col_ok, other=0.0)
        cy2 = tl.load(boxes_ptr + cols * 4 + 3, mask=col_ok, other=0.0)

        area_r = (rx2 - rx1) * (ry2 - ry1)  # [BLOCK_R]
        area_c = (cx2 - cx1) * (cy2 - cy1)  # [64]

        iw = tl.minimum(rx2[:, None], cx2[None, :]) - tl.maximum(rx1[:, None], cx1[None, :])
        ih = tl.minimum(ry2[:, None], cy2[None, :]) - tl.maximum(ry1[:, None], cy1[None, :])
        iw = tl.maximum(iw, 0.0)
        ih = tl.maximum(ih, 0.0)
        inter = iw * ih  # [BLOCK_R, 64]
        union = (area_r[:, None] + area_c[None, :]) - inter
        positive = inter > 0.0
        # IEEE round-to-nearest division (plain `/` on fp32 may lower to an
        # approximate division on NVIDIA GPUs).  The denominator is replaced
        # by 1 where inter == 0 so that no 0/0 is ever evaluated; those
        # entries are defined to have IoU exactly 0.
        ratio = tl.math.div_rn(inter, tl.where(positive, union, 1.0))
        iou = tl.where(positive, ratio, 0.0)

        over = (iou > thr) & (cols[None, :] > rows[:, None]) & col_ok[None, :]  # [BLOCK_R, 64]

        # Bit packing: word = sum_k over[:, k] << k.  Every shifted term is a
        # distinct power of two, so the sum equals the bitwise OR and never
        # carries.  Bit 63 is (1 << 63) == -2**63 as a signed int64; the other
        # terms sum to at most 2**63 - 1, so the total stays inside the int64
        # range and the two's-complement bit pattern is exactly the OR.
        shifts = lanes.to(tl.int64)  # [64]
        bits = over.to(tl.int64) << shifts[None, :]  # [BLOCK_R, 64], each 0 or 1 << k
        words = tl.sum(bits, axis=1)  # [BLOCK_R] int64

        out_offs = rows.to(tl.int64) * W + pid_c
        tl.store(mask_ptr + out_offs, words, mask=row_ok)

    @triton.jit
    def _greedy_sweep_kernel(
        mask_ptr,  # *i64 [N, W] bitmask from _iou_mask_kernel
        keep_ptr,  # *i8 [N] output: 1 = kept
        N,
        W,
        BLOCK_W: tl.constexpr,  # power of two >= W
        WORD_BITS: tl.constexpr,
    ):
        offs = tl.arange(0, BLOCK_W)
        word_ok = offs < W
        # removed: bit j set <=> box j is suppressed by an already-kept box.
        removed = tl.zeros([BLOCK_W], dtype=tl.int64)
        row_ptr = mask_ptr  # pointer to mask row i (advanced by W each step)
        for i in range(0, N):
            # Pick word i // 64 out of the register vector, then bit i % 64.
            word = tl.sum(tl.where(offs == i // WORD_BITS, removed, 0), axis=0)
            kept = ((word >> (i % WORD_BITS)) & 1) == 0
            # Only a kept box suppresses others: load its row iff kept.
            row = tl.load(row_ptr + offs, mask=word_ok & kept, other=0)
            removed = removed | row
            tl.store(keep_ptr + i, kept.to(tl.int8))
            row_ptr += W


def _check_boxes(boxes: torch.Tensor) -> None:
    if not isinstance(boxes, torch.Tensor):
        raise TypeError(f"boxes must be a torch.Tensor, got {type(boxes).__name__}")
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape [N, 4], got {tuple(boxes.shape)}")
    if boxes.dtype != torch.float32:
        raise TypeError(f"boxes must be float32, got {boxes.dtype}")


def _is_interpreted() -> bool:
    if not TRITON_AVAILABLE:
        return False
    if type(_iou_mask_kernel).__name__ == "InterpretedFunction":
        return True
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def _require_triton(boxes: torch.Tensor) -> None:
    if not TRITON_AVAILABLE:
        raise RuntimeError("nms_triton requires the `triton` package, which is not installed")
    if boxes.device.type == "cpu" and not _is_interpreted():
        raise ValueError(
            "boxes is on the CPU; the Triton NMS kernels need a GPU tensor "
            "(or TRITON_INTERPRET=1 set before importing triton)"
        )


def _threshold_f32_round_down(iou_threshold: float) -> float:
    """Largest float32 value <= iou_threshold (as a Python float).

    For a float32 IoU ``v``: ``v > t`` (exact, in double) <=> ``v > round_down_f32(t)``.
    """
    t = float(iou_threshold)
    if math.isnan(t) or math.isinf(t):
        return t
    t32 = torch.tensor(t, dtype=torch.float32)
    if t32.item() > t:
        t32 = torch.nextafter(t32, torch.tensor(-math.inf, dtype=torch.float32))
    return t32.item()


def _device_guard(t: torch.Tensor):
    """``torch.cuda.device(t.device)`` for CUDA tensors (Triton launches on the current device)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _launch_kwargs(num_warps: int) -> dict:
    # enable_fp_fusion=False: no mul+add -> FMA contraction, so every float32
    # operation is individually rounded (ignored by the interpreter).
    return {"num_warps": num_warps, "enable_fp_fusion": False}


def iou_bitmask(boxes: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Packed suppression bitmask: int64 [N, ceil(N/64)].

    Bit ``k`` of ``mask[i, c]`` is set iff ``j = 64 * c + k`` satisfies
    ``i < j < N`` and ``IoU(i, j) > iou_threshold``.
    """
    _check_boxes(boxes)
    n = boxes.shape[0]
    n_words = (n + _WORD_BITS - 1) // _WORD_BITS
    if n == 0:
        return torch.zeros((0, 0), dtype=torch.int64, device=boxes.device)
    _require_triton(boxes)
    boxes = boxes.contiguous()
    mask = torch.empty((n, n_words), dtype=torch.int64, device=boxes.device)
    thr = _threshold_f32_round_down(iou_threshold)
    grid = (triton.cdiv(n, _BLOCK_R), n_words)
    with _device_guard(boxes):
        _iou_mask_kernel[grid](
            boxes,
            mask,
            n,
            n_words,
            thr,
            BLOCK_R=_BLOCK_R,
            WORD_BITS=_WORD_BITS,
            **_launch_kwargs(_MASK_NUM_WARPS),
        )
    return mask


def nms_sorted_mask(boxes: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS over boxes already sorted by descending score.

    Args:
        boxes: float32 [N, 4] XYXY, on a CUDA device (or CPU under the interpreter).
        iou_threshold: a box is suppressed by an earlier kept box when IoU > threshold.

    Returns:
        bool [N] on ``boxes.device``; True = kept.
    """
    _check_boxes(boxes)
    n = boxes.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.bool, device=boxes.device)
    mask = iou_bitmask(boxes, iou_threshold)
    n_words = mask.shape[1]
    keep = torch.empty(n, dtype=torch.int8, device=boxes.device)
    with _device_guard(boxes):
        _greedy_sweep_kernel[(1,)](
            mask,
            keep,
            n,
            n_words,
            BLOCK_W=triton.next_power_of_2(n_words),
            WORD_BITS=_WORD_BITS,
            **_launch_kwargs(_SWEEP_NUM_WARPS),
        )
    return keep.bool()


def nms_triton(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """torchvision-style NMS: int64 indices of kept boxes, in descending score order.

    Ties in ``scores`` keep their input order (stable sort).
    """
    _check_boxes(boxes)
    if not isinstance(scores, torch.Tensor):
        raise TypeError(f"scores must be a torch.Tensor, got {type(scores).__name__}")
    if scores.dim() != 1 or scores.shape[0] != boxes.shape[0]:
        raise ValueError(
            f"scores must have shape [N] with N = boxes.shape[0] = {boxes.shape[0]}, "
            f"got {tuple(scores.shape)}"
        )
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices  # [N]
    keep = nms_sorted_mask(boxes[order], iou_threshold)  # [N] bool, sorted order
    return order[keep]
