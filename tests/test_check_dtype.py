"""``detspec check --dtype bf16`` (issue 16): the low-precision run, its statuses, and the discrete-margin rule.

The subprocess tests run ``python -m detspec.cli check --dtype bf16`` with ``-k`` selecting a few tests of
detspec/conformance/test_precision.py; broken ports written to tmp_path must fail there. The unit tests check
spec.tolerances.within_discrete_margin and the margin checkers of detspec/conformance/_util.py against numbers
derived by hand in the comments.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from detspec.conformance._util import check_levels, check_match, check_nms_selection
from detspec.plugin import aggregate
from detspec.report import WITHIN_PRECISION, format_table
from spec.clauses import CLAUSES, LOW_PRECISION_CLAUSES
from spec.tolerances import discrete_tolerance, ratio_rule_check, ratio_rule_holds, within_discrete_margin

BF16, FP16 = torch.bfloat16, torch.float16


# ------------------------------------------------------------------------------------------------ the margin rule
def test_discrete_tolerance_hand_values():
    # bf16: rtol 1.6e-2, atol 1e-5 (torch.testing defaults): 1e-5 + 0.016 * 0.7 = 0.01121
    assert discrete_tolerance(0.7, BF16) == pytest.approx(0.01121, abs=1e-12)
    # fp16: rtol 1e-3, atol 1e-5: 1e-5 + 0.001 * 0.7 = 0.00071
    assert discrete_tolerance(0.7, FP16) == pytest.approx(0.00071, abs=1e-12)
    # level boundary 5 in bf16: 1e-5 + 0.016 * 5 = 0.08001
    assert discrete_tolerance(5, BF16) == pytest.approx(0.08001, abs=1e-12)


@pytest.mark.parametrize("value, boundary, dtype, expected", [
    (0.705, 0.7, BF16, True),     # margin 0.005 <= 0.01121 (the docstring's worked example)
    (0.72, 0.7, BF16, False),     # margin 0.02 > 0.01121
    (0.6889, 0.7, BF16, True),    # margin 0.0111 <= 0.01121, from below
    (0.6887, 0.7, BF16, False),   # margin 0.0113 > 0.01121
    (0.705, 0.7, FP16, False),    # fp16: margin 0.005 > 0.00071
    (0.7006, 0.7, FP16, True),    # fp16: margin 0.0006 <= 0.00071
    (0.6, 0.605, BF16, True),     # scores: |0.6 - 0.605| = 0.005 <= 1e-5 + 0.016 * 0.605 = 0.00969
    (4.9757, 5, BF16, True),      # level value of sqrt(area) 440.5: 4 + log2(440.5/224); margin 0.0243 <= 0.08001
    (4.8365, 5, BF16, False),     # sqrt(area) 400: margin 0.1635 > 0.08001
])
def test_within_discrete_margin(value, boundary, dtype, expected):
    assert within_discrete_margin(value, boundary, dtype) is expected


def test_ratio_rule_numbers():
    # |impl - ref| = 0.3, |naive - ref| = 0.1: 0.3 <= 2 * 0.1 + floor holds only with a floor >= 0.1
    assert not ratio_rule_holds(0.3, 0.1)
    assert ratio_rule_holds(0.3, 0.1, floor=0.1)
    ref = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    naive = ref + torch.tensor([0.0, 0.01, 0.0], dtype=torch.float64)
    # default floor: 1 x eps(bf16) x max|ref| = 2^-7 * 4 = 0.03125; bound 2 * 0.01 + 0.03125 = 0.05125
    assert ratio_rule_check(ref + 0.05, naive, ref, "pairwise_iou", BF16)[0]
    holds, line = ratio_rule_check(ref + 0.06, naive, ref, "pairwise_iou", BF16)
    assert not holds and "0.05125" in line
    assert not ratio_rule_check(ref * float("nan"), naive, ref, "pairwise_iou", BF16)[0]


# ------------------------------------------------------------------------------------------------ margin checkers
# Boxes along x, all 10 high: box 0 = [0, 10], box 1 starts at d. IoU(0, 1) = (10 - d) / (10 + d).
#   d = 1.7: 8.3 / 11.7 = 0.709402 (> 0.7 by 0.0094, within bf16's 0.01121, not within fp16's 0.00071)
#   d = 1.0: 9 / 11 = 0.818182 (far above 0.7);  box 2 at x = 50 overlaps nothing.
def _row(d: float) -> list[float]:
    return [d, 0.0, 10.0 + d, 10.0]


BOXES = torch.tensor([_row(0.0), _row(1.7), _row(50.0), _row(1.0)], dtype=torch.float64)
SCORES = torch.tensor([0.9, 0.8, 0.7, 0.6], dtype=torch.float64)
# float64 NMS at 0.7: keep 0; 1 suppressed (0.709 > 0.7); 2 kept; 3 suppressed by 0 (0.818): keep64 = [0, 2]


def test_nms_check_identical_is_a_plain_pass():
    assert check_nms_selection([0, 2], [0, 2], BOXES, SCORES, 0.7, BF16) == []


def test_nms_check_accepts_a_keep_within_the_margin_in_bf16_only():
    notes = check_nms_selection([0, 1, 2], [0, 2], BOXES, SCORES, 0.7, BF16)
    assert notes and "0.709402" in notes[0]
    with pytest.raises(AssertionError, match="overlap with float64 IoU 0.709402"):
        check_nms_selection([0, 1, 2], [0, 2], BOXES, SCORES, 0.7, FP16)


def test_nms_check_rejects_a_keep_far_from_the_threshold():
    # keeping 3 (IoU 0.818 with 0, margin 0.118) is not a precision effect
    with pytest.raises(AssertionError, match="overlap with float64 IoU 0.818182"):
        check_nms_selection([0, 2, 3], [0, 2], BOXES, SCORES, 0.7, BF16)


def test_nms_check_rejects_a_drop_without_suppressor_and_a_wrong_order():
    with pytest.raises(AssertionError, match="candidate 2 .* was dropped"):
        check_nms_selection([0], [0, 2], BOXES, SCORES, 0.7, BF16)
    with pytest.raises(AssertionError, match="not in descending score order"):
        check_nms_selection([2, 0], [0, 2], BOXES, SCORES, 0.7, BF16)


def test_level_check():
    # values 4.97564 (sqrt(area) 440.5) and 4.8365 (400): float64 level 4 for both
    values = torch.tensor([4.97564, 4.8365], dtype=torch.float64)
    assert check_levels(torch.tensor([4, 4]), torch.tensor([4, 4]), values, BF16) == []
    assert check_levels(torch.tensor([5, 4]), torch.tensor([4, 4]), values, BF16)
    with pytest.raises(AssertionError, match="box 1"):
        check_levels(torch.tensor([4, 5]), torch.tensor([4, 4]), values, BF16)
    with pytest.raises(AssertionError, match="box 0"):  # two levels apart is never a rounding
        check_levels(torch.tensor([3, 4]), torch.tensor([5, 4]), values, BF16)


def test_match_check():
    # one GT, three predictions: quality 0.699219 (bf16(0.7)), 0.5, 0.9; thresholds (0.3, 0.7), labels (0, -1, 1)
    q = torch.tensor([[0.69921875, 0.5, 0.9]], dtype=torch.float64)
    m = torch.zeros(3, dtype=torch.int64)
    lab64 = torch.tensor([-1, -1, 1])
    args = ([0.3, 0.7], [0, -1, 1], False, BF16)
    assert check_match(m, lab64, m, lab64, q, *args) == []
    assert check_match(m, torch.tensor([1, -1, 1]), m, lab64, q, *args)  # 0.699 vs 0.7: margin 0.00078
    with pytest.raises(AssertionError, match="prediction 1"):  # 0.5 is 0.2 from either threshold
        check_match(m, torch.tensor([-1, 1, 1]), m, lab64, q, *args)


# ------------------------------------------------------------------------------------------------ statuses
def test_aggregate_within_precision_is_a_pass():
    assert aggregate(["passed", "within precision"]) == WITHIN_PRECISION
    assert aggregate(["within precision", "failed"]) == "fail"
    assert aggregate(["within precision", "not implemented"]) == "partial"
    assert aggregate(["passed"]) == "pass"


def test_table_shows_dtype_and_within_precision():
    report = {"spec_version": "x", "device": "cpu", "dtype": "bf16", "impls": ["a"],
              "other_dtype_clauses": ["BOX.AREA"],
              "clauses": {"PRECISION.NMS": {"text": "nms", "source": "", "results": {"a": {
                  "status": WITHIN_PRECISION, "tests": [["t::n", "within precision", "nms: kept 1 within tol"]]}}}}}
    text = format_table(report)
    assert text.splitlines()[0] == "detspec conformance: spec x, device cpu, dtype bf16"
    assert "a: 0 pass, 1 pass (within precision), 0 fail, 0 partial, 0 not implemented, 0 skip" in text
    assert "[a] t::n: nms: kept 1 within tol" in text
    assert "1 clauses belong to runs with --dtype fp32 (the default) and are not shown: BOX.AREA" in text


def test_low_precision_clauses_are_registered():
    assert {"PRECISION.RATIO_RULE", "PRECISION.DISCRETE_MARGIN", "PRECISION.NMS"} <= LOW_PRECISION_CLAUSES
    assert LOW_PRECISION_CLAUSES <= set(CLAUSES)
    for cid in ("PRECISION.AUTOCAST", "PRECISION.GEOMETRY_FP32", "PRECISION.OUTPUT_FP32"):
        assert cid in CLAUSES and cid in LOW_PRECISION_CLAUSES


# ------------------------------------------------------------------------------------------------ detspec check --dtype
def _check(tmp_path: Path, impl: str, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    report = tmp_path / f"report-{impl.replace(':', '_')}.json"
    env = dict(os.environ, HYPOTHESIS_PROFILE="ci", HYPOTHESIS_STORAGE_DIRECTORY=str(tmp_path / ".hypothesis"))
    for name in ("PYTEST_ADDOPTS", "PYTEST_PLUGINS", "PYTEST_TIMEOUT"):
        env.pop(name, None)
    cmd = [sys.executable, "-m", "detspec.cli", "check", "--impl", impl, "--report", str(report), *extra]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    data = json.loads(report.read_text()) if report.exists() else {}
    return proc, data


def _out(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n{proc.stdout[-5000:]}\n{proc.stderr[-2000:]}"


def _status(data: dict, cid: str, impl: str) -> str:
    return data["clauses"][cid]["results"][impl]["status"]


# the cheap geometry tests of test_precision.py (the module tests take most of a full run)
GEOMETRY = "iou or nms or match or levels or encode or decode or roi_align or select_proposals or inference"


@pytest.mark.parametrize("name", ["reference", "fast"])
def test_bf16_run_passes_for_detspec_implementations(tmp_path, name):
    """The whole low-precision suite for fast (the project's own test run collects it only through this test);
    the cheap geometry part of it for the reference."""
    proc, data = _check(tmp_path, name, "--dtype", "bf16", *(("-k", GEOMETRY) if name == "reference" else ()))
    assert proc.returncode == 0, _out(proc)
    assert data["dtype"] == "bf16"
    assert set(data["clauses"]) <= LOW_PRECISION_CLAUSES  # no fp32 clause mixed in
    assert "BOX.IOU_NO_PLUS_ONE" in data["other_dtype_clauses"]
    checked = ["PRECISION.IOU", "PRECISION.NMS", "PRECISION.MATCH", "PRECISION.LEVELS", "PRECISION.BOX_CODER",
               "PRECISION.ROI_ALIGN", "PRECISION.PROPOSALS", "PRECISION.INFERENCE", "PRECISION.DISCRETE_MARGIN"]
    if name == "fast":
        checked = sorted(LOW_PRECISION_CLAUSES)  # every one, the autocast_dtype clauses included
    for cid in checked:
        assert _status(data, cid, name) in ("pass", WITHIN_PRECISION), (cid, data["clauses"][cid]["results"][name])
    # the planted qualities next to 0.7 are decided by bf16(0.7) = 0.69921875 in bf16: within precision
    assert _status(data, "PRECISION.MATCH", name) == WITHIN_PRECISION
    assert "dtype bf16" in proc.stdout and "pass (within precision)" in proc.stdout


# Broken ports. Each is correct in float32 for most inputs, and wrong in a way the low-precision rules catch.
_IOU = '''
import torch
import reference

def _iou(a, b, plus):
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt + plus).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    area_a = (a[:, 2] - a[:, 0] + plus) * (a[:, 3] - a[:, 1] + plus)
    area_b = (b[:, 2] - b[:, 0] + plus) * (b[:, 3] - b[:, 1] + plus)
    return inter / (area_a[:, None] + area_b[None, :] - inter)
'''

BROKEN_PORTS = {
    # pairwise_iou in bf16 with detectron1's "+1" in widths: errors far beyond 2 x the naive bf16 error
    "plus_one_iou": (_IOU + '''
def pairwise_iou(a, b):
    return _iou(a.to(torch.bfloat16), b.to(torch.bfloat16), 1.0)
''', "test_pairwise_iou_ratio_rule", "PRECISION.IOU"),
    # NMS suppressing at IoU > threshold - 0.1: drops boxes whose IoU is 0.1 below the threshold
    "eager_nms": ('''
import torch
import reference

def nms(boxes, scores, iou_threshold):
    return reference.nms(boxes.float(), scores.float(), max(iou_threshold - 0.1, 0.0))
''', "test_nms_discrete_margin", "PRECISION.NMS"),
    # assign_levels one level up for boxes above 300 px: far from any boundary
    "offset_levels": ('''
import torch
import reference

def assign_levels(boxes, *args, **kwargs):
    levels = reference.assign_levels(boxes.float(), *args, **kwargs)
    side = ((boxes[:, 2] - boxes[:, 0]).float() * (boxes[:, 3] - boxes[:, 1]).float()).sqrt()
    return torch.where(side > 300, (levels + 1).clamp(max=5), levels)
''', "test_assign_levels_discrete_margin", "PRECISION.LEVELS"),
}


@pytest.mark.parametrize("name", sorted(BROKEN_PORTS))
def test_bf16_run_fails_a_broken_port(tmp_path, name):
    source, test, cid = BROKEN_PORTS[name]
    (tmp_path / f"{name}.py").write_text(source)
    proc, data = _check(tmp_path, name, "--dtype", "bf16", "-k", test)
    assert proc.returncode == 1, _out(proc)
    assert _status(data, cid, name) == "fail", data["clauses"][cid]["results"][name]
    assert f"{cid}" in proc.stdout and "failed" in proc.stdout


def test_fp32_run_does_not_collect_the_precision_tests(tmp_path):
    (tmp_path / "port.py").write_text(_IOU + "\ndef pairwise_iou(a, b):\n    return _iou(a, b, 0.0)\n")
    proc, data = _check(tmp_path, "port", "-k", "test_iou_no_plus_one or ratio_rule")
    assert proc.returncode == 0, _out(proc)
    assert data["dtype"] == "fp32"
    assert _status(data, "BOX.IOU_NO_PLUS_ONE", "port") == "pass"
    assert not any(cid in data["clauses"] for cid in LOW_PRECISION_CLAUSES)
    assert "PRECISION.IOU" in data["other_dtype_clauses"]
    tests = [t[0] for c in data["clauses"].values() for t in c["results"].get("port", {}).get("tests", [])]
    assert tests and not any("test_precision.py" in t for t in tests)
