"""ResNet body layout (stem + res2..res5 bottleneck stages, FrozenBN), as detectron2 builds it for Base-RCNN-FPN.

Spec: d2-spec §1.2, §2.1, §3, §5.1; detectron2 modeling/backbone/resnet.py, layers/wrappers.py.

Every number comes from the ResNetConfig passed in (BASE_RCNN_FPN.resnet or TORCHVISION.resnet):

- Stem (RESNET.STEM): cfg.stem_conv = (kernel 7, stride 2, padding 3) conv, no bias, 3 -> cfg.stem_out_channels
  (64) -> FrozenBN -> ReLU -> cfg.stem_pool = (3, 2, 1) max-pool. Output stride cfg.stem_stride = 4.
- Bottleneck block (RESNET.STAGES): 1x1 conv (in -> b) -> FBN -> ReLU -> 3x3 conv (b -> b, padding = dilation)
  -> FBN -> ReLU -> 1x1 conv (b -> out) -> FBN; add the shortcut; ReLU. The shortcut is a 1x1 conv with the
  block's stride + FBN where in != out (each stage's first block), the identity otherwise. No conv has a bias.
- The block stride sits on the first 1x1 conv when cfg.stride_in_1x1 (detectron2/MSRA), on the 3x3 conv otherwise
  (torchvision), RESNET.STRIDE_IN_1X1. Stage first-block strides: res2 1, res3..res5 cfg.stage_downsample = 2
  (res5 1 if dilated).
- Widths (cfg.stage_bottleneck_channels, cfg.stage_out_channels): b = num_groups * width_per_group * 2^i,
  out = res2_out_channels * 2^i for stage i = 0..3 (res2..res5, cfg.stage_names).
- cfg.freeze_at (RESNET.FREEZE_AT): >= 1 freezes the stem, >= k freezes res{k} (requires_grad False).

state_dict keys (detectron2's backbone.bottom_up.* layout, d2-spec §5.1), in this order:
``stem.conv1.weight`` [stem_out, C_in, 7, 7], ``stem.conv1.norm.{weight,bias,running_mean,running_var}``, then per
stage and block ``res2.0.shortcut.weight`` (first block only), ``.shortcut.norm.*``, ``res2.0.conv1.weight``,
``.conv1.norm.*``, ``conv2``, ``conv3`` likewise.

No ``forward`` here: ``reference.resnet`` and ``fast.resnet`` subclass these classes, point the class attributes
``norm_type`` / ``conv_type`` / ``stem_type`` / ``block_type`` at their own classes, and write the forward passes.
The classes here alone build the whole tree (enough for a state_dict layout on the meta device).

Shape legend: N images, C_in input channels, H, W the input size.
"""

from __future__ import annotations

from torch import Tensor, nn

from layout.batch_norm import FrozenBatchNorm2d
from spec import validate as v
from spec.config import BASE_RCNN_FPN, ResNetConfig


class Conv2d(nn.Conv2d):
    """A bias-free conv followed by its FrozenBN, held as ``.norm``: keys ``weight``, ``norm.*``.

    Initialised like detectron2's c2_msra_fill (He normal, fan_out).
    """

    norm_type: type[FrozenBatchNorm2d] = FrozenBatchNorm2d

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 dilation: int = 1, groups: int = 1, *, eps: float):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, dilation=dilation,
                         groups=groups, bias=False)
        self.norm = self.norm_type(out_channels, eps=eps)
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")


class BasicStem(nn.Module):
    """[N, C_in, H, W] -> [N, stem_out, ~H/4, ~W/4]: conv1 (+ norm), then a max-pool.  # RESNET.STEM"""

    conv_type: type[Conv2d] = Conv2d

    def __init__(self, in_channels: int, cfg: ResNetConfig):
        super().__init__()
        kernel, stride, padding = cfg.stem_conv
        self.conv1 = self.conv_type(in_channels, cfg.stem_out_channels, kernel, stride, padding,
                                    eps=cfg.frozen_bn_eps)
        self.pool_kernel, self.pool_stride, self.pool_padding = cfg.stem_pool  # no parameters: forward's numbers


