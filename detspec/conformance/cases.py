"""Minimal counterexamples (issue 13): the case format ``detspec check --repro DIR`` writes (``write_case``) and
``detspec repro`` replays (``replay``; the command is detspec/commands/repro.py).
``detspec repro``: replay one minimal counterexample written by ``detspec check --repro DIR`` (issue 13).

  detspec repro FILE [--impl NAME] [--device cpu|cuda]

A case is two files with one stem: ``<slug>.npz`` (the tensors: arguments, expected and actual outputs) and
``<slug>.json`` (everything else); FILE may name either, or the stem. The replay resolves the implementation as
``detspec check`` does (detspec.impls.resolve; default: the implementation recorded in the case), calls the
recorded contract function with the recorded arguments, takes the compared part of its output the way the test
did (the output itself, a cast, a reshape, or some of its rows), compares it with the recorded expected output by
the recorded rule (exact, or rtol/atol of spec/tolerances.py, or the ranked-list rule), and prints expected and
actual side by side with the first differing element marked. No pytest is needed.

Exit codes: 0 the implementation now passes the case; 1 it fails (a difference, an exception, or a case that
records no expected output: the test failed outside a comparison helper, so a pass cannot be confirmed); 2 a bad
file or usage (one line).

JSON sidecar (``"format": "detspec-repro/1"``): ``test`` (node id), ``clauses``, ``implementation``, ``device``,
``property_test`` / ``shrunk`` (hypothesis: the case is the final, shrunk example), ``failure`` (the test's
message), ``function``, ``args`` / ``kwargs`` (encoded values: ``{"tensor": KEY, "dtype", "shape"}`` for a tensor
stored in the .npz under KEY, ``{"value": v}`` for a scalar or string, ``{"float": "nan"}``, ``{"tuple": [...]}``,
``{"list": [...]}``, ``{"dict": {...}}``, ``{"dtype": "float32"}``, ``{"object": repr}`` for what cannot be
stored), ``raised`` (the exception the call raised, if any), ``comparison`` (``rule``: kind ``exact``,
``close`` with ``component``, ``dtype``, ``rtol``, ``atol`` and ``source``, or ``same_ranked``; ``what``;
``outputs``: name -> {``selector``, ``expected``, ``actual`` (.npz keys)}), ``replay`` (the command line).
"""

from __future__ import annotations

import json
import math
import re
import shlex
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detspec.conformance._util import check_same_ranked
from detspec.impls import resolve
from detspec.io.fileio import atomic_save, atomic_write_json
from spec import SPEC_VERSION

FORMAT = "detspec-repro/1"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
_NUMPY_LACKS = {torch.bfloat16: torch.float32}  # dtypes numpy cannot hold: stored widened (exactly), restored


class BadCase(ValueError):
    """A repro file that cannot be read (the CLI prints it as one line and exits 2)."""


# ------------------------------------------------------------------------------------------------ writing
def slug(nodeid: str) -> str:
    """A file name from a test node id: ``test_nms.py::test_x[port]`` -> ``test_nms-test_x-port``."""
    text = nodeid.split("/")[-1].replace(".py::", "-")
    text = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.") or "case"
    if len(text) > 120:
        import hashlib

        text = f"{text[:100]}-{hashlib.sha1(nodeid.encode()).hexdigest()[:10]}"
    return text


def free_stem(directory: Path, name: str) -> Path:
    """``DIR/name``, or ``DIR/name-2``, ``-3``, ...: the first stem whose .npz and .json both do not exist
    (an existing case is never overwritten)."""
    n = 1
    while True:
        stem = directory / (name if n == 1 else f"{name}-{n}")
        if not stem.with_suffix(".npz").exists() and not stem.with_suffix(".json").exists():
            return stem
        n += 1


