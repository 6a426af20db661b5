"""Tests for the single-launch multi-level Triton ROIAlign in ``fast/kernels/roi_align_triton.py``.

Whether Triton interprets kernels is decided when Triton is imported, so the CPU checks run in a child
process started with ``TRITON_INTERPRET=1`` (nothing leaks into this process's environment).  The child
runs every case once (one interpreter start-up) and prints a JSON verdict per case; each case is then a
separate parametrized test here.  Expected values come from ``torchvision.ops.roi_align`` (an independent
implementation of the same semantics), called once per level on that level's ROIs; a few exact values
(an empty ROI and an ROI entirely outside the map pool exactly 0) come from d2-spec §2.11 items 5-6.
"""

from __future__ import annotations

import pytest
import torch
from triton_child import import_module, run_interpreted, run_without_triton

MODULE = "fast.kernels.roi_align_triton"

CASES = (
    [f"single-a{int(a)}-s{s}-o{o}" for a in (True, False) for s in (0, 2) for o in (2, 7)]
    + [f"multi-a{int(a)}-s{s}" for a in (True, False) for s in (0, 2)]
    + [
        "empty-roi-pools-zero",
        "outside-roi-pools-zero",
        "partly-outside-roi",
        "memory-formats",
        "one-level-equals-single",
        "float64",
        "float16",
        "channel-and-bin-tiles",
        "output-pair",
        "unchecked-bad-rows-pool-zero",
    ]
)