class BottleneckBlock(nn.Module):
    """[N, in, H, W] -> [N, out, H/stride, W/stride].  # RESNET.STAGES"""

    conv_type: type[Conv2d] = Conv2d

    def __init__(self, in_channels: int, bottleneck_channels: int, out_channels: int, stride: int,
                 stride_in_1x1: bool, num_groups: int, dilation: int, eps: float):
        super().__init__()
        conv = self.conv_type
        if in_channels != out_channels:  # projection shortcut only where the width changes (block 0 of a stage)
            self.shortcut = conv(in_channels, out_channels, 1, stride, eps=eps)
        else:
            self.shortcut = None
        # RESNET.STRIDE_IN_1X1: detectron2 strides the first 1x1 conv, torchvision the 3x3 conv
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = conv(in_channels, bottleneck_channels, 1, stride_1x1, eps=eps)
        self.conv2 = conv(bottleneck_channels, bottleneck_channels, 3, stride_3x3, padding=dilation,
                          dilation=dilation, groups=num_groups, eps=eps)
        self.conv3 = conv(bottleneck_channels, out_channels, 1, 1, eps=eps)


class ResNet(nn.Module):
    """ResNet body: [N, C_in, H, W] -> {"res2": ..., "res5": ...} (the names in cfg.out_features).

    Attributes for the forward pass and the FPN: stage_names, out_feature_strides, out_feature_channels.
    """

    stem_type: type[BasicStem] = BasicStem
    block_type: type[BottleneckBlock] = BottleneckBlock

    def __init__(self, cfg: ResNetConfig = BASE_RCNN_FPN.resnet,
                 in_channels: int = len(BASE_RCNN_FPN.input.pixel_mean)):
        super().__init__()
        v.check_resnet_config(cfg)
        self.cfg = cfg
        self.in_channels = in_channels
        self.stem = self.stem_type(in_channels, cfg)
        stride = cfg.stem_stride
        channels = cfg.stem_out_channels
        self.stage_names: list[str] = list(cfg.stage_names)
        self.out_feature_strides: dict[str, int] = {}
        self.out_feature_channels: dict[str, int] = {}
        last = len(cfg.blocks_per_stage) - 1
        for i, (name, num_blocks) in enumerate(zip(self.stage_names, cfg.blocks_per_stage)):
            dilation = cfg.res5_dilation if i == last else 1
            first_stride = 1 if i == 0 or dilation > 1 else cfg.stage_downsample
            out_channels = cfg.stage_out_channels[name]
            blocks = [self.block_type(channels if b == 0 else out_channels, cfg.stage_bottleneck_channels[name],
                                      out_channels, first_stride if b == 0 else 1, cfg.stride_in_1x1,
                                      cfg.num_groups, dilation, cfg.frozen_bn_eps) for b in range(num_blocks)]
            channels = out_channels
            self.add_module(name, nn.Sequential(*blocks))
            stride *= first_stride
            self.out_feature_strides[name] = stride
            self.out_feature_channels[name] = out_channels
        unknown = [f for f in cfg.out_features if f not in self.stage_names]
        if unknown:
            raise ValueError(f"cfg.out_features names unknown stages {unknown}; stages are {self.stage_names}")
        self._freeze(cfg.freeze_at)

    def _freeze(self, freeze_at: int) -> None:
        """RESNET.FREEZE_AT: stage k (stem = 1, res2 = 2, ...) is frozen when k <= freeze_at."""
        if freeze_at >= 1:
            self.stem.requires_grad_(False)
        for name in self.stage_names:
            if int(name.removeprefix("res")) <= freeze_at:
                getattr(self, name).requires_grad_(False)

    def check_input(self, x: object) -> None:
        """x must be a floating [N, C_in, H, W] tensor (TypeError / ValueError otherwise)."""
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"x must have a floating dtype, got {x.dtype}")
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must have shape [N, {self.in_channels}, H, W], got {list(x.shape)}")
