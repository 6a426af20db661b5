"""Feature Pyramid Network on res2..res5, with LastLevelMaxPool for P6.

Spec: d2-spec §1.2, §2.2, §3; detectron2 modeling/backbone/fpn.py.

For each input level l = 2..5 (l = log2 of its stride):
  lateral_l: 1x1 conv C_l -> 256 with bias, named ``fpn_lateral{l}``          # FPN.CONVS
  output_l:  3x3 conv 256 -> 256, padding 1, with bias, named ``fpn_output{l}``
Top-down pass over the pre-output sums t (not the outputs P):                   # FPN.TOP_DOWN
  t5 = lateral5(C5)
  t_l = lateral_l(C_l) + nearest_upsample_x2(t_{l+1})   for l = 4, 3, 2   (fuse "avg" halves the sum)
  P_l = output_l(t_l)
P6 = max_pool(P5, kernel 1, stride 2) = P5[::2, ::2], size ceil(H5/2) x ceil(W5/2).     # FPN.P6
Outputs p2..p6: 256 channels at strides 4, 8, 16, 32, 64.                       # FPN.STRIDES

Each level must be exactly twice the size of the next coarser one, which holds when the input image was padded
to a multiple of 32 (pad_images); anything else is a ValueError (FPN.ERRORS).

Shape legend: N images, C_l the channels of input level l, Hl, Wl its size (H2 = H/4, ..., H5 = H/32).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from spec import validate as v
from spec.config import BASE_RCNN_FPN, FPNConfig

_RESNET = BASE_RCNN_FPN.resnet
# res2..res5 output channels of the spec's ResNet: 256, 512, 1024, 2048
DEFAULT_IN_CHANNELS = tuple(_RESNET.res2_out_channels * 2**i for i in range(len(_RESNET.blocks_per_stage)))
UPSAMPLE = BASE_RCNN_FPN.fpn.upsample  # nearest x2 between neighbouring levels
OUTPUT_KERNEL, OUTPUT_PADDING = 3, 1  # fpn_output: 3x3 conv, padding 1
P6_KERNEL, P6_STRIDE = 1, 2  # LastLevelMaxPool: max-pool kernel 1, stride 2, padding 0


class FPN(nn.Module):
    """{"res2": [N, C2, H2, W2], ..., "res5": [N, C5, H5, W5]} -> {"p2": [N, 256, H2, W2], ..., "p6": ...}."""

    def __init__(self, in_channels: Sequence[int] = DEFAULT_IN_CHANNELS, cfg: FPNConfig = BASE_RCNN_FPN.fpn):
        super().__init__()
        v.check_fpn_config(cfg, in_channels, UPSAMPLE)
        self.cfg = cfg
        self.in_features = tuple(cfg.in_features)
        self.in_channels = tuple(int(c) for c in in_channels)
        self.out_channels = cfg.out_channels
        self.levels = [int(round(math.log2(s))) for s in cfg.strides[:len(self.in_features)]]  # [2, 3, 4, 5]
        for level, channels in zip(self.levels, self.in_channels):
            lateral = nn.Conv2d(channels, cfg.out_channels, kernel_size=1, bias=True)
            output = nn.Conv2d(cfg.out_channels, cfg.out_channels, kernel_size=OUTPUT_KERNEL,
                               padding=OUTPUT_PADDING, bias=True)
            for conv in (lateral, output):  # detectron2's c2_xavier_fill
                nn.init.kaiming_uniform_(conv.weight, a=1)
                nn.init.zeros_(conv.bias)
            self.add_module(f"fpn_lateral{level}", lateral)
            self.add_module(f"fpn_output{level}", output)
        self.out_feature_strides = dict(zip(cfg.out_features, cfg.strides))

    def forward(self, features: Mapping[str, Tensor]) -> dict[str, Tensor]:
        v.check_fpn_features(features, self.in_features, self.in_channels, UPSAMPLE,
                             BASE_RCNN_FPN.input.size_divisibility)
        inputs = [features[name] for name in self.in_features]  # finest (res2) to coarsest (res5)
        outputs: list[Tensor] = []
        top_down: Tensor | None = None
        for level, c in zip(reversed(self.levels), reversed(inputs)):  # coarsest first: 5, 4, 3, 2
            lateral = getattr(self, f"fpn_lateral{level}")(c)
            if top_down is None:
                top_down = lateral  # t5 = lateral5(C5)
            else:
                upsampled = F.interpolate(top_down, scale_factor=float(UPSAMPLE), mode="nearest")
                top_down = lateral + upsampled  # t_l = lateral_l(C_l) + up(t_{l+1}), the pre-output sum
                if self.cfg.fuse_type == "avg":
                    top_down = top_down / 2
            outputs.insert(0, getattr(self, f"fpn_output{level}")(top_down))  # P_l = output_l(t_l)
        p6 = F.max_pool2d(outputs[-1], kernel_size=P6_KERNEL, stride=P6_STRIDE, padding=0)  # from P5, not C5
        outputs.append(p6)
        return dict(zip(self.cfg.out_features, outputs))


