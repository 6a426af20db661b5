"""ROI heads (box branch) layout: box head, box predictor and the ROIHeads module with its control flow.

Spec: d2-spec §1.5, §2.10-§2.13; detectron2 modeling/roi_heads/roi_heads.py (StandardROIHeads), box_head.py
(FastRCNNConvFCHead), fast_rcnn.py (FastRCNNOutputLayers).

state_dict keys under ``roi_heads.`` (d2-spec §5.1), in this order:
    box_head.fc{k}.{weight,bias}            [fc_dim, C * r * r] for k = 1, [fc_dim, fc_dim] after; [fc_dim]
    box_predictor.cls_score.{weight,bias}   [K + 1, fc_dim], [K + 1] (background is the last row)
    box_predictor.bbox_pred.{weight,bias}   [4K, fc_dim], [4K] (row 4c + j: class c, delta j)

The layout classes hold the constructors, initialisation and config checks, and ROIHeads.forward's control flow
(sampling in training, pooling, head, predictor, losses or inference). ``reference.roi_heads`` and
``fast.roi_heads`` subclass them: BoxHead and BoxPredictor get their forward; ROIHeads points the class attributes
``box_head_type`` / ``box_predictor_type`` at those, and ``sample_rois`` / ``roi_losses`` / ``pooler`` / ``decode``
/ ``inference`` at the implementation's functions.

Shape legend: N images; K foreground classes, background is class/column K (the last); P proposals of one image;
R ROIs over the batch (rows in image order); D detections of one image; r the pooler resolution (7); C channels
(256). Boxes are XYXY in input pixels.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from layout.precision import full_precision, geometry_dtype, widen
from spec import validate as v
from spec.config import BASE_RCNN_FPN, BoxHeadConfig, InferenceConfig, ROIHeadsConfig

_ROI = BASE_RCNN_FPN.roi_heads
_BOX = BASE_RCNN_FPN.box_head
_INF = BASE_RCNN_FPN.inference


class BoxHead(nn.Module):
    """FastRCNNConvFCHead with no convs: flatten, then num_fc x (Linear + ReLU).            # ROI.BOX_HEAD

    [R, C, r, r] is flattened channel-major (C, y, x) to C * r * r = 12544, then
    fc1 12544 -> 1024 + ReLU, fc2 1024 -> 1024 + ReLU (children fc1, fc2, ...).
    Init c2_xavier_fill: kaiming_uniform_(a=1) weights, zero biases.
    """

    def __init__(self, in_channels: int = BASE_RCNN_FPN.fpn.out_channels,
                 resolution: int = _BOX.pooler_resolution, fc_dim: int = _BOX.fc_dim, num_fc: int = _BOX.num_fc):
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

    def check_input(self, x: Tensor) -> None:
        """x must be a floating [R, C, r, r] tensor."""
        v.check_shape(x, "x", (None, self.in_channels, self.resolution, self.resolution), floating=True)


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

    def check_input(self, x: Tensor) -> Tensor:
        """x [R, in_features] (or [R, ...], flattened) -> x as [R, in_features]; ValueError otherwise."""
        x = v.check_float(x, "x")
        if x.dim() > 2:
            x = x.flatten(1)
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"x must have shape [R, {self.in_features}], got {list(x.shape)}")
        return x


def proposal_boxes(proposals: object, num_images: int) -> list[Tensor]:
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


class ROIHeads(nn.Module):
    """StandardROIHeads' box branch: pooler, box head, predictor; losses in training, detections at test.

    Children ``box_head`` (BoxHead) and ``box_predictor`` (BoxPredictor).
    forward(features, proposals, image_sizes, gt_boxes=None, gt_classes=None, generator=None):
      features: L maps [N, C, Hi, Wi] (P2..P5), or a mapping read in cfg.in_features order (p6 ignored);
      proposals: per image [P, 4] or (boxes [P, 4], logits [P]) as the RPN returns (no gradient flows in);
      image_sizes: N unpadded (h, w); gt_boxes / gt_classes: per image [G, 4] / int64 [G], training only.
    training -> ([], {"loss_cls", "loss_box_reg" * bbox_reg_loss_weight}), on sample_rois' rows;
    eval -> (per image (boxes [D, 4], scores [D], classes [D], roi_index [D]) at the input size, {}):
      softmax scores, decode_boxes(deltas, proposals, weights, scale_clamp), then fast_rcnn_inference.
    strides: the strides of the pooled maps, one per cfg.in_features (FasterRCNNConfig.pooled_strides).
    """

    box_head_type: type[BoxHead] = BoxHead
    box_predictor_type: type[BoxPredictor] = BoxPredictor
    # the implementation's functions (staticmethods in a subclass); see reference/roi_heads.py for their contracts
    sample_rois: Callable[..., list[tuple[Tensor, Tensor, Tensor]]]
    roi_losses: Callable[..., dict[str, Tensor]]
    pooler: Callable[..., Tensor]  # multilevel_roi_align
    decode: Callable[..., Tensor]  # decode_boxes(deltas, boxes, weights, scale_clamp)
    inference: Callable[..., list[tuple[Tensor, Tensor, Tensor, Tensor]]]  # fast_rcnn_inference

    def __init__(self, cfg: ROIHeadsConfig = _ROI, box_cfg: BoxHeadConfig = _BOX,
                 inference_cfg: InferenceConfig = _INF, in_channels: int = BASE_RCNN_FPN.fpn.out_channels,
                 strides: Sequence[int] = BASE_RCNN_FPN.pooled_strides):
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
        self.box_head = self.box_head_type(in_channels, box_cfg.pooler_resolution, box_cfg.fc_dim, box_cfg.num_fc)
        self.box_predictor = self.box_predictor_type(box_cfg.fc_dim, cfg.num_classes)

    def forward(self, features: Sequence[Tensor] | Mapping[str, Tensor],
                proposals: Sequence[Tensor | tuple[Tensor, Tensor]], image_sizes: Sequence[tuple[int, int]],
                gt_boxes: Sequence[Tensor] | None = None, gt_classes: Sequence[Tensor] | None = None,
                generator: torch.Generator | None = None) -> tuple[list[tuple[Tensor, Tensor, Tensor, Tensor]],
                                                                  dict[str, Tensor]]:
        cfg = self.cfg
        features = v.features_in_order(features, cfg.in_features)
        maps = v.check_level_features(features, self.strides)
        n = maps[0].shape[0]
        boxes = proposal_boxes(proposals, n)
        if len(image_sizes) != n:
            raise ValueError(f"image_sizes has {len(image_sizes)} entries for {n} images")

        device = maps[0].device
        if self.training:
            if gt_boxes is None or gt_classes is None:
                raise ValueError("gt_boxes and gt_classes are required in training mode (one per image)")
            with torch.no_grad(), full_precision(device):  # ROI.SAMPLE_APPEND_GT, ROI.SAMPLE_MATCH, SAMPLE_COUNT
                sampled = self.sample_rois(boxes, gt_boxes, gt_classes, cfg.num_classes, cfg.batch_size_per_image,
                                           cfg.positive_fraction, cfg.iou_thresholds[0], cfg.proposal_append_gt,
                                           generator)
            boxes = [s[0] for s in sampled]
        all_boxes = torch.cat(boxes)  # [R, 4]: the images' rows, image after image
        logits, deltas = self._predict(maps, boxes, all_boxes)  # [R, K+1], [R, 4K] in float32 or float64
        with full_precision(device):
            return self._losses_or_detections(logits, deltas, boxes, all_boxes, image_sizes,
                                              sampled if self.training else None)

    def _losses_or_detections(self, logits: Tensor, deltas: Tensor, boxes: list[Tensor], all_boxes: Tensor,
                              image_sizes: Sequence[tuple[int, int]],
                              sampled: list[tuple[Tensor, Tensor, Tensor]] | None,
                              ) -> tuple[list[tuple[Tensor, Tensor, Tensor, Tensor]], dict[str, Tensor]]:
        box_cfg = self.box_cfg
        if sampled is not None:  # ROI.LOSS_CLS, ROI.LOSS_BOX
            raw = self.roi_losses(logits, deltas, all_boxes.to(logits.dtype), torch.cat([s[1] for s in sampled]),
                                  torch.cat([s[2] for s in sampled]).to(logits.dtype), box_cfg.box_coder.weights,
                                  box_cfg.smooth_l1_beta)
            return [], {"loss_cls": raw["loss_cls"],
                        "loss_box_reg": raw["loss_box_reg"] * box_cfg.bbox_reg_loss_weight}
        return self._inference(logits, deltas, boxes, all_boxes, image_sizes), {}

    def _predict(self, maps: list[Tensor], boxes: list[Tensor], all_boxes: Tensor) -> tuple[Tensor, Tensor]:
        """Pool every image's boxes (rows in image order) and run the head and predictor."""
        cfg, box_cfg = self.cfg, self.box_cfg
        device = maps[0].device
        dtype = geometry_dtype(maps[0].dtype)  # ROI coordinates never in bf16 / fp16 (PRECISION.GEOMETRY_FP32)
        with full_precision(device):
            counts = torch.tensor([b.shape[0] for b in boxes], device=device)
            image = torch.repeat_interleave(torch.arange(len(boxes), device=device), counts,
                                            output_size=all_boxes.shape[0])  # [R]: the image each row belongs to
            rois = torch.cat([image[:, None].to(dtype), all_boxes.to(dtype)], dim=1)  # [R, 5]
            pooled = self.pooler(maps, rois, box_cfg.pooler_resolution, self.strides, box_cfg.pooler_sampling_ratio,
                                 box_cfg.aligned, cfg.canonical_box_size, cfg.canonical_level, cfg.level_eps,
                                 cfg.level_eps_in_log)  # [R, C, r, r] in the maps' dtype          # ROI.POOLER_LEVELS
        logits, deltas = self.box_predictor(self.box_head(pooled))  # PRECISION.AUTOCAST (the caller's region)
        return widen(logits), widen(deltas)

    def _inference(self, logits: Tensor, deltas: Tensor, boxes: list[Tensor], all_boxes: Tensor,
                   image_sizes: Sequence[tuple[int, int]]) -> list[tuple[Tensor, Tensor, Tensor, Tensor]]:
        """logits [R, K+1], deltas [R, 4K] of the proposals (per image boxes[n], all of them all_boxes [R, 4]) ->
        per image (boxes [D, 4], scores [D], classes [D], roi_index [D]): softmax scores, every class's box
        decoded from its proposal, then the implementation's fast_rcnn_inference (ROI.INFER_*)."""
        box_cfg, inf = self.box_cfg, self.inference_cfg
        counts = [b.shape[0] for b in boxes]
        probs = F.softmax(logits, dim=-1)  # [R, K+1]
        decoded = self.decode(deltas, all_boxes.to(deltas.dtype), box_cfg.box_coder.weights,
                              box_cfg.box_coder.scale_clamp)  # [R, 4K]
        return self.inference(list(decoded.split(counts)), list(probs.split(counts)), image_sizes, inf.score_thresh,
                              inf.nms_thresh, inf.detections_per_image, inf.min_box_size, inf.drop_nonfinite)
