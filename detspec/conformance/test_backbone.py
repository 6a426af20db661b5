"""Conformance: input padding, the ResNet-50 body and the FPN. d2-spec §1.1, §1.2, §2.1, §2.2, §3, §5.1.

Big modules are built once per implementation (module-scoped fixtures) from one seeded state_dict whose FrozenBN
buffers are random, so that every test also exercises the norm (and fast's folding of it). Tests never modify
those shared modules; the ones that must (known weights, training) build or copy their own.
"""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from detspec.checkpoints import rename_torchvision_key
from detspec.conformance._util import assert_close, cpu, on
from spec import strategies as S
from spec.config import BASE_RCNN_FPN, PARAMETER_COUNTS, TORCHVISION

D2 = BASE_RCNN_FPN.resnet
TV = TORCHVISION.resnet
FPN_CFG = BASE_RCNN_FPN.fpn
DIV = BASE_RCNN_FPN.input.size_divisibility
RES = ("res2", "res3", "res4", "res5")
RES_STRIDES = (4, 8, 16, 32)
RES_CHANNELS = (256, 512, 1024, 2048)
P_NAMES = ("p2", "p3", "p4", "p5", "p6")
P_STRIDES = (4, 8, 16, 32, 64)
EPS32 = torch.finfo(torch.float32).eps

# d2-spec §5.1: stage -> (blocks, bottleneck width, output width, input width of block 0)
STAGE_TABLE = {"res2": (3, 64, 256, 64), "res3": (4, 128, 512, 256), "res4": (6, 256, 1024, 512),
               "res5": (3, 512, 2048, 1024)}


# --------------------------------------------------------------------------------------------- helpers
def _random_state(template: dict, seed: int) -> dict:
    """A state_dict with template's keys and shapes and seeded random values.

    Conv weights ~ N(0, 2 / fan_out) (He init, as c2_msra_fill); FrozenBN weight ~ U(0.5, 1.5),
    bias ~ N(0, 0.1), running_mean ~ N(0, 0.1), running_var ~ U(0.5, 1.5); conv biases ~ N(0, 0.1).
    """
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, t in template.items():
        shape = tuple(t.shape)
        if key.endswith(("norm.weight", "norm.running_var")):
            value = torch.rand(shape, generator=g) + 0.5
        elif key.endswith(("norm.bias", "norm.running_mean")) or key.endswith(".bias"):
            value = torch.randn(shape, generator=g) * 0.1
        else:  # a conv weight [out, in, kh, kw]
            fan_out = shape[0] * shape[2] * shape[3]
            value = torch.randn(shape, generator=g) * math.sqrt(2.0 / fan_out)
        out[key] = value
    return out


def _load(module: torch.nn.Module, state: dict, device) -> torch.nn.Module:
    module.load_state_dict(state, strict=True)
    return module.to(device).eval()


