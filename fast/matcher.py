"""The matcher, vectorized, plus a fused, chunked IoU + match that never holds the [G, P] matrix.

Same contract as reference/matcher.py (d2-spec §2.5). Labels come from one ``bucketize`` over the
half-open intervals; low-quality ties are found without a loop over GT.

``iou_match`` is the RPN's anchor labelling in bounded memory: IoU is computed chunk by chunk over the
predictions (at most ``chunk_elems`` values alive at once, in the boxes' dtype: no float64 [G, P] blow-up),
and within a chunk only for the GT that meet the chunk's bounding box (grid anchors come in spatial order,
so a chunk is a band of the image and most GT are skipped).
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
    best = torch.zeros(num_pred, dtype=dtype, device=boxes.device)
    matches = torch.zeros(num_pred, dtype=torch.int64, device=boxes.device)
    gt_best = torch.zeros(num_gt, dtype=dtype, device=boxes.device)  # every GT has IoU >= 0 with something
    for s, e, rows in _active_rows(g, a, chunk):  # a loop over chunks of predictions, not over boxes
        # Only GT rows whose box meets the chunk's bounding box can overlap its predictions; the others have
        # IoU exactly 0 there. Where a prediction's best IoU is 0 its match is GT 0 (the first of equal
        # maxima over all GT); where it is > 0, the first maximum among the active rows is the first overall.
        sub = gcol if rows is None else [p[rows] for p in gcol]
        iou = iou_planes(*sub, a[0, None, s:e], a[1, None, s:e], a[2, None, s:e], a[3, None, s:e],
                         a_area[None, s:e])  # [G', C]
        value, index = iou.max(dim=0)
        best[s:e] = value
        if rows is None:
            matches[s:e] = index
        else:
            matches[s:e] = torch.where(value > 0, rows[index], 0)
        row_best = iou.amax(dim=1)
        if rows is None:
            torch.maximum(gt_best, row_best, out=gt_best)
        else:
            gt_best[rows] = torch.maximum(gt_best[rows], row_best)
    out = _labels_from_quality(best, th, lb)
    if allow_low_quality_matches:
        _mark_low_quality(out, best, gt_best, gcol, a, a_area, chunk)
    return matches, out


def _active_rows(g: Tensor, a: Tensor, chunk: int):
    """Yield (start, end, rows) per chunk of predictions; rows = GT indices meeting the chunk's bounding box.

    rows is None when every GT is active (no gather needed); chunks that no GT meets are skipped (their best
    IoU is 0 and their match GT 0, the initial values). One host sync for the whole table.
    """
    num_pred = a.shape[1]
    starts = torch.arange(0, num_pred, chunk, device=a.device)
    ends = (starts + chunk).clamp_(max=num_pred)
    # per-chunk extents: [chunks] each (a segmented min/max over the contiguous chunks)
    pad = starts.numel() * chunk - num_pred
    lo = torch.nn.functional.pad(a[:2], (0, pad), value=float("inf")).reshape(2, -1, chunk).amin(dim=2)
    hi = torch.nn.functional.pad(a[2:4], (0, pad), value=float("-inf")).reshape(2, -1, chunk).amax(dim=2)
    meets = ((g[0][None, :] < hi[0][:, None]) & (g[2][None, :] > lo[0][:, None])
             & (g[1][None, :] < hi[1][:, None]) & (g[3][None, :] > lo[1][:, None]))  # [chunks, G]
    num_gt = g.shape[1]
    counts = meets.sum(dim=1).tolist()
    for c, (s, e) in enumerate(zip(starts.tolist(), ends.tolist())):
        if counts[c] == 0:
            continue
        yield s, e, (None if counts[c] == num_gt else meets[c].nonzero().flatten())


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
