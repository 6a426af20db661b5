"""The Region Proposal Network, optimized: fused predictor convs, cached anchors, dense sync-free losses,
and top-k before decoding.

Same contract and state_dict keys as reference/rpn.py (d2-spec §1.4, §2.3, §2.8):
- ``RPNHead`` runs the two sibling 1x1 convs as one conv over concatenated weights (one pass over the
  3x3 conv's output) and splits the channel-last result.
- ``rpn_targets`` labels each image with the bounded-memory ``fast.iou_match`` and samples with the static
  ``fast.subsample_masks`` (a loop over images: GT counts differ per image).
- ``rpn_losses`` is dense and masked over all N x R anchors (no boolean indexing, no host sync), as
  detectron2 computes its targets; ignored anchors contribute exactly zero.
- ``RPN`` caches anchors per feature size (``fast.AnchorCache``) and decodes only the per-level top-k
  winners (``fast.proposals.decode_and_select``).

Shape legend: N images; C channels; L levels; Hi, Wi level i's size; A anchors per location; R anchors in all.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from fast.anchors import AnchorCache
from fast.boxes import encode_boxes
from fast.matcher import iou_match
from fast.proposals import decode_and_select
from fast.sampling import subsample_masks
from layout import rpn as layout
from spec import validate as v
from spec.config import BASE_RCNN_FPN, AnchorConfig, RPNConfig

_RPN = BASE_RCNN_FPN.rpn
_ANCHORS = BASE_RCNN_FPN.anchors


class RPNHead(layout.RPNHead):
    """3x3 conv + ReLU shared by every level, then objectness (A) and deltas (4A) 1x1 convs, run fused.

    Parameters and keys: layout/rpn.py. forward: L x [N, C, Hi, Wi] -> (L x [N, Hi*Wi*A], L x [N, Hi*Wi*A, 4])
    in (y, x, anchor) order.
    """

    def forward(self, features: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        v.check_rpn_features(features, self.in_channels)
        convs = self.convs()
        a = self.num_anchors
        weight = torch.cat([self.objectness_logits.weight, self.anchor_deltas.weight])  # [5A, C', 1, 1]
        bias = torch.cat([self.objectness_logits.bias, self.anchor_deltas.bias])
        logits, deltas = [], []
        for x in features:  # a loop over levels (sizes differ)
            t = x
            for conv in convs:
                t = F.relu(conv(t), inplace=True)
            out = F.conv2d(t, weight, bias).permute(0, 2, 3, 1)  # [N, H, W, 5A] channel-last
            n, h, w, _ = out.shape
            logits.append(out[..., :a].reshape(n, h * w * a))
            deltas.append(out[..., a:].reshape(n, h * w * a, 4))  # channel a*4 + j -> [.., a, j]
        return logits, deltas




def rpn_targets(anchors: Tensor, gt_boxes: Sequence[Tensor], *,
                thresholds: Sequence[float] = _RPN.iou_thresholds, labels: Sequence[int] = _RPN.iou_labels,
                allow_low_quality_matches: bool = _RPN.allow_low_quality_matches,
                batch_size_per_image: int = _RPN.batch_size_per_image,
                positive_fraction: float = _RPN.positive_fraction,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """anchors [R, 4], N x gt [G, 4] -> (labels int8 [N, R] in {-1, 0, 1}, matched boxes [N, R, 4])."""
    v.check_boxes(anchors, "anchors")
    if isinstance(gt_boxes, Tensor) or not isinstance(gt_boxes, Sequence):
        raise ValueError(f"gt_boxes must be a list with one [G, 4] tensor per image, got {type(gt_boxes).__name__}")
    for n, gt in enumerate(gt_boxes):
        v.check_boxes(gt, f"gt_boxes[{n}]")
        v.check_same_device("anchors", anchors, f"gt_boxes[{n}]", gt)
    r = anchors.shape[0]
    dtype = anchors.dtype
    for gt in gt_boxes:
        dtype = torch.promote_types(dtype, gt.dtype)
    out_labels = torch.full((len(gt_boxes), r), -1, dtype=torch.int8, device=anchors.device)
    out_boxes = torch.zeros(len(gt_boxes), r, 4, dtype=dtype, device=anchors.device)
    for n, gt in enumerate(gt_boxes):  # a loop over images
        idx, match_labels = iou_match(gt, anchors, thresholds, labels, allow_low_quality_matches)
        pos, neg = subsample_masks(match_labels, batch_size_per_image, positive_fraction, _RPN.bg_label, generator)
        out_labels[n].masked_fill_(neg, 0).masked_fill_(pos, 1)
        if gt.shape[0]:
            out_boxes[n] = gt.to(dtype)[idx]
    return out_labels, out_boxes


def smooth_l1(x: Tensor, beta: float) -> Tensor:
    """fvcore's smooth-L1 of a difference x (as reference.rpn.smooth_l1); the RPN's and the ROI heads' box loss."""
    if beta < 1e-5:  # fvcore: plain L1
        return x.abs()
    n = x.abs()
    return torch.where(n < beta, 0.5 * n * n / beta, n - 0.5 * beta)


