"""Base-RCNN-FPN numbers as frozen dataclasses: the single source of every spec number.

Every field carries its source in ``field(metadata={"source": ...})``; ``sources(cfg)`` lists them.
Sources use these short forms:

- ``defaults.py``            detectron2/config/defaults.py (yacs defaults)
- ``Base-RCNN-FPN.yaml``     configs/Base-RCNN-FPN.yaml (overrides the defaults)
- ``<file>.py``              a detectron2 source file (modeling/..., layers/..., structures/...)
- ``seed RPN part N``       spec/text/seed.md (the notes the project started from)
- ``tv:<file>``              torchvision's models/detection/<file> (the torchvision profile only)

The profiles are config *instances*, not code forks:

- ``BASE_RCNN_FPN`` (alias ``DETECTRON2``): detectron2's faster_rcnn_R_50_FPN_1x, the spec.
- ``TORCHVISION``: torchvision's ``fasterrcnn_resnet50_fpn``, used to cross-check end to end.
- ``DETECTRON2_MVITV2_{T,S,B}``: detectron2's projects/MViTv2 detectors' box branch: the same FPN and heads over
  an MViTv2 body (``mvit``, from ``spec.mvit_det``), RGB input with ImageNet statistics.

Code never hard-codes these numbers: functions take keyword arguments whose defaults are read from here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any

from spec.fields import cited
from spec.mvit_det import MVITV2_B_DET, MVITV2_S_DET, MVITV2_T_DET, MViTDetConfig


# ---------------------------------------------------------------------------------------------- input
@dataclass(frozen=True)
class InputConfig:
    format: str = cited("BGR", "defaults.py INPUT.FORMAT")
    pixel_mean: tuple[float, float, float] = cited((103.530, 116.280, 123.675), "defaults.py MODEL.PIXEL_MEAN")
    pixel_std: tuple[float, float, float] = cited((1.0, 1.0, 1.0), "defaults.py MODEL.PIXEL_STD")
    pixel_scale: float = cited(255.0, "defaults.py: pixel values on the 0-255 scale")
    size_divisibility: int = cited(32, "backbone/fpn.py: stride of res5")
    pad_value: float = cited(0.0, "structures/image_list.py: pad after normalization")
    min_size_train: tuple[int, ...] = cited((640, 672, 704, 736, 768, 800), "Base-RCNN-FPN.yaml INPUT.MIN_SIZE_TRAIN")
    max_size_train: int = cited(1333, "defaults.py INPUT.MAX_SIZE_TRAIN")
    min_size_test: int = cited(800, "defaults.py INPUT.MIN_SIZE_TEST")
    max_size_test: int = cited(1333, "defaults.py INPUT.MAX_SIZE_TEST")
    resize_rounding: str = cited("half_up", "data/transforms/transform.py: int(x * scale + 0.5)")
    resize_interpolation: str = cited(
        "bilinear_antialias", "data/transforms/transform.py ResizeTransform: PIL BILINEAR (antialiased when "
        "shrinking) on uint8 images; detspec uses torch's antialiased bilinear, which follows PIL")
    normalize_before_resize: bool = cited(False, "detectron2 resizes in the data mapper, normalizes in the model")
    min_gt_box_side: float = cited(1e-5, "data/detection_utils.py: GT boxes with side <= 1e-5 are removed")


# ---------------------------------------------------------------------------------------------- backbone
@dataclass(frozen=True)
class ResNetConfig:
    depth: int = cited(50, "faster_rcnn_R_50_FPN_1x.yaml MODEL.RESNETS.DEPTH")
    blocks_per_stage: tuple[int, int, int, int] = cited((3, 4, 6, 3), "backbone/resnet.py depth 50")
    norm: str = cited("FrozenBN", "defaults.py RESNETS.NORM")
    frozen_bn_eps: float = cited(1e-5, "layers/batch_norm.py FrozenBatchNorm2d eps")
    stride_in_1x1: bool = cited(True, "defaults.py RESNETS.STRIDE_IN_1X1 (MSRA)")
    num_groups: int = cited(1, "defaults.py RESNETS.NUM_GROUPS")
    width_per_group: int = cited(64, "defaults.py RESNETS.WIDTH_PER_GROUP")
    stem_out_channels: int = cited(64, "defaults.py RESNETS.STEM_OUT_CHANNELS")
    res2_out_channels: int = cited(256, "defaults.py RESNETS.RES2_OUT_CHANNELS")
    res5_dilation: int = cited(1, "defaults.py RESNETS.RES5_DILATION")
    freeze_at: int = cited(2, "defaults.py BACKBONE.FREEZE_AT")
    stem_conv: tuple[int, int, int] = cited((7, 2, 3), "backbone/resnet.py BasicStem: 7x7 conv, stride 2, padding 3")
    stem_pool: tuple[int, int, int] = cited((3, 2, 1), "backbone/resnet.py BasicStem: max-pool 3, stride 2, padding 1")
    stage_downsample: int = cited(2, "backbone/resnet.py: the first block of res3..res5 has stride 2")
    out_features: tuple[str, ...] = cited(("res2", "res3", "res4", "res5"), "Base-RCNN-FPN.yaml RESNETS.OUT_FEATURES")

    @property
    def stem_stride(self) -> int:
        """Output stride of the stem: conv stride x max-pool stride (2 x 2 = 4).  # RESNET.STEM"""
        return self.stem_conv[1] * self.stem_pool[1]

    @property
    def stage_names(self) -> tuple[str, ...]:
        """res2, res3, ...: detectron2 names stage i res{i + 2} (FREEZE_AT counts the stem as 1, res2 as 2)."""
        return tuple(f"res{i + 2}" for i in range(len(self.blocks_per_stage)))

    @property
    def stage_out_channels(self) -> dict[str, int]:
        """Stage name -> output channels res2_out_channels * 2^i: res2 256, res3 512, res4 1024, res5 2048."""
        return {name: self.res2_out_channels * 2**i for i, name in enumerate(self.stage_names)}

    @property
    def stage_bottleneck_channels(self) -> dict[str, int]:
        """Stage name -> bottleneck width num_groups * width_per_group * 2^i: 64, 128, 256, 512."""
        return {name: self.num_groups * self.width_per_group * 2**i for i, name in enumerate(self.stage_names)}


