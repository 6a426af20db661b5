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

Parameters (torchvision's keys; built by ``layout.mvit.MultiScaleBlock``): ``norm1``, ``norm2``, ``attn.*``,
``mlp.0`` (fc1), ``mlp.3`` (fc2), ``project``.
"""

from __future__ import annotations

from torch import Tensor

from layout import mvit as layout
from reference.mvit.attention import PoolingAttention
from reference.mvit.drop_path import drop_path
from reference.mvit.pooling import Pool
from spec.mvit import check_tokens


class MultiScaleBlock(layout.MultiScaleBlock):
    """The two residual branches above; parameters, config checks and keys are ``layout.mvit.MultiScaleBlock``'s
    (``self.drop_path`` is the stochastic-depth probability)."""

    attention_type = PoolingAttention
    pool_type = Pool

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
        x = skip + drop_path(a, self.drop_path, self.training)
        if self.expand_in_attention:
            return x + drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training), q_thw
        n2 = self.norm2(x)
        # MVIT.CHANNELS_GROW: where the channels grow, the skip is a projection of the normalized signal (P1)
        skip = self.project(n2) if self.project is not None else x
        return skip + drop_path(self.mlp(n2), self.drop_path, self.training), q_thw
