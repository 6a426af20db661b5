"""The multiscale transformer block (P1 §3.2, Fig. 3; P2 §4; clauses MVIT.SKIP_POOLING, MVIT.CHANNELS_GROW).

Shapes: x [B, N, C_in] on grid thw -> ([B, N', C_out], thw'); N' = 1 + prod(thw') where Q pooling shrinks thw.

Pre-norm, two residual branches:

MViT v1 (``expand_in_attention=False``; attention at C_in):

    a, thw' = Attn(LN1(x))                    attention at C_in, Q pooled to thw'
    x = Skip(x) + DropPath(a)                 Skip = max-pool (kernel s+1, stride s) at a Q-pooled block
    n = LN2(x)
    out = Proj(n) + DropPath(MLP(n))          Proj = Linear(C_in -> C_out) of the *normalized* input where the
                                              channels grow (P1 App. D.1; else the identity on x); the MLP is
                                              Linear(C_in -> 4 C_in), GELU, Linear(4 C_in -> C_out)

MViTv2 (``expand_in_attention=True``; attention at C_out):

    n1 = LN1(x); a, thw' = Attn(n1)           Attn maps C_in -> C_out
    x = Skip(Proj(n1) or x) + DropPath(a)     the channel projection acts on the normalized input
    out = x + DropPath(MLP(LN2(x)))           MLP at C_out: C_out -> 4 C_out -> C_out

The skip pool passes the cls token through. Its grid must equal Q's; a configuration whose skip and Q pooling
disagree on this input (an odd stride with an odd kernel on some lengths) is a ValueError.

Parameters (torchvision's keys): ``norm1``, ``norm2``, ``attn.*``, ``mlp.0`` (fc1), ``mlp.3`` (fc2), ``project``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from reference.mvit.attention import PoolingAttention
from reference.mvit.drop_path import DropPath
from reference.mvit.pooling import Pool
from spec.mvit import MVIT_B_16X4, MViTBlockSpec, MViTConfig, check_tokens, skip_kernel


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
        self.dim, self.dim_out = dim, dim_out
        self.expand_in_attention = expand_in_attention
        self.has_cls_token = has_cls_token
        attn_dim = dim_out if expand_in_attention else dim
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.norm2 = nn.LayerNorm(attn_dim, eps=norm_eps)  # registered before attn: torchvision's key order
        self.attn = PoolingAttention(
            dim, num_heads, dim_out=attn_dim, kernel_q=kernel_q, stride_q=stride_q, kernel_kv=kernel_kv,
            stride_kv=stride_kv, mode=mode, pool_norm=pool_norm, qkv_bias=qkv_bias, norm_eps=norm_eps,
            has_cls_token=has_cls_token, rel_pos_size=rel_pos_size, residual_pool=residual_pool,
            residual_pool_cls=residual_pool_cls, attention_dropout=attention_dropout)
        hidden = int(attn_dim * mlp_ratio)
        # Sequential indices 0..4 keep torchvision's keys: mlp.0 = fc1, mlp.3 = fc2
        self.mlp = nn.Sequential(nn.Linear(attn_dim, hidden), nn.GELU(), nn.Dropout(attention_dropout),
                                 nn.Linear(hidden, dim_out), nn.Dropout(attention_dropout))
        self.drop_path = DropPath(drop_path)
        self.project = nn.Linear(dim, dim_out) if dim != dim_out else None
        stride_q = tuple(stride_q)
        self.pool_skip = None
        if math.prod(stride_q) > 1:  # P1 Fig. 3: the residual is pooled to Q's resolution
            self.pool_skip = Pool(dim_out if expand_in_attention else dim, skip_kernel(stride_q), stride_q,
                                  mode="max", norm=False, has_cls_token=has_cls_token)

    @classmethod
    def from_spec(cls, row: MViTBlockSpec, cfg: MViTConfig, grid: Sequence[int]) -> MultiScaleBlock:
        """The block of one row of the config's table; ``grid`` is its input grid at the configured size."""
        return cls(row.dim_in, row.dim_out, row.num_heads, kernel_q=row.kernel_q, stride_q=row.stride_q,
                   kernel_kv=row.kernel_kv, stride_kv=row.stride_kv, mlp_ratio=cfg.mlp_ratio, qkv_bias=cfg.qkv_bias,
                   norm_eps=cfg.norm_eps, mode=cfg.pool_mode, pool_norm=cfg.pool_norm, has_cls_token=cfg.cls_embed,
                   expand_in_attention=cfg.channel_expansion == "stage_start",
                   rel_pos_size=tuple(grid) if cfg.rel_pos_embed else None, residual_pool=cfg.residual_pool,
                   residual_pool_cls=cfg.residual_pool_cls, drop_path=row.drop_path,
                   attention_dropout=cfg.attention_dropout)

    def forward(self, x: Tensor, thw: tuple[int, int, int]) -> tuple[Tensor, tuple[int, int, int]]:
        thw = check_tokens(x, thw, self.dim, self.has_cls_token)
        n1 = self.norm1(x)
        a, q_thw = self.attn(n1, thw)
        skip = x
        if self.expand_in_attention and self.project is not None:
            skip = self.project(n1)  # MViTv2: the channel projection of the normalized input
        skip_thw = thw
        if self.pool_skip is not None:  # MVIT.SKIP_POOLING (cls passed through: MVIT.CLS_NOT_POOLED)
            skip, skip_thw = self.pool_skip(skip, thw)
        if skip_thw != q_thw:
            raise ValueError(f"thw={thw}: the skip path has grid {skip_thw} but Q pooling gives {q_thw}; these "
                             "strides and kernels cannot handle this input size")
        x = skip + self.drop_path(a)
        if self.expand_in_attention:
            return x + self.drop_path(self.mlp(self.norm2(x))), q_thw
        n2 = self.norm2(x)
        # MVIT.CHANNELS_GROW: where the channels grow, the skip is a projection of the normalized signal (P1)
        skip = self.project(n2) if self.project is not None else x
        return skip + self.drop_path(self.mlp(n2)), q_thw
