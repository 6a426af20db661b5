"""Conformance: Multiscale Vision Transformers (MViT v1 / MViTv2). P1 §3, Tables 3b, 4, 17; P2 eq. 3-5; torchvision.

The contract is three modules with torchvision's state_dict layout (``spec.contract`` PLANNED names):

- ``PoolingAttention(dim, num_heads, *, dim_out, kernel_q, stride_q, kernel_kv, stride_kv, mode, pool_norm,
  qkv_bias, norm_eps, has_cls_token, rel_pos_size, residual_pool, residual_pool_cls)``,
  ``forward(x [B, N, dim], thw) -> ([B, N_q, dim_out], thw_q)``;
- ``MultiScaleBlock(dim, dim_out, num_heads, *, <the above>, mlp_ratio, expand_in_attention, drop_path)``, same
  forward;
- ``MViT(cfg)``, ``forward(clip [B, 3, T, H, W]) -> logits [B, K]`` with submodules ``conv_proj``,
  ``pos_encoding``, ``blocks.N``, ``norm``, ``head``.

Cost discipline (2 CPU cores): no test runs a full 16x224x224 forward on real tensors. Full-size shapes, parameter
counts and FLOPs come from the meta device (shape-only tensors; FlopCounterMode counts the same convs and matmuls);
numerical checks use reduced clips that the same blocks handle.
"""

from __future__ import annotations

import copy
import math
from dataclasses import replace
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

from detspec.conformance._util import assert_close, cpu, randomize_parameters
from spec.mvit import (
    MVIT_B_16,
    MVIT_B_16X4,
    MVIT_KNOWN,
    MVIT_V2_S,
    pooled_grid,
    same_padding,
)

# A reduced MViT-B 16x4 whose patch grid is 2x8x8 (4x32x32 clips): every block, stride and table of the real
# model, only the absolute position tables are smaller. Used where a real forward is needed.
SMALL_V1 = replace(MVIT_B_16X4, temporal_size=4, spatial_size=(32, 32))
SMALL_CLIP = (4, 32, 32)


# ------------------------------------------------------------------------------------------------ helpers
def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _empty(cls, *args, **kwargs) -> torch.nn.Module:
    """cls(*args, **kwargs) built on the meta device and materialized uninitialized on the CPU: this skips the
    random init of 36M parameters (seconds on 2 cores); callers overwrite every parameter. A module with buffers,
    or one that cannot be built on the meta device, is built normally."""
    try:
        with torch.device("meta"):
            module = cls(*args, **kwargs)
    except Exception:
        return cls(*args, **kwargs)
    if any(True for _ in module.buffers()):
        return cls(*args, **kwargs)
    return module.to_empty(device="cpu")


def _randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    return randomize_parameters(module, _gen(seed))


def _twin(impl_cls, ref_cls, args, kwargs, seed, device):
    """(implementation module in float32 on device, reference module in float64 on CPU), equal parameters."""
    ref = _randomize(_empty(ref_cls, *args, **kwargs).double().eval(), seed)
    mod = _empty(impl_cls, *args, **kwargs).eval()
    mod.load_state_dict({k: v.float() for k, v in ref.state_dict().items()})
    return mod.to(device), ref


def _tokens(batch: int, thw, dim: int, cls: bool, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(float32 tokens, the same values in float64)."""
    n = math.prod(thw) + (1 if cls else 0)
    x = torch.randn(batch, n, dim, generator=_gen(seed)).to(torch.float32)
    return x, x.double()


@pytest.fixture(scope="module")
def small_v1(impl):
    """impl.MViT(SMALL_V1), randomized, float32, eval; shared by the tests that do not modify it."""
    return _randomize(_empty(impl.MViT, SMALL_V1), 21).eval()


@pytest.fixture(scope="module")
def tv_v1():
    """torchvision's mvit_v1_b(weights=None) with a seeded init."""
    video = pytest.importorskip("torchvision.models.video")
    torch.manual_seed(14)
    return video.mvit_v1_b(weights=None).eval()


def _meta_model(impl, cfg):
    with torch.device("meta"):
        return impl.MViT(cfg).eval()


def _record_blocks(model) -> list:
    """Forward hooks on model.blocks[i] recording (tokens, channels, thw) of each block's output."""
    seen: list = []

    def hook(_module, _args, output):
        x, thw = output
        seen.append((x.shape[1], x.shape[2], tuple(thw)))

    for block in model.blocks:
        block.register_forward_hook(hook)
    return seen


def _stage_ends(cfg) -> list[int]:
    return [s - 1 for s in cfg.stage_starts] + [cfg.depth - 1]


# ------------------------------------------------------------------------------------------------ strategies
_window = st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3))