@dataclass(frozen=True)
class FPNConfig:
    in_features: tuple[str, ...] = cited(("res2", "res3", "res4", "res5"), "Base-RCNN-FPN.yaml FPN.IN_FEATURES")
    out_channels: int = cited(256, "defaults.py FPN.OUT_CHANNELS")
    norm: str = cited("", "defaults.py FPN.NORM (no norm: convs have a bias)")
    fuse_type: str = cited("sum", "defaults.py FPN.FUSE_TYPE")
    upsample: int = cited(2, "backbone/fpn.py: nearest x2 between neighbouring levels")
    upsample_mode: str = cited("nearest", "backbone/fpn.py: F.interpolate(scale_factor=2.0, mode='nearest')")
    lateral_conv: tuple[int, int] = cited((1, 0), "backbone/fpn.py: lateral convs Conv2d(kernel_size=1), no padding")
    output_conv: tuple[int, int] = cited((3, 1), "backbone/fpn.py: output convs Conv2d(kernel_size=3, padding=1)")
    top_block: str = cited("LastLevelMaxPool", "backbone/fpn.py: P6 = P5 subsampled, kernel 1 stride 2")
    top_block_pool: tuple[int, int, int] = cited(
        (1, 2, 0), "backbone/fpn.py LastLevelMaxPool: F.max_pool2d(kernel_size=1, stride=2, padding=0)")
    strides: tuple[int, ...] = cited((4, 8, 16, 32, 64), "backbone/fpn.py: p2..p6")
    out_features: tuple[str, ...] = cited(("p2", "p3", "p4", "p5", "p6"), "backbone/fpn.py")

    @property
    def input_divisibility(self) -> int:
        """The coarsest input level's stride (32): input sizes divisible by it halve exactly level to level."""
        return self.strides[len(self.in_features) - 1]


