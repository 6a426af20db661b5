"""Multi-head pooling attention, fast path (same contract and keys as the reference's ``PoolingAttention``).

x [B, N, C_in] on grid thw -> (out [B, N_q, C_out], thw_q). The fused qkv Linear's output [B, N, 3, h, d] is split
into token-major views (no head permute); each of Q, K, V is pooled for all heads in one channels-last call
(pooling.py); attention runs in ``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient
kernels on CUDA, the fused flash kernel on CPU) with batched heads; MViTv2's decomposed relative positions enter as
an additive float mask (zero on the cls row and column). No Python loops over tokens or heads.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fast.mvit.pooling import Pool
from fast.mvit.rel_pos import rel_pos_bias
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
        self.has_cls_token = has_cls_token
        self.cls = 1 if has_cls_token else 0
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
        h, d, c = self.num_heads, self.head_dim, self.cls
        q, k, v = self.qkv(x).view(b, n, 3, h, d).unbind(2)  # token-major views [B, N, h, d]
        k_thw = q_thw = thw
        if self.pool_k is not None:
            k, k_thw = self.pool_k(k, thw)
            v, _ = self.pool_v(v, thw)
        if self.pool_q is not None:
            q, q_thw = self.pool_q(q, thw)
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
    device = tensors[0].device.type
    try:
        autocast = torch.is_autocast_enabled(device)
    except RuntimeError:  # a device type without autocast (meta)
        autocast = False
    if autocast:
        return torch.get_autocast_dtype(device)
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype
