"""fast/mvit internals the contract does not expose: the SDPA path, one pooling call for all heads, the
channels-last layouts, the bf16 autocast path (ratio rule) and training-mode gradients."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import fast.mvit as fast_mvit
import reference.mvit as ref_mvit
from spec.mvit import MVIT_B_16, MVIT_B_16X4, MVIT_V2_S
from spec.tolerances import assert_close, ratio_rule_holds

fast_attention = __import__("fast.mvit.attention", fromlist=["_"])
fast_pooling = __import__("fast.mvit.pooling", fromlist=["_"])

SMALL_V1 = replace(MVIT_B_16X4, temporal_size=4, spatial_size=(32, 32))


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = _gen(seed)
    with torch.no_grad():
        for m in module.modules():
            for name, p in m.named_parameters(recurse=False):
                noise = torch.randn(p.shape, generator=g).to(p.dtype)
                if isinstance(m, torch.nn.LayerNorm) and name == "weight":
                    p.copy_(1.0 + 0.2 * noise)
                elif p.dim() == 1:
                    p.copy_(0.2 * noise)
                else:
                    p.copy_(noise / math.sqrt(p[0].numel()))
    return module


def _meta_empty(cls, *args, **kwargs):
    with torch.device("meta"):
        module = cls(*args, **kwargs)
    return module.to_empty(device="cpu")


def _explicit_sdpa(q, k, v, attn_mask=None, **_):
    logits = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    if attn_mask is not None:
        logits = logits + attn_mask
    return logits.softmax(dim=-1) @ v


@pytest.mark.parametrize("rel_pos", [False, True])
def test_sdpa_path_equals_explicit_math(monkeypatch, rel_pos):
    """The fused SDPA kernel (with the rel-pos bias as a float mask) equals softmax(QK^T/sqrt(d) + E) V."""
    kwargs = dict(kernel_q=(3, 3, 3), stride_q=(1, 2, 2), kernel_kv=(3, 3, 3), stride_kv=(1, 2, 2))
    if rel_pos:
        kwargs.update(rel_pos_size=(2, 6, 6), residual_pool=True)
    mod = _randomize(fast_mvit.PoolingAttention(16, 2, **kwargs), 1).eval()
    x = torch.randn(2, 1 + 2 * 6 * 6, 16, generator=_gen(2))
    with torch.no_grad():
        fused, thw = mod(x, (2, 6, 6))
        monkeypatch.setattr(fast_attention.F, "scaled_dot_product_attention", _explicit_sdpa)
        explicit, _ = mod(x, (2, 6, 6))
    assert thw == (2, 3, 3)
    torch.testing.assert_close(fused, explicit, rtol=1e-5, atol=1e-5)


def test_one_pooling_call_and_one_sdpa_call_for_all_heads(monkeypatch):
    """No loops over heads: a forward makes one conv3d per pooled tensor and one SDPA call, whatever the heads."""
    calls = {"conv3d": 0, "sdpa": 0}
    conv3d, sdpa = F.conv3d, F.scaled_dot_product_attention

    def counting_conv3d(*args, **kwargs):
        calls["conv3d"] += 1
        return conv3d(*args, **kwargs)

    def counting_sdpa(*args, **kwargs):
        calls["sdpa"] += 1
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(fast_pooling.F, "conv3d", counting_conv3d)
    monkeypatch.setattr(fast_attention.F, "scaled_dot_product_attention", counting_sdpa)
    for heads in (1, 4):
        calls.update(conv3d=0, sdpa=0)
        mod = fast_mvit.PoolingAttention(32, heads, kernel_q=(3, 3, 3), stride_q=(1, 2, 2), stride_kv=(1, 2, 2))
        with torch.no_grad():
            mod(torch.randn(1, 1 + 2 * 8 * 8, 32), (2, 8, 8))
        assert calls == {"conv3d": 3, "sdpa": 1}, (heads, calls)


@given(st.integers(1, 4), st.sampled_from([1, 3, 8]), st.tuples(st.integers(1, 3), st.integers(1, 6),
                                                                 st.integers(1, 6)),
       st.sampled_from(["conv", "avg", "max"]), st.integers(0, 2**31 - 1))
def test_channels_last_pooling_equals_per_head_pooling(heads, head_dim, thw, mode, seed):
    """Pooling the token-major [B, N, h, d] view as one channels-last [B, h*d, T, H, W] volume equals pooling each
    head's contiguous [B*h, d, T, H, W] volume (torchvision's layout), including one-channel volumes (a torch
    conv3d bug misreads some channels-last tensors with C = 1; the pool falls back to a standard layout)."""
    pool = _randomize(fast_pooling.Pool(head_dim, (3, 3, 3), (1, 2, 2), mode=mode, norm=False), seed)
    qkv = torch.randn(2, 1 + math.prod(thw), 3, heads, head_dim, generator=_gen(seed))
    k = qkv.unbind(2)[1]  # a strided view, as in the attention
    with torch.no_grad():
        out, new_thw = pool(k, thw)
    volume = k[:, 1:].permute(0, 2, 3, 1).reshape(2 * heads, head_dim, *thw)
    if mode == "conv":
        pooled = F.conv3d(volume, pool.pool.weight, None, (1, 2, 2), (1, 1, 1), 1, head_dim)
    elif mode == "avg":
        pooled = F.avg_pool3d(F.pad(volume, (1,) * 6), 3, (1, 2, 2))
    else:
        pooled = F.max_pool3d(volume, 3, (1, 2, 2), 1)
    expected = pooled.reshape(2, heads, head_dim, -1).permute(0, 3, 1, 2)
    assert new_thw == tuple(pooled.shape[2:])
    torch.testing.assert_close(out[:, 1:], expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(out[:, :1], k[:, :1])


def test_patch_embedding_output_is_token_major():
    """The channels-last patch conv makes [B, D, T, H, W] -> [B, THW, D] a free view."""
    conv = torch.nn.Conv3d(3, 8, (3, 7, 7), (2, 4, 4), (1, 3, 3))
    out = conv(torch.randn(1, 3, 4, 32, 32).contiguous(memory_format=torch.channels_last_3d))
    assert out.flatten(2).transpose(1, 2).is_contiguous()


@pytest.mark.parametrize("cfg", [MVIT_B_16X4, MVIT_B_16, MVIT_V2_S])
def test_state_dict_layout_equals_reference(cfg):
    with torch.device("meta"):
        f, r = fast_mvit.MViT(cfg), ref_mvit.MViT(cfg)
    fs, rs = f.state_dict(), r.state_dict()
    assert list(fs) == list(rs) and all(fs[k].shape == rs[k].shape for k in fs)


def test_gradients_match_reference():
    """Training mode (drop path 0): the SDPA/channels-last path back-propagates like the reference (float64)."""
    kwargs = dict(kernel_q=(3, 3, 3), stride_q=(1, 2, 2), kernel_kv=(3, 3, 3), stride_kv=(1, 2, 2),
                  expand_in_attention=True, rel_pos_size=(2, 6, 6), residual_pool=True)
    ref = _randomize(ref_mvit.MultiScaleBlock(8, 16, 2, **kwargs).double(), 3).train()
    mod = fast_mvit.MultiScaleBlock(8, 16, 2, **kwargs).double().train()
    mod.load_state_dict(ref.state_dict())
    x = torch.randn(2, 1 + 72, 8, generator=_gen(4), dtype=torch.float64)
    grads = []
    for m in (ref, mod):
        xi = x.clone().requires_grad_(True)
        out, _ = m(xi, (2, 6, 6))
        (out * torch.linspace(-1, 1, out.numel(), dtype=torch.float64).reshape(out.shape)).sum().backward()
        grads.append([xi.grad] + [p.grad for p in m.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, rtol=1e-7, atol=1e-9)


def test_drop_path_drops_whole_samples():
    """Stochastic depth in training: each sample's attention branch is either dropped or kept and scaled by
    1 / (1 - p), as a whole (the MLP branch is silenced so the attention branch is the only one)."""
    block = _randomize(fast_mvit.MultiScaleBlock(8, 8, 2, drop_path=0.5), 9)
    with torch.no_grad():
        block.mlp[3].weight.zero_()
        block.mlp[3].bias.zero_()
    x = torch.randn(256, 1 + 8, 8, generator=_gen(10))
    with torch.no_grad():
        attn = block.eval().attn(block.norm1(x), (1, 2, 4))[0]
        torch.manual_seed(0)
        delta = block.train()(x, (1, 2, 4))[0] - x
    dropped = delta.abs().amax(dim=(1, 2)) == 0
    kept = torch.isclose(delta, 2 * attn, rtol=1e-5, atol=1e-6).all(dim=2).all(dim=1)
    assert bool((dropped ^ kept).all())  # every sample is exactly one of the two
    assert 0.3 < float(dropped.float().mean()) < 0.7


def _ratio_rule_case(device: str, cfg, size):
    """(fast bf16-autocast error, naive bf16 error) of the logits against the float64 reference."""
    ref = _randomize(_meta_empty(ref_mvit.MViT, cfg).double().eval(), 5)
    sd = ref.state_dict()
    fast_model = _meta_empty(fast_mvit.MViT, cfg, autocast_dtype=torch.bfloat16).eval()
    fast_model.load_state_dict({k: v.float() for k, v in sd.items()})
    naive = _meta_empty(ref_mvit.MViT, cfg).eval()
    naive.load_state_dict(sd)
    naive = naive.bfloat16().to(device)
    fast_model.to(device)
    clip = torch.randn(2, 3, *size, generator=_gen(6))
    with torch.no_grad():
        expected = ref(clip.double())
        out = fast_model(clip.to(device))
        naive_out = naive(clip.to(device, torch.bfloat16))
    fast_error = (out.double().cpu() - expected).abs().max().item()
    naive_error = (naive_out.double().cpu() - expected).abs().max().item()
    return fast_error, naive_error


@pytest.mark.parametrize("cfg, size", [(SMALL_V1, (4, 32, 32)), (MVIT_V2_S, (4, 32, 32))])
def test_bf16_autocast_ratio_rule_cpu(cfg, size):
    """The autocast path on CPU (bfloat16): error against float64 <= 2x the naive all-bfloat16 model's."""
    fast_error, naive_error = _ratio_rule_case("cpu", cfg, size)
    assert ratio_rule_holds(fast_error, naive_error), (fast_error, naive_error)


