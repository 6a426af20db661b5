"""The assembled Faster R-CNN from the fast components. Same contract and state_dict layout as reference/rcnn.py;
the meta-architecture is layout/rcnn.py's FasterRCNN (d2-spec §1, §2.13, §5.1).

The batch is built channels-last with normalization fused into padding (fast/preprocess.py); the backbone runs
channels-last with FrozenBN folded; the RPN decodes only its top-k; the ROI heads pool every level in one pass.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from fast.fpn import FPN
from fast.preprocess import preprocess, scale_boxes
from fast.resnet import ResNet
from fast.roi_heads import ROIHeads, detector_postprocess
from fast.rpn import RPN
from layout import rcnn as layout


class ResNetFPN(layout.ResNetFPN, FPN):
    """ResNet body as child ``bottom_up`` plus the FPN's convs: [N, 3, H, W] -> {"p2": ..., "p6": ...}."""

    bottom_up_type = ResNet


class FasterRCNN(layout.FasterRCNN):
    """See layout/rcnn.py for the forward contract."""

    backbone_type, proposal_generator_type, roi_heads_type = ResNetFPN, RPN, ROIHeads
    scale_boxes, postprocess = staticmethod(scale_boxes), staticmethod(detector_postprocess)

    def preprocess(self, images: Sequence[Tensor]) -> tuple[Tensor, list[tuple[int, int]], list[tuple[int, int]]]:
        device = self.pixel_mean.device
        return preprocess([img.to(device) for img in images], self.cfg.input, resize=self.resize,
                          dtype=self.pixel_mean.dtype)
