"""Golden vectors: the contract's inputs and expected outputs as plain numpy files, for ports outside Python.

  detspec vectors export DIR [--seed N]
      Write DIR/manifest.json and one DIR/<component>__<case>.npz per case. Deterministic: the same seed,
      detspec and torch give byte-identical files (the .npz members carry a fixed timestamp).

  detspec vectors check DIR --impl NAME [--device cpu|cuda]
      Run every case against an implementation (reference, fast, torchvision, module[:attribute] or
      file.py, as in ``detspec check``) and print one row per component: pass, FAIL with the largest
      error, or not implemented. Exits 1 if any case fails, 2 on a usage error (no such directory,
      unreadable manifest, another format version, an --impl that does not resolve).

The set (``vectors/v1`` in the repository, well under 1 MB) covers every component of spec.contract.CONTRACT
except the random ones (subsample_labels, sample_rois: see SKIPPED), plus select_proposals and rpn_losses.

Each case is one .npz file of plain arrays:

- ``in.<arg>`` an array argument; ``in.<arg>.<i>`` item i of an argument that is a list of arrays;
- ``out.<name>`` an expected output.

manifest.json lists, per case, the positional arguments in order (each one an npz array, a list of npz arrays,
or a JSON value), the keyword arguments (JSON; a JSON array stands for a tuple), and for each output its name,
npz key, where it sits in the function's return value (``path``: list/tuple indices and dict keys), and its
comparison rule:

- ``exact``: indices, labels, keep-masks: same shape and the same values;
- ``set``: the same values in any order (only where the spec leaves the order open, e.g. tied NMS scores);
- ``close``: same shape, |actual - expected| <= atol + rtol * |expected| elementwise (rtol/atol from
  spec.tolerances.tolerance(component, float32)); non-finite expected values must be matched exactly.

Floating inputs are float32: the port gets float32 and is held to float32 tolerances. Expected outputs are
float64: those of ``source: "spec"`` cases are written here from the spec (d2-spec §2-§3, a hand derivation in
a comment); ``source: "oracle"`` cases hold the reference implementation's output computed in float64 on the
float32-rounded inputs. Random inputs come from numpy's PCG64 generator seeded by (seed, crc32(case id)).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import math
import sys
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "detspec-vectors"
FORMAT_VERSION = 1
DEFAULT_SEED = 20240501
INPUT_FLOAT = np.float32
MANIFEST = "manifest.json"

# Components left out of the set, and why (also written to the manifest).
SKIPPED: dict[str, str] = {
    "subsample_labels": "random (a uniform permutation prefix): no golden output; its invariants (counts, "
                        "pools, positive cap) are checked by the conformance suite",
    "sample_rois": "random (subsamples through subsample_labels): no golden output; its invariants are checked "
                   "by the conformance suite",
}

# How each component's return value is named: one tensor, a tuple of tensors, a list (per level or per image)
# of tensors or tuples, or a dict of 0-d tensors.
_SINGLE = {"pairwise_iou": "iou", "box_area": "area", "clip_boxes": "boxes", "nonempty": "keep",
           "encode_boxes": "deltas", "decode_boxes": "boxes", "cell_anchors": "anchors", "nms": "keep",
           "batched_nms": "keep", "assign_levels": "levels", "roi_align": "pooled", "multilevel_roi_align": "pooled"}
_TUPLE = {"match": ("matches", "labels"), "iou_match": ("matches", "labels"), "detector_postprocess": ("boxes", "keep")}
_LIST = {"grid_anchors": "anchors"}
_LIST_OF_TUPLES = {"select_proposals": ("boxes", "logits"),
                   "fast_rcnn_inference": ("boxes", "scores", "classes", "roi_index")}
_DICT = {"rpn_losses": ("loss_rpn_cls", "loss_rpn_loc"), "roi_losses": ("loss_cls", "loss_box_reg")}


class VectorsError(Exception):
    """A usage error: missing directory, unreadable or incompatible manifest, missing case file."""


# ------------------------------------------------------------------------------------------------ cases
@dataclass
class Case:
    component: str
    name: str
    description: str
    args: list[tuple[str, Any]]  # positional, in order: (name, ndarray | list[ndarray] | JSON value)
    kwargs: dict[str, Any] = field(default_factory=dict)
    expected: Any = None  # the return value's structure with numpy leaves (spec cases); None = ask the oracle
    set_outputs: tuple[str, ...] = ()  # output names compared as sets
    oracle_kwargs: dict[str, Any] = field(default_factory=dict)  # extra keyword arguments for the oracle only

    @property
    def source(self) -> str:
        return "oracle" if self.expected is None else "spec"


def _f32(values: Any) -> np.ndarray:
    return np.asarray(values, dtype=INPUT_FLOAT)


def _f64(values: Any) -> np.ndarray:
    return np.asarray(values, dtype=np.float64)


def _i64(values: Any) -> np.ndarray:
    return np.asarray(values, dtype=np.int64)


def _boxes(rng: np.random.Generator, n: int, extent: float = 100.0, min_size: float = 1.0,
           max_size: float = 40.0) -> np.ndarray:
    """[n, 4] float32 XYXY boxes with top-left in [0, extent) and sides in [min_size, max_size)."""
    xy = rng.uniform(0.0, extent, size=(n, 2))
    wh = rng.uniform(min_size, max_size, size=(n, 2))
    return _f32(np.concatenate([xy, xy + wh], axis=1).reshape(n, 4))


def _jitter(rng: np.random.Generator, boxes: np.ndarray, scale: float) -> np.ndarray:
    """Boxes moved by up to `scale` x their size (stay ordered)."""
    b = boxes.astype(np.float64)
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    size = np.stack([w, h, w, h], axis=1)
    moved = b + rng.uniform(-scale, scale, size=b.shape) * size
    x1, x2 = np.minimum(moved[:, 0], moved[:, 2] - 0.5), np.maximum(moved[:, 2], moved[:, 0] + 0.5)
    y1, y2 = np.minimum(moved[:, 1], moved[:, 3] - 0.5), np.maximum(moved[:, 3], moved[:, 1] + 0.5)
    return _f32(np.stack([x1, y1, x2, y2], axis=1))


def _spec_cases() -> list[Case]:
    """The known values of d2-spec §3 (and small hand-derived cases), expected values written from the spec."""
    r2 = math.sqrt(2.0)
    cases = [
        # BOX.IOU: inter / (area1 + area2 - inter), no +1; touching boxes have IoU exactly 0.
        # (0,0,10,10)-(5,0,15,10): 50 / 150; (0,0,10,10)-(0,0,2,2): 4 / 100; (0,0,1,1)-(0,0,2,2): 1 / 4 (4/9 with
        # a +1); (0,0,1,1)-(0,0,10,10): 1 / 100; (10,0,20,10) only touches (0,0,10,10): 0.
        Case("pairwise_iou", "spec_values", "d2-spec §2.4: no +1, 0 without overlap",
             [("boxes1", _f32([[0, 0, 10, 10], [0, 0, 1, 1]])),
              ("boxes2", _f32([[5, 0, 15, 10], [0, 0, 2, 2], [10, 0, 20, 10], [0, 0, 10, 10]]))],
             expected=_f64([[1 / 3, 4 / 100, 0.0, 1.0], [0.0, 1 / 4, 0.0, 1 / 100]])),
        Case("box_area", "spec_values", "d2-spec §2.4: area = (x2 - x1)(y2 - y1), no +1",
             [("boxes", _f32([[0, 0, 10, 20], [1.5, 2, 2, 4], [3, 3, 3, 9]]))],
             expected=_f64([200.0, 1.0, 0.0])),
        Case("clip_boxes", "spec_values", "d2-spec §2.4: x in [0, w], y in [0, h]; image_size = (h, w) = (20, 30)",
             [("boxes", _f32([[-5, -5, 10, 10], [25, 15, 40, 25], [31, 21, 35, 30]])), ("image_size", [20, 30])],
             expected=_f64([[0, 0, 10, 10], [25, 15, 30, 20], [30, 20, 30, 20]])),
        Case("nonempty", "spec_threshold", "d2-spec §2.4: width > t and height > t, strict (t = 1)",
             [("boxes", _f32([[0, 0, 1, 5], [0, 0, 2, 2], [0, 0, 5, 1.5], [0, 0, 0, 0]]))], {"threshold": 1.0},
             expected=np.array([False, True, True, False])),
        # d2-spec §3 box-transform values: (0,0,10,20) -> (0,0,20,20) with (10,10,5,5): (5, 0, 5 ln 2, 0);
        # (-16,-16,16,16) -> (0,0,32,32): centres move by 16 on a width of 32, sizes equal -> 10 * 0.5 = 5.
        Case("encode_boxes", "spec_values_roi_weights", "d2-spec §3 box-transform values, weights (10, 10, 5, 5)",
             [("src", _f32([[0, 0, 10, 20], [-16, -16, 16, 16]])), ("target", _f32([[0, 0, 20, 20], [0, 0, 32, 32]])),
              ("weights", [10.0, 10.0, 5.0, 5.0])],
             expected=_f64([[5.0, 0.0, 5 * math.log(2.0), 0.0], [5.0, 5.0, 0.0, 0.0]])),
        Case("encode_boxes", "spec_values_rpn_weights", "d2-spec §3 box-transform values, weights (1, 1, 1, 1)",
             [("src", _f32([[-16, -16, 16, 16]])), ("target", _f32([[0, 0, 32, 32]])), ("weights", [1.0] * 4)],
             expected=_f64([[0.5, 0.5, 0.0, 0.0]])),
        # decode: the inverse of the values above, class-interleaved with K = 2 (class 1 has zero deltas = the
        # box itself); and the clamp: dw = dh = 10 > ln(62.5) on a 16 x 16 box at centre 8 -> size 1000.
        Case("decode_boxes", "spec_values", "d2-spec §2.7/§3: inverse of the known deltas; K = 2 interleaved",
             [("deltas", _f32([[5.0, 0.0, 5 * math.log(2.0), 0.0, 0, 0, 0, 0], [5, 5, 0, 0, 0, 0, 0, 0]])),
              ("boxes", _f32([[0, 0, 10, 20], [-16, -16, 16, 16]])), ("weights", [10.0, 10.0, 5.0, 5.0]),
              ("scale_clamp", math.log(1000.0 / 16))],
             expected=_f64([[0, 0, 20, 20, 0, 0, 10, 20], [0, 0, 32, 32, -16, -16, 16, 16]])),
        Case("decode_boxes", "spec_clamp", "d2-spec §2.7: dw, dh clamped from above at ln(62.5); dx, dy not",
             [("deltas", _f32([[0, 0, 10, 10], [1, 0, -2, 4.0]])), ("boxes", _f32([[0, 0, 16, 16], [0, 0, 16, 16]])),
              ("weights", [1.0] * 4), ("scale_clamp", math.log(1000.0 / 16))],
             # row 2: centre x = 8 + 1 * 16 = 24, width = 16 e^-2; height = 16 e^4 (below the clamp)
             expected=_f64([[8 - 500, 8 - 500, 8 + 500, 8 + 500],
                            [24 - 8 * math.exp(-2), 8 - 8 * math.exp(4), 24 + 8 * math.exp(-2), 8 + 8 * math.exp(4)]])),
        # d2-spec §3 cell anchors: w = sqrt(s^2 / a), h = a w; size 32: ratio 0.5 -> (16 r2, 8 r2) half-sizes.
        Case("cell_anchors", "spec_size32", "d2-spec §3 cell anchors, size 32, ratios 0.5 / 1 / 2",
             [("sizes", [32.0]), ("aspect_ratios", [0.5, 1.0, 2.0])],
             expected=_f64([[-16 * r2, -8 * r2, 16 * r2, 8 * r2], [-16, -16, 16, 16],
                            [-8 * r2, -16 * r2, 8 * r2, 16 * r2]])),
        Case("cell_anchors", "spec_all_sizes", "d2-spec §3 cell anchors table, sizes 32..512 (size-major order)",
             [("sizes", [32.0, 64.0, 128.0, 256.0, 512.0]), ("aspect_ratios", [0.5, 1.0, 2.0])],
             expected=_f64([row for s in (32, 64, 128, 256, 512) for row in
                            ([-s / r2, -s / (2 * r2), s / r2, s / (2 * r2)], [-s / 2, -s / 2, s / 2, s / 2],
                             [-s / (2 * r2), -s / r2, s / (2 * r2), s / r2])])),
        # torchvision rounds the corners: 16 r2 = 22.627 -> 23, 8 r2 = 11.314 -> 11.
        Case("cell_anchors", "spec_round_to_int", "d2-spec §2.3 / torchvision: corners rounded",
             [("sizes", [32.0]), ("aspect_ratios", [0.5, 1.0, 2.0])], {"round_to_int": True},
             expected=_f64([[-23, -11, 23, 11], [-16, -16, 16, 16], [-11, -23, 11, 23]])),
    ]

    # d2-spec §3 grid-anchor test: sizes [32, 64], ratios [0.25, 1, 4], stride 4, a 1 x 2 map.
    # Cells: 32/0.25 -> w 64, h 16; 32/1 -> 32 x 32; 32/4 -> 16 x 64; 64/... -> 128 x 32, 64 x 64, 32 x 128.
    cells = [[-32, -8, 32, 8], [-16, -16, 16, 16], [-8, -32, 8, 32],
             [-64, -16, 64, 16], [-32, -32, 32, 32], [-16, -64, 16, 64]]
    for offset, label in ((0.0, "offset0"), (0.5, "offset05")):
        shift = offset * 4  # grid point (y, x) at ((x + offset) 4, (y + offset) 4)
        rows = [[c[0] + sx, c[1] + shift, c[2] + sx, c[3] + shift] for sx in (shift, shift + 4) for c in cells]
        cases.append(Case("grid_anchors", f"spec_{label}", f"d2-spec §3 grid-anchor test, offset {offset}",
                           [("feature_sizes", [[1, 2]]), ("strides", [4]), ("cell_anchors", [_f32(cells)])],
                           {"offset": offset}, expected=[_f64(rows)]))

    # d2-spec §3 matcher example (RPN thresholds, low-quality matches).
    quality = _f32([[0.15, 0.45, 0.2, 0.6], [0.3, 0.65, 0.05, 0.1], [0.05, 0.4, 0.25, 0.4]])
    cases.append(Case("match", "spec_example", "d2-spec §3 matcher example",
                      [("quality", quality), ("thresholds", [0.3, 0.7]), ("labels", [0, -1, 1]),
                       ("allow_low_quality_matches", True)],
                      expected=(_i64([1, 1, 2, 0]), np.array([-1, 1, 0, 1], dtype=np.int8))))
    cases.append(Case("match", "spec_empty_gt", "d2-spec §2.5: no GT -> index 0 and labels[0] everywhere",
                      [("quality", np.zeros((0, 3), dtype=INPUT_FLOAT)), ("thresholds", [0.3, 0.7]),
                       ("labels", [0, -1, 1]), ("allow_low_quality_matches", True)],
                      expected=(_i64([0, 0, 0]), np.array([0, 0, 0], dtype=np.int8))))
    # MATCH.HALF_OPEN at the ROI threshold: IoU((0,0,10,10), (0,0,10,5)) = 50 / 100 = 0.5 -> label 1 (>= 0.5);
    # (0,0,10,4) -> 0.4 -> 0; (50,50,60,60) -> 0 -> 0; (0,0,10,4.5) -> 0.45 -> 0 (with a "+1" in widths it
    # would be 11 * 5.5 / 121 = 0.5 -> 1).
    cases.append(Case("iou_match", "spec_half_open", "d2-spec §2.5: [0.5, inf) is foreground, IoU 0.5 included",
                      [("gt_boxes", _f32([[0, 0, 10, 10]])),
                       ("boxes", _f32([[0, 0, 10, 5], [0, 0, 10, 4], [50, 50, 60, 60], [0, 0, 10, 4.5]])),
                       ("thresholds", [0.5]), ("labels", [0, 1]), ("allow_low_quality_matches", False)],
                      expected=(_i64([0, 0, 0, 0]), np.array([1, 0, 0, 0], dtype=np.int8))))

    # NMS.STRICT: IoU((0,0,10,10), (0,0,10,5)) = 0.5 exactly: kept at threshold 0.5, suppressed at 0.49.
    pair = _f32([[0, 0, 10, 5], [0, 0, 10, 10]])
    scores = _f32([0.8, 0.9])
    cases.append(Case("nms", "spec_strict_kept", "d2-spec §2.14: suppress only when IoU > threshold",
                      [("boxes", pair), ("scores", scores), ("iou_threshold", 0.5)], expected=_i64([1, 0])))
    cases.append(Case("nms", "spec_strict_suppressed", "d2-spec §2.14: IoU 0.5 > 0.49 suppresses",
                      [("boxes", pair), ("scores", scores), ("iou_threshold", 0.49)], expected=_i64([1])))
    cases.append(Case("nms", "spec_disjoint_ties", "disjoint boxes with tied scores: all kept, order open",
                      [("boxes", _f32([[0, 0, 1, 1], [2, 2, 3, 3], [4, 4, 5, 5]])), ("scores", _f32([0.5, 0.5, 0.5])),
                       ("iou_threshold", 0.5)], expected=_i64([0, 1, 2]), set_outputs=("keep",)))
    cases.append(Case("batched_nms", "spec_groups", "d2-spec §2.14: groups never suppress each other",
                      [("boxes", _f32([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 9]])),
                       ("scores", _f32([0.9, 0.8, 0.7])), ("groups", _i64([0, 1, 0])), ("iou_threshold", 0.5)],
                      expected=_i64([0, 1])))

    # d2-spec §3 level assignment: squares of side s (sqrt(area) = s).
    sides = [16, 32, 64, 100, 111.99, 112, 150, 223.9, 224, 300, 447.9, 448, 1000]
    levels = [2, 2, 2, 2, 2, 3, 3, 3, 4, 4, 4, 5, 5]
    cases.append(Case("assign_levels", "spec_boundaries", "d2-spec §3 level assignment table",
                      [("boxes", _f32([[0, 0, s, s] for s in sides]))], expected=_i64(levels)))

    # d2-spec §3 ROIAlign: a 5 x 5 ramp f(y, x) = 5 y + x, box (1, 1, 3, 3), 4 x 4 output, scale 1, ratio 0.
    # Bilinear interpolation of a linear ramp is exact, so each output is f at the single sample of its bin:
    # aligned=True: start 1 - 0.5, bin 0.5, grid ceil(0.5) = 1, samples at 0.75, 1.25, 1.75, 2.25;
    # aligned=False: start 1, samples at 1.25, 1.75, 2.25, 2.75.
    ramp = np.arange(25, dtype=INPUT_FLOAT).reshape(1, 1, 5, 5)
    for aligned, first in ((True, 0.75), (False, 1.25)):
        pts = [first + 0.5 * i for i in range(4)]
        pooled = _f64([[[[5 * y + x for x in pts] for y in pts]]])
        cases.append(Case("roi_align", f"spec_ramp_aligned_{str(aligned).lower()}",
                          f"d2-spec §3 ROIAlign 5x5 ramp, aligned={aligned}",
                          [("features", ramp), ("rois", _f32([[0, 1, 1, 3, 3]])), ("output_size", 4),
                           ("spatial_scale", 1.0), ("sampling_ratio", 0), ("aligned", aligned)], expected=pooled))
    cases.append(Case("roi_align", "spec_zero_height", "d2-spec §3: a zero-height box pools exactly 0",
                      [("features", ramp), ("rois", _f32([[0, 3, 4, 5, 4]])), ("output_size", 7),
                       ("spatial_scale", 1.0), ("sampling_ratio", 0), ("aligned", True)],
                      expected=np.zeros((1, 1, 7, 7))))

    # Multi-level pooling: map of image n on level k is the constant 10 k + n, so each pooled value names the
    # level and image used. Sides 32 -> P2, 150 -> P3, 300 -> P4, 448 -> P5 (d2-spec §3 table); every sample
    # falls inside the 24 x 24 maps (448 / 32 = 14), where bilinear interpolation of a constant is the constant.
    maps = [np.stack([np.full((1, 24, 24), 10 * k + n) for n in range(2)]).astype(INPUT_FLOAT) for k in (2, 3, 4, 5)]
    rois = [(1, 32, 2), (0, 150, 3), (0, 32, 2), (1, 448, 5), (0, 300, 4), (1, 150, 3)]  # (image, side, level)
    cases.append(Case("multilevel_roi_align", "spec_levels", "d2-spec §2.11: level by size, input row order kept",
                      [("features", maps), ("rois", _f32([[n, 0, 0, s, s] for n, s, _ in rois]))],
                      {"output_size": 7, "strides": [4, 8, 16, 32], "sampling_ratio": 0, "aligned": True},
                      expected=_f64([np.full((1, 7, 7), 10 * k + n) for n, _, k in rois])))

    # ROI losses (d2-spec §2.12), R = 2, K = 1: zero logits -> CE = ln 2 per row, mean ln 2. Row 0 is foreground
    # with proposal (-16,-16,16,16) and GT (0,0,32,32): target (5, 5, 0, 0) with (10, 10, 5, 5); zero predicted
    # deltas -> L1 sum 10, divided by max(R, 1) = 2 -> 5.
    cases.append(Case("roi_losses", "spec_values", "d2-spec §2.12: mean CE, box L1 / max(R, 1)",
                      [("class_logits", _f32(np.zeros((2, 2)))), ("box_deltas", _f32(np.zeros((2, 4)))),
                       ("proposals", _f32([[-16, -16, 16, 16], [0, 0, 8, 8]])), ("gt_classes", _i64([0, 1])),
                       ("gt_boxes", _f32([[0, 0, 32, 32], [0, 0, 8, 8]]))],
                      {"weights": [10.0, 10.0, 5.0, 5.0], "smooth_l1_beta": 0.0},
                      expected={"loss_cls": _f64(math.log(2.0)), "loss_box_reg": _f64(5.0)}))
    # RPN losses (d2-spec §2.8), one image, anchors labelled (1, 0): zero logits -> BCE ln 2 each; anchor 0's
    # target is (0.5, 0.5, 0, 0) (weights 1), zero predictions -> L1 1. Both / (256 x 1).
    cases.append(Case("rpn_losses", "spec_values", "d2-spec §2.8: both losses / (256 N)",
                      [("anchors", _f32([[-16, -16, 16, 16], [100, 100, 132, 132]])),
                       ("pred_logits", _f32(np.zeros((1, 2)))), ("pred_deltas", _f32(np.zeros((1, 2, 4)))),
                       ("gt_labels", np.array([[1, 0]], dtype=np.int8)),
                       ("gt_boxes", _f32([[[0, 0, 32, 32], [0, 0, 32, 32]]]))],
                      {"batch_size_per_image": 256},
                      expected={"loss_rpn_cls": _f64(2 * math.log(2.0) / 256), "loss_rpn_loc": _f64(1.0 / 256)}))

    # Proposal selection (d2-spec §2.9), one image 20 x 20, two levels. Level 0: (0,0,10,10) logit 2 suppresses
    # (0,0,10,9) (IoU 0.9 > 0.7). Level 1: (-5,-5,-1,-1) logit 3 clips to (0,0,0,0) and is removed; the same
    # (0,0,10,10) with logit 1.5 survives (levels do not suppress each other). Sorted by logit.
    cases.append(Case("select_proposals", "spec_levels", "d2-spec §2.9: clip, drop empty, NMS per level",
                      [("proposals", [_f32([[[0, 0, 10, 10], [0, 0, 10, 9]]]),
                                      _f32([[[0, 0, 10, 10], [-5, -5, -1, -1]]])]),
                       ("logits", [_f32([[2.0, 1.0]]), _f32([[1.5, 3.0]])]), ("image_sizes", [[20, 20]])],
                      {"nms_thresh": 0.7, "pre_nms_topk": 1000, "post_nms_topk": 1000, "min_box_size": 0.0},
                      expected=[(_f64([[0, 0, 10, 10], [0, 0, 10, 10]]), _f64([2.0, 1.5]))]))

    # fast_rcnn_inference (d2-spec §2.13), one 20 x 20 image, K = 2 (columns c0, c1, background).
    # Pairs above 0.05: (roi 0, c0) 0.6, (roi 0, c1) 0.3, (roi 1, c0) 0.5; (roi 1, c1) 0.04 is not.
    # Class 0: (1,0,11,10) has IoU 90 / 110 > 0.5 with (0,0,10,10) and is suppressed. Roi 0 yields two classes.
    cases.append(Case("fast_rcnn_inference", "spec_values", "d2-spec §2.13: threshold, per-class NMS, sorted",
                      [("boxes", [_f32([[0, 0, 10, 10, 0, 0, 10, 10], [1, 0, 11, 10, 50, 50, 60, 60]])]),
                       ("scores", [_f32([[0.6, 0.3, 0.1], [0.5, 0.04, 0.46]])]), ("image_sizes", [[20, 20]])],
                      {"score_thresh": 0.05, "nms_thresh": 0.5, "topk_per_image": 100},
                      expected=[(_f64([[0, 0, 10, 10], [0, 0, 10, 10]]), _f64([0.6, 0.3]), _i64([0, 1]),
                                 _i64([0, 0]))]))
    # detector_postprocess: input (10, 20) -> output (20, 40) doubles every coordinate, then clips to x <= 40,
    # y <= 20; (20,0,25,5) -> (40,0,50,10) -> (40,0,40,10) has width 0 and is not kept.
    cases.append(Case("detector_postprocess", "spec_values", "d2-spec §2.13 item 5: rescale, clip, keep w, h > 0",
                      [("boxes", _f32([[1, 1, 5, 5], [15, 8, 25, 12], [20, 0, 25, 5]])), ("input_size", [10, 20]),
                       ("output_size", [20, 40])],
                      expected=(_f64([[2, 2, 10, 10], [30, 16, 40, 20], [40, 0, 40, 10]]),
                                np.array([True, True, False]))))
    return cases


def _oracle_cases(rng_for: Callable[[str], np.random.Generator]) -> list[Case]:
    """Seeded random inputs; the expected outputs come from the reference run in float64."""
    cases: list[Case] = []

    def add(component: str, name: str, description: str, args: list, kwargs: dict | None = None,
            **extra: Any) -> None:
        cases.append(Case(component, name, description, args, kwargs or {}, **extra))

    rng = rng_for("pairwise_iou/random")
    add("pairwise_iou", "random", "random overlapping boxes",
        [("boxes1", _boxes(rng, 7, 40)), ("boxes2", _boxes(rng, 5, 40))])
    add("pairwise_iou", "empty", "N = 0", [("boxes1", np.zeros((0, 4), INPUT_FLOAT)), ("boxes2", _boxes(rng, 3))])
    rng = rng_for("box_area/random")
    add("box_area", "random", "random boxes", [("boxes", _boxes(rng, 6))])
    rng = rng_for("clip_boxes/random")
    add("clip_boxes", "random", "boxes crossing every border of an 80 x 100 image",
        [("boxes", _boxes(rng, 8, extent=120.0) - INPUT_FLOAT(20)), ("image_size", [80, 100])])
    rng = rng_for("nonempty/random")
    b = _boxes(rng, 8, min_size=0.0, max_size=3.0)
    b[::3, 2] = b[::3, 0]  # some zero widths
    add("nonempty", "random", "small boxes, some of zero width, threshold 0.5", [("boxes", b)], {"threshold": 0.5})

    rng = rng_for("encode_boxes/random")
    src = _boxes(rng, 8)
    add("encode_boxes", "random", "targets near the sources, weights (10, 10, 5, 5)",
        [("src", src), ("target", _jitter(rng, src, 0.4)), ("weights", [10.0, 10.0, 5.0, 5.0])])
    rng = rng_for("decode_boxes/random")
    deltas = rng.normal(0.0, 2.0, size=(6, 12))
    deltas[0, 2::4] = 60.0  # dw / 5 = 12 > the clamp
    add("decode_boxes", "random", "K = 3, weights (10, 10, 5, 5), some dw above the clamp",
        [("deltas", _f32(deltas)), ("boxes", _boxes(rng, 6)), ("weights", [10.0, 10.0, 5.0, 5.0]),
         ("scale_clamp", math.log(1000.0 / 16))])

    add("cell_anchors", "odd_sizes", "sizes and ratios off the config",
        [("sizes", [16.0, 40.0]), ("aspect_ratios", [0.3, 1.7])], oracle_kwargs={"dtype": "float64"})
    cells = [_f32([[-s / 2 * f, -s / 2 / f, s / 2 * f, s / 2 / f] for f in (1.4142135, 1.0, 0.70710677)])
             for s in (32.0, 64.0, 128.0)]
    add("grid_anchors", "three_levels", "three levels of a 20 x 28 input, offset 0",
        [("feature_sizes", [[5, 7], [3, 4], [2, 2]]), ("strides", [4, 8, 16]), ("cell_anchors", cells)],
        {"offset": 0.0})

    rng = rng_for("match/random_rpn")
    add("match", "random_rpn", "RPN thresholds, low-quality matches",
        [("quality", _f32(rng.uniform(0.0, 0.9, size=(4, 15)))), ("thresholds", [0.3, 0.7]), ("labels", [0, -1, 1]),
         ("allow_low_quality_matches", True)])
    rng = rng_for("match/random_roi")
    add("match", "random_roi", "ROI thresholds, no low-quality matches",
        [("quality", _f32(rng.uniform(0.0, 1.0, size=(3, 12)))), ("thresholds", [0.5]), ("labels", [0, 1]),
         ("allow_low_quality_matches", False)])
    rng = rng_for("iou_match/random")
    gt = _boxes(rng, 3, 60, 10, 40)
    anchors = np.concatenate([_jitter(rng, np.repeat(gt, 4, axis=0), 0.3), _boxes(rng, 8, 60, 10, 40)])
    add("iou_match", "random_rpn", "anchors around 3 GT boxes, RPN thresholds, low-quality matches",
        [("gt_boxes", gt), ("boxes", anchors), ("thresholds", [0.3, 0.7]), ("labels", [0, -1, 1]),
         ("allow_low_quality_matches", True)])

    rng = rng_for("nms/random")
    add("nms", "random", "clustered boxes, threshold 0.5",
        [("boxes", _jitter(rng, np.repeat(_boxes(rng, 5, 80, 10, 30), 4, axis=0), 0.25)),
         ("scores", _f32(rng.permutation(20) / 20 + 0.01)), ("iou_threshold", 0.5)])
    add("nms", "empty", "no boxes", [("boxes", np.zeros((0, 4), INPUT_FLOAT)), ("scores", np.zeros(0, INPUT_FLOAT)),
                                     ("iou_threshold", 0.5)])
    rng = rng_for("batched_nms/random")
    add("batched_nms", "random", "clustered boxes in 3 groups, threshold 0.7",
        [("boxes", _jitter(rng, np.repeat(_boxes(rng, 4, 80, 10, 30), 5, axis=0), 0.15)),
         ("scores", _f32(rng.permutation(20) / 20 + 0.01)), ("groups", _i64(rng.integers(0, 3, size=20))),
         ("iou_threshold", 0.7)])

    rng = rng_for("assign_levels/random")
    sides = np.exp(rng.uniform(math.log(8), math.log(900), size=(12, 2)))
    level_boxes = _f32(np.concatenate([np.zeros((12, 2)), sides], axis=1))
    add("assign_levels", "random", "sizes 8..900", [("boxes", level_boxes)])
    add("assign_levels", "random_torchvision", "torchvision's eps outside the log",
        [("boxes", level_boxes)], {"eps": 1e-6, "eps_in_log": False})

    rng = rng_for("roi_align/random")
    feats = _f32(rng.normal(size=(2, 3, 10, 12)))
    rois = np.concatenate([rng.integers(0, 2, size=(6, 1)), _boxes(rng, 6, 20.0, 0.5, 12.0)], axis=1)
    rois[0, 1:] = [16, 12, 26, 18]  # partly outside the 10 x 12 map at scale 0.5
    for aligned, ratio in ((True, 0), (False, 2)):
        add("roi_align", f"random_aligned_{str(aligned).lower()}_ratio{ratio}",
            f"2 images, 3 channels, scale 0.5, output 3 x 4, sampling_ratio {ratio}",
            [("features", feats), ("rois", _f32(rois)), ("output_size", [3, 4]), ("spatial_scale", 0.5),
             ("sampling_ratio", ratio), ("aligned", aligned)])
    rng = rng_for("multilevel_roi_align/random")
    maps = [_f32(rng.normal(size=(2, 2, 16 // 2 ** i, 16 // 2 ** i))) for i in range(4)]
    sides = np.exp(rng.uniform(math.log(10), math.log(500), size=(7, 2)))
    xy = rng.uniform(0, 40, size=(7, 2))
    rois = np.concatenate([rng.integers(0, 2, size=(7, 1)), xy, xy + sides], axis=1)
    add("multilevel_roi_align", "random", "4 levels of a 64 x 64 input, ROIs of every level, output 3",
        [("features", maps), ("rois", _f32(rois))],
        {"output_size": 3, "strides": [4, 8, 16, 32], "sampling_ratio": 0, "aligned": True})

    rng = rng_for("roi_losses/random")
    r, k = 10, 3
    props = _boxes(rng, r)
    add("roi_losses", "random", "R = 10, K = 3, 6 foreground rows",
        [("class_logits", _f32(rng.normal(size=(r, k + 1)))), ("box_deltas", _f32(rng.normal(size=(r, 4 * k)))),
         ("proposals", props), ("gt_classes", _i64(np.r_[rng.integers(0, k, size=6), np.full(4, k)])),
         ("gt_boxes", _jitter(rng, props, 0.3))], {"weights": [10.0, 10.0, 5.0, 5.0], "smooth_l1_beta": 0.0})

    rng = rng_for("fast_rcnn_inference/random")
    all_boxes, all_scores = [], []
    for rows in (8, 5):
        base = _boxes(rng, 3, 50, 10, 30)
        per_class = [_jitter(rng, base[rng.integers(0, 3, size=rows)], 0.2) for _ in range(3)]  # K = 3
        all_boxes.append(np.concatenate(per_class, axis=1) - INPUT_FLOAT(5))  # some cross the border
        logits = rng.normal(0.0, 1.5, size=(rows, 4))
        all_scores.append(_f32(np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)))
    all_boxes[0][2, 1] = np.inf  # a non-finite row is dropped
    add("fast_rcnn_inference", "random", "2 images (8 and 5 ROIs), K = 3, one non-finite row",
        [("boxes", all_boxes), ("scores", all_scores), ("image_sizes", [[60, 70], [50, 64]])],
        {"score_thresh": 0.05, "nms_thresh": 0.5, "topk_per_image": 6})
    rng = rng_for("detector_postprocess/random")
    add("detector_postprocess", "random", "800 x 1067 -> 480 x 640, boxes crossing the border",
        [("boxes", _boxes(rng, 6, 1100, 0, 300) - INPUT_FLOAT(20)), ("input_size", [800, 1067]),
         ("output_size", [480, 640])])

    rng = rng_for("select_proposals/random")
    props, logits = [], []
    for count in (30, 15, 6):  # three levels, two images
        props.append(np.stack([_jitter(rng, np.repeat(_boxes(rng, count // 3, 60, 4, 30), 3, axis=0), 0.3)
                               - INPUT_FLOAT(5) for _ in range(2)]))
        logits.append(_f32(rng.normal(size=(2, count))))
    add("select_proposals", "random", "3 levels, 2 images, pre-NMS top 12, post-NMS top 20",
        [("proposals", props), ("logits", logits), ("image_sizes", [[64, 64], [56, 72]])],
        {"nms_thresh": 0.7, "pre_nms_topk": 12, "post_nms_topk": 20, "min_box_size": 0.0})
    rng = rng_for("rpn_losses/random")
    anchors = _boxes(rng, 40)
    add("rpn_losses", "random", "2 images, 40 anchors, labels in {-1, 0, 1}, batch_size_per_image 16",
        [("anchors", anchors), ("pred_logits", _f32(rng.normal(size=(2, 40)))),
         ("pred_deltas", _f32(rng.normal(0.0, 0.5, size=(2, 40, 4)))),
         ("gt_labels", rng.integers(-1, 2, size=(2, 40)).astype(np.int8)),
         ("gt_boxes", np.stack([_jitter(rng, anchors, 0.3) for _ in range(2)]))], {"batch_size_per_image": 16})
    return cases


def build_cases(seed: int = DEFAULT_SEED) -> list[Case]:
    """Every case of the set, in manifest order (component order of COMPONENTS, spec cases first)."""
    def rng_for(key: str) -> np.random.Generator:
        return np.random.default_rng([seed, zlib.crc32(key.encode())])

    cases = _spec_cases() + _oracle_cases(rng_for)
    order = {name: i for i, name in enumerate(COMPONENTS)}
    unknown = {c.component for c in cases} - set(order)
    assert not unknown, unknown
    return sorted(cases, key=lambda c: order[c.component])  # stable: spec cases stay first


# ------------------------------------------------------------------------------------------------ components
def _components() -> tuple[str, ...]:
    from spec.contract import CONTRACT

    return tuple(n for n in CONTRACT if n not in SKIPPED) + ("select_proposals", "rpn_losses")


COMPONENTS: tuple[str, ...] = _components()


def _flatten(component: str, value: Any) -> list[tuple[str, list, Any]]:
    """(output name, path into the return value, leaf) for every tensor of `component`'s return value."""
    if component in _SINGLE:
        return [(_SINGLE[component], [], value)]
    if component in _TUPLE:
        return [(f, [j], value[j]) for j, f in enumerate(_TUPLE[component])]
    if component in _LIST:
        return [(f"{_LIST[component]}.{i}", [i], v) for i, v in enumerate(value)]
    if component in _LIST_OF_TUPLES:
        fields = _LIST_OF_TUPLES[component]
        return [(f"{i}.{f}", [i, j], item[j]) for i, item in enumerate(value) for j, f in enumerate(fields)]
    if component in _DICT:
        return [(k, [k], value[k]) for k in _DICT[component]]
    raise KeyError(component)


