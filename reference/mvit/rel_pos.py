"""MViTv2 decomposed relative positions (P2 eq. 3-4; clause MVIT.REL_POS).

For a query at grid position (t, y, x) and a key at (t', y', x'), the attention logit gains

    E = q . R_t[t, t'] + q . R_h[y, y'] + q . R_w[x, x']

where q is the pooled, *unscaled* query and E is added *after* the 1/sqrt(d) scaling (torchvision and SlowFast
compute softmax(q k^T / sqrt(d) + E); P2's formula divides E too: the code is the spec here). Only data tokens get
E; the cls token's row and column get nothing.

Each table R_a is [2 * max(q_a, k_a) - 1, d] along axis a. Query i and key j (sizes q and k along that axis) read
row

    index(i, j) = trunc(i * max(k / q, 1) - (j + 1 - k) * max(q / k, 1)),

evaluated in float32 exactly as torchvision does (so grids of different sizes line up at their centres). A stored
table of another length (another input size) is first resized with 1-D linear interpolation.

Shapes: q [B, h, Tq*Hq*Wq, d] (data tokens only) -> bias [B, h, Tq*Hq*Wq, Tk*Hk*Wk].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from spec.mvit import MVIT_V2_S


def table_length(q_len: int, k_len: int) -> int:
    """Rows a table needs for q_len queries and k_len keys along one axis."""
    return 2 * max(q_len, k_len) - 1


def rel_pos_index(q_len: int, k_len: int, device: torch.device | None = None) -> Tensor:
    """int64 [q_len, k_len]: the table row for each (query, key) pair along one axis."""
    q_ratio = max(k_len / q_len, 1.0)
    k_ratio = max(q_len / k_len, 1.0)
    i = torch.arange(q_len, dtype=torch.float32, device=device)[:, None]
    j = torch.arange(k_len, dtype=torch.float32, device=device)[None, :]
    return (i * q_ratio - (j + (1.0 - k_len)) * k_ratio).long()  # .long() truncates toward zero


def resize_table(table: Tensor, length: int, mode: str = MVIT_V2_S.rel_pos_interp) -> Tensor:
    """[L, d] -> [length, d] by 1-D linear interpolation along L (identity when L == length)."""
    if table.shape[0] == length:
        return table
    return F.interpolate(table.t().unsqueeze(0), size=length, mode=mode)[0].t()


def axis_table(table: Tensor, q_len: int, k_len: int) -> Tensor:
    """[q_len, k_len, d]: R[i, j] for every query i and key j along one axis."""
    resized = resize_table(table, table_length(q_len, k_len))
    return resized[rel_pos_index(q_len, k_len, table.device)]


def rel_pos_bias(q: Tensor, q_thw: tuple[int, int, int], k_thw: tuple[int, int, int],
                 table_h: Tensor, table_w: Tensor, table_t: Tensor) -> Tensor:
    """E [B, h, Nq, Nk] for the data tokens of q [B, h, Nq, d] (Nq = Tq*Hq*Wq, Nk = Tk*Hk*Wk)."""
    b, heads, _, d = q.shape
    qt, qh, qw = q_thw
    kt, kh, kw = k_thw
    r_t = axis_table(table_t, qt, kt)  # [qt, kt, d]
    r_h = axis_table(table_h, qh, kh)  # [qh, kh, d]
    r_w = axis_table(table_w, qw, kw)  # [qw, kw, d]
    grid_q = q.reshape(b, heads, qt, qh, qw, d)
    e_t = torch.einsum("bntyxc,tjc->bntyxj", grid_q, r_t)  # [B, h, qt, qh, qw, kt]
    e_h = torch.einsum("bntyxc,yjc->bntyxj", grid_q, r_h)  # [B, h, qt, qh, qw, kh]
    e_w = torch.einsum("bntyxc,xjc->bntyxj", grid_q, r_w)  # [B, h, qt, qh, qw, kw]
    bias = e_h[..., None, :, None] + e_w[..., None, None, :] + e_t[..., :, None, None]  # [..., kt, kh, kw]
    return bias.reshape(b, heads, qt * qh * qw, kt * kh * kw)