# Runs in the child process (TRITON_INTERPRET=1).  argv[1]: JSON list of case names.
_CHILD = r'''
import json, sys, traceback
import torch
import torchvision
from fast.kernels import roi_align_triton as K
from spec import validate as V

assert K.TRITON_AVAILABLE and K._is_interpreted(), "expected the Triton interpreter"
tv_roi_align = torchvision.ops.roi_align

N, C = 2, 5
STRIDES = (4, 8)

def make_features(dtype=torch.float32, channels=C, seed=0):
    g = torch.Generator().manual_seed(seed)
    # level 0: 6 x 9 (stride 4, a 24 x 36 image), level 1: 3 x 5 (stride 8)
    return [torch.randn(N, channels, 6, 9, generator=g).to(dtype),
            torch.randn(N, channels, 3, 5, generator=g).to(dtype)]

# (batch, x1, y1, x2, y2) in image pixels, and the level each is pooled from (mixed order).
ROWS = [
    ([0, 2.0, 3.0, 17.5, 14.0], 0),    # ordinary box
    ([1, 4.0, 0.5, 33.0, 22.0], 1),    # big box on the coarse level
    ([1, 10.0, 8.0, 10.0, 8.0], 0),    # empty (zero width and height)
    ([0, -9.0, -6.0, 12.0, 9.0], 1),   # partly outside (top-left)
    ([1, 25.0, 15.0, 47.0, 33.0], 0),  # partly outside (bottom-right)
    ([0, 1.0, 1.0, 3.0, 2.5], 0),      # smaller than a pixel on the map
    ([1, 60.0, 50.0, 80.0, 70.0], 1),  # entirely outside the map
    ([0, 0.0, 0.0, 36.0, 24.0], 1),    # whole image
    ([0, 12.0, 3.0, 5.0, 20.0], 0),    # inverted in x
]

def make_rois(dtype=torch.float32):
    rois = torch.tensor([r for r, _ in ROWS], dtype=dtype)
    levels = torch.tensor([lvl for _, lvl in ROWS], dtype=torch.int64)
    return rois, levels

def expected_multilevel(features, rois, levels, out, sr, aligned):
    """torchvision.ops.roi_align per level, scattered back to row order."""
    want = torch.zeros(rois.shape[0], features[0].shape[1], *((out, out) if isinstance(out, int) else out),
                       dtype=features[0].dtype)
    for lvl, (fmap, stride) in enumerate(zip(features, STRIDES)):
        idx = (levels == lvl).nonzero().flatten()
        if idx.numel():
            want[idx] = tv_roi_align(fmap, rois[idx], out, 1.0 / stride, sr, aligned)
    return want

def close(got, want, atol=1e-5, rtol=1e-5):
    assert got.shape == want.shape, (tuple(got.shape), tuple(want.shape))
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    assert got.is_contiguous()
    torch.testing.assert_close(got, want, atol=atol, rtol=rtol)

def case(name):
    if name.startswith("single-"):
        _, a, s, o = name.split("-")  # e.g. "single-a1-s0-o7"
        aligned, sr, out = a == "a1", int(s[1:]), int(o[1:])
        fmap = make_features()[0]
        rois, _ = make_rois()
        got = K.roi_align_triton(fmap, rois, out, 0.25, sr, aligned)
        close(got, tv_roi_align(fmap, rois, out, 0.25, sr, aligned))
        assert got.abs().sum() > 0
    elif name.startswith("multi-"):
        _, a, s = name.split("-")  # e.g. "multi-a0-s2"
        aligned, sr = a == "a1", int(s[1:])
        feats = make_features()
        rois, levels = make_rois()
        got = K.multilevel_roi_align_triton(feats, rois, levels, 5, STRIDES, sr, aligned)
        close(got, expected_multilevel(feats, rois, levels, 5, sr, aligned))
    elif name == "empty-roi-pools-zero":
        # d2-spec §2.11 item 3/6: aligned, adaptive grid ceil(0 / out) = 0 samples -> exactly 0.
        feats = make_features()
        rois = torch.tensor([[1, 10.0, 8.0, 10.0, 8.0], [0, 16.0, 8.0, 16.0, 12.0], [0, 2.0, 3.0, 17.5, 14.0]])
        levels = torch.tensor([0, 1, 0])
        got = K.multilevel_roi_align_triton(feats, rois, levels, 3, STRIDES, 0, True)
        assert torch.equal(got[:2], torch.zeros(2, C, 3, 3)), got[:2]
        close(got, expected_multilevel(feats, rois, levels, 3, 0, True))
        # A fixed grid samples the degenerate box at one point: not 0, still torchvision's value.
        for aligned in (True, False):
            got = K.multilevel_roi_align_triton(feats, rois, levels, 3, STRIDES, 2, aligned)
            close(got, expected_multilevel(feats, rois, levels, 3, 2, aligned))
            assert got[0].abs().sum() > 0
    elif name == "outside-roi-pools-zero":
        # d2-spec §2.11 item 5: every sample beyond one pixel outside the map contributes 0 -> 0.
        feats = make_features()
        rois = torch.tensor([[1, 60.0, 50.0, 80.0, 70.0], [0, -40.0, -30.0, -12.0, -10.0]])
        levels = torch.tensor([1, 0])
        for aligned in (True, False):
            for sr in (0, 2):
                got = K.multilevel_roi_align_triton(feats, rois, levels, 4, STRIDES, sr, aligned)
                assert torch.equal(got, torch.zeros(2, C, 4, 4))
    elif name == "partly-outside-roi":
        feats = make_features()
        rois = torch.tensor([[0, -9.0, -6.0, 12.0, 9.0], [1, 25.0, 15.0, 47.0, 33.0], [1, -6.0, 20.0, 9.0, 30.0]])
        levels = torch.tensor([1, 0, 0])
        for aligned in (True, False):
            for sr in (0, 2, 3):
                got = K.multilevel_roi_align_triton(feats, rois, levels, 6, STRIDES, sr, aligned)
                want = expected_multilevel(feats, rois, levels, 6, sr, aligned)
                close(got, want)
                assert (got == 0).any() and (got != 0).any()  # some bins outside, some inside
    elif name == "memory-formats":
        feats = make_features()
        rois, levels = make_rois()
        want = expected_multilevel(feats, rois, levels, 4, 0, True)
        channels_last = [f.contiguous(memory_format=torch.channels_last) for f in feats]
        mixed = [channels_last[0], feats[1]]
        strided = [torch.randn(N, 2 * C, 12, 9)[:, ::2, ::2], feats[1]]  # non-contiguous view of level 0
        strided[0].copy_(feats[0])
        for variant in (channels_last, mixed, strided):
            got = K.multilevel_roi_align_triton(variant, rois, levels, 4, STRIDES, 0, True)
            close(got, want)
        # single level used in place (channels-last) and copied (NCHW)
        for fmap in (channels_last[0], feats[0], strided[0]):
            close(K.roi_align_triton(fmap, rois, 4, 0.25, 0, True), tv_roi_align(feats[0], rois, 4, 0.25, 0, True))
    elif name == "one-level-equals-single":
        feats = make_features()
        rois, _ = make_rois()
        zeros = torch.zeros(rois.shape[0], dtype=torch.int64)
        got = K.multilevel_roi_align_triton(feats[:1], rois, zeros, 3, STRIDES[:1], 0, True)
        assert torch.equal(got, K.roi_align_triton(feats[0], rois, 3, 0.25, 0, True))
        close(got, tv_roi_align(feats[0], rois, 3, 0.25, 0, True))
    elif name == "float64":
        feats = make_features(torch.float64)
        rois, levels = make_rois(torch.float64)
        for aligned in (True, False):
            got = K.multilevel_roi_align_triton(feats, rois, levels, 3, STRIDES, 0, aligned)
            close(got, expected_multilevel(feats, rois, levels, 3, 0, aligned), atol=1e-12, rtol=1e-12)
    elif name == "float16":
        # Output in float16, accumulated in float32; boxes rounded to float16 first (detectron2 casts
        # the boxes to the features' dtype).  Expected: torchvision in float32 on the same values.
        feats = make_features(torch.float16)
        rois, levels = make_rois()
        got = K.multilevel_roi_align_triton(feats, rois, levels, 3, STRIDES, 2, True)
        want = expected_multilevel([f.float() for f in feats], rois.half().float(), levels, 3, 2, True)
        assert got.dtype == torch.float16
        close(got.float(), want, atol=1e-3, rtol=1e-3)
    elif name == "channel-and-bin-tiles":
        # 80 channels -> two channel tiles (64 + 16); 9 x 9 = 81 bins -> several bin tiles.
        feats = make_features(channels=80, seed=3)
        rois, levels = make_rois()
        rois, levels = rois[:4], levels[:4]
        got = K.multilevel_roi_align_triton(feats, rois, levels, 9, STRIDES, 0, True)
        close(got, expected_multilevel(feats, rois, levels, 9, 0, True))
    elif name == "output-pair":
        feats = make_features()
        rois, levels = make_rois()
        got = K.multilevel_roi_align_triton(feats, rois, levels, (2, 3), STRIDES, 0, False)
        close(got, expected_multilevel(feats, rois, levels, (2, 3), 0, False))
    elif name == "unchecked-bad-rows-pool-zero":
        # With the host value checks off, rows the checks would reject pool 0 instead of reading out of
        # bounds: a level outside [0, L), a batch index outside [0, N), non-finite coordinates.
        feats = make_features()
        rois = torch.tensor([[0, 2.0, 3.0, 17.5, 14.0], [0, 2.0, 3.0, 17.5, 14.0], [5, 2.0, 3.0, 17.5, 14.0],
                             [-1, 2.0, 3.0, 17.5, 14.0], [0, float("nan"), 3.0, 17.5, 14.0],
                             [0, 2.0, 3.0, float("inf"), 14.0], [1, 4.0, 0.5, 33.0, 22.0]])
        levels = torch.tensor([0, 2, 0, 1, 0, 1, -1])
        for sr in (0, 2):
            with V.value_checks(False):
                got = K.multilevel_roi_align_triton(feats, rois, levels, 3, STRIDES, sr, True)
            close(got[:1], tv_roi_align(feats[0], rois[:1], 3, 0.25, sr, True))
            assert torch.equal(got[1:], torch.zeros(6, C, 3, 3)), got[1:].abs().amax(dim=(1, 2, 3))
    else:
        raise KeyError(name)

'''






