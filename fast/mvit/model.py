"""The MViT stack and head, fast path: same contract as ``reference.mvit.MViT`` and the same state_dict, built by
``layout.mvit.MViT`` (torchvision's ``mvit_v1_b`` / ``mvit_v2_s`` layout, so a torchvision state_dict loads
unchanged).

- the patch conv runs channels-last, so its output is already token-major;
- ``autocast_dtype`` (e.g. torch.bfloat16) runs the forward under ``torch.autocast``: on CUDA, matmuls, convs and
  SDPA (flash / memory-efficient kernels) in that dtype, LayerNorm and softmax statistics in float32; on a CPU
  with bf16 units (AVX512-BF16, AMX) the same. Logits come back in float32. The result is checked with the ratio
  rule of ``spec.tolerances``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fast.mvit.block import MultiScaleBlock
from fast.mvit.pos_embed import PositionalEncoding
from layout import mvit as layout
from layout.precision import autocast, check_autocast_dtype, widen
from spec.mvit import MVIT_B_16X4, MViTConfig, check_clip


class MViT(layout.MViT):
    """Fast forward (channels-last patch conv, optional autocast); parameters, initialisation, config checks and
    keys are ``layout.mvit.MViT``'s."""

    block_type = MultiScaleBlock
    pos_encoding_type = PositionalEncoding

    def __init__(self, cfg: MViTConfig = MVIT_B_16X4, *, autocast_dtype: torch.dtype | None = None):
        super().__init__(cfg)
        self.autocast_dtype = check_autocast_dtype(autocast_dtype)  # a forward option, not a parameter

    def _autocast(self, clip: Tensor):
        return autocast(clip.device, self.autocast_dtype)  # PRECISION.AUTOCAST

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
            return widen(self.head(pooled))  # float32 logits under autocast (PRECISION.OUTPUT_FP32)
