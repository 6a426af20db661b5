"""``detspec check --repro DIR`` and ``detspec repro FILE`` (issue 13) on deliberately broken ports.

Each port is a small module written to tmp_path that wraps detspec's ``fast`` package with one bug:
  plus1_port      pairwise_iou with the legacy +1 on widths and heights (clause BOX.IOU_NO_PLUS_ONE);
  unaligned_port  roi_align that ignores aligned=True (no half-pixel shift; ROI.ALIGN_KNOWN);
  ge_nms_port     nms that suppresses at IoU >= threshold where the spec says > (NMS.STRICT).
``detspec check`` runs in a subprocess from tmp_path with -k selecting a few tests; ``detspec repro`` runs
in-process (detspec.cli.main) on the files it wrote. Expected values come from the conformance tests' own hand
derivations (quoted below), never from the code under test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from detspec import cli

PLUS1_PORT = '''
"""pairwise_iou with the legacy +1 (py-faster-rcnn); everything else is detspec's fast package."""
import torch


def pairwise_iou(boxes1, boxes2):
    lt = torch.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt + 1).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    area1 = (boxes1[:, 2] - boxes1[:, 0] + 1) * (boxes1[:, 3] - boxes1[:, 1] + 1)
    area2 = (boxes2[:, 2] - boxes2[:, 0] + 1) * (boxes2[:, 3] - boxes2[:, 1] + 1)
    union = area1[:, None] + area2[None, :] - inter
    return torch.where(inter > 0, inter / union, torch.zeros_like(inter))
'''

UNALIGNED_PORT = '''
"""fast.roi_align, but aligned=True is ignored: no half-pixel shift (the legacy ROIAlign)."""
import fast


def roi_align(features, rois, output_size, spatial_scale, sampling_ratio, aligned):
    return fast.roi_align(features, rois, output_size, spatial_scale, sampling_ratio, False)
'''

GE_NMS_PORT = '''
"""Greedy NMS on fast.pairwise_iou that suppresses at IoU >= threshold (the spec: IoU > threshold)."""
import torch

import fast


def nms(boxes, scores, iou_threshold):
    order = torch.argsort(scores, descending=True, stable=True).tolist()
    suppressed = (fast.pairwise_iou(boxes, boxes).double() >= iou_threshold).tolist()  # the bug: >=, not >
    keep, dropped = [], set()
    for j in order:
        if j not in dropped:
            keep.append(j)
            dropped.update(i for i, s in enumerate(suppressed[j]) if s and i != j)
    return torch.tensor(keep, dtype=torch.int64, device=boxes.device)