class _Encoder:
    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}
        self.unstorable: list[str] = []

    def tensor(self, key: str, t: torch.Tensor) -> dict[str, Any]:
        t = t.detach().cpu()
        stored = t.to(_NUMPY_LACKS[t.dtype]) if t.dtype in _NUMPY_LACKS else t
        self.arrays[key] = stored.numpy()
        return {"tensor": key, "dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape)}

    def value(self, key: str, v: Any) -> dict[str, Any]:
        if isinstance(v, torch.Tensor):
            return self.tensor(key, v)
        if isinstance(v, bool) or v is None or isinstance(v, (int, str)):
            return {"value": v}
        if isinstance(v, float):
            return {"value": v} if math.isfinite(v) else {"float": repr(v)}
        if isinstance(v, torch.dtype):
            return {"dtype": str(v).removeprefix("torch.")}
        if type(v) in (tuple, list):
            return {type(v).__name__: [self.value(f"{key}_{i}", x) for i, x in enumerate(v)]}
        if type(v) is dict and all(isinstance(k, str) for k in v):
            return {"dict": {k: self.value(f"{key}_{k}", x) for k, x in v.items()}}
        self.unstorable.append(f"{key} ({type(v).__name__})")
        return {"object": repr(v)[:300]}


def write_case(directory: str | Path, *, nodeid: str, clauses: list[str], impl_name: str, device: str,
               property_test: bool, failure: str, call: dict[str, Any] | None,
               comparison: dict[str, Any] | None) -> Path:
    """Write one case (``<slug>.npz`` then ``<slug>.json``, each atomically); returns the JSON path.

    ``call``: {name, args, kwargs, error} as detspec.impls.CallRecorder records it. ``comparison``: the failure
    recorded by detspec.conformance._util (rule, what, actual, expected, selectors), or None.
    """
    enc = _Encoder()
    meta: dict[str, Any] = {
        "format": FORMAT, "spec_version": SPEC_VERSION, "test": nodeid, "clauses": list(clauses),
        "implementation": impl_name, "device": device, "property_test": property_test, "shrunk": property_test,
        "failure": failure[:4000],
    }
    if call is not None:
        meta["function"] = call["name"]
        meta["args"] = [enc.value(f"arg{i}", a) for i, a in enumerate(call["args"])]
        meta["kwargs"] = {k: enc.value(f"kw_{k}", v) for k, v in call["kwargs"].items()}
        meta["raised"] = call.get("error")
    else:
        meta.update(function=None, args=[], kwargs={}, raised=None)
    if comparison is not None and comparison.get("selectors") is not None and call is not None:
        outputs = {}
        for name, selector in comparison["selectors"].items():
            e = enc.tensor(f"expected_{name}", comparison["expected"][name])
            a = enc.tensor(f"actual_{name}", comparison["actual"][name])
            outputs[name] = {"selector": selector, "expected": e["tensor"], "expected_dtype": e["dtype"],
                             "actual": a["tensor"], "actual_dtype": a["dtype"]}
        meta["comparison"] = {"rule": comparison["rule"], "what": comparison["what"], "outputs": outputs}
    else:
        meta["comparison"] = None
        if comparison is not None:  # a failed comparison whose tensors did not come from a recorded call
            meta["failure_tensors"] = {
                "expected": {k: enc.tensor(f"expected_{k}", v)["tensor"] for k, v in comparison["expected"].items()},
                "actual": {k: enc.tensor(f"actual_{k}", v)["tensor"] for k, v in comparison["actual"].items()}}
    meta["unstorable"] = enc.unstorable
    directory = Path(directory)
    stem = free_stem(directory, slug(nodeid))
    json_path = stem.with_suffix(".json")
    meta["replay"] = f"detspec repro {shlex.quote(str(json_path))} --impl {shlex.quote(impl_name)}"
    atomic_save(stem.with_suffix(".npz"), lambda f: np.savez(f, **enc.arrays))
    atomic_write_json(json_path, meta, indent=1)
    return json_path


# ------------------------------------------------------------------------------------------------ reading
def _paths(file: str) -> tuple[Path, Path]:
    p = Path(file)
    stem = p.with_suffix("") if p.suffix in (".npz", ".json") else p
    json_path, npz_path = stem.with_suffix(".json"), stem.with_suffix(".npz")
    for q in (json_path, npz_path):
        if not q.is_file():
            raise BadCase(f"{q}: no such file (a repro case is a .json and an .npz with the same name)")
    return json_path, npz_path


def load_case(file: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    json_path, npz_path = _paths(file)
    try:
        meta = json.loads(json_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadCase(f"{json_path}: not a JSON repro sidecar ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise BadCase(f"{json_path}: not a detspec repro case (expected \"format\": \"{FORMAT}\")")
    for key in ("test", "implementation", "function", "args", "kwargs", "comparison"):
        if key not in meta:
            raise BadCase(f"{json_path}: the repro case lacks the key {key!r}")
    try:
        with np.load(npz_path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise BadCase(f"{npz_path}: not a readable .npz ({exc})") from None
    return meta, arrays


def _tensor(arrays: dict[str, np.ndarray], key: str, dtype: str | None, where: str) -> torch.Tensor:
    if key not in arrays:
        raise BadCase(f"{where}: the .npz has no array {key!r}")
    t = torch.from_numpy(np.array(arrays[key]))
    if dtype:
        target = getattr(torch, dtype, None)
        if not isinstance(target, torch.dtype):
            raise BadCase(f"{where}: unknown dtype {dtype!r} for {key!r}")
        t = t.to(target)
    return t


def decode(v: Any, arrays: dict[str, np.ndarray], device: torch.device, where: str) -> Any:
    if not isinstance(v, dict) or len(v) < 1:
        raise BadCase(f"{where}: a malformed argument {v!r}")
    if "tensor" in v:
        return _tensor(arrays, v["tensor"], v.get("dtype"), where).to(device)
    if "value" in v:
        return v["value"]
    if "float" in v:
        return float(v["float"])
    if "dtype" in v:
        return getattr(torch, v["dtype"])
    if "tuple" in v:
        return tuple(decode(x, arrays, device, where) for x in v["tuple"])
    if "list" in v:
        return [decode(x, arrays, device, where) for x in v["list"]]
    if "dict" in v:
        return {k: decode(x, arrays, device, where) for k, x in v["dict"].items()}
    if "object" in v:
        raise BadCase(f"{where}: the case cannot be replayed: an argument was not storable ({v['object'][:80]})")
    raise BadCase(f"{where}: a malformed argument {v!r}")


# ------------------------------------------------------------------------------------------------ comparing
def select(result: Any, selector: dict[str, Any]) -> torch.Tensor:
    """The compared part of a contract call's output (see detspec.conformance._util.output_selector).
    Raises AssertionError when the output does not have that part."""
    out = result
    if selector.get("output") is not None:
        k = int(selector["output"])
        if not isinstance(result, (tuple, list)) or len(result) <= k:
            raise AssertionError(f"the output is not a tuple with an element {k}")
        out = result[k]
    if not isinstance(out, torch.Tensor):
        raise AssertionError(f"the output is a {type(out).__name__}, not a tensor")
    out = out.detach().cpu()
    if selector.get("dtype"):
        out = out.to(getattr(torch, selector["dtype"]))
    if selector.get("rows") is not None:
        rows = [int(r) for r in selector["rows"]]
        if out.dim() == 0 or (rows and max(rows) >= out.shape[0]):
            raise AssertionError(f"the output has shape {list(out.shape)}; the case compares its rows {rows[:10]}")
        out = out[rows]
    if selector.get("shape") is not None:
        shape = [int(s) for s in selector["shape"]]
        if out.numel() != math.prod(shape):
            raise AssertionError(f"the output has shape {list(out.shape)}; the case compares it as {shape}")
        out = out.reshape(shape)
    return out


def mismatch(actual: torch.Tensor, expected: torch.Tensor, rule: dict[str, Any], name: str) -> torch.Tensor | None:
    """Flat bool mask of the elements that break the rule (None when the shapes differ)."""
    if actual.shape != expected.shape:
        return None
    kind = rule.get("kind")
    if kind == "exact":
        return (actual.to(expected.dtype) != expected).flatten()
    if kind == "close":
        rtol, atol = float(rule["rtol"]), float(rule["atol"])
    elif kind == "same_ranked":
        rtol, atol = (float(x) for x in rule["row_tol" if name == "rows" else "score_tol"])
    else:
        raise BadCase(f"unknown comparison rule {kind!r}")
    a, e = actual.double(), expected.double()
    return (~torch.isclose(a, e, rtol=rtol, atol=atol, equal_nan=False)).flatten()


def _fmt(x: Any) -> str:
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, float):
        return f"{x:.9g}"
    return str(x)


def side_by_side(expected: torch.Tensor, actual: torch.Tensor | None, bad: torch.Tensor | None,
                 context: int = 5) -> list[str]:
    """Rows ``index  expected  actual`` around the first difference; that row is marked ``>`` and ``<-``."""
    e = expected.flatten().tolist()
    a = actual.flatten().tolist() if actual is not None else []
    n = max(len(e), len(a))
    if bad is not None:
        hits = bad.nonzero().flatten().tolist()
        first = hits[0] if hits else None
    else:  # shapes differ: the first position whose values differ or that one side lacks
        first = next((i for i in range(n) if i >= len(e) or i >= len(a) or e[i] != a[i]), None)
    if n <= 2 * context + 1 or first is None:
        lo, hi = 0, min(n, 2 * context + 1)
    else:
        lo = max(0, first - context)
        hi = min(n, lo + 2 * context + 1)
    shape = list(expected.shape) if len(e) >= len(a) or actual is None else list(actual.shape)

    def index(i: int) -> str:
        if not shape:
            return "[]"
        return "[" + ", ".join(str(int(v)) for v in np.unravel_index(i, shape)) + "]"

    rows = [("  ", "index", "expected", "actual", "")]
    for i in range(lo, hi):
        ev = _fmt(e[i]) if i < len(e) else "(missing)"
        av = _fmt(a[i]) if i < len(a) else "(missing)"
        marked = i == first
        rows.append(("> " if marked else "  ", index(i), ev, av, "<- first difference" if marked else ""))
    widths = [max(len(r[k]) for r in rows) for k in range(4)]
    lines = [f"{r[0]}{r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]:>{widths[3]}}  {r[4]}".rstrip() for r in rows]
    if lo > 0:
        lines.insert(1, f"  ... ({lo} elements before)")
    if hi < n:
        lines.append(f"  ... ({n - hi} elements after)")
    return lines


def _describe(v: Any) -> str:
    if isinstance(v, torch.Tensor):
        text = f"tensor{list(v.shape)} {str(v.dtype).removeprefix('torch.')}"
        if v.numel() <= 24:
            text += f" {v.detach().cpu().tolist()}"
        return text
    if isinstance(v, (list, tuple)):
        inner = ", ".join(_describe(x) for x in v)
        return f"[{inner}]" if isinstance(v, list) else f"({inner})"
    return repr(v)


def rule_line(rule: dict[str, Any]) -> str:
    kind = rule.get("kind")
    if kind == "exact":
        return "exact"
    if kind == "close":
        return (f"close: |actual - expected| <= atol + rtol * |expected| with rtol={rule['rtol']:g}, "
                f"atol={rule['atol']:g} ({rule.get('source', rule.get('component', ''))})")
    if kind == "same_ranked":
        return f"same ranked list: rows within (rtol, atol) {rule['row_tol']}, scores within {rule['score_tol']}"
    return str(kind)


def replay(file: str, impl_name: str | None = None, device: str = "cpu", out=None) -> int:
    """Replay one case; print the comparison; return the exit code (0 pass, 1 fail). Raises BadCase (a
    ValueError) or ImplResolutionError for a bad file or implementation."""
    out = out or sys.stdout
    meta, arrays = load_case(file)
    where = str(_paths(file)[0])
    if not meta["function"]:
        raise BadCase(f"{where}: the case records no contract call, so there is nothing to replay")
    dev = torch.device(device)
    args = [decode(a, arrays, dev, where) for a in meta["args"]]
    kwargs = {k: decode(v, arrays, dev, where) for k, v in meta["kwargs"].items()}
    comparison = meta["comparison"]
    outputs: dict[str, tuple[torch.Tensor, dict[str, Any]]] = {}
    if comparison is not None:
        for name, o in comparison.get("outputs", {}).items():
            if not isinstance(o, dict) or not isinstance(o.get("selector"), dict) or "expected" not in o:
                raise BadCase(f"{where}: a malformed comparison output {name!r}")
            outputs[name] = (_tensor(arrays, o["expected"], o.get("expected_dtype"), where), o["selector"])
        if not outputs:
            raise BadCase(f"{where}: the comparison names no outputs")
    impl = resolve(impl_name or meta["implementation"])
    fn = getattr(impl, meta["function"])  # NotImplementedComponent when the port lacks the name
    shown = ", ".join([_describe(a) for a in args] + [f"{k}={_describe(v)}" for k, v in kwargs.items()])
    print(f"case: {meta['test']} (clauses {', '.join(meta.get('clauses') or []) or '-'}; recorded on "
          f"{meta['implementation']}{', hypothesis-shrunk' if meta.get('shrunk') else ''})", file=out)
    print(f"call: {impl.name}.{meta['function']}({shown})", file=out)
    if comparison is not None:
        print(f"rule: {rule_line(comparison['rule'])}", file=out)
    try:
        result = fn(*args, **kwargs)
    except Exception as exc:  # the port raised: a failure of the case, shown as one line
        print(f"FAIL: {impl.name}.{meta['function']} raised {type(exc).__name__}: {exc}", file=out)
        if meta.get("raised"):
            print(f"(recorded: it raised {meta['raised']})", file=out)
        return EXIT_FAILED
    if comparison is None:
        print(f"output: {_describe(result)}", file=out)
        print("FAIL: the case records no expected output (the test failed outside a comparison helper: "
              f"{meta.get('failure', '').splitlines()[0] if meta.get('failure') else '?'}); a pass cannot be "
              "confirmed", file=out)
        return EXIT_FAILED
    rule = comparison["rule"]
    failed = False
    actuals: dict[str, torch.Tensor] = {}
    for name, (expected, selector) in outputs.items():
        try:
            actual = select(result, selector)
        except AssertionError as exc:
            print(f"{name}: FAIL: {exc}", file=out)
            failed = True
            continue
        actuals[name] = actual
        bad = mismatch(actual, expected, rule, name)
        label = f"{name}" + (f" rows {selector['rows'][:8]}{'...' if len(selector['rows']) > 8 else ''}"
                             if selector.get("rows") is not None else "")
        if bad is None:
            print(f"{label}: shape {list(actual.shape)}, expected {list(expected.shape)}", file=out)
            failed = True
        elif bool(bad.any()):
            d = (actual.double() - expected.double()).abs().flatten()
            print(f"{label}: {int(bad.sum())} of {bad.numel()} elements differ (max |difference| "
                  f"{float(d.nan_to_num(nan=float('inf')).max()):.6g})", file=out)
            failed = True
        else:
            print(f"{label}: all {bad.numel()} elements agree", file=out)
            if rule.get("kind") != "same_ranked":
                continue
        if bad is None or bool(bad.any()):
            for line in side_by_side(expected, actual, bad):
                print("  " + line, file=out)
    if rule.get("kind") == "same_ranked" and not failed and set(actuals) == {"rows", "scores"}:
        e_rows, e_scores = outputs["rows"][0], outputs["scores"][0]
        try:  # rows are compared position by position only outside runs of tied scores
            check_same_ranked(actuals["rows"], actuals["scores"], e_rows, e_scores, tuple(rule["row_tol"]),
                                tuple(rule["score_tol"]), comparison.get("what", ""))
        except AssertionError as exc:
            print(f"FAIL: {str(exc).splitlines()[0]}", file=out)
            return EXIT_FAILED
        print("PASS: the ranked lists agree (tied scores compared as sets)", file=out)
        return EXIT_OK
    if failed:
        print(f"FAIL: {impl.name} does not reproduce the expected output ({comparison.get('what', '')})", file=out)
        return EXIT_FAILED
    print(f"PASS: {impl.name} passes the case", file=out)
    return EXIT_OK
