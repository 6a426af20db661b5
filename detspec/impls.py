"""Implementations under test: resolving ``--impl`` names and wrapping them for the conformance suite.

An implementation is any object with some of the contract's names (``spec.contract.CONTRACT``):

- ``reference`` and ``fast``: detspec's own packages;
- ``torchvision``: torchvision's ops, for the components it has (an independent oracle);
- ``onnxruntime``: detspec's ONNX Runtime port (detspec/onnx: contract functions exported to ONNX and run on
  ONNX Runtime; needs the ``onnx`` extra);
- ``module`` or ``module:attribute``: a third-party port (the attribute may be a module, a class instance or
  any namespace object).

Tests reach the implementation through ``Impl``: ``impl.pairwise_iou(...)``. A name the port lacks raises
``NotImplementedComponent``, which the plugin reports as "not implemented" for that test's clauses, so a
partial port never crashes the suite.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from types import SimpleNamespace
from typing import Any

from spec.contract import CONTRACT, PLANNED

BUILTIN = ("reference", "fast", "torchvision", "onnxruntime")
DEFAULT_IMPLS = ("reference", "fast")
NOT_IMPLEMENTED_PREFIX = "not implemented: "


class NotImplementedComponent(Exception):
    """Raised when a test uses a contract name that the implementation does not provide."""


class ImplResolutionError(ValueError):
    """An --impl value that cannot be imported or resolved."""


class Impl:
    """A named implementation; attribute access to contract names checks that they exist."""

    def __init__(self, name: str, namespace: Any, *, is_reference: bool = False):
        self.name = name
        self.namespace = namespace
        self.is_reference = is_reference

    def has(self, *names: str) -> bool:
        return all(callable(getattr(self.namespace, n, None)) for n in names)

    def require(self, *names: str) -> None:
        missing = [n for n in names if not callable(getattr(self.namespace, n, None))]
        if missing:
            raise NotImplementedComponent(", ".join(missing))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        value = getattr(self.namespace, name, None)
        if value is None:
            if name in CONTRACT or name in PLANNED:
                raise NotImplementedComponent(name)
            raise AttributeError(f"{self.name} has no attribute {name!r}")
        recorder = _RECORDER.get("current")
        if recorder is not None and recorder.target is self and callable(value) and (
                name in CONTRACT or name in PLANNED):
            return recorder.wrap(name, value)
        return value

    def __repr__(self) -> str:
        return f"Impl({self.name!r})"


# ------------------------------------------------------------------------------------------ call recording
# ``detspec check --repro DIR`` (issue 13): while a test runs, the plugin installs a CallRecorder for the test's
# implementation; contract calls through ``impl.NAME(...)`` are then recorded (name, arguments, result), and the
# comparison helpers of detspec/conformance/_util.py record their failures, so the plugin can write the failing
# call as a repro case. Without --repro no recorder is installed and ``Impl`` returns the port's callables as is.
class CallRecorder:
    """The recent contract calls of one implementation during one test, and the comparisons that failed."""

    MAX_CALLS = 8
    MAX_FAILURES = 8

    def __init__(self, target: Impl):
        self.target = target
        self.calls: list[dict[str, Any]] = []  # newest last: {name, args, kwargs, result, error}
        self.failures: list[dict[str, Any]] = []  # newest last: see detspec.conformance._util._record_failure

    def wrap(self, name: str, fn: Any) -> Any:
        def recorded(*args: Any, **kwargs: Any) -> Any:
            entry = {"name": name, "args": _snapshot(args), "kwargs": _snapshot(kwargs), "result": None,
                     "error": None}
            self.calls.append(entry)
            del self.calls[:-self.MAX_CALLS]
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:
                entry["error"] = f"{type(exc).__name__}: {exc}"
                raise
            entry["result"] = result
            return result

        recorded.__name__ = getattr(fn, "__name__", name)
        recorded.__doc__ = getattr(fn, "__doc__", None)
        recorded.__wrapped__ = fn  # type: ignore[attr-defined]
        return recorded


def _snapshot(value: Any) -> Any:
    """A copy of the call's arguments as they were passed (a port that writes into its inputs cannot change the
    recorded case); containers are copied one level at a time, other objects are kept as they are."""
    import torch  # noqa: PLC0415  (torch is imported by every implementation anyway)

    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, (list, tuple)) and type(value) in (list, tuple):
        return type(value)(_snapshot(v) for v in value)
    if isinstance(value, dict) and type(value) is dict:
        return {k: _snapshot(v) for k, v in value.items()}
    return value


_RECORDER: dict[str, CallRecorder | None] = {"current": None}


def start_recording(target: Impl) -> CallRecorder:
    """Record the contract calls of ``target`` (and failing comparisons) until :func:`stop_recording`."""
    recorder = CallRecorder(target)
    _RECORDER["current"] = recorder
    return recorder


def stop_recording() -> None:
    _RECORDER["current"] = None


def current_recorder() -> CallRecorder | None:
    return _RECORDER.get("current")


def _torchvision_namespace() -> Any:
    """torchvision's ops under contract names: box_iou, box_area, clip_boxes_to_image, nms, batched_nms, roi_align."""
    try:
        from torchvision import ops
    except Exception as exc:  # pragma: no cover - depends on the environment
        raise ImplResolutionError(f"--impl torchvision needs torchvision installed ({exc})") from exc

    def clip_boxes(boxes, image_size):
        return ops.clip_boxes_to_image(boxes, tuple(image_size))

    return SimpleNamespace(
        pairwise_iou=ops.box_iou,
        box_area=ops.box_area,
        clip_boxes=clip_boxes,
        nms=ops.nms,
        batched_nms=ops.batched_nms,
        roi_align=ops.roi_align,
    )


