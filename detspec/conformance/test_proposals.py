"""Conformance: proposal selection (detectron2's find_top_rpn_proposals). d2-spec §2.9, §6 item 8.

Every discrete output (which proposals survive, their order) is compared exactly. Logits are drawn distinct,
because the spec leaves the order of equal logits open.
"""

from __future__ import annotations

import pytest
import torch

from detspec.conformance._util import cpu, on
from spec import strategies as S
from spec.config import BASE_RCNN_FPN

RPN = BASE_RCNN_FPN.rpn
ANCHORS = BASE_RCNN_FPN.anchors
BIG = (2000, 2000)  # an image large enough that the hand-made boxes need no clipping
DIVERGED = "Predicted boxes or scores contain Inf/NaN. Training has diverged."


def separated(n: int, size: float = 10.0, spacing: float = 20.0, per_row: int = 50) -> torch.Tensor:
    """[n, 4] boxes of size x size on a grid with gaps: no two overlap, so NMS keeps them all."""
    i = torch.arange(n, dtype=torch.float32)
    x, y = (i % per_row) * spacing, torch.div(i, per_row, rounding_mode="floor") * spacing
    return torch.stack([x, y, x + size, y + size], dim=1)


def select(impl, device, boxes, logits, image_sizes, **kw):
    """Call select_proposals with per-level lists ([N, P, 4] and [N, P]); return CPU results, checking shapes."""
    out = impl.select_proposals([on(b, device) for b in boxes], [on(s, device) for s in logits], image_sizes, **kw)
    assert len(out) == len(image_sizes)
    res = []
    for b, s in out:
        assert b.dim() == 2 and b.shape[1] == 4 and s.shape == (b.shape[0],), (b.shape, s.shape)
        res.append((cpu(b), cpu(s)))
    return res


def assert_sorted(logits: torch.Tensor) -> None:
    __tracebackhide__ = True
    assert (logits[:-1] > logits[1:]).all(), "proposals must be sorted by logit, descending"


def rows_of(boxes: torch.Tensor) -> set:
    return {tuple(r) for r in boxes.tolist()}


# ================================================================================================ pre-NMS top-k
@pytest.mark.clause("PROPOSAL.PRE_NMS_TOPK")
def test_pre_nms_topk_is_per_level_and_per_image(impl, device):
    # Two images, two levels. Level 0 has 1200 candidates, level 1 has 300 (fewer than k = 1000).
    # Level 1's logits are all below level 0's: a global (cross-level) top-k would drop them.
    b0, b1 = separated(1200), separated(300)
    g = torch.Generator().manual_seed(0)
    l0 = torch.randperm(1200, generator=g).float()  # 0 .. 1199
    l1 = -1.0 - torch.randperm(300, generator=g).float()  # -300 .. -1
    boxes = [torch.stack([b0, b0]), torch.stack([b1, b1])]
    logits = [torch.stack([l0, 1199.0 - l0]), torch.stack([l1, l1])]  # image 1 ranks level 0 in reverse
    out = select(impl, device, boxes, logits, [BIG, BIG], post_nms_topk=5000)  # default pre_nms_topk: 1000
    for (kept_boxes, kept), level0 in zip(out, logits[0]):
        # per level min(P, 1000): 1000 of level 0 + all 300 of level 1; NMS removes nothing
        assert kept.numel() == 1000 + 300
        expected = torch.cat([level0.topk(1000).values, l1.sort(descending=True).values])
        assert torch.equal(kept, expected)  # level 0's 1000 best (all above level 1), then level 1
        assert torch.equal(kept_boxes, torch.cat([b0[level0.topk(1000).indices], b1[l1.sort(descending=True).indices]]))
        assert_sorted(kept)
    # image 1 kept a different level-0 subset: the top-k is per image
    assert rows_of(out[0][0][:1000]) != rows_of(out[1][0][:1000])
    # the training value, 2000 per level, keeps everything here; a small k keeps k per level
    out = select(impl, device, boxes, logits, [BIG, BIG], pre_nms_topk=RPN.pre_nms_topk_train, post_nms_topk=5000)
    assert [s.numel() for _, s in out] == [1500, 1500]
    out = select(impl, device, boxes, logits, [BIG, BIG], pre_nms_topk=7, post_nms_topk=5000)
    assert torch.equal(out[0][1], torch.cat([l0.topk(7).values, l1.topk(7).values]))


