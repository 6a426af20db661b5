"""Multiscale block, fast path (same math and keys as the reference's ``MultiScaleBlock``).

The skip max-pool reads the data tokens as a channels-last volume (no transpose copy); stochastic depth is one
per-sample mask. Grid checks are the reference's (a skip/Q grid mismatch is a ValueError).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fast.mvit.attention import PoolingAttention
from fast.mvit.pooling import Pool
from layout import mvit as layout
from spec.mvit import check_tokens


def drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Stochastic depth: drop a sample's branch with probability p in training, rescale by 1 / (1 - p)."""
    if not training or p == 0.0:
        return x
    keep = 1.0 - p
    mask = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
    return x * mask / keep


class MultiScaleBlock(layout.MultiScaleBlock):
    """Fast forward; parameters, config checks and keys are ``layout.mvit.MultiScaleBlock``'s (``self.drop_path``
    is the stochastic-depth probability)."""

    attention_type = PoolingAttention
    pool_type = Pool

    def _mlp(self, x: Tensor) -> Tensor:
        fc1, fc2 = self.mlp[0], self.mlp[3]
        x = F.gelu(F.linear(x, fc1.weight, fc1.bias))
        x = self.mlp[2](x)
        return self.mlp[4](F.linear(x, fc2.weight, fc2.bias))

    def forward(self, x: Tensor, thw: tuple[int, int, int]) -> tuple[Tensor, tuple[int, int, int]]:
        thw = check_tokens(x, thw, self.dim, self.has_cls_token)
        n1 = self.norm1(x)
        a, q_thw = self.attn(n1, thw)
        skip = self.project(n1) if self.expand_in_attention and self.project is not None else x
        skip_thw = thw
        if self.pool_skip is not None:
            skip, skip_thw = self.pool_skip(skip, thw)
        if skip_thw != q_thw:
            raise ValueError(f"thw={thw}: the skip path has grid {skip_thw} but Q pooling gives {q_thw}; these "
                             "strides and kernels cannot handle this input size")
        x = skip + drop_path(a, self.drop_path, self.training)
        if self.expand_in_attention:
            return x + drop_path(self._mlp(self.norm2(x)), self.drop_path, self.training), q_thw
        n2 = self.norm2(x)
        skip = self.project(n2) if self.project is not None else x
        return skip + drop_path(self._mlp(n2), self.drop_path, self.training), q_thw
