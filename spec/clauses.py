"""The clause registry: every statement of the spec under a stable ID.

Conformance tests carry ``@pytest.mark.clause("ID", ...)``; the report is the table of clauses x implementations.
A clause that no test checks yet is reported as "untested", never silently dropped.

IDs are ``AREA.NAME``. ``source`` cites the seed (``seed RPN part N``), the detectron2 note
(``d2-spec §x``, i.e. spec/text/detectron2.md) or a detectron2 file. ``components`` names the
contract functions a port needs for the clause (see ``spec.contract``).

A clause that states a configurable number names its field and shows the value read from ``spec.config`` at
registration (``config_field``: "NMS at RPNConfig.nms_thresh (0.7 in both profiles)"), so the text cannot drift
from the config. Worked examples and measured known values (the 3x4 matcher example, 111.99 -> P2) stay literal.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from spec.config import (
    BASE_RCNN_FPN,
    PARAMETER_COUNTS,
    PROFILES,
    SCALE_CLAMP,
    TORCHVISION,
    TV_BATCHED_NMS_LOOP_ABOVE,
)
from spec.tolerances import RATIO_RULE_FACTOR, discrete_tolerance


@dataclass(frozen=True)
class Clause:
    id: str
    text: str
    source: str
    components: tuple[str, ...] = ()

    @property
    def area(self) -> str:
        return self.id.split(".", 1)[0]


CLAUSES: dict[str, Clause] = {}


def register(id: str, text: str, source: str, components: tuple[str, ...] = ()) -> Clause:
    if id in CLAUSES:
        raise ValueError(f"clause {id!r} registered twice")
    if id.count(".") < 1 or id != id.upper():
        raise ValueError(f"clause id {id!r} must look like AREA.NAME in upper case")
    CLAUSES[id] = c = Clause(id, text, source, tuple(components))
    return c


def get_clause(id: str) -> Clause:
    try:
        return CLAUSES[id]
    except KeyError:
        areas = sorted({c.area for c in CLAUSES.values()})
        raise KeyError(f"unknown clause {id!r}; registered areas: {areas}") from None


# ------------------------------------------------------------------------------------------------ config numbers
def value_text(value: Any) -> str:
    """A config value as a clause states it: 0.7, 1e-05, 2000, 23,454,912, (0.3, 0.7), 64/128/256/512 (a dict)."""
    if isinstance(value, (bool, str)) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, dict):
        return "/".join(value_text(v) for v in value.values())
    if isinstance(value, (tuple, list)):
        inner = ", ".join(value_text(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    return str(value)


def _read(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def config_field(path: str, profiles: Sequence[str] = tuple(PROFILES), note: str = "") -> str:
    """'rpn.nms_thresh' -> 'RPNConfig.nms_thresh (0.7 in both profiles)': the field of a FasterRCNNConfig and
    its value in each named profile, read from spec.config now ('(1000 detectron2, 2000 torchvision)' where
    they differ); a note is added inside the parentheses after '; '."""
    section = path.split(".", 1)[0]
    owner = type(getattr(BASE_RCNN_FPN, section)).__name__
    values = {name: value_text(_read(PROFILES[name], path)) for name in profiles}
    if len(set(values.values())) == 1:
        only = next(iter(values.values()))
        if len(profiles) == len(PROFILES):
            where = " in both profiles" if len(PROFILES) == 2 else " in every profile"
        else:
            where = " in the " + ", ".join(profiles) + " profile" + ("s" if len(profiles) > 1 else "")
        shown = only + where
    else:
        shown = ", ".join(f"{v} {name}" for name, v in values.items())
    return f"{owner}.{path.split('.', 1)[1]} ({shown}{'; ' + note if note else ''})"


def parameter_count(name: str) -> str:
    """'fpn' -> 'ParameterCounts.fpn (3,344,384)'."""
    return f"ParameterCounts.{name} ({value_text(getattr(PARAMETER_COUNTS, name))})"


_F = config_field
_D2, _TV = BASE_RCNN_FPN, TORCHVISION


# ------------------------------------------------------------------------------------------------ boxes
register("BOX.IOU_NO_PLUS_ONE", "IoU uses width = x2 - x1 and height = y2 - y1, with no +1", "d2-spec §2.4",
         ("pairwise_iou",))
register("BOX.IOU_ZERO_NO_OVERLAP", "IoU is exactly 0 when boxes do not overlap (touching edges included)",
         "d2-spec §2.4", ("pairwise_iou",))
register("BOX.IOU_RANGE", "IoU lies in [0, 1], is symmetric, and is 1 for identical non-empty boxes",
         "d2-spec §2.4", ("pairwise_iou",))
register("BOX.AREA", "area = (x2 - x1) * (y2 - y1)", "d2-spec §2.4", ("box_area",))
register("BOX.CLIP", "clip(h, w) clamps x to [0, w] and y to [0, h]; non-finite boxes are an error",
         "d2-spec §2.4", ("clip_boxes",))
register("BOX.NONEMPTY", "nonempty(t) keeps a box when width > t and height > t (strict)", "d2-spec §2.4",
         ("nonempty",))
register("BOX.ENCODE", "encode gives dx = wx(cx_t-cx_s)/w_s, dy = wy(cy_t-cy_s)/h_s, dw = ww ln(w_t/w_s), "
         "dh = wh ln(h_t/h_s)", "d2-spec §2.7", ("encode_boxes",))
register("BOX.DECODE_INVERSE", "decode(encode(t)) == t while |dw|, |dh| stay within the clamp", "d2-spec §2.7",
         ("encode_boxes", "decode_boxes"))
_CLAMPS = {p.rpn.box_coder.scale_clamp for p in PROFILES.values()} | {p.box_head.box_coder.scale_clamp
                                                                      for p in PROFILES.values()}
_CLAMP_TEXT = (f"SCALE_CLAMP = log({value_text(math.exp(SCALE_CLAMP))}) = {SCALE_CLAMP:.6g} for both heads in both "
               "profiles" if _CLAMPS == {SCALE_CLAMP} else
               f"{_F('rpn.box_coder.scale_clamp')}, {_F('box_head.box_coder.scale_clamp')}")
register("BOX.DECODE_CLAMP", f"decode clamps dw and dh from above only, at BoxCoderConfig.scale_clamp ({_CLAMP_TEXT}); "
         "dx, dy are not clamped", "d2-spec §2.7", ("decode_boxes",))
register("BOX.DECODE_INTERLEAVED", "decode of [N, 4K] deltas is class-interleaved: columns 4c..4c+3 are class c",
         "d2-spec §2.7", ("decode_boxes",))
register("BOX.EMPTY", "empty box sets are valid: IoU of [0,4] x [M,4] is [0,M]; area, clip, nonempty, encode "
         "and decode of no boxes give empty results", "DESIGN.md conventions",
         ("pairwise_iou", "box_area", "clip_boxes", "nonempty", "encode_boxes", "decode_boxes"))
register("BOX.ERRORS", "bad input (not a tensor, integer dtype, wrong shape, NaN/inf, x2 < x1, zero-size "
         "encode source, mismatched rows) raises TypeError/ValueError naming the argument",
         "DESIGN.md conventions", ("pairwise_iou", "clip_boxes", "encode_boxes", "decode_boxes"))
register("BOX.WEIGHTS", f"RPN box weights are {_F('rpn.box_coder.weights')}; the box head's are "
         f"{_F('box_head.box_coder.weights')}", "d2-spec §1.4, §1.5", ("encode_boxes",))

# ------------------------------------------------------------------------------------------------ anchors
register("ANCHOR.CELL_COUNT", f"AnchorConfig.num_cell_anchors ({_D2.anchors.num_cell_anchors}) cell anchors = "
         f"{len(_D2.anchors.aspect_ratios[0])} aspect ratios (AnchorConfig.aspect_ratios) x {len(_D2.anchors.sizes)} "
         f"levels ({_D2.rpn.in_features[0].upper()}-{_D2.rpn.in_features[-1].upper()}), in both profiles",
         "seed RPN part 2", ("cell_anchors",))
register("ANCHOR.CELL_SHAPE", "a cell anchor of size s and ratio a = h/w has w = sqrt(s^2/a), h = a*w, "
         "centred at 0; area is exactly s^2", "d2-spec §2.3", ("cell_anchors",))
register("ANCHOR.CELL_ORDER", "cell anchors are ordered size-major, then ratio (0.5, 1, 2)", "d2-spec §2.3",
         ("cell_anchors",))
register("ANCHOR.CELL_ROUNDING", "the detectron2 profile does not round cell anchors; the torchvision profile "
         "rounds them to integers (halves to even, as torch.round)", "d2-spec §2.3; torchvision anchor_utils",
         ("cell_anchors",))
register("ANCHOR.PER_LEVEL_COUNT", f"each level has AnchorConfig.anchors_per_location "
         f"({_D2.anchors.anchors_per_location} in both profiles) * H * W anchors (one per ratio at every grid point)",
         "seed RPN part 2", ("grid_anchors",))
register("ANCHOR.GRID_ORDER", "anchors are flattened in level, y, x, anchor order", "d2-spec §2.3",
         ("grid_anchors",))
register("ANCHOR.OFFSET", "with offset 0.0 the anchor centres sit at (x*stride, y*stride)", "d2-spec §1.3",
         ("grid_anchors",))
register("ANCHOR.ERRORS", "non-positive sizes or ratios, negative feature sizes and mismatched level lists "
         "raise ValueError", "DESIGN.md conventions", ("cell_anchors", "grid_anchors"))
register("ANCHOR.TOTAL_800X1216", "an 800x1216 input gives 60800/15200/3800/950/247 locations, 242,991 anchors",
         "d2-spec §3", ("grid_anchors",))

# ------------------------------------------------------------------------------------------------ matcher
register("MATCH.THRESHOLDS", f"RPN matching at {_F('rpn.iou_thresholds')} with {_F('rpn.iou_labels')}: "
         f"IoU >= {value_text(_D2.rpn.iou_thresholds[1])} -> {_D2.rpn.iou_labels[2]} (foreground), "
         f"< {value_text(_D2.rpn.iou_thresholds[0])} -> {_D2.rpn.iou_labels[0]} (background), "
         f"otherwise {_D2.rpn.iou_labels[1]} (ignored)", "seed RPN part 3; defaults.py RPN.IOU_THRESHOLDS", ("match",))
register("MATCH.HALF_OPEN", "label intervals are half-open [low, high): a value equal to a threshold takes the "
         "upper label; the comparison is in the quality tensor's dtype (float32(0.7) >= 0.7 in float32)",
         "d2-spec §2.5; matcher.py", ("match",))
register("MATCH.CONFIGURABLE", f"thresholds and labels are parameters (ROI heads: {_F('roi_heads.iou_thresholds')} "
         f"with {_F('roi_heads.iou_labels')})", "d2-spec §1.5", ("match",))
register("MATCH.ARGMAX", "each prediction is matched to the GT with the highest quality", "d2-spec §2.5",
         ("match",))
register("MATCH.LOW_QUALITY", "allow_low_quality_matches labels 1 every prediction that ties (exactly) a GT's "
         "best quality; its matched index is not changed", "d2-spec §2.5; matcher.py", ("match",))
register("MATCH.EMPTY", "with no GT or no predictions every prediction gets index 0 and labels[0]", "d2-spec §2.5",
         ("match",))
register("MATCH.EXAMPLE", "the 3x4 example gives matches [1, 1, 2, 0] and labels [-1, 1, 0, 1]",
         "tests/modeling/test_matcher.py", ("match",))
register("MATCH.ERRORS", "bad input (non-float or non-2-D quality, NaN, negative quality, unsorted thresholds, "
         "wrong label count; bad gt_boxes/boxes for iou_match) raises TypeError/ValueError", "DESIGN.md conventions",
         ("match", "iou_match"))
register("MATCH.FUSED_IOU", "a fused IoU+match over boxes equals pairwise_iou followed by match",
         "d2-spec §2.8", ("iou_match",))

# ------------------------------------------------------------------------------------------------ sampling
register("SAMPLE.COUNTS", "num_pos = min(#pos, int(num_samples * positive_fraction)); "
         "num_neg = min(#neg, num_samples - num_pos)", "d2-spec §2.6", ("subsample_labels",))
register("SAMPLE.POOLS", "positives are labels not in {-1, bg_label}; negatives equal bg_label; each index is "
         "drawn at most once", "d2-spec §2.6", ("subsample_labels",))
register("SAMPLE.RPN", f"RPN samples {_F('rpn.batch_size_per_image')} anchors per image with at most a fraction "
         f"{_F('rpn.positive_fraction')} positive", "d2-spec §1.4", ("subsample_labels",))
register("SAMPLE.ROI", f"ROI heads sample {_F('roi_heads.batch_size_per_image')} proposals per image with at most "
         f"a fraction {_F('roi_heads.positive_fraction')} foreground", "d2-spec §1.5", ("subsample_labels",))
register("SAMPLE.ERRORS", "bad input (float or 2-D labels, negative num_samples, fraction outside [0, 1], a "
         "generator that is not a torch.Generator) raises TypeError/ValueError", "DESIGN.md conventions",
         ("subsample_labels",))
register("SAMPLE.GENERATOR", "sampling draws only from the given torch.Generator: same seed, same sample",
         "DESIGN.md conventions", ("subsample_labels",))

# ------------------------------------------------------------------------------------------------ nms
register("NMS.STRICT", "NMS suppresses a box when IoU > threshold (strictly greater; the IoU in the boxes' "
         "dtype is compared with the threshold as a real number, as torchvision's CPU kernel does)",
         "d2-spec §2.14", ("nms",))
register("NMS.ORDER", "kept indices are returned in descending score order", "d2-spec §2.14", ("nms",))
register("NMS.GREEDY", "NMS equals greedy suppression by higher-scored kept boxes", "d2-spec §2.14", ("nms",))
register("NMS.EMPTY", "NMS of no boxes returns an empty int64 tensor", "DESIGN.md conventions",
         ("nms", "batched_nms"))
register("NMS.ERRORS", "bad input (wrong shapes, NaN boxes or scores, x2 < x1, integer dtypes, a threshold "
         "outside [0, 1]) raises TypeError/ValueError naming the argument", "DESIGN.md conventions",
         ("nms", "batched_nms"))
register("NMS.BATCHED", "batched_nms runs NMS independently per group and merges by descending score",
         "d2-spec §2.14", ("batched_nms",))

# ------------------------------------------------------------------------------------------------ backbone (issue 3)
register("INPUT.PADDING", "images are padded bottom/right with pad_value to a multiple of "
         f"{_F('input.size_divisibility', note='the stride of res5')}; the unpadded sizes are kept",
         "d2-spec §1.1; structures/image_list.py", ("pad_images",))
_SK, _SS, _SP = _D2.resnet.stem_conv
_PK, _PS, _PP = _D2.resnet.stem_pool
register("RESNET.STEM", f"the stem is a {_SK}x{_SK}/{_SS} conv (padding {_SP}) 3->{_D2.resnet.stem_out_channels} "
         f"without bias, FrozenBN, ReLU and a {_PK}x{_PK}/{_PS} max-pool (padding {_PP}) ({_F('resnet.stem_conv')} "
         f"and {_F('resnet.stem_pool')} as (kernel, stride, padding), {_F('resnet.stem_out_channels')})",
         "d2-spec §2.1", ("ResNet",))
register("RESNET.STAGES", f"bottleneck stages of {_F('resnet.blocks_per_stage')} blocks, widths "
         f"{_F('resnet.stage_bottleneck_channels')}, outputs {_F('resnet.stage_out_channels')}, no conv bias, "
         "projection shortcut on each stage's first block", "d2-spec §2.1", ("ResNet",))
register("RESNET.FROZEN_BN", "FrozenBatchNorm2d: y = (x - mean) * w / sqrt(var + eps) + b, eps = "
         f"{_F('resnet.frozen_bn_eps')}, with buffers only; a fresh layer is the identity",
         "d2-spec §2.1; layers/batch_norm.py", ("ResNet",))
register("RESNET.STRIDE_IN_1X1", "the detectron2 profile puts a block's stride on its first 1x1 conv; the "
         "torchvision profile on the 3x3 conv", "d2-spec §1.2, §6 item 5", ("ResNet",))
register("RESNET.FREEZE_AT", f"{_F('resnet.freeze_at')}: the stem and "
         f"{', '.join(_D2.resnet.stage_names[:_D2.resnet.freeze_at - 1])} have requires_grad False", "d2-spec §1.2",
         ("ResNet",))
_RES_STRIDES = [_D2.resnet.stem_stride * _D2.resnet.stage_downsample ** i for i in range(len(_D2.resnet.stage_names))]
register("RESNET.OUTPUTS", f"outputs {_D2.resnet.stage_names[0]}..{_D2.resnet.stage_names[-1]} at strides "
         f"{', '.join(map(str, _RES_STRIDES))} (ResNetConfig.stem_stride x ResNetConfig.stage_downsample^i; "
         f"H/{_RES_STRIDES[0]} .. H/{_RES_STRIDES[-1]} for a {_RES_STRIDES[-1]}-divisible input)",
         "d2-spec §2.1", ("ResNet",))
register("RESNET.PARAMS", f"ResNet-50's convs have {parameter_count('resnet50_convs')} parameters", "d2-spec §3",
         ("ResNet",))
register("RESNET.TORCHVISION", "in the torchvision profile, with copied weights, the body equals torchvision's "
         "resnet50 (eval mode) layer1..layer4", "torchvision resnet50", ("ResNet",))
register("FPN.CONVS", f"lateral {_D2.fpn.lateral_conv[0]}x{_D2.fpn.lateral_conv[0]} and output "
         f"{_D2.fpn.output_conv[0]}x{_D2.fpn.output_conv[0]} convs ({_F('fpn.lateral_conv')}, "
         f"{_F('fpn.output_conv')} = (kernel, padding)), both with bias, {_F('fpn.out_channels')} channels",
         "d2-spec §2.2", ("FPN",))
register("FPN.TOP_DOWN", f"the top-down pass adds {_D2.fpn.upsample_mode} x{_D2.fpn.upsample} upsampling "
         f"({_F('fpn.upsample_mode')}, {_F('fpn.upsample')}) of the pre-output sums to each lateral",
         "d2-spec §2.2", ("FPN",))
_P6_KERNEL, _P6_STRIDE, _ = _D2.fpn.top_block_pool
register("FPN.P6", f"P6 = P5 subsampled with stride {_P6_STRIDE} (max-pool kernel {_P6_KERNEL}; "
         f"{_F('fpn.top_block_pool')} = (kernel, stride, padding)): ceil(H5/{_P6_STRIDE}) x ceil(W5/{_P6_STRIDE})",
         "d2-spec §1.2, §2.2", ("FPN",))
register("FPN.STRIDES", f"P2..P6 have {_F('fpn.out_channels')} channels at strides {_F('fpn.strides')}",
         "d2-spec §1.2", ("ResNet", "FPN"))
register("FPN.PARAMS", f"the FPN has {parameter_count('fpn')} parameters", "d2-spec §3", ("FPN",))
register("FPN.TORCHVISION", "with copied weights the FPN equals torchvision's FeaturePyramidNetwork with "
         "LastLevelMaxPool", "torchvision ops/feature_pyramid_network.py", ("FPN",))
register("FPN.ERRORS", "features with missing levels, wrong channel counts or sizes that do not halve level "
         "to level raise ValueError", "DESIGN.md conventions", ("FPN",))

# ------------------------------------------------------------------------------------------------ RPN (issue 3)
_A = _D2.anchors.anchors_per_location
register("RPN.HEAD", f"the RPN head is a 3x3 C->C conv (C = {_F('fpn.out_channels')}; {_F('rpn.head_conv_dims')}, "
         f"-1 = C) with ReLU, a 1x1 conv to A objectness logits and a 1x1 conv to 4A deltas (A = "
         f"AnchorConfig.anchors_per_location: {_A} logits, {4 * _A} deltas)", "seed RPN part 1", ("RPNHead",))
register("RPN.HEAD_PARAMS", f"the RPN head has {parameter_count('rpn_head')} parameters", "d2-spec §3",
         ("RPNHead",))
register("RPN.OUTPUT_ORDER", "head outputs are flattened in level, y, x, anchor order; delta channel a*4+j is "
         "coordinate j of anchor a", "d2-spec §2.3", ("RPNHead",))
register("RPN.MATCHING", f"anchors are labelled by the matcher at {_F('rpn.iou_thresholds')} with "
         f"{_F('rpn.iou_labels')} and low-quality matches; anchors crossing the border are kept",
         "d2-spec §1.4, §2.8", ("rpn_targets",))
register("RPN.SAMPLING", f"{_F('rpn.batch_size_per_image')} anchors per image are sampled, at most a fraction "
         f"{_F('rpn.positive_fraction')} positive; the rest are -1", "d2-spec §2.8", ("rpn_targets",))
register("RPN.TARGET_BOXES", "each anchor's target is its matched GT box; regression targets use weights "
         f"{_F('rpn.box_coder.weights')}", "d2-spec §2.8", ("rpn_targets", "rpn_losses"))
register("RPN.NO_GT", "an image without GT has every anchor negative before sampling", "d2-spec §2.8",
         ("rpn_targets",))
register("RPN.LOSS_NORMALIZER", f"both RPN losses are divided by {_F('rpn.batch_size_per_image')} x the number "
         "of images", "d2-spec §2.8", ("rpn_losses",))
register("RPN.LOSS_CLS", "objectness loss is BCE-with-logits over anchors labelled 0 or 1 only", "d2-spec §2.8",
         ("rpn_losses",))
register("RPN.LOSS_LOC", f"localization loss is smooth-L1 with beta {_F('rpn.smooth_l1_beta', note='beta 0 is L1')} "
         "over foreground anchors only", "d2-spec §2.8", ("rpn_losses",))
register("RPN.ERRORS", "feature maps whose count, channels or batch size do not match, and GT boxes that are "
         "not finite, raise ValueError", "DESIGN.md conventions", ("RPNHead", "rpn_targets"))
register("PROPOSAL.PRE_NMS_TOPK", f"the top {_F('rpn.pre_nms_topk_test')} anchors by logit at test time "
         f"({_F('rpn.pre_nms_topk_train')} in training) are taken per level", "d2-spec §2.9",
         ("select_proposals",))
register("PROPOSAL.NONFINITE", "non-finite boxes or logits are dropped at test time; in training they raise "
         "FloatingPointError", "d2-spec §2.9", ("select_proposals",))
register("PROPOSAL.CLIP_FILTER", "boxes are clipped to the unpadded image size and empty ones (side <= min "
         "size) removed before NMS", "d2-spec §2.9", ("select_proposals",))
register("PROPOSAL.NMS_PER_LEVEL", f"proposal NMS at {_F('rpn.nms_thresh')} runs independently per level",
         "d2-spec §2.9", ("select_proposals",))
register("PROPOSAL.ERRORS", "mismatched level lists, boxes without 4 coordinates, a batch size that differs "
         "between levels or from the number of image sizes, and no levels at all raise ValueError",
         "DESIGN.md conventions", ("select_proposals",))
register("PROPOSAL.POST_NMS_TOPK", f"at most {_F('rpn.post_nms_topk_test')} proposals per image are kept at test "
         f"time ({_F('rpn.post_nms_topk_train')} in training), sorted by logit, which is returned raw",
         "seed RPN part 4; d2-spec §2.9", ("select_proposals",))
register("PROPOSAL.TORCHVISION_RANKING", "with rank_by='sigmoid' (the torchvision profile) the per-level "
         "top-k still takes raw logits, but the score_thresh filter (>=), NMS and the kept order use p = "
         "sigmoid(logit) in the logit's dtype (float32: exactly 1.0 above a logit of ~16.6), and logits are "
         "returned raw. Tied p are ordered as torchvision's CPU batched_nms orders them: each level's NMS visits "
         "them in candidate order (level, top-k rank), so it keeps the same boxes as ranking by logit; an image "
         f"with at most TV_BATCHED_NMS_LOOP_ABOVE ({TV_BATCHED_NMS_LOOP_ABOVE}) candidates entering NMS lists the kept "
         "ones by p, ties in candidate order; with more, "
         "the kept candidates taken in candidate order are sorted by p with torch.sort(descending=True, "
         "stable=False) on CPU, whose tie order (libstdc++ std::sort, not stable) is the one torchvision gets; "
         "then the first post_nms_topk are kept (detspec computes this CPU order on every device). Equal to "
         "torchvision's on CPU for the same torch build and identical p; "
         "unsaturated p from different float32 sigmoid kernels (memory layout, thread count) may differ by 1 ulp "
         "and so tie differently; torchvision on CUDA sorts ties in another order, so there detspec agrees with "
         "it only as a set, and only when the post-NMS cut does not fall among ties",
         "tv:rpn.py filter_proposals; torchvision ops/boxes.py batched_nms; csrc/ops/cpu/nms_kernel.cpp",
         ("select_proposals",))

# ------------------------------------------------------------------------------------------------ ROI (issue 4)
_UNPOOLED = [f.upper() for f in _D2.fpn.out_features if f not in _D2.roi_heads.in_features]
register("ROI.LEVELS", f"ROIs are pooled from {_F('roi_heads.in_features')} only; {', '.join(_UNPOOLED)} "
         f"{'is' if len(_UNPOOLED) == 1 else 'are'} never pooled", "Base-RCNN-FPN.yaml ROI_HEADS",
         ("assign_levels",))
_R = _D2.roi_heads
register("ROI.LEVEL_FORMULA", f"level = floor({_R.canonical_level} + "
         f"log2(sqrt(area)/{value_text(_R.canonical_box_size)} + {value_text(_R.level_eps)})) clamped to "
         f"[{_R.min_level}, {_R.max_level}] (ROIHeadsConfig."
         "canonical_level, canonical_box_size, level_eps, min_level, max_level of the detectron2 profile): 111.99 -> "
         "P2, 112 -> P3, 224 -> P4, 448 -> P5, 1000 -> P5", "d2-spec §2.11, §3 level assignment", ("assign_levels",))
register("ROI.LEVEL_EPS_TORCHVISION", f"the torchvision profile adds its "
         f"{_F('roi_heads.level_eps', ('torchvision',))} outside the log2 (ROIHeadsConfig.level_eps_in_log "
         f"{_TV.roi_heads.level_eps_in_log})", "torchvision ops/poolers.py LevelMapper", ("assign_levels",))
register("ROI.ALIGN_KNOWN", "ROIAlign on the 5x5 ramp, box (1, 1, 3, 3), 4x4 output, gives detectron2's known "
         "values with aligned True and False", "d2-spec §3 ROIAlign [T]", ("roi_align",))
register("ROI.ALIGN_EMPTY", "an empty ROI pools exactly 0 (adaptive grid of 0 samples); an empty set of ROIs "
         f"gives [0, C, r, r] (r = {_F('box_head.pooler_resolution')})", "d2-spec §2.11 item 6", ("roi_align",))
register("ROI.ALIGN_OUT_OF_RANGE", "samples beyond one pixel outside the map contribute 0 but count in the "
         "average; samples inside are clamped to the border", "d2-spec §2.11 item 5", ("roi_align",))
register("ROI.ALIGN_SAMPLING", "sampling_ratio 0 uses ceil(roi size / output size) samples per bin; a positive "
         "value uses that many; results match torchvision.ops.roi_align", "d2-spec §2.11 item 3",
         ("roi_align",))
register("ROI.ALIGN_ERRORS", "rois that are not [R, 5], batch indices outside [0, N), non-finite rois and "
         "features that are not [N, C, H, W] raise ValueError", "DESIGN.md conventions", ("roi_align",))
register("ROI.POOLER_ORDER", "the multi-level pooler keeps the input row order of (batch index, box) rows "
         "from all images", "d2-spec §2.11", ("multilevel_roi_align",))
register("ROI.POOLER_LEVELS", "each ROI is pooled from the level assign_levels gives it, with spatial scale "
         "1/stride; results match torchvision MultiScaleRoIAlign in the torchvision profile", "d2-spec §2.11",
         ("multilevel_roi_align",))
register("ROI.SAMPLE_APPEND_GT", "in training the GT boxes are appended after the proposals", "d2-spec §2.10",
         ("sample_rois",))
register("ROI.SAMPLE_MATCH", f"proposals match GT at IoU {_F('roi_heads.iou_thresholds')} without low-quality "
         "matches; matched proposals take the GT class and box, the others the background class K", "d2-spec §2.10",
         ("sample_rois",))
_ROI_FG = int(_D2.roi_heads.batch_size_per_image * _D2.roi_heads.positive_fraction)
register("ROI.SAMPLE_COUNT", f"at most {_F('roi_heads.batch_size_per_image')} ROIs per image, at most a fraction "
         f"{_F('roi_heads.positive_fraction', note=f'{_ROI_FG} ROIs')} foreground, foreground first",
         "d2-spec §2.10", ("sample_rois",))
_C, _RES, _FC = _D2.fpn.out_channels, _D2.box_head.pooler_resolution, _D2.box_head.fc_dim
_FCS = [_C * _RES * _RES] + [_FC] * _D2.box_head.num_fc
register("ROI.BOX_HEAD", f"the box head flattens ({_C}, {_RES}, {_RES}) channel-major to {_FCS[0]}, then "
         + " and ".join(f"FC {i}->{o} + ReLU" for i, o in zip(_FCS, _FCS[1:]))
         + f" ({_F('box_head.num_fc')}, {_F('box_head.fc_dim')})", "d2-spec §2.12", ("BoxHead",))
register("ROI.PREDICTOR", "the predictor gives K+1 class logits (background last) and 4K class-specific deltas "
         "(row 4c + j)", "d2-spec §2.12", ("BoxPredictor",))
register("ROI.HEAD_PARAMS", f"box head + predictor have {parameter_count('box_head_and_predictor')} parameters for "
         f"{_D2.roi_heads.num_classes} classes", "d2-spec §3", ("BoxHead", "BoxPredictor"))
register("ROI.LOSS_CLS", "loss_cls is the mean softmax cross-entropy over all sampled ROIs, background "
         "included; 0 without ROIs", "d2-spec §2.12", ("roi_losses",))
register("ROI.LOSS_BOX", f"loss_box_reg is smooth-L1 with beta {_F('box_head.smooth_l1_beta', note='beta 0 is L1')} "
         f"on the GT class's delta slot (weights {_F('box_head.box_coder.weights')}) over foreground ROIs, divided "
         "by max(number sampled, 1)", "d2-spec §2.12", ("roi_losses",))
register("ROI.INFER_THRESH", "inference keeps (ROI, class) pairs with score > "
         f"{_F('inference.score_thresh', note='strict')}, never the background class", "d2-spec §2.13",
         ("fast_rcnn_inference",))
register("ROI.INFER_NMS", f"inference runs NMS at {_F('inference.nms_thresh')} per class, so boxes of different "
         "classes never suppress each other", "d2-spec §2.13", ("fast_rcnn_inference",))
register("ROI.INFER_TOPK", f"at most {_F('inference.detections_per_image')} detections per image, sorted by score "
         "descending", "d2-spec §2.13", ("fast_rcnn_inference",))
register("ROI.INFER_CLIP", "decoded boxes are clipped to the unpadded image size before NMS; non-finite rows "
         "are dropped", "d2-spec §2.13", ("fast_rcnn_inference",))
register("ROI.POSTPROCESS", "detections are rescaled by (out_w / in_w, out_h / in_h), clipped to the output "
         "size, and empty boxes dropped", "d2-spec §2.13 item 5", ("detector_postprocess",))


# ------------------------------------------------------------------------------------------- detector (issue 5)
register("RCNN.PARAMS", f"the assembled Faster R-CNN has {parameter_count('faster_rcnn_80_classes')} parameters "
         f"for {_D2.roi_heads.num_classes} classes", "d2-spec §3 parameter count", ("FasterRCNN",))
register("RCNN.STATE_DICT", f"the state_dict has detectron2's {parameter_count('faster_rcnn_state_dict_tensors')} "
         "tensors and key names", "d2-spec §5.1", ("FasterRCNN",))
register("RCNN.RESIZE", f"the detectron2 test resize scales the short side to {_F('input.min_size_test')}, caps "
         f"the long side at {_F('input.max_size_test')} and rounds half up (427x640 -> 800x1199, 500x1000 -> "
         "667x1333); the torchvision profile floors", "d2-spec §1.1, §3 resize examples", ("FasterRCNN",))
register("RCNN.NORMALIZE", "pixels are normalized (x - mean) / std in the profile's channel order, then padded "
         f"with {_F('input.pad_value')} to a multiple of {_F('input.size_divisibility')}", "d2-spec §1.1",
         ("FasterRCNN",))
register("RCNN.TRAIN_LOSSES", "training returns exactly loss_rpn_cls, loss_rpn_loc, loss_cls and loss_box_reg, "
         "all finite, with gradients reaching every trainable parameter", "d2-spec §2.12", ("FasterRCNN",))
register("RCNN.EVAL_OUTPUT", "eval returns per image boxes in original-image coordinates, scores and classes, "
         f"at most {_F('inference.detections_per_image')}, sorted by score", "d2-spec §2.13", ("FasterRCNN",))
register("RCNN.TORCHVISION_EQUIVALENCE", "with converted torchvision weights in the torchvision profile, the "
         "proposals and detections equal torchvision fasterrcnn_resnet50_fpn's as matched sets: one-to-one, each "
         "torchvision detection pairs with a detspec one of the same class, score within 1e-4 + 1e-4 relative and "
         "box within 1e-2 px + 1e-3 relative (each proposal with a box within the same), in any order among "
         "equal scores; also when the RPN's logits saturate (sigmoid exactly 1.0), given PROPOSAL."
         "TORCHVISION_RANKING", "issue 5, issue 11; torchvision models/detection", ("FasterRCNN",))


# ------------------------------------------------------------------------------------------- low precision (issue 16)
# Checked by `detspec check --dtype bf16|fp16` (detspec/conformance/test_precision.py): the run's report holds these
# clauses only, and an fp32 run's report all the others. Numbers: spec/tolerances.py (DTYPE_TOLERANCES,
# RATIO_RULE_FACTOR, RATIO_FLOORS, within_discrete_margin).
LOW_PRECISION_CLAUSES: set[str] = set()
_LP_SOURCE = "issue 16; spec/tolerances.py"


def _low(id: str, text: str, components: tuple[str, ...] = ()) -> None:
    register(id, text, _LP_SOURCE, components)
    LOW_PRECISION_CLAUSES.add(id)


_RF = f"{RATIO_RULE_FACTOR:g}"
_RH = _D2.roi_heads
_LEVEL_BOUNDARIES = [_RH.canonical_box_size * 2.0 ** (k - _RH.canonical_level)
                     for k in range(_RH.min_level + 1, _RH.max_level + 1)]
_NMS_TOL_BF16 = f"{discrete_tolerance(_D2.rpn.nms_thresh, torch.bfloat16):.4g}"
_low("PRECISION.RATIO_RULE", "with inputs rounded to the low dtype (bf16 or fp16) and modules under autocast (or "
     "their autocast_dtype), a continuous output's max |impl - ref64| is at most RATIO_RULE_FACTOR "
     f"({_RF}) x max |naive - ref64| + floor, where ref64 is detspec's reference run in float64 on the same rounded "
     "inputs, naive the reference run in the low dtype, and floor RATIO_FLOORS' multiple of eps(dtype) x max |ref64|")
_low("PRECISION.DISCRETE_MARGIN", "a discrete output (kept index, label, level, class, rank) may differ from the "
     "float64 reference's only where the reference's own margin (the gap to the threshold or to the next score) is "
     "within atol + rtol x |boundary| of DTYPE_TOLERANCES[dtype] (bf16 at "
     f"{_F('rpn.nms_thresh')}: {_NMS_TOL_BF16}); such a test is 'pass (within precision)', any other difference "
     "fails")
_low("PRECISION.IOU", "pairwise_iou of boxes rounded to the low dtype follows the ratio rule", ("pairwise_iou",))
_low("PRECISION.BOX_CODER", "encode_boxes and decode_boxes (with the RPN's and the box head's weights and the "
     "clamp) follow the ratio rule", ("encode_boxes", "decode_boxes"))
_low("PRECISION.NMS", "nms and batched_nms keep the float64 reference's boxes, in its order, except where the "
     "discrete-margin rule accepts a difference (an IoU within tol of the threshold, scores tied within tol)",
     ("nms", "batched_nms"))
_low("PRECISION.MATCH", f"the matcher at {_F('rpn.iou_thresholds')} gives the float64 reference's labels and indices "
     "except for a quality within tol of a threshold, of another GT's quality, or of a GT's best (low-quality "
     "matches)", ("match",))
_low("PRECISION.LEVELS", "assign_levels gives the float64 reference's levels except for boxes whose level value "
     "canonical_level + log2(sqrt(area) / canonical_box_size + eps) is within tol of the integer level it is floored "
     f"against (sqrt(area) near {'/'.join(value_text(b) for b in _LEVEL_BOUNDARIES)}, "
     "ROIHeadsConfig.canonical_box_size x 2^j)",
     ("assign_levels",))
_low("PRECISION.ROI_ALIGN", "roi_align and multilevel_roi_align (ROIs away from level boundaries) follow the ratio "
     "rule", ("roi_align", "multilevel_roi_align"))
_low("PRECISION.PROPOSALS", "select_proposals keeps the float64 reference's proposals in its order (per-level NMS "
     "at RPNConfig.nms_thresh), except where the discrete-margin rule accepts a difference", ("select_proposals",))
_low("PRECISION.INFERENCE", "fast_rcnn_inference keeps the float64 reference's detections (score threshold, "
     "per-class NMS, classes, order), except where the discrete-margin rule accepts a difference; kept boxes and "
     "scores are the inputs' within the low dtype's tolerance", ("fast_rcnn_inference",))
_low("PRECISION.BACKBONE", "ResNet + FPN outputs under autocast follow the ratio rule", ("ResNet", "FPN"))
_low("PRECISION.RPN_HEAD", "RPNHead logits and deltas under autocast follow the ratio rule", ("RPNHead",))
_low("PRECISION.MVIT", "PoolingAttention outputs and MViT logits (reduced MViT-B 16x4) under autocast_dtype or "
     "autocast follow the ratio rule", ("PoolingAttention", "MViT"))
_low("PRECISION.MVITDET", "detectron2's MViTv2-T backbone outputs (scale2..scale5, float32) under autocast_dtype or "
     "autocast follow the ratio rule", ("MViTDetBackbone",))
_low("PRECISION.DETECTOR", "the Faster R-CNN detector under autocast_dtype (or autocast) has at most "
     f"RATIO_RULE_FACTOR ({_RF}) x as many detections without a partner in the float64 reference's (same class, box "
     "IoU >= 0.9, one to one) as the reference detector under torch.autocast in the low dtype, plus one",
     ("FasterRCNN",))

# A model's own low-precision mode (autocast_dtype; layout/precision.py), checked in the same --dtype run: the
# detector's parameterised compute runs in the run's dtype, its geometry in float32, its outputs come back in float32.
_low("PRECISION.AUTOCAST", "With autocast_dtype set (bf16 or fp16), the detector's convolutions and linear layers "
     "(backbone, FPN, RPN head, box head and predictor) run in that dtype; normalisation statistics and softmax run in "
     "float32.", ("FasterRCNN",))
_low("PRECISION.GEOMETRY_FP32", "Under autocast_dtype, proposal decoding and selection (NMS, ranking), the ROI "
     "coordinates given to the pooler (FPN level assignment, ROIAlign's sampling coordinates and weights) and "
     "detection inference receive float32 inputs and run with autocast off (float64 stays float64).",
     ("FasterRCNN",))
_low("PRECISION.OUTPUT_FP32", "Under autocast_dtype the detector returns float32 boxes and scores and MViT float32 "
     "logits.", ("FasterRCNN", "MViT"))

# ------------------------------------------------------------------------------------------------ MViT (issue 6)
# The MViT clauses live in their own module; importing it registers them here.
try:
    import spec.clauses_mvit  # noqa: E402, F401
except ModuleNotFoundError as exc:  # not written yet in this checkout
    if exc.name != "spec.clauses_mvit":
        raise

# ------------------------------------------------------------------------------------------------ MViTv2 detection
# detectron2's MViTv2 backbones (issue 14): importing the module registers the MVITDET clauses.
import spec.clauses_mvitdet  # noqa: E402, F401
