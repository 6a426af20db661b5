"""The assembled Faster R-CNN from the fast components. Same contract and state_dict layout as reference/rcnn.py;
the meta-architecture is layout/rcnn.py's FasterRCNN (d2-spec §1, §2.13, §5.1).

The batch is built channels-last with normalization fused into padding (fast/preprocess.py); the backbone runs
channels-last with FrozenBN folded; the RPN decodes only its top-k; the ROI heads pool every level in one pass.
"""

from __future__ import annotations

from fast.fpn import FPN
from fast.mvit_det import MViTDetBackbone
from fast.preprocess import preprocess, scale_boxes
from fast.resnet import ResNet
from fast.roi_heads import ROIHeads, detector_postprocess
from fast.rpn import RPN
from layout.rcnn import assemble

ResNetFPN, FasterRCNN = assemble(__name__, resnet=ResNet, fpn=FPN, rpn=RPN, roi_heads=ROIHeads, preprocess=preprocess,
                                 scale_boxes=scale_boxes, postprocess=detector_postprocess,
                                 mvit=MViTDetBackbone)
