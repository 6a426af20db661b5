"""ROI-stage benchmarks: multi-level ROI pooling, and the box head + inference.

Run (the project's addopts disable benchmarks, so enable them explicitly):

    .venv/bin/python -m pytest benchmarks/test_bench_roi.py --benchmark-enable --benchmark-only \
        --benchmark-json=out/bench_roi.json -p no:cacheprovider
    python benchmarks/report.py out/bench_roi.json

Workloads (DESIGN.md "Performance method": an 800x1216 input, one image, 1000 ROIs x 256 ch x 7x7):

- ``roi_pool``: P2-P5 maps [1, 256, Hi, Wi] ~ N(0, 1), Hi x Wi = 200x304, 100x152, 50x76, 25x38, and 1000
  boxes with sqrt(area) log-uniform in 16-800 px and aspect ratio log-uniform in [1/2, 2], clipped to the
  image (489 / 169 / 179 / 163 ROIs on P2 / P3 / P4 / P5).
  - workload ``detectron2``: the spec's pooler (ROIAlignV2: aligned=True, adaptive sampling_ratio 0, level eps
    1e-8 inside the log2). ``torchvision`` here is what detectron2's ROIPooler runs: assign levels, then
    ``torchvision.ops.roi_align(aligned=True, sampling_ratio=0)`` once per level, scattered back in row order.
  - workload ``torchvision``: the torchvision profile (aligned=False, sampling_ratio 2, eps 1e-6 outside the
    log2) for reference and fast, against ``torchvision.ops.MultiScaleRoIAlign`` (whose configuration this
    is). The two workloads give like-for-like ratios; MultiScaleRoIAlign cannot run the detectron2 config.
  - Memory format: each implementation gets the maps in the layout its own FPN emits: fast (fast.FPN) in
    channels-last, reference and torchvision in contiguous NCHW. ``test_roi_pool_fast_nchw`` (group
    ``roi_pool_nchw``) times fast on the NCHW maps too, where it first transposes every level.
- ``roi_box_head``: 1000 proposals (the pooling workload's boxes) and their pooled features (the detectron2
  pooler's output), 80 classes + background. Box head (fc 12544 -> 1024 -> 1024), predictor (81 logits, 320
  deltas) and inference (softmax, decode, clip, score > 0.05, per-class NMS 0.5, top 100).
  - workload ``full``: pooled features -> detections. reference / fast: BoxHead + BoxPredictor + softmax +
    decode_boxes + fast_rcnn_inference (fast reads its pooler's channels-last output). torchvision:
    TwoMLPHead + FastRCNNPredictor + RoIHeads.postprocess_detections. The fc1 GEMM (25.7 GFLOP) dominates.
  - workload ``postprocess``: fixed logits and deltas -> detections (softmax, decode, inference).
  Seeded weights are shared: detspec's keys map onto torchvision's (its background row 0 is detspec's last
  row; its bbox_pred has 4 extra background rows, set to 0). Weights are scaled so that the logits have a
  std of about 3 and the deltas about 1, so that ~ a few thousand (roi, class) pairs pass 0.05.

Every implementation is called through its public API, input validation included. Inputs and models are built
outside the timed region; agreement checks run once per implementation, also outside it.
"""

from __future__ import annotations

import functools
import math
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.roi_heads import RoIHeads

import fast
import reference
from detspec.checkpoints import rename_torchvision_key
from spec.config import BASE_RCNN_FPN, TORCHVISION

ROI = BASE_RCNN_FPN.roi_heads
BOX = BASE_RCNN_FPN.box_head
INF = BASE_RCNN_FPN.inference
IMAGE_HW = (800, 1216)
FEATURE_SIZES = ((200, 304), (100, 152), (50, 76), (25, 38))
STRIDES = (4, 8, 16, 32)
CHANNELS = 256
NUM_ROIS = 1000
SEED = 0
IMPLS = ("reference", "fast", "torchvision")

# Rounds per implementation (each after one warm-up round).
POOL_ROUNDS = {"reference": 2, "fast": 10, "torchvision": 5}
HEAD_ROUNDS = {"full": {"reference": 3, "fast": 5, "torchvision": 5},
               "postprocess": {"reference": 5, "fast": 20, "torchvision": 20}}

