"""Conformance: ROI-head training sampling, box head, predictor, losses, inference and postprocessing.
d2-spec §1.5, §2.10, §2.12, §2.13, §3.

Sampling is random, and the contract leaves open how an implementation consumes its generator, so sampled
ROIs are checked through invariants (counts, pools, classes, matched boxes) and compared with the reference
only as sets where every candidate is sampled. Inference output is compared exactly: scores are drawn
distinct (the spec leaves the order of equal scores open) and away from the score threshold.
"""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from detspec.conformance._util import assert_close, assert_equal, cpu, f32, on, spec_iou
from spec import strategies as S
from spec.config import BASE_RCNN_FPN, PARAMETER_COUNTS, TORCHVISION

ROI = BASE_RCNN_FPN.roi_heads
BOX = BASE_RCNN_FPN.box_head
INF = BASE_RCNN_FPN.inference
K = ROI.num_classes  # 80; background is class / column K
BATCH = ROI.batch_size_per_image  # 512
MAX_FG = int(BATCH * ROI.positive_fraction)  # 128
WEIGHTS = BOX.box_coder.weights  # (10, 10, 5, 5)
LINEAR_TOL = dict(rtol=1e-4, atol=1e-5)  # float32 dot products of up to a few hundred terms vs float64


def T(rows, device, dtype=torch.float32):
    return torch.tensor(rows, dtype=dtype, device=device)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def iou64(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU [len(a), len(b)] by the spec formula, in float64 (an oracle for the sampling checks)."""
    return spec_iou(a.double(), b.double())


def rows(t: torch.Tensor) -> list[tuple]:
    return [tuple(r) for r in t.tolist()]


# ===================================================================================================== sampling
def sample(impl, device, proposals, gt_boxes, gt_classes, num_classes=K, seed=0, **kw):
    out = impl.sample_rois([on(p, device) for p in proposals], [on(g, device) for g in gt_boxes],
                           [on(c, device) for c in gt_classes], num_classes, generator=gen(seed), **kw)
    assert len(out) == len(proposals)
    res = []
    for boxes, classes, matched in out:
        s = boxes.shape[0]
        assert boxes.shape == (s, 4) and matched.shape == (s, 4) and classes.shape == (s,), \
            (boxes.shape, classes.shape, matched.shape)
        assert classes.dtype == torch.int64, classes.dtype
        res.append((cpu(boxes), cpu(classes), cpu(matched)))
    return res


def fg_count(classes: torch.Tensor, num_classes: int = K) -> int:
    """Number of foreground rows, checking that they all come first."""
    __tracebackhide__ = True
    fg = classes < num_classes
    n = int(fg.sum())
    assert fg[:n].all() and (classes[n:] == num_classes).all(), f"foreground must come first: {classes.tolist()}"
    assert (classes >= 0).all()
    return n


@pytest.mark.clause("ROI.SAMPLE_MATCH")
def test_match_threshold_and_no_low_quality_matches(impl, device):
    gt = T([[0, 0, 10, 10], [100, 100, 110, 110]], "cpu")
    gt_cls = torch.tensor([3, 7])
    proposals = T([
        [0, 0, 10, 5],          # IoU 50 / 100 = 0.5 with GT0: foreground at exactly the threshold -> class 3
        [0, 0, 10, 4.99],       # IoU 0.499 < 0.5 -> background
        [100, 100, 110, 104],   # IoU 0.4 with GT1, its best proposal: no low-quality match -> background
        [0, 0, 10, 10],         # IoU 1 with GT0 -> class 3
        [101, 100, 110, 110],   # IoU 0.9 with GT1 -> class 7
        [50, 50, 60, 60],       # IoU 0 -> background
    ], "cpu")
    ((boxes, classes, matched),) = sample(impl, device, [proposals], [gt], [gt_cls], append_gt=False)
    assert boxes.shape[0] == 6  # 3 foreground <= 128, 3 background <= 509: everything is sampled
    assert fg_count(classes) == 3
    index = {r: i for i, r in enumerate(rows(proposals))}
    got = sorted((index[r], int(c)) for r, c in zip(rows(boxes), classes))
    assert got == [(0, 3), (1, K), (2, K), (3, 3), (4, 7), (5, K)], got  # background is K = num_classes
    for r, c, m in zip(rows(boxes), classes.tolist(), matched):
        if c < K:  # foreground rows carry the box of the GT they matched
            assert torch.equal(m, gt[0] if c == 3 else gt[1]), (r, m)
    # another num_classes moves the background label with it
    ((_, classes, _),) = sample(impl, device, [proposals], [gt], [gt_cls], num_classes=10, append_gt=False)
    assert sorted(classes.tolist()) == [3, 3, 7, 10, 10, 10]


@pytest.mark.clause("ROI.SAMPLE_MATCH", "ROI.SAMPLE_COUNT")
def test_image_without_gt_is_all_background(impl, device):
    g = gen(3)
    xy = torch.rand(600, 2, generator=g) * 500
    proposals = torch.cat([xy, xy + 1 + torch.rand(600, 2, generator=g) * 100], dim=1)
    few = proposals[:7]
    out = sample(impl, device, [proposals, few], [torch.zeros(0, 4)] * 2, [torch.zeros(0, dtype=torch.int64)] * 2)
    for (boxes, classes, matched), n in zip(out, (BATCH, 7)):  # min(P, 512) rows; nothing is appended
        assert boxes.shape[0] == n
        assert (classes == K).all()
        assert torch.equal(matched, torch.zeros(n, 4))  # background rows of a GT-less image carry zeros
    assert sorted(rows(out[1][0])) == sorted(rows(few))


@pytest.mark.clause("ROI.SAMPLE_APPEND_GT")
def test_gt_appended_after_proposals(impl, device):
    gt = T([[0, 0, 50, 50], [100, 0, 150, 40]], "cpu")
    gt_cls = torch.tensor([0, K - 1])
    far = T([[200, 200, 220, 220], [300, 300, 310, 330]], "cpu")  # IoU 0 with both GT: background
    # append_gt (the default): the candidates are the 2 proposals followed by the 2 GT boxes; the GT boxes
    # match themselves with IoU 1 and are the only foreground.
    ((boxes, classes, matched),) = sample(impl, device, [far], [gt], [gt_cls])
    assert boxes.shape[0] == 4 and fg_count(classes) == 2
    assert sorted(zip(rows(boxes[:2]), classes[:2].tolist())) == sorted(zip(rows(gt), gt_cls.tolist()))
    assert torch.equal(matched[:2], boxes[:2])
    assert sorted(rows(boxes[2:])) == sorted(rows(far))
    # without appending, nothing is foreground
    ((boxes, classes, _),) = sample(impl, device, [far], [gt], [gt_cls], append_gt=False)
    assert boxes.shape[0] == 2 and (classes == K).all()
    # no proposals at all: the GT boxes alone
    ((boxes, classes, _),) = sample(impl, device, [torch.zeros(0, 4)], [gt], [gt_cls])
    assert sorted(rows(boxes)) == sorted(rows(gt)) and fg_count(classes) == 2
    # a proposal identical to a GT box is not merged with it: both are candidates
    ((boxes, classes, _),) = sample(impl, device, [torch.cat([far, gt[:1]])], [gt], [gt_cls])
    assert boxes.shape[0] == 5 and fg_count(classes) == 3
    assert Counter(rows(boxes))[tuple(gt[0].tolist())] == 2


def _jittered_pool(g, gt, n_fg, n_bg):
    """n_fg proposals within +-2 px of a GT box (IoU > 0.8 for 50-px boxes) and n_bg far from every GT."""
    src = torch.randint(0, gt.shape[0], (n_fg,), generator=g)
    fg = gt[src] + (torch.rand(n_fg, 4, generator=g) * 4 - 2)
    xy = torch.rand(n_bg, 2, generator=g) * 800 + torch.tensor([0.0, 300.0])
    bg = torch.cat([xy, xy + 5 + torch.rand(n_bg, 2, generator=g) * 60], dim=1)
    return torch.cat([fg, bg])[torch.randperm(n_fg + n_bg, generator=g)], src


@pytest.mark.clause("ROI.SAMPLE_COUNT", "ROI.SAMPLE_MATCH")
@pytest.mark.parametrize("n_fg, n_bg", [(300, 1000), (124, 1000), (5, 1000), (3, 2), (0, 0), (200, 100)])
def test_sample_counts(impl, device, n_fg, n_bg):
    g = gen(n_fg * 7 + n_bg)
    gt = torch.tensor([[100.0 * i, 0.0, 100.0 * i + 50, 50.0] for i in range(4)])
    gt_cls = torch.tensor([5, 11, 5, 42])
    proposals, _ = _jittered_pool(g, gt, n_fg, n_bg)
    ((boxes, classes, matched),) = sample(impl, device, [proposals], [gt], [gt_cls], seed=n_fg)
    fg_pool, bg_pool = n_fg + 4, n_bg  # the 4 appended GT boxes are foreground too
    num_fg = min(fg_pool, MAX_FG)  # at most 512 * 0.25 = 128 foreground
    num_bg = min(bg_pool, BATCH - num_fg)  # background fills the batch up to 512
    assert fg_count(classes) == num_fg and boxes.shape[0] == num_fg + num_bg <= BATCH
    # every row is a distinct candidate, sampled without replacement
    candidates = Counter(rows(torch.cat([proposals, gt])))
    assert not Counter(rows(boxes)) - candidates
    # foreground rows: class and box of the GT they overlap (IoU > 0.8 with it, 0 with the others)
    iou = iou64(boxes[:num_fg], gt)
    best = iou.argmax(dim=1)
    assert (iou.max(dim=1).values > 0.8).all()
    assert torch.equal(classes[:num_fg], gt_cls[best]) and torch.equal(matched[:num_fg], gt[best])
    assert (iou64(boxes[num_fg:], gt) == 0).all()


@pytest.mark.clause("ROI.SAMPLE_COUNT")
def test_sampling_depends_only_on_the_generator(impl, device):
    g = gen(11)
    gt = torch.tensor([[0.0, 0.0, 50.0, 50.0], [200.0, 0.0, 250.0, 50.0]])
    gt_cls = torch.tensor([1, 2])
    pools = [_jittered_pool(g, gt, 400, 900)[0], _jittered_pool(g, gt, 50, 2000)[0]]
    args = (pools, [gt, gt], [gt_cls, gt_cls])
    first, again = sample(impl, device, *args, seed=5), sample(impl, device, *args, seed=5)
    for a, b in zip(first, again):
        for x, y in zip(a, b):
            assert torch.equal(x, y), "the same generator state must give the same sample"
    other = sample(impl, device, *args, seed=6)
    assert any(not torch.equal(a[0], b[0]) for a, b in zip(first, other)), "the generator is not used"
    # generator=None (the global RNG) is allowed
    out = impl.sample_rois([on(p, device) for p in pools], [on(gt, device)] * 2, [on(gt_cls, device)] * 2, K)
    assert [b.shape[0] for b, _, _ in out] == [BATCH, BATCH]


@pytest.mark.clause("ROI.SAMPLE_MATCH", "ROI.SAMPLE_COUNT", "ROI.SAMPLE_APPEND_GT")
@given(S.boxes(max_n=30), S.boxes(max_n=5, nonempty=True), st.data())
def test_sample_invariants_and_reference(impl, reference_impl, device, proposals, gt, data):
    num_classes = data.draw(st.sampled_from([1, 3, K]), label="num_classes")
    gt_cls = torch.tensor(data.draw(st.lists(st.integers(0, num_classes - 1), min_size=gt.shape[0],
                                             max_size=gt.shape[0]), label="gt_classes"), dtype=torch.int64)
    batch = data.draw(st.sampled_from([8, 16, BATCH]), label="batch_size_per_image")
    append = data.draw(st.booleans(), label="append_gt")
    (p32, p64), (g32, g64) = f32(proposals), f32(gt)
    kw = dict(batch_size_per_image=batch, positive_fraction=ROI.positive_fraction, append_gt=append)
    ((boxes, classes, matched),) = sample(impl, device, [p32], [g32], [gt_cls], num_classes, **kw)

    cand = torch.cat([p64, g64]) if append else p64
    iou = iou64(g64, cand)  # [G, C]
    best = iou.max(dim=0).values if gt.shape[0] else torch.zeros(cand.shape[0], dtype=torch.float64)
    integral = (cand == cand.round()).all(dim=1) & bool((g64 == g64.round()).all())
    ambiguous = ((best - ROI.iou_thresholds[0]).abs() < 1e-6) & ((best != 0.5) | ~integral)
    assume(not ambiguous.any())  # float32 and float64 IoU may fall on either side of 0.5
    fg_pool = int((best >= ROI.iou_thresholds[0]).sum())
    num_fg = min(fg_pool, int(batch * ROI.positive_fraction))
    num_bg = min(cand.shape[0] - fg_pool, batch - num_fg)
    assert fg_count(classes, num_classes) == num_fg and boxes.shape[0] == num_fg + num_bg <= batch
    assert not Counter(rows(boxes.double())) - Counter(rows(cand))  # sampled without replacement
    if gt.shape[0] == 0:
        assert torch.equal(matched, torch.zeros_like(matched))
    out_iou = iou64(g64, boxes)  # [G, S]
    for i in range(num_fg):  # foreground: the best-overlapping GT's box and class
        j = [j for j in range(gt.shape[0]) if torch.equal(g32[j], matched[i])]
        assert j, f"row {i}: matched box {matched[i].tolist()} is not a GT box"
        assert out_iou[j[0], i] >= 0.5 and out_iou[j[0], i] >= out_iou[:, i].max() - 1e-6
        assert int(classes[i]) in {int(gt_cls[x]) for x in j}
    if gt.shape[0] and boxes.shape[0] > num_fg:
        assert (out_iou[:, num_fg:].max(dim=0).values < 0.5).all()
    if num_fg == fg_pool and num_bg == cand.shape[0] - fg_pool:  # everything sampled: the set is determined
        ((eb, ec, _),) = reference_impl.sample_rois([p64], [g64], [gt_cls], num_classes, **kw)
        assert sorted(zip(rows(boxes.double()), classes.tolist())) == sorted(zip(rows(eb), ec.tolist()))


# ===================================================================================================== box head
@pytest.mark.clause("ROI.BOX_HEAD")
def test_box_head_structure(impl, device):
    head = impl.BoxHead()  # in_channels 256, resolution 7, fc_dim 1024, num_fc 2
    shapes = {k: tuple(t.shape) for k, t in head.state_dict().items()}
    assert shapes == {"fc1.weight": (1024, 256 * 7 * 7), "fc1.bias": (1024,),
                      "fc2.weight": (1024, 1024), "fc2.bias": (1024,)}, shapes
    small = impl.BoxHead(in_channels=4, resolution=3, fc_dim=8, num_fc=2).to(device)
    x = torch.randn(5, 4, 3, 3, generator=gen(1)).to(device)
    y = small(x)
    assert y.shape == (5, 8)
    assert (cpu(y) >= 0).all()  # ReLU after the last FC
    assert small(x[:0]).shape == (0, 8)  # no ROIs


@pytest.mark.clause("ROI.BOX_HEAD")
def test_box_head_flattens_channel_major(impl, device):
    # C = 3, r = 2: input element (c, y, x) holds code(c, y, x) = 1 + 100 c + 10 y + x (all positive).
    # fc1 = identity on the 12 flattened inputs, fc2 = identity: output j is input element j of the
    # channel-major flattening, j = c * r * r + y * r + x, i.e. code(j // 4, (j % 4) // 2, j % 2).
    head = impl.BoxHead(in_channels=3, resolution=2, fc_dim=12, num_fc=2)
    with torch.no_grad():
        head.fc1.weight.copy_(torch.eye(12))
        head.fc1.bias.zero_()
        head.fc2.weight.copy_(torch.eye(12))
        head.fc2.bias.zero_()
    head = head.to(device)

    def code(c, y, x):
        return 1.0 + 100 * c + 10 * y + x

    x = torch.tensor([[[[code(c, y, xx) for xx in range(2)] for y in range(2)] for c in range(3)]])
    expected = torch.tensor([[code(j // 4, (j % 4) // 2, j % 2) for j in range(12)]])
    assert expected[0, :5].tolist() == [1.0, 2.0, 11.0, 12.0, 101.0]
    assert_close(cpu(head(x.to(device))), expected.double(), "box_head")
    # one fc1 row that selects element (c=2, y=1, x=0) = index 2*4 + 1*2 + 0 = 10 only
    with torch.no_grad():
        head.fc1.weight.zero_()
        head.fc1.weight[0, 10] = 1.0
    assert cpu(head(x.to(device)))[0, 0].item() == code(2, 1, 0) == 211.0


@pytest.mark.clause("ROI.BOX_HEAD")
def test_box_head_relu_after_each_fc(impl, device):
    head = impl.BoxHead(in_channels=1, resolution=1, fc_dim=2, num_fc=2)
    x = torch.ones(1, 1, 1, 1, device=device)
    with torch.no_grad():
        head.fc1.weight.zero_()
        head.fc1.bias.fill_(-1.0)  # fc1 output -1 -> ReLU -> 0
        head.fc2.weight.fill_(1.0)
        head.fc2.bias.copy_(torch.tensor([0.5, -0.5]))  # without the first ReLU: -2 + 0.5, -2 - 0.5
    head = head.to(device)
    assert cpu(head(x)).tolist() == [[0.5, 0.0]]  # 0.5 survives, -0.5 is cut by the second ReLU


@pytest.mark.clause("ROI.BOX_HEAD", "ROI.PREDICTOR")
def test_head_and_predictor_match_reference(impl, reference_impl, device):
    ref_head = reference_impl.BoxHead(in_channels=4, resolution=3, fc_dim=16, num_fc=2).double()
    ref_pred = reference_impl.BoxPredictor(in_features=16, num_classes=5).double()
    with torch.no_grad():
        for p in list(ref_head.parameters()) + list(ref_pred.parameters()):
            p.normal_(0, 0.3, generator=gen(7))
    head = impl.BoxHead(in_channels=4, resolution=3, fc_dim=16, num_fc=2)
    pred = impl.BoxPredictor(in_features=16, num_classes=5)
    head.load_state_dict(ref_head.state_dict())  # identical keys and shapes
    pred.load_state_dict(ref_pred.state_dict())
    head, pred = head.to(device), pred.to(device)
    x32, x64 = f32(torch.randn(6, 4, 3, 3, generator=gen(8), dtype=torch.float64))
    exp_logits, exp_deltas = ref_pred(ref_head(x64))
    logits, deltas = pred(head(on(x32, device)))
    torch.testing.assert_close(cpu(logits).double(), exp_logits.detach(), **LINEAR_TOL)
    torch.testing.assert_close(cpu(deltas).double(), exp_deltas.detach(), **LINEAR_TOL)


@pytest.mark.clause("ROI.PREDICTOR")
def test_predictor_outputs(impl, device):
    pred = impl.BoxPredictor()  # in_features 1024, num_classes 80
    shapes = {k: tuple(t.shape) for k, t in pred.state_dict().items()}
    assert shapes == {"cls_score.weight": (K + 1, 1024), "cls_score.bias": (K + 1,),
                      "bbox_pred.weight": (4 * K, 1024), "bbox_pred.bias": (4 * K,)}, shapes
    # With zero weights the outputs are the biases: logits column i = bias i, delta column 4c + j = bias 4c + j
    small = impl.BoxPredictor(in_features=6, num_classes=3)
    with torch.no_grad():
        small.cls_score.weight.zero_()
        small.cls_score.bias.copy_(torch.tensor([0.0, 1.0, 2.0, 3.0]))  # column 3 = K is the background
        small.bbox_pred.weight.zero_()
        small.bbox_pred.bias.copy_(torch.tensor([10.0 * c + j for c in range(3) for j in range(4)]))
    small = small.to(device)
    logits, deltas = small(torch.randn(2, 6, generator=gen(2)).to(device))
    assert logits.shape == (2, 4) and deltas.shape == (2, 12)
    assert cpu(logits).tolist() == [[0.0, 1.0, 2.0, 3.0]] * 2
    assert cpu(deltas).reshape(2, 3, 4)[:, 2].tolist() == [[20.0, 21.0, 22.0, 23.0]] * 2  # class 2's slot


@pytest.mark.clause("ROI.HEAD_PARAMS")
def test_head_parameter_count(impl):
    head, pred = impl.BoxHead(), impl.BoxPredictor()
    # d2-spec §3: fc1 12544 * 1024 + 1024 = 12,846,080; fc2 1024 * 1024 + 1024 = 1,049,600;
    # cls_score 1024 * 81 + 81 = 83,025; bbox_pred 1024 * 320 + 320 = 328,000; total 14,306,705.
    counts = [sum(p.numel() for p in m.parameters()) for m in (head.fc1, head.fc2, pred.cls_score, pred.bbox_pred)]
    assert counts == [12_846_080, 1_049_600, 83_025, 328_000]
    total = sum(p.numel() for p in head.parameters()) + sum(p.numel() for p in pred.parameters())
    assert total == 12_846_080 + 1_049_600 + 83_025 + 328_000 == PARAMETER_COUNTS.box_head_and_predictor


# ===================================================================================================== losses
# K = 2 (logits [R, 3], deltas [R, 8]), three ROIs:
#   ROI0 class 0, logits (0, 0, 0): CE = ln 3. proposal (0, 0, 10, 20) -> GT (0, 0, 20, 20): target deltas with
#        weights (10, 10, 5, 5) = (10 * (10 - 5) / 10, 0, 5 ln(20 / 10), 0) = (5, 0, 3.4657359, 0) (d2-spec §3);
#        predicted slot 0 = (4, 1, 3.4657359, 0.5): |diff| = (1, 1, 0, 0.5). Slot 1 (100s) is ignored.
#   ROI1 background (class 2), logits (0, 0, ln 2): p = 2 / (1 + 1 + 2) = 0.5, CE = ln 2; its GT box is zeros
#        (an image without GT) and its deltas (100s) carry no loss.
#   ROI2 class 1, logits (0, 0, 0): CE = ln 3. proposal = GT (5, 5, 15, 15): target 0; slot 1 = (0.25, -0.05,
#        0, 0): |diff| = (0.25, 0.05, 0, 0). Slot 0 (100s) is ignored.
# loss_cls = (ln 3 + ln 2 + ln 3) / 3 (mean over all 3 ROIs, background included).
# loss_box_reg (L1, beta 0) = (1 + 1 + 0 + 0.5 + 0.25 + 0.05) / 3 = 2.8 / 3 (divided by R = 3, not by 2 fg).
# smooth L1 with beta = 1/9 (torchvision): |d| >= beta -> |d| - beta / 2 = |d| - 1/18; |d| < beta -> d^2 / (2 beta)
#   = 4.5 d^2: (1 - 1/18) * 2 + (0.5 - 1/18) + (0.25 - 1/18) + 4.5 * 0.05^2 = 2.75 - 4/18 + 0.01125, over 3.
HAND_LOGITS = [[0.0, 0.0, 0.0], [0.0, 0.0, math.log(2)], [0.0, 0.0, 0.0]]
HAND_DELTAS = [[4, 1, 5 * math.log(2), 0.5, 100, 100, 100, 100],
               [100] * 8,
               [100, 100, 100, 100, 0.25, -0.05, 0, 0]]
HAND_PROPOSALS = [[0, 0, 10, 20], [0, 0, 10, 10], [5, 5, 15, 15]]
HAND_GT = [[0, 0, 20, 20], [0, 0, 0, 0], [5, 5, 15, 15]]
HAND_CLASSES = [0, 2, 1]


def losses(impl, device, logits, deltas, proposals, classes, gt, **kw):
    out = impl.roi_losses(on(logits, device), on(deltas, device), on(proposals, device), on(classes, device),
                          on(gt, device), **kw)
    assert set(out) == {"loss_cls", "loss_box_reg"}, set(out)
    for v in out.values():
        assert v.dim() == 0 and torch.isfinite(v), v
    return {k: cpu(v) for k, v in out.items()}


@pytest.mark.clause("ROI.LOSS_CLS", "ROI.LOSS_BOX")
def test_losses_hand_case(impl, device):
    args = [T(HAND_LOGITS, "cpu"), T(HAND_DELTAS, "cpu"), T(HAND_PROPOSALS, "cpu"), torch.tensor(HAND_CLASSES),
            T(HAND_GT, "cpu")]
    out = losses(impl, device, *args)  # weights (10, 10, 5, 5) and beta 0 are the defaults
    assert_close(out["loss_cls"], torch.tensor((2 * math.log(3) + math.log(2)) / 3, dtype=torch.float64),
                 "roi_losses")
    assert_close(out["loss_box_reg"], torch.tensor(2.8 / 3, dtype=torch.float64), "roi_losses")
    tv = losses(impl, device, *args, weights=WEIGHTS, smooth_l1_beta=TORCHVISION.box_head.smooth_l1_beta)
    assert_close(tv["loss_box_reg"], torch.tensor((2.75 - 4 / 18 + 0.01125) / 3, dtype=torch.float64),
                 "roi_losses")
    assert_close(tv["loss_cls"], out["loss_cls"].double(), "roi_losses")


@pytest.mark.clause("ROI.LOSS_BOX")
def test_loss_box_uses_the_weights(impl, device):
    # ROI0 of the hand case alone with weights (1, 1, 1, 1): target (0.5, 0, ln 2, 0); prediction
    # (0.5, 0, 0, 0) -> |diff| = ln 2 (one ROI: divided by 1).
    out = losses(impl, device, T(HAND_LOGITS[:1], "cpu"), T([[0.5, 0, 0, 0, 9, 9, 9, 9]], "cpu"),
                 T(HAND_PROPOSALS[:1], "cpu"), torch.tensor([0]), T(HAND_GT[:1], "cpu"), weights=(1, 1, 1, 1))
    assert_close(out["loss_box_reg"], torch.tensor(math.log(2), dtype=torch.float64), "roi_losses")


@pytest.mark.clause("ROI.LOSS_CLS", "ROI.LOSS_BOX")
def test_losses_without_rois_or_foreground(impl, device):
    logits = torch.zeros(0, 3, requires_grad=True)
    deltas = torch.zeros(0, 8, requires_grad=True)
    out = impl.roi_losses(on(logits, device), on(deltas, device), torch.zeros(0, 4, device=device),
                          torch.zeros(0, dtype=torch.int64, device=device), torch.zeros(0, 4, device=device))
    for name in ("loss_cls", "loss_box_reg"):  # 0, not the NaN of a mean over nothing
        assert out[name].dim() == 0 and cpu(out[name]).item() == 0.0, (name, out[name])
    total = out["loss_cls"] + out["loss_box_reg"]
    if total.requires_grad:
        total.backward()
        assert logits.grad is None or torch.isfinite(logits.grad).all()
    # all background: loss_box_reg is exactly 0; loss_cls is the CE of the background column (ln 3 each)
    out = losses(impl, device, torch.zeros(4, 3), torch.full((4, 8), 50.0), T([[0, 0, 10, 10]] * 4, "cpu"),
                 torch.full((4,), 2), torch.zeros(4, 4))
    assert out["loss_box_reg"].item() == 0.0
    assert_close(out["loss_cls"], torch.tensor(math.log(3), dtype=torch.float64), "roi_losses")


@pytest.mark.clause("ROI.LOSS_CLS", "ROI.LOSS_BOX")
@given(st.data())
def test_losses_match_reference(impl, reference_impl, device, data):
    r = data.draw(st.integers(0, 20), label="R")
    k = data.draw(st.sampled_from([1, 3, K]), label="K")
    beta = data.draw(st.sampled_from([BOX.smooth_l1_beta, TORCHVISION.box_head.smooth_l1_beta]), label="beta")
    g = gen(data.draw(st.integers(0, 2**16), label="seed"))
    logits = torch.randn(r, k + 1, generator=g, dtype=torch.float64) * 3
    deltas = torch.randn(r, 4 * k, generator=g, dtype=torch.float64)
    xy = torch.rand(r, 2, generator=g, dtype=torch.float64) * 500
    # proposals at least 8 px wide (see the roi_losses tolerance)
    proposals = torch.cat([xy, xy + 8 + torch.rand(r, 2, generator=g, dtype=torch.float64) * 200], dim=1)
    gt = proposals + torch.randn(r, 4, generator=g, dtype=torch.float64) * 5
    gt[:, 2:] = torch.maximum(gt[:, 2:], gt[:, :2] + 1)
    classes = torch.randint(0, k + 1, (r,), generator=g)
    gt[classes == k] = 0.0  # background rows may carry zero boxes
    inputs = [f32(t) for t in (logits, deltas, proposals)]
    gt32, gt64 = f32(gt)
    expected = reference_impl.roi_losses(inputs[0][1], inputs[1][1], inputs[2][1], classes, gt64,
                                         smooth_l1_beta=beta)
    out = losses(impl, device, inputs[0][0], inputs[1][0], inputs[2][0], classes, gt32, smooth_l1_beta=beta)
    for name in ("loss_cls", "loss_box_reg"):
        assert_close(out[name], expected[name].detach(), "roi_losses", name)


# ===================================================================================================== inference
def infer(impl, device, boxes, scores, sizes, **kw):
    out = impl.fast_rcnn_inference([on(b, device) for b in boxes], [on(s, device) for s in scores], sizes, **kw)
    assert len(out) == len(boxes)
    res = []
    for b, s, c, i in out:
        d = s.shape[0]
        assert b.shape == (d, 4) and s.shape == (d,) and c.shape == (d,) and i.shape == (d,), \
            (b.shape, s.shape, c.shape, i.shape)
        assert c.dtype == torch.int64 and i.dtype == torch.int64, (c.dtype, i.dtype)
        res.append((cpu(b), cpu(s), cpu(c), cpu(i)))
    return res


def clip(boxes: torch.Tensor, size) -> torch.Tensor:
    h, w = size
    return torch.stack([boxes[..., 0].clamp(0, w), boxes[..., 1].clamp(0, h), boxes[..., 2].clamp(0, w),
                        boxes[..., 3].clamp(0, h)], dim=-1)


def check_detections(det, boxes, scores, size, score_thresh, topk):
    """Invariants of one image's detections that need no oracle."""
    __tracebackhide__ = True
    b, s, c, i = det
    k = scores.shape[1] - 1
    assert s.shape[0] <= topk
    assert (s > score_thresh).all(), s
    assert (s[:-1] >= s[1:]).all(), "detections must be sorted by score, descending"
    assert ((c >= 0) & (c < k)).all(), c  # never the background column K
    assert ((i >= 0) & (i < boxes.shape[0])).all(), i
    assert torch.equal(s, scores[i, c].to(s.dtype)), "score must be scores[roi_index, class]"
    src = boxes.reshape(boxes.shape[0], k, 4)[i, c].to(b.dtype)
    assert torch.equal(b, clip(src, size)), "box must be the clipped boxes[roi_index, 4 class : 4 class + 4]"
    assert len(set(zip(i.tolist(), c.tolist()))) == len(i), "each (ROI, class) pair at most once"


@pytest.mark.clause("ROI.INFER_THRESH")
def test_score_threshold_is_strict(impl, device):
    # K = 3, one ROI, the same box for every class (different classes never suppress each other).
    # Scores (class 0, 1, 2, background) = (0.05, 0.5, 0.0501, 0.3999): class 0 sits exactly on the threshold
    # and is dropped (score > 0.05); the background column is never a detection, however high.
    # float64 inputs: 0.05 is not a float32 number, so only float64 holds a score of exactly 0.05.
    box = [10, 10, 20, 20]
    boxes = T([box * 3], "cpu", torch.float64)
    scores = T([[INF.score_thresh, 0.5, 0.0501, 0.3999]], "cpu", torch.float64)
    ((b, s, c, i),) = infer(impl, device, [boxes], [scores], [(100, 100)])
    assert c.tolist() == [1, 2] and i.tolist() == [0, 0]
    assert_close(s, torch.tensor([0.5, 0.0501], dtype=torch.float64), "fast_rcnn_inference")
    # float32, with a threshold float32 holds exactly: 0.25 is dropped, 0.2500001 kept
    scores = T([[0.25, 0.2500001, 0.9, 0.05]], "cpu")
    ((b, s, c, i),) = infer(impl, device, [boxes.float()], [scores], [(100, 100)], score_thresh=0.25)
    assert c.tolist() == [2, 1]
    assert infer(impl, device, [boxes.float()], [scores], [(100, 100)], score_thresh=0.95)[0][0].shape == (0, 4)


@pytest.mark.clause("ROI.INFER_NMS")
def test_nms_is_per_class(impl, device):
    # K = 2. A = (0, 0, 10, 10); A' = (0, 0, 10, 6) has IoU 60 / 100 = 0.6 > 0.5 with A; A'' = (0, 0, 10, 5)
    # has IoU exactly 0.5 with A (suppression needs IoU > 0.5); B and "far" overlap nothing.
    #   ROI0: class 0 A (0.9),   class 1 A (0.3)
    #   ROI1: class 0 A' (0.8),  class 1 far (0.2)
    #   ROI2: class 0 A'' (0.7), class 1 A' (0.6)
    #   ROI3: class 0 B (0.5),   class 1 B (0.4)
    # Class 0 by score: A kept; A' suppressed by A (0.6); A'' kept (0.5 is not > 0.5); B kept.
    # Class 1 by score: A' (ROI2) kept; A (ROI0) suppressed by A' (0.6); far kept.
    # Across classes nothing is suppressed: ROI3's B twice, ROI0's class-0 A next to ROI2's class-1 A'.
    a, a1, a2, b, far = [0, 0, 10, 10], [0, 0, 10, 6], [0, 0, 10, 5], [70, 0, 80, 10], [50, 50, 60, 60]
    boxes = T([a + a, a1 + far, a2 + a1, b + b], "cpu")
    scores = T([[0.9, 0.3, 0.01], [0.8, 0.2, 0.01], [0.7, 0.6, 0.01], [0.5, 0.4, 0.01]], "cpu")
    ((_, s, c, i),) = infer(impl, device, [boxes], [scores], [(100, 100)])
    got = list(zip(i.tolist(), c.tolist()))
    assert got == [(0, 0), (2, 0), (2, 1), (3, 0), (3, 1), (1, 1)], got  # by score: .9 .7 .6 .5 .4 .2
    assert_close(s, torch.tensor([0.9, 0.7, 0.6, 0.5, 0.4, 0.2], dtype=torch.float64), "fast_rcnn_inference")
    # a looser threshold keeps all 8 pairs
    ((_, s, _, _),) = infer(impl, device, [boxes], [scores], [(100, 100)], nms_thresh=0.99)
    assert s.shape == (8,)


@pytest.mark.clause("ROI.INFER_TOPK")
def test_topk_per_image(impl, device):
    g = gen(4)
    n = 150  # 150 separate boxes (no overlaps), K = 1, distinct scores in (0.06, 1)
    i = torch.arange(n, dtype=torch.float32)
    x, y = (i % 15) * 20, torch.div(i, 15, rounding_mode="floor") * 20
    boxes = torch.stack([x, y, x + 10, y + 10], dim=1)
    fg = 0.06 + 0.9 * torch.randperm(n, generator=g).float() / n
    scores = torch.stack([fg, 1 - fg], dim=1)
    out = infer(impl, device, [boxes, boxes[:30]], [scores, scores[:30]], [(400, 400), (400, 400)])
    (b0, s0, c0, i0), (b1, s1, c1, i1) = out
    top = fg.topk(INF.detections_per_image)  # 100 detections per image, best first
    assert torch.equal(s0, top.values) and torch.equal(i0, top.indices) and torch.equal(b0, boxes[top.indices])
    assert (c0 == 0).all()
    assert torch.equal(s1, fg[:30].sort(descending=True).values) and s1.shape == (30,)  # fewer than 100: all
    ((_, s, _, i),) = infer(impl, device, [boxes], [scores], [(400, 400)], topk_per_image=7)
    assert torch.equal(i, fg.topk(7).indices)


@pytest.mark.clause("ROI.INFER_CLIP")
def test_clip_before_nms_and_nonfinite_rows(impl, device):
    size = (50, 80)  # (h, w)
    # ROI0, K = 1: (-10, -5, 100, 60) -> clipped to (0, 0, 80, 50).
    # ROI1/ROI2: A = (60, 0, 100, 10) and B = (65, 0, 140, 10): before clipping IoU = 350 / 800 = 0.44 (kept),
    # clipped to w = 80: A = (60, 0, 80, 10), B = (65, 0, 80, 10): IoU = 150 / 200 = 0.75 -> B suppressed.
    boxes = T([[-10, -5, 100, 60], [60, 0, 100, 10], [65, 0, 140, 10]], "cpu")
    scores = T([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3]], "cpu")
    ((b, s, c, i),) = infer(impl, device, [boxes], [scores], [size])
    assert i.tolist() == [0, 1]
    assert b.tolist() == [[0, 0, 80, 50], [60, 0, 80, 10]]
    # non-finite rows are dropped whole (all classes), and roi_index still names the input row
    boxes = T([[0, 0, 10, 10, float("nan"), 0, 10, 10],    # NaN in class 1's box: the row goes
               [20, 20, 30, 30, 20, 20, 30, 30],
               [40, 40, 45, 45, 40, 40, 45, 45],
               [0, 0, float("inf"), 10, 0, 0, 5, 5]], "cpu")
    scores = T([[0.9, 0.05, 0.05], [0.3, 0.4, 0.3], [float("nan"), 0.5, 0.5], [0.95, 0.01, 0.04]], "cpu")
    ((b, s, c, i),) = infer(impl, device, [boxes], [scores], [(100, 100)])
    assert list(zip(i.tolist(), c.tolist())) == [(1, 1), (1, 0)]
    assert torch.isfinite(b).all() and torch.isfinite(s).all()


