"""The ROI heads (box branch): training sampling, box head, predictor, losses, inference and the module.

Spec: d2-spec §1.5, §2.10, §2.12, §2.13; detectron2 modeling/roi_heads/roi_heads.py (StandardROIHeads,
label_and_sample_proposals), box_head.py (FastRCNNConvFCHead), fast_rcnn.py (FastRCNNOutputLayers,
fast_rcnn_inference), modeling/postprocessing.py (detector_postprocess).

Shape legend: N images; K foreground classes, background is class/column K (the last); P proposals and
G ground-truth boxes of one image; S sampled ROIs of one image; R ROIs over the batch (rows in image order);
D detections of one image; r the pooler resolution (7); C channels (256). Boxes are XYXY in input pixels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reference.boxes import clip_boxes, decode_boxes, encode_boxes, nonempty
from reference.matcher import iou_match
from reference.nms import batched_nms
from reference.poolers import POOLED_STRIDES, multilevel_roi_align
from reference.rpn import smooth_l1
from reference.sampling import subsample_labels
from spec import validate as v
from spec.config import BASE_RCNN_FPN, BoxHeadConfig, InferenceConfig, ROIHeadsConfig

_ROI = BASE_RCNN_FPN.roi_heads
_BOX = BASE_RCNN_FPN.box_head
_INF = BASE_RCNN_FPN.inference
_CHANNELS = BASE_RCNN_FPN.fpn.out_channels


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
class BoxHead(nn.Module):
    """FastRCNNConvFCHead with no convs: flatten, then num_fc x (Linear + ReLU).            # ROI.BOX_HEAD

    [R, C, r, r] is flattened channel-major (C, y, x) to C * r * r = 12544, then
    fc1 12544 -> 1024 + ReLU, fc2 1024 -> 1024 + ReLU (children fc1, fc2, ...).
    Init c2_xavier_fill: kaiming_uniform_(a=1) weights, zero biases.
    """

    def __init__(self, in_channels: int = _CHANNELS, resolution: int = _BOX.pooler_resolution,
                 fc_dim: int = _BOX.fc_dim, num_fc: int = _BOX.num_fc):
        super().__init__()
        if min(in_channels, resolution, fc_dim, num_fc) <= 0:
            raise ValueError(f"in_channels, resolution, fc_dim and num_fc must be positive, got {in_channels}, "
                             f"{resolution}, {fc_dim} and {num_fc}")
        self.in_channels, self.resolution, self.fc_dim, self.num_fc = in_channels, resolution, fc_dim, num_fc
        previous = in_channels * resolution * resolution
        for k in range(num_fc):
            fc = nn.Linear(previous, fc_dim)
            nn.init.kaiming_uniform_(fc.weight, a=1)  # c2_xavier_fill
            nn.init.constant_(fc.bias, 0.0)
            self.add_module(f"fc{k + 1}", fc)
            previous = fc_dim

    def forward(self, x: Tensor) -> Tensor:
        """x [R, C, r, r] -> [R, fc_dim]."""
        v.check_shape(x, "x", (None, self.in_channels, self.resolution, self.resolution), floating=True)
        x = x.flatten(1)  # channel-major: index c * r * r + y * r + x
        for k in range(self.num_fc):
            x = F.relu(getattr(self, f"fc{k + 1}")(x))
        return x


class BoxPredictor(nn.Module):
    """FastRCNNOutputLayers' two linear layers.                                              # ROI.PREDICTOR

    cls_score  in -> K + 1 logits (column K is background), init normal std 0.01, bias 0
    bbox_pred  in -> 4K class-specific deltas (column 4c + j), init normal std 0.001, bias 0
    With 1024 inputs and K = 80: 83,025 + 328,000 parameters.                                 # ROI.HEAD_PARAMS
    """

    def __init__(self, in_features: int = _BOX.fc_dim, num_classes: int = _ROI.num_classes):
        super().__init__()
        if in_features <= 0 or num_classes <= 0:
            raise ValueError(f"in_features and num_classes must be positive, got {in_features} and {num_classes}")
        self.in_features, self.num_classes = in_features, num_classes
        self.cls_score = nn.Linear(in_features, num_classes + 1)
        self.bbox_pred = nn.Linear(in_features, 4 * num_classes)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.constant_(self.cls_score.bias, 0.0)
        nn.init.constant_(self.bbox_pred.bias, 0.0)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x [R, in_features] (or [R, ...], flattened) -> (logits [R, K+1], deltas [R, 4K])."""
        x = v.check_float(x, "x")
        if x.dim() > 2:
            x = x.flatten(1)
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"x must have shape [R, {self.in_features}], got {list(x.shape)}")
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
    v.check_boxes(boxes, "boxes", ordered=False)
    for name, size in (("input_size", input_size), ("output_size", output_size)):
        if len(size) != 2 or min(float(s) for s in size) <= 0:
            raise ValueError(f"{name} must be a positive (h, w), got {size!r}")
    in_h, in_w = (float(s) for s in input_size)
    out_h, out_w = (float(s) for s in output_size)
    scale = boxes.new_tensor([out_w / in_w, out_h / in_h, out_w / in_w, out_h / in_h])
    scaled = clip_boxes(boxes * scale, (out_h, out_w))
    return scaled, nonempty(scaled)