@pytest.mark.clause("PROPOSAL.PRE_NMS_TOPK", "PROPOSAL.NMS_PER_LEVEL")
def test_pre_nms_topk_comes_before_nms(impl, device):
    # Level 0: candidate A (logit 3), A' overlapping A with IoU 0.81 (logit 2), B separate (logit 1).
    # With k = 2 the top-k takes A and A'; NMS then removes A'; B never was a candidate.
    boxes = [torch.tensor([[[0, 0, 10, 10], [0, 0, 10, 9], [50, 50, 60, 60]]], dtype=torch.float32)]
    logits = [torch.tensor([[3.0, 2.0, 1.0]])]
    out = select(impl, device, boxes, logits, [BIG], pre_nms_topk=2)
    assert out[0][1].tolist() == [3.0]


# ================================================================================================ non-finite
def nonfinite_case():
    nan, inf = float("nan"), float("inf")
    boxes = separated(8)
    boxes[1, 0] = nan  # a NaN coordinate
    boxes[2, 2] = inf  # an infinite coordinate: dropped, not clipped to the border
    boxes[3, 1] = -inf
    logits = torch.tensor([7.0, 6.0, 5.0, 4.5, nan, inf, -inf, 1.0])
    return [boxes[None]], [logits[None]]


@pytest.mark.clause("PROPOSAL.NONFINITE")
def test_nonfinite_dropped_at_test_time(impl, device):
    boxes, logits = nonfinite_case()
    out = select(impl, device, boxes, logits, [BIG], training=False)
    assert out[0][1].tolist() == [7.0, 1.0]  # candidates 0 and 7: every other box or logit is not finite
    assert torch.equal(out[0][0], boxes[0][0, [0, 7]])


@pytest.mark.clause("PROPOSAL.NONFINITE")
def test_nonfinite_raises_in_training(impl, device):
    boxes, logits = nonfinite_case()
    with pytest.raises(FloatingPointError, match="Training has diverged"):
        select(impl, device, boxes, logits, [BIG], training=True)
    # a NaN logit alone is enough (NaN ranks first in the top-k)
    clean = separated(4)[None]
    with pytest.raises(FloatingPointError, match="Inf/NaN"):
        select(impl, device, [clean], [torch.tensor([[1.0, float("nan"), 2.0, 3.0]])], [BIG], training=True)
    # finite input trains normally
    out = select(impl, device, [clean], [torch.tensor([[1.0, 4.0, 2.0, 3.0]])], [BIG], training=True)
    assert out[0][1].tolist() == [4.0, 3.0, 2.0, 1.0]


@pytest.mark.clause("PROPOSAL.NONFINITE", "PROPOSAL.PRE_NMS_TOPK")
def test_nonfinite_only_checked_among_top_k(impl, device):
    # d2-spec §2.9: the check runs on the per-level top-k candidates. A NaN box ranked below k is never seen.
    boxes = separated(4)
    boxes[3, 0] = float("nan")
    out = select(impl, device, [boxes[None]], [torch.tensor([[4.0, 3.0, 2.0, 1.0]])], [BIG], pre_nms_topk=3,
                 training=True)
    assert out[0][1].tolist() == [4.0, 3.0, 2.0]


