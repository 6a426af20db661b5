"""The Faster R-CNN meta-architecture: pixels -> backbone -> RPN -> ROI heads -> detections at the original size.

Spec: d2-spec §1 (every number), §2.13 (inference path), §5.1 (state_dict layout); detectron2
modeling/meta_arch/rcnn.py GeneralizedRCNN.

One meta-architecture, parameterised by its components: an implementation subclasses FasterRCNN and names its
classes and functions in the class attributes

    backbone_type            ResNetFPN subclass (its ``bottom_up_type`` names the ResNet) -> child ``backbone``
    proposal_generator_type  RPN(cfg.rpn, cfg.anchors, in_channels=...)                   -> ``proposal_generator``
    roi_heads_type           ROIHeads(cfg.roi_heads, cfg.box_head, cfg.inference, ...)    -> ``roi_heads``
    prepare                  preprocess(images, input_cfg, resize=, dtype=) -> (padded batch, network sizes,
                             original sizes): normalize, resize (resize=True) and pad
    scale_boxes              scale_boxes(boxes, from_size, to_size): GT boxes to the network size (training)
    postprocess              detector_postprocess(boxes, input_size, output_size) -> (boxes, keep)

Everything is built from the FasterRCNNConfig passed in. With the layout's own component classes (the defaults) the
model has every parameter but no forward: detspec.checkpoints builds it on the meta device to derive the checkpoint
layout.

Children (and so state_dict prefixes, exactly detectron2's 295 tensors, in this order):     # RCNN.STATE_DICT
  backbone             ResNetFPN: backbone.fpn_lateral{2..5}, fpn_output{2..5} and backbone.bottom_up.* (ResNet-50)
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
With ``autocast_dtype`` (torch.bfloat16 or torch.float16) the backbone and the heads' convs and linears run in that
dtype and the geometry in float32 (layout/precision.py: PRECISION.AUTOCAST, GEOMETRY_FP32, OUTPUT_FP32).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

import torch
from torch import Tensor, nn

from layout import precision
from layout.fpn import FPN
from layout.mvit_det import MViTDetBackbone
from layout.resnet import ResNet
from layout.roi_heads import ROIHeads
from layout.rpn import RPN
from spec import validate as v
from spec.config import BASE_RCNN_FPN, FasterRCNNConfig


class ResNetFPN(FPN):
    """The body as child ``bottom_up`` plus the FPN's own convs: [N, 3, H, W] -> {"p2": ..., "p6": ...}.

    The body is the ResNet (``bottom_up_type``, from cfg.resnet), or detectron2's MViTv2 (``mvit_type``) when
    cfg.mvit is set (profiles detectron2-mvitv2-t/s/b; d2-spec §4.7): its scale2..scale5 feed the same FPN, and its
    keys sit under ``backbone.bottom_up.`` as in a detectron2 checkpoint. An implementation mixes this class with
    its FPN (``class ResNetFPN(layout.rcnn.ResNetFPN, FPN)``) and sets ``bottom_up_type`` and ``mvit_type`` to its
    own; forward runs the body, then that FPN's forward.
    """

    bottom_up_type: type[ResNet] = ResNet
    mvit_type: type[MViTDetBackbone] = MViTDetBackbone

    def __init__(self, cfg: FasterRCNNConfig = BASE_RCNN_FPN):
        if cfg.mvit is not None:
            bottom_up = self.mvit_type(cfg.mvit)
        else:
            bottom_up = self.bottom_up_type(cfg.resnet, in_channels=len(cfg.input.pixel_mean))
        super().__init__(cfg.fpn_in_channels, cfg.fpn)  # the FPN's convs first: detectron2's key order
        self.bottom_up = bottom_up

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        return super().forward(self.bottom_up(images))


class FasterRCNN(nn.Module):
    """GeneralizedRCNN with detspec's components; see the module docstring for the contract."""

    backbone_type: type[ResNetFPN] = ResNetFPN
    proposal_generator_type: type[RPN] = RPN
    roi_heads_type: type[ROIHeads] = ROIHeads
    prepare: Callable[..., tuple[Tensor, list[tuple[int, int]], list[tuple[int, int]]]]
    scale_boxes: Callable[[Tensor, tuple[int, int], tuple[int, int]], Tensor]
    postprocess: Callable[[Tensor, tuple[int, int], tuple[int, int]], tuple[Tensor, Tensor]]

    def __init__(self, cfg: FasterRCNNConfig = BASE_RCNN_FPN, num_classes: int | None = None, resize: bool = False,
                 autocast_dtype: torch.dtype | None = None):
        super().__init__()
        self.autocast_dtype = precision.check_autocast_dtype(autocast_dtype)  # a forward option, not state
        if num_classes is not None:
            if num_classes <= 0:
                raise ValueError(f"num_classes must be positive, got {num_classes}")
            cfg = replace(cfg, roi_heads=replace(cfg.roi_heads, num_classes=num_classes))
        self.cfg = cfg
        self.resize = resize
        self.backbone = self.backbone_type(cfg)
        self.proposal_generator = self.proposal_generator_type(cfg.rpn, cfg.anchors, in_channels=cfg.fpn.out_channels)
        self.roi_heads = self.roi_heads_type(cfg.roi_heads, cfg.box_head, cfg.inference,
                                             in_channels=cfg.fpn.out_channels, strides=cfg.pooled_strides)
        self.register_buffer("pixel_mean", torch.tensor(cfg.input.pixel_mean), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(cfg.input.pixel_std), persistent=False)

    @property
    def num_classes(self) -> int:
        return self.cfg.roi_heads.num_classes

    def preprocess(self, images: Sequence[Tensor]) -> tuple[Tensor, list[tuple[int, int]], list[tuple[int, int]]]:
        """-> (padded batch [N, 3, H, W] in pixel_mean's dtype and device, network (resized, unpadded) sizes,
        original sizes), by the implementation's ``prepare``."""
        device = self.pixel_mean.device
        return self.prepare([img.to(device) for img in images], self.cfg.input, resize=self.resize,
                            dtype=self.pixel_mean.dtype)

    def forward(self, images: Sequence[Tensor], targets: Sequence[Mapping[str, Tensor]] | None = None,
                generator: torch.Generator | None = None):
        if self.training:
            v.check_detection_targets(targets, len(images))  # before any compute
        batch, sizes, originals = self.preprocess(images)
        with precision.autocast(batch.device, self.autocast_dtype):  # PRECISION.AUTOCAST
            return self._forward(batch, sizes, originals, targets, generator)

    def _forward(self, batch: Tensor, sizes: list[tuple[int, int]], originals: list[tuple[int, int]],
                 targets: Sequence[Mapping[str, Tensor]] | None, generator: torch.Generator | None):
        """The stages; the RPN and the ROI heads switch autocast off for their geometry (PRECISION.GEOMETRY_FP32)."""
        features = self.backbone(batch)  # {"p2": ..., "p6": ...}

        if self.training:
            gt_boxes, gt_classes = [], []
            for i, t in enumerate(targets):
                boxes = t["boxes"].to(batch.device, batch.dtype)
                if sizes[i] != originals[i]:
                    boxes = self.scale_boxes(boxes, originals[i], sizes[i])
                gt_boxes.append(boxes)
                gt_classes.append(t["classes"].to(batch.device, torch.int64))
            proposals, rpn_losses = self.proposal_generator(features, sizes, gt_boxes, generator=generator)
            _, roi_losses = self.roi_heads(features, proposals, sizes, gt_boxes, gt_classes, generator=generator)
            return {**rpn_losses, **roi_losses}

        proposals, _ = self.proposal_generator(features, sizes)
        detections, _ = self.roi_heads(features, proposals, sizes)
        results = []
        with precision.full_precision(batch.device):
            for (boxes, scores, classes, _), size, original in zip(detections, sizes, originals):
                boxes, keep = self.postprocess(boxes, size, original)  # rescale, clip, drop empty  # ROI.POSTPROCESS
                results.append({"boxes": boxes[keep], "scores": scores[keep], "classes": classes[keep]})
        return results  # float32 boxes and scores under autocast                           # PRECISION.OUTPUT_FP32


