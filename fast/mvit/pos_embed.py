"""cls token and separable space/time positions, fast path (same definition and keys as the reference).

The data tokens get the broadcast sum of the (resized) temporal and spatial tables in one add, without building
the [T*H*W, D] table first; the cls token gets class_token + class_pos.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from layout import mvit as layout


class PositionalEncoding(layout.PositionalEncoding):
    """One broadcast add; parameters and keys are ``layout.mvit.PositionalEncoding``'s."""

    def _spatial(self, hw: tuple[int, int]) -> Tensor:
        if hw == self.grid[1:]:
            return self.spatial_pos
        d = self.spatial_pos.shape[1]
        image = self.spatial_pos.t().reshape(1, d, *self.grid[1:])
        return F.interpolate(image, size=hw, mode=self.spatial_mode, align_corners=False).reshape(d, -1).t()

    def _temporal(self, t: int) -> Tensor:
        if t == self.grid[0]:
            return self.temporal_pos
        signal = self.temporal_pos.t().unsqueeze(0)
        return F.interpolate(signal, size=t, mode=self.temporal_mode, align_corners=False)[0].t()

    def forward(self, tokens: Tensor, thw: tuple[int, int, int]) -> Tensor:
        b, n, d = tokens.shape
        t, h, w = thw
        if self.absolute:
            data = tokens.view(b, t, h * w, d) + (self._temporal(t)[:, None, :] + self._spatial((h, w))[None])
            data = data.view(b, n, d)
        else:
            data = tokens
        if not self.cls_token:
            return data
        cls = self.class_token + self.class_pos if self.absolute else self.class_token
        return torch.cat([cls.to(data.dtype).expand(b, 1, d), data], dim=1)
