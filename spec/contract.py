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
}


# Names from DESIGN.md's contract that later components add (RPN, ROI stage, models). Clauses may already cite
# them; an implementation without them gets "not implemented" for those clauses.
PLANNED: tuple[str, ...] = (
    "pad_images", "rpn_targets", "rpn_losses", "select_proposals",
    "assign_levels", "roi_align", "multilevel_roi_align", "fast_rcnn_inference",
    "ResNet", "FPN", "RPNHead", "RPN", "ROIHeads", "FasterRCNN", "PoolingAttention", "MultiScaleBlock", "MViT",
)


def missing_names(impl: object) -> list[str]:
    """Contract names that `impl` does not provide (callable attributes only count)."""
    return [name for name in CONTRACT if not callable(getattr(impl, name, None))]
