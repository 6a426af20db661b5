"""The Region Proposal Network: the shared head, training targets, the two losses, and the module.

Spec: seed RPN parts 1-4; d2-spec §1.4, §2.3, §2.8; detectron2 modeling/proposal_generator/rpn.py
(StandardRPNHead, RPN.label_and_sample_anchors, RPN.losses, RPN.forward).

Shape legend: N images; C channels; L levels (P2..P6); Hi, Wi the size of level i; A anchors per location (3);
R = sum_i Hi * Wi * A anchors over all levels, in (level, y, x, anchor) order; G ground-truth boxes of an image.
Boxes are XYXY in absolute input pixels. Labels: 1 foreground, 0 background, -1 ignored.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from layout import rpn as layout
from reference.anchors import cell_anchors, grid_anchors
from reference.boxes import decode_boxes, encode_boxes
from reference.matcher import iou_match
from reference.proposals import select_proposals
from reference.sampling import subsample_labels
from spec import validate as v
from spec.config import BASE_RCNN_FPN

_RPN = BASE_RCNN_FPN.rpn
_ANCHORS = BASE_RCNN_FPN.anchors


# ------------------------------------------------------------------------------------------------ head
class RPNHead(layout.RPNHead):
    """The head shared by every level (parameters, RPN.HEAD, RPN.HEAD_PARAMS: layout/rpn.py): 3x3 conv + ReLU,
    then two sibling 1x1 convs, objectness_logits (A) and anchor_deltas (4A)."""

    def forward(self, features: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """features: L tensors [N, C, Hi, Wi] -> (logits: L x [N, Hi*Wi*A], deltas: L x [N, Hi*Wi*A, 4])."""
        v.check_rpn_features(features, self.in_channels)
        a = self.num_anchors
        logits, deltas = [], []
        for x in features:
            t = x
            for conv in self.convs():
                t = F.relu(conv(t))
            objectness = self.objectness_logits(t)  # [N, A, Hi, Wi]
            offsets = self.anchor_deltas(t)  # [N, 4A, Hi, Wi]: channel a*4 + j
            n, _, h, w = objectness.shape
            # (N, A, H, W) -> (N, H, W, A) -> flat index (y * W + x) * A + a       # RPN.OUTPUT_ORDER
            logits.append(objectness.permute(0, 2, 3, 1).reshape(n, h * w * a))
            # (N, 4A, H, W) -> (N, A, 4, H, W) -> (N, H, W, A, 4) -> [N, H*W*A, 4]
            deltas.append(offsets.reshape(n, a, 4, h, w).permute(0, 3, 4, 1, 2).reshape(n, h * w * a, 4))
        return logits, deltas




# ------------------------------------------------------------------------------------------------ targets
def rpn_targets(anchors: Tensor, gt_boxes: Sequence[Tensor], *,
                thresholds: Sequence[float] = _RPN.iou_thresholds, labels: Sequence[int] = _RPN.iou_labels,
                allow_low_quality_matches: bool = _RPN.allow_low_quality_matches,
                batch_size_per_image: int = _RPN.batch_size_per_image,
                positive_fraction: float = _RPN.positive_fraction,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Label and sample the anchors of every image: (gt_labels int8 [N, R], matched_boxes [N, R, 4]).

    anchors [R, 4]: all levels concatenated. gt_boxes: N tensors [G, 4] (G may be 0).
    Per image (d2-spec §2.8):
    1. match IoU(GT x anchors) at 0.3 / 0.7 with labels 0 / -1 / 1 and low-quality matches.   # RPN.MATCHING
       There is no boundary filtering: anchors crossing the image border are labelled like any other.
    2. sample 256 anchors, at most half positive (bg label 0); every anchor not sampled becomes -1.
                                                                                               # RPN.SAMPLING
    3. matched box = gt[matched index], for every anchor.                                     # RPN.TARGET_BOXES
    An image without GT: the matcher labels every anchor 0 before sampling, and matched boxes are zeros.
                                                                                               # RPN.NO_GT
    GT boxes may lie partly or wholly outside the image; non-finite GT boxes raise ValueError.  # RPN.ERRORS
    """
    v.check_boxes(anchors, "anchors")
    if isinstance(gt_boxes, Tensor) or not isinstance(gt_boxes, Sequence):
        raise ValueError(f"gt_boxes must be a list with one [G, 4] tensor per image, got {type(gt_boxes).__name__}")
    for n, gt in enumerate(gt_boxes):
        v.check_boxes(gt, f"gt_boxes[{n}]")
        v.check_same_device("anchors", anchors, f"gt_boxes[{n}]", gt)

    all_labels, all_boxes = [], []
    for gt in gt_boxes:
        matched_idx, match_labels = iou_match(gt, anchors, thresholds, labels, allow_low_quality_matches)
        pos_idx, neg_idx = subsample_labels(match_labels, batch_size_per_image, positive_fraction,
                                            _RPN.bg_label, generator)
        sampled = torch.full_like(match_labels, -1)  # int8 [R]: -1 unless sampled
        sampled[pos_idx] = 1
        sampled[neg_idx] = 0
        dtype = torch.promote_types(anchors.dtype, gt.dtype)
        if gt.shape[0] == 0:
            matched = torch.zeros(anchors.shape, dtype=dtype, device=anchors.device)
        else:
            matched = gt[matched_idx].to(dtype)  # [R, 4]
        all_labels.append(sampled)
        all_boxes.append(matched)
    if not all_labels:
        return (torch.zeros(0, anchors.shape[0], dtype=torch.int8, device=anchors.device),
                torch.zeros(0, anchors.shape[0], 4, dtype=anchors.dtype, device=anchors.device))
    dtype = all_boxes[0].dtype
    for b in all_boxes:
        dtype = torch.promote_types(dtype, b.dtype)
    return torch.stack(all_labels), torch.stack([b.to(dtype) for b in all_boxes])


