"""The assembled Faster R-CNN from the reference components: pixels -> backbone -> RPN -> ROI heads -> detections.

Spec: d2-spec §1 (every number), §2.13 (inference path), §5.1 (state_dict layout); detectron2
modeling/meta_arch/rcnn.py GeneralizedRCNN.

The meta-architecture (children, state_dict layout, forward contract, RCNN.STATE_DICT, RCNN.TRAIN_LOSSES,
RCNN.EVAL_OUTPUT) is layout/rcnn.py's FasterRCNN; this file chooses the reference's components:

    FasterRCNN(cfg=BASE_RCNN_FPN, num_classes=None, resize=False)
      backbone             ResNetFPN: reference ResNet as ``bottom_up`` + reference FPN
      proposal_generator   reference RPN
      roi_heads            reference ROIHeads
    images are normalized, resized (resize=True) and padded by reference.preprocess, GT boxes scaled by
    scale_boxes, detections rescaled to the original size by detector_postprocess.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from layout import rcnn as layout
from reference.fpn import FPN
from reference.preprocess import preprocess, scale_boxes
from reference.resnet import ResNet
from reference.roi_heads import ROIHeads, detector_postprocess
from reference.rpn import RPN


class ResNetFPN(layout.ResNetFPN, FPN):
    """ResNet body as child ``bottom_up`` plus the FPN's own convs: [N, 3, H, W] -> {"p2": ..., "p6": ...}."""

    bottom_up_type = ResNet


class FasterRCNN(layout.FasterRCNN):
    """FasterRCNN(cfg=BASE_RCNN_FPN, num_classes=None, resize=False): see layout/rcnn.py for the contract."""

    backbone_type, proposal_generator_type, roi_heads_type = ResNetFPN, RPN, ROIHeads
    scale_boxes, postprocess = staticmethod(scale_boxes), staticmethod(detector_postprocess)

    def preprocess(self, images: Sequence[Tensor]) -> tuple[Tensor, list[tuple[int, int]], list[tuple[int, int]]]:
        """-> (padded batch [N, 3, H, W], network (resized, unpadded) sizes, original sizes)."""
        batch, sizes, originals = preprocess([img.to(self.pixel_mean.device) for img in images], self.cfg.input,
                                             resize=self.resize)
        return batch.to(self.pixel_mean.dtype), sizes, originals
