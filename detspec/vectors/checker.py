"""Checking an implementation against a golden-vector set (``detspec vectors check``): every case of a validated
set run through the implementation and compared under its output's rule (exact, set or close)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detspec.impls import Impl, resolve
from detspec.vectors.format import COMPONENTS, VectorsError, load_set, one_line, spec_version, to_numpy, tuplify


@dataclass
class CaseResult:
    component: str
    name: str
    status: str  # "pass", "fail" or "not implemented"
    detail: str = ""
    max_error: float = 0.0


@dataclass
class ComponentResult:
    component: str
    status: str  # "pass", "fail" or "not implemented"
    cases: list[CaseResult]

    @property
    def detail(self) -> str:
        failed = [c for c in self.cases if c.status == "fail"]
        if not failed:
            return ""
        worst = max(failed, key=lambda c: c.max_error)
        more = f" (+{len(failed) - 1} more failing cases)" if len(failed) > 1 else ""
        return f"{worst.name}: {worst.detail}{more}"


@dataclass
class CheckReport:
    impl: str
    directory: str
    spec: dict[str, Any]
    components: dict[str, ComponentResult]

    @property
    def failed(self) -> bool:
        return any(c.status == "fail" for c in self.components.values())

    def status(self, component: str) -> str:
        return self.components[component].status


def compare(actual: np.ndarray, expected: np.ndarray, rule: dict[str, Any]) -> tuple[bool, float, str]:
    """(ok, error, message) of one output under its rule; error is the max |difference| or the mismatch count."""
    if actual.shape != expected.shape:
        return False, math.inf, f"shape {list(actual.shape)} != expected {list(expected.shape)}"
    kind = rule["kind"]
    if kind in ("exact", "set"):
        a, e = actual, expected
        if kind == "set":
            a, e = np.sort(a, axis=0), np.sort(e, axis=0)
        wrong = int(np.count_nonzero(a != e))
        if wrong:
            first = np.argwhere(a != e)[0]
            at = tuple(int(i) for i in first)
            what = "values (as a set)" if kind == "set" else "values"
            return False, float(wrong), f"{wrong} wrong {what}; first at {at}: {a[at]!r} != expected {e[at]!r}"
        return True, 0.0, ""
    if kind != "close":
        raise VectorsError(f"unknown comparison rule {kind!r}")
    a, e = actual.astype(np.float64), expected.astype(np.float64)
    finite = np.isfinite(e)
    same_nonfinite = (a[~finite] == e[~finite]) | (np.isnan(a[~finite]) & np.isnan(e[~finite]))
    if not bool(same_nonfinite.all()):
        return False, math.inf, "non-finite expected values not matched"
    err = np.where(finite, np.abs(a - np.where(finite, e, 0.0)), 0.0)
    err = np.where(np.isnan(err), np.inf, err)
    allowed = rule["atol"] + rule["rtol"] * np.abs(np.where(finite, e, 0.0))
    max_err = float(err.max()) if err.size else 0.0
    if bool((err <= allowed).all()):
        return True, max_err, ""
    at = tuple(int(i) for i in np.unravel_index(int(np.argmax(err - allowed)), err.shape))
    return False, max_err, (f"max error {max_err:.3g} (at {at}: {a[at]:.9g} vs expected {e[at]:.9g}, "
                            f"allowed {allowed[at]:.3g})")


def _get_path(value: Any, path: list) -> Any:
    for step in path:
        value = value[step]
    return value


def _run_case(fn: Callable, entry: dict[str, Any], arrays: dict[str, np.ndarray], device: str) -> CaseResult:
    """One validated case (see load_set) against `fn`; the port's exceptions and odd results are failures."""
    component, name = entry["component"], entry["name"]

    def tensor(key: str) -> torch.Tensor:
        return torch.from_numpy(arrays[key].copy()).to(device)

    args = []
    for arg in entry["args"]:
        if "array" in arg:
            args.append(tensor(arg["array"]))
        elif "arrays" in arg:
            args.append([tensor(k) for k in arg["arrays"]])
        else:
            args.append(tuplify(arg["value"]))
    kwargs = {k: tuplify(v) for k, v in entry["kwargs"].items()}
    try:
        with torch.no_grad():
            result = fn(*args, **kwargs)
    except Exception as exc:  # a port's error is a failed case, not a crash
        return CaseResult(component, name, "fail", f"raised {type(exc).__name__}: {one_line(exc, 280)}", math.inf)
    if "result_length" in entry:
        try:
            length = len(result)
        except Exception:  # no len(): TypeError, or whatever a port's odd result raises
            length = None
        if length != entry["result_length"]:
            return CaseResult(component, name, "fail",
                              f"returned {length} items, expected {entry['result_length']}", math.inf)
    worst = CaseResult(component, name, "pass")
    for out in entry["outputs"]:
        try:
            actual = to_numpy(_get_path(result, out["path"]))
        except Exception as exc:  # KeyError, IndexError, TypeError, or a leaf numpy cannot convert
            return CaseResult(component, name, "fail", f"output {out['name']} missing ({one_line(repr(exc))})",
                              math.inf)
        try:
            ok, err, msg = compare(actual, arrays[out["key"]], out["rule"])
        except Exception as exc:  # a result numpy cannot compare (object arrays, strings ...) fails the case
            ok, err, msg = False, math.inf, f"cannot compare the result: {type(exc).__name__}: {one_line(exc)}"
        if not ok and (worst.status == "pass" or err > worst.max_error):
            worst = CaseResult(component, name, "fail", f"{out['name']}: {msg}", err)
        elif ok and worst.status == "pass":
            worst.max_error = max(worst.max_error, err if out["rule"]["kind"] == "close" else 0.0)
    return worst


