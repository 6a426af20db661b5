"""Conformance: the assembled Faster R-CNN, from pixels to detections. d2-spec §1, §2.13, §3, §5.1.

The end-to-end equivalence test builds torchvision's fasterrcnn_resnet50_fpn with seeded random weights,
converts its state_dict with detspec.checkpoints.convert_torchvision, and compares proposals and detections
on images of several sizes in the torchvision profile.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from detspec.conformance._util import cpu
from spec.config import BASE_RCNN_FPN, PARAMETER_COUNTS, TORCHVISION

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
    assert torch.all(batch[0] == 0)
    assert torch.allclose(batch[1, :, :40, :50], torch.full((3, 40, 50), 10.0))
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
        assert torch.allclose(scores, torch.full_like(scores, math.exp(5.0) / (math.exp(5.0) + 3.0)))
        # resized to 800 x ~1000 inside the network, then rescaled: every box lies in the original image
        assert torch.all(boxes[:, 0] >= 0) and torch.all(boxes[:, 2] <= w)
        assert torch.all(boxes[:, 1] >= 0) and torch.all(boxes[:, 3] <= h)
        assert torch.all(boxes[:, 2] > boxes[:, 0]) and torch.all(boxes[:, 3] > boxes[:, 1])


# ================================================================================================ torchvision
# A smaller test resize than the profile's 800/1333 keeps this fast; both models get the same one.
TV_MIN_SIZE, TV_MAX_SIZE = 320, 512


@pytest.fixture(scope="module")
def torchvision_run(impl):
    """Proposals and detections of torchvision's fasterrcnn_resnet50_fpn and of `impl` with converted weights."""
    tvd = pytest.importorskip("torchvision.models.detection")
    from detspec.checkpoints import convert_torchvision

    torch.manual_seed(0)
    tv = tvd.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91,
                                     min_size=TV_MIN_SIZE, max_size=TV_MAX_SIZE).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in tv.modules():  # BatchNorm in eval mode is FrozenBN with these statistics
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
        # A more confident classifier than the default init, so that many scores pass 0.05.
        tv.roi_heads.box_predictor.cls_score.weight.mul_(30.0)
    cfg = replace(TORCHVISION, input=replace(TORCHVISION.input, min_size_test=TV_MIN_SIZE,
                                             max_size_test=TV_MAX_SIZE))
    model = impl.FasterRCNN(cfg, num_classes=90, resize=True).eval()
    model.load_state_dict(convert_torchvision(tv.state_dict()))

    # landscape, portrait, and one whose long side hits the cap (320 / 150 * 400 = 853 > 512 -> 192 x 512)
    images = [torch.rand(3, 200, 300, generator=g), torch.rand(3, 240, 180, generator=g),
              torch.rand(3, 150, 400, generator=g)]
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


def _rows(*columns: torch.Tensor) -> torch.Tensor:
    """Columns stacked into [D, k] float64 rows, sorted lexicographically (compare sets regardless of order)."""
    rows = torch.cat([c.double().reshape(len(c), -1) for c in columns], dim=1)
    for col in reversed(range(rows.shape[1])):
        rows = rows[torch.argsort(rows[:, col], stable=True)]
    return rows


@pytest.mark.clause("RCNN.TORCHVISION_EQUIVALENCE")
def test_torchvision_proposals(torchvision_run):
    sizes, tv_sizes = torchvision_run["sizes"]
    assert sizes == tv_sizes
    for boxes, expected in zip(*torchvision_run["proposals"]):
        assert boxes.shape == expected.shape, (boxes.shape, expected.shape)
        torch.testing.assert_close(_rows(boxes), _rows(expected), rtol=1e-3, atol=1e-2)


@pytest.mark.clause("RCNN.TORCHVISION_EQUIVALENCE")
def test_torchvision_detections(torchvision_run):
    total = 0
    for r, e in zip(*torchvision_run["results"]):
        assert len(r["scores"]) == len(e["scores"])
        # detspec class c is torchvision label c + 1 (torchvision's background row 0 moved to the end).
        # Rows are compared as sets sorted by (class, rounded score, box): equal scores may come in any order.
        mine = _rows(cpu(r["classes"]) + 1, cpu(r["scores"]).mul(1e3).round(), cpu(r["boxes"]))
        theirs = _rows(e["labels"], e["scores"].mul(1e3).round(), e["boxes"])
        assert torch.equal(mine[:, :2], theirs[:, :2]), "classes and scores (to 1e-3) differ"
        torch.testing.assert_close(mine[:, 2:], theirs[:, 2:], rtol=1e-3, atol=1e-2)
        torch.testing.assert_close(cpu(r["scores"]), e["scores"], rtol=1e-4, atol=1e-4)  # both sorted by score
        total += len(e["scores"])
    assert total > 0, "the comparison must cover some detections"
