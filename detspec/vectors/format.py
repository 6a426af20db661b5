"""The golden-vector file format: what a set holds on disk, and reading and validating it.

The set (``vectors/v1`` in the repository, well under 1 MB) covers every component of spec.contract.CONTRACT
except the random ones (subsample_labels, sample_rois: see SKIPPED), plus select_proposals and rpn_losses.

Each case is one .npz file of plain arrays:

- ``in.<arg>`` an array argument; ``in.<arg>.<i>`` item i of an argument that is a list of arrays;
- ``out.<name>`` an expected output.

manifest.json lists, per case, the positional arguments in order (each one an npz array, a list of npz arrays,
or a JSON value), the keyword arguments (JSON; a JSON array stands for a tuple), and for each output its name,
npz key, where it sits in the function's return value (``path``: list/tuple indices and dict keys), and its
comparison rule:

- ``exact``: indices, labels, keep-masks: same shape and the same values;
- ``set``: the same values in any order (only where the spec leaves the order open, e.g. tied NMS scores);
- ``close``: same shape, |actual - expected| <= atol + rtol * |expected| elementwise (rtol/atol from
  spec.tolerances.tolerance(component, float32)); non-finite expected values must be matched exactly.

Floating inputs are float32: the port gets float32 and is held to float32 tolerances. Expected outputs are
float64: those of ``source: "spec"`` cases are written from the spec (spec_cases.py: d2-spec §2-§3, a hand
derivation in a comment); ``source: "oracle"`` cases (seeded_cases.py) hold the reference implementation's
output computed in float64 on the float32-rounded inputs. Random inputs come from numpy's PCG64 generator
seeded by (seed, crc32(case id)).

A set is data, never code: ``check`` validates the whole manifest and every case's .npz before it calls the
implementation once, and refuses (exit 2, one line naming the case and the problem) a set where

- the manifest is not JSON, not an object, or lacks a key or has one of the wrong type;
- a case names a component outside the supported contract names (COMPONENTS: spec.contract.CONTRACT less the
  random ones, plus select_proposals and rpn_losses); nothing is looked up or called for it;
- a case's ``file`` is absolute, contains ``..``, or resolves (symlinks followed) outside DIR, or is not a
  regular file;
- a case has no outputs, an unknown comparison rule, or a listed component has no case;
- an .npz is not a readable zip of .npy arrays (truncated, corrupt), holds object arrays (loaded with
  allow_pickle=False), lacks an array the manifest names, or an array's dtype or shape differs from the
  manifest's or is not a plain bool/int/float dtype.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import zipfile
from importlib.metadata import version
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np
import torch

import detspec
from detspec.io.fileio import UserError
from spec import config, tolerances
from spec.contract import CONTRACT

FORMAT = "detspec-vectors"
FORMAT_VERSION = 1
DEFAULT_SEED = 20240501
INPUT_FLOAT = np.float32
MANIFEST = "manifest.json"

# Components left out of the set, and why (also written to the manifest).
SKIPPED: dict[str, str] = {
    "subsample_labels": "random (a uniform permutation prefix): no golden output; its invariants (counts, "
                        "pools, positive cap) are checked by the conformance suite",
    "sample_rois": "random (subsamples through subsample_labels): no golden output; its invariants are checked "
                   "by the conformance suite",
}

# How each component's return value is named: one tensor, a tuple of tensors, a list (per level or per image)
# of tensors or tuples, or a dict of 0-d tensors.
_SINGLE = {"pairwise_iou": "iou", "box_area": "area", "clip_boxes": "boxes", "nonempty": "keep",
           "encode_boxes": "deltas", "decode_boxes": "boxes", "cell_anchors": "anchors", "nms": "keep",
           "batched_nms": "keep", "assign_levels": "levels", "roi_align": "pooled", "multilevel_roi_align": "pooled"}
_TUPLE = {"match": ("matches", "labels"), "iou_match": ("matches", "labels"), "detector_postprocess": ("boxes", "keep")}
_LIST = {"grid_anchors": "anchors"}
_LIST_OF_TUPLES = {"select_proposals": ("boxes", "logits"),
                   "fast_rcnn_inference": ("boxes", "scores", "classes", "roi_index")}
_DICT = {"rpn_losses": ("loss_rpn_cls", "loss_rpn_loc"), "roi_losses": ("loss_cls", "loss_box_reg")}


class VectorsError(UserError):
    """A usage error or a malformed set: missing directory, unreadable or incompatible manifest, a case that
    cannot be checked (bad path, unknown component, no outputs, a missing or corrupt .npz). One line."""


# ------------------------------------------------------------------------------------------------ components
COMPONENTS: tuple[str, ...] = tuple(n for n in CONTRACT if n not in SKIPPED) + ("select_proposals", "rpn_losses")


def flatten_result(component: str, value: Any) -> list[tuple[str, list, Any]]:
    """(output name, path into the return value, leaf) for every tensor of `component`'s return value."""
    if component in _SINGLE:
        return [(_SINGLE[component], [], value)]
    if component in _TUPLE:
        return [(f, [j], value[j]) for j, f in enumerate(_TUPLE[component])]
    if component in _LIST:
        return [(f"{_LIST[component]}.{i}", [i], v) for i, v in enumerate(value)]
    if component in _LIST_OF_TUPLES:
        fields = _LIST_OF_TUPLES[component]
        return [(f"{i}.{f}", [i, j], item[j]) for i, item in enumerate(value) for j, f in enumerate(fields)]
    if component in _DICT:
        return [(k, [k], value[k]) for k in _DICT[component]]
    raise KeyError(component)


