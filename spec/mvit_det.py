"""detectron2's MViTv2 image backbones for detection (MViTv2-T/S/B) as frozen dataclasses, each field citing its
source, plus the shape arithmetic: the per-block schedule, the token grids at an input size and the window rule.

Sources use these short forms:

- ``d2-spec §4.x``   spec/text/detectron2.md, section 4 (detectron2 modeling/backbone/mvit.py, backbone/utils.py and
                     projects/MViTv2/configs, restated there)
- ``mvit.py``        detectron2 modeling/backbone/mvit.py (``MViT.__init__`` defaults)
- ``<variant>.py``   detectron2 projects/MViTv2/configs/mask_rcnn_mvitv2_{t,s,b}_3x.py

The per-block table (``MViTDetConfig.blocks``) is derived in ``__post_init__`` from the stage description, the way
detectron2's constructor builds it (d2-spec §4.3), so a config states each number once:

- block i's query stride is 2 when block i - 1 ends a stage (``last_block_indexes``), else 1; that first block of
  a stage doubles the channels (dim -> dim_out) and the heads;
- the K/V stride starts at ``adaptive_kv_stride`` and halves (minimum 1) after each stage end; the last blocks of
  the second and third stages (``last_block_indexes[1]`` and ``[2]``) use twice the stage's stride;
- the last blocks of stages 3, 4 and 5 attend globally (window 0); every other block attends inside windows of
  ``adaptive_window_size`` tokens, halved after the first block of each new stage; its Q windows are
  window // stride_q tokens wide and its K/V windows window // stride_kv;
- the relative-position tables are sized for the block's input side S at ``img_size``:
  2 * max(S // stride_q, S // stride_kv) - 1 rows (S = img_size / 4, halved where the window halves).

A block's grids at an input size follow the pooled-length rule L' = floor((L + 2p - k) / s) + 1 per axis
(``spec.mvit.pooled_length``; kernel 3, padding 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from spec.fields import cited
from spec.mvit import pooled_length

Pair = tuple[int, int]


@dataclass(frozen=True)
class MViTDetBlockSpec:
    """One row of the per-block table (derived; the numbers are cited on MViTDetConfig's fields).

    ``stage`` is 2..5 (the output it belongs to: scale2..scale5); ``window`` 0 means global attention;
    ``rel_pos_side`` is the block's input side at ``img_size``.
    """

    index: int
    stage: int
    dim: int
    dim_out: int
    num_heads: int
    stride_q: int
    stride_kv: int
    window: int
    rel_pos_side: int
    drop_path: float

    @property
    def head_dim(self) -> int:
        return self.dim_out // self.num_heads

    @property
    def q_window(self) -> int:
        """Q window side in tokens (0 for a global block): window // stride_q."""
        return self.window // self.stride_q

    @property
    def kv_window(self) -> int:
        """K/V window side in tokens (0 for a global block): window // stride_kv."""
        return self.window // self.stride_kv

    @property
    def rel_pos_length(self) -> int:
        """Rows of the stored rel_pos_h / rel_pos_w tables: 2 * max(S // stride_q, S // stride_kv) - 1."""
        s = self.rel_pos_side
        return 2 * max(s // self.stride_q, s // self.stride_kv) - 1


@dataclass(frozen=True)
class MViTDetConfig:
    name: str
    # ------------------------------------------------------------------------------------------ input
    img_size: int = cited(224, "mvit.py img_size=224 (sizes the relative-position tables only); d2-spec §4.1")
    in_channels: int = cited(3, "mvit.py in_chans=3")
    # ------------------------------------------------------------------------------------------ patch embedding
    patch_kernel: Pair = cited((7, 7), "mvit.py patch_kernel=(7, 7); d2-spec §4.1")
    patch_stride: Pair = cited((4, 4), "mvit.py patch_stride=(4, 4); d2-spec §4.1")
    patch_padding: Pair = cited((3, 3), "mvit.py patch_padding=(3, 3); d2-spec §4.1")
    embed_dim: int = cited(96, "mvitv2_t_3x.py embed_dim=96; d2-spec §4.2")
    # ------------------------------------------------------------------------------------------ stages
    depth: int = cited(10, "mvitv2_t_3x.py depth=10; d2-spec §4.2")
    num_heads: int = cited(1, "mvitv2_t_3x.py num_heads=1; d2-spec §4.2")
    last_block_indexes: tuple[int, int, int, int] = cited(
        (0, 2, 7, 9), "mvitv2_t_3x.py last_block_indexes=(0, 2, 7, 9); d2-spec §4.2")
    # ------------------------------------------------------------------------------------------ pooling attention
    qkv_pool_kernel: Pair = cited((3, 3), "mvit.py qkv_pool_kernel=(3, 3); d2-spec §4.4 item 2")
    adaptive_kv_stride: int = cited(4, "mvit.py adaptive_kv_stride=4; d2-spec §4.3")
    adaptive_window_size: int = cited(56, "mvit.py adaptive_window_size=56; d2-spec §4.3")
    residual_pooling: bool = cited(True, "mvitv2_t_3x.py residual_pooling=True; d2-spec §4.4 item 5")
    use_rel_pos: bool = cited(True, "mvit.py use_rel_pos=True; d2-spec §4.5")
    rel_pos_interp: str = cited("linear", "utils.py get_rel_pos: F.interpolate(mode='linear'); d2-spec §4.5")
    # ------------------------------------------------------------------------------------------ blocks
    mlp_ratio: float = cited(4.0, "mvit.py mlp_ratio=4.0; d2-spec §4.6 item 5")
    qkv_bias: bool = cited(True, "mvit.py qkv_bias=True; d2-spec §4.1")
    norm_eps: float = cited(1e-6, "mvitv2_t_3x.py norm_layer=partial(nn.LayerNorm, eps=1e-6); d2-spec §4.1")
    drop_path: float = cited(0.2, "mvitv2_t_3x.py drop_path_rate=0.2, linear in depth; d2-spec §4.2")
    init_std: float = cited(0.02, "mvit.py _init_weights: trunc_normal_(std=0.02) on Linear weights; d2-spec §4.1")
    out_features: tuple[str, ...] = cited(("scale2", "scale3", "scale4", "scale5"),
                                          "mvitv2_t_3x.py out_features; d2-spec §4.2")
    # ------------------------------------------------------------------------------------------ derived
    blocks: tuple[MViTDetBlockSpec, ...] = field(
        init=False, repr=False, compare=False,
        metadata={"source": "derived in __post_init__ from the fields above (d2-spec §4.3)"})

    def __post_init__(self) -> None:
        _check_config(self)
        object.__setattr__(self, "blocks", _derive_blocks(self))
        for b in self.blocks:  # configs detectron2 would crash on (a zero-width window, an empty table)
            if b.window and min(b.q_window, b.kv_window) < 1:
                raise ValueError(f"block {b.index}: window {b.window} is narrower than its strides (Q {b.stride_q}, "
                                 f"K/V {b.stride_kv}); give a larger adaptive_window_size")
            if b.rel_pos_length < 1:
                raise ValueError(f"block {b.index}: img_size {self.img_size} leaves a {b.rel_pos_side}-token side "
                                 "for the relative-position tables; give a larger img_size")

    # ------------------------------------------------------------------------------------------ helpers
    @property
    def stage_names(self) -> tuple[str, ...]:
        return tuple(f"scale{s}" for s in range(2, 2 + len(self.last_block_indexes)))

    @property
    def stage_channels(self) -> dict[str, int]:
        """scale2..scale5 -> channels (the dim_out of the stage's last block): 96, 192, 384, 768."""
        return {f"scale{self.blocks[i].stage}": self.blocks[i].dim_out for i in self.last_block_indexes}

    @property
    def stage_strides(self) -> dict[str, int]:
        """scale2..scale5 -> stride in input pixels: 4, 8, 16, 32 (the patch stride, doubled per stage)."""
        return {name: self.patch_stride[0] * 2 ** k for k, name in enumerate(self.stage_names)}

    @property
    def stage_blocks(self) -> tuple[int, ...]:
        ends = self.last_block_indexes
        return tuple(e - s for s, e in zip((-1,) + ends[:-1], ends))

    def patch_grid(self, hw: Pair) -> Pair:
        """Token grid after the patch embedding: floor((L + 2p - k) / s) + 1 per axis (56x56 at 224x224)."""
        return tuple(pooled_length(n, k, s, p) for n, k, s, p in  # type: ignore[return-value]
                     zip(hw, self.patch_kernel, self.patch_stride, self.patch_padding))

    def block_grids(self, hw: Pair) -> tuple[tuple[Pair, Pair, Pair], ...]:
        """For each block at input size hw: (input grid, pooled Q grid = output grid, pooled K/V grid)."""
        grid = self.patch_grid(hw)
        k = self.qkv_pool_kernel
        out = []
        for b in self.blocks:
            q = tuple(pooled_length(n, kk, b.stride_q, kk // 2) for n, kk in zip(grid, k))
            kv = tuple(pooled_length(n, kk, b.stride_kv, kk // 2) for n, kk in zip(grid, k))
            out.append((grid, q, kv))
            grid = q
        return tuple(out)  # type: ignore[return-value]

    def output_grids(self, hw: Pair) -> dict[str, Pair]:
        """scale2..scale5 -> (H, W) of that output at input size hw (H/4 .. H/32 when 32 divides H and W)."""
        grids = self.block_grids(hw)
        return {f"scale{self.blocks[i].stage}": grids[i][1] for i in self.last_block_indexes}


def _check_config(cfg: MViTDetConfig) -> None:
    lbi = cfg.last_block_indexes
    if len(lbi) != 4 or list(lbi) != sorted(set(lbi)) or lbi[0] < 0 or lbi[-1] != cfg.depth - 1:
        raise ValueError(f"last_block_indexes must be 4 increasing block indices ending at depth - 1 = "
                         f"{cfg.depth - 1}, got {lbi}")
    if cfg.patch_stride[0] != cfg.patch_stride[1]:
        raise ValueError(f"patch_stride must be square, got {cfg.patch_stride}")
    if cfg.img_size % cfg.patch_stride[0]:
        raise ValueError(f"img_size {cfg.img_size} must be a multiple of the patch stride {cfg.patch_stride[0]}")
    for name in ("patch_kernel", "patch_stride", "qkv_pool_kernel"):
        value = getattr(cfg, name)
        if len(value) != 2 or min(value) < 1:
            raise ValueError(f"{name} must be two positive ints (H, W), got {value}")


def _derive_blocks(cfg: MViTDetConfig) -> tuple[MViTDetBlockSpec, ...]:
    lbi = cfg.last_block_indexes
    dim, dim_out, heads = cfg.embed_dim, cfg.embed_dim, cfg.num_heads
    kv, window = cfg.adaptive_kv_stride, cfg.adaptive_window_size
    side, stage = cfg.img_size // cfg.patch_stride[0], 2
    rows = []
    for i in range(cfg.depth):
        stride_kv = 2 * kv if i in (lbi[1], lbi[2]) else kv  # d2-spec §4.3: doubled at two global blocks
        stride_q = 2 if i - 1 in lbi else 1
        if dim_out % heads:
            raise ValueError(f"block {i}: width {dim_out} is not divisible by {heads} heads")
        rows.append(MViTDetBlockSpec(
            index=i, stage=stage, dim=dim, dim_out=dim_out, num_heads=heads, stride_q=stride_q,
            stride_kv=stride_kv, window=0 if i in lbi[1:] else window, rel_pos_side=side,
            drop_path=cfg.drop_path * i / max(cfg.depth - 1, 1)))
        dim = dim_out
        if i in lbi:  # a stage ends: the next block doubles channels and heads, K/V stride halves
            dim_out, heads, kv, stage = dim_out * 2, heads * 2, max(kv // 2, 1), stage + 1
        if i - 1 in lbi:  # the first block of a stage has run: the window and the grid halve
            window, side = window // 2, side // 2
    return tuple(rows)


# ---------------------------------------------------------------------------------------------- known values
@dataclass(frozen=True)
class MViTDetKnownValues:
    """Numbers the spec states about the built backbones (checked by the MVITDET.* clauses)."""

    params_t: int = cited(23_405_664, "d2-spec §4.3: patch embed + 10 blocks + 4 output LayerNorms [D]")
    params_s: int = cited(34_102_560, "d2-spec §4.3 [D]")
    params_b: int = cited(50_705_088, "d2-spec §4.3 [D]")
    block_params_t: tuple[int, ...] = cited(
        (136_320, 421_728, 458_592, 1_640_736, 1_782_816, 1_782_816, 1_782_816, 1_782_816, 6_506_400, 7_093_536),
        "d2-spec §4.3 per-block schedule, MViTv2-T [D]")
    rel_pos_lengths_t: tuple[int, ...] = cited((111, 55, 55, 55, 27, 27, 27, 27, 27, 13),
                                               "d2-spec §4.3 per-block schedule, MViTv2-T (table L)")
    windows_t: tuple[tuple[int, int], ...] = cited(
        ((56, 14), (28, 28), (0, 0), (14, 28), (14, 14), (14, 14), (14, 14), (0, 0), (7, 14), (0, 0)),
        "d2-spec §4.3 per-block schedule, MViTv2-T (window q / kv; 0 = global)")
    stage_channels: tuple[int, ...] = cited((96, 192, 384, 768), "d2-spec §4.2: scale2..scale5 channels (T/S/B)")
    stage_strides: tuple[int, ...] = cited((4, 8, 16, 32), "d2-spec §4.2: scale2..scale5 strides")


MVITDET_KNOWN = MViTDetKnownValues()


# ---------------------------------------------------------------------------------------------- instances
MVITV2_T_DET = MViTDetConfig(name="mvitv2_t_det")
"""MViTv2-T, detectron2 projects/MViTv2/configs/mask_rcnn_mvitv2_t_3x.py (d2-spec §4.2)."""

MVITV2_S_DET = replace(MVITV2_T_DET, name="mvitv2_s_det",
                       depth=16,  # d2-spec §4.2
                       last_block_indexes=(0, 2, 13, 15))  # d2-spec §4.2
"""MViTv2-S (d2-spec §4.2)."""

MVITV2_B_DET = replace(MVITV2_T_DET, name="mvitv2_b_det",
                       depth=24,  # d2-spec §4.2
                       last_block_indexes=(1, 4, 20, 23),  # d2-spec §4.2
                       drop_path=0.4)  # d2-spec §4.2
"""MViTv2-B (d2-spec §4.2)."""

MVITDET_CONFIGS: dict[str, MViTDetConfig] = {c.name: c for c in (MVITV2_T_DET, MVITV2_S_DET, MVITV2_B_DET)}


def get_mvitdet_config(name: str) -> MViTDetConfig:
    try:
        return MVITDET_CONFIGS[name]
    except KeyError:
        raise ValueError(f"unknown MViTv2 detection backbone {name!r}; expected one of {sorted(MVITDET_CONFIGS)}"
                         ) from None


def config_for_depth(depth: int) -> MViTDetConfig | None:
    """The variant with ``depth`` blocks (10 T, 16 S, 24 B), or None: how a checkpoint's keys name its variant."""
    return next((c for c in MVITDET_CONFIGS.values() if c.depth == depth), None)


# ---------------------------------------------------------------------------------------------- input checks
def check_window_grids(cfg: MViTDetConfig, hw: Pair) -> None:
    """ValueError unless every grid at input size hw is non-empty and every windowed block cuts Q and K/V into the
    same number of windows along each axis (ceil(Q side / q_window) == ceil(K/V side / kv_window), MVITDET.ANY_SIZE).

    MViTv2-T/S/B pass at every size (their windows divide by their strides, d2-spec §4.7); a custom config may not,
    and detectron2 would fail later with a shape error where this refuses.
    """
    for b, (grid, q, kv) in zip(cfg.blocks, cfg.block_grids(hw)):
        if min(grid + q + kv) < 1:
            raise ValueError(f"input {hw[0]}x{hw[1]} is too small for {cfg.name}: block {b.index} would see a "
                             f"{grid[0]}x{grid[1]} grid pooled to Q {q[0]}x{q[1]} and K/V {kv[0]}x{kv[1]}")
        if b.window:
            nq = tuple(math.ceil(n / b.q_window) for n in q)
            nkv = tuple(math.ceil(n / b.kv_window) for n in kv)
            if nq != nkv:
                raise ValueError(
                    f"input {hw[0]}x{hw[1]} does not suit {cfg.name}'s window attention: block {b.index} cuts its "
                    f"{q[0]}x{q[1]} Q grid into {nq[0]}x{nq[1]} windows of {b.q_window} but its {kv[0]}x{kv[1]} K/V "
                    f"grid into {nkv[0]}x{nkv[1]} windows of {b.kv_window} (the window does not divide by the strides)")


def check_image(x: Any, cfg: MViTDetConfig, name: str = "images") -> None:
    """A floating [N, C, H, W] batch whose size the backbone handles (TypeError / ValueError naming the problem)."""
    import torch

    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype, got {x.dtype}")
    if x.dim() != 4 or x.shape[1] != cfg.in_channels:
        raise ValueError(f"{name} must have shape [N, {cfg.in_channels}, H, W], got {list(x.shape)}")
    if torch.compiler.is_compiling():  # symbolic sizes (export, compile): the window rule is checked eagerly only
        return
    check_window_grids(cfg, (int(x.shape[2]), int(x.shape[3])))
