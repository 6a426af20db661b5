"""detectron2's MViTv2 backbone, fast path: the layout's flow with the fast attention, a channels-last patch conv
and an optional autocast dtype (outputs float32; PRECISION.AUTOCAST, PRECISION.OUTPUT_FP32)."""

from __future__ import annotations

import torch
from torch import Tensor

from fast.mvit_det.attention import PoolingAttention
from layout import mvit_det as layout
from layout.precision import autocast, check_autocast_dtype, widen
from spec.mvit_det import MVITV2_T_DET, MViTDetConfig, check_image


class MultiScaleBlock(layout.MultiScaleBlock):
    attention_type = PoolingAttention


class MViTDetBackbone(layout.MViTDetBackbone):
    """Same contract and keys as the reference; ``autocast_dtype`` (torch.bfloat16 / torch.float16) is a forward
    option, not state."""

    block_type = MultiScaleBlock

    def __init__(self, cfg: MViTDetConfig = MVITV2_T_DET, *, autocast_dtype: torch.dtype | None = None):
        super().__init__(cfg)
        self.autocast_dtype = check_autocast_dtype(autocast_dtype)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        check_image(images, self.cfg)  # MVITDET.ERRORS, before the channels-last copy
        images = images.contiguous(memory_format=torch.channels_last)
        if self.autocast_dtype is None:
            return self.features(images)
        with autocast(images.device, self.autocast_dtype):
            out = self.features(images)
        return {k: widen(v) for k, v in out.items()}
