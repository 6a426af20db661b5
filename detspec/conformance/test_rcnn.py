"""Conformance: the assembled Faster R-CNN, from pixels to detections. d2-spec §1, §2.13, §3, §5.1.

The end-to-end equivalence test builds torchvision's fasterrcnn_resnet50_fpn with seeded random weights,
converts its state_dict with detspec.checkpoints.convert_torchvision, and compares proposals and detections
on images of several sizes in the torchvision profile, once with the default RPN and once with an RPN whose
objectness logits saturate (sigmoid = 1.0 in float32), where torchvision's ranking of proposals by probability
decides which proposals survive (PROPOSAL.TORCHVISION_RANKING). Results of two implementations are compared as
matched sets within the clause's tolerances: float32 rounding differs between them, so equal or nearly equal
scores may come in either order.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from detspec.checkpoints import convert_torchvision
from detspec.conformance._util import cpu
from spec.config import BASE_RCNN_FPN, PARAMETER_COUNTS, TORCHVISION, TV_BATCHED_NMS_LOOP_ABOVE
from spec.tolerances import DTYPE_TOLERANCES, tolerance

# d2-spec §5.1: a few keys and shapes of model_final_*.pkl, written out from the table
KNOWN_KEYS = {
    "backbone.bottom_up.stem.conv1.weight": (64, 3, 7, 7),
    "backbone.bottom_up.stem.conv1.norm.running_var": (64,),
    "backbone.bottom_up.res2.0.shortcut.weight": (256, 64, 1, 1),
    "backbone.bottom_up.res3.0.conv1.weight": (128, 256, 1, 1),
    "backbone.bottom_up.res5.2.conv3.weight": (2048, 512, 1, 1),
    "backbone.fpn_lateral5.weight": (256, 2048, 1, 1),
    "backbone.fpn_output2.weight": (256, 256, 3, 3),
    "proposal_generator.rpn_head.conv.weight": (256, 256, 3, 3),
    "proposal_generator.rpn_head.objectness_logits.weight": (3, 256, 1, 1),
    "proposal_generator.rpn_head.anchor_deltas.weight": (12, 256, 1, 1),
    "roi_heads.box_head.fc1.weight": (1024, 12544),
    "roi_heads.box_head.fc2.weight": (1024, 1024),
    "roi_heads.box_predictor.cls_score.weight": (81, 1024),
    "roi_heads.box_predictor.bbox_pred.weight": (320, 1024),
}


@pytest.fixture(scope="module")
def full_model(impl):
    torch.manual_seed(0)
    return impl.FasterRCNN(BASE_RCNN_FPN).eval()


# ================================================================================================ layout
@pytest.mark.clause("RCNN.PARAMS")
def test_parameter_count(impl, full_model):
    assert sum(p.numel() for p in full_model.parameters()) == PARAMETER_COUNTS.faster_rcnn_80_classes
    box = full_model.roi_heads
    assert sum(p.numel() for p in box.parameters()) == PARAMETER_COUNTS.box_head_and_predictor


@pytest.mark.clause("RCNN.STATE_DICT")
def test_state_dict_layout(impl, reference_impl, full_model):
    sd = full_model.state_dict()
    assert len(sd) == PARAMETER_COUNTS.faster_rcnn_state_dict_tensors
    for key, shape in KNOWN_KEYS.items():
        assert key in sd, key
        assert tuple(sd[key].shape) == shape, (key, tuple(sd[key].shape))
    # one layout for every implementation: the reference's keys and shapes
    ref = reference_impl.FasterRCNN(BASE_RCNN_FPN).state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == {k: tuple(v.shape) for k, v in ref.items()}


# ================================================================================================ input
@pytest.mark.clause("RCNN.RESIZE")
@pytest.mark.parametrize("size, resized, padded", [
    # d2-spec §3 resize examples: scale = 800 / short side, capped so the long side is <= 1333, half up
    ((427, 640), (800, 1199), (800, 1216)),
    ((480, 640), (800, 1067), (800, 1088)),
    ((500, 1000), (667, 1333), (672, 1344)),  # long-side cap: 1600 > 1333 -> 666.5 rounds half up to 667
    ((640, 480), (1067, 800), (1088, 800)),
])
def test_detectron2_test_resize(impl, size, resized, padded):
    model = impl.FasterRCNN(BASE_RCNN_FPN, resize=True).eval()
    image = torch.zeros(3, *size)
    batch, sizes, originals = model.preprocess([image])
    assert sizes == [resized] and originals == [size]
    assert tuple(batch.shape[-2:]) == padded


@pytest.mark.clause("RCNN.RESIZE")
def test_torchvision_resize_floors(impl):
    tv = pytest.importorskip("torchvision")
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    cfg = TORCHVISION.input
    transform = GeneralizedRCNNTransform(cfg.min_size_test, cfg.max_size_test, list(cfg.pixel_mean),
                                         list(cfg.pixel_std)).eval()
    model = impl.FasterRCNN(TORCHVISION, resize=True).eval()
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 427, 640, generator=g), torch.rand(3, 333, 500, generator=g)]
    batch, sizes, _ = model.preprocess(images)
    expected, _ = transform(images)
    assert sizes == [tuple(s) for s in expected.image_sizes]
    assert tuple(batch.shape) == tuple(expected.tensors.shape)
    torch.testing.assert_close(cpu(batch), expected.tensors, rtol=1e-5, atol=1e-5)
    del tv


@pytest.mark.clause("RCNN.NORMALIZE")
def test_normalize_and_pad(impl):
    model = impl.FasterRCNN(BASE_RCNN_FPN, resize=False).eval()
    mean = BASE_RCNN_FPN.input.pixel_mean  # BGR, 0-255, std 1
    # An image whose pixels equal the mean normalizes to 0; one 10 above it to 10 / std = 10.
    flat = torch.tensor(mean)[:, None, None].expand(3, 40, 50).clone()
    batch, sizes, _ = model.preprocess([flat, flat + 10.0])
    assert sizes == [(40, 50), (40, 50)]
    assert tuple(batch.shape) == (2, 3, 64, 64)  # 40 -> 64, 50 -> 64 (multiples of 32)
    assert torch.all(batch[0] == 0)  # exact: (m - m) / 1 is 0 in any float format
    rtol, atol = DTYPE_TOLERANCES[batch.dtype]  # m + 10 rounds once in float32
    torch.testing.assert_close(cpu(batch[1, :, :40, :50]), torch.full((3, 40, 50), 10.0), rtol=rtol, atol=atol)
    assert torch.all(batch[1, :, 40:] == 0) and torch.all(batch[1, :, :, 50:] == 0)  # padding is 0


# ================================================================================================ train / eval
def _small_images(g: torch.Generator) -> list[torch.Tensor]:
    return [torch.rand(3, 96, 128, generator=g) * 255, torch.rand(3, 64, 80, generator=g) * 255]


@pytest.mark.clause("RCNN.TRAIN_LOSSES")
def test_training_losses_and_gradients(impl):
    torch.manual_seed(0)
    model = impl.FasterRCNN(BASE_RCNN_FPN, num_classes=3).train()
    g = torch.Generator().manual_seed(1)
    images = _small_images(g)
    targets = [
        {"boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0], [70.0, 20.0, 120.0, 90.0]]), "classes": torch.tensor([0, 2])},
        {"boxes": torch.zeros(0, 4), "classes": torch.zeros(0, dtype=torch.int64)},  # an image without GT
    ]
    losses = model(images, targets, generator=torch.Generator().manual_seed(2))
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg"}
    for name, value in losses.items():
        assert value.dim() == 0 and torch.isfinite(value), (name, value)
    sum(losses.values()).backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    missing = sorted(n for n, p in model.named_parameters() if p.requires_grad and p.grad is None)
    assert trainable and not missing, missing[:5]
    # freeze_at = 2: the stem and res2 get no gradient
    assert not any(n.startswith(("backbone.bottom_up.stem.", "backbone.bottom_up.res2.")) for n in trainable)


@pytest.mark.clause("RCNN.TRAIN_LOSSES")
def test_training_needs_targets(impl):
    model = impl.FasterRCNN(BASE_RCNN_FPN, num_classes=3).train()
    with pytest.raises(ValueError, match="target"):
        model([torch.zeros(3, 64, 64)])


@pytest.mark.clause("RCNN.EVAL_OUTPUT")
def test_eval_output_in_original_coordinates(impl):
    torch.manual_seed(0)
    model = impl.FasterRCNN(BASE_RCNN_FPN, num_classes=3, resize=True).eval()
    with torch.no_grad():
        # Random weights on random pixels saturate: a few near-identical proposals, all background. Make the
        # proposals the anchors (zero deltas) with varied objectness, and the classifier say "class 1" with
        # probability e^5 / (e^5 + 3) ~ 0.98 for every ROI; the box regression is zero.
        head = model.proposal_generator.rpn_head
        head.anchor_deltas.weight.zero_()
        head.anchor_deltas.bias.zero_()
        head.objectness_logits.weight.mul_(1e-4)
        predictor = model.roi_heads.box_predictor
        predictor.cls_score.weight.zero_()
        predictor.cls_score.bias.copy_(torch.tensor([0.0, 5.0, 0.0, 0.0]))
        predictor.bbox_pred.weight.zero_()
    g = torch.Generator().manual_seed(1)
    images = _small_images(g)
    with torch.no_grad():
        results = model(images)
    assert len(results) == 2
    assert sum(len(r["scores"]) for r in results) > 0, "the sharpened classifier must detect something"
    for r, img in zip(results, images):
        boxes, scores, classes = r["boxes"], r["scores"], r["classes"]
        h, w = img.shape[1:]
        assert boxes.shape == (len(scores), 4) and classes.shape == scores.shape
        assert len(scores) <= BASE_RCNN_FPN.inference.detections_per_image
        assert torch.all(scores[:-1] >= scores[1:])
        assert torch.all(scores > BASE_RCNN_FPN.inference.score_thresh)
        assert classes.dtype == torch.int64 and torch.all(classes == 1)
        rtol, atol = DTYPE_TOLERANCES[scores.dtype]  # one float32 softmax
        expected = torch.full((len(scores),), math.exp(5.0) / (math.exp(5.0) + 3.0), dtype=scores.dtype)
        torch.testing.assert_close(cpu(scores), expected, rtol=rtol, atol=atol)
        # resized to 800 x ~1000 inside the network, then rescaled: every box lies in the original image
        assert torch.all(boxes[:, 0] >= 0) and torch.all(boxes[:, 2] <= w)
        assert torch.all(boxes[:, 1] >= 0) and torch.all(boxes[:, 3] <= h)
        assert torch.all(boxes[:, 2] > boxes[:, 0]) and torch.all(boxes[:, 3] > boxes[:, 1])


# ================================================================================================ torchvision
# RCNN.TORCHVISION_EQUIVALENCE's tolerances for two float32 implementations run end to end (ResNet-50, FPN, RPN,
# box head: every op computed differently): boxes in pixels, scores as probabilities (spec/tolerances.py).
BOX_RTOL, BOX_ATOL = tolerance("torchvision_equivalence_boxes", torch.float32)
SCORE_RTOL, SCORE_ATOL = tolerance("torchvision_equivalence_scores", torch.float32)

# A smaller test resize than the profile's 800/1333 keeps this fast; both models get the same one.
TV_MIN_SIZE, TV_MAX_SIZE = 320, 512


def seeded_torchvision(min_size: int, max_size: int, rpn_logit_scale: float = 1.0, rpn_logit_bias: float = 0.0):
    """torchvision's fasterrcnn_resnet50_fpn (91 labels, eval mode) with seeded random weights.

    BatchNorm statistics are random (BatchNorm in eval mode is detspec's FrozenBN), the classifier is 30x more
    confident than its init so that many scores pass 0.05, and the RPN's objectness conv (rpn.head.cls_logits)
    is multiplied by rpn_logit_scale and its bias raised by rpn_logit_bias.
    """
    tvd = pytest.importorskip("torchvision.models.detection")
    torch.manual_seed(0)
    tv = tvd.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91,
                                     min_size=min_size, max_size=max_size).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in tv.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
        tv.roi_heads.box_predictor.cls_score.weight.mul_(30.0)
        tv.rpn.head.cls_logits.weight.mul_(rpn_logit_scale)
        tv.rpn.head.cls_logits.bias.add_(rpn_logit_bias)
    return tv


def _converted(impl, tv, min_size: int, max_size: int):
    """`impl`'s FasterRCNN in the torchvision profile (with this test resize), loaded with tv's converted weights."""
    cfg = replace(TORCHVISION, input=replace(TORCHVISION.input, min_size_test=min_size, max_size_test=max_size))
    model = impl.FasterRCNN(cfg, num_classes=90, resize=True).eval()
    model.load_state_dict(convert_torchvision(tv.state_dict()))
    return model


def _run_pair(tv, model, images: list[torch.Tensor]) -> dict:
    """Image sizes, proposals and detections of torchvision and of `model` on the same images."""
    with torch.no_grad():
        image_list, _ = tv.transform(images)
        tv_features = tv.backbone(image_list.tensors)
        tv_proposals, _ = tv.rpn(image_list, tv_features)
        tv_detections, _ = tv.roi_heads(tv_features, tv_proposals, image_list.image_sizes)
        tv_results = tv.transform.postprocess(tv_detections, image_list.image_sizes,
                                              [tuple(img.shape[1:]) for img in images])

        batch, sizes, _ = model.preprocess(images)
        features = model.backbone(batch)
        proposals, _ = model.proposal_generator(features, sizes)
        results = model(images)
    return {"sizes": (sizes, [tuple(s) for s in image_list.image_sizes]),
            "proposals": ([cpu(b) for b, _ in proposals], tv_proposals), "results": (results, tv_results)}


def _within(actual: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float) -> torch.Tensor:
    """bool [E, A]: expected row e and actual row a agree in every column, |a - e| <= atol + rtol |e|."""
    a = actual.detach().cpu().double().reshape(len(actual), -1)
    e = expected.detach().cpu().double().reshape(len(expected), -1)
    return ((a[None] - e[:, None]).abs() <= atol + rtol * e[:, None].abs()).all(dim=2)


def max_matching(close: torch.Tensor) -> list[int]:
    """A maximum matching of the bool relation close [E, A]: match[e] = a, or -1 where e stays unmatched.

    Augmenting paths found breadth first (Kuhn's algorithm): a tolerance can let one row agree with several, so
    a greedy pairing could fail where a one-to-one pairing exists.
    """
    adj = [row.nonzero().flatten().tolist() for row in close]
    match_e = [-1] * close.shape[0]
    match_a = [-1] * close.shape[1]
    for start in range(close.shape[0]):
        parent: dict[int, int] = {}  # actual -> the expected row that reached it
        frontier, seen, free = [start], {start}, -1
        while frontier and free < 0:
            following = []
            for e in frontier:
                for a in adj[e]:
                    if a in parent:
                        continue
                    parent[a] = e
                    if match_a[a] < 0:
                        free = a
                        break
                    if match_a[a] not in seen:
                        seen.add(match_a[a])
                        following.append(match_a[a])
                if free >= 0:
                    break
            frontier = following
        a = free
        while a >= 0:  # flip the path start -> ... -> free
            e = parent[a]
            a_next = match_e[e]
            match_e[e], match_a[a] = a, e
            a = a_next
    return match_e


def assert_matched(close: torch.Tensor, what: str, describe) -> None:
    """Every expected row pairs with its own actual row (close [E, A], E == A): the two are equal as sets."""
    __tracebackhide__ = True
    n_expected, n_actual = close.shape
    missing = [e for e, a in enumerate(max_matching(close)) if a < 0]
    assert n_expected == n_actual and not missing, (
        f"{what}: {n_actual} rows against torchvision's {n_expected}; {len(missing)} of torchvision's have no "
        f"counterpart within tolerance, e.g. {[describe(e) for e in missing[:3]]}")


def detections_close(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, tv_boxes: torch.Tensor,
                     tv_scores: torch.Tensor, tv_labels: torch.Tensor) -> torch.Tensor:
    """bool [E, A]: torchvision detection e and detspec detection a have the same label, and score and box
    within the clause's tolerances. Labels are torchvision's (detspec class c is label c + 1)."""
    same_label = labels.cpu()[None, :] == tv_labels.cpu()[:, None]
    return (same_label & _within(scores, tv_scores, SCORE_RTOL, SCORE_ATOL)
            & _within(boxes, tv_boxes, BOX_RTOL, BOX_ATOL))


def _assert_same_proposals(run: dict) -> None:
    __tracebackhide__ = True
    sizes, tv_sizes = run["sizes"]
    assert sizes == tv_sizes
    for n, (boxes, expected) in enumerate(zip(*run["proposals"])):
        assert_matched(_within(boxes, expected, BOX_RTOL, BOX_ATOL), f"image {n} proposals",
                       lambda e, expected=expected: expected[e].tolist())


def _assert_same_detections(run: dict) -> int:
    __tracebackhide__ = True
    total = 0
    for n, (r, e) in enumerate(zip(*run["results"])):
        close = detections_close(r["boxes"], r["scores"], cpu(r["classes"]) + 1, e["boxes"], e["scores"], e["labels"])
        assert_matched(close, f"image {n} detections",
                       lambda i, e=e: (int(e["labels"][i]), float(e["scores"][i]), e["boxes"][i].tolist()))
        total += len(e["scores"])
    return total


@pytest.fixture(scope="module")
def torchvision_run(impl):
    """Proposals and detections of torchvision's fasterrcnn_resnet50_fpn and of `impl` with converted weights."""
    tv = seeded_torchvision(TV_MIN_SIZE, TV_MAX_SIZE)
    model = _converted(impl, tv, TV_MIN_SIZE, TV_MAX_SIZE)
    g = torch.Generator().manual_seed(2)
    # landscape, portrait, and one whose long side hits the cap (320 / 150 * 400 = 853 > 512 -> 192 x 512)
    images = [torch.rand(3, 200, 300, generator=g), torch.rand(3, 240, 180, generator=g),
              torch.rand(3, 150, 400, generator=g)]
    return _run_pair(tv, model, images)


@pytest.mark.clause("RCNN.TORCHVISION_EQUIVALENCE")
def test_torchvision_proposals(torchvision_run):
    _assert_same_proposals(torchvision_run)


@pytest.mark.clause("RCNN.TORCHVISION_EQUIVALENCE")
def test_torchvision_detections(torchvision_run):
    assert _assert_same_detections(torchvision_run) > 0, "the comparison must cover some detections"


# ------------------------------------------------------------------------------------------------ saturated RPN
# One image fed at scale 1 (torchvision's min_size / max_size = its own short / long side). The objectness conv is
# scaled x100, which spreads the logits over ~27 units so that neighbouring logits lie far more apart than the two
# implementations' float32 differences (the per-level top-k order is then the same on both sides), and its bias
# is raised so that every candidate is a logit of 10..57: probability exactly 1.0 in float32 for most, all of the
# ~1350 proposals that survive NMS among them. The post-NMS cut (1000) then falls among tied probabilities.
SATURATED_SIZE = (256, 384)
SATURATED_SCALE = 100.0


def _capture_filter_proposals(tv, image_list, features, post_nms_top_n: int):
    """torchvision's RPN output (boxes, probabilities) per image, with the post-NMS cut set to post_nms_top_n."""
    rpn = tv.rpn
    captured, original, saved = {}, rpn.filter_proposals, dict(rpn._post_nms_top_n)

    def capture(*args, **kwargs):
        captured["out"] = original(*args, **kwargs)
        return captured["out"]

    rpn.filter_proposals, rpn._post_nms_top_n["testing"] = capture, post_nms_top_n
    try:
        rpn(image_list, features)
    finally:
        del rpn.filter_proposals
        rpn._post_nms_top_n.update(saved)
    return captured["out"]


@pytest.fixture(scope="module", params=[20.0, 40.0], ids=["bias+20", "bias+40"])
def saturated_torchvision(request):
    tv = seeded_torchvision(*SATURATED_SIZE, rpn_logit_scale=SATURATED_SCALE, rpn_logit_bias=request.param)
    image = torch.rand(3, *SATURATED_SIZE, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        image_list, _ = tv.transform([image])
        _, (uncut,) = _capture_filter_proposals(tv, image_list, tv.backbone(image_list.tensors), 10**9)
    return tv, image, uncut


@pytest.fixture(scope="module")
def saturated_run(impl, saturated_torchvision):
    tv, image, _ = saturated_torchvision
    return _run_pair(tv, _converted(impl, tv, *SATURATED_SIZE), [image])


@pytest.mark.clause("RCNN.TORCHVISION_EQUIVALENCE", "PROPOSAL.TORCHVISION_RANKING")
def test_torchvision_saturated_rpn(saturated_torchvision, saturated_run):
    _, _, uncut = saturated_torchvision
    post = TORCHVISION.rpn.post_nms_topk_test
    # the case exercises the ranking rule: more proposals tied at probability 1.0 survive NMS than the cut keeps,
    # so which of them are kept depends on the order of ties (by raw logit, 52 of 200 detections agreed)
    assert int((uncut == 1.0).sum()) > post
    _assert_same_proposals(saturated_run)
    assert _assert_same_detections(saturated_run) > 0, "the comparison must cover some detections"


# ------------------------------------------------------------------------------------------------ ranking rule
def _ranking_case(seed: int, level_sizes: list[int], num_images: int = 2, saturated: float = 0.8):
    """Synthetic RPN candidates: boxes L x [N, P_i, 4] on a quarter-pixel grid, logits L x [N, P_i].

    Every logit is distinct. Unsaturated ones lie in [-6, 6], spaced so that their float32 probabilities are
    dozens of ulps apart (no float32 sigmoid kernel ties or swaps two of them); saturated ones lie in
    [17.5, 22.5], where every float32 sigmoid is exactly 1.0. Quarter pixels keep coordinates exact under
    torchvision's per-level coordinate offsets.
    """
    g = torch.Generator().manual_seed(seed)
    total = num_images * sum(level_sizes)
    pick = torch.rand(total, generator=g) < saturated
    values = torch.where(pick, torch.linspace(17.5, 22.5, total), torch.linspace(-6.0, 6.0, total))
    values = values[torch.randperm(total, generator=g)]
    boxes, logits, start = [], [], 0
    for p in level_sizes:
        centre = torch.rand(num_images, p, 2, generator=g) * 200
        size = torch.rand(num_images, p, 2, generator=g) * 60 + 2
        boxes.append(torch.cat([centre - size / 2, centre + size / 2], dim=2).mul(4).round().div(4))
        logits.append(values[start : start + num_images * p].reshape(num_images, p))
        start += num_images * p
    return boxes, logits


@pytest.mark.clause("PROPOSAL.TORCHVISION_RANKING")
@pytest.mark.parametrize("level_sizes, post", [
    ([3000, 1500, 600, 150, 40], 300),  # 2790 candidates per image: per-level NMS, then an unstable sort
    ([400, 300, 200, 60, 20], 100),  # 980 candidates: one NMS, ties in candidate order
])
def test_torchvision_ranking_matches_filter_proposals(impl, level_sizes, post):
    rpn_mod = pytest.importorskip("torchvision.models.detection.rpn")
    cfg = TORCHVISION.rpn
    pre = cfg.pre_nms_topk_test
    candidates = sum(min(p, pre) for p in level_sizes)
    assert (candidates > TV_BATCHED_NMS_LOOP_ABOVE) == (post == 300)  # each case takes the branch it names
    boxes, logits = _ranking_case(0, level_sizes)
    sizes = [(200, 200)] * 2

    def torchvision_select(post_nms_top_n: int):
        rpn = rpn_mod.RegionProposalNetwork(
            None, None, cfg.iou_thresholds[1], cfg.iou_thresholds[0], cfg.batch_size_per_image,
            cfg.positive_fraction, dict(training=pre, testing=pre), dict(training=post_nms_top_n,
                                                                          testing=post_nms_top_n),
            cfg.nms_thresh, score_thresh=cfg.score_thresh).eval()
        return rpn.filter_proposals(torch.cat(boxes, 1), torch.cat(logits, 1), sizes, [b.shape[1] for b in boxes])

    expected_boxes, expected_probs = torchvision_select(post)
    _, uncut_probs = torchvision_select(10**9)
    got = impl.select_proposals(boxes, logits, sizes, cfg.nms_thresh, pre, post, cfg.min_box_size,
                                rank_by="sigmoid", score_thresh=cfg.score_thresh)
    rtol, atol = DTYPE_TOLERANCES[torch.float32]
    for n, ((b, s), eb, ep, uncut) in enumerate(zip(got, expected_boxes, expected_probs, uncut_probs)):
        assert int((uncut == 1.0).sum()) > post  # the cut falls among tied probabilities
        # boxes are clipped copies of the inputs: exact, and in torchvision's order (the clause's CPU guarantee)
        assert torch.equal(cpu(b), eb), f"image {n}: kept proposals or their order differ from torchvision's"
        torch.testing.assert_close(torch.sigmoid(cpu(s)), ep, rtol=rtol, atol=atol)  # raw logits returned
