"""Window partition for window attention (d2-spec §4.4 items 3 and 5; clause MVITDET.WINDOWS).

Shapes: x [B, H, W, C] -> windows [B * nH * nW, s, s, C] with nH = ceil(H / s), nW = ceil(W / s): the map is first
zero-padded at the bottom and the right to (nH s, nW s), then cut into s x s tiles, row-major (all tiles of the
first tile row, then the next). The padded positions hold zeros and stay in the windows: as keys they take part in
the softmax like any other token (detectron2 masks nothing). ``unpartition`` puts the tiles back and crops the
padding.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor


def partition(x: Tensor, size: int) -> tuple[Tensor, tuple[int, int]]:
    """[B, H, W, C] -> ([B * nH * nW, size, size, C], padded (Hp, Wp))."""
    b, h, w, c = x.shape
    hp, wp = math.ceil(h / size) * size, math.ceil(w / size) * size
    x = F.pad(x, (0, 0, 0, wp - w, 0, hp - h))  # zeros below and to the right
    tiles = x.reshape(b, hp // size, size, wp // size, size, c)  # [B, nH, s, nW, s, C]
    return tiles.permute(0, 1, 3, 2, 4, 5).reshape(-1, size, size, c), (hp, wp)


def unpartition(windows: Tensor, size: int, padded: tuple[int, int], hw: tuple[int, int]) -> Tensor:
    """[B * nH * nW, size, size, C] -> [B, H, W, C]: the tiles back in place, the padding cropped."""
    hp, wp = padded
    nh, nw = hp // size, wp // size
    b = windows.shape[0] // (nh * nw)
    x = windows.reshape(b, nh, nw, size, size, -1).permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    return x[:, :hw[0], :hw[1], :]
