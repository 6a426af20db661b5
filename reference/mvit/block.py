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

from layout import mvit as layout
from reference.mvit.attention import PoolingAttention
from reference.mvit.drop_path import drop_path
from reference.mvit.pooling import Pool


class MultiScaleBlock(layout.MultiScaleBlock):
    """The two residual branches above with the reference's attention, pooling and stochastic depth; forward,
    parameters, config checks and keys are ``layout.mvit.MultiScaleBlock``'s."""

    attention_type, pool_type, stochastic_depth = PoolingAttention, Pool, staticmethod(drop_path)
