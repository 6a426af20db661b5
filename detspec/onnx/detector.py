"""The whole fast detector as one ONNX model, and running it on ONNX Runtime.

``export_detector(model, path, profile)`` exports ``fast.FasterRCNN`` (eval) for one image: the normalized,
padded batch ``[1, 3, H, W]`` (H, W multiples of 32, dynamic) and ``upper [4]`` = (w, h, w, h) of the unpadded
network size -> ``boxes [D, 4]`` (network pixels), ``scores [D]``, ``classes int64 [D]``, D <= 100.
Preprocessing is at the boundary: ``run_onnx_detector`` applies the profile's normalize / resize / pad with
``fast.preprocess`` (the same code the .pth path runs) and rescales the boxes to the original image with
``fast.detector_postprocess``. Inside the graph: fast's backbone and RPN head, every anchor decoded (decoding is
per row, so this equals fast's top-k-then-decode), proposal selection with NonMaxSuppression, the multi-level
RoiAlign pooler, fast's box head and predictor, and fast_rcnn_inference with NonMaxSuppression
(detspec/onnx/components.py). Padding rows after the selected proposals are pooled too and masked out.
The model's metadata records detspec's version, the spec version and config hash, the profile and the
class-to-category map (JSON).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import Tensor

from detspec.onnx.components import (
    OPSET,
    DecodeBoxes,
    FastRCNNInference,
    MultilevelROIAlign,
    SelectProposals,
    model_bytes,
    nms_threshold,
    quiet_export,
    translations,
)


class DetectorGraph(torch.nn.Module):
    """fast.FasterRCNN's eval path for one padded, normalized image (see the module docstring)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        cfg = model.cfg
        self.model = model
        self.cfg = cfg
        rpn, roi, box, inf = cfg.rpn, cfg.roi_heads, cfg.box_head, cfg.inference
        self.decode = DecodeBoxes()
        self.select = SelectProposals(rpn.pre_nms_topk_test, rpn.post_nms_topk_test, rpn.min_box_size, rpn.rank_by,
                                      rpn.score_thresh)
        strides = tuple(cfg.pooled_strides)
        self.pool = MultilevelROIAlign(box.pooler_resolution, strides, box.pooler_sampling_ratio, box.aligned,
                                       roi.canonical_box_size, roi.canonical_level, roi.level_eps,
                                       roi.level_eps_in_log)
        self.infer = FastRCNNInference(inf.detections_per_image, inf.min_box_size, inf.drop_nonfinite)
        self.register_buffer("rpn_weights", torch.tensor(rpn.box_coder.weights), persistent=False)
        self.register_buffer("box_weights", torch.tensor(box.box_coder.weights), persistent=False)
        self.register_buffer("rpn_clamp", torch.tensor(rpn.box_coder.scale_clamp), persistent=False)
        self.register_buffer("box_clamp", torch.tensor(box.box_coder.scale_clamp), persistent=False)
        self.register_buffer("rpn_nms", torch.tensor(nms_threshold(rpn.nms_thresh)), persistent=False)
        self.register_buffer("box_nms", torch.tensor(nms_threshold(inf.nms_thresh)), persistent=False)
        self.register_buffer("score_thresh", torch.tensor(float(inf.score_thresh)), persistent=False)
        self.cells = [c.clone() for c in model.proposal_generator.anchor_cache.cells]
        self.anchor_strides = tuple(model.proposal_generator.anchor_cache.strides)
        self.anchor_offset = float(model.proposal_generator.anchor_cache.offset)

    def _anchors(self, h: Any, w: Any, stride: int, cells: Tensor) -> Tensor:
        """[h * w * A, 4] in (y, x, anchor) order: fast.grid_anchors' formula on symbolic sizes."""
        sx = (torch.arange(w, dtype=torch.float32) + self.anchor_offset) * stride
        sy = (torch.arange(h, dtype=torch.float32) + self.anchor_offset) * stride
        shifts = torch.stack([sx[None, :].expand(h, w), sy[:, None].expand(h, w)] * 2, dim=2)  # [h, w, 4]
        return (shifts[:, :, None, :] + cells[None, None]).reshape(-1, 4)

    def forward(self, batch: Tensor, upper: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        cfg = self.cfg
        features = self.model.backbone(batch)
        rpn_maps = [features[k] for k in cfg.rpn.in_features]
        logits, deltas = self.model.proposal_generator.rpn_head(rpn_maps)  # L x [1, P], L x [1, P, 4]
        boxes = []
        for x, d, stride, cells in zip(rpn_maps, deltas, self.anchor_strides, self.cells):
            anchors = self._anchors(x.shape[2], x.shape[3], stride, cells)
            boxes.append(self.decode(d[0], anchors, self.rpn_weights, self.rpn_clamp)[None])
        prop_boxes, _, count, _ = self.select(*boxes, *logits, upper[None], self.rpn_nms)
        props = prop_boxes[0]  # [T, 4]; rows >= count are padding
        rois = torch.cat([torch.zeros_like(props[:, :1]), props], dim=1)
        pooled = self.pool(*[features[k] for k in cfg.roi_heads.in_features], rois)
        class_logits, box_deltas = self.model.roi_heads.box_predictor(self.model.roi_heads.box_head(pooled))
        probs = F.softmax(class_logits, dim=-1)
        real = (torch.arange(props.shape[0]) < count[0])[:, None]
        probs = torch.where(real, probs, torch.zeros((), dtype=probs.dtype))  # padding rows: below every threshold
        decoded = self.decode(box_deltas, props, self.box_weights, self.box_clamp)
        det_boxes, det_scores, classes, _ = self.infer(decoded, probs, upper, self.score_thresh, self.box_nms)
        return det_boxes, det_scores, classes


def metadata(model: torch.nn.Module, profile: str, categories: Sequence[tuple[int, str]]) -> dict[str, str]:
    from detspec.vectors.format import spec_version
    from spec import SPEC_VERSION

    version = spec_version()
    return {"detspec_version": version["version"], "spec_version": SPEC_VERSION,
            "spec_config_sha256": version["config_sha256"], "profile": profile,
            "num_classes": str(model.num_classes),
            "input_config": json.dumps(dataclasses.asdict(model.cfg.input)),
            "categories": json.dumps([{"class": c, "id": int(i), "name": n} for c, (i, n) in enumerate(categories)]),
            "input": "batch [1, 3, H, W]: the profile's normalized pixels (fast.preprocess), padded to multiples of "
                     "32; upper [4]: (w, h, w, h) of the unpadded network size",
            "output": "boxes [D, 4] in network pixels (XYXY), scores [D], classes int64 [D] (detspec class index), "
                      "D <= detections_per_image, by score"}


def export_detector(model: torch.nn.Module, path: str | None, profile: str, categories: Sequence[tuple[int, str]],
                    example_size: tuple[int, int] = (256, 320)) -> onnx.ModelProto:
    """Export fast.FasterRCNN `model` (its config decides the profile's numbers) to ONNX; write it to `path`
    atomically when given. Returns the ModelProto."""
    model = model.eval()
    graph = DetectorGraph(model).eval()
    h, w = example_size
    batch = torch.randn(1, 3, h, w)
    upper = torch.tensor([float(w), float(h), float(w), float(h)])
    dims = (32 * torch.export.Dim("h32", min=2, max=64), 32 * torch.export.Dim("w32", min=2, max=64))
    with quiet_export(), torch.no_grad():
        program = torch.onnx.export(
            graph, (batch, upper), dynamo=True, opset_version=OPSET, dynamic_shapes=({2: dims[0], 3: dims[1]}, None),
            input_names=["batch", "upper"], output_names=["boxes", "scores", "classes"], verbose=False,
            custom_translation_table=translations(), report=False)
    proto = program.model_proto
    for key, value in metadata(model, profile, categories).items():
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto)
    if path is not None:
        from detspec.io.fileio import atomic_write

        atomic_write(path, model_bytes(proto))
    return proto


