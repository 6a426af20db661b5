"""Conformance in low precision (issue 16): ``detspec check --impl NAME --dtype bf16`` (or fp16).

Collected only under ``--dtype bf16|fp16`` (marker ``low_precision``; an fp32 run deselects this file and runs
the rest of the suite). Every test rounds its inputs to the run's dtype, gives the rounded tensors to the
implementation (modules run under their ``autocast_dtype`` where the constructor takes one, else under
``torch.autocast``), and compares with detspec's reference run in float64 on the same rounded values:

- continuous outputs by the ratio rule (PRECISION.RATIO_RULE, spec.tolerances.ratio_rule_check): the error is at
  most RATIO_RULE_FACTOR x the error of the reference run naively in the low dtype, plus a floor of
  spec.tolerances.RATIO_FLOORS;
- discrete outputs (kept indices, labels, levels, classes, ranks) by the discrete-margin rule
  (PRECISION.DISCRETE_MARGIN, spec.tolerances.within_discrete_margin): a difference from the float64 reference
  is accepted only where the reference's own margin is within the low-precision tolerance, and then the test
  records it (``precision.accept``) and is reported "pass (within precision)".

Sizes are small (2 CPU cores): one 64x64 image through ResNet-50 + FPN, a 4x32x32 clip through the reduced
MViT-B 16x4 of test_mvit.py, one 64x64 image through the detector. The float64 and naive reference runs are
computed once per module, shared by every implementation.
"""

from __future__ import annotations

import inspect
import math
from contextlib import nullcontext
from dataclasses import replace

import pytest
import torch
from torch.overrides import TorchFunctionMode

from detspec.conformance._util import (
    assert_ratio_rule,
    check_levels,
    check_match,
    check_nms_selection,
    cpu,
    low,
    randomize_parameters,
    spec_iou,
)
from detspec.evaluation import reproduced_fraction
from detspec.impls import NotImplementedComponent
from spec.config import BASE_RCNN_FPN
from spec.mvit import MVIT_B_16X4
from spec.mvit_det import MVITV2_T_DET
from spec.tolerances import DTYPE_TOLERANCES, discrete_tolerance, within_discrete_margin

pytestmark = pytest.mark.low_precision

RPN, ROI, BOX, INF = BASE_RCNN_FPN.rpn, BASE_RCNN_FPN.roi_heads, BASE_RCNN_FPN.box_head, BASE_RCNN_FPN.inference
# level k starts at sqrt(area) = canonical_box_size x 2^(k - canonical_level): 112 (P3), 224 (P4), 448 (P5)
LEVEL_BOUNDARIES = {k: ROI.canonical_box_size * 2.0 ** (k - ROI.canonical_level)
                    for k in range(ROI.min_level + 1, ROI.max_level + 1)}
SMALL_V1 = replace(MVIT_B_16X4, temporal_size=4, spatial_size=(32, 32))  # as test_mvit.py: a 2x8x8 patch grid


# ------------------------------------------------------------------------------------------------ helpers
def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _boxes(n: int, seed: int, extent: float = 800.0, min_side: float = 4.0, max_side: float = 300.0) -> torch.Tensor:
    """n float64 XYXY boxes: corners uniform in [0, extent), sides log-uniform in [min_side, max_side]."""
    g = _gen(seed)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * extent
    wh = torch.exp(math.log(min_side) + torch.rand(n, 2, generator=g, dtype=torch.float64)
                   * (math.log(max_side) - math.log(min_side)))
    return torch.cat([xy, xy + wh], dim=1)


def _clustered(n: int, seed: int, clusters: int = 8, extent: float = 600.0) -> torch.Tensor:
    """n float64 boxes in a few clusters of similar boxes, so that pairwise IoUs spread over (0, 1)."""
    g = _gen(seed)
    # sides <= 150 (x 1.15 jitter): areas and their sums stay below fp16's largest value, 65504
    centres = _boxes(clusters, seed + 1, extent=extent, min_side=20.0, max_side=150.0)
    pick = torch.randint(0, clusters, (n,), generator=g)
    base = centres[pick]
    size = (base[:, 2:] - base[:, :2]).repeat(1, 2)
    jitter = (torch.rand(n, 4, generator=g, dtype=torch.float64) - 0.5) * 0.3 * size
    out = base + jitter
    return torch.cat([torch.minimum(out[:, :2], out[:, 2:] - 1), torch.maximum(out[:, 2:], out[:, :2] + 1)], dim=1)


def _clip(boxes: torch.Tensor, h: float, w: float) -> torch.Tensor:
    x = boxes[..., 0::2].clamp(0, w)
    y = boxes[..., 1::2].clamp(0, h)
    return torch.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], dim=-1)


def _he_state(template: dict, seed: int) -> dict:
    """template's keys and shapes with seeded values: conv/linear weights He-scaled, FrozenBN weight and
    running_var in [0.5, 1.5), biases and running_mean ~ N(0, 0.1)."""
    g = _gen(seed)
    out = {}
    for key, t in template.items():
        shape = tuple(t.shape)
        if key.endswith(("norm.weight", "norm.running_var")):
            out[key] = torch.rand(shape, generator=g) + 0.5
        elif key.endswith(("norm.bias", "norm.running_mean", ".bias")):
            out[key] = torch.randn(shape, generator=g) * 0.1
        elif len(shape) >= 2:
            out[key] = torch.randn(shape, generator=g) * math.sqrt(2.0 / (shape[0] * math.prod(shape[2:])))
        else:
            out[key] = t.clone()
    return out


