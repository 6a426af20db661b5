"""Multiscale Vision Transformer numbers as frozen dataclasses: MViT-B 16x4 (Kinetics-400), MViT-B-16 (ImageNet)
and MViTv2-S, each field citing its source, plus the shape arithmetic the spec states.

Sources use these short forms (see spec/text/mvit.md, whose Appendix B indexes the paper locations):

- ``P1 <where>``   Fan et al., "Multiscale Vision Transformers" (arXiv 2104.11227)
- ``P2 <where>``   Li et al., "MViTv2" (arXiv 2112.01526)
- ``SF <key>``     facebookresearch/SlowFast configs (MVIT.* keys of configs/Kinetics/MVIT_B_16x4_CONV.yaml,
                   configs/ImageNet/MVIT_B_16_CONV.yaml)
- ``tv:<what>``    torchvision 0.29.1 models/video/mvit.py (``mvit_v1_b``, ``mvit_v2_s``, ``MViT``)
- ``timm``         huggingface/pytorch-image-models (position-embedding resampling)

The per-block table (``MViTConfig.blocks``) is derived in ``__post_init__`` from the stage description, the way
SlowFast/timm/torchvision build it, so a config states each number once:

- stage ``s`` (0-based) has ``embed_dim * dim_mul**s`` channels and ``num_heads * head_mul**s`` heads;
- the first block of every stage after the first pools Q with ``q_stride``; at that block the K/V stride shrinks
  adaptively, ``kv = max(kv // q, 1)`` per axis, so K/V keep one resolution (P1 §3.3, Table 14);
- ``channel_expansion="stage_end"`` (v1): the last block of a stage outputs the next stage's width (its MLP's fc2
  and the skip projection widen; P1 §3.2); ``"stage_start"`` (v2): the first block of the next stage widens in
  its attention (tv:mvit_v2_s ``proj_after_attn``).

The token grid at an input size follows the pooled-length rule L' = floor((L + 2p - k) / s) + 1 per axis
(``pooled_length``); ``token_grids`` and ``token_counts`` apply it through the patch embedding and every block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from spec.fields import cited

Triple = tuple[int, int, int]


def pooled_length(length: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a pooling / conv window along one axis: floor((L + 2p - k) / s) + 1 (P1 §3.1).

    Returns 0 or less when the window does not fit even once (the caller treats that as an error).
    """
    return (length + 2 * padding - kernel) // stride + 1


def pooled_grid(grid: Triple, kernel: Triple, stride: Triple, padding: Triple) -> Triple:
    return tuple(pooled_length(n, k, s, p) for n, k, s, p in zip(grid, kernel, stride, padding))  # type: ignore


