"""Separable space/time positional embeddings with a class token (P1 §3.3, Table 11; clause MVIT.POS_EMBED).

Parameters (torchvision's names; built by ``layout.mvit.PositionalEncoding``):

- ``class_token`` [D]                 the learned cls token, prepended to the data tokens;
- ``spatial_pos`` [H0*W0, D]          one vector per spatial position (v1 only);
- ``temporal_pos`` [T0, D]            one vector per frame position (v1 only);
- ``class_pos`` [D]                   the cls token's position vector (v1 only).

Data token (t, h, w) gets temporal_pos[t] + spatial_pos[h*W + w]; the cls token gets class_pos. (T0, H0, W0) is
the token grid of the configured input size. Another grid (T, H, W) uses the tables resized to it: spatial
bicubic (align_corners=False, as timm resamples ViT embeddings), temporal linear (P1's 64x3 model interpolates
its temporal embedding). Shapes: tokens [B, T*H*W, D] -> [B, 1 + T*H*W, D].

MViTv2 (``absolute=False``) has no position tables, only the class token. Without a cls token
(``cls_token=False``) there is neither ``class_token`` nor ``class_pos`` and the output has T*H*W tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from layout import mvit as layout
from spec.mvit import MVIT_B_16X4


def resize_spatial_table(table: Tensor, old_hw: tuple[int, int], new_hw: tuple[int, int],
                         mode: str = MVIT_B_16X4.pos_interp_spatial) -> Tensor:
    """[H0*W0, D] -> [H*W, D]: the table seen as a D-channel H0 x W0 image, resized."""
    if tuple(old_hw) == tuple(new_hw):
        return table
    image = table.t().reshape(1, table.shape[1], old_hw[0], old_hw[1])  # [1, D, H0, W0]
    image = F.interpolate(image, size=tuple(new_hw), mode=mode, align_corners=False)
    return image.reshape(table.shape[1], -1).t()


def resize_temporal_table(table: Tensor, new_t: int, mode: str = MVIT_B_16X4.pos_interp_temporal) -> Tensor:
    """[T0, D] -> [T, D]: the table seen as a D-channel signal of length T0, resized."""
    if table.shape[0] == new_t:
        return table
    signal = table.t().unsqueeze(0)  # [1, D, T0]
    return F.interpolate(signal, size=new_t, mode=mode, align_corners=False)[0].t()


class PositionalEncoding(layout.PositionalEncoding):
    """The added positions above; parameters and keys are ``layout.mvit.PositionalEncoding``'s."""

    def table(self, thw: tuple[int, int, int]) -> Tensor:
        """The added embedding [1 + T*H*W, D] for grid thw: class_pos, then temporal[t] + spatial[h, w]."""
        t, h, w = thw
        spatial = resize_spatial_table(self.spatial_pos, self.grid[1:], (h, w), self.spatial_mode)  # [H*W, D]
        temporal = resize_temporal_table(self.temporal_pos, t, self.temporal_mode)  # [T, D]
        data = (temporal[:, None, :] + spatial[None, :, :]).reshape(t * h * w, -1)  # [T*H*W, D], t slowest
        if not self.cls_token:
            return data
        return torch.cat([self.class_pos[None, :], data], dim=0)

    def forward(self, tokens: Tensor, thw: tuple[int, int, int]) -> Tensor:
        x = tokens
        if self.cls_token:
            cls = self.class_token.expand(tokens.shape[0], 1, -1)  # [B, 1, D]
            x = torch.cat([cls, tokens], dim=1)  # [B, 1 + THW, D]
        if self.absolute:
            x = x + self.table(thw)
        return x
