"""detspec's fast implementation: vectorized, device-agnostic torch, Triton kernels on CUDA.

Same contract and state_dict layouts as ``reference``; never imports it. No Python loops over boxes,
anchors or tokens. Agreement with the reference is checked within ``spec.tolerances``.
"""

from fast.anchors import AnchorCache, cell_anchors, grid_anchors
from fast.boxes import box_area, clip_boxes, decode_boxes, encode_boxes, nonempty, pairwise_iou
from fast.matcher import iou_match, match
from fast.nms import batched_nms, nms
from fast.sampling import subsample_labels, subsample_masks

__all__ = [
    "AnchorCache", "batched_nms", "box_area", "cell_anchors", "clip_boxes", "decode_boxes", "encode_boxes",
    "grid_anchors", "iou_match", "match", "nms", "nonempty", "pairwise_iou", "subsample_labels",
    "subsample_masks",
]
