"""The clause registry: every statement of the spec under a stable ID.

Conformance tests carry ``@pytest.mark.clause("ID", ...)``; the report is the table of clauses x implementations.
A clause that no test checks yet is reported as "untested", never silently dropped.

IDs are ``AREA.NAME``. ``source`` cites the seed (``seed RPN part N``), the detectron2 note
(``d2-spec §x``, i.e. spec/text/detectron2.md) or a detectron2 file. ``components`` names the
contract functions a port needs for the clause (see ``spec.contract``).
"""

from __future__ import annotations

from dataclasses import dataclass


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
register("BOX.DECODE_CLAMP", "decode clamps dw and dh from above only, at log(1000/16); dx, dy are not clamped",
         "d2-spec §2.7", ("decode_boxes",))
register("BOX.DECODE_INTERLEAVED", "decode of [N, 4K] deltas is class-interleaved: columns 4c..4c+3 are class c",
         "d2-spec §2.7", ("decode_boxes",))
register("BOX.EMPTY", "empty box sets are valid: IoU of [0,4] x [M,4] is [0,M]; area, clip, nonempty, encode "
         "and decode of no boxes give empty results", "DESIGN.md conventions",
         ("pairwise_iou", "box_area", "clip_boxes", "nonempty", "encode_boxes", "decode_boxes"))
register("BOX.ERRORS", "bad input (not a tensor, integer dtype, wrong shape, NaN/inf, x2 < x1, zero-size "
         "encode source, mismatched rows) raises TypeError/ValueError naming the argument",
         "DESIGN.md conventions", ("pairwise_iou", "clip_boxes", "encode_boxes", "decode_boxes"))
register("BOX.WEIGHTS", "RPN box weights are (1, 1, 1, 1); the box head's are (10, 10, 5, 5)", "d2-spec §1.4, §1.5",
         ("encode_boxes",))

# ------------------------------------------------------------------------------------------------ anchors
register("ANCHOR.CELL_COUNT", "15 cell anchors = 3 aspect ratios x 5 levels (P2-P6)", "seed RPN part 2",
         ("cell_anchors",))
register("ANCHOR.CELL_SHAPE", "a cell anchor of size s and ratio a = h/w has w = sqrt(s^2/a), h = a*w, "
         "centred at 0; area is exactly s^2", "d2-spec §2.3", ("cell_anchors",))
register("ANCHOR.CELL_ORDER", "cell anchors are ordered size-major, then ratio (0.5, 1, 2)", "d2-spec §2.3",
         ("cell_anchors",))
register("ANCHOR.CELL_ROUNDING", "the detectron2 profile does not round cell anchors; the torchvision profile "
         "rounds them to integers (halves to even, as torch.round)", "d2-spec §2.3; torchvision anchor_utils",
         ("cell_anchors",))