def check(directory: str | Path, impl: Any, device: str = "cpu") -> CheckReport:
    """Run every case of the set in `directory` against `impl` (an --impl string or a detspec.impls.Impl)."""
    directory = Path(directory)
    manifest, loaded = load_set(directory)  # the whole set is validated before the implementation is touched
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise VectorsError(f"--device {device}: CUDA is not available on this machine")
    if not isinstance(impl, Impl):
        impl = resolve(str(impl))
    by_component: dict[str, list[CaseResult]] = {c: [] for c in manifest["components"]}
    for entry, arrays in zip(manifest["cases"], loaded):
        component = entry["component"]
        if component not in COMPONENTS:  # load_set refused it already; never look up any other name
            raise VectorsError(f"component {component!r} is not a contract component this format supports")
        fn = getattr(impl.namespace, component, None)
        if not callable(fn):
            result = CaseResult(component, entry["name"], "not implemented")
        else:
            result = _run_case(fn, entry, arrays, device)
        by_component[component].append(result)
    components = {}
    for component, results in by_component.items():
        statuses = {r.status for r in results}
        status = "fail" if "fail" in statuses else "not implemented" if "not implemented" in statuses else "pass"
        components[component] = ComponentResult(component, status, results)
    return CheckReport(impl.name, str(directory), manifest.get("spec", {}), components)


def format_table(report: CheckReport) -> str:
    width = max(len("component"), *(len(c) for c in report.components))
    spec = report.spec
    lines = [f"detspec vectors: {report.directory} (spec {spec.get('version', '?')}, config "
             f"{str(spec.get('config_sha256', '?'))[:12]}) against {report.impl}", "",
             f"{'component'.ljust(width)}  {'cases':>5}  result", "-" * (width + 40)]
    for name, comp in report.components.items():
        if comp.status == "pass":
            worst = max((c.max_error for c in comp.cases), default=0.0)
            cell = "pass" + (f" (max error {worst:.2g})" if worst > 0 else "")
        elif comp.status == "fail":
            cell = f"FAIL  {comp.detail}"
        else:
            cell = "not implemented"
        lines.append(f"{name.ljust(width)}  {len(comp.cases):>5}  {cell}")
    counts = {s: sum(c.status == s for c in report.components.values()) for s in ("pass", "fail", "not implemented")}
    lines += ["", ", ".join(f"{n} {s}" for s, n in counts.items())]
    return "\n".join(lines)


def current_spec_hash() -> str:
    return spec_version()["config_sha256"]
