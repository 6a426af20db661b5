"""The ROI heads (box branch): training sampling, box head, predictor, losses, inference and the module.

The layers, their initialisation, the module's constructor, config checks and forward control flow are
layout/roi_heads.py's; this file writes the functions and the forward passes.

Spec: d2-spec §1.5, §2.10, §2.12, §2.13; detectron2 modeling/roi_heads/roi_heads.py (StandardROIHeads,
label_and_sample_proposals), box_head.py (FastRCNNConvFCHead), fast_rcnn.py (FastRCNNOutputLayers,
fast_rcnn_inference), modeling/postprocessing.py (detector_postprocess).

Shape legend: N images; K foreground classes, background is class/column K (the last); P proposals and
G ground-truth boxes of one image; S sampled ROIs of one image; R ROIs over the batch (rows in image order);
D detections of one image; r the pooler resolution (7); C channels (256). Boxes are XYXY in input pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from layout import roi_heads as layout
from reference.boxes import clip_boxes, decode_boxes, encode_boxes, nonempty
from reference.matcher import iou_match
from reference.nms import batched_nms
from reference.poolers import multilevel_roi_align
from reference.rpn import smooth_l1
from reference.sampling import subsample_labels
from spec import validate as v
from spec.config import BASE_RCNN_FPN

_ROI = BASE_RCNN_FPN.roi_heads
_BOX = BASE_RCNN_FPN.box_head
_INF = BASE_RCNN_FPN.inference


# ------------------------------------------------------------------------------------------------ sampling
def sample_rois(proposals: Sequence[Tensor], gt_boxes: Sequence[Tensor], gt_classes: Sequence[Tensor],
                num_classes: int, batch_size_per_image: int = _ROI.batch_size_per_image,
                positive_fraction: float = _ROI.positive_fraction, iou_threshold: float = _ROI.iou_thresholds[0],
                append_gt: bool = _ROI.proposal_append_gt,
                generator: torch.Generator | None = None) -> list[tuple[Tensor, Tensor, Tensor]]:
    """Per image: proposals [P, 4], gt_boxes [G, 4], gt_classes int64 [G] in [0, K) ->
    (boxes [S, 4], classes int64 [S], matched GT boxes [S, 4]), S <= batch_size_per_image.

    For each image (d2-spec §2.10):
    1. candidates = proposals followed by the GT boxes when append_gt.                   # ROI.SAMPLE_APPEND_GT
    2. iou_match(GT, candidates) at (iou_threshold,) with labels (0, 1), no low-quality matches.
    3. class = class of the matched GT where the label is 1, else background K; every candidate is
       background when the image has no GT.                                               # ROI.SAMPLE_MATCH
    4. subsample_labels(classes, batch_size_per_image, positive_fraction, bg_label=K, generator): at most
       int(512 * 0.25) = 128 foreground; rows are [foreground..., background...].         # ROI.SAMPLE_COUNT
    5. matched GT box = gt_boxes[matched index] (zeros when the image has no GT).
    The generator is used image after image, so one generator state gives one sample of the batch.
    """
    v.check_sample_rois_args(proposals, gt_boxes, gt_classes, num_classes)
    v.check_threshold(iou_threshold, "iou_threshold")
    background = num_classes
    results = []
    for props, gt, gt_cls in zip(proposals, gt_boxes, gt_classes):
        dtype = torch.promote_types(props.dtype, gt.dtype)
        # step 1
        boxes = torch.cat([props.to(dtype), gt.to(dtype)]) if append_gt else props.to(dtype)
        # step 2
        matched_idx, match_labels = iou_match(gt, boxes, (iou_threshold,), _ROI.iou_labels, False)
        # step 3
        if gt.shape[0] == 0:
            classes = torch.full((boxes.shape[0],), background, dtype=torch.int64, device=boxes.device)
            matched = torch.zeros_like(boxes)
        else:
            classes = gt_cls.to(torch.int64)[matched_idx]
            classes[match_labels == 0] = background
            classes[match_labels == -1] = -1  # not produced with labels (0, 1); kept for other label sets
            matched = gt.to(dtype)[matched_idx]
        # step 4
        fg_idx, bg_idx = subsample_labels(classes, batch_size_per_image, positive_fraction, background, generator)
        keep = torch.cat([fg_idx, bg_idx])
        # step 5
        results.append((boxes[keep], classes[keep], matched[keep]))
    return results


# ------------------------------------------------------------------------------------------------ head
class BoxHead(layout.BoxHead):
    """FastRCNNConvFCHead with no convs: flatten, then num_fc x (Linear + ReLU).            # ROI.BOX_HEAD

    [R, C, r, r] is flattened channel-major (C, y, x) to C * r * r = 12544, then
    fc1 12544 -> 1024 + ReLU, fc2 1024 -> 1024 + ReLU. Layers and init: layout/roi_heads.py.
    """

    def forward(self, x: Tensor) -> Tensor:
        """x [R, C, r, r] -> [R, fc_dim]."""
        self.check_input(x)
        x = x.flatten(1)  # channel-major: index c * r * r + y * r + x
        for k in range(self.num_fc):
            x = F.relu(getattr(self, f"fc{k + 1}")(x))
        return x


class BoxPredictor(layout.BoxPredictor):
    """FastRCNNOutputLayers' two linear layers.                                              # ROI.PREDICTOR

    cls_score  in -> K + 1 logits (column K is background)
    bbox_pred  in -> 4K class-specific deltas (column 4c + j)
    """

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x [R, in_features] (or [R, ...], flattened) -> (logits [R, K+1], deltas [R, 4K])."""
        x = self.check_input(x)
        return self.cls_score(x), self.bbox_pred(x)


