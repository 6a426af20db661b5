"""The pooling operator P(.; Theta) of pooling attention (P1 §3.1; clauses MVIT.POOLED_LENGTH, MVIT.CLS_NOT_POOLED).

Shapes: x [B, h, N, d] (h heads of d channels; a plain [B, N, C] sequence is one head of C channels) with
N = 1 + T*H*W when a cls token leads the sequence. Output [B, h, N', d] with N' = 1 + T'*H'*W' and
L' = floor((L + 2p - k) / s) + 1 per axis, p = k // 2.

Steps (torchvision ``Pool``):

1. split off the cls token (it is never pooled);
2. view each head's data tokens as a d-channel (T, H, W) volume and pad it by p on both sides of every axis;
3. cut the k_T x k_H x k_W windows that start every s positions, and reduce each window per channel:
   ``conv`` a weighted sum with one learned filter per channel (a depthwise Conv3d without bias) that all heads
   share; ``avg`` the mean with the zero padding counted; ``max`` the maximum (padding never wins);
4. flatten back and put the cls token in front;
5. LayerNorm over d on every token, cls included (conv pooling; P1 Table 15 "conv" = conv + LN).

Parameters (torchvision's keys; built by ``layout.mvit.Pool``): ``pool.weight`` [d, 1, k_T, k_H, k_W] (conv only),
``norm_act.0.{weight,bias}``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from layout import mvit as layout


def windows(volume: Tensor, kernel: tuple[int, int, int], stride: tuple[int, int, int],
            padding: tuple[int, int, int], fill: float) -> Tensor:
    """[N, d, T, H, W] -> [N, d, T', H', W', kT*kH*kW]: every pooling window, padded with `fill`."""
    pt, ph, pw = padding
    padded = F.pad(volume, (pw, pw, ph, ph, pt, pt), value=fill)
    for axis, (k, s) in enumerate(zip(kernel, stride)):
        padded = padded.unfold(2 + axis, k, s)  # a new trailing window axis per spatial axis
    return padded.flatten(-3)


class Pool(layout.Pool):
    """P(.; Theta) over every head; parameters, config checks and keys are ``layout.mvit.Pool``'s."""

    def reduce(self, volume: Tensor) -> Tensor:
        """[N, d, T, H, W] -> [N, d, T', H', W']: step 3."""
        if self.mode == "conv":
            w = windows(volume, self.kernel, self.stride, self.padding, 0.0)
            filters = self.pool.weight.reshape(self.pool.weight.shape[0], -1)  # [d, kT*kH*kW]
            return torch.einsum("ndthwk,dk->ndthw", w, filters)
        if self.mode == "avg":
            return windows(volume, self.kernel, self.stride, self.padding, 0.0).mean(dim=-1)
        return windows(volume, self.kernel, self.stride, self.padding, float("-inf")).amax(dim=-1)

    def forward(self, x: Tensor, thw: tuple[int, int, int]) -> tuple[Tensor, tuple[int, int, int]]:
        one_head = x.dim() == 3
        if one_head:  # [B, N, C] -> [B, 1, N, C]
            x = x.unsqueeze(1)
        b, h, n, d = x.shape
        t, hh, ww = thw
        # 1. the cls token is split off and never pooled
        if self.has_cls_token:
            cls, data = x[:, :, :1, :], x[:, :, 1:, :]
        else:
            cls, data = None, x
        # 2. every head's tokens as a d-channel volume: [B*h, d, T, H, W] (heads share the operator)
        volume = data.transpose(2, 3).reshape(b * h, d, t, hh, ww)
        # 3. pool every window
        pooled = self.reduce(volume)
        new_thw = tuple(pooled.shape[2:])
        # 4. back to tokens, cls in front
        data = pooled.reshape(b, h, d, math.prod(new_thw)).transpose(2, 3)  # [B, h, T'H'W', d]
        x = data if cls is None else torch.cat([cls, data], dim=2)
        # 5. LayerNorm on every pooled token, cls included
        if self.norm_act is not None:
            x = self.norm_act(x)
        if one_head:
            x = x.squeeze(1)
        return x, new_thw  # type: ignore[return-value]