@pytest.mark.gpu
@pytest.mark.parametrize("cfg, size", [(SMALL_V1, (4, 32, 32)), (MVIT_V2_S, (8, 64, 64)), (MVIT_B_16X4, (8, 96, 96))])
def test_bf16_autocast_ratio_rule_cuda(cfg, size):
    """The bf16 autocast path on CUDA (flash / memory-efficient SDPA): the ratio rule of spec.tolerances."""
    fast_error, naive_error = _ratio_rule_case("cuda", cfg, size)
    assert ratio_rule_holds(fast_error, naive_error), (fast_error, naive_error)


@pytest.mark.gpu
@pytest.mark.parametrize("cfg, backend", [(SMALL_V1, "FLASH_ATTENTION"), (MVIT_V2_S, "EFFICIENT_ATTENTION")])
def test_fused_sdpa_kernels_on_cuda(monkeypatch, cfg, backend):
    """v1 (no mask) runs with the flash kernel alone, v2 (rel-pos float mask) with the memory-efficient kernel
    alone, in bf16 autocast; and the float32 CUDA result matches the float64 reference."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # the float32 check needs float32 convs
    model = _randomize(_meta_empty(fast_mvit.MViT, cfg, autocast_dtype=torch.bfloat16), 7).eval().cuda()
    clip = torch.randn(2, 3, 4, 32, 32, generator=_gen(8))
    with torch.no_grad(), sdpa_kernel([getattr(SDPBackend, backend)]):
        out = model(clip.cuda())
    assert torch.isfinite(out).all()
    ref = ref_mvit.MViT(cfg).double().eval()
    ref.load_state_dict(model.state_dict())
    model.autocast_dtype = None
    with torch.no_grad():
        out32 = model(clip.cuda())
        expected = ref(clip.double())
    assert_close(out32.cpu(), expected, "MViT")
