"""Input validation that is part of the contract: which inputs are errors, and which message they give.

Invalid input raises TypeError (wrong type or dtype) or ValueError (wrong shape, NaN/inf where the spec
forbids it, negative sizes), with a message naming the argument and what was expected. Empty inputs are
valid and follow each function's documented result.

Value checks (finiteness, negative sizes) read tensor values, which is a host sync on CUDA. Code that must
stay sync-free (CUDA-graph capture) wraps calls in ``value_checks(False)``; shape and dtype checks remain.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

_VALUE_CHECKS = True


@contextlib.contextmanager
def value_checks(enabled: bool) -> Iterator[None]:
    """Turn value-reading checks (NaN, inf, negative sizes) on or off inside the block."""
    global _VALUE_CHECKS
    previous, _VALUE_CHECKS = _VALUE_CHECKS, enabled
    try:
        yield
    finally:
        _VALUE_CHECKS = previous


def value_checks_enabled() -> bool:
    return _VALUE_CHECKS


def check_tensor(t: object, name: str) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    return t


def check_float(t: object, name: str) -> Tensor:
    t = check_tensor(t, name)
    if not t.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype, got {t.dtype}")
    return t


def check_finite(t: Tensor, name: str) -> None:
    if _VALUE_CHECKS and t.numel() and not bool(torch.isfinite(t).all()):
        bad = (~torch.isfinite(t)).nonzero()[0].tolist()
        raise ValueError(f"{name} contains NaN or inf (first at index {bad})")


def check_boxes(t: object, name: str, *, finite: bool = True, ordered: bool = True, cols: int = 4) -> Tensor:
    """A float [N, cols] box tensor; optionally finite and with x2 >= x1, y2 >= y1."""
    t = check_float(t, name)
    if t.dim() != 2 or t.shape[1] != cols:
        raise ValueError(f"{name} must have shape [N, {cols}], got {list(t.shape)}")
    if finite:
        check_finite(t, name)
    if ordered and _VALUE_CHECKS and t.numel():
        neg = (t[:, 2] < t[:, 0]) | (t[:, 3] < t[:, 1])
        if bool(neg.any()):
            i = int(neg.nonzero()[0, 0])
            raise ValueError(f"{name} has a negative width or height at row {i}: {t[i].tolist()} "
                             "(expected XYXY with x2 >= x1 and y2 >= y1)")
    return t


def check_vector(t: object, name: str, length: int, *, floating: bool | None = None, finite: bool = False) -> Tensor:
    """A 1-D tensor of the given length; floating=True/False requires a float/integer dtype."""
    t = check_tensor(t, name)
    if floating is True and not t.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype, got {t.dtype}")
    if floating is False and (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool):
        raise TypeError(f"{name} must have an integer dtype, got {t.dtype}")
    if t.dim() != 1 or t.shape[0] != length:
        raise ValueError(f"{name} must have shape [{length}], got {list(t.shape)}")
    if finite:
        check_finite(t, name)
    return t


def check_same_device(name_a: str, a: Tensor, name_b: str, b: Tensor) -> None:
    if a.device != b.device:
        raise ValueError(f"{name_a} is on {a.device} but {name_b} is on {b.device}")


def check_threshold(value: object, name: str, low: float = 0.0, high: float = 1.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    v = float(value)
    if not (low <= v <= high):
        raise ValueError(f"{name} must be in [{low}, {high}], got {v}")
    return v


def check_weights(weights: Sequence[float], name: str = "weights") -> tuple[float, float, float, float]:
    w = tuple(float(x) for x in weights)
    if len(w) != 4 or not all(x > 0 for x in w):
        raise ValueError(f"{name} must be 4 positive numbers (wx, wy, ww, wh), got {weights!r}")
    return w  # type: ignore[return-value]


def check_match_args(thresholds: Sequence[float], labels: Sequence[int]) -> tuple[list[float], list[int]]:
    """Thresholds sorted ascending and one more label than thresholds, labels in {-1, 0, 1}."""
    th = [float(t) for t in thresholds]
    lb = [int(x) for x in labels]
    if any(b < a for a, b in zip(th, th[1:])):
        raise ValueError(f"thresholds must be sorted ascending, got {th}")
    if len(lb) != len(th) + 1:
        raise ValueError(f"labels must have len(thresholds) + 1 = {len(th) + 1} entries, got {len(lb)}")
    if any(x not in (-1, 0, 1) for x in lb):
        raise ValueError(f"labels must be in {{-1, 0, 1}}, got {lb}")
    return th, lb


def check_quality(quality: object) -> Tensor:
    """The matcher's [G, P] quality matrix: floating, 2-D, finite, >= 0."""
    q = check_float(quality, "quality")
    if q.dim() != 2:
        raise ValueError(f"quality must have shape [G, P], got {list(q.shape)}")
    check_finite(q, "quality")
    if _VALUE_CHECKS and q.numel() and bool((q < 0).any()):
        raise ValueError("quality must be >= 0 everywhere")
    return q


