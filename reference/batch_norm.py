"""FrozenBatchNorm2d: batch norm with fixed statistics and affine terms, all stored as buffers.

Spec: d2-spec §2.1 (RESNET.FROZEN_BN); detectron2 layers/batch_norm.py.

    y = (x - running_mean) * weight / sqrt(running_var + eps) + bias      (per channel)

There are no trainable parameters: weight, bias, running_mean and running_var are buffers, so they are saved in
the state_dict but never updated by an optimizer, and the layer computes the same thing in train and eval mode.
A fresh layer has weight 1, bias 0, mean 0 and var 1 - eps, so sqrt(var + eps) = 1 and it is the identity.

Shape legend: N images, C channels (= num_features), H, W the spatial size.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from spec.config import BASE_RCNN_FPN

_EPS = BASE_RCNN_FPN.resnet.frozen_bn_eps


class FrozenBatchNorm2d(nn.Module):
    """[N, C, H, W] -> [N, C, H, W] with frozen per-channel statistics.  # RESNET.FROZEN_BN"""

    def __init__(self, num_features: int, eps: float = _EPS):
        super().__init__()
        if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features <= 0:
            raise ValueError(f"num_features must be a positive int, got {num_features!r}")
        self.num_features = num_features
        self.eps = float(eps)
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        # 1 - eps, so that running_var + eps = 1 and a fresh layer is exactly the identity
        self.register_buffer("running_var", torch.ones(num_features) - self.eps)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.num_features:
            raise ValueError(f"x must have shape [N, {self.num_features}, H, W], got {list(x.shape)}")
        # [C] -> [1, C, 1, 1] so each channel's numbers broadcast over N, H and W
        mean = self.running_mean.reshape(1, -1, 1, 1)
        var = self.running_var.reshape(1, -1, 1, 1)
        weight = self.weight.reshape(1, -1, 1, 1)
        bias = self.bias.reshape(1, -1, 1, 1)
        return (x - mean) * weight / torch.sqrt(var + self.eps) + bias

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # A converted nn.BatchNorm2d checkpoint (torchvision) also carries num_batches_tracked; it means nothing
        # for a frozen layer, so it is dropped instead of being reported as an unexpected key.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"