# ================================================================================================ clip and filter
@pytest.mark.clause("PROPOSAL.CLIP_FILTER")
def test_clip_to_unpadded_size_and_remove_empty(impl, device):
    # image (h, w) = (50, 60): the padded features may cover more, but clipping uses the unpadded size
    boxes = torch.tensor([[-10, -5, 30, 20],    # -> (0, 0, 30, 20)
                          [40, 30, 80, 70],     # -> (40, 30, 60, 50)
                          [70, 10, 90, 20],     # right of the image -> (60, 10, 60, 20): width 0, removed
                          [10, 10, 10, 30],     # width 0: removed
                          [10, 60, 20, 70],     # below the image -> height 0: removed
                          [5, 5, 5.5, 45]],     # width 0.5 > 0: kept
                         dtype=torch.float32)
    logits = torch.tensor([6.0, 5.0, 4.0, 3.0, 2.0, 1.0])
    out = select(impl, device, [boxes[None]], [logits[None]], [(50, 60)])
    assert out[0][1].tolist() == [6.0, 5.0, 1.0]
    assert torch.equal(out[0][0], torch.tensor([[0, 0, 30, 20], [40, 30, 60, 50], [5, 5, 5.5, 45]]))


@pytest.mark.clause("PROPOSAL.CLIP_FILTER")
def test_min_box_size_is_strict(impl, device):
    boxes = torch.tensor([[0, 0, 1, 5], [10, 0, 11.5, 5], [20, 0, 25, 1], [30, 0, 35, 1.25]], dtype=torch.float32)
    logits = torch.tensor([4.0, 3.0, 2.0, 1.0])
    out = select(impl, device, [boxes[None]], [logits[None]], [BIG], min_box_size=1.0)
    assert out[0][1].tolist() == [3.0, 1.0]  # width or height == 1 is removed (strict >)


@pytest.mark.clause("PROPOSAL.CLIP_FILTER", "PROPOSAL.NMS_PER_LEVEL")
def test_clip_happens_before_nms(impl, device):
    # image 10 x 10. A = (0,0,10,10), B = (0,0,20,10): IoU 0.5 before clipping, 1.0 after.
    # detectron2 clips first, so B is suppressed (its docstring's "NMS, clip" order would keep it).
    boxes = torch.tensor([[[0, 0, 10, 10], [0, 0, 20, 10]]], dtype=torch.float32)
    out = select(impl, device, [boxes], [torch.tensor([[2.0, 1.0]])], [(10, 10)])
    assert out[0][1].tolist() == [2.0]


# ================================================================================================ NMS per level
@pytest.mark.clause("PROPOSAL.NMS_PER_LEVEL")
def test_nms_is_independent_per_level(impl, device):
    box = torch.tensor([[0, 0, 10, 10]], dtype=torch.float32)
    # the same box on two levels: both survive; twice on one level: only the better one
    out = select(impl, device, [box[None], box[None]], [torch.tensor([[3.0]]), torch.tensor([[2.0]])], [BIG])
    assert out[0][1].tolist() == [3.0, 2.0]
    assert torch.equal(out[0][0], torch.cat([box, box]))
    out = select(impl, device, [torch.cat([box, box])[None]], [torch.tensor([[3.0, 2.0]])], [BIG])
    assert out[0][1].tolist() == [3.0]


@pytest.mark.clause("PROPOSAL.NMS_PER_LEVEL")
def test_nms_threshold_and_images(impl, device):
    # A = (0,0,10,10) vs (0,0,10,7): IoU 0.7 (float32 0.69999999) is not > 0.7: kept.
    # A vs (0,2.5,10,10): IoU 0.75 > 0.7: suppressed. (The two lower boxes overlap with IoU 45/100.)
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 7], [0, 2.5, 10, 10]], dtype=torch.float32)
    logits = torch.tensor([3.0, 2.0, 1.0])
    out = select(impl, device, [boxes[None]], [logits[None]], [BIG])
    assert out[0][1].tolist() == [3.0, 2.0]
    # two images with identical candidates: NMS never crosses images
    out = select(impl, device, [torch.stack([boxes, boxes])], [torch.stack([logits, logits])], [BIG, BIG])
    assert [s.tolist() for _, s in out] == [[3.0, 2.0], [3.0, 2.0]]
    # the threshold is a parameter: at 0.8 the 0.75 overlap survives
    out = select(impl, device, [boxes[None]], [logits[None]], [BIG], nms_thresh=0.8)
    assert out[0][1].tolist() == [3.0, 2.0, 1.0]


