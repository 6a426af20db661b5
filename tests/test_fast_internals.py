"""fast/ internals that the contract does not expose: chunking, bounded memory, caches, static shapes."""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap

import torch
from hypothesis import given
from hypothesis import strategies as st

import fast
import reference
from spec import strategies as S
from spec.config import BASE_RCNN_FPN

fast_nms = importlib.import_module("fast.nms")
RPN = BASE_RCNN_FPN.rpn


@given(S.boxes(min_n=1, max_n=8), S.boxes(min_n=1, max_n=40), st.integers(1, 64), st.booleans())
def test_iou_match_is_independent_of_chunk_size(gt, boxes, chunk_elems, low_quality):
    gt, boxes = gt.float(), boxes.float()
    expected = reference.match(reference.pairwise_iou(gt, boxes), RPN.iou_thresholds, RPN.iou_labels, low_quality)
    got = fast.iou_match(gt, boxes, RPN.iou_thresholds, RPN.iou_labels, low_quality, chunk_elems=chunk_elems)
    assert torch.equal(got[1], expected[1])
    q = reference.pairwise_iou(gt, boxes)
    # matched index: exact, or an equally good GT where a column's maximum is tied
    assert torch.equal(q[got[0], torch.arange(boxes.shape[0])], q.max(dim=0).values)


def test_iou_match_memory_is_bounded():
    """400 GT x 242,991 anchors: a dense float32 IoU matrix alone would be 389 MB; the chunked pass stays small."""
    code = textwrap.dedent("""
        import resource, torch, fast
        from spec.config import BASE_RCNN_FPN as C
        sizes = [(200, 304), (100, 152), (50, 76), (25, 38), (13, 19)]
        cells = [fast.cell_anchors(s, r) for s, r in zip(C.anchors.sizes, C.anchors.aspect_ratios)]
        anchors = torch.cat(fast.grid_anchors(sizes, C.anchors.strides, cells))
        g = torch.Generator().manual_seed(0)
        xy = torch.rand(400, 2, generator=g) * 800
        gt = torch.cat([xy, xy + 16 + torch.rand(400, 2, generator=g) * 300], 1)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        idx, labels = fast.iou_match(gt, anchors)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print((after - before) // 1024, int((labels == 1).sum()))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    grew_mb, positives = (int(x) for x in out.stdout.split())
    assert positives > 0
    assert grew_mb < 100, f"peak RSS grew by {grew_mb} MB"


@given(S.scored_boxes(max_n=60, groups=3), st.sampled_from([0.0, 0.3, 0.5, 0.7, 0.95]))
def test_candidate_pairs_contain_every_suppressing_pair(data, thr):
    boxes, _, groups = data
    boxes = boxes.float()
    by_x, count = fast_nms.candidate_windows(boxes, groups, thr)
    pairs = set()
    for p0, p1, second in fast_nms.pair_chunks(count, chunk_pairs=7):  # small chunks: exercise the splitting
        first = torch.repeat_interleave(torch.arange(p0, p1), count[p0:p1])
        pairs |= {tuple(sorted(p)) for p in zip(by_x[first].tolist(), by_x[second].tolist())}
    assert len(pairs) == int(count.sum())  # each pair exactly once
    iou = reference.pairwise_iou(boxes, boxes).double()
    same = groups[:, None] == groups[None, :]
    need = ((iou > thr) & same).triu(diagonal=1).nonzero().tolist()
    assert {tuple(p) for p in need} <= pairs


def test_anchor_cache_reuses_grids():
    cache = fast.AnchorCache()
    sizes = [(8, 10), (4, 5), (2, 3), (1, 2), (1, 1)]
    first = cache(sizes)
    assert cache(sizes) is first
    expected = reference.grid_anchors(sizes, BASE_RCNN_FPN.anchors.strides,
                                      [reference.cell_anchors(s, r) for s, r in
                                       zip(BASE_RCNN_FPN.anchors.sizes, BASE_RCNN_FPN.anchors.aspect_ratios)])
    for a, b in zip(first, expected):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4)
    assert cache([(9, 10), (5, 5), (3, 3), (2, 2), (1, 1)]) is not first


def test_subsample_masks_are_static_shaped():
    labels = torch.tensor([1] * 300 + [0] * 1000 + [-1] * 50)
    g = torch.Generator().manual_seed(3)
    pos, neg = fast.subsample_masks(labels, RPN.batch_size_per_image, RPN.positive_fraction, RPN.bg_label, g)
    assert pos.shape == neg.shape == labels.shape
    assert int(pos.sum()) == int(RPN.batch_size_per_image * RPN.positive_fraction)
    assert int(pos.sum() + neg.sum()) == RPN.batch_size_per_image
    assert not (pos & neg).any() and (labels[pos] == 1).all() and (labels[neg] == 0).all()


def test_cpu_nms_does_not_use_triton(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("the Triton kernel must only be used for CUDA tensors")

    monkeypatch.setattr(fast_nms.nms_triton, "nms_sorted_mask", boom)
    keep = fast.nms(torch.tensor([[0.0, 0, 1, 1], [0, 0, 1, 1]]), torch.tensor([0.9, 0.8]), 0.5)
    assert keep.tolist() == [0]