def _assert_close_to_float64(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    """A float32 deep-network output against its float64 reference.

    The spec's float32 default (rtol 1.3e-6, atol 1e-5) is per element and too tight for ~50 stacked convs:
    each conv output is a float32 sum of K <= 3*3*512 = 4608 products, which rounds with a relative error of
    about eps * sqrt(K) ~ 68 eps of that layer's magnitude, and the errors of successive blocks add up along
    the residual path. Relative to the *largest* magnitude of the output (small entries inherit the absolute
    error of their large neighbours through later convs), the measured error is ~20 eps; the bound below is
    1024 eps = 1.2e-4 of the max, a 50x margin that any algorithmic mistake (a wrong stride, a norm in the
    wrong place, bilinear instead of nearest) exceeds by orders of magnitude.
    """
    __tracebackhide__ = True
    a, e = cpu(actual).double(), cpu(expected).double()
    assert a.shape == e.shape, f"{what}: shape {list(a.shape)} != {list(e.shape)}"
    bound = 1024 * EPS32 * float(e.abs().max())
    torch.testing.assert_close(a, e, rtol=0.0, atol=bound, msg=lambda m: f"{what}: {m}")


def _frozen_bn_class(impl, resnet):
    """The implementation's FrozenBatchNorm2d (exported name, else the class of the stem's norm)."""
    return getattr(impl.namespace, "FrozenBatchNorm2d", None) or type(resnet.stem.conv1.norm)


def _conv_weight_keys(state: dict) -> list[str]:
    return [k for k in state if k.endswith(".weight") and ".norm." not in k]


# --------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def resnet_state(reference_impl):
    return _random_state(reference_impl.ResNet().state_dict(), seed=0)


@pytest.fixture(scope="module")
def fpn_state(reference_impl):
    return _random_state(reference_impl.FPN().state_dict(), seed=1)


@pytest.fixture(scope="module")
def resnet(impl, resnet_state, device):
    """The implementation's detectron2-profile ResNet-50 with the shared random weights, eval mode."""
    return _load(impl.ResNet(), resnet_state, device)


@pytest.fixture(scope="module")
def resnet_tv(impl, resnet_state, device):
    """The same weights in a torchvision-profile ResNet (stride on the 3x3 conv)."""
    return _load(impl.ResNet(TV), resnet_state, device)


@pytest.fixture(scope="module")
def fpn(impl, fpn_state, device):
    return _load(impl.FPN(), fpn_state, device)


@pytest.fixture(scope="module")
def reference64(reference_impl, resnet_state, fpn_state):
    """The reference ResNet + FPN in float64 on the CPU: the oracle of differential tests."""
    r = _load(reference_impl.ResNet(), resnet_state, "cpu").double()
    f = _load(reference_impl.FPN(), fpn_state, "cpu").double()
    return r, f


def _tiny_fpn(impl, device):
    """An FPN with 1 input and 1 output channel per level: cheap for hand-built weights and big sizes."""
    return impl.FPN(in_channels=(1, 1, 1, 1), cfg=replace(FPN_CFG, out_channels=1)).to(device).eval()


def _features(sizes, channels, device, n=1, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return {name: on(torch.randn(n, c, h, w, generator=g, dtype=dtype), device)
            for name, c, (h, w) in zip(RES, channels, sizes)}


# ============================================================================================= INPUT.PADDING
@pytest.mark.clause("INPUT.PADDING")
def test_pad_images_known_values(impl, device):
    a = torch.arange(2 * 5 * 7, dtype=torch.float32).reshape(2, 5, 7) + 1  # no zeros inside an image
    b = torch.full((2, 33, 10), -3.0)
    batch, sizes = impl.pad_images([on(a, device), on(b, device)])
    # H = ceil(33 / 32) * 32 = 64, W = ceil(10 / 32) * 32 = 32; images sit in the top-left corner
    assert tuple(batch.shape) == (2, 2, 64, 32)
    assert [tuple(s) for s in sizes] == [(5, 7), (33, 10)]
    batch = cpu(batch)
    expected = torch.zeros(2, 2, 64, 32)
    expected[0, :, :5, :7] = a
    expected[1, :, :33, :10] = b
    assert torch.equal(batch, expected)
    # pad_value fills the bottom rows and right columns
    batch, _ = impl.pad_images([on(a, device)], pad_value=-1.0)
    expected = torch.full((1, 2, 32, 32), -1.0)
    expected[0, :, :5, :7] = a
    assert torch.equal(cpu(batch), expected)


@pytest.mark.clause("INPUT.PADDING")
def test_pad_images_keeps_divisible_size_and_800x1199(impl, device):
    img = torch.randn(3, 64, 96)
    batch, sizes = impl.pad_images([on(img, device)])
    assert tuple(batch.shape) == (1, 3, 64, 96) and [tuple(s) for s in sizes] == [(64, 96)]
    assert torch.equal(cpu(batch)[0], img)
    # d2-spec §3: a 427x640 COCO image resized to 800x1199 is padded to 800x1216
    batch, sizes = impl.pad_images([torch.zeros(3, 800, 1199, device=device)])
    assert tuple(batch.shape) == (1, 3, 800, 1216) and [tuple(s) for s in sizes] == [(800, 1199)]


@pytest.mark.clause("INPUT.PADDING")
@settings(max_examples=10)
@given(st.lists(S.image_sizes(1, 100), min_size=1, max_size=3), st.integers(0, 2**31 - 1))
def test_pad_images_sizes_and_content(impl, device, image_sizes, seed):
    g = torch.Generator().manual_seed(seed)
    images = [torch.randn(3, h, w, generator=g) for h, w in image_sizes]
    batch, sizes = impl.pad_images([on(i, device) for i in images])
    height = math.ceil(max(h for h, _ in image_sizes) / DIV) * DIV
    width = math.ceil(max(w for _, w in image_sizes) / DIV) * DIV
    assert tuple(batch.shape) == (len(images), 3, height, width)
    assert [tuple(s) for s in sizes] == [tuple(s) for s in image_sizes]
    batch = cpu(batch)
    for i, (img, (h, w)) in enumerate(zip(images, image_sizes)):
        assert torch.equal(batch[i, :, :h, :w], img)
        mask = torch.ones(height, width, dtype=torch.bool)
        mask[:h, :w] = False
        assert (batch[i][:, mask] == 0).all()


@pytest.mark.clause("INPUT.PADDING")
@pytest.mark.parametrize("bad, error", [
    ([], ValueError),                                                   # empty list
    ([torch.zeros(3, 4, 4), torch.zeros(1, 4, 4)], ValueError),         # mixed channel counts
    ([torch.zeros(4, 4)], ValueError),                                  # a 2-D tensor
    ([torch.zeros(1, 3, 4, 4)], ValueError),                            # a 4-D tensor
    ([torch.zeros(3, 4, 4), torch.zeros(3, 4, 4, dtype=torch.float64)], TypeError),  # mixed dtypes
    ([[[0.0]]], TypeError),                                             # not a tensor
    (torch.zeros(3, 4, 4), TypeError),                                  # a tensor, not a list
])
def test_pad_images_rejects_bad_input(impl, device, bad, error):
    if isinstance(bad, list):
        bad = [on(t, device) if isinstance(t, torch.Tensor) else t for t in bad]
    with pytest.raises(error, match="images"):
        impl.pad_images(bad)


# ============================================================================================= RESNET.STEM
@pytest.mark.clause("RESNET.STEM")
def test_stem_layout(resnet):
    conv = resnet.stem.conv1
    assert tuple(conv.weight.shape) == (64, 3, 7, 7)
    assert tuple(conv.stride) == (2, 2) and tuple(conv.padding) == (3, 3) and conv.bias is None
    assert type(conv.norm).__name__ == "FrozenBatchNorm2d"


@pytest.mark.clause("RESNET.STEM")
def test_stem_known_values(resnet, device):
    """A delta kernel makes the stem a pure sampler, so its output follows from the geometry alone.

    Every output channel picks input channel 0 at the kernel centre (3, 3); with padding 3 and stride 2, conv
    pixel (y, x) reads input pixel (2y, 2x). The input is a ramp v(r, c) = 18 r + c - 60 on a 13x18 image:
      conv: (13 + 6 - 7) // 2 + 1 = 7 rows, (18 + 6 - 7) // 2 + 1 = 9 columns; ReLU clips negatives.
      pool 3x3/2, padding 1: (7 + 2 - 3) // 2 + 1 = 4 rows, (9 + 2 - 3) // 2 + 1 = 5 columns; window i covers
      conv rows 2i-1 .. 2i+1 (clipped to 0..6); the ramp increases, so the max sits at row min(2i + 1, 6).
    out[i, j] = relu(v(2 min(2i + 1, 6), 2 min(2j + 1, 8))), e.g. out[0, 0] = relu(v(2, 2)) = 0 (v = -22),
    out[1, 0] = relu(v(6, 2)) = 50, out[3, 4] = relu(v(12, 16)) = 172.
    """
    stem = copy.deepcopy(resnet.stem)
    with torch.no_grad():
        stem.conv1.weight.zero_()
        stem.conv1.weight[:, 0, 3, 3] = 1.0
        norm = stem.conv1.norm  # identity FrozenBN: weight 1, bias 0, mean 0, var 1 - eps
        norm.weight.fill_(1.0)
        norm.bias.zero_()
        norm.running_mean.zero_()
        norm.running_var.fill_(1.0 - D2.frozen_bn_eps)
    ramp = (18 * torch.arange(13.0)[:, None] + torch.arange(18.0)[None, :] - 60)
    x = torch.randn(1, 3, 13, 18)
    x[0, 0] = ramp
    with torch.no_grad():
        out = cpu(stem(on(x, device)))
    assert tuple(out.shape) == (1, 64, 4, 5)
    rows = torch.tensor([2 * min(2 * i + 1, 6) for i in range(4)])
    cols = torch.tensor([2 * min(2 * j + 1, 8) for j in range(5)])
    expected = ramp[rows[:, None], cols[None, :]].clamp(min=0)
    assert expected[0, 0] == 0 and expected[1, 0] == 50 and expected[3, 4] == 172
    assert_close(out, expected.expand(1, 64, 4, 5).double(), "resnet.stem")


# ============================================================================================= RESNET.STAGES
@pytest.mark.clause("RESNET.STAGES")
def test_stage_layout_and_shapes(resnet):
    state = resnet.state_dict()
    for stage, (blocks, b, out, first_in) in STAGE_TABLE.items():
        found = sorted({int(k.split(".")[1]) for k in state if k.startswith(stage + ".")})
        assert found == list(range(blocks)), f"{stage} has blocks {found}, expected {blocks}"
        for i in range(blocks):
            in_ch = first_in if i == 0 else out
            p = f"{stage}.{i}."
            assert tuple(state[p + "conv1.weight"].shape) == (b, in_ch, 1, 1)
            assert tuple(state[p + "conv2.weight"].shape) == (b, b, 3, 3)
            assert tuple(state[p + "conv3.weight"].shape) == (out, b, 1, 1)
            # a projection shortcut only where the width changes: block 0 of each stage
            assert (p + "shortcut.weight" in state) == (i == 0)
        assert tuple(state[f"{stage}.0.shortcut.weight"].shape) == (out, first_in, 1, 1)


@pytest.mark.clause("RESNET.STAGES", "RESNET.FROZEN_BN")
def test_state_dict_key_layout(resnet):
    state = resnet.state_dict()
    # d2-spec §5.1 key names (under backbone.bottom_up.)
    exact = {"stem.conv1.weight": (64, 3, 7, 7), "stem.conv1.norm.weight": (64,), "stem.conv1.norm.bias": (64,),
             "stem.conv1.norm.running_mean": (64,), "stem.conv1.norm.running_var": (64,),
             "res2.0.shortcut.weight": (256, 64, 1, 1), "res2.0.shortcut.norm.running_var": (256,),
             "res3.0.conv1.weight": (128, 256, 1, 1), "res4.5.conv2.norm.running_mean": (256,),
             "res5.2.conv3.weight": (2048, 512, 1, 1), "res5.2.conv3.norm.bias": (2048,)}
    for key, shape in exact.items():
        assert key in state, f"missing key {key}"
        assert tuple(state[key].shape) == shape, f"{key}: {tuple(state[key].shape)} != {shape}"
    convs = _conv_weight_keys(state)
    assert len(convs) == 53  # 1 stem + 16 blocks x 3 + 4 shortcuts
    assert len(state) == 53 * 5  # each conv: weight + 4 FrozenBN buffers; no conv bias, no num_batches_tracked
    for key in convs:
        prefix = key[: -len("weight")]
        for buf in ("weight", "bias", "running_mean", "running_var"):
            assert tuple(state[prefix + "norm." + buf].shape) == (state[key].shape[0],)
    # FrozenBN values are buffers, never parameters
    params = dict(resnet.named_parameters())
    buffers = dict(resnet.named_buffers())
    assert sorted(params) == sorted(convs)
    assert sorted(buffers) == sorted(k for k in state if ".norm." in k)


@pytest.mark.clause("RESNET.STAGES", "RESNET.STRIDE_IN_1X1")
def test_block_strides(resnet):
    for stage in STAGE_TABLE:
        stride = 1 if stage == "res2" else 2
        for i, block in enumerate(getattr(resnet, stage)):
            s = stride if i == 0 else 1
            assert tuple(block.conv1.stride) == (s, s), f"{stage}.{i}.conv1"
            assert tuple(block.conv2.stride) == (1, 1) and tuple(block.conv2.padding) == (1, 1)
            assert tuple(block.conv3.stride) == (1, 1)
            if i == 0:
                assert tuple(block.shortcut.stride) == (s, s)


# ============================================================================================= RESNET.FROZEN_BN
@pytest.mark.clause("RESNET.FROZEN_BN")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_frozen_bn_known_values(impl, resnet, device, dtype):
    bn = _frozen_bn_class(impl, resnet)(2)
    eps = D2.frozen_bn_eps
    assert bn.eps == eps
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([2.0, 0.5]))
        bn.bias.copy_(torch.tensor([1.0, -1.0]))
        bn.running_mean.copy_(torch.tensor([3.0, 0.0]))
        bn.running_var.copy_(torch.tensor([4.0 - eps, 0.25 - eps]))  # sqrt(var + eps) = 2 and 0.5
    bn = bn.to(device=device, dtype=dtype)
    # channel 0: (x - 3) * 2 / 2 + 1 = x - 2;  channel 1: (x - 0) * 0.5 / 0.5 - 1 = x - 1
    x = torch.tensor([[[[1.0, 5.0]], [[4.0, -2.0]]]], dtype=dtype)  # [1, 2, 1, 2]
    expected = torch.tensor([[[[-1.0, 3.0]], [[3.0, -3.0]]]], dtype=torch.float64)
    assert_close(bn.eval()(on(x, device)), expected, "frozen_bn")
    # frozen in training mode too: same output, buffers unchanged, gradient w / sqrt(var + eps) = 1 reaches x
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    xg = on(x, device).requires_grad_(True)
    y = bn.train()(xg)
    assert_close(y, expected, "frozen_bn")
    y.sum().backward()
    assert_close(xg.grad, torch.ones_like(expected), "frozen_bn")
    for k, v in bn.state_dict().items():
        assert torch.equal(v, before[k]), f"buffer {k} changed in training mode"


@pytest.mark.clause("RESNET.FROZEN_BN")
def test_frozen_bn_fresh_is_identity_and_has_no_parameters(impl, resnet, device):
    bn = _frozen_bn_class(impl, resnet)(5).to(device).eval()
    assert list(bn.parameters()) == []
    assert sorted(dict(bn.named_buffers())) == ["bias", "running_mean", "running_var", "weight"]
    assert torch.equal(cpu(bn.running_var), torch.full((5,), 1.0 - D2.frozen_bn_eps))
    x = torch.randn(2, 5, 3, 4)
    # var + eps rounds to exactly 1.0 in float32, so the fresh layer is the exact identity
    assert torch.equal(cpu(bn(on(x, device))), x)
    norms = [m for m in resnet.modules() if type(m).__name__ == "FrozenBatchNorm2d"]
    assert len(norms) == 53 and all(m.eps == D2.frozen_bn_eps for m in norms)


# ============================================================================================= RESNET.STRIDE_IN_1X1
@pytest.mark.clause("RESNET.STRIDE_IN_1X1")
@pytest.mark.parametrize("profile", ["detectron2", "torchvision"])
def test_stride_placement(resnet, resnet_tv, profile):
    model = resnet if profile == "detectron2" else resnet_tv
    for stage in ("res3", "res4", "res5"):
        block = getattr(model, stage)[0]
        on_1x1 = profile == "detectron2"  # MSRA: stride on the first 1x1; torchvision: on the 3x3
        assert tuple(block.conv1.stride) == ((2, 2) if on_1x1 else (1, 1)), f"{stage}.0.conv1 ({profile})"
        assert tuple(block.conv2.stride) == ((1, 1) if on_1x1 else (2, 2)), f"{stage}.0.conv2 ({profile})"
        assert tuple(block.shortcut.stride) == (2, 2)
    for block in model.res2:  # res2 has no stride to place
        assert tuple(block.conv1.stride) == tuple(block.conv2.stride) == (1, 1)


@pytest.mark.clause("RESNET.STRIDE_IN_1X1")
def test_profiles_differ_with_same_weights(resnet, resnet_tv, device):
    """Same weights, same input: res2 (no stride) agrees, res3..res5 differ because the strided conv differs."""
    x = on(torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(3)), device)
    with torch.no_grad():
        d2, tv = resnet(x), resnet_tv(x)
    assert_close(d2["res2"], cpu(tv["res2"]).double(), "resnet")
    for name in ("res3", "res4", "res5"):
        assert d2[name].shape == tv[name].shape
        diff = float((d2[name] - tv[name]).abs().max())
        assert diff > 0.05 * float(d2[name].abs().max()), f"{name}: profiles agree (max diff {diff})"


