"""The example third-party port (examples/numpy_port) under ``detspec check``, run the way a port author runs it.

Both tests start ``python -m detspec.cli check`` in a subprocess from the port's own folder and read the JSON
report. They assert on the clauses that have tests in the report (the conformance suite grows; a clause with no
test is "untested" and is not asserted on here).

The subprocesses use the hypothesis ``ci`` profile (derandomized, no example database) with hypothesis' storage in
tmp_path, so the result does not depend on examples remembered in a ``.hypothesis`` folder from earlier runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from detspec.impls import resolve
from spec.clauses import CLAUSES
from spec.contract import CONTRACT, PLANNED, missing_names

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "numpy_port"

IMPLEMENTED = {"pairwise_iou", "box_area", "clip_boxes", "nonempty", "encode_boxes", "decode_boxes",
               "cell_anchors", "nms"}
# the port's deliberate gaps, plus every name later components add (the port never grows)
MISSING = set(PLANNED) | (set(CONTRACT) - IMPLEMENTED)  # grid_anchors, match, ..., and the ROI stage
# The headline clauses of the example; each must pass whenever the suite has a test for it.
MUST_PASS = ("BOX.IOU_NO_PLUS_ONE", "BOX.IOU_ZERO_NO_OVERLAP", "BOX.DECODE_CLAMP", "NMS.STRICT")

LEGACY_PORT = '''
"""A port with the legacy "+1" IoU (detectron1 / py-faster-rcnn): width = x2 - x1 + 1."""
import torch

def pairwise_iou(boxes1, boxes2):
    if not isinstance(boxes1, torch.Tensor) or not boxes1.is_floating_point():
        raise TypeError("boxes1 must be a float torch.Tensor")
    if not isinstance(boxes2, torch.Tensor) or not boxes2.is_floating_point():
        raise TypeError("boxes2 must be a float torch.Tensor")
    area1 = (boxes1[:, 2] - boxes1[:, 0] + 1) * (boxes1[:, 3] - boxes1[:, 1] + 1)
    area2 = (boxes2[:, 2] - boxes2[:, 0] + 1) * (boxes2[:, 3] - boxes2[:, 1] + 1)
    w = (torch.minimum(boxes1[:, None, 2], boxes2[None, :, 2])
         - torch.maximum(boxes1[:, None, 0], boxes2[None, :, 0]) + 1).clamp(min=0)
    h = (torch.minimum(boxes1[:, None, 3], boxes2[None, :, 3])
         - torch.maximum(boxes1[:, None, 1], boxes2[None, :, 1]) + 1).clamp(min=0)
    inter = w * h
    return inter / (area1[:, None] + area2[None, :] - inter)
'''


def _check(cwd: Path, impl: str, report: Path, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    # hypothesis would otherwise create .hypothesis/ in cwd, i.e. inside examples/numpy_port
    env = dict(os.environ, HYPOTHESIS_PROFILE="ci", HYPOTHESIS_STORAGE_DIRECTORY=str(report.parent / ".hypothesis"))
    cmd = [sys.executable, "-m", "detspec.cli", "check", "--impl", impl, "--report", str(report), *extra]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    data = json.loads(report.read_text()) if report.exists() else {}
    return proc, data


def _output(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-6000:]}\n--- stderr\n{proc.stderr[-3000:]}"


def _tested(data: dict, impl: str) -> dict[str, dict]:
    """clause id -> {status, tests} for the clauses that have at least one test for `impl` in the report."""
    return {cid: c["results"][impl] for cid, c in data["clauses"].items() if c["results"].get(impl, {}).get("tests")}


def test_example_port_conforms_where_implemented(tmp_path):
    proc, data = _check(EXAMPLE, "numpy_port", tmp_path / "report.json")
    assert proc.returncode == 0, _output(proc)
    assert data["impls"][0] == "numpy_port"  # (a "(spec)" column holds clause tests that need no implementation)
    tested = _tested(data, "numpy_port")
    assert tested, "the report lists no tested clause for numpy_port"

    for cid, result in tested.items():
        components = set(CLAUSES[cid].components)
        outcomes = [t[1] for t in result["tests"]]
        # Only "not implemented" for contract names the port really lacks (never for nms, cell_anchors, ...).
        for nodeid, outcome, reason in result["tests"]:
            assert outcome in ("passed", "not implemented"), (cid, nodeid, outcome, reason)
            if outcome == "not implemented":
                named = {n.strip() for n in reason.split(",")}
                assert named and named <= MISSING, (cid, nodeid, reason)
        if components <= IMPLEMENTED:
            # the port has every name the clause needs: its tests all ran, and passed
            assert result["status"] == "pass", (cid, result)
        elif components <= MISSING:
            assert result["status"] == "not implemented", (cid, result)
        else:
            # some tests use only names the port has (they must pass), others need a left-out name
            expected = "partial" if "passed" in outcomes else "not implemented"
            assert result["status"] == expected, (cid, result)

    for cid in MUST_PASS:
        if cid in tested:
            assert tested[cid]["status"] == "pass", (cid, tested[cid])
    assert "BOX.IOU_NO_PLUS_ONE" in tested and "BOX.DECODE_CLAMP" in tested  # test_boxes.py exists

    # The clauses that need only left-out components, wherever the suite has tests for them.
    for cid, clause in CLAUSES.items():
        if cid in tested and clause.components and set(clause.components) <= MISSING:
            assert tested[cid]["status"] == "not implemented", (cid, tested[cid])
    assert tested["NMS.EMPTY"]["status"] == "partial"  # nms is there, batched_nms is not


def test_example_port_resolves_as_module_and_as_attribute(monkeypatch):
    """`--impl numpy_port` and `--impl numpy_port:impl` expose the same names (checked in-process, cheaply)."""
    monkeypatch.chdir(EXAMPLE)
    monkeypatch.syspath_prepend(str(EXAMPLE))
    try:
        for spec in ("numpy_port", "numpy_port:impl"):
            impl = resolve(spec)
            assert set(missing_names(impl.namespace)) == MISSING - set(PLANNED), spec
            assert {n for n in CONTRACT if impl.has(n)} == IMPLEMENTED, spec
    finally:
        sys.modules.pop("numpy_port", None)


def test_legacy_plus_one_iou_fails(tmp_path):
    (tmp_path / "legacy_iou_port.py").write_text(LEGACY_PORT)
    # Only the box tests, without the differential ones: hypothesis would spend ~10 s shrinking their failures.
    proc, data = _check(tmp_path, "legacy_iou_port", tmp_path / "report.json", "-k", "boxes and not matches")
    assert proc.returncode == 1, _output(proc)
    tested = _tested(data, "legacy_iou_port")
    assert tested["BOX.IOU_NO_PLUS_ONE"]["status"] == "fail", tested["BOX.IOU_NO_PLUS_ONE"]
    assert any(t[1] == "failed" and "test_iou_no_plus_one" in t[0] for t in tested["BOX.IOU_NO_PLUS_ONE"]["tests"])
    assert tested["BOX.DECODE_CLAMP"]["status"] == "not implemented"  # a port with only pairwise_iou
    assert "BOX.IOU_NO_PLUS_ONE" in proc.stdout and "fail" in proc.stdout  # the printed clause table
