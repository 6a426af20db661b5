"""MViTv2 decomposed relative positions, vectorized (same definition as the reference: P2 eq. 3-4, torchvision
indices in float32, linear resizing of tables of another length).

q_data [B, Nq, h, d] (token-major data tokens) -> E [B, h, Nq, Nk]; the three axis terms are computed with one
einsum each and broadcast-added, so nothing loops over tokens or heads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from spec.mvit import MVIT_V2_S


def rel_pos_index(q_len: int, k_len: int, device: torch.device) -> Tensor:
    q_ratio = max(k_len / q_len, 1.0)
    k_ratio = max(q_len / k_len, 1.0)
    i = torch.arange(q_len, dtype=torch.float32, device=device)[:, None]
    j = torch.arange(k_len, dtype=torch.float32, device=device)[None, :]
    return (i * q_ratio - (j + (1.0 - k_len)) * k_ratio).long()


def axis_table(table: Tensor, q_len: int, k_len: int, mode: str = MVIT_V2_S.rel_pos_interp) -> Tensor:
    """[q_len, k_len, d] rows of the (resized) table."""
    length = 2 * max(q_len, k_len) - 1
    if table.shape[0] != length:
        table = F.interpolate(table.t().unsqueeze(0), size=length, mode=mode)[0].t()
    return table[rel_pos_index(q_len, k_len, table.device)]


def rel_pos_bias(q_data: Tensor, q_thw: tuple[int, int, int], k_thw: tuple[int, int, int],
                 table_h: Tensor, table_w: Tensor, table_t: Tensor) -> Tensor:
    b, _, heads, d = q_data.shape
    qt, qh, qw = q_thw
    kt, kh, kw = k_thw
    dtype = q_data.dtype
    r_t = axis_table(table_t, qt, kt).to(dtype)
    r_h = axis_table(table_h, qh, kh).to(dtype)
    r_w = axis_table(table_w, qw, kw).to(dtype)
    grid_q = q_data.reshape(b, qt, qh, qw, heads, d)
    e_t = torch.einsum("btyxnc,tjc->bntyxj", grid_q, r_t)
    e_h = torch.einsum("btyxnc,yjc->bntyxj", grid_q, r_h)
    e_w = torch.einsum("btyxnc,xjc->bntyxj", grid_q, r_w)
    bias = e_h[..., None, :, None] + e_w[..., None, None, :] + e_t[..., :, None, None]
    return bias.reshape(b, heads, qt * qh * qw, kt * kh * kw)
