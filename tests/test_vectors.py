"""Golden vectors (detspec/vectors/, vectors/v1): export, check, and the committed set.

- reference and fast pass every case of the committed set;
- a port with the legacy "+1" IoU fails exactly the components that use it, a partial port reports
  "not implemented" for the rest (and does not fail), and the exit codes follow ``detspec check``'s;
- export is deterministic (byte-identical files), and the committed set equals a fresh export. The arrays of a
  fresh export are compared exactly except the float64 oracle outputs, which are compared within 1e-9 relative:
  another torch build may round the last bits of exp/log/sqrt differently, far below the float32 tolerances a
  port is held to. The manifest must be equal except "generated_with" (the torch/numpy versions).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from detspec import vectors as V
from detspec.commands import vectors as vectors_command
from detspec.vectors import exporter
from spec.contract import CONTRACT

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "vectors" / "v1"
REEXPORT = "re-export with: .venv/bin/python -m detspec.vectors export vectors/v1"

# A port that is fast everywhere except pairwise_iou, which has the legacy "+1" in widths and heights
# (detectron1 / py-faster-rcnn), and iou_match, which is built on that pairwise_iou.
BROKEN_PORT = '''
import fast as _fast
from fast import match

globals().update({{name: getattr(_fast, name) for name in {names!r}}})


def pairwise_iou(boxes1, boxes2):
    area1 = (boxes1[:, 2] - boxes1[:, 0] + 1) * (boxes1[:, 3] - boxes1[:, 1] + 1)
    area2 = (boxes2[:, 2] - boxes2[:, 0] + 1) * (boxes2[:, 3] - boxes2[:, 1] + 1)
    w = (boxes1[:, None, 2].minimum(boxes2[None, :, 2]) - boxes1[:, None, 0].maximum(boxes2[None, :, 0]) + 1)
    h = (boxes1[:, None, 3].minimum(boxes2[None, :, 3]) - boxes1[:, None, 1].maximum(boxes2[None, :, 1]) + 1)
    inter = w.clamp(min=0) * h.clamp(min=0)
    return inter / (area1[:, None] + area2[None, :] - inter)


def iou_match(gt_boxes, boxes, thresholds, labels, allow_low_quality_matches):
    return match(pairwise_iou(gt_boxes, boxes), thresholds, labels, allow_low_quality_matches)
'''

PARTIAL_PORT = '''
from fast import box_area, nms
'''


def _write_port(tmp_path: Path, name: str, source: str) -> str:
    path = tmp_path / f"{name}.py"
    path.write_text(source)
    return str(path)


@pytest.fixture
def port_modules():
    """Ports imported from a file are registered in sys.modules under their stem; drop them afterwards."""
    yield
    for name in ("broken_port", "partial_port"):
        sys.modules.pop(name, None)


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("vectors") / "v1"
    V.export(out)
    return out


def _cli(argv: list[str]) -> int:
    """`detspec vectors ...` through a throwaway parser (cli.py wires the same add_parser)."""
    parser = argparse.ArgumentParser(prog="detspec")
    vectors_command.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["vectors", *argv])
    return args.func(args)


# ------------------------------------------------------------------------------------------------ coverage
def test_manifest_covers_the_contract():
    manifest = json.loads((COMMITTED / "manifest.json").read_text())
    assert manifest["format"] == V.FORMAT and manifest["format_version"] == V.FORMAT_VERSION
    expected = [n for n in CONTRACT if n not in ("subsample_labels", "sample_rois")] + ["select_proposals",
                                                                                          "rpn_losses"]
    assert manifest["components"] == expected
    assert set(manifest["skipped"]) == {"subsample_labels", "sample_rois"}
    for component in expected:
        sources = {c["source"] for c in manifest["cases"] if c["component"] == component}
        assert sources == {"spec", "oracle"}, component  # a known-value case and a random one each
    assert manifest["spec"]["version"] and len(manifest["spec"]["config_sha256"]) == 64
    assert {"torch", "numpy"} <= set(manifest["generated_with"])
    size = sum(p.stat().st_size for p in COMMITTED.iterdir())
    assert size < 300_000, size  # small enough to commit


# ------------------------------------------------------------------------------------------------ check
@pytest.mark.parametrize("impl_name", ["reference", "fast"])
def test_builtin_implementations_pass_the_committed_set(impl_name):
    report = V.check(COMMITTED, impl_name)
    bad = {c: (r.status, r.detail) for c, r in report.components.items() if r.status != "pass"}
    assert not bad, bad
    assert not report.failed


def test_broken_port_fails_exactly_the_affected_components(tmp_path, port_modules, capsys):
    names = [n for n in V.COMPONENTS if n not in ("pairwise_iou", "iou_match")]
    port = _write_port(tmp_path, "broken_port", BROKEN_PORT.format(names=names))
    report = V.check(COMMITTED, port)
    failed = {c for c, r in report.components.items() if r.status == "fail"}
    assert failed == {"pairwise_iou", "iou_match"}, {c: r.detail for c, r in report.components.items()}
    assert all(r.status == "pass" for c, r in report.components.items() if c not in failed)
    # the known-value case catches it: IoU((0,0,10,10), (5,0,15,10)) is 1/3, (11 * 6) / (121 + 121 - 66) with +1
    spec_case = next(c for c in report.components["pairwise_iou"].cases if c.name == "spec_values")
    assert spec_case.status == "fail" and "iou" in spec_case.detail

    assert _cli(["check", str(COMMITTED), "--impl", port]) == 1
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("pairwise_iou"))
    assert "FAIL" in row and "max error" in row
    assert f"{len(V.COMPONENTS) - 2} pass, 2 fail, 0 not implemented" in out


def test_partial_port_reports_not_implemented(tmp_path, port_modules, capsys):
    port = _write_port(tmp_path, "partial_port", PARTIAL_PORT)
    report = V.check(COMMITTED, port)
    statuses = {c: r.status for c, r in report.components.items()}
    assert statuses.pop("box_area") == "pass" and statuses.pop("nms") == "pass"
    assert set(statuses.values()) == {"not implemented"}
    assert not report.failed
    assert _cli(["check", str(COMMITTED), "--impl", port]) == 0
    out = capsys.readouterr().out
    assert "2 pass, 0 fail, 18 not implemented" in out


def test_usage_errors_exit_2(tmp_path, capsys):
    assert _cli(["check", str(tmp_path / "missing"), "--impl", "reference"]) == 2
    manifest = json.loads((COMMITTED / "manifest.json").read_text())
    manifest["format_version"] = V.FORMAT_VERSION + 1
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert _cli(["check", str(tmp_path), "--impl", "reference"]) == 2
    assert "format version" in capsys.readouterr().err
    assert _cli(["check", str(COMMITTED), "--impl", "no_such_port_module"]) == 2
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("not a vector set")
    assert _cli(["export", str(tmp_path / "other")]) == 2  # refuses to write into an unrelated folder
    err = capsys.readouterr().err
    assert "holds no manifest.json" in err and "--force" in err, err
    assert (tmp_path / "other" / "notes.txt").read_text() == "not a vector set"


def test_compare_rules():
    e = np.array([1.0, -np.inf, 3.0])
    rule = {"kind": "close", "rtol": 1e-6, "atol": 1e-5}
    assert V.compare(np.array([1.0 + 5e-6, -np.inf, 3.0], np.float32), e, rule)[0]
    assert not V.compare(np.array([1.0, np.inf, 3.0]), e, rule)[0]  # non-finite values must match
    ok, err, msg = V.compare(np.array([1.0, -np.inf, 3.1]), e, rule)
    assert not ok and err == pytest.approx(0.1) and "max error" in msg
    assert not V.compare(np.zeros(2), np.zeros(3), rule)[0]  # shape
    assert V.compare(np.array([2, 0, 1]), np.array([0, 1, 2]), {"kind": "set"})[0]
    assert not V.compare(np.array([2, 0, 1]), np.array([0, 1, 2]), {"kind": "exact"})[0]
    assert V.compare(np.array([True, False]), np.array([True, False]), {"kind": "exact"})[0]


# ------------------------------------------------------------------------------------------------ export
def test_export_is_deterministic(fresh, tmp_path):
    again = tmp_path / "again"
    assert _cli(["export", str(again)]) == 0
    files = sorted(p.name for p in fresh.iterdir())
    assert files == sorted(p.name for p in again.iterdir())
    for name in files:
        assert (fresh / name).read_bytes() == (again / name).read_bytes(), name


def test_committed_set_equals_a_fresh_export(fresh):
    committed = json.loads((COMMITTED / "manifest.json").read_text())
    new = json.loads((fresh / "manifest.json").read_text())
    committed.pop("generated_with")
    new.pop("generated_with")
    if committed["spec"] != new["spec"]:
        pytest.fail(f"the spec config changed since vectors/v1 was exported ({committed['spec']} -> "
                    f"{new['spec']}); {REEXPORT}")
    assert committed == new, f"vectors/v1/manifest.json is stale; {REEXPORT}"
    assert sorted(p.name for p in COMMITTED.glob("*.npz")) == sorted(p.name for p in fresh.glob("*.npz"))
    for case in new["cases"]:
        old, cur = V.load_case(COMMITTED, case), V.load_case(fresh, case)
        assert sorted(old) == sorted(cur), case["file"]
        for key in cur:
            a, b = old[key], cur[key]
            assert a.dtype == b.dtype and a.shape == b.shape, (case["file"], key, REEXPORT)
            if key.startswith("out.") and b.dtype.kind == "f":
                np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12, err_msg=f"{case['file']} {key}; {REEXPORT}")
            else:
                np.testing.assert_array_equal(a, b, err_msg=f"{case['file']} {key}; {REEXPORT}")


def test_export_refuses_another_set_without_force(tmp_path, capsys):
    """A non-empty DIR that is not an earlier set of this format and seed is never silently replaced."""
    other = tmp_path / "other_seed"
    assert _cli(["export", str(other), "--seed", "7"]) == 0
    before = {p.name: p.read_bytes() for p in other.iterdir()}
    capsys.readouterr()
    assert _cli(["export", str(other)]) == 2  # the default seed is another set
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "seed 7" in err and "--force" in err, err
    assert {p.name: p.read_bytes() for p in other.iterdir()} == before  # nothing written
    assert _cli(["export", str(other), "--force"]) == 0
    assert json.loads((other / "manifest.json").read_text())["seed"] == V.DEFAULT_SEED
    assert V.check(other, "reference").failed is False

    unrelated = tmp_path / "unrelated"
    unrelated.mkdir()
    (unrelated / "notes.txt").write_text("mine")
    assert _cli(["export", str(unrelated)]) == 2
    assert "--force" in capsys.readouterr().err
    assert _cli(["export", str(unrelated), "--force"]) == 0
    assert (unrelated / "notes.txt").read_text() == "mine"  # other files are left alone

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("[1, 2")
    assert _cli(["export", str(broken)]) == 2
    assert "not a readable" in capsys.readouterr().err


def test_reexport_of_the_same_set_replaces_it_and_removes_stale_cases(fresh, tmp_path):
    """Regenerating a set in place (the vectors/v1 workflow) needs no --force; the earlier set's case files
    the new one does not write are removed, a README is kept, and no temporary file is left behind."""
    out = tmp_path / "v1"
    shutil.copytree(fresh, out)
    manifest = json.loads((out / "manifest.json").read_text())
    stale = dict(manifest["cases"][0], name="gone", file="pairwise_iou__gone.npz")
    manifest["cases"].append(stale)
    (out / "manifest.json").write_text(json.dumps(manifest))
    shutil.copy(out / manifest["cases"][0]["file"], out / stale["file"])
    (out / "README.md").write_text("notes")
    assert _cli(["export", str(out)]) == 0
    assert not (out / stale["file"]).exists()
    assert (out / "README.md").read_text() == "notes"
    assert sorted(p.name for p in out.iterdir()) == sorted([*(p.name for p in fresh.iterdir()), "README.md"])
    assert (out / "manifest.json").read_bytes() == (fresh / "manifest.json").read_bytes()


def test_interrupted_export_leaves_no_partial_file(fresh, tmp_path, monkeypatch):
    """Files are written atomically: a failure half-way leaves each file as it was (here: the earlier set's
    manifest untouched) and no temporary files."""
    out = tmp_path / "v1"
    shutil.copytree(fresh, out)
    before = (out / "manifest.json").read_bytes()
    real, calls = exporter._npz_bytes, []

    def failing(arrays):
        calls.append(1)
        if len(calls) == 5:
            raise OSError("disk full (simulated)")
        return real(arrays)

    monkeypatch.setattr(exporter, "_npz_bytes", failing)
    with pytest.raises(OSError, match="simulated"):
        V.export(out)
    assert (out / "manifest.json").read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in fresh.iterdir())  # no .tmp files
    assert V.check(out, "reference").failed is False
