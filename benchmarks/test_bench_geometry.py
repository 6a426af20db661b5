"""Geometry benchmarks: RPN anchor labelling (IoU + match) and RPN batched NMS, reference vs fast vs torchvision.

Run (the project's addopts disable benchmarks, so enable them explicitly):

    .venv/bin/python -m pytest benchmarks/test_bench_geometry.py --benchmark-enable --benchmark-only \
        --benchmark-json=out/bench.json -p no:cacheprovider
    python benchmarks/report.py out/bench.json

Workloads (DESIGN.md "Performance method": an 800x1216 input):

- ``iou_match``: 20 GT boxes x 242,991 anchors (P2-P6 at 200x304 ... 13x19, 3 anchors per location), RPN
  thresholds (0.3, 0.7), labels (0, -1, 1), low-quality matches on; all from ``spec.config``.
- ``batched_nms``: 5 levels (group id = level), IoU threshold ``rpn.nms_thresh`` (0.7). Workload "rpn":
  per level the top-min(1000, anchors) anchors of a smooth random objectness map with 15 object blobs,
  decoded with small random deltas, clipped, empty boxes dropped (P6 only has 741 anchors, so about 4.7k
  boxes, as in detectron2's ``find_top_rpn_proposals``). Workload "uniform": 5 x 1000 boxes, uniform
  positions, sides 1-200 px. Scores are distinct, coordinates are multiples of 1/64 px (exact under
  torchvision's class-offset trick), so every implementation keeps exactly the same indices; this is
  asserted once per workload, outside the timed region.

Every implementation is called through its public API, input validation included; inputs are built and
moved to the device outside the timed region.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
import torchvision
from torchvision.models.detection._utils import Matcher

import fast
import reference
from spec.config import BASE_RCNN_FPN

RPN = BASE_RCNN_FPN.rpn
ANCHORS = BASE_RCNN_FPN.anchors
IMAGE_HW = (800, 1216)
FEATURE_SIZES = ((200, 304), (100, 152), (50, 76), (25, 38), (13, 19))
NUM_GT = 20
BOXES_PER_LEVEL = RPN.pre_nms_topk_test  # 1000
NUM_BLOBS = 15
QUANTUM = 1.0 / 64  # box coordinates are multiples of this (see module docstring)
SEED = 0

# Rounds per implementation: each group stays well under a minute on a 2-core CPU.
IOU_ROUNDS = {"reference": 10, "reference-f64": 6, "fast": 30, "torchvision": 20}
NMS_ROUNDS = {"reference": 3, "fast": 30, "torchvision": 30}


# ---------------------------------------------------------------------------------------------- workloads
@functools.cache
def anchors_800x1216() -> list[torch.Tensor]:
    """Per-level anchors of an 800x1216 input (CPU, float32), built with the fast anchor generator."""
    cells = [fast.cell_anchors(s, r, ANCHORS.round_cell_anchors) for s, r in zip(ANCHORS.sizes, ANCHORS.aspect_ratios)]
    return fast.grid_anchors(FEATURE_SIZES, ANCHORS.strides, cells, ANCHORS.offset)


def _gt_boxes(gen: torch.Generator) -> torch.Tensor:
    """NUM_GT boxes with sides 20-400 px (log-uniform), fully inside the image."""
    h, w = IMAGE_HW
    side = torch.exp(torch.empty(NUM_GT, 2).uniform_(math.log(20.0), math.log(400.0), generator=gen))  # (w, h)
    x1 = torch.rand(NUM_GT, generator=gen) * (w - side[:, 0])
    y1 = torch.rand(NUM_GT, generator=gen) * (h - side[:, 1])
    return torch.stack([x1, y1, x1 + side[:, 0], y1 + side[:, 1]], dim=1)


@functools.cache
def iou_match_workload(device: str) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(SEED)
    gt = _gt_boxes(gen)
    anchors = torch.cat(anchors_800x1216())
    return gt.to(device), anchors.to(device)


def _smooth_objectness(anchors: torch.Tensor, blobs: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A smooth random objectness for each anchor: Gaussian blobs in position and log-scale, plus noise.

    blobs: [B, 5] = (cx, cy, size, sigma, amplitude).
    """
    acx = (anchors[:, 0] + anchors[:, 2]) / 2
    acy = (anchors[:, 1] + anchors[:, 3]) / 2
    asz = ((anchors[:, 2] - anchors[:, 0]) * (anchors[:, 3] - anchors[:, 1])).sqrt()
    d2 = (acx[:, None] - blobs[None, :, 0]) ** 2 + (acy[:, None] - blobs[None, :, 1]) ** 2  # [P, B]
    pos = torch.exp(-d2 / (2 * blobs[None, :, 3] ** 2))
    scale = torch.exp(-0.5 * (torch.log2(asz[:, None] / blobs[None, :, 2]) / 0.75) ** 2)
    logit = (blobs[None, :, 4] * pos * scale).sum(dim=1)
    return logit + 0.05 * torch.rand(anchors.shape[0], generator=gen)