_RESULTS: dict[tuple[str, ...], Any] = {}


def _result(key: tuple[str, ...], compute: Callable[[], Any]) -> Any:
    if key not in _RESULTS:
        _RESULTS[key] = compute()
    return _RESULTS[key]


def _inference(fn: Callable[[], Any]) -> Callable[[], Any]:
    def call() -> Any:
        with torch.inference_mode():
            return fn()

    return call


# ---------------------------------------------------------------------------------------------- roi_pool
@functools.cache
def pool_inputs(device: str) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...], torch.Tensor, torch.Tensor]:
    """(NCHW maps, channels-last maps, boxes [R, 4], rois [R, 5]) on the device."""
    g = torch.Generator().manual_seed(SEED)
    maps = tuple(torch.randn(1, CHANNELS, h, w, generator=g) for h, w in FEATURE_SIZES)
    size = torch.exp(torch.empty(NUM_ROIS).uniform_(math.log(16.0), math.log(800.0), generator=g))
    ratio = torch.exp(torch.empty(NUM_ROIS).uniform_(-math.log(2.0), math.log(2.0), generator=g))
    h, w = IMAGE_HW
    bw, bh = (size * ratio.sqrt()).clamp(max=w), (size / ratio.sqrt()).clamp(max=h)
    x1 = torch.rand(NUM_ROIS, generator=g) * (w - bw)
    y1 = torch.rand(NUM_ROIS, generator=g) * (h - bh)
    boxes = torch.stack([x1, y1, x1 + bw, y1 + bh], dim=1)
    rois = torch.cat([torch.zeros(NUM_ROIS, 1), boxes], dim=1)
    channels_last = tuple(m.to(device).contiguous(memory_format=torch.channels_last) for m in maps)
    return tuple(m.to(device) for m in maps), channels_last, boxes.to(device), rois.to(device)


def _profile(workload: str) -> dict[str, Any]:
    cfg = BASE_RCNN_FPN if workload == "detectron2" else TORCHVISION
    roi, box = cfg.roi_heads, cfg.box_head
    return dict(output_size=box.pooler_resolution, strides=STRIDES, sampling_ratio=box.pooler_sampling_ratio,
                aligned=box.aligned, canonical_box_size=roi.canonical_box_size, canonical_level=roi.canonical_level,
                eps=roi.level_eps, eps_in_log=roi.level_eps_in_log)


def pool_call(implementation: str, workload: str, device: str, layout: str = "native") -> Callable[[], torch.Tensor]:
    nchw, channels_last, boxes, rois = pool_inputs(device)
    kw = _profile(workload)
    if implementation in ("reference", "fast"):
        impl = {"reference": reference, "fast": fast}[implementation]
        maps = list(channels_last if implementation == "fast" and layout == "native" else nchw)
        return lambda: impl.multilevel_roi_align(maps, rois, **kw)
    if workload == "torchvision":
        pooler = torchvision.ops.MultiScaleRoIAlign(["0", "1", "2", "3"], kw["output_size"], kw["sampling_ratio"])
        named = OrderedDict(zip("0123", nchw))
        return lambda: pooler(named, [boxes], [IMAGE_HW])

    def roi_pooler() -> torch.Tensor:  # detectron2 modeling/poolers.py ROIPooler.forward on torchvision's kernel
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        level = torch.floor(kw["canonical_level"] + torch.log2(torch.sqrt(area) / kw["canonical_box_size"]
                                                                + kw["eps"]))
        level = level.clamp(min=2, max=5).to(torch.int64) - 2
        out = nchw[0].new_zeros(rois.shape[0], CHANNELS, kw["output_size"], kw["output_size"])
        for i, (fmap, stride) in enumerate(zip(nchw, STRIDES)):
            rows = (level == i).nonzero().flatten()
            out[rows] = torchvision.ops.roi_align(fmap, rois[rows], kw["output_size"], 1.0 / stride,
                                                  kw["sampling_ratio"], kw["aligned"])
        return out

    return roi_pooler


