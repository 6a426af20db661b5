"""Tests for the Triton greedy-NMS kernels in ``fast/kernels/nms_triton.py``.

Whether Triton interprets kernels is decided when Triton is imported, so the
CPU checks run in a child process started with ``TRITON_INTERPRET=1``.  The
child runs every case once (one process keeps the slow interpreter start-up to
a single payment) and prints a JSON verdict per case; each case is then a
separate parametrized test here.  Expected results come from a plain-Python
greedy NMS (float32 arithmetic through numpy) and, when importable, from
``torchvision.ops.nms`` on the CPU.
"""

from __future__ import annotations

import pytest
import torch
from triton_child import import_module, run_interpreted, run_without_triton

MODULE = "fast.kernels.nms_triton"

RANDOM_NS = (0, 1, 7, 64, 65, 130, 200)
THRESHOLDS = (0.3, 0.5, 0.7)
CASES = (
    [f"random-n{n}-t{t}" for n in RANDOM_NS for t in THRESHOLDS]
    + [f"grid-n{n}-t{t}" for n in (65, 130) for t in THRESHOLDS]
    + [
        "degenerate-n40-t0.5",
        "tied-scores-n100-t0.5",
        "iou-equals-threshold",
        "threshold-rounds-down",
        "bit63-n64",
        "word-boundary-n65",
        "chain-of-suppression",
        "bitmask-n130-t0.5",
    ]
)