@st.composite
def attention_cases(draw, rel_pos: bool | None = None):
    """Random PoolingAttention arguments: heads, widths, Q and K/V windows (any kernel 1-3, stride 1-3), grids,
    pooling modes, cls on/off, MViTv2 relative positions (tables sized for another grid half the time) and
    residual pooling. Head widths skip 2 and 3: a LayerNorm over 2-3 channels of nearly equal values amplifies
    input rounding by up to 1/sqrt(eps) = 1e3, which is the operator's conditioning, not an implementation error."""
    heads = draw(st.integers(1, 3))
    head_dim = draw(st.sampled_from([1, 4, 5, 8]))
    dim_out = heads * head_dim
    dim = draw(st.sampled_from([dim_out, draw(st.integers(1, 12))]))
    thw = draw(st.tuples(st.integers(1, 5), st.integers(1, 6), st.integers(1, 6)))
    kwargs = dict(dim_out=dim_out, mode=draw(st.sampled_from(["conv", "conv", "avg", "max"])),
                  pool_norm=draw(st.booleans()), has_cls_token=draw(st.booleans()))
    for which in ("q", "kv"):
        if draw(st.booleans()):
            kwargs[f"kernel_{which}"], kwargs[f"stride_{which}"] = draw(_window), draw(_window)
        else:
            kwargs[f"kernel_{which}"], kwargs[f"stride_{which}"] = None, (1, 1, 1)
    use_rel = draw(st.booleans()) if rel_pos is None else rel_pos
    if use_rel:
        kwargs["rel_pos_size"] = draw(st.sampled_from([thw, draw(st.tuples(*[st.integers(1, 6)] * 3))]))
        kwargs["residual_pool"] = draw(st.booleans())
        kwargs["residual_pool_cls"] = draw(st.booleans())
    return dict(dim=dim, heads=heads, thw=thw, kwargs=kwargs, batch=draw(st.integers(1, 2)),
                seed=draw(st.integers(0, 2**31 - 1)))


@st.composite
def block_cases(draw):
    """Random MultiScaleBlock arguments in v1 (channels grow in the MLP) or v2 (in attention) style. Q pooling
    uses odd kernels and strides 1-2, the combinations whose Q grid equals the skip max-pool's for every size.
    No width is 2 or 3, for the LayerNorm conditioning explained in attention_cases."""
    v2 = draw(st.booleans())
    head_dim = draw(st.sampled_from([1, 4, 6]))
    heads = 1 if head_dim == 1 else draw(st.integers(1, 3))
    width = heads * head_dim
    other = draw(st.sampled_from([n for n in (width, 2 * width, draw(st.sampled_from([1, 4, 5, 7, 10])))
                                  if n not in (2, 3)]))  # no LayerNorm over 2-3 channels
    dim, dim_out = (other, width) if v2 else (width, other)
    thw = draw(st.tuples(st.integers(1, 4), st.integers(1, 7), st.integers(1, 7)))
    stride_q = draw(st.tuples(*[st.integers(1, 2)] * 3))
    kernel_q = draw(st.tuples(*[st.sampled_from([1, 3])] * 3))
    if math.prod(stride_q) == 1 and draw(st.booleans()):
        kernel_q = None
    kwargs = dict(kernel_q=kernel_q, stride_q=stride_q, kernel_kv=draw(_window), stride_kv=draw(_window),
                  mlp_ratio=draw(st.sampled_from([1.0, 2.0, 4.0])), mode=draw(st.sampled_from(["conv", "avg", "max"])),
                  has_cls_token=draw(st.booleans()), expand_in_attention=v2)
    if v2:
        kwargs.update(rel_pos_size=thw, residual_pool=draw(st.booleans()))
    return dict(dim=dim, dim_out=dim_out, heads=heads, thw=thw, kwargs=kwargs, batch=draw(st.integers(1, 2)),
                seed=draw(st.integers(0, 2**31 - 1)))


# (the spec-only checks of spec/mvit.py, which use no implementation, are in tests/test_spec_clauses.py)


