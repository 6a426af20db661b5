"""Feature Pyramid Network layout on res2..res5, with LastLevelMaxPool for P6.

Spec: d2-spec §1.2, §2.2, §3; detectron2 modeling/backbone/fpn.py.

For each input level l = 2..5 (l = log2 of its stride, from cfg.strides), every number from the FPNConfig:
  lateral_l: cfg.lateral_conv = (kernel 1, padding 0) conv C_l -> cfg.out_channels (256) with bias,
             named ``fpn_lateral{l}``                                                     # FPN.CONVS
  output_l:  cfg.output_conv = (kernel 3, padding 1) conv 256 -> 256 with bias, named ``fpn_output{l}``
Top-down pass (the forward, FPN.TOP_DOWN): t5 = lateral5(C5); t_l = lateral_l(C_l) + up(t_{l+1}) with
cfg.upsample_mode ("nearest") x cfg.upsample (2); fuse "avg" halves the sum; P_l = output_l(t_l).
P6 = max_pool(P5) with cfg.top_block_pool = (kernel 1, stride 2, padding 0) = P5[::2, ::2].       # FPN.P6
Outputs cfg.out_features p2..p6 at cfg.strides 4, 8, 16, 32, 64.                                  # FPN.STRIDES

state_dict keys, in this order: ``fpn_lateral2.{weight,bias}``, ``fpn_output2.{weight,bias}``, ..., level 5;
weights [256, C_l, 1, 1] and [256, 256, 3, 3], biases [256]. Init detectron2's c2_xavier_fill
(kaiming_uniform_(a=1) weights, zero biases).

No ``forward`` here: ``reference.fpn`` and ``fast.fpn`` subclass this class and write it.

Shape legend: N images, C_l the channels of input level l, Hl, Wl its size (H2 = H/4, ..., H5 = H/32).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace

from torch import Tensor, nn

from spec import validate as v
from spec.config import BASE_RCNN_FPN, FPNConfig

UPSAMPLE_MODES = ("nearest",)  # the top-down modes implemented (detectron2's only one)


def check_fpn_layout(cfg: FPNConfig, in_channels: Sequence[int]) -> None:
    """The FPNConfig choices the FPN implementations support (FPN.CONVS, FPN.STRIDES, FPN.P6)."""
    v.check_fpn_config(cfg, in_channels, cfg.upsample)
    if cfg.upsample_mode not in UPSAMPLE_MODES:
        raise ValueError(f"cfg.upsample_mode must be one of {UPSAMPLE_MODES}, got {cfg.upsample_mode!r}")
    for name, conv in (("lateral_conv", cfg.lateral_conv), ("output_conv", cfg.output_conv)):
        kernel, padding = conv
        if kernel < 1 or kernel != 2 * padding + 1:  # a stride-1 conv that keeps the level's size
            raise ValueError(f"cfg.{name} must be (kernel, padding) with an odd kernel and padding = kernel // 2 "
                             f"(the level's size is kept), got {conv}")
    kernel, stride, padding = cfg.top_block_pool
    if cfg.strides[-1] != cfg.strides[-2] * stride or kernel < 1 or not 0 <= 2 * padding <= kernel:
        raise ValueError(f"cfg.top_block_pool (kernel, stride, padding) = {cfg.top_block_pool} must turn P5 "
                         f"(stride {cfg.strides[-2]}) into P6 (stride {cfg.strides[-1]})")


class FPN(nn.Module):
    """{"res2": [N, C2, H2, W2], ..., "res5": [N, C5, H5, W5]} -> {"p2": [N, 256, H2, W2], ..., "p6": ...}.

    in_channels defaults to the Base-RCNN-FPN ResNet's channels of cfg.in_features (256, 512, 1024, 2048).
    """

    def __init__(self, in_channels: Sequence[int] | None = None, cfg: FPNConfig = BASE_RCNN_FPN.fpn):
        super().__init__()
        if in_channels is None:
            in_channels = replace(BASE_RCNN_FPN, fpn=cfg).fpn_in_channels
        check_fpn_layout(cfg, in_channels)
        self.cfg = cfg
        self.in_features = tuple(cfg.in_features)
        self.in_channels = tuple(int(c) for c in in_channels)
        self.out_channels = cfg.out_channels
        self.levels = [int(round(math.log2(s))) for s in cfg.strides[:len(self.in_features)]]  # [2, 3, 4, 5]
        (lateral_kernel, lateral_padding), (output_kernel, output_padding) = cfg.lateral_conv, cfg.output_conv
        for level, channels in zip(self.levels, self.in_channels):
            lateral = nn.Conv2d(channels, cfg.out_channels, kernel_size=lateral_kernel, padding=lateral_padding,
                                bias=True)
            output = nn.Conv2d(cfg.out_channels, cfg.out_channels, kernel_size=output_kernel,
                               padding=output_padding, bias=True)
            for conv in (lateral, output):  # detectron2's c2_xavier_fill
                nn.init.kaiming_uniform_(conv.weight, a=1)
                nn.init.zeros_(conv.bias)
            self.add_module(f"fpn_lateral{level}", lateral)
            self.add_module(f"fpn_output{level}", output)
        self.out_feature_strides = dict(zip(cfg.out_features, cfg.strides))

    def check_input(self, features: Mapping[str, Tensor]) -> None:
        """FPN.ERRORS: every input level, 4-D float, the expected channels, sizes halving exactly."""
        v.check_fpn_features(features, self.in_features, self.in_channels, self.cfg.upsample,
                             self.cfg.input_divisibility)
