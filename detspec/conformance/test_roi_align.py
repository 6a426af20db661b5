"""Conformance: FPN level assignment, ROIAlign and the multi-level box pooler. d2-spec §2.11, §3.

ROIAlign has two discontinuities in its spec: the adaptive grid ceil(roi size / output size) and the cut-off
of samples beyond one pixel outside the map. Where a row sits within rounding of either, float32 and float64
(or two float64 operation orders) may legitimately disagree, so the differential tests leave those rows out
(``_ambiguous``) and the hand-made tests below check both edges on exactly representable inputs.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from detspec.conformance._util import assert_close, assert_equal, cpu, f32, on
from spec import strategies as S
from spec.config import BASE_RCNN_FPN, TORCHVISION

ROI = BASE_RCNN_FPN.roi_heads
BOX = BASE_RCNN_FPN.box_head
TV_ROI = TORCHVISION.roi_heads
TV_BOX = TORCHVISION.box_head
STRIDES = (4, 8, 16, 32)  # P2..P5: the pooler's levels (ROI.LEVELS)
RES = BOX.pooler_resolution  # 7


def T(rows, device, dtype=torch.float32):
    return torch.tensor(rows, dtype=dtype, device=device)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def ramp(n: int = 1, c: int = 1, h: int = 5, w: int = 5) -> torch.Tensor:
    """[n, c, h, w] float32: image b, channel k holds (k + 1) * (y * w + x) + 100 * b."""
    base = torch.arange(h * w, dtype=torch.float32).reshape(1, 1, h, w)
    scale = torch.arange(1, c + 1, dtype=torch.float32).reshape(1, c, 1, 1)
    shift = 100.0 * torch.arange(n, dtype=torch.float32).reshape(n, 1, 1, 1)
    return base * scale + shift


def align(impl, device, features, rois, output_size, scale=1.0, sampling=0, aligned=True):
    out = impl.roi_align(on(features, device), on(rois, device), output_size, scale, sampling, aligned)
    oh, ow = (output_size, output_size) if isinstance(output_size, int) else output_size
    assert out.shape == (rois.shape[0], features.shape[1], oh, ow), out.shape
    assert out.dtype == features.dtype
    return cpu(out)


def raw_level(boxes64: torch.Tensor, eps: float = ROI.level_eps, in_log: bool = ROI.level_eps_in_log) -> torch.Tensor:
    """The unfloored level 4 + log2(sqrt(area) / 224 (+ eps)) in float64 (the oracle of d2-spec §2.11)."""
    s = ((boxes64[:, 2] - boxes64[:, 0]) * (boxes64[:, 3] - boxes64[:, 1])).sqrt()
    ratio = s / ROI.canonical_box_size
    return ROI.canonical_level + (torch.log2(ratio + eps) if in_log else torch.log2(ratio) + eps)


def oracle_levels(boxes64, **kw):
    """(levels in [2, 5], mask of rows whose level is not within rounding of a boundary).

    A row is near a boundary when 4 + log2(s / 224), without eps, is within 1e-5 of an integer k but not
    exactly k (exact powers of two, s = 112, 224, 448, are exact in every dtype, and eps only lifts them).
    Near a clamped boundary (k <= 2 or k > 5) either side gives the same level.
    """
    v = raw_level(boxes64, **kw)
    t = raw_level(boxes64, eps=0.0, in_log=False)
    k = t.round()
    near = ((t - k).abs() < 1e-5) & (t != k) & (k > ROI.min_level) & (k <= ROI.max_level)
    return v.floor().clamp(ROI.min_level, ROI.max_level).to(torch.int64), ~near


def _ambiguous(rois64, scale, output_size, sampling, aligned, height, width) -> torch.Tensor:
    """Rows within rounding of one of ROIAlign's discontinuities (see the module docstring).

    With x0 = x1 * scale - 0.5 * aligned and size = (x2 - x1) * scale (at least 1 when not aligned), the grid
    has g = sampling or ceil(size / out) samples per bin at x0 + (p + (i + 0.5) / g) * size / out. A row is
    ambiguous if size / out is within 1e-6 of an integer (0 included: a size of 1e-9 is 0 in float32 after the
    -0.5 shift) and the coordinates are not on the exact half-pixel grid, or if any sample is within 1e-5 of
    the cut-offs -1 and W (H for y).
    """
    oh, ow = (output_size, output_size) if isinstance(output_size, int) else output_size
    bad = torch.zeros(rois64.shape[0], dtype=torch.bool)
    scales = torch.as_tensor(scale, dtype=torch.float64).expand(rois64.shape[0])
    for axis, (out, extent) in enumerate(((ow, width), (oh, height))):
        lo, hi = rois64[:, 1 + axis] * scales, rois64[:, 3 + axis] * scales
        exact = ((lo * 2) == (lo * 2).round()) & ((hi * 2) == (hi * 2).round())
        size = hi - lo
        if not aligned:
            size = size.clamp(min=1.0)
        ratio = size / out
        if sampling <= 0:
            bad |= ~exact & ((ratio - ratio.round()).abs() < 1e-6)  # also a size of ~0: 0 or 1 sample
        for r in range(rois64.shape[0]):
            g = sampling if sampling > 0 else math.ceil(float(ratio[r]))
            if g == 0:
                continue
            steps = (torch.arange(out * g, dtype=torch.float64) + 0.5) / g
            pos = lo[r] - (0.5 if aligned else 0.0) + steps * ratio[r]
            if bool(((pos + 1).abs() < 1e-5).any() | ((pos - extent).abs() < 1e-5).any()):
                bad[r] = True
    return bad


# ================================================================================================ levels
@pytest.mark.clause("ROI.LEVEL_FORMULA", "ROI.LEVELS")
def test_level_boundaries(impl, device):
    # d2-spec §3: k = floor(4 + log2(s / 224 + 1e-8)) clamped to [2, 5], s = sqrt(area):
    # s = 112 -> log2(0.5) = -1 -> 3; 111.99 -> 4 + log2(0.49996) = 2.99987 -> 2; 224 -> 4; 448 -> 5;
    # 1000 -> floor(6.158) = 6 -> clamped to 5 (no P6); 16 -> floor(0.19) = 0 -> clamped to 2; 0 -> 2.
    table = [(16, 2), (32, 2), (64, 2), (100, 2), (111.99, 2), (112, 3), (150, 3), (223.9, 3), (224, 4),
             (300, 4), (447.9, 4), (448, 5), (1000, 5), (0, 2)]
    boxes = [[10, 20, 10 + s, 20 + s] for s, _ in table]
    boxes += [[0, 0, 56, 224], [0, 0, 224, 56], [-50, -50, 174, 174], [5, 5, 5, 900]]  # s = 112, 112, 224, 0
    expected = [k for _, k in table] + [3, 3, 4, 2]
    levels = impl.assign_levels(T(boxes, device))
    assert levels.dtype == torch.int64 and levels.shape == (len(boxes),)
    assert_equal(levels, torch.tensor(expected), "levels")
    empty = impl.assign_levels(torch.zeros(0, 4, device=device))
    assert empty.shape == (0,) and empty.dtype == torch.int64


@pytest.mark.clause("ROI.LEVEL_FORMULA", "ROI.LEVELS")
@given(S.pyramid_boxes(max_n=25))
def test_levels_follow_the_formula(impl, device, boxes):
    b32, b64 = f32(boxes)
    levels = cpu(impl.assign_levels(on(b32, device)))
    assert levels.dtype == torch.int64 and levels.shape == (boxes.shape[0],)
    assert ((levels >= 2) & (levels <= 5)).all(), levels  # never P6, never below P2
    expected, clear = oracle_levels(b64)
    assert_equal(levels[clear], expected[clear], "levels away from a boundary")
    v = raw_level(b64)[~clear]  # within rounding of a boundary: either neighbour
    lo = (v - 1e-5).floor().clamp(2, 5)
    hi = (v + 1e-5).floor().clamp(2, 5)
    assert ((levels[~clear] == lo) | (levels[~clear] == hi)).all()


@pytest.mark.clause("ROI.LEVEL_EPS_TORCHVISION")
def test_torchvision_eps_outside_the_log(impl, device):
    # s = 112 * 2**-5e-7, so 4 + log2(s / 224) = 3 - 5e-7 (float64 inputs: float32 cannot hold the margin).
    # detectron2: log2(s/224 + 1e-8) lifts it by 1e-8 / (0.5 ln 2) = 2.9e-8 only -> 2.99999953 -> P2.
    # torchvision: 3 - 5e-7 + 1e-6 = 3.0000005 -> P3. The same at the P4/P5 boundary (448 * 2**-5e-7).
    s3, s5 = 112.0 * 2.0 ** -5e-7, 448.0 * 2.0 ** -5e-7
    boxes = T([[0, 0, s3, s3], [0, 0, s5, s5], [0, 0, 112, 112], [0, 0, 111.99, 111.99]], device, torch.float64)
    d2 = impl.assign_levels(boxes, eps=ROI.level_eps, eps_in_log=ROI.level_eps_in_log)
    tv = impl.assign_levels(boxes, eps=TV_ROI.level_eps, eps_in_log=TV_ROI.level_eps_in_log)
    assert_equal(d2, torch.tensor([2, 4, 3, 2]), "detectron2 profile levels")
    assert_equal(tv, torch.tensor([3, 5, 3, 2]), "torchvision profile levels")
    # A wide eps shows where it is added, in float32: s = 224 * 2**-1.02 (raw 2.98).
    # inside: 4 + log2(0.493116 + 0.01) = 3.00896 -> 3; outside: 2.98 + 0.01 = 2.99 -> 2.
    s = 224.0 * 2.0 ** -1.02
    wide = T([[0, 0, s, s]], device)
    assert_equal(impl.assign_levels(wide, eps=0.01, eps_in_log=True), torch.tensor([3]), "eps in the log")
    assert_equal(impl.assign_levels(wide, eps=0.01, eps_in_log=False), torch.tensor([2]), "eps outside the log")


@pytest.mark.clause("ROI.LEVEL_EPS_TORCHVISION")
@given(S.pyramid_boxes(min_n=1, max_n=25))
def test_torchvision_profile_matches_level_mapper(impl, device, boxes):
    poolers = pytest.importorskip("torchvision.ops.poolers")
    _, b64 = f32(boxes)
    b64 = b64[(b64[:, 2] > b64[:, 0]) & (b64[:, 3] > b64[:, 1])]  # LevelMapper's log2(0) = -inf is undefined
    mapper = poolers.LevelMapper(2, 5, int(TV_ROI.canonical_box_size), TV_ROI.canonical_level, TV_ROI.level_eps)
    expected = mapper([b64]) + 2  # LevelMapper returns k - k_min
    levels = cpu(impl.assign_levels(on(b64, device), eps=TV_ROI.level_eps, eps_in_log=TV_ROI.level_eps_in_log))
    _, clear = oracle_levels(b64, eps=TV_ROI.level_eps, in_log=False)
    assert_equal(levels[clear], expected[clear], "torchvision levels")


# ================================================================================================ ROIAlign
@pytest.mark.clause("ROI.ALIGN_KNOWN")
@pytest.mark.parametrize("aligned", [True, False])
def test_ramp_known_values(impl, device, aligned):
    # d2-spec §3 (detectron2 tests/layers/test_roi_align.py): the 5x5 map 0..24, box (1, 1, 3, 3), 4x4 output,
    # scale 1, adaptive grid ceil(2 / 4) = 1 sample per bin at the bin centre; the map is linear (5y + x),
    # so each output is 5y + x at that centre. aligned: start 1 - 0.5 = 0.5, centres 0.75, 1.25, 1.75, 2.25;
    # not aligned: start 1, centres 1.25, 1.75, 2.25, 2.75.
    centres = torch.tensor([0.75, 1.25, 1.75, 2.25]) + (0.0 if aligned else 0.5)
    expected = 5 * centres[:, None] + centres[None, :]
    if aligned:
        assert expected[0].tolist() == [4.5, 5.0, 5.5, 6.0] and expected[3].tolist() == [12.0, 12.5, 13.0, 13.5]
    else:
        assert expected[0].tolist() == [7.5, 8.0, 8.5, 9.0] and expected[3].tolist() == [15.0, 15.5, 16.0, 16.5]
    # two images (image 1 = image 0 + 100) and two channels (channel 1 = 2 x channel 0): rows pick their image
    features = ramp(n=2, c=2)
    out = align(impl, device, features, T([[0, 1, 1, 3, 3], [1, 1, 1, 3, 3]], "cpu"), 4, 1.0, 0, aligned)
    full = torch.stack([torch.stack([expected, 2 * expected]), torch.stack([expected + 100, 2 * expected + 100])])
    assert_close(out, full.double(), "roi_align")


@pytest.mark.clause("ROI.ALIGN_EMPTY")
def test_empty_roi_and_empty_set(impl, device):
    features = ramp(c=3, h=10, w=10)
    # d2-spec §3: the zero-height box (3, 4, 5, 4), 7x7 output, adaptive grid: ceil(0 / 7) = 0 rows of
    # samples, sum 0 / max(0, 1) -> exactly 0 (not the value at y = 4).
    rois = T([[0, 3, 4, 5, 4], [0, 4, 3, 4, 5], [0, 6, 6, 6, 6]], "cpu")  # zero height, zero width, a point
    out = align(impl, device, features, rois, RES, 1.0, 0, True)
    assert torch.equal(out, torch.zeros(3, 3, RES, RES)), out.abs().amax(dim=(1, 2, 3))
    # aligned=False widens the ROI to one pixel: the same box then pools the map, not zeros
    out = align(impl, device, features, rois[:1], RES, 1.0, 0, False)
    assert (out > 0).all()
    # no ROIs at all: [0, C, 7, 7] (or the requested size), for either setting
    for aligned in (True, False):
        assert align(impl, device, features, torch.zeros(0, 5), RES, 0.25, 0, aligned).shape == (0, 3, RES, RES)
        assert align(impl, device, features, torch.zeros(0, 5), (2, 3), 1.0, 2, aligned).shape == (0, 3, 2, 3)


@pytest.mark.clause("ROI.ALIGN_OUT_OF_RANGE")
@pytest.mark.parametrize("box, sampling, expected", [
    # 4x4 map with f[y, x] = 1 + x (constant in y), scale 1, aligned=False, 1x1 output; y stays inside.
    # (-4, 0, 0, 4), 2x2 samples at x = -3, -1: x = -3 < -1 contributes 0; x = -1 is clamped to column 0
    # (value 1); both count: (0 + 1 + 0 + 1) / 4 = 0.5.
    ((-4, 0, 0, 4), 2, 0.5),
    ((-2, 1, 0, 2), 1, 1.0),   # one sample at x = -1 (not beyond the margin): clamped to column 0 -> 1
    ((-3, 1, 0, 2), 1, 0.0),   # one sample at x = -1.5 < -1 -> 0
    ((-1, 1, 0, 2), 1, 1.0),   # x = -0.5 is clamped to 0: the full value of column 0, not a blend with 0
    ((3, 1, 5, 2), 1, 4.0),    # x = 4 = W is inside the margin: snapped to column W - 1 = 3 -> 4
    ((2, 0, 6, 4), 2, 2.0),    # x = 3 -> 4 and x = 5 > W -> 0: (4 + 0 + 4 + 0) / 4 = 2
    ((4, 0, 8, 4), 2, 0.0),    # every sample beyond the map
    # (1, -4, 2, 0): y = -3 -> 0; y = -1 -> clamped to row 0; x = 1.25, 1.75 -> 2.25, 2.75: (2.25 + 2.75) / 4
    ((1, -4, 2, 0), 2, 1.25),
])
def test_out_of_range_samples(impl, device, box, sampling, expected):
    features = (1.0 + torch.arange(4.0)).expand(4, 4).reshape(1, 1, 4, 4).contiguous()
    out = align(impl, device, features, T([[0, *box]], "cpu"), 1, 1.0, sampling, False)
    assert_close(out.reshape(1), torch.tensor([expected], dtype=torch.float64), "roi_align")


@pytest.mark.clause("ROI.ALIGN_SAMPLING")
@pytest.mark.parametrize("axis", ["x", "y"])
def test_sampling_grid(impl, device, axis):
    # A map quadratic along one axis, f = t^2 (t = 0..4), so the sample positions show in the result: bilinear
    # interpolation between integer points gives ((t-.5)^2 + (t+.5)^2)/2 ... at half-integers, i.e. the mean of
    # the two neighbours. Box spanning t in [0, 4] and 1 pixel across, 1x1 output, aligned=False:
    # adaptive: ceil(4 / 1) = 4 samples at 0.5, 1.5, 2.5, 3.5 -> 0.5, 2.5, 6.5, 12.5 -> mean 5.5
    #           (and ceil(1 / 1) = 1 across, so the constant axis adds nothing);
    # sampling_ratio 2: samples at 1, 3 -> 1, 9 -> 5.0; sampling_ratio 1: sample at 2 -> 4.0;
    # aligned=True, adaptive: start -0.5, samples at 0, 1, 2, 3 -> 0, 1, 4, 9 -> 3.5.
    line = torch.arange(5.0) ** 2
    features = line.expand(2, 5).reshape(1, 1, 2, 5).contiguous()
    box = [0, 0, 0, 4, 1]
    if axis == "y":
        features = features.transpose(2, 3).contiguous()
        box = [0, 0, 0, 1, 4]
    rois = T([box], "cpu")
    for sampling, aligned, expected in [(0, False, 5.5), (2, False, 5.0), (1, False, 4.0), (-1, False, 5.5),
                                        (0, True, 3.5)]:
        out = align(impl, device, features, rois, 1, 1.0, sampling, aligned)
        assert_close(out.reshape(1), torch.tensor([expected], dtype=torch.float64), "roi_align",
                     f"sampling_ratio={sampling} aligned={aligned}")


_ALIGN_CASE = dict(
    n=st.integers(1, 2), c=st.integers(1, 3), h=st.integers(1, 9), w=st.integers(1, 9),
    scale=st.sampled_from([1.0, 0.5, 0.25, 0.125]), out=st.sampled_from([1, 2, 3, (2, 3), RES]),
    sampling=st.sampled_from([0, 2, 1]), aligned=st.booleans(), seed=st.integers(0, 2**16),
)


def _align_case(data):
    case = {k: data.draw(v, label=k) for k, v in _ALIGN_CASE.items()}
    features = torch.randn(case["n"], case["c"], case["h"], case["w"], generator=gen(case["seed"]),
                           dtype=torch.float64)
    rois = data.draw(S.rois(num_images=case["n"], map_size=(case["h"], case["w"]), spatial_scale=case["scale"]),
                     label="rois")
    return case, f32(features), f32(rois)


@pytest.mark.clause("ROI.ALIGN_SAMPLING", "ROI.ALIGN_OUT_OF_RANGE", "ROI.ALIGN_EMPTY")
@given(data=st.data())
def test_roi_align_matches_reference(impl, reference_impl, device, data):
    case, (f32_, f64), (r32, r64) = _align_case(data)
    args = (case["out"], case["scale"], case["sampling"], case["aligned"])
    expected = reference_impl.roi_align(f64, r64, *args)
    out = align(impl, device, f32_, r32, *args)
    keep = ~_ambiguous(r64, case["scale"], case["out"], case["sampling"], case["aligned"], case["h"], case["w"])
    assert_close(out[keep], expected[keep], "roi_align")


@pytest.mark.clause("ROI.ALIGN_SAMPLING", "ROI.ALIGN_OUT_OF_RANGE", "ROI.ALIGN_KNOWN")
@given(data=st.data())
def test_roi_align_matches_torchvision(impl, device, data):
    ops = pytest.importorskip("torchvision.ops")
    case, (f32_, f64), (r32, r64) = _align_case(data)
    args = (case["out"], case["scale"], case["sampling"], case["aligned"])
    expected = ops.roi_align(f64, r64, *args)  # torchvision in float64 on the float32-rounded inputs
    out = align(impl, device, f32_, r32, *args)
    keep = ~_ambiguous(r64, case["scale"], case["out"], case["sampling"], case["aligned"], case["h"], case["w"])
    assert_close(out[keep], expected[keep], "roi_align")


@pytest.mark.clause("ROI.ALIGN_ERRORS")
def test_roi_align_bad_input(impl, device):
    features = ramp(n=2, c=2).to(device)
    good = T([[0, 1, 1, 3, 3]], device)
    assert impl.roi_align(features, good, 2, 1.0, 0, True).shape == (1, 2, 2, 2)
    bad_rois = {
        "4 columns": T([[1, 1, 3, 3]], device),
        "6 columns": T([[0, 1, 1, 3, 3, 0]], device),
        "1-D": T([0, 1, 1, 3, 3], device),
        "batch index N": T([[2, 1, 1, 3, 3]], device),
        "negative batch index": T([[-1, 1, 1, 3, 3]], device),
        "NaN box": T([[0, 1, float("nan"), 3, 3]], device),
        "inf box": T([[0, 1, 1, float("inf"), 3]], device),
        "NaN batch index": T([[float("nan"), 1, 1, 3, 3]], device),
    }
    for what, rois in bad_rois.items():
        with pytest.raises((ValueError, TypeError)):
            impl.roi_align(features, rois, 2, 1.0, 0, True)
            pytest.fail(f"rois with {what} did not raise")
    for what, feats in {"3-D": features[0], "5-D": features[None], "2-D": features[0, 0]}.items():
        with pytest.raises((ValueError, TypeError)):
            impl.roi_align(feats, good, 2, 1.0, 0, True)
            pytest.fail(f"{what} features did not raise")


# ================================================================================================ the pooler
def pyramid(n: int, c: int, image: tuple[int, int], seed: int = 0, dtype=torch.float64) -> list[torch.Tensor]:
    """P2..P5 maps [n, c, image / stride] (image sides multiples of 32, as after padding)."""
    g = gen(seed)
    return [torch.randn(n, c, image[0] // s, image[1] // s, generator=g, dtype=dtype) for s in STRIDES]


def pool(impl, device, features, rois, **kw):
    out = impl.multilevel_roi_align([on(f, device) for f in features], on(rois, device), **kw)
    res = kw.get("output_size", RES)
    assert out.shape == (rois.shape[0], features[0].shape[1], res, res), out.shape
    assert out.dtype == features[0].dtype
    return cpu(out)


@pytest.mark.clause("ROI.POOLER_ORDER", "ROI.POOLER_LEVELS", "ROI.LEVELS")
@pytest.mark.parametrize("sampling, aligned", [(0, True), (2, False)])
def test_pooler_rows_and_levels_on_constant_maps(impl, device, sampling, aligned):
    # Map k of image b, channel ch is the constant 100 k + 10 b + ch, so a pooled value names the level and
    # image it came from (bilinear interpolation of a constant is the constant; every sample is in range).
    features = [torch.full((2, 2, 512 // s, 512 // s), 0.0) for s in STRIDES]
    for i, k in enumerate(range(2, 6)):
        for b in range(2):
            for ch in range(2):
                features[i][b, ch] = 100.0 * k + 10 * b + ch
    # Rows interleave the images and the levels: s = 50 -> P2, 150 -> P3, 250 -> P4, 500 -> P5,
    # 1000 (clamped, no P6) -> P5 (half outside: only its inner part is used below), 0-area -> P2.
    rows = [[1, 300, 300, 450, 450], [0, 10, 10, 60, 60], [1, 10, 10, 510, 510], [0, 0, 0, 250, 250],
            [1, 20, 40, 70, 90], [0, 5, 5, 505, 505], [0, 200, 100, 450, 350], [1, 100, 100, 250, 250]]
    levels = [3, 2, 5, 4, 2, 5, 4, 3]
    out = pool(impl, device, features, T(rows, "cpu"), sampling_ratio=sampling, aligned=aligned)
    expected = torch.stack([torch.stack([torch.full((RES, RES), 100.0 * k + 10 * r[0] + ch) for ch in range(2)])
                            for r, k in zip(rows, levels)])
    assert_close(out, expected.double(), "multilevel_roi_align")
    # a 1000-pixel box lands on P5 too (its samples beyond the map contribute 0, so check the bin in range)
    big = pool(impl, device, features, T([[1, 0, 0, 1000, 1000]], "cpu"), sampling_ratio=sampling, aligned=aligned)
    assert_close(big[0, :, 0, 0], torch.tensor([510.0, 511.0], dtype=torch.float64), "multilevel_roi_align")
    # no ROIs: [0, C, 7, 7]
    assert pool(impl, device, features, torch.zeros(0, 5)).shape == (0, 2, RES, RES)


def _pool_case(data, image=(128, 160)):
    n, c = data.draw(st.integers(1, 2), label="n"), data.draw(st.integers(1, 2), label="c")
    features = pyramid(n, c, image, seed=data.draw(st.integers(0, 2**16), label="seed"))
    boxes = data.draw(S.pyramid_boxes(max_n=8, max_origin=float(max(image))), label="boxes")
    batch = torch.tensor(data.draw(st.lists(st.integers(0, n - 1), min_size=boxes.shape[0],
                                            max_size=boxes.shape[0]), label="batch"), dtype=torch.float64)
    rois = torch.cat([batch[:, None], boxes], dim=1)
    return [f32(f) for f in features], f32(rois)


def _pool_ambiguous(rois64, features, sampling, aligned, eps=ROI.level_eps, in_log=ROI.level_eps_in_log):
    """Rows near a level boundary or near a ROIAlign discontinuity at their level."""
    levels, clear = oracle_levels(rois64[:, 1:], eps=eps, in_log=in_log)
    bad = ~clear
    for i, s in enumerate(STRIDES):
        rows = levels == i + 2
        h, w = features[i].shape[-2:]
        bad[rows] |= _ambiguous(rois64[rows], 1.0 / s, RES, sampling, aligned, h, w)
    return bad


@pytest.mark.clause("ROI.POOLER_ORDER", "ROI.POOLER_LEVELS")
@given(data=st.data(), mode=st.sampled_from([(0, True), (2, False), (2, True)]))
def test_pooler_matches_reference(impl, reference_impl, device, data, mode):
    features, (r32, r64) = _pool_case(data)
    sampling, aligned = mode
    expected = reference_impl.multilevel_roi_align([f for _, f in features], r64, RES, STRIDES, sampling, aligned)
    out = pool(impl, device, [f for f, _ in features], r32, output_size=RES, strides=STRIDES,
               sampling_ratio=sampling, aligned=aligned)
    keep = ~_pool_ambiguous(r64, [f for f, _ in features], sampling, aligned)
    assert_close(out[keep], expected[keep], "multilevel_roi_align")


@pytest.mark.clause("ROI.POOLER_LEVELS", "ROI.POOLER_ORDER")
@given(data=st.data())
def test_pooler_matches_torchvision_roi_align_per_level(impl, device, data):
    """detectron2 profile: each row equals torchvision.ops.roi_align on the level the spec formula gives it."""
    ops = pytest.importorskip("torchvision.ops")
    features, (r32, r64) = _pool_case(data)
    sampling, aligned = BOX.pooler_sampling_ratio, BOX.aligned  # 0, True (ROIAlignV2)
    out = pool(impl, device, [f for f, _ in features], r32)  # every argument at its spec default
    levels, _ = oracle_levels(r64[:, 1:])
    expected = torch.zeros(out.shape, dtype=torch.float64)
    for i, s in enumerate(STRIDES):
        rows = levels == i + 2
        expected[rows] = ops.roi_align(features[i][1], r64[rows], RES, 1.0 / s, sampling, aligned)
    keep = ~_pool_ambiguous(r64, [f for f, _ in features], sampling, aligned)
    assert_close(out[keep], expected[keep], "multilevel_roi_align")


@pytest.mark.clause("ROI.POOLER_LEVELS", "ROI.LEVEL_EPS_TORCHVISION")
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_torchvision_profile_matches_multiscale_roi_align(impl, device, seed):
    """torchvision profile (sampling 2, aligned=False, eps 1e-6 outside the log) vs MultiScaleRoIAlign.

    MultiScaleRoIAlign infers each level's scale from feature size / image size (rounded to a power of 2),
    so the image sizes are multiples of 32 and the maps exactly image / stride; it takes boxes per image and
    returns rows in the concatenated order, which is the order of our (batch index, box) rows.
    """
    ops = pytest.importorskip("torchvision.ops")
    image = (192, 256)
    g = gen(seed)
    features = [f32(f) for f in pyramid(2, 3, image, seed=seed)]
    boxes = []
    for n in (7, 5):  # sqrt(area) from 10 to 700: every level, some boxes past the image border
        xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * torch.tensor([256.0, 192.0]) - 20
        wh = torch.exp(torch.empty(n, 2, dtype=torch.float64).uniform_(math.log(10), math.log(700), generator=g))
        boxes.append(f32(torch.cat([xy, xy + wh], dim=1))[1])
    boxes[0][0] = torch.tensor([0.0, 0.0, 112.0, 112.0])  # exact boundary sizes: 112 -> P3, 224 -> P4
    boxes[1][0] = torch.tensor([10.0, 10.0, 234.0, 234.0])
    rois = torch.cat([torch.cat([torch.full((b.shape[0], 1), float(i), dtype=torch.float64), b], dim=1)
                      for i, b in enumerate(boxes)])
    pooler = ops.MultiScaleRoIAlign(["0", "1", "2", "3"], RES, TV_BOX.pooler_sampling_ratio)
    expected = pooler({str(i): f for i, (_, f) in enumerate(features)}, boxes, [image, image])
    out = pool(impl, device, [f for f, _ in features], rois.float(), output_size=RES, strides=STRIDES,
               sampling_ratio=TV_BOX.pooler_sampling_ratio, aligned=TV_BOX.aligned,
               canonical_box_size=TV_ROI.canonical_box_size, canonical_level=TV_ROI.canonical_level,
               eps=TV_ROI.level_eps, eps_in_log=TV_ROI.level_eps_in_log)
    keep = ~_pool_ambiguous(rois, [f for _, f in features], TV_BOX.pooler_sampling_ratio, TV_BOX.aligned,
                            eps=TV_ROI.level_eps, in_log=False)
    assert keep[0] and keep[7], "the boundary rows must be compared"
    assert_close(out[keep], expected[keep], "multilevel_roi_align")


@pytest.mark.clause("ROI.ALIGN_ERRORS", "ROI.POOLER_LEVELS")
def test_pooler_bad_input(impl, device):
    features = [f.float().to(device) for f in pyramid(1, 2, (64, 64))]
    rois = T([[0, 0, 0, 30, 30]], device)
    assert impl.multilevel_roi_align(features, rois).shape == (1, 2, RES, RES)
    with pytest.raises(ValueError):
        impl.multilevel_roi_align(features[:3], rois)  # 3 maps for the 4 strides
    with pytest.raises(ValueError):
        impl.multilevel_roi_align(features, T([[0, 0, 30, 30]], device))  # rois without a batch index
    with pytest.raises(ValueError):
        impl.multilevel_roi_align(features, T([[1, 0, 0, 30, 30]], device))  # image 1 of 1
    with pytest.raises(ValueError):
        impl.multilevel_roi_align(features, T([[0, 0, 0, float("nan"), 30]], device))
    with pytest.raises((ValueError, TypeError)):
        impl.multilevel_roi_align([f[0] for f in features], rois)  # 3-D maps
    with pytest.raises((ValueError, TypeError)):
        impl.multilevel_roi_align(features[:2] + [features[2][:, :1], features[3]], rois)  # channels differ
