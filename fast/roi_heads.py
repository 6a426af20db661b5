"""The ROI heads (box branch), batched: sampling, box head, predictor, losses, inference and the module.

Same contract and state_dict layout as reference/roi_heads.py (d2-spec §1.5, §2.10, §2.12, §2.13):
- ``sample_rois``: per image the bounded-memory ``fast.iou_match`` and the static ``fast.subsample_masks``
  (a loop over images, as fast.rpn_targets: GT counts differ). It draws a different (equally uniform) sample
  than the reference for one seed; foreground rows come first, each part in ascending candidate order.
- ``BoxHead`` reads the pooler's channels-last output without transposing it when no gradient is needed:
  fc1's columns are permuted once to (y, x, c) order and cached. ``BoxPredictor`` runs both linears as one.
- ``roi_losses`` is dense and masked (no boolean indexing, no host sync).
- ``fast_rcnn_inference``: every image and class at once; ONE ``fast.batched_nms`` call whose group id is
  image * K + class; candidates are clipped after they are selected (only M of the R x K boxes).
- ``fast_rcnn_inference_static``: the same detections with static shapes and no host synchronisation (CUDA
  graphs, torch.compile): the top ``max_candidates`` (roi, class) pairs per image in the dynamic path's
  processing order, then ``fast.nms.static_class_nms`` (a dense same-class suppression mask and the exact
  block sweep that fast.proposals.select_proposals_static uses).

Shape legend: N images; K foreground classes, background is class/column K (the last); P proposals and
G ground-truth boxes of one image; S sampled ROIs of one image; R ROIs (over the batch, or per image in the
static variant); M candidate (roi, class) pairs; T detection slots; D detections of one image; r the pooler
resolution (7); C channels (256). Boxes are XYXY in input pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from fast.boxes import decode_boxes, encode_boxes
from fast.image_list import size_bounds
from fast.matcher import iou_match
from fast.nms import batched_nms, static_class_nms
from fast.poolers import multilevel_roi_align
from fast.rpn import smooth_l1
from fast.sampling import subsample_masks
from layout import roi_heads as layout
from spec import validate as v
from spec.config import BASE_RCNN_FPN

_ROI = BASE_RCNN_FPN.roi_heads
_BOX = BASE_RCNN_FPN.box_head
_INF = BASE_RCNN_FPN.inference
MAX_CANDIDATES = 2048  # (roi, class) pairs per image that the static inference keeps for its dense NMS


# ------------------------------------------------------------------------------------------------ sampling
def sample_rois(proposals: Sequence[Tensor], gt_boxes: Sequence[Tensor], gt_classes: Sequence[Tensor],
                num_classes: int, batch_size_per_image: int = _ROI.batch_size_per_image,
                positive_fraction: float = _ROI.positive_fraction, iou_threshold: float = _ROI.iou_thresholds[0],
                append_gt: bool = _ROI.proposal_append_gt,
                generator: torch.Generator | None = None) -> list[tuple[Tensor, Tensor, Tensor]]:
    """Per image: proposals [P, 4], gt_boxes [G, 4], gt_classes int64 [G] in [0, K) ->
    (boxes [S, 4], classes int64 [S] with background = K, matched GT boxes [S, 4]); foreground rows first.

    Candidates = proposals (+ GT when append_gt); iou_match at (iou_threshold,) without low-quality matches;
    class = matched GT class where the label is 1, else K (every candidate without GT); subsample_masks with
    at most int(batch_size_per_image * positive_fraction) foreground; background rows carry their matched GT
    box (zeros without GT). The generator is used image after image.
    """
    v.check_sample_rois_args(proposals, gt_boxes, gt_classes, num_classes)
    v.check_threshold(iou_threshold, "iou_threshold")
    background = num_classes
    results = []
    for props, gt, gt_cls in zip(proposals, gt_boxes, gt_classes):  # a loop over images
        dtype = torch.promote_types(props.dtype, gt.dtype)
        boxes = torch.cat([props.to(dtype), gt.to(dtype)]) if append_gt else props.to(dtype)
        idx, labels = iou_match(gt.to(dtype), boxes, (iou_threshold,), _ROI.iou_labels, False)
        if gt.shape[0]:
            classes = torch.where(labels == 1, gt_cls.to(torch.int64)[idx], background)
            classes = torch.where(labels == -1, -1, classes)  # not produced with labels (0, 1)
            matched = gt.to(dtype)[idx]
        else:
            classes = torch.full((boxes.shape[0],), background, dtype=torch.int64, device=boxes.device)
            matched = torch.zeros_like(boxes)
        pos, neg = subsample_masks(classes, batch_size_per_image, positive_fraction, background, generator)
        keep = torch.cat([pos.nonzero().flatten(), neg.nonzero().flatten()])
        results.append((boxes[keep], classes[keep], matched[keep]))
    return results


# ------------------------------------------------------------------------------------------------ head
class BoxHead(layout.BoxHead):
    """FastRCNNConvFCHead with no convs: flatten (C, y, x), then num_fc x (Linear + ReLU); keys fc1.*, fc2.*.

    Layers and init (in the reference's order: same RNG draws) are layout/roi_heads.py's.
    A channels-last input (the fast pooler's output) is read as [R, r * r * C] without a copy when no
    gradient is needed, against fc1's weight permuted to (y, x, c) columns (cached per weight version).
    """

    _yxc: tuple[tuple, Tensor] | None = None  # (weight key, fc1 weight in (y, x, c) column order); not saved

    def _fc1_yxc(self) -> Tensor | None:
        """fc1's weight with (y, x, c) columns, cached per weight version; None for inference tensors (they
        have no version counter, so a cache could go stale)."""
        w = self.fc1.weight
        if w.is_inference():
            return None
        key = (w.data_ptr(), w._version, w.dtype, w.device)
        if self._yxc is None or self._yxc[0] != key:
            r, c = self.resolution, self.in_channels
            with torch.no_grad():
                self._yxc = (key, w.view(-1, c, r, r).permute(0, 2, 3, 1).reshape(w.shape[0], -1).contiguous())
        return self._yxc[1]

    def forward(self, x: Tensor) -> Tensor:
        """x [R, C, r, r] -> [R, fc_dim]."""
        self.check_input(x)
        nhwc = x.permute(0, 2, 3, 1)
        grad = torch.is_grad_enabled() and (x.requires_grad or self.fc1.weight.requires_grad)
        weight = None if grad or x.is_contiguous() or not nhwc.is_contiguous() else self._fc1_yxc()
        if weight is not None:
            h = F.relu_(F.linear(nhwc.reshape(x.shape[0], -1), weight, self.fc1.bias))
        else:
            h = F.relu(self.fc1(x.flatten(1)))  # channel-major: index c * r * r + y * r + x
        for k in range(1, self.num_fc):
            h = F.relu(getattr(self, f"fc{k + 1}")(h))
        return h


class BoxPredictor(layout.BoxPredictor):
    """cls_score (K + 1 logits, background last) and bbox_pred (4K deltas, 4c + j); keys cls_score.*,
    bbox_pred.* (layout/roi_heads.py). The two linears run as one matrix product."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x [R, in_features] (or [R, ...], flattened) -> (logits [R, K+1], deltas [R, 4K])."""
        x = self.check_input(x)
        weight = torch.cat([self.cls_score.weight, self.bbox_pred.weight])
        bias = torch.cat([self.cls_score.bias, self.bbox_pred.bias])
        out = F.linear(x, weight, bias)
        return out[:, : self.num_classes + 1], out[:, self.num_classes + 1 :]


# ------------------------------------------------------------------------------------------------ losses
def roi_losses(class_logits: Tensor, box_deltas: Tensor, proposals: Tensor, gt_classes: Tensor, gt_boxes: Tensor,
               weights: Sequence[float] = _BOX.box_coder.weights,
               smooth_l1_beta: float = _BOX.smooth_l1_beta) -> dict[str, Tensor]:
    """{"loss_cls": mean softmax CE over all R rows (0 without rows), "loss_box_reg": sum over foreground
    rows and 4 coordinates of smooth_l1(delta of the GT class - encode(proposal, gt)) / max(R, 1)}.

    Dense: every row's GT-class slot is gathered and background rows are masked to exactly 0 (they encode a
    unit box onto itself, so their masked targets stay finite).
    """
    r, k = v.check_roi_loss_args(class_logits, box_deltas, proposals, gt_classes, gt_boxes)
    cls = gt_classes.to(torch.int64)
    if r == 0:
        loss_cls = class_logits.sum() * 0.0
    else:
        loss_cls = F.cross_entropy(class_logits, cls, reduction="mean")
    fg = (cls >= 0) & (cls < k)  # [R]
    slot = cls.clamp(0, k - 1)
    pred = box_deltas.reshape(r, k, 4).gather(1, slot[:, None, None].expand(r, 1, 4))[:, 0]  # [R, 4]
    dtype = torch.promote_types(proposals.dtype, gt_boxes.dtype)
    unit = torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=dtype, device=proposals.device)
    src = torch.where(fg[:, None], proposals.to(dtype), unit)
    tgt = torch.where(fg[:, None], gt_boxes.to(dtype), unit)
    target = encode_boxes(src, tgt, weights).to(pred.dtype)  # [R, 4]; background rows are 0
    loss = smooth_l1(pred - target, smooth_l1_beta)
    loss_box = torch.where(fg[:, None], loss, torch.zeros((), dtype=loss.dtype, device=loss.device)).sum()
    return {"loss_cls": loss_cls, "loss_box_reg": loss_box / max(r, 1)}


