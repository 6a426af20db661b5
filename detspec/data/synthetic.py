"""A seeded, procedural detection dataset in COCO format: coloured shapes on textured backgrounds.

Why: an end-to-end check of training and COCO evaluation needs labelled images, and a download is not an
option on every machine. The generator itself is numpy only (Pillow writes the PNGs, torch holds the images
``CocoDetectionDataset`` reads back).

What an image holds:

- A textured background, one of: smooth value noise, a linear gradient, stripes (hard or sinusoidal, any
  angle), a (possibly rotated) checkerboard; every background gets mild per-pixel noise.
- ``min_objects``..``max_objects`` flat-coloured shapes, one of the eight classes in ``CATEGORIES``, with
  width and height log-uniform between ``min_size`` (12 px) and ``max_size`` (half the shorter image side),
  aspect ratio between 1:2 and 2:1, placed entirely inside the image.
- Occlusion: shapes are painted in order, later ones over earlier ones. The annotated box is the tight extent
  of the shape's full (amodal) mask, not of its visible part. An object whose visible fraction
  (visible pixels / mask pixels, from per-object masks) falls below ``min_visible`` (``MIN_VISIBLE_FRACTION``
  = 0.3) loses its annotation; its visible fragment stays in the image, like COCO's unlabelled clutter. To keep
  such drops rare, each shape tries up to ``PLACEMENT_TRIES`` positions and takes the first that leaves every
  annotated object at or above the threshold. The topmost shape is always fully visible, so every image has
  at least one annotation.
- Colour: uniform RGB, resampled until it differs (L1 distance >= ``MIN_CONTRAST``) from the mean colour of
  the pixels it covers, so shapes stand out from the background and from the shapes beneath.

Box convention: XYXY in pixel-edge coordinates, no "+1": a shape covering pixel columns x0..x1-1 has box
x-extent [x0, x1]. COCO's bbox is [x0, y0, x1 - x0, y1 - y0]; ``area`` is the box area w*h (no segmentation
is written), so COCO's small/medium/large split follows box size.

Categories have non-contiguous COCO ids (1, 2, 3, 5, 7, 8, 11, 13) to exercise the id <-> contiguous index
mapping; the contiguous index of a class is its rank in ascending id order, as detectron2 maps COCO ids.

Determinism: everything comes from ``numpy.random.Generator`` instances (never the global RNG). Image ``i`` of
seed ``s`` is drawn from ``default_rng([s, i])``, so it is the same whether 5 or 500 images are generated, in
memory (``SyntheticCOCO``) or on disk (``make_synthetic_coco``).

Shape legend: H x W image size, G annotated objects, K classes (8).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from detspec.io.categories import CategoryMap
from detspec.io.fileio import atomic_save, atomic_write, load_json, naming_write_errors
from spec.config import BASE_RCNN_FPN

# (COCO category id, name), ascending id; the contiguous class index is the position in this tuple.
CATEGORIES: tuple[tuple[int, str], ...] = (
    (1, "filled_rectangle"),
    (2, "outlined_rectangle"),
    (3, "filled_ellipse"),
    (5, "outlined_ellipse"),
    (7, "triangle"),
    (8, "plus"),
    (11, "diamond"),
    (13, "x_cross"),
)
CLASS_NAMES: tuple[str, ...] = tuple(name for _, name in CATEGORIES)
CATEGORY_IDS: tuple[int, ...] = tuple(cid for cid, _ in CATEGORIES)

DEFAULT_IMAGE_SIZE: tuple[int, int] = (256, 256)
MIN_SHAPE_SIZE = 12  # px, the smallest shape side
MIN_VISIBLE_FRACTION = 0.3  # annotations of objects less visible than this are dropped
PLACEMENT_TRIES = 8
MIN_CONTRAST = 160  # L1 distance (0..765) between a shape's colour and the mean colour it covers
BACKGROUNDS: tuple[str, ...] = ("noise", "gradient", "stripes", "checker")

ImageSize = int | tuple[int, int] | tuple[tuple[int, int], tuple[int, int]]


# ----------------------------------------------------------------------------------------------- arguments


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def parse_image_size(image_size: ImageSize) -> tuple[tuple[int, int], tuple[int, int]]:
    """int S -> square S x S; (H, W) -> fixed; ((Hmin, Hmax), (Wmin, Wmax)) -> each side uniform in the
    inclusive range. Returns ((Hmin, Hmax), (Wmin, Wmax))."""
    expected = "an int, (H, W) or ((Hmin, Hmax), (Wmin, Wmax)) with positive sides"
    if _is_int(image_size):
        ranges = ((int(image_size),) * 2,) * 2
    elif isinstance(image_size, (tuple, list)) and len(image_size) == 2:
        if all(_is_int(s) for s in image_size):
            ranges = tuple((int(s), int(s)) for s in image_size)
        elif all(isinstance(r, (tuple, list)) and len(r) == 2 and all(_is_int(s) for s in r) for r in image_size):
            ranges = tuple((int(r[0]), int(r[1])) for r in image_size)
        else:
            raise ValueError(f"image_size must be {expected}, got {image_size!r}")
    else:
        raise ValueError(f"image_size must be {expected}, got {image_size!r}")
    for lo, hi in ranges:
        if lo < 1 or hi < lo:
            raise ValueError(f"image_size must be {expected} (min <= max), got {image_size!r}")
    return ranges  # type: ignore[return-value]


def _check_counts(min_objects: int, max_objects: int) -> None:
    if not _is_int(min_objects) or min_objects < 1:
        raise ValueError(f"min_objects must be an int >= 1, got {min_objects!r}")
    if not _is_int(max_objects) or max_objects < min_objects:
        raise ValueError(f"max_objects must be an int >= min_objects ({min_objects}), got {max_objects!r}")


def _check_seed(seed: int) -> None:
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")


# ----------------------------------------------------------------------------------------------- backgrounds


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0.0, 255.0, size=3)


def _projection(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """[H, W] coordinate along a random direction (pixel centres)."""
    theta = rng.uniform(0.0, math.pi)
    ys = np.arange(h, dtype=np.float64)[:, None] + 0.5
    xs = np.arange(w, dtype=np.float64)[None, :] + 0.5
    return xs * math.cos(theta) + ys * math.sin(theta)


def _mix(c0: np.ndarray, c1: np.ndarray, t: np.ndarray) -> np.ndarray:
    """[H, W] weights in [0, 1] -> [H, W, 3] colours between c0 (t=0) and c1 (t=1)."""
    return c0[None, None, :] * (1.0 - t[..., None]) + c1[None, None, :] * t[..., None]


def _value_noise(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Random colours on a coarse grid, bilinearly interpolated: [H, W, 3] float."""
    cell = float(rng.uniform(8.0, 48.0))
    gh, gw = int(math.ceil(h / cell)) + 2, int(math.ceil(w / cell)) + 2
    grid = rng.uniform(0.0, 255.0, size=(gh, gw, 3))
    ys = (np.arange(h) + 0.5) / cell
    xs = (np.arange(w) + 0.5) / cell
    y0, x0 = np.floor(ys).astype(np.int64), np.floor(xs).astype(np.int64)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
    bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def make_background(rng: np.random.Generator, h: int, w: int, kind: str | None = None) -> np.ndarray:
    """A textured [H, W, 3] uint8 background; ``kind`` None picks one of ``BACKGROUNDS`` at random."""
    if kind is None:
        kind = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    if kind == "noise":
        img = _value_noise(rng, h, w)
    elif kind == "gradient":
        p = _projection(rng, h, w)
        t = (p - p.min()) / max(float(p.max() - p.min()), 1e-9)
        img = _mix(_random_colour(rng), _random_colour(rng), t)
    elif kind == "stripes":
        period = rng.uniform(6.0, 32.0)
        p = _projection(rng, h, w) / period
        t = (np.floor(2.0 * p) % 2) if rng.random() < 0.5 else 0.5 + 0.5 * np.sin(2.0 * math.pi * p)
        img = _mix(_random_colour(rng), _random_colour(rng), t)
    elif kind == "checker":
        cell = rng.uniform(4.0, 24.0)
        theta = rng.uniform(0.0, math.pi / 2) if rng.random() < 0.5 else 0.0
        ys = np.arange(h, dtype=np.float64)[:, None] + 0.5
        xs = np.arange(w, dtype=np.float64)[None, :] + 0.5
        u = (xs * math.cos(theta) + ys * math.sin(theta)) / cell
        v = (-xs * math.sin(theta) + ys * math.cos(theta)) / cell
        t = (np.floor(u) + np.floor(v)) % 2
        img = _mix(_random_colour(rng), _random_colour(rng), t)
    else:
        raise ValueError(f"background kind must be one of {BACKGROUNDS}, got {kind!r}")
    sigma = rng.uniform(2.0, 10.0)
    img = img + rng.normal(0.0, sigma, size=img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------- shapes


def _centred(w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre offsets from the box centre: xc [1, w], yc [h, 1] (in pixels)."""
    xc = np.arange(w, dtype=np.float64)[None, :] + 0.5 - w / 2
    yc = np.arange(h, dtype=np.float64)[:, None] + 0.5 - h / 2
    return xc, yc


def _symmetric(w: int, h: int, profile: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """A shape symmetric about both box axes whose half-width at relative offset t in [0, 1] from the centre
    is ``profile(t)`` times the half-side: each row keeps the pixels within its half-width, each column those
    within its half-height, and every row and column keeps at least its centre pixel(s) (a half-pixel floor),
    so the shape's pixels span the whole box."""
    xc, yc = _centred(w, h)
    a, b = w / 2, h / 2
    rows = np.abs(xc) <= np.maximum(a * profile(np.abs(yc) / b), 0.5)
    cols = np.abs(yc) <= np.maximum(b * profile(np.abs(xc) / a), 0.5)
    return rows | cols


def _ellipse_profile(t: np.ndarray) -> np.ndarray:
    return np.sqrt(np.clip(1.0 - t * t, 0.0, None))


def _diamond_profile(t: np.ndarray) -> np.ndarray:
    return np.clip(1.0 - t, 0.0, None)


def _triangle_up(w: int, h: int) -> np.ndarray:
    """Apex at the top centre, base the full bottom row; each row keeps at least its centre pixel(s)."""
    xc, _ = _centred(w, h)
    depth = (np.arange(h, dtype=np.float64)[:, None] + 0.5) / h  # 0 at the apex, 1 at the base
    mask = np.abs(xc) <= np.maximum(depth * w / 2, 0.5)
    mask[-1, :] = True
    return mask


def render_shape(kind: str, w: int, h: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """The [h, w] bool mask of a shape inscribed in a w x h box, sampled at pixel centres.

    Every shape's pixels span the whole box, so its tight extent is the box. ``rng`` picks the triangle's
    orientation (apex up without one). Outline thickness: max(2, round(15% of the shorter side)) pixels; plus
    arms: a third of each side; x_cross bars: |u -+ v| <= 0.15 in normalized
    box coordinates u, v in (-0.5, 0.5), reaching the four corner pixels.
    """
    if not (_is_int(w) and _is_int(h) and w >= 1 and h >= 1):
        raise ValueError(f"w and h must be positive ints, got {w!r}, {h!r}")
    w, h = int(w), int(h)
    ys = np.arange(h, dtype=np.int64)[:, None]
    xs = np.arange(w, dtype=np.int64)[None, :]
    xc, yc = _centred(w, h)
    u, v = xc / w, yc / h  # normalized, in (-0.5, 0.5)
    t = max(2, int(round(0.15 * min(w, h))))
    if kind == "filled_rectangle":
        mask = np.ones((h, w), dtype=bool)
    elif kind == "outlined_rectangle":
        mask = (xs < t) | (xs >= w - t) | (ys < t) | (ys >= h - t)
    elif kind == "filled_ellipse":
        mask = _symmetric(w, h, _ellipse_profile)
    elif kind == "outlined_ellipse":
        ai, bi = max(w / 2 - t, 0.5), max(h / 2 - t, 0.5)  # inner semi-axes in pixels
        mask = _symmetric(w, h, _ellipse_profile) & ~((xc / ai) ** 2 + (yc / bi) ** 2 < 1.0)
    elif kind == "triangle":
        orientation = int(rng.integers(4)) if rng is not None else 0  # apex up, down, left, right
        if orientation < 2:
            mask = _triangle_up(w, h)
            mask = mask[::-1] if orientation == 1 else mask
        else:
            mask = _triangle_up(h, w).T  # apex at the left
            mask = mask[:, ::-1] if orientation == 3 else mask
    elif kind == "plus":
        mask = (np.abs(u) <= 1 / 6) | (np.abs(v) <= 1 / 6)
    elif kind == "diamond":
        mask = _symmetric(w, h, _diamond_profile)
    elif kind == "x_cross":
        mask = (np.abs(u - v) <= 0.15) | (np.abs(u + v) <= 0.15)
        mask[[0, 0, -1, -1], [0, -1, 0, -1]] = True  # the bars end in the box's corners
    else:
        raise ValueError(f"shape kind must be one of {CLASS_NAMES}, got {kind!r}")
    return np.ascontiguousarray(np.broadcast_to(mask, (h, w)))


def _tight_extent(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) pixel-edge extent of the True pixels of a non-empty [h, w] mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _pick_colour(rng: np.random.Generator, covered: np.ndarray) -> np.ndarray:
    """A uint8 RGB colour far (L1 >= MIN_CONTRAST) from the mean of ``covered`` [P, 3]; best of 16 tries."""
    mean = covered.reshape(-1, 3).mean(axis=0)
    best, best_d = None, -1.0
    for _ in range(16):
        c = rng.integers(0, 256, size=3)
        d = float(np.abs(c - mean).sum())
        if d > best_d:
            best, best_d = c, d
        if d >= MIN_CONTRAST:
            break
    return np.asarray(best, dtype=np.uint8)


def generate_sample(rng: np.random.Generator, image_size: ImageSize = DEFAULT_IMAGE_SIZE, min_objects: int = 1,
                    max_objects: int = 8, min_size: int = MIN_SHAPE_SIZE, max_size: int | None = None,
                    min_visible: float = MIN_VISIBLE_FRACTION, return_details: bool = False):
    """One image: (image [H, W, 3] uint8 RGB, boxes [G, 4] float32 XYXY, classes [G] int64 contiguous).

    ``max_size`` None means half the shorter image side. With ``return_details`` a fourth element lists every
    drawn shape (annotated or not) in drawing order as a dict: kind, class_index, colour (uint8 [3]),
    box (x0, y0, x1, y1), mask and visible ([H, W] bool: the full shape, and the pixels that show it),
    visible_fraction, annotated.
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    (hmin, hmax), (wmin, wmax) = parse_image_size(image_size)
    _check_counts(min_objects, max_objects)
    if not 0.0 <= float(min_visible) <= 1.0:
        raise ValueError(f"min_visible must be in [0, 1], got {min_visible!r}")
    h = int(rng.integers(hmin, hmax + 1))
    w = int(rng.integers(wmin, wmax + 1))
    limit = max_size if max_size is not None else min(h, w) // 2
    if not _is_int(min_size) or min_size < 1:
        raise ValueError(f"min_size must be an int >= 1, got {min_size!r}")
    if not _is_int(limit) or limit < min_size or limit > min(h, w):
        raise ValueError(f"max_size must be an int in [min_size={min_size}, {min(h, w)}] for a {h}x{w} image, "
                         f"got {limit!r} (the default is half the shorter side: use images of at least "
                         f"{2 * min_size} px)")

    image = make_background(rng, h, w)
    owner = np.full((h, w), -1, dtype=np.int64)  # index of the topmost shape at each pixel
    full_area: list[int] = []
    visible_area: list[int] = []
    shapes: list[dict[str, Any]] = []
    n = int(rng.integers(min_objects, max_objects + 1))
    for k in range(n):
        cls = int(rng.integers(len(CATEGORIES)))
        side = math.exp(rng.uniform(math.log(min_size), math.log(limit)))
        aspect = math.exp(rng.uniform(math.log(0.5), math.log(2.0)))
        sw = int(np.clip(round(side * math.sqrt(aspect)), min_size, limit))
        sh = int(np.clip(round(side / math.sqrt(aspect)), min_size, limit))
        local = render_shape(CLASS_NAMES[cls], sw, sh, rng)
        area = int(local.sum())
        fa = np.asarray(full_area, dtype=np.int64)
        va = np.asarray(visible_area, dtype=np.int64)
        alive = va >= min_visible * fa
        for _ in range(PLACEMENT_TRIES):
            x0 = int(rng.integers(0, w - sw + 1))
            y0 = int(rng.integers(0, h - sh + 1))
            covered = owner[y0:y0 + sh, x0:x0 + sw][local]
            lost = np.bincount(covered[covered >= 0], minlength=k)
            if np.all((va - lost >= min_visible * fa) | ~alive):
                break
        window = (slice(y0, y0 + sh), slice(x0, x0 + sw))
        colour = _pick_colour(rng, image[window][local])
        image[window][local] = colour
        for j, count in enumerate(lost):
            visible_area[j] -= int(count)
        owner[window][local] = k
        full_area.append(area)
        visible_area.append(area)
        ex0, ey0, ex1, ey1 = _tight_extent(local)
        shapes.append({"kind": CLASS_NAMES[cls], "class_index": cls, "colour": colour,
                       "box": (x0 + ex0, y0 + ey0, x0 + ex1, y0 + ey1), "window": window, "local": local})

    boxes, classes = [], []
    for k, s in enumerate(shapes):
        s["visible_fraction"] = visible_area[k] / full_area[k]
        s["annotated"] = s["visible_fraction"] >= min_visible
        if s["annotated"]:
            boxes.append(s["box"])
            classes.append(s["class_index"])
    boxes_arr = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    classes_arr = np.asarray(classes, dtype=np.int64)
    if not return_details:
        return image, boxes_arr, classes_arr
    details = []
    for k, s in enumerate(shapes):
        mask = np.zeros((h, w), dtype=bool)
        mask[s["window"]] = s["local"]
        details.append({"kind": s["kind"], "class_index": s["class_index"], "colour": s["colour"],
                        "box": s["box"], "mask": mask, "visible": owner == k,
                        "visible_fraction": s["visible_fraction"], "annotated": s["annotated"]})
    return image, boxes_arr, classes_arr, details


# ----------------------------------------------------------------------------------------------- datasets


class SyntheticCOCO:
    """In-memory stream of synthetic samples: ``ds[i]`` -> (image [H, W, 3] uint8, boxes [G, 4] float32 XYXY,
    classes [G] int64 contiguous), drawn from ``default_rng([seed, i])``.

    ``num_images`` None makes an endless stream (``len()`` is then an error; iterate or index freely).
    Extra keyword arguments go to ``generate_sample`` (min_size, max_size, min_visible).
    """

    categories = CATEGORIES
    class_names = CLASS_NAMES
    category_ids = CATEGORY_IDS

    def __init__(self, num_images: int | None = None, image_size: ImageSize = DEFAULT_IMAGE_SIZE, seed: int = 0,
                 min_objects: int = 1, max_objects: int = 8, **sample_kwargs: Any) -> None:
        if num_images is not None and (not _is_int(num_images) or num_images < 0):
            raise ValueError(f"num_images must be a non-negative int or None, got {num_images!r}")
        _check_seed(seed)
        parse_image_size(image_size)
        _check_counts(min_objects, max_objects)
        unknown = set(sample_kwargs) - {"min_size", "max_size", "min_visible"}
        if unknown:
            raise TypeError(f"unexpected keyword arguments {sorted(unknown)}")
        self.num_images = num_images
        self.image_size = image_size
        self.seed = int(seed)
        self.min_objects = min_objects
        self.max_objects = max_objects
        self.sample_kwargs = sample_kwargs

    @property
    def num_classes(self) -> int:
        return len(CATEGORIES)

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, int(index)])

    def sample(self, index: int, return_details: bool = False):
        if not _is_int(index) or index < 0 or (self.num_images is not None and index >= self.num_images):
            raise IndexError(f"index {index!r} out of range for {self.num_images} images")
        return generate_sample(self.rng(index), self.image_size, self.min_objects, self.max_objects,
                               return_details=return_details, **self.sample_kwargs)

    def __getitem__(self, index: int):
        return self.sample(index)

    def __len__(self) -> int:
        if self.num_images is None:
            raise TypeError("an endless SyntheticCOCO stream (num_images=None) has no length")
        return self.num_images

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        i = 0
        while self.num_images is None or i < self.num_images:
            yield self.sample(i)
            i += 1


def make_synthetic_coco(out_dir: str | Path, num_images: int = 16, image_size: ImageSize = DEFAULT_IMAGE_SIZE,
                        seed: int = 0, min_objects: int = 1, max_objects: int = 8,
                        progress: Callable[[int, int], None] | None = None, **sample_kwargs: Any) -> Path:
    """Write ``out_dir/images/NNNNNN.png`` (RGB uint8) and ``out_dir/annotations.json``; return the JSON path.

    Image ids run 1..num_images (file i-1 holds image id i), annotation ids 1..; categories are ``CATEGORIES``.
    ``progress(done, total)`` is called after each image. Same arguments, same bytes. Every file is written
    atomically (detspec.io.fileio), so an interrupted run leaves no half-written PNG or JSON.
    """
    if not _is_int(num_images) or num_images < 1:
        raise ValueError(f"num_images must be an int >= 1, got {num_images!r}")
    ds = SyntheticCOCO(num_images, image_size, seed, min_objects, max_objects, **sample_kwargs)
    out = Path(out_dir)
    image_dir = out / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    digits = max(6, len(str(num_images)))
    images, annotations = [], []
    for i in range(num_images):
        image, boxes, classes = ds[i]
        name = f"{i:0{digits}d}.png"
        pil = Image.fromarray(image, mode="RGB")
        with naming_write_errors(image_dir / name):
            atomic_save(image_dir / name, lambda f, pil=pil: pil.save(f, format="PNG"))
        image_id = i + 1
        images.append({"id": image_id, "file_name": name, "height": int(image.shape[0]),
                       "width": int(image.shape[1])})
        for (x0, y0, x1, y1), c in zip(boxes.tolist(), classes.tolist()):
            w, h = x1 - x0, y1 - y0
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": CATEGORY_IDS[c],
                                "bbox": [x0, y0, w, h], "area": w * h, "iscrowd": 0})
        if progress is not None:
            progress(i + 1, num_images)
    dataset = {
        "info": {"description": "detspec synthetic shapes", "seed": int(seed), "num_images": num_images,
                 "image_size": image_size, "min_objects": min_objects, "max_objects": max_objects,
                 **{k: v for k, v in sample_kwargs.items()}},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": cid, "name": name, "supercategory": "shape"} for cid, name in CATEGORIES],
    }
    path = out / "annotations.json"
    with naming_write_errors(path):
        atomic_write(path, json.dumps(dataset, indent=1))
    return path


class CocoDetectionDataset:
    """Reads a COCO detection dataset back: ``ds[i]`` -> (image [3, H, W] uint8 tensor, target dict).

    target: boxes [G, 4] float32 XYXY (from COCO's [x, y, w, h]), classes [G] int64 contiguous (ascending
    category id order, ``self.category_map``), image_id, height, width, file_name. Crowd annotations
    (iscrowd=1) are left out, as detectron2 does for training. ``image_dir`` defaults to ``images/`` beside
    the JSON. ``format`` is the channel order of the tensor (the detectron2 default, BGR, comes from spec).
    ``filter_empty`` drops images without annotations.
    """

    def __init__(self, ann_path: str | Path, image_dir: str | Path | None = None, format: str | None = None,
                 filter_empty: bool = False) -> None:
        if format is None:
            format = BASE_RCNN_FPN.input.format
        if format not in ("RGB", "BGR"):
            raise ValueError(f"format must be 'RGB' or 'BGR', got {format!r}")
        self.format = format
        self.ann_path = Path(ann_path)
        self.image_dir = Path(image_dir) if image_dir is not None else self.ann_path.parent / "images"
        data = load_json(self.ann_path, "annotations")
        for key in ("images", "annotations", "categories"):
            if not isinstance(data.get(key) if isinstance(data, dict) else None, list):
                raise ValueError(f"{self.ann_path}: expected a COCO dict with a {key!r} list")
        self.category_map = CategoryMap.from_coco(data["categories"])
        per_image: dict[int, list[dict]] = {img["id"]: [] for img in data["images"]}
        for ann in data["annotations"]:
            if ann["image_id"] not in per_image:
                raise ValueError(f"{self.ann_path}: annotation {ann.get('id')} refers to unknown image id "
                                 f"{ann['image_id']}")
            if not ann.get("iscrowd", 0):
                per_image[ann["image_id"]].append(ann)
        self.images = [img for img in data["images"] if per_image[img["id"]] or not filter_empty]
        self._annotations = per_image

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        info = self.images[index]
        path = self.image_dir / info["file_name"]
        with Image.open(path) as im:
            array = np.asarray(im.convert("RGB"))
        if (array.shape[0], array.shape[1]) != (info["height"], info["width"]):
            raise ValueError(f"{path} is {array.shape[0]}x{array.shape[1]}, but the annotations say "
                             f"{info['height']}x{info['width']}")
        if self.format == "BGR":
            array = array[:, :, ::-1]
        image = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
        anns = self._annotations[info["id"]]
        xywh = np.asarray([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1).astype(np.float32)
        classes = self.category_map.to_contiguous([a["category_id"] for a in anns])
        target = {"boxes": torch.from_numpy(boxes), "classes": torch.as_tensor(classes, dtype=torch.int64),
                  "image_id": info["id"], "height": info["height"], "width": info["width"],
                  "file_name": info["file_name"]}
        return image, target


def progress_printer(prefix: str = "", every: int | None = None, stream=None) -> Callable[[int, int], None]:
    """A ``progress(done, total)`` callback printing 'prefix done/total' about 20 times per run."""
    def progress(done: int, total: int) -> None:
        step = every or max(1, total // 20)
        if done % step == 0 or done == total:
            print(f"{prefix}{done}/{total}", file=stream or sys.stdout, flush=True)

    return progress


__all__: Sequence[str] = (
    "BACKGROUNDS", "CATEGORIES", "CATEGORY_IDS", "CLASS_NAMES", "CocoDetectionDataset", "DEFAULT_IMAGE_SIZE",
    "MIN_SHAPE_SIZE", "MIN_VISIBLE_FRACTION", "SyntheticCOCO", "generate_sample", "make_background",
    "make_synthetic_coco", "parse_image_size", "progress_printer", "render_shape",
)
