"""COCO box evaluation with pycocotools' COCOeval.

``evaluate`` returns the 12 standard numbers by name (``STAT_NAMES``) and the summary text pycocotools prints.
Values are in [0, 1]; -1 is pycocotools' "no ground truth in this area range". An empty results list, on which
pycocotools' loadRes fails, is evaluated against an empty detection set: every AP/AR with ground truth is 0,
and the result carries a note saying so. The files are read and validated by :mod:`detspec.io.coco` first.

pycocotools is imported inside ``evaluate``, so this module imports without it.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from detspec.io.coco import load_ground_truth, load_results
from reference.boxes import pairwise_iou

STAT_NAMES: tuple[str, ...] = ("AP", "AP50", "AP75", "APs", "APm", "APl",
                               "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
IOU_TYPES: tuple[str, ...] = ("bbox",)


def evaluate(annotations_path: str | os.PathLike, results: str | os.PathLike | Sequence[Mapping[str, Any]],
             iou_type: str = "bbox") -> dict[str, Any]:
    """COCO evaluation of ``results`` (a results JSON path or a list of result dicts) against the annotations.

    Returns {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl" (floats
    in [0, 1], -1 where pycocotools finds no ground truth), "summary" (pycocotools' printed summary),
    "notes" (list of str), "num_images", "num_detections"}.

    Errors: FileNotFoundError for a missing file; ValueError (naming the file and the entry) for bad JSON, a
    malformed image, category, annotation or result (missing keys, non-int ids, a bbox that is not four finite
    numbers with w, h >= 0, an area that is not a number >= 0, iscrowd not 0/1), duplicate image, category or
    annotation ids (pycocotools would silently give a wrong AP), or results that refer to image or category ids
    the annotations lack. An annotation without ``iscrowd`` counts as iscrowd 0.
    """
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be one of {IOU_TYPES} (detspec evaluates boxes), got {iou_type!r}")
    gt_data = load_ground_truth(annotations_path)
    dets = load_results(results, gt_data)

    from pycocotools.coco import COCO  # optional at import time: only evaluation needs it
    from pycocotools.cocoeval import COCOeval

    notes = []
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        gt = COCO()
        gt.dataset = gt_data
        gt.createIndex()
        if dets:
            dt = gt.loadRes(copy.deepcopy(dets))  # loadRes writes id/area/iscrowd into the dicts it gets
        else:  # loadRes indexes anns[0]: evaluate against an empty detection set instead
            notes.append("no detections: the results list is empty, so every AP and AR with ground truth is 0 "
                         "(-1 where an area range has no ground truth)")
            dt = COCO()
            dt.dataset = {"images": list(gt_data["images"]), "categories": copy.deepcopy(gt_data["categories"]),
                          "annotations": []}
            dt.createIndex()
        ev = COCOeval(gt, dt, iou_type)
        ev.evaluate()
        ev.accumulate()
    if not gt_data["annotations"]:
        notes.append("the annotations have no objects: every AP and AR is -1")
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        ev.summarize()
    out: dict[str, Any] = {name: float(v) for name, v in zip(STAT_NAMES, ev.stats)}
    out.update(summary=summary.getvalue(), notes=notes, num_images=len(gt_data["images"]),
               num_detections=len(dets))
    return out


def reproduced_fraction(reference: Mapping[Any, Mapping[str, Any]], other: Mapping[Any, Mapping[str, Any]],
                        iou_thresh: float = 0.9) -> tuple[int, int]:
    """How many of ``reference``'s detections ``other`` reproduces: (reproduced, total).

    Both map image id -> {"boxes": [D, 4] XYXY, "scores": [D], "classes": [D]} (an image missing from ``other``
    reproduces nothing). Per image, reference detections in descending score order each take the unmatched
    ``other`` detection of the same class with the highest IoU, if that IoU >= iou_thresh (the demo's bf16 against
    fp32 figure uses 0.9). Greedy one-to-one matching, as COCOeval's.
    """
    reproduced = total = 0
    for image_id, ref in reference.items():
        boxes, scores, classes = (torch.as_tensor(ref[k]) for k in ("boxes", "scores", "classes"))
        total += int(scores.numel())
        if image_id not in other or scores.numel() == 0:
            continue
        mine = other[image_id]
        o_boxes, o_classes = torch.as_tensor(mine["boxes"]), torch.as_tensor(mine["classes"])
        if o_boxes.numel() == 0:
            continue
        iou = pairwise_iou(boxes.double(), o_boxes.double())  # [D_ref, D_other]
        iou[classes[:, None] != o_classes[None, :]] = -1.0
        taken = torch.zeros(o_boxes.shape[0], dtype=torch.bool)
        for i in torch.argsort(scores, descending=True, stable=True).tolist():
            row = iou[i].masked_fill(taken, -1.0)
            best = int(row.argmax())
            if row[best] >= iou_thresh:
                taken[best] = True
                reproduced += 1
    return reproduced, total
