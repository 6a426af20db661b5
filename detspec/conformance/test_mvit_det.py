"""Conformance: detectron2's MViTv2 detection backbones (d2-spec §4, §5.3; issue 14).

The contract is one module with detectron2's state_dict layout (``spec.contract`` PLANNED name):
``MViTDetBackbone(cfg)`` with ``forward(images [N, 3, H, W]) -> {"scale2": ..., "scale5": ...}`` (NCHW), submodules
``patch_embed``, ``blocks.N`` (``norm1``, ``attn``, ``norm2``, ``mlp``, ``proj``) and ``scale{k}_norm``.

Oracles: the spec's numbers (d2-spec §4.3's hand-derived table, d2-spec §5.3's key list), timm's MViTv2 blocks (an
independent implementation; d2-spec §4.7 says which parts correspond) and the reference in float64. Full-size
shapes come from the meta device; real forwards use MViTv2-T at small sizes.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given
from hypothesis import strategies as st

from detspec.conformance._util import assert_close, assert_ratio_rule, cpu, randomize_parameters
from spec.mvit_det import (
    MVITDET_KNOWN,
    MVITV2_B_DET,
    MVITV2_S_DET,
    MVITV2_T_DET,
    MViTDetConfig,
    check_window_grids,
)

VARIANTS = [(MVITV2_T_DET, MVITDET_KNOWN.params_t), (MVITV2_S_DET, MVITDET_KNOWN.params_s),
            (MVITV2_B_DET, MVITDET_KNOWN.params_b)]


def _meta(impl, cfg):
    with torch.device("meta"):
        return impl.MViTDetBackbone(cfg).eval()


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _twin(impl, reference_impl, cfg, seed: int, device):
    """(implementation backbone in float32 on device, reference in float64 on CPU) with equal random parameters."""
    ref = randomize_parameters(reference_impl.MViTDetBackbone(cfg).double().eval(), _gen(seed))
    mod = impl.MViTDetBackbone(cfg).eval()
    mod.load_state_dict({k: v.float() for k, v in ref.state_dict().items()})
    return mod.to(device), ref


def detectron2_keys(cfg) -> dict[str, tuple[int, ...]]:
    """The key -> shape table of d2-spec §5.3, written out from the block schedule (not from any model)."""
    out = {"patch_embed.proj.weight": (cfg.embed_dim, cfg.in_channels, *cfg.patch_kernel),
           "patch_embed.proj.bias": (cfg.embed_dim,)}
    for b in cfg.blocks:
        p, hd = f"blocks.{b.index}.", b.dim_out // b.num_heads
        out.update({p + "norm1.weight": (b.dim,), p + "norm1.bias": (b.dim,),
                    p + "attn.rel_pos_h": (b.rel_pos_length, hd), p + "attn.rel_pos_w": (b.rel_pos_length, hd),
                    p + "attn.qkv.weight": (3 * b.dim_out, b.dim), p + "attn.qkv.bias": (3 * b.dim_out,),
                    p + "attn.proj.weight": (b.dim_out, b.dim_out), p + "attn.proj.bias": (b.dim_out,)})
        for n in "qkv":
            out.update({p + f"attn.pool_{n}.weight": (hd, 1, 3, 3), p + f"attn.norm_{n}.weight": (hd,),
                        p + f"attn.norm_{n}.bias": (hd,)})
        out.update({p + "norm2.weight": (b.dim_out,), p + "norm2.bias": (b.dim_out,),
                    p + "mlp.fc1.weight": (4 * b.dim_out, b.dim_out), p + "mlp.fc1.bias": (4 * b.dim_out,),
                    p + "mlp.fc2.weight": (b.dim_out, 4 * b.dim_out), p + "mlp.fc2.bias": (b.dim_out,)})
        if b.dim != b.dim_out:
            out.update({p + "proj.weight": (b.dim_out, b.dim), p + "proj.bias": (b.dim_out,)})
    for k, c in zip(range(2, 6), MVITDET_KNOWN.stage_channels):
        out.update({f"scale{k}_norm.weight": (c,), f"scale{k}_norm.bias": (c,)})
    return out


# ------------------------------------------------------------------------------------------------ layout
@pytest.mark.clause("MVITDET.KEYS")
@pytest.mark.parametrize("cfg", [MVITV2_T_DET, MVITV2_S_DET, MVITV2_B_DET], ids=lambda c: c.name)
def test_state_dict_is_detectron2s(impl, cfg):
    model = _meta(impl, cfg)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = detectron2_keys(cfg)
    assert sorted(set(got) - set(expected)) == [] and sorted(set(expected) - set(got)) == []
    assert {k: s for k, s in got.items() if s != expected[k]} == {}


@pytest.mark.clause("MVITDET.KEYS")
def test_detectron2_state_dict_loads_strictly(impl):
    """A state_dict written from d2-spec §5.3's table (random values) loads with no missing or unexpected keys, and
    the values land under the same names."""
    g = _gen(3)
    state = {k: torch.randn(shape, generator=g) for k, shape in detectron2_keys(MVITV2_T_DET).items()}
    model = _meta(impl, MVITV2_T_DET).to_empty(device="cpu")
    result = model.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


@pytest.mark.clause("MVITDET.PARAMS")
@pytest.mark.parametrize("cfg, expected", VARIANTS, ids=[c.name for c, _ in VARIANTS])
def test_parameter_count(impl, cfg, expected):
    model = _meta(impl, cfg)
    assert sum(p.numel() for p in model.parameters()) == expected
    assert not list(model.buffers())


@pytest.mark.clause("MVITDET.PARAMS")
def test_block_parameter_counts(impl):
    model = _meta(impl, MVITV2_T_DET)
    assert tuple(sum(p.numel() for p in b.parameters()) for b in model.blocks) == MVITDET_KNOWN.block_params_t


@pytest.mark.clause("MVITDET.SCHEDULE")
def test_schedule_of_mvitv2_t(impl):
    """The built blocks' pooling strides and table lengths, and the spec's derived windows, are d2-spec §4.3's
    hand-written table for MViTv2-T."""
    model = _meta(impl, MVITV2_T_DET)
    q_strides = tuple(b.attn.pool_q.stride[0] for b in model.blocks)
    kv_strides = tuple(b.attn.pool_k.stride[0] for b in model.blocks)
    assert q_strides == (1, 2, 1, 2, 1, 1, 1, 1, 2, 1)
    assert kv_strides == (4, 2, 4, 1, 1, 1, 1, 2, 1, 1)
    assert all(b.attn.pool_v.stride == b.attn.pool_k.stride for b in model.blocks)
    assert tuple(b.attn.rel_pos_h.shape[0] for b in model.blocks) == MVITDET_KNOWN.rel_pos_lengths_t
    assert tuple(b.attn.rel_pos_w.shape[0] for b in model.blocks) == MVITDET_KNOWN.rel_pos_lengths_t
    assert tuple((b.q_window, b.kv_window) for b in MVITV2_T_DET.blocks) == MVITDET_KNOWN.windows_t
    heads = tuple(b.attn.qkv.weight.shape[0] // 3 // b.attn.pool_q.weight.shape[0] for b in model.blocks)
    assert heads == (1, 2, 2, 4, 4, 4, 4, 4, 8, 8)


# ------------------------------------------------------------------------------------------------ outputs
@pytest.mark.clause("MVITDET.OUTPUTS", "MVITDET.ANY_SIZE")
@pytest.mark.parametrize("cfg", [MVITV2_T_DET, MVITV2_S_DET, MVITV2_B_DET], ids=lambda c: c.name)
@pytest.mark.parametrize("hw", [(224, 224), (256, 256), (800, 1216)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_output_shapes_on_meta(impl, cfg, hw):
    out = _meta(impl, cfg)(torch.empty(2, 3, *hw, device="meta"))
    strides, channels = MVITDET_KNOWN.stage_strides, MVITDET_KNOWN.stage_channels
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        f"scale{k}": (2, c, hw[0] // s, hw[1] // s) for k, c, s in zip(range(2, 6), channels, strides)}


@pytest.mark.clause("MVITDET.OUTPUTS", "MVITDET.ANY_SIZE")
@pytest.mark.parametrize("hw", [(224, 224), (256, 256)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_outputs_are_layer_normed_nchw(impl, device, hw):
    """With the initial (unit, zero) output norms, every output position has channel mean 0 and variance 1."""
    torch.manual_seed(0)
    model = impl.MViTDetBackbone(MVITV2_T_DET).eval().to(device)
    with torch.no_grad():
        out = model(torch.randn(1, 3, *hw, generator=_gen(1)).to(device))
    for name, x in out.items():
        assert x.dtype == torch.float32
        mean, var = x.double().mean(dim=1), x.double().var(dim=1, unbiased=False)
        eps = MVITV2_T_DET.norm_eps
        assert_close(cpu(mean).float(), torch.zeros_like(cpu(mean)), "mvit_det", name)  # float32 outputs
        # LayerNorm scales by 1/sqrt(var + eps): the normalised variance is var / (var + eps), a hair under 1
        assert float((cpu(var) - 1).abs().max()) <= 1e-3 + eps * 1e3, name


# ------------------------------------------------------------------------------------------------ numerics
@pytest.mark.clause("MVITDET.ATTENTION", "MVITDET.BLOCK", "MVITDET.WINDOWS", "MVITDET.REL_POS", "MVITDET.ANY_SIZE")
@pytest.mark.parametrize("hw", [(224, 224), (96, 160), (160, 288)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_backbone_matches_reference_float64(impl, reference_impl, device, hw):
    """224: windows cover the map, tables at their stored lengths; 96x160 and 160x288: windows zero-padded, global
    blocks resize their tables."""
    mod, ref = _twin(impl, reference_impl, MVITV2_T_DET, 11, device)
    x = torch.randn(2, 3, *hw, generator=_gen(12), dtype=torch.float64)
    with torch.no_grad():
        expected = ref(x)
        got = mod(x.float().to(device))
    assert set(got) == set(expected)
    for name in expected:
        assert_close(cpu(got[name]), expected[name], "mvit_det", name)


@st.composite
def small_backbones(draw):
    """A small MViTDetConfig (8 or 16 channels per head, 1-2 heads, 4-6 blocks, K/V stride 1/2/4, windows of 4/8/16
    tokens or none, tables sized for a 32 or 64 input) and an input size of 8-72 pixels per side that it accepts:
    windows zero-padded or not, tables resized or not, every block kind of detectron2's schedule."""
    head_dim, heads = draw(st.sampled_from([8, 16])), draw(st.sampled_from([1, 2]))
    depth, ends = draw(st.sampled_from([(4, (0, 1, 2, 3)), (5, (0, 2, 3, 4)), (6, (1, 2, 4, 5))]))
    try:
        cfg = MViTDetConfig(name="small", embed_dim=heads * head_dim, num_heads=heads, depth=depth,
                            last_block_indexes=ends, adaptive_kv_stride=draw(st.sampled_from([1, 2, 4])),
                            adaptive_window_size=draw(st.sampled_from([0, 4, 8, 16])),
                            img_size=draw(st.sampled_from([32, 64])), drop_path=0.0)
    except ValueError:  # a window narrower than its strides: refused by the spec (detectron2 would crash)
        assume(False)
    hw = (draw(st.integers(8, 72)), draw(st.integers(8, 72)))
    try:
        check_window_grids(cfg, hw)
    except ValueError:
        assume(False)
    return cfg, hw, draw(st.integers(1, 2)), draw(st.integers(0, 2**31 - 1))