def _quantize_and_clip(boxes: torch.Tensor) -> torch.Tensor:
    h, w = IMAGE_HW
    boxes = reference.clip_boxes(boxes, IMAGE_HW)
    boxes = torch.round(boxes / QUANTUM) * QUANTUM
    return torch.minimum(boxes.clamp(min=0), torch.tensor([w, h, w, h], dtype=boxes.dtype))


def _distinct_scores(rank_key: torch.Tensor) -> torch.Tensor:
    """Scores in (0, 1), all distinct, in the order of rank_key (ties broken by index)."""
    n = rank_key.numel()
    order = torch.sort(rank_key, stable=True).indices
    scores = torch.empty(n, dtype=torch.float32)
    scores[order] = (torch.arange(n, dtype=torch.float32) + 1) / (n + 1)
    return scores


def _rpn_proposals(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    h, w = IMAGE_HW
    blobs = torch.stack([
        torch.rand(NUM_BLOBS, generator=gen) * w,  # cx
        torch.rand(NUM_BLOBS, generator=gen) * h,  # cy
        torch.exp(torch.empty(NUM_BLOBS).uniform_(math.log(24.0), math.log(480.0), generator=gen)),  # size
        torch.zeros(NUM_BLOBS),  # sigma, set below
        torch.empty(NUM_BLOBS).uniform_(0.5, 1.0, generator=gen),  # amplitude
    ], dim=1)
    blobs[:, 3] = 0.35 * blobs[:, 2]  # objectness falls off over about a third of the object size
    boxes, keys, groups = [], [], []
    for level, anchors in enumerate(anchors_800x1216()):
        logit = _smooth_objectness(anchors, blobs, gen)
        k = min(BOXES_PER_LEVEL, anchors.shape[0])
        top, idx = logit.topk(k)
        deltas = torch.randn(k, 4, generator=gen) * torch.tensor([0.1, 0.1, 0.2, 0.2])
        boxes.append(reference.decode_boxes(deltas, anchors[idx], RPN.box_coder.weights))
        keys.append(top)
        groups.append(torch.full((k,), level, dtype=torch.int64))
    boxes = _quantize_and_clip(torch.cat(boxes))
    keys, groups = torch.cat(keys), torch.cat(groups)
    keep = reference.nonempty(boxes, RPN.min_box_size)
    return boxes[keep], _distinct_scores(keys[keep]), groups[keep]


def _uniform_boxes(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    h, w = IMAGE_HW
    n = len(FEATURE_SIZES) * BOXES_PER_LEVEL
    side = 1.0 + 199.0 * torch.rand(n, 2, generator=gen)  # (w, h) in [1, 200]
    x1 = torch.rand(n, generator=gen) * (w - side[:, 0])
    y1 = torch.rand(n, generator=gen) * (h - side[:, 1])
    boxes = _quantize_and_clip(torch.stack([x1, y1, x1 + side[:, 0], y1 + side[:, 1]], dim=1))
    scores = _distinct_scores(torch.randperm(n, generator=gen).float())
    groups = torch.arange(len(FEATURE_SIZES)).repeat_interleave(BOXES_PER_LEVEL)
    return boxes, scores, groups


@functools.cache
def nms_workload(workload: str, device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(SEED + 1)
    make = {"rpn": _rpn_proposals, "uniform": _uniform_boxes}[workload]
    boxes, scores, groups = make(gen)
    assert torch.unique(scores).numel() == scores.numel(), "scores must be distinct"
    return boxes.to(device), scores.to(device), groups.to(device)


# ---------------------------------------------------------------------------------------------- iou_match
_LOW, _HIGH = RPN.iou_thresholds
_MATCH_ARGS = (RPN.iou_thresholds, RPN.iou_labels, RPN.allow_low_quality_matches)


def _reference_match(gt: torch.Tensor, anchors: torch.Tensor):
    return reference.match(reference.pairwise_iou(gt, anchors), *_MATCH_ARGS)


def _fast_match(gt: torch.Tensor, anchors: torch.Tensor):
    return fast.iou_match(gt, anchors, *_MATCH_ARGS)


_TV_MATCHER = Matcher(_HIGH, _LOW, allow_low_quality_matches=RPN.allow_low_quality_matches)


def _torchvision_match(gt: torch.Tensor, anchors: torch.Tensor):
    return _TV_MATCHER(torchvision.ops.box_iou(gt, anchors))


def _tv_to_spec(tv_matches: torch.Tensor) -> torch.Tensor:
    """torchvision's encoding (-1 below low, -2 between, GT index above) -> spec labels (0, -1, 1)."""
    labels = torch.ones_like(tv_matches, dtype=torch.int8)
    labels[tv_matches == Matcher.BELOW_LOW_THRESHOLD] = RPN.iou_labels[0]
    labels[tv_matches == Matcher.BETWEEN_THRESHOLDS] = RPN.iou_labels[1]
    return labels


@functools.cache
def check_iou_match(device: str) -> dict[str, int]:
    """All implementations agree (float32): same labels; same matched GT wherever the label is 1."""
    gt, anchors = iou_match_workload(device)
    ref_m, ref_l = _reference_match(gt, anchors)
    fast_m, fast_l = _fast_match(gt, anchors)
    tv = _torchvision_match(gt, anchors)
    assert torch.equal(fast_m, ref_m) and torch.equal(fast_l, ref_l), "fast.iou_match != reference (float32)"
    assert torch.equal(_tv_to_spec(tv), ref_l), "torchvision Matcher labels != reference labels"
    fg = ref_l == 1
    assert torch.equal(tv[fg], ref_m[fg]), "torchvision matched GT != reference on foreground"
    f64_m, f64_l = _reference_match(gt.double(), anchors.double())
    return {
        "foreground": int(fg.sum()), "ignored": int((ref_l == -1).sum()), "background": int((ref_l == 0).sum()),
        "labels_differing_f32_vs_f64": int((f64_l != ref_l).sum()),
    }


IOU_IMPLS = {
    "reference": (_reference_match, torch.float32),
    "reference-f64": (_reference_match, torch.float64),
    "fast": (_fast_match, torch.float32),
    "torchvision": (_torchvision_match, torch.float32),
}


@pytest.mark.benchmark(group="iou_match")
@pytest.mark.parametrize("implementation", list(IOU_IMPLS))
def test_iou_match(benchmark, bench_device, timed, implementation):
    counts = check_iou_match(str(bench_device))
    fn, dtype = IOU_IMPLS[implementation]
    gt, anchors = (t.to(dtype) for t in iou_match_workload(str(bench_device)))
    benchmark.extra_info.update(num_gt=gt.shape[0], num_anchors=anchors.shape[0], dtype=str(dtype),
                                image_hw=list(IMAGE_HW), **counts)
    benchmark.pedantic(timed(lambda: fn(gt, anchors)), rounds=IOU_ROUNDS[implementation], warmup_rounds=1)


# ---------------------------------------------------------------------------------------------- batched_nms
NMS_IMPLS = {
    "reference": reference.batched_nms,
    "fast": fast.batched_nms,
    "torchvision": torchvision.ops.batched_nms,
}


@functools.cache
def check_batched_nms(workload: str, device: str) -> int:
    """fast, torchvision and reference keep exactly the same indices, in the same order."""
    boxes, scores, groups = nms_workload(workload, device)
    keeps = {name: fn(boxes, scores, groups, RPN.nms_thresh) for name, fn in NMS_IMPLS.items()}
    assert torch.equal(keeps["fast"], keeps["torchvision"]), f"{workload}: fast and torchvision keep differ"
    assert torch.equal(keeps["reference"], keeps["torchvision"]), f"{workload}: reference and torchvision differ"
    return int(keeps["fast"].numel())


@pytest.mark.benchmark(group="batched_nms")
@pytest.mark.parametrize("implementation", list(NMS_IMPLS))
@pytest.mark.parametrize("workload", ["rpn", "uniform"])
def test_batched_nms(benchmark, bench_device, timed, workload, implementation):
    kept = check_batched_nms(workload, str(bench_device))
    boxes, scores, groups = nms_workload(workload, str(bench_device))
    fn = NMS_IMPLS[implementation]
    benchmark.extra_info.update(workload=workload, num_boxes=boxes.shape[0], num_groups=len(FEATURE_SIZES),
                                kept=kept, iou_threshold=RPN.nms_thresh)
    benchmark.pedantic(timed(lambda: fn(boxes, scores, groups, RPN.nms_thresh)),
                       rounds=NMS_ROUNDS[implementation], warmup_rounds=1)