REQUIRED_METADATA = ("profile", "input_config", "categories")


@dataclasses.dataclass(frozen=True)
class OnnxDetector:
    """An exported detector loaded on ONNX Runtime (CPU), with what its metadata says.

    profile: "detectron2" or "torchvision"; input_cfg: the model's own InputConfig (its profile's, with the
    exported values); categories: (COCO category id, name) per detspec class index, in class order."""

    session: Any
    profile: str
    input_cfg: Any
    categories: tuple[tuple[int, str], ...]

    def __call__(self, images: Sequence[Tensor], resize: bool = True) -> list[dict[str, Tensor]]:
        return run_onnx_detector(self, images, resize=resize)


def _metadata_error(source: str, problem: str) -> ValueError:
    return ValueError(f"{source}: {problem}; not a detector written by `detspec export WEIGHTS OUT.onnx`")


def detector_from_session(sess: Any, source: str = "the ONNX model") -> OnnxDetector:
    """Read the profile, input config and categories from an ONNX Runtime session's metadata; ValueError naming
    `source` when the model is not an exported detector."""
    from spec.config import PROFILES

    meta = sess.get_modelmeta().custom_metadata_map
    missing = [k for k in REQUIRED_METADATA if k not in meta]
    if missing or [i.name for i in sess.get_inputs()] != ["batch", "upper"]:
        raise _metadata_error(source, "no " + ", ".join(repr(k) for k in missing) + " metadata" if missing else
                              "its inputs are not (batch, upper)")
    if meta["profile"] not in PROFILES:
        raise _metadata_error(source, f"unknown profile {meta['profile']!r} in its metadata")
    try:
        values = {k: tuple(x) if isinstance(x, list) else x for k, x in json.loads(meta["input_config"]).items()}
        input_cfg = dataclasses.replace(PROFILES[meta["profile"]].input, **values)  # the model's own input
        cats = json.loads(meta["categories"])
        categories = tuple((int(c["id"]), str(c["name"])) for c in cats)
        classes = [int(c["class"]) for c in cats]
    except (ValueError, TypeError, KeyError) as exc:
        raise _metadata_error(source, f"unreadable input_config / categories metadata ({exc})") from None
    ids = [cid for cid, _ in categories]
    if classes != list(range(len(cats))) or not ids or ids != sorted(set(ids)):
        raise _metadata_error(source, "its categories metadata is not one ascending category id per class")
    return OnnxDetector(sess, meta["profile"], input_cfg, categories)


