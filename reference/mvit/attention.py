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

Parameters (torchvision's keys; built by ``layout.mvit.PoolingAttention``): ``qkv``, ``project.0``,
``pool_{q,k,v}.pool`` (conv), ``pool_{q,k,v}.norm_act.0``, ``rel_pos_{h,w,t}`` [table length, d] (MViTv2).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from layout import mvit as layout
from reference.mvit.pooling import Pool
from reference.mvit.rel_pos import rel_pos_bias
from spec.mvit import check_tokens


class PoolingAttention(layout.PoolingAttention):
    """Steps 1-5 above; parameters, config checks and keys are ``layout.mvit.PoolingAttention``'s."""

    pool_type = Pool

    def forward(self, x: Tensor, thw: tuple[int, int, int]) -> tuple[Tensor, tuple[int, int, int]]:
        thw = check_tokens(x, thw, self.dim, self.has_cls_token)
        b, n, _ = x.shape
        h, d = self.num_heads, self.head_dim
        # 1. one Linear gives Q, K, V for all heads: [B, N, 3, h, d] -> three [B, h, N, d]
        q, k, v = self.qkv(x).reshape(b, n, 3, h, d).permute(2, 0, 3, 1, 4)
        # 2. pool K and V (MVIT.KV_POOLING), then Q (MVIT.Q_POOLING); the cls token is never pooled
        q, k, v, q_thw, k_thw = self.pool(q, k, v, thw)
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