# ------------------------------------------------------------------------------------------------ inference
def _check_inference_scalars(score_thresh: float, nms_thresh: float, topk_per_image: int) -> None:
    v.check_threshold(score_thresh, "score_thresh", low=float("-inf"), high=float("inf"))
    v.check_threshold(nms_thresh, "nms_thresh")
    if isinstance(topk_per_image, bool) or not isinstance(topk_per_image, int):
        raise ValueError(f"topk_per_image must be an int, got {topk_per_image!r}")


def fast_rcnn_inference(boxes: Sequence[Tensor], scores: Sequence[Tensor], image_sizes: Sequence[tuple[int, int]],
                        score_thresh: float = _INF.score_thresh, nms_thresh: float = _INF.nms_thresh,
                        topk_per_image: int = _INF.detections_per_image, min_box_size: float | None = _INF.min_box_size,
                        drop_nonfinite: bool = _INF.drop_nonfinite) -> list[tuple[Tensor, Tensor, Tensor, Tensor]]:
    """Per image: decoded boxes [Ri, 4K], softmax scores [Ri, K+1] (background last), (h, w) ->
    (boxes [D, 4], scores [D], classes int64 [D], roi_index int64 [D]), score descending, D <= topk_per_image.

    detectron2's per-image steps (drop non-finite rows, drop background, clip, score > thresh, optional
    min_box_size, per-class NMS, top-k; topk < 0 keeps all) for the whole batch at once.
    """
    num_images = v.check_inference_args(boxes, scores, image_sizes, drop_nonfinite)
    _check_inference_scalars(score_thresh, nms_thresh, topk_per_image)
    if num_images == 0:
        return []
    counts = [int(b.shape[0]) for b in boxes]
    num_classes = {s.shape[1] - 1 for s in scores}
    if len(num_classes) != 1:
        raise ValueError(f"scores must have the same K+1 columns in every image, got {sorted(num_classes)}")
    flat_boxes, flat_scores = (boxes[0], scores[0]) if num_images == 1 else (torch.cat(list(boxes)),
                                                                           torch.cat(list(scores)))
    return _inference_flat(flat_boxes, flat_scores, counts, image_sizes, score_thresh, nms_thresh, topk_per_image,
                           min_box_size, drop_nonfinite)


