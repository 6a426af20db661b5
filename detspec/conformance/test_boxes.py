"""Conformance: boxes (area, IoU, clip, nonempty) and the box-delta transform. d2-spec §2.4, §2.7."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from detspec.conformance._util import assert_close, assert_equal, cpu, f32, on
from spec import strategies as S
from spec.config import BASE_RCNN_FPN, SCALE_CLAMP

RPN_WEIGHTS = BASE_RCNN_FPN.rpn.box_coder.weights
ROI_WEIGHTS = BASE_RCNN_FPN.box_head.box_coder.weights


def T(rows, device, dtype=torch.float32):
    return torch.tensor(rows, dtype=dtype, device=device)


# ------------------------------------------------------------------------------------------- IoU known values
@pytest.mark.clause("BOX.IOU_NO_PLUS_ONE")
def test_iou_no_plus_one(impl, device):
    # (0,0,10,10) and (5,0,15,10): inter = 5*10 = 50; union = 100 + 100 - 50 = 150 -> 1/3.
    # With the legacy +1 widths it would be 6*11 / (121 + 121 - 66) = 66/176 = 0.375.
    iou = impl.pairwise_iou(T([[0, 0, 10, 10]], device), T([[5, 0, 15, 10]], device))
    assert iou.shape == (1, 1)
    assert_close(iou, torch.tensor([[1 / 3]], dtype=torch.float64), "pairwise_iou")


@pytest.mark.clause("BOX.IOU_ZERO_NO_OVERLAP")
def test_iou_exactly_zero_without_overlap(impl, device):
    a = T([[0, 0, 10, 10], [0, 0, 0, 0], [3, 3, 3, 3]], device)
    b = T([[10, 0, 20, 10],   # touches a[0] along x = 10: no area in common
           [0, 10, 10, 20],   # touches along y = 10
           [50, 50, 60, 60],  # far away
           [0, 0, 0, 0],      # an empty box identical to a[1]: 0/0 must be 0, not NaN
           [3, 3, 3, 3]], device)
    iou = cpu(impl.pairwise_iou(a, b))
    assert iou.shape == (3, 5)
    assert torch.equal(iou, torch.zeros(3, 5)), iou  # exactly zero, and no NaN


@pytest.mark.clause("BOX.IOU_RANGE")
@given(S.boxes(max_n=12), S.boxes(max_n=12))
def test_iou_range_and_symmetry(impl, device, a, b):
    iou_ab = cpu(impl.pairwise_iou(on(a, device), on(b, device)))
    iou_ba = cpu(impl.pairwise_iou(on(b, device), on(a, device)))
    assert iou_ab.shape == (a.shape[0], b.shape[0])
    assert not torch.isnan(iou_ab).any()
    assert (iou_ab >= 0).all() and (iou_ab <= 1).all()
    assert torch.equal(iou_ab, iou_ba.t())
    self_iou = cpu(impl.pairwise_iou(on(a, device), on(a, device)))
    nonempty = (a[:, 2] > a[:, 0]) & (a[:, 3] > a[:, 1])
    assert torch.equal(self_iou.diagonal()[nonempty], torch.ones(int(nonempty.sum()), dtype=self_iou.dtype))


@pytest.mark.clause("BOX.IOU_NO_PLUS_ONE", "BOX.IOU_RANGE")
@given(S.boxes(max_n=15), S.boxes(max_n=15))
def test_iou_matches_reference_float64(impl, reference_impl, device, a, b):
    """Differential: the implementation in float32 against the reference in float64 (same input values)."""
    (a32, a64), (b32, b64) = f32(a), f32(b)
    expected = reference_impl.pairwise_iou(a64, b64)
    actual = impl.pairwise_iou(on(a32, device), on(b32, device))
    assert actual.dtype == torch.float32
    assert_close(actual, expected, "pairwise_iou")


@pytest.mark.clause("BOX.IOU_NO_PLUS_ONE", "BOX.IOU_RANGE")
@given(S.boxes(min_n=1, max_n=30, nonempty=True), S.boxes(min_n=1, max_n=30, nonempty=True))
def test_iou_matches_torchvision(impl, device, a, b):
    """Cross-check against torchvision.ops.box_iou (non-empty boxes: torchvision gives NaN for 0/0)."""
    tv_ops = pytest.importorskip("torchvision.ops")
    (a32, a64), (b32, b64) = f32(a), f32(b)
    expected = tv_ops.box_iou(a64, b64)  # float64, independent implementation
    actual = impl.pairwise_iou(on(a32, device), on(b32, device))
    assert_close(actual, expected, "pairwise_iou")


# ------------------------------------------------------------------------------------------- area, clip, nonempty
@pytest.mark.clause("BOX.AREA")
def test_area(impl, device):
    # (x2 - x1) * (y2 - y1): 10*20 = 200; 0.5*4 = 2; a zero-width box has area 0.
    area = impl.box_area(T([[0, 0, 10, 20], [1, 1, 1.5, 5], [3, 3, 3, 9]], device))
    assert_close(area, torch.tensor([200.0, 2.0, 0.0], dtype=torch.float64), "box_area")


@pytest.mark.clause("BOX.CLIP")
def test_clip(impl, device):
    # image (h, w) = (50, 100): x in [0, 100], y in [0, 50]
    boxes = T([[-5, -5, 20, 20], [90, 40, 120, 60], [10, 10, 20, 20], [-10, 60, -1, 70]], device)
    out = cpu(impl.clip_boxes(boxes, (50, 100)))
    expected = torch.tensor([[0, 0, 20, 20], [90, 40, 100, 50], [10, 10, 20, 20], [0, 50, 0, 50]],
                            dtype=torch.float32)
    assert torch.equal(out, expected), out


@pytest.mark.clause("BOX.CLIP")
@given(S.boxes(max_n=20), S.image_sizes())
def test_clip_stays_inside(impl, device, boxes, size):
    out = cpu(impl.clip_boxes(on(boxes, device, torch.float32), size))
    h, w = size
    assert out.shape == boxes.shape
    assert (out[:, 0::2] >= 0).all() and (out[:, 0::2] <= w).all()
    assert (out[:, 1::2] >= 0).all() and (out[:, 1::2] <= h).all()
    inside = (boxes[:, 0] >= 0) & (boxes[:, 1] >= 0) & (boxes[:, 2] <= w) & (boxes[:, 3] <= h)
    assert torch.equal(out[inside], boxes[inside].float())  # boxes already inside are unchanged


@pytest.mark.clause("BOX.NONEMPTY")
def test_nonempty_is_strict(impl, device):
    boxes = T([[0, 0, 1, 1], [0, 0, 0, 5], [0, 0, 5, 0], [0, 0, 2, 2], [0, 0, 0.5, 3]], device)
    assert_equal(impl.nonempty(boxes), torch.tensor([True, False, False, True, True]), "nonempty(t=0)")
    # threshold 1: width > 1 and height > 1 (strict), so a 1x1 box is empty
    assert_equal(impl.nonempty(boxes, 1.0), torch.tensor([False, False, False, True, False]), "nonempty(t=1)")


# ------------------------------------------------------------------------------------------- encode / decode
@pytest.mark.clause("BOX.ENCODE", "BOX.WEIGHTS")
def test_encode_known_values(impl, device):
    # src (0,0,10,20) -> tgt (0,0,20,20), weights (10,10,5,5): centres (5,10) -> (10,10):
    # dx = 10*(10-5)/10 = 5, dy = 0, dw = 5*ln(20/10) = 5 ln 2 = 3.4657359, dh = 5*ln(20/20) = 0.
    d = impl.encode_boxes(T([[0, 0, 10, 20]], device), T([[0, 0, 20, 20]], device), ROI_WEIGHTS)
    assert_close(d, torch.tensor([[5.0, 0.0, 5 * math.log(2), 0.0]], dtype=torch.float64), "encode_boxes")
    # anchor (-16,-16,16,16) -> GT (0,0,32,32): centre 0 -> 16, size 32 -> 32:
    # RPN weights (1,1,1,1): (16/32, 16/32, 0, 0) = (0.5, 0.5, 0, 0); ROI weights: (5, 5, 0, 0).
    a, g = T([[-16, -16, 16, 16]], device), T([[0, 0, 32, 32]], device)
    assert_close(impl.encode_boxes(a, g, RPN_WEIGHTS), torch.tensor([[0.5, 0.5, 0, 0]], dtype=torch.float64),
                 "encode_boxes")
    assert_close(impl.encode_boxes(a, g, ROI_WEIGHTS), torch.tensor([[5.0, 5.0, 0, 0]], dtype=torch.float64),
                 "encode_boxes")


@pytest.mark.clause("BOX.ENCODE")
@given(S.boxes(min_n=1, max_n=20, nonempty=True), S.boxes(min_n=1, max_n=20, nonempty=True),
       st.sampled_from([RPN_WEIGHTS, ROI_WEIGHTS]))
def test_encode_matches_reference_float64(impl, reference_impl, device, src, tgt, weights):
    n = min(src.shape[0], tgt.shape[0])
    (s32, s64), (t32, t64) = f32(src[:n]), f32(tgt[:n])
    expected = reference_impl.encode_boxes(s64, t64, weights)
    actual = cpu(impl.encode_boxes(on(s32, device), on(t32, device), weights)).double()
    # float32 error bound, derived per element rather than a fixed atol: widths, heights and centres are
    # differences of coordinates up to C = max|coord|, so each carries an absolute rounding error of a few
    # eps*C (eps = 2^-23). dx = wx * dcx / w_s then errs by ~wx * eps * C / w_s, and dw = ww * ln(w_t / w_s)
    # by ~ww * eps * C * (1/w_t + 1/w_s). A factor 8 covers the handful of roundings on each path.
    eps = torch.finfo(torch.float32).eps
    c = torch.maximum(s64.abs().amax(dim=1), t64.abs().amax(dim=1))  # [N]
    w = torch.tensor(weights, dtype=torch.float64)
    s_wh, t_wh = s64[:, 2:] - s64[:, :2], t64[:, 2:] - t64[:, :2]
    bound_ctr = w[:2] * 8 * eps * c[:, None] / s_wh
    bound_size = w[2:] * 8 * eps * c[:, None] * (1 / s_wh + 1 / t_wh)
    bound = torch.cat([bound_ctr, bound_size], dim=1) + 8 * eps * expected.abs() + 1e-6
    err = (actual - expected).abs()
    assert (err <= bound).all(), f"encode error {err.max():.3g} exceeds the float32 bound at {(err > bound).nonzero()}"


@pytest.mark.clause("BOX.DECODE_INVERSE")
@given(S.boxes(min_n=1, max_n=20, nonempty=True), S.boxes(min_n=1, max_n=20, nonempty=True),
       st.sampled_from([RPN_WEIGHTS, ROI_WEIGHTS]))
def test_decode_inverts_encode(impl, device, src, tgt, weights):
    n = min(src.shape[0], tgt.shape[0])
    src, tgt = on(src[:n], device, torch.float64), on(tgt[:n], device, torch.float64)
    deltas = impl.encode_boxes(src, tgt, weights)
    inside = (deltas[:, 2:] / torch.tensor(weights[2:], dtype=deltas.dtype, device=device)).abs() <= SCALE_CLAMP
    inside = cpu(inside.all(dim=1))
    back = cpu(impl.decode_boxes(deltas, src, weights, SCALE_CLAMP))
    torch.testing.assert_close(back[inside], cpu(tgt)[inside], rtol=1e-9, atol=1e-6)


@pytest.mark.clause("BOX.DECODE_CLAMP")
def test_decode_clamps_dw_dh_from_above_only(impl, device):
    box = T([[0, 0, 10, 10]], device)  # centre (5, 5), size 10
    big = T([[3.0, -2.0, 10.0, 10.0]], device)  # dw, dh far above the clamp; dx, dy are not clamped
    out = cpu(impl.decode_boxes(big, box, RPN_WEIGHTS, SCALE_CLAMP))[0].double()
    # size = exp(log(1000/16)) * 10 = 625; centre = (5 + 3*10, 5 - 2*10) = (35, -15)
    expected = torch.tensor([35 - 312.5, -15 - 312.5, 35 + 312.5, -15 + 312.5], dtype=torch.float64)
    assert_close(out.float(), expected, "decode_boxes")
    # no lower clamp: dw = -5 and dh = -8 lie below -log(1000/16) = -4.135 and are applied as they are
    centred = T([[-5, -5, 5, 5]], device)  # centre 0, size 10
    out = cpu(impl.decode_boxes(T([[0.0, 0.0, -5.0, -8.0]], device), centred, RPN_WEIGHTS, SCALE_CLAMP))[0]
    w, h = 10 * math.exp(-5), 10 * math.exp(-8)  # 0.0674 and 0.00335; a lower clamp would give 0.160
    expected = torch.tensor([-w / 2, -h / 2, w / 2, h / 2], dtype=torch.float64)
    assert_close(out, expected, "decode_boxes")


@pytest.mark.clause("BOX.DECODE_INTERLEAVED", "BOX.WEIGHTS")
def test_decode_class_interleaved(impl, device):
    # One box, K = 3 classes with weights (10,10,5,5). Class c's deltas sit in columns 4c..4c+3.
    box = T([[0, 0, 10, 20]], device)  # centre (5, 10), size (10, 20)
    deltas = T([[0, 0, 0, 0,            # class 0: the box itself
                 10, 0, 0, 0,           # class 1: dx = 10/10 = 1 -> centre x += 1 * 10
                 0, 0, 5 * math.log(2), 0]], device)  # class 2: dw = ln 2 -> width 20
    out = cpu(impl.decode_boxes(deltas, box, ROI_WEIGHTS, SCALE_CLAMP))
    assert out.shape == (1, 12)
    expected = torch.tensor([[0, 0, 10, 20, 10, 0, 20, 20, -5, 0, 15, 20]], dtype=torch.float64)
    assert_close(out, expected, "decode_boxes")


@pytest.mark.clause("BOX.DECODE_INTERLEAVED", "BOX.DECODE_CLAMP")
@given(S.boxes(min_n=1, max_n=10, nonempty=True), st.integers(1, 4), st.integers(0, 2**31 - 1))
def test_decode_matches_reference_float64(impl, reference_impl, device, boxes, k, seed):
    g = torch.Generator().manual_seed(seed)
    deltas = torch.randn(boxes.shape[0], 4 * k, generator=g, dtype=torch.float64) * 3  # some beyond the clamp
    (d32, d64), (b32, b64) = f32(deltas), f32(boxes)
    expected = reference_impl.decode_boxes(d64, b64, ROI_WEIGHTS, SCALE_CLAMP)
    actual = impl.decode_boxes(on(d32, device), on(b32, device), ROI_WEIGHTS, SCALE_CLAMP)
    assert actual.shape == (boxes.shape[0], 4 * k)
    assert_close(actual, expected, "decode_boxes")


# ------------------------------------------------------------------------------------------- empty and bad input
@pytest.mark.clause("BOX.EMPTY")
def test_empty_boxes(impl, device):
    empty = torch.zeros(0, 4, device=device)
    some = T([[0, 0, 1, 1], [2, 2, 3, 3]], device)
    assert impl.pairwise_iou(empty, some).shape == (0, 2)
    assert impl.pairwise_iou(some, empty).shape == (2, 0)
    assert impl.box_area(empty).shape == (0,)
    assert impl.clip_boxes(empty, (10, 10)).shape == (0, 4)
    assert impl.nonempty(empty).shape == (0,)
    assert impl.encode_boxes(empty, empty, RPN_WEIGHTS).shape == (0, 4)
    assert impl.decode_boxes(torch.zeros(0, 8, device=device), empty, ROI_WEIGHTS, SCALE_CLAMP).shape == (0, 8)


@pytest.mark.clause("BOX.ERRORS")
@pytest.mark.parametrize("bad, arg", [
    ([[0, 0, 1]], "boxes1"),                              # 3 columns
    ([[0, 0, 1, 1, 1]], "boxes1"),                        # 5 columns
    ([0, 0, 1, 1], "boxes1"),                             # 1-D
    ([[0, 0, float("nan"), 1]], "boxes1"),                # NaN
    ([[0, 0, float("inf"), 1]], "boxes1"),                # inf
    ([[5, 0, 1, 1]], "boxes1"),                           # x2 < x1
    ([[0, 5, 1, 1]], "boxes1"),                           # y2 < y1
])
def test_iou_rejects_bad_boxes(impl, device, bad, arg):
    with pytest.raises((ValueError, TypeError), match=arg):
        impl.pairwise_iou(torch.tensor(bad, device=device), T([[0, 0, 1, 1]], device))


@pytest.mark.clause("BOX.ERRORS")
def test_box_functions_reject_bad_types(impl, device):
    good = T([[0, 0, 1, 1]], device)
    with pytest.raises(TypeError, match="boxes1"):
        impl.pairwise_iou(torch.tensor([[0, 0, 1, 1]], device=device), good)  # int64 boxes
    with pytest.raises(TypeError, match="boxes1"):
        impl.pairwise_iou([[0, 0, 1, 1]], good)  # a list, not a tensor
    with pytest.raises(ValueError, match="boxes"):
        impl.clip_boxes(T([[0, 0, float("nan"), 1]], device), (10, 10))
    with pytest.raises(ValueError, match="src"):
        impl.encode_boxes(T([[0, 0, 0, 1]], device), good, RPN_WEIGHTS)  # zero-width source box
    with pytest.raises(ValueError, match="shape"):
        impl.encode_boxes(good, T([[0, 0, 1, 1], [0, 0, 2, 2]], device), RPN_WEIGHTS)
    with pytest.raises(ValueError, match="deltas"):
        impl.decode_boxes(T([[0, 0, 0]], device), good, RPN_WEIGHTS, SCALE_CLAMP)  # not a multiple of 4
    with pytest.raises(ValueError, match="rows"):
        impl.decode_boxes(T([[0, 0, 0, 0], [0, 0, 0, 0]], device), good, RPN_WEIGHTS, SCALE_CLAMP)
    with pytest.raises(ValueError, match="weights"):
        impl.encode_boxes(good, good, (1.0, 1.0, 0.0, 1.0))
