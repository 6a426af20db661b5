"""detspec's reference implementation: plain, readable, one spec concept per file.

It reads like the spec (clause IDs in comments, shape legends in docstrings) and favours clarity over speed;
run it in float64 to use it as an oracle. It never imports ``fast``; the constructors of its parameter-bearing
modules (and the Faster R-CNN meta-architecture) are the shared skeletons in ``layout``.
"""

from layout.lazy import lazy_attributes
from reference.anchors import cell_anchors, grid_anchors
from reference.boxes import box_area, clip_boxes, decode_boxes, encode_boxes, nonempty, pairwise_iou
from reference.matcher import iou_match, match
from reference.nms import batched_nms, nms

# Imported eagerly: the submodule reference.roi_align would otherwise shadow the function of the same name
# once any other module imports it (the import system binds the submodule on the package).
from reference.roi_align import roi_align
from reference.sampling import subsample_labels

__all__ = [
    "batched_nms", "box_area", "cell_anchors", "clip_boxes", "decode_boxes", "encode_boxes", "grid_anchors",
    "iou_match", "match", "nms", "nonempty", "pairwise_iou", "roi_align", "subsample_labels",
]


# Model components load on first use (they import torch.nn machinery the geometry core does not need).
_LAZY = {
    "FrozenBatchNorm2d": "reference.batch_norm",
    "pad_images": "reference.image_list",
    "ResNet": "reference.resnet",
    "FPN": "reference.fpn",
    "RPNHead": "reference.rpn",
    "RPN": "reference.rpn",
    "rpn_targets": "reference.rpn",
    "rpn_losses": "reference.rpn",
    "PoolingAttention": "reference.mvit",
    "MultiScaleBlock": "reference.mvit",
    "MViT": "reference.mvit",
    "MViTDetBackbone": "reference.mvit_det",
    "select_proposals": "reference.proposals",
    "FasterRCNN": "reference.rcnn",
    "ResNetFPN": "reference.rcnn",
    "preprocess": "reference.preprocess",
    "assign_levels": "reference.poolers",
    "multilevel_roi_align": "reference.poolers",
    "sample_rois": "reference.roi_heads",
    "roi_losses": "reference.roi_heads",
    "fast_rcnn_inference": "reference.roi_heads",
    "detector_postprocess": "reference.roi_heads",
    "BoxHead": "reference.roi_heads",
    "BoxPredictor": "reference.roi_heads",
    "ROIHeads": "reference.roi_heads",
}

__getattr__, __dir__ = lazy_attributes(globals(), _LAZY)
