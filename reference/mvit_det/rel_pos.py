"""Decomposed relative positions on 2-D grids, detectron2's rule (d2-spec §4.5; clause MVITDET.REL_POS).

For a query at (y, x) on a q_h x q_w grid and a key at (y', x') on a k_h x k_w grid, the logit gains

    E = q . R_h[y, y'] + q . R_w[x, x']

with q the pooled, normalised, *unscaled* query. Along an axis with q queries and k keys, R[i, j] is row

    index(i, j) = trunc(i * max(k / q, 1) - j * max(q / k, 1) + (k - 1) * max(q / k, 1))

of the table, computed in float32 in this order (detectron2's expression; torchvision's MViTv2 groups the terms
differently), so grids of different sizes line up. A table needs 2 * max(q, k) - 1 rows; a stored table of another
length (other input sizes, windows smaller than the stored grid) is first resized by 1-D linear interpolation
(align_corners False). In window blocks q and k are the window sides, not the map's.

Shapes: q [B, q_h * q_w, d] -> bias [B, q_h * q_w, k_h * k_w].
"""

from __future__ import annotations

import torch
from torch import Tensor

from reference.mvit.rel_pos import resize_table


def rel_pos_index(q_len: int, k_len: int, device: torch.device | None = None) -> Tensor:
    """int64 [q_len, k_len]: the table row for each (query, key) pair along one axis."""
    q_ratio = max(k_len / q_len, 1.0)
    k_ratio = max(q_len / k_len, 1.0)
    i = torch.arange(q_len, device=device)[:, None] * q_ratio  # float32
    j = torch.arange(k_len, device=device)[None, :] * k_ratio
    return ((i - j) + (k_len - 1) * k_ratio).long()  # .long() truncates toward zero


def axis_table(table: Tensor, q_len: int, k_len: int, mode: str) -> Tensor:
    """[q_len, k_len, d]: R[i, j] for every query i and key j along one axis (the table resized first if needed)."""
    resized = resize_table(table, 2 * max(q_len, k_len) - 1, mode)
    return resized[rel_pos_index(q_len, k_len, table.device)]


def rel_pos_bias(q: Tensor, q_hw: tuple[int, int], k_hw: tuple[int, int], table_h: Tensor, table_w: Tensor,
                 mode: str) -> Tensor:
    """E [B, q_h * q_w, k_h * k_w] for queries q [B, q_h * q_w, d] (row-major grids)."""
    (qh, qw), (kh, kw) = q_hw, k_hw
    r_h = axis_table(table_h, qh, kh, mode)  # [qh, kh, d]
    r_w = axis_table(table_w, qw, kw, mode)  # [qw, kw, d]
    grid = q.reshape(q.shape[0], qh, qw, q.shape[-1])
    e_h = torch.einsum("byxc,ykc->byxk", grid, r_h)  # [B, qh, qw, kh]
    e_w = torch.einsum("byxc,xkc->byxk", grid, r_w)  # [B, qh, qw, kw]
    bias = e_h[:, :, :, :, None] + e_w[:, :, :, None, :]  # [B, qh, qw, kh, kw]
    return bias.reshape(q.shape[0], qh * qw, kh * kw)
