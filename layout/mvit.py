"""MViT parameter layout (P1 Table 3b, App. D.1; P2 §4; clauses MVIT.PARAMS, MVIT.CHANNELS_GROW, MVIT.POS_EMBED,
MVIT.REL_POS): every MViT v1 / v2 module that holds parameters, as a skeleton with its constructor, initialisation,
config checks and state_dict keys. ``reference.mvit`` and ``fast.mvit`` subclass these classes and write the forward
passes, so they cannot disagree on a key, a shape or an order; the block's residual control flow (MultiScaleBlock
.forward) is written here once, around the implementation's attention, pooling, MLP and stochastic depth.

Numbers come from ``spec.mvit`` (MVIT_B_16X4, MVIT_B_16, MVIT_V2_S); defaults are MViT-B 16x4's. The layout is
torchvision's ``mvit_v1_b`` / ``mvit_v2_s``, so a torchvision state_dict loads with ``strict=True`` unchanged.
Keys in state_dict order (a module's own parameters come before its children's):

    key                                               shape                          when
    conv_proj.{weight, bias}                          [D, C, kT, kH, kW], [D]        always (cube patch embedding)
    pos_encoding.class_token                          [D]                            cls_embed
    pos_encoding.spatial_pos                          [H0*W0, D]                     sep_pos_embed (v1)
    pos_encoding.temporal_pos                         [T0, D]                        sep_pos_embed (v1)
    pos_encoding.class_pos                            [D]                            sep_pos_embed and cls_embed
    blocks.N.norm1.{weight, bias}                     [C_in]                         always
    blocks.N.norm2.{weight, bias}                     [C_attn]                       always
    blocks.N.attn.rel_pos_{h, w}                      [L_hw, d]                      rel_pos_embed (v2)
    blocks.N.attn.rel_pos_t                           [2*T_N - 1, d]                 rel_pos_embed (v2)
    blocks.N.attn.qkv.{weight, bias}                  [3*C_attn, C_in], [3*C_attn]   bias: qkv_bias
    blocks.N.attn.project.0.{weight, bias}            [C_attn, C_attn], [C_attn]     always
    blocks.N.attn.pool_{q, k, v}.pool.weight          [d, 1, kT, kH, kW]             that pooling, pool_mode conv
    blocks.N.attn.pool_{q, k, v}.norm_act.0.{w, b}    [d]                            that pooling, pool_norm
    blocks.N.mlp.0.{weight, bias}                     [M, C_attn]                    always (fc1)
    blocks.N.mlp.3.{weight, bias}                     [C_out, M]                     always (fc2)
    blocks.N.project.{weight, bias}                   [C_out, C_in]                  C_in != C_out
    norm.{weight, bias}                               [C_last]                       always
    head.1.{weight, bias}                             [K, C_last]                    always

C_in -> C_out are block N's widths (``MViTConfig.blocks``); attention runs at C_attn = C_in (v1) or C_out (v2) with
h heads of d = C_attn / h channels; M = mlp_ratio * C_attn (4 C_attn). (T_N, H_N, W_N) is block N's input grid at
the configured size and L_hw = 2 * max(S // s_q, S // s_kv, 1) - 1 with S = max(H_N, W_N) and s_q, s_kv the
H-strides of the Q and K/V poolings, 1 where absent (``MViTConfig.rel_pos_lengths``). Q is pooled where its kernel
is given and kernel or stride exceeds 1; K and V alike.
Parameter-free children (Dropout, GELU) sit where they fix key indices: ``mlp.0``/``mlp.3``, ``project.0``, ``head.1``.

Initialisation (P1 App. D.1; tv:MViT): Linear weights truncated-normal(init_std), biases zero, LayerNorms one/zero,
position and relative-position tables truncated-normal(init_std); convolutions keep PyTorch's default.

Children are built through class attributes (``pool_type``, ``attention_type``, ``block_type``,
``pos_encoding_type``) that a subclass points at its own classes. The classes here alone build the whole tree
without a forward pass (enough for a state_dict layout on the meta device).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from spec.mvit import MVIT_B_16X4, MVIT_V2_S, MViTBlockSpec, MViTConfig, check_tokens, same_padding, skip_kernel

POOL_MODES = ("conv", "avg", "max")


# ---------------------------------------------------------------------------------------------- pooling
class Pool(nn.Module):
    """The pooling operator P(.; Theta) (P1 §3.1; MVIT.POOLED_LENGTH): kernel k, stride s, padding k // 2 per axis,
    over the data tokens of every head (the cls token is passed through: MVIT.CLS_NOT_POOLED).

    Keys: ``pool.weight`` [channels, 1, kT, kH, kW] (``conv``: one filter per channel, a depthwise Conv3d without
    bias, shared by all heads; ``avg``/``max`` have none), ``norm_act.0.{weight, bias}`` [channels] (``norm``:
    LayerNorm over the pooled tokens, cls included; P1 Table 15 "conv" = conv + LN).
    """

    def __init__(self, channels: int, kernel: Sequence[int], stride: Sequence[int], *,
                 mode: str = MVIT_B_16X4.pool_mode, norm: bool = MVIT_B_16X4.pool_norm,
                 norm_eps: float = MVIT_B_16X4.norm_eps, has_cls_token: bool = MVIT_B_16X4.cls_embed):
        super().__init__()
        kernel, stride = tuple(kernel), tuple(stride)
        if len(kernel) != 3 or len(stride) != 3 or min(kernel + stride) < 1:
            raise ValueError(f"kernel and stride must be three positive ints (T, H, W), got {kernel} and {stride}")
        if mode not in POOL_MODES:
            raise ValueError(f"mode must be one of {POOL_MODES}, got {mode!r}")
        padding = same_padding(kernel)  # type: ignore[arg-type]
        self.pool = (nn.Conv3d(channels, channels, kernel, stride=stride, padding=padding, groups=channels,
                               bias=False) if mode == "conv" else None)
        self.norm_act = nn.Sequential(nn.LayerNorm(channels, eps=norm_eps)) if norm else None
        self.kernel, self.stride, self.padding, self.mode = kernel, stride, padding, mode
        self.channels, self.has_cls_token = channels, has_cls_token

    def extra_repr(self) -> str:
        return f"mode={self.mode}, kernel={self.kernel}, stride={self.stride}, padding={self.padding}"


def _pooling(kernel: Sequence[int] | None, stride: Sequence[int], what: str) -> tuple | None:
    """(kernel, stride) of a pooling that is present, else None (tv:MultiscaleAttention's rule: a kernel is given
    and kernel or stride exceeds 1). A stride above 1 without a kernel is a ValueError."""
    stride = tuple(stride)
    if kernel is None:
        if math.prod(stride) > 1:
            raise ValueError(f"{what} stride {stride} needs a pooling kernel (got kernel None)")
        return None
    kernel = tuple(kernel)
    return (kernel, stride) if math.prod(kernel) > 1 or math.prod(stride) > 1 else None


# ---------------------------------------------------------------------------------------------- attention
class PoolingAttention(nn.Module):
    """Multi-head pooling attention (P1 §3.1; P2 §4.1; MVIT.ATTENTION, MVIT.Q_POOLING, MVIT.KV_POOLING, MVIT.REL_POS):
    dim -> dim_out channels, num_heads heads of head_dim = dim_out / num_heads.

    Keys: ``qkv`` (one Linear dim -> 3 * dim_out; output columns [Q heads | K heads | V heads], head-major),
    ``project.0`` (Linear dim_out -> dim_out; ``project.1`` a Dropout when attention_dropout > 0),
    ``pool_{q, k, v}`` (Pool over head_dim channels, see ``_pooling``; K and V share kernel and stride) and, for
    MViTv2 (``rel_pos_size`` = the block's configured input grid (T, H, W)), ``rel_pos_{h, w, t}`` [length, head_dim].
    """

    pool_type: type[Pool] = Pool

    def __init__(self, dim: int, num_heads: int, *, dim_out: int | None = None,
                 kernel_q: Sequence[int] | None = None, stride_q: Sequence[int] = (1, 1, 1),
                 kernel_kv: Sequence[int] | None = MVIT_B_16X4.pool_kernel, stride_kv: Sequence[int] = (1, 1, 1),
                 mode: str = MVIT_B_16X4.pool_mode, pool_norm: bool = MVIT_B_16X4.pool_norm,
                 qkv_bias: bool = MVIT_B_16X4.qkv_bias, norm_eps: float = MVIT_B_16X4.norm_eps,
                 has_cls_token: bool = MVIT_B_16X4.cls_embed,
                 rel_pos_size: Sequence[int] | None = None,
                 residual_pool: bool = MVIT_B_16X4.residual_pool,
                 residual_pool_cls: bool = MVIT_B_16X4.residual_pool_cls,
                 attention_dropout: float = MVIT_B_16X4.attention_dropout):
        super().__init__()
        dim_out = dim if dim_out is None else dim_out
        if num_heads < 1 or dim_out % num_heads:
            raise ValueError(f"dim_out={dim_out} must be divisible by num_heads={num_heads}")
        self.dim, self.dim_out, self.num_heads = dim, dim_out, num_heads
        self.head_dim = dim_out // num_heads
        self.scale = self.head_dim ** -0.5  # logits = Q K^T / sqrt(d) (MVIT.ATTENTION)
        self.has_cls_token = has_cls_token
        self.residual_pool, self.residual_pool_cls = residual_pool, residual_pool_cls

        self.qkv = nn.Linear(dim, 3 * dim_out, bias=qkv_bias)
        project: list[nn.Module] = [nn.Linear(dim_out, dim_out)]
        if attention_dropout > 0:
            project.append(nn.Dropout(attention_dropout))
        self.project = nn.Sequential(*project)

        pool_args = dict(mode=mode, norm=pool_norm, norm_eps=norm_eps, has_cls_token=has_cls_token)
        q_pool = _pooling(kernel_q, stride_q, "Q")
        kv_pool = _pooling(kernel_kv, stride_kv, "K/V")
        self.pool_q = self.pool_type(self.head_dim, *q_pool, **pool_args) if q_pool else None
        self.pool_k = self.pool_type(self.head_dim, *kv_pool, **pool_args) if kv_pool else None
        self.pool_v = self.pool_type(self.head_dim, *kv_pool, **pool_args) if kv_pool else None

        # MViTv2 tables, sized for the block's configured input grid (tv: size = max(H, W), q = size // s_q,
        # kv = size // s_kv on the H axis); other grids resize them at run time (the forward's rel_pos.py).
        self.rel_pos = rel_pos_size is not None
        if self.rel_pos:
            t, *hw = (int(n) for n in rel_pos_size)
            size = max(hw)
            q_size = size // (q_pool[1][1] if q_pool else 1)
            kv_size = size // (kv_pool[1][1] if kv_pool else 1)
            spatial = 2 * max(q_size, kv_size, 1) - 1  # >= 1 row where torchvision would build an empty table
            self.rel_pos_h = nn.Parameter(torch.zeros(spatial, self.head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(spatial, self.head_dim))
            self.rel_pos_t = nn.Parameter(torch.zeros(2 * t - 1, self.head_dim))
            for table in (self.rel_pos_h, self.rel_pos_w, self.rel_pos_t):
                nn.init.trunc_normal_(table, std=MVIT_V2_S.init_std)


    def pool(self, q: Tensor, k: Tensor, v: Tensor, thw: tuple[int, int, int],
             ) -> tuple[Tensor, Tensor, Tensor, tuple[int, int, int], tuple[int, int, int]]:
        """Pool K and V (MVIT.KV_POOLING), then Q (MVIT.Q_POOLING), each with the implementation's Pool (which
        passes the cls token through) -> (q, k, v, Q's grid, K/V's grid)."""
        k_thw = q_thw = thw
        if self.pool_k is not None:
            k, k_thw = self.pool_k(k, thw)
            v, _ = self.pool_v(v, thw)
        if self.pool_q is not None:
            q, q_thw = self.pool_q(q, thw)
        return q, k, v, q_thw, k_thw


# ---------------------------------------------------------------------------------------------- block
class MultiScaleBlock(nn.Module):
    """The multiscale block (P1 §3.2, Fig. 3; P2 §4; MVIT.SKIP_POOLING, MVIT.CHANNELS_GROW): dim -> dim_out.

    Attention runs at dim (v1) or at dim_out (v2, ``expand_in_attention``). Keys: ``norm1`` [dim], ``norm2``
    [attention width] (registered before ``attn``: torchvision's key order), ``attn.*`` (PoolingAttention),
    ``mlp.0`` (fc1, width -> mlp_ratio * width) and ``mlp.3`` (fc2, -> dim_out) around GELU and Dropouts,
    ``project`` (Linear dim -> dim_out where the channels grow). ``pool_skip`` (a max Pool, kernel s + 1, stride s,
    no parameters) sits at a Q-pooled block. ``drop_path`` is the stochastic-depth probability (P1 App. D.1).
    """

    attention_type: type[PoolingAttention] = PoolingAttention
    pool_type: type[Pool] = Pool
    # drop_path(x, p, training): the implementation's stochastic depth (a staticmethod in a subclass)
    stochastic_depth: Callable[[Tensor, float, bool], Tensor]

    def __init__(self, dim: int, dim_out: int, num_heads: int, *,
                 kernel_q: Sequence[int] | None = None, stride_q: Sequence[int] = (1, 1, 1),
                 kernel_kv: Sequence[int] | None = MVIT_B_16X4.pool_kernel, stride_kv: Sequence[int] = (1, 1, 1),
                 mlp_ratio: float = MVIT_B_16X4.mlp_ratio, qkv_bias: bool = MVIT_B_16X4.qkv_bias,
                 norm_eps: float = MVIT_B_16X4.norm_eps, mode: str = MVIT_B_16X4.pool_mode,
                 pool_norm: bool = MVIT_B_16X4.pool_norm, has_cls_token: bool = MVIT_B_16X4.cls_embed,
                 expand_in_attention: bool = False, rel_pos_size: Sequence[int] | None = None,
                 residual_pool: bool = MVIT_B_16X4.residual_pool,
                 residual_pool_cls: bool = MVIT_B_16X4.residual_pool_cls,
                 drop_path: float = 0.0, attention_dropout: float = MVIT_B_16X4.attention_dropout):
        super().__init__()
        if not 0.0 <= drop_path < 1.0:
            raise ValueError(f"drop_path must be in [0, 1), got {drop_path}")
        self.dim, self.dim_out = dim, dim_out
        self.expand_in_attention = expand_in_attention
        self.has_cls_token = has_cls_token
        self.drop_path = drop_path
        attn_dim = dim_out if expand_in_attention else dim
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.norm2 = nn.LayerNorm(attn_dim, eps=norm_eps)  # registered before attn: torchvision's key order
        self.attn = self.attention_type(
            dim, num_heads, dim_out=attn_dim, kernel_q=kernel_q, stride_q=stride_q, kernel_kv=kernel_kv,
            stride_kv=stride_kv, mode=mode, pool_norm=pool_norm, qkv_bias=qkv_bias, norm_eps=norm_eps,
            has_cls_token=has_cls_token, rel_pos_size=rel_pos_size, residual_pool=residual_pool,
            residual_pool_cls=residual_pool_cls, attention_dropout=attention_dropout)
        hidden = int(attn_dim * mlp_ratio)
        # Sequential indices 0..4 keep torchvision's keys: mlp.0 = fc1, mlp.3 = fc2
        self.mlp = nn.Sequential(nn.Linear(attn_dim, hidden), nn.GELU(), nn.Dropout(attention_dropout),
                                 nn.Linear(hidden, dim_out), nn.Dropout(attention_dropout))
        self.project = nn.Linear(dim, dim_out) if dim != dim_out else None
        stride_q = tuple(stride_q)
        self.pool_skip = None
        if math.prod(stride_q) > 1:  # P1 Fig. 3: the residual is pooled to Q's resolution
            self.pool_skip = self.pool_type(attn_dim, skip_kernel(stride_q), stride_q,  # type: ignore[arg-type]
                                            mode="max", norm=False, has_cls_token=has_cls_token)

    def run_mlp(self, x: Tensor) -> Tensor:
        """fc1, GELU, Dropout, fc2, Dropout (an implementation may fuse them)."""
        return self.mlp(x)

    def forward(self, x: Tensor, thw: tuple[int, int, int]) -> tuple[Tensor, tuple[int, int, int]]:
        """x [B, N, dim] on grid thw (N = T*H*W + cls) -> ([B, N', dim_out], the Q-pooled grid).

        v1:  x = skip(x) + attn(norm1(x));  out = proj(norm2(x)) or x, + mlp(norm2(x))
        v2 (expand_in_attention): x = proj(norm1(x)) or x, pooled, + attn(norm1(x));  out = x + mlp(norm2(x))
        with skip = pool_skip(x) where Q is pooled (MVIT.SKIP_POOLING; cls passed through, MVIT.CLS_NOT_POOLED),
        and each branch dropped per sample with probability ``self.drop_path`` in training (stochastic depth).
        """
        thw = check_tokens(x, thw, self.dim, self.has_cls_token)
        n1 = self.norm1(x)
        a, q_thw = self.attn(n1, thw)
        skip = x
        if self.expand_in_attention and self.project is not None:
            skip = self.project(n1)  # MViTv2: the channel projection of the normalized input
        skip_thw = thw
        if self.pool_skip is not None:  # MVIT.SKIP_POOLING
            skip, skip_thw = self.pool_skip(skip, thw)
        if skip_thw != q_thw:
            raise ValueError(f"thw={thw}: the skip path has grid {skip_thw} but Q pooling gives {q_thw}; these "
                             "strides and kernels cannot handle this input size")
        x = skip + self.stochastic_depth(a, self.drop_path, self.training)
        if self.expand_in_attention:
            return x + self.stochastic_depth(self.run_mlp(self.norm2(x)), self.drop_path, self.training), q_thw
        n2 = self.norm2(x)
        # MVIT.CHANNELS_GROW: where the channels grow, the skip is a projection of the normalized signal (P1)
        skip = self.project(n2) if self.project is not None else x
        return skip + self.stochastic_depth(self.run_mlp(n2), self.drop_path, self.training), q_thw

    @classmethod
    def from_spec(cls, row: MViTBlockSpec, cfg: MViTConfig, grid: Sequence[int]) -> MultiScaleBlock:
        """The block of one row of the config's table; ``grid`` is its input grid at the configured size."""
        return cls(row.dim_in, row.dim_out, row.num_heads, kernel_q=row.kernel_q, stride_q=row.stride_q,
                   kernel_kv=row.kernel_kv, stride_kv=row.stride_kv, mlp_ratio=cfg.mlp_ratio, qkv_bias=cfg.qkv_bias,
                   norm_eps=cfg.norm_eps, mode=cfg.pool_mode, pool_norm=cfg.pool_norm, has_cls_token=cfg.cls_embed,
                   expand_in_attention=cfg.channel_expansion == "stage_start",
                   rel_pos_size=tuple(grid) if cfg.rel_pos_embed else None, residual_pool=cfg.residual_pool,
                   residual_pool_cls=cfg.residual_pool_cls, drop_path=row.drop_path,
                   attention_dropout=cfg.attention_dropout)


# ---------------------------------------------------------------------------------------------- positions
class PositionalEncoding(nn.Module):
    """cls token and separable space/time position tables (P1 §3.3, Table 11; MVIT.POS_EMBED) for the token grid
    (T0, H0, W0) of the configured input size.

    Keys: ``class_token`` [dim] (with a cls token); with ``absolute`` (v1) ``spatial_pos`` [H0*W0, dim],
    ``temporal_pos`` [T0, dim] and, with a cls token, ``class_pos`` [dim]. MViTv2 has only ``class_token``.
    Built as zeros; ``MViT.reset_parameters`` draws them.
    """

    def __init__(self, dim: int, grid: tuple[int, int, int], *, absolute: bool = MVIT_B_16X4.sep_pos_embed,
                 cls_token: bool = MVIT_B_16X4.cls_embed, spatial_mode: str = MVIT_B_16X4.pos_interp_spatial,
                 temporal_mode: str = MVIT_B_16X4.pos_interp_temporal):
        super().__init__()
        self.grid = tuple(grid)
        self.spatial_mode, self.temporal_mode = spatial_mode, temporal_mode
        self.cls_token = cls_token
        self.absolute = absolute
        if cls_token:
            self.class_token = nn.Parameter(torch.zeros(dim))
        if absolute:
            t0, h0, w0 = grid
            self.spatial_pos = nn.Parameter(torch.zeros(h0 * w0, dim))
            self.temporal_pos = nn.Parameter(torch.zeros(t0, dim))
            if cls_token:
                self.class_pos = nn.Parameter(torch.zeros(dim))


# ---------------------------------------------------------------------------------------------- model
def make_patch_embedding(cfg: MViTConfig) -> nn.Conv3d:
    """The cube patch embedding (P1 Table 3b "cube1"): Conv3d(C -> D, kernel, stride, padding, bias=True)."""
    return nn.Conv3d(cfg.in_channels, cfg.embed_dim, kernel_size=cfg.patch_kernel, stride=cfg.patch_stride,
                     padding=cfg.patch_padding, bias=True)


class MViT(nn.Module):
    """The stack and the head (P1 Table 3b, App. D.1; P2): ``conv_proj`` (make_patch_embedding), ``pos_encoding``
    (PositionalEncoding on the patch grid), ``blocks.N`` (one MultiScaleBlock per row of ``cfg.blocks``), ``norm``
    (LayerNorm over the last width) and ``head`` (Dropout, Linear -> num_classes)."""

    block_type: type[MultiScaleBlock] = MultiScaleBlock
    pos_encoding_type: type[PositionalEncoding] = PositionalEncoding

    def __init__(self, cfg: MViTConfig = MVIT_B_16X4):
        super().__init__()
        if not isinstance(cfg, MViTConfig):
            raise TypeError(f"cfg must be a spec.mvit.MViTConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        grids = cfg.token_grids()
        self.conv_proj = make_patch_embedding(cfg)
        self.pos_encoding = self.pos_encoding_type(
            cfg.embed_dim, grids[0], absolute=cfg.sep_pos_embed, cls_token=cfg.cls_embed,
            spatial_mode=cfg.pos_interp_spatial, temporal_mode=cfg.pos_interp_temporal)
        self.blocks = nn.ModuleList(self.block_type.from_spec(row, cfg, grid) for row, grid in zip(cfg.blocks, grids))
        self.norm = nn.LayerNorm(cfg.out_dim, eps=cfg.norm_eps)
        self.head = nn.Sequential(nn.Dropout(cfg.head_dropout), nn.Linear(cfg.out_dim, cfg.num_classes))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Truncated-normal(0.02) Linear weights and position tables, zero biases, unit LayerNorms (P1 App. D.1)."""
        init_linears_and_norms(self, self.cfg.init_std)
        for p in self.pos_encoding.parameters():
            nn.init.trunc_normal_(p, std=self.cfg.init_std)


def init_linears_and_norms(module: nn.Module, std: float) -> None:
    """Every Linear of module: truncated-normal(std) weight, zero bias; every LayerNorm: weight one, bias zero
    (P1 App. D.1; detectron2's MViTv2 the same, d2-spec §4.1)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["MViT", "MultiScaleBlock", "POOL_MODES", "Pool", "PoolingAttention", "PositionalEncoding",
           "make_patch_embedding", "num_parameters"]