# Runs in the child process (TRITON_INTERPRET=1).  argv[1]: JSON list of case names.
_CHILD = r'''
import json, sys, traceback
import numpy as np
import torch
from fast.kernels import nms_triton as K

assert K.TRITON_AVAILABLE and K._is_interpreted(), "expected the Triton interpreter"
try:
    import torchvision
    tv_nms = torchvision.ops.nms
except Exception:
    tv_nms = None

F0 = np.float32(0)

def iou32(a, b):
    """IoU of two XYXY boxes (sequences of np.float32), float32 arithmetic."""
    iw = max(min(a[2], b[2]) - max(a[0], b[0]), F0)
    ih = max(min(a[3], b[3]) - max(a[1], b[1]), F0)
    inter = iw * ih
    if not inter > 0:
        return F0
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[2] - b[0]) * (b[3] - b[1])
    return inter / (area_a + area_b - inter)

def ref_keep_sorted(boxes, thr):
    """Greedy NMS in the given order -> list of kept positions."""
    bl = [[np.float32(v) for v in row] for row in boxes.tolist()]
    keep = []
    for j in range(len(bl)):
        # float(...) > thr: float32 IoU against the double threshold, like torchvision (CPU).
        if not any(float(iou32(bl[i], bl[j])) > thr for i in keep):
            keep.append(j)
    return keep

def ref_nms(boxes, scores, thr):
    order = torch.sort(scores, descending=True, stable=True).indices
    return order[ref_keep_sorted(boxes[order], thr)]

def clustered(n, seed, integer=False):
    g = torch.Generator().manual_seed(seed)
    k = max(1, n // 10)
    centers = torch.rand(k, 2, generator=g) * 120
    ctr = centers[torch.randint(0, k, (n,), generator=g)] + torch.randn(n, 2, generator=g) * 2.5
    wh = 12 + torch.rand(n, 2, generator=g) * 10
    boxes = torch.cat([ctr - wh / 2, ctr + wh / 2], dim=1)
    if integer:
        boxes = boxes.round()
    scores = (torch.randperm(n, generator=g).float() + 1) / (n + 1)  # distinct scores
    return boxes.float().contiguous(), scores

def check_nms(boxes, scores, thr, use_tv=True):
    got = K.nms_triton(boxes, scores, thr)
    assert got.dtype == torch.int64 and got.dim() == 1, (got.dtype, got.shape)
    want = ref_nms(boxes, scores, thr)
    assert torch.equal(got, want), f"vs python greedy: got {got.tolist()} want {want.tolist()}"
    if use_tv and tv_nms is not None:
        tv = tv_nms(boxes, scores, thr)
        assert torch.equal(got, tv), f"vs torchvision: got {got.tolist()} want {tv.tolist()}"
    # The sorted-input entry point agrees too.
    order = torch.sort(scores, descending=True, stable=True).indices
    mask = K.nms_sorted_mask(boxes[order], thr)
    assert mask.dtype == torch.bool and mask.shape == (boxes.shape[0],)
    assert torch.equal(order[mask], want)
    return got

def far_apart(n):
    """n unit-height boxes 100 apart along x: no two overlap."""
    return torch.tensor([[100.0 * k, 0.0, 100.0 * k + 10.0, 10.0] for k in range(n)])

def case(name):
    if name.startswith(("random-", "grid-")):
        n, t = name.split("-n")[1].split("-t")  # e.g. "random-n65-t0.5"
        boxes, scores = clustered(int(n), seed=int(n) + 17, integer=name.startswith("grid-"))
        check_nms(boxes, scores, float(t))
    elif name == "degenerate-n40-t0.5":
        boxes, scores = clustered(40, seed=5)
        boxes[::7, 2] = boxes[::7, 0]      # zero width
        boxes[3::9, 3] = boxes[3::9, 1] - 1  # negative height
        boxes[5] = boxes[4]                # exact duplicate
        check_nms(boxes, scores, 0.5)
    elif name == "tied-scores-n100-t0.5":
        boxes, _ = clustered(100, seed=9, integer=True)
        scores = torch.randint(0, 5, (100,), generator=torch.Generator().manual_seed(3)).float()
        check_nms(boxes, scores, 0.5, use_tv=False)  # torchvision's sort is not stable
    elif name == "iou-equals-threshold":
        boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 5.0]])  # IoU = 50/100
        scores = torch.tensor([0.9, 0.8])
        assert check_nms(boxes, scores, 0.5).tolist() == [0, 1]  # not strictly greater
        assert check_nms(boxes, scores, 0.49).tolist() == [0]
    elif name == "threshold-rounds-down":
        # inter 3, union 10: float32 IoU = fl32(0.3) = 0.30000001 > 0.3 (double) -> suppressed.
        boxes = torch.tensor([[0.0, 0.0, 6.5, 1.0], [3.5, 0.0, 10.0, 1.0]])
        scores = torch.tensor([0.9, 0.8])
        assert check_nms(boxes, scores, 0.3).tolist() == [0]
    elif name == "bit63-n64":
        boxes = far_apart(64)
        boxes[63] = torch.tensor([0.0, 0.0, 10.0, 9.0])  # IoU 0.9 with box 0 only
        mask = K.iou_bitmask(boxes, 0.5)
        assert mask.shape == (64, 1) and mask.dtype == torch.int64
        assert mask[0, 0].item() == -(2 ** 63), hex(mask[0, 0].item())  # only bit 63 set
        assert int(mask[1:].abs().sum()) == 0
        keep = K.nms_sorted_mask(boxes, 0.5)
        assert keep[:63].all() and not keep[63]
        check_nms(boxes, torch.linspace(1, 0.1, 64), 0.5)
    elif name == "word-boundary-n65":
        boxes = far_apart(65)
        boxes[64] = torch.tensor([0.0, 0.0, 10.0, 9.0])  # suppressed only by box 0
        mask = K.iou_bitmask(boxes, 0.5)
        assert mask.shape == (65, 2)
        assert mask[0].tolist() == [0, 1] and int(mask[1:].abs().sum()) == 0
        keep = K.nms_sorted_mask(boxes, 0.5)
        assert keep[:64].all() and not keep[64]
        # Bit 63 and bit 64 together: box 63 and box 64 both suppressed by box 0.
        boxes[63] = torch.tensor([0.0, 0.0, 10.0, 8.0])
        mask = K.iou_bitmask(boxes, 0.5)
        assert mask[0].tolist() == [-(2 ** 63), 1]
        keep = K.nms_sorted_mask(boxes, 0.5)
        assert keep[:63].all() and not keep[63] and not keep[64]
        check_nms(boxes, torch.linspace(1, 0.1, 65), 0.5)
    elif name == "chain-of-suppression":
        # A suppresses B; B would suppress C but B is removed, so C survives.
        # Place C at index 70 so the chain crosses a mask word boundary.
        boxes = far_apart(71)
        boxes[0] = torch.tensor([0.0, 0.0, 10.0, 10.0])
        boxes[1] = torch.tensor([3.0, 0.0, 13.0, 10.0])   # IoU(A,B) = 70/130
        boxes[70] = torch.tensor([6.0, 0.0, 16.0, 10.0])  # IoU(B,C) = 70/130, IoU(A,C) = 40/160
        keep = K.nms_sorted_mask(boxes, 0.5)
        assert keep[0] and not keep[1] and keep[70] and int(keep.sum()) == 70
        check_nms(boxes, torch.linspace(1, 0.1, 71), 0.5)
    elif name == "bitmask-n130-t0.5":
        boxes, _ = clustered(130, seed=11)
        mask = K.iou_bitmask(boxes, 0.5)
        n = boxes.shape[0]
        assert mask.shape == (n, 3)
        j = torch.arange(n)
        bits = (mask[:, j // 64] >> (j % 64)) & 1  # [n, n] unpacked, arithmetic shift is fine
        bl = [[np.float32(v) for v in row] for row in boxes.tolist()]
        want = torch.tensor([[int(jj > ii and float(iou32(bl[ii], bl[jj])) > 0.5) for jj in range(n)]
                             for ii in range(n)])
        assert torch.equal(bits, want), "bitmask differs from the reference IoU matrix"
        assert int(want.sum()) > n // 2, "test data has too few overlaps"
    else:
        raise KeyError(name)

'''






