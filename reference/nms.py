"""Non-maximum suppression, plain and per group ("batched").

Spec: d2-spec §2.14; torchvision ops nms / batched_nms, which detectron2 calls.

Shape legend: N boxes. Greedy: visit boxes by descending score; keep a box unless a kept, higher-scored box
overlaps it with IoU > threshold (strictly). IoU is computed in the boxes' dtype and compared with the
threshold as a real number (in float64), as torchvision's CPU kernel does: a float32 IoU of 0.300000012
exceeds 0.3. Equal scores are visited in index order (a stable sort); the
spec leaves that order open, so conformance tests avoid exact score ties.
"""

from __future__ import annotations

import torch
from torch import Tensor

from reference.boxes import pairwise_iou
from spec import validate as v


def _check(boxes: Tensor, scores: Tensor, iou_threshold: float) -> None:
    v.check_boxes(boxes, "boxes")
    v.check_vector(scores, "scores", boxes.shape[0], floating=True, finite=True)
    v.check_same_device("boxes", boxes, "scores", scores)
    v.check_threshold(iou_threshold, "iou_threshold")


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """[N, 4], [N] -> kept indices int64 in descending score order.  # NMS.STRICT NMS.ORDER NMS.GREEDY"""
    _check(boxes, scores, iou_threshold)
    order = torch.sort(scores, descending=True, stable=True).indices
    suppressed = torch.zeros(boxes.shape[0], dtype=torch.bool)
    keep = []
    for i in order.tolist():
        if suppressed[i]:
            continue
        keep.append(i)
        iou = pairwise_iou(boxes[i : i + 1], boxes)[0]  # [N]: box i against all
        suppressed |= (iou.double() > iou_threshold).cpu()  # strictly greater, compared in float64
    return torch.tensor(keep, dtype=torch.int64, device=boxes.device)


def batched_nms(boxes: Tensor, scores: Tensor, groups: Tensor, iou_threshold: float) -> Tensor:
    """NMS independently within each group id; kept indices merged by descending score.  # NMS.BATCHED"""
    _check(boxes, scores, iou_threshold)
    v.check_vector(groups, "groups", boxes.shape[0], floating=False)
    kept = []
    for g in torch.unique(groups).tolist():
        members = (groups == g).nonzero().flatten()
        kept.append(members[nms(boxes[members], scores[members], iou_threshold)])
    if not kept:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    keep = torch.cat(kept)
    order = torch.sort(scores[keep], descending=True, stable=True).indices
    return keep[order]
