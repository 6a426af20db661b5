"""The MViT stack and head (P1 Table 3b, App. D.1; P2; clauses MVIT.TOKEN_COUNTS, MVIT.CHANNELS_GROW,
MVIT.PARAMS, MVIT.GMACS, MVIT.IMAGE, MVIT.ERRORS).

Shapes: clip [B, 3, T, H, W] (an image config also takes [B, 3, H, W]) -> logits [B, K].

    tokens, thw = conv_proj(clip)                   cube patch embedding (patch_embed.py)
    x = pos_encoding(tokens, thw)                   cls token + separable space/time positions (pos_embed.py)
    for block in blocks: x, thw = block(x, thw)     16 multiscale blocks (block.py), Q-pooled at 1, 3, 14
    logits = head(norm(x)[:, 0])                    LayerNorm, the cls token, Dropout, Linear(C -> K)

Any input size the strides admit works: the token grid is read off the patch embedding, absolute position tables
are interpolated to it and relative ones resized (``spec.mvit.check_clip`` rejects sizes that leave an empty axis).

State-dict layout: identical to torchvision's ``mvit_v1_b`` (MVIT_B_16X4) and ``mvit_v2_s`` (MVIT_V2_S), so a
torchvision state_dict loads unchanged with ``load_state_dict(sd, strict=True)`` (the conversion is the identity):
``conv_proj.*``, ``pos_encoding.{class_token, spatial_pos, temporal_pos, class_pos}``, ``blocks.N.*`` (block.py),
``norm.*``, ``head.1.*``. A checkpoint saved with a 2-D patch conv (SlowFast's ImageNet MViT) needs its
``conv_proj.weight`` unsqueezed at dim 2.
"""

from __future__ import annotations

from torch import Tensor, nn

from reference.mvit.block import MultiScaleBlock
from reference.mvit.patch_embed import embed_patches, make_patch_embedding
from reference.mvit.pos_embed import PositionalEncoding
from spec.mvit import MVIT_B_16X4, MViTConfig, check_clip


class MViT(nn.Module):
    def __init__(self, cfg: MViTConfig = MVIT_B_16X4):
        super().__init__()
        if not isinstance(cfg, MViTConfig):
            raise TypeError(f"cfg must be a spec.mvit.MViTConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        grids = cfg.token_grids()
        self.conv_proj = make_patch_embedding(cfg)
        self.pos_encoding = PositionalEncoding(
            cfg.embed_dim, grids[0], absolute=cfg.sep_pos_embed, cls_token=cfg.cls_embed,
            spatial_mode=cfg.pos_interp_spatial, temporal_mode=cfg.pos_interp_temporal)
        self.blocks = nn.ModuleList(MultiScaleBlock.from_spec(row, cfg, grid) for row, grid in zip(cfg.blocks, grids))
        self.norm = nn.LayerNorm(cfg.out_dim, eps=cfg.norm_eps)
        self.head = nn.Sequential(nn.Dropout(cfg.head_dropout), nn.Linear(cfg.out_dim, cfg.num_classes))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Truncated-normal(0.02) Linear weights and position tables, zero biases, unit LayerNorms (P1 App. D.1)."""
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


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["MViT", "num_parameters"]
