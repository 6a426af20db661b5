"""FrozenBatchNorm2d, fast: one fused per-channel affine, and the fold into a preceding conv.

Same contract as reference/batch_norm.py (d2-spec §2.1, RESNET.FROZEN_BN):
y = (x - running_mean) * weight / sqrt(running_var + eps) + bias; buffers and state_dict keys are
layout/batch_norm.py's.

- ``forward`` calls ``F.batch_norm`` in inference form (one vectorized pass, channels-last aware, differentiable
  with respect to x; the buffers never change).
- ``scale_shift()`` returns the equivalent y = x * scale + shift, and ``fold(conv_weight)`` the conv weight and
  bias with the norm folded in (used by fast/resnet.py at inference).

Shape legend: N images, C channels (= num_features), H, W the spatial size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from layout import batch_norm as layout


class FrozenBatchNorm2d(layout.FrozenBatchNorm2d):
    """[N, C, H, W] -> [N, C, H, W]; buffers weight, bias, running_mean, running_var (no parameters)."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.num_features:
            raise ValueError(f"x must have shape [N, {self.num_features}, H, W], got {list(x.shape)}")
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, training=False,
                            momentum=0.0, eps=self.eps)

    def scale_shift(self) -> tuple[Tensor, Tensor]:
        """([C], [C]) with y = x * scale + shift: scale = w / sqrt(var + eps), shift = b - mean * scale."""
        scale = self.weight * torch.rsqrt(self.running_var + self.eps)
        shift = self.bias - self.running_mean * scale
        return scale, shift

    def fold(self, conv_weight: Tensor) -> tuple[Tensor, Tensor]:
        """A bias-free conv's weight [C, C_in/g, kh, kw] followed by this norm -> (folded weight, bias [C])."""
        scale, shift = self.scale_shift()
        return conv_weight * scale.to(conv_weight.dtype).reshape(-1, 1, 1, 1), shift.to(conv_weight.dtype)
