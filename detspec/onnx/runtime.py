"""The ONNX Runtime port: contract names whose work runs as exported ONNX graphs on ONNX Runtime (CPU).

``namespace()`` is what ``detspec check --impl onnxruntime`` tests. Each function validates its arguments with
the contract's rules (spec/validate.py: the same TypeError / ValueError messages as fast), converts the torch
tensors to numpy, runs the component's graph (detspec.onnx.components) on an ONNX Runtime CPU session and
returns torch tensors of the contract's dtypes and shapes on the inputs' device. Sessions are cached per
component, input dtype and static argument (output size, top-k, ...); thresholds, weights and image sizes are
graph inputs. Inputs with no rows return the empty result without running a graph (the graphs accept them too;
this only skips an export). Contract names with no ONNX counterpart here (anchors, matching, sampling, losses, models)
are absent, so the suite reports them "not implemented".
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import Tensor

from detspec.onnx.components import component_model, model_bytes, nms_threshold, static_key
from fast.image_list import size_bounds
from fast.proposals import select_proposals as fast_select_proposals
from spec import validate as v
from spec.config import BASE_RCNN_FPN, SCALE_CLAMP

_ROI = BASE_RCNN_FPN.roi_heads
_BOX = BASE_RCNN_FPN.box_head
_INF = BASE_RCNN_FPN.inference
DIVERGED = "Predicted boxes or scores contain Inf/NaN. Training has diverged."


@functools.lru_cache(maxsize=512)
def session(name: str, dtype: torch.dtype, static: tuple) -> ort.InferenceSession:
    """An ONNX Runtime CPU session of component `name` for `dtype` inputs and static arguments `static`."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    model = component_model(name, dtype, **dict(static))
    return ort.InferenceSession(model_bytes(model), options, providers=["CPUExecutionProvider"])


def run(name: str, dtype: torch.dtype, inputs: Sequence[Any], **static: Any) -> list[np.ndarray]:
    """Run component `name` on `inputs` (tensors or arrays, in the graph's input order)."""
    sess = session(name, dtype, static_key(name, static))
    feeds = {}
    for meta, value in zip(sess.get_inputs(), inputs):
        if isinstance(value, Tensor):
            value = value.detach().cpu().numpy()
        feeds[meta.name] = np.ascontiguousarray(value)
    return sess.run(None, feeds)


def _t(array: np.ndarray, device: torch.device, dtype: torch.dtype | None = None) -> Tensor:
    out = torch.from_numpy(np.ascontiguousarray(array))
    return out.to(device=device, dtype=dtype or out.dtype)


def _scalar(value: float, dtype: torch.dtype) -> np.ndarray:
    return torch.tensor(value, dtype=dtype).numpy()


def _float_dtype(*tensors: Tensor) -> torch.dtype:
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    if dtype not in (torch.float32, torch.float64):
        dtype = torch.float32  # float16 / bfloat16 inputs run in float32 (cast back on return)
    return dtype


# ------------------------------------------------------------------------------------------ boxes
def pairwise_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    v.check_boxes(boxes1, "boxes1")
    v.check_boxes(boxes2, "boxes2")
    v.check_same_device("boxes1", boxes1, "boxes2", boxes2)
    out_dtype = torch.promote_types(boxes1.dtype, boxes2.dtype)
    if not boxes1.shape[0] or not boxes2.shape[0]:
        return boxes1.new_zeros(boxes1.shape[0], boxes2.shape[0], dtype=out_dtype)
    dtype = _float_dtype(boxes1, boxes2)
    (iou,) = run("pairwise_iou", dtype, [boxes1.to(dtype), boxes2.to(dtype)])
    return _t(iou, boxes1.device, out_dtype)


def box_area(boxes: Tensor) -> Tensor:
    v.check_boxes(boxes, "boxes", finite=False, ordered=False)
    if not boxes.shape[0]:
        return boxes.new_zeros(0)
    dtype = _float_dtype(boxes)
    (area,) = run("box_area", dtype, [boxes.to(dtype)])
    return _t(area, boxes.device, boxes.dtype)


