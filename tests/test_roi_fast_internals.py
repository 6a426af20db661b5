"""fast/ ROI-stage internals the contract does not expose: the embedding-bag ROIAlign's merged sampling rows,
its segments and chunks, the channels-last layouts, the Triton dispatch, the box head's cached weight
permutation, and the static (sync-free) inference.

Oracles: torchvision.ops.roi_align / MultiScaleRoIAlign (an independent C++ kernel), the reference, or the
dynamic fast path for the static variant. No expected value comes from the code under test.
"""

from __future__ import annotations

import importlib
from collections import OrderedDict

import pytest
import torch
import torchvision

import fast
import reference
from spec.config import BASE_RCNN_FPN, TORCHVISION

fast_roi_align = importlib.import_module("fast.roi_align")
fast_poolers = importlib.import_module("fast.poolers")
fast_roi_heads = importlib.import_module("fast.roi_heads")

# float32 against torchvision: both round the sample coordinates (~30 px, ulp ~2e-6) and the bilinear
# fractions in float32, with different operation fusion; on N(0, 1) maps, whose neighbours differ by up to ~5,
# that moves a bin by up to ~1e-5 (measured max 1.1e-5 over these cases; the float64 results agree to 1e-12).
F32 = dict(rtol=1e-5, atol=5e-5)
F64 = dict(rtol=1e-12, atol=1e-12)


def _rois(gen, n_images, num, height, width, scale, empty=5):
    """[num, 5] rois around a [height, width] map at `scale`: some partly or fully outside, `empty` of them
    with zero width or height (the first rows), sizes from 0 to ~1.4x the map."""
    extent = torch.tensor([width, height], dtype=torch.float64) / scale
    xy = torch.rand(num, 2, generator=gen, dtype=torch.float64) * extent * 1.4 - 5
    wh = torch.rand(num, 2, generator=gen, dtype=torch.float64) * extent * torch.rand(num, 1, generator=gen,
                                                                                      dtype=torch.float64)
    wh[:empty, torch.arange(empty) % 2] = 0
    batch = torch.randint(0, n_images, (num, 1), generator=gen).to(torch.float64)
    return torch.cat([batch, xy, xy + wh], dim=1)


CASES = [(seed, scale) for seed in range(3) for scale in (1.0, 0.5, 0.25, 1 / 3)]


@pytest.mark.parametrize("seed,scale", CASES)
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2, 1, 3])
def test_roi_align_matches_torchvision(seed, scale, aligned, sampling_ratio):
    gen = torch.Generator().manual_seed(seed)
    h, w = int(torch.randint(1, 24, (), generator=gen)), int(torch.randint(1, 24, (), generator=gen))
    feats = torch.randn(2, 5, h, w, generator=gen, dtype=torch.float64)
    rois = _rois(gen, 2, 40, h, w, scale)
    for out in (7, (3, 5)):
        expected = torchvision.ops.roi_align(feats, rois, out, scale, sampling_ratio, aligned)
        torch.testing.assert_close(fast.roi_align(feats, rois, out, scale, sampling_ratio, aligned), expected, **F64)
        expected32 = torchvision.ops.roi_align(feats.float(), rois.float(), out, scale, sampling_ratio, aligned)
        got32 = fast.roi_align(feats.float(), rois.float(), out, scale, sampling_ratio, aligned)
        assert got32.dtype == torch.float32
        torch.testing.assert_close(got32, expected32, **F32)


def test_roi_align_inverted_and_empty_rois_pool_zero():
    # aligned=True: an inverted box has a negative size, so ceil(size / 7) <= 0 samples: exactly 0 (as
    # torchvision); aligned=False forces every side to >= 1 pixel, so the same box pools a 1x1 region.
    feats = torch.randn(1, 3, 9, 9, dtype=torch.float64)
    rois = torch.tensor([[0.0, 6, 6, 2, 2], [0.0, 3, 4, 5, 4], [0.0, 50, 50, 60, 60]], dtype=torch.float64)
    got = fast.roi_align(feats, rois, 7, 1.0, 0, True)
    assert torch.equal(got, torch.zeros_like(got))
    torch.testing.assert_close(fast.roi_align(feats, rois, 7, 1.0, 0, False),
                               torchvision.ops.roi_align(feats, rois, 7, 1.0, 0, False), **F64)
    none = fast.roi_align(feats, rois[:0], 7, 1.0, 0, True)
    assert none.shape == (0, 3, 7, 7)


