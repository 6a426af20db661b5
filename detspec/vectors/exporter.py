"""Writing a golden-vector set: every case (spec and seeded), the oracle's expected outputs, the .npz files and
the manifest, each file atomically (``detspec vectors export``)."""

from __future__ import annotations

import io
import json
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

import reference
from detspec.io.fileio import atomic_save, atomic_write
from detspec.vectors.case import Case
from detspec.vectors.format import (
    COMPONENTS,
    DEFAULT_SEED,
    FORMAT,
    FORMAT_VERSION,
    INPUT_FLOAT,
    MANIFEST,
    SKIPPED,
    VectorsError,
    flatten_result,
    read_manifest,
    returns_list,
    spec_version,
    to_numpy,
    tuplify,
)
from detspec.vectors.seeded_cases import seeded_cases
from detspec.vectors.spec_cases import spec_cases
from spec.tolerances import tolerance


def build_cases(seed: int = DEFAULT_SEED) -> list[Case]:
    """Every case of the set, in manifest order (component order of COMPONENTS, spec cases first)."""
    def rng_for(key: str) -> np.random.Generator:
        return np.random.default_rng([seed, zlib.crc32(key.encode())])

    cases = spec_cases() + seeded_cases(rng_for)
    order = {name: i for i, name in enumerate(COMPONENTS)}
    unknown = {c.component for c in cases} - set(order)
    assert not unknown, unknown
    return sorted(cases, key=lambda c: order[c.component])  # stable: spec cases stay first


def _rule(component: str, name: str, expected: np.ndarray, case: Case) -> dict[str, Any]:
    if name in case.set_outputs:
        return {"kind": "set"}
    if expected.dtype.kind in "biu":
        return {"kind": "exact"}
    rtol, atol = tolerance(component, torch.float32)
    return {"kind": "close", "rtol": rtol, "atol": atol}


def oracle(case: Case) -> Any:
    """The reference's result on the case's inputs, every floating array promoted to float64."""
    def convert(value: Any) -> Any:
        if isinstance(value, np.ndarray):
            t = torch.from_numpy(value.copy())
            return t.double() if t.is_floating_point() else t
        if isinstance(value, list) and value and isinstance(value[0], np.ndarray):
            return [convert(v) for v in value]
        return tuplify(value)

    extra = {k: (getattr(torch, v) if k == "dtype" else v) for k, v in case.oracle_kwargs.items()}
    fn = getattr(reference, case.component)
    return fn(*[convert(v) for _, v in case.args], **{k: tuplify(v) for k, v in case.kwargs.items()}, **extra)


# ------------------------------------------------------------------------------------------------ files
def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """np.savez_compressed's layout with a fixed member timestamp, so equal arrays give equal bytes."""
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.array(array, order="C"), allow_pickle=False)  # keeps 0-d shapes
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buffer.getvalue())
    return zipped.getvalue()


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    data = _npz_bytes(arrays)
    atomic_save(path, lambda fh: fh.write(data))


def _previous_set(out: Path, seed: int) -> tuple[dict[str, Any] | None, str | None]:
    """(the manifest of the set already in the non-empty directory `out` or None, why export must not replace
    it without --force or None). Only a set of this format version with the same seed may be re-exported."""
    if not (out / MANIFEST).is_file():
        return None, f"holds no {MANIFEST} (it is not a vector set)"
    try:
        old = read_manifest(out, check_version=False)
    except VectorsError:
        return None, f"its {MANIFEST} is not a readable {FORMAT} manifest"
    if old.get("format_version") != FORMAT_VERSION:
        return old, (f"holds a vector set of format version {old.get('format_version')!r} (this detspec writes "
                     f"version {FORMAT_VERSION})")
    if old.get("seed") != seed:
        return old, f"holds a different vector set (seed {old.get('seed')!r}, not {seed})"
    return old, None


