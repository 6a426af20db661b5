"""MViTv2 detection backbone layout (d2-spec §4; clauses MVITDET.KEYS, MVITDET.PARAMS, MVITDET.SCHEDULE,
MVITDET.BLOCK, MVITDET.OUTPUTS): every module that holds parameters, with its constructor, initialisation and
detectron2's state_dict keys, plus the control flow written once (the block's residual flow and the backbone's
stage outputs). ``reference.mvit_det`` and ``fast.mvit_det`` subclass ``PoolingAttention`` and write only the
attention's forward (pool, window, attend with relative positions, residual pooling).

Numbers come from ``spec.mvit_det`` (MVITV2_T_DET, MVITV2_S_DET, MVITV2_B_DET). Keys, as detectron2's
``MViT`` has them (under ``backbone.bottom_up.`` in a detectron2 detector checkpoint), with hd = head_dim and
L = the block's table length (``MViTDetBlockSpec.rel_pos_length``):

    key                                          shape                    when
    patch_embed.proj.{weight, bias}              [D, 3, 7, 7], [D]        always
    blocks.N.norm1.{weight, bias}                [dim]                    always
    blocks.N.attn.rel_pos_{h, w}                 [L, hd]                  use_rel_pos
    blocks.N.attn.qkv.{weight, bias}             [3 dim_out, dim]         bias: qkv_bias
    blocks.N.attn.proj.{weight, bias}            [dim_out, dim_out]       always
    blocks.N.attn.pool_{q, k, v}.weight          [hd, 1, 3, 3]            always (stride 1 too)
    blocks.N.attn.norm_{q, k, v}.{weight, bias}  [hd]                     always
    blocks.N.norm2.{weight, bias}                [dim_out]                always
    blocks.N.mlp.fc1.{weight, bias}              [4 dim_out, dim_out]     always
    blocks.N.mlp.fc2.{weight, bias}              [dim_out, 4 dim_out]     always
    blocks.N.proj.{weight, bias}                 [dim_out, dim]           dim != dim_out
    scale{2..5}_norm.{weight, bias}              [stage channels]         each output feature

Initialisation (d2-spec §4.1): Linear weights truncated-normal(init_std), biases zero, LayerNorms one/zero,
relative-position tables zero; the convolutions keep PyTorch's default.

Tensors between blocks are NHWC (``[N, H, W, C]``, detectron2's layout); the outputs are NCHW.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from layout.mvit import init_linears_and_norms, num_parameters
from spec.mvit_det import MVITV2_T_DET, MViTDetBlockSpec, MViTDetConfig, check_image


class PoolingAttention(nn.Module):
    """Pooling attention of one block (d2-spec §4.4; MVITDET.ATTENTION): [N, H, W, dim] -> [N, H', W', dim_out].

    Keys: ``rel_pos_{h, w}`` (registered first, so first in the state_dict), ``qkv`` (Linear dim -> 3 dim_out,
    columns [q heads | k heads | v heads], head-major), ``proj`` (Linear dim_out -> dim_out), ``pool_{q, k, v}``
    (depthwise Conv2d over head_dim channels, kernel 3, padding 1, no bias, shared by the heads; q at stride_q, k
    and v at stride_kv), ``norm_{q, k, v}`` (LayerNorm over head_dim). A subclass writes ``forward``.
    """

    def __init__(self, spec: MViTDetBlockSpec, cfg: MViTDetConfig = MVITV2_T_DET):
        super().__init__()
        self.spec = spec
        self.num_heads, self.head_dim = spec.num_heads, spec.head_dim
        self.scale = spec.head_dim ** -0.5
        self.stride_q, self.stride_kv = spec.stride_q, spec.stride_kv
        self.q_window, self.kv_window = spec.q_window, spec.kv_window  # 0: global attention
        self.residual_pooling = cfg.residual_pooling
        self.rel_pos_interp = cfg.rel_pos_interp
        self.use_rel_pos = cfg.use_rel_pos
        if cfg.use_rel_pos:
            self.rel_pos_h = nn.Parameter(torch.zeros(spec.rel_pos_length, spec.head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(spec.rel_pos_length, spec.head_dim))
        self.qkv = nn.Linear(spec.dim, 3 * spec.dim_out, bias=cfg.qkv_bias)
        self.proj = nn.Linear(spec.dim_out, spec.dim_out)
        hd, kernel = spec.head_dim, cfg.qkv_pool_kernel
        padding = tuple(k // 2 for k in kernel)
        for name, stride in (("q", spec.stride_q), ("k", spec.stride_kv), ("v", spec.stride_kv)):
            self.add_module(f"pool_{name}", nn.Conv2d(hd, hd, kernel, stride=stride, padding=padding, groups=hd,
                                                      bias=False))
            self.add_module(f"norm_{name}", nn.LayerNorm(hd, eps=cfg.norm_eps))

    def extra_repr(self) -> str:
        window = f"window q {self.q_window} / kv {self.kv_window}" if self.q_window else "global"
        return f"heads={self.num_heads}, stride_q={self.stride_q}, stride_kv={self.stride_kv}, {window}"


class Mlp(nn.Module):
    """fc1 (dim_out -> mlp_ratio dim_out), GELU, fc2 (-> dim_out): timm's Mlp keys ``fc1`` / ``fc2``."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


