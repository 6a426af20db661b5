"""FrozenBatchNorm2d: batch norm with fixed statistics and affine terms, all stored as buffers.

Spec: d2-spec §2.1 (RESNET.FROZEN_BN); detectron2 layers/batch_norm.py.

    y = (x - running_mean) * weight / sqrt(running_var + eps) + bias      (per channel)

The buffers, their initial values (a fresh layer is the identity) and the state_dict keys are layout/batch_norm.py's;
this file writes the forward pass only.

Shape legend: N images, C channels (= num_features), H, W the spatial size.
"""

from __future__ import annotations

import torch
from torch import Tensor

from layout import batch_norm as layout


class FrozenBatchNorm2d(layout.FrozenBatchNorm2d):
    """[N, C, H, W] -> [N, C, H, W] with frozen per-channel statistics.  # RESNET.FROZEN_BN"""

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.num_features:
            raise ValueError(f"x must have shape [N, {self.num_features}, H, W], got {list(x.shape)}")
        # [C] -> [1, C, 1, 1] so each channel's numbers broadcast over N, H and W
        mean = self.running_mean.reshape(1, -1, 1, 1)
        var = self.running_var.reshape(1, -1, 1, 1)
        weight = self.weight.reshape(1, -1, 1, 1)
        bias = self.bias.reshape(1, -1, 1, 1)
        return (x - mean) * weight / torch.sqrt(var + self.eps) + bias