# ============================================================================================= RESNET.FREEZE_AT
@pytest.mark.clause("RESNET.FREEZE_AT")
def test_freeze_at_2(resnet):
    frozen = {n: p for n, p in resnet.named_parameters() if not p.requires_grad}
    assert sum(p.numel() for p in frozen.values()) == PARAMETER_COUNTS.frozen_by_freeze_at_2
    assert all(n.startswith(("stem.", "res2.")) for n in frozen)
    assert all(p.requires_grad for n, p in resnet.named_parameters() if not n.startswith(("stem.", "res2.")))


@pytest.mark.clause("RESNET.FREEZE_AT")
@pytest.mark.parametrize("freeze_at, frozen_count", [
    (0, 0),
    # stem 9,408 + res2 212,992 + res3 1,212,416 (d2-spec §3)
    (3, 9_408 + 212_992 + 1_212_416),
])
def test_freeze_at_other_values(impl, freeze_at, frozen_count):
    model = impl.ResNet(replace(D2, freeze_at=freeze_at))
    assert sum(p.numel() for p in model.parameters() if not p.requires_grad) == frozen_count


@pytest.mark.clause("RESNET.FREEZE_AT", "RESNET.FROZEN_BN")
def test_frozen_params_get_no_gradient(impl, resnet_state, device):
    model = _load(impl.ResNet(), resnet_state, device).train()
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    out = model(on(torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(4)), device))
    (out["res2"].mean() + out["res5"].mean()).backward()
    for name, p in model.named_parameters():
        if name.startswith(("stem.", "res2.")):
            assert p.grad is None, f"frozen {name} got a gradient"
        else:
            assert p.grad is not None, f"{name} got no gradient"
    assert float(model.res3[0].conv1.weight.grad.abs().sum()) > 0
    for k, v in model.named_buffers():
        assert torch.equal(v, buffers[k]), f"FrozenBN buffer {k} changed in training"


