"""COCO detection evaluation: category mapping, results conversion, pycocotools evaluation and the CLI commands.

- ``CategoryMap``: COCO category id <-> contiguous class index 0..K-1, in ascending id order (detectron2's
  ``thing_dataset_id_to_contiguous_id`` for COCO: the i-th smallest id is class i).
- ``detections_to_coco_results``: one image's detections (XYXY boxes, scores, contiguous classes) -> COCO
  result dicts (bbox [x, y, w, h] floats, category ids).
- ``evaluate``: pycocotools' COCOeval (bbox), returning the 12 standard numbers by name (``STAT_NAMES``) and
  the summary text pycocotools prints. Values are in [0, 1]; -1 is pycocotools' "no ground truth in this
  area range". An empty results list, on which pycocotools' loadRes fails, is evaluated against an empty
  detection set: every AP/AR with ground truth is 0, and the result carries a note saying so.
- ``detspec evaluate --annotations A --results R [--json OUT]`` and ``detspec synth OUT_DIR --images N --seed S
  [--size H W]``: ``add_evaluate_parser``/``cmd_evaluate`` and ``add_synth_parser``/``cmd_synth``.
  User errors are ValueError/OSError with one line naming the file (the CLI prints it and exits 2). evaluate's
  --json is refused before any work when it is a directory, its directory is missing, or it is --annotations or
  --results. synth creates OUT_DIR only when its parent exists and refuses an OUT_DIR that is a file. Every file
  written (--json, results, synth's images and annotations.json) is written atomically.

pycocotools is imported inside the functions that need it, so this module imports without it.

Shape legend: D detections of one image.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from detspec.fileio import UserError, atomic_write_json, check_output

STAT_NAMES: tuple[str, ...] = ("AP", "AP50", "AP75", "APs", "APm", "APl",
                               "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
IOU_TYPES: tuple[str, ...] = ("bbox",)
_MAX_LISTED = 5  # unknown ids listed in an error message


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool) and math.isfinite(x)


def load_json(path: str | os.PathLike, what: str = "JSON") -> Any:
    """Read a JSON file; FileNotFoundError / ValueError naming ``what`` and the path."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{what} file {p} is a directory, not a JSON file")
    if not p.is_file():
        raise FileNotFoundError(f"{what} file not found: {p}")
    try:
        with open(p, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what} file {p} is not valid JSON: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{what} file {p} is not UTF-8 text: {exc}") from None
    except RecursionError:
        raise ValueError(f"{what} file {p} nests its JSON too deeply to read") from None


@contextlib.contextmanager
def naming_write_errors(path: str | os.PathLike) -> Iterator[None]:
    """Re-raise an OSError met while writing ``path`` as one line that names ``path`` (an fsync or rename error
    names no file, a mkstemp error names the temporary file)."""
    try:
        yield
    except OSError as exc:
        new = OSError(f"cannot write {path}: {exc.strerror or exc}")
        new.errno = exc.errno
        raise new from None


# ----------------------------------------------------------------------------------------------- categories


