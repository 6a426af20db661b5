"""reference/ ROI stage internals: ROIAlign known values and torchvision cross-checks, level boundaries, a
hand-derived loss, sampling order, inference against torchvision's postprocess, and the module's wiring."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torchvision
from torchvision.models.detection.roi_heads import RoIHeads as TVRoIHeads

import reference
from spec import validate as v
from spec.config import BASE_RCNN_FPN, TORCHVISION, BoxHeadConfig, ROIHeadsConfig

F64 = torch.float64
TV = TORCHVISION


def _ramp():
    return torch.arange(25, dtype=F64).reshape(1, 1, 5, 5)


def _random_rois(g, count, num_images, low=-10.0, high=90.0, max_size=60.0):
    xy = torch.rand(count, 2, generator=g, dtype=F64) * (high - low) + low
    wh = torch.rand(count, 2, generator=g, dtype=F64) * max_size
    wh[:3] = 0.0  # empty regions
    wh[3, 1] = 0.0  # a zero-height one
    batch = torch.randint(0, num_images, (count, 1), generator=g).to(F64)
    return torch.cat([batch, xy, xy + wh], dim=1)


# ------------------------------------------------------------------------------------------------ roi_align
def test_roi_align_known_values_aligned():  # ROI.ALIGN_KNOWN, d2-spec §3 (tests/layers/test_roi_align.py)
    out = reference.roi_align(_ramp(), torch.tensor([[0.0, 1, 1, 3, 3]], dtype=F64), 4, 1.0, 0, True)[0, 0]
    expected = torch.tensor([[4.5, 5.0, 5.5, 6.0], [7.0, 7.5, 8.0, 8.5], [9.5, 10.0, 10.5, 11.0],
                             [12.0, 12.5, 13.0, 13.5]], dtype=F64)
    torch.testing.assert_close(out, expected)


def test_roi_align_known_values_not_aligned():  # ROI.ALIGN_KNOWN
    out = reference.roi_align(_ramp(), torch.tensor([[0.0, 1, 1, 3, 3]], dtype=F64), 4, 1.0, 0, False)[0, 0]
    torch.testing.assert_close(out[0], torch.tensor([7.5, 8.0, 8.5, 9.0], dtype=F64))
    torch.testing.assert_close(out[-1], torch.tensor([15.0, 15.5, 16.0, 16.5], dtype=F64))


def test_roi_align_zero_height_box_is_zero():  # ROI.ALIGN_EMPTY, d2-spec §3
    out = reference.roi_align(_ramp(), torch.tensor([[0.0, 3, 4, 5, 4]], dtype=F64), 7, 1.0, 0, True)
    assert out.shape == (1, 1, 7, 7)
    assert bool((out == 0).all())
    empty = reference.roi_align(torch.zeros(2, 3, 8, 8, dtype=F64), torch.zeros(0, 5, dtype=F64), 7, 0.25, 0, True)
    assert empty.shape == (0, 3, 7, 7)


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_roi_align_matches_torchvision(aligned, sampling_ratio):  # ROI.ALIGN_SAMPLING, ROI.ALIGN_OUT_OF_RANGE
    g = torch.Generator().manual_seed(10 * sampling_ratio + aligned)
    features = torch.randn(2, 3, 13, 17, dtype=F64, generator=g)
    rois = _random_rois(g, 40, 2)  # many reach beyond the map (samples outside [-1, H] and clamped ones)
    for scale, size in ((0.25, 7), (1.0, (3, 5)), (0.5, 7)):
        ours = reference.roi_align(features, rois, size, scale, sampling_ratio, aligned)
        theirs = torchvision.ops.roi_align(features, rois, size, scale, sampling_ratio, aligned)
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


def test_roi_align_errors():  # ROI.ALIGN_ERRORS
    f = torch.zeros(2, 1, 4, 4, dtype=F64)
    with pytest.raises(ValueError, match="rois"):
        reference.roi_align(f, torch.zeros(3, 4, dtype=F64), 2, 1.0, 0, True)
    with pytest.raises(ValueError, match="batch indices"):
        reference.roi_align(f, torch.tensor([[2.0, 0, 0, 1, 1]], dtype=F64), 2, 1.0, 0, True)
    with pytest.raises(ValueError, match="batch indices"):
        reference.roi_align(f, torch.tensor([[0.5, 0, 0, 1, 1]], dtype=F64), 2, 1.0, 0, True)
    with pytest.raises(ValueError, match="NaN"):
        reference.roi_align(f, torch.tensor([[0.0, 0, math.nan, 1, 1]], dtype=F64), 2, 1.0, 0, True)
    with pytest.raises(ValueError, match="features"):
        reference.roi_align(f[0], torch.zeros(0, 5, dtype=F64), 2, 1.0, 0, True)
    with pytest.raises(TypeError, match="rois"):
        v.check_rois(torch.zeros(1, 5, dtype=torch.int64), 1)


# ------------------------------------------------------------------------------------------------ poolers
def test_level_boundaries():  # ROI.LEVEL_FORMULA, d2-spec §3 level assignment
    sizes = [16.0, 111.99, 112.0, 223.9, 224.0, 447.9, 448.0, 1000.0]
    expected = [2, 2, 3, 3, 4, 4, 5, 5]
    for dtype in (torch.float32, F64):
        s = torch.tensor(sizes, dtype=dtype)
        boxes = torch.stack([torch.zeros_like(s), torch.zeros_like(s), s, s], dim=1)
        assert reference.assign_levels(boxes).tolist() == expected
        assert reference.assign_levels(boxes, eps=TV.roi_heads.level_eps, eps_in_log=False).tolist() == expected
    assert reference.assign_levels(torch.tensor([[5.0, 5, 5, 5]])).tolist() == [2]  # zero area -> lowest


def test_multilevel_matches_torchvision_pooler():  # ROI.POOLER_LEVELS, ROI.POOLER_ORDER (torchvision profile)
    g = torch.Generator().manual_seed(3)
    names = list(TV.roi_heads.in_features)
    strides = (4, 8, 16, 32)
    maps = [torch.randn(2, 3, 256 // s, 320 // s, dtype=F64, generator=g) for s in strides]
    boxes = []
    for _ in range(2):
        xy = torch.rand(25, 2, generator=g, dtype=F64) * 200
        boxes.append(torch.cat([xy, xy + torch.rand(25, 2, generator=g, dtype=F64) * 500 + 1], dim=1))
    rois = torch.cat([torch.cat([torch.full((25, 1), float(i), dtype=F64), b], 1) for i, b in enumerate(boxes)])
    perm = torch.randperm(50, generator=g)  # rows of both images interleaved: output must follow row order
    box = TV.box_head
    ours = reference.multilevel_roi_align(maps, rois[perm], box.pooler_resolution, strides, box.pooler_sampling_ratio,
                                          box.aligned, TV.roi_heads.canonical_box_size, TV.roi_heads.canonical_level,
                                          TV.roi_heads.level_eps, TV.roi_heads.level_eps_in_log)
    pooler = torchvision.ops.MultiScaleRoIAlign(names, box.pooler_resolution, box.pooler_sampling_ratio)
    theirs = pooler(dict(zip(names, maps)), boxes, [(256, 320)] * 2)
    torch.testing.assert_close(ours, theirs[perm], rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------------ sampling
def test_sample_rois_order_classes_and_no_gt():  # ROI.SAMPLE_APPEND_GT, ROI.SAMPLE_MATCH, ROI.SAMPLE_COUNT
    gt = torch.tensor([[0.0, 0, 10, 10]], dtype=F64)
    # IoU with gt: 1.0 (fg), 0.4 (bg), 0.5 (fg: the interval [0.5, inf) is foreground), 0 (bg)
    props = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 4], [0, 0, 10, 5], [50, 50, 60, 60]], dtype=F64)
    (boxes, classes, matched), (boxes2, classes2, matched2) = reference.sample_rois(
        [props, props], [gt, gt[:0]], [torch.tensor([3]), torch.zeros(0, dtype=torch.int64)], num_classes=5,
        generator=torch.Generator().manual_seed(0))
    assert classes.tolist() == [3, 3, 3, 5, 5]  # foreground first; the appended GT is the third foreground
    fg_rows = sorted(map(tuple, boxes[:3].tolist()))
    assert fg_rows == sorted([(0.0, 0, 10, 10), (0, 0, 10, 5), (0, 0, 10, 10)])
    assert sorted(map(tuple, boxes[3:].tolist())) == sorted([(0.0, 0, 10, 4), (50, 50, 60, 60)])
    assert bool((matched == gt).all())  # one GT: every row's matched box is it, background included
    assert classes2.tolist() == [5, 5, 5, 5] and bool((matched2 == 0).all())  # no GT: background, zeros
    capped = reference.sample_rois([props], [gt], [torch.tensor([3])], 5, batch_size_per_image=2,
                                   positive_fraction=0.5, generator=torch.Generator().manual_seed(1))[0]
    assert capped[1].tolist() == [3, 5]


# ------------------------------------------------------------------------------------------------ losses
def test_roi_losses_hand_derived():  # ROI.LOSS_CLS, ROI.LOSS_BOX
    # K = 2 classes, background column 2. Row 0: logits (0, 0, 0), class 0 -> CE = ln 3.
    # Row 1: logits (0, 0, ln 2): softmax background = 2 / (1 + 1 + 2) = 1/2, class 2 -> CE = ln 2.
    # loss_cls = (ln 3 + ln 2) / 2 = ln 6 / 2.
    # Row 0's box: proposal (0, 0, 10, 20) -> GT (0, 0, 20, 20) with weights (10, 10, 5, 5) encodes to
    # (5, 0, 5 ln 2, 0) (d2-spec §3). Its class-0 slot predicts (4, 1, 0, 0): L1 = 1 + 1 + 5 ln 2 + 0.
    # The class-1 slot and the background row are never read (huge values). loss_box = (2 + 5 ln 2) / max(R, 1)
    # with R = 2. With beta = 1/9 each |d| >= beta costs |d| - beta/2 and d = 0 costs 0: minus 3 / 18.
    logits = torch.tensor([[0.0, 0, 0], [0, 0, math.log(2)]], dtype=F64)
    deltas = torch.tensor([[4.0, 1, 0, 0, 1e3, 1e3, 1e3, 1e3], [1e3] * 8], dtype=F64)
    proposals = torch.tensor([[0.0, 0, 10, 20], [0, 0, 5, 5]], dtype=F64)
    gt_boxes = torch.tensor([[0.0, 0, 20, 20], [0, 0, 0, 0]], dtype=F64)
    classes = torch.tensor([0, 2])
    out = reference.roi_losses(logits, deltas, proposals, classes, gt_boxes)
    torch.testing.assert_close(out["loss_cls"], torch.tensor(math.log(6) / 2, dtype=F64))
    torch.testing.assert_close(out["loss_box_reg"], torch.tensor((2 + 5 * math.log(2)) / 2, dtype=F64))
    smooth = reference.roi_losses(logits, deltas, proposals, classes, gt_boxes, smooth_l1_beta=1 / 9)
    torch.testing.assert_close(smooth["loss_box_reg"], torch.tensor((2 + 5 * math.log(2) - 3 / 18) / 2, dtype=F64))
    empty = reference.roi_losses(logits[:0], deltas[:0], proposals[:0], classes[:0], gt_boxes[:0])
    assert float(empty["loss_cls"]) == 0.0 and float(empty["loss_box_reg"]) == 0.0


# ------------------------------------------------------------------------------------------------ inference
def test_inference_matches_torchvision_postprocess():  # ROI.INFER_THRESH, ROI.INFER_NMS, ROI.INFER_TOPK
    g = torch.Generator().manual_seed(7)
    k, r = 3, 40
    xy = torch.rand(r, 2, generator=g, dtype=F64) * 60
    proposals = torch.cat([xy, xy + torch.rand(r, 2, generator=g, dtype=F64) * 40 + 4], dim=1)
    tv_logits = torch.randn(r, k + 1, generator=g, dtype=F64) * 2  # torchvision: background is column 0
    tv_deltas = torch.randn(r, 4 * (k + 1), generator=g, dtype=F64)
    inf, box = TV.inference, TV.box_head
    tv = TVRoIHeads(None, None, None, 0.5, 0.5, 512, 0.25, box.box_coder.weights, inf.score_thresh,
                    inf.nms_thresh, 10)
    e_boxes, e_scores, e_labels = (x[0] for x in tv.postprocess_detections(tv_logits, tv_deltas, [proposals],
                                                                           [(70, 80)]))
    logits = torch.cat([tv_logits[:, 1:], tv_logits[:, :1]], dim=1)  # detspec: background last
    decoded = reference.decode_boxes(tv_deltas[:, 4:], proposals, box.box_coder.weights, box.box_coder.scale_clamp)
    boxes, scores, classes, rows = reference.fast_rcnn_inference(
        [decoded], [logits.softmax(-1)], [(70, 80)], inf.score_thresh, inf.nms_thresh, 10, inf.min_box_size,
        inf.drop_nonfinite)[0]
    assert len(scores) == 10
    torch.testing.assert_close(boxes, e_boxes)
    torch.testing.assert_close(scores, e_scores)
    assert (classes + 1).tolist() == e_labels.tolist()
    # roi_index and class point at the (clipped) box each detection came from
    torch.testing.assert_close(boxes, reference.clip_boxes(decoded.reshape(r, k, 4)[rows, classes], (70, 80)))


def test_inference_drops_nonfinite_rows_and_postprocess():  # ROI.INFER_CLIP, ROI.POSTPROCESS
    boxes = torch.tensor([[0.0, 0, 10, 10], [math.nan, 0, 10, 10], [20, 20, 30, 30]], dtype=F64)
    scores = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.8, 0.2]], dtype=F64)
    out_boxes, out_scores, classes, rows = reference.fast_rcnn_inference([boxes], [scores], [(100, 100)])[0]
    assert rows.tolist() == [0, 2] and classes.tolist() == [0, 0]
    with pytest.raises(ValueError, match="NaN"):
        reference.fast_rcnn_inference([boxes], [scores], [(100, 100)], drop_nonfinite=False)
    # (in 10 x 20) -> (out 20 x 20): x scaled by 1, y by 2, then clipped to 20 x 20; row 1 ends empty.
    scaled, keep = reference.detector_postprocess(torch.tensor([[0.0, 0, 10, 15], [25, 5, 30, 9]]), (10, 20), (20, 20))
    assert scaled.tolist() == [[0.0, 0, 10, 20], [20, 10, 20, 18]] and keep.tolist() == [True, False]


# ------------------------------------------------------------------------------------------------ module
def test_roi_heads_module_wiring():  # ROI.BOX_HEAD, ROI.PREDICTOR
    torch.manual_seed(0)
    cfg = replace(ROIHeadsConfig(), num_classes=3)
    box_cfg = replace(BoxHeadConfig(), fc_dim=16)
    heads = reference.ROIHeads(cfg, box_cfg, in_channels=4).double()
    assert list(heads.state_dict()) == [f"box_{m}.{p}" for m in ("head.fc1", "head.fc2", "predictor.cls_score",
                                                                  "predictor.bbox_pred") for p in ("weight", "bias")]
    assert heads.box_head.fc1.in_features == 4 * 7 * 7
    g = torch.Generator().manual_seed(0)
    features = {f"p{k}": torch.randn(2, 4, 256 // 2**k, 256 // 2**k, dtype=F64, generator=g) for k in range(2, 7)}
    props = []
    for _ in range(2):
        xy = torch.rand(30, 2, generator=g, dtype=F64) * 150
        b = torch.cat([xy, xy + torch.rand(30, 2, generator=g, dtype=F64) * 100 + 2], dim=1)
        props.append((b, torch.randn(30, generator=g)))
    gt_boxes = [props[0][0][:2] + 1, torch.zeros(0, 4, dtype=F64)]
    gt_classes = [torch.tensor([0, 2]), torch.zeros(0, dtype=torch.int64)]
    heads.train()
    dets, losses = heads(features, props, [(256, 256)] * 2, gt_boxes, gt_classes, torch.Generator().manual_seed(0))
    assert dets == [] and set(losses) == {"loss_cls", "loss_box_reg"}
    (losses["loss_cls"] + losses["loss_box_reg"]).backward()
    assert heads.box_head.fc1.weight.grad is not None
    heads.eval()
    with torch.no_grad():
        dets, losses = heads(features, props, [(200, 220)] * 2)
    assert losses == {} and len(dets) == 2
    for boxes, scores, classes, rows in dets:
        assert boxes.shape[0] == scores.shape[0] == classes.shape[0] == rows.shape[0] <= 100
        assert bool((boxes[:, 2] <= 220).all() and (boxes[:, 3] <= 200).all())
        assert bool((classes < 3).all() and (rows < 30).all())


def test_box_head_parameter_count():  # ROI.HEAD_PARAMS, d2-spec §3: 14,306,705 for 80 classes
    box = BASE_RCNN_FPN.box_head
    head, predictor = reference.BoxHead(), reference.BoxPredictor()
    assert (head.fc1.in_features, head.fc2.out_features) == (256 * box.pooler_resolution ** 2, box.fc_dim)
    count = sum(p.numel() for m in (head, predictor) for p in m.parameters())
    assert count == 12_846_080 + 1_049_600 + 83_025 + 328_000 == 14_306_705
