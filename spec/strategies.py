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
