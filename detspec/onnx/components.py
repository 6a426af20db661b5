"""Contract functions as ONNX graphs: one small torch module per component, exported with torch.onnx.

Every component is exported with the exporter torch 2.14 recommends, ``torch.onnx.export(..., dynamo=True)``
(torch.export + onnxscript), at opset ``OPSET``, with dynamic axes for every box, ROI, class and map size.
Nothing here falls back to the TorchScript exporter: every component below exports with dynamo.

How the components map to ONNX (see SEMANTICS.md for where ONNX's semantics differ from the spec):
- geometry (pairwise_iou, box_area, clip_boxes, nonempty, encode_boxes, decode_boxes, assign_levels,
  detector_postprocess) is element-wise arithmetic; pairwise_iou, box_area and assign_levels trace
  fast/'s functions themselves, the others are small modules whose weights, thresholds and sizes are graph
  inputs (so one graph serves every value);
- nms, batched_nms, select_proposals and fast_rcnn_inference run ONNX ``NonMaxSuppression``: the torch op
  ``detspec_onnx::non_max_suppression`` below (NonMaxSuppression's own signature) is translated to that ONNX
  node through ``custom_translation_table``;
- roi_align and multilevel_roi_align run ONNX ``RoiAlign`` through the torch op ``detspec_onnx::roi_align``
  (eagerly fast.roi_align) and its translation (opset 16+: coordinate_transformation_mode "half_pixel" for
  aligned=True, "output_half_pixel" for aligned=False; sampling_ratio <= 0 -> 0, ONNX's adaptive grid).
  RoiAlign's sizes, scale and sampling ratio are node attributes, so ``component_model`` exports one graph and
  rewrites those attributes for other values.

``component_model(name, dtype, **static)`` returns the ModelProto (cached); ``export_component`` writes it.
detspec/onnx/detector.py assembles the whole detector from these modules.
Shape legend as in spec/contract.py: N boxes / images, M second boxes, K classes, R ROIs, L levels, S selected.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import logging
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import onnx
import torch
from torch import Tensor

import fast
from fast.nms import FLOAT_FORMATS, largest_float_at_most
from spec import validate as v
from spec.config import BASE_RCNN_FPN, SCALE_CLAMP

OPSET = 18  # >= 17 (issue 13); RoiAlign's half_pixel mode needs >= 16, NonMaxSuppression >= 11
INT64_MAX = 2**63 - 1
DOMAIN = "detspec_onnx"

_ROI = BASE_RCNN_FPN.roi_heads
_BOX = BASE_RCNN_FPN.box_head
_INF = BASE_RCNN_FPN.inference
_RPN = BASE_RCNN_FPN.rpn


# ------------------------------------------------------------------------------------------ NonMaxSuppression
@torch.library.custom_op(f"{DOMAIN}::non_max_suppression", mutates_args=())
def non_max_suppression(boxes: Tensor, scores: Tensor, iou_threshold: Tensor, score_threshold: Tensor) -> Tensor:
    """ONNX NonMaxSuppression in torch: boxes [B, N, 4] (x1, y1, x2, y2), scores [B, C, N] -> int64 [S, 3] rows
    (batch, class, box), batch by batch, class by class, each in descending score order.

    Per (batch, class): candidates with score > score_threshold, greedy, suppress when IoU > iou_threshold.
    Eager semantics for completeness (the exported graph runs ONNX Runtime's kernel, never this).
    """
    rows = []
    thr = float(iou_threshold)
    for b in range(boxes.shape[0]):
        for c in range(scores.shape[1]):
            cand = (scores[b, c] > score_threshold).nonzero().flatten()
            with v.value_checks(False):
                kept = cand[fast.nms(boxes[b, cand].float(), scores[b, c, cand].float(), min(max(thr, 0.0), 1.0))]
            rows.append(torch.stack([torch.full_like(kept, b), torch.full_like(kept, c), kept], dim=1))
    return torch.cat(rows) if rows else torch.zeros(0, 3, dtype=torch.int64)


@non_max_suppression.register_fake
def _non_max_suppression_fake(boxes, scores, iou_threshold, score_threshold):
    selected = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((selected, 3), dtype=torch.int64)


def nms_translation(boxes, scores, iou_threshold, score_threshold):
    from onnxscript import opset18 as op

    return op.NonMaxSuppression(boxes, scores, op.Constant(value_ints=[INT64_MAX]), iou_threshold, score_threshold,
                                center_point_box=0)


def _onnx_nms(boxes: Tensor, scores: Tensor, iou_threshold: Tensor, score_threshold: Tensor) -> Tensor:
    """NonMaxSuppression on float32 (the only type ONNX defines for it): boxes [B, N, 4], scores [B, C, N]."""
    return torch.ops.detspec_onnx.non_max_suppression(boxes.float(), scores.float(), iou_threshold.float(),
                                                      score_threshold.float())


# ------------------------------------------------------------------------------------------ RoiAlign
@torch.library.custom_op(f"{DOMAIN}::roi_align", mutates_args=())
def onnx_roi_align(features: Tensor, rois: Tensor, output_height: int, output_width: int, spatial_scale: float,
                   sampling_ratio: int, aligned: bool) -> Tensor:
    """ONNX RoiAlign (avg mode) in torch: features [N, C, H, W], rois [R, 5] -> [R, C, oh, ow]; the contract's
    roi_align (fast's, eagerly). The exported graph runs ONNX Runtime's RoiAlign kernel, never this."""
    with v.value_checks(False):
        return fast.roi_align(features, rois, (output_height, output_width), spatial_scale, sampling_ratio,
                              aligned).contiguous()


@onnx_roi_align.register_fake
def _onnx_roi_align_fake(features, rois, output_height, output_width, spatial_scale, sampling_ratio, aligned):
    return features.new_empty((rois.shape[0], features.shape[1], output_height, output_width))


def roi_align_translation(features, rois, output_height: int, output_width: int, spatial_scale: float,
                          sampling_ratio: int, aligned: bool):
    """-> ONNX RoiAlign: rois split into boxes [R, 4] and int64 batch indices [R]; aligned=True is opset 16's
    coordinate_transformation_mode "half_pixel", aligned=False "output_half_pixel"; sampling_ratio <= 0 (the
    contract's adaptive grid) is ONNX's 0."""
    from onnxscript import opset18 as op

    batch_indices = op.Cast(op.Squeeze(op.Slice(rois, [0], [1], [1]), [1]), to=onnx.TensorProto.INT64)
    boxes = op.Slice(rois, [1], [5], [1])
    return op.RoiAlign(features, boxes, batch_indices, mode="avg", output_height=output_height,
                       output_width=output_width, sampling_ratio=max(sampling_ratio, 0), spatial_scale=spatial_scale,
                       coordinate_transformation_mode="half_pixel" if aligned else "output_half_pixel")


def translations() -> dict:
    """custom_translation_table for torch.onnx.export: detspec's NMS and RoiAlign ops -> ONNX nodes."""
    return {torch.ops.detspec_onnx.non_max_suppression.default: nms_translation,
            torch.ops.detspec_onnx.roi_align.default: roi_align_translation}


def nms_threshold(thr: float) -> float:
    """The float32 iou_threshold that makes NonMaxSuppression's float32 test ``iou > t`` equal the spec's
    comparison of the float32 IoU with the real threshold: the largest float32 <= thr (fast.nms)."""
    return largest_float_at_most(float(thr), *FLOAT_FORMATS[torch.float32])


def _sort_desc(x: Tensor, dim: int = -1) -> Tensor:
    """Indices sorting `x` along `dim` by descending value, ties by lower position: torch.topk over the whole
    axis, exported as ONNX TopK, whose ties keep the lower index first (the stable order; the dynamo exporter
    has no translation of torch.sort(stable=True))."""
    return torch.topk(x, x.shape[dim], dim=dim, largest=True, sorted=True).indices


def _rank_desc(keys: Tensor, scores: Tensor) -> Tensor:
    """Positions of `keys` (distinct int64) ordered by descending score, ties by ascending key.

    Two sorts: by key (distinct, so no ties), then by descending score with ties in key order (ONNX TopK).
    """
    by_key = torch.topk(keys, keys.shape[0], largest=False, sorted=True).indices
    return by_key[_sort_desc(scores[by_key])]


# ------------------------------------------------------------------------------------------ modules
class PairwiseIoU(torch.nn.Module):
    def forward(self, boxes1: Tensor, boxes2: Tensor) -> Tensor:
        return fast.pairwise_iou(boxes1, boxes2)


class BoxArea(torch.nn.Module):
    def forward(self, boxes: Tensor) -> Tensor:
        return fast.box_area(boxes)


class ClipBoxes(torch.nn.Module):
    """boxes [N, 4], upper [4] = (w, h, w, h) of the image (h, w) -> x clamped to [0, w], y to [0, h]."""

    def forward(self, boxes: Tensor, upper: Tensor) -> Tensor:
        return torch.minimum(boxes.clamp(min=0), upper)


class Nonempty(torch.nn.Module):
    """boxes [N, 4], threshold [] (boxes' dtype) -> bool [N]: width > threshold and height > threshold."""

    def forward(self, boxes: Tensor, threshold: Tensor) -> Tensor:
        return ((boxes[:, 2:] - boxes[:, :2]) > threshold).all(dim=1)


class EncodeBoxes(torch.nn.Module):
    """src, target [N, 4], weights [4] -> deltas [N, 4]; fast.encode_boxes' operations with weights an input."""

    def forward(self, src: Tensor, target: Tensor, weights: Tensor) -> Tensor:
        src_wh = src[:, 2:] - src[:, :2]
        tgt_wh = target[:, 2:] - target[:, :2]
        src_ctr = src[:, :2] + 0.5 * src_wh
        tgt_ctr = target[:, :2] + 0.5 * tgt_wh
        d_ctr = weights[:2] * (tgt_ctr - src_ctr) / src_wh
        d_size = weights[2:] * torch.log(tgt_wh / src_wh)
        return torch.cat([d_ctr, d_size], dim=1)


class DecodeBoxes(torch.nn.Module):
    """deltas [N, 4K], boxes [N, 4], weights [4], scale_clamp [] -> [N, 4K]; fast.decode_boxes' operations."""

    def forward(self, deltas: Tensor, boxes: Tensor, weights: Tensor, scale_clamp: Tensor) -> Tensor:
        n = deltas.shape[0]
        d = deltas.reshape(n, -1, 4)  # [N, K, 4]
        size = (boxes[:, 2:] - boxes[:, :2])[:, None, :]  # [N, 1, 2]
        ctr = boxes[:, None, :2] + 0.5 * size
        pred_ctr = d[:, :, :2] / weights[:2] * size + ctr
        pred_size = torch.exp(torch.minimum(d[:, :, 2:] / weights[2:], scale_clamp)) * size
        half = pred_size * 0.5
        return torch.cat([pred_ctr - half, pred_ctr + half], dim=2).reshape(n, -1)


class NMS(torch.nn.Module):
    """boxes [N, 4], scores [N], iou_threshold [] float32 (nms_threshold(thr)) -> kept indices int64 [S]."""

    def forward(self, boxes: Tensor, scores: Tensor, iou_threshold: Tensor) -> Tensor:
        neg_inf = torch.full((), float("-inf"))
        return _onnx_nms(boxes[None], scores[None, None], iou_threshold, neg_inf)[:, 2]


class BatchedNMS(torch.nn.Module):
    """boxes [N, 4], scores [N], groups int64 [N], iou_threshold [] -> kept indices int64 [S].

    Each distinct group id is one NonMaxSuppression class: class g's score row holds the scores of group g's
    boxes and -inf elsewhere, and score_threshold -inf drops the -inf entries. The per-class selections are
    merged by descending score (ties by index).
    """

    def forward(self, boxes: Tensor, scores: Tensor, groups: Tensor, iou_threshold: Tensor) -> Tensor:
        ids = torch.unique(groups)  # [G]
        neg_inf = torch.full((), float("-inf"))
        per_group = torch.where(ids[:, None] == groups[None, :], scores.float()[None, :], neg_inf)  # [G, N]
        kept = _onnx_nms(boxes[None], per_group[None], iou_threshold, neg_inf)[:, 2]
        return kept[_rank_desc(kept, scores[kept])]


class AssignLevels(torch.nn.Module):
    def __init__(self, min_level: int, max_level: int, canonical_box_size: float, canonical_level: int, eps: float,
                 eps_in_log: bool):
        super().__init__()
        self.args = (min_level, max_level, canonical_box_size, canonical_level, eps, eps_in_log)

    def forward(self, boxes: Tensor) -> Tensor:
        return fast.assign_levels(boxes, *self.args)


class ROIAlign(torch.nn.Module):
    """features [N, C, H, W], rois [R, 5] -> [R, C, oh, ow] as one ONNX RoiAlign node."""

    def __init__(self, output_size: tuple[int, int], spatial_scale: float, sampling_ratio: int, aligned: bool):
        super().__init__()
        oh, ow = output_size
        self.args = (int(oh), int(ow), float(spatial_scale), int(sampling_ratio), bool(aligned))

    def forward(self, features: Tensor, rois: Tensor) -> Tensor:
        return torch.ops.detspec_onnx.roi_align(features, rois.to(features.dtype), *self.args)


class MultilevelROIAlign(torch.nn.Module):
    """L maps, rois [R, 5] -> [R, C, out, out]: every level pools every ROI (one RoiAlign node per level) and
    each row keeps the level assign_levels gives it (a Where per level), so rows stay in input order."""

    def __init__(self, output_size: int, strides: Sequence[int], sampling_ratio: int, aligned: bool,
                 canonical_box_size: float, canonical_level: int, eps: float, eps_in_log: bool):
        super().__init__()
        ks = [round(math.log2(s)) for s in strides]
        self.levels = AssignLevels(ks[0], ks[-1], canonical_box_size, canonical_level, eps, eps_in_log)
        self.pools = torch.nn.ModuleList(ROIAlign((output_size, output_size), 1.0 / s, sampling_ratio, aligned)
                                         for s in strides)
        self.min_level = ks[0]

    def forward(self, *args: Tensor) -> Tensor:
        *maps, rois = args
        level = self.levels(rois[:, 1:]) - self.min_level  # [R]
        out = None
        for i, (fmap, pool) in enumerate(zip(maps, self.pools)):  # a loop over levels, unrolled by the export
            pooled = pool(fmap, rois)
            out = pooled if out is None else torch.where((level == i)[:, None, None, None], pooled, out)
        return out


class FastRCNNInference(torch.nn.Module):
    """One image: boxes [R, 4K], scores [R, K+1], upper [4] = (w, h, w, h), score_thresh [] (scores' dtype),
    iou_threshold [] float32 -> (boxes [D, 4], scores [D], classes int64 [D], roi_index int64 [D]).

    Candidates are the (row, class) pairs with score > score_thresh (and finite rows, and boxes at least
    min_box_size after clipping when set); NonMaxSuppression runs with one batch per class (boxes [K, R, 4],
    scores [K, 1, R], the non-candidates at -inf); the kept pairs are ranked by score, ties in row-major
    (row, class) order, and the first topk_per_image are returned.
    """

    def __init__(self, topk: int, min_box_size: float | None, drop_nonfinite: bool):
        super().__init__()
        self.topk, self.min_box_size, self.drop_nonfinite = topk, min_box_size, drop_nonfinite

    def forward(self, boxes: Tensor, scores: Tensor, upper: Tensor, score_thresh: Tensor,
                iou_threshold: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        r, k = scores.shape[0], scores.shape[1] - 1
        fg = scores[:, :k]  # background (the last column) never competes
        valid = fg > score_thresh  # [R, K]
        if self.drop_nonfinite:
            valid = valid & (torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores).all(dim=1))[:, None]
        zero = torch.zeros((), dtype=boxes.dtype)
        clipped = torch.minimum(torch.where(valid[:, :, None], boxes.reshape(r, k, 4), zero).clamp(min=0), upper)
        if self.min_box_size is not None:
            valid = valid & ((clipped[:, :, 2:] - clipped[:, :, :2]) >= self.min_box_size).all(dim=2)
        neg_inf = torch.full((), float("-inf"))
        ranked = torch.where(valid, fg.float(), neg_inf)  # [R, K]
        sel = _onnx_nms(clipped.permute(1, 0, 2), ranked.t()[:, None, :], iou_threshold, neg_inf)  # (class, 0, row)
        cls, row = sel[:, 0], sel[:, 2]
        order = _rank_desc(row * k + cls, fg[row, cls])
        if self.topk >= 0:
            order = order[: self.topk]
        cls, row = cls[order], row[order]
        return clipped[row, cls], fg[row, cls], cls, row


class SelectProposals(torch.nn.Module):
    """L levels of proposals [N, P_i, 4] and logits [N, P_i], upper [N, 4] (w, h, w, h), iou_threshold [] ->
    (boxes [N, T, 4], logits [N, T], count int64 [N], finite bool [N]); image n's proposals are the first
    count[n] slots; finite[n] says that all of image n's top-k candidates were finite (training's check).

    Per level the top pre_nms_topk logits (NaN ranked first, as torch.topk ranks it, through +inf); clip;
    drop non-finite and boxes with a side <= min_box_size; NonMaxSuppression with batch = image and class =
    level (candidates of other levels at -inf); the kept candidates of each image ranked by descending
    score, ties in (level, rank) order, the first post_nms_topk kept.
    """

    def __init__(self, pre_nms_topk: int, post_nms_topk: int, min_box_size: float, rank_by: str,
                 score_thresh: float | None):
        super().__init__()
        self.pre, self.post, self.min_box_size = pre_nms_topk, post_nms_topk, min_box_size
        self.rank_by, self.score_thresh = rank_by, score_thresh

    def forward(self, *args: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        *levels, upper, iou_threshold = args
        num_levels = len(levels) // 2
        proposals, logits = levels[:num_levels], levels[num_levels:]
        scores, boxes, level_ids = [], [], []
        for i, (b, s) in enumerate(zip(proposals, logits)):  # a loop over levels, unrolled by the export
            k = min(s.shape[1], self.pre)
            nan_first = torch.where(torch.isnan(s), torch.full((), float("inf"), dtype=s.dtype), s)
            idx = nan_first.topk(k, dim=1).indices  # [N, k_i]
            scores.append(s.gather(1, idx))
            boxes.append(b.gather(1, idx[:, :, None].expand(-1, -1, 4)))
            level_ids.append(torch.full((k,), i, dtype=torch.int64))
        scores_t, boxes_t, level = torch.cat(scores, dim=1), torch.cat(boxes, dim=1), torch.cat(level_ids)  # [N, K]
        finite = torch.isfinite(boxes_t).all(dim=2) & torch.isfinite(scores_t)
        zero = torch.zeros((), dtype=boxes_t.dtype)
        clipped = torch.minimum(torch.where(finite[:, :, None], boxes_t, zero).clamp(min=0), upper[:, None, :])
        keep = finite & ((clipped[:, :, 2:] - clipped[:, :, :2]) > self.min_box_size).all(dim=2)
        ranking = torch.sigmoid(scores_t) if self.rank_by == "sigmoid" else scores_t
        if self.score_thresh is not None:
            keep = keep & (ranking >= self.score_thresh)
        neg_inf = torch.full((), float("-inf"))
        ranked = torch.where(keep, ranking.float(), neg_inf)  # [N, K]
        per_level = torch.where(level[None, None, :] == torch.arange(num_levels)[None, :, None],
                                ranked[:, None, :], neg_inf)  # [N, L, K]
        sel = _onnx_nms(clipped, per_level, iou_threshold, neg_inf)  # (image, level, candidate)
        kept = torch.zeros(ranked.shape, dtype=torch.bool)
        kept = kept.index_put((sel[:, 0], sel[:, 2]), torch.ones((), dtype=torch.bool))
        masked = torch.where(kept, ranked, neg_inf)
        top = min(self.post, masked.shape[1])
        order = _sort_desc(masked, dim=1)[:, :top]  # [N, top]
        count = kept.sum(dim=1).clamp(max=self.post)
        return (clipped.gather(1, order[:, :, None].expand(-1, -1, 4)), scores_t.gather(1, order), count,
                finite.all(dim=1))


class DetectorPostprocess(torch.nn.Module):
    """boxes [D, 4], scale [4] (out_w / in_w, out_h / in_h, ...), upper [4] (out_w, out_h, out_w, out_h) ->
    (boxes scaled and clipped, keep bool [D]): fast.detector_postprocess with the sizes as inputs."""

    def forward(self, boxes: Tensor, scale: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        scaled = torch.minimum((boxes * scale).clamp(min=0), upper)
        return scaled, ((scaled[:, 2:] - scaled[:, :2]) > 0).all(dim=1)


# ------------------------------------------------------------------------------------------ export specs
@dataclass(frozen=True)
class Export:
    """What torch.onnx.export needs for one component."""

    module: torch.nn.Module
    args: tuple
    dynamic_shapes: tuple
    input_names: list[str]
    output_names: list[str]


def _boxes(n: int, dtype: torch.dtype, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 50
    wh = 1 + torch.rand(n, 2, generator=g, dtype=torch.float64) * 30
    return torch.cat([xy, xy + wh], dim=1).to(dtype)


def _rois(r: int, dtype: torch.dtype, images: int = 2) -> Tensor:
    idx = (torch.arange(r) % images).to(dtype)[:, None]
    return torch.cat([idx, _boxes(r, dtype)], dim=1)


def _upper(dtype: torch.dtype) -> Tensor:
    return torch.tensor([60.0, 40.0, 60.0, 40.0], dtype=dtype)


def _scalar(x: float, dtype: torch.dtype = torch.float32) -> Tensor:
    return torch.tensor(x, dtype=dtype)


def _dim(name: str) -> Any:
    return torch.export.Dim(name, min=0)


def _spec(name: str, dtype: torch.dtype, static: dict) -> Export:
    """The module, example inputs and dynamic axes of component `name` (static: its non-tensor arguments)."""
    n, m, k, r, c, h, w = (_dim(x) for x in ("N", "M", "K4", "R", "C", "H", "W"))
    b5, b7 = _boxes(5, dtype), _boxes(7, dtype, 1)
    if name == "pairwise_iou":
        return Export(PairwiseIoU(), (b5, b7), ({0: n}, {0: m}), ["boxes1", "boxes2"], ["iou"])
    if name == "box_area":
        return Export(BoxArea(), (b5,), ({0: n},), ["boxes"], ["area"])
    if name == "clip_boxes":
        return Export(ClipBoxes(), (b5, _upper(dtype)), ({0: n}, None), ["boxes", "upper"], ["clipped"])
    if name == "nonempty":
        return Export(Nonempty(), (b5, _scalar(0.0, dtype)), ({0: n}, None), ["boxes", "threshold"], ["keep"])
    if name == "encode_boxes":
        return Export(EncodeBoxes(), (b5, _boxes(5, dtype, 1), torch.ones(4, dtype=dtype)), ({0: n}, {0: n}, None),
                      ["src", "target", "weights"], ["deltas"])
    if name == "decode_boxes":
        deltas = torch.zeros(5, 12, dtype=dtype)
        return Export(DecodeBoxes(), (deltas, b5, torch.ones(4, dtype=dtype), _scalar(SCALE_CLAMP, dtype)),
                      ({0: n, 1: 4 * k}, {0: n}, None, None), ["deltas", "boxes", "weights", "scale_clamp"],
                      ["decoded"])
    if name == "nms":
        return Export(NMS(), (b5, torch.rand(5, dtype=dtype), _scalar(0.5)), ({0: n}, {0: n}, None),
                      ["boxes", "scores", "iou_threshold"], ["keep"])
    if name == "batched_nms":
        return Export(BatchedNMS(), (b5, torch.rand(5, dtype=dtype), torch.tensor([0, 1, 0, 2, 1]), _scalar(0.5)),
                      ({0: n}, {0: n}, {0: n}, None), ["boxes", "scores", "groups", "iou_threshold"], ["keep"])
    if name == "assign_levels":
        return Export(AssignLevels(**static), (b5,), ({0: n},), ["boxes"], ["levels"])
    if name == "roi_align":
        feats = torch.randn(2, 3, 9, 11, dtype=dtype)
        return Export(ROIAlign(**static), (feats, _rois(5, dtype)), ({0: n, 1: c, 2: h, 3: w}, {0: r}),
                      ["features", "rois"], ["pooled"])
    if name == "multilevel_roi_align":
        strides = static["strides"]
        maps = tuple(torch.randn(2, 3, 5 * (len(strides) - i) + 3, 4 * (len(strides) - i) + 5, dtype=dtype)
                     for i in range(len(strides)))
        shapes = tuple({0: n, 1: c, 2: _dim(f"H{i}"), 3: _dim(f"W{i}")} for i in range(len(maps)))
        return Export(MultilevelROIAlign(**static), (*maps, _rois(5, dtype)), ((*shapes, {0: r}),),
                      [f"features_{i}" for i in range(len(maps))] + ["rois"], ["pooled"])
    if name == "fast_rcnn_inference":
        boxes = torch.cat([_boxes(6, dtype, s) for s in range(3)], dim=1)  # [6, 12]: K = 3
        scores = torch.softmax(torch.randn(6, 4, dtype=dtype), dim=1)
        return Export(FastRCNNInference(**static),
                      (boxes, scores, _upper(dtype), _scalar(0.05, dtype), _scalar(0.5)),
                      ({0: r, 1: 4 * k}, {0: r, 1: k + 1}, None, None, None),
                      ["boxes", "scores", "upper", "score_thresh", "iou_threshold"],
                      ["det_boxes", "det_scores", "classes", "roi_index"])
    if name == "select_proposals":
        num_levels = static.pop("num_levels")
        props = tuple(_boxes(6 * (i + 2), dtype, i).reshape(2, -1, 4) for i in range(num_levels))
        logits = tuple(torch.randn(2, p.shape[1], dtype=dtype) for p in props)
        p_dims = [_dim(f"P{i}") for i in range(num_levels)]
        shapes = ((*({0: n, 1: p} for p in p_dims), *({0: n, 1: p} for p in p_dims), {0: n}, None),)
        names = ([f"proposals_{i}" for i in range(num_levels)] + [f"logits_{i}" for i in range(num_levels)]
                 + ["upper", "iou_threshold"])
        inputs = (*props, *logits, torch.stack([_upper(dtype)] * 2), _scalar(0.7))
        return Export(SelectProposals(**static), inputs, shapes, names, ["top_boxes", "top_logits", "count", "finite"])
    if name == "detector_postprocess":
        return Export(DetectorPostprocess(), (b5, torch.ones(4, dtype=dtype), torch.full((4,), 100.0, dtype=dtype)),
                      ({0: n}, None, None), ["boxes", "scale", "upper"], ["scaled", "keep"])
    raise KeyError(name)


# name -> default static arguments (keyword arguments of the component's constructor)
COMPONENTS: dict[str, dict[str, Any]] = {
    "pairwise_iou": {},
    "box_area": {},
    "clip_boxes": {},
    "nonempty": {},
    "encode_boxes": {},
    "decode_boxes": {},
    "nms": {},
    "batched_nms": {},
    "assign_levels": dict(min_level=_ROI.min_level, max_level=_ROI.max_level,
                          canonical_box_size=_ROI.canonical_box_size, canonical_level=_ROI.canonical_level,
                          eps=_ROI.level_eps, eps_in_log=_ROI.level_eps_in_log),
    "roi_align": dict(output_size=(_BOX.pooler_resolution, _BOX.pooler_resolution), spatial_scale=0.25,
                      sampling_ratio=_BOX.pooler_sampling_ratio, aligned=_BOX.aligned),
    "multilevel_roi_align": dict(output_size=_BOX.pooler_resolution, strides=tuple(BASE_RCNN_FPN.pooled_strides),
                                 sampling_ratio=_BOX.pooler_sampling_ratio, aligned=_BOX.aligned,
                                 canonical_box_size=_ROI.canonical_box_size, canonical_level=_ROI.canonical_level,
                                 eps=_ROI.level_eps, eps_in_log=_ROI.level_eps_in_log),
    "select_proposals": dict(num_levels=len(BASE_RCNN_FPN.pooled_strides) + 1, pre_nms_topk=_RPN.pre_nms_topk_test,
                             post_nms_topk=_RPN.post_nms_topk_test, min_box_size=_RPN.min_box_size,
                             rank_by=_RPN.rank_by, score_thresh=_RPN.score_thresh),
    "fast_rcnn_inference": dict(topk=_INF.detections_per_image, min_box_size=_INF.min_box_size,
                                drop_nonfinite=_INF.drop_nonfinite),
    "detector_postprocess": {},
}

DTYPES = {"float32": torch.float32, "float64": torch.float64}


@contextlib.contextmanager
def quiet_export() -> Iterator[None]:
    """Silence the exporter's warnings and its IR library's log lines (e.g. onnx_ir's "Attribute type is
    ambiguous" for an empty attribute list), and turn detspec's value checks off (export reads no data)."""
    loggers = [logging.getLogger(name) for name in ("onnx_ir", "onnxscript", "torch.onnx")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), v.value_checks(False):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _export(spec: Export) -> onnx.ModelProto:
    """torch.onnx.export(dynamo=True) of one component, as a checked ModelProto."""
    with quiet_export():
        program = torch.onnx.export(
            spec.module.eval(), spec.args, dynamo=True, opset_version=OPSET, dynamic_shapes=spec.dynamic_shapes,
            input_names=spec.input_names, output_names=spec.output_names, verbose=False, optimize=True,
            custom_translation_table=translations(), report=False)
    model = program.model_proto
    onnx.checker.check_model(model)
    return model


def _freeze(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_freeze(x) for x in value)
    if isinstance(value, tuple):
        return tuple(_freeze(x) for x in value)
    return value


def static_key(name: str, static: dict) -> tuple:
    """COMPONENTS[name] updated with `static`, as a sorted, hashable tuple of (argument, value)."""
    if name not in COMPONENTS:
        raise KeyError(f"unknown component {name!r}; known: {', '.join(COMPONENTS)}")
    args = dict(COMPONENTS[name])
    unknown = set(static) - set(args)
    if unknown:
        raise TypeError(f"component {name!r} takes no argument {sorted(unknown)}; it takes {sorted(args)}")
    args.update(static)
    if name == "roi_align" and isinstance(args["output_size"], int):
        args["output_size"] = (args["output_size"], args["output_size"])
    return tuple(sorted((k, _freeze(v)) for k, v in args.items()))


def component_model(name: str, dtype: torch.dtype = torch.float32, **static: Any) -> onnx.ModelProto:
    """The ONNX model of contract function `name` for inputs of `dtype`, specialised to `static` (the
    constructor arguments in COMPONENTS[name]; defaults are the detectron2 profile's). Cached."""
    return _model(name, dtype, static_key(name, static))


@functools.lru_cache(maxsize=256)
def _model(name: str, dtype: torch.dtype, static: tuple) -> onnx.ModelProto:
    args = dict(static)
    if name == "roi_align":  # one export per dtype; other sizes, scales and sampling ratios rewrite attributes
        return _with_roi_attributes(_base_roi_align(dtype), [args])
    model = _export(_spec(name, dtype, dict(args)))
    model.doc_string = f"detspec contract function {name} ({dtype}); static arguments {args}"
    return model


@functools.lru_cache(maxsize=4)
def _base_roi_align(dtype: torch.dtype) -> onnx.ModelProto:
    return _export(_spec("roi_align", dtype, dict(static_key("roi_align", {}))))


def _with_roi_attributes(model: onnx.ModelProto, configs: list[dict]) -> onnx.ModelProto:
    """A copy of `model` whose RoiAlign nodes (in graph order) get each config's size, scale, sampling ratio
    and coordinate mode; static output shapes are dropped (ONNX Runtime infers them)."""
    out = copy.deepcopy(model)
    nodes = [node for node in out.graph.node if node.op_type == "RoiAlign"]
    if len(nodes) != len(configs):
        raise RuntimeError(f"expected {len(configs)} RoiAlign nodes, found {len(nodes)}")
    for node, cfg in zip(nodes, configs):
        oh, ow = cfg["output_size"]
        values = dict(output_height=int(oh), output_width=int(ow), spatial_scale=float(cfg["spatial_scale"]),
                      sampling_ratio=max(int(cfg["sampling_ratio"]), 0),
                      coordinate_transformation_mode="half_pixel" if cfg["aligned"] else "output_half_pixel")
        kept = [a for a in node.attribute if a.name not in values]
        del node.attribute[:]
        node.attribute.extend(kept + [onnx.helper.make_attribute(k, x) for k, x in values.items()])
    del out.graph.value_info[:]
    for output in out.graph.output:  # symbolic dims: the attributes decide the pooled size
        for i, dim in enumerate(output.type.tensor_type.shape.dim):
            dim.Clear()
            dim.dim_param = f"{output.name}_dim{i}"
    onnx.checker.check_model(out)
    return out


def model_bytes(model: onnx.ModelProto) -> bytes:
    buf = io.BytesIO()
    onnx.save_model(model, buf)
    return buf.getvalue()


def export_component(name: str, path: str, dtype: torch.dtype | str = torch.float32, **static: Any) -> str:
    """Write contract function `name` as an ONNX model (opset OPSET, dynamic axes) to `path`, atomically.

    static: the component's non-tensor arguments (see COMPONENTS); thresholds, weights and sizes that are graph
    inputs are not among them. Returns the path.
    """
    from detspec.io.fileio import atomic_write, check_output

    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        dtype = DTYPES[dtype]
    check_output(path, what="ONNX model")
    model = component_model(name, dtype, **static)
    atomic_write(path, model_bytes(model))
    return path