class CategoryMap:
    """COCO category ids <-> contiguous indices 0..K-1, index i being the i-th smallest id."""

    def __init__(self, category_ids: Iterable[int], names: Mapping[int, str] | None = None) -> None:
        ids = list(category_ids)
        if not ids:
            raise ValueError("category_ids must not be empty")
        bad = [c for c in ids if not _is_int(c)]
        if bad:
            raise TypeError(f"category_ids must be ints, got {bad[:_MAX_LISTED]!r}")
        if len(set(ids)) != len(ids):
            dups = sorted({c for c in ids if ids.count(c) > 1})
            raise ValueError(f"category_ids must be unique, got duplicates {dups[:_MAX_LISTED]}")
        self.ids: tuple[int, ...] = tuple(sorted(int(c) for c in ids))
        self._index = {c: i for i, c in enumerate(self.ids)}
        names = dict(names or {})
        self.names: tuple[str, ...] = tuple(str(names.get(c, c)) for c in self.ids)

    @classmethod
    def from_coco(cls, categories: Sequence[Mapping[str, Any]]) -> CategoryMap:
        """From a COCO ``categories`` list of {"id": ..., "name": ...}."""
        if not isinstance(categories, (list, tuple)) or not all(isinstance(c, Mapping) and "id" in c
                                                                for c in categories):
            raise ValueError("categories must be a list of dicts with an 'id' (and a 'name')")
        return cls([c["id"] for c in categories], {c["id"]: c.get("name", str(c["id"])) for c in categories})

    @classmethod
    def from_annotations(cls, path: str | os.PathLike) -> CategoryMap:
        data = load_json(path, "annotations")
        if not isinstance(data, dict) or "categories" not in data:
            raise ValueError(f"{path}: expected a COCO dict with 'categories'")
        return cls.from_coco(data["categories"])

    @property
    def num_classes(self) -> int:
        return len(self.ids)

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f"CategoryMap(ids={list(self.ids)})"

    def to_contiguous(self, category_ids):
        """A COCO id -> its index (int); a sequence/array of ids -> int64 array. Unknown ids: ValueError."""
        if _is_int(category_ids):
            if int(category_ids) not in self._index:
                raise ValueError(f"unknown category id {category_ids}; known ids: {list(self.ids)}")
            return self._index[int(category_ids)]
        arr = np.asarray(category_ids).reshape(-1)
        if arr.size and arr.dtype.kind not in "iu":
            raise TypeError(f"category_ids must be integers, got dtype {arr.dtype}")
        unknown = sorted({int(c) for c in arr.tolist()} - set(self._index))
        if unknown:
            raise ValueError(f"unknown category ids {unknown[:_MAX_LISTED]}; known ids: {list(self.ids)}")
        return np.asarray([self._index[int(c)] for c in arr.tolist()], dtype=np.int64)

    def to_coco_id(self, indices):
        """A contiguous index -> its COCO id (int); a sequence/array -> int64 array. Out of range: ValueError."""
        k = len(self.ids)
        if _is_int(indices):
            if not 0 <= int(indices) < k:
                raise ValueError(f"class index {indices} out of range [0, {k})")
            return self.ids[int(indices)]
        arr = np.asarray(indices).reshape(-1)
        if arr.size and arr.dtype.kind not in "iu":
            raise TypeError(f"class indices must be integers, got dtype {arr.dtype}")
        bad = arr[(arr < 0) | (arr >= k)]
        if bad.size:
            raise ValueError(f"class indices {sorted(set(bad.tolist()))[:_MAX_LISTED]} out of range [0, {k})")
        return np.asarray(self.ids, dtype=np.int64)[arr.astype(np.int64)]


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


# ----------------------------------------------------------------------------------------------- evaluation


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


def _check_ground_truth(data: Any, where: str) -> None:
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


def _check_results(results: list, image_ids: set, category_ids: set, where: str) -> None:
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
    gt_data = load_json(annotations_path, "annotations")
    _check_ground_truth(gt_data, str(annotations_path))
    if isinstance(results, (str, os.PathLike)):
        where = str(results)
        dets = load_json(results, "results")
        if not isinstance(dets, list):
            raise ValueError(f"{where}: expected a JSON list of result dicts, got {type(dets).__name__}")
    elif isinstance(results, (list, tuple)):
        where, dets = "results", list(results)
    else:
        raise TypeError(f"results must be a path or a list of dicts, got {type(results).__name__}")
    image_ids = {img["id"] for img in gt_data["images"]}
    category_ids = {c["id"] for c in gt_data["categories"]}
    _check_results(dets, image_ids, category_ids, where)

    from pycocotools.coco import COCO
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


# ----------------------------------------------------------------------------------------------- CLI