@pytest.mark.clause("ROI.INFER_CLIP")
def test_no_size_filter_in_detectron2_profile(impl, device):
    # A box wholly right of the image clips to zero width. detectron2 keeps it (no size filter in
    # fast_rcnn_inference; detector_postprocess removes it later); the torchvision profile's min_box_size
    # 1e-2 drops it before NMS.
    boxes = T([[90, 10, 120, 20], [10, 10, 20, 20]], "cpu")
    scores = T([[0.9, 0.1], [0.8, 0.2]], "cpu")
    ((b, _, _, i),) = infer(impl, device, [boxes], [scores], [(50, 80)])
    assert i.tolist() == [0, 1] and b[0].tolist() == [80, 10, 80, 20]
    ((b, _, _, i),) = infer(impl, device, [boxes], [scores], [(50, 80)],
                            min_box_size=TORCHVISION.inference.min_box_size)
    assert i.tolist() == [1]


def _near_inference_tie(boxes: torch.Tensor, scores: torch.Tensor, size: tuple[int, int],
                        iou_margin: float = 1e-4, score_margin: float = 1e-6) -> bool:
    """float64 boxes [R, 4K] and scores [R, K+1] of one image: does a candidate's score lie within score_margin of
    INF.score_thresh, or do two same-class candidates (score above it; boxes clipped to size) have an IoU within
    iou_margin of INF.nms_thresh? Non-finite rows are ignored (they are dropped)."""
    h, w = size
    finite = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores).all(dim=1)
    b = boxes[finite].reshape(-1, scores.shape[1] - 1, 4)
    sc = scores[finite][:, :-1]
    b = torch.stack([b[..., 0].clamp(0, w), b[..., 1].clamp(0, h), b[..., 2].clamp(0, w), b[..., 3].clamp(0, h)], -1)
    if bool(((sc - INF.score_thresh).abs() < score_margin).any()):
        return True
    for j in range(sc.shape[1]):
        cand = b[sc[:, j] > INF.score_thresh, j]
        iou = spec_iou(cand, cand)
        off_diagonal = ~torch.eye(cand.shape[0], dtype=torch.bool)
        if bool((((iou - INF.nms_thresh).abs() < iou_margin) & off_diagonal).any()):
            return True
    return False


@pytest.mark.clause("ROI.INFER_THRESH", "ROI.INFER_NMS", "ROI.INFER_TOPK", "ROI.INFER_CLIP")
@given(st.data())
def test_inference_matches_reference(impl, reference_impl, device, data):
    topk = data.draw(st.sampled_from([INF.detections_per_image, 5]), label="topk")
    k = data.draw(st.integers(1, 4), label="K")
    sizes = [(100, 120), (60, 70)]
    images = [data.draw(S.class_boxes_and_scores(max_r=r, image_size=size, num_classes=k), label=f"image {n}")
              for n, (r, size) in enumerate(zip((25, 10), sizes))]
    boxes, scores = [f32(b) for b, _ in images], [f32(s) for _, s in images]
    inject = data.draw(st.booleans(), label="nonfinite") and boxes[0][0].shape[0] > 2
    if inject:  # a NaN box in row 0 and an inf score in row 2
        for pair in boxes[0]:
            pair[0, 0] = float("nan")
        for pair in scores[0]:
            pair[2, -1] = float("inf")
    # the float32 run is compared with the float64 reference, so an example whose outcome float32 rounding can
    # flip is not a verdict on the implementation: a same-class IoU within 1e-4 of nms_thresh, or a score within
    # 1e-6 of score_thresh (found by hypothesis: a pair at IoU 0.5 - 3e-7 in float64 that float32 rounds up)
    assume(not any(_near_inference_tie(b64, s64, size) for (_, b64), (_, s64), size in zip(boxes, scores, sizes)))
    expected = reference_impl.fast_rcnn_inference([b for _, b in boxes], [s for _, s in scores], sizes,
                                                  topk_per_image=topk)
    out = infer(impl, device, [b for b, _ in boxes], [s for s, _ in scores], sizes, topk_per_image=topk)
    for n, ((b, s, c, i), (eb, es, ec, ei)) in enumerate(zip(out, expected)):
        assert_equal(i, ei, f"image {n} roi_index")
        assert_equal(c, ec, f"image {n} classes")
        assert_equal(s.double(), es, f"image {n} scores")  # copies of the inputs: exact
        assert_equal(b.double(), eb, f"image {n} boxes")  # clipped copies: exact
        check_detections((b, s, c, i), boxes[n][0], scores[n][0], sizes[n], INF.score_thresh, topk)
        if inject and n == 0:
            assert not ({0, 2} & set(i.tolist())), "non-finite rows must be dropped"


