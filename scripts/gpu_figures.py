#!/usr/bin/env python
"""One-shot GPU figures for detspec (issue 15): fast vs torchvision on one card, in one process, in minutes.

Run on the device (from the repository root, detspec installed with ``pip install --no-deps -e .``):

    python scripts/gpu_figures.py --out "$OUT" --budget 180

and here, on the CPU, at tiny sizes (what tests/test_gpu_figures.py runs, so the script cannot rot):

    .venv/bin/python scripts/gpu_figures.py --smoke --out /tmp/figs

Figures (keys of ``figures`` in DIR/figures.json; every key is always present, holding either the figure or
``{"error": ...}`` / ``{"skipped": ...}``):

- ``roi_align_multilevel``: 1000 ROIs x 256 channels -> 7x7 on P2-P5 of an 800x1216 image (batch 1), the
  torchvision profile (aligned=False, sampling_ratio=2): ``fast.multilevel_roi_align`` (the Triton kernel on
  CUDA) on channels-last maps (fast.FPN's layout) and on NCHW maps, vs ``torchvision.ops.MultiScaleRoIAlign``
  on NCHW maps. Time per call (us) and effective bandwidth = (feature-map bytes read once + output bytes
  written) / time, as a fraction of the card's memory bandwidth.
- ``batched_nms``: 5 groups x 1000 boxes (uniform, sides 1-200 px, coordinates multiples of 1/64 px so that
  the class-offset trick is exact; distinct scores), IoU 0.7: torchvision.ops.batched_nms vs fast's Triton
  kernel path (``fast.nms`` on class-offset boxes: ``fast.batched_nms`` itself runs the sort-and-sweep
  algorithm on every device, also timed) - time per call and whether the kept indices agree as sets.
- ``rcnn_b1_fp32``, ``rcnn_b8_fp32``, ``rcnn_b1_bf16``, ``rcnn_b8_bf16``: Faster R-CNN R50-FPN inference
  (eval, ``torch.inference_mode``) from pixels to detections on 800x1216 images, fast vs torchvision with the
  same seeded random weights (benchmarks/test_bench_rcnn.py: torchvision's FasterRCNN as
  ``fasterrcnn_resnet50_fpn`` builds it for pretrained weights, FrozenBatchNorm2d, a sharpened classifier so
  that ~100 detections survive; converted with detspec.checkpoints.convert_torchvision). No resizing:
  torchvision's transform gets min_size = 800, max_size = 1216 (scale factor 1.0; it still runs its
  same-size interpolate), fast runs with resize=False. bf16 = ``torch.autocast(device, torch.bfloat16)``
  around both models. Batch 1: median latency; batch 8: images/s.
- ``rcnn_b1_bf16_cuda_graph``: the fast detector's static-shape path (select_proposals_static,
  multilevel_roi_align, fast_rcnn_inference_static: pixels -> 100 detection slots) captured in one
  torch.cuda.CUDAGraph. Capture is tried as is (a failure records the error and where it happened) and with
  the forward's small host-to-device constant copies served from a cache filled during warm-up (the sites
  are recorded: they are what blocks a plain capture). The same path run eagerly is timed for comparison,
  and the graph's detections are compared with the eager static path's.
- ``mvit_b16_fp32``, ``mvit_b16_bf16``: MViT-B 16x4 (spec.mvit MVIT_CONFIGS["mvit_b_16x4"]) on
  [16, 3, 16, 224, 224], fast.MViT vs torchvision.models.video.mvit_v1_b (same weights): clips/s. fast's bf16
  is its own ``autocast_dtype=torch.bfloat16`` option, torchvision's ``torch.autocast``.
- ``mvitv2_t_det_fp32``, ``mvitv2_t_det_bf16`` (issue 14): detectron2's MViTv2-T detection backbone
  (spec.mvit_det MVITV2_T_DET) on [4, 3, 800, 1216], fast.mvit_det.MViTDetBackbone: images/s. No independent
  windowed MViTv2 runs on the device, so the baseline is detspec's reference (fp32, one image per call, in the
  note). Run after the CUDA graph figure: a broken context shows here as a recorded error.

Timing: warm-up calls (they include Triton compilation), then per call: synchronize, CUDA event, call, CUDA
event, synchronize; the median of N calls (so batch-1 latencies include host overhead and host syncs).
fp32 runs with TF32 off (torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False);
cudnn.benchmark stays at its default (False). Each figure is guarded: an error (OOM included) is recorded
and the next figure runs. DIR/figures.json is rewritten after every figure; a Markdown table is printed at
the end and written to DIR/figures.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # fast/, spec/, detspec/ and benchmarks/ from this checkout
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

FIGURE_KEYS = (
    "roi_align_multilevel",
    "batched_nms",
    "rcnn_b1_fp32",
    "rcnn_b8_fp32",
    "rcnn_b1_bf16",
    "rcnn_b8_bf16",
    "mvit_b16_fp32",
    "mvit_b16_bf16",
    "rcnn_b1_bf16_cuda_graph",
    "mvitv2_t_det_fp32",
    "mvitv2_t_det_bf16",
)

# Memory bandwidth (bytes/s) by card name, for the ROIAlign figure (vendor figures).
BANDWIDTH = (("H200", 4.8e12), ("H100 PCIe", 2.0e12), ("H100 NVL", 3.9e12), ("H100", 3.35e12))

FULL = dict(
    hw=(800, 1216), batch_large=8, rcnn_b1=(3, 10), rcnn_bl=(2, 5),
    mvit_shape=(16, 3, 16, 224, 224), mvit=(2, 5),
    roi_hw=(800, 1216), roi_n=1000, roi=(10, 50),
    nms_groups=5, nms_per_group=1000, nms=(10, 50),
    graph=(3, 20), rpn_topk=None,
    mvitdet_shape=(4, 3, 800, 1216), mvitdet=(2, 5),
)
SMOKE = dict(
    hw=(64, 64), batch_large=2, rcnn_b1=(0, 1), rcnn_bl=(0, 1),
    mvit_shape=(1, 3, 8, 32, 32), mvit=(0, 1),
    roi_hw=(64, 96), roi_n=64, roi=(1, 2),
    nms_groups=5, nms_per_group=200, nms=(1, 2),
    graph=(0, 1), rpn_topk=(200, 50),  # (pre, post) NMS proposals per image: a smaller ROI-head GEMM on the CPU
    mvitdet_shape=(1, 3, 64, 96), mvitdet=(0, 1),
)
SEED = 0
CHANNELS = 256
STRIDES = (4, 8, 16, 32)
NMS_IOU = 0.7
QUANTUM = 1.0 / 64  # NMS box coordinates are multiples of this: exact under the class-offset trick


# ------------------------------------------------------------------------------------------------ plumbing
def _describe(exc: BaseException) -> dict[str, Any]:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if str(ROOT) in (f.filename or "")]
    where = [f"{os.path.relpath(f.filename, ROOT)}:{f.lineno} {f.name}" for f in frames[-4:]]
    return {"error": f"{type(exc).__name__}: {exc}".strip()[:2000], "where": where}


def _error(exc: BaseException) -> dict[str, Any]:
    """{"error": "Type: message", "where": [the innermost frames in this repository]}, plus "during": the
    exceptions it was raised while handling (e.g. the op that broke a CUDA graph capture, whose
    capture_end then failed), innermost last."""
    out = _describe(exc)
    chain, seen, inner = [], {id(exc)}, exc.__cause__ or exc.__context__
    while inner is not None and id(inner) not in seen and len(chain) < 3:
        seen.add(id(inner))
        chain.append(_describe(inner))
        inner = inner.__cause__ or inner.__context__
    if chain:
        out["during"] = chain
    return out


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def guarded(fn: Callable[[], dict[str, Any]], device: torch.device) -> dict[str, Any]:
    """fn() or its recorded error; frees cached CUDA memory after an OOM."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - every failure is a result to record
        out = _error(exc)
        if _is_oom(exc):
            out["oom"] = True
        if device.type == "cuda":
            with contextlib.suppress(Exception):
                torch.cuda.synchronize()
            with contextlib.suppress(Exception):
                torch.cuda.empty_cache()
        return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn: Callable[[], Any], device: torch.device, warmup: int, iters: int) -> tuple[dict[str, Any], Any]:
    """Median time of `iters` synchronised calls after `warmup` calls -> (stats, last output)."""
    out = None
    for _ in range(warmup):
        out = fn()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(max(iters, 1)):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)
            start.record()
            out = fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            out = fn()
            times.append((time.perf_counter() - t0) * 1e3)
    stats: dict[str, Any] = {"median_ms": statistics.median(times), "min_ms": min(times), "n": len(times),
                             "warmup": warmup, "times_ms": [round(t, 4) for t in times]}
    if device.type == "cuda":
        stats["peak_mem_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return stats, out


def pipelined_us(fn: Callable[[], Any], device: torch.device, calls: int) -> float:
    """Mean time per call of `calls` back-to-back calls with one synchronisation at the end (us)."""
    sync(device)
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / calls * 1e6


def autocast(device: torch.device, dtype: torch.dtype | None, cache_enabled: bool = True):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype, cache_enabled=cache_enabled)