def _import_file(path: str) -> Any:
    file = os.path.abspath(path)
    if not os.path.isfile(file):
        raise FileNotFoundError(file)
    name = os.path.splitext(os.path.basename(file))[0]
    module_spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    module_spec.loader.exec_module(module)
    return module


def resolve(spec: str) -> Impl:
    """Turn an --impl value into an Impl. Raises ImplResolutionError with a message saying what was expected."""
    spec = spec.strip()
    if not spec:
        raise ImplResolutionError("empty --impl value; expected reference, fast, torchvision or module[:attribute]")
    if spec == "reference":
        return Impl(spec, importlib.import_module("reference"), is_reference=True)
    if spec == "fast":
        return Impl(spec, importlib.import_module("fast"))
    if spec == "torchvision":
        return Impl(spec, _torchvision_namespace())
    if spec == "onnxruntime":
        try:  # an optional dependency: imported only when asked for
            from detspec.onnx.runtime import namespace as onnx_namespace
        except ImportError as exc:
            raise ImplResolutionError(f"--impl onnxruntime needs the onnx extra (pip install -e '.[onnx]'): "
                                      f"{exc}") from exc
        return Impl(spec, onnx_namespace())
    module_name, _, attr = spec.partition(":")
    if os.getcwd() not in sys.path:  # ports are usually run from their own folder (appended: detspec's
        sys.path.append(os.getcwd())  # own spec/reference/fast packages keep precedence)
    try:
        if module_name.endswith(".py"):  # a file path
            module = _import_file(module_name)
        else:
            module = importlib.import_module(module_name)
    except Exception as exc:
        raise ImplResolutionError(
            f"cannot import port module {module_name!r} from --impl {spec!r}: {exc!r}. Expected one of "
            f"{', '.join(BUILTIN)} or an importable 'module' / 'module:attribute'") from exc
    namespace: Any = module
    for part in filter(None, attr.split(".")):
        if not hasattr(namespace, part):
            raise ImplResolutionError(f"module {module_name!r} has no attribute {attr!r} (from --impl {spec!r})")
        namespace = getattr(namespace, part)
    if not any(callable(getattr(namespace, n, None)) for n in CONTRACT):
        raise ImplResolutionError(f"--impl {spec!r} exposes none of the contract names "
                                  f"({', '.join(sorted(CONTRACT))})")
    return Impl(spec, namespace)