def _inference_flat(boxes: Tensor, scores: Tensor, counts: list[int], image_sizes, score_thresh: float,
                    nms_thresh: float, topk: int, min_box_size: float | None,
                    drop_nonfinite: bool) -> list[tuple[Tensor, Tensor, Tensor, Tensor]]:
    """boxes [R, 4K], scores [R, K+1]: the rows of all images, image after image (counts[n] rows each)."""
    device = boxes.device
    num_rows, num_classes = scores.shape[0], scores.shape[1] - 1
    n = len(counts)
    counts_t = torch.tensor(counts, device=device)
    image = torch.repeat_interleave(torch.arange(n, device=device), counts_t, output_size=num_rows)  # [R]
    starts = torch.cumsum(counts_t, 0) - counts_t
    fg = scores[:, :num_classes]  # background (the last column) never competes        # ROI.INFER_THRESH
    cand = fg > score_thresh  # [R, K]
    if drop_nonfinite:  # whole rows with a non-finite box or score go                   # ROI.INFER_CLIP
        cand &= (torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores).all(dim=1))[:, None]
    pairs = cand.nonzero()  # [M, 2] (row, class), row-major: the reference's candidate order
    row, cls = pairs[:, 0], pairs[:, 1]
    cand_scores = fg[row, cls]
    upper = size_bounds(image_sizes, boxes)  # [N, 4] (w, h, w, h)
    cand_img = image[row]
    cand_boxes = torch.minimum(boxes.reshape(num_rows, num_classes, 4)[row, cls].clamp(min=0), upper[cand_img])
    if min_box_size is not None:  # torchvision's remove_small_boxes
        big = ((cand_boxes[:, 2:] - cand_boxes[:, :2]) >= min_box_size).all(dim=1)
        row, cls, cand_img = row[big], cls[big], cand_img[big]
        cand_scores, cand_boxes = cand_scores[big], cand_boxes[big]
    keep = batched_nms(cand_boxes, cand_scores, cand_img * num_classes + cls, nms_thresh)  # ROI.INFER_NMS
    keep = keep[torch.sort(cand_img[keep], stable=True).indices]  # by image, score order kept inside
    kept_img = cand_img[keep]
    per_image = torch.bincount(kept_img, minlength=n)
    if topk >= 0:                                                                        # ROI.INFER_TOPK
        rank = torch.arange(keep.numel(), device=device) - (torch.cumsum(per_image, 0) - per_image)[kept_img]
        keep = keep[rank < topk]
        per_image = per_image.clamp(max=topk)
    sizes = per_image.tolist()
    out_rows = row[keep] - starts[cand_img[keep]]
    return list(zip(cand_boxes[keep].split(sizes), cand_scores[keep].split(sizes), cls[keep].split(sizes),
                    out_rows.split(sizes)))


