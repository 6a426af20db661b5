"""detectron2 MViTv2 pooling attention, fast path (same definition as the reference: d2-spec §4.4-§4.5).

x [N, H, W, dim] -> [N, H', W', dim_out]. Token-major throughout: Q, K and V come from three GEMMs on the fused qkv
weight's row blocks, each contiguous [N, H, W, h, d], so each is pooled for all heads by one grouped conv on a
channels-last view without a copy (the shared d-channel filter repeated per head), then LayerNorm-ed over d;
windows become a batch dimension (one pad and one permute copy per tensor); the relative positions are two batched
matmuls against the gathered tables, broadcast into an additive mask for ``scaled_dot_product_attention``. No
Python loops over windows, heads or tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from layout import mvit_det as layout
from layout.precision import active_autocast_dtype


def rel_pos_index(q_len: int, k_len: int, device: torch.device) -> Tensor:
    """detectron2's row index (float32, this order of operations; truncated)."""
    if isinstance(q_len, int) and isinstance(k_len, int):
        k_ratio = max(q_len / k_len, 1.0)
        i = torch.arange(q_len, device=device)[:, None] * max(k_len / q_len, 1.0)
        j = torch.arange(k_len, device=device)[None, :] * k_ratio
        return ((i - j) + (k_len - 1) * k_ratio).long()
    # symbolic sizes (export): the ratios as float64 tensors rounded to float32, as Python floats are above
    q64 = torch.arange(q_len, device=device, dtype=torch.float64)
    k64 = torch.arange(k_len, device=device, dtype=torch.float64)
    qn, kn = q64.numel() + q64.new_zeros(()), k64.numel() + k64.new_zeros(())
    q_ratio = torch.clamp(kn / qn, min=1.0).float()
    k_ratio64 = torch.clamp(qn / kn, min=1.0)
    i = q64.float()[:, None] * q_ratio
    j = k64.float()[None, :] * k_ratio64.float()
    return ((i - j) + ((kn - 1) * k_ratio64).float()).long()


def axis_table(table: Tensor, q_len: int, k_len: int, mode: str) -> Tensor:
    """[q_len, k_len, d] rows of the table, linearly resized to 2 * max(q, k) - 1 rows first where needed."""
    length = 2 * max(q_len, k_len) - 1
    if table.shape[0] != length:
        table = F.interpolate(table.t().unsqueeze(0), size=length, mode=mode)[0].t()
    return table[rel_pos_index(q_len, k_len, table.device)]


def pool(x: Tensor, conv: torch.nn.Conv2d, norm: torch.nn.LayerNorm, heads: int) -> Tensor:
    """[B, H, W, h, d] -> [B, H', W', h, d]: one grouped conv over all heads, then LayerNorm over d."""
    b, hh, ww, h, d = x.shape
    volume = x.reshape(b, hh, ww, h * d).permute(0, 3, 1, 2)  # channels-last view when x is token-major
    volume = volume.contiguous(memory_format=torch.channels_last)
    weight = conv.weight.repeat(heads, 1, 1, 1) if heads > 1 else conv.weight
    out = F.conv2d(volume, weight.to(volume.dtype), None, conv.stride, conv.padding, 1, h * d)
    out = out.permute(0, 2, 3, 1).reshape(b, out.shape[2], out.shape[3], h, d)
    return F.layer_norm(out, (d,), norm.weight, norm.bias, norm.eps)


def to_windows(x: Tensor, size: int) -> tuple[Tensor, int, int]:
    """[B, H, W, h, d] -> ([B * nH * nW, h, size * size, d], nH, nW): zero-padded bottom/right, tiles row-major."""
    b, hh, ww, h, d = x.shape
    nh, nw = (hh + size - 1) // size, (ww + size - 1) // size  # ceil of non-negative ints (exportable)
    x = F.pad(x, (0, 0, 0, 0, 0, nw * size - ww, 0, nh * size - hh))
    x = x.view(b, nh, size, nw, size, h, d).permute(0, 1, 3, 5, 2, 4, 6)  # [B, nH, nW, h, s, s, d]
    return x.reshape(b * nh * nw, h, size * size, d), nh, nw


def from_windows(x: Tensor, size: int, b: int, nh: int, nw: int, hw: tuple[int, int]) -> Tensor:
    """[B * nH * nW, h, size * size, d] -> [B, H, W, h, d], the padding cropped."""
    h, d = x.shape[1], x.shape[3]
    x = x.view(b, nh, nw, h, size, size, d).permute(0, 1, 4, 2, 5, 3, 6).reshape(b, nh * size, nw * size, h, d)
    return x[:, :hw[0], :hw[1]]


class PoolingAttention(layout.PoolingAttention):
    """SDPA over pooled, windowed Q, K, V; parameters and keys are ``layout.mvit_det.PoolingAttention``'s."""

    def forward(self, x: Tensor) -> Tensor:
        n, hh, ww, _ = x.shape
        h, d = self.num_heads, self.head_dim
        # three GEMMs on the fused weight's row blocks: each of q, k, v comes out contiguous (channels-last for the
        # pooling conv without a copy), where one fused GEMM would leave three strided views to copy
        w, bias = self.qkv.weight, self.qkv.bias
        c = h * d
        q, k, v = (F.linear(x, w[i * c:(i + 1) * c], None if bias is None else bias[i * c:(i + 1) * c])
                   .view(n, hh, ww, h, d) for i in range(3))
        q = pool(q, self.pool_q, self.norm_q, h)
        k = pool(k, self.pool_k, self.norm_k, h)
        v = pool(v, self.pool_v, self.norm_v, h)
        out_hw = (q.shape[1], q.shape[2])
        if self.q_window:
            qw, nh, nw = to_windows(q, self.q_window)
            kw_, _, _ = to_windows(k, self.kv_window)
            vw, _, _ = to_windows(v, self.kv_window)
            q_hw, k_hw = (self.q_window,) * 2, (self.kv_window,) * 2
        else:
            qw, kw_, vw = (t.flatten(1, 2).transpose(1, 2) for t in (q, k, v))  # [N, h, L, d]
            q_hw, k_hw = out_hw, (k.shape[1], k.shape[2])
        dtype = active_autocast_dtype(x.device) or torch.promote_types(qw.dtype, kw_.dtype)
        mask = None
        if self.use_rel_pos:
            grid = qw.reshape(qw.shape[0], h, q_hw[0], q_hw[1], d)
            r_h = axis_table(self.rel_pos_h, q_hw[0], k_hw[0], self.rel_pos_interp).to(grid.dtype)
            r_w = axis_table(self.rel_pos_w, q_hw[1], k_hw[1], self.rel_pos_interp).to(grid.dtype)
            e_h = torch.einsum("bnyxc,ykc->bnyxk", grid, r_h)  # [B', h, qh, qw, kh]
            e_w = torch.einsum("bnyxc,xkc->bnyxk", grid, r_w)  # [B', h, qh, qw, kw]
            mask = (e_h[..., :, None] + e_w[..., None, :]).reshape(qw.shape[0], h, q_hw[0] * q_hw[1], -1)
            mask = mask.to(dtype)
        out = F.scaled_dot_product_attention(qw.to(dtype), kw_.to(dtype), vw.to(dtype), attn_mask=mask)
        if self.q_window:
            out = from_windows(out, self.q_window, n, nh, nw, out_hw)  # [N, H', W', h, d]
        else:
            out = out.transpose(1, 2).reshape(n, *out_hw, h, d)
        if self.residual_pooling:
            out = out + q.to(out.dtype)
        return self.proj(out.reshape(n, *out_hw, h * d))
