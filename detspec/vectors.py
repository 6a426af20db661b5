"""Golden vectors: the contract's inputs and expected outputs as plain numpy files, for ports outside Python.

  detspec vectors export DIR [--seed N] [--force]
      Write DIR/manifest.json and one DIR/<component>__<case>.npz per case, each file atomically. Deterministic:
      the same seed, detspec and torch give byte-identical files (the .npz members carry a fixed timestamp).
      DIR may be missing, empty, or hold an earlier set of this format version with the same seed (re-exporting
      it, e.g. after a spec change, replaces its files and removes its .npz files the new set does not write;
      other files such as a README are left alone). Any other non-empty DIR (unrelated files, a set with
      another seed or format version, an unreadable manifest) is refused unless --force is given.

  detspec vectors check DIR --impl NAME [--device cpu|cuda]
      Run every case against an implementation (reference, fast, torchvision, module[:attribute] or
      file.py, as in ``detspec check``) and print one row per component: pass, FAIL with the largest
      error, or not implemented. Exits 1 if any case fails, 2 on a usage error (no such directory, an
      --impl that does not resolve) or a malformed set (see "A set is data" below); never 0 unless every
      case was checked.

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

A set is data, never code: ``check`` validates the whole manifest and every case's .npz before it calls the
implementation once, and refuses (exit 2, one line naming the case and the problem) a set where

- the manifest is not JSON, not an object, or lacks a key or has one of the wrong type;
- a case names a component outside the supported contract names (COMPONENTS: spec.contract.CONTRACT less the
  random ones, plus select_proposals and rpn_losses); nothing is looked up or called for it;
- a case's ``file`` is absolute, contains ``..``, or resolves (symlinks followed) outside DIR, or is not a
  regular file;
- a case has no outputs, an unknown comparison rule, or a listed component has no case;
- an .npz is not a readable zip of .npy arrays (truncated, corrupt), holds object arrays (loaded with
  allow_pickle=False), lacks an array the manifest names, or an array's dtype or shape differs from the
  manifest's or is not a plain bool/int/float dtype.
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
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np

from detspec.fileio import UserError, atomic_save, atomic_write

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


class VectorsError(UserError):
    """A usage error or a malformed set: missing directory, unreadable or incompatible manifest, a case that
    cannot be checked (bad path, unknown component, no outputs, a missing or corrupt .npz). One line."""


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
        # BOX.IOU_NO_PLUS_ONE: inter / (area1 + area2 - inter), no +1; BOX.IOU_ZERO_NO_OVERLAP: touching boxes
        # have IoU exactly 0.
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
def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """np.savez_compressed's layout with a fixed member timestamp, so equal arrays give equal bytes."""
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.array(array, order="C"), allow_pickle=False)  # keeps 0-d shapes
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buffer.getvalue())
    return zipped.getvalue()


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    data = _npz_bytes(arrays)
    atomic_save(path, lambda fh: fh.write(data))


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


def _previous_set(out: Path, seed: int) -> tuple[dict[str, Any] | None, str | None]:
    """(the manifest of the set already in the non-empty directory `out` or None, why export must not replace
    it without --force or None). Only a set of this format version with the same seed may be re-exported."""
    if not (out / MANIFEST).is_file():
        return None, f"holds no {MANIFEST} (it is not a vector set)"
    try:
        old = _read_manifest(out, check_version=False)
    except VectorsError:
        return None, f"its {MANIFEST} is not a readable {FORMAT} manifest"
    if old.get("format_version") != FORMAT_VERSION:
        return old, (f"holds a vector set of format version {old.get('format_version')!r} (this detspec writes "
                     f"version {FORMAT_VERSION})")
    if old.get("seed") != seed:
        return old, f"holds a different vector set (seed {old.get('seed')!r}, not {seed})"
    return old, None


def _stale_files(out: Path, old: dict[str, Any] | None, written: set[str]) -> list[Path]:
    """The earlier set's case files (plain .npz names directly in `out`) that the new set did not write."""
    cases = old.get("cases") if old is not None else None
    if not isinstance(cases, list):
        return []
    stale = []
    for entry in cases:
        name = entry.get("file") if isinstance(entry, dict) else None
        if (isinstance(name, str) and name.endswith(".npz") and name not in written and "/" not in name
                and "\\" not in name and name not in ("", ".", "..") and "\0" not in name):
            path = out / name
            if path.is_symlink() or path.is_file():
                stale.append(path)
    return stale