# ===================================================================================================== postprocess
@pytest.mark.clause("ROI.POSTPROCESS")
def test_detector_postprocess(impl, device):
    # network input (h, w) = (400, 600) -> original image (200, 900): x * 900/600 = 1.5, y * 200/400 = 0.5
    boxes = T([[10, 20, 100, 200],      # -> (15, 10, 150, 100)
               [500, 0, 700, 400],      # -> (750, 0, 1050, 200) -> x2 clipped to 900
               [650, 10, 700, 20],      # -> (975, 5, 1050, 10) -> (900, 5, 900, 10): width 0, dropped
               [-20, -40, 10, 500],     # -> (-30, -20, 15, 250) -> (0, 0, 15, 200)
               [30, 30, 30, 60]], "cpu")  # zero width: dropped
    out, keep = impl.detector_postprocess(boxes.to(device), (400, 600), (200, 900))
    assert out.shape == (5, 4) and keep.shape == (5,) and keep.dtype == torch.bool
    assert cpu(out).tolist() == [[15, 10, 150, 100], [750, 0, 900, 200], [900, 5, 900, 10], [0, 0, 15, 200],
                                 [45, 15, 45, 30]]
    assert cpu(keep).tolist() == [True, True, False, True, False]
    # d2-spec §3 resize example: 427 x 640 -> 800 x 1199; back: x * 640/1199, y * 427/800
    box = T([[100, 200, 300, 400]], "cpu")
    out, keep = impl.detector_postprocess(box.to(device), (800, 1199), (427, 640))
    sx, sy = 640 / 1199, 427 / 800
    assert_close(cpu(out), torch.tensor([[100 * sx, 200 * sy, 300 * sx, 400 * sy]], dtype=torch.float64),
                 "detector_postprocess")
    assert cpu(keep).tolist() == [True]
    out, keep = impl.detector_postprocess(torch.zeros(0, 4, device=device), (400, 600), (200, 900))
    assert out.shape == (0, 4) and keep.shape == (0,)


