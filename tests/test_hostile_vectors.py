"""Golden vectors are data, never code or paths outside the set (detspec/vectors/, issue 11 §3).

Each test copies the committed set (vectors/v1) to tmp_path, tampers with one thing, and runs
``detspec vectors check`` through detspec.cli.main: the set must be refused before the implementation is
touched, with exit code 2 and one stderr line that names the case (or the manifest) and the problem, no
traceback. The expected outcomes come from the rules of issue 11 §3, not from the code under test.
"""

from __future__ import annotations

import json
import shutil
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from detspec import cli
from detspec import vectors as V
from spec.contract import CONTRACT, PLANNED

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "vectors" / "v1"
CASE = "pairwise_iou__spec_values.npz"  # the first case of the set: component pairwise_iou, name spec_values
LABEL = "case pairwise_iou/spec_values"
PREFIX = "detspec vectors check: "


@pytest.fixture
def vset(tmp_path: Path) -> Path:
    out = tmp_path / "set"
    shutil.copytree(COMMITTED, out)
    return out


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A valid case file outside the set: a path that reaches it must be refused although it would load."""
    folder = tmp_path / "outside"
    folder.mkdir()
    shutil.copy(COMMITTED / CASE, folder / CASE)
    return folder / CASE


def _manifest(vset: Path) -> dict:
    return json.loads((vset / "manifest.json").read_text())


def _edit(vset: Path, change: Callable[[dict], object]) -> None:
    manifest = _manifest(vset)
    change(manifest)
    (vset / "manifest.json").write_text(json.dumps(manifest))


def _first(manifest: dict) -> dict:
    entry = manifest["cases"][0]
    assert (entry["component"], entry["name"], entry["file"]) == ("pairwise_iou", "spec_values", CASE)
    return entry


def _refused(vset: Path, capsys, *needles: str, impl: str = "reference") -> str:
    """Run the check; assert exit 2 and one stderr line holding every needle, no traceback, no table."""
    capsys.readouterr()
    rc = cli.main(["vectors", "check", str(vset), "--impl", impl])
    captured = capsys.readouterr()
    err = captured.err
    assert rc == 2, (rc, captured.out, err)
    assert "Traceback" not in err and "Traceback" not in captured.out
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(PREFIX), err
    for needle in needles:
        assert needle in lines[0], (needle, err)
    assert "pass, " not in captured.out  # no result table: nothing was checked
    return lines[0]


def _rewrite_npz(path: Path, **arrays: np.ndarray) -> None:
    np.savez(path, **arrays)  # np.savez pickles object arrays (allow_pickle defaults to True when saving)


def _arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


# ------------------------------------------------------------------------------------------------ paths
def test_absolute_path_is_refused(vset, outside, capsys):
    _edit(vset, lambda m: _first(m).update(file=str(outside)))
    _refused(vset, capsys, LABEL, "absolute path", str(outside))


def test_dotdot_path_is_refused(vset, outside, capsys):
    rel = f"../outside/{CASE}"
    assert (vset / rel).is_file()  # it would load
    _edit(vset, lambda m: _first(m).update(file=rel))
    _refused(vset, capsys, LABEL, "'..'")


def test_dotdot_inside_a_path_is_refused(vset, capsys):
    # "sub/../x.npz" stays inside the set once normalised, but the rule is simple: no ".." at all
    (vset / "sub").mkdir()
    _edit(vset, lambda m: _first(m).update(file=f"sub/../{CASE}"))
    _refused(vset, capsys, LABEL, "'..'")


def test_symlink_out_of_the_set_is_refused(vset, outside, capsys):
    (vset / "link.npz").symlink_to(outside)
    _edit(vset, lambda m: _first(m).update(file="link.npz"))
    _refused(vset, capsys, LABEL, "outside the vector set")


def test_symlinked_directory_out_of_the_set_is_refused(vset, outside, capsys):
    (vset / "sub").symlink_to(outside.parent, target_is_directory=True)
    _edit(vset, lambda m: _first(m).update(file=f"sub/{CASE}"))
    _refused(vset, capsys, LABEL, "outside the vector set")


def test_symlink_inside_the_set_is_accepted(vset, capsys):
    # a link that stays inside the set is data like any other file
    (vset / "alias.npz").symlink_to(vset / CASE)
    _edit(vset, lambda m: _first(m).update(file="alias.npz"))
    assert cli.main(["vectors", "check", str(vset), "--impl", "reference"]) == 0
    assert "20 pass, 0 fail" in capsys.readouterr().out


def test_missing_file_is_refused(vset, capsys):
    _edit(vset, lambda m: _first(m).update(file="nope.npz"))
    _refused(vset, capsys, LABEL, "does not exist")


def test_export_never_deletes_outside_the_set(tmp_path, capsys):
    """A re-export removes the earlier set's stale case files; a hostile old manifest must not aim that at
    files outside the set (absolute, '..') or at non-.npz files."""
    victim = tmp_path / "victim.npz"
    victim.write_bytes(b"keep me")
    out = tmp_path / "set"
    out.mkdir()
    shutil.copy(COMMITTED / "manifest.json", out / "manifest.json")
    (out / "notes.txt").write_text("keep me too")
    hostile = [{"file": str(victim)}, {"file": "../victim.npz"}, {"file": "notes.txt"}]
    _edit(out, lambda m: m["cases"].extend(hostile))
    assert cli.main(["vectors", "export", str(out)]) == 0  # same seed and version: a re-export
    assert victim.read_bytes() == b"keep me"
    assert (out / "notes.txt").read_text() == "keep me too"


# ------------------------------------------------------------------------------------------------ components
PORT_WITH_SUBPROCESS = '''
import subprocess
from subprocess import run

from fast import box_area, pairwise_iou
'''


@pytest.fixture
def subprocess_port(tmp_path):
    path = tmp_path / "hostile_vectors_port.py"
    path.write_text(PORT_WITH_SUBPROCESS)
    yield str(path)
    sys.modules.pop("hostile_vectors_port", None)


@pytest.mark.parametrize("component", ["subprocess.run", "run", "subprocess", "__import__", "eval",
                                       "subsample_labels"])
def test_non_contract_component_is_refused_and_nothing_runs(vset, tmp_path, subprocess_port, component, capsys):
    """The port's namespace has ``run`` (subprocess.run) and ``subprocess``; a case naming them must not call
    them. The case's value argument is a command that would create the marker file if it ran.
    subsample_labels is a contract name but random: the format has no golden output for it."""
    marker = tmp_path / "marker"
    command = [sys.executable, "-c", f"open({str(marker)!r}, 'w').close()"]

    def change(m: dict) -> None:
        entry = _first(m)
        entry.update(component=component, name="pwn", args=[{"name": "args", "value": command}], kwargs={})
        m["components"].append(component)

    _edit(vset, change)
    line = _refused(vset, capsys, f"case {component}/pwn", repr(component), "not a contract component",
                    impl=subprocess_port)
    assert "nothing was run" in line
    assert not marker.exists()


def test_components_list_with_a_non_contract_name_is_refused(vset, capsys):
    _edit(vset, lambda m: m["components"].append("os.system"))
    _refused(vset, capsys, "manifest.json", "'os.system'", "not a contract component")


def test_supported_components_are_contract_names():
    assert V.COMPONENTS, V.COMPONENTS
    for name in V.COMPONENTS:
        assert name in CONTRACT or name in PLANNED, name


# ------------------------------------------------------------------------------------------------ manifest shape
def test_case_with_no_outputs_is_invalid(vset, capsys):
    _edit(vset, lambda m: _first(m).update(outputs=[]))
    _refused(vset, capsys, LABEL, "no outputs")


def test_component_without_cases_is_invalid(vset, capsys):
    # a listed component with no case would otherwise count as "pass" with nothing checked
    _edit(vset, lambda m: m.update(cases=[c for c in m["cases"] if c["component"] != "box_area"]))
    _refused(vset, capsys, "manifest.json", "box_area", "no case")


def test_non_json_manifest(vset, capsys):
    (vset / "manifest.json").write_text('{"format": "detspec-vectors", "cases": [')
    _refused(vset, capsys, "manifest.json", "not valid JSON")


def test_manifest_that_is_a_list(vset, capsys):
    (vset / "manifest.json").write_text(json.dumps([_manifest(vset)]))
    _refused(vset, capsys, "manifest.json", "list", "not an object")


def test_deeply_nested_manifest(vset, capsys):
    (vset / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    _refused(vset, capsys, "manifest.json")


def test_manifest_without_cases(vset, capsys):
    _edit(vset, lambda m: m.pop("cases"))
    _refused(vset, capsys, "manifest.json", '"cases"')


def test_manifest_with_no_cases(vset, capsys):
    _edit(vset, lambda m: m.update(cases=[]))
    _refused(vset, capsys, "manifest.json", '"cases"', "non-empty")


@pytest.mark.parametrize("change, needles", [
    (lambda e: e.pop("outputs"), ('"outputs"',)),
    (lambda e: e.pop("file"), ('"file"',)),
    (lambda e: e.update(file=7), ('"file"',)),
    (lambda e: e.update(args={"boxes1": "in.boxes1"}), ('"args"', "list")),
    (lambda e: e.update(kwargs=[]), ('"kwargs"',)),
    (lambda e: e["args"][0].update(value=1), ("argument 0", "exactly one")),
    (lambda e: e["args"][0].update(array=["in.boxes1"]), ("argument 0", '"array"')),
    (lambda e: e["outputs"][0].update(rule={"kind": "whatever"}), ("output iou", '"rule"')),
    (lambda e: e["outputs"][0].update(rule={"kind": "close", "rtol": "1", "atol": 0}), ("output iou", "rtol")),
    (lambda e: e["outputs"][0].pop("path"), ("output iou", '"path"')),
    (lambda e: e["outputs"][0].update(shape="2x4"), ("output iou", '"shape"')),
    (lambda e: e.update(result_length=-1), ('"result_length"',)),
], ids=["no-outputs-key", "no-file", "file-int", "args-dict", "kwargs-list", "arg-two-kinds", "array-list",
        "rule-kind", "rule-tolerance", "no-path", "shape-str", "result-length"])
def test_case_with_missing_keys_or_wrong_types(vset, capsys, change, needles):
    _edit(vset, lambda m: change(_first(m)))
    _refused(vset, capsys, LABEL, *needles)


def test_case_that_is_not_an_object(vset, capsys):
    _edit(vset, lambda m: m["cases"].insert(0, "pairwise_iou__spec_values.npz"))
    _refused(vset, capsys, "case #0", "not an object")


def test_duplicate_case(vset, capsys):
    _edit(vset, lambda m: m["cases"].insert(1, dict(_first(m))))
    _refused(vset, capsys, LABEL, "twice")


# ------------------------------------------------------------------------------------------------ npz files
def test_missing_npz_array(vset, capsys):
    arrays = _arrays(vset / CASE)
    del arrays["in.boxes1"]
    _rewrite_npz(vset / CASE, **arrays)
    _refused(vset, capsys, LABEL, "'in.boxes1'", "missing")


def test_missing_expected_output_array(vset, capsys):
    arrays = _arrays(vset / CASE)
    del arrays["out.iou"]
    _rewrite_npz(vset / CASE, **arrays)
    _refused(vset, capsys, LABEL, "'out.iou'", "missing")


def test_truncated_npz(vset, capsys):
    data = (vset / CASE).read_bytes()
    (vset / CASE).write_bytes(data[: len(data) // 2])
    _refused(vset, capsys, LABEL, CASE, "truncated or corrupt")


def test_corrupt_npz_member(vset, capsys):
    # keep the zip directory intact but damage the compressed bytes of the first member: a CRC / inflate error
    path = vset / CASE
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.infolist()[0]
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)  # local header is 30 bytes
    for i in range(start, start + info.compress_size):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    _refused(vset, capsys, LABEL, CASE, "truncated or corrupt")


def test_not_a_zip(vset, capsys):
    np.save(vset / "plain.npy", np.zeros(3))
    shutil.move(vset / "plain.npy", vset / CASE)  # a bare .npy under the .npz name
    _refused(vset, capsys, LABEL, CASE, "truncated or corrupt")


def test_object_array_npz(vset, tmp_path, capsys):
    arrays = _arrays(vset / CASE)
    arrays["in.boxes1"] = np.array([{"a": 1}, None], dtype=object)
    _rewrite_npz(vset / CASE, **arrays)
    _refused(vset, capsys, LABEL, CASE, "object (pickled) arrays")


def test_string_array_npz(vset, capsys):
    arrays = _arrays(vset / CASE)
    arrays["in.boxes1"] = np.array(["0", "0", "10", "10"])
    _rewrite_npz(vset / CASE, **arrays)
    _refused(vset, capsys, LABEL, "'in.boxes1'", "dtype")


def test_npz_member_that_is_not_an_array(vset, capsys):
    with zipfile.ZipFile(vset / CASE, "a") as zf:
        zf.writestr("in.extra.npy", b"not an npy file")
    _refused(vset, capsys, LABEL, "'in.extra'", "not a .npy array")


def test_expected_output_with_the_wrong_dtype(vset, capsys):
    arrays = _arrays(vset / CASE)
    arrays["out.iou"] = arrays["out.iou"].astype(np.float32)  # the manifest says float64
    _rewrite_npz(vset / CASE, **arrays)
    _refused(vset, capsys, LABEL, "'out.iou'", "float32", "float64")


def test_expected_output_with_the_wrong_shape(vset, capsys):
    arrays = _arrays(vset / CASE)
    arrays["out.iou"] = arrays["out.iou"][:1]  # the manifest says [2, 4]
    _rewrite_npz(vset / CASE, **arrays)
    _refused(vset, capsys, LABEL, "'out.iou'", "[1, 4]", "[2, 4]")


def test_untampered_copy_passes(vset, capsys):
    # the control: the copy itself is a valid set, so each refusal above comes from its one change
    assert cli.main(["vectors", "check", str(vset), "--impl", "reference"]) == 0
    assert "20 pass, 0 fail, 0 not implemented" in capsys.readouterr().out
