"""detectron2's MViTv2 backbone from the reference attention (d2-spec §4; clauses MVITDET.BLOCK, MVITDET.OUTPUTS).

Shapes: images [N, 3, H, W] -> {"scale2": [N, 96, H/4, W/4], "scale3": [N, 192, H/8, W/8],
"scale4": [N, 384, H/16, W/16], "scale5": [N, 768, H/32, W/32]} for MViTv2-T/S/B.

    x = patch_embed(images)                         Conv2d 7x7 / 4, NHWC
    for i, block in enumerate(blocks): x = block(x) skip + attn(norm1(x)), then + mlp(norm2(x))
        at a stage's last block: out[scale_k] = scale_k_norm(x) as NCHW

The block's and the backbone's flow, the parameters and detectron2's keys are ``layout.mvit_det``'s; this file
names the reference attention.
"""

from __future__ import annotations

from layout import mvit_det as layout
from reference.mvit_det.attention import PoolingAttention


class MultiScaleBlock(layout.MultiScaleBlock):
    attention_type = PoolingAttention


class MViTDetBackbone(layout.MViTDetBackbone):
    block_type = MultiScaleBlock


__all__ = ["MViTDetBackbone", "MultiScaleBlock"]
