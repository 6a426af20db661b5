"""MViTv2 detection-backbone clauses (issue 14), registered into ``spec.clauses.CLAUSES`` on import.

Sources: ``d2-spec §4`` (spec/text/detectron2.md: detectron2's modeling/backbone/mvit.py, utils.py and the
projects/MViTv2 configs). Numbers live in ``spec.mvit_det``; a clause names the field and shows its value, read at
registration, so the text cannot drift from it.
"""

from __future__ import annotations

from spec.clauses import register, value_text
from spec.mvit_det import MVITDET_KNOWN, MVITV2_T_DET

_BACKBONE = ("MViTDetBackbone",)
_K = MVITDET_KNOWN
_T = MVITV2_T_DET


def _known(name: str) -> str:
    return f"MViTDetKnownValues.{name} ({value_text(getattr(_K, name))})"


register("MVITDET.KEYS", "the backbone's state_dict has exactly detectron2 MViT's keys and shapes (patch_embed.proj, "
         "blocks.N.{norm1, attn.{rel_pos_h, rel_pos_w, qkv, proj, pool_q/k/v, norm_q/k/v}, norm2, mlp.fc1, mlp.fc2, "
         "proj where the width changes}, scale2..5_norm), so a detectron2 state_dict loads with strict=True",
         "d2-spec §5.3, §4.4", _BACKBONE)
register("MVITDET.PARAMS", f"MViTv2-T/S/B backbones have {_known('params_t')}, {_known('params_s')} and "
         f"{_known('params_b')} parameters; MViTv2-T's blocks have {_known('block_params_t')}",
         "d2-spec §4.3", _BACKBONE)
register("MVITDET.SCHEDULE", "block i pools Q at stride 2 after a stage end, doubles channels and heads there; the "
         f"K/V stride starts at MViTDetConfig.adaptive_kv_stride ({_T.adaptive_kv_stride}), halves per stage and "
         "doubles at the last blocks of stages 3 and 4; the last blocks of stages 3-5 attend globally, the others in "
         f"windows of MViTDetConfig.adaptive_window_size ({_T.adaptive_window_size}) halved per stage; tables have "
         f"2 max(S / s_q, S / s_kv) - 1 rows (MViTv2-T: {_known('rel_pos_lengths_t')}, windows "
         f"{_known('windows_t')})", "d2-spec §4.3", _BACKBONE)
register("MVITDET.OUTPUTS", "forward([N, 3, H, W]) returns scale2..scale5 in NCHW with "
         f"{_known('stage_channels')} channels at strides {_known('stage_strides')}, each after its own LayerNorm "
         "(H/4 .. H/32 for sides that are multiples of 32: 224x224, 256x256, 800x1216)", "d2-spec §4.2, §4.7",
         _BACKBONE)
register("MVITDET.BLOCK", "a block computes skip + attn(LN1(x)) then + MLP(LN2(.)), where skip is Linear(LN1(x)) "
         "where the width changes (else x), max-pooled (kernel 3, stride 2, padding 1) where Q is pooled",
         "d2-spec §4.6", _BACKBONE)
register("MVITDET.ATTENTION", "pooling attention: qkv Linear, depthwise 3x3 conv pooling (filters shared by the "
         "heads) then LayerNorm for each of Q, K, V, softmax(Q K^T / sqrt(d) + E) V with E from the unscaled pooled "
         "Q, plus the pooled Q (residual pooling), heads merged head-major, proj Linear; with timm's MViTv2 blocks "
         "at a 224x224 input (every window covers its map) the whole backbone gives timm's values",
         "d2-spec §4.4, §4.7", _BACKBONE)
register("MVITDET.WINDOWS", "a window block zero-pads pooled Q and K/V at the bottom and right to whole windows "
         "(window // s_q and window // s_kv tokens), attends inside each window (padded keys included), puts the "
         "windows back and crops the padding; each window equals timm's attention run on that window alone",
         "d2-spec §4.4 item 3, §4.7", _BACKBONE)
register("MVITDET.REL_POS", "decomposed relative positions on 2-D grids: row trunc(i max(k/q, 1) - j max(q/k, 1) + "
         "(k - 1) max(q/k, 1)) of a table linearly resized (align_corners False) to 2 max(q, k) - 1 rows",
         "d2-spec §4.5", _BACKBONE)
register("MVITDET.ANY_SIZE", "inputs of any size run (sides that are multiples of 32 give maps of exactly H/4 .. "
         "H/32): window blocks cut Q and K/V into equally many windows, relative-position tables are resized on the "
         "fly (the stored ones keep their 224-input lengths); a custom config whose windows break that rule at some "
         "size refuses it with a one-line ValueError", "d2-spec §4.7", _BACKBONE)
register("MVITDET.ERRORS", "a non-tensor or non-floating input is a TypeError and a batch that is not [N, 3, H, W] a "
         "ValueError, each one line naming the argument and what was expected, raised before any compute",
         "DESIGN.md conventions", _BACKBONE)
