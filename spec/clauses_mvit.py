"""MViT clauses (issue 6), registered into ``spec.clauses.CLAUSES`` on import.

Sources: ``P1`` / ``P2`` the MViT / MViTv2 papers, ``tv`` torchvision 0.29.1 models/video/mvit.py, ``mvit-notes``
spec/text/mvit.md. Numbers live in ``spec.mvit``: a clause names the field (``MViTKnownValues.params_v1_b``,
``MViTConfig.stage_dims``) and shows its value, read at registration, so the text cannot drift from it.
"""

from __future__ import annotations

import math

from spec.clauses import register, value_text
from spec.mvit import MVIT_B_16, MVIT_B_16X4, MVIT_KNOWN

_ATTN = ("PoolingAttention",)
_BLOCK = ("MultiScaleBlock",)
_MODEL = ("MViT",)


def _known(name: str) -> str:
    """'params_v1_b' -> 'MViTKnownValues.params_v1_b (36,610,672)'."""
    return f"MViTKnownValues.{name} ({value_text(getattr(MVIT_KNOWN, name))})"


def _size(cfg) -> str:
    """The configured input: 16x224x224 (a clip) or 224x224 (an image)."""
    return "x".join(map(str, cfg.spatial_size if cfg.is_image else cfg.input_size))


def _stage_grids(cfg) -> list[tuple[int, ...]]:
    grids = cfg.token_grids()
    return [grids[end + 1] for end in [s - 1 for s in cfg.stage_starts] + [cfg.depth - 1]]


_B = MVIT_B_16X4

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
_Q_SHRINK = math.prod(_B.q_stride[1:])
register("MVIT.CHANNELS_GROW", "channel capacity grows while resolution shrinks: each stage has "
         f"MViTConfig.dim_mul ({value_text(_B.dim_mul)}x) the channels and MViTConfig.head_mul "
         f"({value_text(_B.head_mul)}x) the heads of the previous one and 1/{_Q_SHRINK} of its spatial tokens "
         f"(MViTConfig.q_stride {value_text(_B.q_stride)}; for MViT-B MViTConfig.stage_dims "
         f"{'/'.join(map(str, _B.stage_dims))} channels, stage_heads {'/'.join(map(str, _B.stage_heads))} heads, "
         f"{'/'.join(str(g[1]) for g in _stage_grids(_B))} grids)", "P1 Table 3b", _MODEL)
register("MVIT.TOKEN_COUNTS", f"MViT-B 16x4 on {_size(_B)} has "
         f"{' -> '.join(map(str, MVIT_KNOWN.token_counts_b16x4))} tokens (cls included; "
         f"MViTKnownValues.token_counts_b16x4) at the end of its {len(_B.stage_blocks)} stages",
         "P1 Table 3b; mvit-notes §3.2", _MODEL)
register("MVIT.PARAMS", f"MViT-B 16x4 (torchvision mvit_v1_b) has {_known('params_v1_b')} parameters; mvit_v2_s "
         f"has {_known('params_v2_s')}", "tv weights meta; P1 Table 4 (36.6M)", _MODEL)
register("MVIT.GMACS", f"MViT-B 16x4 costs about {_known('gmacs_b16x4')} G multiply-adds per "
         f"1x{_B.in_channels}x{_size(_B)} view (conv and matmul MACs)", "P1 Table 4; tv _ops 70.599", _MODEL)
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
register("MVIT.IMAGE", f"the image variant MViT-B-16 takes [B, {MVIT_B_16.in_channels}, H, W]: "
         f"{' -> '.join(map(str, MVIT_B_16.token_counts()))} tokens at {_size(MVIT_B_16)} (MViTConfig.token_counts), "
         f"about {_known('params_image_b16_millions')} million parameters and {_known('gmacs_image_b16')} G "
         "multiply-adds", "P1 Table 17", _MODEL)
register("MVIT.ERRORS", "bad input (wrong rank, channels or dtype, a token count that does not match the grid, an "
         "empty axis, a grid the skip and Q pooling disagree on) raises TypeError/ValueError naming the argument; an "
         "empty batch is valid and gives [0, K] logits",
         "DESIGN.md conventions", ("PoolingAttention", "MultiScaleBlock", "MViT"))
