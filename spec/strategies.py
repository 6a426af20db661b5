"""Hypothesis strategies for the spec's inputs, and the test profiles.

Strategies produce float64 tensors (the reference's precision); tests cast them for the implementation under
test. They deliberately include the spec's edge cases: zero-area boxes, identical boxes, boxes touching at an
edge, boxes outside the image, IoU matrices with exact ties and values exactly on the thresholds.

Profiles (select with HYPOTHESIS_PROFILE or --hypothesis-profile; CI=true selects ``ci``):
``dev`` (few examples, fast), ``ci`` (derandomized, no deadline, print blobs), ``thorough`` (nightly).
"""

from __future__ import annotations

import math
import os

import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

PROFILES = {
    "dev": dict(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow]),
    "ci": dict(max_examples=40, deadline=None, derandomize=True, database=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow]),
    "thorough": dict(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow]),
}


def register_profiles(load: bool = True) -> str:
    """Register dev/ci/thorough and (if `load`) load the selected one; returns its name."""
    for name, kwargs in PROFILES.items():
        settings.register_profile(name, **kwargs)
    name = os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev")
    if name not in PROFILES:
        raise ValueError(f"HYPOTHESIS_PROFILE={name!r}; expected one of {sorted(PROFILES)}")
    if load:
        settings.load_profile(name)
    return name


# Coordinates: a coarse integer grid makes exact ties and shared edges likely; fine floats cover the rest.
_coord_int = st.integers(min_value=-50, max_value=1200).map(float)
_coord_float = st.floats(min_value=-50.0, max_value=1200.0, allow_nan=False, allow_infinity=False, width=32)
_side_int = st.integers(min_value=0, max_value=400).map(float)
_side_float = st.floats(min_value=0.0, max_value=400.0, allow_nan=False, allow_infinity=False, width=32)


@st.composite
def box(draw, integer: bool | None = None) -> tuple[float, float, float, float]:
    """One XYXY box with x2 >= x1, y2 >= y1 (zero width/height allowed)."""
    if integer is None:
        integer = draw(st.booleans())
    coord, side = (_coord_int, _side_int) if integer else (_coord_float, _side_float)
    x1, y1, w, h = draw(coord), draw(coord), draw(side), draw(side)
    return (x1, y1, x1 + w, y1 + h)


@st.composite
def boxes(draw, min_n: int = 0, max_n: int = 40, nonempty: bool = False) -> torch.Tensor:
    """[N, 4] float64 boxes with duplicates, near-duplicates, touching and degenerate boxes mixed in."""
    integer = draw(st.booleans())
    n = draw(st.integers(min_n, max_n))
    out: list[tuple[float, float, float, float]] = []
    for _ in range(n):
        kind = draw(st.sampled_from(["new", "new", "copy", "jitter"]) if out else st.just("new"))
        if kind == "new":
            b = draw(box(integer=integer))
        else:
            base = draw(st.sampled_from(out))
            if kind == "copy":
                b = base
            else:  # a jittered copy: overlaps its base with a high IoU
                d = draw(st.lists(st.integers(-8, 8), min_size=4, max_size=4))
                x1, y1 = base[0] + d[0], base[1] + d[1]
                b = (x1, y1, max(x1, base[2] + d[2]), max(y1, base[3] + d[3]))
        if nonempty:
            b = (b[0], b[1], max(b[2], b[0] + 1.0), max(b[3], b[1] + 1.0))
        out.append(b)
    return torch.tensor(out, dtype=torch.float64).reshape(n, 4)


_special_quality = st.sampled_from([0.0, 0.0, 0.1, 0.29999, 0.3, 0.5, 0.69999, 0.7, 0.9, 1.0])


@st.composite
def quality_matrices(draw, max_g: int = 6, max_p: int = 30, min_g: int = 0, min_p: int = 0) -> torch.Tensor:
    """[G, P] float64 IoU-like matrices in [0, 1] with exact ties and values on the thresholds."""
    g = draw(st.integers(min_g, max_g))
    p = draw(st.integers(min_p, max_p))
    value = st.one_of(_special_quality, st.floats(0.0, 1.0, allow_nan=False, width=32))
    flat = draw(st.lists(value, min_size=g * p, max_size=g * p))
    return torch.tensor(flat, dtype=torch.float64).reshape(g, p)