def check_decode_args(deltas: object, boxes: object) -> None:
    """decode_boxes' [N, 4K] deltas (floating) and [N, 4] boxes (finite, ordered), row counts equal."""
    d = check_float(deltas, "deltas")
    if d.dim() != 2 or d.shape[1] % 4 != 0:
        raise ValueError(f"deltas must have shape [N, 4K], got {list(d.shape)}")
    b = check_boxes(boxes, "boxes")
    if d.shape[0] != b.shape[0]:
        raise ValueError(f"deltas has {d.shape[0]} rows but boxes has {b.shape[0]}")


def check_encode_args(src: object, target: object) -> None:
    """encode_boxes' [N, 4] src and target: finite, ordered, same shape."""
    s = check_boxes(src, "src")
    t = check_boxes(target, "target")
    if s.shape != t.shape:
        raise ValueError(f"src and target must have the same shape, got {list(s.shape)} and {list(t.shape)}")


def check_sampling_args(labels: object, num_samples: object, positive_fraction: object,
                        generator: object) -> None:
    """subsample_labels' arguments: 1-D integer labels, a count, a fraction and an optional Generator."""
    lab = check_tensor(labels, "labels")
    if lab.dim() != 1:
        raise ValueError(f"labels must have shape [P], got {list(lab.shape)}")
    if lab.is_floating_point() or lab.dtype == torch.bool:
        raise TypeError(f"labels must have an integer dtype, got {lab.dtype}")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 0:
        raise ValueError(f"num_samples must be a non-negative int, got {num_samples!r}")
    check_threshold(positive_fraction, "positive_fraction")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")


def check_grid_args(feature_sizes: Sequence, strides: Sequence, cell_anchors: Sequence) -> None:
    """grid_anchors' per-level lists: equal lengths, non-negative sizes, [A, 4] cell anchors."""
    if not (len(feature_sizes) == len(strides) == len(cell_anchors)):
        raise ValueError(f"feature_sizes, strides and cell_anchors must have one entry per level, got "
                         f"{len(feature_sizes)}, {len(strides)} and {len(cell_anchors)}")
    for (height, width), cells in zip(feature_sizes, cell_anchors):
        if height < 0 or width < 0:
            raise ValueError(f"feature sizes must be non-negative, got {(height, width)}")
        if not isinstance(cells, Tensor) or cells.dim() != 2 or cells.shape[1] != 4:
            raise ValueError(f"cell anchors must be tensors of shape [A, 4], got {getattr(cells, 'shape', cells)}")


