"""Boxes, vectorized: area, pairwise IoU, clip, non-empty, and the box-delta transform.

Same contract as reference/boxes.py (d2-spec §2.4, §2.7). Differences: coordinates are handled as
contiguous planes and pairs of columns, temporaries are reused in place, and IoU is computed with the same
IEEE operations in the same order as the spec formula, so results are bitwise equal to a plain
implementation in the same dtype (this matters for the matcher's exact-tie rule).

Shape legend: N, M boxes; K classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from spec import validate as v
from spec.config import SCALE_CLAMP


def box_area(boxes: Tensor) -> Tensor:
    """[N, 4] -> [N]."""
    v.check_boxes(boxes, "boxes", finite=False, ordered=False)
    return _area(boxes)


def _area(boxes: Tensor) -> Tensor:
    wh = boxes[:, 2:] - boxes[:, :2]  # [N, 2]
    return wh[:, 0] * wh[:, 1]


def iou_planes(x1: Tensor, y1: Tensor, x2: Tensor, y2: Tensor, area: Tensor,
               bx1: Tensor, by1: Tensor, bx2: Tensor, by2: Tensor, barea: Tensor, zero_nan: bool = True) -> Tensor:
    """IoU of broadcastable coordinate planes; zero where the boxes do not overlap.

    The operation order is the spec's: inter = clamp(min x2 - max x1, 0) * clamp(min y2 - max y1, 0);
    union = (area1 + area2) - inter; iou = inter / union. 0/0 (two empty boxes) is NaN unless `zero_nan`
    maps it to 0; callers that only compare with "> t" can skip that pass (NaN > t is False).
    """
    w = torch.minimum(x2, bx2)
    w.sub_(torch.maximum(x1, bx1)).clamp_(min=0)
    h = torch.minimum(y2, by2)
    h.sub_(torch.maximum(y1, by1)).clamp_(min=0)
    inter = w.mul_(h)
    union = area + barea
    union.sub_(inter)
    iou = inter.div_(union)
    return iou.nan_to_num_(nan=0.0) if zero_nan else iou  # only 0/0 (both boxes empty) is NaN here


def pairwise_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """[N, 4] x [M, 4] -> [N, M] IoU, no +1, exactly 0 without overlap."""
    v.check_boxes(boxes1, "boxes1")
    v.check_boxes(boxes2, "boxes2")
    v.check_same_device("boxes1", boxes1, "boxes2", boxes2)
    dtype = torch.promote_types(boxes1.dtype, boxes2.dtype)
    a = boxes1.to(dtype).t().contiguous()[:, :, None]  # [4, N, 1]: coordinate planes
    b = boxes2.to(dtype).t().contiguous()[:, None, :]  # [4, 1, M]
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[2] - b[0]) * (b[3] - b[1])
    return iou_planes(a[0], a[1], a[2], a[3], area_a, b[0], b[1], b[2], b[3], area_b)


def clip_boxes(boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Clamp x to [0, w], y to [0, h] for image_size = (h, w); non-finite boxes are an error."""
    v.check_boxes(boxes, "boxes", ordered=False)
    if len(image_size) != 2 or min(image_size) < 0:
        raise ValueError(f"image_size must be a non-negative (height, width), got {image_size!r}")
    h, w = float(image_size[0]), float(image_size[1])
    upper = boxes.new_tensor([w, h, w, h])
    return torch.minimum(boxes.clamp(min=0), upper)


def nonempty(boxes: Tensor, threshold: float = 0.0) -> Tensor:
    """bool [N]: width > threshold and height > threshold."""
    v.check_boxes(boxes, "boxes", finite=False, ordered=False)
    return ((boxes[:, 2:] - boxes[:, :2]) > threshold).all(dim=1)


def encode_boxes(src: Tensor, target: Tensor, weights: Sequence[float]) -> Tensor:
    """[N, 4] src and target -> [N, 4] deltas (dx, dy, dw, dh) scaled by the weights."""
    w = v.check_weights(weights)
    v.check_encode_args(src, target)
    src_wh = src[:, 2:] - src[:, :2]  # [N, 2]
    if v.value_checks_enabled() and src.numel() and not bool((src_wh > 0).all()):
        raise ValueError("src boxes must have positive width and height (got a zero-size src box)")
    tgt_wh = target[:, 2:] - target[:, :2]
    src_ctr = src[:, :2] + 0.5 * src_wh
    tgt_ctr = target[:, :2] + 0.5 * tgt_wh
    wt = src.new_tensor(w)
    d_ctr = wt[:2] * (tgt_ctr - src_ctr) / src_wh
    d_size = wt[2:] * torch.log(tgt_wh / src_wh)
    return torch.cat([d_ctr, d_size], dim=1)


def decode_boxes(deltas: Tensor, boxes: Tensor, weights: Sequence[float],
                 scale_clamp: float = SCALE_CLAMP) -> Tensor:
    """[N, 4K] class-interleaved deltas on [N, 4] boxes -> [N, 4K]; dw, dh clamped from above only."""
    w = v.check_weights(weights)
    v.check_decode_args(deltas, boxes)
    dtype = torch.promote_types(deltas.dtype, boxes.dtype)
    n, k = deltas.shape[0], deltas.shape[1] // 4
    d = deltas.to(dtype).reshape(n, k, 4)  # [N, K, 4]
    boxes = boxes.to(dtype)
    wt = d.new_tensor(w)
    size = (boxes[:, 2:] - boxes[:, :2])[:, None, :]  # [N, 1, 2]
    ctr = boxes[:, None, :2] + 0.5 * size  # [N, 1, 2]
    pred_ctr = (d[:, :, :2] / wt[:2]).mul_(size).add_(ctr)  # [N, K, 2]
    pred_size = (d[:, :, 2:] / wt[2:]).clamp_(max=scale_clamp).exp_().mul_(size)  # [N, K, 2]
    half = pred_size.mul_(0.5)
    return torch.cat([pred_ctr - half, pred_ctr + half], dim=2).reshape(n, 4 * k)  # [N, K*4]