def skip_max_pool(x: Tensor, stride: int) -> Tensor:
    """[N, H, W, C] -> [N, H', W', C]: MaxPool2d(kernel stride + 1, stride, padding (stride + 1) // 2) over space
    (d2-spec §4.6 item 3)."""
    kernel = stride + 1
    return F.max_pool2d(x.permute(0, 3, 1, 2), kernel, stride, kernel // 2).permute(0, 2, 3, 1)


def drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Stochastic depth (d2-spec §4.6 items 4-5): in training, each sample's branch is zeroed with probability p,
    else scaled by 1 / (1 - p); the identity in eval or with p = 0."""
    if not training or p == 0.0:
        return x
    keep = 1.0 - p
    return x * x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep) / keep


class MultiScaleBlock(nn.Module):
    """One block (d2-spec §4.6; MVITDET.BLOCK): [N, H, W, dim] -> [N, H', W', dim_out].

    Keys: ``norm1`` [dim], ``attn.*``, ``norm2`` [dim_out], ``mlp.fc1`` / ``mlp.fc2``, ``proj`` (dim != dim_out).
    The skip path is the *normed* input projected where the width changes (else the input), max-pooled where Q is
    pooled; x = skip + attn(norm1(x)); x = x + mlp(norm2(x)).
    """

    attention_type: type[PoolingAttention] = PoolingAttention
    stochastic_depth: Callable[[Tensor, float, bool], Tensor] = staticmethod(drop_path)

    def __init__(self, spec: MViTDetBlockSpec, cfg: MViTDetConfig = MVITV2_T_DET):
        super().__init__()
        self.spec = spec
        self.drop_path = spec.drop_path
        self.norm1 = nn.LayerNorm(spec.dim, eps=cfg.norm_eps)
        self.attn = self.attention_type(spec, cfg)
        self.norm2 = nn.LayerNorm(spec.dim_out, eps=cfg.norm_eps)
        self.mlp = Mlp(spec.dim_out, int(spec.dim_out * cfg.mlp_ratio))
        self.proj = nn.Linear(spec.dim, spec.dim_out) if spec.dim != spec.dim_out else None

    def forward(self, x: Tensor) -> Tensor:
        x_norm = self.norm1(x)
        branch = self.attn(x_norm)
        skip = x if self.proj is None else self.proj(x_norm)  # the normed input where the width changes
        if self.spec.stride_q > 1:
            skip = skip_max_pool(skip, self.spec.stride_q)
        x = skip + self.stochastic_depth(branch, self.drop_path, self.training)
        return x + self.stochastic_depth(self.mlp(self.norm2(x)), self.drop_path, self.training)


class PatchEmbed(nn.Module):
    """Conv2d in_channels -> embed_dim (kernel 7, stride 4, padding 3, bias) as ``proj``; output NHWC."""

    def __init__(self, cfg: MViTDetConfig = MVITV2_T_DET):
        super().__init__()
        self.proj = nn.Conv2d(cfg.in_channels, cfg.embed_dim, cfg.patch_kernel, stride=cfg.patch_stride,
                              padding=cfg.patch_padding)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).permute(0, 2, 3, 1)  # [N, H/4, W/4, D]


class MViTDetBackbone(nn.Module):
    """detectron2's MViTv2 backbone (d2-spec §4; MVITDET.OUTPUTS): images [N, 3, H, W] ->
    {"scale2": [N, C2, H/4, W/4], ..., "scale5": [N, C5, H/32, W/32]} (sides that are multiples of 32; other
    sizes give the pooled-length grids), each after its own LayerNorm ``scale{k}_norm``, NCHW.

    ``block_type`` names the implementation's MultiScaleBlock (whose ``attention_type`` writes the attention).
    ``size_divisibility`` (32) and ``output_shape()`` follow detectron2's Backbone interface.
    """

    block_type: type[MultiScaleBlock] = MultiScaleBlock

    def __init__(self, cfg: MViTDetConfig = MVITV2_T_DET):
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg)
        self.blocks = nn.ModuleList(self.block_type(spec, cfg) for spec in cfg.blocks)
        self._outputs = {i: f"scale{cfg.blocks[i].stage}" for i in cfg.last_block_indexes
                         if f"scale{cfg.blocks[i].stage}" in cfg.out_features}
        for i, name in self._outputs.items():
            self.add_module(f"{name}_norm", nn.LayerNorm(cfg.blocks[i].dim_out, eps=cfg.norm_eps))
        init_linears_and_norms(self, cfg.init_std)  # rel-pos tables stay zero; convs keep PyTorch's init

    @property
    def size_divisibility(self) -> int:
        return max(self.cfg.stage_strides.values())

    def output_shape(self) -> dict[str, tuple[int, int]]:
        """name -> (channels, stride)."""
        return {n: (self.cfg.stage_channels[n], self.cfg.stage_strides[n]) for n in self._outputs.values()}

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        check_image(images, self.cfg)  # MVITDET.ERRORS, MVITDET.ANY_SIZE
        return self.features(images)

    def features(self, images: Tensor) -> dict[str, Tensor]:
        """The stages on a checked batch: patch embedding, blocks, the output norms at each stage's end."""
        x = self.patch_embed(images)
        outputs = {}
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self._outputs:
                name = self._outputs[i]
                outputs[name] = getattr(self, f"{name}_norm")(x).permute(0, 3, 1, 2)
        return outputs


__all__ = ["MViTDetBackbone", "MultiScaleBlock", "PatchEmbed", "PoolingAttention", "num_parameters"]