def returns_list(component: str) -> bool:
    """Whether `component` returns a list (per level or per image): its case records the list's length."""
    return component in _LIST or component in _LIST_OF_TUPLES


def to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def tuplify(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(tuplify(v) for v in value)
    return value


def spec_version() -> dict[str, Any]:
    """The package version and a hash of every spec config value (both profiles) and the tolerance table."""
    try:
        package_version = version("detspec")
    except Exception:  # not installed: the source tree's version
        package_version = detspec.__version__
    values = {name: dataclasses.asdict(profile) for name, profile in config.PROFILES.items()}
    values["tolerances"] = {str(k): v for k, v in tolerances.DTYPE_TOLERANCES.items()}
    values["overrides"] = {c: {str(d): [o.rtol, o.atol] for d, o in per.items()}
                           for c, per in tolerances.OVERRIDES.items()}
    blob = json.dumps(values, sort_keys=True, default=repr).encode()
    return {"package": "detspec", "version": package_version, "config_sha256": hashlib.sha256(blob).hexdigest()}


# ------------------------------------------------------------------------------------------------ validation
# Array dtypes a set may hold (native byte order): what torch.from_numpy takes and the rules compare.
_ARRAY_DTYPES: tuple[np.dtype, ...] = tuple(np.dtype(t) for t in (
    np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.float16, np.float32, np.float64))
_RULE_KINDS = ("exact", "set", "close")
MAX_CASE_BYTES = 256 * 2 ** 20  # the uncompressed arrays of one case (the whole committed set is < 1 MB)


def one_line(text: Any, limit: int = 200) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _case_label(entry: Any, index: int) -> str:
    """How messages name a case: "case <component>/<name>" when both are strings, else "case #<index>"."""
    if isinstance(entry, dict) and isinstance(entry.get("component"), str) and isinstance(entry.get("name"), str):
        return f"case {one_line(entry['component'], 80)}/{one_line(entry['name'], 80)}"
    return f"case #{index}"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_manifest(directory: Path, check_version: bool = True) -> dict[str, Any]:
    """The parsed manifest.json of `directory`: a JSON object of this format (and version, unless told not to)."""
    if not directory.is_dir():
        raise VectorsError(f"{directory} is not a directory (expected a vector set: manifest.json and .npz files)")
    path = directory / MANIFEST
    if not path.is_file():
        raise VectorsError(f"{path} does not exist; write a vector set with 'detspec vectors export {directory}'")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise VectorsError(f"{path} is not valid JSON: {one_line(exc)}") from None
    if not isinstance(manifest, dict):
        raise VectorsError(f"{path} holds a JSON {type(manifest).__name__}, not an object (a {FORMAT} manifest)")
    if manifest.get("format") != FORMAT:
        raise VectorsError(f"{path} is not a {FORMAT} manifest (its \"format\" is "
                           f"{one_line(repr(manifest.get('format')), 60)})")
    if check_version and manifest.get("format_version") != FORMAT_VERSION:
        raise VectorsError(f"{path} has format version {one_line(repr(manifest.get('format_version')), 60)}; this "
                           f"detspec reads version {FORMAT_VERSION} (re-export the set or use a matching detspec)")
    return manifest


def _validate_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """The top level and every case entry's keys and types (not the .npz files). Raises a one-line VectorsError."""
    components = manifest.get("components")
    if not isinstance(components, list) or not components or not all(isinstance(c, str) for c in components):
        raise VectorsError(f"{path}: \"components\" must be a non-empty list of component names")
    if "spec" in manifest and not isinstance(manifest["spec"], dict):
        raise VectorsError(f"{path}: \"spec\" must be a JSON object")
    cases = manifest.get("cases")
    if not isinstance(cases, list) or not cases:
        raise VectorsError(f"{path}: \"cases\" must be a non-empty list of case objects")
    seen: set[tuple[str, str]] = set()
    for index, entry in enumerate(cases):
        where = f"{path}: {_case_label(entry, index)}"
        problem = _case_entry_problem(entry, components)
        if problem:
            raise VectorsError(f"{where}: {problem}")
        key = (entry["component"], entry["name"])
        if key in seen:
            raise VectorsError(f"{where}: listed twice")
        seen.add(key)
    for component in components:  # after the cases, so that a case naming a bad component is the one named
        if component not in COMPONENTS:
            raise VectorsError(f"{path}: \"components\" lists {one_line(repr(component), 80)}, which is not a "
                               "contract component this format supports")
    if len(set(components)) != len(components):
        raise VectorsError(f"{path}: \"components\" lists a component twice")
    for component in components:
        if not any(component == c for c, _ in seen):
            raise VectorsError(f"{path}: component {component} is listed but has no case (nothing to check)")


def _case_entry_problem(entry: Any, components: list[str]) -> str | None:
    """What is wrong with one case object of the manifest (keys and types only), or None."""
    if not isinstance(entry, dict):
        return f"is a JSON {type(entry).__name__}, not an object"
    component = entry.get("component")
    if not isinstance(component, str):
        return "\"component\" must be a string"
    if component not in COMPONENTS:
        return (f"component {one_line(repr(component), 80)} is not a contract component this format supports "
                f"({', '.join(COMPONENTS)}); nothing was run")
    if component not in components:
        return f"component {component} is not listed in the manifest's \"components\""
    if not isinstance(entry.get("name"), str) or not entry["name"]:
        return "\"name\" must be a non-empty string"
    if not isinstance(entry.get("file"), str) or not entry["file"]:
        return "\"file\" must be a non-empty string (an .npz file name inside the set's directory)"
    args = entry.get("args")
    if not isinstance(args, list):
        return "\"args\" must be a list"
    for i, arg in enumerate(args):
        kinds = [k for k in ("array", "arrays", "value") if isinstance(arg, dict) and k in arg]
        if len(kinds) != 1:
            return f"argument {i} must be an object with exactly one of \"array\", \"arrays\" or \"value\""
        if "name" in arg and not isinstance(arg["name"], str):
            return f"argument {i}: \"name\" must be a string"
        if kinds == ["array"] and not isinstance(arg["array"], str):
            return f"argument {i}: \"array\" must be an npz key (a string)"
        if kinds == ["arrays"] and not (isinstance(arg["arrays"], list)
                                        and all(isinstance(k, str) for k in arg["arrays"])):
            return f"argument {i}: \"arrays\" must be a list of npz keys (strings)"
    if not isinstance(entry.get("kwargs"), dict):
        return "\"kwargs\" must be a JSON object"
    if "result_length" in entry and not (_is_int(entry["result_length"]) and entry["result_length"] >= 0):
        return "\"result_length\" must be a non-negative integer"
    outputs = entry.get("outputs")
    if not isinstance(outputs, list):
        return "\"outputs\" must be a list"
    if not outputs:
        return "has no outputs (a case with nothing to compare cannot pass)"
    for i, out in enumerate(outputs):
        problem = _output_problem(out)
        if problem:
            label = out["name"] if isinstance(out, dict) and isinstance(out.get("name"), str) else f"#{i}"
            return f"output {one_line(label, 60)}: {problem}"
    return None


def _output_problem(out: Any) -> str | None:
    if not isinstance(out, dict):
        return "must be a JSON object"
    for key in ("name", "key", "dtype"):
        if not isinstance(out.get(key), str):
            return f"\"{key}\" must be a string"
    path = out.get("path")
    if not isinstance(path, list) or not all(_is_int(s) or isinstance(s, str) for s in path):
        return "\"path\" must be a list of indices and keys"
    shape = out.get("shape")
    if not isinstance(shape, list) or not all(_is_int(n) and n >= 0 for n in shape):
        return "\"shape\" must be a list of non-negative integers"
    rule = out.get("rule")
    if not isinstance(rule, dict) or rule.get("kind") not in _RULE_KINDS:
        return f"\"rule\" must be an object whose \"kind\" is one of {', '.join(_RULE_KINDS)}"
    if rule["kind"] == "close" and not all(_is_number(rule.get(t)) and rule[t] >= 0 for t in ("rtol", "atol")):
        return "a \"close\" rule needs finite, non-negative \"rtol\" and \"atol\""
    if rule["kind"] == "set" and not shape:
        return "a \"set\" rule needs an array of at least one dimension"
    return None


def _case_path(directory: Path, file: str, where: str) -> Path:
    """`file` resolved (symlinks followed) inside `directory`; anything that leaves the set is refused."""
    posix, windows = PurePosixPath(file), PureWindowsPath(file)
    if "\0" in file:
        raise VectorsError(f"{where}: file {one_line(repr(file), 300)} contains a NUL character")
    if posix.is_absolute() or windows.is_absolute() or windows.drive or file.startswith(("/", "\\")):
        raise VectorsError(f"{where}: file {one_line(repr(file), 300)} is an absolute path; case files must be "
                           "inside the vector set's directory")
    if ".." in posix.parts or ".." in windows.parts:
        raise VectorsError(f"{where}: file {one_line(repr(file), 300)} contains '..'; case files must be inside "
                           "the vector set's directory")
    if not file.endswith(".npz"):
        raise VectorsError(f"{where}: file {one_line(repr(file), 300)} is not an .npz file")
    root = directory.resolve()
    try:
        resolved = (directory / file).resolve(strict=True)
    except FileNotFoundError:
        raise VectorsError(f"{where}: {directory / file} is listed in the manifest but does not exist") from None
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise VectorsError(f"{where}: cannot resolve {one_line(repr(file), 300)}: {one_line(exc)}") from None
    if not resolved.is_relative_to(root):
        raise VectorsError(f"{where}: file {one_line(repr(file), 300)} resolves to {resolved}, outside the vector "
                           f"set's directory {root}")
    if not resolved.is_file():
        raise VectorsError(f"{where}: {directory / file} is not a regular file")
    return resolved


def _load_npz(path: Path, where: str) -> dict[str, np.ndarray]:
    """Every array of one .npz, loaded without pickle; a corrupt or non-array member is a one-line error."""
    name = path.name
    try:
        if not zipfile.is_zipfile(path):
            raise VectorsError(f"{where}: {name} is not a readable .npz (zip) file (truncated or corrupt)")
        with zipfile.ZipFile(path) as zf:
            size = sum(info.file_size for info in zf.infolist())
        if size > MAX_CASE_BYTES:
            raise VectorsError(f"{where}: {name} holds {size} bytes of arrays uncompressed, more than the "
                               f"{MAX_CASE_BYTES} a case may")
        with np.load(path, allow_pickle=False) as data:
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise VectorsError(f"{where}: {name} is not an .npz archive of arrays")
            arrays = {key: data[key] for key in data.files}
    except VectorsError:
        raise
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "pickled" in str(exc):
            raise VectorsError(f"{where}: {name} holds object (pickled) arrays; a vector set holds only plain "
                               "numeric arrays") from None
        raise VectorsError(f"{where}: cannot read {name} (truncated or corrupt): {one_line(exc)}") from None
    except Exception as exc:  # BadZipFile, EOFError, zlib.error, OSError ...: a truncated or corrupt file
        raise VectorsError(f"{where}: cannot read {name} (truncated or corrupt): {type(exc).__name__}: "
                           f"{one_line(exc)}") from None
    for key, array in arrays.items():
        if not isinstance(array, np.ndarray):
            raise VectorsError(f"{where}: {name} member {one_line(repr(key), 80)} is not a .npy array")
        if array.dtype not in _ARRAY_DTYPES:
            raise VectorsError(f"{where}: {name} array {one_line(repr(key), 80)} has dtype {array.dtype.str}; "
                               "a vector set holds bool, int8/16/32/64, uint8 or float16/32/64 (native byte order)")
    return arrays


def _check_case_arrays(entry: dict[str, Any], arrays: dict[str, np.ndarray], where: str) -> None:
    """Every npz key the case names exists, and each expected output has the manifest's dtype and shape."""
    keys = []
    for arg in entry["args"]:
        keys += [arg["array"]] if "array" in arg else arg.get("arrays", [])
    for key in keys:
        if key not in arrays:
            raise VectorsError(f"{where}: array {one_line(repr(key), 80)} is missing from {entry['file']}")
    for out in entry["outputs"]:
        key = out["key"]
        if key not in arrays:
            raise VectorsError(f"{where}: output array {one_line(repr(key), 80)} is missing from {entry['file']}")
        array = arrays[key]
        if array.dtype.name != out["dtype"] or list(array.shape) != out["shape"]:
            raise VectorsError(f"{where}: output array {one_line(repr(key), 80)} is {array.dtype.name} "
                               f"{list(array.shape)} in {entry['file']}, the manifest says "
                               f"{one_line(out['dtype'], 40)} {out['shape']}")


def load_case(directory: str | Path, entry: dict[str, Any]) -> dict[str, np.ndarray]:
    """The arrays of one case (npz key -> array); the file must lie inside `directory`, arrays without pickle."""
    directory = Path(directory)
    where = f"{directory / MANIFEST}: {_case_label(entry, 0)}"
    file = entry.get("file") if isinstance(entry, dict) else None
    if not isinstance(file, str) or not file:
        raise VectorsError(f"{where}: \"file\" must be a non-empty string")
    return _load_npz(_case_path(directory, file, where), where)


def load_set(directory: str | Path) -> tuple[dict[str, Any], list[dict[str, np.ndarray]]]:
    """The manifest and every case's arrays, all validated (see the module docstring, "A set is data").

    Raises a one-line VectorsError naming the case and the problem; nothing of an implementation is touched.
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    path = directory / MANIFEST
    _validate_manifest(path, manifest)
    loaded = []
    for index, entry in enumerate(manifest["cases"]):
        where = f"{path}: {_case_label(entry, index)}"
        arrays = _load_npz(_case_path(directory, entry["file"], where), where)
        _check_case_arrays(entry, arrays, where)
        loaded.append(arrays)
    return manifest, loaded
