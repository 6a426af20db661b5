"""fast/ RPN internals the contract does not expose: the static, sync-free proposal selection, its exact
greedy sweep, decoding only the top-k winners, and the anchor cache."""

from __future__ import annotations

import importlib
import math

import pytest
import torch

import fast
from fast.nms import STATIC_BLOCK, greedy_sweep
from spec import strategies as S
from spec.config import BASE_RCNN_FPN

fast_proposals = importlib.import_module("fast.proposals")
RPN = BASE_RCNN_FPN.rpn
ANCHORS = BASE_RCNN_FPN.anchors
SIZES = [(128, 160), (100, 150), (128, 97)]


def _anchors(image=(128, 160), device="cpu"):
    levels = S.feature_sizes_for(image, ANCHORS.strides, BASE_RCNN_FPN.input.size_divisibility)
    cells = [fast.cell_anchors(s, r, device=device) for s, r in zip(ANCHORS.sizes, ANCHORS.aspect_ratios)]
    return fast.grid_anchors(levels, ANCHORS.strides, cells, ANCHORS.offset)


def random_case(seed, n=2, inject=True, dtype=torch.float32, device="cpu"):
    """Per-level (boxes [N, P, 4], logits [N, P]): distinct logits, random deltas on real anchors, optionally
    with NaN / inf logits and boxes and with boxes pushed out of the image (empty after clipping)."""
    g = torch.Generator().manual_seed(seed)
    anchors = _anchors()
    total = sum(a.shape[0] for a in anchors)
    flat = ((torch.randperm(n * total, generator=g).to(dtype) - total) / 256).reshape(n, total)
    logits = [x.clone() for x in flat.split([a.shape[0] for a in anchors], dim=1)]
    boxes = []
    for a in anchors:
        d = torch.randn(n * a.shape[0], 4, generator=g, dtype=dtype) * 0.6
        d[torch.rand(d.shape[0], generator=g) < 0.08, 1] += 9.0  # far below the image: empty after clipping
        boxes.append(fast.decode_boxes(d, a.to(dtype).repeat(n, 1), (1, 1, 1, 1)).reshape(n, -1, 4))
    if inject:
        for level in (0, 3):
            top = logits[level][0].topk(6).indices
            logits[level][0, top[1]] = float("nan")
            logits[level][0, top[3]] = float("inf")
            boxes[level][n - 1, logits[level][n - 1].topk(5).indices[2], 0] = float("nan")
            boxes[level][0, top[4], 3] = float("-inf")
    return [b.to(device) for b in boxes], [s.to(device) for s in logits]


def assert_static_equals_dynamic(static, dynamic, post):
    __tracebackhide__ = True
    boxes, logits, count = static
    n = len(dynamic)
    assert boxes.shape == (n, post, 4) and logits.shape == (n, post) and count.shape == (n,)
    assert count.dtype == torch.int64
    for i, (b, s) in enumerate(dynamic):
        c = int(count[i])
        assert c == b.shape[0], f"image {i}: static count {c}, dynamic {b.shape[0]}"
        assert torch.equal(boxes[i, :c], b), f"image {i}: boxes differ"
        assert torch.equal(logits[i, :c], s), f"image {i}: logits differ"
        assert (boxes[i, c:] == 0).all() and (logits[i, c:] == float("-inf")).all(), "padding slots"


@pytest.mark.parametrize("seed,n,pre,post,min_size,dtype", [
    (0, 2, RPN.pre_nms_topk_test, RPN.post_nms_topk_test, 0.0, torch.float32),
    (1, 3, RPN.pre_nms_topk_train, RPN.post_nms_topk_train, 0.0, torch.float32),
    (2, 2, 50, 30, 2.0, torch.float32),
    (3, 1, 700, 5000, 0.0, torch.float32),  # more slots than candidates: padded
    (4, 2, 300, 200, 0.5, torch.float64),
])
def test_static_equals_dynamic(seed, n, pre, post, min_size, dtype):
    boxes, logits = random_case(seed, n=n, dtype=dtype)
    sizes = SIZES[:n]
    dynamic = fast.select_proposals(boxes, logits, sizes, RPN.nms_thresh, pre, post, min_size, False)
    static = fast.select_proposals_static(boxes, logits, sizes, RPN.nms_thresh, pre, post, min_size, False)
    assert_static_equals_dynamic(static, dynamic, post)
    as_tensor = fast.select_proposals_static(boxes, logits, torch.tensor(sizes), RPN.nms_thresh, pre, post,
                                             min_size, False)  # image sizes as an [N, 2] tensor
    assert all(torch.equal(a, b) for a, b in zip(static, as_tensor))


def test_static_long_suppression_chain():
    # Boxes sliding by 1 px: neighbours overlap with IoU 9/11 = 0.82 > 0.7, next-but-one 8/12 = 0.67.
    # Greedy keeps 0, 2, 4, ...: each decision depends on the previous one, a chain across all 16 blocks.
    k = 1000
    x = torch.arange(k, dtype=torch.float32)
    boxes = torch.stack([x, torch.zeros(k), x + 10, torch.full((k,), 10.0)], dim=1)[None]
    logits = (k - x)[None]  # descending along the chain
    dynamic = fast.select_proposals([boxes], [logits], [(20, 2000)])
    static = fast.select_proposals_static([boxes], [logits], [(20, 2000)])
    assert_static_equals_dynamic(static, dynamic, RPN.post_nms_topk_test)
    assert torch.equal(dynamic[0][1], logits[0, ::2])


