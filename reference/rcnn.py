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

from layout.rcnn import assemble
from reference.fpn import FPN
from reference.mvit_det import MViTDetBackbone
from reference.preprocess import preprocess, scale_boxes
from reference.resnet import ResNet
from reference.roi_heads import ROIHeads, detector_postprocess
from reference.rpn import RPN

ResNetFPN, FasterRCNN = assemble(__name__, resnet=ResNet, fpn=FPN, rpn=RPN, roi_heads=ROIHeads, preprocess=preprocess,
                                 scale_boxes=scale_boxes, postprocess=detector_postprocess,
                                 mvit=MViTDetBackbone)
