"""Conformance: the matcher (GT assignment, fg / bg / ignore labels) and the fused IoU + match. d2-spec §2.5."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from detspec.conformance._util import assert_equal, cpu, f32, on
from spec import strategies as S
from spec.config import BASE_RCNN_FPN

RPN = BASE_RCNN_FPN.rpn
ROI = BASE_RCNN_FPN.roi_heads
ANCHORS = BASE_RCNN_FPN.anchors
# (thresholds, labels, allow_low_quality_matches)
RPN_CFG = (RPN.iou_thresholds, RPN.iou_labels, RPN.allow_low_quality_matches)  # (0.3, 0.7), (0, -1, 1), True
ROI_CFG = (ROI.iou_thresholds, ROI.iou_labels, ROI.allow_low_quality_matches)  # (0.5,), (0, 1), False
CONFIGS = [RPN_CFG, ROI_CFG, (RPN.iou_thresholds, RPN.iou_labels, False),
           (ROI.iou_thresholds, ROI.iou_labels, True)]
DTYPES = [torch.float32, torch.float64]


def T(rows, device, dtype=torch.float32):
    return torch.tensor(rows, dtype=dtype, device=device)


def below(x: float, dtype: torch.dtype) -> float:
    """The largest `dtype` number below x (rounded to `dtype` first)."""
    t = torch.tensor(x, dtype=dtype)
    return torch.nextafter(t, torch.zeros((), dtype=dtype)).item()


def check_types(matches, labels, num_pred):
    assert matches.dtype == torch.int64 and labels.dtype == torch.int8
    assert matches.shape == (num_pred,) and labels.shape == (num_pred,)


def assert_indices(actual, expected, quality, what="matches"):
    """Matched GT indices: exact, except where a prediction's best quality is shared by several GT.

    Tie rule: torch.max does not document which of several equal maxima it returns (first on CPU in practice,
    d2-spec §2.5), so where a column's max is attained by more than one GT any GT index whose quality equals
    the column max is accepted. Everywhere else the index must be exactly the (unique) argmax.
    """
    __tracebackhide__ = True
    a, e, q = cpu(actual), cpu(expected), cpu(quality)
    assert a.dtype == torch.int64, a.dtype
    if q.shape[0] == 0 or q.shape[1] == 0:
        assert_equal(a, e, what)
        return
    col_max = q.max(dim=0).values
    tied = (q == col_max).sum(dim=0) > 1
    assert_equal(a[~tied], e[~tied], what + " (unique column maxima)")
    cols = tied.nonzero().flatten()
    at = a[tied]
    assert ((at >= 0) & (at < q.shape[0])).all(), f"{what}: out of range at tied columns {cols.tolist()}"
    assert torch.equal(q[at, cols], col_max[tied]), f"{what}: tied columns {cols.tolist()} got {at.tolist()}"


def oracle_labels(q: torch.Tensor, thresholds, labels, allow_low_quality) -> torch.Tensor:
    """Labels from the spec text: the label of the half-open interval [low, high) holding each column max,
    thresholds compared in the quality tensor's dtype; then the low-quality rule (exact ties of a GT's max)."""
    best = q.max(dim=0).values
    out = torch.full(best.shape, labels[0], dtype=torch.int8)
    for t, lab in zip(thresholds, labels[1:]):  # thresholds ascending: the last interval reached wins
        out[best >= torch.tensor(t, dtype=q.dtype)] = lab
    if allow_low_quality:
        out[(q == q.max(dim=1, keepdim=True).values).any(dim=0)] = 1
    return out


# ------------------------------------------------------------------------------------------- known values
@pytest.mark.clause("MATCH.EXAMPLE", "MATCH.LOW_QUALITY", "MATCH.ARGMAX")
@pytest.mark.parametrize("dtype", DTYPES)
def test_detectron2_example(impl, device, dtype):
    q = T([[0.15, 0.45, 0.2, 0.6],    # GT0: best 0.6 at prediction 3
           [0.3, 0.65, 0.05, 0.1],    # GT1: best 0.65 at prediction 1
           [0.05, 0.4, 0.25, 0.4]],   # GT2: best 0.4 at predictions 1 and 3 (a tie)
          device, dtype)
    matches, labels = impl.match(q, *RPN_CFG)
    check_types(matches, labels, 4)
    # column maxima: 0.3 (GT1) -> [0.3, 0.7): -1; 0.65 (GT1) -> -1; 0.25 (GT2) -> < 0.3: 0; 0.6 (GT0) -> -1.
    # low quality: prediction 1 holds GT1's (and GT2's) best, prediction 3 GT0's (and GT2's): both become 1.
    assert_equal(matches, torch.tensor([1, 1, 2, 0]), "matches")
    assert_equal(labels, torch.tensor([-1, 1, 0, 1], dtype=torch.int8), "labels")


@pytest.mark.clause("MATCH.THRESHOLDS", "MATCH.HALF_OPEN")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("low_quality", [RPN.allow_low_quality_matches, False])
def test_rpn_threshold_boundaries(impl, device, dtype, low_quality):
    lo, hi = RPN.iou_thresholds  # 0.3, 0.7
    # labels (0, -1, 1): [0, 0.3) -> 0, [0.3, 0.7) -> -1, [0.7, inf) -> 1.
    # Values are compared with the thresholds in the quality tensor's dtype, as detectron2's `q >= 0.7` does
    # in torch: in float32, "exactly 0.7" is float32(0.7) = 0.699999988, and it takes the upper label.
    values = [hi, below(hi, dtype), lo, below(lo, dtype), 0.0, 1.0, 0.5]
    expected = [1, -1, -1, 0, 0, 1, -1]
    # a single GT: its best (1.0) is already foreground, so the low-quality rule changes nothing here
    matches, labels = impl.match(T([values], device, dtype), RPN.iou_thresholds, RPN.iou_labels, low_quality)
    check_types(matches, labels, len(values))
    assert_equal(labels, torch.tensor(expected, dtype=torch.int8), f"labels of {values}")
    assert_equal(matches, torch.zeros(len(values), dtype=torch.int64), "matches")


@pytest.mark.clause("MATCH.HALF_OPEN")
def test_threshold_compared_in_quality_dtype(impl, device):
    # float32(0.7) = 0.699999988079071 stored in a float64 tensor is below the float64 threshold 0.7: -1.
    # The same number in a float32 tensor equals float32(0.7), the threshold in float32: 1.
    v = torch.tensor(RPN.iou_thresholds[1], dtype=torch.float32).item()
    _, l64 = impl.match(T([[v, 1.0]], device, torch.float64), RPN.iou_thresholds, RPN.iou_labels, False)
    _, l32 = impl.match(T([[v, 1.0]], device, torch.float32), RPN.iou_thresholds, RPN.iou_labels, False)
    assert_equal(l64, torch.tensor([-1, 1], dtype=torch.int8), "labels (float64 quality)")
    assert_equal(l32, torch.tensor([1, 1], dtype=torch.int8), "labels (float32 quality)")


@pytest.mark.clause("MATCH.CONFIGURABLE", "MATCH.HALF_OPEN")
@pytest.mark.parametrize("dtype", DTYPES)
def test_roi_configuration(impl, device, dtype):
    (t,) = ROI.iou_thresholds  # 0.5 with labels (0, 1): < 0.5 -> background 0, >= 0.5 -> foreground 1
    q = T([[t, below(t, dtype), 0.2, 0.0],
           [0.0, 0.0, 0.3, 0.0]],  # GT1's best is 0.3 at prediction 2
          device, dtype)
    matches, labels = impl.match(q, *ROI_CFG)
    check_types(matches, labels, 4)
    # column maxima 0.5 (GT0), 0.4999.. (GT0), 0.3 (GT1), 0 (tie) -> 1, 0, 0, 0; no low-quality rule for ROI
    # heads, so prediction 2 stays background although it is GT1's best
    assert_equal(labels, torch.tensor([1, 0, 0, 0], dtype=torch.int8), "labels")
    assert_indices(matches, torch.tensor([0, 0, 1, 0]), q)
    # the same thresholds with the low-quality rule switched on: prediction 2 becomes foreground
    _, labels_lq = impl.match(q, ROI.iou_thresholds, ROI.iou_labels, True)
    assert_equal(labels_lq, torch.tensor([1, 0, 1, 0], dtype=torch.int8), "labels (low quality on)")


@pytest.mark.clause("MATCH.CONFIGURABLE", "MATCH.HALF_OPEN")
def test_other_thresholds_and_labels(impl, device):
    # four intervals: [0, 0.2) -> 1, [0.2, 0.4) -> 0, [0.4, 0.6) -> -1, [0.6, inf) -> 1
    q = T([[0.1, 0.2, 0.5, 0.6, 0.39, 0.95]], device, torch.float64)
    _, labels = impl.match(q, (0.2, 0.4, 0.6), (1, 0, -1, 1), False)
    assert_equal(labels, torch.tensor([1, 0, -1, 1, 0, 1], dtype=torch.int8), "labels")
    # equal thresholds make an empty interval: [0.5, 0.5) holds nothing, 0.5 takes the upper label
    _, labels = impl.match(T([[0.49, 0.5, 0.7]], device), (0.5, 0.5), (0, -1, 1), False)
    assert_equal(labels, torch.tensor([0, 1, 1], dtype=torch.int8), "labels (equal thresholds)")


@pytest.mark.clause("MATCH.LOW_QUALITY", "MATCH.ARGMAX")
@pytest.mark.parametrize("dtype", DTYPES)
def test_low_quality_changes_label_not_index(impl, device, dtype):
    q = T([[0.5, 0.2, 0.0, 0.5, 0.5],    # GT0: best 0.5 at predictions 0, 3 and 4 (ties)
           [0.6, 0.65, 0.1, 0.52, 0.0]],  # GT1: best 0.65 at prediction 1
          device, dtype)
    matches, labels = impl.match(q, *RPN_CFG)
    check_types(matches, labels, 5)
    # argmax per column: GT1 (0.6), GT1 (0.65), GT1 (0.1), GT1 (0.52), GT0 (0.5). Without the low-quality rule
    # the labels are -1, -1, 0, -1, -1. Predictions 0, 3 and 4 tie GT0's best and 1 holds GT1's best: all
    # become 1, but 0 and 3 stay matched to GT1 (their argmax), not to GT0 (which made them positive).
    assert_equal(matches, torch.tensor([1, 1, 1, 1, 0]), "matches")
    assert_equal(labels, torch.tensor([1, 1, 0, 1, 1], dtype=torch.int8), "labels")
    m_off, l_off = impl.match(q, RPN.iou_thresholds, RPN.iou_labels, False)
    assert_equal(m_off, matches, "matches (low quality off)")
    assert_equal(l_off, torch.tensor([-1, -1, 0, -1, -1], dtype=torch.int8), "labels (low quality off)")


@pytest.mark.clause("MATCH.LOW_QUALITY")
@pytest.mark.parametrize("dtype", DTYPES)
def test_gt_whose_best_is_zero(impl, device, dtype):
    # GT1 overlaps nothing: its best quality is 0, and every prediction ties it (IoU 0 == 0), so the
    # low-quality rule makes every prediction foreground (detectron2's behaviour, d2-spec §2.5 corner case).
    q = T([[0.8, 0.0, 0.1, 0.2],
           [0.0, 0.0, 0.0, 0.0]], device, dtype)
    matches, labels = impl.match(q, *RPN_CFG)
    check_types(matches, labels, 4)
    assert_equal(labels, torch.ones(4, dtype=torch.int8), "labels")
    assert_indices(matches, torch.tensor([0, 0, 0, 0]), q)  # prediction 1: a 0 / 0 tie, either GT
    # without the rule: 0.8 -> 1, 0 -> 0, 0.1 -> 0, 0.2 -> 0
    _, labels = impl.match(q, RPN.iou_thresholds, RPN.iou_labels, False)
    assert_equal(labels, torch.tensor([1, 0, 0, 0], dtype=torch.int8), "labels (low quality off)")
    # once GT1 overlaps something (best 1e-3 at prediction 1), only that prediction is promoted
    q2 = T([[0.8, 0.0, 0.1], [0.0, 1e-3, 0.0]], device, dtype)
    _, labels = impl.match(q2, *RPN_CFG)
    assert_equal(labels, torch.tensor([1, 1, 0], dtype=torch.int8), "labels")


@pytest.mark.clause("MATCH.EMPTY")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", [RPN_CFG, ROI_CFG, ((0.5,), (-1, 1), True)],
                         ids=["rpn", "roi", "ignore-first"])
def test_empty(impl, device, dtype, cfg):
    thresholds, labels, low_quality = cfg
    m, lab = impl.match(torch.zeros(0, 5, dtype=dtype, device=device), *cfg)  # no GT: index 0, labels[0]
    check_types(m, lab, 5)
    assert_equal(m, torch.zeros(5, dtype=torch.int64), "matches")
    assert_equal(lab, torch.full((5,), labels[0], dtype=torch.int8), "labels")
    for shape in [(3, 0), (0, 0)]:  # no predictions: empty outputs
        m, lab = impl.match(torch.zeros(shape, dtype=dtype, device=device), *cfg)
        check_types(m, lab, 0)


# ------------------------------------------------------------------------------------------- properties
@pytest.mark.clause("MATCH.ARGMAX", "MATCH.HALF_OPEN", "MATCH.THRESHOLDS", "MATCH.LOW_QUALITY")
@given(S.quality_matrices(min_g=1, min_p=1), st.sampled_from(CONFIGS), st.sampled_from(DTYPES))
def test_match_follows_the_spec(impl, device, q, cfg, dtype):
    """Independent oracle: argmax per column (with the tie rule), interval labels in the quality's dtype."""
    q = q.to(dtype)
    matches, labels = impl.match(on(q, device), *cfg)
    check_types(matches, labels, q.shape[1])
    assert_indices(matches, q.max(dim=0).indices, q)
    assert_equal(labels, oracle_labels(q, *cfg), "labels")