@pytest.mark.clause("MVITDET.ATTENTION", "MVITDET.BLOCK", "MVITDET.WINDOWS", "MVITDET.REL_POS", "MVITDET.ANY_SIZE",
                    "MVITDET.OUTPUTS")
@given(small_backbones())
def test_small_backbones_match_reference_float64(impl, reference_impl, device, case):
    """Differential over random configs and sizes: the implementation in float32 against the reference in float64
    (equal random parameters), every output at the spec's grid (MViTDetConfig.output_grids).

    Tolerance: the float32 default of spec.tolerances, or, where the reference's own float32 run is further off
    (the output LayerNorms over 8-16 channels amplify rounding wherever a position's channels nearly agree), the
    ratio rule against that naive float32 run (PRECISION.RATIO_RULE's bound in float32)."""
    cfg, hw, batch, seed = case
    mod, ref = _twin(impl, reference_impl, cfg, seed % 1000, device)
    x = torch.randn(batch, 3, *hw, generator=_gen(seed), dtype=torch.float64)
    with torch.no_grad():
        expected = ref(x)
        naive = copy.deepcopy(ref).float()(x.float())
        got = mod(x.float().to(device))
    grids = cfg.output_grids(hw)
    assert set(got) == set(expected) == set(grids)
    for name, (gh, gw) in grids.items():
        assert got[name].shape == (batch, cfg.stage_channels[name], gh, gw)
        try:
            assert_close(cpu(got[name]), expected[name], "mvit_det", name)
        except AssertionError:
            assert_ratio_rule(cpu(got[name]), naive[name], expected[name], "mvit_det", torch.float32, name)