def fast_rcnn_inference_static(boxes: Tensor, scores: Tensor, image_sizes: Tensor | Sequence[tuple[int, int]],
                               score_thresh: float = _INF.score_thresh, nms_thresh: float = _INF.nms_thresh,
                               topk_per_image: int = _INF.detections_per_image,
                               min_box_size: float | None = _INF.min_box_size,
                               drop_nonfinite: bool = _INF.drop_nonfinite,
                               max_candidates: int = MAX_CANDIDATES) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """fast_rcnn_inference with static shapes: boxes [N, R, 4K], scores [N, R, K+1], image_sizes [N, 2] ->
    (boxes [N, T, 4], scores [N, T], classes int64 [N, T], count int64 [N]), T = topk_per_image.

    Image n's detections are the first count[n] slots, equal to fast_rcnn_inference's (same order); other
    slots hold zero boxes, score 0 and class -1. No host synchronisation (no .item(), nonzero or boolean
    indexing) when value checks are off. Exact whenever an image has at most max_candidates (roi, class)
    pairs above score_thresh, or at least T detections survive among its max_candidates best: greedy NMS
    decides each pair from higher-scored pairs only, so only later pairs are cut. topk_per_image < 0 means
    T = min(R * K, max_candidates). Candidates are ranked by a stable descending sort of the row-major
    (roi, class) scores, which is the dynamic path's NMS order (ties included).
    """
    v.check_float(boxes, "boxes")
    v.check_float(scores, "scores")
    if scores.dim() != 3 or scores.shape[2] < 2:
        raise ValueError(f"scores must have shape [N, R, K+1] with K >= 1, got {list(scores.shape)}")
    n, r, k1 = scores.shape
    k = k1 - 1
    v.check_shape(boxes, "boxes", (n, r, 4 * k), floating=True)
    v.check_same_device("boxes", boxes, "scores", scores)
    if isinstance(image_sizes, Tensor):
        if tuple(image_sizes.shape) != (n, 2):
            raise ValueError(f"image_sizes must have shape [{n}, 2], got {list(image_sizes.shape)}")
    elif len(image_sizes) != n:
        raise ValueError(f"image_sizes must have one (h, w) per image ({n}), got {len(image_sizes)}")
    _check_inference_scalars(score_thresh, nms_thresh, topk_per_image)
    if isinstance(max_candidates, bool) or not isinstance(max_candidates, int) or max_candidates <= 0:
        raise ValueError(f"max_candidates must be a positive int, got {max_candidates!r}")
    if not drop_nonfinite:
        v.check_finite(boxes, "boxes")
        v.check_finite(scores, "scores")
    m = min(r * k, max_candidates)
    t = topk_per_image if topk_per_image >= 0 else m
    device, dtype = boxes.device, boxes.dtype

    fg = scores[:, :, :k]
    valid = fg > score_thresh  # [N, R, K]
    if drop_nonfinite:
        valid &= (torch.isfinite(boxes).all(dim=2) & torch.isfinite(scores).all(dim=2))[:, :, None]
    upper = size_bounds(image_sizes, boxes)[:, None, :]  # [N, 1, 4] (w, h, w, h)
    clipped = boxes.reshape(n, r * k, 4)
    clipped = torch.where(valid.reshape(n, r * k, 1), clipped, torch.zeros((), dtype=dtype, device=device))
    clipped = torch.minimum(clipped.clamp(min=0), upper)  # [N, R*K, 4]
    valid = valid.reshape(n, r * k)
    if min_box_size is not None:
        valid &= ((clipped[:, :, 2:] - clipped[:, :, :2]) >= min_box_size).all(dim=2)
    neg_inf = torch.full((), float("-inf"), dtype=fg.dtype, device=device)
    ranked = torch.where(valid, fg.reshape(n, r * k), neg_inf)
    order = torch.sort(ranked, dim=1, descending=True, stable=True).indices[:, :m]  # [N, M]
    cand_valid = valid.gather(1, order)
    cand_scores = fg.reshape(n, r * k).gather(1, order)
    cand_boxes = clipped.gather(1, order[:, :, None].expand(n, m, 4))
    cand_cls = order % k

    keep = static_class_nms(cand_boxes, cand_cls, cand_valid, nms_thresh)  # [N, M]
    rank = torch.cumsum(keep, dim=1) - 1
    take = keep & (rank < t)
    slot = torch.where(take, rank, t)  # slot t collects everything not taken and is dropped
    out_boxes = boxes.new_zeros(n, t + 1, 4).scatter_(1, slot[:, :, None].expand(n, m, 4), cand_boxes)[:, :t]
    out_scores = fg.new_zeros(n, t + 1).scatter_(1, slot, cand_scores)[:, :t]
    out_cls = torch.full((n, t + 1), -1, dtype=torch.int64, device=device).scatter_(1, slot, cand_cls)[:, :t]
    count = take.sum(dim=1)
    filled = torch.arange(t, device=device)[None, :] < count[:, None]  # slot t's leftovers never land here
    zero = torch.zeros((), dtype=dtype, device=device)
    return (torch.where(filled[:, :, None], out_boxes, zero), torch.where(filled, out_scores, zero.to(fg.dtype)),
            torch.where(filled, out_cls, -1), count)