@st.composite
def image_sizes(draw, min_side: int = 1, max_side: int = 1400) -> tuple[int, int]:
    """(height, width) of an image, any size (not only multiples of 32)."""
    return draw(st.integers(min_side, max_side)), draw(st.integers(min_side, max_side))


def feature_sizes_for(image_size: tuple[int, int], strides: tuple[int, ...],
                      size_divisibility: int) -> list[tuple[int, int]]:
    """Level sizes of an image padded to `size_divisibility`: ceil(H_pad / s) for each stride s.

    With divisibility 32, strides 4..32 divide exactly and P6 (stride 64) is ceil(H5 / 2), as in the FPN.
    """
    h = math.ceil(image_size[0] / size_divisibility) * size_divisibility
    w = math.ceil(image_size[1] / size_divisibility) * size_divisibility
    return [(math.ceil(h / s), math.ceil(w / s)) for s in strides]


@st.composite
def scored_boxes(draw, min_n: int = 0, max_n: int = 60, groups: int = 1):
    """(boxes [N,4] float64 non-empty, distinct scores [N] float64, group ids [N] int64)."""
    b = draw(boxes(min_n=min_n, max_n=max_n, nonempty=True))
    n = b.shape[0]
    # distinct scores avoid order ties, which the spec leaves unspecified
    perm = draw(st.permutations(list(range(n))))
    scores = (torch.tensor(perm, dtype=torch.float64) + 1.0) / (n + 1.0)
    ids = draw(st.lists(st.integers(0, max(groups - 1, 0)), min_size=n, max_size=n))
    return b, scores, torch.tensor(ids, dtype=torch.int64)


# ------------------------------------------------------------------------------------------------ ROI stage
def _on_grid(v: float, step: float | None) -> float:
    return round(v / step) * step if step else v


@st.composite
def rois(draw, num_images: int = 1, map_size: tuple[int, int] = (8, 8), spatial_scale: float = 1.0,
         min_n: int = 0, max_n: int = 12) -> torch.Tensor:
    """[R, 5] float64 rows (batch_index, x1, y1, x2, y2) in input pixels, for [num_images, C, H, W] maps of
    `map_size` (H, W) pooled at `spatial_scale`.

    Mixes boxes inside the map, crossing its border, larger than it, wholly beyond the one-pixel margin on
    one axis, with zero width and/or height, sub-pixel (aligned=False widens them to one pixel) and exact
    copies (possibly for another image). Batch indices come in any order. Coordinates lie on a half-pixel
    grid of the map, or are free floats.
    """
    h, w = map_size
    px = 1.0 / spatial_scale  # one feature-map pixel, in input pixels
    ext = (w * px, h * px)  # the map's extent in input pixels, (x, y)
    step = draw(st.sampled_from([px / 2, None]))
    unit = st.floats(0.0, 1.0, allow_nan=False)
    n = draw(st.integers(min_n, max_n))
    out: list[list[float]] = []
    for _ in range(n):
        b = float(draw(st.integers(0, max(num_images - 1, 0))))
        kind = draw(st.sampled_from(["inside", "inside", "crossing", "large", "outside", "empty", "tiny"]
                                    + (["copy"] if out else [])))
        if kind == "copy":
            out.append([b] + draw(st.sampled_from(out))[1:])
            continue
        outside_axis = draw(st.integers(0, 1))
        row = [b]
        for axis in (0, 1):
            e = ext[axis]
            if kind in ("inside", "empty", "tiny"):
                lo = _on_grid(draw(unit) * e, step)
                size = {"inside": draw(unit) * (e - lo), "empty": 0.0, "tiny": draw(unit) * px}[kind]
            elif kind == "crossing":
                lo, size = _on_grid(-e / 2 + draw(unit) * 1.5 * e, step), draw(unit) * e
            elif kind == "large":
                lo, size = _on_grid(-draw(unit) * e, step), e + draw(unit) * 2 * e
            elif axis == outside_axis:  # "outside": every sample lies beyond the one-pixel margin
                size = draw(unit) * e / 2
                if draw(st.booleans()):
                    lo = _on_grid(e + 2 * px + draw(unit) * e, step)
                else:
                    lo = _on_grid(-2 * px - size - draw(unit) * e, step) - (step or 0.0)
            else:
                lo, size = _on_grid(draw(unit) * e, step), draw(unit) * e / 2
            if kind == "empty" and axis != outside_axis and draw(st.booleans()):
                size = draw(unit) * e / 2  # zero width or zero height only
            row += [lo, lo + _on_grid(size, step)]
        out.append([row[0], row[1], row[3], row[2], row[4]])
    return torch.tensor(out, dtype=torch.float64).reshape(n, 5)


