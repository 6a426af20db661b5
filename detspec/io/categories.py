"""COCO categories: the 80 COCO 2017 detection categories, and category id <-> contiguous class index.

- ``COCO_CATEGORIES``: (category id, name), in ascending id order. detectron2's contiguous class index c is the
  c-th entry (d2-spec §5.1 "Class order"). torchvision's detection models use the category id itself as the
  label (91 slots, background 0, unused ids kept), so after conversion detspec class c of a torchvision model
  is category id c + 1 (``category_table``).
- ``CategoryMap``: COCO category id <-> contiguous class index 0..K-1, in ascending id order (detectron2's
  ``thing_dataset_id_to_contiguous_id`` for COCO: the i-th smallest id is class i).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from detspec.io.fileio import load_json

_MAX_LISTED = 5  # unknown ids listed in an error message


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


COCO_CATEGORIES: tuple[tuple[int, str], ...] = (
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"), (6, "bus"), (7, "train"),
    (8, "truck"), (9, "boat"), (10, "traffic light"), (11, "fire hydrant"), (13, "stop sign"),
    (14, "parking meter"), (15, "bench"), (16, "bird"), (17, "cat"), (18, "dog"), (19, "horse"), (20, "sheep"),
    (21, "cow"), (22, "elephant"), (23, "bear"), (24, "zebra"), (25, "giraffe"), (27, "backpack"),
    (28, "umbrella"), (31, "handbag"), (32, "tie"), (33, "suitcase"), (34, "frisbee"), (35, "skis"),
    (36, "snowboard"), (37, "sports ball"), (38, "kite"), (39, "baseball bat"), (40, "baseball glove"),
    (41, "skateboard"), (42, "surfboard"), (43, "tennis racket"), (44, "bottle"), (46, "wine glass"), (47, "cup"),
    (48, "fork"), (49, "knife"), (50, "spoon"), (51, "bowl"), (52, "banana"), (53, "apple"), (54, "sandwich"),
    (55, "orange"), (56, "broccoli"), (57, "carrot"), (58, "hot dog"), (59, "pizza"), (60, "donut"), (61, "cake"),
    (62, "chair"), (63, "couch"), (64, "potted plant"), (65, "bed"), (67, "dining table"), (70, "toilet"),
    (72, "tv"), (73, "laptop"), (74, "mouse"), (75, "remote"), (76, "keyboard"), (77, "cell phone"),
    (78, "microwave"), (79, "oven"), (80, "toaster"), (81, "sink"), (82, "refrigerator"), (84, "book"),
    (85, "clock"), (86, "vase"), (87, "scissors"), (88, "teddy bear"), (89, "hair drier"), (90, "toothbrush"),
)


def category_table(num_classes: int, source: str) -> list[tuple[int, str]]:
    """detspec class index -> (COCO category id, name) for a model with num_classes foreground classes.

    source "detectron2": 80 contiguous classes in ascending id order. source "torchvision": 90 classes, class c
    = category id c + 1 (ids without a category are named "unused-<id>"). Other class counts get ids 1..K and
    names "class-<c>".
    """
    names = dict(COCO_CATEGORIES)
    if source == "detectron2" and num_classes == len(COCO_CATEGORIES):
        return list(COCO_CATEGORIES)
    if source == "torchvision" and num_classes == 90:
        return [(c + 1, names.get(c + 1, f"unused-{c + 1}")) for c in range(num_classes)]
    return [(c + 1, f"class-{c}") for c in range(num_classes)]


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
