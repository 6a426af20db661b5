"""ResNet-50 body (stem + res2..res5) with FrozenBN, as detectron2 builds it for Base-RCNN-FPN.

Spec: d2-spec §1.2, §2.1, §3, §5.1; detectron2 modeling/backbone/resnet.py, layers/wrappers.py.

- Stem (RESNET.STEM): 7x7 conv, stride 2, padding 3, no bias -> FrozenBN -> ReLU -> 3x3 max-pool, stride 2,
  padding 1. Output stride 4.
- Bottleneck block (RESNET.STAGES): 1x1 conv (in -> b) -> FBN -> ReLU -> 3x3 conv (b -> b, padding = dilation)
  -> FBN -> ReLU -> 1x1 conv (b -> out) -> FBN; add the shortcut; ReLU. The shortcut is a 1x1 conv with the
  block's stride + FBN where in != out (each stage's first block), the identity otherwise. No conv has a bias.
- The block stride sits on the first 1x1 conv when stride_in_1x1 (detectron2/MSRA), on the 3x3 conv otherwise
  (torchvision), RESNET.STRIDE_IN_1X1. Stage first-block strides: res2 1, res3..res5 2 (res5 1 if dilated).
- Widths: bottleneck b = num_groups * width_per_group * 2^i, out = res2_out_channels * 2^i for stage i = 0..3.
- freeze_at (RESNET.FREEZE_AT): >= 1 freezes the stem, >= k freezes res{k} (requires_grad False).
- Outputs (RESNET.OUTPUTS): {"res2": [N, 256, H/4, W/4], "res3": [N, 512, H/8, W/8],
  "res4": [N, 1024, H/16, W/16], "res5": [N, 2048, H/32, W/32]} for a 32-divisible input.

state_dict keys follow detectron2's backbone.bottom_up.* layout (d2-spec §5.1): ``stem.conv1.weight``,
``stem.conv1.norm.{weight,bias,running_mean,running_var}``, ``res2.0.conv1.weight``, ``res2.0.shortcut.weight``, ...

Shape legend: N images, C channels, H, W the input size.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from reference.batch_norm import FrozenBatchNorm2d
from spec import validate as v
from spec.config import BASE_RCNN_FPN, ResNetConfig

# Fixed architecture of detectron2's BasicStem and stage layout (not configurable in detectron2 either).
STEM_KERNEL, STEM_STRIDE, STEM_PADDING = BASE_RCNN_FPN.resnet.stem_conv  # RESNET.STEM: 7x7/2, padding 3
POOL_KERNEL, POOL_STRIDE, POOL_PADDING = BASE_RCNN_FPN.resnet.stem_pool  # RESNET.STEM: 3x3/2 max-pool, pad 1
FIRST_STAGE = 2  # stages are named res2, res3, ... (log2 of the stage's output stride)
DOWNSAMPLE = BASE_RCNN_FPN.resnet.stage_downsample  # the first block of res3, res4, res5 halves the size


class Conv2d(nn.Conv2d):
    """nn.Conv2d followed by a norm layer held as ``.norm``, so keys read ``conv1.weight``, ``conv1.norm.*``."""

    def __init__(self, *args, norm: nn.Module | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.norm = norm

    def forward(self, x: Tensor) -> Tensor:
        x = super().forward(x)
        if self.norm is not None:
            x = self.norm(x)
        return x


def _conv_norm(in_ch: int, out_ch: int, kernel: int, stride: int, eps: float, padding: int = 0,
               dilation: int = 1, groups: int = 1) -> Conv2d:
    """A bias-free conv + FrozenBN, initialised like detectron2's c2_msra_fill (He normal, fan_out)."""
    conv = Conv2d(in_ch, out_ch, kernel, stride=stride, padding=padding, dilation=dilation, groups=groups,
                  bias=False, norm=FrozenBatchNorm2d(out_ch, eps=eps))
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


class BasicStem(nn.Module):
    """[N, C_in, H, W] -> [N, stem_out, ~H/4, ~W/4].  # RESNET.STEM"""

    def __init__(self, in_channels: int, out_channels: int, eps: float):
        super().__init__()
        self.conv1 = _conv_norm(in_channels, out_channels, STEM_KERNEL, STEM_STRIDE, eps, padding=STEM_PADDING)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.conv1(x))
        return F.max_pool2d(x, kernel_size=POOL_KERNEL, stride=POOL_STRIDE, padding=POOL_PADDING)