def load_detector(path: str | Any, threads: int | None = None) -> OnnxDetector:
    """An exported detector from a file, on ONNX Runtime's CPU provider (`threads` intra-op threads; None: ONNX
    Runtime's default); ValueError / FileNotFoundError naming the file when it is missing, not an ONNX model ONNX
    Runtime can load, or not an exported detector."""
    import os

    import onnxruntime as ort

    if os.path.isdir(path):
        raise ValueError(f"{path}: is a directory, not an ONNX model")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such ONNX model")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors are reported below, as one line
    if threads is not None:
        options.intra_op_num_threads = int(threads)
    try:
        sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own classes (InvalidProtobuf, Fail, ...) for a bad file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{path}: ONNX Runtime cannot load it as a model ({first[:200]})") from None
    return detector_from_session(sess, str(path))


def run_onnx_detector(path_or_session: Any, images: Sequence[Tensor], resize: bool = True) -> list[dict[str, Tensor]]:
    """Images [3, H, W] in the profile's pixel format -> per image {"boxes", "scores", "classes"} in original
    pixels, as fast.FasterRCNN's eval output. The profile comes from the model's metadata.

    path_or_session: a path, an onnxruntime.InferenceSession or an OnnxDetector."""
    import onnxruntime as ort

    from fast.preprocess import preprocess
    from fast.roi_heads import detector_postprocess

    if isinstance(path_or_session, OnnxDetector):
        detector = path_or_session
    elif isinstance(path_or_session, ort.InferenceSession):
        detector = detector_from_session(path_or_session)
    else:
        detector = load_detector(path_or_session)
    results = []
    for img in images:
        batch, sizes, originals = preprocess([img], detector.input_cfg, resize=resize, dtype=torch.float32)
        (h, w), original = sizes[0], originals[0]
        upper = np.array([w, h, w, h], dtype=np.float32)
        boxes, scores, classes = detector.session.run(None, {"batch": batch.contiguous().numpy(), "upper": upper})
        boxes_t, keep = detector_postprocess(torch.from_numpy(boxes), (h, w), original)
        results.append({"boxes": boxes_t[keep], "scores": torch.from_numpy(scores)[keep],
                        "classes": torch.from_numpy(classes)[keep]})
    return results
