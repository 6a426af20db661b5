"""The contract: the names every implementation (reference, fast, or a third-party port) exposes.

An implementation is any object (usually a module) with some of these attributes. A missing name is reported
by the conformance suite as "not implemented" for the clauses that need it. Functions may take extra keyword
arguments with spec defaults, but keep these names, argument orders and meanings.

Shape legend: N, M boxes; G ground-truth boxes; P predictions (anchors or proposals); K classes;
A cell anchors per location; L levels; Hi, Wi the size of level i. Boxes are XYXY float32 in absolute
input-pixel coordinates, with no "+1" in widths.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor


@runtime_checkable
class PairwiseIoU(Protocol):
    def __call__(self, boxes1: Tensor, boxes2: Tensor) -> Tensor:
        """[N,4] x [M,4] -> [N,M] IoU; exactly 0 without overlap."""


class BoxArea(Protocol):
    def __call__(self, boxes: Tensor) -> Tensor:
        """[N,4] -> [N]."""


class ClipBoxes(Protocol):
    def __call__(self, boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
        """[N,4] clipped to (height, width): x in [0, w], y in [0, h]."""


class Nonempty(Protocol):
    def __call__(self, boxes: Tensor, threshold: float = 0.0) -> Tensor:
        """[N,4] -> bool [N]: width > threshold and height > threshold."""


class EncodeBoxes(Protocol):
    def __call__(self, src: Tensor, target: Tensor, weights: Sequence[float]) -> Tensor:
        """[N,4], [N,4] -> [N,4] deltas (dx, dy, dw, dh)."""


class DecodeBoxes(Protocol):
    def __call__(self, deltas: Tensor, boxes: Tensor, weights: Sequence[float], scale_clamp: float) -> Tensor:
        """[N,4K] deltas applied to [N,4] boxes -> [N,4K]; dw, dh clamped from above at scale_clamp."""


class CellAnchors(Protocol):
    def __call__(self, sizes: Sequence[float], aspect_ratios: Sequence[float], round_to_int: bool = False) -> Tensor:
        """-> [len(sizes)*len(aspect_ratios), 4], centred at 0, size-major then ratio order."""


class GridAnchors(Protocol):
    def __call__(self, feature_sizes: Sequence[tuple[int, int]], strides: Sequence[int],
                 cell_anchors: Sequence[Tensor], offset: float = 0.0) -> list[Tensor]:
        """-> one [Hi*Wi*A, 4] tensor per level, flattened in (y, x, anchor) order."""


class Match(Protocol):
    def __call__(self, quality: Tensor, thresholds: Sequence[float], labels: Sequence[int],
                 allow_low_quality_matches: bool) -> tuple[Tensor, Tensor]:
        """quality [G,P] -> (matched GT index int64 [P], label int8 [P]); half-open intervals."""


class IoUMatch(Protocol):
    def __call__(self, gt_boxes: Tensor, boxes: Tensor, thresholds: Sequence[float], labels: Sequence[int],
                 allow_low_quality_matches: bool) -> tuple[Tensor, Tensor]:
        """match(pairwise_iou(gt_boxes [G,4], boxes [P,4]), ...) without the [G,P] matrix in memory at once."""


class SubsampleLabels(Protocol):
    def __call__(self, labels: Tensor, num_samples: int, positive_fraction: float, bg_label: int,
                 generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """labels [P] -> (positive indices, negative indices), int64."""


class NMS(Protocol):
    def __call__(self, boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
        """[N,4], [N] -> kept indices int64, in descending score order; suppress when IoU > threshold."""


class BatchedNMS(Protocol):
    def __call__(self, boxes: Tensor, scores: Tensor, groups: Tensor, iou_threshold: float) -> Tensor:
        """NMS independently per group id; kept indices merged in descending score order."""


# ------------------------------------------------------------------------------------------------ ROI stage
# Shape legend: R ROIs over the whole batch; K foreground classes (background is column/label K, the last);
# S sampled ROIs of one image; D detections of one image. ``rois`` rows are (batch_index, x1, y1, x2, y2).


class AssignLevels(Protocol):
    def __call__(self, boxes: Tensor, min_level: int = 2, max_level: int = 5, canonical_box_size: float = 224.0,
                 canonical_level: int = 4, eps: float = 1e-8, eps_in_log: bool = True) -> Tensor:
        """boxes [R,4] -> int64 [R] absolute FPN level k in [min_level, max_level]:
        k = floor(canonical_level + log2(sqrt(area) / canonical_box_size + eps)) (eps_in_log) or
        floor(canonical_level + log2(sqrt(area) / canonical_box_size) + eps) (torchvision), then clamped."""


class ROIAlign(Protocol):
    def __call__(self, features: Tensor, rois: Tensor, output_size: int | tuple[int, int],
                 spatial_scale: float, sampling_ratio: int, aligned: bool) -> Tensor:
        """features [N,C,H,W], rois [R,5] -> [R,C,oh,ow]; torchvision.ops.roi_align's argument order and
        semantics (sampling_ratio <= 0 = adaptive ceil(roi size / output size); aligned = -0.5 pixel shift)."""


class MultilevelROIAlign(Protocol):
    def __call__(self, features: Sequence[Tensor], rois: Tensor, output_size: int = 7,
                 strides: Sequence[int] = (4, 8, 16, 32), sampling_ratio: int = 0, aligned: bool = True,
                 canonical_box_size: float = 224.0, canonical_level: int = 4, eps: float = 1e-8,
                 eps_in_log: bool = True) -> Tensor:
        """L maps [N,C,Hi,Wi] (level i has stride strides[i] = 2**k), rois [R,5] -> [R,C,out,out] in row order;
        each ROI is pooled from the level assign_levels gives it (min/max level from the strides)."""


class SampleROIs(Protocol):
    def __call__(self, proposals: Sequence[Tensor], gt_boxes: Sequence[Tensor], gt_classes: Sequence[Tensor],
                 num_classes: int, batch_size_per_image: int = 512, positive_fraction: float = 0.25,
                 iou_threshold: float = 0.5, append_gt: bool = True,
                 generator: torch.Generator | None = None) -> list[tuple[Tensor, Tensor, Tensor]]:
        """Per image: proposals [P,4], gt_boxes [G,4], gt_classes int64 [G] in [0, K) ->
        (boxes [S,4], classes int64 [S] with background = num_classes, matched GT boxes [S,4]);
        foreground rows first, then background. Background rows carry the matched GT box (zeros when the image
        has no GT); it carries no loss."""


class ROILosses(Protocol):
    def __call__(self, class_logits: Tensor, box_deltas: Tensor, proposals: Tensor, gt_classes: Tensor,
                 gt_boxes: Tensor, weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0),
                 smooth_l1_beta: float = 0.0) -> dict[str, Tensor]:
        """class_logits [R,K+1], box_deltas [R,4K], proposals/gt_boxes [R,4], gt_classes int64 [R] ->
        {"loss_cls": mean CE, "loss_box_reg": sum over foreground of the GT-class slot / max(R, 1)}."""


class FastRCNNInference(Protocol):
    def __call__(self, boxes: Sequence[Tensor], scores: Sequence[Tensor], image_sizes: Sequence[tuple[int, int]],
                 score_thresh: float = 0.05, nms_thresh: float = 0.5, topk_per_image: int = 100,
                 min_box_size: float | None = None,
                 drop_nonfinite: bool = True) -> list[tuple[Tensor, Tensor, Tensor, Tensor]]:
        """Per image: decoded boxes [Ri,4K], softmax scores [Ri,K+1] (background last), (h, w) ->
        (boxes [D,4], scores [D], classes int64 [D], roi_index int64 [D] = the row each came from), sorted by
        score descending, D <= topk_per_image. min_box_size (torchvision) drops boxes with a side < it
        before NMS; drop_nonfinite (detectron2) drops rows with a non-finite box or score first."""


class DetectorPostprocess(Protocol):
    def __call__(self, boxes: Tensor, input_size: tuple[int, int],
                 output_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """boxes [D,4] at the network's input size -> (boxes rescaled to output_size and clipped, keep mask [D]
        of boxes with width and height > 0)."""


# name -> Protocol. Later issues add select_proposals, assign_levels, roi_align, ... and module classes.
CONTRACT: dict[str, type] = {
    "pairwise_iou": PairwiseIoU,
    "box_area": BoxArea,
    "clip_boxes": ClipBoxes,
    "nonempty": Nonempty,
    "encode_boxes": EncodeBoxes,
    "decode_boxes": DecodeBoxes,
    "cell_anchors": CellAnchors,
    "grid_anchors": GridAnchors,
    "match": Match,
    "iou_match": IoUMatch,
    "subsample_labels": SubsampleLabels,
    "nms": NMS,
    "batched_nms": BatchedNMS,
    "assign_levels": AssignLevels,
    "roi_align": ROIAlign,
    "multilevel_roi_align": MultilevelROIAlign,
    "sample_rois": SampleROIs,
    "roi_losses": ROILosses,
    "fast_rcnn_inference": FastRCNNInference,
    "detector_postprocess": DetectorPostprocess,
}


# Names from DESIGN.md's contract that later components add (RPN, ROI stage, models). Clauses may already cite
# them; an implementation without them gets "not implemented" for those clauses.
PLANNED: tuple[str, ...] = (
    "pad_images", "rpn_targets", "rpn_losses", "select_proposals",
    "BoxHead", "BoxPredictor",
    "ResNet", "FPN", "RPNHead", "RPN", "ROIHeads", "FasterRCNN", "PoolingAttention", "MultiScaleBlock", "MViT",
    "MViTDetBackbone",
)


def missing_names(impl: object) -> list[str]:
    """Contract names that `impl` does not provide (callable attributes only count)."""
    return [name for name in CONTRACT if not callable(getattr(impl, name, None))]
