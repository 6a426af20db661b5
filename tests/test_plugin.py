"""The conformance plugin and report, exercised on small throw-away suites with pytester."""

from __future__ import annotations

import json

import pytest

from detspec.plugin import aggregate
from detspec.report import format_table

PORT = '''
import torch

def pairwise_iou(boxes1, boxes2):
    return torch.zeros(boxes1.shape[0], boxes2.shape[0])
'''

SUITE = '''
import pytest, torch

@pytest.mark.clause("BOX.IOU_RANGE")
def test_iou_shape(impl):
    assert impl.pairwise_iou(torch.zeros(2, 4), torch.zeros(3, 4)).shape == (2, 3)

@pytest.mark.clause("BOX.IOU_NO_PLUS_ONE")
def test_iou_value(impl):
    iou = impl.pairwise_iou(torch.tensor([[0., 0, 10, 10]]), torch.tensor([[5., 0, 15, 10]]))
    assert abs(float(iou[0, 0]) - 1 / 3) < 1e-6

@pytest.mark.clause("NMS.STRICT")
def test_nms(impl):
    impl.nms(torch.zeros(0, 4), torch.zeros(0), 0.5)

@pytest.mark.clause("BOX.AREA")
def test_area_used_inside_test(impl):
    impl.require("box_area")
'''


def _run(pytester: pytest.Pytester, *args: str) -> tuple[pytest.RunResult, dict]:
    pytester.makepyfile(myport=PORT, test_suite=SUITE)
    report = pytester.path / "report.json"
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", f"--clause-report={report}", *args)
    data = json.loads(report.read_text()) if report.exists() else {}
    return result, data


def _status(data: dict, cid: str, impl: str) -> str:
    return data["clauses"][cid]["results"][impl]["status"]


def test_port_gaps_are_not_implemented_and_wrong_values_fail(pytester):
    result, data = _run(pytester, "--impl", "myport", "--impl", "reference")
    result.assert_outcomes(passed=5, failed=1, skipped=2)
    assert data["impls"] == ["myport", "reference"]
    assert _status(data, "BOX.IOU_RANGE", "myport") == "pass"
    assert _status(data, "BOX.IOU_NO_PLUS_ONE", "myport") == "fail"  # it returns zeros
    assert _status(data, "NMS.STRICT", "myport") == "not implemented"  # checked before the test runs
    assert _status(data, "BOX.AREA", "myport") == "not implemented"  # raised inside the test by require()
    assert data["clauses"]["NMS.STRICT"]["results"]["myport"]["tests"][0][2] == "nms"
    assert all(_status(data, c, "reference") == "pass"
               for c in ("BOX.IOU_RANGE", "BOX.IOU_NO_PLUS_ONE", "NMS.STRICT", "BOX.AREA"))
    assert _status(data, "MATCH.EXAMPLE", "reference") == "untested"


def test_module_attribute_form_and_env_default(pytester, monkeypatch):
    pytester.makepyfile(holder="import myport\nclass Ns:\n    pairwise_iou = staticmethod(myport.pairwise_iou)\n")
    monkeypatch.setenv("DETSPEC_IMPL", "holder:Ns")
    result, data = _run(pytester)
    assert data["impls"] == ["holder:Ns"]
    assert _status(data, "BOX.IOU_RANGE", "holder:Ns") == "pass"


def test_unknown_impl_is_a_usage_error(pytester):
    result, _ = _run(pytester, "--impl", "no_such_module_xyz")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*cannot import port module 'no_such_module_xyz'*"])


def test_unknown_clause_is_a_usage_error(pytester):
    pytester.makepyfile(test_bad='import pytest\n@pytest.mark.clause("BOX.NOT_A_CLAUSE")\ndef test_x(): pass\n')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*BOX.NOT_A_CLAUSE*"])


def test_cuda_device_without_gpu_is_a_usage_error(pytester):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    result, _ = _run(pytester, "--device", "cuda")
    assert result.ret == pytest.ExitCode.USAGE_ERROR


def test_report_survives_xdist(pytester):
    result, data = _run(pytester, "--impl", "myport", "-n", "2")
    assert _status(data, "BOX.IOU_NO_PLUS_ONE", "myport") == "fail"
    assert _status(data, "NMS.STRICT", "myport") == "not implemented"


def test_clause_table(pytester):
    result, _ = _run(pytester, "--impl", "myport", "--clause-table")
    result.stdout.fnmatch_lines(["*BOX.IOU_NO_PLUS_ONE*fail*", "*NMS.STRICT*not implemented*",
                                 "myport: 1 pass, 1 fail, 0 partial, 2 not implemented, 0 skip"])


