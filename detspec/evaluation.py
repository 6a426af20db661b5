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

from detspec.io.coco import load_ground_truth, load_results

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
