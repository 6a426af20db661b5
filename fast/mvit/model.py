"""The MViT stack and head, fast path: same contract and state_dict as ``reference.mvit.MViT`` (torchvision's
``mvit_v1_b`` / ``mvit_v2_s`` layout, so a torchvision state_dict loads unchanged).

- the patch conv runs channels-last, so its output is already token-major;
- ``autocast_dtype`` (e.g. torch.bfloat16) runs the forward under ``torch.autocast``: on CUDA, matmuls, convs and
  SDPA (flash / memory-efficient kernels) in that dtype, LayerNorm and softmax statistics in float32. CPU autocast
  works too (bfloat16 only; useful to test the path, not faster there). The result is checked with the ratio rule
  of ``spec.tolerances``.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

from fast.mvit.block import MultiScaleBlock
from fast.mvit.pos_embed import PositionalEncoding
from spec.mvit import MVIT_B_16X4, MViTConfig, check_clip


class MViT(nn.Module):
    def __init__(self, cfg: MViTConfig = MVIT_B_16X4, *, autocast_dtype: torch.dtype | None = None):
        super().__init__()
        if not isinstance(cfg, MViTConfig):
            raise TypeError(f"cfg must be a spec.mvit.MViTConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.autocast_dtype = autocast_dtype
        grids = cfg.token_grids()
        self.conv_proj = nn.Conv3d(cfg.in_channels, cfg.embed_dim, kernel_size=cfg.patch_kernel,
                                   stride=cfg.patch_stride, padding=cfg.patch_padding, bias=True)
        self.pos_encoding = PositionalEncoding(
            cfg.embed_dim, grids[0], absolute=cfg.sep_pos_embed, cls_token=cfg.cls_embed,
            spatial_mode=cfg.pos_interp_spatial, temporal_mode=cfg.pos_interp_temporal)
        self.blocks = nn.ModuleList(MultiScaleBlock.from_spec(row, cfg, grid) for row, grid in zip(cfg.blocks, grids))
        self.norm = nn.LayerNorm(cfg.out_dim, eps=cfg.norm_eps)
        self.head = nn.Sequential(nn.Dropout(cfg.head_dropout), nn.Linear(cfg.out_dim, cfg.num_classes))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=self.cfg.init_std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for p in self.pos_encoding.parameters():
            nn.init.trunc_normal_(p, std=self.cfg.init_std)

    def _autocast(self, clip: Tensor):
        if self.autocast_dtype is not None and clip.device.type in ("cuda", "cpu"):
            return torch.autocast(clip.device.type, dtype=self.autocast_dtype)
        return contextlib.nullcontext()

    def forward_features(self, clip: Tensor) -> tuple[Tensor, tuple[int, int, int]]:
        clip = check_clip(clip, self.cfg, "clip")
        with self._autocast(clip):
            grid = self.conv_proj(clip.contiguous(memory_format=torch.channels_last_3d))  # [B, D, T', H', W']
            thw = tuple(grid.shape[2:])
            tokens = grid.flatten(2).transpose(1, 2)  # [B, T'H'W', D]; contiguous when channels-last
            x = self.pos_encoding(tokens, thw)
            for block in self.blocks:
                x, thw = block(x, thw)
        return x, thw  # type: ignore[return-value]

    def forward(self, clip: Tensor) -> Tensor:
        x, _ = self.forward_features(clip)
        with self._autocast(clip):
            x = self.norm(x)
            pooled = x[:, 0] if self.cfg.cls_embed else x.mean(dim=1)
            return self.head(pooled)