def rpn_losses(anchors: Tensor, pred_logits: Tensor, pred_deltas: Tensor, gt_labels: Tensor, gt_boxes: Tensor, *,
               batch_size_per_image: int = _RPN.batch_size_per_image,
               weights: Sequence[float] = _RPN.box_coder.weights,
               smooth_l1_beta: float = _RPN.smooth_l1_beta) -> dict[str, Tensor]:
    """{"loss_rpn_cls", "loss_rpn_loc"}: BCE over labels {0, 1}, L1 over positives, both / (256 N)."""
    v.check_boxes(anchors, "anchors", finite=False, ordered=False)
    r = anchors.shape[0]
    v.check_shape(pred_logits, "pred_logits", (None, r), floating=True)
    n = pred_logits.shape[0]
    v.check_shape(pred_deltas, "pred_deltas", (n, r, 4), floating=True)
    v.check_shape(gt_labels, "gt_labels", (n, r), floating=False)
    v.check_shape(gt_boxes, "gt_boxes", (n, r, 4), floating=True)
    if n == 0:
        raise ValueError("rpn_losses needs at least one image (the normalizer is batch_size_per_image * N)")
    if batch_size_per_image <= 0:
        raise ValueError(f"batch_size_per_image must be positive, got {batch_size_per_image}")
    normalizer = batch_size_per_image * n
    valid = gt_labels >= 0
    positive = gt_labels == 1
    zero = torch.zeros((), dtype=pred_logits.dtype, device=pred_logits.device)
    bce = F.binary_cross_entropy_with_logits(pred_logits, positive.to(pred_logits.dtype), reduction="none")
    loss_cls = torch.where(valid, bce, zero).sum()

    a = anchors[None].expand(n, r, 4)
    # non-positive anchors regress onto themselves (target 0): finite everywhere, masked out below
    target_boxes = torch.where(positive[:, :, None], gt_boxes.to(a.dtype), a)
    with v.value_checks(False):  # shapes checked above; a value scan would be a host sync
        targets = encode_boxes(a.reshape(-1, 4), target_boxes.reshape(-1, 4), weights).reshape(n, r, 4)
    loc = smooth_l1(pred_deltas - targets.to(pred_deltas.dtype), smooth_l1_beta)
    loss_loc = torch.where(positive[:, :, None], loc, zero.to(loc.dtype)).sum()
    return {"loss_rpn_cls": loss_cls / normalizer, "loss_rpn_loc": loss_loc / normalizer}


class RPN(layout.RPN):
    """The RPN module: layout/rpn.py's constructor, keys (rpn_head.*) and forward; anchors are cached and only the
    per-level top-k winners are decoded."""

    rpn_head_type = RPNHead
    rpn_targets, rpn_losses = staticmethod(rpn_targets), staticmethod(rpn_losses)

    def __init__(self, cfg: RPNConfig = _RPN, anchor_cfg: AnchorConfig = _ANCHORS,
                 in_channels: int = BASE_RCNN_FPN.fpn.out_channels):
        super().__init__(cfg, anchor_cfg, in_channels)
        self.anchor_cache = AnchorCache(anchor_cfg.sizes, anchor_cfg.aspect_ratios, anchor_cfg.strides,
                                        anchor_cfg.offset, anchor_cfg.round_cell_anchors)

    def anchors(self, features: Sequence[Tensor]) -> list[Tensor]:
        """Grid anchors per level, [Hi*Wi*A, 4] float32, memoised per feature sizes and device (read-only)."""
        return self.anchor_cache([(x.shape[2], x.shape[3]) for x in features], features[0].device)

    def propose(self, anchors: list[Tensor], logits: list[Tensor], deltas: list[Tensor],
                image_sizes: Sequence[tuple[int, int]], pre_nms_topk: int,
                post_nms_topk: int) -> list[tuple[Tensor, Tensor]]:
        cfg = self.cfg
        return decode_and_select(
            anchors, deltas, logits, image_sizes, weights=cfg.box_coder.weights,
            scale_clamp=cfg.box_coder.scale_clamp, nms_thresh=cfg.nms_thresh, pre_nms_topk=pre_nms_topk,
            post_nms_topk=post_nms_topk, min_box_size=cfg.min_box_size, training=self.training, rank_by=cfg.rank_by,
            score_thresh=cfg.score_thresh)
