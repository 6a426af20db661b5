"""Golden-vector cases whose expected values are written from the spec (d2-spec §2-§3), each with its hand
derivation in a comment (manifest ``source: "spec"``)."""

from __future__ import annotations

import math

import numpy as np

from detspec.vectors.case import Case, f32, f64, i64
from detspec.vectors.format import INPUT_FLOAT


def spec_cases() -> list[Case]:
    """The known values of d2-spec §3 (and small hand-derived cases), expected values written from the spec."""
    r2 = math.sqrt(2.0)
    cases = [
        # BOX.IOU_NO_PLUS_ONE: inter / (area1 + area2 - inter), no +1; BOX.IOU_ZERO_NO_OVERLAP: touching boxes
        # have IoU exactly 0.
        # (0,0,10,10)-(5,0,15,10): 50 / 150; (0,0,10,10)-(0,0,2,2): 4 / 100; (0,0,1,1)-(0,0,2,2): 1 / 4 (4/9 with
        # a +1); (0,0,1,1)-(0,0,10,10): 1 / 100; (10,0,20,10) only touches (0,0,10,10): 0.
        Case("pairwise_iou", "spec_values", "d2-spec §2.4: no +1, 0 without overlap",
             [("boxes1", f32([[0, 0, 10, 10], [0, 0, 1, 1]])),
              ("boxes2", f32([[5, 0, 15, 10], [0, 0, 2, 2], [10, 0, 20, 10], [0, 0, 10, 10]]))],
             expected=f64([[1 / 3, 4 / 100, 0.0, 1.0], [0.0, 1 / 4, 0.0, 1 / 100]])),
        Case("box_area", "spec_values", "d2-spec §2.4: area = (x2 - x1)(y2 - y1), no +1",
             [("boxes", f32([[0, 0, 10, 20], [1.5, 2, 2, 4], [3, 3, 3, 9]]))],
             expected=f64([200.0, 1.0, 0.0])),
        Case("clip_boxes", "spec_values", "d2-spec §2.4: x in [0, w], y in [0, h]; image_size = (h, w) = (20, 30)",
             [("boxes", f32([[-5, -5, 10, 10], [25, 15, 40, 25], [31, 21, 35, 30]])), ("image_size", [20, 30])],
             expected=f64([[0, 0, 10, 10], [25, 15, 30, 20], [30, 20, 30, 20]])),
        Case("nonempty", "spec_threshold", "d2-spec §2.4: width > t and height > t, strict (t = 1)",
             [("boxes", f32([[0, 0, 1, 5], [0, 0, 2, 2], [0, 0, 5, 1.5], [0, 0, 0, 0]]))], {"threshold": 1.0},
             expected=np.array([False, True, True, False])),
        # d2-spec §3 box-transform values: (0,0,10,20) -> (0,0,20,20) with (10,10,5,5): (5, 0, 5 ln 2, 0);
        # (-16,-16,16,16) -> (0,0,32,32): centres move by 16 on a width of 32, sizes equal -> 10 * 0.5 = 5.
        Case("encode_boxes", "spec_values_roi_weights", "d2-spec §3 box-transform values, weights (10, 10, 5, 5)",
             [("src", f32([[0, 0, 10, 20], [-16, -16, 16, 16]])), ("target", f32([[0, 0, 20, 20], [0, 0, 32, 32]])),
              ("weights", [10.0, 10.0, 5.0, 5.0])],
             expected=f64([[5.0, 0.0, 5 * math.log(2.0), 0.0], [5.0, 5.0, 0.0, 0.0]])),
        Case("encode_boxes", "spec_values_rpn_weights", "d2-spec §3 box-transform values, weights (1, 1, 1, 1)",
             [("src", f32([[-16, -16, 16, 16]])), ("target", f32([[0, 0, 32, 32]])), ("weights", [1.0] * 4)],
             expected=f64([[0.5, 0.5, 0.0, 0.0]])),
        # decode: the inverse of the values above, class-interleaved with K = 2 (class 1 has zero deltas = the
        # box itself); and the clamp: dw = dh = 10 > ln(62.5) on a 16 x 16 box at centre 8 -> size 1000.
        Case("decode_boxes", "spec_values", "d2-spec §2.7/§3: inverse of the known deltas; K = 2 interleaved",
             [("deltas", f32([[5.0, 0.0, 5 * math.log(2.0), 0.0, 0, 0, 0, 0], [5, 5, 0, 0, 0, 0, 0, 0]])),
              ("boxes", f32([[0, 0, 10, 20], [-16, -16, 16, 16]])), ("weights", [10.0, 10.0, 5.0, 5.0]),
              ("scale_clamp", math.log(1000.0 / 16))],
             expected=f64([[0, 0, 20, 20, 0, 0, 10, 20], [0, 0, 32, 32, -16, -16, 16, 16]])),
        Case("decode_boxes", "spec_clamp", "d2-spec §2.7: dw, dh clamped from above at ln(62.5); dx, dy not",
             [("deltas", f32([[0, 0, 10, 10], [1, 0, -2, 4.0]])), ("boxes", f32([[0, 0, 16, 16], [0, 0, 16, 16]])),
              ("weights", [1.0] * 4), ("scale_clamp", math.log(1000.0 / 16))],
             # row 2: centre x = 8 + 1 * 16 = 24, width = 16 e^-2; height = 16 e^4 (below the clamp)
             expected=f64([[8 - 500, 8 - 500, 8 + 500, 8 + 500],
                            [24 - 8 * math.exp(-2), 8 - 8 * math.exp(4), 24 + 8 * math.exp(-2), 8 + 8 * math.exp(4)]])),
        # d2-spec §3 cell anchors: w = sqrt(s^2 / a), h = a w; size 32: ratio 0.5 -> (16 r2, 8 r2) half-sizes.
        Case("cell_anchors", "spec_size32", "d2-spec §3 cell anchors, size 32, ratios 0.5 / 1 / 2",
             [("sizes", [32.0]), ("aspect_ratios", [0.5, 1.0, 2.0])],
             expected=f64([[-16 * r2, -8 * r2, 16 * r2, 8 * r2], [-16, -16, 16, 16],
                            [-8 * r2, -16 * r2, 8 * r2, 16 * r2]])),
        Case("cell_anchors", "spec_all_sizes", "d2-spec §3 cell anchors table, sizes 32..512 (size-major order)",
             [("sizes", [32.0, 64.0, 128.0, 256.0, 512.0]), ("aspect_ratios", [0.5, 1.0, 2.0])],
             expected=f64([row for s in (32, 64, 128, 256, 512) for row in
                            ([-s / r2, -s / (2 * r2), s / r2, s / (2 * r2)], [-s / 2, -s / 2, s / 2, s / 2],
                             [-s / (2 * r2), -s / r2, s / (2 * r2), s / r2])])),
        # torchvision rounds the corners: 16 r2 = 22.627 -> 23, 8 r2 = 11.314 -> 11.
        Case("cell_anchors", "spec_round_to_int", "d2-spec §2.3 / torchvision: corners rounded",
             [("sizes", [32.0]), ("aspect_ratios", [0.5, 1.0, 2.0])], {"round_to_int": True},
             expected=f64([[-23, -11, 23, 11], [-16, -16, 16, 16], [-11, -23, 11, 23]])),
    ]

    # d2-spec §3 grid-anchor test: sizes [32, 64], ratios [0.25, 1, 4], stride 4, a 1 x 2 map.
    # Cells: 32/0.25 -> w 64, h 16; 32/1 -> 32 x 32; 32/4 -> 16 x 64; 64/... -> 128 x 32, 64 x 64, 32 x 128.
    cells = [[-32, -8, 32, 8], [-16, -16, 16, 16], [-8, -32, 8, 32],
             [-64, -16, 64, 16], [-32, -32, 32, 32], [-16, -64, 16, 64]]
    for offset, label in ((0.0, "offset0"), (0.5, "offset05")):
        shift = offset * 4  # grid point (y, x) at ((x + offset) 4, (y + offset) 4)
        rows = [[c[0] + sx, c[1] + shift, c[2] + sx, c[3] + shift] for sx in (shift, shift + 4) for c in cells]
        cases.append(Case("grid_anchors", f"spec_{label}", f"d2-spec §3 grid-anchor test, offset {offset}",
                           [("feature_sizes", [[1, 2]]), ("strides", [4]), ("cell_anchors", [f32(cells)])],
                           {"offset": offset}, expected=[f64(rows)]))

    # d2-spec §3 matcher example (RPN thresholds, low-quality matches).
    quality = f32([[0.15, 0.45, 0.2, 0.6], [0.3, 0.65, 0.05, 0.1], [0.05, 0.4, 0.25, 0.4]])
    cases.append(Case("match", "spec_example", "d2-spec §3 matcher example",
                      [("quality", quality), ("thresholds", [0.3, 0.7]), ("labels", [0, -1, 1]),
                       ("allow_low_quality_matches", True)],
                      expected=(i64([1, 1, 2, 0]), np.array([-1, 1, 0, 1], dtype=np.int8))))
    cases.append(Case("match", "spec_empty_gt", "d2-spec §2.5: no GT -> index 0 and labels[0] everywhere",
                      [("quality", np.zeros((0, 3), dtype=INPUT_FLOAT)), ("thresholds", [0.3, 0.7]),
                       ("labels", [0, -1, 1]), ("allow_low_quality_matches", True)],
                      expected=(i64([0, 0, 0]), np.array([0, 0, 0], dtype=np.int8))))
    # MATCH.HALF_OPEN at the ROI threshold: IoU((0,0,10,10), (0,0,10,5)) = 50 / 100 = 0.5 -> label 1 (>= 0.5);
    # (0,0,10,4) -> 0.4 -> 0; (50,50,60,60) -> 0 -> 0; (0,0,10,4.5) -> 0.45 -> 0 (with a "+1" in widths it
    # would be 11 * 5.5 / 121 = 0.5 -> 1).
    cases.append(Case("iou_match", "spec_half_open", "d2-spec §2.5: [0.5, inf) is foreground, IoU 0.5 included",
                      [("gt_boxes", f32([[0, 0, 10, 10]])),
                       ("boxes", f32([[0, 0, 10, 5], [0, 0, 10, 4], [50, 50, 60, 60], [0, 0, 10, 4.5]])),
                       ("thresholds", [0.5]), ("labels", [0, 1]), ("allow_low_quality_matches", False)],
                      expected=(i64([0, 0, 0, 0]), np.array([1, 0, 0, 0], dtype=np.int8))))

    # NMS.STRICT: IoU((0,0,10,10), (0,0,10,5)) = 0.5 exactly: kept at threshold 0.5, suppressed at 0.49.
    pair = f32([[0, 0, 10, 5], [0, 0, 10, 10]])
    scores = f32([0.8, 0.9])
    cases.append(Case("nms", "spec_strict_kept", "d2-spec §2.14: suppress only when IoU > threshold",
                      [("boxes", pair), ("scores", scores), ("iou_threshold", 0.5)], expected=i64([1, 0])))
    cases.append(Case("nms", "spec_strict_suppressed", "d2-spec §2.14: IoU 0.5 > 0.49 suppresses",
                      [("boxes", pair), ("scores", scores), ("iou_threshold", 0.49)], expected=i64([1])))
    cases.append(Case("nms", "spec_disjoint_ties", "disjoint boxes with tied scores: all kept, order open",
                      [("boxes", f32([[0, 0, 1, 1], [2, 2, 3, 3], [4, 4, 5, 5]])), ("scores", f32([0.5, 0.5, 0.5])),
                       ("iou_threshold", 0.5)], expected=i64([0, 1, 2]), set_outputs=("keep",)))
    cases.append(Case("batched_nms", "spec_groups", "d2-spec §2.14: groups never suppress each other",
                      [("boxes", f32([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 9]])),
                       ("scores", f32([0.9, 0.8, 0.7])), ("groups", i64([0, 1, 0])), ("iou_threshold", 0.5)],
                      expected=i64([0, 1])))

    # d2-spec §3 level assignment: squares of side s (sqrt(area) = s).
    sides = [16, 32, 64, 100, 111.99, 112, 150, 223.9, 224, 300, 447.9, 448, 1000]
    levels = [2, 2, 2, 2, 2, 3, 3, 3, 4, 4, 4, 5, 5]
    cases.append(Case("assign_levels", "spec_boundaries", "d2-spec §3 level assignment table",
                      [("boxes", f32([[0, 0, s, s] for s in sides]))], expected=i64(levels)))

    # d2-spec §3 ROIAlign: a 5 x 5 ramp f(y, x) = 5 y + x, box (1, 1, 3, 3), 4 x 4 output, scale 1, ratio 0.
    # Bilinear interpolation of a linear ramp is exact, so each output is f at the single sample of its bin:
    # aligned=True: start 1 - 0.5, bin 0.5, grid ceil(0.5) = 1, samples at 0.75, 1.25, 1.75, 2.25;
    # aligned=False: start 1, samples at 1.25, 1.75, 2.25, 2.75.
    ramp = np.arange(25, dtype=INPUT_FLOAT).reshape(1, 1, 5, 5)
    for aligned, first in ((True, 0.75), (False, 1.25)):
        pts = [first + 0.5 * i for i in range(4)]
        pooled = f64([[[[5 * y + x for x in pts] for y in pts]]])
        cases.append(Case("roi_align", f"spec_ramp_aligned_{str(aligned).lower()}",
                          f"d2-spec §3 ROIAlign 5x5 ramp, aligned={aligned}",
                          [("features", ramp), ("rois", f32([[0, 1, 1, 3, 3]])), ("output_size", 4),
                           ("spatial_scale", 1.0), ("sampling_ratio", 0), ("aligned", aligned)], expected=pooled))
    cases.append(Case("roi_align", "spec_zero_height", "d2-spec §3: a zero-height box pools exactly 0",
                      [("features", ramp), ("rois", f32([[0, 3, 4, 5, 4]])), ("output_size", 7),
                       ("spatial_scale", 1.0), ("sampling_ratio", 0), ("aligned", True)],
                      expected=np.zeros((1, 1, 7, 7))))

    # Multi-level pooling: map of image n on level k is the constant 10 k + n, so each pooled value names the
    # level and image used. Sides 32 -> P2, 150 -> P3, 300 -> P4, 448 -> P5 (d2-spec §3 table); every sample
    # falls inside the 24 x 24 maps (448 / 32 = 14), where bilinear interpolation of a constant is the constant.
    maps = [np.stack([np.full((1, 24, 24), 10 * k + n) for n in range(2)]).astype(INPUT_FLOAT) for k in (2, 3, 4, 5)]
    rois = [(1, 32, 2), (0, 150, 3), (0, 32, 2), (1, 448, 5), (0, 300, 4), (1, 150, 3)]  # (image, side, level)
    cases.append(Case("multilevel_roi_align", "spec_levels", "d2-spec §2.11: level by size, input row order kept",
                      [("features", maps), ("rois", f32([[n, 0, 0, s, s] for n, s, _ in rois]))],
                      {"output_size": 7, "strides": [4, 8, 16, 32], "sampling_ratio": 0, "aligned": True},
                      expected=f64([np.full((1, 7, 7), 10 * k + n) for n, _, k in rois])))

    # ROI losses (d2-spec §2.12), R = 2, K = 1: zero logits -> CE = ln 2 per row, mean ln 2. Row 0 is foreground
    # with proposal (-16,-16,16,16) and GT (0,0,32,32): target (5, 5, 0, 0) with (10, 10, 5, 5); zero predicted
    # deltas -> L1 sum 10, divided by max(R, 1) = 2 -> 5.
    cases.append(Case("roi_losses", "spec_values", "d2-spec §2.12: mean CE, box L1 / max(R, 1)",
                      [("class_logits", f32(np.zeros((2, 2)))), ("box_deltas", f32(np.zeros((2, 4)))),
                       ("proposals", f32([[-16, -16, 16, 16], [0, 0, 8, 8]])), ("gt_classes", i64([0, 1])),
                       ("gt_boxes", f32([[0, 0, 32, 32], [0, 0, 8, 8]]))],
                      {"weights": [10.0, 10.0, 5.0, 5.0], "smooth_l1_beta": 0.0},
                      expected={"loss_cls": f64(math.log(2.0)), "loss_box_reg": f64(5.0)}))
    # RPN losses (d2-spec §2.8), one image, anchors labelled (1, 0): zero logits -> BCE ln 2 each; anchor 0's
    # target is (0.5, 0.5, 0, 0) (weights 1), zero predictions -> L1 1. Both / (256 x 1).
    cases.append(Case("rpn_losses", "spec_values", "d2-spec §2.8: both losses / (256 N)",
                      [("anchors", f32([[-16, -16, 16, 16], [100, 100, 132, 132]])),
                       ("pred_logits", f32(np.zeros((1, 2)))), ("pred_deltas", f32(np.zeros((1, 2, 4)))),
                       ("gt_labels", np.array([[1, 0]], dtype=np.int8)),
                       ("gt_boxes", f32([[[0, 0, 32, 32], [0, 0, 32, 32]]]))],
                      {"batch_size_per_image": 256},
                      expected={"loss_rpn_cls": f64(2 * math.log(2.0) / 256), "loss_rpn_loc": f64(1.0 / 256)}))

    # Proposal selection (d2-spec §2.9), one image 20 x 20, two levels. Level 0: (0,0,10,10) logit 2 suppresses
    # (0,0,10,9) (IoU 0.9 > 0.7). Level 1: (-5,-5,-1,-1) logit 3 clips to (0,0,0,0) and is removed; the same
    # (0,0,10,10) with logit 1.5 survives (levels do not suppress each other). Sorted by logit.
    cases.append(Case("select_proposals", "spec_levels", "d2-spec §2.9: clip, drop empty, NMS per level",
                      [("proposals", [f32([[[0, 0, 10, 10], [0, 0, 10, 9]]]),
                                      f32([[[0, 0, 10, 10], [-5, -5, -1, -1]]])]),
                       ("logits", [f32([[2.0, 1.0]]), f32([[1.5, 3.0]])]), ("image_sizes", [[20, 20]])],
                      {"nms_thresh": 0.7, "pre_nms_topk": 1000, "post_nms_topk": 1000, "min_box_size": 0.0},
                      expected=[(f64([[0, 0, 10, 10], [0, 0, 10, 10]]), f64([2.0, 1.5]))]))

    # fast_rcnn_inference (d2-spec §2.13), one 20 x 20 image, K = 2 (columns c0, c1, background).
    # Pairs above 0.05: (roi 0, c0) 0.6, (roi 0, c1) 0.3, (roi 1, c0) 0.5; (roi 1, c1) 0.04 is not.
    # Class 0: (1,0,11,10) has IoU 90 / 110 > 0.5 with (0,0,10,10) and is suppressed. Roi 0 yields two classes.
    cases.append(Case("fast_rcnn_inference", "spec_values", "d2-spec §2.13: threshold, per-class NMS, sorted",
                      [("boxes", [f32([[0, 0, 10, 10, 0, 0, 10, 10], [1, 0, 11, 10, 50, 50, 60, 60]])]),
                       ("scores", [f32([[0.6, 0.3, 0.1], [0.5, 0.04, 0.46]])]), ("image_sizes", [[20, 20]])],
                      {"score_thresh": 0.05, "nms_thresh": 0.5, "topk_per_image": 100},
                      expected=[(f64([[0, 0, 10, 10], [0, 0, 10, 10]]), f64([0.6, 0.3]), i64([0, 1]),
                                 i64([0, 0]))]))
    # detector_postprocess: input (10, 20) -> output (20, 40) doubles every coordinate, then clips to x <= 40,
    # y <= 20; (20,0,25,5) -> (40,0,50,10) -> (40,0,40,10) has width 0 and is not kept.
    cases.append(Case("detector_postprocess", "spec_values", "d2-spec §2.13 item 5: rescale, clip, keep w, h > 0",
                      [("boxes", f32([[1, 1, 5, 5], [15, 8, 25, 12], [20, 0, 25, 5]])), ("input_size", [10, 20]),
                       ("output_size", [20, 40])],
                      expected=(f64([[2, 2, 10, 10], [30, 16, 40, 20], [40, 0, 40, 10]]),
                                np.array([True, True, False]))))
    return cases
