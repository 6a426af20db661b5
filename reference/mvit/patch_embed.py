"""Cube patch embedding: a Conv3d that turns a clip into a grid of tokens (P1 Table 3b "cube1").

Shapes: clip [B, C, T, H, W] -> tokens [B, T'*H'*W', D] with (T', H', W') = floor((L + 2p - k) / s) + 1 per axis
(MVIT.POOLED_LENGTH); for MViT-B 16x4: kernel 3x7x7, stride 2x4x4, padding 1x3x3, D = 96, so
16x224x224 -> 8x56x56 = 25088 tokens. Tokens are flattened in (t, h, w) order, t slowest.

The conv is registered on the model as ``conv_proj`` (torchvision's key) and built by
``layout.mvit.make_patch_embedding``; this file applies it.
"""

from __future__ import annotations

from torch import Tensor, nn


def embed_patches(conv: nn.Conv3d, clip: Tensor) -> tuple[Tensor, tuple[int, int, int]]:
    """clip [B, C, T, H, W] -> (tokens [B, T'H'W', D], (T', H', W'))."""
    grid = conv(clip)  # [B, D, T', H', W']
    thw = tuple(grid.shape[2:])
    tokens = grid.flatten(2).transpose(1, 2)  # [B, T'H'W', D], (t, h, w) order
    return tokens, thw  # type: ignore[return-value]