def export(directory: str | Path, seed: int = DEFAULT_SEED, force: bool = False) -> dict[str, Any]:
    """Write the vector set to `directory` (created if needed); returns the manifest.

    Every file is written atomically (a temporary file, then a rename): an interrupted export leaves each file
    either as it was or complete. An existing non-empty directory must hold an earlier set of this format
    version with the same seed (a re-export: its case files the new set does not write are removed; other
    files, such as a README, are left alone); anything else is refused unless ``force`` is true.
    """
    import torch

    out = Path(directory)
    if out.exists() and not out.is_dir():
        raise VectorsError(f"{out} exists and is not a directory")
    old: dict[str, Any] | None = None
    if out.is_dir() and any(out.iterdir()):
        old, problem = _previous_set(out, seed)
        if problem is not None and not force:
            raise VectorsError(f"{out} is not empty and {problem}; export into an empty or new directory, or pass "
                               "--force to write the set there anyway")
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
    atomic_write(out / MANIFEST, text)  # last: the manifest only ever lists files that are complete
    for stale in _stale_files(out, old, {e["file"] for e in entries}):
        stale.unlink()
    return manifest


# ------------------------------------------------------------------------------------------------ validation
# Array dtypes a set may hold (native byte order): what torch.from_numpy takes and the rules compare.
_ARRAY_DTYPES: tuple[np.dtype, ...] = tuple(np.dtype(t) for t in (
    np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.float16, np.float32, np.float64))
_RULE_KINDS = ("exact", "set", "close")
MAX_CASE_BYTES = 256 * 2 ** 20  # the uncompressed arrays of one case (the whole committed set is < 1 MB)


def _one_line(text: Any, limit: int = 200) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _case_label(entry: Any, index: int) -> str:
    """How messages name a case: "case <component>/<name>" when both are strings, else "case #<index>"."""
    if isinstance(entry, dict) and isinstance(entry.get("component"), str) and isinstance(entry.get("name"), str):
        return f"case {_one_line(entry['component'], 80)}/{_one_line(entry['name'], 80)}"
    return f"case #{index}"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _read_manifest(directory: Path, check_version: bool = True) -> dict[str, Any]:
    """The parsed manifest.json of `directory`: a JSON object of this format (and version, unless told not to)."""
    if not directory.is_dir():
        raise VectorsError(f"{directory} is not a directory (expected a vector set: manifest.json and .npz files)")
    path = directory / MANIFEST
    if not path.is_file():
        raise VectorsError(f"{path} does not exist; write a vector set with 'detspec vectors export {directory}'")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise VectorsError(f"{path} is not valid JSON: {_one_line(exc)}") from None
    if not isinstance(manifest, dict):
        raise VectorsError(f"{path} holds a JSON {type(manifest).__name__}, not an object (a {FORMAT} manifest)")
    if manifest.get("format") != FORMAT:
        raise VectorsError(f"{path} is not a {FORMAT} manifest (its \"format\" is "
                           f"{_one_line(repr(manifest.get('format')), 60)})")
    if check_version and manifest.get("format_version") != FORMAT_VERSION:
        raise VectorsError(f"{path} has format version {_one_line(repr(manifest.get('format_version')), 60)}; this "
                           f"detspec reads version {FORMAT_VERSION} (re-export the set or use a matching detspec)")
    return manifest