def _timm():
    return pytest.importorskip("timm.models.mvitv2", reason="timm (the independent MViTv2) is not installed")


def _timm_block(timm_mvit, b, feat_size):
    return timm_mvit.MultiScaleBlock(
        b.dim, b.dim_out, b.num_heads, feat_size=feat_size, kernel_q=(3, 3), kernel_kv=(3, 3),
        stride_q=(b.stride_q,) * 2, stride_kv=(b.stride_kv,) * 2, has_cls_token=False, expand_attn=True,
        rel_pos_type="spatial", residual_pooling=True, mlp_ratio=MVITV2_T_DET.mlp_ratio,
        norm_layer=functools.partial(torch.nn.LayerNorm, eps=MVITV2_T_DET.norm_eps))


@pytest.mark.clause("MVITDET.ATTENTION", "MVITDET.BLOCK", "MVITDET.REL_POS", "MVITDET.OUTPUTS")
def test_backbone_matches_timm_blocks_at_224(impl, device):
    """timm's MultiScaleBlock, one per detectron2 block with that block's strides (d2-spec §4.7: at 224x224 every
    window covers its map, so detectron2's blocks are timm's), fed by our patch embedding and read out by our
    output norms (both plain Conv2d / LayerNorm); float64 timm against the implementation in float32."""
    timm_mvit = _timm()
    cfg = MVITV2_T_DET
    mod = randomize_parameters(impl.MViTDetBackbone(cfg).eval(), _gen(21))
    state = {k: v.double() for k, v in mod.state_dict().items()}
    blocks, grid = [], cfg.patch_grid((224, 224))
    for b in cfg.blocks:
        tb = _timm_block(timm_mvit, b, grid).double().eval()
        prefix = f"blocks.{b.index}."
        tb.load_state_dict({(k[len(prefix):].replace("proj.", "shortcut_proj_attn.", 1) if k.startswith(
            prefix + "proj.") else k[len(prefix):]): v for k, v in state.items() if k.startswith(prefix)}, strict=True)
        blocks.append(tb)
        grid = tuple((n - 1) // b.stride_q + 1 for n in grid)
    x = torch.randn(1, 3, 224, 224, generator=_gen(22), dtype=torch.float64)
    with torch.no_grad():
        got = mod.to(device)(x.float().to(device))
        tokens = F.conv2d(x, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], 4, 3)
        feat = tuple(tokens.shape[2:])
        tokens = tokens.flatten(2).transpose(1, 2)
        expected = {}
        for b, tb in zip(cfg.blocks, blocks):
            tokens, feat = tb(tokens, feat)
            if b.index in cfg.last_block_indexes:
                name = f"scale{b.stage}"
                normed = F.layer_norm(tokens, (tokens.shape[-1],), state[f"{name}_norm.weight"],
                                      state[f"{name}_norm.bias"], cfg.norm_eps)
                expected[name] = normed.transpose(1, 2).reshape(1, -1, *feat)
    assert set(got) == set(expected)
    for name in expected:
        assert_close(cpu(got[name]), expected[name], "mvit_det", f"{name} vs timm")


