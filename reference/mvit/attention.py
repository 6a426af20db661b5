"""Multi-head pooling attention (P1 §3.1; clauses MVIT.ATTENTION, MVIT.Q_POOLING, MVIT.KV_POOLING,
MVIT.CLS_NOT_POOLED, MVIT.REL_POS).

Shapes: x [B, N, C_in] with N = 1 + T*H*W (cls first) on grid thw = (T, H, W) -> (out [B, N_q, C_out], thw_q),
N_q = 1 + T_q*H_q*W_q. h heads of d = C_out / h channels.

1. Q, K, V = x W_qkv (one Linear C_in -> 3*C_out; output columns are [Q heads | K heads | V heads], head-major);
2. K and V are pooled with P(.; k_kv, s_kv), then Q with P(.; k_q, s_q) (pooling.py); the output grid is Q's;
3. logits = Q K^T / sqrt(d) per head (+ decomposed relative positions E for MViTv2, rel_pos.py);
4. out = softmax(logits) V; MViTv2 residual pooling adds the pooled Q (data tokens only, by default);
5. heads are concatenated and projected by a Linear C_out -> C_out.

A pooling is present when its kernel is given and kernel or stride is larger than 1 (torchvision's rule); a
kernel of None means "no pooling" and then the stride must be 1.

Parameters (torchvision's keys): ``qkv``, ``project.0``, ``pool_{q,k,v}.pool`` (conv), ``pool_{q,k,v}.norm_act.0``,
``rel_pos_{h,w,t}`` [table length, d] (MViTv2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reference.mvit.pooling import Pool
from reference.mvit.rel_pos import rel_pos_bias
from spec.mvit import MVIT_B_16X4, MVIT_V2_S, check_tokens


def _pooling(kernel: Sequence[int] | None, stride: Sequence[int], what: str) -> tuple | None:
    stride = tuple(stride)
    if kernel is None:
        if math.prod(stride) > 1:
            raise ValueError(f"{what} stride {stride} needs a pooling kernel (got kernel None)")
        return None
    kernel = tuple(kernel)
    return (kernel, stride) if math.prod(kernel) > 1 or math.prod(stride) > 1 else None


class PoolingAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, *, dim_out: int | None = None,
                 kernel_q: Sequence[int] | None = None, stride_q: Sequence[int] = (1, 1, 1),
                 kernel_kv: Sequence[int] | None = MVIT_B_16X4.pool_kernel, stride_kv: Sequence[int] = (1, 1, 1),
                 mode: str = MVIT_B_16X4.pool_mode, pool_norm: bool = MVIT_B_16X4.pool_norm,
                 qkv_bias: bool = MVIT_B_16X4.qkv_bias, norm_eps: float = MVIT_B_16X4.norm_eps,
                 has_cls_token: bool = MVIT_B_16X4.cls_embed,
                 rel_pos_size: Sequence[int] | None = None,
                 residual_pool: bool = MVIT_B_16X4.residual_pool,
                 residual_pool_cls: bool = MVIT_B_16X4.residual_pool_cls,
                 attention_dropout: float = MVIT_B_16X4.attention_dropout):
        super().__init__()
        dim_out = dim if dim_out is None else dim_out
        if num_heads < 1 or dim_out % num_heads:
            raise ValueError(f"dim_out={dim_out} must be divisible by num_heads={num_heads}")
        self.dim, self.dim_out, self.num_heads = dim, dim_out, num_heads
        self.head_dim = dim_out // num_heads
        self.scale = self.head_dim ** -0.5
        self.has_cls_token = has_cls_token
        self.residual_pool, self.residual_pool_cls = residual_pool, residual_pool_cls

        self.qkv = nn.Linear(dim, 3 * dim_out, bias=qkv_bias)
        project: list[nn.Module] = [nn.Linear(dim_out, dim_out)]
        if attention_dropout > 0:
            project.append(nn.Dropout(attention_dropout))
        self.project = nn.Sequential(*project)

        pool_args = dict(mode=mode, norm=pool_norm, norm_eps=norm_eps, has_cls_token=has_cls_token)
        q_pool = _pooling(kernel_q, stride_q, "Q")
        kv_pool = _pooling(kernel_kv, stride_kv, "K/V")
        self.pool_q = Pool(self.head_dim, *q_pool, **pool_args) if q_pool else None
        self.pool_k = Pool(self.head_dim, *kv_pool, **pool_args) if kv_pool else None
        self.pool_v = Pool(self.head_dim, *kv_pool, **pool_args) if kv_pool else None

        # MViTv2 tables, sized for the block's configured input grid (tv: size = max(H, W), q = size // s_q,
        # kv = size // s_kv on the H axis); other grids resize them at run time (rel_pos.py).
        self.rel_pos = rel_pos_size is not None
        if self.rel_pos:
            t, *hw = (int(n) for n in rel_pos_size)
            size = max(hw)
            q_size = size // (q_pool[1][1] if q_pool else 1)
            kv_size = size // (kv_pool[1][1] if kv_pool else 1)
            spatial = 2 * max(q_size, kv_size, 1) - 1  # >= 1 row where torchvision would build an empty table
            self.rel_pos_h = nn.Parameter(torch.zeros(spatial, self.head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(spatial, self.head_dim))
            self.rel_pos_t = nn.Parameter(torch.zeros(2 * t - 1, self.head_dim))
            for table in (self.rel_pos_h, self.rel_pos_w, self.rel_pos_t):
                nn.init.trunc_normal_(table, std=MVIT_V2_S.init_std)

    def forward(self, x: Tensor, thw: tuple[int, int, int]) -> tuple[Tensor, tuple[int, int, int]]:
        thw = check_tokens(x, thw, self.dim, self.has_cls_token)
        b, n, _ = x.shape
        h, d = self.num_heads, self.head_dim
        # 1. one Linear gives Q, K, V for all heads: [B, N, 3, h, d] -> three [B, h, N, d]
        q, k, v = self.qkv(x).reshape(b, n, 3, h, d).permute(2, 0, 3, 1, 4)
        # 2. pool K and V (MVIT.KV_POOLING), then Q (MVIT.Q_POOLING); the cls token is never pooled
        k_thw = q_thw = thw
        if self.pool_k is not None:
            k, k_thw = self.pool_k(k, thw)
            v, _ = self.pool_v(v, thw)
        if self.pool_q is not None:
            q, q_thw = self.pool_q(q, thw)
        # 3. scaled dot-product logits, one [N_q, N_kv] matrix per head (MVIT.ATTENTION)
        logits = (q @ k.transpose(-2, -1)) * self.scale
        c = 1 if self.has_cls_token else 0
        if self.rel_pos:  # MVIT.REL_POS: + E on data rows and columns; zero on the cls row and column
            bias = rel_pos_bias(q[:, :, c:], q_thw, k_thw, self.rel_pos_h, self.rel_pos_w, self.rel_pos_t)
            logits = logits + F.pad(bias, (c, 0, c, 0))
        # 4. attention weights and their average of V
        out = logits.softmax(dim=-1) @ v  # [B, h, N_q, d]
        if self.residual_pool:  # MViTv2: Z = Attn(Q, K, V) + Q, the cls token's row only if residual_pool_cls
            start = 0 if self.residual_pool_cls else c
            out = out + F.pad(q[:, :, start:], (0, 0, start, 0))
        # 5. concatenate the heads and project
        out = out.transpose(1, 2).reshape(b, out.shape[2], h * d)
        return self.project(out), q_thw