def _rule(component: str, name: str, expected: np.ndarray, case: Case) -> dict[str, Any]:
    import torch

    from spec.tolerances import tolerance

    if name in case.set_outputs:
        return {"kind": "set"}
    if expected.dtype.kind in "biu":
        return {"kind": "exact"}
    rtol, atol = tolerance(component, torch.float32)
    return {"kind": "close", "rtol": rtol, "atol": atol}


def _to_numpy(value: Any) -> np.ndarray:
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _tuplify(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuplify(v) for v in value)
    return value


def _oracle(case: Case) -> Any:
    """The reference's result on the case's inputs, every floating array promoted to float64."""
    import torch

    import reference

    def convert(value: Any) -> Any:
        if isinstance(value, np.ndarray):
            t = torch.from_numpy(value.copy())
            return t.double() if t.is_floating_point() else t
        if isinstance(value, list) and value and isinstance(value[0], np.ndarray):
            return [convert(v) for v in value]
        return _tuplify(value)

    extra = {k: (getattr(torch, v) if k == "dtype" else v) for k, v in case.oracle_kwargs.items()}
    fn = getattr(reference, case.component)
    return fn(*[convert(v) for _, v in case.args], **{k: _tuplify(v) for k, v in case.kwargs.items()}, **extra)


# ------------------------------------------------------------------------------------------------ files
def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez_compressed's layout with a fixed member timestamp, so equal arrays give equal bytes."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.array(array, order="C"), allow_pickle=False)  # keeps 0-d shapes
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buffer.getvalue())