def pooled(implementation: str, workload: str, device: str) -> torch.Tensor:
    return _result(("roi_pool", workload, implementation, device),
                   _inference(pool_call(implementation, workload, device))).detach().cpu()


def check_pool(implementation: str, workload: str, out: torch.Tensor, device: str) -> dict[str, Any]:
    """All three implementations compute the same function: max |difference| within float32 rounding
    (bilinear weights of ~1e3 px coordinates in float32; tests/test_roi_fast_internals.py has the bound)."""
    out = out.detach().cpu()
    assert out.shape == (NUM_ROIS, CHANNELS, 7, 7)
    info: dict[str, Any] = {}
    for other in IMPLS:
        if other != implementation:
            diff = float((out - pooled(other, workload, device)).abs().max())
            info[f"max_abs_diff_vs_{other}"] = diff
            assert diff < 1e-4, f"{workload}: {implementation} differs from {other} by {diff}"
    return info


def _level_counts(device: str) -> list[int]:
    _, _, boxes, _ = pool_inputs(device)
    return torch.bincount(fast.assign_levels(boxes.cpu()) - 2, minlength=4).tolist()


@pytest.mark.benchmark(group="roi_pool")
@pytest.mark.parametrize("implementation", IMPLS)
@pytest.mark.parametrize("workload", ["detectron2", "torchvision"])
def test_roi_pool(benchmark, bench_device, timed, workload, implementation):
    device = str(bench_device)
    fn = pool_call(implementation, workload, device)
    benchmark.extra_info.update(workload=workload, num_rois=NUM_ROIS, channels=CHANNELS,
                                feature_sizes=[list(s) for s in FEATURE_SIZES], rois_per_level=_level_counts(device),
                                **{k: v for k, v in _profile(workload).items() if k != "strides"})
    out = benchmark.pedantic(timed(_inference(fn)), rounds=POOL_ROUNDS[implementation], warmup_rounds=1)
    _RESULTS.setdefault(("roi_pool", workload, implementation, device), out)
    benchmark.extra_info.update(check_pool(implementation, workload, out, device))


@pytest.mark.benchmark(group="roi_pool_nchw")
@pytest.mark.parametrize("implementation", ["fast"])  # a column name for the report; fast only
@pytest.mark.parametrize("workload", ["detectron2", "torchvision"])
def test_roi_pool_fast_nchw(benchmark, bench_device, timed, workload, implementation):
    """fast on NCHW maps: the roi_pool numbers plus one transposing copy per level (~82 MB in all)."""
    device = str(bench_device)
    fn = pool_call("fast", workload, device, layout="nchw")
    benchmark.extra_info.update(workload=workload, layout="NCHW")
    out = benchmark.pedantic(timed(_inference(fn)), rounds=POOL_ROUNDS["fast"], warmup_rounds=1)
    benchmark.extra_info.update(check_pool("fast", workload, out, device))


# ---------------------------------------------------------------------------------------------- roi_box_head
@functools.cache
def head_state() -> dict[str, torch.Tensor]:
    """detspec keys (box_head.*, box_predictor.*): c2_xavier_fill-like fc weights and predictor weights scaled
    on the workload so that logits have a std of ~3 and deltas of ~1 (realistic score spread)."""
    g = torch.Generator().manual_seed(SEED + 1)
    in_dim = CHANNELS * BOX.pooler_resolution**2
    k = ROI.num_classes
    state = {
        "box_head.fc1.weight": (torch.rand(BOX.fc_dim, in_dim, generator=g) * 2 - 1) * math.sqrt(6.0 / in_dim),
        "box_head.fc1.bias": torch.zeros(BOX.fc_dim),
        "box_head.fc2.weight": (torch.rand(BOX.fc_dim, BOX.fc_dim, generator=g) * 2 - 1)
        * math.sqrt(6.0 / BOX.fc_dim),
        "box_head.fc2.bias": torch.zeros(BOX.fc_dim),
    }
    with torch.inference_mode():
        x = pooled("reference", "detectron2", "cpu").flatten(1)
        h = F.relu(F.linear(F.relu(F.linear(x, state["box_head.fc1.weight"])), state["box_head.fc2.weight"]))
        rms = float(h.pow(2).mean().sqrt())
    state["box_predictor.cls_score.weight"] = torch.randn(k + 1, BOX.fc_dim, generator=g) * (
        3.0 / (rms * math.sqrt(BOX.fc_dim)))
    state["box_predictor.cls_score.bias"] = torch.zeros(k + 1)
    state["box_predictor.bbox_pred.weight"] = torch.randn(4 * k, BOX.fc_dim, generator=g) * (
        1.0 / (rms * math.sqrt(BOX.fc_dim)))
    state["box_predictor.bbox_pred.bias"] = torch.zeros(4 * k)
    return state