_pyramid_sides = st.one_of(
    st.sampled_from([0.0, 16.0, 28.0, 56.0, 111.99, 112.0, 223.9, 224.0, 447.9, 448.0, 896.0, 1000.0]),
    st.integers(0, 1100).map(float),
    st.floats(0.0, 1100.0, allow_nan=False, allow_infinity=False, width=32),
)


@st.composite
def pyramid_boxes(draw, min_n: int = 0, max_n: int = 20, max_origin: float = 1200.0) -> torch.Tensor:
    """[N, 4] float64 XYXY boxes whose sqrt(area) spans every FPN level of the box pooler (P2..P5 and beyond):
    exact level boundaries (sides 112, 224, 448 and products such as 56 x 224), zero area, and free sizes."""
    n = draw(st.integers(min_n, max_n))
    origin = st.floats(-100.0, max_origin, allow_nan=False, allow_infinity=False, width=32)
    out = []
    for _ in range(n):
        x1, y1, w, h = draw(origin), draw(origin), draw(_pyramid_sides), draw(_pyramid_sides)
        out.append((x1, y1, x1 + w, y1 + h))
    return torch.tensor(out, dtype=torch.float64).reshape(n, 4)


@st.composite
def class_boxes_and_scores(draw, min_r: int = 0, max_r: int = 30, max_k: int = 4,
                           image_size: tuple[int, int] = (100, 120), score_thresh: float = 0.05,
                           num_classes: int | None = None):
    """(boxes [R, 4K] float64, scores [R, K+1] float64, background last) for fast_rcnn_inference.

    K is `num_classes`, or drawn from [1, max_k] (give it for the images of one batch, which share K).

    Each ROI has a base box (some crossing the image border, some copies of an earlier ROI's) and one jittered
    box per class, so boxes overlap within a class and across classes. Scores are distinct (no order ties)
    and none lies within 1e-4 of `score_thresh` (float32 rounding cannot move a score across it).
    """
    k = num_classes if num_classes is not None else draw(st.integers(1, max_k))
    r = draw(st.integers(min_r, max_r))
    h, w = image_size
    integer = draw(st.booleans())
    coord = (st.integers(-20, max(w, h)).map(float) if integer
             else st.floats(-20.0, float(max(w, h)), allow_nan=False, width=32))
    side = st.integers(1, max(w, h) // 2).map(float) if integer else st.floats(1.0, max(w, h) / 2.0, width=32)
    bases: list[tuple[float, float, float, float]] = []
    rows = []
    for _ in range(r):
        if bases and draw(st.booleans()):
            base = draw(st.sampled_from(bases))
        else:
            x1, y1 = draw(coord), draw(coord)
            base = (x1, y1, x1 + draw(side), y1 + draw(side))
        bases.append(base)
        row = []
        for _ in range(k):
            d = draw(st.lists(st.integers(-4, 4), min_size=4, max_size=4))
            x1, y1 = base[0] + d[0], base[1] + d[1]
            row += [x1, y1, max(x1 + 1.0, base[2] + d[2]), max(y1 + 1.0, base[3] + d[3])]
        rows.append(row)
    boxes = torch.tensor(rows, dtype=torch.float64).reshape(r, 4 * k)
    total = r * (k + 1)
    perm = draw(st.permutations(list(range(total))))
    scores = (torch.tensor(perm, dtype=torch.float64) + 1.0) / (total + 1.0)
    near = (scores - score_thresh).abs() < 1e-4
    scores = torch.where(near, scores + 2e-4, scores)  # spacing 1 / (total + 1) >> 2e-4 keeps them distinct
    return boxes, scores.reshape(r, k + 1)
