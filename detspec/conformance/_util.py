"""Helpers shared by the conformance tests: dtype/device casting and comparisons with spec tolerances."""

from __future__ import annotations

import torch
from torch import Tensor

from spec.tolerances import assert_close  # noqa: F401  (re-exported for the tests)


def on(t: Tensor, device: torch.device, dtype: torch.dtype | None = None) -> Tensor:
    """A copy of `t` on `device` (and in `dtype`, for floating tensors)."""
    if dtype is not None and t.is_floating_point():
        t = t.to(dtype)
    return t.to(device)


def f32(t: Tensor) -> tuple[Tensor, Tensor]:
    """(t rounded to float32, the same values in float64).

    Differential tests feed the first to the implementation and the second to the float64 reference, so the
    comparison measures the implementation's rounding, not the rounding of its inputs.
    """
    t32 = t.to(torch.float32)
    return t32, t32.to(torch.float64)


def cpu(t: Tensor) -> Tensor:
    return t.detach().cpu()


def assert_equal(actual: Tensor, expected: Tensor, what: str) -> None:
    """Exact equality for indices, labels and masks, with a message listing the first differences."""
    __tracebackhide__ = True
    a, e = cpu(actual), cpu(expected)
    if a.shape != e.shape:
        raise AssertionError(f"{what}: shape {list(a.shape)} != expected {list(e.shape)}\n"
                             f"actual   {a.tolist()[:20]}\nexpected {e.tolist()[:20]}")
    if not torch.equal(a.to(e.dtype), e):
        diff = (a.to(e.dtype) != e).nonzero().flatten()[:10].tolist()
        raise AssertionError(f"{what}: differs at {diff}\nactual   {a.tolist()[:20]}\nexpected {e.tolist()[:20]}")


def spec_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU [len(a), len(b)] by the spec formula (no +1; exactly 0 without overlap), in the inputs' dtype.

    An oracle written out in the tests, independent of every implementation under test.
    """
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(inter > 0, inter / union, torch.zeros_like(inter))


def assert_same_ranked(actual_rows: Tensor, actual_scores: Tensor, expected_rows: Tensor, expected_scores: Tensor,
                       row_tol: tuple[float, float], score_tol: tuple[float, float], what: str) -> None:
    """Two lists ranked by score agree: the same scores in order, and the same rows where scores tie.

    Scores (sorted descending in both) are compared position by position with ``score_tol`` = (rtol, atol).
    Rows are compared position by position, except inside a run of expected scores that tie within
    ``score_tol``: there the spec leaves the order open, so the run's rows are compared as multisets (each
    expected row matched to a distinct actual row of the same run within ``row_tol``).
    """
    __tracebackhide__ = True
    a_rows, e_rows = cpu(actual_rows).double(), cpu(expected_rows).double()
    a_s, e_s = cpu(actual_scores).double(), cpu(expected_scores).double()
    if a_rows.shape != e_rows.shape or a_s.shape != e_s.shape:
        raise AssertionError(f"{what}: shapes {list(a_rows.shape)}/{list(a_s.shape)} != expected "
                             f"{list(e_rows.shape)}/{list(e_s.shape)}")
    s_rtol, s_atol = score_tol
    torch.testing.assert_close(a_s, e_s, rtol=s_rtol, atol=s_atol, msg=lambda m: f"{what}: scores: {m}")
    r_rtol, r_atol = row_tol
    n, start = e_s.shape[0], 0
    while start < n:
        stop = start + 1  # the run [start, stop) of scores tied with their neighbour
        while stop < n and abs(e_s[stop] - e_s[stop - 1]) <= s_atol + s_rtol * abs(e_s[stop - 1]):
            stop += 1
        unused = list(range(start, stop))
        for j in range(start, stop):
            close = [i for i in unused if bool(((a_rows[i] - e_rows[j]).abs()
                                                <= r_atol + r_rtol * e_rows[j].abs()).all())]
            if not close:
                raise AssertionError(f"{what}: expected row {j} {e_rows[j].tolist()} (score {e_s[j].item():.9g}, "
                                     f"tied run {start}..{stop - 1}) has no match among the actual rows "
                                     f"{[a_rows[i].tolist() for i in unused][:5]}")
            unused.remove(close[0])
        start = stop
