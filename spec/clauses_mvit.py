"""MViT clauses (issue 6), registered into ``spec.clauses.CLAUSES`` on import.

Sources: ``P1`` / ``P2`` the MViT / MViTv2 papers, ``tv`` torchvision 0.29.1 models/video/mvit.py, ``mvit-notes``
spec/text/mvit.md. Numbers live in ``spec.mvit``.
"""

from __future__ import annotations

from spec.clauses import register

_ATTN = ("PoolingAttention",)
_BLOCK = ("MultiScaleBlock",)
_MODEL = ("MViT",)

register("MVIT.POOLED_LENGTH", "a pooling window (kernel k, stride s, padding p) gives floor((L + 2p - k)/s) + 1 "
         "positions per axis, for the patch embedding, Q/K/V pooling and the skip pooling alike",
         "P1 §3.1", ("PoolingAttention", "MultiScaleBlock"))
register("MVIT.Q_POOLING", "pooling Q with stride s_Q shrinks the output sequence to 1 + the pooled grid; the "
         "output grid is what the block returns", "P1 §3.1", _ATTN)
register("MVIT.KV_POOLING", "pooling K and V (same kernel and stride) shrinks the attention length: each query "
         "attends over 1 + prod(pooled K/V grid) keys, and the output length does not depend on it", "P1 §3.1",
         _ATTN)
register("MVIT.ATTENTION", "pooling attention is softmax(Q K^T / sqrt(d)) V per head over the pooled Q, K, V, "
         "with one pooling operator (depthwise conv, avg or max, then LayerNorm for conv) shared by all heads",
         "P1 §3.1; tv MultiscaleAttention", _ATTN)
register("MVIT.CLS_NOT_POOLED", "the cls token is split off before every pooling (Q, K, V and the skip) and "
         "concatenated back unchanged, so it is never mixed with data tokens by a pooling window",
         "P1 §3.3; tv Pool", ("PoolingAttention", "MultiScaleBlock"))
register("MVIT.SKIP_POOLING", "at a Q-pooled block the residual is max-pooled (kernel s+1, stride s) to the new "
         "grid; where channels change, the skip is a Linear of the LayerNorm-ed input", "P1 §3.2, Fig. 3",
         _BLOCK)
register("MVIT.CHANNELS_GROW", "channel capacity grows while resolution shrinks: each stage has 2x the channels "
         "and heads of the previous one and a quarter of its spatial tokens (96/192/384/768 channels, 1/2/4/8 heads, "
         "56/28/14/7 grids for MViT-B)", "P1 Table 3b", _MODEL)
register("MVIT.TOKEN_COUNTS", "MViT-B 16x4 on 16x224x224 has 25089 -> 6273 -> 1569 -> 393 tokens (cls included) "
         "at the end of its four stages", "P1 Table 3b; mvit-notes §3.2", _MODEL)
register("MVIT.PARAMS", "MViT-B 16x4 (torchvision mvit_v1_b) has 36,610,672 parameters; mvit_v2_s has "
         "34,537,744", "tv weights meta; P1 Table 4 (36.6M)", _MODEL)
register("MVIT.GMACS", "MViT-B 16x4 costs about 70.5 G multiply-adds per 1x3x16x224x224 view (conv and matmul "
         "MACs)", "P1 Table 4; tv _ops 70.599", _MODEL)
register("MVIT.POS_EMBED", "absolute positions are separable: a spatial (H*W x D) and a temporal (T x D) table plus "
         "a class vector; for another input size both are interpolated (bicubic in space, linear in time)",
         "P1 Table 11; timm", _MODEL)
register("MVIT.REL_POS", "MViTv2 adds Q . R_h + Q . R_w + Q . R_t (decomposed relative positions, unscaled Q) to the "
         "scaled logits of data tokens, and the pooled Q to the output (residual pooling)",
         "P2 eq. 3-5; tv _add_rel_pos", _ATTN)
register("MVIT.TORCHVISION_V1", "with torchvision mvit_v1_b's state_dict loaded unchanged, MViT(MVIT_B_16X4) gives "
         "torchvision's logits", "tv mvit_v1_b", _MODEL)
register("MVIT.TORCHVISION_V2", "with torchvision mvit_v2_s's state_dict loaded unchanged, MViT(MVIT_V2_S) gives "
         "torchvision's logits", "tv mvit_v2_s", _MODEL)
register("MVIT.IMAGE", "the image variant MViT-B-16 takes [B, 3, H, W]: 3137 -> 785 -> 197 -> 50 tokens at 224x224, "
         "about 37.0M parameters and 7.8 G multiply-adds", "P1 Table 17", _MODEL)
register("MVIT.ERRORS", "bad input (wrong rank, channels or dtype, a token count that does not match the grid, an "
         "empty axis, a grid the skip and Q pooling disagree on) raises TypeError/ValueError naming the argument; an "
         "empty batch is valid and gives [0, K] logits",
         "DESIGN.md conventions", ("PoolingAttention", "MultiScaleBlock", "MViT"))