def _greedy_loop(over: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
    keep = torch.zeros_like(alive)
    for m in range(over.shape[0]):
        suppressed = torch.zeros(over.shape[1], dtype=torch.bool)
        for i in range(over.shape[1]):
            if alive[m, i] and not suppressed[i]:
                keep[m, i] = True
                suppressed |= over[m, i]
    return keep


@pytest.mark.parametrize("k,density", [(1, 0.5), (63, 0.05), (64, 0.2), (65, 0.5), (200, 0.02), (200, 0.3)])
def test_greedy_sweep_is_exact(k, density):
    g = torch.Generator().manual_seed(k)
    over = (torch.rand(3, k, k, generator=g) < density).triu(diagonal=1)
    alive = torch.rand(3, k, generator=g) < 0.9
    kp = math.ceil(k / STATIC_BLOCK) * STATIC_BLOCK
    padded = torch.zeros(3, kp, kp, dtype=torch.bool)
    padded[:, :k, :k] = over
    alive_p = torch.zeros(3, kp, dtype=torch.bool)
    alive_p[:, :k] = alive
    keep = greedy_sweep(padded, alive_p, STATIC_BLOCK)[:, :k]
    assert torch.equal(keep, _greedy_loop(over, alive))


def test_static_masks_nonfinite_even_in_training():
    """The static variant cannot raise without a host sync: in training, non-finite candidates are masked."""
    boxes, logits = random_case(5, n=2)
    with pytest.raises(FloatingPointError):
        fast.select_proposals(boxes, logits, SIZES[:2], training=True)
    static = fast.select_proposals_static(boxes, logits, SIZES[:2], training=True)
    assert_static_equals_dynamic(static, fast.select_proposals(boxes, logits, SIZES[:2]), RPN.post_nms_topk_test)


def test_static_empty_batch():
    boxes, logits, count = fast.select_proposals_static([torch.zeros(0, 6, 4)], [torch.zeros(0, 6)], [])
    assert boxes.shape == (0, RPN.post_nms_topk_test, 4) and logits.shape == (0, RPN.post_nms_topk_test)
    assert count.shape == (0,)


def test_static_compiles_without_graph_breaks():
    """fullgraph=True fails on any data-dependent shape or host read (.item(), nonzero, mask indexing)."""
    if not torch._dynamo.is_dynamo_supported():
        pytest.skip("torch.compile is not supported on this Python")
    boxes, logits = random_case(6, n=2)
    compiled = torch.compile(fast.select_proposals_static, fullgraph=True, backend="eager", dynamic=False)
    sizes = torch.tensor(SIZES[:2])
    out = compiled(boxes, logits, sizes, RPN.nms_thresh, 64, 40)
    expected = fast.select_proposals_static(boxes, logits, sizes, RPN.nms_thresh, 64, 40)
    assert all(torch.equal(a, b) for a, b in zip(out, expected))


@pytest.mark.gpu
def test_static_has_no_host_sync_on_cuda():
    boxes, logits = random_case(7, n=2, device="cuda")
    sizes_list = SIZES[:2]
    sizes = torch.tensor(sizes_list, device="cuda")
    fast.select_proposals_static(boxes, logits, sizes)  # warm-up: lazy CUDA / cuBLAS initialisation
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        static = fast.select_proposals_static(boxes, logits, sizes)
        from_list = fast.select_proposals_static(boxes, logits, sizes_list)  # pinned, non-blocking copy
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    dynamic = fast.select_proposals(boxes, logits, sizes_list)
    assert_static_equals_dynamic(static, dynamic, RPN.post_nms_topk_test)
    assert all(torch.equal(a, b) for a, b in zip(static, from_list))


def test_decode_and_select_equals_select_on_decoded():
    """Decoding only the per-level top-k winners gives the proposals of decoding every anchor first."""
    g = torch.Generator().manual_seed(8)
    anchors = _anchors()
    deltas = [torch.randn(2, a.shape[0], 4, generator=g) * 0.5 for a in anchors]
    logits = [torch.randn(2, a.shape[0], generator=g) for a in anchors]
    decoded = [fast.decode_boxes(d.reshape(-1, 4), a.repeat(2, 1), (1, 1, 1, 1)).reshape(2, -1, 4)
               for d, a in zip(deltas, anchors)]
    for training, pre, post in ((False, 1000, 1000), (True, 2000, 1000)):
        expected = fast.select_proposals(decoded, logits, SIZES[:2], RPN.nms_thresh, pre, post, 0.0, training)
        got = fast_proposals.decode_and_select(anchors, deltas, logits, SIZES[:2], pre_nms_topk=pre,
                                               post_nms_topk=post, training=training)
        for (b, s), (eb, es) in zip(got, expected):
            assert torch.equal(s, es)
            torch.testing.assert_close(b, eb, rtol=2e-7, atol=1e-4)  # exp may differ by an ulp (vector vs scalar)


def test_rpn_anchor_cache_is_reused():
    rpn = fast.RPN(in_channels=4).eval()
    levels = S.feature_sizes_for((64, 96), ANCHORS.strides, BASE_RCNN_FPN.input.size_divisibility)
    feats = [torch.randn(1, 4, h, w) for h, w in levels]
    first = rpn.anchors(feats)
    assert rpn.anchors(feats) is first
    assert not any(k.startswith("anchor") for k in rpn.state_dict())  # anchors are not state
    with torch.no_grad():
        proposals, losses = rpn(feats, [(64, 96)])
    assert losses == {} and proposals[0][0].shape[0] > 0
