"""``detspec check`` never reports as "pass" a test that did not pass: hangs, interrupts, crashes, ambient config.

Each subprocess test runs ``python -m detspec.cli check`` on a tiny port written to tmp_path (it only has
``pairwise_iou``) with ``-k`` selecting one or two IoU tests of detspec/conformance/test_boxes.py, and asserts the
exit code, the JSON report and the printed table. The ports signal "the test has started" by creating a marker
file, so the interrupt tests send their signal while the port is running, without sleeping for a guessed time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from detspec.plugin import aggregate
from detspec.report import any_failed, format_table, is_complete

TEST = "test_iou_no_plus_one"  # clause BOX.IOU_NO_PLUS_ONE; needs only pairwise_iou
CLAUSE = "BOX.IOU_NO_PLUS_ONE"
NODEID = "test_boxes.py::test_iou_no_plus_one[{impl}]"

# A correct pairwise_iou (the spec formula: no +1, exactly 0 without overlap).
IOU = '''
import torch

def _iou(a, b):
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return torch.where(inter > 0, inter / (area_a[:, None] + area_b[None, :] - inter), torch.zeros_like(inter))
'''

GOOD_PORT = IOU + '''
def pairwise_iou(boxes1, boxes2):
    return _iou(boxes1, boxes2)
'''

# The first call marks that it started and blocks; later calls (the next tests) answer correctly.
BLOCKING_PORT = IOU + '''
import os, time

def pairwise_iou(boxes1, boxes2):
    marker = os.environ["DETSPEC_TEST_MARKER"]
    if not os.path.exists(marker):
        open(marker, "w").close()
        time.sleep(120)
    return _iou(boxes1, boxes2)
'''

CRASHING_PORT = '''
import os

def pairwise_iou(boxes1, boxes2):
    os._exit(1)
'''


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ, HYPOTHESIS_PROFILE="ci", HYPOTHESIS_STORAGE_DIRECTORY=str(tmp_path / ".hypothesis"),
               DETSPEC_TEST_MARKER=str(tmp_path / "started"))
    for name in ("PYTEST_ADDOPTS", "PYTEST_PLUGINS", "PYTEST_TIMEOUT"):
        env.pop(name, None)
    return env


def _cmd(impl: str, report: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "detspec.cli", "check", "--impl", impl, "--report", str(report), *extra]


def _port(tmp_path: Path, name: str, source: str) -> str:
    (tmp_path / f"{name}.py").write_text(source)
    return name


def _output(returncode: int, stdout: str, stderr: str) -> str:
    return f"exit {returncode}\n--- stdout\n{stdout[-6000:]}\n--- stderr\n{stderr[-3000:]}"


def _row(stdout: str, clause: str) -> str:
    """The table row of `clause` (the line that starts with its ID)."""
    rows = [line for line in stdout.splitlines() if line.startswith(clause + " ")]
    assert len(rows) == 1, f"no single table row for {clause}:\n{stdout[-3000:]}"
    return rows[0]


def _result(data: dict, clause: str, impl: str) -> dict:
    return data["clauses"][clause]["results"][impl]


def test_hanging_port_times_out_and_the_run_goes_on(tmp_path):
    """The hang is in a hypothesis test: the timeout must not let hypothesis re-run the hung example."""
    impl = _port(tmp_path, "hang_port", BLOCKING_PORT)
    report = tmp_path / "report.json"
    hung = "test_boxes.py::test_iou_range_and_symmetry[hang_port]"  # @given; clause BOX.IOU_RANGE
    after = "test_boxes.py::test_iou_matches_reference_float64[hang_port]"  # BOX.IOU_NO_PLUS_ONE, BOX.IOU_RANGE
    # the first test hangs in the port; the second (the port answers from then on) must still run and pass
    cmd = _cmd(impl, report, "--timeout", "2", "-k", "test_iou_range_and_symmetry or test_iou_matches_reference")
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    out = _output(proc.returncode, proc.stdout, proc.stderr)
    assert (tmp_path / "started").exists(), out
    assert proc.returncode == 1, out
    data = json.loads(report.read_text())
    result = _result(data, "BOX.IOU_RANGE", impl)
    assert result["status"] == "timeout", result
    assert sorted(t[:2] for t in result["tests"]) == sorted([[hung, "timeout"], [after, "passed"]]), result
    assert any("Timeout (>2s)" in t[2] for t in result["tests"]), result
    assert _result(data, CLAUSE, impl)["status"] == "pass"  # only the test that ran after the hang
    assert data["timeout"] == 2.0
    assert data["complete"] is True and data["interrupted"] is False, data["problems"]  # the run went on
    assert any_failed(data)
    row = _row(proc.stdout, "BOX.IOU_RANGE")
    assert "timeout" in row and "pass" not in row, row
    assert f"{hung} - error (timeout)" in proc.stdout, out
    assert "INCOMPLETE RUN" not in proc.stdout


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_run_is_incomplete_and_not_a_pass(tmp_path, sig):
    impl = _port(tmp_path, "blocking_port", BLOCKING_PORT)
    report = tmp_path / "report.json"
    marker = tmp_path / "started"
    stdout_path, stderr_path = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with open(stdout_path, "w") as stdout, open(stderr_path, "w") as stderr:
        proc = subprocess.Popen(_cmd(impl, report, "-k", TEST), cwd=tmp_path, env=_env(tmp_path),
                                stdout=stdout, stderr=stderr)
        try:
            deadline = time.monotonic() + 240  # a guard against a broken port, not a timing assertion
            while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert marker.exists(), _output(proc.poll(), stdout_path.read_text(), stderr_path.read_text())
            proc.send_signal(sig)
            returncode = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    out_text, err_text = stdout_path.read_text(), stderr_path.read_text()
    out = _output(returncode, out_text, err_text)
    assert returncode == 128 + sig, out  # 130 for SIGINT, 143 for SIGTERM
    # the report is written (atomically) even though the run was interrupted, and says so
    data = json.loads(report.read_text())
    assert data["complete"] is False and data["interrupted"] is True, data
    assert signal.Signals(sig).name in data["stop_reason"], data["stop_reason"]
    result = _result(data, CLAUSE, impl)
    assert result["status"] == "interrupted", result
    assert [t[:2] for t in result["tests"]] == [[NODEID.format(impl=impl), "interrupted"]], result
    assert not is_complete(data) and any_failed(data)
    # the partial table is printed, under the banner, with the clause as interrupted
    assert "INCOMPLETE RUN (" in out_text, out
    row = _row(out_text, CLAUSE)
    assert "interrupted" in row and "pass" not in row, row
    assert f"interrupted by {signal.Signals(sig).name}" in err_text, out


def test_crashed_xdist_worker_is_an_error(tmp_path):
    impl = _port(tmp_path, "crashing_port", CRASHING_PORT)
    report = tmp_path / "report.json"
    proc = subprocess.run(_cmd(impl, report, "-k", TEST, "--workers", "2"), cwd=tmp_path, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=300)
    out = _output(proc.returncode, proc.stdout, proc.stderr)
    assert proc.returncode == 1, out
    data = json.loads(report.read_text())
    result = _result(data, CLAUSE, impl)
    assert result["status"] == "error", result
    [(nodeid, outcome, reason)] = result["tests"]
    assert (nodeid, outcome) == (NODEID.format(impl=impl), "error"), result
    assert "crashed" in reason, reason
    row = _row(proc.stdout, CLAUSE)
    assert "error" in row and "pass" not in row, row
    assert f"{nodeid} - error: " in proc.stdout, out


def test_ambient_conftest_and_ini_of_the_cwd_are_not_used(tmp_path):
    """A conftest.py, an ini file with bad addopts and a test file in the port's folder play no part in the run."""
    impl = _port(tmp_path, "good_port", GOOD_PORT)
    ran = tmp_path / "CONFTEST_RAN"
    (tmp_path / "conftest.py").write_text(
        f"import pathlib\npathlib.Path({str(ran)!r}).write_text('imported')\n"
        "raise RuntimeError('the conftest.py of the current directory was imported')\n")
    (tmp_path / "pytest.ini").write_text("[pytest]\naddopts = --no-such-option-from-cwd-ini\n")
    (tmp_path / "tox.ini").write_text("[pytest]\naddopts = --no-such-option-from-cwd-tox\n")
    (tmp_path / "test_cwd.py").write_text(
        f"import pytest\n\n@pytest.mark.clause({CLAUSE!r})\ndef test_from_cwd():\n    raise AssertionError\n")
    report = tmp_path / "report.json"
    proc = subprocess.run(_cmd(impl, report, "-k", TEST), cwd=tmp_path, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=300)
    out = _output(proc.returncode, proc.stdout, proc.stderr)
    assert proc.returncode == 0, out
    assert not ran.exists(), out
    data = json.loads(report.read_text())
    result = _result(data, CLAUSE, impl)
    assert result["status"] == "pass", result
    assert [t[:2] for t in result["tests"]] == [[NODEID.format(impl=impl), "passed"]], result  # no test_cwd.py
    assert data["complete"] is True
    assert "pass" in _row(proc.stdout, CLAUSE)
    assert "no-such-option" not in proc.stdout + proc.stderr