@pytest.mark.clause("MVITDET.WINDOWS", "MVITDET.REL_POS")
def test_window_attention_is_timm_attention_per_window(impl, device):
    """A window block (Q window 16, K/V window 4, K/V stride 4) on a 40x24 map: 3x2 windows, the last row and column
    zero-padded. With centre-tap pooling filters (the pooled map is the map subsampled, so pooling then windowing
    equals windowing then pooling) and zero qkv and LayerNorm biases (padded tokens stay exactly zero either way),
    the block's attention equals timm's MultiScaleAttention run on each 16x16 window of the zero-padded map alone."""
    timm_mvit = _timm()
    cfg = replace(MVITV2_T_DET, img_size=64, adaptive_window_size=16)
    spec = cfg.blocks[0]
    assert (spec.q_window, spec.kv_window, spec.stride_kv, spec.rel_pos_length) == (16, 4, 4, 31)
    attn = randomize_parameters(impl.MViTDetBackbone(cfg).blocks[0].attn.eval(), _gen(31))
    with torch.no_grad():
        for name in ("pool_q", "pool_k", "pool_v"):
            w = getattr(attn, name).weight
            w.zero_()
            w[:, :, 1, 1] = 1.0
        for module in (attn.qkv, attn.norm_q, attn.norm_k, attn.norm_v):
            module.bias.zero_()
    oracle = timm_mvit.MultiScaleAttention(
        spec.dim, spec.dim_out, feat_size=(16, 16), num_heads=spec.num_heads, kernel_q=(3, 3), kernel_kv=(3, 3),
        stride_q=(1, 1), stride_kv=(4, 4), has_cls_token=False, rel_pos_type="spatial", residual_pooling=True,
        norm_layer=functools.partial(torch.nn.LayerNorm, eps=cfg.norm_eps)).double().eval()
    oracle.load_state_dict({k: v.double() for k, v in attn.state_dict().items()}, strict=True)
    x = torch.randn(1, 40, 24, spec.dim, generator=_gen(32), dtype=torch.float64)
    padded = F.pad(x, (0, 0, 0, 8, 0, 8))  # 48 x 32: 3 x 2 windows of 16
    expected = torch.zeros(1, 48, 32, spec.dim_out, dtype=torch.float64)
    with torch.no_grad():
        for i in range(3):
            for j in range(2):
                window = padded[:, 16 * i:16 * (i + 1), 16 * j:16 * (j + 1)].reshape(1, 256, spec.dim)
                out, _ = oracle(window, (16, 16))
                expected[:, 16 * i:16 * (i + 1), 16 * j:16 * (j + 1)] = out.reshape(1, 16, 16, -1)
        got = attn.to(device)(x.float().to(device))
    assert_close(cpu(got), expected[:, :40, :24], "mvit_det", "window attention vs timm per window")


