"""The assembled Faster R-CNN, built from the fast components. Same contract and state_dict layout as
reference/rcnn.py (detectron2's 295 tensors: backbone.bottom_up.*, backbone.fpn_*, proposal_generator.rpn_head.*,
roi_heads.box_head.*, roi_heads.box_predictor.*). d2-spec §1, §2.13, §5.1.

The batch is built channels-last with normalization fused into padding (fast/preprocess.py); the backbone runs
channels-last with FrozenBN folded; the RPN decodes only its top-k; the ROI heads pool every level in one pass.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import torch
from torch import Tensor, nn

from fast.fpn import FPN
from fast.preprocess import preprocess, scale_boxes
from fast.resnet import ResNet
from fast.roi_heads import ROIHeads, detector_postprocess
from fast.rpn import RPN
from spec import validate as v
from spec.config import BASE_RCNN_FPN, FasterRCNNConfig


class ResNetFPN(FPN):
    """ResNet body as child ``bottom_up`` plus the FPN's convs: [N, 3, H, W] -> {"p2": ..., "p6": ...}."""

    def __init__(self, cfg: FasterRCNNConfig = BASE_RCNN_FPN):
        bottom_up = ResNet(cfg.resnet, in_channels=len(cfg.input.pixel_mean))
        super().__init__([bottom_up.out_feature_channels[f] for f in cfg.fpn.in_features], cfg.fpn)
        self.bottom_up = bottom_up

    def forward(self, images: Tensor) -> dict[str, Tensor]:  # type: ignore[override]
        return super().forward(self.bottom_up(images))


class FasterRCNN(nn.Module):
    """See reference/rcnn.py for the forward contract."""

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
        device = self.pixel_mean.device
        return preprocess([img.to(device) for img in images], self.cfg.input, resize=self.resize,
                          dtype=self.pixel_mean.dtype)

    def forward(self, images: Sequence[Tensor], targets: Sequence[Mapping[str, Tensor]] | None = None,
                generator: torch.Generator | None = None):
        if self.training:
            v.check_detection_targets(targets, len(images))  # before any compute
        batch, sizes, originals = self.preprocess(images)
        features = self.backbone(batch)
        if self.training:
            gt_boxes, gt_classes = [], []
            for i, t in enumerate(targets):
                boxes = t["boxes"].to(batch.device, batch.dtype)
                gt_boxes.append(scale_boxes(boxes, originals[i], sizes[i]) if sizes[i] != originals[i] else boxes)
                gt_classes.append(t["classes"].to(batch.device, torch.int64))
            proposals, rpn_losses = self.proposal_generator(features, sizes, gt_boxes, generator=generator)
            _, roi_losses = self.roi_heads(features, proposals, sizes, gt_boxes, gt_classes, generator=generator)
            return {**rpn_losses, **roi_losses}
        proposals, _ = self.proposal_generator(features, sizes)
        detections, _ = self.roi_heads(features, proposals, sizes)
        results = []
        for (boxes, scores, classes, _), size, original in zip(detections, sizes, originals):
            boxes, keep = detector_postprocess(boxes, size, original)
            results.append({"boxes": boxes[keep], "scores": scores[keep], "classes": classes[keep]})
        return results
