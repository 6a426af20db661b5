"""Feature Pyramid Network on res2..res5, with LastLevelMaxPool for P6: the forward pass.

Spec: d2-spec §1.2, §2.2, §3; detectron2 modeling/backbone/fpn.py.

The convs ``fpn_lateral{l}`` / ``fpn_output{l}`` (l = 2..5), their initialisation and the config checks are
layout/fpn.py's, built from the FPNConfig passed in. The forward pass, every number from that cfg:
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

from collections.abc import Mapping

import torch.nn.functional as F
from torch import Tensor

from layout import fpn as layout


class FPN(layout.FPN):
    """{"res2": [N, C2, H2, W2], ..., "res5": [N, C5, H5, W5]} -> {"p2": [N, 256, H2, W2], ..., "p6": ...}.

    FPN(in_channels=(256, 512, 1024, 2048), cfg=BASE_RCNN_FPN.fpn).
    """

    def forward(self, features: Mapping[str, Tensor]) -> dict[str, Tensor]:
        self.check_input(features)
        cfg = self.cfg
        inputs = [features[name] for name in self.in_features]  # finest (res2) to coarsest (res5)
        outputs: list[Tensor] = []
        top_down: Tensor | None = None
        for level, c in zip(reversed(self.levels), reversed(inputs)):  # coarsest first: 5, 4, 3, 2
            lateral = getattr(self, f"fpn_lateral{level}")(c)
            if top_down is None:
                top_down = lateral  # t5 = lateral5(C5)
            else:
                upsampled = F.interpolate(top_down, scale_factor=float(cfg.upsample), mode=cfg.upsample_mode)
                top_down = lateral + upsampled  # t_l = lateral_l(C_l) + up(t_{l+1}), the pre-output sum
                if cfg.fuse_type == "avg":
                    top_down = top_down / 2
            outputs.insert(0, getattr(self, f"fpn_output{level}")(top_down))  # P_l = output_l(t_l)
        kernel, stride, padding = cfg.top_block_pool
        p6 = F.max_pool2d(outputs[-1], kernel_size=kernel, stride=stride, padding=padding)  # from P5, not C5
        outputs.append(p6)
        return dict(zip(cfg.out_features, outputs))