def _validate_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """The top level and every case entry's keys and types (not the .npz files). Raises a one-line VectorsError."""
    components = manifest.get("components")
    if not isinstance(components, list) or not components or not all(isinstance(c, str) for c in components):
        raise VectorsError(f"{path}: \"components\" must be a non-empty list of component names")
    if "spec" in manifest and not isinstance(manifest["spec"], dict):
        raise VectorsError(f"{path}: \"spec\" must be a JSON object")
    cases = manifest.get("cases")
    if not isinstance(cases, list) or not cases:
        raise VectorsError(f"{path}: \"cases\" must be a non-empty list of case objects")
    seen: set[tuple[str, str]] = set()
    for index, entry in enumerate(cases):
        where = f"{path}: {_case_label(entry, index)}"
        problem = _case_entry_problem(entry, components)
        if problem:
            raise VectorsError(f"{where}: {problem}")
        key = (entry["component"], entry["name"])
        if key in seen:
            raise VectorsError(f"{where}: listed twice")
        seen.add(key)
    for component in components:  # after the cases, so that a case naming a bad component is the one named
        if component not in COMPONENTS:
            raise VectorsError(f"{path}: \"components\" lists {_one_line(repr(component), 80)}, which is not a "
                               "contract component this format supports")
    if len(set(components)) != len(components):
        raise VectorsError(f"{path}: \"components\" lists a component twice")
    for component in components:
        if not any(component == c for c, _ in seen):
            raise VectorsError(f"{path}: component {component} is listed but has no case (nothing to check)")


def _case_entry_problem(entry: Any, components: list[str]) -> str | None:
    """What is wrong with one case object of the manifest (keys and types only), or None."""
    if not isinstance(entry, dict):
        return f"is a JSON {type(entry).__name__}, not an object"
    component = entry.get("component")
    if not isinstance(component, str):
        return "\"component\" must be a string"
    if component not in COMPONENTS:
        return (f"component {_one_line(repr(component), 80)} is not a contract component this format supports "
                f"({', '.join(COMPONENTS)}); nothing was run")
    if component not in components:
        return f"component {component} is not listed in the manifest's \"components\""
    if not isinstance(entry.get("name"), str) or not entry["name"]:
        return "\"name\" must be a non-empty string"
    if not isinstance(entry.get("file"), str) or not entry["file"]:
        return "\"file\" must be a non-empty string (an .npz file name inside the set's directory)"
    args = entry.get("args")
    if not isinstance(args, list):
        return "\"args\" must be a list"
    for i, arg in enumerate(args):
        kinds = [k for k in ("array", "arrays", "value") if isinstance(arg, dict) and k in arg]
        if len(kinds) != 1:
            return f"argument {i} must be an object with exactly one of \"array\", \"arrays\" or \"value\""
        if "name" in arg and not isinstance(arg["name"], str):
            return f"argument {i}: \"name\" must be a string"
        if kinds == ["array"] and not isinstance(arg["array"], str):
            return f"argument {i}: \"array\" must be an npz key (a string)"
        if kinds == ["arrays"] and not (isinstance(arg["arrays"], list)
                                        and all(isinstance(k, str) for k in arg["arrays"])):
            return f"argument {i}: \"arrays\" must be a list of npz keys (strings)"
    if not isinstance(entry.get("kwargs"), dict):
        return "\"kwargs\" must be a JSON object"
    if "result_length" in entry and not (_is_int(entry["result_length"]) and entry["result_length"] >= 0):
        return "\"result_length\" must be a non-negative integer"
    outputs = entry.get("outputs")
    if not isinstance(outputs, list):
        return "\"outputs\" must be a list"
    if not outputs:
        return "has no outputs (a case with nothing to compare cannot pass)"
    for i, out in enumerate(outputs):
        problem = _output_problem(out)
        if problem:
            label = out["name"] if isinstance(out, dict) and isinstance(out.get("name"), str) else f"#{i}"
            return f"output {_one_line(label, 60)}: {problem}"
    return None


def _output_problem(out: Any) -> str | None:
    if not isinstance(out, dict):
        return "must be a JSON object"
    for key in ("name", "key", "dtype"):
        if not isinstance(out.get(key), str):
            return f"\"{key}\" must be a string"
    path = out.get("path")
    if not isinstance(path, list) or not all(_is_int(s) or isinstance(s, str) for s in path):
        return "\"path\" must be a list of indices and keys"
    shape = out.get("shape")
    if not isinstance(shape, list) or not all(_is_int(n) and n >= 0 for n in shape):
        return "\"shape\" must be a list of non-negative integers"
    rule = out.get("rule")
    if not isinstance(rule, dict) or rule.get("kind") not in _RULE_KINDS:
        return f"\"rule\" must be an object whose \"kind\" is one of {', '.join(_RULE_KINDS)}"
    if rule["kind"] == "close" and not all(_is_number(rule.get(t)) and rule[t] >= 0 for t in ("rtol", "atol")):
        return "a \"close\" rule needs finite, non-negative \"rtol\" and \"atol\""
    if rule["kind"] == "set" and not shape:
        return "a \"set\" rule needs an array of at least one dimension"
    return None


