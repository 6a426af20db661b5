"""The reduced Faster R-CNN that ``detspec demo`` trains from scratch on the synthetic shapes, on a CPU.

It is BASE_RCNN_FPN (detectron2's faster_rcnn_R_50_FPN_1x) with every change made through
``dataclasses.replace``; the architecture (ResNet bottleneck stages res2..res5 -> FPN p2..p6 -> RPN -> 2-fc box
head) and every algorithmic choice (matching thresholds, sampling fractions, box coding, losses, NMS, ROIAlignV2)
stay the spec's. Each deviation below says why. The reasons, in short: the demo must learn, without pretrained
weights, in minutes on two CPU cores, on 128..160 px images whose objects are 12..80 px, i.e. about six
times smaller than COCO's at detectron2's 800 px scale.

Also used by the demo: the synthetic stream's image sizes (``DEMO_IMAGE_SIZE``) and the training schedule
(``DemoSchedule``), so that the demo's numbers live in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from spec.config import BASE_RCNN_FPN, FasterRCNNConfig

_SPEC = BASE_RCNN_FPN

# Images: each side uniform in 128..160 px (synthetic.parse_image_size's ((Hmin, Hmax), (Wmin, Wmax)) form).
# Shapes are 12 px .. half the shorter side (synthetic.py defaults).
DEMO_IMAGE_SIZE: tuple[tuple[int, int], tuple[int, int]] = ((128, 160), (128, 160))
DEMO_MAX_OBJECTS = 5  # fewer than the generator's default 8: small images would be mostly occluded clutter

DEMO_RCNN: FasterRCNNConfig = replace(
    _SPEC,
    name="detspec-demo",
    input=replace(
        _SPEC.input,
        # Deviation: divide by per-channel std (detectron2's own values for torchvision-style backbones,
        # [57.375, 57.120, 58.395] BGR) instead of 1.0. With FrozenBN and no pretrained statistics nothing
        # else normalizes the activations, and 0-255-scale inputs make from-scratch training blow up.
        pixel_std=(57.375, 57.120, 58.395),
        # Deviation: the demo feeds images at their own size (FasterRCNN(resize=False)); these sizes are set
        # to the demo's image range only so that resize=True would be a no-op-like choice, not an 800 px blow-up.
        min_size_train=(128,),
        max_size_train=160,
        min_size_test=128,
        max_size_test=160,
    ),
    resnet=replace(
        _SPEC.resnet,
        # Deviation: one bottleneck block per stage (ResNet-50 has 3, 4, 6, 3) and 1/4 the widths
        # (width_per_group 16, res2 64 channels, stem 16): about 25x fewer FLOPs, so training fits in minutes.
        # (depth stays 50: it only selects bottleneck blocks, which is what blocks_per_stage then stacks.)
        blocks_per_stage=(1, 1, 1, 1),
        width_per_group=16,
        res2_out_channels=64,
        stem_out_channels=16,
        # Deviation: train every stage (the spec freezes stem + res2, which only makes sense over ImageNet
        # weights; there are none here).
        freeze_at=0,
    ),
    # Deviation: 64 FPN channels instead of 256 (speed; 8 simple classes need far less capacity than COCO's 80).
    fpn=replace(_SPEC.fpn, out_channels=64),
    anchors=replace(
        _SPEC.anchors,
        # Deviation: anchor sizes 16..256 instead of 32..512 (one per level, p2..p6, same strides): the
        # objects are 12..80 px, so the spec's 32 px smallest anchor would match the small ones poorly.
        sizes=((16.0,), (32.0,), (64.0,), (128.0,), (256.0,)),
    ),
    rpn=replace(
        _SPEC.rpn,
        # Deviation: the RPN head's conv keeps the FPN's channel count (detectron2's CONV_DIMS [-1]), since
        # the spec's explicit 256 would mean 64 -> 256 channels here.
        head_conv_dims=(-1,),
        # Deviation: 128 sampled anchors per image instead of 256 and 1/4..1/10 the proposals: a 160 px
        # image has ~7k anchors (COCO images ~200k) and at most 5 objects.
        batch_size_per_image=128,
        pre_nms_topk_train=500,
        post_nms_topk_train=256,
        pre_nms_topk_test=500,
        post_nms_topk_test=200,
    ),
    roi_heads=replace(
        _SPEC.roi_heads,
        # The 8 synthetic shape classes (detspec.data.synthetic.CATEGORIES).
        num_classes=8,
        # Deviation: 128 sampled ROIs per image instead of 512 (few objects, small images; speed).
        batch_size_per_image=128,
    ),
    # Deviation: 256-wide fc layers instead of 1024 (speed; the spec's fc1 alone would be 12.8M parameters).
    box_head=replace(_SPEC.box_head, fc_dim=256),
)


@dataclass(frozen=True)
class DemoSchedule:
    """Optimization of the demo (detectron2 trains COCO with SGD lr 0.02, batch 16, 90k iterations; none of
    that fits a CPU in minutes). AdamW learns this from-scratch model fast and reliably.

    Measured (one thread, seed 0, 64 val images; AP50 at the end of each run): batch 4, lr 2e-3: 600 it 0.26,
    1500 it 0.80; batch 2, lr 2e-3: 1500 it 0.66, 2000 it 0.75; batch 2, lr 3e-3: 1500 it 0.51. 1200 x 4
    (the default) trains in ~2.5 min on an idle core (8.4 it/s); with 2 cores loaded ~5 deep by other
    processes an iteration took 0.41 s, i.e. ~8 min."""

    iterations: int = 1200
    images_per_batch: int = 4  # per process
    lr: float = 2e-3  # AdamW
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_iters: int = 100  # linear warmup from warmup_factor * lr
    warmup_factor: float = 0.001
    final_lr_factor: float = 0.05  # cosine decay to lr * final_lr_factor at the last iteration
    clip_grad_norm: float = 5.0
    val_images: int = 64
    val_seed: int = 1_000_003  # the held-out val set's seed, far from any training seed
    draw_images: int = 4
    draw_thresh: float = 0.5


DEMO_SCHEDULE = DemoSchedule()
