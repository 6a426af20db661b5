"""The matcher: assign each prediction to a GT and label it foreground (1), background (0) or ignored (-1).

Spec: seed RPN part 3; d2-spec §2.5; detectron2 modeling/matcher.py (Faster R-CNN paper §3.1.2 for the
low-quality rule).

Shape legend: G ground-truth boxes (rows), P predictions (columns, anchors or proposals).
Thresholds t1 <= ... <= tn extend to [-inf, t1, ..., tn, +inf]; labels[i] applies to the half-open interval
[low_i, high_i). RPN: thresholds (0.3, 0.7), labels (0, -1, 1). ROI heads: (0.5,), labels (0, 1).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from reference.boxes import pairwise_iou
from spec import validate as v
from spec.config import BASE_RCNN_FPN

_RPN = BASE_RCNN_FPN.rpn


def match(quality: Tensor, thresholds: Sequence[float] = _RPN.iou_thresholds,
          labels: Sequence[int] = _RPN.iou_labels,
          allow_low_quality_matches: bool = _RPN.allow_low_quality_matches) -> tuple[Tensor, Tensor]:
    """quality [G, P] (entries >= 0) -> (matched GT index int64 [P], label int8 [P]).

    1. Each prediction takes the GT of highest quality (first index among equal values).  # MATCH.ARGMAX
    2. Its label is labels[i] for the interval [low_i, high_i) holding that quality,
       compared in the quality tensor's dtype (as detectron2's tensor >= float does).    # MATCH.HALF_OPEN
    3. allow_low_quality_matches: for every GT, each prediction whose quality with that GT exactly equals
       the GT's best quality is labelled 1; its matched index is left unchanged.          # MATCH.LOW_QUALITY
    Empty GT or empty predictions: index 0 and labels[0] for every prediction.            # MATCH.EMPTY
    """
    th, lb = v.check_match_args(thresholds, labels)
    v.check_quality(quality)
    num_gt, num_pred = quality.shape
    device = quality.device
    if num_gt == 0 or num_pred == 0:
        matches = torch.zeros(num_pred, dtype=torch.int64, device=device)
        match_labels = torch.full((num_pred,), lb[0], dtype=torch.int8, device=device)
        return matches, match_labels

    # step 1: best GT of each prediction
    best_quality, matches = quality.max(dim=0)  # [P], [P]

    # step 2: label by half-open interval [low, high)
    bounds = [float("-inf")] + th + [float("inf")]
    match_labels = torch.empty(num_pred, dtype=torch.int8, device=device)
    for label, low, high in zip(lb, bounds[:-1], bounds[1:]):
        inside = (best_quality >= low) & (best_quality < high)
        match_labels[inside] = label

    # step 3: every prediction that (exactly) ties some GT's best quality becomes foreground
    if allow_low_quality_matches:
        for g in range(num_gt):
            gt_best = quality[g].max()
            ties = quality[g] == gt_best
            match_labels[ties] = 1  # the matched index stays the argmax GT of step 1
    return matches, match_labels


def iou_match(gt_boxes: Tensor, boxes: Tensor, thresholds: Sequence[float] = _RPN.iou_thresholds,
              labels: Sequence[int] = _RPN.iou_labels,
              allow_low_quality_matches: bool = _RPN.allow_low_quality_matches) -> tuple[Tensor, Tensor]:
    """match(pairwise_iou(gt_boxes [G, 4], boxes [P, 4]), ...): the RPN's anchor labelling.  # MATCH.FUSED_IOU"""
    v.check_boxes(gt_boxes, "gt_boxes")
    v.check_boxes(boxes, "boxes")
    return match(pairwise_iou(gt_boxes, boxes), thresholds, labels, allow_low_quality_matches)
