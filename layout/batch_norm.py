"""FrozenBatchNorm2d layout: batch norm with fixed statistics and affine terms, all four stored as buffers.

Spec: d2-spec §2.1 (RESNET.FROZEN_BN); detectron2 layers/batch_norm.py.

    y = (x - running_mean) * weight / sqrt(running_var + eps) + bias      (per channel)

There are no trainable parameters: weight, bias, running_mean and running_var are buffers (state_dict keys
``weight``, ``bias``, ``running_mean``, ``running_var``, each [C], in this order), so they are saved but never
updated by an optimizer, and the layer computes the same thing in train and eval mode. A fresh layer has weight 1,
bias 0, mean 0 and var 1 - eps, so sqrt(var + eps) = 1 and it is the identity.

No ``forward`` here: ``reference.batch_norm`` and ``fast.batch_norm`` subclass this class and write it.

Shape legend: N images, C channels (= num_features), H, W the spatial size.
"""

from __future__ import annotations

import torch
from torch import nn

from spec.config import BASE_RCNN_FPN


class FrozenBatchNorm2d(nn.Module):
    """[N, C, H, W] -> [N, C, H, W] with frozen per-channel statistics.  # RESNET.FROZEN_BN"""

    def __init__(self, num_features: int, eps: float = BASE_RCNN_FPN.resnet.frozen_bn_eps):
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

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # A converted nn.BatchNorm2d checkpoint (torchvision) also carries num_batches_tracked; it means nothing
        # for a frozen layer, so it is dropped instead of being reported as an unexpected key.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"