class BottleneckBlock(nn.Module):
    """[N, in, H, W] -> [N, out, H/stride, W/stride].  # RESNET.STAGES"""

    def __init__(self, in_channels: int, bottleneck_channels: int, out_channels: int, stride: int,
                 stride_in_1x1: bool, num_groups: int, dilation: int, eps: float):
        super().__init__()
        if in_channels != out_channels:  # projection shortcut only where the width changes (block 0 of a stage)
            self.shortcut = _conv_norm(in_channels, out_channels, 1, stride, eps)
        else:
            self.shortcut = None
        # RESNET.STRIDE_IN_1X1: detectron2 strides the first 1x1 conv, torchvision the 3x3 conv
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = _conv_norm(in_channels, bottleneck_channels, 1, stride_1x1, eps)
        self.conv2 = _conv_norm(bottleneck_channels, bottleneck_channels, 3, stride_3x3, eps, padding=dilation,
                                dilation=dilation, groups=num_groups)
        self.conv3 = _conv_norm(bottleneck_channels, out_channels, 1, 1, eps)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.conv1(x))
        out = F.relu(self.conv2(out))
        out = self.conv3(out)
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return F.relu(out + shortcut)


class ResNet(nn.Module):
    """ResNet body: [N, C_in, H, W] -> {"res2": ..., "res5": ...} (the names in cfg.out_features).

    cfg.blocks_per_stage gives the number of bottleneck blocks of res2, res3, ...; widths, strides, freezing
    and the stride convention all come from cfg (BASE_RCNN_FPN.resnet or TORCHVISION.resnet).
    """

    def __init__(self, cfg: ResNetConfig = BASE_RCNN_FPN.resnet,
                 in_channels: int = len(BASE_RCNN_FPN.input.pixel_mean)):
        super().__init__()
        v.check_resnet_config(cfg)
        self.cfg = cfg
        self.in_channels = in_channels
        eps = cfg.frozen_bn_eps
        self.stem = BasicStem(in_channels, cfg.stem_out_channels, eps)
        stride = STEM_STRIDE * POOL_STRIDE
        channels = cfg.stem_out_channels
        self.stage_names: list[str] = []
        self.out_feature_strides: dict[str, int] = {}
        self.out_feature_channels: dict[str, int] = {}
        last = len(cfg.blocks_per_stage) - 1
        for i, num_blocks in enumerate(cfg.blocks_per_stage):
            name = f"res{FIRST_STAGE + i}"
            dilation = cfg.res5_dilation if i == last else 1
            first_stride = 1 if i == 0 or dilation > 1 else DOWNSAMPLE
            bottleneck = cfg.num_groups * cfg.width_per_group * 2**i
            out_channels = cfg.res2_out_channels * 2**i
            blocks = []
            for b in range(num_blocks):
                blocks.append(BottleneckBlock(channels, bottleneck, out_channels, first_stride if b == 0 else 1,
                                              cfg.stride_in_1x1, cfg.num_groups, dilation, eps))
                channels = out_channels
            self.add_module(name, nn.Sequential(*blocks))
            stride *= first_stride
            self.stage_names.append(name)
            self.out_feature_strides[name] = stride
            self.out_feature_channels[name] = out_channels
        unknown = [f for f in cfg.out_features if f not in self.stage_names]
        if unknown:
            raise ValueError(f"cfg.out_features names unknown stages {unknown}; stages are {self.stage_names}")
        self._freeze(cfg.freeze_at)

    def _freeze(self, freeze_at: int) -> None:
        """RESNET.FREEZE_AT: stage k (stem = 1, res2 = 2, ...) is frozen when k <= freeze_at."""
        if freeze_at >= 1:
            for p in self.stem.parameters():
                p.requires_grad_(False)
        for i, name in enumerate(self.stage_names):
            if FIRST_STAGE + i <= freeze_at:
                for p in getattr(self, name).parameters():
                    p.requires_grad_(False)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"x must have a floating dtype, got {x.dtype}")
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must have shape [N, {self.in_channels}, H, W], got {list(x.shape)}")
        outputs: dict[str, Tensor] = {}
        x = self.stem(x)
        for name in self.stage_names:
            x = getattr(self, name)(x)
            if name in self.cfg.out_features:
                outputs[name] = x
        return {name: outputs[name] for name in self.cfg.out_features}