def same_padding(kernel: Triple) -> Triple:
    """Padding k // 2 per axis: the "shape-preserving" padding of every MViT pooling (tv:Pool, SF attention.py)."""
    return tuple(k // 2 for k in kernel)  # type: ignore[return-value]


def skip_kernel(stride: Triple) -> Triple:
    """Kernel of the max-pool on the skip path at a Q-pooled block: s + 1 where s > 1, else 1 (tv:MultiscaleBlock,
    SF/PTV). With padding k // 2 it yields the same grid as a kernel-3 Q pooling for stride 2."""
    return tuple(s + 1 if s > 1 else s for s in stride)  # type: ignore[return-value]


@dataclass(frozen=True)
class MViTBlockSpec:
    """One row of the per-block table (derived, so the numbers are cited on MViTConfig's fields).

    ``dim_in`` -> ``dim_out`` channels; attention runs at ``attn_dim`` (dim_in for v1, dim_out for v2) with
    ``num_heads`` heads of ``head_dim`` channels. ``kernel_q`` is None where Q is not pooled at all.
    """

    index: int
    stage: int
    dim_in: int
    dim_out: int
    attn_dim: int
    num_heads: int
    kernel_q: Triple | None
    stride_q: Triple
    kernel_kv: Triple | None
    stride_kv: Triple
    drop_path: float

    @property
    def head_dim(self) -> int:
        return self.attn_dim // self.num_heads

    @property
    def q_pooled(self) -> bool:
        """True at a stage transition (Q stride > 1): the output grid shrinks and the skip is max-pooled."""
        return math.prod(self.stride_q) > 1


@dataclass(frozen=True)
class MViTConfig:
    name: str
    # ------------------------------------------------------------------------------------------ input
    in_channels: int = cited(3, "P1 Table 3b: RGB clips")
    temporal_size: int = cited(16, "P1 Table 3b: 16 frames (16x4 sampling); tv:mvit_v1_b temporal_size=16")
    spatial_size: tuple[int, int] = cited((224, 224), "P1 Table 3b; tv:mvit_v1_b spatial_size=(224, 224)")
    # ------------------------------------------------------------------------------------------ patch embedding
    patch_kernel: Triple = cited((3, 7, 7), "P1 Table 3b cube1; SF MVIT.PATCH_KERNEL")
    patch_stride: Triple = cited((2, 4, 4), "P1 Table 3b cube1; SF MVIT.PATCH_STRIDE")
    patch_padding: Triple = cited((1, 3, 3), "SF MVIT.PATCH_PADDING; tv:MViT patch_embed_padding")
    embed_dim: int = cited(96, "P1 Table 3b; SF MVIT.EMBED_DIM")
    # ------------------------------------------------------------------------------------------ stages
    stage_blocks: tuple[int, ...] = cited((1, 2, 11, 2), "P1 Table 3b scale2..scale5; SF DIM_MUL [[1,2],[3,2],[14,2]]")
    num_heads: int = cited(1, "P1 Table 3b scale2 MHPA(96) with 1 head; SF MVIT.NUM_HEADS")
    dim_mul: float = cited(2.0, "P1 §3.2 channels double at stage transitions; SF MVIT.DIM_MUL")
    head_mul: float = cited(2.0, "P1 Table 3b heads 1/2/4/8; SF MVIT.HEAD_MUL")
    channel_expansion: str = cited(
        "stage_end", "P1 §3.2 / App. D.1: the last MLP of the previous stage outputs 2x channels; tv:mvit_v1_b "
        "output_channels")
    # ------------------------------------------------------------------------------------------ pooling
    q_stride: Triple = cited((1, 2, 2), "P1 §3.3: Q pooling (1,2,2) at each stage's first block; SF POOL_Q_STRIDE")
    kv_stride_adaptive: Triple = cited((1, 8, 8), "P1 §3.3 / Table 14: K/V stride 1x8x8 in stage 1, then adaptive; "
                                       "SF POOL_KV_STRIDE_ADAPTIVE")
    pool_kernel: Triple = cited((3, 3, 3), "P1 Table 15 (3x3x3 conv, 78.4); SF POOL_KVQ_KERNEL")
    pool_mode: str = cited("conv", "P1 Table 15: depthwise conv pooling; SF MVIT.MODE conv")
    pool_norm: bool = cited(True, "P1 Table 15: conv pooling followed by LayerNorm; tv:Pool norm_act")
    pool_q_every_block: bool = cited(False, "tv:mvit_v1_b kernel_q is [] outside the Q-strided blocks")
    skip_pool: str = cited("max", "P1 Fig. 3; tv/SF/PTV: MaxPool3d kernel s+1, stride s, padding k//2 on the skip")
    # ------------------------------------------------------------------------------------------ blocks
    mlp_ratio: float = cited(4.0, "P1 Table 3b MLP(4D); SF MVIT.MLP_RATIO")
    qkv_bias: bool = cited(True, "SF MVIT.QKV_BIAS; tv:MultiscaleAttention nn.Linear(bias=True)")
    norm_eps: float = cited(1e-6, "tv:MViT norm_layer = LayerNorm(eps=1e-6); PTV norm eps 1e-6")
    cls_embed: bool = cited(True, "P1 §3.3: a class token, never pooled; SF MVIT.CLS_EMBED_ON")
    sep_pos_embed: bool = cited(True, "P1 Table 11: separate space and time embeddings; SF MVIT.SEP_POS_EMBED")
    pos_interp_spatial: str = cited("bicubic", "timm resample_abs_pos_embed: bicubic, align_corners=False")
    pos_interp_temporal: str = cited("linear", "P1 §4.1: temporal pos-emb interpolated (64x3 from 32x3)")
    rel_pos_embed: bool = cited(False, "P1 has absolute embeddings only")
    rel_pos_interp: str = cited("linear", "tv:_interpolate: 1-D linear resize of a rel-pos table")
    residual_pool: bool = cited(False, "P1 has no residual pooling connection")
    residual_pool_cls: bool = cited(False, "tv:mvit_v2_s residual_with_cls_embed=False")
    # ------------------------------------------------------------------------------------------ head / training
    num_classes: int = cited(400, "Kinetics-400; tv:mvit_v1_b num_classes=400")
    head_dropout: float = cited(0.5, "P1 App. D.1 dropout 0.5 before the head; SF MODEL.DROPOUT_RATE")
    drop_path: float = cited(0.2, "P1 App. D.1 drop-path 0.2, linear in depth; tv stochastic_depth_prob=0.2")
    attention_dropout: float = cited(0.0, "tv:MViT attention_dropout=0.0")
    init_std: float = cited(0.02, "P1 App. D.1 truncated-normal init; tv:MViT trunc_normal_(std=0.02) for Linear "
                            "weights, position tables and rel-pos tables")
    # ------------------------------------------------------------------------------------------ derived
    blocks: tuple[MViTBlockSpec, ...] = field(
        init=False, repr=False, compare=False,
        metadata={"source": "derived in __post_init__ from the fields above (SF/tv block-table construction)"})

    def __post_init__(self) -> None:
        _check_config(self)
        object.__setattr__(self, "blocks", _derive_blocks(self))

    # ------------------------------------------------------------------------------------------ helpers
    @property
    def depth(self) -> int:
        return sum(self.stage_blocks)

    @property
    def stage_starts(self) -> tuple[int, ...]:
        """Block indices where a stage (after the first) starts: (1, 3, 14) for MViT-B."""
        starts, total = [], 0
        for n in self.stage_blocks[:-1]:
            total += n
            starts.append(total)
        return tuple(starts)

    @property
    def stage_dims(self) -> tuple[int, ...]:
        return tuple(int(round(self.embed_dim * self.dim_mul ** s)) for s in range(len(self.stage_blocks)))

    @property
    def stage_heads(self) -> tuple[int, ...]:
        return tuple(int(round(self.num_heads * self.head_mul ** s)) for s in range(len(self.stage_blocks)))

    @property
    def out_dim(self) -> int:
        return self.blocks[-1].dim_out

    @property
    def input_size(self) -> Triple:
        return (self.temporal_size, *self.spatial_size)  # type: ignore[return-value]

    @property
    def is_image(self) -> bool:
        """An image model takes [B, C, H, W] (T = 1 and a kernel-1 temporal patch)."""
        return self.temporal_size == 1 and self.patch_kernel[0] == 1

    def patch_grid(self, input_size: Triple | None = None) -> Triple:
        """Token grid (T, H, W) after the cube patch embedding: 8x56x56 for 16x224x224."""
        return pooled_grid(input_size or self.input_size, self.patch_kernel, self.patch_stride, self.patch_padding)

    def token_grids(self, input_size: Triple | None = None) -> tuple[Triple, ...]:
        """Grid after the patch embedding, then after every block: depth + 1 entries."""
        grid = self.patch_grid(input_size)
        out = [grid]
        for b in self.blocks:
            if b.kernel_q is not None:
                grid = pooled_grid(grid, b.kernel_q, b.stride_q, same_padding(b.kernel_q))
            out.append(grid)
        return tuple(out)

    def kv_grids(self, input_size: Triple | None = None) -> tuple[Triple, ...]:
        """The pooled K/V grid of every block (what each block attends over)."""
        grids = self.token_grids(input_size)
        out = []
        for b, grid in zip(self.blocks, grids):
            if b.kernel_kv is not None:
                grid = pooled_grid(grid, b.kernel_kv, b.stride_kv, same_padding(b.kernel_kv))
            out.append(grid)
        return tuple(out)

    def tokens(self, grid: Triple) -> int:
        return math.prod(grid) + (1 if self.cls_embed else 0)

    def token_counts(self, input_size: Triple | None = None) -> tuple[int, ...]:
        """Tokens (with cls) at the output of each stage: 25089, 6273, 1569, 393 for MViT-B at 16x224x224."""
        grids = self.token_grids(input_size)
        ends = [s - 1 for s in self.stage_starts] + [self.depth - 1]
        return tuple(self.tokens(grids[e + 1]) for e in ends)

    def rel_pos_lengths(self) -> tuple[tuple[int, int], ...]:
        """(spatial, temporal) rel-pos table lengths per block at the configured input size (v2 only).

        tv:MultiscaleAttention: size = max(H, W) of the block's input grid, q = size // s_q, kv = size // s_kv
        (the H stride), spatial = 2 * max(q, kv) - 1, temporal = 2 * T - 1: 111/55/55/27.../13 and 15 for v2-S.
        """
        out = []
        for b, grid in zip(self.blocks, self.token_grids()):
            size = max(grid[1:])
            q, kv = size // b.stride_q[1], size // b.stride_kv[1]
            out.append((2 * max(q, kv, 1) - 1, 2 * grid[0] - 1))
        return tuple(out)


def _check_config(cfg: MViTConfig) -> None:
    if cfg.channel_expansion not in ("stage_end", "stage_start"):
        raise ValueError(f"channel_expansion must be 'stage_end' or 'stage_start', got {cfg.channel_expansion!r}")
    if cfg.pool_mode not in ("conv", "avg", "max"):
        raise ValueError(f"pool_mode must be 'conv', 'avg' or 'max', got {cfg.pool_mode!r}")
    if cfg.skip_pool != "max":
        raise ValueError(f"skip_pool must be 'max', got {cfg.skip_pool!r}")
    if not cfg.stage_blocks or min(cfg.stage_blocks) < 1:
        raise ValueError(f"stage_blocks must be positive counts, got {cfg.stage_blocks}")
    if cfg.sep_pos_embed and cfg.rel_pos_embed:
        raise ValueError("use either absolute (sep_pos_embed) or relative (rel_pos_embed) positions, not both")
    for name in ("patch_kernel", "patch_stride", "patch_padding", "q_stride", "kv_stride_adaptive", "pool_kernel"):
        value = getattr(cfg, name)
        if len(value) != 3 or min(value) < (0 if name == "patch_padding" else 1):
            raise ValueError(f"{name} must be three positive integers (T, H, W), got {value}")


def _derive_blocks(cfg: MViTConfig) -> tuple[MViTBlockSpec, ...]:
    dims, heads, starts = cfg.stage_dims, cfg.stage_heads, cfg.stage_starts
    depth = cfg.depth
    kv = cfg.kv_stride_adaptive
    rows = []
    for i in range(depth):
        stage = sum(1 for s in starts if s <= i)
        pooled = i in starts
        stride_q = cfg.q_stride if pooled else (1, 1, 1)
        if pooled:  # P1 §3.3 adaptive K/V stride: K/V keep one resolution in every stage
            kv = tuple(max(a // b, 1) for a, b in zip(kv, stride_q))
        if cfg.channel_expansion == "stage_end":
            dim_in = dims[stage]
            dim_out = dims[stage + 1] if i + 1 in starts else dims[stage]
            attn_dim = dim_in
        else:
            dim_in = dims[stage - 1] if pooled else dims[stage]
            dim_out = attn_dim = dims[stage]
        if i == 0:
            dim_in = cfg.embed_dim
        if attn_dim % heads[stage]:
            raise ValueError(f"block {i}: attention width {attn_dim} is not divisible by {heads[stage]} heads")
        kernel_q = cfg.pool_kernel if (pooled or cfg.pool_q_every_block) else None
        rows.append(MViTBlockSpec(
            index=i, stage=stage, dim_in=dim_in, dim_out=dim_out, attn_dim=attn_dim, num_heads=heads[stage],
            kernel_q=kernel_q, stride_q=stride_q, kernel_kv=cfg.pool_kernel, stride_kv=kv,  # type: ignore[arg-type]
            drop_path=cfg.drop_path * i / max(depth - 1, 1)))
    return tuple(rows)


# ---------------------------------------------------------------------------------------------- known values
@dataclass(frozen=True)
class MViTKnownValues:
    """Numbers the spec states about the built models (checked by the MVIT.* clauses)."""

    token_counts_b16x4: tuple[int, ...] = cited(
        (25089, 6273, 1569, 393), "P1 Table 3b (8x56x56 .. 8x7x7 + cls); mvit-notes App. A [measured tv]")
    params_v1_b: int = cited(36_610_672, "tv MViT_V1_B_Weights meta num_params [measured]; P1 Table 4 36.6M")
    params_v2_s: int = cited(34_537_744, "tv MViT_V2_S_Weights meta num_params [measured]")
    params_image_b16_millions: float = cited(37.0, "P1 Table 17: MViT-B-16 37.0M")
    gmacs_b16x4: float = cited(70.5, "P1 Table 4: 70.5 GFLOPs (multiply-adds) x 1 x 5 views")
    gmacs_b16x4_tv: float = cited(70.599, "tv MViT_V1_B_Weights meta _ops = FlopCounterMode / 2 [measured]")
    gmacs_v2_s_tv: float = cited(64.224, "tv MViT_V2_S_Weights meta _ops [measured]")
    gmacs_image_b16: float = cited(7.8, "P1 Table 17: MViT-B-16 7.8 GFLOPs")
    gmacs_rel_tolerance: float = cited(0.01, "paper figures are rounded to 3 significant digits (+-0.05 of 70.5 "
                                       "is 0.07%); 1% also absorbs counting norm/softmax or not")


MVIT_KNOWN = MViTKnownValues()


# ---------------------------------------------------------------------------------------------- instances
MVIT_B_16X4 = MViTConfig(name="mvit_b_16x4")
"""MViT-B 16x4, Kinetics-400 (P1 Table 3b; torchvision ``mvit_v1_b``)."""

MVIT_B_16 = replace(
    MVIT_B_16X4,
    name="mvit_b_16",
    temporal_size=1,  # P1 Table 17 / SF ImageNet: images are clips with T = 1
    patch_kernel=(1, 7, 7),  # SF MVIT_B_16_CONV.yaml PATCH_2D kernel [7, 7]
    patch_stride=(1, 4, 4),  # SF PATCH_STRIDE [4, 4]
    patch_padding=(0, 3, 3),  # SF PATCH_PADDING [3, 3]
    pool_kernel=(1, 3, 3),  # SF POOL_KVQ_KERNEL [1, 3, 3]
    kv_stride_adaptive=(1, 4, 4),  # SF POOL_KV_STRIDE_ADAPTIVE [1, 4, 4]; P1 App. A.3 (4x4 best, 82.5)
    num_classes=1000,  # ImageNet-1K
    drop_path=0.1,  # SF MVIT_B_16_CONV.yaml DROPPATH_RATE 0.1
)
"""MViT-B-16, ImageNet-1K (P1 Table 17): 2-D patches 7x7/4 as a kernel-1 temporal cube, K/V kernel 1x3x3."""

MVIT_V2_S = replace(
    MVIT_B_16X4,
    name="mvit_v2_s",
    channel_expansion="stage_start",  # tv:mvit_v2_s proj_after_attn=True (P2 App. B.1: dim_mul_in_att)
    pool_q_every_block=True,  # tv:mvit_v2_s kernel_q [3,3,3] in every block (stride 1 outside transitions)
    sep_pos_embed=False,  # tv:mvit_v2_s rel_pos_embed=True: no absolute position tables, class token only
    rel_pos_embed=True,  # P2 eq. 3-4 decomposed relative positions (rel_q only)
    residual_pool=True,  # P2 eq. 5: Z = Attn(Q, K, V) + Q
    residual_pool_cls=False,  # tv:mvit_v2_s residual_with_cls_embed=False
)
"""MViTv2-S, Kinetics-400 (torchvision ``mvit_v2_s``): decomposed relative positions and residual pooling."""

MVIT_CONFIGS: dict[str, MViTConfig] = {c.name: c for c in (MVIT_B_16X4, MVIT_B_16, MVIT_V2_S)}


def get_mvit_config(name: str) -> MViTConfig:
    try:
        return MVIT_CONFIGS[name]
    except KeyError:
        raise ValueError(f"unknown MViT config {name!r}; expected one of {sorted(MVIT_CONFIGS)}") from None


# ---------------------------------------------------------------------------------------------- input checks
# Shared by reference and fast (clause MVIT.ERRORS): TypeError for a wrong type or dtype, ValueError for a wrong
# shape, each message naming the argument and what was expected.
def check_grid(thw: Any, name: str = "thw") -> Triple:
    """A (T, H, W) grid of positive ints."""
    try:
        grid = tuple(int(n) for n in thw)
    except TypeError:
        raise TypeError(f"{name} must be a (T, H, W) tuple of ints, got {thw!r}") from None
    if len(grid) != 3 or min(grid) < 1:
        raise ValueError(f"{name} must be three positive sizes (T, H, W), got {thw!r}")
    return grid  # type: ignore[return-value]


def check_tokens(x: Any, thw: Any, dim: int, has_cls: bool, name: str = "x") -> Triple:
    """x [B, N, dim] floating with N = T*H*W (+1 with a cls token); returns the checked grid."""
    import torch

    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype, got {x.dtype}")
    if x.dim() != 3 or x.shape[-1] != dim:
        raise ValueError(f"{name} must have shape [B, N, {dim}], got {list(x.shape)}")
    grid = check_grid(thw)
    expected = math.prod(grid) + (1 if has_cls else 0)
    if x.shape[1] != expected:
        cls = " + 1 cls token" if has_cls else ""
        raise ValueError(f"{name} has {x.shape[1]} tokens but the grid thw={grid} needs "
                         f"{math.prod(grid)}{cls} = {expected}")
    return grid


def check_clip(x: Any, cfg: MViTConfig, name: str = "x") -> Any:
    """A [B, C, T, H, W] clip (or [B, C, H, W] for an image config) that every stride can handle.

    Returns the clip as 5-D. Raises ValueError when an axis is empty or too small for the patch embedding, i.e.
    when some grid in ``cfg.token_grids`` would have an axis < 1.
    """
    import torch

    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype, got {x.dtype}")
    if x.dim() == 4 and cfg.is_image:
        x = x.unsqueeze(2)  # an image is a one-frame clip
    if x.dim() != 5:
        expected = "[B, C, H, W] or [B, C, 1, H, W]" if cfg.is_image else "[B, C, T, H, W]"
        raise ValueError(f"{name} must have shape {expected} ({cfg.name}), got {list(x.shape)}")
    if x.shape[1] != cfg.in_channels:
        raise ValueError(f"{name} must have {cfg.in_channels} channels (dim 1), got {x.shape[1]}")
    size = tuple(x.shape[2:])
    for axis, grid in zip("THW", zip(*cfg.token_grids(size))):  # type: ignore[arg-type]
        if min(grid) < 1:
            i = "THW".index(axis)
            raise ValueError(
                f"{name} has {axis} = {size[i]}, which the patch embedding (kernel {cfg.patch_kernel[i]}, stride "
                f"{cfg.patch_stride[i]}, padding {cfg.patch_padding[i]}) and the poolings cannot handle: "
                f"the {axis} grid would be {list(grid)}")
    return x


# ---------------------------------------------------------------------------------------------- evaluation views
@dataclass(frozen=True)
class VideoEvalConfig:
    """How a Kinetics-400 video is cut into views for MViT-B 16x4 (the seed's accuracy/complexity trade-off)."""

    num_clips: int = cited(5, "P1 Table 4: 70.5 GFLOPs x 1 x 5 views (5 clips x 1 crop) on K400")
    num_crops: int = cited(1, "P1 Table 4: 1 spatial crop")
    clip_len: int = cited(16, "P1 §4: 16x4 = 16 frames")
    frame_stride: int = cited(4, "P1 §4: 16x4 = a temporal stride of 4 frames")
    short_side: int = cited(256, "tv MViT_V1_B_Weights transforms: resize_size=(256,)")
    crop_size: int = cited(224, "tv MViT_V1_B_Weights transforms: crop_size=(224, 224)")
    mean: tuple[float, float, float] = cited((0.45, 0.45, 0.45), "tv MViT_V1_B_Weights transforms mean (RGB, 0-1)")
    std: tuple[float, float, float] = cited((0.225, 0.225, 0.225), "tv MViT_V1_B_Weights transforms std")


K400_EVAL = VideoEvalConfig()