# ===================================================================================================== bad input
# (ROI.* has no error clause of its own besides ROI.ALIGN_ERRORS; these tests report under each function's
# main clause.)
@pytest.mark.clause("ROI.SAMPLE_MATCH")
def test_sample_rois_bad_input(impl, device):
    p, gt, cls = T([[0, 0, 10, 10]], device), T([[0, 0, 10, 10]], device), torch.tensor([1], device=device)
    assert len(impl.sample_rois([p], [gt], [cls], 3, generator=gen())) == 1
    bad = [
        ([p], [gt], [torch.tensor([3], device=device)], 3),  # class 3 of 3 foreground classes: background
        ([p], [gt], [torch.tensor([-1], device=device)], 3),
        ([p], [gt], [torch.tensor([1.0], device=device)], 3),  # float classes
        ([p], [gt], [cls, cls], 3),  # two class lists for one image
        ([p, p], [gt], [cls], 3),
        ([T([[0, 0, float("nan"), 10]], device)], [gt], [cls], 3),
        ([p[:, :3]], [gt], [cls], 3),  # proposals without 4 coordinates
        ([p], [gt], [cls], 0),  # no foreground classes
    ]
    for args in bad:
        with pytest.raises((ValueError, TypeError)):
            impl.sample_rois(*args, generator=gen())