# ------------------------------------------------------------------------------------------------ sizes
@pytest.mark.clause("MVITDET.REL_POS", "MVITDET.ANY_SIZE")
def test_global_block_resizes_its_tables_linearly(impl, device):
    """The last block (global, 7x7 at 224: stored tables of 13 rows) on a 9x11 map needs 17 and 21 rows. Giving it
    tables that are linear in the row index, r_h[n] = a + b n, makes the linear resize exact in closed form
    (align_corners False: output row m reads source position (m + 1/2) L / L' - 1/2, clamped to [0, L - 1]), so the
    block with stored 13-row tables must equal the block given the hand-resized 17- and 21-row tables."""
    cfg = MVITV2_T_DET
    src = randomize_parameters(impl.MViTDetBackbone(cfg).blocks[-1].eval(), _gen(41))
    d = src.attn.rel_pos_h.shape[1]
    a, slope = torch.randn(d, generator=_gen(42)), torch.randn(d, generator=_gen(43)) * 0.1

    def linear_table(rows: int, length_of_source: int) -> torch.Tensor:
        m = torch.arange(rows, dtype=torch.float64)
        pos = ((m + 0.5) * length_of_source / rows - 0.5).clamp(0, length_of_source - 1)
        return (a.double()[None] + slope.double()[None] * pos[:, None]).float()

    with torch.no_grad():
        src.attn.rel_pos_h.copy_(linear_table(13, 13))
        src.attn.rel_pos_w.copy_(linear_table(13, 13))
    resized = impl.MViTDetBackbone(cfg).blocks[-1].eval()
    state = src.state_dict()
    state["attn.rel_pos_h"], state["attn.rel_pos_w"] = linear_table(17, 13), linear_table(21, 13)
    resized.attn.rel_pos_h = torch.nn.Parameter(torch.empty(17, d))
    resized.attn.rel_pos_w = torch.nn.Parameter(torch.empty(21, d))
    resized.load_state_dict(state)
    x = torch.randn(1, 9, 11, src.spec.dim, generator=_gen(44))
    with torch.no_grad():
        got, expected = src.to(device)(x.to(device)), resized.to(device)(x.to(device))
    assert_close(cpu(got), cpu(expected).double(), "mvit_det", "resized tables")


@pytest.mark.clause("MVITDET.ANY_SIZE")
def test_a_config_that_breaks_the_window_rule_is_refused(impl):
    """Window 10 with K/V stride 4 gives K/V windows of 2: on a 40-token side Q has 4 windows, K/V (10 tokens) 5."""
    cfg = replace(MVITV2_T_DET, adaptive_window_size=10)
    model = _meta(impl, cfg)
    with pytest.raises(ValueError, match="block 0 cuts its") as err:
        model(torch.empty(1, 3, 160, 160, device="meta"))
    assert "\n" not in str(err.value)


@pytest.mark.clause("MVITDET.ERRORS")
@pytest.mark.parametrize("bad, error, match", [
    ([[0.0]], TypeError, "images must be a torch.Tensor, got list"),
    (torch.zeros(1, 3, 64, 64, dtype=torch.int64), TypeError, "images must have a floating dtype, got torch.int64"),
    (torch.zeros(3, 64, 64), ValueError, r"images must have shape \[N, 3, H, W\], got \[3, 64, 64\]"),
    (torch.zeros(1, 1, 64, 64), ValueError, r"images must have shape \[N, 3, H, W\], got \[1, 1, 64, 64\]"),
], ids=["list", "int64", "3-d", "1-channel"])
def test_bad_inputs_are_one_line_errors(impl, bad, error, match):
    model = _meta(impl, MVITV2_T_DET)
    with pytest.raises(error, match=match) as err:
        model(bad)
    assert "\n" not in str(err.value)
