"""An example third-party port: part of the detspec contract, written in plain NumPy.

This module shows how a port that is not written in torch is put under the detspec conformance suite:

1. **A NumPy core** (the ``_np_*`` functions): ndarrays in, ndarrays out. This is the port's own code; it knows
   nothing about torch or detspec.
2. **A thin adapter** (the public functions): it validates the arguments the way the contract asks (same
   exception types, messages naming the argument), converts torch tensors to ndarrays at the boundary
   (``t.detach().cpu().numpy()``) and converts the result back on the caller's device and in the caller's
   dtype (``torch.from_numpy(...).to(device)``).

Implemented: pairwise_iou, box_area, clip_boxes, nonempty, encode_boxes, decode_boxes, cell_anchors, nms.
Deliberately left out: grid_anchors, match, iou_match, subsample_labels, batched_nms. The suite reports the
clauses that need them as "not implemented" instead of failing.

Run the suite from this folder::

    detspec check --impl numpy_port          # the module itself
    detspec check --impl numpy_port:impl     # the `impl` namespace below

Conventions (the spec's): boxes are XYXY in absolute pixels, width = x2 - x1 with no "+1"; decode takes
class-interleaved [N, 4K] deltas; kept NMS indices are int64 in descending score order.

This file deliberately imports nothing from detspec (a real port would not have ``spec.validate``); the
validation below is written out by hand.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from types import SimpleNamespace

import numpy as np
import torch
from torch import Tensor

# detectron2 modeling/box_regression.py: _DEFAULT_SCALE_CLAMP = log(1000 / 16). dw and dh are clamped from above.
DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)

__all__ = ["pairwise_iou", "box_area", "clip_boxes", "nonempty", "encode_boxes", "decode_boxes", "cell_anchors",
           "nms", "impl", "DEFAULT_SCALE_CLAMP"]


# ================================================================================================ NumPy core
# ndarrays in, ndarrays out. Float arrays keep their dtype: every scalar is cast to the array's dtype first, so a
# float32 input is computed in float32 (as detectron2 does in torch), independent of NumPy's casting rules.


def _np_box_area(boxes: np.ndarray) -> np.ndarray:
    """[N, 4] -> [N]: (x2 - x1) * (y2 - y1)."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _np_pairwise_iou(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """[N, 4] x [M, 4] -> [N, M] IoU in the inputs' common dtype. No +1; exactly 0 where boxes do not overlap."""
    dtype = np.result_type(boxes1.dtype, boxes2.dtype)
    b1, b2 = boxes1.astype(dtype, copy=False), boxes2.astype(dtype, copy=False)
    zero = dtype.type(0)
    area1, area2 = _np_box_area(b1), _np_box_area(b2)
    left = np.maximum(b1[:, None, 0], b2[None, :, 0])
    top = np.maximum(b1[:, None, 1], b2[None, :, 1])
    right = np.minimum(b1[:, None, 2], b2[None, :, 2])
    bottom = np.minimum(b1[:, None, 3], b2[None, :, 3])
    inter = np.maximum(right - left, zero) * np.maximum(bottom - top, zero)  # [N, M]
    union = area1[:, None] + area2[None, :] - inter
    iou = np.zeros_like(inter)
    overlapping = inter > 0  # touching edges and 0/0 (two identical empty boxes) stay exactly 0
    iou[overlapping] = inter[overlapping] / union[overlapping]
    return iou


def _np_clip_boxes(boxes: np.ndarray, height: float, width: float) -> np.ndarray:
    """Clamp x to [0, width] and y to [0, height]."""
    t = boxes.dtype.type
    out = np.empty_like(boxes)
    out[:, 0::2] = np.minimum(np.maximum(boxes[:, 0::2], t(0)), t(width))
    out[:, 1::2] = np.minimum(np.maximum(boxes[:, 1::2], t(0)), t(height))
    return out


def _np_nonempty(boxes: np.ndarray, threshold: float) -> np.ndarray:
    """bool [N]: width > threshold and height > threshold (strict)."""
    t = boxes.dtype.type(threshold)
    return ((boxes[:, 2] - boxes[:, 0]) > t) & ((boxes[:, 3] - boxes[:, 1]) > t)


def _np_encode_boxes(src: np.ndarray, target: np.ndarray, weights: tuple[float, float, float, float]) -> np.ndarray:
    """[N, 4], [N, 4] -> [N, 4] deltas (dx, dy, dw, dh) taking src to target."""
    dtype = np.result_type(src.dtype, target.dtype)
    src, target = src.astype(dtype, copy=False), target.astype(dtype, copy=False)
    t = dtype.type
    wx, wy, ww, wh = (t(w) for w in weights)
    half = t(0.5)
    src_w, src_h = src[:, 2] - src[:, 0], src[:, 3] - src[:, 1]
    src_cx, src_cy = src[:, 0] + half * src_w, src[:, 1] + half * src_h
    tgt_w, tgt_h = target[:, 2] - target[:, 0], target[:, 3] - target[:, 1]
    tgt_cx, tgt_cy = target[:, 0] + half * tgt_w, target[:, 1] + half * tgt_h
    with np.errstate(divide="ignore"):  # a zero-size target gives dw or dh = -inf, as the spec says
        dx = wx * (tgt_cx - src_cx) / src_w
        dy = wy * (tgt_cy - src_cy) / src_h
        dw = ww * np.log(tgt_w / src_w)
        dh = wh * np.log(tgt_h / src_h)
    return np.stack([dx, dy, dw, dh], axis=1)


def _np_decode_boxes(deltas: np.ndarray, boxes: np.ndarray, weights: tuple[float, float, float, float],
                     scale_clamp: float) -> np.ndarray:
    """[N, 4K] class-interleaved deltas applied to [N, 4] boxes -> [N, 4K]; dw, dh clamped from above only."""
    dtype = np.result_type(deltas.dtype, boxes.dtype)
    deltas, boxes = deltas.astype(dtype, copy=False), boxes.astype(dtype, copy=False)
    t = dtype.type
    wx, wy, ww, wh = (t(w) for w in weights)
    half = t(0.5)
    n, k = deltas.shape[0], deltas.shape[1] // 4
    d = deltas.reshape(n, k, 4)  # [N, K, 4]: columns 4c..4c+3 are class c
    widths = (boxes[:, 2] - boxes[:, 0])[:, None]  # [N, 1]
    heights = (boxes[:, 3] - boxes[:, 1])[:, None]
    ctr_x = boxes[:, 0][:, None] + half * widths
    ctr_y = boxes[:, 1][:, None] + half * heights
    dx = d[:, :, 0] / wx  # dx, dy are not clamped
    dy = d[:, :, 1] / wy
    dw = np.minimum(d[:, :, 2] / ww, t(scale_clamp))  # from above only: large negative dw shrink freely
    dh = np.minimum(d[:, :, 3] / wh, t(scale_clamp))
    pred_cx = dx * widths + ctr_x
    pred_cy = dy * heights + ctr_y
    pred_w = np.exp(dw) * widths
    pred_h = np.exp(dh) * heights
    out = np.stack([pred_cx - half * pred_w, pred_cy - half * pred_h,
                    pred_cx + half * pred_w, pred_cy + half * pred_h], axis=2)  # [N, K, 4]
    return out.reshape(n, 4 * k)


def _np_cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float], round_to_int: bool,
                     dtype: np.dtype) -> np.ndarray:
    """[len(sizes) * len(aspect_ratios), 4] anchors centred at 0, size-major then ratio.

    Size s and ratio a = h / w: area = s^2, w = sqrt(s^2 / a), h = a * w. Computed in Python floats (float64)
    and cast once to `dtype`; round_to_int then rounds the corners half to even (torchvision's profile).
    """
    rows = []
    for size in sizes:
        area = float(size) ** 2
        for ratio in aspect_ratios:
            w = math.sqrt(area / float(ratio))
            h = float(ratio) * w
            rows.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
    anchors = np.array(rows, dtype=dtype).reshape(-1, 4)
    return np.round(anchors) if round_to_int else anchors


def _np_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS -> kept indices int64 in descending score order.

    Boxes are visited by descending score (a stable sort: equal scores in index order). A box is suppressed by a
    kept box when their IoU, computed in the boxes' dtype, is strictly greater than the threshold; the comparison
    is made in float64, so a float32 IoU of 0.300000012 exceeds 0.3.
    """
    order = np.argsort(-scores, kind="stable")  # negation is exact, so this is a stable descending sort
    suppressed = np.zeros(boxes.shape[0], dtype=bool)
    keep: list[int] = []
    for i in order.tolist():
        if suppressed[i]:
            continue
        keep.append(i)
        iou = _np_pairwise_iou(boxes[i : i + 1], boxes)[0]  # [N], in the boxes' dtype
        suppressed |= iou.astype(np.float64) > float(iou_threshold)
    return np.asarray(keep, dtype=np.int64)


# ================================================================================================ adapter
# torch <-> NumPy at the boundary, plus the contract's input validation. Errors name the argument: TypeError for
# a wrong type or dtype, ValueError for a wrong shape, NaN/inf, a negative width or height, or a bad number.


def _to_numpy(t: Tensor) -> np.ndarray:
    """A tensor's values as an ndarray (on the host). NumPy has no bfloat16: it is widened to float32."""
    t = t.detach()
    if t.dtype == torch.bfloat16:
        t = t.to(torch.float32)
    return t.cpu().numpy()


def _to_torch(a: np.ndarray, like: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """An ndarray back as a tensor on `like`'s device, in `dtype` (default: `like`'s dtype for float results)."""
    out = torch.from_numpy(np.ascontiguousarray(a))
    if dtype is None and out.is_floating_point():
        dtype = like.dtype
    return out.to(device=like.device, dtype=dtype)


def _promoted(a: Tensor, b: Tensor) -> torch.dtype:
    return torch.promote_types(a.dtype, b.dtype)


def _tensor(t: object, name: str) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    return t


def _float_tensor(t: object, name: str) -> Tensor:
    t = _tensor(t, name)
    if not t.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype, got {t.dtype}")
    return t


def _finite(a: np.ndarray, name: str) -> None:
    bad = ~np.isfinite(a)
    if bad.any():
        raise ValueError(f"{name} contains NaN or inf (first at index {np.argwhere(bad)[0].tolist()})")


def _boxes(t: object, name: str, *, finite: bool = True, ordered: bool = True) -> np.ndarray:
    """Validate a float [N, 4] box tensor and return its values as an ndarray."""
    t = _float_tensor(t, name)
    if t.dim() != 2 or t.shape[1] != 4:
        raise ValueError(f"{name} must have shape [N, 4], got {list(t.shape)}")
    a = _to_numpy(t)
    if finite:
        _finite(a, name)
    if ordered and a.size:
        negative = (a[:, 2] < a[:, 0]) | (a[:, 3] < a[:, 1])
        if negative.any():
            i = int(np.flatnonzero(negative)[0])
            raise ValueError(f"{name} has a negative width or height at row {i}: {a[i].tolist()} "
                             "(expected XYXY with x2 >= x1 and y2 >= y1)")
    return a


def _same_device(name_a: str, a: Tensor, name_b: str, b: Tensor) -> None:
    if a.device != b.device:
        raise ValueError(f"{name_a} is on {a.device} but {name_b} is on {b.device}")


def _number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):  # int, float and NumPy scalars
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    return float(value)


def _weights(weights: object) -> tuple[float, float, float, float]:
    try:
        w = tuple(float(x) for x in weights)  # type: ignore[union-attr]
    except (TypeError, ValueError) as exc:
        raise TypeError(f"weights must be 4 positive numbers (wx, wy, ww, wh), got {weights!r}") from exc
    if len(w) != 4 or not all(x > 0 for x in w):  # `x > 0` is False for NaN too
        raise ValueError(f"weights must be 4 positive numbers (wx, wy, ww, wh), got {weights!r}")
    return w  # type: ignore[return-value]


def box_area(boxes: Tensor) -> Tensor:
    """[N, 4] -> [N]: (x2 - x1) * (y2 - y1)."""
    a = _boxes(boxes, "boxes", finite=False, ordered=False)
    return _to_torch(_np_box_area(a), boxes)


def pairwise_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """[N, 4] x [M, 4] -> [N, M] IoU, in the promoted dtype of the inputs."""
    a = _boxes(boxes1, "boxes1")
    b = _boxes(boxes2, "boxes2")
    _same_device("boxes1", boxes1, "boxes2", boxes2)
    return _to_torch(_np_pairwise_iou(a, b), boxes1, _promoted(boxes1, boxes2))