def detector_postprocess(boxes: Tensor, input_size: tuple[int, int],
                         output_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """boxes [D, 4] at the network input size (h, w) -> (boxes [D, 4] at output_size, keep bool [D]).

    x scaled by out_w / in_w and y by out_h / in_h, clipped to the output (h, w); keep = width > 0 and
    height > 0 (every row is returned).                                                     # ROI.POSTPROCESS
    """
    in_h, in_w, out_h, out_w = v.check_postprocess_args(boxes, input_size, output_size)
    scale = boxes.new_tensor([out_w / in_w, out_h / in_h, out_w / in_w, out_h / in_h])
    upper = boxes.new_tensor([out_w, out_h, out_w, out_h])
    scaled = torch.minimum((boxes * scale).clamp(min=0), upper)
    return scaled, ((scaled[:, 2:] - scaled[:, :2]) > 0).all(dim=1)


# ------------------------------------------------------------------------------------------------ module
class ROIHeads(layout.ROIHeads):
    """StandardROIHeads' box branch: the reference's forward contract and keys (box_head.*, box_predictor.*);
    constructor and forward's control flow are layout/roi_heads.py's. All images are pooled, decoded and
    post-processed together (``_inference``: one softmax, one decode, one batched NMS).
    """

    box_head_type, box_predictor_type = BoxHead, BoxPredictor
    sample_rois, roi_losses = staticmethod(sample_rois), staticmethod(roi_losses)
    pooler = staticmethod(multilevel_roi_align)
    decode, inference = staticmethod(decode_boxes), staticmethod(fast_rcnn_inference)