@pytest.fixture(scope="module")
def interpreter_results() -> dict:
    pytest.importorskip("triton")
    return run_interpreted(_CHILD, CASES)


@pytest.mark.triton
@pytest.mark.parametrize("case", CASES)
def test_interpreted_nms_matches_reference(interpreter_results: dict, case: str) -> None:
    assert case in interpreter_results, f"child did not run case {case!r}"
    error = interpreter_results[case]
    assert error is None, f"case {case!r} failed in the TRITON_INTERPRET=1 child:\n{error}"


def test_module_imports_without_triton() -> None:
    run_without_triton(MODULE, (
        "assert K.nms_sorted_mask(torch.zeros(0, 4), 0.5).shape == (0,)\n"
        "try:\n"
        "    K.nms_sorted_mask(torch.zeros(3, 4), 0.5)\n"
        "except RuntimeError as e:\n"
        "    assert 'triton' in str(e)\n"
        "else:\n"
        "    raise AssertionError('expected RuntimeError')"))


@pytest.mark.parametrize(
    "boxes, exc",
    [
        (torch.zeros(3, 4, dtype=torch.float64), TypeError),
        (torch.zeros(3, 4, dtype=torch.float16), TypeError),
        (torch.zeros(3, 5), ValueError),
        (torch.zeros(12), ValueError),
        (torch.zeros(2, 3, 4), ValueError),
        ([[0.0, 0.0, 1.0, 1.0]], TypeError),
    ],
)
def test_validation_names_boxes(boxes, exc) -> None:
    K = import_module(MODULE)
    with pytest.raises(exc, match="boxes"):
        K.nms_sorted_mask(boxes, 0.5)


def test_empty_input() -> None:
    K = import_module(MODULE)
    keep = K.nms_sorted_mask(torch.zeros(0, 4), 0.5)
    assert keep.dtype == torch.bool and keep.shape == (0,)
    idx = K.nms_triton(torch.zeros(0, 4), torch.zeros(0), 0.5)
    assert idx.dtype == torch.int64 and idx.shape == (0,)


def test_cpu_tensor_without_interpreter_is_rejected() -> None:
    K = import_module(MODULE)
    if not K.TRITON_AVAILABLE or K._is_interpreted():
        pytest.skip("needs triton in compiled (non-interpreted) mode")
    with pytest.raises(ValueError, match="boxes"):
        K.nms_sorted_mask(torch.tensor([[0.0, 0.0, 1.0, 1.0]]), 0.5)


def _clustered_boxes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    k = max(1, n // 10)
    centers = torch.rand(k, 2, generator=g) * 800
    ctr = centers[torch.randint(0, k, (n,), generator=g)] + torch.randn(n, 2, generator=g) * 6
    wh = 20 + torch.rand(n, 2, generator=g) * 40
    boxes = torch.cat([ctr - wh / 2, ctr + wh / 2], dim=1).float().contiguous()
    scores = (torch.randperm(n, generator=g).float() + 1) / (n + 1)  # distinct scores
    return boxes, scores


@pytest.mark.gpu
@pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="CUDA is not available; this test runs the Triton NMS kernels on a GPU",
)
@pytest.mark.parametrize("iou_threshold", [0.5, 0.7])
def test_cuda_nms_matches_torchvision(iou_threshold: float) -> None:
    pytest.importorskip("triton")
    tv = pytest.importorskip("torchvision")
    K = import_module(MODULE)
    if K._is_interpreted():
        pytest.skip("TRITON_INTERPRET=1 is set in the test process")
    boxes, scores = _clustered_boxes(2000, seed=1234)
    # Reference: torchvision on the CPU computes the IoU with individually rounded
    # float32 operations, as the kernel does (the CUDA build may contract to FMA).
    want = tv.ops.nms(boxes, scores, iou_threshold)
    assert 0 < want.numel() < 2000
    got = K.nms_triton(boxes.cuda(), scores.cuda(), iou_threshold)
    assert got.is_cuda and got.dtype == torch.int64
    assert torch.equal(got.cpu(), want)

    order = torch.sort(scores, descending=True, stable=True).indices
    keep = K.nms_sorted_mask(boxes[order].cuda(), iou_threshold)
    assert keep.is_cuda and keep.dtype == torch.bool
    assert torch.equal(order[keep.cpu()], want)