# ------------------------------------------------------------------------------------------------ losses
def roi_losses(class_logits: Tensor, box_deltas: Tensor, proposals: Tensor, gt_classes: Tensor, gt_boxes: Tensor,
               weights: Sequence[float] = _BOX.box_coder.weights,
               smooth_l1_beta: float = _BOX.smooth_l1_beta) -> dict[str, Tensor]:
    """class_logits [R, K+1], box_deltas [R, 4K], proposals [R, 4], gt_classes int64 [R] in [0, K],
    gt_boxes [R, 4] (matched GT) -> {"loss_cls", "loss_box_reg"}, each a 0-d tensor.

    loss_cls = mean over all R rows of softmax cross-entropy(logits, class), background included;
               0 (connected to the graph) when R = 0.                                      # ROI.LOSS_CLS
    loss_box_reg = sum over foreground rows i (class c_i < K) and j of
                   smooth_l1(box_deltas[i, 4 c_i + j] - encode(proposal_i, gt_i, weights)_j, beta)
                   / max(R, 1); beta 0 is L1.                                              # ROI.LOSS_BOX
    """
    r, k = v.check_roi_loss_args(class_logits, box_deltas, proposals, gt_classes, gt_boxes)
    if r == 0:
        loss_cls = class_logits.sum() * 0.0
    else:
        loss_cls = F.cross_entropy(class_logits, gt_classes.to(torch.int64), reduction="mean")

    fg = ((gt_classes >= 0) & (gt_classes < k)).nonzero().flatten()  # foreground rows
    fg_classes = gt_classes[fg].to(torch.int64)
    pred = box_deltas.reshape(r, k, 4)[fg, fg_classes]  # [F, 4]: the GT class's slot
    dtype = torch.promote_types(proposals.dtype, gt_boxes.dtype)
    target = encode_boxes(proposals[fg].to(dtype), gt_boxes[fg].to(dtype), weights)  # [F, 4]
    loss_box = smooth_l1(pred - target.to(pred.dtype), smooth_l1_beta).sum() / max(r, 1)
    return {"loss_cls": loss_cls, "loss_box_reg": loss_box}