# ---------------------------------------------------------------------------------------------- anchors
@dataclass(frozen=True)
class AnchorConfig:
    sizes: tuple[tuple[float, ...], ...] = cited(
        ((32.0,), (64.0,), (128.0,), (256.0,), (512.0,)), "Base-RCNN-FPN.yaml ANCHOR_GENERATOR.SIZES; seed RPN part 2"
    )
    aspect_ratios: tuple[tuple[float, ...], ...] = cited(
        ((0.5, 1.0, 2.0),) * 5, "Base-RCNN-FPN.yaml ANCHOR_GENERATOR.ASPECT_RATIOS (h/w), broadcast to 5 levels"
    )
    strides: tuple[int, ...] = cited((4, 8, 16, 32, 64), "backbone/fpn.py: the RPN's input strides p2..p6")
    offset: float = cited(0.0, "defaults.py ANCHOR_GENERATOR.OFFSET (the class default 0.5 is overridden)")
    round_cell_anchors: bool = cited(False, "modeling/anchor_generator.py: no rounding")

    @property
    def anchors_per_location(self) -> int:
        """A = sizes x ratios per level (3 here). Same for every level, as the shared RPN head needs."""
        counts = {len(s) * len(r) for s, r in zip(self.sizes, self.aspect_ratios)}
        if len(counts) != 1:
            raise ValueError(f"levels have different anchor counts {sorted(counts)}")
        return counts.pop()

    @property
    def num_cell_anchors(self) -> int:
        """Total cell anchors over all levels: 3 ratios x 5 levels = 15 (seed RPN part 2)."""
        return sum(len(s) * len(r) for s, r in zip(self.sizes, self.aspect_ratios))


# ---------------------------------------------------------------------------------------------- box coding
SCALE_CLAMP = math.log(1000.0 / 16)  # box_regression.py _DEFAULT_SCALE_CLAMP = log(62.5) = 4.135166556742356


@dataclass(frozen=True)
class BoxCoderConfig:
    weights: tuple[float, float, float, float] = field(
        metadata={"source": "BBOX_REG_WEIGHTS of the owning head (rpn.box_coder, box_head.box_coder)"})
    scale_clamp: float = cited(SCALE_CLAMP, "modeling/box_regression.py: log(1000/16), dw/dh from above only")


# ---------------------------------------------------------------------------------------------- RPN
# torchvision ops/boxes.py batched_nms on CPU: above 4000 box coordinates (more than 1000 boxes) it runs NMS per
# group and orders the kept boxes with torch.sort(descending=True), which is NOT stable (libstdc++ std::sort);
# up to 1000 boxes it runs one NMS (coordinate-offset trick), whose CPU kernel keeps tied scores in index order.
# The torchvision profile's proposal ranking (rank_by="sigmoid") reproduces both branches.
TV_BATCHED_NMS_LOOP_ABOVE = 1000


