"""Multiscale block, fast path (same math and keys as the reference's ``MultiScaleBlock``).

The skip max-pool reads the data tokens as a channels-last volume (no transpose copy); stochastic depth is one
per-sample mask. Grid checks are the reference's (a skip/Q grid mismatch is a ValueError).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fast.mvit.attention import PoolingAttention
from fast.mvit.pooling import Pool
from spec.mvit import MVIT_B_16X4, MViTBlockSpec, MViTConfig, check_tokens, skip_kernel


def drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Stochastic depth: drop a sample's branch with probability p in training, rescale by 1 / (1 - p)."""
    if not training or p == 0.0:
        return x
    keep = 1.0 - p
    mask = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
    return x * mask / keep


class MultiScaleBlock(nn.Module):
    def __init__(self, dim: int, dim_out: int, num_heads: int, *,
                 kernel_q: Sequence[int] | None = None, stride_q: Sequence[int] = (1, 1, 1),
                 kernel_kv: Sequence[int] | None = MVIT_B_16X4.pool_kernel, stride_kv: Sequence[int] = (1, 1, 1),
                 mlp_ratio: float = MVIT_B_16X4.mlp_ratio, qkv_bias: bool = MVIT_B_16X4.qkv_bias,
                 norm_eps: float = MVIT_B_16X4.norm_eps, mode: str = MVIT_B_16X4.pool_mode,
                 pool_norm: bool = MVIT_B_16X4.pool_norm, has_cls_token: bool = MVIT_B_16X4.cls_embed,
                 expand_in_attention: bool = False, rel_pos_size: Sequence[int] | None = None,
                 residual_pool: bool = MVIT_B_16X4.residual_pool,
                 residual_pool_cls: bool = MVIT_B_16X4.residual_pool_cls,
                 drop_path: float = 0.0, attention_dropout: float = MVIT_B_16X4.attention_dropout):
        super().__init__()
        if not 0.0 <= drop_path < 1.0:
            raise ValueError(f"drop_path must be in [0, 1), got {drop_path}")
        self.dim, self.dim_out = dim, dim_out
        self.expand_in_attention = expand_in_attention
        self.has_cls_token = has_cls_token
        self.drop_path = drop_path
        attn_dim = dim_out if expand_in_attention else dim
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.norm2 = nn.LayerNorm(attn_dim, eps=norm_eps)  # registered before attn: torchvision's key order
        self.attn = PoolingAttention(
            dim, num_heads, dim_out=attn_dim, kernel_q=kernel_q, stride_q=stride_q, kernel_kv=kernel_kv,
            stride_kv=stride_kv, mode=mode, pool_norm=pool_norm, qkv_bias=qkv_bias, norm_eps=norm_eps,
            has_cls_token=has_cls_token, rel_pos_size=rel_pos_size, residual_pool=residual_pool,
            residual_pool_cls=residual_pool_cls, attention_dropout=attention_dropout)
        hidden = int(attn_dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(attn_dim, hidden), nn.GELU(), nn.Dropout(attention_dropout),
                                 nn.Linear(hidden, dim_out), nn.Dropout(attention_dropout))
        self.project = nn.Linear(dim, dim_out) if dim != dim_out else None
        stride_q = tuple(stride_q)
        self.pool_skip = None
        if math.prod(stride_q) > 1:
            self.pool_skip = Pool(dim_out if expand_in_attention else dim, skip_kernel(stride_q), stride_q,
                                  mode="max", norm=False, has_cls_token=has_cls_token)

    @classmethod
    def from_spec(cls, row: MViTBlockSpec, cfg: MViTConfig, grid: Sequence[int]) -> MultiScaleBlock:
        return cls(row.dim_in, row.dim_out, row.num_heads, kernel_q=row.kernel_q, stride_q=row.stride_q,
                   kernel_kv=row.kernel_kv, stride_kv=row.stride_kv, mlp_ratio=cfg.mlp_ratio, qkv_bias=cfg.qkv_bias,
                   norm_eps=cfg.norm_eps, mode=cfg.pool_mode, pool_norm=cfg.pool_norm, has_cls_token=cfg.cls_embed,
                   expand_in_attention=cfg.channel_expansion == "stage_start",
                   rel_pos_size=tuple(grid) if cfg.rel_pos_embed else None, residual_pool=cfg.residual_pool,
                   residual_pool_cls=cfg.residual_pool_cls, drop_path=row.drop_path,
                   attention_dropout=cfg.attention_dropout)

    def _mlp(self, x: Tensor) -> Tensor:
        fc1, fc2 = self.mlp[0], self.mlp[3]
        x = F.gelu(F.linear(x, fc1.weight, fc1.bias))
        x = self.mlp[2](x)
        return self.mlp[4](F.linear(x, fc2.weight, fc2.bias))

    def forward(self, x: Tensor, thw: tuple[int, int, int]) -> tuple[Tensor, tuple[int, int, int]]:
        thw = check_tokens(x, thw, self.dim, self.has_cls_token)
        n1 = self.norm1(x)
        a, q_thw = self.attn(n1, thw)
        skip = self.project(n1) if self.expand_in_attention and self.project is not None else x
        skip_thw = thw
        if self.pool_skip is not None:
            skip, skip_thw = self.pool_skip(skip, thw)
        if skip_thw != q_thw:
            raise ValueError(f"thw={thw}: the skip path has grid {skip_thw} but Q pooling gives {q_thw}; these "
                             "strides and kernels cannot handle this input size")
        x = skip + drop_path(a, self.drop_path, self.training)
        if self.expand_in_attention:
            return x + drop_path(self._mlp(self.norm2(x)), self.drop_path, self.training), q_thw
        n2 = self.norm2(x)
        skip = self.project(n2) if self.project is not None else x
        return skip + drop_path(self._mlp(n2), self.drop_path, self.training), q_thw
