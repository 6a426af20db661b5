"""The matcher, vectorized, plus a fused, chunked IoU + match that never holds the [G, P] matrix.

Same contract as reference/matcher.py (d2-spec §2.5). Labels come from one ``bucketize`` over the
half-open intervals; low-quality ties are found without a loop over GT.

``iou_match`` is the RPN's anchor labelling in bounded memory: IoU is computed chunk by chunk over the
predictions (at most ``chunk_elems`` values alive at once, in the boxes' dtype: no float64 [G, P] blow-up).
Pass 1 keeps each prediction's best GT and each GT's best IoU. Pass 2 looks for exact ties only among the
predictions that can hold one: a prediction ties GT g only if its own best >= g's best, so only those whose
best reaches the smallest per-GT best are recomputed (usually a few per cent). IoU uses the same IEEE
operations as the spec formula, so the recomputed values equal pass 1's bit for bit.

Shape legend: G ground-truth boxes, P predictions, C predictions per chunk.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from fast.boxes import iou_planes
from spec import validate as v
from spec.config import BASE_RCNN_FPN

_RPN = BASE_RCNN_FPN.rpn
CHUNK_ELEMS = 1 << 18  # IoU values alive per chunk: 1 MiB in float32, sized for L2 caches


def _labels_from_quality(best: Tensor, th: list[float], lb: list[int]) -> Tensor:
    """labels[i] for the half-open interval [t_{i-1}, t_i) that holds each best quality."""
    bounds = torch.tensor(th, dtype=best.dtype, device=best.device)
    bucket = torch.bucketize(best, bounds, right=True)  # i such that bounds[i-1] <= x < bounds[i]
    return torch.tensor(lb, dtype=torch.int8, device=best.device)[bucket]


def _empty(num_pred: int, lb: list[int], device: torch.device) -> tuple[Tensor, Tensor]:
    return (torch.zeros(num_pred, dtype=torch.int64, device=device),
            torch.full((num_pred,), lb[0], dtype=torch.int8, device=device))


def match(quality: Tensor, thresholds: Sequence[float] = _RPN.iou_thresholds,
          labels: Sequence[int] = _RPN.iou_labels,
          allow_low_quality_matches: bool = _RPN.allow_low_quality_matches) -> tuple[Tensor, Tensor]:
    """quality [G, P] -> (matched GT index int64 [P], label int8 [P])."""
    th, lb = v.check_match_args(thresholds, labels)
    v.check_quality(quality)
    if quality.shape[0] == 0 or quality.shape[1] == 0:
        return _empty(quality.shape[1], lb, quality.device)
    best, matches = quality.max(dim=0)  # [P]
    out = _labels_from_quality(best, th, lb)
    if allow_low_quality_matches:
        gt_best = quality.amax(dim=1, keepdim=True)  # [G, 1]
        out.masked_fill_((quality == gt_best).any(dim=0), 1)
    return matches, out


def iou_match(gt_boxes: Tensor, boxes: Tensor, thresholds: Sequence[float] = _RPN.iou_thresholds,
              labels: Sequence[int] = _RPN.iou_labels,
              allow_low_quality_matches: bool = _RPN.allow_low_quality_matches,
              chunk_elems: int = CHUNK_ELEMS) -> tuple[Tensor, Tensor]:
    """match(pairwise_iou(gt_boxes [G, 4], boxes [P, 4]), ...) in O(chunk_elems + G + P) memory."""
    th, lb = v.check_match_args(thresholds, labels)
    v.check_boxes(gt_boxes, "gt_boxes")
    v.check_boxes(boxes, "boxes")
    v.check_same_device("gt_boxes", gt_boxes, "boxes", boxes)
    if chunk_elems < 1:
        raise ValueError(f"chunk_elems must be >= 1, got {chunk_elems}")
    num_gt, num_pred = gt_boxes.shape[0], boxes.shape[0]
    if num_gt == 0 or num_pred == 0:
        return _empty(num_pred, lb, boxes.device)

    dtype = torch.promote_types(gt_boxes.dtype, boxes.dtype)
    g = gt_boxes.to(dtype).t().contiguous()  # [4, G] coordinate planes
    g_area = (g[2] - g[0]) * (g[3] - g[1])  # [G]
    a = boxes.to(dtype).t().contiguous()  # [4, P]
    a_area = (a[2] - a[0]) * (a[3] - a[1])  # [P]
    gcol = [g[i][:, None] for i in range(4)] + [g_area[:, None]]  # five [G, 1] planes

    chunk = max(1, min(num_pred, chunk_elems // num_gt))
    best = torch.empty(num_pred, dtype=dtype, device=boxes.device)
    matches = torch.empty(num_pred, dtype=torch.int64, device=boxes.device)
    gt_best = torch.full((num_gt,), float("-inf"), dtype=dtype, device=boxes.device)
    for s in range(0, num_pred, chunk):  # a loop over chunks of predictions, not over boxes
        e = min(s + chunk, num_pred)
        iou = iou_planes(*gcol, a[0, None, s:e], a[1, None, s:e], a[2, None, s:e], a[3, None, s:e],
                         a_area[None, s:e])  # [G, C]
        torch.max(iou, dim=0, out=(best[s:e], matches[s:e]))
        torch.maximum(gt_best, iou.amax(dim=1), out=gt_best)
    out = _labels_from_quality(best, th, lb)
    if allow_low_quality_matches:
        _mark_low_quality(out, best, gt_best, gcol, a, a_area, chunk)
    return matches, out


def _mark_low_quality(out: Tensor, best: Tensor, gt_best: Tensor, gcol: list[Tensor], a: Tensor, a_area: Tensor,
                      chunk: int) -> None:
    """Label 1 every prediction whose IoU with some GT equals that GT's best (d2-spec §2.5)."""
    candidates = (best >= gt_best.min()).nonzero().flatten()  # the only predictions that can tie a GT's best
    for s in range(0, candidates.numel(), chunk):  # chunks of candidates, bounded memory
        idx = candidates[s : s + chunk]
        iou = iou_planes(*gcol, a[0][idx][None], a[1][idx][None], a[2][idx][None], a[3][idx][None],
                         a_area[idx][None])  # [G, C']
        tie = (iou == gt_best[:, None]).any(dim=0)  # exact equality, as the spec requires
        out[idx[tie]] = 1