'''

PORTS = {
    "plus1_port": (PLUS1_PORT, "iou_no_plus_one or iou_matches_reference_float64",
                   {"test_boxes.py::test_iou_no_plus_one[plus1_port]",
                    "test_boxes.py::test_iou_matches_reference_float64[plus1_port]"}),
    "unaligned_port": (UNALIGNED_PORT, "ramp_known_values or roi_align_matches_reference",
                       {"test_roi_align.py::test_ramp_known_values[unaligned_port-True]",
                        "test_roi_align.py::test_roi_align_matches_reference[unaligned_port]"}),
    # the deterministic NMS.STRICT test (IoU exactly equal to the threshold); the property test
    # test_nms_equals_greedy_oracle also fails for this port (at threshold 0.0) but shrinks for ~40 s
    "ge_nms_port": (GE_NMS_PORT, "suppression_is_strictly_greater or threshold_compared_as_a_real_number",
                    {"test_nms.py::test_suppression_is_strictly_greater[ge_nms_port]"}),
}


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ, HYPOTHESIS_PROFILE="ci", HYPOTHESIS_STORAGE_DIRECTORY=str(tmp_path / ".hypothesis"))
    for name in ("PYTEST_ADDOPTS", "PYTEST_PLUGINS", "PYTEST_TIMEOUT"):
        env.pop(name, None)
    return env


def _check(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "detspec.cli", "check", *args]
    return subprocess.run(cmd, cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=300)


def _repro(monkeypatch, capsys, tmp_path: Path, file: Path, impl: str) -> tuple[int, str]:
    monkeypatch.chdir(tmp_path)  # ports are resolved from the current directory, as detspec check does
    capsys.readouterr()
    code = cli.main(["repro", str(file), "--impl", impl])
    out = capsys.readouterr()
    return code, out.out + out.err


def _cases(directory: Path) -> dict[str, tuple[dict, dict]]:
    """test node id -> (sidecar JSON, npz arrays)."""
    cases = {}
    for path in sorted(directory.glob("*.json")):
        meta = json.loads(path.read_text())
        with np.load(path.with_suffix(".npz")) as data:
            cases[meta["test"]] = (meta, {k: data[k] for k in data.files}, path)
    return cases


@pytest.fixture
def forget_ports():
    yield
    for name in PORTS:
        sys.modules.pop(name, None)


@pytest.mark.parametrize("port", list(PORTS))
def test_broken_port_writes_cases_that_replay(tmp_path, monkeypatch, capsys, forget_ports, port):
    source, k, failing = PORTS[port]
    (tmp_path / f"{port}.py").write_text(source)
    out_dir = tmp_path / "cases"  # does not exist yet: created because its parent does
    proc = _check(tmp_path, "--impl", port, "--impl", "fast", "--repro", "cases", "-k", k)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-2000:]
    cases = _cases(out_dir)
    # one pair per failing test of the port; fast passes these tests and writes nothing
    assert set(cases) == failing, (sorted(cases), proc.stdout[-3000:])
    assert len(list(out_dir.glob("*.npz"))) == len(failing)
    for nodeid, (meta, arrays, path) in cases.items():
        assert meta["implementation"] == port and meta["clauses"]
        assert meta["replay"] == f"detspec repro cases/{path.name} --impl {port}"
        assert meta["comparison"] is not None, meta
        assert meta["function"] in ("pairwise_iou", "roi_align", "nms")
        assert meta["property_test"] == ("matches" in nodeid)
        for a in meta["args"]:
            if "tensor" in a:
                assert list(arrays[a["tensor"]].shape) == a["shape"]
        code, text = _repro(monkeypatch, capsys, tmp_path, path, port)
        assert code == 1, text
        assert "<- first difference" in text and "FAIL" in text, text
        for good in ("reference", "fast"):
            code, text = _repro(monkeypatch, capsys, tmp_path, path, good)
            assert code == 0, f"{good} on {nodeid}:\n{text}"
            assert "PASS" in text and "<- first difference" not in text
    _check_known_values(port, cases)


def _check_known_values(port: str, cases: dict) -> None:
    """The recorded expected/actual values against the hand derivations of the conformance tests."""
    if port == "plus1_port":
        meta, arrays, _ = cases["test_boxes.py::test_iou_no_plus_one[plus1_port]"]
        # (0,0,10,10) vs (5,0,15,10): spec 50/150 = 1/3; legacy +1: 66/176 = 0.375
        assert meta["comparison"]["rule"]["kind"] == "close"
        assert meta["comparison"]["rule"]["rtol"] == 1e-5 and meta["comparison"]["rule"]["atol"] == 1e-6
        assert abs(float(arrays["expected_output"].item()) - 1 / 3) < 1e-12
        assert abs(float(arrays["actual_output"].item()) - 0.375) < 1e-6
        shrunk, arrays, _ = cases["test_boxes.py::test_iou_matches_reference_float64[plus1_port]"]
        assert shrunk["shrunk"] is True
        # the minimal failing input: one box on each side (hypothesis shrinks the lists to one row)
        assert shrunk["args"][0]["shape"] == [1, 4] and shrunk["args"][1]["shape"] == [1, 4]
    elif port == "unaligned_port":
        meta, arrays, _ = cases["test_roi_align.py::test_ramp_known_values[unaligned_port-True]"]
        # ramp 5y + x, box (1,1,3,3), 4x4 output: aligned centres 0.75.. -> first row 4.5, 5.0, 5.5, 6.0;
        # without the shift 1.25.. -> 7.5, 8.0, 8.5, 9.0
        assert arrays["expected_output"][0, 0, 0].tolist() == [4.5, 5.0, 5.5, 6.0]
        assert arrays["actual_output"][0, 0, 0].tolist() == [7.5, 8.0, 8.5, 9.0]
        assert meta["args"][5] == {"value": True}  # aligned=True was asked for
    else:
        meta, arrays, _ = cases["test_nms.py::test_suppression_is_strictly_greater[ge_nms_port]"]
        # (0,0,10,10) and (0,0,10,5): IoU = 50/100 = 0.5 exactly, threshold 0.5: the spec keeps both
        assert meta["comparison"]["rule"]["kind"] == "exact"
        assert meta["args"][2] == {"value": 0.5}
        assert arrays["expected_output"].tolist() == [0, 1] and arrays["actual_output"].tolist() == [0]
        assert arrays["arg0"].tolist() == [[0, 0, 10, 10], [0, 0, 10, 5]]


def test_existing_cases_are_never_overwritten(tmp_path, forget_ports):
    (tmp_path / "ge_nms_port.py").write_text(GE_NMS_PORT)
    k = "suppression_is_strictly_greater"
    assert _check(tmp_path, "--impl", "ge_nms_port", "--repro", "cases", "-k", k).returncode == 1
    first = tmp_path / "cases" / "test_nms-test_suppression_is_strictly_greater-ge_nms_port.json"
    before = first.read_bytes()
    assert _check(tmp_path, "--impl", "ge_nms_port", "--repro", "cases", "-k", k).returncode == 1
    assert first.read_bytes() == before
    second = first.with_name(first.stem + "-2.json")
    assert second.exists() and second.with_suffix(".npz").exists()
    assert json.loads(second.read_text())["replay"].startswith(f"detspec repro cases/{second.name} ")


def test_repro_dir_needs_an_existing_parent(tmp_path, capsys):
    code = cli.main(["check", "--impl", "fast", "--repro", str(tmp_path / "missing" / "cases"), "-k", "nms"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "does not exist" in err, err
    (tmp_path / "file").write_text("")
    assert cli.main(["check", "--impl", "fast", "--repro", str(tmp_path / "file"), "-k", "nms"]) == 2


@pytest.mark.parametrize("content", [None, "not json", '{"format": "other"}'])
def test_repro_bad_file_is_one_line_exit_2(tmp_path, capsys, content):
    case = tmp_path / "case.json"
    if content is not None:
        case.write_text(content)
        np.savez(tmp_path / "case.npz", x=np.zeros(1))
    code = cli.main(["repro", str(case), "--impl", "fast"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("detspec repro: "), err