@pytest.fixture(scope="module")
def interpreter_results() -> dict:
    pytest.importorskip("triton")
    pytest.importorskip("torchvision")
    return run_interpreted(_CHILD, CASES)


@pytest.mark.triton
@pytest.mark.parametrize("case", CASES)
def test_interpreted_roi_align_matches_torchvision(interpreter_results: dict, case: str) -> None:
    assert case in interpreter_results, f"child did not run case {case!r}"
    error = interpreter_results[case]
    assert error is None, f"case {case!r} failed in the TRITON_INTERPRET=1 child:\n{error}"


def test_module_imports_without_triton() -> None:
    run_without_triton(MODULE, (
        "f = torch.zeros(1, 3, 4, 4)\n"
        "out = K.roi_align_triton(f, torch.zeros(0, 5), 2, 1.0, 0, True)\n"
        "assert out.shape == (0, 3, 2, 2)\n"
        "try:\n"
        "    K.roi_align_triton(f, torch.tensor([[0.0, 0.0, 0.0, 2.0, 2.0]]), 2, 1.0, 0, True)\n"
        "except RuntimeError as e:\n"
        "    assert 'triton' in str(e)\n"
        "else:\n"
        "    raise AssertionError('expected RuntimeError')"))


def _features(n: int = 2, c: int = 3) -> list[torch.Tensor]:
    return [torch.zeros(n, c, 6, 9), torch.zeros(n, c, 3, 5)]