@functools.cache
def head_modules(implementation: str, device: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    state = head_state()
    if implementation == "torchvision":
        head = TwoMLPHead(CHANNELS * BOX.pooler_resolution**2, BOX.fc_dim)
        predictor = FastRCNNPredictor(BOX.fc_dim, ROI.num_classes + 1)
        cls_w, cls_b = state["box_predictor.cls_score.weight"], state["box_predictor.cls_score.bias"]
        box_w, box_b = state["box_predictor.bbox_pred.weight"], state["box_predictor.bbox_pred.bias"]
        # fc6 / fc7 -> box_head.fc1 / fc2 by detspec.checkpoints' torchvision table (a Faster R-CNN's roi_heads)
        head.load_state_dict({k: state[rename_torchvision_key(f"roi_heads.box_head.{k}").removeprefix("roi_heads.")]
                              for k in head.state_dict()})
        predictor.load_state_dict({  # torchvision: background is row 0, and bbox_pred has its 4 rows too
            "cls_score.weight": torch.cat([cls_w[-1:], cls_w[:-1]]),
            "cls_score.bias": torch.cat([cls_b[-1:], cls_b[:-1]]),
            "bbox_pred.weight": torch.cat([torch.zeros(4, BOX.fc_dim), box_w]),
            "bbox_pred.bias": torch.cat([torch.zeros(4), box_b])})
        return head.to(device).eval(), predictor.to(device).eval()
    impl = {"reference": reference, "fast": fast}[implementation]
    heads = impl.ROIHeads()
    heads.load_state_dict(state, strict=True)
    heads = heads.to(device).eval()
    return heads.box_head, heads.box_predictor


@functools.cache
def _tv_roi_heads() -> RoIHeads:
    return RoIHeads(None, None, None, 0.5, 0.5, ROI.batch_size_per_image, ROI.positive_fraction,
                    BOX.box_coder.weights, INF.score_thresh, INF.nms_thresh, INF.detections_per_image)


@functools.cache
def head_inputs(device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(pooled NCHW [R, 256, 7, 7], pooled channels-last, proposals [R, 4], logits [R, 81], deltas [R, 320])."""
    x = pooled("reference", "detectron2", "cpu")
    _, _, boxes, _ = pool_inputs("cpu")
    head, predictor = head_modules("reference", "cpu")
    with torch.inference_mode():
        logits, deltas = predictor(head(x))
    return (x.to(device), x.to(device).contiguous(memory_format=torch.channels_last), boxes.to(device),
            logits.clone().to(device), deltas.clone().to(device))


def head_call(implementation: str, workload: str, device: str) -> Callable[[], tuple[torch.Tensor, ...]]:
    """A no-argument callable returning (boxes [D, 4], scores [D], classes [D]) of the one image, detspec
    class numbering (torchvision's labels minus 1)."""
    x, x_cl, proposals, logits, deltas = head_inputs(device)
    sizes = [IMAGE_HW]
    if implementation == "torchvision":
        head, predictor = head_modules("torchvision", device)
        post = _tv_roi_heads()
        tv_logits = torch.cat([logits[:, -1:], logits[:, :-1]], dim=1)
        tv_deltas = torch.cat([torch.zeros_like(deltas[:, :4]), deltas], dim=1)

        def tv() -> tuple[torch.Tensor, ...]:
            if workload == "full":
                lg, dl = predictor(head(x))
            else:
                lg, dl = tv_logits, tv_deltas
            b, s, lab = post.postprocess_detections(lg, dl, [proposals], sizes)
            return b[0], s[0], lab[0] - 1

        return tv
    impl = {"reference": reference, "fast": fast}[implementation]
    head, predictor = head_modules(implementation, device)
    pooled_in = x_cl if implementation == "fast" else x
    weights, clamp = BOX.box_coder.weights, BOX.box_coder.scale_clamp

    def spec() -> tuple[torch.Tensor, ...]:
        if workload == "full":
            lg, dl = predictor(head(pooled_in))
        else:
            lg, dl = logits, deltas
        probs = F.softmax(lg, dim=-1)
        decoded = impl.decode_boxes(dl, proposals, weights, clamp)
        b, s, c, _ = impl.fast_rcnn_inference([decoded], [probs], sizes, INF.score_thresh, INF.nms_thresh,
                                               INF.detections_per_image, INF.min_box_size, INF.drop_nonfinite)[0]
        return b, s, c

    return spec


def detections(implementation: str, workload: str, device: str) -> tuple[torch.Tensor, ...]:
    out = _result(("roi_box_head", workload, implementation, device),
                  _inference(head_call(implementation, workload, device)))
    return tuple(t.detach().cpu() for t in out)


def _matched(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...], iou: float) -> float:
    """Share of a's detections with a detection of b of the same class at IoU >= iou."""
    if a[0].shape[0] == 0:
        return 1.0 if b[0].shape[0] == 0 else 0.0
    if b[0].shape[0] == 0:
        return 0.0
    same = a[2][:, None] == b[2][None, :]
    overlap = fast.pairwise_iou(a[0].double(), b[0].double()) >= iou
    return float((same & overlap).any(dim=1).double().mean())


def check_head(implementation: str, workload: str, out: tuple[torch.Tensor, ...], device: str) -> dict[str, Any]:
    """fast vs reference: the same detections (classes exactly, boxes and scores to float32 rounding).
    torchvision differs by construction only in float32 operation order (its decode and its min_size 1e-2
    filter, which no box here trips), so >= 99% of its detections must be matched at IoU 0.99."""
    out = tuple(t.detach().cpu() for t in out)
    info: dict[str, Any] = {"num_detections": int(out[0].shape[0])}
    assert out[0].shape[0] == INF.detections_per_image, "the workload should saturate the top-100"
    if implementation == "fast":
        ref = detections("reference", workload, device)
        assert torch.equal(out[2], ref[2]), "fast and reference detect different classes"
        torch.testing.assert_close(out[0], ref[0], rtol=1e-5, atol=1e-3)
        torch.testing.assert_close(out[1], ref[1], rtol=1e-5, atol=1e-6)
    spec_out = out if implementation != "torchvision" else detections("fast", workload, device)
    share = _matched(detections("torchvision", workload, device), spec_out, 0.99)
    info["torchvision_matched_iou0.99"] = round(share, 4)
    assert share >= 0.99, f"only {share:.3f} of torchvision's detections are matched"
    return info


@pytest.mark.benchmark(group="roi_box_head")
@pytest.mark.parametrize("implementation", IMPLS)
@pytest.mark.parametrize("workload", ["full", "postprocess"])
def test_roi_box_head(benchmark, bench_device, timed, workload, implementation):
    device = str(bench_device)
    fn = head_call(implementation, workload, device)
    benchmark.extra_info.update(workload=workload, num_rois=NUM_ROIS, num_classes=ROI.num_classes,
                                score_thresh=INF.score_thresh, nms_thresh=INF.nms_thresh,
                                detections_per_image=INF.detections_per_image)
    out = benchmark.pedantic(timed(_inference(fn)), rounds=HEAD_ROUNDS[workload][implementation], warmup_rounds=1)
    _RESULTS.setdefault(("roi_box_head", workload, implementation, device), out)
    benchmark.extra_info.update(check_head(implementation, workload, out, device))