@dataclass(frozen=True)
class RPNConfig:
    in_features: tuple[str, ...] = cited(("p2", "p3", "p4", "p5", "p6"), "Base-RCNN-FPN.yaml RPN.IN_FEATURES")
    head_conv_dims: tuple[int, ...] = cited((256,), "defaults.py RPN.CONV_DIMS [-1] = in channels; seed RPN part 1")
    iou_thresholds: tuple[float, float] = cited((0.3, 0.7), "defaults.py RPN.IOU_THRESHOLDS; seed RPN part 3")
    iou_labels: tuple[int, int, int] = cited((0, -1, 1), "defaults.py RPN.IOU_LABELS; seed RPN part 3")
    allow_low_quality_matches: bool = cited(True, "proposal_generator/rpn.py from_config")
    boundary_thresh: int = cited(-1, "defaults.py RPN.BOUNDARY_THRESH (border anchors kept)")
    batch_size_per_image: int = cited(256, "defaults.py RPN.BATCH_SIZE_PER_IMAGE")
    positive_fraction: float = cited(0.5, "defaults.py RPN.POSITIVE_FRACTION")
    bg_label: int = cited(0, "proposal_generator/rpn.py: subsample with bg_label 0")
    box_coder: BoxCoderConfig = cited(
        BoxCoderConfig(weights=(1.0, 1.0, 1.0, 1.0)), "defaults.py RPN.BBOX_REG_WEIGHTS"
    )
    smooth_l1_beta: float = cited(0.0, "defaults.py RPN.SMOOTH_L1_BETA (0 = pure L1)")
    loss_weight: float = cited(1.0, "defaults.py RPN.LOSS_WEIGHT")
    bbox_reg_loss_weight: float = cited(1.0, "defaults.py RPN.BBOX_REG_LOSS_WEIGHT")
    pre_nms_topk_train: int = cited(2000, "Base-RCNN-FPN.yaml RPN.PRE_NMS_TOPK_TRAIN (per level, per image)")
    pre_nms_topk_test: int = cited(1000, "Base-RCNN-FPN.yaml RPN.PRE_NMS_TOPK_TEST (per level, per image)")
    post_nms_topk_train: int = cited(1000, "Base-RCNN-FPN.yaml RPN.POST_NMS_TOPK_TRAIN (per image)")
    post_nms_topk_test: int = cited(1000, "Base-RCNN-FPN.yaml RPN.POST_NMS_TOPK_TEST (per image)")
    nms_thresh: float = cited(0.7, "defaults.py RPN.NMS_THRESH")
    min_box_size: float = cited(0.0, "defaults.py PROPOSAL_GENERATOR.MIN_SIZE (keep w > 0 and h > 0)")
    score_thresh: float | None = cited(None, "detectron2 has no proposal score threshold")
    # "logit": NMS and the kept order use the raw logit. "sigmoid": they use sigmoid(logit) in the logit's dtype,
    # whose float32 values tie at exactly 1.0 above a logit of ~16.6; ties are ordered as torchvision orders
    # them (clause PROPOSAL.TORCHVISION_RANKING; TV_BATCHED_NMS_LOOP_ABOVE).
    rank_by: str = cited("logit", "proposal_utils.py find_top_rpn_proposals: batched_nms on the raw logits")


# ---------------------------------------------------------------------------------------------- ROI heads
@dataclass(frozen=True)
class ROIHeadsConfig:
    in_features: tuple[str, ...] = cited(("p2", "p3", "p4", "p5"), "Base-RCNN-FPN.yaml ROI_HEADS.IN_FEATURES (no p6)")
    num_classes: int = cited(80, "defaults.py ROI_HEADS.NUM_CLASSES (foreground only)")
    # detspec's own layout always puts background last. A profile whose source framework puts it first
    # (torchvision) is converted on load: its row 0 moves to the end, so detspec class c = its label c + 1.
    background_label: str = cited("last", "modeling/roi_heads/fast_rcnn.py: background = K = num_classes")
    source_background_label: str = cited("last", "modeling/roi_heads/fast_rcnn.py: background = K = num_classes")
    iou_thresholds: tuple[float, ...] = cited((0.5,), "defaults.py ROI_HEADS.IOU_THRESHOLDS")
    iou_labels: tuple[int, ...] = cited((0, 1), "defaults.py ROI_HEADS.IOU_LABELS")
    allow_low_quality_matches: bool = cited(False, "roi_heads/roi_heads.py")
    batch_size_per_image: int = cited(512, "defaults.py ROI_HEADS.BATCH_SIZE_PER_IMAGE")
    positive_fraction: float = cited(0.25, "defaults.py ROI_HEADS.POSITIVE_FRACTION")
    proposal_append_gt: bool = cited(True, "defaults.py ROI_HEADS.PROPOSAL_APPEND_GT")
    canonical_box_size: float = cited(224.0, "modeling/poolers.py canonical_box_size")
    canonical_level: int = cited(4, "modeling/poolers.py canonical_level")
    level_eps: float = cited(1e-8, "modeling/poolers.py assign_boxes_to_levels: log2(sqrt(area)/224 + 1e-8)")
    level_eps_in_log: bool = cited(True, "modeling/poolers.py: the epsilon is added inside the log2")
    min_level: int = cited(2, "p2 = first ROI_HEADS.IN_FEATURES")
    max_level: int = cited(5, "p5 = last ROI_HEADS.IN_FEATURES")

    @property
    def background_index(self) -> int:
        return self.num_classes if self.background_label == "last" else 0


