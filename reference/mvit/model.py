"""The MViT stack and head (P1 Table 3b, App. D.1; P2; clauses MVIT.TOKEN_COUNTS, MVIT.CHANNELS_GROW,
MVIT.PARAMS, MVIT.GMACS, MVIT.IMAGE, MVIT.ERRORS).

Shapes: clip [B, 3, T, H, W] (an image config also takes [B, 3, H, W]) -> logits [B, K].

    tokens, thw = conv_proj(clip)                   cube patch embedding (patch_embed.py)
    x = pos_encoding(tokens, thw)                   cls token + separable space/time positions (pos_embed.py)
    for block in blocks: x, thw = block(x, thw)     16 multiscale blocks (block.py), Q-pooled at 1, 3, 14
    logits = head(norm(x)[:, 0])                    LayerNorm, the cls token, Dropout, Linear(C -> K)

Any input size the strides admit works: the token grid is read off the patch embedding, absolute position tables
are interpolated to it and relative ones resized (``spec.mvit.check_clip`` rejects sizes that leave an empty axis).

State-dict layout (built by ``layout.mvit.MViT``): identical to torchvision's ``mvit_v1_b`` (MVIT_B_16X4) and
``mvit_v2_s`` (MVIT_V2_S), so a torchvision state_dict loads unchanged with ``load_state_dict(sd, strict=True)`` (the
conversion is the identity): ``conv_proj.*``, ``pos_encoding.{class_token, spatial_pos, temporal_pos, class_pos}``,
``blocks.N.*`` (block.py), ``norm.*``, ``head.1.*``. A checkpoint saved with a 2-D patch conv (SlowFast's ImageNet
MViT) needs its ``conv_proj.weight`` unsqueezed at dim 2.
"""

from __future__ import annotations

from torch import Tensor

from layout import mvit as layout
from reference.mvit.block import MultiScaleBlock
from reference.mvit.patch_embed import embed_patches
from reference.mvit.pos_embed import PositionalEncoding
from spec.mvit import check_clip


class MViT(layout.MViT):
    """The stack above; parameters, initialisation, config checks and keys are ``layout.mvit.MViT``'s."""

    block_type = MultiScaleBlock
    pos_encoding_type = PositionalEncoding

    def forward_features(self, clip: Tensor) -> tuple[Tensor, tuple[int, int, int]]:
        """clip -> (tokens [B, N, C] after the last block, before the final norm; their grid)."""
        clip = check_clip(clip, self.cfg, "clip")
        tokens, thw = embed_patches(self.conv_proj, clip)
        x = self.pos_encoding(tokens, thw)
        for block in self.blocks:
            x, thw = block(x, thw)
        return x, thw

    def forward(self, clip: Tensor) -> Tensor:
        x, _ = self.forward_features(clip)
        x = self.norm(x)
        pooled = x[:, 0] if self.cfg.cls_embed else x.mean(dim=1)  # the cls token (P1 App. D.1)
        return self.head(pooled)


__all__ = ["MViT"]
