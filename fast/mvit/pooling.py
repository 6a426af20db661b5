"""Pooling operator, token-major and channels-last (same math and keys as the reference's ``Pool``).

Input x [B, N, h, d] (token-major, as the fused qkv Linear produces it; a [B, N, C] sequence is one head) on grid
thw, cls first when present. The data tokens are viewed, without a copy, as a [B, h*d, T, H, W] volume whose
channels are innermost (channels-last), and pooled in one call over all heads: ``conv`` is a grouped Conv3d with
the shared depthwise filter repeated per head (groups = h*d), ``avg``/``max`` pool each channel. The result is
read back as tokens [B, N', h, d] without a copy and LayerNorm-ed over d (cls included). No loops over heads.

Keys (``layout.mvit.Pool``): ``pool.weight`` [d, 1, kT, kH, kW] (conv), ``norm_act.0.{weight,bias}``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from layout import mvit as layout


class Pool(layout.Pool):
    """All heads in one channels-last call; parameters, config checks and keys are ``layout.mvit.Pool``'s."""

    def pool_volume(self, volume: Tensor, heads: int) -> Tensor:
        """[B, h*d, T, H, W] -> [B, h*d, T', H', W'], every head with the same operator."""
        if self.mode == "conv":
            weight = self.pool.weight
            if heads > 1:
                weight = weight.repeat(heads, 1, 1, 1, 1)
            return F.conv3d(volume, weight.to(volume.dtype), None, self.stride, self.padding, 1, volume.shape[1])
        if self.mode == "avg":
            # padding counted (count_include_pad): an explicit zero pad, since torch's avg_pool3d refuses
            # inputs shorter than the kernel before padding even where the padded window fits
            pt, ph, pw = self.padding
            return F.avg_pool3d(F.pad(volume, (pw, pw, ph, ph, pt, pt)), self.kernel, self.stride)
        return F.max_pool3d(volume, self.kernel, self.stride, self.padding)

    def forward(self, x: Tensor, thw: tuple[int, int, int]) -> tuple[Tensor, tuple[int, int, int]]:
        one_head = x.dim() == 3
        if one_head:
            x = x.unsqueeze(2)  # [B, N, 1, C]
        b, n, h, d = x.shape
        t, hh, ww = thw
        c = 1 if self.has_cls_token else 0
        data = x[:, c:]  # [B, THW, h, d]; (h, d) are contiguous in the qkv output
        volume = data.reshape(b, t, hh, ww, h * d).permute(0, 4, 1, 2, 3)  # channels-last view, no copy
        # one channel: a standard layout; torch 2.14's conv3d misreads some channels-last tensors with C = 1
        volume = volume.contiguous(memory_format=torch.channels_last_3d if h * d > 1 else torch.contiguous_format)
        pooled = self.pool_volume(volume, h)
        new_thw = tuple(pooled.shape[2:])
        pooled = pooled.permute(0, 2, 3, 4, 1).reshape(b, math.prod(new_thw), h, d)  # a view if channels-last
        out = torch.cat([x[:, :c], pooled], dim=1) if c else pooled
        if self.norm_act is not None:
            ln = self.norm_act[0]
            out = F.layer_norm(out, (d,), ln.weight, ln.bias, ln.eps)
        if one_head:
            out = out.squeeze(2)
        return out, new_thw  # type: ignore[return-value]