@pytest.mark.parametrize("outcomes, status", [
    ([], "untested"),
    (["passed", "failed"], "fail"),
    (["passed", "not implemented"], "partial"),
    (["not implemented", "skipped"], "not implemented"),
    (["passed", "skipped"], "pass"),
    (["skipped"], "skip"),
])
def test_aggregate(outcomes, status):
    assert aggregate(outcomes) == status


def test_format_table_lists_untested_and_failures():
    report = {"spec_version": "x", "device": "cpu", "impls": ["a"], "clauses": {
        "BOX.AREA": {"text": "area", "source": "",
                     "results": {"a": {"status": "fail", "tests": [["t::x", "failed", ""]]}}},
        "BOX.CLIP": {"text": "clip", "source": "", "results": {"a": {"status": "untested", "tests": []}}},
    }}
    text = format_table(report)
    assert "BOX.AREA" in text and "t::x" in text
    assert "1 clauses were not checked (no test of them ran): BOX.CLIP" in text


ERROR_SUITE = '''
import pytest, torch

@pytest.fixture
def broken_setup():
    raise RuntimeError("setup broke")

@pytest.fixture
def broken_teardown():
    yield
    raise RuntimeError("teardown broke")

@pytest.mark.clause("BOX.IOU_RANGE")
def test_setup_error(impl, broken_setup):
    impl.pairwise_iou(torch.zeros(1, 4), torch.zeros(1, 4))

@pytest.mark.clause("BOX.IOU_NO_PLUS_ONE")
def test_teardown_error(impl, broken_teardown):
    impl.pairwise_iou(torch.zeros(1, 4), torch.zeros(1, 4))  # passes; its teardown fails

@pytest.mark.clause("BOX.IOU_NO_PLUS_ONE")
def test_passes(impl):
    impl.pairwise_iou(torch.zeros(1, 4), torch.zeros(1, 4))
'''


def test_setup_and_teardown_errors_are_errors_not_passes(pytester):
    pytester.makepyfile(myport=PORT, test_errors=ERROR_SUITE)
    report = pytester.path / "report.json"
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", f"--clause-report={report}", "--impl", "myport")
    result.assert_outcomes(passed=2, errors=2)
    data = json.loads(report.read_text())
    assert data["complete"] is True and data["interrupted"] is False
    assert _status(data, "BOX.IOU_RANGE", "myport") == "error"
    assert _status(data, "BOX.IOU_NO_PLUS_ONE", "myport") == "error"  # one passed test does not make it a pass
    outcomes = {t[0].split("::")[-1]: (t[1], t[2]) for t in
                data["clauses"]["BOX.IOU_NO_PLUS_ONE"]["results"]["myport"]["tests"]}
    assert outcomes["test_teardown_error[myport]"][0] == "error"
    assert "teardown failed" in outcomes["test_teardown_error[myport]"][1]
    assert outcomes["test_passes[myport]"] == ("passed", "")


def test_tests_that_never_ran_make_the_clause_incomplete(pytester):
    """-x stops the run after the first failure: the clause whose test never ran is "incomplete", not untested."""
    result, data = _run(pytester, "--impl", "myport", "-x", "-p", "no:randomly")
    # test_suite.py runs in file order: test_iou_shape passes, test_iou_value fails, then the run stops
    assert _status(data, "BOX.IOU_RANGE", "myport") == "pass"
    assert _status(data, "BOX.IOU_NO_PLUS_ONE", "myport") == "fail"
    assert _status(data, "NMS.STRICT", "myport") == "incomplete"
    assert _status(data, "BOX.AREA", "myport") == "incomplete"
    assert data["complete"] is False and data["interrupted"] is False
    assert data["stop_reason"] == "stopping after 1 failures"
    assert any("did not run" in p for p in data["problems"]), data["problems"]


@pytest.mark.parametrize("threads", ["1", "2"])
def test_torch_threads_pinned_by_the_sweep_variable(pytester: pytest.Pytester, monkeypatch, threads):
    """DETSPEC_TORCH_THREADS (scripts/determinism_sweep.sh) sets torch's intra-op thread count for the run."""
    monkeypatch.setenv("DETSPEC_TORCH_THREADS", threads)
    pytester.makepyfile(test_threads=f"import torch\n\ndef test_threads():\n"
                                     f"    assert torch.get_num_threads() == {threads}\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:xdist")
    result.assert_outcomes(passed=1)


def test_bad_torch_threads_value_is_a_usage_error(pytester: pytest.Pytester, monkeypatch):
    monkeypatch.setenv("DETSPEC_TORCH_THREADS", "two")
    pytester.makepyfile(test_nothing="def test_nothing():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*DETSPEC_TORCH_THREADS must be a positive integer*"])
