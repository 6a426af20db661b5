"""Proposal selection: from every anchor's decoded box and objectness logit to at most 1000 boxes per image.

Spec: seed RPN part 5; d2-spec §2.9; detectron2 modeling/proposal_generator/proposal_utils.py
(find_top_rpn_proposals).

Shape legend: N images; L levels (P2..P6); P_i = Hi * Wi * A candidates of level i (decoded anchors);
K kept proposals of an image. Boxes are XYXY in absolute input pixels; logits are raw (no sigmoid).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from reference.boxes import clip_boxes, nonempty
from reference.nms import batched_nms
from spec import validate as v
from spec.config import BASE_RCNN_FPN

_RPN = BASE_RCNN_FPN.rpn

DIVERGED = "Predicted boxes or scores contain Inf/NaN. Training has diverged."


def select_proposals(proposals: Sequence[Tensor], logits: Sequence[Tensor], image_sizes: Sequence[tuple[int, int]],
                     nms_thresh: float = _RPN.nms_thresh, pre_nms_topk: int = _RPN.pre_nms_topk_test,
                     post_nms_topk: int = _RPN.post_nms_topk_test, min_box_size: float = _RPN.min_box_size,
                     training: bool = False) -> list[tuple[Tensor, Tensor]]:
    """proposals: L x [N, P_i, 4]; logits: L x [N, P_i]; image_sizes: N unpadded (h, w).

    Returns one (boxes [K, 4], logits [K]) pair per image, K <= post_nms_topk, sorted by logit descending.
    For each image:
    1. per level, the top k_i = min(P_i, pre_nms_topk) candidates by raw logit, sorted
       descending, each remembering its level id.                                       # PROPOSAL.PRE_NMS_TOPK
    2. the levels are concatenated in order P2..P6.
    3. candidates whose box or logit is not finite are dropped; in training they raise
       FloatingPointError instead.                                                      # PROPOSAL.NONFINITE
    4. boxes are clipped to the unpadded (h, w), and boxes with width or height <= min_box_size
       are removed (before NMS).                                                        # PROPOSAL.CLIP_FILTER
    5. batched NMS at nms_thresh with the level id as the group: levels do not
       suppress each other.                                                             # PROPOSAL.NMS_PER_LEVEL
    6. the first post_nms_topk of the NMS result (sorted by logit), logits returned raw. # PROPOSAL.POST_NMS_TOPK
    """
    num_images = v.check_select_args(proposals, logits, image_sizes, nms_thresh, pre_nms_topk, post_nms_topk)
    results = []
    for n in range(num_images):
        # steps 1-2: per-level top-k, concatenated, with level ids
        cand_boxes, cand_logits, cand_levels = [], [], []
        for level, (level_boxes, level_logits) in enumerate(zip(proposals, logits)):
            k = min(level_logits.shape[1], pre_nms_topk)
            top_logits, top_idx = level_logits[n].topk(k)  # sorted descending (NaN counts as largest)
            cand_boxes.append(level_boxes[n][top_idx])
            cand_logits.append(top_logits)
            cand_levels.append(torch.full((k,), level, dtype=torch.int64, device=top_logits.device))
        boxes = torch.cat(cand_boxes)  # [sum k_i, 4]
        scores = torch.cat(cand_logits)  # [sum k_i]
        levels = torch.cat(cand_levels)  # [sum k_i]

        # step 3: non-finite candidates
        finite = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)
        if not bool(finite.all()):
            if training:
                raise FloatingPointError(DIVERGED)
            boxes, scores, levels = boxes[finite], scores[finite], levels[finite]

        # step 4: clip to the unpadded image, then drop empty boxes
        boxes = clip_boxes(boxes, image_sizes[n])
        keep = nonempty(boxes, min_box_size)
        boxes, scores, levels = boxes[keep], scores[keep], levels[keep]

        # steps 5-6: NMS per level, then the best post_nms_topk
        keep = batched_nms(boxes, scores, levels, nms_thresh)[:post_nms_topk]
        results.append((boxes[keep], scores[keep]))
    return results