# ================================================================================================ post-NMS top-k
@pytest.mark.clause("PROPOSAL.POST_NMS_TOPK")
def test_exactly_post_nms_topk_proposals(impl, device):
    # 5 levels x 300 separated boxes (the same positions on every level: NMS is per level, so all 1500
    # survive), distinct logits including negative ones. Exactly 1000 come out, the 1000 best, raw.
    g = torch.Generator().manual_seed(1)
    values = (torch.randperm(1500, generator=g).float() - 750.0) / 8.0  # -93.75 .. 93.625, raw logits
    boxes = [separated(300)[None] for _ in range(5)]
    logits = [values[300 * i : 300 * (i + 1)][None] for i in range(5)]
    out = select(impl, device, boxes, logits, [BIG])  # defaults: pre 1000, post 1000
    kept_boxes, kept = out[0]
    assert kept.numel() == RPN.post_nms_topk_test == 1000
    assert_sorted(kept)
    assert torch.equal(kept, values.topk(1000).values)  # raw logits (a sigmoid would lie in (0, 1))
    assert (kept < 0).any()
    # each logit comes with its own box
    position = torch.cat([torch.arange(300)] * 5)[values.topk(1000).indices]
    assert torch.equal(kept_boxes, separated(300)[position])


@pytest.mark.clause("PROPOSAL.POST_NMS_TOPK")
def test_post_nms_topk_is_per_image(impl, device):
    # image 0: 400 separated boxes; image 1: 400 copies of one box (NMS keeps 1). post_nms_topk = 150.
    many = separated(400)
    same = separated(1).expand(400, 4)
    g = torch.Generator().manual_seed(2)
    logits = torch.stack([torch.randperm(400, generator=g).float(), torch.randperm(400, generator=g).float()])
    out = select(impl, device, [torch.stack([many, same])], [logits], [BIG, BIG], post_nms_topk=150)
    assert out[0][1].numel() == 150 and out[1][1].numel() == 1
    assert torch.equal(out[0][1], logits[0].topk(150).values)
    assert out[1][1].tolist() == [399.0]
    out = select(impl, device, [torch.stack([many, same])], [logits], [BIG, BIG], post_nms_topk=0)
    assert [s.numel() for _, s in out] == [0, 0]


# ================================================================================================ differential
_REFERENCE_CACHE: dict = {}
DIFF_SIZES = [(128, 160), (100, 150)]  # unpadded sizes; both pad to 128 x 160
DIFF_MODES = {  # name: (training, pre_nms_topk, post_nms_topk, inject non-finite values)
    "test": (False, RPN.pre_nms_topk_test, RPN.post_nms_topk_test, True),
    "train": (True, RPN.pre_nms_topk_train, RPN.post_nms_topk_train, False),
    "small": (False, 50, 30, True),
}


