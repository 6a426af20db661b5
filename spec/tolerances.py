"""Tolerances: torch's per-dtype (rtol, atol) table, per-component overrides with a reason, and the ratio rule.

- Float outputs are compared with ``torch.testing.assert_close`` semantics: |a - e| <= atol + rtol * |e|.
  Both rtol and atol are always given together.
- Indices, labels and keep-masks are compared exactly, except for documented ties (see each test).
- Low-precision fast kernels follow the ratio rule (flash-attention's): their max error against a float64
  reference is at most RATIO_RULE_FACTOR x the error of the same computation done naively in that dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# torch.testing.assert_close defaults (torch/testing/_comparison.py)
DTYPE_TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float16: (1e-3, 1e-5),
    torch.bfloat16: (1.6e-2, 1e-5),
    torch.float32: (1.3e-6, 1e-5),
    torch.float64: (1e-7, 1e-7),
}

RATIO_RULE_FACTOR = 2.0


@dataclass(frozen=True)
class Override:
    rtol: float
    atol: float
    reason: str


# component -> dtype -> override. Each one says why the default is not enough.
OVERRIDES: dict[str, dict[torch.dtype, Override]] = {
    "decode_boxes": {
        torch.float32: Override(1e-5, 1e-3, "exp(dw) amplifies float32 rounding of dw by up to 62.5x; boxes "
                                "are in pixels (up to ~1e4), so 1e-3 px absolute is ~1 ulp at that scale"),
    },
    "encode_boxes": {
        torch.float32: Override(1e-5, 1e-5, "log of a float32 size ratio and a division by float32 widths"),
    },
    "grid_anchors": {
        torch.float32: Override(0.0, 1e-3, "shift + cell anchor in pixel units up to ~2e3: 1 ulp is ~1.2e-4"),
    },
    "pairwise_iou": {
        torch.float32: Override(1e-5, 1e-6, "two float32 roundings (intersection, union) plus a division"),
    },
    "rpn_objectness": {
        torch.float32: Override(1e-5, 1e-5, "a 3x3 and a 1x1 convolution whose summation order differs between "
                                "implementations (im2col, channels-last, cuDNN): a few float32 ulps of the sum"),
    },
    "torchvision_equivalence_boxes": {
        torch.float32: Override(1e-3, 1e-2, "RCNN.TORCHVISION_EQUIVALENCE: two float32 detectors run end to end "
                                "(ResNet-50, FPN, RPN, box head: every op summed in another order); boxes in "
                                "pixels up to ~1e3, where the accumulated error reaches ~1e-3 px"),
    },
    "torchvision_equivalence_scores": {
        torch.float32: Override(1e-4, 1e-4, "RCNN.TORCHVISION_EQUIVALENCE: softmax probabilities after the same "
                                "end-to-end float32 computation; the clause states these numbers"),
    },
    "roi_losses": {
        torch.float32: Override(1e-5, 2e-5, "loss_box_reg's targets are 10 x (centre difference) / proposal "
                                "width: float32 pixel coordinates (ulp 6e-5 at 700 px) over widths down to 8 px "
                                "give ~1e-5 per term; loss_cls is a mean of float32 log-softmax values"),
    },
}


def tolerance(component: str, dtype: torch.dtype) -> tuple[float, float]:
    """(rtol, atol) for comparing `component`'s output of this dtype against a float64 reference."""
    override = OVERRIDES.get(component, {}).get(dtype)
    if override is not None:
        return override.rtol, override.atol
    if dtype not in DTYPE_TOLERANCES:
        raise KeyError(f"no tolerance for dtype {dtype}; known: {list(DTYPE_TOLERANCES)}")
    return DTYPE_TOLERANCES[dtype]


def assert_close(actual: torch.Tensor, expected: torch.Tensor, component: str, msg: str = "") -> None:
    """assert_close with the spec tolerance of `actual`'s dtype; `expected` may be float64."""
    __tracebackhide__ = True
    rtol, atol = tolerance(component, actual.dtype)
    torch.testing.assert_close(actual.double().cpu(), expected.double().cpu(), rtol=rtol, atol=atol,
                               equal_nan=False, msg=(lambda m: f"{component}: {m} {msg}".rstrip()))