def test_roi_align_known_ramp_through_the_merged_rows():
    # d2-spec §3: 5x5 ramp 0..24, box (1, 1, 3, 3), 4x4 output, scale 1, adaptive grid (1 sample per bin).
    # aligned=True: start 0.5, bin 0.5, samples at 0.75 + 0.5 i -> value 5 y + x = 4.5 + 2.5 i + 0.5 j.
    feats = torch.arange(25, dtype=torch.float32).reshape(1, 1, 5, 5)
    rois = torch.tensor([[0.0, 1, 1, 3, 3]])
    got = fast.roi_align(feats, rois, 4, 1.0, 0, True)[0, 0]
    expected = 4.5 + 2.5 * torch.arange(4.0)[:, None] + 0.5 * torch.arange(4.0)[None, :]
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("chunk", [1, 49, 49 * 4 + 1, 5000])
@pytest.mark.parametrize("segment_cost", [0, 1 << 40])
def test_chunks_and_segments_do_not_change_the_result(monkeypatch, chunk, segment_cost):
    """Every chunk size (one ROI per call, a ROI and a bit, ...) and segmenting policy (one segment per
    (level, Ky, Kx) group, or everything merged per level) gives the same values as torchvision."""
    gen = torch.Generator().manual_seed(11)
    feats = torch.randn(2, 4, 13, 17, generator=gen, dtype=torch.float64)
    rois = _rois(gen, 2, 30, 13, 17, 0.5)
    expected = torchvision.ops.roi_align(feats, rois, 7, 0.5, 0, True)
    monkeypatch.setattr(fast_roi_align, "CHUNK_ENTRIES", chunk)
    monkeypatch.setattr(fast_roi_align, "SEGMENT_COST", segment_cost)
    torch.testing.assert_close(fast.roi_align(feats, rois, 7, 0.5, 0, True), expected, **F64)


def test_segments_cover_every_active_roi_once():
    """Runs tile the active (sorted) ROIs exactly, stay within one level, and pad to every member's window."""
    span, stride_x, bins = 30, 5, 49  # key = level * span + ky * stride_x + kx
    groups, sizes = [-1, 3 + 5, 4 + 10, 2 + 15, 30 + 6, 30 + 15 + 1], [2, 4, 1, 3, 2, 5]
    runs = list(fast_roi_align._segments(groups, sizes, span, stride_x, bins, start=2, max_rows=2))
    covered = [i for _, s, e, _, _ in runs for i in range(s, e)]
    assert covered == list(range(2, sum(sizes)))
    pos = 2
    for key, size in zip(groups[1:], sizes[1:]):
        level, (ky, kx) = key // span, divmod(key % span, stride_x)
        run = next(r for r in runs if r[1] <= pos < r[2])
        assert run[2] >= pos + size or run[0] == level  # a group may be chunked, never split across levels
        assert run[0] == level and run[3] >= ky and run[4] >= kx
        pos += size


def _pyramid(gen, n=2, c=6, dtype=torch.float64, sizes=((32, 48), (16, 24), (8, 12), (4, 6))):
    return [torch.randn(n, c, h, w, generator=gen, dtype=dtype) for h, w in sizes]


def _image_boxes(gen, num, h=128, w=192, dtype=torch.float64):
    """Boxes with sqrt(area) log-uniform in ~7-735 px (every level P2-P5) and aspect ratios in [0.6, 1.6]."""
    size = torch.exp(torch.empty(num, 1, dtype=dtype).uniform_(2.0, 6.6, generator=gen))
    ratio = torch.exp(torch.empty(num, 1, dtype=dtype).uniform_(-0.5, 0.5, generator=gen))
    side = torch.cat([size * ratio.sqrt(), size / ratio.sqrt()], dim=1)  # (w, h)
    xy = torch.rand(num, 2, generator=gen, dtype=dtype) * torch.tensor([w, h], dtype=dtype)
    return torch.cat([xy - side / 2, xy + side / 2], dim=1)


def test_multilevel_matches_torchvision_per_level_and_keeps_row_order():
    """detectron2 profile: torchvision roi_align on each ROI's level (what detectron2's ROIPooler does)."""
    gen = torch.Generator().manual_seed(3)
    maps = _pyramid(gen)
    boxes = _image_boxes(gen, 60)
    rois = torch.cat([torch.randint(0, 2, (60, 1), generator=gen).double(), boxes], dim=1)
    levels = reference.assign_levels(boxes)
    assert set(levels.tolist()) == {2, 3, 4, 5}
    expected = torch.zeros(60, 6, 7, 7, dtype=torch.float64)
    for i, k in enumerate(range(2, 6)):
        rows = (levels == k).nonzero().flatten()
        expected[rows] = torchvision.ops.roi_align(maps[i], rois[rows], 7, 1.0 / 2**k, 0, True)
    got = fast.multilevel_roi_align(maps, rois)
    torch.testing.assert_close(got, expected, **F64)
    # channels-last maps (fast.FPN's layout) are read in place and give the same result
    cl = [m.contiguous(memory_format=torch.channels_last) for m in maps]
    torch.testing.assert_close(fast.multilevel_roi_align(cl, rois), expected, **F64)
    assert got.permute(0, 2, 3, 1).is_contiguous()