# ------------------------------------------------------------------------------------------------ pooling attention
@pytest.mark.clause("MVIT.ATTENTION", "MVIT.Q_POOLING", "MVIT.KV_POOLING", "MVIT.POOLED_LENGTH", "MVIT.REL_POS")
@given(attention_cases())
def test_pooling_attention_matches_reference_float64(impl, reference_impl, device, case):
    """Differential: the implementation in float32 against the reference in float64 (equal parameters/inputs).

    Tolerance: spec.tolerances' float32 default (rtol 1.3e-6, atol 1e-5). Outputs are O(1) and each is a handful
    of float32 dot products of length <= 3 * 12 and softmax-weighted sums of <= 181 keys: with unit roundoff
    u = 6e-8 the error is ~1e-6 at most, well inside atol (see attention_cases for the head widths left out)."""
    c = case
    mod, ref = _twin(impl.PoolingAttention, reference_impl.PoolingAttention, (c["dim"], c["heads"]), c["kwargs"],
                     c["seed"], device)
    x32, x64 = _tokens(c["batch"], c["thw"], c["dim"], c["kwargs"]["has_cls_token"], c["seed"] + 1)
    with torch.no_grad():
        expected, thw_ref = ref(x64, c["thw"])
        out, thw = mod(x32.to(device), c["thw"])
    assert out.dtype == torch.float32
    assert tuple(thw) == tuple(thw_ref)
    kq = c["kwargs"]["kernel_q"]
    expected_thw = pooled_grid(c["thw"], kq, c["kwargs"]["stride_q"], same_padding(kq)) if kq else c["thw"]
    assert tuple(thw) == expected_thw  # floor((L + 2p - k)/s) + 1 per axis, p = k // 2
    assert out.shape == (c["batch"], math.prod(thw) + int(c["kwargs"]["has_cls_token"]), c["kwargs"]["dim_out"])
    assert_close(out, expected, "PoolingAttention")


def _tv_attention(case):
    """torchvision's MultiscaleAttention with the case's arguments (conv pooling + LayerNorm(eps=1e-6), cls)."""
    mvit = pytest.importorskip("torchvision.models.video.mvit")
    k = case["kwargs"]
    return mvit.MultiscaleAttention(
        list(k.get("rel_pos_size") or case["thw"]), case["dim"], k["dim_out"], case["heads"],
        kernel_q=list(k["kernel_q"] or []), kernel_kv=list(k["kernel_kv"] or []),
        stride_q=list(k["stride_q"]) if k["kernel_q"] else [], stride_kv=list(k["stride_kv"]) if k["kernel_kv"] else [],
        residual_pool=k.get("residual_pool", False), residual_with_cls_embed=k.get("residual_pool_cls", False),
        rel_pos_embed="rel_pos_size" in k, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6))