def _spec_version() -> dict[str, Any]:
    """The package version and a hash of every spec config value (both profiles) and the tolerance table."""
    import detspec
    from spec import config, tolerances

    try:
        from importlib.metadata import version

        package_version = version("detspec")
    except Exception:  # not installed: the source tree's version
        package_version = detspec.__version__
    values = {name: dataclasses.asdict(profile) for name, profile in config.PROFILES.items()}
    values["tolerances"] = {str(k): v for k, v in tolerances.DTYPE_TOLERANCES.items()}
    values["overrides"] = {c: {str(d): [o.rtol, o.atol] for d, o in per.items()}
                           for c, per in tolerances.OVERRIDES.items()}
    blob = json.dumps(values, sort_keys=True, default=repr).encode()
    return {"package": "detspec", "version": package_version, "config_sha256": hashlib.sha256(blob).hexdigest()}


def export(directory: str | Path, seed: int = DEFAULT_SEED) -> dict[str, Any]:
    """Write the vector set to `directory` (created if needed); returns the manifest.

    An existing directory must be empty or hold an earlier set (a manifest.json of this format); the earlier
    set's .npz files that the new one does not write are removed. Other files (a README) are left alone.
    """
    import torch

    out = Path(directory)
    if out.exists() and not out.is_dir():
        raise VectorsError(f"{out} exists and is not a directory")
    old_files: set[str] = set()
    if out.is_dir() and any(out.iterdir()):
        if not (out / MANIFEST).is_file():
            raise VectorsError(f"{out} is not empty and holds no {MANIFEST}; export into an empty directory or "
                               "over an earlier vector set")
        old = _read_manifest(out, check_version=False)
        old_files = {c["file"] for c in old.get("cases", [])}
    out.mkdir(parents=True, exist_ok=True)

    entries = []
    for case in build_cases(seed):
        arrays: dict[str, np.ndarray] = {}
        args = []
        for name, value in case.args:
            if isinstance(value, np.ndarray):
                arrays[f"in.{name}"] = value
                args.append({"name": name, "array": f"in.{name}"})
            elif isinstance(value, list) and value and isinstance(value[0], np.ndarray):
                keys = [f"in.{name}.{i}" for i in range(len(value))]
                arrays.update(zip(keys, value))
                args.append({"name": name, "arrays": keys})
            else:
                args.append({"name": name, "value": value})
        with torch.no_grad():
            result = _oracle(case) if case.expected is None else case.expected
        outputs = []
        for name, path, leaf in _flatten(case.component, result):
            expected = _to_numpy(leaf)
            if expected.dtype.kind == "f":
                expected = expected.astype(np.float64)
            key = f"out.{name}"
            arrays[key] = expected
            outputs.append({"name": name, "key": key, "path": path, "dtype": str(expected.dtype),
                            "shape": list(expected.shape), "rule": _rule(case.component, name, expected, case)})
        file = f"{case.component}__{case.name}.npz"
        _write_npz(out / file, arrays)
        entry = {"component": case.component, "name": case.name, "file": file, "source": case.source,
                 "description": case.description, "args": args, "kwargs": case.kwargs, "outputs": outputs}
        if case.component in _LIST or case.component in _LIST_OF_TUPLES:
            entry["result_length"] = len(result)
        entries.append(entry)

    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "seed": seed,
        "spec": _spec_version(),
        "generated_with": {"torch": torch.__version__.split("+")[0], "numpy": np.__version__},
        "input_float_dtype": np.dtype(INPUT_FLOAT).name,
        "oracle": "source 'oracle': the reference implementation in float64 on the float32-rounded inputs; "
                  "source 'spec': values written from the spec (d2-spec §2-§3)",
        "rules": {"exact": "same shape and values", "set": "same values in any order",
                  "close": "same shape; |actual - expected| <= atol + rtol * |expected|; non-finite exactly"},
        "conventions": "args are positional in order: 'array' is an npz key, 'arrays' a list of npz keys (a list "
                       "of tensors), 'value' a JSON value; kwargs are JSON; JSON arrays stand for tuples. An "
                       "output's 'path' indexes the return value (list/tuple index or dict key); "
                       "'result_length' is the length of a list-valued return value.",
        "components": list(COMPONENTS),
        "skipped": SKIPPED,
        "cases": entries,
    }
    text = json.dumps(manifest, indent=1, ensure_ascii=False) + "\n"
    (out / MANIFEST).write_text(text, encoding="utf-8")
    for stale in old_files - {e["file"] for e in entries}:
        if stale.endswith(".npz") and "/" not in stale and (out / stale).is_file():
            (out / stale).unlink()
    return manifest


