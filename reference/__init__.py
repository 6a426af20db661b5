"""detspec's reference implementation: plain, readable, one spec concept per file.

It reads like the spec (clause IDs in comments, shape legends in docstrings) and favours clarity over speed;
run it in float64 to use it as an oracle. It never imports ``fast``.
"""

from reference.anchors import cell_anchors, grid_anchors
from reference.boxes import box_area, clip_boxes, decode_boxes, encode_boxes, nonempty, pairwise_iou
from reference.matcher import iou_match, match
from reference.nms import batched_nms, nms
from reference.sampling import subsample_labels

__all__ = [
    "batched_nms", "box_area", "cell_anchors", "clip_boxes", "decode_boxes", "encode_boxes", "grid_anchors",
    "iou_match", "match", "nms", "nonempty", "pairwise_iou", "subsample_labels",
]