def _stale_files(out: Path, old: dict[str, Any] | None, written: set[str]) -> list[Path]:
    """The earlier set's case files (plain .npz names directly in `out`) that the new set did not write."""
    cases = old.get("cases") if old is not None else None
    if not isinstance(cases, list):
        return []
    stale = []
    for entry in cases:
        name = entry.get("file") if isinstance(entry, dict) else None
        if (isinstance(name, str) and name.endswith(".npz") and name not in written and "/" not in name
                and "\\" not in name and name not in ("", ".", "..") and "\0" not in name):
            path = out / name
            if path.is_symlink() or path.is_file():
                stale.append(path)
    return stale


def export(directory: str | Path, seed: int = DEFAULT_SEED, force: bool = False) -> dict[str, Any]:
    """Write the vector set to `directory` (created if needed); returns the manifest.

    Every file is written atomically (a temporary file, then a rename): an interrupted export leaves each file
    either as it was or complete. An existing non-empty directory must hold an earlier set of this format
    version with the same seed (a re-export: its case files the new set does not write are removed; other
    files, such as a README, are left alone); anything else is refused unless ``force`` is true.
    """
    out = Path(directory)
    if out.exists() and not out.is_dir():
        raise VectorsError(f"{out} exists and is not a directory")
    old: dict[str, Any] | None = None
    if out.is_dir() and any(out.iterdir()):
        old, problem = _previous_set(out, seed)
        if problem is not None and not force:
            raise VectorsError(f"{out} is not empty and {problem}; export into an empty or new directory, or pass "
                               "--force to write the set there anyway")
    out.mkdir(parents=True, exist_ok=True)

    entries = []
    for case in build_cases(seed):
        arrays: dict[str, np.ndarray] = {}
        args = []
        for name, value in case.args:
            if isinstance(value, np.ndarray):
                arrays[f"in.{name}"] = value
                args.append({"name": name, "array": f"in.{name}"})
            elif isinstance(value, list) and value and isinstance(value[0], np.ndarray):
                keys = [f"in.{name}.{i}" for i in range(len(value))]
                arrays.update(zip(keys, value))
                args.append({"name": name, "arrays": keys})
            else:
                args.append({"name": name, "value": value})
        with torch.no_grad():
            result = oracle(case) if case.expected is None else case.expected
        outputs = []
        for name, path, leaf in flatten_result(case.component, result):
            expected = to_numpy(leaf)
            if expected.dtype.kind == "f":
                expected = expected.astype(np.float64)
            key = f"out.{name}"
            arrays[key] = expected
            outputs.append({"name": name, "key": key, "path": path, "dtype": str(expected.dtype),
                            "shape": list(expected.shape), "rule": _rule(case.component, name, expected, case)})
        file = f"{case.component}__{case.name}.npz"
        _write_npz(out / file, arrays)
        entry = {"component": case.component, "name": case.name, "file": file, "source": case.source,
                 "description": case.description, "args": args, "kwargs": case.kwargs, "outputs": outputs}
        if returns_list(case.component):
            entry["result_length"] = len(result)
        entries.append(entry)

    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "seed": seed,
        "spec": spec_version(),
        "generated_with": {"torch": torch.__version__.split("+")[0], "numpy": np.__version__},
        "input_float_dtype": np.dtype(INPUT_FLOAT).name,
        "oracle": "source 'oracle': the reference implementation in float64 on the float32-rounded inputs; "
                  "source 'spec': values written from the spec (d2-spec §2-§3)",
        "rules": {"exact": "same shape and values", "set": "same values in any order",
                  "close": "same shape; |actual - expected| <= atol + rtol * |expected|; non-finite exactly"},
        "conventions": "args are positional in order: 'array' is an npz key, 'arrays' a list of npz keys (a list "
                       "of tensors), 'value' a JSON value; kwargs are JSON; JSON arrays stand for tuples. An "
                       "output's 'path' indexes the return value (list/tuple index or dict key); "
                       "'result_length' is the length of a list-valued return value.",
        "components": list(COMPONENTS),
        "skipped": SKIPPED,
        "cases": entries,
    }
    text = json.dumps(manifest, indent=1, ensure_ascii=False) + "\n"
    atomic_write(out / MANIFEST, text)  # last: the manifest only ever lists files that are complete
    for stale in _stale_files(out, old, {e["file"] for e in entries}):
        stale.unlink()
    return manifest
