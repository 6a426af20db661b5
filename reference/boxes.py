"""Boxes: area, pairwise IoU, clipping, the non-empty test, and the box-delta transform (Box2BoxTransform).

Spec: d2-spec §2.4 (boxes, IoU) and §2.7 (encode/decode); detectron2 structures/boxes.py and
modeling/box_regression.py.

Shape legend: N, M boxes; K classes. Boxes are XYXY in absolute pixels, width = x2 - x1 (no "+1").
Deltas are (dx, dy, dw, dh); decode takes [N, 4K] class-interleaved deltas (columns 4c..4c+3 = class c).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from spec import validate as v
from spec.config import SCALE_CLAMP


def box_area(boxes: Tensor) -> Tensor:
    """[N, 4] -> [N]: (x2 - x1) * (y2 - y1).  # BOX.AREA"""
    v.check_boxes(boxes, "boxes", finite=False, ordered=False)
    width = boxes[:, 2] - boxes[:, 0]
    height = boxes[:, 3] - boxes[:, 1]
    return width * height


def pairwise_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of every pair: [N, 4] x [M, 4] -> [N, M].

    intersection = clamp(min(x2) - max(x1), 0) * clamp(min(y2) - max(y1), 0)
    IoU = inter / (area1 + area2 - inter) where inter > 0, else exactly 0.   # BOX.IOU_ZERO_NO_OVERLAP
    Widths have no +1.                                                          # BOX.IOU_NO_PLUS_ONE
    Errors: non-tensors, non-float dtypes, shapes other than [*, 4], NaN/inf, x2 < x1 or y2 < y1.
    """
    v.check_boxes(boxes1, "boxes1")
    v.check_boxes(boxes2, "boxes2")
    v.check_same_device("boxes1", boxes1, "boxes2", boxes2)
    dtype = torch.promote_types(boxes1.dtype, boxes2.dtype)
    b1, b2 = boxes1.to(dtype), boxes2.to(dtype)
    area1 = box_area(b1)  # [N]
    area2 = box_area(b2)  # [M]
    # overlap rectangle of every pair: [N, M] per coordinate
    left = torch.maximum(b1[:, None, 0], b2[None, :, 0])
    top = torch.maximum(b1[:, None, 1], b2[None, :, 1])
    right = torch.minimum(b1[:, None, 2], b2[None, :, 2])
    bottom = torch.minimum(b1[:, None, 3], b2[None, :, 3])
    inter = (right - left).clamp(min=0) * (bottom - top).clamp(min=0)  # [N, M]
    union = area1[:, None] + area2[None, :] - inter
    iou = torch.zeros_like(inter)
    overlapping = inter > 0
    iou[overlapping] = inter[overlapping] / union[overlapping]
    return iou


def clip_boxes(boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Clamp x to [0, w] and y to [0, h]; image_size = (h, w). Non-finite boxes are an error.  # BOX.CLIP"""
    v.check_boxes(boxes, "boxes", ordered=False)
    h, w = _image_size(image_size)
    x1 = boxes[:, 0].clamp(min=0, max=w)
    y1 = boxes[:, 1].clamp(min=0, max=h)
    x2 = boxes[:, 2].clamp(min=0, max=w)
    y2 = boxes[:, 3].clamp(min=0, max=h)
    return torch.stack([x1, y1, x2, y2], dim=1)


def nonempty(boxes: Tensor, threshold: float = 0.0) -> Tensor:
    """bool [N]: width > threshold and height > threshold (strict).  # BOX.NONEMPTY"""
    v.check_boxes(boxes, "boxes", finite=False, ordered=False)
    width = boxes[:, 2] - boxes[:, 0]
    height = boxes[:, 3] - boxes[:, 1]
    return (width > threshold) & (height > threshold)


