"""FrozenBatchNorm2d, fast: one fused per-channel affine, and the fold into a preceding conv.

Same contract and state_dict as reference/batch_norm.py (d2-spec §2.1, RESNET.FROZEN_BN):
y = (x - running_mean) * weight / sqrt(running_var + eps) + bias, with all four as buffers.

- ``forward`` calls ``F.batch_norm`` in inference form (one vectorized pass, channels-last aware, differentiable
  with respect to x; the buffers never change).
- ``scale_shift()`` returns the equivalent y = x * scale + shift, and ``fold(conv_weight)`` the conv weight and
  bias with the norm folded in (used by fast/resnet.py at inference).

Shape legend: N images, C channels (= num_features), H, W the spatial size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spec.config import BASE_RCNN_FPN

_EPS = BASE_RCNN_FPN.resnet.frozen_bn_eps


class FrozenBatchNorm2d(nn.Module):
    """[N, C, H, W] -> [N, C, H, W]; buffers weight, bias, running_mean, running_var (no parameters)."""

    def __init__(self, num_features: int, eps: float = _EPS):
        super().__init__()
        if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features <= 0:
            raise ValueError(f"num_features must be a positive int, got {num_features!r}")
        self.num_features = num_features
        self.eps = float(eps)
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features) - self.eps)  # fresh layer = identity

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

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        state_dict.pop(prefix + "num_batches_tracked", None)  # from a converted nn.BatchNorm2d: meaningless here
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"
