"""COCO detection files: ground-truth annotations and results, read, validated and written.

- ``detections_to_coco_results``: one image's detections (XYXY boxes, scores, contiguous classes) -> COCO
  result dicts (bbox [x, y, w, h] floats, category ids); ``write_results`` writes a results list atomically.
- ``load_ground_truth``: a COCO annotations file, validated (``check_ground_truth``): unique int ids for
  images, categories and annotations, known image / category ids, 4 finite bbox numbers with w, h >= 0, area a
  number >= 0, iscrowd 0 or 1 (a missing iscrowd counts as 0). pycocotools checks none of this and would give a
  wrong AP for duplicate ids.
- ``load_results``: a COCO results file (or list), validated against the ground truth's ids
  (``check_results``).

Bad files and entries are a ValueError (FileNotFoundError for a missing file) with one line naming the file
and the entry; arguments of the wrong type a TypeError.

Shape legend: D detections of one image.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from detspec.io.categories import CategoryMap
from detspec.io.fileio import atomic_write_json, load_json, naming_write_errors

_MAX_LISTED = 5  # unknown ids listed in an error message


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool) and math.isfinite(x)


# ----------------------------------------------------------------------------------------------- results


def _to_numpy(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor, without importing torch
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x)
    except Exception as exc:  # ragged lists and the like
        raise TypeError(f"{name} must be array-like, got {type(x).__name__}: {exc}") from None


def detections_to_coco_results(image_id: int, boxes_xyxy, scores, classes,
                               category_map: CategoryMap) -> list[dict]:
    """One image's detections -> COCO result dicts.

    boxes_xyxy [D, 4] (x0, y0, x1, y1), scores [D], classes [D] contiguous indices (tensors, arrays or lists).
    Each result: {"image_id", "category_id" (COCO id via ``category_map``), "bbox": [x0, y0, x1 - x0, y1 - y0]
    (Python floats), "score" (float)}, in input order.
    """
    if not _is_int(image_id):
        raise TypeError(f"image_id must be an int, got {type(image_id).__name__}")
    if not isinstance(category_map, CategoryMap):
        raise TypeError(f"category_map must be a CategoryMap, got {type(category_map).__name__}")
    boxes = _to_numpy(boxes_xyxy, "boxes_xyxy")
    s = _to_numpy(scores, "scores")
    c = _to_numpy(classes, "classes")
    if boxes.size == 0 and s.size == 0 and c.size == 0:
        return []
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes_xyxy must have shape [D, 4], got {list(boxes.shape)}")
    d = boxes.shape[0]
    if s.shape != (d,):
        raise ValueError(f"scores must have shape [{d}] to match boxes_xyxy, got {list(s.shape)}")
    if c.shape != (d,):
        raise ValueError(f"classes must have shape [{d}] to match boxes_xyxy, got {list(c.shape)}")
    if boxes.dtype.kind not in "fiu" or s.dtype.kind not in "fiu":
        raise TypeError(f"boxes_xyxy and scores must be numeric, got {boxes.dtype} and {s.dtype}")
    boxes = boxes.astype(np.float64)
    s = s.astype(np.float64)
    if not np.isfinite(boxes).all():
        raise ValueError("boxes_xyxy must be finite (found NaN or inf)")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite (found NaN or inf)")
    if (boxes[:, 2] < boxes[:, 0]).any() or (boxes[:, 3] < boxes[:, 1]).any():
        raise ValueError("boxes_xyxy must have x1 >= x0 and y1 >= y0")
    cat_ids = category_map.to_coco_id(c)
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    return [{"image_id": int(image_id), "category_id": int(cat), "bbox": [float(v) for v in box],
             "score": float(score)} for box, score, cat in zip(xywh, s, cat_ids)]


def write_results(path: str | os.PathLike, results: Sequence[Mapping[str, Any]]) -> Path:
    """Write COCO results (a list of dicts) as JSON, atomically (creating missing parent directories); returns
    the path."""
    if not isinstance(results, (list, tuple)):
        raise TypeError(f"results must be a list of dicts, got {type(results).__name__}")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with naming_write_errors(p):
        atomic_write_json(p, list(results))
    return p


# ----------------------------------------------------------------------------------------------- validation


def _short(x: Any) -> str:
    text = repr(x)
    return text if len(text) <= 80 else text[:77] + "..."


def _check_bbox(bbox: Any, what: str) -> None:
    if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
        raise ValueError(f"{what} bbox must be 4 finite numbers [x, y, w, h], got {_short(bbox)}")
    if bbox[2] < 0 or bbox[3] < 0:
        raise ValueError(f"{what} bbox has a negative width or height: {_short(bbox)}")


def _unique_int_ids(items: list, key: str, label: str, where: str) -> set[int]:
    """The ``key`` of each dict in ``items`` (the ``label`` list): ints, each once; ValueError naming the first
    offender otherwise."""
    first: dict[int, int] = {}
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ValueError(f"{where}: {label}[{i}] must be a dict, got {_short(item)}")
        if key not in item:
            raise ValueError(f"{where}: {label}[{i}] lacks {key!r}: {_short(item)}")
        value = item[key]
        if not _is_int(value):
            raise ValueError(f"{where}: {label}[{i}] has {key} {_short(value)}; it must be an int")
        if value in first:
            noun = {"images": "image", "categories": "category", "annotations": "annotation"}.get(label, label)
            raise ValueError(f"{where}: {noun} id {value} appears more than once ({label}[{first[value]}] and "
                             f"{label}[{i}]); ids must be unique (pycocotools would silently mix them up)")
        first[value] = i
    return set(first)


def check_ground_truth(data: Any, where: str) -> None:
    """Validate a COCO ground-truth dict (ValueError naming ``where`` and the offending entry); fills in a
    missing annotation ``iscrowd`` as 0, as COCO's readers treat it."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a COCO dict, got {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{where}: expected a COCO dict with an {key!r} list")
    image_ids = _unique_int_ids(data["images"], "id", "images", where)
    category_ids = _unique_int_ids(data["categories"], "id", "categories", where)
    _unique_int_ids(data["annotations"], "id", "annotations", where)
    for i, ann in enumerate(data["annotations"]):
        what = f"{where}: annotation {ann['id']} (annotations[{i}])"
        missing = [k for k in ("image_id", "category_id", "bbox", "area") if k not in ann]
        if missing:
            raise ValueError(f"{what} lacks {missing}")
        for key, known in (("image_id", image_ids), ("category_id", category_ids)):
            value = ann[key]
            if not _is_int(value):
                raise ValueError(f"{what} has {key} {_short(value)}; it must be an int")
            if value not in known:
                noun = key.split("_")[0]
                raise ValueError(f"{what} refers to unknown {noun} id {value}")
        _check_bbox(ann["bbox"], what)
        if not _is_number(ann["area"]) or ann["area"] < 0:
            raise ValueError(f"{what} area must be a finite number >= 0, got {_short(ann['area'])}")
        crowd = ann.setdefault("iscrowd", 0)
        if not (_is_int(crowd) and crowd in (0, 1)):
            raise ValueError(f"{what} iscrowd must be 0 or 1, got {_short(crowd)}")


