"""fast/ backbone internals the contract does not expose: FrozenBN folding and its cache, training mode,
channels-last layout, in-place safety.

A tiny ResNet config (same code paths, a few thousand parameters) keeps these tests fast; the conformance suite
covers the full ResNet-50.
"""

from __future__ import annotations

import copy
import io
import math
import pickle
from dataclasses import replace

import pytest
import torch

import fast
import reference
from fast.resnet import Conv2d as FastConv2d
from spec.config import BASE_RCNN_FPN

TINY = replace(BASE_RCNN_FPN.resnet, blocks_per_stage=(1, 2, 1, 1), width_per_group=8, stem_out_channels=8,
               res2_out_channels=16)
TINY_CHANNELS = (16, 32, 64, 128)
TINY_FPN = replace(BASE_RCNN_FPN.fpn, out_channels=16)
CL = torch.channels_last


def _random_state(template: dict, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, t in template.items():
        if key.endswith(("norm.weight", "norm.running_var")):
            out[key] = torch.rand(t.shape, generator=g) + 0.5
        elif key.endswith(("norm.bias", "norm.running_mean", ".bias")):
            out[key] = torch.randn(t.shape, generator=g) * 0.1
        else:
            out[key] = torch.randn(t.shape, generator=g) * math.sqrt(2.0 / (t.shape[0] * t.shape[2] * t.shape[3]))
    return out


def _tiny(seed: int = 0, dtype=torch.float32) -> fast.ResNet:
    model = fast.ResNet(TINY)
    model.load_state_dict(_random_state(model.state_dict(), seed))
    return model.to(dtype).eval()


def _x(n=2, h=64, w=96, seed=0, dtype=torch.float32):
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _unfolded(model: torch.nn.Module, x: torch.Tensor) -> dict:
    """Train mode runs conv and FrozenBN separately (nothing else differs: FrozenBN is frozen in both modes)."""
    was_training = model.training
    with torch.no_grad():
        out = model.train()(x)
    model.train(was_training)
    return out


def _convs(model):
    return [m for m in model.modules() if isinstance(m, FastConv2d)]


def _assert_outputs_close(a: dict, b: dict, rtol: float) -> None:
    assert list(a) == list(b)
    for k in a:
        scale = float(b[k].abs().max())
        torch.testing.assert_close(a[k], b[k], rtol=0.0, atol=rtol * scale, msg=lambda m, k=k: f"{k}: {m}")


# ----------------------------------------------------------------------------------------------- folding
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_folded_eval_equals_unfolded(dtype, tol):
    model = _tiny(dtype=dtype)
    x = _x(dtype=dtype)
    with torch.no_grad():
        folded = model(x)
    assert all(c._folded is not None for c in _convs(model)), "eval forward did not fold every conv"
    _assert_outputs_close(folded, _unfolded(model, x), tol)


def test_fold_matches_reference_module():
    ref = reference.ResNet(TINY)
    ref.load_state_dict(_random_state(ref.state_dict(), 3))
    model = fast.ResNet(TINY)
    model.load_state_dict(ref.state_dict())
    with torch.no_grad():
        expected = ref.double().eval()(_x(dtype=torch.float64))
        got = model.double().eval()(_x(dtype=torch.float64))
    _assert_outputs_close(got, expected, 1e-12)


def test_cache_is_reused_when_nothing_changed():
    model = _tiny()
    with torch.no_grad():
        model(_x())
        first = [c._folded[1] for c in _convs(model)]
        model(_x(seed=1))
    assert all(c._folded[1] is w for c, w in zip(_convs(model), first))


def test_cache_invalidated_by_load_state_dict():
    model = _tiny(seed=0)
    x = _x()
    with torch.no_grad():
        before = model(x)
    model.load_state_dict(_random_state(model.state_dict(), seed=1))
    with torch.no_grad():
        after = model(x)
    _assert_outputs_close(after, _unfolded(model, x), 1e-5)
    _assert_outputs_close(after, _unfolded(_tiny(seed=1), x), 1e-5)
    assert not torch.allclose(after["res5"], before["res5"])


@pytest.mark.parametrize("edit", ["conv_weight", "norm_weight", "running_mean", "running_var", "norm_bias"])
def test_cache_invalidated_by_in_place_edit(edit):
    model = _tiny()
    x = _x()
    with torch.no_grad():
        before = model(x)
        conv = model.res3[0].conv2
        target = {"conv_weight": conv.weight, "norm_weight": conv.norm.weight, "norm_bias": conv.norm.bias,
                  "running_mean": conv.norm.running_mean, "running_var": conv.norm.running_var}[edit]
        target.mul_(1.5).add_(0.25)  # in place under no_grad: bumps the version counter
        after = model(x)
    _assert_outputs_close(after, _unfolded(model, x), 1e-5)
    assert not torch.allclose(after["res5"], before["res5"])
    assert torch.equal(after["res2"], before["res2"])  # res2 runs before the edited conv


def test_cache_follows_dtype_and_device_moves():
    model = _tiny()
    x = _x()
    with torch.no_grad():
        model(x)
        model.double()
        out = model(x.double())
    assert out["res5"].dtype == torch.float64
    _assert_outputs_close(out, _unfolded(model, x.double()), 1e-12)


def test_writes_through_data_need_clear_folded():
    """.data writes bypass version counters (documented): clear_folded() makes the next forward refold."""
    model = _tiny()
    x = _x()
    with torch.no_grad():
        model(x)
    model.res4[0].conv1.weight.data.mul_(3.0)
    model.clear_folded()
    with torch.no_grad():
        out = model(x)
    _assert_outputs_close(out, _unfolded(model, x), 1e-5)


def test_deepcopy_and_pickle_drop_the_cache():
    model = _tiny()
    x = _x()
    with torch.no_grad():
        expected = model(x)
    clone = copy.deepcopy(model)
    assert all(c._folded is None for c in _convs(clone))
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert all(c._folded is None for c in _convs(loaded))
    assert pickle.loads(pickle.dumps(model)) is not None
    with torch.no_grad():
        for other in (clone, loaded):
            out = other(x)
            for k in expected:
                assert torch.equal(out[k], expected[k])


def test_inference_mode_cache_is_usable_with_autograd():
    """A cache filled under torch.inference_mode must not break a later eval forward that records autograd."""
    model = _tiny()
    x = _x()
    with torch.inference_mode():
        expected = model(x)
    xg = x.clone().requires_grad_(True)
    out = model(xg)  # grad enabled: frozen convs use the cache, trainable ones refold differentiably
    out["res5"].sum().backward()
    assert xg.grad is not None and float(xg.grad.abs().sum()) > 0
    assert model.res3[0].conv1.weight.grad is not None  # the differentiable fold reaches the conv weight
    assert model.stem.conv1.weight.grad is None  # frozen
    for k in expected:
        torch.testing.assert_close(out[k].detach(), expected[k], rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------- training
def test_train_mode_forward_backward():
    model = _tiny().train()
    neck = fast.FPN(TINY_CHANNELS, TINY_FPN).train()
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    out = neck(model(_x()))
    sum(v.float().mean() for v in out.values()).backward()
    for name, p in model.named_parameters():
        if name.startswith(("stem.", "res2.")):  # freeze_at = 2
            assert p.grad is None, name
        else:
            assert p.grad is not None and float(p.grad.abs().sum()) > 0, name
    assert all(p.grad is not None for p in neck.parameters())
    for k, v in model.named_buffers():
        assert torch.equal(v, buffers[k]), f"FrozenBN buffer {k} changed"
    assert all(c._folded is None for c in _convs(model)), "training mode must not fold"


def test_train_mode_gradients_match_reference():
    ref = reference.ResNet(TINY)
    ref.load_state_dict(_random_state(ref.state_dict(), 5))
    model = fast.ResNet(TINY)
    model.load_state_dict(ref.state_dict())
    ref, model = ref.double().train(), model.double().train()
    x = _x(dtype=torch.float64)
    ref(x)["res5"].square().mean().backward()
    model(x)["res5"].square().mean().backward()
    for (name, p), q in zip(ref.named_parameters(), model.parameters()):
        if p.grad is None:
            assert q.grad is None, name
        else:
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-9, atol=1e-12, msg=lambda m, n=name: f"{n}: {m}")


# ----------------------------------------------------------------------------------------------- layout
def test_channels_last_inputs_and_outputs():
    model = _tiny()
    neck = fast.FPN(TINY_CHANNELS, TINY_FPN).eval()
    x = _x()
    with torch.no_grad():
        a = model(x)
        b = model(x.contiguous(memory_format=CL))
        pa, pb = neck(a), neck({k: v.contiguous() for k, v in b.items()})
    for k in a:
        assert torch.equal(a[k], b[k])
        assert a[k].is_contiguous(memory_format=CL)
    for k in pa:
        assert torch.equal(pa[k], pb[k])
        assert pa[k].is_contiguous(memory_format=CL)
    assert all(p.is_contiguous(memory_format=CL) for p in model.parameters())
    batch, _ = fast.pad_images([torch.randn(3, 50, 70), torch.randn(3, 20, 90)])
    assert batch.is_contiguous(memory_format=CL) and tuple(batch.shape) == (2, 3, 64, 96)


def test_in_place_ops_never_touch_inputs():
    model = _tiny()
    neck = fast.FPN(TINY_CHANNELS, TINY_FPN).eval()
    x = _x()
    x_before = x.clone()
    with torch.no_grad():
        feats = model(x)
        feats_before = {k: v.clone() for k, v in feats.items()}
        neck(feats)
    assert torch.equal(x, x_before)
    for k in feats:
        assert torch.equal(feats[k], feats_before[k]), k


def test_resnet_skips_stages_after_the_last_output():
    cfg = replace(TINY, out_features=("res2", "res3"))
    model = fast.ResNet(cfg).eval()
    ref = reference.ResNet(cfg).eval()
    ref.load_state_dict(model.state_dict())
    with torch.no_grad():
        got, expected = model(_x()), ref(_x())
    assert list(got) == ["res2", "res3"]
    _assert_outputs_close(got, expected, 1e-5)


def test_fpn_avg_fuse_matches_reference():
    cfg = replace(TINY_FPN, fuse_type="avg")
    ref = reference.FPN(TINY_CHANNELS, cfg).eval()
    model = fast.FPN(TINY_CHANNELS, cfg).eval()
    model.load_state_dict(_random_state(ref.state_dict(), 2))
    ref.load_state_dict(model.state_dict())
    g = torch.Generator().manual_seed(0)
    feats = {f"res{i + 2}": torch.randn(1, c, 16 >> i, 24 >> i, generator=g, dtype=torch.float64)
             for i, c in enumerate(TINY_CHANNELS)}
    with torch.no_grad():
        _assert_outputs_close(model.double()(feats), ref.double()(feats), 1e-12)