def test_no_rois_gives_empty_output() -> None:
    # ROI.ALIGN_EMPTY: an empty set of ROIs gives [0, C, out, out] (no kernel launch needed).
    K = import_module(MODULE)
    out = K.multilevel_roi_align_triton(_features(), torch.zeros(0, 5), torch.zeros(0, dtype=torch.int64), 7, (4, 8),
                                        0, True)
    assert out.shape == (0, 3, 7, 7) and out.dtype == torch.float32
    out = K.roi_align_triton(torch.zeros(1, 4, 5, 5, dtype=torch.float64), torch.zeros(0, 5), 2, 0.5, 2, False)
    assert out.shape == (0, 4, 2, 2) and out.dtype == torch.float64


_ROI = torch.tensor([[0.0, 1.0, 1.0, 8.0, 8.0]])
_LVL = torch.tensor([0])


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"levels": torch.tensor([0.0])}, TypeError, "levels"),
        ({"levels": torch.tensor([True])}, TypeError, "levels"),
        ({"levels": torch.tensor([0, 1])}, ValueError, "levels"),
        ({"levels": torch.tensor([[0]])}, ValueError, "levels"),
        ({"levels": torch.tensor([2])}, ValueError, "levels"),
        ({"levels": torch.tensor([-1])}, ValueError, "levels"),
        ({"levels": [0]}, TypeError, "levels"),
        ({"rois": torch.zeros(1, 4)}, ValueError, "rois"),
        ({"rois": torch.tensor([[2.0, 1.0, 1.0, 8.0, 8.0]])}, ValueError, "rois"),
        ({"rois": torch.tensor([[0.0, float("nan"), 1.0, 8.0, 8.0]])}, ValueError, "rois"),
        ({"rois": torch.tensor([[0, 1, 1, 8, 8]])}, TypeError, "rois"),
        ({"strides": (4,)}, ValueError, "strides"),
        ({"features": [torch.zeros(2, 3, 6, 9), torch.zeros(2, 4, 3, 5)]}, ValueError, "features"),
        ({"features": [torch.zeros(2, 3, 6, 9), torch.zeros(2, 3, 3, 5, dtype=torch.float64)]}, TypeError,
         "features"),
        ({"features": [torch.zeros(2, 3, 6), torch.zeros(2, 3, 3, 5)]}, ValueError, "features"),
        ({"output_size": 0}, ValueError, "output_size"),
        ({"sampling_ratio": 1.5}, TypeError, "sampling_ratio"),
    ],
)
def test_multilevel_validation(kwargs: dict, exc: type, match: str) -> None:
    K = import_module(MODULE)
    args = {"features": _features(), "rois": _ROI, "levels": _LVL, "output_size": 2, "strides": (4, 8),
            "sampling_ratio": 0, "aligned": True}
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        K.multilevel_roi_align_triton(**args)