def speedup(fast_stats: dict[str, Any], tv_stats: dict[str, Any], key: str = "median_ms") -> float | None:
    """torchvision time / fast time (> 1: fast is faster); None when either side has no number."""
    if key in fast_stats and key in tv_stats and fast_stats[key] > 0:
        return tv_stats[key] / fast_stats[key]
    return None


def card_bandwidth(name: str) -> tuple[float | None, str]:
    for marker, bw in BANDWIDTH:
        if marker.lower() in name.lower():
            return bw, f"{marker}: {bw / 1e12:g} TB/s"
    return None, f"unknown card {name!r}: no bandwidth figure"


# ------------------------------------------------------------------------------------------------ metadata
def metadata(device: torch.device, smoke: bool, sizes: dict[str, Any]) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "smoke": smoke, "device": str(device), "python": platform.python_version(), "torch": torch.__version__,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cudnn_benchmark": torch.backends.cudnn.benchmark, "sizes": sizes,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    for name in ("torchvision", "triton"):
        try:
            meta[name] = __import__(name).__version__
        except Exception as exc:  # noqa: BLE001
            meta[name] = f"unavailable ({type(exc).__name__}: {exc})"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        meta.update(gpu_name=torch.cuda.get_device_name(device), gpu_capability=list(torch.cuda.get_device_capability(
            device)), gpu_memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version())
    with contextlib.suppress(Exception):
        meta["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                            timeout=10).stdout.strip() or None
    return meta


# ------------------------------------------------------------------------------------------------ ROIAlign
def roi_inputs(hw: tuple[int, int], num_rois: int, device: torch.device):
    """P2-P5 maps [1, 256, H/s, W/s] ~ N(0, 1) and boxes with sqrt(area) log-uniform in 16-800 px, aspect ratio
    log-uniform in [1/2, 2], inside the image (benchmarks/test_bench_roi.py's workload, any size)."""
    g = torch.Generator().manual_seed(SEED)
    h, w = hw
    maps = [torch.randn(1, CHANNELS, h // s, w // s, generator=g) for s in STRIDES]
    size = torch.exp(torch.empty(num_rois).uniform_(math.log(16.0), math.log(800.0), generator=g))
    ratio = torch.exp(torch.empty(num_rois).uniform_(-math.log(2.0), math.log(2.0), generator=g))
    bw, bh = (size * ratio.sqrt()).clamp(max=w), (size / ratio.sqrt()).clamp(max=h)
    x1 = torch.rand(num_rois, generator=g) * (w - bw)
    y1 = torch.rand(num_rois, generator=g) * (h - bh)
    boxes = torch.stack([x1, y1, x1 + bw, y1 + bh], dim=1)
    nchw = [m.to(device) for m in maps]
    channels_last = [m.contiguous(memory_format=torch.channels_last) for m in nchw]
    return nchw, channels_last, boxes.to(device)


def fig_roi_align(device: torch.device, cfg: dict[str, Any]) -> dict[str, Any]:
    import torchvision

    import fast
    from spec.config import TORCHVISION

    hw, num_rois = cfg["roi_hw"], cfg["roi_n"]
    warmup, iters = cfg["roi"]
    nchw, channels_last, boxes = roi_inputs(hw, num_rois, device)
    rois = torch.cat([torch.zeros_like(boxes[:, :1]), boxes], dim=1)
    roi, box = TORCHVISION.roi_heads, TORCHVISION.box_head
    kw = dict(output_size=box.pooler_resolution, strides=STRIDES, sampling_ratio=box.pooler_sampling_ratio,
              aligned=box.aligned, canonical_box_size=roi.canonical_box_size, canonical_level=roi.canonical_level,
              eps=roi.level_eps, eps_in_log=roi.level_eps_in_log)
    pooler = torchvision.ops.MultiScaleRoIAlign(["0", "1", "2", "3"], box.pooler_resolution, box.pooler_sampling_ratio)
    named = OrderedDict(zip("0123", nchw))
    calls = {
        "fast": lambda: fast.multilevel_roi_align(channels_last, rois, **kw),
        "fast_nchw": lambda: fast.multilevel_roi_align(nchw, rois, **kw),
        "torchvision": lambda: pooler(named, [boxes], [hw]),
    }
    out_numel = num_rois * CHANNELS * box.pooler_resolution**2
    moved = sum(m.numel() * m.element_size() for m in nchw) + out_numel * nchw[0].element_size()
    bw, bw_note = card_bandwidth(torch.cuda.get_device_name(device)) if device.type == "cuda" else (None, "cpu")
    result: dict[str, Any] = {
        "workload": {"image_hw": list(hw), "num_rois": num_rois, "channels": CHANNELS,
                     "map_hw": [list(m.shape[2:]) for m in nchw], "output": box.pooler_resolution,
                     "profile": "torchvision (aligned=False, sampling_ratio=2)",
                     "rois_per_level": torch.bincount(fast.assign_levels(boxes.cpu()) - 2, minlength=4).tolist(),
                     "bytes_moved": moved, "bytes_definition": "feature maps read once + output written"},
        "card_bandwidth": bw_note,
    }
    outputs = {}
    with torch.inference_mode():
        for name, fn in calls.items():
            def run(fn=fn, name=name):
                stats, out = measure(fn, device, warmup, iters)
                outputs[name] = out
                stats["median_us"] = stats["median_ms"] * 1e3
                stats["pipelined_us"] = pipelined_us(fn, device, iters)
                if bw is not None:
                    stats["effective_tb_s"] = moved / (stats["median_ms"] * 1e-3) / 1e12
                    stats["fraction_of_peak"] = moved / (stats["median_ms"] * 1e-3) / bw
                return stats
            result[name] = guarded(run, device)
    if "torchvision" in outputs:
        ref = outputs["torchvision"].float()
        result["max_abs_diff_vs_torchvision"] = {k: float((o.float() - ref).abs().max()) for k, o in outputs.items()
                                                 if k != "torchvision"}
    result["speedup_fast_vs_torchvision"] = speedup(result.get("fast", {}), result.get("torchvision", {}))
    return result


# ------------------------------------------------------------------------------------------------ batched NMS
def nms_inputs(groups: int, per_group: int, hw: tuple[int, int], device: torch.device):
    """groups x per_group boxes, uniform positions, sides 1-200 px, coordinates multiples of 1/64 px, distinct
    scores (benchmarks/test_bench_geometry.py's "uniform" workload)."""
    g = torch.Generator().manual_seed(SEED + 1)
    h, w = hw
    n = groups * per_group
    side = 1.0 + 199.0 * torch.rand(n, 2, generator=g)
    x1 = torch.rand(n, generator=g) * (w - side[:, 0])
    y1 = torch.rand(n, generator=g) * (h - side[:, 1])
    boxes = torch.stack([x1, y1, x1 + side[:, 0], y1 + side[:, 1]], dim=1)
    boxes = torch.round(boxes / QUANTUM) * QUANTUM
    boxes = torch.minimum(boxes.clamp(min=0), torch.tensor([w, h, w, h], dtype=boxes.dtype))
    scores = torch.empty(n)
    scores[torch.randperm(n, generator=g)] = (torch.arange(n, dtype=torch.float32) + 1) / (n + 1)
    ids = torch.arange(groups).repeat_interleave(per_group)
    return boxes.to(device), scores.to(device), ids.to(device)


def fig_batched_nms(device: torch.device, cfg: dict[str, Any]) -> dict[str, Any]:
    import torchvision

    import fast
    from fast.kernels import nms_triton

    warmup, iters = cfg["nms"]
    boxes, scores, ids = nms_inputs(cfg["nms_groups"], cfg["nms_per_group"], (800, 1216), device)

    def fast_offset():  # one plain NMS over class-offset boxes: fast.nms runs the Triton kernels on CUDA float32
        shift = ids.to(boxes.dtype) * (boxes.max() + 1.0)
        return fast.nms(boxes + shift[:, None], scores, NMS_IOU)

    calls = {
        "fast": fast_offset,
        "fast_batched_nms_api": lambda: fast.batched_nms(boxes, scores, ids, NMS_IOU),
        "torchvision": lambda: torchvision.ops.batched_nms(boxes, scores, ids, NMS_IOU),
    }
    triton_used = device.type == "cuda" and nms_triton.TRITON_AVAILABLE
    result: dict[str, Any] = {
        "workload": {"groups": cfg["nms_groups"], "boxes_per_group": cfg["nms_per_group"], "iou": NMS_IOU,
                     "boxes": "uniform, sides 1-200 px in 800x1216, multiples of 1/64 px, distinct scores"},
        "fast_path": ("fast.nms on class-offset boxes -> Triton bitmask kernels" if triton_used
                      else "fast.nms on class-offset boxes -> sort-and-sweep (no CUDA/Triton)"),
        "fast_batched_nms_api_path": "fast.batched_nms, the public API (when written: sort-and-sweep on every "
                                     "device; only fast.nms dispatches to the Triton kernels)",
    }
    kept = {}
    with torch.inference_mode():
        for name, fn in calls.items():
            def run(fn=fn, name=name):
                stats, out = measure(fn, device, warmup, iters)
                kept[name] = out.cpu()
                stats["median_us"] = stats["median_ms"] * 1e3
                stats["pipelined_us"] = pipelined_us(fn, device, iters)
                stats["kept"] = int(out.numel())
                return stats
            result[name] = guarded(run, device)
    if "torchvision" in kept:
        ref = kept["torchvision"]
        result["agreement_with_torchvision"] = {
            k: {"same_set": set(v.tolist()) == set(ref.tolist()), "same_order": torch.equal(v, ref),
                "kept": int(v.numel()), "kept_torchvision": int(ref.numel())}
            for k, v in kept.items() if k != "torchvision"}
    result["speedup_fast_vs_torchvision"] = speedup(result.get("fast", {}), result.get("torchvision", {}))
    return result


# ------------------------------------------------------------------------------------------------ Faster R-CNN
_RCNN: dict[str, Any] = {}


def rcnn_models(device: torch.device, hw: tuple[int, int], rpn_topk: tuple[int, int] | None = None):
    """(fast model, torchvision model) with the same weights, eval mode, on the device (built once).

    rpn_topk = (pre, post) overrides both RPNs' test-time proposal counts (smoke runs only)."""
    if "fast" not in _RCNN:  # (the torchvision model is dropped after the last figure that needs it)
        import importlib.util
        from dataclasses import replace

        import fast
        from detspec.checkpoints import convert_torchvision
        from spec.config import TORCHVISION

        # loaded by path: a "benchmarks" package installed elsewhere cannot shadow the repository's folder
        spec = importlib.util.spec_from_file_location("_detspec_bench_rcnn", ROOT / "benchmarks" / "test_bench_rcnn.py")
        bench = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(bench)
        cfg = TORCHVISION
        tv = bench.build_torchvision()
        tv.transform.min_size = (min(hw),)  # the images are already network-sized: scale factor 1.0
        tv.transform.max_size = max(hw)
        if rpn_topk is not None:
            cfg = replace(cfg, rpn=replace(cfg.rpn, pre_nms_topk_test=rpn_topk[0], post_nms_topk_test=rpn_topk[1]))
            tv.rpn._pre_nms_top_n = {**tv.rpn._pre_nms_top_n, "testing": rpn_topk[0]}
            tv.rpn._post_nms_top_n = {**tv.rpn._post_nms_top_n, "testing": rpn_topk[1]}
        model = fast.FasterRCNN(cfg, num_classes=90, resize=False).eval()
        model.load_state_dict(convert_torchvision(tv.state_dict()))
        _RCNN["fast"], _RCNN["torchvision"] = model.to(device), tv.to(device)
    return _RCNN["fast"], _RCNN.get("torchvision")


def rcnn_images(batch: int, hw: tuple[int, int], device: torch.device) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(SEED + 2)
    return [torch.rand(3, *hw, generator=g).to(device) for _ in range(batch)]


def fig_rcnn(device: torch.device, cfg: dict[str, Any], batch: int, dtype: torch.dtype | None) -> dict[str, Any]:
    hw = cfg["hw"]
    warmup, iters = cfg["rcnn_b1"] if batch == 1 else cfg["rcnn_bl"]
    model, tv = rcnn_models(device, hw, cfg["rpn_topk"])
    imgs = rcnn_images(batch, hw, device)

    def call(m):
        def run():
            with torch.inference_mode(), autocast(device, dtype):
                return m(imgs)
        return run

    result: dict[str, Any] = {
        "workload": {"batch": batch, "image_hw": list(hw), "dtype": "bf16 autocast" if dtype else "fp32",
                     "torchvision_transform": f"min_size={min(hw)}, max_size={max(hw)} (scale 1.0)",
                     "fast": "fast.FasterRCNN(TORCHVISION, num_classes=90, resize=False)",
                     "rpn": {k: getattr(model.cfg.rpn, k, None) for k in ("pre_nms_topk_test", "post_nms_topk_test",
                                                                         "rank_by", "score_thresh")}},
    }
    outs = {}
    for name, m in (("fast", model), ("torchvision", tv)):
        def run(m=m, name=name):
            stats, out = measure(call(m), device, warmup, iters)
            outs[name] = out
            stats["images_per_s"] = batch / (stats["median_ms"] * 1e-3)
            stats["detections_image0"] = int(out[0]["scores"].numel())
            return stats
        result[name] = guarded(run, device)
    if len(outs) == 2:  # same function: compare image 0's detection count and sorted scores
        a = outs["fast"][0]["scores"].float().sort(descending=True).values.cpu()
        b = outs["torchvision"][0]["scores"].float().sort(descending=True).values.cpu()
        agree: dict[str, Any] = {"count_fast": int(a.numel()), "count_torchvision": int(b.numel())}
        if a.numel() == b.numel() and a.numel():
            agree["max_abs_score_diff"] = float((a - b).abs().max())
        result["agreement_image0"] = agree
    result["speedup_fast_vs_torchvision"] = speedup(result.get("fast", {}), result.get("torchvision", {}))
    return result


# ------------------------------------------------------------------------------------------------ CUDA graph
def static_detect(model, pixels: torch.Tensor, sizes: torch.Tensor):
    """The fast detector with static shapes and no host synchronisation (run with value checks off):
    pixels [N, 3, H, W] (H, W multiples of the size divisibility, no resize), sizes [N, 2] (h, w) on the device
    -> (boxes [N, T, 4], scores [N, T], classes [N, T], count [N]), T = detections_per_image.

    The eager module's steps and dtypes (fast/rcnn.py, fast/rpn.py, fast/roi_heads.py), with
    select_proposals_static for the RPN and fast_rcnn_inference_static for the ROI heads; the T proposal slots
    of an image beyond its count pool and predict but their scores are zeroed (never candidates)."""
    import fast
    from fast.proposals import select_proposals_static
    from fast.roi_heads import fast_rcnn_inference_static

    n = pixels.shape[0]
    mean = model.pixel_mean.view(1, -1, 1, 1)
    std = model.pixel_std.view(1, -1, 1, 1)
    x = ((pixels - mean) / std).contiguous(memory_format=torch.channels_last)
    features = model.backbone(x)
    rpn = model.proposal_generator
    levels = [features[f] for f in rpn.cfg.in_features]
    logits, deltas = rpn.rpn_head(levels)
    anchors = rpn.anchors(levels)
    coder = rpn.cfg.box_coder
    proposals = [fast.decode_boxes(d.reshape(-1, 4), a.expand(n, -1, -1).reshape(-1, 4), coder.weights,
                                   coder.scale_clamp).reshape(n, -1, 4) for d, a in zip(deltas, anchors)]
    boxes, _, count = select_proposals_static(proposals, logits, sizes, nms_thresh=rpn.cfg.nms_thresh,
                                              pre_nms_topk=rpn.cfg.pre_nms_topk_test,
                                              post_nms_topk=rpn.cfg.post_nms_topk_test,
                                              min_box_size=rpn.cfg.min_box_size)
    heads = model.roi_heads
    hc, bc = heads.cfg, heads.box_cfg
    maps = [features[f] for f in hc.in_features]
    t = boxes.shape[1]
    flat = boxes.reshape(-1, 4)
    image = torch.arange(n, device=pixels.device)[:, None].expand(n, t).reshape(-1, 1)
    rois = torch.cat([image.to(maps[0].dtype), flat.to(maps[0].dtype)], dim=1)
    pooled = fast.multilevel_roi_align(maps, rois, output_size=bc.pooler_resolution, strides=heads.strides,
                                       sampling_ratio=bc.pooler_sampling_ratio, aligned=bc.aligned,
                                       canonical_box_size=hc.canonical_box_size, canonical_level=hc.canonical_level,
                                       eps=hc.level_eps, eps_in_log=hc.level_eps_in_log)
    cls_logits, box_deltas = heads.box_predictor(heads.box_head(pooled))
    probs = F.softmax(cls_logits, dim=-1)
    filled = (torch.arange(t, device=pixels.device)[None, :] < count[:, None]).reshape(-1, 1)
    probs = torch.where(filled, probs, torch.zeros((), dtype=probs.dtype, device=probs.device))
    decoded = fast.decode_boxes(box_deltas, flat.to(box_deltas.dtype), bc.box_coder.weights,
                                bc.box_coder.scale_clamp)
    inf = heads.inference_cfg
    return fast_rcnn_inference_static(decoded.reshape(n, t, -1), probs.reshape(n, t, -1), sizes,
                                      score_thresh=inf.score_thresh, nms_thresh=inf.nms_thresh,
                                      topk_per_image=inf.detections_per_image, min_box_size=inf.min_box_size,
                                      drop_nonfinite=inf.drop_nonfinite)


def _device_type(device: Any) -> str | None:
    try:
        return torch.device(device if device is not None else "cpu").type
    except (RuntimeError, TypeError, ValueError):
        return None


def _h2d_cache_mode(device_type: str = "cuda"):
    """A TorchFunctionMode that serves small host-to-device constant copies (Tensor.to / .cuda of a CPU tensor,
    Tensor.new_tensor and torch.tensor / as_tensor on a CUDA device, and Python-list indices of a CUDA tensor)
    from a cache keyed by their values: the first call copies, later calls reuse the same device tensor (the
    callers only read them). Records where each cached copy comes from. device_type "cpu" caches the same
    calls on the CPU (a dry run of the mechanism where there is no GPU)."""
    from torch.overrides import TorchFunctionMode

    class H2DCache(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.device_type = device_type
            self.cache: dict[Any, torch.Tensor] = {}
            self.sites: dict[str, int] = {}
            self.misses = 0

        def _on_device(self, t) -> bool:
            return isinstance(t, torch.Tensor) and t.device.type == self.device_type

        def _key(self, func, args, kwargs):
            name = getattr(func, "__name__", "")
            if name in ("to", "cuda") and args and isinstance(args[0], torch.Tensor) and args[0].device.type == "cpu":
                src = args[0]
                if src.numel() > 256:
                    return None
                return (name, src.dtype, tuple(src.shape), tuple(src.flatten().tolist()), repr(args[1:]),
                        repr(sorted(kwargs.items())))
            if name == "new_tensor" and args and self._on_device(args[0]):
                return (name, args[0].dtype, str(args[0].device), repr(args[1:]), repr(sorted(kwargs.items())))
            if name in ("tensor", "as_tensor") and _device_type(kwargs.get("device")) == self.device_type:
                return (name, repr(args), repr(sorted(kwargs.items())))
            return None

        def _record(self, what: str) -> None:
            self.misses += 1
            frames = [f for f in traceback.extract_stack()[:-2] if str(ROOT) in f.filename
                      and not f.filename.endswith("gpu_figures.py")]
            site = (f"{os.path.relpath(frames[-1].filename, ROOT)}:{frames[-1].lineno} {frames[-1].name}"
                    if frames else "outside the repository")
            self.sites[f"{site} ({what})"] = 1

        def _list_index(self, func, args, kwargs):
            """t[..., [i, j], ...] on a CUDA tensor with the list replaced by a cached device index tensor."""
            if getattr(func, "__name__", "") != "__getitem__" or len(args) != 2 or kwargs:
                return None
            src, index = args
            if not self._on_device(src):
                return None
            items = index if isinstance(index, tuple) else (index,)

            def ints(x):
                return isinstance(x, list) and x and all(isinstance(i, int) and not isinstance(i, bool) for i in x)

            if not any(ints(i) for i in items):
                return None
            new = []
            for item in items:
                if ints(item):
                    key = ("index", tuple(item), str(src.device))
                    if key not in self.cache:
                        self.cache[key] = torch.tensor(item, dtype=torch.int64, device=src.device)
                        self._record("list index")
                    item = self.cache[key]
                new.append(item)
            return func(src, tuple(new) if isinstance(index, tuple) else new[0])

        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            indexed = self._list_index(func, args, kwargs)
            if indexed is not None:
                return indexed
            key = self._key(func, args, kwargs)
            if key is None:
                return func(*args, **kwargs)
            if key not in self.cache:
                out = func(*args, **kwargs)
                if not self._on_device(out):
                    return out
                self.cache[key] = out
                self._record(getattr(func, "__name__", str(func)))
            return self.cache[key]

    return H2DCache()


def _capture(fn: Callable[[], Any], warmup: int, mode=None):
    """Warm up on a side stream, then capture fn() in a CUDAGraph -> (graph, static outputs)."""
    ctx = mode if mode is not None else contextlib.nullcontext()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with ctx:
        with torch.cuda.stream(stream):
            for _ in range(max(warmup, 1)):
                fn()
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = fn()
    return graph, out


def _compare(a, b) -> dict[str, Any]:
    """Two static outputs (boxes, scores, classes, count): same counts, max |score| and |box| differences."""
    ca, cb = a[3].cpu().tolist(), b[3].cpu().tolist()
    out: dict[str, Any] = {"count": ca, "count_other": cb, "same_count": ca == cb}
    if ca == cb:
        out["max_abs_score_diff"] = float((a[1].float() - b[1].float()).abs().max().cpu())
        out["max_abs_box_diff"] = float((a[0].float() - b[0].float()).abs().max().cpu())
        out["same_classes"] = bool(torch.equal(a[2], b[2]))
    return out


def fig_cuda_graph(device: torch.device, cfg: dict[str, Any],
                   progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """progress(partial result) is called after each step (so a crash in a later capture loses nothing)."""
    from spec import validate as v

    progress = progress or (lambda partial: None)

    hw = cfg["hw"]
    warmup, iters = cfg["graph"]
    model, _ = rcnn_models(device, hw, cfg["rpn_topk"])
    pixels = torch.stack(rcnn_images(1, hw, device))
    sizes = torch.tensor([list(hw)], dtype=torch.float32, device=device)
    result: dict[str, Any] = {"workload": {"batch": 1, "image_hw": list(hw), "dtype": "bf16 autocast",
                                           "path": "static_detect: select_proposals_static + multilevel_roi_align "
                                                   "+ fast_rcnn_inference_static, value checks off"}}

    def make(dtype):
        def fn():
            with torch.inference_mode(), autocast(device, dtype, cache_enabled=False), v.value_checks(False):
                return static_detect(model, pixels, sizes)
        return fn

    fn = make(torch.bfloat16)

    def fp32_check():  # the static path against the eager module (fp32, image 0)
        static = make(None)()
        with torch.inference_mode():
            eager = model(list(pixels))[0]
        c = int(static[3][0])
        out = {"count_static": c, "count_eager": int(eager["scores"].numel())}
        if c == eager["scores"].numel() and c:
            out["max_abs_score_diff"] = float((static[1][0, :c] - eager["scores"]).abs().max())
        return out

    result["static_vs_eager_module_fp32"] = guarded(fp32_check, device)
    eager_static: dict[str, Any] = {}

    def run_eager():
        stats, out = measure(fn, device, warmup, iters)
        eager_static["out"] = out
        return stats

    result["static_eager"] = guarded(run_eager, device)
    progress(result)
    if device.type != "cuda":
        def dry_run():  # the cache mechanism without a capture: same detections, and the sites it serves
            mode = _h2d_cache_mode(device.type)
            with mode:
                for _ in range(2):
                    out = fn()
            return {"h2d_copy_sites": sorted(mode.sites), "h2d_copies_cached": mode.misses,
                    "vs_static_eager": _compare(out, eager_static["out"]) if "out" in eager_static else None}

        result["graph"] = {"skipped": "CUDA graphs need a CUDA device"}
        result["graph_h2d_cached"] = {"skipped": "CUDA graphs need a CUDA device",
                                      "dry_run_without_capture": guarded(dry_run, device)}
        return result

    def run_graph(cached: bool):
        mode = _h2d_cache_mode() if cached else None

        def body():
            graph, out = _capture(fn, warmup, mode)
            stats, _ = measure(graph.replay, device, warmup, iters)
            if "out" in eager_static:
                stats["vs_static_eager"] = _compare(out, eager_static["out"])
            return stats

        res = guarded(body, device)
        if mode is not None:  # also after a failure: the copies it served before
            res["h2d_copy_sites"] = sorted(mode.sites)
            res["h2d_copies_cached"] = mode.misses
        with contextlib.suppress(Exception):  # is the context still usable after a failed capture?
            torch.cuda.synchronize()
            res["context_ok_after"] = True
        return res

    def graph_speedup():
        best = next((result[k] for k in ("graph", "graph_h2d_cached") if "median_ms" in result.get(k, {})), None)
        if best is not None and "median_ms" in result["static_eager"]:
            result["speedup_graph_vs_static_eager"] = result["static_eager"]["median_ms"] / best["median_ms"]

    # the cached variant first: the likelier number, before a plain capture that may leave the context broken
    result["graph_h2d_cached"] = run_graph(True)
    graph_speedup()
    progress(result)
    result["graph"] = run_graph(False)
    graph_speedup()
    return result


# ------------------------------------------------------------------------------------------------ MViT
_MVIT: dict[str, Any] = {}


def mvit_models(device: torch.device, smoke: bool, clip_thw: tuple[int, int, int]):
    if "fast" not in _MVIT:
        import torchvision

        import fast
        from spec.mvit import MVIT_CONFIGS

        torch.manual_seed(SEED)
        model = fast.MViT(MVIT_CONFIGS["mvit_b_16x4"]).eval()
        with torch.device("meta"):  # no initialisation: fast's weights are assigned below
            tv = torchvision.models.video.mvit_v1_b(weights=None).eval()
        tv.load_state_dict(model.state_dict(), assign=True)  # the same layout: a strict load
        if smoke:  # torchvision's positional embeddings are sized for 16x224x224: resize them for the smoke clip
            from torchvision.models.video.mvit import PositionalEncoding

            t, h, w = model.cfg.patch_grid(clip_thw)
            tv.pos_encoding = PositionalEncoding(tv.pos_encoding.class_token.shape[-1], (h, w), t, False)
        _MVIT["fast"], _MVIT["torchvision"] = model.to(device), tv.to(device)
    return _MVIT["fast"], _MVIT["torchvision"]


def measure_own_autocast(model: torch.nn.Module, x: Any, dtype: torch.dtype | None, device: torch.device,
                         warmup: int, iters: int) -> tuple[dict[str, Any], Any]:
    """measure(model(x)) under inference mode with the model's own ``autocast_dtype`` set to dtype for the calls
    (fast's low-precision option), restored to None afterwards."""
    model.autocast_dtype = dtype
    try:
        def fn():
            with torch.inference_mode():
                return model(x)
        return measure(fn, device, warmup, iters)
    finally:
        model.autocast_dtype = None


def fig_mvit(device: torch.device, cfg: dict[str, Any], smoke: bool, dtype: torch.dtype | None) -> dict[str, Any]:
    shape = cfg["mvit_shape"]
    warmup, iters = cfg["mvit"]
    model, tv = mvit_models(device, smoke, tuple(shape[2:]))
    clip = torch.randn(shape, generator=torch.Generator().manual_seed(SEED)).to(device)
    result: dict[str, Any] = {"workload": {"input": list(shape), "dtype": "bf16" if dtype else "fp32",
                                           "fast_bf16": "fast.MViT autocast_dtype=torch.bfloat16",
                                           "torchvision_bf16": "torch.autocast"}}
    outs = {}

    def run_fast():
        stats, outs["fast"] = measure_own_autocast(model, clip, dtype, device, warmup, iters)
        return stats

    def run_tv():
        def fn():
            with torch.inference_mode(), autocast(device, dtype):
                return tv(clip)
        stats, outs["torchvision"] = measure(fn, device, warmup, iters)
        return stats

    for name, run in (("fast", run_fast), ("torchvision", run_tv)):
        result[name] = guarded(run, device)
        if "median_ms" in result[name]:
            result[name]["clips_per_s"] = shape[0] / (result[name]["median_ms"] * 1e-3)
    if len(outs) == 2 and not smoke:
        result["max_abs_logit_diff"] = float((outs["fast"].float() - outs["torchvision"].float()).abs().max())
    result["speedup_fast_vs_torchvision"] = speedup(result.get("fast", {}), result.get("torchvision", {}))
    return result


def fig_mvitdet(device: torch.device, cfg: dict[str, Any], dtype: torch.dtype | None) -> dict[str, Any]:
    """detectron2's MViTv2-T backbone: fast (fp32 or its autocast_dtype) in images/s; the reference (fp32, one
    image) as the baseline."""
    import fast.mvit_det
    import reference.mvit_det
    from spec.mvit_det import MVITV2_T_DET

    shape = cfg["mvitdet_shape"]
    warmup, iters = cfg["mvitdet"]
    if "mvitdet_fast" not in _MVIT:
        torch.manual_seed(SEED)
        ref = reference.mvit_det.MViTDetBackbone(MVITV2_T_DET).eval()
        model = fast.mvit_det.MViTDetBackbone(MVITV2_T_DET).eval()
        model.load_state_dict(ref.state_dict())
        _MVIT["mvitdet_fast"], _MVIT["mvitdet_reference"] = model.to(device), ref.to(device)
    model, ref = _MVIT["mvitdet_fast"], _MVIT["mvitdet_reference"]
    images = torch.randn(shape, generator=torch.Generator().manual_seed(SEED)).to(device)
    result: dict[str, Any] = {"workload": {"input": list(shape), "dtype": "bf16" if dtype else "fp32",
                                           "fast_bf16": "fast.mvit_det.MViTDetBackbone autocast_dtype"}}
    outs = {}

    def run_fast():
        stats, outs["fast"] = measure_own_autocast(model, images, dtype, device, warmup, iters)
        return stats

    def run_reference():
        def fn():
            with torch.inference_mode():
                return ref(images[:1])
        stats, outs["reference"] = measure(fn, device, min(warmup, 1), max(1, min(iters, 2)))
        return stats

    result["fast"] = guarded(run_fast, device)
    if "median_ms" in result["fast"]:
        result["fast"]["images_per_s"] = shape[0] / (result["fast"]["median_ms"] * 1e-3)
    if dtype is None:
        result["reference"] = guarded(run_reference, device)
        if "median_ms" in result["reference"]:
            result["reference"]["images_per_s"] = 1 / (result["reference"]["median_ms"] * 1e-3)
        if len(outs) == 2:
            result["max_abs_output_diff"] = max(float((outs["fast"][k][:1].float() - v.float()).abs().max())
                                                for k, v in outs["reference"].items())
    return result


# ------------------------------------------------------------------------------------------------ report
def _fmt(x: Any, digits: int = 1) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _cell(entry: dict[str, Any], key: str, digits: int = 1) -> str:
    if not isinstance(entry, dict):
        return "-"
    if key in entry:
        return _fmt(entry[key], digits)
    if "error" in entry:
        return "error" + (" (OOM)" if entry.get("oom") else "")
    if "skipped" in entry:
        return "skipped"
    return "-"


def markdown(data: dict[str, Any]) -> str:
    meta, figs = data.get("meta", {}), data.get("figures", {})
    lines = [f"GPU figures: {meta.get('gpu_name', meta.get('device'))}, torch {meta.get('torch')}, torchvision "
             f"{meta.get('torchvision')}, triton {meta.get('triton')}, TF32 matmul={meta.get('tf32_matmul')} "
             f"cudnn={meta.get('tf32_cudnn')}{' (SMOKE sizes)' if meta.get('smoke') else ''}", "",
             "| figure | metric | fast | torchvision | fast speedup | note |", "|---|---|---|---|---|---|"]

    def clean(text: Any) -> str:  # one table cell: no pipes, no line breaks
        return " ".join(str(text).replace("|", "/").split())

    def row(key, metric, fast_entry, tv_entry, field, digits, sp, note=""):
        lines.append(f"| {key} | {metric} | {_cell(fast_entry, field, digits)} | {_cell(tv_entry, field, digits)} | "
                     f"{_fmt(sp, 2)} | {clean(note)} |")

    for key in FIGURE_KEYS:
        if key not in figs:
            lines.append(f"| {key} | - | - | - | - | missing from figures.json |")
            continue
        f = figs[key]
        if not isinstance(f, dict):
            f = {"error": f"unexpected entry {f!r}"}
        if ("error" in f or "skipped" in f) and "partial" not in f:
            lines.append(f"| {key} | - | - | - | - | {clean(f.get('error') or f.get('skipped'))[:160]} |")
            continue
        sp = f.get("speedup_fast_vs_torchvision")
        if key == "roi_align_multilevel":
            frac = f.get("fast", {}).get("fraction_of_peak")
            row(key, "us/call", f.get("fast", {}), f.get("torchvision", {}), "median_us", 1, sp,
                f"fast {_fmt(frac, 3)} of peak BW ({f.get('card_bandwidth')}); fast NCHW "
                f"{_cell(f.get('fast_nchw', {}), 'median_us')} us")
        elif key == "batched_nms":
            agree = f.get("agreement_with_torchvision", {})
            row(key, "us/call", f.get("fast", {}), f.get("torchvision", {}), "median_us", 1, sp,
                f"Triton+offsets; same set: {agree.get('fast', {}).get('same_set')}; fast.batched_nms "
                f"{_cell(f.get('fast_batched_nms_api', {}), 'median_us')} us, same set: "
                f"{agree.get('fast_batched_nms_api', {}).get('same_set')}")
        elif key.startswith("rcnn_b1_bf16_cuda"):
            g = f.get("graph", {})
            gc = f.get("graph_h2d_cached", {})
            note = ("plain capture: " + ("ok" if "median_ms" in g else (g.get("error") or g.get("skipped") or "?")[:80])
                    + f"; cached-H2D graph {_cell(gc, 'median_ms', 2)} ms; static eager "
                    f"{_cell(f.get('static_eager', {}), 'median_ms', 2)} ms")
            best = g if "median_ms" in g else gc
            if "error" in f:
                note += f"; figure error: {f['error'][:80]}"
            row(key, "latency ms", best, {}, "median_ms", 2, f.get("speedup_graph_vs_static_eager"),
                note + " (speedup = vs static eager)")
        elif key.startswith("rcnn_b1"):
            row(key, "latency ms", f.get("fast", {}), f.get("torchvision", {}), "median_ms", 2, sp,
                f"agreement {f.get('agreement_image0')}")
        elif key.startswith("rcnn_b"):
            row(key, "images/s", f.get("fast", {}), f.get("torchvision", {}), "images_per_s", 1, sp,
                f"batch {f.get('workload', {}).get('batch')}")
        elif key.startswith("mvitv2_t_det"):
            fast_ips = f.get("fast", {}).get("images_per_s")
            if key.endswith("bf16"):  # against fast fp32
                fp32 = figs.get("mvitv2_t_det_fp32", {})
                base = fp32.get("fast", {}).get("images_per_s") if isinstance(fp32, dict) else None
                note = "speedup = vs fast fp32 (the row above)"
            else:
                base = f.get("reference", {}).get("images_per_s")
                note = (f"speedup = vs detspec's reference (fp32, batch 1: "
                        f"{_cell(f.get('reference', {}), 'images_per_s', 2)} images/s); max |fast - reference| "
                        f"{_fmt(f.get('max_abs_output_diff'), 6)}")
            row(key, "images/s", f.get("fast", {}), {}, "images_per_s", 2,
                fast_ips / base if fast_ips and base else None, note)
        elif key.startswith("mvit"):
            row(key, "clips/s", f.get("fast", {}), f.get("torchvision", {}), "clips_per_s", 2, sp,
                f"input {f.get('workload', {}).get('input')}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.environ.get("OUT") or "out/gpu",
                   help="output directory for figures.json and figures.md (default $OUT, else out/gpu)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, one iteration (a CPU check that it runs)")
    p.add_argument("--device", choices=("cuda", "cpu"), default=None,
                   help="default: cuda when available, else cpu")
    p.add_argument("--budget", type=float, default=170.0,
                   help="seconds; figures not started by then are recorded as skipped (default 170)")
    p.add_argument("--only", action="append", choices=FIGURE_KEYS, default=None,
                   help="run only these figures (repeatable); the others are recorded as skipped")
    p.add_argument("--table", metavar="FIGURES_JSON", default=None,
                   help="only print the Markdown table of an existing figures.json (e.g. after a crash)")
    return p.parse_args(argv)


def print_table(path: str) -> int:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        table = markdown(data)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        print(f"gpu_figures: cannot read {path}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    print(table + f"\nstatus: {data.get('status')}, elapsed {data.get('elapsed_s')} s", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.table:
        return print_table(args.table)
    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        print(f"gpu_figures: --out {out_dir} exists and is not a directory", file=sys.stderr)
        return 2
    if args.budget <= 0:
        print(f"gpu_figures: --budget must be positive, got {args.budget}", file=sys.stderr)
        return 2
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_figures: --device cuda, but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    out_dir.mkdir(parents=True, exist_ok=True)
    from detspec.io.fileio import atomic_write, atomic_write_json

    t_start = time.perf_counter()
    with contextlib.suppress(Exception):  # fp32 means IEEE fp32: no TF32 in matmuls or convolutions
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    cfg = SMOKE if args.smoke else FULL
    data: dict[str, Any] = {"meta": metadata(device, args.smoke, {k: list(v) if isinstance(v, tuple) else v
                                                                   for k, v in cfg.items()}),
                            "status": "running",
                            "figures": {k: {"error": "not run: the script ended before this figure"}
                                        for k in FIGURE_KEYS}}
    path = out_dir / "figures.json"

    def save():
        data["elapsed_s"] = round(time.perf_counter() - t_start, 1)
        atomic_write_json(path, data, indent=2, default=str)

    save()

    def progress(key: str) -> Callable[[dict[str, Any]], None]:
        def publish(partial: dict[str, Any]) -> None:
            data["figures"][key] = {**partial, "partial": "the figure had not finished"}
            save()
        return publish

    b8 = cfg["batch_large"]
    jobs: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("roi_align_multilevel", lambda: fig_roi_align(device, cfg)),
        ("batched_nms", lambda: fig_batched_nms(device, cfg)),
        ("rcnn_b1_fp32", lambda: fig_rcnn(device, cfg, 1, None)),
        ("rcnn_b8_fp32", lambda: fig_rcnn(device, cfg, b8, None)),
        ("rcnn_b1_bf16", lambda: fig_rcnn(device, cfg, 1, torch.bfloat16)),
        ("rcnn_b8_bf16", lambda: fig_rcnn(device, cfg, b8, torch.bfloat16)),
        ("mvit_b16_fp32", lambda: fig_mvit(device, cfg, args.smoke, None)),
        ("mvit_b16_bf16", lambda: fig_mvit(device, cfg, args.smoke, torch.bfloat16)),
        ("rcnn_b1_bf16_cuda_graph",  # a failed capture may leave the context broken: only MViTv2 follows
         lambda: fig_cuda_graph(device, cfg, progress("rcnn_b1_bf16_cuda_graph"))),
        ("mvitv2_t_det_fp32", lambda: fig_mvitdet(device, cfg, None)),
        ("mvitv2_t_det_bf16", lambda: fig_mvitdet(device, cfg, torch.bfloat16)),
    ]
    for key, job in jobs:
        elapsed = time.perf_counter() - t_start
        if args.only and key not in args.only:
            data["figures"][key] = {"skipped": "not selected with --only"}
        elif elapsed > args.budget:
            data["figures"][key] = {"skipped": f"time budget: {elapsed:.0f} s > --budget {args.budget:g} s"}
        else:
            t0 = time.perf_counter()
            res = guarded(job, device)
            previous = data["figures"][key]
            if "error" in res and "partial" in previous:  # keep what the figure had published
                res = {**previous, **res}
            res["seconds"] = round(time.perf_counter() - t0, 1)
            data["figures"][key] = res
            print(f"[{time.perf_counter() - t_start:6.1f} s] {key}: "
                  f"{'error: ' + data['figures'][key]['error'][:200] if 'error' in data['figures'][key] else 'ok'}",
                  flush=True)
        if key == "rcnn_b8_bf16":  # the torchvision detector is not needed any more
            _RCNN.pop("torchvision", None)
        if key == "mvit_b16_bf16":
            _MVIT.clear()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        save()
    data["status"] = "complete"
    save()
    table = markdown(data)
    atomic_write(out_dir / "figures.md", table)
    print(table, flush=True)
    print(json.dumps({"figures_json": str(path), "elapsed_s": data["elapsed_s"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