@pytest.mark.clause("MVIT.ATTENTION", "MVIT.CLS_NOT_POOLED", "MVIT.REL_POS")
@given(attention_cases(), st.booleans())
def test_pooling_attention_matches_torchvision(impl, device, case, rel):
    """An independent oracle: torchvision's MultiscaleAttention (float64) with the same state_dict. torchvision
    always has a cls token and conv pooling with LayerNorm, so the case is restricted to that."""
    k = dict(case["kwargs"], mode="conv", pool_norm=True, has_cls_token=True)
    if not rel:
        for key in ("rel_pos_size", "residual_pool", "residual_pool_cls"):
            k.pop(key, None)
    if "rel_pos_size" in k:  # torchvision sizes tables as 2 * max(size // s_q, size // s_kv) - 1 and fails at 0
        size = max(k["rel_pos_size"][1:])
        assume(max(size // (k["stride_q"][1] if k["kernel_q"] else 1),
                   size // (k["stride_kv"][1] if k["kernel_kv"] else 1)) > 0)
    case = dict(case, kwargs=k)
    tv = _randomize(_tv_attention(case).double().eval(), case["seed"])
    mod = impl.PoolingAttention(case["dim"], case["heads"], **k).eval()
    mod.load_state_dict({name: v.float() for name, v in tv.state_dict().items()})
    mod.to(device)
    x32, x64 = _tokens(case["batch"], case["thw"], case["dim"], True, case["seed"] + 1)
    with torch.no_grad():
        expected, thw_tv = tv(x64, case["thw"])
        out, thw = mod(x32.to(device), case["thw"])
    assert tuple(thw) == tuple(thw_tv)
    assert_close(out, expected, "PoolingAttention")


def _identity_attention(impl, dim, *, q_zero: bool, device, **kwargs):
    """A one-head PoolingAttention whose V and output projection are the identity (and Q zero if q_zero):
    its output is then a plain average of the (pooled) input tokens, computable by hand."""
    mod = impl.PoolingAttention(dim, 1, dim_out=dim, pool_norm=False, **kwargs).eval()
    g = _gen(3)
    sd = mod.state_dict()
    w = torch.randn(3 * dim, dim, generator=g)
    w[2 * dim:] = torch.eye(dim)
    if q_zero:
        w[:dim] = 0
    sd["qkv.weight"] = w
    sd["qkv.bias"] = torch.zeros(3 * dim)
    sd["project.0.weight"] = torch.eye(dim)
    sd["project.0.bias"] = torch.zeros(dim)
    mod.load_state_dict(sd)
    return mod.to(device), w


def _explicit_attention(x, w, key_index, dim):
    """softmax(Q K^T / sqrt(d)) V for one head with q, k, v = x W_q^T, x W_k^T, x (float64), keys = key_index."""
    x = x.double()
    w = w.double()
    q, k, v = x @ w[:dim].t(), x @ w[dim:2 * dim].t(), x
    k, v = k[:, key_index], v[:, key_index]
    return torch.softmax(q @ k.transpose(1, 2) / math.sqrt(dim), dim=-1) @ v


@pytest.mark.clause("MVIT.ATTENTION", "MVIT.KV_POOLING")
@pytest.mark.parametrize("stride_kv", [(1, 1, 1), (1, 2, 2), (2, 3, 1)])
def test_attention_formula_and_kv_length(impl, device, stride_kv):
    """With a kernel-1 K/V "pooling" (pure subsampling by the stride) and no norm, the output is
    softmax(Q K^T / sqrt(d)) V over the cls key plus the subsampled keys, i.e. over 1 + prod(ceil(L / s)) keys."""
    dim, thw = 6, (3, 4, 5)
    mod, w = _identity_attention(impl, dim, q_zero=False, device=device, kernel_kv=(1, 1, 1), stride_kv=stride_kv,
                                 mode="max")
    x = torch.randn(2, 1 + math.prod(thw), dim, generator=_gen(4))
    grid = torch.arange(math.prod(thw)).reshape(thw)
    kept = grid[::stride_kv[0], ::stride_kv[1], ::stride_kv[2]].flatten() + 1
    assert kept.numel() == math.prod(pooled_grid(thw, (1, 1, 1), stride_kv, (0, 0, 0)))
    key_index = torch.cat([torch.zeros(1, dtype=torch.long), kept])
    with torch.no_grad():
        out, out_thw = mod(x.to(device), thw)
    assert tuple(out_thw) == thw and out.shape == x.shape  # K/V pooling never changes the output length
    assert_close(out, _explicit_attention(x, w, key_index, dim), "PoolingAttention")


@pytest.mark.clause("MVIT.Q_POOLING")
@pytest.mark.parametrize("stride_q", [(1, 2, 2), (2, 1, 3), (1, 1, 1)])
def test_q_pooling_selects_output_rows(impl, device, stride_q):
    """Kernel-1 Q pooling with stride s keeps the queries at every s-th position: the output is exactly the
    unpooled output's rows at those positions (cls first), of length 1 + prod(ceil(L / s))."""
    dim, thw = 4, (3, 5, 6)
    pooled, _ = _identity_attention(impl, dim, q_zero=False, device=device, kernel_q=(1, 1, 1), stride_q=stride_q,
                                    kernel_kv=None, mode="max")
    full, _ = _identity_attention(impl, dim, q_zero=False, device=device, kernel_q=None, kernel_kv=None)
    x = torch.randn(1, 1 + math.prod(thw), dim, generator=_gen(5)).to(device)
    with torch.no_grad():
        out, out_thw = pooled(x, thw)
        ref, _ = full(x, thw)
    grid = torch.arange(math.prod(thw)).reshape(thw)
    rows = torch.cat([torch.zeros(1, dtype=torch.long),
                      grid[::stride_q[0], ::stride_q[1], ::stride_q[2]].flatten() + 1])
    assert tuple(out_thw) == pooled_grid(thw, (1, 1, 1), stride_q, (0, 0, 0))
    assert out.shape[1] == 1 + math.prod(out_thw) == rows.numel()
    torch.testing.assert_close(cpu(out), cpu(ref)[:, rows], rtol=1.3e-6, atol=1e-5)


@pytest.mark.clause("MVIT.CLS_NOT_POOLED", "MVIT.KV_POOLING")
def test_cls_token_is_not_pooled_in_attention(impl, device):
    """Q = 0 makes attention uniform, so each output is the mean of the keys' values: the unpooled cls value and
    the avg-pooled (kernel 3, stride 2, padding 1, padding counted) data values. A cls token inside a window, or
    pooled with the data, would change the mean."""
    dim, thw = 5, (2, 5, 4)
    mod, _ = _identity_attention(impl, dim, q_zero=True, device=device, kernel_kv=(3, 3, 3), stride_kv=(1, 2, 2),
                                 mode="avg")
    x = torch.randn(2, 1 + math.prod(thw), dim, generator=_gen(6), dtype=torch.float64)
    x[:, 0] += 100.0  # a cls token far from the data: any mixing shows
    volume = x[:, 1:].transpose(1, 2).reshape(2, dim, *thw)
    pooled = F.avg_pool3d(F.pad(volume, (1,) * 6), (3, 3, 3), (1, 2, 2)).flatten(2).transpose(1, 2)  # zeros count
    keys = torch.cat([x[:, :1], pooled], dim=1)
    with torch.no_grad():
        out, _ = mod(x.float().to(device), thw)
    expected = keys.mean(dim=1, keepdim=True).expand_as(out.cpu())
    assert_close(out, expected, "PoolingAttention")


# ------------------------------------------------------------------------------------------------ block
@pytest.mark.clause("MVIT.SKIP_POOLING", "MVIT.POOLED_LENGTH", "MVIT.ATTENTION")
@given(block_cases())
def test_block_matches_reference_float64(impl, reference_impl, device, case):
    c = case
    mod, ref = _twin(impl.MultiScaleBlock, reference_impl.MultiScaleBlock, (c["dim"], c["dim_out"], c["heads"]),
                     c["kwargs"], c["seed"], device)
    x32, x64 = _tokens(c["batch"], c["thw"], c["dim"], c["kwargs"]["has_cls_token"], c["seed"] + 1)
    with torch.no_grad():
        expected, thw_ref = ref(x64, c["thw"])
        out, thw = mod(x32.to(device), c["thw"])
    expected_thw = pooled_grid(c["thw"], (3, 3, 3), c["kwargs"]["stride_q"], (1, 1, 1))
    assert tuple(thw) == tuple(thw_ref) == expected_thw
    assert out.shape == (c["batch"], math.prod(thw) + int(c["kwargs"]["has_cls_token"]), c["dim_out"])
    assert_close(out, expected, "MultiScaleBlock")


def _silent_branches(block) -> None:
    """Zero the attention and MLP outputs so the block reduces to its skip path."""
    sd = block.state_dict()
    for key in ("attn.project.0.weight", "attn.project.0.bias", "mlp.3.weight", "mlp.3.bias"):
        sd[key] = torch.zeros_like(sd[key])
    block.load_state_dict(sd)


@pytest.mark.clause("MVIT.SKIP_POOLING", "MVIT.CLS_NOT_POOLED")
@pytest.mark.parametrize("dim_out", [8, 16])
def test_block_skip_is_max_pooled_and_projected(impl, device, dim_out):
    """A Q-pooled v1 block with silent branches returns its skip path: the data tokens max-pooled (kernel 3,
    stride 2, padding 1 on H and W; kernel 1 on T), the cls token passed through, and, where channels grow,
    Linear(LayerNorm(pooled skip))."""
    dim, thw = 8, (2, 5, 6)
    block = _randomize(impl.MultiScaleBlock(dim, dim_out, 2, kernel_q=(3, 3, 3), stride_q=(1, 2, 2),
                                            kernel_kv=(3, 3, 3), stride_kv=(1, 2, 2)), 7).eval()
    _silent_branches(block)
    block.to(device)
    x = torch.randn(2, 1 + math.prod(thw), dim, generator=_gen(8))
    x[:, 0] = 1e3  # the cls token is the largest value: a max-pool that saw it would output it
    with torch.no_grad():
        out, out_thw = block(x.to(device), thw)
    volume = x[:, 1:].transpose(1, 2).reshape(2, dim, *thw)
    pooled = F.max_pool3d(volume.double(), (1, 3, 3), (1, 2, 2), (0, 1, 1)).flatten(2).transpose(1, 2)
    skip = torch.cat([x[:, :1].double(), pooled], dim=1)
    assert tuple(out_thw) == (2, 3, 3)
    if dim_out != dim:
        sd = {k: v.double().cpu() for k, v in block.state_dict().items()}
        skip = F.layer_norm(skip, (dim,), sd["norm2.weight"], sd["norm2.bias"], 1e-6)
        skip = F.linear(skip, sd["project.weight"], sd["project.bias"])
    else:
        assert torch.equal(cpu(out)[:, 0], x[:, 0])  # cls passes through untouched
    assert_close(out, skip, "MultiScaleBlock")


# ------------------------------------------------------------------------------------------------ model shapes
@pytest.mark.clause("MVIT.TOKEN_COUNTS", "MVIT.CHANNELS_GROW", "MVIT.POOLED_LENGTH")
def test_mvit_b_token_counts_full_size_on_meta(impl):
    """The real 1x3x16x224x224 forward, on the meta device (shapes only): per-stage tokens and channels."""
    model = _meta_model(impl, MVIT_B_16X4)
    seen = _record_blocks(model)
    with torch.no_grad():
        logits = model(torch.empty(1, 3, 16, 224, 224, device="meta"))
    assert logits.shape == (1, 400)
    ends = _stage_ends(MVIT_B_16X4)
    assert tuple(seen[e][0] for e in ends) == (25089, 6273, 1569, 393)
    assert [seen[e][2] for e in ends] == [(8, 56, 56), (8, 28, 28), (8, 14, 14), (8, 7, 7)]
    # channels double at the end of each stage (torchvision's v1 layout) while tokens shrink 4x
    assert [seen[e][1] for e in ends] == [192, 384, 768, 768]
    assert [s[1] for s in seen] == [b.dim_out for b in MVIT_B_16X4.blocks]
    # heads 1/2/4/8 at 96 channels each, read off the state_dict (qkv rows / pooled head width)
    sd = model.state_dict()
    heads = [sd[f"blocks.{i}.attn.qkv.weight"].shape[0] // 3 // sd[f"blocks.{i}.attn.pool_k.pool.weight"].shape[0]
             for i in range(16)]
    assert heads == [1, 2, 2] + [4] * 11 + [8, 8]


@pytest.mark.clause("MVIT.TOKEN_COUNTS", "MVIT.POOLED_LENGTH")
def test_token_counts_follow_the_stride_table_on_small_clips(small_v1, device):
    """A real forward on small clips (any size the strides admit): every block's grid is the spec's."""
    model = small_v1.to(device)
    seen: list = []

    def hook(_module, _args, output):
        seen.append((output[0].shape[1], tuple(output[1])))

    handles = [block.register_forward_hook(hook) for block in model.blocks]
    try:
        for size in (SMALL_CLIP, (3, 45, 29), (1, 9, 17), (2, 1, 1)):
            seen.clear()
            with torch.no_grad():
                logits = model(torch.randn(1, 3, *size, generator=_gen(9)).to(device))
            assert logits.shape == (1, 400) and torch.isfinite(cpu(logits)).all()
            grids = SMALL_V1.token_grids(size)
            assert [s[1] for s in seen] == list(grids[1:]), size
            assert [s[0] for s in seen] == [math.prod(g) + 1 for g in grids[1:]], size
    finally:
        for handle in handles:
            handle.remove()


@pytest.mark.clause("MVIT.PARAMS")
@pytest.mark.parametrize("cfg, expected", [(MVIT_B_16X4, MVIT_KNOWN.params_v1_b), (MVIT_V2_S, MVIT_KNOWN.params_v2_s)])
def test_parameter_count(impl, cfg, expected):
    model = _meta_model(impl, cfg)
    assert sum(p.numel() for p in model.parameters()) == expected
    assert not list(model.buffers())  # torchvision's layout has no buffers


@pytest.mark.clause("MVIT.GMACS")
def test_gmacs_on_meta(impl):
    """FlopCounterMode counts 2 FLOPs per multiply-add of convs and matmuls; halved, that is P1's GMACs."""
    model = _meta_model(impl, MVIT_B_16X4)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.empty(1, 3, 16, 224, 224, device="meta"))
    gmacs = counter.get_total_flops() / 2e9
    assert abs(gmacs - MVIT_KNOWN.gmacs_b16x4) <= MVIT_KNOWN.gmacs_rel_tolerance * MVIT_KNOWN.gmacs_b16x4, gmacs
    # torchvision counts the same operators: 70.599 G
    assert abs(gmacs - MVIT_KNOWN.gmacs_b16x4_tv) < 5e-4, gmacs


# ------------------------------------------------------------------------------------------------ positions
def _first_block_input(model, clip):
    captured = {}

    def hook(_module, args):
        captured["x"], captured["thw"] = args[0], tuple(args[1])

    handle = model.blocks[0].register_forward_pre_hook(hook)
    with torch.no_grad():
        model(clip)
    handle.remove()
    return captured["x"], captured["thw"]


@pytest.mark.clause("MVIT.POS_EMBED")
def test_separable_positions_and_interpolation(impl, device):
    """With a silent patch embedding the first block sees the position embedding itself: cls token + class_pos,
    then temporal[t] + spatial[h, w]; at another grid the tables are resized (bicubic H x W, linear T,
    align_corners=False) before the sum."""
    model = _randomize(_empty(impl.MViT, SMALL_V1), 10).eval()
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    sd["conv_proj.weight"].zero_()
    sd["conv_proj.bias"].zero_()
    model.load_state_dict(sd)
    model.to(device)
    p = {k: v.double() for k, v in sd.items() if k.startswith("pos_encoding.")}
    t0, h0, w0 = SMALL_V1.patch_grid()
    for size in (SMALL_CLIP, (6, 48, 40), (2, 20, 36)):
        x, thw = _first_block_input(model, torch.randn(1, 3, *size, generator=_gen(11)).to(device))
        t, h, w = thw
        assert thw == SMALL_V1.patch_grid(size)
        spatial = p["pos_encoding.spatial_pos"].t().reshape(1, -1, h0, w0)
        spatial = F.interpolate(spatial, size=(h, w), mode="bicubic", align_corners=False)[0].flatten(1).t()
        temporal = p["pos_encoding.temporal_pos"].t()[None]
        temporal = F.interpolate(temporal, size=t, mode="linear", align_corners=False)[0].t()
        data = (temporal[:, None, :] + spatial[None, :, :]).reshape(t * h * w, -1)
        cls = p["pos_encoding.class_token"] + p["pos_encoding.class_pos"]
        expected = torch.cat([cls[None], data])[None]
        assert_close(x, expected, "MViT", msg=f"clip size {size}")


# ------------------------------------------------------------------------------------------------ whole model
@pytest.mark.clause("MVIT.POS_EMBED", "MVIT.REL_POS", "MVIT.TOKEN_COUNTS")
@pytest.mark.parametrize("cfg, size", [(SMALL_V1, SMALL_CLIP), (MVIT_B_16X4, (4, 40, 48)),
                                       (MVIT_V2_S, (4, 32, 40))])
def test_model_matches_reference_float64(impl, reference_impl, device, cfg, size):
    """Whole models at small clip sizes, implementation (float32) against the reference (float64); the full-size
    configs are run at other sizes, so absolute tables are interpolated and relative ones resized."""
    mod, ref = _twin(impl.MViT, reference_impl.MViT, (cfg,), {}, 12, device)
    clip = torch.randn(2, 3, *size, generator=_gen(13))
    with torch.no_grad():
        expected = ref(clip.double())
        out = mod(clip.to(device))
    assert out.shape == (2, cfg.num_classes)
    assert_close(out, expected, "MViT")


@pytest.mark.clause("MVIT.TORCHVISION_V1")
def test_torchvision_v1_state_dict_is_identical(impl, tv_v1):
    """The conversion is the identity: same keys in the same order, same shapes, strict load of mvit_v1_b."""
    tv_sd = tv_v1.state_dict()
    model = _empty(impl.MViT, MVIT_B_16X4)
    ours = model.state_dict()
    assert list(ours) == list(tv_sd)
    assert all(ours[k].shape == v.shape for k, v in tv_sd.items())
    model.load_state_dict(tv_sd, strict=True)


@pytest.mark.clause("MVIT.TORCHVISION_V1")
def test_torchvision_v1_logits(impl, device, tv_v1):
    """mvit_v1_b's 16 blocks, norm and head, unchanged, with torchvision's own PositionalEncoding built for the
    2x8x8 grid of 4x32x32 clips (torchvision's builder fixes 16x224x224, but its MViT blocks take any grid): the
    same state_dict loads strictly into impl.MViT(SMALL_V1) and the logits agree with torchvision's in float64."""
    from torchvision.models.video.mvit import PositionalEncoding

    tv = copy.deepcopy(tv_v1)
    t0, h0, w0 = SMALL_V1.patch_grid()
    tv.pos_encoding = PositionalEncoding(96, (h0, w0), t0, rel_pos_embed=False)
    for p in tv.pos_encoding.parameters():
        torch.nn.init.trunc_normal_(p, std=0.02, generator=_gen(15))
    tv = tv.double().eval()
    model = _empty(impl.MViT, SMALL_V1).eval()
    model.load_state_dict(tv.state_dict(), strict=True)
    model.to(device)
    clip = torch.randn(2, 3, *SMALL_CLIP, generator=_gen(16))
    with torch.no_grad():
        expected = tv(clip.double())  # torchvision in float64: an independent float64 oracle
        out = model(clip.to(device))
    assert_close(out, expected, "MViT")


@pytest.mark.clause("MVIT.TORCHVISION_V2", "MVIT.REL_POS")
def test_torchvision_v2_logits(impl, device):
    """mvit_v2_s's state_dict loads unchanged; at a 4x32x32 clip (grid 2x8x8) torchvision resizes its rel-pos
    tables, which needs only its starting grid set (v2 has no absolute tables)."""
    video = pytest.importorskip("torchvision.models.video")
    torch.manual_seed(17)
    tv = video.mvit_v2_s(weights=None).eval()
    model = _empty(impl.MViT, MVIT_V2_S).eval()
    ours = model.state_dict()
    tv_sd = tv.state_dict()
    assert list(ours) == list(tv_sd) and all(ours[k].shape == v.shape for k, v in tv_sd.items())
    model.load_state_dict(tv_sd, strict=True)
    model.to(device)
    t, h, w = MVIT_V2_S.patch_grid(SMALL_CLIP)
    tv.pos_encoding.temporal_size, tv.pos_encoding.spatial_size = t, (h, w)
    clip = torch.randn(2, 3, *SMALL_CLIP, generator=_gen(18))
    with torch.no_grad():
        expected = tv.double()(clip.double())
        out = model(clip.to(device))
    assert_close(out, expected, "MViT")


@pytest.mark.clause("MVIT.IMAGE")
def test_image_variant_shapes_params_and_gmacs(impl):
    assert MVIT_B_16.token_counts() == (3137, 785, 197, 50)
    model = _meta_model(impl, MVIT_B_16)
    # the paper states 37.0M, i.e. a count in [36.95M, 37.05M): compared as an interval, not by rounding
    params = sum(p.numel() for p in model.parameters())
    assert abs(params - MVIT_KNOWN.params_image_b16_millions * 1e6) < 0.05e6, params
    seen = _record_blocks(model)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        logits = model(torch.empty(1, 3, 224, 224, device="meta"))  # an image: [B, 3, H, W]
    assert logits.shape == (1, 1000)
    assert tuple(seen[e][0] for e in _stage_ends(MVIT_B_16)) == (3137, 785, 197, 50)
    gmacs = counter.get_total_flops() / 2e9
    assert abs(gmacs - MVIT_KNOWN.gmacs_image_b16) <= MVIT_KNOWN.gmacs_rel_tolerance * MVIT_KNOWN.gmacs_image_b16


@pytest.mark.clause("MVIT.IMAGE")
def test_image_variant_matches_reference(impl, reference_impl, device):
    mod, ref = _twin(impl.MViT, reference_impl.MViT, (MVIT_B_16,), {}, 19, device)
    image = torch.randn(2, 3, 40, 56, generator=_gen(20))
    with torch.no_grad():
        expected = ref(image.double())
        out = mod(image.to(device))
        as_clip = mod(image.unsqueeze(2).to(device))  # [B, 3, 1, H, W] is the same image
    assert_close(out, expected, "MViT")
    torch.testing.assert_close(cpu(as_clip), cpu(out))


# ------------------------------------------------------------------------------------------------ errors
@pytest.mark.clause("MVIT.ERRORS")
@pytest.mark.parametrize("shape, dtype, exc, match", [
    ((3, 4, 32, 32), torch.float32, ValueError, "clip"),           # rank 4 for a video model
    ((1, 3, 4, 32, 32, 1), torch.float32, ValueError, "clip"),     # rank 6
    ((1, 4, 4, 32, 32), torch.float32, ValueError, "channels"),    # 4 channels
    ((1, 3, 4, 32, 32), torch.int64, TypeError, "clip"),           # integer clip
    ((1, 3, 4, 0, 32), torch.float32, ValueError, "H"),            # an empty axis: no token grid
    ((1, 3, 0, 32, 32), torch.float32, ValueError, "T"),
])
def test_model_rejects_bad_clips(small_v1, device, shape, dtype, exc, match):
    model = small_v1.to(device)
    with pytest.raises(exc, match=match), torch.no_grad():
        model(torch.zeros(shape, dtype=dtype, device=device))


@pytest.mark.clause("MVIT.ERRORS")
def test_empty_batch_is_valid(small_v1, device):
    with torch.no_grad():
        logits = small_v1.to(device)(torch.zeros(0, 3, *SMALL_CLIP, device=device))
    assert logits.shape == (0, 400)


@pytest.mark.clause("MVIT.ERRORS")
def test_modules_reject_bad_tokens(impl, device):
    attn = impl.PoolingAttention(8, 2, kernel_q=(3, 3, 3), stride_q=(1, 2, 2)).to(device)
    good = torch.zeros(1, 1 + 2 * 4 * 4, 8, device=device)
    with pytest.raises(ValueError, match="tokens"), torch.no_grad():
        attn(good[:, :-1], (2, 4, 4))  # one token short of the grid
    with pytest.raises(ValueError, match="x"), torch.no_grad():
        attn(torch.zeros(1, 33, 7, device=device), (2, 4, 4))  # 7 channels, 8 expected
    with pytest.raises(ValueError, match="x"), torch.no_grad():
        attn(good[0], (2, 4, 4))  # rank 2
    with pytest.raises(TypeError, match="x"), torch.no_grad():
        attn(good.long(), (2, 4, 4))
    with pytest.raises(ValueError, match="thw"), torch.no_grad():
        attn(good, (2, 0, 4))
    with pytest.raises(ValueError, match="stride"):
        impl.PoolingAttention(8, 2, kernel_q=None, stride_q=(1, 2, 2))  # a stride without a window
    with pytest.raises(ValueError, match="num_heads"):
        impl.PoolingAttention(8, 3)


@pytest.mark.clause("MVIT.ERRORS", "MVIT.POOLED_LENGTH")
def test_block_rejects_grids_the_strides_cannot_handle(impl, device):
    """Stride 3 with a kernel-3 Q pooling gives floor((L - 1)/3) + 1 positions, but the skip max-pool (kernel 4,
    padding 2) gives floor(L/3) + 1: they agree for L = 7 and disagree for L = 6."""
    block = impl.MultiScaleBlock(8, 8, 2, kernel_q=(3, 3, 3), stride_q=(1, 3, 3)).eval().to(device)
    with torch.no_grad():
        out, thw = block(torch.randn(1, 1 + 49, 8, device=device), (1, 7, 7))
        assert tuple(thw) == (1, 3, 3)
        with pytest.raises(ValueError, match="cannot handle"):
            block(torch.randn(1, 1 + 36, 8, device=device), (1, 6, 6))
