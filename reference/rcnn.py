"""The assembled Faster R-CNN: pixels -> backbone -> RPN -> ROI heads -> detections at the original size.

Spec: d2-spec §1 (every number), §2.13 (inference path), §5.1 (state_dict layout); detectron2
modeling/meta_arch/rcnn.py GeneralizedRCNN.

Children (and so state_dict prefixes, exactly detectron2's 295 tensors):      # RCNN.STATE_DICT
  backbone             ResNetFPN: backbone.bottom_up.* (ResNet-50) and backbone.fpn_lateral{2..5}, fpn_output{2..5}
  proposal_generator   RPN: proposal_generator.rpn_head.{conv, objectness_logits, anchor_deltas}
  roi_heads            ROIHeads: roi_heads.box_head.fc{1,2}, roi_heads.box_predictor.{cls_score, bbox_pred}
pixel_mean / pixel_std are non-persistent buffers (legacy checkpoints that carry them are accepted and ignored).

forward(images, targets=None, generator=None):
  images: N tensors [3, Hi, Wi] in the profile's format (detectron2: BGR, 0-255; torchvision: RGB, 0-1);
  targets (training): N dicts {"boxes": [G, 4] XYXY in the same pixels as the image, "classes": int64 [G] in
  [0, K)}.
  training -> {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg"}                   # RCNN.TRAIN_LOSSES
  eval     -> N dicts {"boxes": [D, 4] in original-image pixels, "scores": [D], "classes": int64 [D]}
              with D <= 100, sorted by score.                                                # RCNN.EVAL_OUTPUT
With ``resize=True`` images are resized by the profile's test transform first (and GT boxes with them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import torch
from torch import Tensor, nn

from reference.fpn import FPN
from reference.preprocess import preprocess, scale_boxes
from reference.resnet import ResNet
from reference.roi_heads import ROIHeads, detector_postprocess
from reference.rpn import RPN
from spec import validate as v
from spec.config import BASE_RCNN_FPN, FasterRCNNConfig


class ResNetFPN(FPN):
    """ResNet body as child ``bottom_up`` plus the FPN's own convs: [N, 3, H, W] -> {"p2": ..., "p6": ...}."""

    def __init__(self, cfg: FasterRCNNConfig = BASE_RCNN_FPN):
        bottom_up = ResNet(cfg.resnet, in_channels=len(cfg.input.pixel_mean))
        super().__init__([bottom_up.out_feature_channels[f] for f in cfg.fpn.in_features], cfg.fpn)
        self.bottom_up = bottom_up

    def forward(self, images: Tensor) -> dict[str, Tensor]:  # type: ignore[override]
        return super().forward(self.bottom_up(images))


class FasterRCNN(nn.Module):
    def __init__(self, cfg: FasterRCNNConfig = BASE_RCNN_FPN, num_classes: int | None = None, resize: bool = False):
        super().__init__()
        if num_classes is not None:
            if num_classes <= 0:
                raise ValueError(f"num_classes must be positive, got {num_classes}")
            cfg = replace(cfg, roi_heads=replace(cfg.roi_heads, num_classes=num_classes))
        self.cfg = cfg
        self.resize = resize
        self.backbone = ResNetFPN(cfg)
        self.proposal_generator = RPN(cfg.rpn, cfg.anchors, in_channels=cfg.fpn.out_channels)
        roi_strides = [self.backbone.out_feature_strides[f] for f in cfg.roi_heads.in_features]
        self.roi_heads = ROIHeads(cfg.roi_heads, cfg.box_head, cfg.inference, in_channels=cfg.fpn.out_channels,
                                  strides=roi_strides)
        self.register_buffer("pixel_mean", torch.tensor(cfg.input.pixel_mean), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(cfg.input.pixel_std), persistent=False)

    @property
    def num_classes(self) -> int:
        return self.cfg.roi_heads.num_classes

    def preprocess(self, images: Sequence[Tensor]) -> tuple[Tensor, list[tuple[int, int]], list[tuple[int, int]]]:
        """-> (padded batch [N, 3, H, W], network (resized, unpadded) sizes, original sizes)."""
        dtype = self.pixel_mean.dtype
        batch, sizes, originals = preprocess([img.to(self.pixel_mean.device) for img in images], self.cfg.input,
                                             resize=self.resize)
        return batch.to(dtype), sizes, originals

    def forward(self, images: Sequence[Tensor], targets: Sequence[Mapping[str, Tensor]] | None = None,
                generator: torch.Generator | None = None):
        if self.training:
            v.check_detection_targets(targets, len(images))  # before any compute
        batch, sizes, originals = self.preprocess(images)
        features = self.backbone(batch)  # {"p2": ..., "p6": ...}

        if self.training:
            gt_boxes, gt_classes = [], []
            for i, t in enumerate(targets):
                boxes = t["boxes"].to(batch.device, batch.dtype)
                if sizes[i] != originals[i]:
                    boxes = scale_boxes(boxes, originals[i], sizes[i])
                gt_boxes.append(boxes)
                gt_classes.append(t["classes"].to(batch.device, torch.int64))
            proposals, rpn_losses = self.proposal_generator(features, sizes, gt_boxes, generator=generator)
            _, roi_losses = self.roi_heads(features, proposals, sizes, gt_boxes, gt_classes, generator=generator)
            return {**rpn_losses, **roi_losses}

        proposals, _ = self.proposal_generator(features, sizes)
        detections, _ = self.roi_heads(features, proposals, sizes)
        results = []
        for (boxes, scores, classes, _), size, original in zip(detections, sizes, originals):
            boxes, keep = detector_postprocess(boxes, size, original)  # rescale, clip, drop empty
            results.append({"boxes": boxes[keep], "scores": scores[keep], "classes": classes[keep]})
        return results