def _read_manifest(directory: Path, check_version: bool = True) -> dict[str, Any]:
    if not directory.is_dir():
        raise VectorsError(f"{directory} is not a directory (expected a vector set: manifest.json and .npz files)")
    path = directory / MANIFEST
    if not path.is_file():
        raise VectorsError(f"{path} does not exist; write a vector set with 'detspec vectors export {directory}'")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise VectorsError(f"cannot read {path}: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise VectorsError(f"{path} is not a {FORMAT} manifest")
    if check_version and manifest.get("format_version") != FORMAT_VERSION:
        raise VectorsError(f"{path} has format version {manifest.get('format_version')!r}; this detspec reads "
                           f"version {FORMAT_VERSION} (re-export the set or use a matching detspec)")
    return manifest


def load_case(directory: str | Path, entry: dict[str, Any]) -> dict[str, np.ndarray]:
    """The arrays of one case (npz key -> array)."""
    path = Path(directory) / entry["file"]
    if not path.is_file():
        raise VectorsError(f"{path} is listed in the manifest but does not exist")
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


# ------------------------------------------------------------------------------------------------ check
@dataclass
class CaseResult:
    component: str
    name: str
    status: str  # "pass", "fail" or "not implemented"
    detail: str = ""
    max_error: float = 0.0


@dataclass
class ComponentResult:
    component: str
    status: str  # "pass", "fail" or "not implemented"
    cases: list[CaseResult]

    @property
    def detail(self) -> str:
        failed = [c for c in self.cases if c.status == "fail"]
        if not failed:
            return ""
        worst = max(failed, key=lambda c: c.max_error)
        more = f" (+{len(failed) - 1} more failing cases)" if len(failed) > 1 else ""
        return f"{worst.name}: {worst.detail}{more}"


@dataclass
class CheckReport:
    impl: str
    directory: str
    spec: dict[str, Any]
    components: dict[str, ComponentResult]

    @property
    def failed(self) -> bool:
        return any(c.status == "fail" for c in self.components.values())

    def status(self, component: str) -> str:
        return self.components[component].status


def compare(actual: np.ndarray, expected: np.ndarray, rule: dict[str, Any]) -> tuple[bool, float, str]:
    """(ok, error, message) of one output under its rule; error is the max |difference| or the mismatch count."""
    if actual.shape != expected.shape:
        return False, math.inf, f"shape {list(actual.shape)} != expected {list(expected.shape)}"
    kind = rule["kind"]
    if kind in ("exact", "set"):
        a, e = actual, expected
        if kind == "set":
            a, e = np.sort(a, axis=0), np.sort(e, axis=0)
        wrong = int(np.count_nonzero(a != e))
        if wrong:
            first = np.argwhere(a != e)[0]
            at = tuple(int(i) for i in first)
            what = "values (as a set)" if kind == "set" else "values"
            return False, float(wrong), f"{wrong} wrong {what}; first at {at}: {a[at]!r} != expected {e[at]!r}"
        return True, 0.0, ""
    if kind != "close":
        raise VectorsError(f"unknown comparison rule {kind!r}")
    a, e = actual.astype(np.float64), expected.astype(np.float64)
    finite = np.isfinite(e)
    same_nonfinite = (a[~finite] == e[~finite]) | (np.isnan(a[~finite]) & np.isnan(e[~finite]))
    if not bool(same_nonfinite.all()):
        return False, math.inf, "non-finite expected values not matched"
    err = np.where(finite, np.abs(a - np.where(finite, e, 0.0)), 0.0)
    err = np.where(np.isnan(err), np.inf, err)
    allowed = rule["atol"] + rule["rtol"] * np.abs(np.where(finite, e, 0.0))
    max_err = float(err.max()) if err.size else 0.0
    if bool((err <= allowed).all()):
        return True, max_err, ""
    at = tuple(int(i) for i in np.unravel_index(int(np.argmax(err - allowed)), err.shape))
    return False, max_err, (f"max error {max_err:.3g} (at {at}: {a[at]:.9g} vs expected {e[at]:.9g}, "
                            f"allowed {allowed[at]:.3g})")


def _get_path(value: Any, path: list) -> Any:
    for step in path:
        value = value[step]
    return value


def _run_case(fn: Callable, directory: Path, entry: dict[str, Any], device: str) -> CaseResult:
    import torch

    component, name = entry["component"], entry["name"]
    arrays = load_case(directory, entry)

    def tensor(key: str) -> torch.Tensor:
        return torch.from_numpy(arrays[key].copy()).to(device)

    args = []
    for arg in entry["args"]:
        if "array" in arg:
            args.append(tensor(arg["array"]))
        elif "arrays" in arg:
            args.append([tensor(k) for k in arg["arrays"]])
        else:
            args.append(_tuplify(arg["value"]))
    kwargs = {k: _tuplify(v) for k, v in entry["kwargs"].items()}
    try:
        with torch.no_grad():
            result = fn(*args, **kwargs)
    except Exception as exc:  # a port's error is a failed case, not a crash
        return CaseResult(component, name, "fail", f"raised {type(exc).__name__}: {exc}"[:300], math.inf)
    if "result_length" in entry:
        try:
            length = len(result)
        except TypeError:
            length = None
        if length != entry["result_length"]:
            return CaseResult(component, name, "fail",
                              f"returned {length} items, expected {entry['result_length']}", math.inf)
    worst = CaseResult(component, name, "pass")
    for out in entry["outputs"]:
        try:
            actual = _to_numpy(_get_path(result, out["path"]))
        except (KeyError, IndexError, TypeError) as exc:
            return CaseResult(component, name, "fail", f"output {out['name']} missing ({exc!r})", math.inf)
        ok, err, msg = compare(actual, arrays[out["key"]], out["rule"])
        if not ok and (worst.status == "pass" or err > worst.max_error):
            worst = CaseResult(component, name, "fail", f"{out['name']}: {msg}", err)
        elif ok and worst.status == "pass":
            worst.max_error = max(worst.max_error, err if out["rule"]["kind"] == "close" else 0.0)
    return worst


def check(directory: str | Path, impl: Any, device: str = "cpu") -> CheckReport:
    """Run every case of the set in `directory` against `impl` (an --impl string or a detspec.impls.Impl)."""
    import torch

    from detspec.impls import Impl, resolve

    directory = Path(directory)
    manifest = _read_manifest(directory)
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise VectorsError(f"--device {device}: CUDA is not available on this machine")
    if not isinstance(impl, Impl):
        impl = resolve(str(impl))
    by_component: dict[str, list[CaseResult]] = {c: [] for c in manifest["components"]}
    for entry in manifest["cases"]:
        component = entry["component"]
        fn = getattr(impl.namespace, component, None)
        if not callable(fn):
            result = CaseResult(component, entry["name"], "not implemented")
        else:
            result = _run_case(fn, directory, entry, device)
        by_component.setdefault(component, []).append(result)
    components = {}
    for component, results in by_component.items():
        statuses = {r.status for r in results}
        status = "fail" if "fail" in statuses else "not implemented" if "not implemented" in statuses else "pass"
        components[component] = ComponentResult(component, status, results)
    return CheckReport(impl.name, str(directory), manifest.get("spec", {}), components)


def format_table(report: CheckReport) -> str:
    width = max(len("component"), *(len(c) for c in report.components))
    spec = report.spec
    lines = [f"detspec vectors: {report.directory} (spec {spec.get('version', '?')}, config "
             f"{str(spec.get('config_sha256', '?'))[:12]}) against {report.impl}", "",
             f"{'component'.ljust(width)}  {'cases':>5}  result", "-" * (width + 40)]
    for name, comp in report.components.items():
        if comp.status == "pass":
            worst = max((c.max_error for c in comp.cases), default=0.0)
            cell = "pass" + (f" (max error {worst:.2g})" if worst > 0 else "")
        elif comp.status == "fail":
            cell = f"FAIL  {comp.detail}"
        else:
            cell = "not implemented"
        lines.append(f"{name.ljust(width)}  {len(comp.cases):>5}  {cell}")
    counts = {s: sum(c.status == s for c in report.components.values()) for s in ("pass", "fail", "not implemented")}
    lines += ["", ", ".join(f"{n} {s}" for s, n in counts.items())]
    return "\n".join(lines)


def _current_spec_hash() -> str:
    return _spec_version()["config_sha256"]


# ------------------------------------------------------------------------------------------------ CLI
def _cmd_export(args: argparse.Namespace) -> int:
    try:
        manifest = export(args.dir, seed=args.seed)
    except VectorsError as exc:
        print(f"detspec vectors export: {exc}", file=sys.stderr)
        return 2
    total = sum(p.stat().st_size for p in Path(args.dir).iterdir() if p.is_file())
    print(f"wrote {len(manifest['cases'])} cases for {len(manifest['components'])} components to {args.dir} "
          f"({total / 1024:.0f} KiB)")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from detspec.impls import ImplResolutionError

    try:
        report = check(args.dir, args.impl, device=args.device)
    except (VectorsError, ImplResolutionError) as exc:
        print(f"detspec vectors check: {exc}", file=sys.stderr)
        return 2
    print(format_table(report))
    if report.spec.get("config_sha256") not in (None, _current_spec_hash()):
        print("note: the set was exported from other spec config values than this detspec's; re-export it "
              "if the spec changed", file=sys.stderr)
    return 1 if report.failed else 0


def _add_commands(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="vectors_command", required=True)
    exp = sub.add_parser("export", help="write manifest.json and one .npz per case to DIR")
    exp.add_argument("dir", metavar="DIR")
    exp.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"random-case seed (default {DEFAULT_SEED})")
    exp.set_defaults(func=_cmd_export)
    chk = sub.add_parser("check", help="run an implementation on the vectors in DIR and print a table")
    chk.add_argument("dir", metavar="DIR")
    chk.add_argument("--impl", required=True, metavar="NAME",
                     help="reference, fast, torchvision, module[:attribute] or path/to/port.py")
    chk.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    chk.set_defaults(func=_cmd_check)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``detspec vectors {export,check}`` on an argparse subparsers object."""
    parser = subparsers.add_parser("vectors", help="export or check golden vectors (npz + JSON) for ports",
                                   description=__doc__.split("\n\n")[0])
    _add_commands(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m detspec.vectors export|check ...``: the same commands as ``detspec vectors``."""
    parser = argparse.ArgumentParser(prog="detspec vectors", description=__doc__.split("\n\n")[0])
    _add_commands(parser)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