@dataclass(frozen=True)
class BoxHeadConfig:
    num_conv: int = cited(0, "defaults.py ROI_BOX_HEAD.NUM_CONV")
    num_fc: int = cited(2, "Base-RCNN-FPN.yaml ROI_BOX_HEAD.NUM_FC")
    fc_dim: int = cited(1024, "defaults.py ROI_BOX_HEAD.FC_DIM")
    pooler_resolution: int = cited(7, "Base-RCNN-FPN.yaml ROI_BOX_HEAD.POOLER_RESOLUTION (default 14 overridden)")
    pooler_sampling_ratio: int = cited(0, "defaults.py ROI_BOX_HEAD.POOLER_SAMPLING_RATIO (adaptive)")
    pooler_type: str = cited("ROIAlignV2", "defaults.py ROI_BOX_HEAD.POOLER_TYPE")
    aligned: bool = cited(True, "modeling/poolers.py: ROIAlignV2 = ROIAlign(aligned=True)")
    box_coder: BoxCoderConfig = cited(
        BoxCoderConfig(weights=(10.0, 10.0, 5.0, 5.0)), "defaults.py ROI_BOX_HEAD.BBOX_REG_WEIGHTS"
    )
    smooth_l1_beta: float = cited(0.0, "defaults.py ROI_BOX_HEAD.SMOOTH_L1_BETA")
    bbox_reg_loss_weight: float = cited(1.0, "defaults.py ROI_BOX_HEAD.BBOX_REG_LOSS_WEIGHT")
    cls_agnostic_bbox_reg: bool = cited(False, "defaults.py ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG")


@dataclass(frozen=True)
class InferenceConfig:
    score_thresh: float = cited(0.05, "defaults.py ROI_HEADS.SCORE_THRESH_TEST (strict >)")
    nms_thresh: float = cited(0.5, "defaults.py ROI_HEADS.NMS_THRESH_TEST (per class)")
    detections_per_image: int = cited(100, "defaults.py TEST.DETECTIONS_PER_IMAGE")
    min_box_size: float | None = cited(None, "fast_rcnn.py fast_rcnn_inference_single_image: no size filter")
    drop_nonfinite: bool = cited(True, "fast_rcnn.py: rows with non-finite boxes or scores are dropped")


# ---------------------------------------------------------------------------------------------- known values
@dataclass(frozen=True)
class ParameterCounts:
    """nn.Parameter counts (FrozenBN statistics are buffers, not parameters)."""

    resnet50_convs: int = cited(23_454_912, "d2-spec §3: stem 9,408 + res2..res5 convs, no biases")
    fpn: int = cited(3_344_384, "d2-spec §3: laterals 984,064 + outputs 2,360,320")
    rpn_head: int = cited(593_935, "d2-spec §3: conv 590,080 + objectness 771 + deltas 3,084")
    frozen_by_freeze_at_2: int = cited(222_400, "d2-spec §3: stem + res2")
    box_head_and_predictor: int = cited(14_306_705, "d2-spec §3: fc1 12,846,080 + fc2 1,049,600 + cls_score "
                                        "83,025 + bbox_pred 328,000")
    faster_rcnn_80_classes: int = cited(41_699_936, "d2-spec §3: backbone + RPN + box head and predictor")
    faster_rcnn_state_dict_tensors: int = cited(295, "d2-spec §5.1: 53 convs x 5 + FPN 16 + RPN 6 + box head 8")


