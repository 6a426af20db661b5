"""Backbone and RPN benchmarks: ResNet-50 + FPN, RPN head + proposal selection, RPN targets + losses.

Run (the project's addopts disable benchmarks, so enable them explicitly):

    .venv/bin/python -m pytest benchmarks/test_bench_rpn.py --benchmark-enable --benchmark-only \
        --benchmark-json=out/bench_rpn.json -p no:cacheprovider
    python benchmarks/report.py out/bench_rpn.json

Workloads (DESIGN.md "Performance method": an 800x1216 input, one image), each run by ``reference``, ``fast`` and
``torchvision`` in eval mode under ``torch.inference_mode``, with the same seeded random weights copied into
every implementation:

- ``backbone_fpn``: ResNet-50 body + FPN (P2-P6) on a [1, 3, 800, 1216] N(0, 1) image. detspec's modules use the
  TORCHVISION profile (stride on the 3x3 conv) so that torchvision's ``resnet50`` (FrozenBatchNorm2d) +
  ``FeaturePyramidNetwork`` (LastLevelMaxPool), wrapped in ``BackboneWithFPN``, can take the same weights.
- ``rpn_proposals``: five N(0, 1) feature maps [1, 256, Hi, Wi], Hi x Wi = 200x304 ... 13x19 (242,991 anchors).
  Workload ``full``: the RPN module's eval forward (head, anchors, decoding, proposal selection down to 1000).
  Workload ``select``: decoding + selection only, from fixed head outputs and fixed (unrounded) anchors.
- ``rpn_losses``: 20 GT boxes (seeded, sides 20-400 px; the same boxes as test_bench_geometry's ``iou_match``)
  on the 242,991 anchors: labelling, sampling 256 anchors (at most half positive), matched boxes, and both
  losses, from fixed seeded logits and deltas.

Every implementation is called through its public API, input validation included. Inputs and models are
built outside the timed region; agreement checks run once per implementation, also outside it.
"""

from __future__ import annotations

import functools
import math
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torchvision
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.models.detection.rpn import RPNHead as TVRPNHead
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d as TVFrozenBatchNorm2d

import fast
import reference
from detspec.checkpoints import rename_torchvision_key
from fast.proposals import decode_and_select
from spec.config import BASE_RCNN_FPN, TORCHVISION

RPN = BASE_RCNN_FPN.rpn
ANCHORS = BASE_RCNN_FPN.anchors
IMAGE_HW = (800, 1216)
FEATURE_SIZES = ((200, 304), (100, 152), (50, 76), (25, 38), (13, 19))
P_NAMES = ("p2", "p3", "p4", "p5", "p6")
TV_P_NAMES = ("0", "1", "2", "3", "pool")  # BackboneWithFPN's output keys for p2..p6
NUM_GT = 20
SEED = 0
EPS32 = torch.finfo(torch.float32).eps
IMPLS = ("reference", "fast", "torchvision")

# Rounds per implementation (each after one warm-up round). On an idle 2-core CPU the whole file takes about
# 50 s with --benchmark-enable, and about 11 s with --benchmark-disable (the normal test run: each body once).
BACKBONE_ROUNDS = {"reference": 3, "fast": 10, "torchvision": 10}
PROPOSAL_ROUNDS = {
    "full": {"reference": 5, "fast": 10, "torchvision": 10},
    "select": {"reference": 5, "fast": 30, "torchvision": 30},
}
LOSS_ROUNDS = {"reference": 10, "fast": 30, "torchvision": 20}


def _inference(fn: Callable[[], Any]) -> Callable[[], Any]:
    """fn run under torch.inference_mode (entering it costs microseconds; every timed call here takes ms)."""

    def call() -> Any:
        with torch.inference_mode():
            return fn()

    return call


def _cpu(t: torch.Tensor) -> torch.Tensor:
    return t.detach().cpu()


# One output per (group, [workload,] implementation, device): a benchmark's own result, or computed once for
# another implementation's agreement check, so that no model runs more often than it must (smoke mode included).
_RESULTS: dict[tuple[str, ...], Any] = {}


def _result(key: tuple[str, ...], compute: Callable[[], Any]) -> Any:
    if key not in _RESULTS:
        _RESULTS[key] = compute()
    return _RESULTS[key]