def check_fpn_features(features: object, names: Sequence[str], channels: Sequence[int], upsample: int = 2,
                       size_divisibility: int = 32) -> None:
    """FPN.ERRORS: a mapping with every level, 4-D float tensors, the expected channels, sizes halving exactly."""
    if not isinstance(features, Mapping):
        raise TypeError(f"features must be a dict of level name -> [N, C, H, W] tensor, got "
                        f"{type(features).__name__}")
    missing = [n for n in names if n not in features]
    if missing:
        raise ValueError(f"features is missing levels {missing}; expected {list(names)}, got {list(features)}")
    batch = None
    for name, c in zip(names, channels):
        t = features[name]
        if not isinstance(t, Tensor):
            raise TypeError(f"features[{name!r}] must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"features[{name!r}] must have a floating dtype, got {t.dtype}")
        if t.dim() != 4:
            raise ValueError(f"features[{name!r}] must have shape [N, C, H, W], got {list(t.shape)}")
        if t.shape[1] != c:
            raise ValueError(f"features[{name!r}] must have {c} channels, got {t.shape[1]} "
                             f"(shape {list(t.shape)})")
        if batch is None:
            batch = t.shape[0]
        elif t.shape[0] != batch:
            raise ValueError(f"features[{name!r}] has batch size {t.shape[0]} but features[{names[0]!r}] has "
                             f"{batch}")
    for fine, coarse in zip(names, names[1:]):
        hf, wf = features[fine].shape[-2:]
        hc, wc = features[coarse].shape[-2:]
        if (hf, wf) != (upsample * hc, upsample * wc):
            raise ValueError(
                f"features[{fine!r}] is {hf}x{wf} but features[{coarse!r}] is {hc}x{wc}; each level must be "
                f"exactly {upsample}x the size of the next coarser one. Pad the input images to a multiple of "
                f"{size_divisibility} (pad_images, size_divisibility) before the backbone")


def check_images(images: object) -> None:
    if isinstance(images, Tensor) or not isinstance(images, Sequence):
        raise TypeError(f"images must be a list of [C, H, W] tensors, got {type(images).__name__}")
    if len(images) == 0:
        raise ValueError("images must be a non-empty list of [C, H, W] tensors, got an empty list")
    for i, img in enumerate(images):
        if not isinstance(img, Tensor):
            raise TypeError(f"images[{i}] must be a torch.Tensor, got {type(img).__name__}")
        if img.dim() != 3:
            raise ValueError(f"images[{i}] must have shape [C, H, W], got {list(img.shape)}")
    first = images[0]
    for i, img in enumerate(images):
        if img.shape[0] != first.shape[0]:
            raise ValueError(f"images must all have the same channel count: images[0] has {first.shape[0]}, "
                             f"images[{i}] has {img.shape[0]}")
        if img.dtype != first.dtype:
            raise TypeError(f"images must all have the same dtype: images[0] is {first.dtype}, "
                            f"images[{i}] is {img.dtype}")
        if img.device != first.device:
            raise ValueError(f"images must all be on one device: images[0] is on {first.device}, "
                             f"images[{i}] is on {img.device}")


def check_pad_args(images: object, size_divisibility: object) -> list[tuple[int, int]]:
    """pad_images' arguments (INPUT.PADDING): check_images, and size_divisibility a non-negative int.
    Returns the images' (Hi, Wi)."""
    check_images(images)
    if isinstance(size_divisibility, bool) or not isinstance(size_divisibility, int) or size_divisibility < 0:
        raise ValueError(f"size_divisibility must be a non-negative int, got {size_divisibility!r}")
    return [(int(img.shape[1]), int(img.shape[2])) for img in images]


def check_postprocess_args(boxes: object, input_size: object, output_size: object) -> tuple[float, float, float, float]:
    """detector_postprocess' arguments (ROI.POSTPROCESS): boxes [D, 4] (any order; finite), input_size and
    output_size positive (h, w). Returns (in_h, in_w, out_h, out_w) as floats."""
    check_boxes(boxes, "boxes", ordered=False)
    for name, size in (("input_size", input_size), ("output_size", output_size)):
        if not hasattr(size, "__len__") or len(size) != 2 or min(float(s) for s in size) <= 0:
            raise ValueError(f"{name} must be a positive (h, w), got {size!r}")
    return float(input_size[0]), float(input_size[1]), float(output_size[0]), float(output_size[1])


def features_in_order(features: object, names: Sequence[str]) -> object:
    """A mapping of feature maps read in ``names`` order (a ValueError names the missing ones); a sequence as is."""
    if not isinstance(features, Mapping):
        return features
    missing = [name for name in names if name not in features]
    if missing:
        raise ValueError(f"features is missing {missing}; expected {list(names)}")
    return [features[name] for name in names]


def check_rpn_features(features: object, in_channels: int) -> None:
    """A non-empty list of float [N, C, Hi, Wi] maps with C == in_channels and one batch size.  # RPN.ERRORS"""
    if isinstance(features, Tensor) or not isinstance(features, Sequence) or len(features) == 0:
        raise ValueError(f"features must be a non-empty list of [N, C, H, W] tensors, got {type(features).__name__}"
                         + (f" of length {len(features)}" if isinstance(features, Sequence) else ""))
    batch = None
    for i, x in enumerate(features):
        check_float(x, f"features[{i}]")
        if x.dim() != 4:
            raise ValueError(f"features[{i}] must have shape [N, C, H, W], got {list(x.shape)}")
        if x.shape[1] != in_channels:
            raise ValueError(f"features[{i}] has {x.shape[1]} channels; the RPN head expects {in_channels}")
        if batch is None:
            batch = x.shape[0]
        elif x.shape[0] != batch:
            raise ValueError(f"features[{i}] has batch size {x.shape[0]} but features[0] has {batch}")


def check_shape(t: object, name: str, shape: tuple, floating: bool) -> Tensor:
    """A tensor of the given shape (None = any size) and dtype kind (floating or integer)."""
    t = check_tensor(t, name)
    if floating and not t.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype, got {t.dtype}")
    if not floating and (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool):
        raise TypeError(f"{name} must have an integer dtype, got {t.dtype}")
    if t.dim() != len(shape) or any(s is not None and s != d for s, d in zip(shape, t.shape)):
        expected = ", ".join("N" if s is None else str(s) for s in shape)
        raise ValueError(f"{name} must have shape [{expected}], got {list(t.shape)}")
    return t


def check_fpn_config(cfg: Any, in_channels: Sequence[int], upsample: int) -> None:
    """FPNConfig and in_channels the FPN implementations support (FPN.CONVS, FPN.STRIDES)."""
    if cfg.norm != "":
        raise ValueError(f"only cfg.norm = '' (no norm, convs with bias) is implemented, got {cfg.norm!r}")
    if cfg.fuse_type not in ("sum", "avg"):
        raise ValueError(f"cfg.fuse_type must be 'sum' or 'avg', got {cfg.fuse_type!r}")
    if cfg.top_block != "LastLevelMaxPool":
        raise ValueError(f"only cfg.top_block = 'LastLevelMaxPool' is implemented, got {cfg.top_block!r}")
    if len(in_channels) != len(cfg.in_features):
        raise ValueError(f"in_channels must have one entry per input feature {list(cfg.in_features)}, "
                         f"got {list(in_channels)}")
    if any(isinstance(c, bool) or int(c) != c or c <= 0 for c in in_channels):
        raise ValueError(f"in_channels must be positive ints, got {list(in_channels)}")
    if len(cfg.out_features) != len(cfg.in_features) + 1 or len(cfg.strides) != len(cfg.out_features):
        raise ValueError("cfg.out_features and cfg.strides must name each input level plus the top block's P6")
    for fine, coarse in zip(cfg.strides, cfg.strides[1:]):
        if coarse != upsample * fine:
            raise ValueError(f"cfg.strides must double from level to level, got {list(cfg.strides)}")


def check_resnet_config(cfg: Any) -> None:
    """ResNetConfig choices the ResNet implementations support."""
    if cfg.norm != "FrozenBN":
        raise ValueError(f"only cfg.norm = 'FrozenBN' is implemented, got {cfg.norm!r}")
    if cfg.depth < 50:
        raise ValueError(f"only bottleneck ResNets (depth >= 50) are implemented, got depth {cfg.depth}")
    if cfg.res5_dilation not in (1, 2):
        raise ValueError(f"cfg.res5_dilation must be 1 or 2, got {cfg.res5_dilation}")
    if not cfg.blocks_per_stage or any(n < 1 for n in cfg.blocks_per_stage):
        raise ValueError(f"cfg.blocks_per_stage must be positive counts, got {cfg.blocks_per_stage}")


def check_select_args(proposals: object, logits: object, image_sizes: object, nms_thresh: object,
                pre_nms_topk: object, post_nms_topk: object, box_cols: int = 4) -> int:
    """Shapes, dtypes and counts (no value reads); returns N."""
    for name, value in (("proposals", proposals), ("logits", logits)):
        if isinstance(value, Tensor) or not isinstance(value, Sequence) or len(value) == 0:
            raise ValueError(f"{name} must be a non-empty list with one tensor per level")
    if len(proposals) != len(logits):  # type: ignore[arg-type]
        raise ValueError(f"proposals has {len(proposals)} levels but logits has {len(logits)}")  # type: ignore
    num_images = None
    for i, (b, s) in enumerate(zip(proposals, logits)):  # type: ignore[call-overload]
        check_float(b, f"proposals[{i}]")
        check_float(s, f"logits[{i}]")
        if b.dim() != 3 or b.shape[2] != box_cols:
            raise ValueError(f"proposals[{i}] must have shape [N, P, {box_cols}], got {list(b.shape)}")
        if s.dim() != 2 or tuple(s.shape) != tuple(b.shape[:2]):
            raise ValueError(f"logits[{i}] must have shape {[*b.shape[:2]]} (like proposals[{i}]), got {list(s.shape)}")
        check_same_device(f"proposals[{i}]", b, f"logits[{i}]", s)
        if num_images is None:
            num_images = b.shape[0]
        elif b.shape[0] != num_images:
            raise ValueError(f"proposals[{i}] has {b.shape[0]} images but proposals[0] has {num_images}")
    if isinstance(image_sizes, Tensor):
        if image_sizes.dim() != 2 or image_sizes.shape[1] != 2 or image_sizes.shape[0] != num_images:
            raise ValueError(f"image_sizes as a tensor must have shape [{num_images}, 2], "
                             f"got {list(image_sizes.shape)}")
    else:
        if not isinstance(image_sizes, Sequence) or len(image_sizes) != num_images:
            count = len(image_sizes) if isinstance(image_sizes, Sequence) else type(image_sizes).__name__
            raise ValueError(f"image_sizes must have one (h, w) per image ({num_images}), got {count}")
        for size in image_sizes:
            if len(size) != 2 or min(float(x) for x in size) < 0:
                raise ValueError(f"each image size must be a non-negative (h, w), got {size!r}")
    check_threshold(nms_thresh, "nms_thresh")
    for name, value in (("pre_nms_topk", pre_nms_topk), ("post_nms_topk", post_nms_topk)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    return int(num_images)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ ROI stage
def check_roi_features(features: object, name: str = "features") -> Tensor:
    """ROI.ALIGN_ERRORS: one floating [N, C, H, W] map."""
    f = check_float(features, name)
    if f.dim() != 4:
        raise ValueError(f"{name} must have shape [N, C, H, W], got {list(f.shape)}")
    return f


def check_rois(rois: object, num_images: int, name: str = "rois") -> Tensor:
    """ROI.ALIGN_ERRORS: floating [R, 5] rows (batch_index, x1, y1, x2, y2), finite, batch indices integral
    and in [0, num_images). Boxes are not required to be ordered (an inverted box pools 0, as in torchvision)."""
    r = check_float(rois, name)
    if r.dim() != 2 or r.shape[1] != 5:
        raise ValueError(f"{name} must have shape [R, 5] with rows (batch_index, x1, y1, x2, y2), "
                         f"got {list(r.shape)}")
    check_finite(r, name)
    if _VALUE_CHECKS and r.numel():
        idx = r[:, 0]
        bad = (idx != torch.round(idx)) | (idx < 0) | (idx >= num_images)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise ValueError(f"{name}[:, 0] must hold integral batch indices in [0, {num_images}); "
                             f"row {i} has {float(idx[i])}")
    return r


def check_roi_align_args(output_size: object, spatial_scale: object, sampling_ratio: object) -> tuple[int, int]:
    """roi_align's scalars: output_size an int or (oh, ow) of positive ints, spatial_scale a positive finite
    number, sampling_ratio an int (<= 0 = adaptive). Returns (oh, ow)."""
    size = (output_size, output_size) if isinstance(output_size, int) else output_size
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or any(isinstance(s, bool) or not isinstance(s, int) or s <= 0 for s in size)):
        raise ValueError(f"output_size must be a positive int or a pair (oh, ow) of positive ints, "
                         f"got {output_size!r}")
    if isinstance(spatial_scale, bool) or not isinstance(spatial_scale, (int, float)):
        raise TypeError(f"spatial_scale must be a number, got {type(spatial_scale).__name__}")
    if not (math.isfinite(spatial_scale) and spatial_scale > 0):
        raise ValueError(f"spatial_scale must be a positive finite number, got {spatial_scale}")
    if isinstance(sampling_ratio, bool) or not isinstance(sampling_ratio, int):
        raise TypeError(f"sampling_ratio must be an int (<= 0 for adaptive), got {sampling_ratio!r}")
    return int(size[0]), int(size[1])


def check_level_features(features: object, strides: Sequence[int]) -> list[Tensor]:
    """ROI.POOLER_LEVELS: a non-empty sequence of floating [N, C, Hi, Wi] maps, one per stride, with one batch
    size, channel count, dtype and device; strides positive powers of two that double from level to level
    (level i is FPN level log2(strides[i])). Returns the maps as a list."""
    if isinstance(features, Mapping):
        raise TypeError("features must be a sequence of [N, C, H, W] tensors in level order (read a dict in "
                        "cfg.in_features order first)")
    if isinstance(features, Tensor) or not isinstance(features, Sequence) or len(features) == 0:
        raise ValueError(f"features must be a non-empty list of [N, C, H, W] tensors, got {type(features).__name__}"
                         + (f" of length {len(features)}" if isinstance(features, Sequence) else ""))
    st = list(strides)
    if len(st) != len(features):
        raise ValueError(f"features has {len(features)} levels but strides has {len(st)} entries ({st})")
    for s in st:
        if isinstance(s, bool) or int(s) != s or s <= 0 or (int(s) & (int(s) - 1)) != 0:
            raise ValueError(f"strides must be positive powers of two, got {st}")
    if any(b != 2 * a for a, b in zip(st, st[1:])):
        raise ValueError(f"strides must double from level to level (consecutive FPN levels), got {st}")
    maps = [check_roi_features(x, f"features[{i}]") for i, x in enumerate(features)]
    first = maps[0]
    for i, x in enumerate(maps):
        if x.shape[:2] != first.shape[:2]:
            raise ValueError(f"features[{i}] has [N, C] = {list(x.shape[:2])} but features[0] has "
                             f"{list(first.shape[:2])}; every level needs the same batch size and channels")
        if x.dtype != first.dtype:
            raise TypeError(f"features[{i}] is {x.dtype} but features[0] is {first.dtype}")
        if x.device != first.device:
            raise ValueError(f"features[{i}] is on {x.device} but features[0] is on {first.device}")
    return maps


def check_level_args(boxes: object, min_level: object, max_level: object, canonical_box_size: object) -> None:
    """assign_levels' arguments (ROI.LEVEL_FORMULA): finite ordered boxes [R, 4], min_level <= max_level,
    canonical_box_size > 0."""
    check_boxes(boxes, "boxes")
    if int(min_level) > int(max_level):
        raise ValueError(f"min_level must be <= max_level, got {min_level} and {max_level}")
    if not canonical_box_size > 0:
        raise ValueError(f"canonical_box_size must be positive, got {canonical_box_size}")


def check_pooler_args(features: object, rois: object, strides: Sequence[int], output_size: object,
                      sampling_ratio: object) -> tuple[list[Tensor], tuple[int, int], tuple[int, int]]:
    """multilevel_roi_align's arguments (ROI.POOLER_LEVELS): check_level_features, rois [R, 5] on the maps'
    device with finite ordered boxes, and roi_align's scalars. Returns (maps, (min_level, max_level), (oh, ow)):
    level i is FPN level log2(strides[i])."""
    maps = check_level_features(features, strides)
    check_rois(rois, maps[0].shape[0], "rois")
    check_same_device("features[0]", maps[0], "rois", rois)
    check_boxes(rois[:, 1:], "rois[:, 1:]")
    levels = [int(round(math.log2(s))) for s in strides]
    return maps, (levels[0], levels[-1]), check_roi_align_args(output_size, 1.0, sampling_ratio)


def _per_image_list(value: object, name: str, what: str) -> Sequence:
    if isinstance(value, Tensor) or not isinstance(value, Sequence):
        raise ValueError(f"{name} must be a list with one {what} per image, got {type(value).__name__}")
    return value


def check_sample_rois_args(proposals: object, gt_boxes: object, gt_classes: object, num_classes: object) -> int:
    """sample_rois' inputs (ROI.SAMPLE_MATCH): equal-length per-image lists of proposals [P, 4] and gt_boxes
    [G, 4] (floating, finite, ordered) and gt_classes integer [G] in [0, num_classes). Returns N."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes <= 0:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    props = _per_image_list(proposals, "proposals", "[P, 4] tensor")
    boxes = _per_image_list(gt_boxes, "gt_boxes", "[G, 4] tensor")
    classes = _per_image_list(gt_classes, "gt_classes", "int64 [G] tensor")
    if not (len(props) == len(boxes) == len(classes)):
        raise ValueError(f"proposals, gt_boxes and gt_classes must have one entry per image, got "
                         f"{len(props)}, {len(boxes)} and {len(classes)}")
    for n, (p, b, c) in enumerate(zip(props, boxes, classes)):
        check_boxes(p, f"proposals[{n}]")
        check_boxes(b, f"gt_boxes[{n}]")
        check_vector(c, f"gt_classes[{n}]", b.shape[0], floating=False)
        check_same_device(f"proposals[{n}]", p, f"gt_boxes[{n}]", b)
        check_same_device(f"gt_boxes[{n}]", b, f"gt_classes[{n}]", c)
        if _VALUE_CHECKS and c.numel() and bool(((c < 0) | (c >= num_classes)).any()):
            raise ValueError(f"gt_classes[{n}] must be in [0, {num_classes}) (foreground classes; background "
                             f"is {num_classes}), got {c.tolist()}")
    return len(props)


def check_roi_loss_args(class_logits: object, box_deltas: object, proposals: object, gt_classes: object,
                        gt_boxes: object) -> tuple[int, int]:
    """roi_losses' inputs (ROI.LOSS_CLS, ROI.LOSS_BOX): class_logits [R, K+1] and box_deltas [R, 4K] floating,
    proposals and gt_boxes [R, 4] floating, gt_classes integer [R] in [0, K]. Returns (R, K)."""
    logits = check_float(class_logits, "class_logits")
    if logits.dim() != 2 or logits.shape[1] < 2:
        raise ValueError(f"class_logits must have shape [R, K+1] with K >= 1, got {list(logits.shape)}")
    r, k = logits.shape[0], logits.shape[1] - 1
    check_shape(box_deltas, "box_deltas", (r, 4 * k), floating=True)
    check_boxes(proposals, "proposals", ordered=False)
    if proposals.shape[0] != r:  # type: ignore[union-attr]
        raise ValueError(f"proposals must have shape [{r}, 4] (one row per ROI), got {list(proposals.shape)}")
    check_shape(gt_boxes, "gt_boxes", (r, 4), floating=True)
    check_vector(gt_classes, "gt_classes", r, floating=False)
    if _VALUE_CHECKS and r and bool(((gt_classes < 0) | (gt_classes > k)).any()):  # type: ignore[operator]
        raise ValueError(f"gt_classes must be in [0, {k}] ({k} = background), got values outside it")
    return r, k


def check_inference_args(boxes: object, scores: object, image_sizes: object, drop_nonfinite: bool) -> int:
    """fast_rcnn_inference's inputs (ROI.INFER_CLIP): per image boxes [Ri, 4K] and scores [Ri, K+1] (floating,
    one device) and an (h, w). Without drop_nonfinite a non-finite box or score is a ValueError. Returns N."""
    bs = _per_image_list(boxes, "boxes", "[R, 4K] tensor")
    ss = _per_image_list(scores, "scores", "[R, K+1] tensor")
    sizes = _per_image_list(image_sizes, "image_sizes", "(h, w)")
    if not (len(bs) == len(ss) == len(sizes)):
        raise ValueError(f"boxes, scores and image_sizes must have one entry per image, got {len(bs)}, "
                         f"{len(ss)} and {len(sizes)}")
    for n, (b, s, size) in enumerate(zip(bs, ss, sizes)):
        check_float(b, f"boxes[{n}]")
        check_float(s, f"scores[{n}]")
        if s.dim() != 2 or s.shape[1] < 2:
            raise ValueError(f"scores[{n}] must have shape [R, K+1] with K >= 1, got {list(s.shape)}")
        k = s.shape[1] - 1
        if b.dim() != 2 or b.shape[0] != s.shape[0] or b.shape[1] != 4 * k:
            raise ValueError(f"boxes[{n}] must have shape [{s.shape[0]}, {4 * k}] (4K columns for the K+1 "
                             f"score columns), got {list(b.shape)}")
        check_same_device(f"boxes[{n}]", b, f"scores[{n}]", s)
        if isinstance(size, Tensor):
            size = size.tolist()
        if not isinstance(size, Sequence) or len(size) != 2 or min(float(x) for x in size) < 0:
            raise ValueError(f"image_sizes[{n}] must be a non-negative (h, w), got {size!r}")
        if not drop_nonfinite:
            check_finite(b, f"boxes[{n}]")
            check_finite(s, f"scores[{n}]")
    return len(bs)


def check_detection_targets(targets: object, num_images: int) -> None:
    """Training targets of the detector: one mapping per image with "boxes" [G, 4] and "classes" [G]."""
    if targets is None or not isinstance(targets, (list, tuple)) or len(targets) != num_images:
        got = "None" if targets is None else f"{len(targets)} entries" if isinstance(targets, (list, tuple)) \
            else type(targets).__name__
        raise ValueError(f"training needs one target dict {{'boxes', 'classes'}} per image ({num_images}), got {got}")
    for i, t in enumerate(targets):
        if not isinstance(t, Mapping) or "boxes" not in t or "classes" not in t:
            keys = sorted(t) if isinstance(t, Mapping) else type(t).__name__
            raise ValueError(f"targets[{i}] must have 'boxes' [G, 4] and 'classes' [G], got {keys}")