def diff_case(reference_impl, seed: int, inject: bool):
    """Random distinct logits and random deltas decoded on the real anchors of 2 images of 128 x 160."""
    levels = S.feature_sizes_for(DIFF_SIZES[0], ANCHORS.strides, BASE_RCNN_FPN.input.size_divisibility)
    cells = [reference_impl.cell_anchors(s, r) for s, r in zip(ANCHORS.sizes, ANCHORS.aspect_ratios)]
    anchors = reference_impl.grid_anchors(levels, ANCHORS.strides, cells, ANCHORS.offset)
    g = torch.Generator().manual_seed(seed)
    total = sum(a.shape[0] for a in anchors)
    flat = ((torch.randperm(2 * total, generator=g).float() - total) / 512.0).reshape(2, total)  # distinct
    logits, boxes = list(flat.split([a.shape[0] for a in anchors], dim=1)), []
    for a in anchors:
        deltas = torch.randn(2 * a.shape[0], 4, generator=g) * 0.5
        far = torch.rand(2 * a.shape[0], generator=g) < 0.05
        deltas[far, 0] += 8.0  # shifted 8 widths: many leave the image and become empty after clipping
        boxes.append(reference_impl.decode_boxes(deltas, a.repeat(2, 1), RPN.box_coder.weights,
                                                 RPN.box_coder.scale_clamp).reshape(2, -1, 4))
    if inject:  # non-finite values among the winners
        logits[0][0, logits[0][0].topk(5).indices[1::2]] = float("nan")
        boxes[1][1, logits[1][1].topk(4).indices[1:3], 2] = float("inf")
    return boxes, logits


@pytest.mark.clause("PROPOSAL.PRE_NMS_TOPK", "PROPOSAL.NONFINITE", "PROPOSAL.CLIP_FILTER",
                    "PROPOSAL.NMS_PER_LEVEL", "PROPOSAL.POST_NMS_TOPK")
@pytest.mark.parametrize("mode", list(DIFF_MODES))
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_reference_exactly(impl, reference_impl, device, seed, mode):
    training, pre, post, inject = DIFF_MODES[mode]
    boxes, logits = diff_case(reference_impl, seed, inject)
    key = (seed, mode)
    if key not in _REFERENCE_CACHE:
        _REFERENCE_CACHE[key] = reference_impl.select_proposals(boxes, logits, DIFF_SIZES, RPN.nms_thresh, pre, post,
                                                                RPN.min_box_size, training)
    expected = _REFERENCE_CACHE[key]
    out = select(impl, device, boxes, logits, DIFF_SIZES, nms_thresh=RPN.nms_thresh, pre_nms_topk=pre,
                 post_nms_topk=post, min_box_size=RPN.min_box_size, training=training)
    for n, ((b, s), (eb, es)) in enumerate(zip(out, expected)):
        assert b.shape == eb.shape, f"image {n}: {b.shape[0]} proposals, reference {eb.shape[0]}"
        assert torch.equal(s, es), f"image {n}: logits differ"
        assert torch.equal(b, eb), f"image {n}: boxes differ"
        assert 0 < s.numel() <= post
        assert_sorted(s)


# ================================================================================================ bad input
@pytest.mark.clause("PROPOSAL.ERRORS")
def test_bad_input(impl, device):
    boxes = [separated(4)[None].to(device), separated(2)[None].to(device)]
    logits = [torch.zeros(1, 4, device=device), torch.zeros(1, 2, device=device)]
    with pytest.raises(ValueError):
        impl.select_proposals(boxes, logits[:1], [BIG])  # one logits level for two box levels
    with pytest.raises(ValueError):
        impl.select_proposals(boxes, [logits[0], torch.zeros(1, 3, device=device)], [BIG])  # 3 logits, 2 boxes
    with pytest.raises(ValueError):
        impl.select_proposals([boxes[0], boxes[1][..., :3]], logits, [BIG])  # boxes without 4 coordinates
    with pytest.raises(ValueError):
        impl.select_proposals(boxes, logits, [BIG, BIG])  # two image sizes for one image
    with pytest.raises(ValueError):
        impl.select_proposals([boxes[0], torch.cat([boxes[1]] * 2)], [logits[0], torch.cat([logits[1]] * 2)], [BIG])
    with pytest.raises(ValueError):
        impl.select_proposals([], [], [])
    assert impl.select_proposals([torch.zeros(0, 5, 4, device=device)], [torch.zeros(0, 5, device=device)], []) == []
