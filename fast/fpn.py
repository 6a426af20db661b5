"""Feature Pyramid Network, fast: channels-last convs and an in-place, allocation-free top-down add.

Same contract, constructor and state_dict keys (``fpn_lateral{2..5}``, ``fpn_output{2..5}``) as
reference/fpn.py (d2-spec §2.2). Differences, none of which changes a value:

- Conv weights and activations are channels-last.
- Nearest x2 upsampling + add is one broadcast in-place add: the lateral [N, C, 2h, 2w] is viewed as
  [N, C, h, 2, w, 2] and t [N, C, h, w] is added as [N, C, h, 1, w, 1]; every output pixel (i, j) receives
  t[i // 2, j // 2], exactly what F.interpolate(scale_factor=2, mode="nearest") gives, without materializing it.
- P6 = P5[:, :, ::2, ::2], identical to max_pool2d with kernel 1 and stride 2.

Shape legend: N images, C_l the channels of input level l, Hl, Wl its size.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spec import validate as v
from spec.config import BASE_RCNN_FPN, FPNConfig

_RESNET = BASE_RCNN_FPN.resnet
DEFAULT_IN_CHANNELS = tuple(_RESNET.res2_out_channels * 2**i for i in range(len(_RESNET.blocks_per_stage)))
UPSAMPLE = BASE_RCNN_FPN.fpn.upsample  # nearest x2 between neighbouring levels
OUTPUT_KERNEL, OUTPUT_PADDING = 3, 1
P6_STRIDE = 2
_CL = torch.channels_last


def _channels_last(t: Tensor) -> Tensor:
    return t if t.is_contiguous(memory_format=_CL) else t.contiguous(memory_format=_CL)


class FPN(nn.Module):
    """{"res2": [N, C2, H2, W2], ..., "res5": ...} -> {"p2": [N, 256, H2, W2], ..., "p6": ...}, channels-last."""

    def __init__(self, in_channels: Sequence[int] = DEFAULT_IN_CHANNELS, cfg: FPNConfig = BASE_RCNN_FPN.fpn):
        super().__init__()
        v.check_fpn_config(cfg, in_channels, UPSAMPLE)
        self.cfg = cfg
        self.in_features = tuple(cfg.in_features)
        self.in_channels = tuple(int(c) for c in in_channels)
        self.out_channels = cfg.out_channels
        self.levels = [int(round(math.log2(s))) for s in cfg.strides[:len(self.in_features)]]
        for level, channels in zip(self.levels, self.in_channels):
            lateral = nn.Conv2d(channels, cfg.out_channels, kernel_size=1, bias=True)
            output = nn.Conv2d(cfg.out_channels, cfg.out_channels, kernel_size=OUTPUT_KERNEL,
                               padding=OUTPUT_PADDING, bias=True)
            for conv in (lateral, output):  # c2_xavier_fill
                nn.init.kaiming_uniform_(conv.weight, a=1)
                nn.init.zeros_(conv.bias)
            self.add_module(f"fpn_lateral{level}", lateral)
            self.add_module(f"fpn_output{level}", output)
        self.out_feature_strides = dict(zip(cfg.out_features, cfg.strides))
        self.to(memory_format=_CL)
        self._avg = cfg.fuse_type == "avg"

    @staticmethod
    def _conv(conv: nn.Conv2d, x: Tensor) -> Tensor:
        return F.conv2d(x, _channels_last(conv.weight), conv.bias, conv.stride, conv.padding)

    def forward(self, features: Mapping[str, Tensor]) -> dict[str, Tensor]:
        v.check_fpn_features(features, self.in_features, self.in_channels, UPSAMPLE,
                             BASE_RCNN_FPN.input.size_divisibility)
        outputs: list[Tensor] = []
        top_down: Tensor | None = None
        for level, name in zip(reversed(self.levels), reversed(self.in_features)):  # coarsest first
            t = self._conv(getattr(self, f"fpn_lateral{level}"), _channels_last(features[name]))
            if top_down is not None:
                n, c, h, w = top_down.shape
                # t is a fresh conv output: add the nearest-x2 upsampled top-down sum into it in place
                t.view(n, c, h, UPSAMPLE, w, UPSAMPLE).add_(top_down.view(n, c, h, 1, w, 1))
                if self._avg:
                    t.mul_(0.5)
            top_down = t
            outputs.append(self._conv(getattr(self, f"fpn_output{level}"), t))
        outputs.reverse()  # p2 .. p5
        outputs.append(outputs[-1][:, :, ::P6_STRIDE, ::P6_STRIDE].contiguous(memory_format=_CL))  # P6
        return dict(zip(self.cfg.out_features, outputs))


