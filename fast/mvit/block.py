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

    attention_type, pool_type, stochastic_depth = PoolingAttention, Pool, staticmethod(drop_path)

    def run_mlp(self, x: Tensor) -> Tensor:
        fc1, fc2 = self.mlp[0], self.mlp[3]
        x = F.gelu(F.linear(x, fc1.weight, fc1.bias))
        x = self.mlp[2](x)
        return self.mlp[4](F.linear(x, fc2.weight, fc2.bias))