@pytest.mark.clause("MATCH.ARGMAX", "MATCH.HALF_OPEN", "MATCH.THRESHOLDS", "MATCH.LOW_QUALITY", "MATCH.EMPTY",
                    "MATCH.CONFIGURABLE")
@given(S.quality_matrices(), st.sampled_from(CONFIGS), st.sampled_from(DTYPES))
def test_match_matches_reference(impl, reference_impl, device, q, cfg, dtype):
    """Differential: labels exactly equal to the reference's on the same tensor (same dtype); indices with the
    tie rule of assert_indices."""
    q = q.to(dtype)
    expected_m, expected_l = reference_impl.match(q, *cfg)
    matches, labels = impl.match(on(q, device), *cfg)
    check_types(matches, labels, q.shape[1])
    assert_equal(labels, expected_l, "labels")
    assert_indices(matches, expected_m, q)


# ------------------------------------------------------------------------------------------- fused IoU+match
@pytest.mark.clause("MATCH.FUSED_IOU")
@given(S.boxes(max_n=12), S.boxes(max_n=40), st.sampled_from(CONFIGS))
def test_iou_match_equals_iou_then_match(impl, reference_impl, device, gt, boxes, cfg):
    """iou_match(gt, boxes) == reference match(reference pairwise_iou(gt, boxes)) exactly, on float32 boxes
    (S.boxes copies and jitters boxes, so exact IoU ties are common)."""
    (gt32, _), (b32, _) = f32(gt), f32(boxes)
    iou = reference_impl.pairwise_iou(gt32, b32)
    expected_m, expected_l = reference_impl.match(iou, *cfg)
    matches, labels = impl.iou_match(on(gt32, device), on(b32, device), *cfg)
    check_types(matches, labels, boxes.shape[0])
    assert_equal(labels, expected_l, "labels")
    assert_indices(matches, expected_m, iou)