def clip_boxes(boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
    """[N, 4] with x clamped to [0, w] and y to [0, h]; image_size = (h, w). NaN/inf boxes are an error."""
    a = _boxes(boxes, "boxes", ordered=False)
    if not isinstance(image_size, Sequence) or len(image_size) != 2:
        raise ValueError(f"image_size must be (height, width), got {image_size!r}")
    h, w = (_number(s, "image_size") for s in image_size)
    if not (h >= 0 and w >= 0):
        raise ValueError(f"image_size must be non-negative, got {image_size!r}")
    return _to_torch(_np_clip_boxes(a, h, w), boxes)


def nonempty(boxes: Tensor, threshold: float = 0.0) -> Tensor:
    """bool [N]: width > threshold and height > threshold (strict)."""
    a = _boxes(boxes, "boxes", finite=False, ordered=False)
    return _to_torch(_np_nonempty(a, _number(threshold, "threshold")), boxes)


def encode_boxes(src: Tensor, target: Tensor, weights: Sequence[float]) -> Tensor:
    """[N, 4], [N, 4] -> [N, 4] deltas (dx, dy, dw, dh). Every src box needs a positive width and height."""
    w = _weights(weights)
    s = _boxes(src, "src")
    g = _boxes(target, "target")
    if s.shape != g.shape:
        raise ValueError(f"src and target must have the same shape, got {list(s.shape)} and {list(g.shape)}")
    _same_device("src", src, "target", target)
    if s.size and not (((s[:, 2] - s[:, 0]) > 0) & ((s[:, 3] - s[:, 1]) > 0)).all():
        raise ValueError("src boxes must have positive width and height (got a zero-size src box)")
    return _to_torch(_np_encode_boxes(s, g, w), src, _promoted(src, target))


def decode_boxes(deltas: Tensor, boxes: Tensor, weights: Sequence[float],
                 scale_clamp: float = DEFAULT_SCALE_CLAMP) -> Tensor:
    """[N, 4K] class-interleaved deltas applied to [N, 4] boxes -> [N, 4K]; dw, dh clamped from above only."""
    w = _weights(weights)
    clamp = _number(scale_clamp, "scale_clamp")
    _float_tensor(deltas, "deltas")
    if deltas.dim() != 2 or deltas.shape[1] % 4 != 0:
        raise ValueError(f"deltas must have shape [N, 4K], got {list(deltas.shape)}")
    b = _boxes(boxes, "boxes")
    if deltas.shape[0] != b.shape[0]:
        raise ValueError(f"deltas has {deltas.shape[0]} rows but boxes has {b.shape[0]}")
    _same_device("deltas", deltas, "boxes", boxes)
    return _to_torch(_np_decode_boxes(_to_numpy(deltas), b, w, clamp), boxes, _promoted(deltas, boxes))


def cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float], round_to_int: bool = False,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
    """[len(sizes) * len(aspect_ratios), 4] anchors centred at 0, size-major then ratio order."""
    sizes = [_number(s, "sizes") for s in sizes]
    ratios = [_number(r, "aspect_ratios") for r in aspect_ratios]
    if not sizes or not ratios:
        raise ValueError("sizes and aspect_ratios must be non-empty")
    for s in sizes:
        if not s > 0:  # also rejects NaN
            raise ValueError(f"anchor sizes must be positive, got {s}")
    for r in ratios:
        if not r > 0:
            raise ValueError(f"aspect ratios must be positive, got {r}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    # NumPy has float64/32/16; bfloat16 anchors are made in float32 and then narrowed (a second rounding).
    np_dtype = {torch.float64: np.float64, torch.float16: np.float16}.get(dtype, np.float32)
    anchors = _np_cell_anchors(sizes, ratios, bool(round_to_int), np.dtype(np_dtype))
    return torch.from_numpy(anchors).to(device=device, dtype=dtype)


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """[N, 4], [N] -> kept indices int64 in descending score order; suppress when IoU > iou_threshold."""
    b = _boxes(boxes, "boxes")
    _float_tensor(scores, "scores")
    if scores.dim() != 1 or scores.shape[0] != b.shape[0]:
        raise ValueError(f"scores must have shape [{b.shape[0]}], got {list(scores.shape)}")
    s = _to_numpy(scores)
    _finite(s, "scores")
    _same_device("boxes", boxes, "scores", scores)
    thr = _number(iou_threshold, "iou_threshold")
    if not 0.0 <= thr <= 1.0:
        raise ValueError(f"iou_threshold must be in [0.0, 1.0], got {thr}")
    return _to_torch(_np_nms(b, s, thr), boxes, torch.int64)


# The same functions as one object, for `--impl numpy_port:impl`. A port class instance works the same way.
impl = SimpleNamespace(
    pairwise_iou=pairwise_iou,
    box_area=box_area,
    clip_boxes=clip_boxes,
    nonempty=nonempty,
    encode_boxes=encode_boxes,
    decode_boxes=decode_boxes,
    cell_anchors=cell_anchors,
    nms=nms,
)