def clip_boxes(boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
    v.check_boxes(boxes, "boxes", ordered=False)
    if len(image_size) != 2 or min(image_size) < 0:
        raise ValueError(f"image_size must be a non-negative (height, width), got {image_size!r}")
    if not boxes.shape[0]:
        return boxes.clone()
    dtype = _float_dtype(boxes)
    upper = size_bounds([image_size], boxes.to(dtype).cpu())[0]
    (out,) = run("clip_boxes", dtype, [boxes.to(dtype), upper])
    return _t(out, boxes.device, boxes.dtype)


def nonempty(boxes: Tensor, threshold: float = 0.0) -> Tensor:
    v.check_boxes(boxes, "boxes", finite=False, ordered=False)
    if not boxes.shape[0]:
        return torch.zeros(0, dtype=torch.bool, device=boxes.device)
    dtype = _float_dtype(boxes)
    (keep,) = run("nonempty", dtype, [boxes.to(dtype), _scalar(threshold, dtype)])
    return _t(keep, boxes.device)


def encode_boxes(src: Tensor, target: Tensor, weights: Sequence[float]) -> Tensor:
    w = v.check_weights(weights)
    v.check_encode_args(src, target)
    src_wh = src[:, 2:] - src[:, :2]
    if v.value_checks_enabled() and src.numel() and not bool((src_wh > 0).all()):
        raise ValueError("src boxes must have positive width and height (got a zero-size src box)")
    if not src.shape[0]:
        return src.new_zeros(0, 4)
    dtype = _float_dtype(src, target)
    (deltas,) = run("encode_boxes", dtype, [src.to(dtype), target.to(dtype), torch.tensor(w, dtype=dtype)])
    return _t(deltas, src.device, torch.promote_types(src.dtype, target.dtype))


def decode_boxes(deltas: Tensor, boxes: Tensor, weights: Sequence[float], scale_clamp: float = SCALE_CLAMP) -> Tensor:
    w = v.check_weights(weights)
    v.check_decode_args(deltas, boxes)
    out_dtype = torch.promote_types(deltas.dtype, boxes.dtype)
    if not deltas.shape[0] or not deltas.shape[1]:
        return deltas.new_zeros(deltas.shape, dtype=out_dtype)
    dtype = _float_dtype(deltas, boxes)
    (out,) = run("decode_boxes", dtype, [deltas.to(dtype), boxes.to(dtype), torch.tensor(w, dtype=dtype),
                                          _scalar(scale_clamp, dtype)])
    return _t(out, deltas.device, out_dtype)


def detector_postprocess(boxes: Tensor, input_size: tuple[int, int],
                         output_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    v.check_boxes(boxes, "boxes", ordered=False)
    for name, size in (("input_size", input_size), ("output_size", output_size)):
        if len(size) != 2 or min(float(s) for s in size) <= 0:
            raise ValueError(f"{name} must be a positive (h, w), got {size!r}")
    if not boxes.shape[0]:
        return boxes.clone(), torch.zeros(0, dtype=torch.bool, device=boxes.device)
    in_h, in_w = (float(s) for s in input_size)
    out_h, out_w = (float(s) for s in output_size)
    dtype = _float_dtype(boxes)
    scale = torch.tensor([out_w / in_w, out_h / in_h, out_w / in_w, out_h / in_h], dtype=dtype)
    upper = torch.tensor([out_w, out_h, out_w, out_h], dtype=dtype)
    scaled, keep = run("detector_postprocess", dtype, [boxes.to(dtype), scale, upper])
    return _t(scaled, boxes.device, boxes.dtype), _t(keep, boxes.device)


# ------------------------------------------------------------------------------------------ NMS
def _graph_nms(boxes: Tensor, scores: Tensor, iou_threshold: float, groups: Tensor | None = None) -> Tensor:
    """nms (groups None) and batched_nms: the contract's argument checks, then the component's graph."""
    v.check_boxes(boxes, "boxes")
    v.check_vector(scores, "scores", boxes.shape[0], floating=True, finite=True)
    others = {"scores": scores}
    if groups is not None:
        v.check_vector(groups, "groups", boxes.shape[0], floating=False)
        others["groups"] = groups
    for name, t in others.items():
        v.check_same_device("boxes", boxes, name, t)
    thr = v.check_threshold(iou_threshold, "iou_threshold")
    if not boxes.shape[0]:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    dtype = _float_dtype(boxes, scores)
    inputs = [boxes.to(dtype), scores.to(dtype)] + ([] if groups is None else [groups.to(torch.int64)])
    (keep,) = run("nms" if groups is None else "batched_nms", dtype,
                  inputs + [_scalar(nms_threshold(thr), torch.float32)])
    return _t(keep, boxes.device, torch.int64)


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    return _graph_nms(boxes, scores, iou_threshold)


def batched_nms(boxes: Tensor, scores: Tensor, groups: Tensor, iou_threshold: float) -> Tensor:
    return _graph_nms(boxes, scores, iou_threshold, groups)


# ------------------------------------------------------------------------------------------ ROI stage
def assign_levels(boxes: Tensor, min_level: int = _ROI.min_level, max_level: int = _ROI.max_level,
                  canonical_box_size: float = _ROI.canonical_box_size, canonical_level: int = _ROI.canonical_level,
                  eps: float = _ROI.level_eps, eps_in_log: bool = _ROI.level_eps_in_log) -> Tensor:
    v.check_boxes(boxes, "boxes")
    if int(min_level) > int(max_level):
        raise ValueError(f"min_level must be <= max_level, got {min_level} and {max_level}")
    if not canonical_box_size > 0:
        raise ValueError(f"canonical_box_size must be positive, got {canonical_box_size}")
    if not boxes.shape[0]:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    dtype = _float_dtype(boxes)
    (levels,) = run("assign_levels", dtype, [boxes.to(dtype)], min_level=int(min_level), max_level=int(max_level),
                    canonical_box_size=float(canonical_box_size), canonical_level=int(canonical_level),
                    eps=float(eps), eps_in_log=bool(eps_in_log))
    return _t(levels, boxes.device, torch.int64)


def roi_align(features: Tensor, rois: Tensor, output_size: int | tuple[int, int], spatial_scale: float,
              sampling_ratio: int, aligned: bool) -> Tensor:
    fmap = v.check_roi_features(features, "features")
    v.check_rois(rois, fmap.shape[0], "rois")
    v.check_same_device("features", fmap, "rois", rois)
    oh, ow = v.check_roi_align_args(output_size, spatial_scale, sampling_ratio)
    n, c, h, w = fmap.shape
    if not rois.shape[0] or not c or not h or not w:
        return fmap.new_zeros(rois.shape[0], c, oh, ow)
    dtype = _float_dtype(fmap)
    (out,) = run("roi_align", dtype, [fmap.to(dtype), rois.to(dtype)], output_size=(oh, ow),
                 spatial_scale=float(spatial_scale), sampling_ratio=int(sampling_ratio), aligned=bool(aligned))
    return _t(out, fmap.device, fmap.dtype)


def multilevel_roi_align(features: Sequence[Tensor], rois: Tensor, output_size: int = _BOX.pooler_resolution,
                         strides: Sequence[int] = BASE_RCNN_FPN.pooled_strides,
                         sampling_ratio: int = _BOX.pooler_sampling_ratio, aligned: bool = _BOX.aligned,
                         canonical_box_size: float = _ROI.canonical_box_size,
                         canonical_level: int = _ROI.canonical_level, eps: float = _ROI.level_eps,
                         eps_in_log: bool = _ROI.level_eps_in_log) -> Tensor:
    maps = v.check_level_features(features, strides)
    v.check_rois(rois, maps[0].shape[0], "rois")
    v.check_same_device("features[0]", maps[0], "rois", rois)
    v.check_boxes(rois[:, 1:], "rois[:, 1:]")
    oh, ow = v.check_roi_align_args(output_size, 1.0, sampling_ratio)
    if oh != ow:
        raise ValueError(f"output_size must be one int (a square pooler), got {output_size!r}")
    c = maps[0].shape[1]
    if not rois.shape[0] or not c or any(not m.shape[2] or not m.shape[3] for m in maps):
        return maps[0].new_zeros(rois.shape[0], c, oh, ow)
    dtype = _float_dtype(maps[0])
    (out,) = run("multilevel_roi_align", dtype, [m.to(dtype) for m in maps] + [rois.to(dtype)],
                 output_size=oh, strides=tuple(int(s) for s in strides), sampling_ratio=int(sampling_ratio),
                 aligned=bool(aligned), canonical_box_size=float(canonical_box_size),
                 canonical_level=int(canonical_level), eps=float(eps), eps_in_log=bool(eps_in_log))
    return _t(out, maps[0].device, maps[0].dtype)


def fast_rcnn_inference(boxes: Sequence[Tensor], scores: Sequence[Tensor], image_sizes: Sequence[tuple[int, int]],
                        score_thresh: float = _INF.score_thresh, nms_thresh: float = _INF.nms_thresh,
                        topk_per_image: int = _INF.detections_per_image,
                        min_box_size: float | None = _INF.min_box_size,
                        drop_nonfinite: bool = _INF.drop_nonfinite) -> list[tuple[Tensor, Tensor, Tensor, Tensor]]:
    num_images = v.check_inference_args(boxes, scores, image_sizes, drop_nonfinite)
    v.check_threshold(score_thresh, "score_thresh", low=float("-inf"), high=float("inf"))
    thr = v.check_threshold(nms_thresh, "nms_thresh")
    if isinstance(topk_per_image, bool) or not isinstance(topk_per_image, int):
        raise ValueError(f"topk_per_image must be an int, got {topk_per_image!r}")
    if len({s.shape[1] for s in scores}) > 1:
        raise ValueError(f"scores must have the same K+1 columns in every image, got "
                         f"{sorted({s.shape[1] for s in scores})}")
    results = []
    for n in range(num_images):  # the graph is per image (the contract's lists are per image)
        b, s = boxes[n], scores[n]
        device, dtype = b.device, _float_dtype(b, s)
        if not b.shape[0] or topk_per_image == 0:
            results.append((b.new_zeros(0, 4), s.new_zeros(0), torch.zeros(0, dtype=torch.int64, device=device),
                            torch.zeros(0, dtype=torch.int64, device=device)))
            continue
        upper = size_bounds([image_sizes[n]], b.detach().cpu().to(dtype))[0]
        out = run("fast_rcnn_inference", dtype, [b.to(dtype), s.to(dtype), upper, _scalar(score_thresh, s.dtype),
                                                 _scalar(nms_threshold(thr), torch.float32)],
                  topk=int(topk_per_image), min_box_size=None if min_box_size is None else float(min_box_size),
                  drop_nonfinite=bool(drop_nonfinite))
        results.append((_t(out[0], device, b.dtype), _t(out[1], device, s.dtype), _t(out[2], device, torch.int64),
                        _t(out[3], device, torch.int64)))
    return results


def with_signature_of(like: Callable) -> Callable:
    """Decorator: the port function takes `like`'s parameters, in its order, with its defaults (fast's: the
    contract's names with the spec config's defaults), so that the two cannot drift; the body receives every
    argument by keyword."""
    signature = inspect.signature(like)

    def wrap(body: Callable) -> Callable:
        @functools.wraps(body)
        def port(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            return body(**bound.arguments)

        port.__signature__ = signature  # type: ignore[attr-defined]
        return port

    return wrap


@with_signature_of(fast_select_proposals)
def select_proposals(proposals, logits, image_sizes, nms_thresh, pre_nms_topk, post_nms_topk, min_box_size,
                     training, rank_by, score_thresh) -> list[tuple[Tensor, Tensor]]:
    num_images = v.check_select_args(proposals, logits, image_sizes, nms_thresh, pre_nms_topk, post_nms_topk)
    if rank_by not in ("logit", "sigmoid"):
        raise ValueError(f"rank_by must be one of ('logit', 'sigmoid'), got {rank_by!r}")
    if num_images == 0:
        return []
    device = proposals[0].device
    dtype = _float_dtype(*proposals, *logits)
    empty = [(proposals[0].new_zeros(0, 4), logits[0].new_zeros(0)) for _ in range(num_images)]
    if post_nms_topk == 0 or pre_nms_topk == 0 or all(not p.shape[1] for p in proposals):
        return empty
    upper = size_bounds(image_sizes, proposals[0].detach().cpu().to(dtype))
    boxes, scores, count, finite = run(
        "select_proposals", dtype, [p.to(dtype) for p in proposals] + [s.to(dtype) for s in logits]
        + [upper, _scalar(nms_threshold(v.check_threshold(nms_thresh, "nms_thresh")), torch.float32)],
        num_levels=len(proposals), pre_nms_topk=int(pre_nms_topk), post_nms_topk=int(post_nms_topk),
        min_box_size=float(min_box_size), rank_by=rank_by,
        score_thresh=None if score_thresh is None else float(score_thresh))
    if training and not finite.all():
        raise FloatingPointError(DIVERGED)
    return [(_t(boxes[n, : count[n]], device, proposals[0].dtype), _t(scores[n, : count[n]], device, logits[0].dtype))
            for n in range(num_images)]


NAMES = ("pairwise_iou", "box_area", "clip_boxes", "nonempty", "encode_boxes", "decode_boxes", "nms", "batched_nms",
         "assign_levels", "roi_align", "multilevel_roi_align", "select_proposals", "fast_rcnn_inference",
         "detector_postprocess")


def namespace() -> SimpleNamespace:
    """The port: one attribute per contract name it implements (NAMES)."""
    return SimpleNamespace(**{name: globals()[name] for name in NAMES})


__all__ = ["NAMES", "namespace", "run", "session", *NAMES]