def check_results(results: list, image_ids: set, category_ids: set, where: str) -> None:
    bad_img, bad_cat = set(), set()
    for i, r in enumerate(results):
        if not isinstance(r, dict):
            raise ValueError(f"{where}: result {i} must be a dict, got {type(r).__name__}")
        missing = [k for k in ("image_id", "category_id", "bbox", "score") if k not in r]
        if missing:
            raise ValueError(f"{where}: result {i} lacks {missing}")
        for key in ("image_id", "category_id"):
            if not _is_int(r[key]):
                raise ValueError(f"{where}: result {i} has {key} {_short(r[key])}; it must be an int")
        _check_bbox(r["bbox"], f"{where}: result {i}")
        if not _is_number(r["score"]):
            raise ValueError(f"{where}: result {i} score must be a finite number, got {_short(r['score'])}")
        if r["image_id"] not in image_ids:
            bad_img.add(r["image_id"])
        if r["category_id"] not in category_ids:
            bad_cat.add(r["category_id"])
    if bad_img:
        listed = sorted(bad_img)[:_MAX_LISTED]
        raise ValueError(f"{where}: results refer to {len(bad_img)} image id(s) not in the annotations: {listed}")
    if bad_cat:
        listed = sorted(bad_cat)[:_MAX_LISTED]
        raise ValueError(f"{where}: results refer to {len(bad_cat)} category id(s) not in the annotations: "
                         f"{listed}; known ids: {sorted(category_ids)}")


def load_ground_truth(path: str | os.PathLike) -> dict[str, Any]:
    """A COCO annotations file, read and validated (``check_ground_truth``)."""
    data = load_json(path, "annotations")
    check_ground_truth(data, str(path))
    return data


def load_results(results: str | os.PathLike | Sequence[Mapping[str, Any]],
                 ground_truth: Mapping[str, Any]) -> list[dict]:
    """COCO results (a results JSON path or a list of result dicts), validated against the image and category
    ids of ``ground_truth`` (a dict ``check_ground_truth`` accepted)."""
    if isinstance(results, (str, os.PathLike)):
        where = str(results)
        dets = load_json(results, "results")
        if not isinstance(dets, list):
            raise ValueError(f"{where}: expected a JSON list of result dicts, got {type(dets).__name__}")
    elif isinstance(results, (list, tuple)):
        where, dets = "results", list(results)
    else:
        raise TypeError(f"results must be a path or a list of dicts, got {type(results).__name__}")
    image_ids = {img["id"] for img in ground_truth["images"]}
    category_ids = {c["id"] for c in ground_truth["categories"]}
    check_results(dets, image_ids, category_ids, where)
    return dets
