"""detspec's fast implementation: vectorized, device-agnostic torch, Triton kernels on CUDA.

Same contract and state_dict layouts as ``reference`` (the parameter-bearing modules of both subclass the
skeletons in ``layout``); never imports it. No Python loops over boxes, anchors or tokens. Agreement with the
reference is checked within ``spec.tolerances``.
"""

from fast.anchors import AnchorCache, cell_anchors, grid_anchors
from fast.boxes import box_area, clip_boxes, decode_boxes, encode_boxes, nonempty, pairwise_iou
from fast.matcher import iou_match, match
from fast.nms import batched_nms, nms

# Imported eagerly: the submodule fast.roi_align would otherwise shadow the function of the same name once
# any other module (fast.poolers) imports it (the import system binds the submodule on the package).
from fast.roi_align import roi_align
from fast.sampling import subsample_labels, subsample_masks
from layout.lazy import lazy_attributes

__all__ = [
    "AnchorCache", "batched_nms", "box_area", "cell_anchors", "clip_boxes", "decode_boxes", "encode_boxes",
    "grid_anchors", "iou_match", "match", "nms", "nonempty", "pairwise_iou", "roi_align", "subsample_labels",
    "subsample_masks",
]


# Model components load on first use (they import torch.nn machinery the geometry core does not need).
_LAZY = {
    "FrozenBatchNorm2d": "fast.batch_norm",
    "pad_images": "fast.image_list",
    "ResNet": "fast.resnet",
    "FPN": "fast.fpn",
    "RPNHead": "fast.rpn",
    "RPN": "fast.rpn",
    "rpn_targets": "fast.rpn",
    "rpn_losses": "fast.rpn",
    "PoolingAttention": "fast.mvit",
    "MultiScaleBlock": "fast.mvit",
    "MViT": "fast.mvit",
    "MViTDetBackbone": "fast.mvit_det",
    "select_proposals": "fast.proposals",
    "FasterRCNN": "fast.rcnn",
    "ResNetFPN": "fast.rcnn",
    "preprocess": "fast.preprocess",
    "select_proposals_static": "fast.proposals",
    "assign_levels": "fast.poolers",
    "multilevel_roi_align": "fast.poolers",
    "sample_rois": "fast.roi_heads",
    "roi_losses": "fast.roi_heads",
    "fast_rcnn_inference": "fast.roi_heads",
    "fast_rcnn_inference_static": "fast.roi_heads",
    "detector_postprocess": "fast.roi_heads",
    "BoxHead": "fast.roi_heads",
    "BoxPredictor": "fast.roi_heads",
    "ROIHeads": "fast.roi_heads",
}

__getattr__, __dir__ = lazy_attributes(globals(), _LAZY)