PARAMETER_COUNTS = ParameterCounts()


# ---------------------------------------------------------------------------------------------- the model
@dataclass(frozen=True)
class FasterRCNNConfig:
    name: str
    input: InputConfig = field(default_factory=InputConfig)
    resnet: ResNetConfig = field(default_factory=ResNetConfig)
    fpn: FPNConfig = field(default_factory=FPNConfig)
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    rpn: RPNConfig = field(default_factory=RPNConfig)
    roi_heads: ROIHeadsConfig = field(default_factory=ROIHeadsConfig)
    box_head: BoxHeadConfig = field(default_factory=BoxHeadConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    mvit: MViTDetConfig | None = cited(
        None, "None: the ResNet body (cfg.resnet); an MViTDetConfig: detectron2's MViTv2 body instead "
        "(projects/MViTv2/configs; d2-spec §4.7)")

    @property
    def body(self) -> str:
        """The backbone body: "resnet" or the MViTv2 config's name."""
        return "resnet" if self.mvit is None else self.mvit.name

    @property
    def fpn_in_channels(self) -> tuple[int, ...]:
        """The body's channels of each FPN input (fpn.in_features): 256, 512, 1024, 2048 for the ResNet-50;
        96, 192, 384, 768 for MViTv2-T/S/B."""
        channels = self.resnet.stage_out_channels if self.mvit is None else self.mvit.stage_channels
        unknown = [f for f in self.fpn.in_features if f not in channels]
        if unknown:
            raise ValueError(f"fpn.in_features names unknown {self.body} stages {unknown}; stages are "
                             f"{list(channels)}")
        return tuple(channels[f] for f in self.fpn.in_features)

    @property
    def pooled_strides(self) -> tuple[int, ...]:
        """Strides of the maps the ROI heads pool (roi_heads.in_features among the FPN outputs): 4, 8, 16, 32.
        # ROI.LEVELS"""
        unknown = [f for f in self.roi_heads.in_features if f not in self.fpn.out_features]
        if unknown:
            raise ValueError(f"roi_heads.in_features names unknown FPN outputs {unknown}; outputs are "
                             f"{list(self.fpn.out_features)}")
        return tuple(self.fpn.strides[self.fpn.out_features.index(f)] for f in self.roi_heads.in_features)


BASE_RCNN_FPN = FasterRCNNConfig(name="detectron2")
DETECTRON2 = BASE_RCNN_FPN

_TV = "tv:"
TORCHVISION = FasterRCNNConfig(
    name="torchvision",
    input=replace(
        InputConfig(),
        format="RGB",  # tv:transform.py GeneralizedRCNNTransform takes RGB 0-1 tensors
        pixel_mean=(0.485, 0.456, 0.406),  # tv:faster_rcnn.py image_mean (ImageNet)
        pixel_std=(0.229, 0.224, 0.225),  # tv:faster_rcnn.py image_std
        pixel_scale=1.0,
        min_size_train=(800,),  # tv:faster_rcnn.py min_size=800
        max_size_train=1333,
        resize_rounding="floor",  # tv:transform.py interpolate(scale_factor, recompute_scale_factor=True)
        resize_interpolation="bilinear",  # tv:transform.py F.interpolate(mode="bilinear", align_corners=False)
        normalize_before_resize=True,  # tv:transform.py GeneralizedRCNNTransform.forward: normalize, resize
    ),
    resnet=replace(ResNetConfig(), stride_in_1x1=False, freeze_at=2),  # torchvision Bottleneck: stride on 3x3
    anchors=replace(AnchorConfig(), round_cell_anchors=True),  # tv:anchor_utils.py base_anchors.round()
    rpn=replace(
        RPNConfig(),
        post_nms_topk_train=2000,  # tv:faster_rcnn.py rpn_post_nms_top_n_train=2000
        min_box_size=1e-3,  # tv:rpn.py filter_proposals remove_small_boxes(min_size=1e-3)
        score_thresh=0.0,  # tv:faster_rcnn.py rpn_score_thresh=0.0 (on sigmoid probabilities)
        rank_by="sigmoid",  # tv:rpn.py filter_proposals: batched_nms on torch.sigmoid(objectness)
    ),
    roi_heads=replace(
        ROIHeadsConfig(),
        source_background_label="first",  # tv:roi_heads.py: label 0 is background (moved last on conversion)
        num_classes=90,  # tv:faster_rcnn.py num_classes=91 including background
        level_eps=1e-6,  # tv ops/poolers.py LevelMapper eps=1e-6
        level_eps_in_log=False,  # tv ops/poolers.py: floor(4 + log2(s / 224) + eps), eps outside the log
    ),
    box_head=replace(BoxHeadConfig(), pooler_sampling_ratio=2, aligned=False, pooler_type="ROIAlign",
                     smooth_l1_beta=1.0 / 9.0),  # tv:roi_heads.py fastrcnn_loss smooth_l1 beta=1/9
    inference=replace(
        InferenceConfig(),
        min_box_size=1e-2,  # tv:roi_heads.py postprocess_detections remove_small_boxes(min_size=1e-2)
        drop_nonfinite=False,  # tv:roi_heads.py has no finiteness filter
    ),
)


def _mvitv2_rcnn(name: str, body: MViTDetConfig) -> FasterRCNNConfig:
    """detectron2's projects/MViTv2 detector, box branch (mask_rcnn_mvitv2_*_3x.py on mask_rcnn_fpn.py): the
    Base-RCNN-FPN FPN, RPN and box head over an MViTv2 body, RGB input with ImageNet statistics (d2-spec §4.2,
    d2-spec §4.7)."""
    return FasterRCNNConfig(
        name=name,
        input=replace(
            InputConfig(),
            format="RGB",  # mask_rcnn_mvitv2_t_3x.py model.input_format = "RGB"
            pixel_mean=(123.675, 116.28, 103.53),  # constants.imagenet_rgb256_mean; d2-spec §4.2
            pixel_std=(58.395, 57.12, 57.375),  # constants.imagenet_rgb256_std; d2-spec §4.2
        ),
        fpn=replace(FPNConfig(), in_features=body.out_features),  # backbone.in_features = bottom_up.out_features
        mvit=body,
    )


DETECTRON2_MVITV2_T = _mvitv2_rcnn("detectron2-mvitv2-t", MVITV2_T_DET)
DETECTRON2_MVITV2_S = _mvitv2_rcnn("detectron2-mvitv2-s", MVITV2_S_DET)
DETECTRON2_MVITV2_B = _mvitv2_rcnn("detectron2-mvitv2-b", MVITV2_B_DET)

PROFILES: dict[str, FasterRCNNConfig] = {
    "detectron2": BASE_RCNN_FPN, "torchvision": TORCHVISION, DETECTRON2_MVITV2_T.name: DETECTRON2_MVITV2_T,
    DETECTRON2_MVITV2_S.name: DETECTRON2_MVITV2_S, DETECTRON2_MVITV2_B.name: DETECTRON2_MVITV2_B}


def get_profile(name: str) -> FasterRCNNConfig:
    """Look up a profile by name; raises ValueError listing the known names."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; expected one of {sorted(PROFILES)}") from None


def sources(cfg: Any, prefix: str = "") -> dict[str, str]:
    """Flatten a config into {dotted field name: cited source}, for reports and documentation."""
    out: dict[str, str] = {}
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        name = f"{prefix}{f.name}"
        if is_dataclass(value):
            out.update(sources(value, prefix=name + "."))
        elif "source" in f.metadata:
            out[name] = f.metadata["source"]
    return out