# ============================================================================================= RESNET.OUTPUTS
@pytest.mark.clause("RESNET.OUTPUTS")
@pytest.mark.parametrize("size", [(64, 96), (96, 160)])
def test_resnet_output_shapes(resnet, device, size):
    h, w = size
    with torch.no_grad():
        out = resnet(on(torch.randn(1, 3, h, w), device))
    assert list(out) == list(RES)
    for name, stride, channels in zip(RES, RES_STRIDES, RES_CHANNELS):
        assert tuple(out[name].shape) == (1, channels, h // stride, w // stride), name


@pytest.mark.clause("RESNET.OUTPUTS")
def test_resnet_output_sizes_for_unpadded_input(resnet, device):
    # every stride-2 step maps n -> (n + 2p - k) // 2 + 1 = ceil(n / 2) (7x7 p3, 3x3 p1, 1x1 p0 alike),
    # so an unpadded 70x45 input gives ceil(70 / s) x ceil(45 / s): 18x12, 9x6, 5x3, 3x2
    with torch.no_grad():
        out = resnet(on(torch.randn(1, 3, 70, 45), device))
    assert [tuple(out[n].shape[-2:]) for n in RES] == [(18, 12), (9, 6), (5, 3), (3, 2)]


# ============================================================================================= RESNET.PARAMS
@pytest.mark.clause("RESNET.PARAMS")
def test_resnet_parameter_count(resnet):
    assert sum(p.numel() for p in resnet.parameters()) == PARAMETER_COUNTS.resnet50_convs
    # stem: 64 * 3 * 7 * 7 = 9,408
    assert sum(p.numel() for p in resnet.stem.parameters()) == 9_408
    # res2: block 0 = 64*64 + 64*64*9 + 256*64 + shortcut 256*64 = 73,728; blocks 1, 2 = 256*64 + 36,864 + 16,384
    # = 69,632 each; total 212,992 (d2-spec §3)
    assert sum(p.numel() for p in resnet.res2.parameters()) == 212_992


# ============================================================================================= RESNET.TORCHVISION
def _tv_resnet_key(key: str) -> str | None:
    """torchvision resnet50 key -> detectron2 layout; None for keys with no counterpart. The names come from
    detspec.checkpoints' torchvision table, where this ResNet is a Faster R-CNN's backbone.body."""
    parts = key.split(".")
    if parts[-1] == "num_batches_tracked" or parts[0] == "fc":
        return None
    new = rename_torchvision_key(f"backbone.body.{key}")
    if new is None:
        raise KeyError(key)
    return new.removeprefix("backbone.bottom_up.")


@pytest.mark.clause("RESNET.TORCHVISION", "RESNET.STRIDE_IN_1X1")
def test_resnet_matches_torchvision(impl, device):
    models = pytest.importorskip("torchvision.models")
    with torch.random.fork_rng():
        torch.manual_seed(5)
        tv = models.resnet50(weights=None)
    g = torch.Generator().manual_seed(6)
    with torch.no_grad():
        for m in tv.modules():
            if isinstance(m, torch.nn.BatchNorm2d):  # random running statistics, so the norm matters
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    tv = tv.eval().double()
    state = {_tv_resnet_key(k): v for k, v in tv.state_dict().items() if _tv_resnet_key(k) is not None}
    model = _load(impl.ResNet(TV), {k: v.float() for k, v in state.items()}, device)
    x = torch.randn(1, 3, 64, 96, generator=g, dtype=torch.float64)
    with torch.no_grad():
        y = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
        expected = {}
        for name, layer in zip(RES, (tv.layer1, tv.layer2, tv.layer3, tv.layer4)):
            y = layer(y)
            expected[name] = y
        got32 = model(on(x.float(), device))
        got64 = model.double()(on(x, device))
    for name in RES:
        assert_close(got64[name], expected[name], "resnet")  # float64: the same algorithm
        _assert_close_to_float64(got32[name], expected[name], f"resnet {name} float32")


# ============================================================================================= FPN.CONVS / PARAMS
@pytest.mark.clause("FPN.CONVS")
def test_fpn_layout(fpn):
    state = fpn.state_dict()
    expected = {}
    for level, c in zip((2, 3, 4, 5), RES_CHANNELS):
        expected[f"fpn_lateral{level}.weight"] = (256, c, 1, 1)
        expected[f"fpn_lateral{level}.bias"] = (256,)
        expected[f"fpn_output{level}.weight"] = (256, 256, 3, 3)
        expected[f"fpn_output{level}.bias"] = (256,)
    assert {k: tuple(v.shape) for k, v in state.items()} == expected
    for level in (2, 3, 4, 5):
        lateral, output = getattr(fpn, f"fpn_lateral{level}"), getattr(fpn, f"fpn_output{level}")
        assert tuple(lateral.stride) == (1, 1) and tuple(lateral.padding) == (0, 0)
        assert tuple(output.stride) == (1, 1) and tuple(output.padding) == (1, 1)
    assert list(fpn.buffers()) == []


@pytest.mark.clause("FPN.PARAMS")
def test_fpn_parameter_count(fpn):
    assert sum(p.numel() for p in fpn.parameters()) == PARAMETER_COUNTS.fpn
    # laterals: 256 * (256 + 512 + 1024 + 2048) + 4 * 256 = 984,064 (d2-spec §3)
    laterals = sum(p.numel() for n, p in fpn.named_parameters() if n.startswith("fpn_lateral"))
    assert laterals == 984_064


# ============================================================================================= FPN.TOP_DOWN
@pytest.mark.clause("FPN.TOP_DOWN", "FPN.P6")
def test_fpn_top_down_known_values(impl, device):
    """Hand-built weights on a 1-channel FPN: laterals are the identity (weight 1, bias 0), each output conv is
    a delta kernel times 2 plus bias 100, so P_l = 2 t_l + 100 and the pre-output sums t_l can be read back.

      C5 = [[1, 2], [3, 4]]            t5 = C5                       P5 = [[102, 104], [106, 108]]
      C4 = 10 (4x4)                    t4 = 10 + up2(t5)             rows [11, 11, 12, 12] x2, [13, 13, 14, 14] x2
      C3 = 100 (8x8)                   t3 = 100 + up2(t4)            e.g. t3[0] = [111]*4 + [112]*4
      C2 = 1000 (16x16)                t2 = 1000 + up2(t3)           e.g. t2[0] = [1111]*8 + [1112]*8
      P6 = P5[::2, ::2] = [[102]]
    Had the top-down pass carried P instead of t, P4 would start at 2 * (10 + 102) + 100 = 324, not 122;
    bilinear upsampling would give t4[0, 1] = 11.25 instead of 11.
    """
    model = _tiny_fpn(impl, device)
    with torch.no_grad():
        for level in (2, 3, 4, 5):
            lateral, output = getattr(model, f"fpn_lateral{level}"), getattr(model, f"fpn_output{level}")
            lateral.weight.fill_(1.0)
            lateral.bias.zero_()
            output.weight.zero_()
            output.weight[0, 0, 1, 1] = 2.0
            output.bias.fill_(100.0)
    c5 = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    feats = {"res5": c5, "res4": torch.full((4, 4), 10.0), "res3": torch.full((8, 8), 100.0),
             "res2": torch.full((16, 16), 1000.0)}
    with torch.no_grad():
        out = model({k: on(v[None, None], device) for k, v in feats.items()})
    t4 = torch.tensor([[11.0, 11, 12, 12], [11, 11, 12, 12], [13, 13, 14, 14], [13, 13, 14, 14]])
    t3 = 100 + torch.kron(t4, torch.ones(2, 2))
    t2 = 1000 + torch.kron(t3, torch.ones(2, 2))
    assert t3[0].tolist() == [111.0] * 4 + [112.0] * 4 and t2[0].tolist() == [1111.0] * 8 + [1112.0] * 8
    expected = {"p2": 2 * t2 + 100, "p3": 2 * t3 + 100, "p4": 2 * t4 + 100, "p5": 2 * c5 + 100,
                "p6": torch.tensor([[102.0]])}
    assert list(out) == list(P_NAMES)
    for name in P_NAMES:
        assert_close(out[name], expected[name][None, None].double(), "fpn")


# ============================================================================================= FPN.P6
@pytest.mark.clause("FPN.P6")
def test_p6_subsamples_p5(fpn, device):
    # a 96x160 image: res2..res5 = 24x40, 12x20, 6x10, 3x5; P6 = ceil(3/2) x ceil(5/2) = 2x3
    feats = _features([(24, 40), (12, 20), (6, 10), (3, 5)], RES_CHANNELS, device, n=2)
    with torch.no_grad():
        out = fpn(feats)
    assert tuple(out["p6"].shape) == (2, 256, 2, 3)
    assert torch.equal(cpu(out["p6"]), cpu(out["p5"])[:, :, ::2, ::2])  # exact: kernel 1 takes no max


# ============================================================================================= FPN.STRIDES
@pytest.mark.clause("FPN.STRIDES", "RESNET.OUTPUTS", "INPUT.PADDING")
@pytest.mark.parametrize("image_sizes", [
    [(64, 96)],
    [(50, 70)],                 # padded to 64x96
    [(100, 33), (40, 90)],      # padded to 128x96
    [(96, 160)],
])
def test_backbone_level_shapes(impl, resnet, fpn, device, image_sizes):
    batch, sizes = impl.pad_images([on(torch.randn(3, h, w), device) for h, w in image_sizes])
    with torch.no_grad():
        out = fpn(resnet(batch))
    assert list(out) == list(P_NAMES)
    max_size = (max(h for h, _ in image_sizes), max(w for _, w in image_sizes))
    expected = S.feature_sizes_for(max_size, P_STRIDES, DIV)
    for name, (h, w) in zip(P_NAMES, expected):
        assert tuple(out[name].shape) == (len(image_sizes), 256, h, w), name


@pytest.mark.clause("FPN.STRIDES", "FPN.P6")
def test_level_sizes_for_800x1216(impl, device):
    """d2-spec §3: an 800x1199 image padded to 800x1216 gives 200x304, 100x152, 50x76, 25x38 and P6 13x19.

    A 1-channel FPN keeps this cheap; level sizes do not depend on the channel count.
    """
    expected = [(200, 304), (100, 152), (50, 76), (25, 38), (13, 19)]
    assert S.feature_sizes_for((800, 1199), P_STRIDES, DIV) == expected
    model = _tiny_fpn(impl, device)
    with torch.no_grad():
        out = model(_features(expected[:4], (1, 1, 1, 1), device))
    assert [tuple(out[n].shape[-2:]) for n in P_NAMES] == expected


# ============================================================================================= FPN.TORCHVISION
def _tv_fpn_key(key: str) -> str:
    """torchvision FeaturePyramidNetwork key (inner_blocks.i.0.*, layer_blocks.i.0.*) -> fpn_lateral/output, by
    detspec.checkpoints' torchvision table (a Faster R-CNN's backbone.fpn)."""
    new = rename_torchvision_key(f"backbone.fpn.{key}")
    assert new is not None, f"unexpected torchvision FPN key {key}"
    return new.removeprefix("backbone.")


@pytest.mark.clause("FPN.TORCHVISION", "FPN.TOP_DOWN", "FPN.P6")
@pytest.mark.parametrize("image_size", [(64, 96), (96, 160)])
def test_fpn_matches_torchvision(impl, fpn_state, device, image_size):
    ops = pytest.importorskip("torchvision.ops")
    fpn_module = pytest.importorskip("torchvision.ops.feature_pyramid_network")
    tv = ops.FeaturePyramidNetwork(list(RES_CHANNELS), 256, extra_blocks=fpn_module.LastLevelMaxPool())
    names = {k: _tv_fpn_key(k) for k in tv.state_dict()}
    assert sorted(names.values()) == sorted(fpn_state)
    tv.load_state_dict({k: fpn_state[name] for k, name in names.items()})
    tv = tv.eval().double()
    model = _load(impl.FPN(), fpn_state, device).double()
    sizes = S.feature_sizes_for(image_size, P_STRIDES, DIV)[:4]
    feats = _features(sizes, RES_CHANNELS, "cpu", n=2, seed=7, dtype=torch.float64)
    with torch.no_grad():
        expected = tv(dict(feats))  # keys res2..res5, then "pool"
        got = model({k: on(v, device) for k, v in feats.items()})
    for name, tv_name in zip(P_NAMES, (*RES, "pool")):
        assert_close(got[name], expected[tv_name], "fpn")


# ============================================================================================= FPN.ERRORS
@pytest.mark.clause("FPN.ERRORS")
def test_fpn_rejects_bad_features(fpn, device):
    good = [(16, 24), (8, 12), (4, 6), (2, 3)]
    feats = _features(good, RES_CHANNELS, device)
    with pytest.raises(ValueError, match="res3"):  # a missing level
        fpn({k: v for k, v in feats.items() if k != "res3"})
    with pytest.raises(ValueError, match="channels"):  # res4 with 512 channels instead of 1024
        fpn({**feats, "res4": torch.zeros(1, 512, 4, 6, device=device)})
    with pytest.raises(ValueError, match="32"):  # res2 17x24 does not halve to res3 8x12
        fpn({**feats, "res2": torch.zeros(1, 256, 17, 24, device=device)})
    with pytest.raises(ValueError, match="32"):  # res5 3x3 under res4 4x6
        fpn({**feats, "res5": torch.zeros(1, 2048, 3, 3, device=device)})
    with pytest.raises(ValueError, match="shape"):  # 3-D
        fpn({**feats, "res5": torch.zeros(2048, 2, 3, device=device)})
    with pytest.raises(ValueError, match="batch"):  # different batch sizes
        fpn({**feats, "res5": torch.zeros(2, 2048, 2, 3, device=device)})
    with pytest.raises(TypeError, match="features"):  # integer dtype
        fpn({**feats, "res5": torch.zeros(1, 2048, 2, 3, dtype=torch.int64, device=device)})
    with pytest.raises(TypeError, match="features"):  # not a mapping
        fpn(list(feats.values()))


@pytest.mark.clause("FPN.ERRORS", "INPUT.PADDING")
def test_fpn_rejects_unpadded_image(resnet, fpn, device):
    """An unpadded 70x70 image gives res2..res5 = 18, 9, 5, 3: 5 is not 2 x 3, so the FPN must refuse it."""
    with torch.no_grad():
        feats = resnet(on(torch.randn(1, 3, 70, 70), device))
        with pytest.raises(ValueError, match="multiple of 32"):
            fpn(feats)


# ============================================================================================= differential
@pytest.mark.clause("RESNET.STAGES", "RESNET.FROZEN_BN", "FPN.TOP_DOWN")
def test_backbone_matches_reference_float64(resnet, fpn, reference64, device):
    """The implementation (float32) against the reference in float64, same weights and input values."""
    ref_resnet, ref_fpn = reference64
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        res = resnet(on(x, device))
        out = fpn(res)
        res64 = ref_resnet(x.double())
        out64 = ref_fpn(res64)
    for name in RES:
        _assert_close_to_float64(res[name], res64[name], name)
    for name in P_NAMES:
        _assert_close_to_float64(out[name], out64[name], name)


@pytest.mark.clause("RESNET.STAGES", "RESNET.FROZEN_BN", "FPN.TOP_DOWN")
def test_backbone_float64_matches_reference(impl, resnet_state, fpn_state, reference64, device):
    """In float64 the implementation must agree with the reference to the spec's float64 tolerance."""
    ref_resnet, ref_fpn = reference64
    model = _load(impl.ResNet(), resnet_state, device).double()
    neck = _load(impl.FPN(), fpn_state, device).double()
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    with torch.no_grad():
        out = neck(model(on(x, device)))
        expected = ref_fpn(ref_resnet(x))
    for name in P_NAMES:
        assert_close(out[name], expected[name], "fpn")