# ------------------------------------------------------------------------------------------------ inference
def fast_rcnn_inference(boxes: Sequence[Tensor], scores: Sequence[Tensor], image_sizes: Sequence[tuple[int, int]],
                        score_thresh: float = _INF.score_thresh, nms_thresh: float = _INF.nms_thresh,
                        topk_per_image: int = _INF.detections_per_image, min_box_size: float | None = _INF.min_box_size,
                        drop_nonfinite: bool = _INF.drop_nonfinite) -> list[tuple[Tensor, Tensor, Tensor, Tensor]]:
    """Per image: decoded boxes [Ri, 4K], softmax scores [Ri, K+1] (background last), (h, w) ->
    (boxes [D, 4], scores [D], classes int64 [D], roi_index int64 [D]).

    For each image (d2-spec §2.13 item 4):
    1. drop_nonfinite: rows with any non-finite box coordinate or score are dropped (without it a
       non-finite input is a ValueError).                                                  # ROI.INFER_CLIP
    2. the background column (the last) is dropped: scores [Ri, K].
    3. every box (Ri x K of them) is clipped to (h, w).                                     # ROI.INFER_CLIP
    4. (roi, class) pairs with score > score_thresh (strict) are kept, in row-major order.  # ROI.INFER_THRESH
    5. min_box_size (torchvision): pairs whose box has width or height < min_box_size are removed.
    6. batched NMS at nms_thresh with the class as the group.                              # ROI.INFER_NMS
    7. the first topk_per_image of the NMS order (score descending); topk < 0 keeps all.   # ROI.INFER_TOPK
    roi_index is the input row (of boxes[n]) a detection came from; class = column index.
    """
    v.check_inference_args(boxes, scores, image_sizes, drop_nonfinite)
    v.check_threshold(score_thresh, "score_thresh", low=float("-inf"), high=float("inf"))
    v.check_threshold(nms_thresh, "nms_thresh")
    if isinstance(topk_per_image, bool) or not isinstance(topk_per_image, int):
        raise ValueError(f"topk_per_image must be an int, got {topk_per_image!r}")
    results = []
    for img_boxes, img_scores, size in zip(boxes, scores, image_sizes):
        if isinstance(size, Tensor):
            size = tuple(size.tolist())
        rows = torch.arange(img_boxes.shape[0], device=img_boxes.device)
        # step 1
        if drop_nonfinite:
            finite = torch.isfinite(img_boxes).all(dim=1) & torch.isfinite(img_scores).all(dim=1)
            img_boxes, img_scores, rows = img_boxes[finite], img_scores[finite], rows[finite]
        # step 2
        fg_scores = img_scores[:, :-1]  # [Ri, K]
        num_classes = fg_scores.shape[1]
        # step 3
        clipped = clip_boxes(img_boxes.reshape(-1, 4), size).reshape(-1, num_classes, 4)  # [Ri, K, 4]
        # step 4
        pairs = (fg_scores > score_thresh).nonzero()  # [M, 2]: (row, class), row-major
        cand_boxes = clipped[pairs[:, 0], pairs[:, 1]]  # [M, 4]
        cand_scores = fg_scores[pairs[:, 0], pairs[:, 1]]  # [M]
        # step 5
        if min_box_size is not None:
            widths = cand_boxes[:, 2] - cand_boxes[:, 0]
            heights = cand_boxes[:, 3] - cand_boxes[:, 1]
            big = (widths >= min_box_size) & (heights >= min_box_size)
            pairs, cand_boxes, cand_scores = pairs[big], cand_boxes[big], cand_scores[big]
        # step 6
        keep = batched_nms(cand_boxes, cand_scores, pairs[:, 1], nms_thresh)
        # step 7
        if topk_per_image >= 0:
            keep = keep[:topk_per_image]
        results.append((cand_boxes[keep], cand_scores[keep], pairs[keep, 1], rows[pairs[keep, 0]]))
    return results


def detector_postprocess(boxes: Tensor, input_size: tuple[int, int],
                         output_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """boxes [D, 4] at the network input size (h, w) -> (boxes [D, 4] at output_size, keep bool [D]).

    1. x scaled by out_w / in_w and y by out_h / in_h;
    2. clipped to the output (h, w);
    3. keep = width > 0 and height > 0 (every row is returned; keep marks the ones to use).  # ROI.POSTPROCESS
    """
    in_h, in_w, out_h, out_w = v.check_postprocess_args(boxes, input_size, output_size)
    scale = boxes.new_tensor([out_w / in_w, out_h / in_h, out_w / in_w, out_h / in_h])
    scaled = clip_boxes(boxes * scale, (out_h, out_w))
    return scaled, nonempty(scaled)


# ------------------------------------------------------------------------------------------------ module
class ROIHeads(layout.ROIHeads):
    """StandardROIHeads' box branch: pooler, box head, predictor; losses in training, detections at test.

    Constructor, children (box_head.fc1.weight, ..., box_predictor.bbox_pred.bias) and forward's control flow
    are layout/roi_heads.py's: in training sample_rois, pool, head and predictor, roi_losses; at test pool, head
    and predictor, then ``_inference``: softmax scores, decode_boxes(deltas, proposals, weights, scale_clamp) and
    fast_rcnn_inference, image by image.
    """

    box_head_type, box_predictor_type = BoxHead, BoxPredictor
    sample_rois, roi_losses = staticmethod(sample_rois), staticmethod(roi_losses)
    pooler = staticmethod(multilevel_roi_align)
    decode, inference = staticmethod(decode_boxes), staticmethod(fast_rcnn_inference)