def ratio_rule_holds(fast_error: float, naive_error: float, floor: float = 0.0) -> bool:
    """The flash-attention rule: fast error <= 2 x naive same-dtype error (+ an optional absolute floor)."""
    return fast_error <= RATIO_RULE_FACTOR * naive_error + floor


# ------------------------------------------------------------------------------------------------ low precision
# issue 16: `detspec check --dtype bf16|fp16` (PRECISION.RATIO_RULE, PRECISION.DISCRETE_MARGIN).
PRECISION_DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
LOW_PRECISION_DTYPES: tuple[str, ...] = ("bf16", "fp16")


@dataclass(frozen=True)
class RatioFloor:
    """The ratio rule's absolute floor: ``ulps * finfo(low dtype).eps * scale`` (scale: max |float64 reference|)."""

    ulps: float
    reason: str


# One rounding of the output to the low dtype: an implementation that computes in float32 and returns the low
# dtype (or rounds an intermediate once more than the naive computation) has this error even on data where the
# naive computation happens to be exact, so a bare 2 x naive bound could fail a correct port by one rounding.
DEFAULT_RATIO_FLOOR = RatioFloor(1.0, "one rounding of the largest output to the low dtype (eps x max |ref|)")

# component -> floor, where the default is not enough. Each one says why.
RATIO_FLOORS: dict[str, RatioFloor] = {
    "decode_boxes": RatioFloor(2.0, "x1 = cx - w/2 and x2 = cx + w/2 are each rounded once to the low dtype after "
                               "exp(dw) is: two roundings of a coordinate of the size of the largest box"),
    "roi_align": RatioFloor(2.0, "a bilinear sample sums four weighted neighbours: float32 sampling weights "
                            "(PRECISION.GEOMETRY_FP32) and one rounding of the average to the low dtype may "
                            "round the other way from the naive sum"),
    "multilevel_roi_align": RatioFloor(2.0, "as roi_align, per level"),
    "backbone": RatioFloor(8.0, "~50 stacked convolutions: autocast accumulates in float32 but rounds every "
                           "convolution's input and output to the low dtype, as the naive run does, in another "
                           "order; the outputs differ by a few roundings of the largest activation"),
    "rpn_head": RatioFloor(4.0, "a 3x3 and two 1x1 convolutions, each output rounded once to the low dtype"),
    "mvit": RatioFloor(8.0, "16 transformer blocks: matmul inputs and outputs rounded to the low dtype under "
                       "autocast, LayerNorm and softmax in float32; the naive run rounds them too, in another order"),
}


def ratio_floor(component: str, dtype: torch.dtype, scale: float) -> float:
    """The ratio rule's floor for `component` in `dtype` when the float64 reference's largest magnitude is scale."""
    floor = RATIO_FLOORS.get(component, DEFAULT_RATIO_FLOOR)
    return floor.ulps * torch.finfo(dtype).eps * float(scale)


