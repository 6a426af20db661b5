"""Multi-head pooling attention, fast path (same contract and keys as the reference's ``PoolingAttention``).

x [B, N, C_in] on grid thw -> (out [B, N_q, C_out], thw_q). The fused qkv Linear's output [B, N, 3, h, d] is split
into token-major views (no head permute); each of Q, K, V is pooled for all heads in one channels-last call
(pooling.py); attention runs in ``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient
kernels on CUDA, the fused flash kernel on CPU) with batched heads; MViTv2's decomposed relative positions enter as
an additive float mask (zero on the cls row and column). No Python loops over tokens or heads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fast.mvit.pooling import Pool
from fast.mvit.rel_pos import rel_pos_bias
from layout import mvit as layout
from layout.precision import active_autocast_dtype
from spec.mvit import check_tokens


class PoolingAttention(layout.PoolingAttention):
    """SDPA over pooled Q, K, V; parameters, config checks and keys are ``layout.mvit.PoolingAttention``'s."""

    pool_type = Pool

    def forward(self, x: Tensor, thw: tuple[int, int, int]) -> tuple[Tensor, tuple[int, int, int]]:
        thw = check_tokens(x, thw, self.dim, self.has_cls_token)
        b, n, _ = x.shape
        h, d, c = self.num_heads, self.head_dim, 1 if self.has_cls_token else 0
        q, k, v = self.qkv(x).view(b, n, 3, h, d).unbind(2)  # token-major views [B, N, h, d]
        q, k, v, q_thw, k_thw = self.pool(q, k, v, thw)
        mask = None
        if self.rel_pos:
            bias = rel_pos_bias(q[:, c:], q_thw, k_thw, self.rel_pos_h, self.rel_pos_w, self.rel_pos_t)
            mask = F.pad(bias, (c, 0, c, 0)) if c else bias  # zero bias on the cls row and column
        dtype = _attention_dtype(q, k, v)  # one dtype for SDPA (LayerNorm-ed K/V are float32 under autocast)
        qh, kh, vh = (t.transpose(1, 2).to(dtype) for t in (q, k, v))  # [B, h, N, d] views
        out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=None if mask is None else mask.to(dtype))
        out = out.transpose(1, 2)  # [B, N_q, h, d]
        if self.residual_pool:  # MViTv2: + pooled Q (data tokens unless residual_pool_cls)
            start = 0 if self.residual_pool_cls else c
            out = out + (F.pad(q[:, start:], (0, 0, 0, 0, start, 0)) if start else q).to(out.dtype)
        out = out.reshape(b, out.shape[1], h * d)
        return self.project(out), q_thw


def _attention_dtype(*tensors: Tensor) -> torch.dtype:
    low = active_autocast_dtype(tensors[0].device)
    if low is not None:
        return low
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype
