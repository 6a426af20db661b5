"""Config flows: every number of a built module comes from the cfg passed in, for reference and fast alike.

Each test changes a config field away from Base-RCNN-FPN's value and checks that the built module (its
state_dict shapes, its attributes, its output shapes) changes the way the field says. Expected shapes are worked
out by hand in the comments. A tiny ResNet (widths 8 / 16 instead of 64 / 256) keeps the forward passes cheap.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

import fast
import reference
from detspec.checkpoints import expected_layout
from spec.config import BASE_RCNN_FPN
from spec.tolerances import assert_close

PACKAGES = [pytest.param(reference, id="reference"), pytest.param(fast, id="fast")]

# res2..res5 output channels 16, 32, 64, 128; bottleneck widths 8, 16, 32, 64; stem 8
TINY = replace(BASE_RCNN_FPN.resnet, blocks_per_stage=(1, 1, 1, 1), width_per_group=8, stem_out_channels=8,
               res2_out_channels=16)
TINY_CHANNELS = (16, 32, 64, 128)
TINY_FPN = replace(BASE_RCNN_FPN.fpn, out_channels=16)


def _shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(t.shape) for k, t in module.state_dict().items()}


def _randomize(module: torch.nn.Module, seed: int) -> None:
    """Random weights (FrozenBN variances kept positive) so that forward passes are not trivially zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, t in module.state_dict().items():
            if key.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)


def _image(h: int = 64, w: int = 96, seed: int = 0) -> torch.Tensor:
    return torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ------------------------------------------------------------------------------------------------ ResNet
@pytest.mark.parametrize("pkg", PACKAGES)
def test_resnet_stem_width_and_kernel_follow_cfg(pkg):
    cfg = replace(TINY, stem_out_channels=12, stem_conv=(5, 2, 2))
    shapes = _shapes(pkg.ResNet(cfg))
    assert shapes["stem.conv1.weight"] == (12, 3, 5, 5)  # [stem_out, C_in, k, k]
    assert shapes["stem.conv1.norm.running_var"] == (12,)
    assert shapes["res2.0.conv1.weight"] == (8, 12, 1, 1)  # res2's first 1x1 conv reads the stem's 12 channels
    assert shapes["res2.0.shortcut.weight"] == (16, 12, 1, 1)  # projection 12 -> res2_out 16
    default = _shapes(pkg.ResNet(TINY))
    assert default["stem.conv1.weight"] == (8, 3, 7, 7) and default["res2.0.shortcut.weight"] == (16, 8, 1, 1)


@pytest.mark.parametrize("pkg", PACKAGES)
def test_resnet_stem_pool_follows_cfg(pkg):
    # stem_pool (3, 1, 1) keeps the size after the stride-2 conv: the stem's stride is 2 x 1 = 2, not 4, and every
    # stage's stride halves. A 64 x 96 input: conv 7/2 pad 3 -> 32 x 48; pool 3/1 pad 1 -> 32 x 48 = res2; then
    # res3 16 x 24, res4 8 x 12, res5 4 x 6. With the default pool (3, 2, 1): res2 16 x 24 ... res5 2 x 3.
    expected = {
        (3, 2, 1): {"res2": (16, 24), "res3": (8, 12), "res4": (4, 6), "res5": (2, 3)},
        (3, 1, 1): {"res2": (32, 48), "res3": (16, 24), "res4": (8, 12), "res5": (4, 6)},
    }
    for pool, sizes in expected.items():
        cfg = replace(TINY, stem_pool=pool)
        model = pkg.ResNet(cfg).double().eval()
        _randomize(model, seed=1)
        with torch.no_grad():
            out = model(_image())
        assert {k: tuple(v.shape[-2:]) for k, v in out.items()} == sizes, pool
        assert model.out_feature_strides == {k: 64 // h for k, (h, _) in sizes.items()}


@pytest.mark.parametrize("pkg", PACKAGES)
def test_frozen_bn_eps_follows_cfg(pkg):
    model = pkg.ResNet(replace(TINY, frozen_bn_eps=1e-3))
    norms = [m for m in model.modules() if isinstance(m, pkg.FrozenBatchNorm2d)]
    assert len(norms) == 1 + 4 * 3 + 4  # stem + 3 convs per block + one shortcut per stage (1 block each)
    assert {m.eps for m in norms} == {1e-3}
    for m in norms:  # a fresh layer is the identity: running_var = 1 - eps
        assert_close(m.running_var, torch.full(m.running_var.shape, 1 - 1e-3, dtype=torch.float64), "frozen_bn")


# ------------------------------------------------------------------------------------------------ FPN
@pytest.mark.parametrize("pkg", PACKAGES)
def test_fpn_channels_and_output_kernel_follow_cfg(pkg):
    cfg = replace(TINY_FPN, out_channels=24, output_conv=(5, 2))
    shapes = _shapes(pkg.FPN(TINY_CHANNELS, cfg))
    assert shapes["fpn_lateral3.weight"] == (24, 32, 1, 1)  # 1x1 lateral: res3's 32 channels -> 24
    assert shapes["fpn_output2.weight"] == (24, 24, 5, 5)  # 5x5 output conv
    assert shapes["fpn_output5.bias"] == (24,)
    assert _shapes(pkg.FPN(TINY_CHANNELS, TINY_FPN))["fpn_output2.weight"] == (16, 16, 3, 3)


def test_fpn_output_kernel_forward_agrees():
    # a 5x5 output conv with padding 2 keeps each level's size: p2..p5 as the inputs, p6 = ceil(p5 / 2)
    cfg = replace(TINY_FPN, out_channels=24, output_conv=(5, 2))
    ref, got = reference.FPN(TINY_CHANNELS, cfg).double(), fast.FPN(TINY_CHANNELS, cfg).double()
    _randomize(ref, seed=2)
    got.load_state_dict(ref.state_dict())
    g = torch.Generator().manual_seed(3)
    sizes = [(16, 24), (8, 12), (4, 6), (2, 3)]
    feats = {f"res{i + 2}": torch.randn(1, c, h, w, generator=g, dtype=torch.float64)
             for i, (c, (h, w)) in enumerate(zip(TINY_CHANNELS, sizes))}
    with torch.no_grad():
        expected, actual = ref(feats), got(feats)
    assert {k: tuple(v.shape) for k, v in expected.items()} == {
        "p2": (1, 24, 16, 24), "p3": (1, 24, 8, 12), "p4": (1, 24, 4, 6), "p5": (1, 24, 2, 3), "p6": (1, 24, 1, 2)}
    for k in expected:
        assert_close(actual[k], expected[k], "fpn", k)


@pytest.mark.parametrize("pkg", PACKAGES)
@pytest.mark.parametrize("field, value, message", [
    ("upsample_mode", "bilinear", "upsample_mode"),
    ("output_conv", (3, 0), "output_conv"),
    ("top_block_pool", (1, 1, 0), "top_block_pool"),
])
def test_fpn_refuses_unsupported_cfg(pkg, field, value, message):
    with pytest.raises(ValueError, match=message):
        pkg.FPN(TINY_CHANNELS, replace(TINY_FPN, **{field: value}))


# ------------------------------------------------------------------------------------------------ derived values
def test_derived_config_values():
    c = BASE_RCNN_FPN
    assert c.resnet.stem_stride == 4  # stem conv stride 2 x max-pool stride 2
    assert c.resnet.stage_out_channels == {"res2": 256, "res3": 512, "res4": 1024, "res5": 2048}
    assert c.resnet.stage_bottleneck_channels == {"res2": 64, "res3": 128, "res4": 256, "res5": 512}
    assert c.fpn_in_channels == (256, 512, 1024, 2048)
    assert c.pooled_strides == (4, 8, 16, 32)  # p2..p5 (ROI.LEVELS)
    assert c.fpn.input_divisibility == 32
    three = replace(c, roi_heads=replace(c.roi_heads, in_features=("p3", "p4", "p5")))
    assert three.pooled_strides == (8, 16, 32)
    with pytest.raises(ValueError, match="p7"):
        _ = replace(c, roi_heads=replace(c.roi_heads, in_features=("p7",))).pooled_strides


# ------------------------------------------------------------------------------------------------ the detector
@pytest.mark.parametrize("pkg", PACKAGES)
def test_detector_layout_follows_cfg(pkg):
    # FPN width 64 instead of 256: the FPN convs, the RPN head's input and the box head's input (64 x 7 x 7 = 3136)
    # change; nothing in the ResNet does. ROI heads on p3..p5 pool at strides 8, 16, 32.
    cfg = replace(BASE_RCNN_FPN, fpn=replace(BASE_RCNN_FPN.fpn, out_channels=64),
                  roi_heads=replace(BASE_RCNN_FPN.roi_heads, in_features=("p3", "p4", "p5")))
    model = pkg.FasterRCNN(cfg, num_classes=3)
    default = pkg.FasterRCNN(BASE_RCNN_FPN, num_classes=3)
    shapes, base = _shapes(model), _shapes(default)
    assert shapes["backbone.fpn_lateral5.weight"] == (64, 2048, 1, 1)
    assert shapes["backbone.fpn_output2.weight"] == (64, 64, 3, 3)
    assert shapes["proposal_generator.rpn_head.conv.weight"][1] == 64
    assert shapes["roi_heads.box_head.fc1.weight"] == (1024, 3136)
    assert shapes["roi_heads.box_predictor.cls_score.weight"] == (4, 1024)  # 3 classes + background
    assert model.roi_heads.strides == (8, 16, 32)
    changed = {k for k in base if shapes[k] != base[k]}
    assert list(shapes) == list(base)
    assert not any(k.startswith("backbone.bottom_up.") for k in changed)
    assert {k for k in changed if k.startswith("backbone.fpn_lateral")} == {
        f"backbone.fpn_lateral{level}.{p}" for level in range(2, 6) for p in ("weight", "bias")}
    # the checkpoint layout is the model's, for any cfg
    assert expected_layout(3, cfg=cfg) == shapes
    assert math.prod(shapes["roi_heads.box_head.fc1.weight"]) == 1024 * 64 * 7 * 7
