"""Golden-vector cases with seeded random inputs; their expected outputs come from the reference implementation
run in float64 (manifest ``source: "oracle"``, computed by detspec.vectors.exporter)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from detspec.vectors.case import Case, f32, i64, jitter, random_boxes
from detspec.vectors.format import INPUT_FLOAT


def seeded_cases(rng_for: Callable[[str], np.random.Generator]) -> list[Case]:
    """Seeded random inputs; the expected outputs come from the reference run in float64."""
    cases: list[Case] = []

    def add(component: str, name: str, description: str, args: list, kwargs: dict | None = None,
            **extra: Any) -> None:
        cases.append(Case(component, name, description, args, kwargs or {}, **extra))

    rng = rng_for("pairwise_iou/random")
    add("pairwise_iou", "random", "random overlapping boxes",
        [("boxes1", random_boxes(rng, 7, 40)), ("boxes2", random_boxes(rng, 5, 40))])
    add("pairwise_iou", "empty", "N = 0", [("boxes1", np.zeros((0, 4), INPUT_FLOAT)), ("boxes2", random_boxes(rng, 3))])
    rng = rng_for("box_area/random")
    add("box_area", "random", "random boxes", [("boxes", random_boxes(rng, 6))])
    rng = rng_for("clip_boxes/random")
    add("clip_boxes", "random", "boxes crossing every border of an 80 x 100 image",
        [("boxes", random_boxes(rng, 8, extent=120.0) - INPUT_FLOAT(20)), ("image_size", [80, 100])])
    rng = rng_for("nonempty/random")
    b = random_boxes(rng, 8, min_size=0.0, max_size=3.0)
    b[::3, 2] = b[::3, 0]  # some zero widths
    add("nonempty", "random", "small boxes, some of zero width, threshold 0.5", [("boxes", b)], {"threshold": 0.5})

    rng = rng_for("encode_boxes/random")
    src = random_boxes(rng, 8)
    add("encode_boxes", "random", "targets near the sources, weights (10, 10, 5, 5)",
        [("src", src), ("target", jitter(rng, src, 0.4)), ("weights", [10.0, 10.0, 5.0, 5.0])])
    rng = rng_for("decode_boxes/random")
    deltas = rng.normal(0.0, 2.0, size=(6, 12))
    deltas[0, 2::4] = 60.0  # dw / 5 = 12 > the clamp
    add("decode_boxes", "random", "K = 3, weights (10, 10, 5, 5), some dw above the clamp",
        [("deltas", f32(deltas)), ("boxes", random_boxes(rng, 6)), ("weights", [10.0, 10.0, 5.0, 5.0]),
         ("scale_clamp", math.log(1000.0 / 16))])

    add("cell_anchors", "odd_sizes", "sizes and ratios off the config",
        [("sizes", [16.0, 40.0]), ("aspect_ratios", [0.3, 1.7])], oracle_kwargs={"dtype": "float64"})
    cells = [f32([[-s / 2 * f, -s / 2 / f, s / 2 * f, s / 2 / f] for f in (1.4142135, 1.0, 0.70710677)])
             for s in (32.0, 64.0, 128.0)]
    add("grid_anchors", "three_levels", "three levels of a 20 x 28 input, offset 0",
        [("feature_sizes", [[5, 7], [3, 4], [2, 2]]), ("strides", [4, 8, 16]), ("cell_anchors", cells)],
        {"offset": 0.0})

    rng = rng_for("match/random_rpn")
    add("match", "random_rpn", "RPN thresholds, low-quality matches",
        [("quality", f32(rng.uniform(0.0, 0.9, size=(4, 15)))), ("thresholds", [0.3, 0.7]), ("labels", [0, -1, 1]),
         ("allow_low_quality_matches", True)])
    rng = rng_for("match/random_roi")
    add("match", "random_roi", "ROI thresholds, no low-quality matches",
        [("quality", f32(rng.uniform(0.0, 1.0, size=(3, 12)))), ("thresholds", [0.5]), ("labels", [0, 1]),
         ("allow_low_quality_matches", False)])
    rng = rng_for("iou_match/random")
    gt = random_boxes(rng, 3, 60, 10, 40)
    anchors = np.concatenate([jitter(rng, np.repeat(gt, 4, axis=0), 0.3), random_boxes(rng, 8, 60, 10, 40)])
    add("iou_match", "random_rpn", "anchors around 3 GT boxes, RPN thresholds, low-quality matches",
        [("gt_boxes", gt), ("boxes", anchors), ("thresholds", [0.3, 0.7]), ("labels", [0, -1, 1]),
         ("allow_low_quality_matches", True)])

    rng = rng_for("nms/random")
    add("nms", "random", "clustered boxes, threshold 0.5",
        [("boxes", jitter(rng, np.repeat(random_boxes(rng, 5, 80, 10, 30), 4, axis=0), 0.25)),
         ("scores", f32(rng.permutation(20) / 20 + 0.01)), ("iou_threshold", 0.5)])
    add("nms", "empty", "no boxes", [("boxes", np.zeros((0, 4), INPUT_FLOAT)), ("scores", np.zeros(0, INPUT_FLOAT)),
                                     ("iou_threshold", 0.5)])
    rng = rng_for("batched_nms/random")
    add("batched_nms", "random", "clustered boxes in 3 groups, threshold 0.7",
        [("boxes", jitter(rng, np.repeat(random_boxes(rng, 4, 80, 10, 30), 5, axis=0), 0.15)),
         ("scores", f32(rng.permutation(20) / 20 + 0.01)), ("groups", i64(rng.integers(0, 3, size=20))),
         ("iou_threshold", 0.7)])

    rng = rng_for("assign_levels/random")
    sides = np.exp(rng.uniform(math.log(8), math.log(900), size=(12, 2)))
    level_boxes = f32(np.concatenate([np.zeros((12, 2)), sides], axis=1))
    add("assign_levels", "random", "sizes 8..900", [("boxes", level_boxes)])
    add("assign_levels", "random_torchvision", "torchvision's eps outside the log",
        [("boxes", level_boxes)], {"eps": 1e-6, "eps_in_log": False})

    rng = rng_for("roi_align/random")
    feats = f32(rng.normal(size=(2, 3, 10, 12)))
    rois = np.concatenate([rng.integers(0, 2, size=(6, 1)), random_boxes(rng, 6, 20.0, 0.5, 12.0)], axis=1)
    rois[0, 1:] = [16, 12, 26, 18]  # partly outside the 10 x 12 map at scale 0.5
    for aligned, ratio in ((True, 0), (False, 2)):
        add("roi_align", f"random_aligned_{str(aligned).lower()}_ratio{ratio}",
            f"2 images, 3 channels, scale 0.5, output 3 x 4, sampling_ratio {ratio}",
            [("features", feats), ("rois", f32(rois)), ("output_size", [3, 4]), ("spatial_scale", 0.5),
             ("sampling_ratio", ratio), ("aligned", aligned)])
    rng = rng_for("multilevel_roi_align/random")
    maps = [f32(rng.normal(size=(2, 2, 16 // 2 ** i, 16 // 2 ** i))) for i in range(4)]
    sides = np.exp(rng.uniform(math.log(10), math.log(500), size=(7, 2)))
    xy = rng.uniform(0, 40, size=(7, 2))
    rois = np.concatenate([rng.integers(0, 2, size=(7, 1)), xy, xy + sides], axis=1)
    add("multilevel_roi_align", "random", "4 levels of a 64 x 64 input, ROIs of every level, output 3",
        [("features", maps), ("rois", f32(rois))],
        {"output_size": 3, "strides": [4, 8, 16, 32], "sampling_ratio": 0, "aligned": True})

    rng = rng_for("roi_losses/random")
    r, k = 10, 3
    props = random_boxes(rng, r)
    add("roi_losses", "random", "R = 10, K = 3, 6 foreground rows",
        [("class_logits", f32(rng.normal(size=(r, k + 1)))), ("box_deltas", f32(rng.normal(size=(r, 4 * k)))),
         ("proposals", props), ("gt_classes", i64(np.r_[rng.integers(0, k, size=6), np.full(4, k)])),
         ("gt_boxes", jitter(rng, props, 0.3))], {"weights": [10.0, 10.0, 5.0, 5.0], "smooth_l1_beta": 0.0})

    rng = rng_for("fast_rcnn_inference/random")
    all_boxes, all_scores = [], []
    for rows in (8, 5):
        base = random_boxes(rng, 3, 50, 10, 30)
        per_class = [jitter(rng, base[rng.integers(0, 3, size=rows)], 0.2) for _ in range(3)]  # K = 3
        all_boxes.append(np.concatenate(per_class, axis=1) - INPUT_FLOAT(5))  # some cross the border
        logits = rng.normal(0.0, 1.5, size=(rows, 4))
        all_scores.append(f32(np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)))
    all_boxes[0][2, 1] = np.inf  # a non-finite row is dropped
    add("fast_rcnn_inference", "random", "2 images (8 and 5 ROIs), K = 3, one non-finite row",
        [("boxes", all_boxes), ("scores", all_scores), ("image_sizes", [[60, 70], [50, 64]])],
        {"score_thresh": 0.05, "nms_thresh": 0.5, "topk_per_image": 6})
    rng = rng_for("detector_postprocess/random")
    add("detector_postprocess", "random", "800 x 1067 -> 480 x 640, boxes crossing the border",
        [("boxes", random_boxes(rng, 6, 1100, 0, 300) - INPUT_FLOAT(20)), ("input_size", [800, 1067]),
         ("output_size", [480, 640])])

    rng = rng_for("select_proposals/random")
    props, logits = [], []
    for count in (30, 15, 6):  # three levels, two images
        props.append(np.stack([jitter(rng, np.repeat(random_boxes(rng, count // 3, 60, 4, 30), 3, axis=0), 0.3)
                               - INPUT_FLOAT(5) for _ in range(2)]))
        logits.append(f32(rng.normal(size=(2, count))))
    add("select_proposals", "random", "3 levels, 2 images, pre-NMS top 12, post-NMS top 20",
        [("proposals", props), ("logits", logits), ("image_sizes", [[64, 64], [56, 72]])],
        {"nms_thresh": 0.7, "pre_nms_topk": 12, "post_nms_topk": 20, "min_box_size": 0.0})
    rng = rng_for("rpn_losses/random")
    anchors = random_boxes(rng, 40)
    add("rpn_losses", "random", "2 images, 40 anchors, labels in {-1, 0, 1}, batch_size_per_image 16",
        [("anchors", anchors), ("pred_logits", f32(rng.normal(size=(2, 40)))),
         ("pred_deltas", f32(rng.normal(0.0, 0.5, size=(2, 40, 4)))),
         ("gt_labels", rng.integers(-1, 2, size=(2, 40)).astype(np.int8)),
         ("gt_boxes", np.stack([jitter(rng, anchors, 0.3) for _ in range(2)]))], {"batch_size_per_image": 16})
    return cases