def test_multilevel_matches_torchvision_multiscale_roialign():
    """torchvision profile: aligned False, sampling 2, eps 1e-6 outside the log2 = MultiScaleRoIAlign."""
    gen = torch.Generator().manual_seed(4)
    maps = _pyramid(gen, n=1, dtype=torch.float32)
    boxes = _image_boxes(gen, 80, dtype=torch.float32)
    rois = torch.cat([torch.zeros(80, 1), boxes], dim=1)
    tv = torchvision.ops.MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
    expected = tv(OrderedDict(zip("0123", maps)), [boxes], [(128, 192)])
    roi, box = TORCHVISION.roi_heads, TORCHVISION.box_head
    got = fast.multilevel_roi_align(maps, rois, 7, (4, 8, 16, 32), box.pooler_sampling_ratio, box.aligned,
                                    roi.canonical_box_size, roi.canonical_level, roi.level_eps, roi.level_eps_in_log)
    torch.testing.assert_close(got, expected, **F32)


def test_roi_align_gradient_matches_torchvision():
    gen = torch.Generator().manual_seed(6)
    feats = torch.randn(2, 3, 11, 14, generator=gen, dtype=torch.float64, requires_grad=True)
    rois = _rois(gen, 2, 20, 11, 14, 0.5)
    weight = torch.randn(20, 3, 7, 7, generator=gen, dtype=torch.float64)
    (fast.roi_align(feats, rois, 7, 0.5, 0, True) * weight).sum().backward()
    got = feats.grad.clone()
    feats.grad = None
    (torchvision.ops.roi_align(feats, rois, 7, 0.5, 0, True) * weight).sum().backward()
    torch.testing.assert_close(got, feats.grad, **F64)


def test_no_triton_dispatch_on_cpu():
    maps = [torch.zeros(1, 2, 4, 4)]
    assert not fast_roi_align.use_triton(*maps)


@pytest.mark.gpu
def test_cuda_dispatch_matches_the_cpu_path():
    """On CUDA the Triton kernel (no grad) and the torch fallback (grad) both equal the CPU result."""
    gen = torch.Generator().manual_seed(7)
    maps = _pyramid(gen, dtype=torch.float32)
    boxes = _image_boxes(gen, 50, dtype=torch.float32)
    rois = torch.cat([torch.randint(0, 2, (50, 1), generator=gen).float(), boxes], dim=1)
    expected = fast.multilevel_roi_align(maps, rois)
    cuda_maps = [m.cuda() for m in maps]
    with torch.no_grad():
        got = fast.multilevel_roi_align(cuda_maps, rois.cuda())
    torch.testing.assert_close(got.cpu(), expected, **F32)
    leaf = [m.requires_grad_() for m in cuda_maps]
    assert not fast_roi_align.use_triton(*leaf)
    out = fast.multilevel_roi_align(leaf, rois.cuda())
    torch.testing.assert_close(out.detach().cpu(), expected, **F32)
    out.sum().backward()
    assert leaf[0].grad is not None


# ------------------------------------------------------------------------------------------------ box head
def test_box_head_channels_last_path_and_cache():
    torch.manual_seed(0)
    head = fast.BoxHead(in_channels=8, resolution=3, fc_dim=16)
    x = torch.randn(5, 8, 3, 3)
    expected = torch.relu(head.fc2(torch.relu(head.fc1(x.flatten(1))))).detach()
    cl = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(head(cl), expected, rtol=1e-5, atol=1e-6)
        head.fc1.weight.mul_(2.0)  # an in-place update bumps the version: the cache must follow
        expected2 = torch.relu(head.fc2(torch.relu(head.fc1(x.flatten(1)))))
        torch.testing.assert_close(head(cl), expected2, rtol=1e-5, atol=1e-6)
    assert "_yxc" not in head.state_dict()


