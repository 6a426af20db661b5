"""Helpers shared by the conformance tests: dtype/device casting and comparisons with spec tolerances."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from detspec.impls import current_recorder
from spec.tolerances import OVERRIDES, discrete_tolerance, ratio_rule_check, tolerance, within_discrete_margin
from spec.tolerances import assert_close as _spec_assert_close


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


# ---------------------------------------------------------------------------------- repro recording (issue 13)
# Under ``detspec check --repro DIR`` a failing comparison is recorded with the contract call whose output it
# compared (detspec.impls.CallRecorder); the plugin writes it as a repro case (detspec/conformance/cases.py). The
# helpers below behave exactly the same with or without recording.
def _same_values(a: Tensor, b: Tensor) -> bool:
    if a.shape != b.shape:
        return False
    if a.is_floating_point() or a.is_complex():
        return bool(((a == b) | (a.isnan() & b.isnan())).all())
    return torch.equal(a, b)


def _rows_subsequence(full: Tensor, part: Tensor) -> list[int] | None:
    """Indices i_0 < i_1 < ... with full[i_k] == part[k] (the first such), or None."""
    rows: list[int] = []
    i = 0
    for k in range(part.shape[0]):
        while i < full.shape[0] and not _same_values(full[i], part[k]):
            i += 1
        if i == full.shape[0]:
            return None
        rows.append(i)
        i += 1
    return rows


def output_selector(result: Any, actual: Tensor) -> dict[str, Any] | None:
    """How the compared ``actual`` was taken from a contract call's ``result``, or None if it was not.

    ``{"output": None | k (the k-th tensor of a tuple result), "dtype": cast or None, "shape": reshape or None,
    "rows": row indices (a mask or index on dim 0) or None}``: the output itself, cast (``.float()``), reshaped
    (``.reshape(1)``), or some of its rows in order (``out[keep]``).
    """
    if isinstance(result, Tensor):
        candidates = [(None, result)]
    elif isinstance(result, (tuple, list)):
        candidates = [(k, r) for k, r in enumerate(result) if isinstance(r, Tensor)]
    else:
        return None
    for k, r in candidates:
        r = r.detach().cpu()
        try:
            rc = r.to(actual.dtype)
        except (RuntimeError, TypeError):
            continue
        cast = str(actual.dtype).removeprefix("torch.") if r.dtype != actual.dtype else None
        if rc.numel() == actual.numel() and _same_values(rc.reshape(actual.shape), actual):
            shape = list(actual.shape) if r.shape != actual.shape else None
            return {"output": k, "dtype": cast, "shape": shape, "rows": None}
        if rc.dim() >= 1 and rc.dim() == actual.dim() and rc.shape[1:] == actual.shape[1:] \
                and actual.shape[0] < rc.shape[0]:
            rows = _rows_subsequence(rc, actual)
            if rows is not None:
                return {"output": k, "dtype": cast, "shape": None, "rows": rows}
    return None


def _record_failure(exc: BaseException, rule: dict[str, Any], actual: dict[str, Tensor],
                    expected: dict[str, Tensor], what: str) -> None:
    """Note a failed comparison for --repro: the tensors compared, the rule, and the call that produced them."""
    recorder = current_recorder()
    if recorder is None:
        return
    actual = {k: cpu(v).clone() for k, v in actual.items() if isinstance(v, Tensor)}
    expected = {k: cpu(v).clone() for k, v in expected.items() if isinstance(v, Tensor)}
    call, selectors = None, None
    for candidate in reversed(recorder.calls):  # the newest call whose output every compared tensor comes from
        found = {k: output_selector(candidate["result"], v) for k, v in actual.items()}
        if found and all(sel is not None for sel in found.values()):
            call, selectors = candidate, found
            break
    recorder.failures.append({"exc": exc, "rule": rule, "actual": actual, "expected": expected, "what": what,
                              "message": str(exc), "call": call if call is not None else
                              (recorder.calls[-1] if recorder.calls else None), "selectors": selectors})
    del recorder.failures[:-recorder.MAX_FAILURES]


def _tolerance_rule(component: str, dtype: torch.dtype) -> dict[str, Any]:
    rtol, atol = tolerance(component, dtype)
    override = OVERRIDES.get(component, {}).get(dtype)
    source = (f"spec/tolerances.py OVERRIDES[{component!r}][{dtype}]" if override is not None
              else f"spec/tolerances.py DTYPE_TOLERANCES[{dtype}]")
    return {"kind": "close", "component": component, "dtype": str(dtype).removeprefix("torch."), "rtol": rtol,
            "atol": atol, "source": source, "formula": "|actual - expected| <= atol + rtol * |expected|, NaN never "
            "equal"}


def assert_close(actual: Tensor, expected: Tensor, component: str, msg: str = "") -> None:
    """spec.tolerances.assert_close (the spec tolerance of `actual`'s dtype; `expected` may be float64)."""
    __tracebackhide__ = True
    try:
        _spec_assert_close(actual, expected, component, msg)
    except AssertionError as exc:
        if current_recorder() is not None:
            _record_failure(exc, _tolerance_rule(component, actual.dtype), {"output": actual},
                            {"output": expected}, f"{component} {msg}".strip())
        raise


def assert_equal(actual: Tensor, expected: Tensor, what: str) -> None:
    """Exact equality for indices, labels and masks, with a message listing the first differences."""
    __tracebackhide__ = True
    try:
        _assert_equal(actual, expected, what)
    except AssertionError as exc:
        if current_recorder() is not None:
            _record_failure(exc, {"kind": "exact", "formula": "same shape, and actual (cast to the expected dtype) "
                                  "== expected element by element"}, {"output": actual}, {"output": expected}, what)
        raise


def _assert_equal(actual: Tensor, expected: Tensor, what: str) -> None:
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
    try:
        check_same_ranked(actual_rows, actual_scores, expected_rows, expected_scores, row_tol, score_tol, what)
    except AssertionError as exc:
        if current_recorder() is not None:
            rule = {"kind": "same_ranked", "row_tol": list(row_tol), "score_tol": list(score_tol),
                    "formula": "scores position by position within score_tol (rtol, atol); rows position by "
                    "position within row_tol, as multisets inside runs of tied expected scores"}
            _record_failure(exc, rule, {"rows": actual_rows, "scores": actual_scores},
                            {"rows": expected_rows, "scores": expected_scores}, what)
        raise


def check_same_ranked(actual_rows: Tensor, actual_scores: Tensor, expected_rows: Tensor, expected_scores: Tensor,
                        row_tol: tuple[float, float], score_tol: tuple[float, float], what: str) -> None:
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


# ------------------------------------------------------------------------------------------------ low precision
# issue 16: helpers of detspec/conformance/test_precision.py (PRECISION.RATIO_RULE, PRECISION.DISCRETE_MARGIN).
def low(t: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """(t rounded to the low dtype, the same values in float64): the implementation gets the first, the float64
    reference the second, so the comparison measures the implementation's arithmetic, not its inputs' rounding."""
    t_low = t.to(dtype)
    return t_low, t_low.to(torch.float64)


def assert_ratio_rule(actual: Tensor, naive: Tensor, reference64: Tensor, component: str, dtype: torch.dtype,
                      what: str = "") -> None:
    """PRECISION.RATIO_RULE: spec.tolerances.ratio_rule_check, raising AssertionError with its numbers."""
    __tracebackhide__ = True
    holds, line = ratio_rule_check(actual, naive, reference64, component, dtype)
    if not holds:
        raise AssertionError(f"ratio rule violated: {line} {what}".rstrip())


def _tied(a: float, b: float, dtype: torch.dtype) -> bool:
    """Two scores tied within the low-precision tolerance (the higher one is the boundary)."""
    return within_discrete_margin(min(a, b), max(a, b), dtype)


def same_ranking(actual: list[int], expected: list[int], scores64: Tensor, dtype: torch.dtype | None = None) -> bool:
    """Two ranked index lists are equal, runs of exactly tied scores (or tied within dtype's tolerance, if given)
    compared as sets."""
    if len(actual) != len(expected):
        return False
    s = cpu(scores64).double().tolist()
    start, n = 0, len(expected)
    while start < n:
        stop = start + 1
        while stop < n and (s[expected[stop]] == s[expected[stop - 1]] or
                            (dtype is not None and _tied(s[expected[stop]], s[expected[stop - 1]], dtype))):
            stop += 1
        if sorted(actual[start:stop]) != sorted(expected[start:stop]):
            return False
        start = stop
    return True


def check_nms_selection(keep: Tensor | list[int], keep64: Tensor | list[int], boxes64: Tensor, scores64: Tensor,
                        iou_threshold: float, dtype: torch.dtype, *, groups: Tensor | None = None,
                        optional: set[int] | frozenset[int] = frozenset(), limit: int | None = None,
                        what: str = "nms") -> list[str]:
    """PRECISION.DISCRETE_MARGIN for a greedy-NMS selection: [] when ``keep`` is the float64 reference's
    ``keep64`` (tied scores as sets); otherwise the accepted differences, one line each, or AssertionError.

    Greedy NMS in a fixed visiting order is characterised by two conditions: no two kept boxes (of one group)
    overlap with IoU > threshold, and every dropped candidate overlaps (IoU > threshold) a kept box of its group
    visited before it. ``keep`` is accepted when both hold up to the margin rule, with IoU and scores in float64:
    a kept pair may have IoU in (t, t + tol]; a dropped box's suppressor may have IoU in [t - tol, t], and may
    score below it by at most the score tolerance (a tie); the kept list is in descending score order up to tied
    scores. ``optional``: candidates that may be absent without a suppressor (their own filter decision is within
    the margin, e.g. a score near the score threshold). ``limit``: a top-k cut; a dropped candidate scoring no more
    than the last kept one (within tol) is cut, not suppressed, when ``len(keep) == limit``.
    """
    __tracebackhide__ = True
    k = [int(i) for i in (keep.tolist() if isinstance(keep, Tensor) else keep)]
    k64 = [int(i) for i in (keep64.tolist() if isinstance(keep64, Tensor) else keep64)]
    s = cpu(scores64).double()
    if same_ranking(k, k64, s):
        return []
    n = len(s)
    b = cpu(boxes64).double()
    g = cpu(groups).tolist() if groups is not None else [0] * n
    sl = s.tolist()
    if len(set(k)) != len(k) or any(i < 0 or i >= n for i in k):
        raise AssertionError(f"{what}: kept indices repeat or are out of range: {k[:20]}")
    iou = spec_iou(b, b)
    tol_t = discrete_tolerance(iou_threshold, dtype)
    notes: list[str] = []
    for a, c in zip(k, k[1:]):
        if sl[c] > sl[a] and not _tied(sl[a], sl[c], dtype):
            raise AssertionError(f"{what}: kept {c} (score {sl[c]:.6g}) after {a} (score {sl[a]:.6g}): not in "
                                 "descending score order, and the scores do not tie within the low-precision tolerance")
        if sl[c] > sl[a]:
            notes.append(f"{c} ranked after {a} (scores {sl[c]:.6g} vs {sl[a]:.6g} tie within tol)")
    kept = set(k)
    for x in range(len(k)):
        for y in range(x + 1, len(k)):
            i, j = k[x], k[y]
            if g[i] != g[j]:
                continue
            v = float(iou[i, j])
            if v > iou_threshold:
                if v - iou_threshold > tol_t:
                    raise AssertionError(f"{what}: kept {i} and {j} (group {g[i]}) overlap with float64 IoU {v:.6g} "
                                         f"> threshold {iou_threshold:g} + tol {tol_t:.3g}: one must be suppressed")
                notes.append(f"kept {j} with IoU {v:.6g} vs {i}, within tol {tol_t:.3g} of {iou_threshold:g}")
    cut = limit is not None and len(k) == limit
    last = min((sl[i] for i in k), default=float("inf"))
    for j in range(n):
        if j in kept or j in optional:
            continue
        if cut and (sl[j] <= last or _tied(sl[j], last, dtype)):
            continue
        suppressors = [i for i in k if g[i] == g[j] and (sl[i] >= sl[j] or _tied(sl[i], sl[j], dtype))
                       and float(iou[i, j]) > iou_threshold - tol_t]
        if not suppressors:
            raise AssertionError(f"{what}: candidate {j} (group {g[j]}, score {sl[j]:.6g}) was dropped, but no kept "
                                 "box "
                                 f"of its group scoring at least as high (within tol) overlaps it with float64 IoU > "
                                 f"{iou_threshold:g} - tol {tol_t:.3g}")
        best = max(suppressors, key=lambda i: float(iou[i, j]))
        if float(iou[best, j]) <= iou_threshold or sl[best] < sl[j]:
            notes.append(f"dropped {j}: IoU {float(iou[best, j]):.6g} with {best} (threshold {iou_threshold:g}, tol "
                         f"{tol_t:.3g}; scores {sl[best]:.6g} vs {sl[j]:.6g})")
    if not notes:  # only the order among tied scores, or which of two tied boxes survived
        notes.append(f"kept {sorted(kept ^ set(k64))[:10]} differ from the float64 reference by tied scores")
    return notes


def check_levels(levels: Tensor, levels64: Tensor, level_values64: Tensor, dtype: torch.dtype,
                 what: str = "assign_levels") -> list[str]:
    """PRECISION.DISCRETE_MARGIN for FPN levels: [] when equal; else the accepted differences or AssertionError.

    ``level_values64`` is the level formula before the floor, in float64: canonical_level + log2(sqrt(area) /
    canonical_box_size + eps). A box may get a neighbouring level only when that value is within tol of the integer
    boundary between the two levels (spec.tolerances.within_discrete_margin's worked example).
    """
    __tracebackhide__ = True
    a, e = cpu(levels).long(), cpu(levels64).long()
    if a.shape != e.shape:
        raise AssertionError(f"{what}: shape {list(a.shape)} != expected {list(e.shape)}")
    notes = []
    for r in (a != e).nonzero().flatten().tolist():
        lo, hi = sorted((int(a[r]), int(e[r])))
        value = float(level_values64[r])
        if hi - lo != 1 or not within_discrete_margin(value, hi, dtype):
            raise AssertionError(f"{what}: box {r} (float64 level value {value:.6g}) got level {int(a[r])}, the "
                                 f"float64 reference {int(e[r])}: the boundary {hi} is not within the low-precision "
                                 f"tolerance {discrete_tolerance(hi, dtype):.3g}")
        notes.append(f"box {r}: level value {value:.6g} within tol {discrete_tolerance(hi, dtype):.3g} of {hi} -> "
                     f"level {int(a[r])} (float64: {int(e[r])})")
    return notes


def check_match(matches: Tensor, labels: Tensor, matches64: Tensor, labels64: Tensor, quality64: Tensor,
                thresholds: list[float], label_values: list[int], allow_low_quality_matches: bool,
                dtype: torch.dtype, what: str = "match") -> list[str]:
    """PRECISION.DISCRETE_MARGIN for the matcher: [] when equal; else the accepted differences or AssertionError.

    A matched index may differ where the two GTs' float64 qualities tie within tol; a label may differ where the
    prediction's best float64 quality is within tol of a threshold between the two labels, or (low-quality
    matches) where its quality ties a GT's best quality within tol.
    """
    __tracebackhide__ = True
    m, l_ = cpu(matches).long(), cpu(labels).long()
    m64, l64 = cpu(matches64).long(), cpu(labels64).long()
    q = cpu(quality64).double()
    if m.shape != m64.shape or l_.shape != l64.shape:
        raise AssertionError(f"{what}: shapes {list(m.shape)}/{list(l_.shape)} != {list(m64.shape)}/{list(l64.shape)}")
    notes = []
    if q.numel() == 0:
        return notes if torch.equal(m, m64) and torch.equal(l_, l64) else [f"{what}: empty quality"]
    gt_best = q.max(dim=1).values
    for p in ((m != m64) | (l_ != l64)).nonzero().flatten().tolist():
        best = float(q[int(m64[p]), p])
        if int(m[p]) != int(m64[p]):
            other = float(q[int(m[p]), p])
            if not within_discrete_margin(other, best, dtype):
                raise AssertionError(f"{what}: prediction {p} matched GT {int(m[p])} (float64 quality {other:.6g}), "
                                     f"the float64 reference GT {int(m64[p])} ({best:.6g}): not a tie within tol")
            notes.append(f"prediction {p}: GT {int(m[p])} vs {int(m64[p])}, qualities {other:.6g} / {best:.6g} tie")
        if int(l_[p]) != int(l64[p]):
            pair = {int(l_[p]), int(l64[p])}
            ok = False
            for i, t in enumerate(thresholds):  # label_values[i] below t, label_values[i + 1] at or above it
                if {label_values[i], label_values[i + 1]} == pair and within_discrete_margin(best, t, dtype):
                    ok, why = True, f"quality {best:.6g} within tol of threshold {t:g}"
            if not ok and allow_low_quality_matches and label_values[-1] in pair:
                for gi in range(q.shape[0]):
                    if float(gt_best[gi]) > 0 and within_discrete_margin(float(q[gi, p]), float(gt_best[gi]), dtype):
                        ok, why = True, f"quality {float(q[gi, p]):.6g} ties GT {gi}'s best {float(gt_best[gi]):.6g}"
                        break
            if not ok:
                raise AssertionError(f"{what}: prediction {p} labelled {int(l_[p])}, the float64 reference "
                                     f"{int(l64[p])}, with quality {best:.6g}: no threshold or GT best within tol")
            notes.append(f"prediction {p}: label {int(l_[p])} vs {int(l64[p])}: {why}")
    return notes


def randomize_parameters(module: torch.nn.Module, g: torch.Generator) -> torch.nn.Module:
    """Give every parameter a random value of a sensible scale (LayerNorm ~1, biases ~0.2, fan-in scaled
    matrices), so that no term of the computation is hidden by a zero or identity initialisation."""
    with torch.no_grad():
        for m in module.modules():
            for name, p in m.named_parameters(recurse=False):
                noise = torch.randn(p.shape, generator=g).to(torch.float64)
                if isinstance(m, torch.nn.LayerNorm) and name == "weight":
                    value = 1.0 + 0.2 * noise
                elif p.dim() == 1:
                    value = 0.2 * noise
                else:
                    value = noise / math.sqrt(p[0].numel())
                p.copy_(value.to(p.dtype))
    return module
