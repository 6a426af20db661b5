"""Conformance: cell anchors and their placement on the feature-map grids. d2-spec §1.3, §2.3, §3."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from detspec.conformance._util import assert_close, cpu, f32
from spec import strategies as S
from spec.config import BASE_RCNN_FPN, TORCHVISION
from spec.tolerances import tolerance

ANCHORS = BASE_RCNN_FPN.anchors
STRIDES = ANCHORS.strides
SIZE_DIVISIBILITY = BASE_RCNN_FPN.input.size_divisibility
R2 = math.sqrt(2.0)


def cells_on(impl, device, sizes, ratios, round_to_int=False):
    """impl.cell_anchors (contract signature only) moved to the test device."""
    return impl.cell_anchors(sizes, ratios, round_to_int).to(device)


def level_cells(impl, device, profile=BASE_RCNN_FPN):
    a = profile.anchors
    return [cells_on(impl, device, s, r, a.round_cell_anchors) for s, r in zip(a.sizes, a.aspect_ratios)]


# ------------------------------------------------------------------------------------------- cell anchors
@pytest.mark.clause("ANCHOR.CELL_COUNT")
def test_fifteen_cell_anchors(impl, device):
    cells = level_cells(impl, device)
    # 5 levels (P2..P6) x 1 size x 3 ratios (0.5, 1, 2) = 15 cell anchors, 3 per level
    assert len(cells) == 5
    assert [tuple(c.shape) for c in cells] == [(3, 4)] * 5
    assert sum(c.shape[0] for c in cells) == 15 == ANCHORS.num_cell_anchors


# d2-spec §3 table. Size s, ratio a = h/w: w = sqrt(s^2 / a), h = a * w; the box is (-w/2, -h/2, w/2, h/2).
#   ratio 0.5: w = sqrt(2) s, h = s / sqrt(2)   -> (-s/sqrt2, -s/(2 sqrt2), s/sqrt2, s/(2 sqrt2))
#   ratio 1:   w = h = s                         -> (-s/2, -s/2, s/2, s/2)
#   ratio 2:   w = s / sqrt(2), h = sqrt(2) s    -> the ratio-0.5 box mirrored (x and y swapped)
# e.g. s = 32, a = 0.5: w = sqrt(1024 / 0.5) = 45.2548, h = 22.6274 -> (-22.6274, -11.3137, 22.6274, 11.3137).
CELL_TABLE = {
    32: [(-16 * R2, -8 * R2, 16 * R2, 8 * R2),          # (-22.6274, -11.3137, 22.6274, 11.3137)
         (-16, -16, 16, 16),
         (-8 * R2, -16 * R2, 8 * R2, 16 * R2)],         # (-11.3137, -22.6274, 11.3137, 22.6274)
    64: [(-32 * R2, -16 * R2, 32 * R2, 16 * R2),        # (-45.2548, -22.6274, 45.2548, 22.6274)
         (-32, -32, 32, 32),
         (-16 * R2, -32 * R2, 16 * R2, 32 * R2)],
    128: [(-64 * R2, -32 * R2, 64 * R2, 32 * R2),       # (-90.5097, -45.2548, 90.5097, 45.2548)
          (-64, -64, 64, 64),
          (-32 * R2, -64 * R2, 32 * R2, 64 * R2)],
    256: [(-128 * R2, -64 * R2, 128 * R2, 64 * R2),     # (-181.0193, -90.5097, 181.0193, 90.5097)
          (-128, -128, 128, 128),
          (-64 * R2, -128 * R2, 64 * R2, 128 * R2)],
    512: [(-256 * R2, -128 * R2, 256 * R2, 128 * R2),   # (-362.0387, -181.0193, 362.0387, 181.0193)
          (-256, -256, 256, 256),
          (-128 * R2, -256 * R2, 128 * R2, 256 * R2)],
}


@pytest.mark.clause("ANCHOR.CELL_SHAPE", "ANCHOR.CELL_ORDER")
@pytest.mark.parametrize("level", range(len(ANCHORS.sizes)))
def test_cell_anchors_known_values(impl, device, level):
    sizes, ratios = ANCHORS.sizes[level], ANCHORS.aspect_ratios[level]
    cells = impl.cell_anchors(sizes, ratios, ANCHORS.round_cell_anchors)
    assert cells.dtype == torch.float32
    expected = torch.tensor(CELL_TABLE[int(sizes[0])], dtype=torch.float64)
    assert_close(cells, expected, "cell_anchors")
    # the size-32 anchors, as d2-spec §3 prints them (4 decimals)
    if sizes[0] == 32:
        printed = torch.tensor([-22.6274, -11.3137, 22.6274, 11.3137], dtype=torch.float64)
        torch.testing.assert_close(cpu(cells)[0].double(), printed, rtol=0, atol=1e-4)


@pytest.mark.clause("ANCHOR.CELL_SHAPE")
@given(st.lists(st.floats(1.0, 1024.0, width=32), min_size=1, max_size=3),
       st.lists(st.floats(0.125, 8.0, width=32), min_size=1, max_size=4))
def test_cell_anchor_shape(impl, device, sizes, ratios):
    cells = cpu(impl.cell_anchors(sizes, ratios)).double()
    assert cells.shape == (len(sizes) * len(ratios), 4)
    w, h = cells[:, 2] - cells[:, 0], cells[:, 3] - cells[:, 1]
    s = torch.tensor(sizes, dtype=torch.float64).repeat_interleave(len(ratios))  # size-major
    a = torch.tensor(ratios, dtype=torch.float64).repeat(len(sizes))
    # centred at 0: x1 = -x2 and y1 = -y2 (float32 negation is exact)
    assert torch.equal(cells[:, 0], -cells[:, 2]) and torch.equal(cells[:, 1], -cells[:, 3])
    torch.testing.assert_close(w * h, s * s, rtol=1e-5, atol=0)  # area = s^2 (float32 rounding of w and h)
    torch.testing.assert_close(h / w, a, rtol=1e-5, atol=0)      # aspect ratio = h / w


@pytest.mark.clause("ANCHOR.CELL_ORDER", "ANCHOR.CELL_SHAPE")
def test_cell_anchors_size_major(impl, device):
    # detectron2's anchor test: sizes [32, 64], ratios [0.25, 1, 4]; row = size_index * 3 + ratio_index.
    # s = 32, a = 0.25: w = sqrt(1024 / 0.25) = 64, h = 16 -> (-32, -8, 32, 8); a = 4: w = 16, h = 64.
    # s = 64, a = 0.25: w = sqrt(4096 / 0.25) = 128, h = 32 -> (-64, -16, 64, 16); a = 4: w = 32, h = 128.
    cells = impl.cell_anchors([32.0, 64.0], [0.25, 1.0, 4.0], False)
    expected = torch.tensor([[-32, -8, 32, 8], [-16, -16, 16, 16], [-8, -32, 8, 32],
                             [-64, -16, 64, 16], [-32, -32, 32, 32], [-16, -64, 16, 64]], dtype=torch.float64)
    assert_close(cells, expected, "cell_anchors")


# torchvision rounds the same boxes (torch.round): 16 sqrt2 = 22.63 -> 23, 8 sqrt2 = 11.31 -> 11,
# 32 sqrt2 = 45.25 -> 45, 64 sqrt2 = 90.51 -> 91, 128 sqrt2 = 181.02 -> 181, 256 sqrt2 = 362.04 -> 362.
ROUNDED_TABLE = {
    32: [(-23, -11, 23, 11), (-16, -16, 16, 16), (-11, -23, 11, 23)],
    64: [(-45, -23, 45, 23), (-32, -32, 32, 32), (-23, -45, 23, 45)],
    128: [(-91, -45, 91, 45), (-64, -64, 64, 64), (-45, -91, 45, 91)],
    256: [(-181, -91, 181, 91), (-128, -128, 128, 128), (-91, -181, 91, 181)],
    512: [(-362, -181, 362, 181), (-256, -256, 256, 256), (-181, -362, 181, 362)],
}


@pytest.mark.clause("ANCHOR.CELL_ROUNDING")
def test_cell_anchor_rounding_by_profile(impl, device):
    assert TORCHVISION.anchors.round_cell_anchors and not BASE_RCNN_FPN.anchors.round_cell_anchors
    tv = [cpu(c) for c in level_cells(impl, device, TORCHVISION)]
    d2 = [cpu(c) for c in level_cells(impl, device, BASE_RCNN_FPN)]
    for sizes, tv_cells, d2_cells in zip(TORCHVISION.anchors.sizes, tv, d2):
        expected = torch.tensor(ROUNDED_TABLE[int(sizes[0])], dtype=tv_cells.dtype)
        assert torch.equal(tv_cells, expected), tv_cells
        assert torch.equal(tv_cells, tv_cells.round())                 # integers
        assert not torch.equal(d2_cells, d2_cells.round())             # detectron2 keeps 22.6274...
    # size 32, ratio 0.5: detectron2 (-22.6274, -11.3137, 22.6274, 11.3137), torchvision (-23, -11, 23, 11)
    assert torch.equal(tv[0][0], torch.tensor([-23.0, -11.0, 23.0, 11.0]))
    assert abs(float(d2[0][0, 0]) + 16 * R2) < 1e-4


@pytest.mark.clause("ANCHOR.CELL_SHAPE", "ANCHOR.CELL_ORDER", "ANCHOR.CELL_ROUNDING")
@given(st.lists(st.floats(1.0, 1024.0, width=32), min_size=1, max_size=3),
       st.lists(st.floats(0.125, 8.0, width=32), min_size=1, max_size=4), st.booleans())
def test_cell_anchors_match_reference(impl, reference_impl, device, sizes, ratios, round_to_int):
    expected = cpu(reference_impl.cell_anchors(sizes, ratios, False)).double()  # float32 values, unrounded
    actual = cpu(impl.cell_anchors(sizes, ratios, round_to_int))
    assert actual.shape == expected.shape
    if not round_to_int:
        assert_close(actual, expected, "cell_anchors")
        return
    # Rounded: exactly round(value). Within 1e-4 of a half-way point either neighbour is accepted, since the
    # float32 value itself may fall on either side of .5 depending on the operation order.
    frac = expected.abs() - expected.abs().floor()
    near_half = (frac - 0.5).abs() < 1e-4
    a = actual.double()
    assert torch.equal(a[~near_half], expected.round()[~near_half]), (a, expected)
    assert torch.equal(a[near_half].abs(), a[near_half].abs().round())
    assert ((a[near_half] - expected[near_half]).abs() <= 0.5 + 1e-4).all()


# ------------------------------------------------------------------------------------------- grid anchors
@pytest.mark.clause("ANCHOR.GRID_ORDER", "ANCHOR.OFFSET")
def test_grid_anchors_detectron2_example(impl, device):
    # detectron2 tests/modeling/test_anchor_generator.py: sizes [32, 64], ratios [0.25, 1, 4], stride 4,
    # one 1x2 feature map. The 6 cell anchors are at x = 0 first, then shifted by +stride = +4 in x at x = 1.
    cells = cells_on(impl, device, [32.0, 64.0], [0.25, 1.0, 4.0])
    cell_rows = [[-32, -8, 32, 8], [-16, -16, 16, 16], [-8, -32, 8, 32],
                 [-64, -16, 64, 16], [-32, -32, 32, 32], [-16, -64, 16, 64]]
    x1_rows = [[-28, -8, 36, 8], [-12, -16, 20, 16], [-4, -32, 12, 32],  # (x=1): + (4, 0, 4, 0)
               [-60, -16, 68, 16], [-28, -32, 36, 32], [-12, -64, 20, 64]]
    expected = torch.tensor(cell_rows + x1_rows, dtype=torch.float64)
    (out,) = impl.grid_anchors([(1, 2)], [4], [cells], ANCHORS.offset)  # the config offset, 0.0
    assert out.shape == (12, 4) and out.device == cells.device
    assert_close(out, expected, "grid_anchors")
    # offset 0.5 (the AnchorGenerator class default): centres move by 0.5 * stride = +2 in x and y,
    # e.g. anchor 0 (-32, -8, 32, 8) -> (-30, -6, 34, 10)
    (half,) = impl.grid_anchors([(1, 2)], [4], [cells], 0.5)
    assert_close(half, expected + 2.0, "grid_anchors")
    torch.testing.assert_close(cpu(half)[0].double(), torch.tensor([-30.0, -6.0, 34.0, 10.0],
                               dtype=torch.float64), rtol=0, atol=0)


@pytest.mark.clause("ANCHOR.OFFSET")
@given(st.integers(1, 12), st.integers(1, 12), st.sampled_from(range(len(STRIDES))))
def test_config_offset_centres_on_grid_points(impl, device, h, w, level):
    cells = cells_on(impl, device, ANCHORS.sizes[level], ANCHORS.aspect_ratios[level])
    stride = STRIDES[level]
    (explicit,) = impl.grid_anchors([(h, w)], [stride], [cells], ANCHORS.offset)
    (default,) = impl.grid_anchors([(h, w)], [stride], [cells])  # the default offset is the config's
    assert torch.equal(cpu(explicit), cpu(default))
    out = cpu(explicit).double()
    num_a = cells.shape[0]
    idx = torch.arange(out.shape[0])
    x, y = (idx // num_a) % w, idx // (num_a * w)
    # offset 0.0: the centre of every anchor at grid point (y, x) is (x * stride, y * stride), up to the
    # float32 rounding of the corners (the grid_anchors tolerance)
    rtol, atol = tolerance("grid_anchors", explicit.dtype)
    torch.testing.assert_close((out[:, 0] + out[:, 2]) / 2, (x * stride).double(), rtol=rtol, atol=atol)
    torch.testing.assert_close((out[:, 1] + out[:, 3]) / 2, (y * stride).double(), rtol=rtol, atol=atol)


@pytest.mark.clause("ANCHOR.GRID_ORDER", "ANCHOR.OFFSET")
@given(st.integers(1, 40), st.integers(1, 40), st.sampled_from(range(len(STRIDES))),
       st.one_of(st.sampled_from([ANCHORS.offset, 0.5]), st.floats(0.0, 1.0, width=32)), st.data())
def test_grid_order(impl, device, h, w, level, offset, data):
    """anchors[(y * W + x) * A + a] == cell[a] + (x S + o S, y S + o S, x S + o S, y S + o S)."""
    cells = cells_on(impl, device, ANCHORS.sizes[level], ANCHORS.aspect_ratios[level])
    stride = STRIDES[level]
    (out,) = impl.grid_anchors([(h, w)], [stride], [cells], offset)
    num_a = cells.shape[0]
    assert out.shape == (h * w * num_a, 4) and out.dtype == cells.dtype
    positions = data.draw(st.lists(st.tuples(st.integers(0, h - 1), st.integers(0, w - 1),
                                             st.integers(0, num_a - 1)), min_size=1, max_size=10))
    c64 = cpu(cells).double()
    for y, x, a in positions:
        sx, sy = x * stride + offset * stride, y * stride + offset * stride
        expected = c64[a] + torch.tensor([sx, sy, sx, sy], dtype=torch.float64)
        assert_close(cpu(out)[(y * w + x) * num_a + a], expected, "grid_anchors", f"at y={y} x={x} a={a}")


@pytest.mark.clause("ANCHOR.PER_LEVEL_COUNT", "ANCHOR.GRID_ORDER")
@given(S.image_sizes(max_side=700), st.sampled_from([ANCHORS.offset, 0.5]))
def test_grid_anchors_match_reference(impl, reference_impl, device, image_size, offset):
    """Differential: the implementation's float32 grids against the reference's, run on the same float32 cells
    in float64."""
    feature_sizes = S.feature_sizes_for(image_size, STRIDES, SIZE_DIVISIBILITY)
    cells = [f32(reference_impl.cell_anchors(s, r)) for s, r in zip(ANCHORS.sizes, ANCHORS.aspect_ratios)]
    expected = reference_impl.grid_anchors(feature_sizes, STRIDES, [c64 for _, c64 in cells], offset)
    actual = impl.grid_anchors(feature_sizes, STRIDES, [c32.to(device) for c32, _ in cells], offset)
    assert len(actual) == len(expected) == len(STRIDES)
    for lvl, (a, e) in enumerate(zip(actual, expected)):
        assert a.dtype == torch.float32
        assert_close(a, e, "grid_anchors", f"level {lvl}")


# ------------------------------------------------------------------------------------------- counts
# Padded sizes (multiples of 32) -> level sizes H/4 .. H/32 and P6 = ceil(H5 / 2):
#   800x1199 -> 800x1216: 200x304 + 100x152 + 50x76 + 25x38 + 13x19 = 80,997 locations -> 242,991 anchors
#   800x1067 -> 800x1088: 200x272 + 100x136 + 50x68 + 25x34 + 13x17 = 72,471 -> 217,413
#   667x1333 -> 672x1344: 168x336 + 84x168 + 42x84 + 21x42 + 11x21 = 75,201 -> 225,603
#   1024x1024: 256^2 + 128^2 + 64^2 + 32^2 + 16^2 = 87,296 -> 261,888
#   1x1 -> 32x32: 8x8 + 4x4 + 2x2 + 1x1 + 1x1 = 86 -> 258
KNOWN_TOTALS = [((800, 1199), 242_991), ((800, 1067), 217_413), ((667, 1333), 225_603),
                ((1024, 1024), 261_888), ((1, 1), 258)]


@pytest.mark.clause("ANCHOR.PER_LEVEL_COUNT")
@pytest.mark.parametrize("image_size, total", KNOWN_TOTALS)
def test_anchor_totals_known_sizes(impl, device, image_size, total):
    feature_sizes = S.feature_sizes_for(image_size, STRIDES, SIZE_DIVISIBILITY)
    levels = impl.grid_anchors(feature_sizes, STRIDES, level_cells(impl, device), ANCHORS.offset)
    for (h, w), lvl in zip(feature_sizes, levels):
        assert lvl.shape == (ANCHORS.anchors_per_location * h * w, 4)
    assert sum(lvl.shape[0] for lvl in levels) == total


@pytest.mark.clause("ANCHOR.PER_LEVEL_COUNT")
@given(S.image_sizes())
def test_per_level_count(impl, device, image_size):
    """Any image size, multiples of 32 or not: level i has 3 * Hi * Wi anchors."""
    feature_sizes = S.feature_sizes_for(image_size, STRIDES, SIZE_DIVISIBILITY)
    levels = impl.grid_anchors(feature_sizes, STRIDES, level_cells(impl, device), ANCHORS.offset)
    assert len(levels) == len(STRIDES)
    for (h, w), lvl in zip(feature_sizes, levels):
        assert lvl.shape == (3 * h * w, 4)


@pytest.mark.clause("ANCHOR.PER_LEVEL_COUNT")
def test_empty_feature_map(impl, device):
    cells = level_cells(impl, device)[:2]
    levels = impl.grid_anchors([(0, 5), (3, 0)], STRIDES[:2], cells, ANCHORS.offset)
    assert [tuple(lvl.shape) for lvl in levels] == [(0, 4), (0, 4)]


@pytest.mark.clause("ANCHOR.TOTAL_800X1216", "ANCHOR.PER_LEVEL_COUNT", "ANCHOR.GRID_ORDER")
def test_800x1216(impl, device):
    feature_sizes = S.feature_sizes_for((800, 1216), STRIDES, SIZE_DIVISIBILITY)
    # 800/4 x 1216/4 = 200x304, then 100x152, 50x76, 25x38; P6 = ceil(25/2) x ceil(38/2) = 13x19
    assert feature_sizes == [(200, 304), (100, 152), (50, 76), (25, 38), (13, 19)]
    assert [h * w for h, w in feature_sizes] == [60800, 15200, 3800, 950, 247]  # sum 80,997
    cells = level_cells(impl, device)
    levels = impl.grid_anchors(feature_sizes, STRIDES, cells, ANCHORS.offset)
    assert [lvl.shape[0] for lvl in levels] == [182400, 45600, 11400, 2850, 741]  # 3 x locations
    assert sum(lvl.shape[0] for lvl in levels) == 242_991
    # the last anchor: P6 (stride 64), y = 12, x = 18, ratio 2 -> shift (18*64, 12*64) = (1152, 768)
    # + (-128 sqrt2, -256 sqrt2, 128 sqrt2, 256 sqrt2) = (970.9807, 405.9613, 1333.0193, 1130.0387)
    last = torch.tensor([1152 - 128 * R2, 768 - 256 * R2, 1152 + 128 * R2, 768 + 256 * R2],
                        dtype=torch.float64)
    assert_close(levels[-1][-1], last, "grid_anchors")
    # the first P3 anchor sits at the origin: (-32 sqrt2, -16 sqrt2, 32 sqrt2, 16 sqrt2)
    assert_close(levels[1][0], torch.tensor(CELL_TABLE[64][0], dtype=torch.float64), "grid_anchors")


# ------------------------------------------------------------------------------------------- bad input
@pytest.mark.clause("ANCHOR.ERRORS")
@pytest.mark.parametrize("sizes, ratios, arg", [
    ([0.0], [1.0], "sizes"),
    ([-32.0], [1.0], "sizes"),
    ([32.0, float("nan")], [1.0], "sizes"),
    ([32.0], [0.0], "ratios"),
    ([32.0], [0.5, -1.0], "ratios"),
    ([], [1.0], "sizes"),
    ([32.0], [], "aspect_ratios"),
])
def test_cell_anchors_reject_bad_input(impl, device, sizes, ratios, arg):
    with pytest.raises((ValueError, TypeError), match=arg):
        impl.cell_anchors(sizes, ratios, False)


@pytest.mark.clause("ANCHOR.ERRORS")
def test_grid_anchors_reject_bad_input(impl, device):
    cells = level_cells(impl, device)
    with pytest.raises((ValueError, TypeError), match="feature_sizes"):  # 2 feature sizes, 5 strides
        impl.grid_anchors([(2, 2), (1, 1)], STRIDES, cells, ANCHORS.offset)
    with pytest.raises((ValueError, TypeError), match="cell_anchors"):  # 5 sizes and strides, 4 cell sets
        impl.grid_anchors([(2, 2)] * 5, STRIDES, cells[:4], ANCHORS.offset)
    with pytest.raises((ValueError, TypeError), match="strides"):
        impl.grid_anchors([(2, 2)] * 5, STRIDES[:3], cells, ANCHORS.offset)
    with pytest.raises(ValueError, match="feature[ _]sizes"):
        impl.grid_anchors([(-1, 2)], STRIDES[:1], cells[:1], ANCHORS.offset)
    with pytest.raises(ValueError, match="feature[ _]sizes"):
        impl.grid_anchors([(2, -3)], STRIDES[:1], cells[:1], ANCHORS.offset)
    with pytest.raises((ValueError, TypeError), match="cell[ _]anchors"):  # [A, 3], not [A, 4]
        impl.grid_anchors([(2, 2)], STRIDES[:1], [cells[0][:, :3]], ANCHORS.offset)