# ------------------------------------------------------------------------------------------------ inference
def _inference_case(seed, n=3, r=24, k=5):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, r, 1, 2, generator=g) * 80
    wh = torch.rand(n, r, k, 2, generator=g) * 40 + 1
    lo = xy + torch.rand(n, r, k, 2, generator=g) * 5 - 10
    boxes = torch.cat([lo, lo + wh], dim=3).reshape(n, r, 4 * k)
    scores = torch.softmax(torch.randn(n, r, k + 1, generator=g) * 2, dim=2)
    scores[0, :3] = scores[0, 3:6]  # tied scores across rows: the order must follow (row, class)
    sizes = torch.tensor([[90, 100], [70, 60], [85, 95]])[:n]
    return boxes, scores, sizes


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("kwargs", [{}, {"topk_per_image": 7}, {"min_box_size": 8.0},
                                    {"score_thresh": 0.0, "topk_per_image": -1}, {"drop_nonfinite": False}])
def test_static_inference_equals_dynamic(seed, kwargs):
    boxes, scores, sizes = _inference_case(seed)
    dynamic = fast.fast_rcnn_inference(list(boxes), list(scores), sizes.tolist(), **kwargs)
    out_boxes, out_scores, out_cls, count = fast.fast_rcnn_inference_static(boxes, scores, sizes, **kwargs)
    t = kwargs.get("topk_per_image", BASE_RCNN_FPN.inference.detections_per_image)
    if t < 0:
        t = boxes.shape[1] * (scores.shape[2] - 1)
    assert out_boxes.shape == (3, t, 4) and out_scores.shape == (3, t) and out_cls.shape == (3, t)
    for i, (b, s, c, _) in enumerate(dynamic):
        d = int(count[i])
        assert d == b.shape[0]
        assert torch.equal(out_boxes[i, :d], b) and torch.equal(out_scores[i, :d], s)
        assert torch.equal(out_cls[i, :d], c)
        assert bool((out_cls[i, d:] == -1).all()) and bool((out_scores[i, d:] == 0).all())


def test_static_inference_with_nonfinite_rows_and_few_candidates():
    boxes, scores, sizes = _inference_case(9)
    boxes[1, 4, 2] = float("nan")
    scores[2, 7, 0] = float("inf")
    dynamic = fast.fast_rcnn_inference(list(boxes), list(scores), sizes.tolist())
    # max_candidates below the candidate count but above what NMS needs for topk 5: still exact
    static = fast.fast_rcnn_inference_static(boxes, scores, sizes, topk_per_image=5, max_candidates=40)
    for i, (b, _, c, _) in enumerate(dynamic):
        d = int(static[3][i])
        assert d == min(5, b.shape[0])
        assert torch.equal(static[0][i, :d], b[:d]) and torch.equal(static[2][i, :d], c[:d])


def test_dynamic_inference_matches_reference_and_empty_images():
    boxes, scores, sizes = _inference_case(2)
    per_image = [boxes[0], boxes[1, :0], boxes[2]]
    per_scores = [scores[0], scores[1, :0], scores[2]]
    expected = reference.fast_rcnn_inference(per_image, per_scores, sizes.tolist())
    got = fast.fast_rcnn_inference(per_image, per_scores, sizes.tolist())
    for e, g in zip(expected, got):
        for a, b in zip(e, g):
            assert a.dtype == b.dtype and torch.equal(a, b)
    assert got[1][0].shape == (0, 4)


def test_static_inference_compiles_without_graph_breaks():
    """fullgraph=True fails on any data-dependent shape or host read (.item(), nonzero, mask indexing)."""
    if not torch._dynamo.is_dynamo_supported():
        pytest.skip("torch.compile is not supported on this Python")
    g = torch.Generator().manual_seed(0)
    n, r, k = 2, 30, 4
    corners = torch.rand(n, r, 2, generator=g) * 100
    boxes = torch.cat([corners, corners + torch.rand(n, r, 2, generator=g) * 50 + 1], -1).repeat(1, 1, k)
    scores = torch.rand(n, r, k + 1, generator=g).softmax(-1)
    sizes = torch.tensor([[150, 160], [140, 170]])

    def infer(b, s, z):
        return fast.fast_rcnn_inference_static(b, s, z, 0.05, 0.5, 20)

    compiled = torch.compile(infer, fullgraph=True, backend="eager", dynamic=False)
    out = compiled(boxes, scores, sizes)
    expected = infer(boxes, scores, sizes)
    assert all(torch.equal(a, b) for a, b in zip(out, expected))
    # and the static result is the dynamic path's, slot for slot
    dynamic = fast.fast_rcnn_inference(list(boxes), list(scores), sizes.tolist(), 0.05, 0.5, 20)
    for i, (d_boxes, d_scores, d_classes, _) in enumerate(dynamic):
        count = int(out[3][i])
        assert count == len(d_scores)
        assert torch.equal(out[0][i, :count], d_boxes) and torch.equal(out[1][i, :count], d_scores)
        assert torch.equal(out[2][i, :count], d_classes)
