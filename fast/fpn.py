"""Feature Pyramid Network, fast: channels-last convs and an in-place, allocation-free top-down add.

Same contract as reference/fpn.py (d2-spec §2.2); the convs (``fpn_lateral{2..5}``, ``fpn_output{2..5}``), their
initialisation and the config checks are layout/fpn.py's. Differences from the reference, none of which changes a
value:

- Conv weights and activations are channels-last.
- Nearest x2 upsampling + add is one broadcast in-place add: the lateral [N, C, 2h, 2w] is viewed as
  [N, C, h, 2, w, 2] and t [N, C, h, w] is added as [N, C, h, 1, w, 1]; every output pixel (i, j) receives
  t[i // 2, j // 2], exactly what F.interpolate(scale_factor=2, mode="nearest") gives, without materializing it.
- P6 = P5[:, :, ::2, ::2], identical to max_pool2d with kernel 1 and stride 2 (cfg.top_block_pool).

Shape legend: N images, C_l the channels of input level l, Hl, Wl its size.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from layout import fpn as layout

_CL = torch.channels_last


def _channels_last(t: Tensor) -> Tensor:
    return t if t.is_contiguous(memory_format=_CL) else t.contiguous(memory_format=_CL)


class FPN(layout.FPN):
    """{"res2": [N, C2, H2, W2], ..., "res5": ...} -> {"p2": [N, 256, H2, W2], ..., "p6": ...}, channels-last."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.to(memory_format=_CL)  # conv weights channels-last once

    @staticmethod
    def _conv(conv: nn.Conv2d, x: Tensor) -> Tensor:
        return F.conv2d(x, _channels_last(conv.weight), conv.bias, conv.stride, conv.padding)

    def forward(self, features: Mapping[str, Tensor]) -> dict[str, Tensor]:
        self.check_input(features)
        cfg = self.cfg
        up = cfg.upsample  # nearest (layout.UPSAMPLE_MODES) by an integer factor
        outputs: list[Tensor] = []
        top_down: Tensor | None = None
        for level, name in zip(reversed(self.levels), reversed(self.in_features)):  # coarsest first
            t = self._conv(getattr(self, f"fpn_lateral{level}"), _channels_last(features[name]))
            if top_down is not None:
                n, c, h, w = top_down.shape
                # t is a fresh conv output: add the nearest-upsampled top-down sum into it in place
                t.view(n, c, h, up, w, up).add_(top_down.view(n, c, h, 1, w, 1))
                if cfg.fuse_type == "avg":
                    t.mul_(0.5)
            top_down = t
            outputs.append(self._conv(getattr(self, f"fpn_output{level}"), t))
        outputs.reverse()  # p2 .. p5
        kernel, stride, padding = cfg.top_block_pool
        if kernel == 1 and padding == 0:  # LastLevelMaxPool: a strided slice
            p6 = outputs[-1][:, :, ::stride, ::stride].contiguous(memory_format=_CL)
        else:
            p6 = F.max_pool2d(outputs[-1], kernel_size=kernel, stride=stride, padding=padding)
        outputs.append(p6)
        return dict(zip(cfg.out_features, outputs))