# ------------------------------------------------------------------------------------------------ losses
def smooth_l1(x: Tensor, beta: float) -> Tensor:
    """fvcore's smooth-L1 of a difference x: 0.5 x^2 / beta where |x| < beta, else |x| - beta / 2.

    fvcore uses plain L1 when beta < 1e-5; the RPN's beta is 0, so its loss is L1.       # RPN.LOSS_LOC
    """
    if beta < 1e-5:
        return x.abs()
    n = x.abs()
    return torch.where(n < beta, 0.5 * n * n / beta, n - 0.5 * beta)


def rpn_losses(anchors: Tensor, pred_logits: Tensor, pred_deltas: Tensor, gt_labels: Tensor, gt_boxes: Tensor, *,
               batch_size_per_image: int = _RPN.batch_size_per_image,
               weights: Sequence[float] = _RPN.box_coder.weights,
               smooth_l1_beta: float = _RPN.smooth_l1_beta) -> dict[str, Tensor]:
    """The RPN's two losses, {"loss_rpn_cls", "loss_rpn_loc"}, each a 0-d tensor.

    anchors [R, 4]; pred_logits [N, R]; pred_deltas [N, R, 4]; gt_labels [N, R] in {-1, 0, 1};
    gt_boxes [N, R, 4] (the matched boxes of rpn_targets).
    loss_rpn_cls = sum over anchors labelled 0 or 1 of BCE-with-logits(logit, label)       # RPN.LOSS_CLS
    loss_rpn_loc = sum over anchors labelled 1 of sum_j |pred_j - target_j|,               # RPN.LOSS_LOC
                   target = encode(anchor, matched box, weights (1, 1, 1, 1))             # RPN.TARGET_BOXES
    Both are divided by batch_size_per_image * N = 256 N, not by the number of positives
    or of sampled anchors.                                                                # RPN.LOSS_NORMALIZER
    """
    v.check_boxes(anchors, "anchors")
    num_anchors = anchors.shape[0]
    v.check_shape(pred_logits, "pred_logits", (None, num_anchors), floating=True)
    n = pred_logits.shape[0]
    v.check_shape(pred_deltas, "pred_deltas", (n, num_anchors, 4), floating=True)
    v.check_shape(gt_labels, "gt_labels", (n, num_anchors), floating=False)
    v.check_shape(gt_boxes, "gt_boxes", (n, num_anchors, 4), floating=True)
    if n == 0:
        raise ValueError("rpn_losses needs at least one image (the normalizer is batch_size_per_image * N)")
    if batch_size_per_image <= 0:
        raise ValueError(f"batch_size_per_image must be positive, got {batch_size_per_image}")
    normalizer = batch_size_per_image * n

    valid = gt_labels >= 0  # labels 0 and 1; -1 is ignored
    loss_cls = F.binary_cross_entropy_with_logits(
        pred_logits[valid], gt_labels[valid].to(pred_logits.dtype), reduction="sum")

    positive = gt_labels == 1  # [N, R]
    pos_anchors = anchors[None].expand(n, num_anchors, 4)[positive]  # [P, 4]
    targets = encode_boxes(pos_anchors, gt_boxes[positive].to(pos_anchors.dtype), weights)  # [P, 4]
    loss_loc = smooth_l1(pred_deltas[positive] - targets, smooth_l1_beta).sum()
    return {"loss_rpn_cls": loss_cls / normalizer, "loss_rpn_loc": loss_loc / normalizer}


# ------------------------------------------------------------------------------------------------ module
class RPN(layout.RPN):
    """The RPN: head on every level, anchors, training targets and losses, and proposal selection.

    The constructor, child ``rpn_head`` and the forward contract and control flow are layout/rpn.py's RPN; the
    reference generates anchors on every call and decodes every anchor before selecting.
    """

    rpn_head_type = RPNHead
    rpn_targets, rpn_losses = staticmethod(rpn_targets), staticmethod(rpn_losses)

    def anchors(self, features: Sequence[Tensor]) -> list[Tensor]:
        """Grid anchors of every level, [Hi*Wi*A, 4] each, in float64 for float64 features else float32."""
        dtype = torch.float64 if features[0].dtype == torch.float64 else torch.float32
        device = features[0].device
        cells = [cell_anchors(s, r, self.anchor_cfg.round_cell_anchors, dtype=dtype, device=device)
                 for s, r in zip(self.anchor_cfg.sizes, self.anchor_cfg.aspect_ratios)]
        sizes = [(x.shape[2], x.shape[3]) for x in features]
        return grid_anchors(sizes, self.anchor_cfg.strides, cells, self.anchor_cfg.offset)

    def propose(self, anchors: list[Tensor], logits: list[Tensor], deltas: list[Tensor],
                image_sizes: Sequence[tuple[int, int]], pre_nms_topk: int,
                post_nms_topk: int) -> list[tuple[Tensor, Tensor]]:
        """Decode every anchor of every image, then select_proposals (PROPOSAL.*)."""
        cfg = self.cfg
        n = logits[0].shape[0]
        proposals = [decode_boxes(d.reshape(-1, 4), a.repeat(n, 1), cfg.box_coder.weights,
                                  cfg.box_coder.scale_clamp).reshape(n, -1, 4)
                     for d, a in zip(deltas, anchors)]  # L x [N, HiWiA, 4]
        return select_proposals(proposals, logits, image_sizes, nms_thresh=cfg.nms_thresh,
                                pre_nms_topk=pre_nms_topk, post_nms_topk=post_nms_topk,
                                min_box_size=cfg.min_box_size, training=self.training, rank_by=cfg.rank_by,
                                score_thresh=cfg.score_thresh)