def add_evaluate_parser(subparsers) -> argparse.ArgumentParser:
    """``detspec evaluate --annotations A --results R [--json OUT]``."""
    p = subparsers.add_parser("evaluate", help="COCO box evaluation (pycocotools) of a results JSON",
                              description="Print pycocotools' 12-number COCO summary (AP, AP50, AP75, APs, APm, "
                                          "APl, AR1, AR10, AR100, ARs, ARm, ARl) of detection results.")
    p.add_argument("--annotations", required=True, metavar="A", help="COCO ground-truth annotations JSON")
    p.add_argument("--results", required=True, metavar="R",
                   help="COCO results JSON: a list of {image_id, category_id, bbox [x, y, w, h], score}")
    p.add_argument("--json", metavar="OUT", help="also write the 12 numbers, notes and summary as JSON")
    p.set_defaults(func=cmd_evaluate)
    return p


def cmd_evaluate(args: argparse.Namespace) -> int:
    if args.json:  # refused before any work: a missing directory, a directory, or one of the two inputs
        check_output(args.json, [args.annotations, args.results], what="--json output")
    stats = evaluate(args.annotations, args.results)
    print(f"detspec evaluate: {stats['num_detections']} detections on {stats['num_images']} images "
          f"({args.results} against {args.annotations})")
    for note in stats["notes"]:
        print(f"note: {note}")
    print(stats["summary"], end="")
    if args.json:
        with naming_write_errors(args.json):
            atomic_write_json(args.json, stats, indent=1)
        print(f"wrote {args.json}")
    return 0


def add_synth_parser(subparsers) -> argparse.ArgumentParser:
    """``detspec synth OUT_DIR --images N --seed S [--size H W]``."""
    from detspec.data import synthetic as S

    p = subparsers.add_parser("synth", help="write a procedural synthetic COCO-format shapes dataset",
                              description="Write OUT_DIR/images/*.png and OUT_DIR/annotations.json: coloured "
                                          "shapes (8 classes, non-contiguous category ids) on textured "
                                          "backgrounds. Same arguments, same bytes.")
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--images", type=int, default=16, metavar="N", help="number of images (default 16)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default 0)")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=list(S.DEFAULT_IMAGE_SIZE),
                   help=f"image height and width (default {S.DEFAULT_IMAGE_SIZE[0]} {S.DEFAULT_IMAGE_SIZE[1]})")
    p.add_argument("--min-objects", type=int, default=1, help="fewest shapes drawn per image (default 1)")
    p.add_argument("--max-objects", type=int, default=8, help="most shapes drawn per image (default 8)")
    p.set_defaults(func=cmd_synth)
    return p


def cmd_synth(args: argparse.Namespace) -> int:
    from detspec.data import synthetic as S

    out = Path(args.out_dir)
    if str(args.out_dir) == "":
        raise UserError("OUT_DIR is empty; give a directory")
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file, not a directory")
    if not out.exists() and not out.parent.is_dir():
        raise UserError(f"{out}: its parent directory {out.parent} does not exist (only the last component of "
                        "OUT_DIR is created)")
    if (out / "images").exists() and not (out / "images").is_dir():
        raise UserError(f"{out / 'images'} is a file; synth writes its images into that directory")
    if out.is_dir():
        check_output(out / "annotations.json", what="annotations file")

    print(f"detspec synth: {args.images} images of {args.size[0]}x{args.size[1]}, seed {args.seed} -> "
          f"{args.out_dir}", flush=True)
    path = S.make_synthetic_coco(args.out_dir, num_images=args.images, image_size=tuple(args.size), seed=args.seed,
                                 min_objects=args.min_objects, max_objects=args.max_objects,
                                 progress=S.progress_printer("  image "))
    data = json.loads(path.read_text())
    print(f"wrote {path}: {len(data['images'])} images, {len(data['annotations'])} annotations, "
          f"{len(data['categories'])} categories")
    return 0
