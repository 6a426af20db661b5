"""Pooling attention of detectron2's MViTv2 (d2-spec §4.4; clauses MVITDET.ATTENTION, MVITDET.WINDOWS,
MVITDET.REL_POS).

Shapes: x [N, H, W, dim] -> [N, H', W', dim_out], H' = floor((H + 2 - 3) / s_q) + 1 (MVIT.POOLED_LENGTH).

1. project: qkv = Linear(dim -> 3 dim_out), read as [N, H, W, 3, h, d]; q, k, v become [N*h, H, W, d];
2. pool: each of q, k, v is pooled by its depthwise 3x3 conv (padding 1, one d-channel filter shared by the heads;
   q at stride s_q, k and v at s_kv), then LayerNorm-ed over d;
3. window (window blocks): q into q_window tiles, k and v into kv_window tiles (window.py; zero padding);
4. attend, per window (or over the whole map): softmax(q k^T / sqrt(d) + E) v, E the decomposed relative
   positions of the unscaled q (rel_pos.py);
5. reassemble: tiles back, padding cropped; residual pooling adds the pooled q (step 2's, the whole map); heads back
   to channels [N, H', W', h*d] (head-major); proj Linear(dim_out -> dim_out).

Parameters and keys: ``layout.mvit_det.PoolingAttention``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from layout import mvit_det as layout
from reference.mvit.pooling import windows as pooling_windows
from reference.mvit_det.rel_pos import rel_pos_bias
from reference.mvit_det.window import partition, unpartition


def pool(x: Tensor, conv: torch.nn.Conv2d, norm: torch.nn.LayerNorm) -> Tensor:
    """[B, H, W, d] -> [B, H', W', d]: every k x k window (zero padding k // 2, the conv's stride) summed with the
    channel's filter, then LayerNorm over d (step 2)."""
    (kh, kw), (s, _), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
    volume = x.permute(0, 3, 1, 2).unsqueeze(2)  # [B, d, 1, H, W]: a one-frame volume
    tiles = pooling_windows(volume, (1, kh, kw), (1, s, s), (0, ph, pw), 0.0)  # [B, d, 1, H', W', kh*kw]
    filters = conv.weight.reshape(conv.weight.shape[0], -1)  # [d, kh*kw]
    pooled = torch.einsum("bdthwk,dk->bthwd", tiles, filters)[:, 0]  # [B, H', W', d]
    return norm(pooled)


def attend(q: Tensor, k: Tensor, v: Tensor, q_hw: tuple[int, int], k_hw: tuple[int, int], scale: float,
           attn: PoolingAttention) -> Tensor:
    """q [B, Nq, d], k and v [B, Nk, d] -> [B, Nq, d]: softmax(q k^T * scale + E) v (step 4)."""
    logits = (q * scale) @ k.transpose(-2, -1)  # [B, Nq, Nk]
    if attn.use_rel_pos:
        logits = logits + rel_pos_bias(q, q_hw, k_hw, attn.rel_pos_h, attn.rel_pos_w, attn.rel_pos_interp)
    return logits.softmax(dim=-1) @ v


class PoolingAttention(layout.PoolingAttention):
    """The five steps above; parameters and keys are ``layout.mvit_det.PoolingAttention``'s."""

    def forward(self, x: Tensor) -> Tensor:
        n, h, w, _ = x.shape
        heads, d = self.num_heads, self.head_dim
        # 1. project and split heads: [N, H, W, 3, h, d] -> 3 x [N*h, H, W, d]
        qkv = self.qkv(x).reshape(n, h, w, 3, heads, d).permute(3, 0, 4, 1, 2, 5).reshape(3, n * heads, h, w, d)
        q, k, v = qkv.unbind(0)
        # 2. pool and normalise
        q = pool(q, self.pool_q, self.norm_q)
        k = pool(k, self.pool_k, self.norm_k)
        v = pool(v, self.pool_v, self.norm_v)
        pooled_q = q  # [N*h, H', W', d], for residual pooling
        out_hw = tuple(q.shape[1:3])
        # 3. windows (or the whole map)
        if self.q_window:
            q, padded = partition(q, self.q_window)
            k, _ = partition(k, self.kv_window)
            v, _ = partition(v, self.kv_window)
        q_hw, k_hw = tuple(q.shape[1:3]), tuple(k.shape[1:3])
        # 4. attend in every window
        out = attend(q.flatten(1, 2), k.flatten(1, 2), v.flatten(1, 2), q_hw, k_hw, self.scale, self)
        out = out.reshape(-1, q_hw[0], q_hw[1], d)
        # 5. reassemble
        if self.q_window:
            out = unpartition(out, self.q_window, padded, out_hw)
        if self.residual_pooling:
            out = out + pooled_q
        out = out.reshape(n, heads, *out_hw, d).permute(0, 2, 3, 1, 4).reshape(n, *out_hw, heads * d)
        return self.proj(out)