def _case_path(directory: Path, file: str, where: str) -> Path:
    """`file` resolved (symlinks followed) inside `directory`; anything that leaves the set is refused."""
    posix, windows = PurePosixPath(file), PureWindowsPath(file)
    if "\0" in file:
        raise VectorsError(f"{where}: file {_one_line(repr(file), 300)} contains a NUL character")
    if posix.is_absolute() or windows.is_absolute() or windows.drive or file.startswith(("/", "\\")):
        raise VectorsError(f"{where}: file {_one_line(repr(file), 300)} is an absolute path; case files must be "
                           "inside the vector set's directory")
    if ".." in posix.parts or ".." in windows.parts:
        raise VectorsError(f"{where}: file {_one_line(repr(file), 300)} contains '..'; case files must be inside "
                           "the vector set's directory")
    if not file.endswith(".npz"):
        raise VectorsError(f"{where}: file {_one_line(repr(file), 300)} is not an .npz file")
    root = directory.resolve()
    try:
        resolved = (directory / file).resolve(strict=True)
    except FileNotFoundError:
        raise VectorsError(f"{where}: {directory / file} is listed in the manifest but does not exist") from None
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise VectorsError(f"{where}: cannot resolve {_one_line(repr(file), 300)}: {_one_line(exc)}") from None
    if not resolved.is_relative_to(root):
        raise VectorsError(f"{where}: file {_one_line(repr(file), 300)} resolves to {resolved}, outside the vector "
                           f"set's directory {root}")
    if not resolved.is_file():
        raise VectorsError(f"{where}: {directory / file} is not a regular file")
    return resolved


def _load_npz(path: Path, where: str) -> dict[str, np.ndarray]:
    """Every array of one .npz, loaded without pickle; a corrupt or non-array member is a one-line error."""
    name = path.name
    try:
        if not zipfile.is_zipfile(path):
            raise VectorsError(f"{where}: {name} is not a readable .npz (zip) file (truncated or corrupt)")
        with zipfile.ZipFile(path) as zf:
            size = sum(info.file_size for info in zf.infolist())
        if size > MAX_CASE_BYTES:
            raise VectorsError(f"{where}: {name} holds {size} bytes of arrays uncompressed, more than the "
                               f"{MAX_CASE_BYTES} a case may")
        with np.load(path, allow_pickle=False) as data:
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise VectorsError(f"{where}: {name} is not an .npz archive of arrays")
            arrays = {key: data[key] for key in data.files}
    except VectorsError:
        raise
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "pickled" in str(exc):
            raise VectorsError(f"{where}: {name} holds object (pickled) arrays; a vector set holds only plain "
                               "numeric arrays") from None
        raise VectorsError(f"{where}: cannot read {name} (truncated or corrupt): {_one_line(exc)}") from None
    except Exception as exc:  # BadZipFile, EOFError, zlib.error, OSError ...: a truncated or corrupt file
        raise VectorsError(f"{where}: cannot read {name} (truncated or corrupt): {type(exc).__name__}: "
                           f"{_one_line(exc)}") from None
    for key, array in arrays.items():
        if not isinstance(array, np.ndarray):
            raise VectorsError(f"{where}: {name} member {_one_line(repr(key), 80)} is not a .npy array")
        if array.dtype not in _ARRAY_DTYPES:
            raise VectorsError(f"{where}: {name} array {_one_line(repr(key), 80)} has dtype {array.dtype.str}; "
                               "a vector set holds bool, int8/16/32/64, uint8 or float16/32/64 (native byte order)")
    return arrays


def _check_case_arrays(entry: dict[str, Any], arrays: dict[str, np.ndarray], where: str) -> None:
    """Every npz key the case names exists, and each expected output has the manifest's dtype and shape."""
    keys = []
    for arg in entry["args"]:
        keys += [arg["array"]] if "array" in arg else arg.get("arrays", [])
    for key in keys:
        if key not in arrays:
            raise VectorsError(f"{where}: array {_one_line(repr(key), 80)} is missing from {entry['file']}")
    for out in entry["outputs"]:
        key = out["key"]
        if key not in arrays:
            raise VectorsError(f"{where}: output array {_one_line(repr(key), 80)} is missing from {entry['file']}")
        array = arrays[key]
        if array.dtype.name != out["dtype"] or list(array.shape) != out["shape"]:
            raise VectorsError(f"{where}: output array {_one_line(repr(key), 80)} is {array.dtype.name} "
                               f"{list(array.shape)} in {entry['file']}, the manifest says "
                               f"{_one_line(out['dtype'], 40)} {out['shape']}")


