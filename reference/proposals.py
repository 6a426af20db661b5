"""Proposal selection: from every anchor's decoded box and objectness logit to at most 1000 boxes per image.

Spec: seed RPN part 4; d2-spec §2.9; detectron2 modeling/proposal_generator/proposal_utils.py
(find_top_rpn_proposals).

Shape legend: N images; L levels (P2..P6); P_i = Hi * Wi * A candidates of level i (decoded anchors);
K kept proposals of an image. Boxes are XYXY in absolute input pixels; logits are raw (no sigmoid).

Two ranking rules (RPNConfig.rank_by). "logit" (detectron2): NMS and the kept order use the raw logit.
"sigmoid" (the torchvision profile; tv:rpn.py filter_proposals): they use p = sigmoid(logit) in the logit's
dtype, as torchvision does. In float32, p is exactly 1.0 for every logit above ~16.6, so a confident RPN
produces many ties, and the order of tied proposals decides which ones survive the post-NMS cut. Tied p are
ordered as torchvision's batched_nms orders them on CPU (clause PROPOSAL.TORCHVISION_RANKING):
- up to TV_BATCHED_NMS_LOOP_ABOVE candidates: by candidate index, i.e. (level, rank in the level's top-k);
- above it: the kept candidates, taken in candidate-index order, are sorted by p with
  torch.sort(descending=True, stable=False) on CPU (libstdc++ std::sort, not stable): the permutation that
  sort gives for that exact array, the one torchvision computes.
Inside a level the candidates arrive sorted by logit (top-k), sigmoid is monotone, and torchvision's CPU NMS
visits tied scores in index order, so each level's NMS keeps the same boxes under both rules; only the
merge across levels (and so the post-NMS cut) differs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from reference.boxes import clip_boxes, nonempty
from reference.nms import batched_nms
from spec import validate as v
from spec.config import BASE_RCNN_FPN, TV_BATCHED_NMS_LOOP_ABOVE

_RPN = BASE_RCNN_FPN.rpn

DIVERGED = "Predicted boxes or scores contain Inf/NaN. Training has diverged."
RANK_BY = ("logit", "sigmoid")


def select_proposals(proposals: Sequence[Tensor], logits: Sequence[Tensor], image_sizes: Sequence[tuple[int, int]],
                     nms_thresh: float = _RPN.nms_thresh, pre_nms_topk: int = _RPN.pre_nms_topk_test,
                     post_nms_topk: int = _RPN.post_nms_topk_test, min_box_size: float = _RPN.min_box_size,
                     training: bool = False, *, rank_by: str = _RPN.rank_by,
                     score_thresh: float | None = _RPN.score_thresh) -> list[tuple[Tensor, Tensor]]:
    """proposals: L x [N, P_i, 4]; logits: L x [N, P_i]; image_sizes: N unpadded (h, w).

    Returns one (boxes [K, 4], logits [K]) pair per image, K <= post_nms_topk, sorted by the ranking score
    descending (the logit, or sigmoid(logit) with rank_by="sigmoid"); logits are returned raw either way.
    For each image:
    1. per level, the top k_i = min(P_i, pre_nms_topk) candidates by raw logit, sorted
       descending, each remembering its level id.                                       # PROPOSAL.PRE_NMS_TOPK
    2. the levels are concatenated in order P2..P6. The ranking score is the logit, or with
       rank_by="sigmoid" sigmoid(logit) in the logits' dtype.                       # PROPOSAL.TORCHVISION_RANKING
    3. candidates whose box or logit is not finite are dropped; in training they raise
       FloatingPointError instead.                                                      # PROPOSAL.NONFINITE
    4. boxes are clipped to the unpadded (h, w), and boxes with width or height <= min_box_size
       are removed (before NMS).                                                        # PROPOSAL.CLIP_FILTER
       With a score_thresh, candidates whose ranking score is below it are removed too (kept when >=,
       as torchvision's rpn_score_thresh).
    5. batched NMS at nms_thresh on the ranking score with the level id as the group: levels do not
       suppress each other.                                                             # PROPOSAL.NMS_PER_LEVEL
    6. the first post_nms_topk of the NMS result, in descending score; with rank_by="sigmoid", ties in
       torchvision's order (module docstring), logits returned raw.   # PROPOSAL.POST_NMS_TOPK, .TORCHVISION_RANKING
    """
    num_images = v.check_select_args(proposals, logits, image_sizes, nms_thresh, pre_nms_topk, post_nms_topk)
    if rank_by not in RANK_BY:
        raise ValueError(f"rank_by must be one of {RANK_BY}, got {rank_by!r}")
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
        rank = torch.sigmoid(scores) if rank_by == "sigmoid" else scores  # the ranking score, in the logits' dtype

        # step 3: non-finite candidates
        finite = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)
        if not bool(finite.all()):
            if training:
                raise FloatingPointError(DIVERGED)
            boxes, scores, levels, rank = boxes[finite], scores[finite], levels[finite], rank[finite]

        # step 4: clip to the unpadded image, then drop empty boxes and (optionally) low scores
        boxes = clip_boxes(boxes, image_sizes[n])
        keep = nonempty(boxes, min_box_size)
        boxes, scores, levels, rank = boxes[keep], scores[keep], levels[keep], rank[keep]
        if score_thresh is not None:
            keep = rank >= score_thresh
            boxes, scores, levels, rank = boxes[keep], scores[keep], levels[keep], rank[keep]

        # steps 5-6: NMS per level (ties visited in candidate order), then the best post_nms_topk
        keep = batched_nms(boxes, rank, levels, nms_thresh)  # descending rank; ties in candidate order
        if rank_by == "sigmoid" and len(rank) > TV_BATCHED_NMS_LOOP_ABOVE:
            keep = torchvision_merge_order(keep, rank)
        keep = keep[:post_nms_topk]
        results.append((boxes[keep], scores[keep]))
    return results


def torchvision_merge_order(keep: Tensor, rank: Tensor) -> Tensor:
    """The kept candidates in the order torchvision's per-group batched_nms gives them on CPU.

    keep [K]: kept candidate indices (any order); rank [M]: every candidate's ranking score.
    torchvision lists the kept candidates by index, then sorts their scores with torch.sort(descending=True)
    without stable=True: on CPU that is std::sort, whose order for tied scores is a fixed function of the
    array. The same call on the same array gives the same permutation.   # PROPOSAL.TORCHVISION_RANKING
    """
    by_index = torch.sort(keep).values
    order = torch.sort(rank[by_index].cpu(), descending=True, stable=False).indices
    return by_index[order.to(by_index.device)]