# ---------------------------------------------------------------------------------------------- weights
def _random_state(template: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Seeded values with template's keys and shapes, as detspec/conformance/test_backbone.py draws them.

    Conv weights ~ N(0, 2 / fan_out) (He, as c2_msra_fill); FrozenBN weight and running_var ~ U(0.5, 1.5),
    FrozenBN bias, running_mean and conv biases ~ N(0, 0.1). Random statistics make the norm (and fast's
    folding of it) matter.
    """
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, t in template.items():
        shape = tuple(t.shape)
        if key.endswith(("norm.weight", "norm.running_var")):
            value = torch.rand(shape, generator=g) + 0.5
        elif key.endswith(("norm.bias", "norm.running_mean", ".bias")):
            value = torch.randn(shape, generator=g) * 0.1
        else:  # a conv weight [out, in, kh, kw]
            value = torch.randn(shape, generator=g) * math.sqrt(2.0 / (shape[0] * shape[2] * shape[3]))
        out[key] = value
    return out


def _tv_backbone_key(key: str) -> str:
    """BackboneWithFPN key -> detspec key ("resnet." or "fpn." prefix + detectron2 layout), by detspec.checkpoints'
    torchvision -> detspec table (written for a whole fasterrcnn_resnet50_fpn, whose backbone this is)."""
    new = rename_torchvision_key(f"backbone.{key}")
    assert new is not None, f"unexpected torchvision backbone key {key}"
    if new.startswith("backbone.bottom_up."):
        return "resnet." + new.removeprefix("backbone.bottom_up.")
    return "fpn." + new.removeprefix("backbone.")


def _tv_head_key(key: str) -> str:
    """torchvision RPNHead key -> detspec RPNHead key, by the same table (a Faster R-CNN's rpn.head)."""
    new = rename_torchvision_key(f"rpn.head.{key}")
    assert new is not None, f"unexpected torchvision RPN head key {key}"
    return new.removeprefix("proposal_generator.rpn_head.")


@functools.cache
def head_state() -> dict[str, torch.Tensor]:
    """RPN head weights (detspec keys, without the ``rpn_head.`` prefix) that give N(0, 1)-like logits.

    On N(0, 1) features: 3x3 conv ~ N(0, 2 / fan_in), so the ReLU output has a unit second moment; objectness
    ~ N(0, 1 / fan_in), so logits are about N(0, 1); deltas ~ N(0, 0.01 / fan_in), so deltas have std about 0.1
    and proposals stay near their anchors (realistic overlaps for NMS). Biases are zero, as the init has them.
    (The spec's init, std 0.01 everywhere, would give logits and deltas with a std of about 0.05.)
    """
    g = torch.Generator().manual_seed(SEED + 2)
    template = reference.RPNHead().state_dict()
    fan_in = 256
    out = {
        "conv.weight": torch.randn(template["conv.weight"].shape, generator=g) * math.sqrt(2.0 / (9 * fan_in)),
        "objectness_logits.weight": torch.randn(template["objectness_logits.weight"].shape, generator=g)
        * math.sqrt(1.0 / fan_in),
        "anchor_deltas.weight": torch.randn(template["anchor_deltas.weight"].shape, generator=g)
        * math.sqrt(0.01 / fan_in),
    }
    for key in ("conv.bias", "objectness_logits.bias", "anchor_deltas.bias"):
        out[key] = torch.zeros(template[key].shape)
    assert sorted(out) == sorted(template)
    return out


# ---------------------------------------------------------------------------------------------- backbone_fpn
@functools.cache
def backbone_state() -> dict[str, torch.Tensor]:
    """detspec keys: "resnet.*" (TORCHVISION profile layout = detectron2 layout) and "fpn.*"."""
    resnet = _random_state(reference.ResNet(TORCHVISION.resnet).state_dict(), seed=SEED)
    fpn = _random_state(reference.FPN().state_dict(), seed=SEED + 1)
    return {**{f"resnet.{k}": v for k, v in resnet.items()}, **{f"fpn.{k}": v for k, v in fpn.items()}}


def _split(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


@functools.cache
def backbone_model(implementation: str, device: str) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
    """x [1, 3, H, W] -> {"p2": ..., "p6": ...} for one implementation, weights from backbone_state()."""
    state = backbone_state()
    if implementation == "torchvision":
        body = torchvision.models.resnet50(weights=None, norm_layer=TVFrozenBatchNorm2d)
        tv = BackboneWithFPN(body, {f"layer{i}": str(i - 1) for i in range(1, 5)}, [256, 512, 1024, 2048],
                             TORCHVISION.fpn.out_channels, extra_blocks=LastLevelMaxPool())
        names = {k: _tv_backbone_key(k) for k in tv.state_dict()}
        assert sorted(names.values()) == sorted(state), "torchvision and detspec backbone keys differ"
        tv.load_state_dict({k: state[name] for k, name in names.items()}, strict=True)
        tv = tv.to(device).eval()

        def forward_tv(x: torch.Tensor) -> dict[str, torch.Tensor]:
            out = tv(x)
            return {p: out[t] for p, t in zip(P_NAMES, TV_P_NAMES)}

        return forward_tv
    impl = {"reference": reference, "fast": fast}[implementation]
    resnet = impl.ResNet(TORCHVISION.resnet)
    fpn = impl.FPN()
    resnet.load_state_dict(_split(state, "resnet."), strict=True)
    fpn.load_state_dict(_split(state, "fpn."), strict=True)
    resnet, fpn = resnet.to(device).eval(), fpn.to(device).eval()
    return lambda x: fpn(resnet(x))


@functools.cache
def backbone_input(device: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(SEED + 3)
    return torch.randn(1, 3, *IMAGE_HW, generator=g).to(device)


# Agreement bound, relative to the level's largest magnitude. Every output element is a float32 sum of up to
# 3*3*512 = 4608 products per conv, rounded with a relative error of about eps * sqrt(K) ~ 68 eps of that layer's
# magnitude, and the errors add up along ~50 stacked convs. detspec's conformance suite measures about 20 eps
# (of the max) between a float32 ResNet-50 and its float64 reference; two float32 implementations with
# different summation orders (and, for fast, BN folded into the weights) differ by at most the sum of their
# two errors. 1024 eps = 1.2e-4 leaves a wide margin over that, while a real mistake (a stride on the wrong
# conv, a missing norm, bilinear instead of nearest upsampling, P6 from C5) gives errors of order 1.
BACKBONE_REL_BOUND = 1024 * EPS32


def _rel_errors(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> dict[str, float]:
    out = {}
    for name in P_NAMES:
        a, e = _cpu(got[name]).double(), _cpu(expected[name]).double()
        assert a.shape == e.shape, f"{name}: shape {list(a.shape)} != {list(e.shape)}"
        out[name] = float((a - e).abs().max() / e.abs().max())
    return out


def backbone_output(implementation: str, device: str) -> dict[str, torch.Tensor]:
    model, x = backbone_model(implementation, device), backbone_input(device)
    return _result(("backbone_fpn", implementation, device), _inference(lambda: model(x)))


def check_backbone(implementation: str, got: dict[str, torch.Tensor], device: str) -> dict[str, Any]:
    """P2..P6 of the implementation against torchvision's, same weights: max |a - e| / max |e| per level."""
    expected = backbone_output("torchvision", device)
    errors = _rel_errors(got, expected)
    worst = max(errors.values())
    assert worst <= BACKBONE_REL_BOUND, (
        f"{implementation} backbone+FPN differs from torchvision: relative errors {errors} "
        f"> {BACKBONE_REL_BOUND:.2e}")
    info = {"max_rel_err_vs_torchvision": float(f"{worst:.3g}"),
            "output_shapes": {p: list(got[p].shape) for p in P_NAMES}}
    if implementation == "fast":  # the reference ran just before (same process): compare the pair too
        vs_ref = max(_rel_errors(got, backbone_output("reference", device)).values())
        assert vs_ref <= BACKBONE_REL_BOUND, f"fast backbone+FPN differs from reference by {vs_ref:.2e}"
        info["max_rel_err_vs_reference"] = float(f"{vs_ref:.3g}")
    return info


@pytest.mark.benchmark(group="backbone_fpn")
@pytest.mark.parametrize("implementation", IMPLS)
def test_backbone_fpn(benchmark, bench_device, timed, implementation):
    device = str(bench_device)
    model = backbone_model(implementation, device)
    x = backbone_input(device)
    benchmark.extra_info.update(image_hw=list(IMAGE_HW), num_images=1, profile="torchvision (stride in 3x3)",
                                rel_bound=float(f"{BACKBONE_REL_BOUND:.3g}"))
    out = benchmark.pedantic(timed(_inference(lambda: model(x))), rounds=BACKBONE_ROUNDS[implementation],
                             warmup_rounds=1)
    _RESULTS.setdefault(("backbone_fpn", implementation, device), out)
    benchmark.extra_info.update(check_backbone(implementation, out, device))  # outside the timed region


# ---------------------------------------------------------------------------------------------- rpn_proposals
@functools.cache
def rpn_features(device: str) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(SEED + 4)
    return tuple(torch.randn(1, 256, h, w, generator=g).to(device) for h, w in FEATURE_SIZES)


def _tv_rpn(device: str) -> RegionProposalNetwork:
    """torchvision's RPN with detspec's numbers (pre/post-NMS top-n 1000 in eval, NMS 0.7, score_thresh 0)."""
    generator = AnchorGenerator(tuple((int(s[0]),) for s in ANCHORS.sizes), ANCHORS.aspect_ratios)
    head = TVRPNHead(256, ANCHORS.anchors_per_location)
    names = {k: _tv_head_key(k) for k in head.state_dict()}
    assert sorted(names.values()) == sorted(head_state()), "torchvision and detspec RPN head keys differ"
    head.load_state_dict({k: head_state()[name] for k, name in names.items()}, strict=True)
    rpn = RegionProposalNetwork(
        generator, head, fg_iou_thresh=RPN.iou_thresholds[1], bg_iou_thresh=RPN.iou_thresholds[0],
        batch_size_per_image=RPN.batch_size_per_image, positive_fraction=RPN.positive_fraction,
        pre_nms_top_n={"training": RPN.pre_nms_topk_train, "testing": RPN.pre_nms_topk_test},
        post_nms_top_n={"training": RPN.post_nms_topk_train, "testing": RPN.post_nms_topk_test},
        nms_thresh=RPN.nms_thresh, score_thresh=0.0)
    return rpn.to(device).eval()


@functools.cache
def rpn_module(implementation: str, device: str) -> torch.nn.Module:
    if implementation == "torchvision":
        return _tv_rpn(device)
    rpn = {"reference": reference, "fast": fast}[implementation].RPN()
    rpn.rpn_head.load_state_dict(head_state(), strict=True)
    return rpn.to(device).eval()


@functools.cache
def spec_anchors(device: str) -> tuple[torch.Tensor, ...]:
    """Per-level anchors of an 800x1216 input (spec: unrounded, offset 0), built with fast's generator."""
    cells = [fast.cell_anchors(s, r, ANCHORS.round_cell_anchors) for s, r in zip(ANCHORS.sizes, ANCHORS.aspect_ratios)]
    return tuple(a.to(device) for a in fast.grid_anchors(FEATURE_SIZES, ANCHORS.strides, cells, ANCHORS.offset))


@functools.cache
def head_outputs(device: str) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """The reference head's (logits L x [1, P_i], deltas L x [1, P_i, 4]) on rpn_features: the select inputs."""
    with torch.inference_mode():
        logits, deltas = rpn_module("reference", device).rpn_head(list(rpn_features(device)))
    return tuple(logits), tuple(deltas)


def proposal_call(implementation: str, workload: str, device: str) -> Callable[[], list[torch.Tensor]]:
    """A no-argument callable returning the proposal boxes of the one image ([K, 4])."""
    image_sizes = [IMAGE_HW]
    if workload == "full":
        rpn = rpn_module(implementation, device)
        feats = list(rpn_features(device))
        if implementation == "torchvision":
            images = ImageList(torch.zeros(1, 3, *IMAGE_HW, device=device), image_sizes)
            named = OrderedDict(zip(P_NAMES, feats))
            return lambda: rpn(images, named)[0]
        return lambda: [boxes for boxes, _ in rpn(feats, image_sizes)[0]]

    logits, deltas = head_outputs(device)
    anchors = spec_anchors(device)
    weights, clamp = RPN.box_coder.weights, RPN.box_coder.scale_clamp
    kw = dict(nms_thresh=RPN.nms_thresh, pre_nms_topk=RPN.pre_nms_topk_test, post_nms_topk=RPN.post_nms_topk_test,
              min_box_size=RPN.min_box_size)
    if implementation == "reference":  # what reference.RPN does after its head: decode every anchor, select

        def select_reference() -> list[torch.Tensor]:
            proposals = [reference.decode_boxes(d.reshape(-1, 4), a, weights, clamp).reshape(1, -1, 4)
                         for d, a in zip(deltas, anchors)]
            return [b for b, _ in reference.select_proposals(proposals, list(logits), image_sizes, **kw)]

        return select_reference
    if implementation == "fast":  # what fast.RPN does after its head: top-k first, decode the winners only
        return lambda: [b for b, _ in decode_and_select(list(anchors), list(deltas), list(logits), image_sizes,
                                                        weights=weights, scale_clamp=clamp, **kw)]
    # torchvision: RegionProposalNetwork.forward after its head and anchor generator
    rpn = rpn_module("torchvision", device)
    # concat_box_prediction_layers' layout: [N * R, 1] and [N * R, 4], rows in (image, level, y, x, anchor) order
    objectness, pred_deltas = torch.cat(logits, dim=1).reshape(-1, 1), torch.cat(deltas, dim=1).reshape(-1, 4)
    all_anchors = [torch.cat(anchors)]
    per_level = [x.shape[1] for x in logits]

    def select_torchvision() -> list[torch.Tensor]:
        proposals = rpn.box_coder.decode(pred_deltas, all_anchors).view(1, -1, 4)
        return rpn.filter_proposals(proposals, objectness, image_sizes, per_level)[0]

    return select_torchvision


def _match_fraction(a: torch.Tensor, b: torch.Tensor, iou: float) -> float:
    """Fraction of the boxes of a that have a box in b with IoU >= iou."""
    if a.shape[0] == 0:
        return 1.0 if b.shape[0] == 0 else 0.0
    if b.shape[0] == 0:
        return 0.0
    return float((fast.pairwise_iou(a.double(), b.double()).amax(dim=1) >= iou).double().mean())


def proposals_of(implementation: str, workload: str, device: str) -> torch.Tensor:
    fn = proposal_call(implementation, workload, device)
    return _cpu(_result(("rpn_proposals", workload, implementation, device), _inference(fn))[0])


# torchvision sanity floors: the share of torchvision's proposals that one of fast's matches at IoU >= TV_IOU.
# Measured at seed 0: 1.000 at IoU 0.999 for "select" (the same 1000 boxes, bit for bit; two adjacent pairs swap
# places, because float32 sigmoid scores tie where the logits do not), 0.998 at IoU 0.9 for "full".
TV_IOU = {"full": 0.9, "select": 0.999}
TV_FLOOR = {"full": 0.9, "select": 0.99}


def check_proposals(implementation: str, workload: str, boxes: torch.Tensor, device: str) -> dict[str, Any]:
    """fast vs reference: the same proposals (float32 rounding aside); torchvision: a sanity check only.

    reference and fast implement the same spec, so their proposals must agree: the same count, and at least 99%
    of either set has a box of the other at IoU >= 0.99 (a score tie flipped by float32 rounding at a top-k or
    NMS boundary may swap a few proposals). This pair is checked in fast's test, where both are at hand.
    torchvision is not the spec: it thresholds sigmoid scores (ties where logits differ), drops boxes with a side
    < 1e-3 (detectron2: <= 0) and runs NMS with coordinate offsets; in the full workload it also rounds cell
    anchors to integers and derives P6's stride as 800 // 13 = 61 (not 64). So its proposals are only required to
    overlap the spec's (TV_IOU, TV_FLOOR), and to number at least 90% of post_nms_topk.
    """
    boxes = _cpu(boxes)
    info: dict[str, Any] = {"num_proposals": int(boxes.shape[0])}
    if implementation == "fast":
        other = proposals_of("reference", workload, device)
        assert boxes.shape[0] == other.shape[0], (
            f"{workload}: fast gives {boxes.shape[0]} proposals, reference {other.shape[0]}")
        both = min(_match_fraction(boxes, other, 0.99), _match_fraction(other, boxes, 0.99))
        assert both >= 0.99, f"{workload}: only {both:.4f} of fast and reference proposals match at IoU 0.99"
        info["fast_reference_matched_iou99"] = round(both, 4)
        info["fast_reference_allclose"] = bool(torch.allclose(boxes, other, rtol=1e-5, atol=1e-3))
    if implementation == "torchvision":  # its own output, if another check computed it first: deterministic?
        assert torch.equal(boxes, proposals_of("torchvision", workload, device)), "torchvision is not deterministic"
    spec_boxes = proposals_of("reference" if implementation == "reference" else "fast", workload, device)
    tv_boxes = proposals_of("torchvision", workload, device)
    share = _match_fraction(tv_boxes, spec_boxes, TV_IOU[workload])
    info["num_proposals_torchvision"] = int(tv_boxes.shape[0])
    info[f"torchvision_matched_iou{TV_IOU[workload]:g}"] = round(share, 4)
    assert tv_boxes.shape[0] >= 0.9 * RPN.post_nms_topk_test and share >= TV_FLOOR[workload], (
        f"{workload}: torchvision gives {tv_boxes.shape[0]} proposals, {share:.3f} of them matched by "
        f"{'reference' if implementation == 'reference' else 'fast'} at IoU {TV_IOU[workload]}")
    return info


@pytest.mark.benchmark(group="rpn_proposals")
@pytest.mark.parametrize("implementation", IMPLS)
@pytest.mark.parametrize("workload", ["full", "select"])
def test_rpn_proposals(benchmark, bench_device, timed, workload, implementation):
    device = str(bench_device)
    fn = proposal_call(implementation, workload, device)
    benchmark.extra_info.update(workload=workload, image_hw=list(IMAGE_HW), num_anchors=sum(
        h * w * ANCHORS.anchors_per_location for h, w in FEATURE_SIZES), pre_nms_topk=RPN.pre_nms_topk_test,
        post_nms_topk=RPN.post_nms_topk_test, nms_thresh=RPN.nms_thresh)
    out = benchmark.pedantic(timed(_inference(fn)), rounds=PROPOSAL_ROUNDS[workload][implementation],
                             warmup_rounds=1)
    _RESULTS.setdefault(("rpn_proposals", workload, implementation, device), out)
    benchmark.extra_info.update(check_proposals(implementation, workload, out[0], device))


# ---------------------------------------------------------------------------------------------- rpn_losses
def _gt_boxes(gen: torch.Generator) -> torch.Tensor:
    """NUM_GT boxes with sides 20-400 px (log-uniform), fully inside the image (as test_bench_geometry)."""
    h, w = IMAGE_HW
    side = torch.exp(torch.empty(NUM_GT, 2).uniform_(math.log(20.0), math.log(400.0), generator=gen))  # (w, h)
    x1 = torch.rand(NUM_GT, generator=gen) * (w - side[:, 0])
    y1 = torch.rand(NUM_GT, generator=gen) * (h - side[:, 1])
    return torch.stack([x1, y1, x1 + side[:, 0], y1 + side[:, 1]], dim=1)


@functools.cache
def loss_workload(device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(anchors [R, 4], gt [20, 4], logits [1, R] ~ N(0, 1), deltas [1, R, 4] ~ N(0, 0.1^2))."""
    gt = _gt_boxes(torch.Generator().manual_seed(SEED))  # the geometry benchmark's GT
    anchors = torch.cat(spec_anchors("cpu"))
    g = torch.Generator().manual_seed(SEED + 5)
    logits = torch.randn(1, anchors.shape[0], generator=g)
    deltas = torch.randn(1, anchors.shape[0], 4, generator=g) * 0.1
    return anchors.to(device), gt.to(device), logits.to(device), deltas.to(device)


def loss_call(implementation: str, device: str) -> Callable[[], Any]:
    anchors, gt, logits, deltas = loss_workload(device)
    if implementation in ("reference", "fast"):
        impl = {"reference": reference, "fast": fast}[implementation]

        def spec_losses() -> dict[str, torch.Tensor]:
            gen = torch.Generator(device=anchors.device).manual_seed(SEED)  # the same sample every round
            labels, matched = impl.rpn_targets(anchors, [gt], generator=gen)
            return impl.rpn_losses(anchors, logits, deltas, labels, matched)

        return spec_losses
    # torchvision: RegionProposalNetwork.forward's training branch (its sampler draws from the global RNG)
    rpn = rpn_module("torchvision", device)
    targets = [{"boxes": gt}]
    anchor_list = [anchors]
    objectness, pred_deltas = logits.reshape(-1, 1), deltas.reshape(-1, 4)

    def tv_losses() -> tuple[torch.Tensor, torch.Tensor]:
        labels, matched = rpn.assign_targets_to_anchors(anchor_list, targets)
        regression_targets = rpn.box_coder.encode(matched, anchor_list)
        return rpn.compute_loss(objectness, pred_deltas, labels, regression_targets)

    return tv_losses


@functools.cache
def check_losses(device: str) -> dict[str, Any]:
    """Targets and losses agree across implementations (once per device).

    1. Matcher labels (before sampling): reference.iou_match == torchvision's assign_targets_to_anchors.
    2. Sampling: reference and fast each keep min(#fg, 128) positives and 256 - that many negatives, drawn from
       the matcher's pools; their matched boxes equal torchvision's wherever the matcher label is 1.
       reference and fast draw different random samples from one seed (fast uses random keys + top-k), so
       their losses on their own targets differ.
    3. Losses on shared targets (the reference's): fast.rpn_losses == reference.rpn_losses (rtol 1e-5). Fed a
       label vector where only the reference's 256 sampled anchors are not ignored, torchvision's sampler takes
       exactly that sample, and its losses equal detspec's up to its conventions: objectness BCE averaged over
       the sampled anchors (detspec: summed / 256) and smooth-L1 with beta 1/9 over positives / #sampled
       (detspec: beta 0, / 256). So tv objectness = loss_rpn_cls x 256 / |S| and tv box = reference
       rpn_losses(smooth_l1_beta=1/9).loss_rpn_loc x 256 / |S|.
    """
    anchors, gt, logits, deltas = (_cpu(t) for t in loss_workload(device))
    tv = rpn_module("torchvision", "cpu")
    with torch.inference_mode():
        _, match_labels = reference.iou_match(gt, anchors, RPN.iou_thresholds, RPN.iou_labels,
                                              RPN.allow_low_quality_matches)
        tv_labels, tv_matched = tv.assign_targets_to_anchors([anchors], [{"boxes": gt}])
        assert torch.equal(tv_labels[0].to(torch.int8), match_labels), "torchvision matcher labels != reference"
        fg = match_labels == 1
        num_pos = min(int(fg.sum()), int(RPN.batch_size_per_image * RPN.positive_fraction))
        num_neg = min(int((match_labels == 0).sum()), RPN.batch_size_per_image - num_pos)
        targets = {}
        for name, impl in (("reference", reference), ("fast", fast)):
            labels, matched = impl.rpn_targets(anchors, [gt], generator=torch.Generator().manual_seed(SEED))
            labels, matched = _cpu(labels)[0], _cpu(matched)[0]
            assert int((labels == 1).sum()) == num_pos and int((labels == 0).sum()) == num_neg, name
            assert bool(fg[labels == 1].all()) and bool((match_labels[labels == 0] == 0).all()), name
            assert torch.equal(matched[fg], tv_matched[0][fg]), name
            targets[name] = (labels, matched)
        labels, matched = targets["reference"]
        expected = reference.rpn_losses(anchors, logits, deltas, labels[None], matched[None])
        got = fast.rpn_losses(anchors, logits, deltas, labels[None], matched[None])
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=1e-7)
        beta9 = reference.rpn_losses(anchors, logits, deltas, labels[None], matched[None], smooth_l1_beta=1 / 9)
        tv_in = [labels.to(torch.float32)]  # -1 except the reference's sample: tv's sampler takes all of it
        reg = tv.box_coder.encode([matched], [anchors])
        tv_obj, tv_box = tv.compute_loss(logits.reshape(-1, 1), deltas.reshape(-1, 4), tv_in, reg)
        sampled = num_pos + num_neg
        scale = RPN.batch_size_per_image / sampled
        torch.testing.assert_close(tv_obj, expected["loss_rpn_cls"] * scale, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(tv_box, beta9["loss_rpn_loc"] * scale, rtol=1e-5, atol=1e-7)
    return {"foreground": int(fg.sum()), "ignored": int((match_labels == -1).sum()),
            "background": int((match_labels == 0).sum()), "sampled_pos": num_pos, "sampled_neg": num_neg}


@pytest.mark.benchmark(group="rpn_losses")
@pytest.mark.parametrize("implementation", IMPLS)
def test_rpn_losses(benchmark, bench_device, timed, implementation):
    device = str(bench_device)
    counts = check_losses(device)
    anchors, gt, _, _ = loss_workload(device)
    fn = loss_call(implementation, device)
    benchmark.extra_info.update(num_gt=gt.shape[0], num_anchors=anchors.shape[0], image_hw=list(IMAGE_HW),
                                **counts)
    if implementation == "torchvision":
        torch.manual_seed(SEED)  # its fg/bg sampler takes no generator: seed the global one, outside the timing
    benchmark.pedantic(timed(_inference(fn)), rounds=LOSS_ROUNDS[implementation], warmup_rounds=1)