register("ANCHOR.PER_LEVEL_COUNT", "each level has 3 * H * W anchors (one per ratio at every grid point)",
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
register("MATCH.THRESHOLDS", "RPN matching: IoU >= 0.7 -> 1 (foreground), < 0.3 -> 0 (background), "
         "otherwise -1 (ignored)", "seed RPN part 3; defaults.py RPN.IOU_THRESHOLDS", ("match",))
register("MATCH.HALF_OPEN", "label intervals are half-open [low, high): a value equal to a threshold takes the "
         "upper label; the comparison is in the quality tensor's dtype (float32(0.7) >= 0.7 in float32)",
         "d2-spec §2.5; matcher.py", ("match",))
register("MATCH.CONFIGURABLE", "thresholds and labels are parameters (ROI heads: 0.5 with labels 0/1)",
         "d2-spec §1.5", ("match",))
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
register("SAMPLE.RPN", "RPN samples 256 anchors per image with at most half positive", "d2-spec §1.4",
         ("subsample_labels",))
register("SAMPLE.ROI", "ROI heads sample 512 proposals per image with at most 25% foreground", "d2-spec §1.5",
         ("subsample_labels",))
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
register("INPUT.PADDING", "images are padded bottom/right with pad_value to a multiple of 32 (the stride of "
         "res5); the unpadded sizes are kept", "d2-spec §1.1; structures/image_list.py", ("pad_images",))
register("RESNET.STEM", "the stem is a 7x7/2 conv 3->64 without bias, FrozenBN, ReLU and a 3x3/2 max-pool "
         "(padding 1)", "d2-spec §2.1", ("ResNet",))
register("RESNET.STAGES", "bottleneck stages of [3, 4, 6, 3] blocks, widths 64/128/256/512, outputs "
         "256/512/1024/2048, no conv bias, projection shortcut on each stage's first block", "d2-spec §2.1",
         ("ResNet",))
register("RESNET.FROZEN_BN", "FrozenBatchNorm2d: y = (x - mean) * w / sqrt(var + 1e-5) + b with buffers only; "
         "a fresh layer is the identity", "d2-spec §2.1; layers/batch_norm.py", ("ResNet",))
register("RESNET.STRIDE_IN_1X1", "the detectron2 profile puts a block's stride on its first 1x1 conv; the "
         "torchvision profile on the 3x3 conv", "d2-spec §1.2, §6 item 5", ("ResNet",))
register("RESNET.FREEZE_AT", "freeze_at = 2: the stem and res2 have requires_grad False", "d2-spec §1.2",
         ("ResNet",))
register("RESNET.OUTPUTS", "outputs res2..res5 at strides 4, 8, 16, 32 (H/4 .. H/32 for a 32-divisible input)",
         "d2-spec §2.1", ("ResNet",))
register("RESNET.PARAMS", "ResNet-50's convs have 23,454,912 parameters", "d2-spec §3", ("ResNet",))
register("RESNET.TORCHVISION", "in the torchvision profile, with copied weights, the body equals torchvision's "
         "resnet50 (eval mode) layer1..layer4", "torchvision resnet50", ("ResNet",))
register("FPN.CONVS", "lateral 1x1 and output 3x3 convs, both with bias, 256 channels", "d2-spec §2.2",
         ("FPN",))
register("FPN.TOP_DOWN", "the top-down pass adds nearest x2 upsampling of the pre-output sums to each lateral",
         "d2-spec §2.2", ("FPN",))
register("FPN.P6", "P6 = P5 subsampled with stride 2 (max-pool kernel 1): ceil(H5/2) x ceil(W5/2)",
         "d2-spec §1.2, §2.2", ("FPN",))
register("FPN.STRIDES", "P2..P6 have 256 channels at strides 4, 8, 16, 32, 64", "d2-spec §1.2",
         ("ResNet", "FPN"))
register("FPN.PARAMS", "the FPN has 3,344,384 parameters", "d2-spec §3", ("FPN",))
register("FPN.TORCHVISION", "with copied weights the FPN equals torchvision's FeaturePyramidNetwork with "
         "LastLevelMaxPool", "torchvision ops/feature_pyramid_network.py", ("FPN",))
register("FPN.ERRORS", "features with missing levels, wrong channel counts or sizes that do not halve level "
         "to level raise ValueError", "DESIGN.md conventions", ("FPN",))

# ------------------------------------------------------------------------------------------------ RPN (issue 3)
register("RPN.HEAD", "the RPN head is a 3x3 256->256 conv with ReLU, a 1x1 conv to 3 objectness logits and a "
         "1x1 conv to 12 deltas", "seed RPN part 1", ("RPNHead",))
register("RPN.HEAD_PARAMS", "the RPN head has 593,935 parameters", "d2-spec §3", ("RPNHead",))
register("RPN.OUTPUT_ORDER", "head outputs are flattened in level, y, x, anchor order; delta channel a*4+j is "
         "coordinate j of anchor a", "d2-spec §2.3", ("RPNHead",))
register("RPN.MATCHING", "anchors are labelled by the matcher at 0.3/0.7 with labels 0/-1/1 and low-quality "
         "matches; anchors crossing the border are kept", "d2-spec §1.4, §2.8", ("rpn_targets",))
register("RPN.SAMPLING", "256 anchors per image are sampled, at most half positive; the rest are -1",
         "d2-spec §2.8", ("rpn_targets",))
register("RPN.TARGET_BOXES", "each anchor's target is its matched GT box; regression targets use weights "
         "(1, 1, 1, 1)", "d2-spec §2.8", ("rpn_targets", "rpn_losses"))
register("RPN.NO_GT", "an image without GT has every anchor negative before sampling", "d2-spec §2.8",
         ("rpn_targets",))
register("RPN.LOSS_NORMALIZER", "both RPN losses are divided by 256 x the number of images",
         "d2-spec §2.8", ("rpn_losses",))
register("RPN.LOSS_CLS", "objectness loss is BCE-with-logits over anchors labelled 0 or 1 only", "d2-spec §2.8",
         ("rpn_losses",))
register("RPN.LOSS_LOC", "localization loss is L1 (smooth-L1, beta 0) over foreground anchors only",
         "d2-spec §2.8", ("rpn_losses",))
register("RPN.ERRORS", "feature maps whose count, channels or batch size do not match, and GT boxes that are "
         "not finite, raise ValueError", "DESIGN.md conventions", ("RPNHead", "rpn_targets"))
register("PROPOSAL.PRE_NMS_TOPK", "the top 1000 (test) / 2000 (train) anchors by logit are taken per level",
         "d2-spec §2.9", ("select_proposals",))
register("PROPOSAL.NONFINITE", "non-finite boxes or logits are dropped at test time; in training they raise "
         "FloatingPointError", "d2-spec §2.9", ("select_proposals",))
register("PROPOSAL.CLIP_FILTER", "boxes are clipped to the unpadded image size and empty ones (side <= min "
         "size) removed before NMS", "d2-spec §2.9", ("select_proposals",))
register("PROPOSAL.NMS_PER_LEVEL", "proposal NMS at 0.7 runs independently per level", "d2-spec §2.9",
         ("select_proposals",))
register("PROPOSAL.ERRORS", "mismatched level lists, boxes without 4 coordinates, a batch size that differs "
         "between levels or from the number of image sizes, and no levels at all raise ValueError",
         "DESIGN.md conventions", ("select_proposals",))
register("PROPOSAL.POST_NMS_TOPK", "at most 1000 proposals per image are kept, sorted by logit, which is "
         "returned raw", "seed RPN part 4; d2-spec §2.9", ("select_proposals",))
register("PROPOSAL.TORCHVISION_RANKING", "with rank_by='sigmoid' (the torchvision profile) the per-level "
         "top-k still takes raw logits, but the score_thresh filter (>=), NMS and the kept order use p = "
         "sigmoid(logit) in the logit's dtype (float32: exactly 1.0 above a logit of ~16.6), and logits are "
         "returned raw. Tied p are ordered as torchvision's CPU batched_nms orders them: each level's NMS visits "
         "them in candidate order (level, top-k rank), so it keeps the same boxes as ranking by logit; an image "
         "with at most 1000 candidates entering NMS lists the kept ones by p, ties in candidate order; with more, "
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
register("ROI.LEVELS", "ROIs are pooled from P2-P5 only; P6 is never pooled", "Base-RCNN-FPN.yaml ROI_HEADS",
         ("assign_levels",))
register("ROI.LEVEL_FORMULA", "level = floor(4 + log2(sqrt(area)/224 + 1e-8)) clamped to [2, 5]: 111.99 -> P2, "
         "112 -> P3, 224 -> P4, 448 -> P5, 1000 -> P5", "d2-spec §2.11, §3 level assignment", ("assign_levels",))
register("ROI.LEVEL_EPS_TORCHVISION", "the torchvision profile adds its 1e-6 outside the log2",
         "torchvision ops/poolers.py LevelMapper", ("assign_levels",))
register("ROI.ALIGN_KNOWN", "ROIAlign on the 5x5 ramp, box (1, 1, 3, 3), 4x4 output, gives detectron2's known "
         "values with aligned True and False", "d2-spec §3 ROIAlign [T]", ("roi_align",))
register("ROI.ALIGN_EMPTY", "an empty ROI pools exactly 0 (adaptive grid of 0 samples); an empty set of ROIs "
         "gives [0, C, 7, 7]", "d2-spec §2.11 item 6", ("roi_align",))
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
register("ROI.SAMPLE_MATCH", "proposals match GT at IoU 0.5 without low-quality matches; matched proposals "
         "take the GT class and box, the others the background class K", "d2-spec §2.10", ("sample_rois",))
register("ROI.SAMPLE_COUNT", "at most 512 ROIs per image, at most 25% (128) foreground, foreground first",
         "d2-spec §2.10", ("sample_rois",))
register("ROI.BOX_HEAD", "the box head flattens (256, 7, 7) channel-major to 12544, then FC 12544->1024 + ReLU "
         "and FC 1024->1024 + ReLU", "d2-spec §2.12", ("BoxHead",))
register("ROI.PREDICTOR", "the predictor gives K+1 class logits (background last) and 4K class-specific deltas "
         "(row 4c + j)", "d2-spec §2.12", ("BoxPredictor",))
register("ROI.HEAD_PARAMS", "box head + predictor have 14,306,705 parameters for 80 classes", "d2-spec §3",
         ("BoxHead", "BoxPredictor"))
register("ROI.LOSS_CLS", "loss_cls is the mean softmax cross-entropy over all sampled ROIs, background "
         "included; 0 without ROIs", "d2-spec §2.12", ("roi_losses",))
register("ROI.LOSS_BOX", "loss_box_reg is L1 on the GT class's delta slot (weights 10, 10, 5, 5) over "
         "foreground ROIs, divided by max(number sampled, 1)", "d2-spec §2.12", ("roi_losses",))
register("ROI.INFER_THRESH", "inference keeps (ROI, class) pairs with score > 0.05 (strict), never the "
         "background class", "d2-spec §2.13", ("fast_rcnn_inference",))
register("ROI.INFER_NMS", "inference runs NMS at 0.5 per class, so boxes of different classes never suppress "
         "each other", "d2-spec §2.13", ("fast_rcnn_inference",))
register("ROI.INFER_TOPK", "at most 100 detections per image, sorted by score descending",
         "d2-spec §2.13", ("fast_rcnn_inference",))
register("ROI.INFER_CLIP", "decoded boxes are clipped to the unpadded image size before NMS; non-finite rows "
         "are dropped", "d2-spec §2.13", ("fast_rcnn_inference",))
register("ROI.POSTPROCESS", "detections are rescaled by (out_w / in_w, out_h / in_h), clipped to the output "
         "size, and empty boxes dropped", "d2-spec §2.13 item 5", ("detector_postprocess",))


# ------------------------------------------------------------------------------------------- detector (issue 5)
register("RCNN.PARAMS", "the assembled Faster R-CNN has 41,699,936 parameters for 80 classes",
         "d2-spec §3 parameter count", ("FasterRCNN",))
register("RCNN.STATE_DICT", "the state_dict has detectron2's 295 tensors and key names", "d2-spec §5.1",
         ("FasterRCNN",))
register("RCNN.RESIZE", "the detectron2 test resize scales the short side to 800, caps the long side at 1333 "
         "and rounds half up (427x640 -> 800x1199, 500x1000 -> 667x1333); the torchvision profile floors",
         "d2-spec §1.1, §3 resize examples", ("FasterRCNN",))
register("RCNN.NORMALIZE", "pixels are normalized (x - mean) / std in the profile's channel order, then padded "
         "with 0 to a multiple of 32", "d2-spec §1.1", ("FasterRCNN",))
register("RCNN.TRAIN_LOSSES", "training returns exactly loss_rpn_cls, loss_rpn_loc, loss_cls and loss_box_reg, "
         "all finite, with gradients reaching every trainable parameter", "d2-spec §2.12", ("FasterRCNN",))
register("RCNN.EVAL_OUTPUT", "eval returns per image boxes in original-image coordinates, scores and classes, "
         "at most 100, sorted by score", "d2-spec §2.13", ("FasterRCNN",))
register("RCNN.TORCHVISION_EQUIVALENCE", "with converted torchvision weights in the torchvision profile, the "
         "proposals and detections equal torchvision fasterrcnn_resnet50_fpn's as matched sets: one-to-one, each "
         "torchvision detection pairs with a detspec one of the same class, score within 1e-4 + 1e-4 relative and "
         "box within 1e-2 px + 1e-3 relative (each proposal with a box within the same), in any order among "
         "equal scores; also when the RPN's logits saturate (sigmoid exactly 1.0), given PROPOSAL."
         "TORCHVISION_RANKING", "issue 5, issue 11; torchvision models/detection", ("FasterRCNN",))


# ------------------------------------------------------------------------------------------------ MViT (issue 6)
# The MViT clauses live in their own module; importing it registers them here.
try:
    import spec.clauses_mvit  # noqa: E402, F401
except ModuleNotFoundError as exc:  # not written yet in this checkout
    if exc.name != "spec.clauses_mvit":
        raise