def ratio_rule_check(actual: torch.Tensor, naive: torch.Tensor, reference64: torch.Tensor, component: str,
                     dtype: torch.dtype) -> tuple[bool, str]:
    """(holds, one line of numbers): max |actual - ref64| <= RATIO_RULE_FACTOR x max |naive - ref64| + floor.

    ``reference64`` is detspec's reference run in float64 on the inputs rounded to `dtype`; ``naive`` the same
    reference run in `dtype`. A non-finite value in ``actual`` where the reference is finite always fails; the
    naive run must be finite (otherwise the test's data is wrong for this dtype, which is reported as a failure).
    """
    a = actual.detach().cpu().double()
    n = naive.detach().cpu().double()
    e = reference64.detach().cpu().double()
    if a.shape != e.shape or n.shape != e.shape:
        return False, f"{component}: shapes actual {list(a.shape)}, naive {list(n.shape)}, reference {list(e.shape)}"
    if not bool(torch.isfinite(n).all()) or not bool(torch.isfinite(e).all()):
        return False, f"{component}: the naive {dtype} run or the float64 reference is not finite on this data"
    if not bool(torch.isfinite(a).all()):
        return False, f"{component}: {int((~torch.isfinite(a)).sum())} non-finite outputs"
    scale = float(e.abs().max()) if e.numel() else 0.0
    err = float((a - e).abs().max()) if e.numel() else 0.0
    naive_err = float((n - e).abs().max()) if e.numel() else 0.0
    floor = ratio_floor(component, dtype, scale)
    holds = ratio_rule_holds(err, naive_err, floor)
    line = (f"{component} in {dtype}: max |impl - ref64| = {err:.4g}, max |naive - ref64| = {naive_err:.4g}, "
            f"bound {RATIO_RULE_FACTOR:g} x {naive_err:.4g} + floor {floor:.3g} = "
            f"{RATIO_RULE_FACTOR * naive_err + floor:.4g} (max |ref64| = {scale:.4g})")
    return holds, line


def discrete_tolerance(boundary: float, dtype: torch.dtype) -> float:
    """The low-precision tolerance around a boundary: atol + rtol x |boundary|, (rtol, atol) = DTYPE_TOLERANCES."""
    rtol, atol = DTYPE_TOLERANCES[dtype]
    return atol + rtol * abs(float(boundary))


def within_discrete_margin(value64: float, boundary: float, dtype: torch.dtype) -> bool:
    """The discrete-margin rule (PRECISION.DISCRETE_MARGIN): may a low-precision run decide ``value64`` vs
    ``boundary`` differently from the float64 reference?

    A discrete output (a kept index, a label, a level, a class, a rank) is decided by comparing a value with a
    boundary (a threshold, or the next score). A low-precision implementation may decide it differently from the
    float64 reference run on the same (rounded) inputs only where the float64 value's margin to the boundary is
    within the low-precision tolerance of the boundary: ``|value64 - boundary| <= atol + rtol x |boundary|`` with
    (rtol, atol) = DTYPE_TOLERANCES[dtype]. Any other difference is a failure.

    Worked example (NMS at the RPN's threshold 0.7, bf16: rtol 1.6e-2, atol 1e-5):
    tol = 1e-5 + 1.6e-2 x 0.7 = 0.01121.
    - A box whose float64 IoU with a higher-scored kept box is 0.705 is suppressed by the float64 reference
      (0.705 > 0.7); margin |0.705 - 0.7| = 0.005 <= 0.01121, so a bf16 port that keeps it passes
      ("pass (within precision)").
    - At IoU 0.72 the margin is 0.02 > 0.01121: a bf16 port that keeps that box fails.
    - Two scores 0.6 and 0.605 tie within tol (|0.6 - 0.605| = 0.005 <= 1e-5 + 1.6e-2 x 0.605 = 0.00969): either
      order is accepted.
    - FPN levels: the value compared is the level formula's lv = canonical_level + log2(sqrt(area) /
      canonical_box_size + eps) and the boundary the integer level k it is floored against. A box with
      sqrt(area) = 440.5 has lv = 4 + log2(440.5 / 224) = 4.9757, margin 0.0243 to 5 <= 1e-5 + 1.6e-2 x 5 =
      0.08001: P4 or P5 is accepted. One of sqrt(area) = 400 (lv = 4.8365, margin 0.1635) must go to P4. (In
      bf16 the formula's 4 + log2(...) alone rounds to steps of 2^-5 = 0.03125 in [4, 8), so the margin is
      measured in lv, not in pixels.)
    In fp16 (rtol 1e-3) the same NMS tolerance is 1e-5 + 1e-3 x 0.7 = 0.00071: only 0.7 +- 0.00071 is open.
    """
    return abs(float(value64) - float(boundary)) <= discrete_tolerance(boundary, dtype)