@pytest.mark.clause("ROI.LOSS_CLS", "ROI.LOSS_BOX")
def test_roi_losses_bad_input(impl, device):
    args = [T(HAND_LOGITS, device), T(HAND_DELTAS, device), T(HAND_PROPOSALS, device),
            torch.tensor(HAND_CLASSES, device=device), T(HAND_GT, device)]
    impl.roi_losses(*args)
    for i, bad in [(1, T(HAND_DELTAS, device)[:, :7]),  # 7 delta columns for K = 2
                   (2, T(HAND_PROPOSALS, device)[:2]),  # 2 proposals for 3 ROIs
                   (3, torch.tensor([0, 3, 1], device=device)),  # class 3 > K = 2
                   (3, torch.tensor([0.0, 2.0, 1.0], device=device)),  # float classes
                   (4, T(HAND_GT, device)[:, :3])]:
        with pytest.raises((ValueError, TypeError)):
            impl.roi_losses(*args[:i], bad, *args[i + 1:])


@pytest.mark.clause("ROI.INFER_CLIP")
def test_inference_bad_input(impl, device):
    boxes, scores = T([[0, 0, 10, 10, 0, 0, 10, 10]], device), T([[0.5, 0.4, 0.1]], device)
    assert len(impl.fast_rcnn_inference([boxes], [scores], [(50, 50)])) == 1
    assert impl.fast_rcnn_inference([], [], []) == []
    for args in [([boxes[:, :4]], [scores], [(50, 50)]),  # 4 box columns for K = 2
                 ([boxes], [scores[:, :2]], [(50, 50)]),
                 ([boxes, boxes], [scores], [(50, 50)]),  # two box lists for one image
                 ([boxes], [scores], [(50, 50), (50, 50)])]:
        with pytest.raises((ValueError, TypeError)):
            impl.fast_rcnn_inference(*args)
    # without drop_nonfinite (the torchvision profile) a NaN is an error, not silently kept
    with pytest.raises(ValueError):
        impl.fast_rcnn_inference([T([[0, 0, float("nan"), 10, 0, 0, 10, 10]], device)], [scores], [(50, 50)],
                                 drop_nonfinite=TORCHVISION.inference.drop_nonfinite)


@pytest.mark.clause("ROI.POSTPROCESS")
def test_postprocess_bad_input(impl, device):
    boxes = T([[0, 0, 10, 10]], device)
    for args in [(boxes[:, :3], (10, 10), (20, 20)), (boxes, (0, 10), (20, 20)), (boxes, (10, 10), (20, -1)),
                 (T([[0, 0, float("nan"), 10]], device), (10, 10), (20, 20))]:
        with pytest.raises((ValueError, TypeError)):
            impl.detector_postprocess(*args)