def _autocast(dtype: torch.dtype):
    """torch.autocast on the CPU in dtype (the implementation's module runs inside it)."""
    return torch.autocast("cpu", dtype=dtype)


def _takes_autocast(cls) -> bool:
    try:
        return "autocast_dtype" in inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return False


def _naive(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """The reference module with every parameter and buffer cast to the low dtype: the naive computation."""
    return module.to(dtype)


# ================================================================================================ boxes
@pytest.mark.clause("PRECISION.IOU", "PRECISION.RATIO_RULE")
@pytest.mark.parametrize("seed", [0, 1])
def test_pairwise_iou_ratio_rule(impl, reference_impl, precision, device, seed):
    dt = precision.dtype
    a_low, a64 = low(_clustered(64, seed), dt)
    b_low, b64 = low(_clustered(48, seed + 10), dt)
    actual = impl.pairwise_iou(a_low.to(device), b_low.to(device))
    ref64 = reference_impl.pairwise_iou(a64, b64)
    naive = reference_impl.pairwise_iou(a_low, b_low)
    assert_ratio_rule(cpu(actual), naive, ref64, "pairwise_iou", dt)


@pytest.mark.clause("PRECISION.BOX_CODER", "PRECISION.RATIO_RULE")
@pytest.mark.parametrize("weights", [RPN.box_coder.weights, BOX.box_coder.weights])
def test_encode_boxes_ratio_rule(impl, reference_impl, precision, device, weights):
    dt = precision.dtype
    src_low, src64 = low(_boxes(200, 3, min_side=8.0), dt)
    tgt_low, tgt64 = low(_boxes(200, 4, min_side=8.0), dt)
    actual = impl.encode_boxes(src_low.to(device), tgt_low.to(device), weights)
    ref64 = reference_impl.encode_boxes(src64, tgt64, weights)
    naive = reference_impl.encode_boxes(src_low, tgt_low, weights)
    assert_ratio_rule(cpu(actual), naive, ref64, "encode_boxes", dt)


@pytest.mark.clause("PRECISION.BOX_CODER", "PRECISION.RATIO_RULE")
@pytest.mark.parametrize("weights, k", [(RPN.box_coder.weights, 1), (BOX.box_coder.weights, 3)])
def test_decode_boxes_ratio_rule(impl, reference_impl, precision, device, weights, k):
    dt = precision.dtype
    g = _gen(5)
    boxes_low, boxes64 = low(_boxes(150, 6, min_side=8.0), dt)
    scale = torch.tensor(weights, dtype=torch.float64).repeat(k)
    # dx, dy ~ U(-0.5, 0.5) and dw, dh ~ U(-2, 5) (some above the clamp log(1000/16)) in units of the weights
    raw = torch.rand(150, 4 * k, generator=g, dtype=torch.float64)
    raw[:, 0::4] -= 0.5
    raw[:, 1::4] -= 0.5
    raw[:, 2::4] = raw[:, 2::4] * 7 - 2
    raw[:, 3::4] = raw[:, 3::4] * 7 - 2
    deltas_low, deltas64 = low(raw * scale, dt)
    clamp = RPN.box_coder.scale_clamp
    actual = impl.decode_boxes(deltas_low.to(device), boxes_low.to(device), weights, clamp)
    ref64 = reference_impl.decode_boxes(deltas64, boxes64, weights, clamp)
    naive = reference_impl.decode_boxes(deltas_low, boxes_low, weights, clamp)
    assert_ratio_rule(cpu(actual), naive, ref64, "decode_boxes", dt)


# ================================================================================================ NMS
def _nms_data(seed: int, dt: torch.dtype, n: int = 150):
    boxes_low, boxes64 = low(_clustered(n, seed, clusters=10), dt)
    scores_low, scores64 = low(torch.rand(n, generator=_gen(seed + 100), dtype=torch.float64), dt)
    return boxes_low, boxes64, scores_low, scores64


@pytest.mark.clause("PRECISION.NMS", "PRECISION.DISCRETE_MARGIN")
@pytest.mark.parametrize("threshold", [INF.nms_thresh, RPN.nms_thresh])
@pytest.mark.parametrize("seed", [0, 1])
def test_nms_discrete_margin(impl, reference_impl, precision, device, threshold, seed):
    dt = precision.dtype
    boxes_low, boxes64, scores_low, scores64 = _nms_data(seed, dt)
    keep = cpu(impl.nms(boxes_low.to(device), scores_low.to(device), threshold))
    keep64 = reference_impl.nms(boxes64, scores64, threshold)
    notes = check_nms_selection(keep, keep64, boxes64, scores64, threshold, dt, what="nms")
    if notes:
        precision.accept(f"nms at {threshold:g}", notes)


@pytest.mark.clause("PRECISION.NMS", "PRECISION.DISCRETE_MARGIN")
@pytest.mark.parametrize("seed", [2, 3])
def test_batched_nms_discrete_margin(impl, reference_impl, precision, device, seed):
    dt = precision.dtype
    boxes_low, boxes64, scores_low, scores64 = _nms_data(seed, dt)
    groups = torch.randint(0, 3, (len(boxes64),), generator=_gen(seed + 7))
    threshold = INF.nms_thresh
    keep = cpu(impl.batched_nms(boxes_low.to(device), scores_low.to(device), groups.to(device), threshold))
    keep64 = reference_impl.batched_nms(boxes64, scores64, groups, threshold)
    notes = check_nms_selection(keep, keep64, boxes64, scores64, threshold, dt, groups=groups, what="batched_nms")
    if notes:
        precision.accept("batched_nms", notes)


# ================================================================================================ matcher
@pytest.mark.clause("PRECISION.MATCH", "PRECISION.DISCRETE_MARGIN")
@pytest.mark.parametrize("seed", [0, 1])
def test_match_discrete_margin(impl, reference_impl, precision, device, seed):
    """Qualities are IoUs of boxes around 6 GTs (rounded to the dtype), plus planted values next to 0.3 and 0.7:
    the low dtype's rounding of the thresholds (bf16(0.7) = 0.69921875) decides those within the margin."""
    dt = precision.dtype
    gt = _boxes(6, seed, extent=500.0, min_side=40.0, max_side=200.0)
    boxes = torch.cat([_clustered(180, seed + 20, clusters=6, extent=500.0), gt + 3.0])
    q = spec_iou(gt, boxes)
    eps = torch.finfo(dt).eps
    planted = torch.tensor([0.3, 0.7, 0.3 * (1 - eps), 0.7 * (1 - eps), 0.3 * (1 + eps), 0.7 * (1 + eps)],
                           dtype=torch.float64)
    q[:, :len(planted)] = planted
    q_low, q64 = low(q, dt)
    thresholds, labels = list(RPN.iou_thresholds), list(RPN.iou_labels)
    matches, lab = impl.match(q_low.to(device), thresholds, labels, RPN.allow_low_quality_matches)
    matches64, lab64 = reference_impl.match(q64, thresholds, labels, RPN.allow_low_quality_matches)
    notes = check_match(matches, lab, matches64, lab64, q64, thresholds, labels, RPN.allow_low_quality_matches, dt)
    if notes:
        precision.accept("match", notes)


# ======================================================================================== ROI levels and pooling
@pytest.mark.clause("PRECISION.LEVELS", "PRECISION.DISCRETE_MARGIN")
def test_assign_levels_discrete_margin(impl, reference_impl, precision, device):
    dt = precision.dtype
    g = _gen(11)
    n = 300
    # fp16 holds areas only below 65504 (sqrt 256): there the boxes stay below 180 px and P5 is not reached
    top = 900.0 if dt != torch.float16 else 180.0
    side = torch.exp(math.log(30.0) + torch.rand(n, generator=g, dtype=torch.float64) * math.log(top / 30.0))
    aspect = torch.exp((torch.rand(n, generator=g, dtype=torch.float64) - 0.5) * 2.0)
    # planted: squares next to every boundary (1 - 1e-3, exactly, 1 + 1e-3 of it)
    planted = torch.tensor([b * f for b in LEVEL_BOUNDARIES.values() for f in (1 - 1e-3, 1.0, 1 + 1e-3)
                            if b * f < top], dtype=torch.float64)
    side = torch.cat([side, planted])
    aspect = torch.cat([aspect, torch.ones(len(planted), dtype=torch.float64)])
    w, h = side * aspect.sqrt(), side / aspect.sqrt()
    xy = torch.rand(len(side), 2, generator=g, dtype=torch.float64) * 300
    boxes_low, boxes64 = low(torch.stack([xy[:, 0], xy[:, 1], xy[:, 0] + w, xy[:, 1] + h], dim=1), dt)
    levels = impl.assign_levels(boxes_low.to(device))
    levels64 = reference_impl.assign_levels(boxes64)
    sizes64 = ((boxes64[:, 2] - boxes64[:, 0]) * (boxes64[:, 3] - boxes64[:, 1])).sqrt()
    values64 = ROI.canonical_level + torch.log2(sizes64 / ROI.canonical_box_size + ROI.level_eps)
    notes = check_levels(levels, levels64, values64, dt)
    if notes:
        precision.accept("assign_levels", notes)


@pytest.mark.clause("PRECISION.ROI_ALIGN", "PRECISION.RATIO_RULE")
@pytest.mark.parametrize("sampling_ratio, aligned", [(0, True), (2, True), (0, False)])
def test_roi_align_ratio_rule(impl, reference_impl, precision, device, sampling_ratio, aligned):
    dt = precision.dtype
    g = _gen(12)
    feat_low, feat64 = low(torch.randn(2, 3, 20, 28, generator=g, dtype=torch.float64), dt)
    boxes = _boxes(24, 13, extent=100.0, min_side=2.0, max_side=60.0)
    batch = torch.randint(0, 2, (24, 1), generator=g).to(torch.float64)
    rois_low, rois64 = low(torch.cat([batch, boxes], dim=1), dt)
    args = (BOX.pooler_resolution, 0.25, sampling_ratio, aligned)
    actual = impl.roi_align(feat_low.to(device), rois_low.to(device), *args)
    ref64 = reference_impl.roi_align(feat64, rois64, *args)
    naive = reference_impl.roi_align(feat_low, rois_low, *args)
    assert_ratio_rule(cpu(actual), naive, ref64, "roi_align", dt)


@pytest.mark.clause("PRECISION.ROI_ALIGN", "PRECISION.RATIO_RULE")
def test_multilevel_roi_align_ratio_rule(impl, reference_impl, precision, device):
    """ROIs whose float64 sqrt(area) is within 2 x tol of a level boundary are left out: a level flip there is a
    discrete difference (PRECISION.LEVELS), which the ratio rule of the pooled values cannot judge."""
    dt = precision.dtype
    g = _gen(14)
    strides = BASE_RCNN_FPN.pooled_strides
    h, w = 256, 320
    feats = [torch.randn(2, 3, h // s, w // s, generator=g, dtype=torch.float64) for s in strides]
    pairs = [low(f, dt) for f in feats]
    boxes = _boxes(80, 15, extent=250.0, min_side=20.0, max_side=500.0 if dt != torch.float16 else 200.0)
    side = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).sqrt()
    away = torch.tensor([all(abs(float(s) - b) > 2 * discrete_tolerance(b, dt) for b in LEVEL_BOUNDARIES.values())
                         for s in side])
    boxes = boxes[away]
    batch = torch.randint(0, 2, (len(boxes), 1), generator=g).to(torch.float64)
    rois_low, rois64 = low(torch.cat([batch, boxes], dim=1), dt)
    actual = impl.multilevel_roi_align([p[0].to(device) for p in pairs], rois_low.to(device), strides=strides)
    ref64 = reference_impl.multilevel_roi_align([p[1] for p in pairs], rois64, strides=strides)
    naive = reference_impl.multilevel_roi_align([p[0] for p in pairs], rois_low, strides=strides)
    assert_ratio_rule(cpu(actual), naive, ref64, "multilevel_roi_align", dt)


# ================================================================================================ selection pipelines
@pytest.mark.clause("PRECISION.PROPOSALS", "PRECISION.DISCRETE_MARGIN")
@pytest.mark.parametrize("seed", [0, 1])
def test_select_proposals_discrete_margin(impl, reference_impl, precision, device, seed):
    """Three levels of clustered boxes (some crossing the image border) with logits ~ N(0, 2), rounded to the
    dtype; no top-k cut (fewer candidates than pre/post_nms_topk), so every difference is an NMS or rank one."""
    dt = precision.dtype
    h, w = 300, 380
    counts = (90, 45, 20)
    boxes = [_clustered(n, seed * 10 + i, clusters=6, extent=400.0) for i, n in enumerate(counts)]
    logits = [torch.randn(n, generator=_gen(seed * 10 + 50 + i), dtype=torch.float64) * 2 for i, n in enumerate(counts)]
    b_pairs = [low(b, dt) for b in boxes]
    l_pairs = [low(v, dt) for v in logits]
    out = impl.select_proposals([p[0][None].to(device) for p in b_pairs], [p[0][None].to(device) for p in l_pairs],
                                [(h, w)])
    out64 = reference_impl.select_proposals([p[1][None] for p in b_pairs], [p[1][None] for p in l_pairs], [(h, w)])
    cand = _clip(torch.cat([p[1] for p in b_pairs]), h, w)
    scores64 = torch.cat([p[1] for p in l_pairs])
    level = torch.cat([torch.full((n,), i) for i, n in enumerate(counts)])
    empty = {int(i) for i in ((cand[:, 2] <= cand[:, 0]) | (cand[:, 3] <= cand[:, 1])).nonzero().flatten()}
    keep = _rows_to_candidates(cpu(out[0][0]), cpu(out[0][1]), cand, scores64, "select_proposals")
    keep64 = _rows_to_candidates(out64[0][0], out64[0][1], cand, scores64, "select_proposals (float64 reference)")
    assert not set(keep) & empty, f"select_proposals kept empty boxes {sorted(set(keep) & empty)}"
    notes = check_nms_selection(keep, keep64, cand, scores64, RPN.nms_thresh, dt, groups=level, optional=empty,
                                what="select_proposals")
    if notes:
        precision.accept("select_proposals", notes)


def _rows_to_candidates(boxes: torch.Tensor, scores: torch.Tensor, cand: torch.Tensor, cand_scores: torch.Tensor,
                        what: str) -> list[int]:
    """The candidate index of each output row: the candidate with the same score and (clipped) box, each used once.
    Scores and boxes of a selection are its inputs' values: they are compared within the float32 tolerance."""
    rtol, atol = DTYPE_TOLERANCES[torch.float32]
    b, s = boxes.detach().double(), scores.detach().double()
    used: set[int] = set()
    out = []
    for r in range(len(s)):
        close = (((cand_scores - s[r]).abs() <= atol + rtol * s[r].abs())
                 & ((cand - b[r]).abs() <= atol + rtol * b[r].abs()).all(dim=1)).nonzero().flatten().tolist()
        free = [c for c in close if c not in used]
        if not free:
            raise AssertionError(f"{what}: output row {r} (box {b[r].tolist()}, score {float(s[r]):.6g}) is not one of "
                                 "the (clipped) input candidates")
        used.add(free[0])
        out.append(free[0])
    return out


@pytest.mark.clause("PRECISION.INFERENCE", "PRECISION.DISCRETE_MARGIN")
@pytest.mark.parametrize("seed", [0, 1])
def test_fast_rcnn_inference_discrete_margin(impl, reference_impl, precision, device, seed):
    dt = precision.dtype
    num_rois, k = 60, 3
    h, w = 240, 300
    g = _gen(seed + 30)
    base = _clustered(num_rois, seed + 31, clusters=8, extent=320.0)
    per_class = (base.repeat(1, k) + torch.randn(num_rois, 4 * k, generator=g, dtype=torch.float64) * 6).reshape(-1, 4)
    per_class = torch.cat([per_class[:, :2], torch.maximum(per_class[:, 2:], per_class[:, :2] + 1)], dim=1)
    per_class = per_class.reshape(num_rois, 4 * k)
    probs = torch.softmax(torch.randn(num_rois, k + 1, generator=g, dtype=torch.float64) * 2.5, dim=1)
    boxes_low, boxes64 = low(per_class, dt)
    scores_low, scores64 = low(probs, dt)
    (b, s, c, r), = impl.fast_rcnn_inference([boxes_low.to(device)], [scores_low.to(device)], [(h, w)])
    (b64, s64, c64, r64), = reference_impl.fast_rcnn_inference([boxes64], [scores64], [(h, w)])
    cand = _clip(boxes64.reshape(num_rois * k, 4), h, w)  # candidate r * K + c
    cand_scores = scores64[:, :k].reshape(-1)
    cls = torch.arange(k).repeat(num_rois)
    keep = (cpu(r).long() * k + cpu(c).long()).tolist()
    keep64 = (r64.long() * k + c64.long()).tolist()
    thresh = INF.score_thresh
    below = {j for j in range(len(cand_scores)) if float(cand_scores[j]) <= thresh}
    ambiguous = {j for j in range(len(cand_scores)) if within_discrete_margin(float(cand_scores[j]), thresh, dt)}
    wrong = sorted(set(keep) & (below - ambiguous))
    assert not wrong, f"fast_rcnn_inference kept (roi, class) pairs scoring below {thresh:g} beyond tol: {wrong}"
    empty = {int(j) for j in ((cand[:, 2] <= cand[:, 0]) | (cand[:, 3] <= cand[:, 1])).nonzero().flatten()}
    notes = check_nms_selection(keep, keep64, cand, cand_scores, INF.nms_thresh, dt, groups=cls,
                                optional=below | ambiguous | empty, limit=INF.detections_per_image,
                                what="fast_rcnn_inference")
    if set(keep) & ambiguous - set(keep64):
        notes.append(f"kept {sorted(set(keep) & ambiguous - set(keep64))}: scores within tol of {thresh:g}")
    # the kept rows carry their inputs' (clipped) boxes and scores
    rtol, atol = DTYPE_TOLERANCES[dt]
    torch.testing.assert_close(cpu(b).double(), cand[keep], rtol=rtol, atol=atol)
    torch.testing.assert_close(cpu(s).double(), cand_scores[keep], rtol=rtol, atol=atol)
    if notes:
        precision.accept("fast_rcnn_inference", notes)


# ================================================================================================ modules
@pytest.fixture(scope="module")
def backbone_case(reference_impl, precision_dtype):
    """(state dicts, input rounded to the dtype, float64 reference outputs, naive low-dtype reference outputs)."""
    dt = precision_dtype
    r_state = _he_state(reference_impl.ResNet().state_dict(), 40)
    f_state = _he_state(reference_impl.FPN().state_dict(), 41)
    x_low, x64 = low(torch.randn(1, 3, 64, 64, generator=_gen(42), dtype=torch.float64) * 2, dt)
    resnet, fpn = reference_impl.ResNet().eval(), reference_impl.FPN().eval()
    resnet.load_state_dict(r_state)
    fpn.load_state_dict(f_state)
    with torch.no_grad():
        ref64 = fpn.double()(resnet.double()(x64))
        naive = _naive(fpn, dt)(_naive(resnet, dt)(x_low))
    return r_state, f_state, x_low, ref64, naive


@pytest.fixture(scope="module")
def precision_dtype(request) -> torch.dtype:
    from spec.tolerances import PRECISION_DTYPES

    return PRECISION_DTYPES[request.config.getoption("detspec_dtype") or "fp32"]


@pytest.mark.clause("PRECISION.BACKBONE", "PRECISION.RATIO_RULE")
def test_resnet_fpn_ratio_rule(impl, precision, device, backbone_case):
    dt = precision.dtype
    r_state, f_state, x_low, ref64, naive = backbone_case
    resnet, fpn = impl.ResNet().eval(), impl.FPN().eval()
    resnet.load_state_dict(r_state)
    fpn.load_state_dict(f_state)
    resnet, fpn = resnet.to(device), fpn.to(device)
    with torch.no_grad(), torch.autocast(device.type, dtype=dt):
        out = fpn(resnet(x_low.float().to(device)))
    assert list(out) == list(ref64), f"levels {list(out)} != {list(ref64)}"
    for name in ref64:
        assert_ratio_rule(cpu(out[name]), naive[name], ref64[name], "backbone", dt, name)


@pytest.mark.clause("PRECISION.RPN_HEAD", "PRECISION.RATIO_RULE")
def test_rpn_head_ratio_rule(impl, reference_impl, precision, device):
    dt = precision.dtype
    ref = reference_impl.RPNHead().eval()
    ref.load_state_dict(_he_state(ref.state_dict(), 43))
    g = _gen(44)
    pairs = [low(torch.randn(1, 256, s, s + 2, generator=g, dtype=torch.float64), dt) for s in (16, 8, 4, 2, 1)]
    mod = impl.RPNHead().eval()
    mod.load_state_dict(ref.state_dict())
    mod = mod.to(device)
    with torch.no_grad():
        with torch.autocast(device.type, dtype=dt):
            logits, deltas = mod([p[0].float().to(device) for p in pairs])
        logits64, deltas64 = ref.double()([p[1] for p in pairs])
        naive_logits, naive_deltas = _naive(ref, dt)([p[0] for p in pairs])
    for i in range(len(pairs)):
        assert_ratio_rule(cpu(logits[i]), naive_logits[i], logits64[i], "rpn_head", dt, f"logits level {i}")
        assert_ratio_rule(cpu(deltas[i]), naive_deltas[i], deltas64[i], "rpn_head", dt, f"deltas level {i}")


def _randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    return randomize_parameters(module, _gen(seed))


@pytest.mark.clause("PRECISION.MVIT", "PRECISION.RATIO_RULE")
def test_pooling_attention_ratio_rule(impl, reference_impl, precision, device):
    dt = precision.dtype
    kwargs = dict(dim_out=16, kernel_q=(3, 3, 3), stride_q=(1, 2, 2), kernel_kv=(3, 3, 3), stride_kv=(1, 2, 2),
                  has_cls_token=True)
    ref = _randomize(reference_impl.PoolingAttention(16, 2, **kwargs).double().eval(), 45)
    mod = impl.PoolingAttention(16, 2, **kwargs).eval()
    mod.load_state_dict({k: v.float() for k, v in ref.state_dict().items()})
    mod = mod.to(device)
    thw = (2, 6, 6)
    x_low, x64 = low(torch.randn(2, 1 + math.prod(thw), 16, generator=_gen(46), dtype=torch.float64), dt)
    with torch.no_grad():
        with torch.autocast(device.type, dtype=dt):
            out, thw_out = mod(x_low.float().to(device), thw)
        out64, thw64 = ref(x64, thw)
        naive, _ = _naive(ref, dt)(x_low, thw)
    assert tuple(thw_out) == tuple(thw64)
    assert_ratio_rule(cpu(out), naive, out64, "mvit", dt, "PoolingAttention")


@pytest.fixture(scope="module")
def mvit_case(reference_impl, precision_dtype):
    dt = precision_dtype
    ref = _randomize(reference_impl.MViT(SMALL_V1).double().eval(), 47)
    clip_low, clip64 = low(torch.randn(1, 3, *SMALL_V1.input_size, generator=_gen(48), dtype=torch.float64), dt)
    with torch.no_grad():
        logits64 = ref(clip64)
        state = {k: v.float() for k, v in ref.state_dict().items()}
        naive = _naive(ref, dt)(clip_low)
    return state, clip_low, logits64, naive


@pytest.mark.clause("PRECISION.MVIT", "PRECISION.RATIO_RULE")
def test_mvit_logits_ratio_rule(impl, precision, device, mvit_case):
    dt = precision.dtype
    state, clip_low, logits64, naive = mvit_case
    own = _takes_autocast(impl.MViT)
    model = (impl.MViT(SMALL_V1, autocast_dtype=dt) if own else impl.MViT(SMALL_V1)).eval()
    model.load_state_dict(state)
    model = model.to(device)
    with torch.no_grad(), (nullcontext() if own else torch.autocast(device.type, dtype=dt)):
        logits = model(clip_low.float().to(device))
    assert_ratio_rule(cpu(logits), naive, logits64, "mvit", dt, "MViT logits")


# ------------------------------------------------------------------------------------------------ MViTv2 backbone
MVITDET_IMAGE = (96, 160)  # windows zero-padded, global blocks resize their tables (MVITDET.ANY_SIZE)


@pytest.fixture(scope="module")
def mvitdet_case(reference_impl, precision_dtype):
    dt = precision_dtype
    ref = _randomize(reference_impl.MViTDetBackbone(MVITV2_T_DET).double().eval(), 49)
    image_low, image64 = low(torch.randn(1, 3, *MVITDET_IMAGE, generator=_gen(50), dtype=torch.float64), dt)
    with torch.no_grad():
        out64 = ref(image64)
        state = {k: v.float() for k, v in ref.state_dict().items()}
        naive = _naive(ref, dt)(image_low)
    return state, image_low, out64, naive


@pytest.mark.clause("PRECISION.MVITDET", "PRECISION.RATIO_RULE", "PRECISION.OUTPUT_FP32")
def test_mvitdet_backbone_ratio_rule(impl, precision, device, mvitdet_case):
    dt = precision.dtype
    state, image_low, out64, naive = mvitdet_case
    own = _takes_autocast(impl.MViTDetBackbone)
    model = (impl.MViTDetBackbone(MVITV2_T_DET, autocast_dtype=dt) if own else impl.MViTDetBackbone(MVITV2_T_DET))
    model.load_state_dict(state)
    model = model.eval().to(device)
    with torch.no_grad(), (nullcontext() if own else torch.autocast(device.type, dtype=dt)):
        out = model(image_low.float().to(device))
    assert set(out) == set(out64)
    for name in out64:
        if own:
            assert out[name].dtype == torch.float32, name  # PRECISION.OUTPUT_FP32
        assert_ratio_rule(cpu(out[name]).float(), naive[name], out64[name], "mvit", dt, f"MViTv2-T {name}")


# ================================================================================================ detector
DETECTOR_CLASSES = 3
DETECTOR_IMAGE = (64, 64)
# at most 100 proposals (not 1000): the float64 reference's box head then costs 1.3 G multiply-adds, not 13
DETECTOR_CFG = replace(BASE_RCNN_FPN, rpn=replace(RPN, pre_nms_topk_test=200, post_nms_topk_test=100))


def _sharpened_detector(cls, **kwargs):
    """A seeded FasterRCNN(num_classes=3) whose random classifier detects: RPN boxes are the anchors, the class
    logits favour the foreground classes by a bias, and box regression is damped, so that a random 64x64 image
    gives tens of detections of all classes."""
    torch.manual_seed(0)
    model = cls(DETECTOR_CFG, num_classes=DETECTOR_CLASSES, **kwargs).eval()
    return model


def _sharpen_state(state: dict) -> dict:
    state = dict(state)
    for key in list(state):
        if key.startswith("proposal_generator.rpn_head.anchor_deltas."):
            state[key] = torch.zeros_like(state[key])
        if key == "roi_heads.box_predictor.cls_score.bias":
            state[key] = torch.tensor([2.0, 1.5, 1.0, 0.0], dtype=state[key].dtype)
        if key == "roi_heads.box_predictor.cls_score.weight":
            state[key] = state[key] * 20
        if key == "roi_heads.box_predictor.bbox_pred.weight":
            state[key] = state[key] * 0.1
    return state


@pytest.fixture(scope="module")
def detector_case(reference_impl, precision_dtype):
    dt = precision_dtype
    ref = _sharpened_detector(reference_impl.FasterRCNN)
    state = _sharpen_state(ref.state_dict())
    ref.load_state_dict(state)
    image_low, image64 = low(torch.rand(3, *DETECTOR_IMAGE, generator=_gen(49), dtype=torch.float64) * 255, dt)
    with torch.no_grad():
        with torch.autocast("cpu", dtype=dt):
            naive = ref([image_low.float()])[0]
        ref64 = ref.double()([image64])[0]
    return state, image_low, ref64, naive


def _unmatched(dets: dict, ref: dict, min_iou: float = 0.9) -> int:
    """Detections of either list without a partner in the other (same class, box IoU >= min_iou), greedy
    one-to-one in the reference's score order (detspec.evaluation.reproduced_fraction)."""
    as_cpu = {k: cpu(dets[k]) for k in ("boxes", "scores", "classes")}
    matched, total = reproduced_fraction({0: ref}, {0: as_cpu}, min_iou)
    return total - matched + len(as_cpu["scores"]) - matched


@pytest.mark.clause("PRECISION.DETECTOR")
def test_detector_detections(impl, precision, device, detector_case):
    """The detector under its autocast_dtype (or torch.autocast): its detections differ from the float64
    reference's in at most RATIO_RULE_FACTOR x as many detections as the naive run, plus one (the ratio rule
    applied to the count of detections without a partner: same class, box IoU >= 0.9). The naive run here is the
    reference detector under torch.autocast in the dtype: casting the whole detector to bf16 would also run its
    geometry (decoding, IoU, NMS) in bf16, which no deployed detector does (PRECISION.GEOMETRY_FP32)."""
    from spec.tolerances import RATIO_RULE_FACTOR

    dt = precision.dtype
    state, image_low, ref64, naive = detector_case
    assert len(ref64["scores"]) > 0, "the sharpened float64 reference must detect something"
    own = _takes_autocast(impl.FasterRCNN)
    model = _sharpened_detector(impl.FasterRCNN, **({"autocast_dtype": dt} if own else {}))
    model.load_state_dict(state)
    model = model.to(device)
    with torch.no_grad(), (nullcontext() if own else torch.autocast(device.type, dtype=dt)):
        dets = model([image_low.float().to(device)])[0]
    for key in ("boxes", "scores"):
        assert torch.isfinite(dets[key].float()).all(), f"non-finite {key}"
    missed, naive_missed = _unmatched(dets, ref64), _unmatched(naive, ref64)
    bound = RATIO_RULE_FACTOR * naive_missed + 1
    assert missed <= bound, (f"{missed} of {len(dets['scores'])} detections (float64 reference: "
                             f"{len(ref64['scores'])}) have no partner, more than {RATIO_RULE_FACTOR:g} x "
                             f"{naive_missed} (the naive {dt} reference) + 1")
    if missed:
        precision.accept("detector", [f"{missed} detections without a float64 partner (naive {dt}: {naive_missed})"])


# ================================================================================================ autocast_dtype
_MATMUL_OPS = ("conv2d", "linear", "matmul", "mm", "bmm", "addmm", "baddbmm", "einsum")
# the detector's geometry entry points (layout/rcnn.py's meta-architecture) -> the input dtypes to record
_GEOMETRY_CALLS = {
    ("proposal_generator", "propose"): lambda a: [t.dtype for t in (*a[0], *a[1], *a[2])],  # anchors, logits, deltas
    ("roi_heads", "pooler"): lambda a: [a[1].dtype],  # rois
    ("roi_heads", "inference"): lambda a: [t.dtype for t in (*a[0], *a[1])],  # per-image boxes, scores
}


class PrecisionRecorder(TorchFunctionMode):
    """Every convolution / matrix product's output dtype and whether autocast was on (torch's public function
    mode sees each F.conv2d / F.linear call, fused or not), and the input dtypes and autocast state of the
    detector's three geometry entry points (wrapped on the instance)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.ops: list[tuple[str, torch.dtype, bool]] = []
        self.geometry: list[tuple[str, list[torch.dtype], bool]] = []
        for (child, name), dtypes in _GEOMETRY_CALLS.items():
            owner = getattr(model, child, None)
            fn = getattr(owner, name, None)
            if not callable(fn):
                raise NotImplementedComponent(f"FasterRCNN.{child}.{name} (layout/rcnn.py's structure)")
            setattr(owner, name, self._wrap(name, fn, dtypes))  # shadows the class attribute

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if getattr(func, "__name__", "") in _MATMUL_OPS and isinstance(out, torch.Tensor):
            self.ops.append((func.__name__, out.dtype, _autocast_on()))
        return out

    def _wrap(self, name, fn, dtypes):
        def wrapper(*args, **kwargs):
            self.geometry.append((name, dtypes(args), _autocast_on()))
            return fn(*args, **kwargs)
        return wrapper


def _autocast_on() -> bool:
    return torch.is_autocast_enabled("cpu") or torch.is_autocast_enabled("cuda")


@pytest.mark.clause("PRECISION.AUTOCAST", "PRECISION.GEOMETRY_FP32", "PRECISION.OUTPUT_FP32")
def test_detector_autocast_dtype(impl, precision, device, detector_case):
    """FasterRCNN(autocast_dtype=dt): every conv and linear that runs with autocast on produces dt, and there are
    at least the backbone's, the RPN head's and the box head's; the proposal, pooler and inference entry points get
    float32 inputs with autocast off; boxes and scores come back float32. A port whose FasterRCNN has no
    autocast_dtype, or not layout/rcnn.py's structure, is "not implemented" here."""
    if not _takes_autocast(impl.FasterRCNN):
        raise NotImplementedComponent("FasterRCNN(autocast_dtype=...)")
    dt = precision.dtype
    state, image_low, _, _ = detector_case
    model = _sharpened_detector(impl.FasterRCNN, autocast_dtype=dt)
    model.load_state_dict(state)
    model = model.to(device)
    with PrecisionRecorder(model) as rec, torch.no_grad():
        dets = model([image_low.float().to(device)])[0]
    compute = [(name, dtype) for name, dtype, on in rec.ops if on]
    # ResNet-50 has 53 convs (a fused or folded implementation may call fewer, but not fewer than the 4 stages'
    # 16 blocks), the RPN head at least one per level, the box head 2 linears and the predictor at least 1
    assert sum(n == "conv2d" for n, _ in compute) >= 16 + 5 and sum(n == "linear" for n, _ in compute) >= 3, compute
    assert {dtype for _, dtype in compute} == {dt}, [c for c in compute if c[1] != dt][:5]       # PRECISION.AUTOCAST
    assert {dtype for _, dtype, on in rec.ops if not on} <= {torch.float32, torch.float64}
    assert sorted(name for name, _, _ in rec.geometry) == ["inference", "pooler", "propose"], rec.geometry
    for name, dtypes, on in rec.geometry:                                                        # GEOMETRY_FP32
        assert set(dtypes) == {torch.float32} and not on, (name, dtypes, on)
    assert dets["boxes"].dtype == dets["scores"].dtype == torch.float32                         # OUTPUT_FP32


@pytest.mark.clause("PRECISION.OUTPUT_FP32")
def test_mvit_autocast_logits_are_float32(impl, precision, device, mvit_case):
    if not _takes_autocast(impl.MViT):
        raise NotImplementedComponent("MViT(autocast_dtype=...)")
    state, clip_low, _, _ = mvit_case
    model = impl.MViT(SMALL_V1, autocast_dtype=precision.dtype).eval()
    model.load_state_dict(state)
    with torch.no_grad():
        logits = model.to(device)(clip_low.float().to(device))
    assert logits.dtype == torch.float32 and bool(torch.isfinite(logits).all())