def load_case(directory: str | Path, entry: dict[str, Any]) -> dict[str, np.ndarray]:
    """The arrays of one case (npz key -> array); the file must lie inside `directory`, arrays without pickle."""
    directory = Path(directory)
    where = f"{directory / MANIFEST}: {_case_label(entry, 0)}"
    file = entry.get("file") if isinstance(entry, dict) else None
    if not isinstance(file, str) or not file:
        raise VectorsError(f"{where}: \"file\" must be a non-empty string")
    return _load_npz(_case_path(directory, file, where), where)


def load_set(directory: str | Path) -> tuple[dict[str, Any], list[dict[str, np.ndarray]]]:
    """The manifest and every case's arrays, all validated (see the module docstring, "A set is data").

    Raises a one-line VectorsError naming the case and the problem; nothing of an implementation is touched.
    """
    directory = Path(directory)
    manifest = _read_manifest(directory)
    path = directory / MANIFEST
    _validate_manifest(path, manifest)
    loaded = []
    for index, entry in enumerate(manifest["cases"]):
        where = f"{path}: {_case_label(entry, index)}"
        arrays = _load_npz(_case_path(directory, entry["file"], where), where)
        _check_case_arrays(entry, arrays, where)
        loaded.append(arrays)
    return manifest, loaded


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


def _run_case(fn: Callable, entry: dict[str, Any], arrays: dict[str, np.ndarray], device: str) -> CaseResult:
    """One validated case (see load_set) against `fn`; the port's exceptions and odd results are failures."""
    import torch

    component, name = entry["component"], entry["name"]

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
        return CaseResult(component, name, "fail", f"raised {type(exc).__name__}: {_one_line(exc, 280)}", math.inf)
    if "result_length" in entry:
        try:
            length = len(result)
        except Exception:  # no len(): TypeError, or whatever a port's odd result raises
            length = None
        if length != entry["result_length"]:
            return CaseResult(component, name, "fail",
                              f"returned {length} items, expected {entry['result_length']}", math.inf)
    worst = CaseResult(component, name, "pass")
    for out in entry["outputs"]:
        try:
            actual = _to_numpy(_get_path(result, out["path"]))
        except Exception as exc:  # KeyError, IndexError, TypeError, or a leaf numpy cannot convert
            return CaseResult(component, name, "fail", f"output {out['name']} missing ({_one_line(repr(exc))})",
                              math.inf)
        try:
            ok, err, msg = compare(actual, arrays[out["key"]], out["rule"])
        except Exception as exc:  # a result numpy cannot compare (object arrays, strings ...) fails the case
            ok, err, msg = False, math.inf, f"cannot compare the result: {type(exc).__name__}: {_one_line(exc)}"
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
    manifest, loaded = load_set(directory)  # the whole set is validated before the implementation is touched
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise VectorsError(f"--device {device}: CUDA is not available on this machine")
    if not isinstance(impl, Impl):
        impl = resolve(str(impl))
    by_component: dict[str, list[CaseResult]] = {c: [] for c in manifest["components"]}
    for entry, arrays in zip(manifest["cases"], loaded):
        component = entry["component"]
        if component not in COMPONENTS:  # load_set refused it already; never look up any other name
            raise VectorsError(f"component {component!r} is not a contract component this format supports")
        fn = getattr(impl.namespace, component, None)
        if not callable(fn):
            result = CaseResult(component, entry["name"], "not implemented")
        else:
            result = _run_case(fn, entry, arrays, device)
        by_component[component].append(result)
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
        manifest = export(args.dir, seed=args.seed, force=args.force)
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
    exp.add_argument("--force", action="store_true",
                     help="write into a non-empty DIR that does not hold an earlier set of this format version "
                          "and seed (without it such a DIR is refused, so no other set is silently replaced)")
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
