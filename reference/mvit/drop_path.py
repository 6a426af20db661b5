"""Stochastic depth ("drop path"): drop a whole residual branch per sample while training (P1 App. D.1).

Shapes: x [B, ...]. In eval mode, or with p = 0, it is the identity. In training each sample's branch is kept with
probability 1 - p and then scaled by 1 / (1 - p), so its expectation is unchanged (torchvision StochasticDepth
"row" mode).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class DropPath(nn.Module):
    def __init__(self, p: float = 0.0):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop path probability p must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"