def assemble(module: str, *, resnet: type[ResNet], fpn: type[FPN], rpn: type[RPN], roi_heads: type[ROIHeads],
             preprocess: Callable, scale_boxes: Callable, postprocess: Callable,
             mvit: type[MViTDetBackbone] = MViTDetBackbone) -> tuple[type[ResNetFPN], type[FasterRCNN]]:
    """An implementation's (ResNetFPN, FasterRCNN) classes from its components, defined as if in ``module``:

    ResNetFPN(layout ResNetFPN, fpn) with bottom_up_type = resnet and mvit_type = mvit;
    FasterRCNN(layout FasterRCNN) with backbone_type = that ResNetFPN, proposal_generator_type = rpn,
    roi_heads_type = roi_heads, prepare = preprocess, scale_boxes, postprocess (see the module docstring).
    """
    backbone = type("ResNetFPN", (ResNetFPN, fpn), {
        "__module__": module, "__qualname__": "ResNetFPN", "bottom_up_type": resnet, "mvit_type": mvit,
        "__doc__": f"{resnet.__module__}.ResNet (or {mvit.__module__}.MViTDetBackbone when cfg.mvit is set) "
                   f"as child ``bottom_up`` plus {fpn.__module__}.FPN: [N, 3, H, W] -> {{'p2': ..., 'p6': ...}}."})
    model = type("FasterRCNN", (FasterRCNN,), {
        "__module__": module, "__qualname__": "FasterRCNN", "backbone_type": backbone,
        "proposal_generator_type": rpn, "roi_heads_type": roi_heads, "prepare": staticmethod(preprocess),
        "scale_boxes": staticmethod(scale_boxes), "postprocess": staticmethod(postprocess),
        "__doc__": f"FasterRCNN(cfg=BASE_RCNN_FPN, num_classes=None, resize=False) from {module.partition('.')[0]}'s "
                   "components; see layout/rcnn.py for the contract."})
    return backbone, model