# ------------------------------------------------------------------------------------------------ module
class ROIHeads(nn.Module):
    """StandardROIHeads' box branch: pooler, box head, predictor; losses in training, detections at test.

    Children ``box_head`` (BoxHead) and ``box_predictor`` (BoxPredictor): state_dict keys box_head.fc1.weight,
    ..., box_predictor.cls_score.weight, box_predictor.bbox_pred.bias.
    forward(features, proposals, image_sizes, gt_boxes=None, gt_classes=None, generator=None):
      features: L maps [N, C, Hi, Wi] (P2..P5), or a mapping read in cfg.in_features order (p6 ignored);
      proposals: per image [P, 4] or (boxes [P, 4], logits [P]) as the RPN returns (no gradient flows in);
      image_sizes: N unpadded (h, w); gt_boxes / gt_classes: per image [G, 4] / int64 [G], training only.
    training -> ([], {"loss_cls", "loss_box_reg" * bbox_reg_loss_weight}), on sample_rois' rows;
    eval -> (per image (boxes [D, 4], scores [D], classes [D], roi_index [D]) at the input size, {}):
      softmax scores, decode_boxes(deltas, proposals, weights, scale_clamp), then fast_rcnn_inference.
    """

    def __init__(self, cfg: ROIHeadsConfig = _ROI, box_cfg: BoxHeadConfig = _BOX,
                 inference_cfg: InferenceConfig = _INF, in_channels: int = _CHANNELS,
                 strides: Sequence[int] = POOLED_STRIDES):
        super().__init__()
        if cfg.background_label != "last":
            raise ValueError(f"detspec's layout puts background last; got cfg.background_label "
                             f"{cfg.background_label!r}")
        if box_cfg.num_conv != 0 or box_cfg.cls_agnostic_bbox_reg:
            raise ValueError("only num_conv = 0 and class-specific box regression are implemented")
        if len(cfg.iou_thresholds) != 1:
            raise ValueError(f"cfg.iou_thresholds must hold one threshold, got {cfg.iou_thresholds}")
        if len(strides) != len(cfg.in_features):
            raise ValueError(f"strides must have one entry per cfg.in_features {list(cfg.in_features)}, "
                             f"got {list(strides)}")
        self.cfg, self.box_cfg, self.inference_cfg = cfg, box_cfg, inference_cfg
        self.strides = tuple(int(s) for s in strides)
        self.box_head = BoxHead(in_channels, box_cfg.pooler_resolution, box_cfg.fc_dim, box_cfg.num_fc)
        self.box_predictor = BoxPredictor(box_cfg.fc_dim, cfg.num_classes)

    def forward(self, features: Sequence[Tensor] | Mapping[str, Tensor],
                proposals: Sequence[Tensor | tuple[Tensor, Tensor]], image_sizes: Sequence[tuple[int, int]],
                gt_boxes: Sequence[Tensor] | None = None, gt_classes: Sequence[Tensor] | None = None,
                generator: torch.Generator | None = None) -> tuple[list[tuple[Tensor, Tensor, Tensor, Tensor]],
                                                                  dict[str, Tensor]]:
        cfg, box_cfg = self.cfg, self.box_cfg
        if isinstance(features, Mapping):
            missing = [name for name in cfg.in_features if name not in features]
            if missing:
                raise ValueError(f"features is missing {missing}; expected {list(cfg.in_features)}")
            features = [features[name] for name in cfg.in_features]
        maps = v.check_level_features(features, self.strides)
        n = maps[0].shape[0]
        boxes = _proposal_boxes(proposals, n)
        if len(image_sizes) != n:
            raise ValueError(f"image_sizes has {len(image_sizes)} entries for {n} images")

        if self.training:
            if gt_boxes is None or gt_classes is None:
                raise ValueError("gt_boxes and gt_classes are required in training mode (one per image)")
            with torch.no_grad():
                sampled = sample_rois(boxes, gt_boxes, gt_classes, cfg.num_classes, cfg.batch_size_per_image,
                                      cfg.positive_fraction, cfg.iou_thresholds[0], cfg.proposal_append_gt,
                                      generator)
            boxes = [s[0] for s in sampled]
        logits, deltas = self._predict(maps, boxes)  # [R, K+1], [R, 4K]

        if self.training:
            raw = roi_losses(logits, deltas, torch.cat([s[0] for s in sampled]).to(logits.dtype),
                             torch.cat([s[1] for s in sampled]), torch.cat([s[2] for s in sampled]).to(logits.dtype),
                             box_cfg.box_coder.weights, box_cfg.smooth_l1_beta)
            return [], {"loss_cls": raw["loss_cls"],
                        "loss_box_reg": raw["loss_box_reg"] * box_cfg.bbox_reg_loss_weight}

        counts = [b.shape[0] for b in boxes]
        probs = F.softmax(logits, dim=-1).split(counts)
        decoded = [decode_boxes(d, b.to(d.dtype), box_cfg.box_coder.weights, box_cfg.box_coder.scale_clamp)
                   for d, b in zip(deltas.split(counts), boxes)]
        inf = self.inference_cfg
        detections = fast_rcnn_inference(decoded, list(probs), image_sizes, inf.score_thresh, inf.nms_thresh,
                                         inf.detections_per_image, inf.min_box_size, inf.drop_nonfinite)
        return detections, {}

    def _predict(self, maps: list[Tensor], boxes: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Pool every image's boxes (rows in image order) and run the head and predictor."""
        cfg, box_cfg = self.cfg, self.box_cfg
        dtype, device = maps[0].dtype, maps[0].device
        rois = torch.cat([torch.cat([torch.full((b.shape[0], 1), float(i), dtype=dtype, device=device),
                                     b.to(dtype)], dim=1) for i, b in enumerate(boxes)])  # [R, 5]
        pooled = multilevel_roi_align(maps, rois, box_cfg.pooler_resolution, self.strides,
                                      box_cfg.pooler_sampling_ratio, box_cfg.aligned, cfg.canonical_box_size,
                                      cfg.canonical_level, cfg.level_eps, cfg.level_eps_in_log)  # [R, C, r, r]
        return self.box_predictor(self.box_head(pooled))


def _proposal_boxes(proposals: object, num_images: int) -> list[Tensor]:
    """Per image [P, 4] boxes (detached) from [P, 4] tensors or (boxes, logits) pairs."""
    if isinstance(proposals, Tensor) or not isinstance(proposals, Sequence) or len(proposals) != num_images:
        count = len(proposals) if isinstance(proposals, Sequence) else type(proposals).__name__
        raise ValueError(f"proposals must be a list with one [P, 4] tensor or (boxes, logits) pair per image "
                         f"({num_images}), got {count}")
    out = []
    for i, p in enumerate(proposals):
        b = p[0] if isinstance(p, (tuple, list)) else p
        out.append(v.check_boxes(b, f"proposals[{i}]").detach())
    return out