def encode_boxes(src: Tensor, target: Tensor, weights: Sequence[float]) -> Tensor:
    """Deltas that take `src` [N, 4] to `target` [N, 4].  # BOX.ENCODE

    dx = wx (cx_t - cx_s) / w_s     dy = wy (cy_t - cy_s) / h_s
    dw = ww ln(w_t / w_s)           dh = wh ln(h_t / h_s)
    Every src width and height must be > 0 (ValueError otherwise). A zero-size target gives dw or dh = -inf.
    """
    wx, wy, ww, wh = v.check_weights(weights)
    v.check_encode_args(src, target)
    src_w = src[:, 2] - src[:, 0]
    src_h = src[:, 3] - src[:, 1]
    if v.value_checks_enabled() and src.numel() and not bool(((src_w > 0) & (src_h > 0)).all()):
        raise ValueError("src boxes must have positive width and height (got a zero-size src box)")
    src_cx = src[:, 0] + 0.5 * src_w
    src_cy = src[:, 1] + 0.5 * src_h
    tgt_w = target[:, 2] - target[:, 0]
    tgt_h = target[:, 3] - target[:, 1]
    tgt_cx = target[:, 0] + 0.5 * tgt_w
    tgt_cy = target[:, 1] + 0.5 * tgt_h
    dx = wx * (tgt_cx - src_cx) / src_w
    dy = wy * (tgt_cy - src_cy) / src_h
    dw = ww * torch.log(tgt_w / src_w)
    dh = wh * torch.log(tgt_h / src_h)
    return torch.stack([dx, dy, dw, dh], dim=1)


def decode_boxes(deltas: Tensor, boxes: Tensor, weights: Sequence[float],
                 scale_clamp: float = SCALE_CLAMP) -> Tensor:
    """Apply [N, 4K] class-interleaved deltas to [N, 4] boxes -> [N, 4K] boxes.  # BOX.DECODE_INTERLEAVED

    1. divide by the weights: dx/wx, dy/wy, dw/ww, dh/wh
    2. clamp dw and dh from above only at scale_clamp = log(1000/16)          # BOX.DECODE_CLAMP
    3. centre = (dx * w + cx, dy * h + cy); size = (exp(dw) * w, exp(dh) * h)
    4. corners = centre -+ size / 2
    Computes in deltas' dtype promoted with boxes' dtype (detectron2 casts deltas to float32).
    """
    wx, wy, ww, wh = v.check_weights(weights)
    v.check_decode_args(deltas, boxes)
    dtype = torch.promote_types(deltas.dtype, boxes.dtype)
    deltas, boxes = deltas.to(dtype), boxes.to(dtype)
    n, k = deltas.shape[0], deltas.shape[1] // 4
    d = deltas.reshape(n, k, 4)  # [N, K, 4]: class c's (dx, dy, dw, dh)
    widths = (boxes[:, 2] - boxes[:, 0])[:, None]  # [N, 1]
    heights = (boxes[:, 3] - boxes[:, 1])[:, None]
    ctr_x = boxes[:, 0][:, None] + 0.5 * widths
    ctr_y = boxes[:, 1][:, None] + 0.5 * heights
    dx = d[:, :, 0] / wx  # [N, K]
    dy = d[:, :, 1] / wy
    dw = (d[:, :, 2] / ww).clamp(max=scale_clamp)  # from above only
    dh = (d[:, :, 3] / wh).clamp(max=scale_clamp)
    pred_ctr_x = dx * widths + ctr_x
    pred_ctr_y = dy * heights + ctr_y
    pred_w = torch.exp(dw) * widths
    pred_h = torch.exp(dh) * heights
    out = torch.stack([pred_ctr_x - 0.5 * pred_w, pred_ctr_y - 0.5 * pred_h,
                       pred_ctr_x + 0.5 * pred_w, pred_ctr_y + 0.5 * pred_h], dim=2)  # [N, K, 4]
    return out.reshape(n, 4 * k)


def _image_size(image_size: tuple[int, int]) -> tuple[float, float]:
    if len(image_size) != 2:
        raise ValueError(f"image_size must be (height, width), got {image_size!r}")
    h, w = (float(s) for s in image_size)
    if h < 0 or w < 0:
        raise ValueError(f"image_size must be non-negative, got {image_size!r}")
    return h, w