def test_single_level_validation() -> None:
    K = import_module(MODULE)
    with pytest.raises(ValueError, match="features"):
        K.roi_align_triton(torch.zeros(3, 6, 9), _ROI, 2, 0.25, 0, True)
    with pytest.raises(ValueError, match="spatial_scale"):
        K.roi_align_triton(torch.zeros(1, 3, 6, 9), _ROI, 2, 0.0, 0, True)
    with pytest.raises(TypeError, match="features"):
        K.roi_align_triton(torch.zeros(1, 3, 6, 9, dtype=torch.int32), _ROI, 2, 0.25, 0, True)


def test_cpu_tensor_without_interpreter_is_rejected() -> None:
    K = import_module(MODULE)
    if not K.TRITON_AVAILABLE or K._is_interpreted():
        pytest.skip("needs triton in compiled (non-interpreted) mode")
    with pytest.raises(ValueError, match="features"):
        K.roi_align_triton(torch.zeros(1, 3, 6, 9), _ROI, 2, 0.25, 0, True)


@pytest.mark.gpu
@pytest.mark.triton
@pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="CUDA is not available; this test runs the Triton ROIAlign kernel on a GPU",
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("aligned, sampling_ratio", [(True, 0), (False, 2)])
def test_cuda_multilevel_matches_torchvision(dtype: torch.dtype, aligned: bool, sampling_ratio: int) -> None:
    pytest.importorskip("triton")
    tv = pytest.importorskip("torchvision")
    K = import_module(MODULE)
    if K._is_interpreted():
        pytest.skip("TRITON_INTERPRET=1 is set in the test process")
    g = torch.Generator().manual_seed(7)
    strides = (4, 8, 16, 32)
    n, c, h, w = 2, 256, 200, 304  # an 800 x 1216 padded batch
    feats = [torch.randn(n, c, h // (s // 4), w // (s // 4), generator=g) for s in strides]
    r = 1500
    xy = torch.rand(r, 2, generator=g) * torch.tensor([w * 4.0, h * 4.0])
    wh = torch.exp(torch.rand(r, 2, generator=g) * 6.5)  # 1 .. 665 pixels
    boxes = torch.cat([xy - wh / 2, xy + wh / 2], dim=1)
    boxes[::50, 2:] = boxes[::50, :2]  # some empty boxes
    batch = torch.randint(0, n, (r, 1), generator=g).float()
    rois = torch.cat([batch, boxes], dim=1)
    levels = torch.randint(0, len(strides), (r,), generator=g)
    if dtype == torch.float16:
        feats = [f.half() for f in feats]
    cuda_feats = [f.cuda() for f in feats]
    got = K.multilevel_roi_align_triton(cuda_feats, rois.cuda(), levels.cuda(), 7, strides, sampling_ratio, aligned)
    assert got.is_cuda and got.dtype == dtype and got.shape == (r, c, 7, 7) and got.is_contiguous()
    # Reference: torchvision per level in float32 on the CPU (boxes rounded to the features' dtype first).
    want = torch.zeros(r, c, 7, 7)
    rois_ref = rois.to(dtype).float()
    for lvl, (fmap, s) in enumerate(zip(feats, strides)):
        idx = (levels == lvl).nonzero().flatten()
        want[idx] = tv.ops.roi_align(fmap.float(), rois_ref[idx], 7, 1.0 / s, sampling_ratio, aligned)
    tol = 1e-5 if dtype == torch.float32 else 2e-3
    torch.testing.assert_close(got.float().cpu(), want, atol=tol, rtol=tol)
    # The channels-last single-level entry point on the same kernel.
    single = K.roi_align_triton(cuda_feats[0].contiguous(memory_format=torch.channels_last), rois.cuda(), 7, 0.25,
                                sampling_ratio, aligned)
    ref = tv.ops.roi_align(feats[0].float(), rois_ref, 7, 0.25, sampling_ratio, aligned)
    torch.testing.assert_close(single.float().cpu(), ref, atol=tol, rtol=tol)