# --- the report functions on hand-made results ---------------------------------------------------------------

@pytest.mark.parametrize("outcomes, status", [
    (["passed", "timeout"], "timeout"),
    (["passed", "error"], "error"),
    (["passed", "interrupted"], "interrupted"),
    (["interrupted"], "interrupted"),
    (["passed", "not run"], "incomplete"),
    (["not run"], "incomplete"),
    (["failed", "timeout", "interrupted"], "fail"),
    (["error", "timeout"], "error"),
    (["timeout", "interrupted", "not implemented"], "timeout"),
])
def test_unfinished_outcomes_are_failing_statuses(outcomes, status):
    assert aggregate(outcomes) == status
    report = {"spec_version": "x", "device": "cpu", "impls": ["a"], "clauses": {
        "BOX.AREA": {"text": "area", "source": "", "results": {"a": {
            "status": status, "tests": [[f"t::{i}", o, "why"] for i, o in enumerate(outcomes)]}}}}}
    assert any_failed(report)
    row = _row(format_table(report), "BOX.AREA")
    assert status in row and "pass" not in row, row


def test_incomplete_report_prints_a_banner():
    report = {"spec_version": "x", "device": "cpu", "impls": ["a"], "complete": False, "interrupted": True,
              "problems": ["the run stopped early: SIGTERM received", "1 clause test did not finish"],
              "unattributed": [], "clauses": {
                  "BOX.AREA": {"text": "area", "source": "", "results": {"a": {
                      "status": "interrupted", "tests": [["t::x", "interrupted", "started but did not finish"]]}}},
                  "BOX.CLIP": {"text": "clip", "source": "", "results": {"a": {
                      "status": "pass", "tests": [["t::y", "passed", ""]]}}}}}
    text = format_table(report)
    lines = text.splitlines()
    banner = "INCOMPLETE RUN (the run stopped early: SIGTERM received; 1 clause test did not finish)"
    assert lines[1].startswith(banner) and lines[-1].startswith(banner), text
    assert "t::x - interrupted: started but did not finish" in text
    assert "a: 1 pass, 0 fail, 0 partial, 0 not implemented, 0 skip, 1 interrupted" in text
    assert not is_complete(report) and any_failed(report)


def test_complete_report_has_no_banner_and_old_reports_read_as_complete():
    report = {"spec_version": "x", "device": "cpu", "impls": ["a"], "clauses": {
        "BOX.AREA": {"text": "area", "source": "",
                     "results": {"a": {"status": "pass", "tests": [["t", "passed", ""]]}}}}}
    assert is_complete(report) and not any_failed(report)
    assert "INCOMPLETE" not in format_table(report)