@pytest.mark.clause("MATCH.FUSED_IOU", "MATCH.LOW_QUALITY")
@given(st.integers(0, 2**31 - 1), st.integers(1, 48))
def test_iou_match_on_a_real_anchor_set(impl, reference_impl, device, seed, num_gt):
    """The RPN case at scale: all anchors of a 192x256 input (12,276 of them, many with equal IoU to a GT by
    symmetry) against integer GT boxes, some of them copies of anchors. With more than ~20 GT the IoU matrix
    has over 2^18 entries, which a memory-bounded implementation has to process in several chunks."""
    feature_sizes = S.feature_sizes_for((192, 256), ANCHORS.strides, BASE_RCNN_FPN.input.size_divisibility)
    cells = [reference_impl.cell_anchors(s, r) for s, r in zip(ANCHORS.sizes, ANCHORS.aspect_ratios)]
    anchors = torch.cat(reference_impl.grid_anchors(feature_sizes, ANCHORS.strides, cells, ANCHORS.offset))
    assert anchors.shape[0] == 12_276  # 3 x (48x64 + 24x32 + 12x16 + 6x8 + 3x4)
    g = torch.Generator().manual_seed(seed)
    xy = torch.randint(-20, 240, (num_gt, 2), generator=g).float()
    wh = torch.randint(1, 240, (num_gt, 2), generator=g).float()
    gt = torch.cat([xy, xy + wh], dim=1)
    copies = torch.randint(0, anchors.shape[0], (num_gt // 4,), generator=g)
    gt[: copies.numel()] = anchors[copies]  # a GT identical to an anchor: IoU 1, and exact ties elsewhere
    iou = reference_impl.pairwise_iou(gt, anchors)
    expected_m, expected_l = reference_impl.match(iou, *RPN_CFG)
    matches, labels = impl.iou_match(on(gt, device), on(anchors, device), *RPN_CFG)
    check_types(matches, labels, anchors.shape[0])
    assert_equal(labels, expected_l, "labels")
    assert_indices(matches, expected_m, iou)


@pytest.mark.clause("MATCH.FUSED_IOU", "MATCH.EMPTY")
def test_iou_match_empty(impl, device):
    anchors = T([[0, 0, 10, 10], [5, 5, 20, 20], [0, 0, 0, 0]], device)
    for cfg in [RPN_CFG, ROI_CFG]:
        m, lab = impl.iou_match(torch.zeros(0, 4, device=device), anchors, *cfg)  # an image without GT
        check_types(m, lab, 3)
        assert_equal(m, torch.zeros(3, dtype=torch.int64), "matches")
        assert_equal(lab, torch.full((3,), cfg[1][0], dtype=torch.int8), "labels")
        m, lab = impl.iou_match(anchors, torch.zeros(0, 4, device=device), *cfg)
        check_types(m, lab, 0)


# ------------------------------------------------------------------------------------------- bad input
GOOD = [[0.5, 0.2], [0.1, 0.9]]


@pytest.mark.clause("MATCH.ERRORS")
@pytest.mark.parametrize("quality, arg", [
    (lambda d: torch.tensor([[1, 0], [0, 1]], device=d), "quality"),                   # int64
    (lambda d: torch.tensor([[True, False]], device=d), "quality"),                    # bool
    (lambda d: GOOD, "quality"),                                                       # a list
    (lambda d: torch.zeros(2, 2, 2, device=d), "quality"),                             # 3-D
    (lambda d: torch.zeros(4, device=d), "quality"),                                   # 1-D
    (lambda d: T([[0.5, float("nan")]], d), "quality"),                                # NaN
    (lambda d: T([[0.5, float("inf")]], d), "quality"),                                # inf
    (lambda d: T([[0.5, -0.1]], d), "quality"),                                        # negative
], ids=["int64", "bool", "list", "3d", "1d", "nan", "inf", "negative"])
def test_match_rejects_bad_quality(impl, device, quality, arg):
    with pytest.raises((ValueError, TypeError), match=arg):
        impl.match(quality(device), *RPN_CFG)


@pytest.mark.clause("MATCH.ERRORS")
@pytest.mark.parametrize("thresholds, labels, arg", [
    ((0.7, 0.3), (0, -1, 1), "thresholds"),      # not ascending
    ((0.3, 0.7), (0, 1), "labels"),              # one label too few
    ((0.5,), (0, -1, 1), "labels"),              # one label too many
    ((0.5,), (0, 2), "labels"),                  # a label outside {-1, 0, 1}
])
def test_match_rejects_bad_thresholds_and_labels(impl, device, thresholds, labels, arg):
    with pytest.raises((ValueError, TypeError), match=arg):
        impl.match(T(GOOD, device), thresholds, labels, False)


@pytest.mark.clause("MATCH.ERRORS")
def test_iou_match_rejects_bad_input(impl, device):
    good = T([[0, 0, 10, 10]], device)
    # the message names the argument: gt_boxes or boxes
    with pytest.raises((ValueError, TypeError), match="gt_boxes"):
        impl.iou_match(T([[0, 0, float("nan"), 1]], device), good, *RPN_CFG)
    with pytest.raises((ValueError, TypeError), match="boxes"):
        impl.iou_match(good, torch.tensor([[0, 0, 1, 1]], device=device), *RPN_CFG)  # int64 boxes
    with pytest.raises((ValueError, TypeError), match="boxes"):
        impl.iou_match(good, T([[5, 0, 1, 1]], device), *RPN_CFG)  # x2 < x1
    with pytest.raises((ValueError, TypeError), match="thresholds"):
        impl.iou_match(good, good, (0.7, 0.3), RPN.iou_labels, True)
    with pytest.raises((ValueError, TypeError), match="labels"):
        impl.iou_match(good, good, RPN.iou_thresholds, (0, 1), True)
