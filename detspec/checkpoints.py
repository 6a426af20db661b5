"""Faster R-CNN checkpoints: load detectron2 and torchvision files into detspec's layout, save detspec files.

Spec: d2-spec §5.1 (the R50-FPN state-dict layout, 295 tensors), §5.2 (Caffe2 renames: out of scope here),
d2-spec §5.3 and d2-spec §4.7 (detectron2's MViTv2 detectors: the same FPN and heads over an MViTv2 body;
:func:`layout_config` tells the bodies apart by their keys, and a Mask R-CNN file's ``roi_heads.mask_head.*``
tensors are dropped with a note).

detspec's FasterRCNN has exactly detectron2's state-dict layout, so a detectron2 model-zoo file
(``model_final_*.pkl``) needs no renaming, only reading and checking. A torchvision ``fasterrcnn_resnet50_fpn``
state dict is renamed key by key, and its box predictor is re-ordered: torchvision puts background at label 0,
detspec (like detectron2) last, so detspec class c = torchvision label c + 1.

Checkpoints are untrusted input. Nothing here calls ``pickle.load`` on a user file (:func:`read_checkpoint`):

- torch.save files (zip, or the legacy format with its pickled magic number) are read with
  ``torch.load(path, map_location="cpu", weights_only=True)``; torch's errors are reduced to one line (never its
  advice to retry with weights_only off).
- anything else (detectron2's ``.pkl`` model zoo) goes through :class:`RestrictedUnpickler`, which resolves only
  the numpy globals an array / scalar pickle uses (as checking wrappers: data present and of the size its shape
  and dtype need, numeric dtypes only, never ``numpy.ndarray(shape)``) and an OrderedDict; any other global raises
  :class:`CheckpointError` before anything runs.
- a directory, an empty, truncated or foreign file is a one-line :class:`CheckpointError` naming the file.

Values (:func:`float32_weights`): weights are floating point. float32 is kept; float16 / bfloat16 are converted to
float32 (exact) and float64 rounded to float32, each with a note that ``detspec convert`` prints; float64 values
beyond float32's range, NaN / infinite values and integer, bool or complex tensors are refused naming the keys.
The only integer entries a supported layout has, torchvision's BatchNorm2d ``num_batches_tracked``, are dropped
before the check (detspec's FrozenBN has no step counter); detectron2's legacy extras are also dropped unchecked.

Entry points: :func:`expected_layout`, :func:`load_detectron2`, :func:`convert_torchvision`,
:func:`load_checkpoint`, :func:`save_detspec` (atomic), :func:`convert_main` (``detspec convert --from
detectron2|torchvision|auto``), :func:`read_checkpoint` and :func:`float32_weights` (shared with the MViT path).
"""

from __future__ import annotations

import functools
import importlib
import math
import pickle
import re
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from detspec.io.fileio import UserError, atomic_save, check_output
from layout.rcnn import FasterRCNN
from spec.config import BASE_RCNN_FPN, PROFILES, FasterRCNNConfig

FORMAT = "detspec-faster-rcnn"  # the "format" entry of a file written by save_detspec
SOURCES = ("auto", "detectron2", "torchvision", "detspec")
_LIST = 8  # how many offending keys an error message lists per kind

# d2-spec §5.1: a legacy detectron2 checkpoint may carry these; detectron2's loader ignores them, so do we.
_LEGACY_EXTRAS = re.compile(r"^(pixel_mean|pixel_std|proposal_generator\.anchor_generator\.cell_anchors\.\d+)$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read safely or does not have the expected layout."""


# ------------------------------------------------------------------------------------------------ layout
@functools.lru_cache(maxsize=8)
def _layout(num_classes: int, cfg: FasterRCNNConfig) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """Every key and shape of the meta-architecture (layout/rcnn.py, with its layout components: the classes that
    reference/ and fast/ subclass), built on the meta device from cfg: nothing is typed here, so the checked layout
    is the one the models have."""
    if cfg.box_head.num_conv:
        raise ValueError(f"cfg.box_head.num_conv must be 0 (Base-RCNN-FPN's 2-fc head), got {cfg.box_head.num_conv}")
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = FasterRCNN(cfg, num_classes=num_classes)
    return tuple((k, tuple(t.shape)) for k, t in model.state_dict().items())


def expected_layout(num_classes: int = BASE_RCNN_FPN.roi_heads.num_classes, *,
                    cfg: FasterRCNNConfig = BASE_RCNN_FPN) -> dict[str, tuple[int, ...]]:
    """detspec's (= detectron2's, d2-spec §5.1) Faster R-CNN state-dict layout: key -> shape, in module order.

    num_classes counts foreground classes (80 for COCO in detectron2, 90 in torchvision's label space);
    cls_score has num_classes + 1 rows (background last), bbox_pred 4 * num_classes.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int (foreground classes), got {num_classes!r}")
    return dict(_layout(num_classes, cfg))


_MVIT_KEY = "backbone.bottom_up.patch_embed.proj.weight"  # detectron2's MViTv2 body (d2-spec §5.3)
_MVIT_PROFILES = {c.mvit.depth: c for c in PROFILES.values() if c.mvit is not None}


def layout_config(state: Mapping[str, object], origin: str = "state dict") -> FasterRCNNConfig:
    """The profile whose layout a detector state dict has: BASE_RCNN_FPN for the ResNet-50 body, detectron2-mvitv2-t,
    -s or -b for an MViTv2 body (told apart by its block count: 10, 16, 24; d2-spec §4.2)."""
    if _MVIT_KEY not in state:
        return BASE_RCNN_FPN
    depth = len({k.split(".")[3] for k in state if k.startswith("backbone.bottom_up.blocks.")})
    if depth not in _MVIT_PROFILES:
        known = ", ".join(f"{c.name} ({d} blocks)" for d, c in sorted(_MVIT_PROFILES.items()))
        raise CheckpointError(f"{origin}: an MViTv2 backbone with {depth} blocks; detspec knows {known}")
    return _MVIT_PROFILES[depth]


def _infer_num_classes(state: Mapping[str, object], origin: str) -> int:
    cls = state.get("roi_heads.box_predictor.cls_score.weight")
    if cls is None:
        return BASE_RCNN_FPN.roi_heads.num_classes  # the layout check then reports the missing predictor
    if cls.ndim != 2 or cls.shape[0] < 2:
        raise CheckpointError(f"{origin}: roi_heads.box_predictor.cls_score.weight has shape {list(cls.shape)}; "
                              "expected (num_classes + 1, 1024) with num_classes >= 1")
    return int(cls.shape[0]) - 1


def _listing(label: str, items: list[str]) -> list[str]:
    if not items:
        return []
    more = f" (and {len(items) - _LIST} more)" if len(items) > _LIST else ""
    return [f"  {label} ({len(items)}): " + ", ".join(items[:_LIST]) + more]


def check_layout(state: Mapping[str, Tensor], num_classes: int | None = None, *, origin: str = "state dict",
                 hint: str = "", cfg: FasterRCNNConfig | None = None) -> int:
    """Check ``state`` against :func:`expected_layout` for ``cfg`` (default: :func:`layout_config` of the keys);
    return num_classes (inferred from cls_score if None).

    Raises CheckpointError listing the first missing keys, unexpected keys and shape mismatches.
    """
    if num_classes is None:
        num_classes = _infer_num_classes(state, origin)
    cfg = cfg or layout_config(state, origin)
    expected = expected_layout(num_classes, cfg=cfg)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {list(state[k].shape)} != expected {list(shape)}" for k, shape in expected.items()
             if k in state and tuple(state[k].shape) != shape]
    if missing or unexpected or wrong:
        body, section = ("R50-FPN", "d2-spec §5.1") if cfg.mvit is None else (f"{cfg.name} FPN",
                                                                              "d2-spec §5.1, d2-spec §5.3")
        first = next(iter(expected))
        lines = [f"{origin} does not match detspec's {body} Faster R-CNN layout ({section}: {len(expected)} "
                 f"tensors for {num_classes} classes, e.g. {first} {list(expected[first])}):"]
        lines += _listing("missing", missing) + _listing("unexpected", unexpected) + _listing("shape", wrong)
        if hint:
            lines.append(f"  hint: {hint}")
        raise CheckpointError("\n".join(lines))
    return num_classes


# ------------------------------------------------------------------------------------------------ safe reading
def _numpy_module(name: str):
    for prefix in ("numpy._core", "numpy.core"):  # numpy >= 2 / numpy 1.x; both spellings appear in files
        try:
            return importlib.import_module(f"{prefix}.{name}")
        except ImportError:
            continue
    raise ImportError(f"numpy has no {name} module")


_NUMERIC_KINDS = "biufc"  # bool, int, uint, float, complex: the dtypes a .pkl array may have (checked again later)


def _refuse(message: str) -> CheckpointError:
    return CheckpointError(f"refusing {message}")


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """The one use of ``_codecs.encode`` in numpy pickles (protocol 2 writes bytes as latin-1 text)."""
    if not isinstance(text, str) or encoding.lower().replace("_", "-") not in ("latin1", "latin-1", "iso-8859-1"):
        raise _refuse(f"_codecs.encode({type(text).__name__}, {encoding!r}): only latin-1 text (protocol-2 bytes) "
                      "is allowed")
    return text.encode("latin1")


def _numeric_dtype(dtype: object, what: str) -> np.dtype:
    if not isinstance(dtype, np.dtype) or dtype.kind not in _NUMERIC_KINDS or dtype.fields or dtype.subdtype:
        raise _refuse(f"{what} of dtype {dtype!r}: a .pkl checkpoint may hold only numeric numpy arrays")
    return dtype


def _safe_dtype(spec: object, align: object = False, copy: object = True) -> np.dtype:
    """``numpy.dtype('f4', False, True)`` as numpy pickles it; only the spelled-out numeric dtypes."""
    if not isinstance(spec, str):
        raise _refuse(f"numpy.dtype({type(spec).__name__}): only numeric dtypes named by a string are allowed")
    try:
        dtype = np.dtype(spec, align=bool(align), copy=bool(copy))
    except TypeError as exc:
        raise _refuse(f"numpy.dtype({spec!r}): {exc}") from None
    return _numeric_dtype(dtype, "an array")


def _as_bytes(data: object, what: str) -> bytes | bytearray:
    if isinstance(data, str):  # Python 2 era files: numpy's own __setstate__ also takes latin-1 text
        return data.encode("latin1")
    if isinstance(data, (bytes, bytearray)):
        return data
    raise _refuse(f"{what} whose data is a {type(data).__name__}: numeric array data comes as bytes")


def _shape(shape: object, what: str) -> tuple[int, ...]:
    if not isinstance(shape, tuple) or not all(type(n) is int and n >= 0 for n in shape):
        raise _refuse(f"{what} with shape {shape!r}: expected a tuple of non-negative ints")
    return shape


def _check_size(data: bytes | bytearray, shape: tuple[int, ...], dtype: np.dtype, what: str) -> None:
    need = math.prod(shape) * dtype.itemsize
    if len(data) != need:
        raise _refuse(f"{what}: its data is {len(data)} bytes but shape {list(shape)} of {dtype} needs {need} "
                      "(a truncated or forged array)")


class _NDArrayName:
    """What the global ``numpy.ndarray`` resolves to in a .pkl: only ``_reconstruct``'s first argument.

    Calling ``numpy.ndarray(shape)`` allocates an array without data (uninitialised memory), so it is refused.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return "numpy.ndarray"

    def __call__(self, *args, **kwargs):
        raise _refuse("to call numpy.ndarray(...) directly: it allocates an array without data (uninitialised "
                      "memory); a numpy pickle rebuilds an array with _reconstruct and its bytes "
                      "(ndarray.__setstate__)")


_NDARRAY = _NDArrayName()


class _PickledArray(np.ndarray):
    """An array rebuilt from a .pkl: ``_reconstruct`` makes it empty, ``__setstate__`` gives it its checked bytes."""

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise _refuse(f"a numpy array state {type(state).__name__} of length "
                          f"{len(state) if isinstance(state, tuple) else '?'}: expected (version, shape, dtype, "
                          "fortran, data)")
        shape, dtype, fortran, data = state[-4:]
        what = "a numpy array"
        shape = _shape(shape, what)
        dtype = _numeric_dtype(dtype, what)
        if not isinstance(fortran, bool):
            raise _refuse(f"{what} with a non-bool fortran flag {fortran!r}")
        _check_size(_as_bytes(data, what), shape, dtype, what)
        super().__setstate__(state)
        self._detspec_filled = True


def _safe_scalar(dtype: object, data: object = None) -> np.generic:
    """``numpy...multiarray.scalar(dtype, bytes)``: a numpy scalar, whose bytes must be exactly one item."""
    dtype = _numeric_dtype(dtype, "a numpy scalar")
    raw = _as_bytes(data, "a numpy scalar")
    _check_size(raw, (), dtype, "a numpy scalar")
    return _numpy_module("multiarray").scalar(dtype, bytes(raw))


def _safe_frombuffer(buf: object, dtype: object, shape: object, order: object = "C") -> np.ndarray:
    """``numpy...numeric._frombuffer(buf, dtype, shape, order)``: protocol 5's array, with its data in ``buf``."""
    what = "a numpy array (protocol 5)"
    dtype = _numeric_dtype(dtype, what)
    shape = _shape(shape, what)
    if order not in ("C", "F"):
        raise _refuse(f"{what} with order {order!r}")
    raw = _as_bytes(buf, what)
    _check_size(raw, shape, dtype, what)
    return np.frombuffer(raw, dtype=dtype).reshape(shape, order=order)


_ALLOWED = "numpy ndarray (through _reconstruct only), dtype, _reconstruct, _frombuffer, scalar; " \
           "collections.OrderedDict; _codecs.encode for latin-1 only"


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler for ``.pkl`` checkpoints (detectron2's model zoo) that rebuilds numpy arrays and nothing else.

    Any other global (``os.system``, ``builtins.eval``, a user class, torch's tensor rebuilders ...) raises
    CheckpointError naming it, at the moment the pickle asks for it, so no foreign callable is ever obtained, let
    alone called. The numpy globals resolve to checking wrappers: an array is admitted only through the path that
    carries its bytes (``_reconstruct(ndarray, (0,), b'b')`` + ``ndarray.__setstate__((shape, dtype, fortran,
    data))``, or protocol 5's ``_frombuffer(data, dtype, shape, order)``), only with a numeric dtype, and only when
    ``len(data)`` equals the shape's element count times the item size. ``numpy.ndarray(shape)`` itself, which
    would hand the model uninitialised memory, is refused.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._arrays: list[_PickledArray] = []

    def _reconstruct(self, subtype: object, shape: object, dtype: object) -> _PickledArray:
        if subtype is not _NDARRAY or shape != (0,) or dtype not in (b"b", "b"):
            raise _refuse(f"_reconstruct({subtype!r}, {shape!r}, {dtype!r}): numpy pickles an array as "
                          "_reconstruct(numpy.ndarray, (0,), b'b') followed by its data")
        array = _numpy_module("multiarray")._reconstruct(_PickledArray, (0,), b"b")  # 0 bytes: nothing to leak
        self._arrays.append(array)
        return array

    def find_class(self, module: str, name: str):
        if (module, name) == ("numpy", "ndarray"):
            return _NDARRAY
        if (module, name) == ("numpy", "dtype"):
            return _safe_dtype
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        if module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            if name == "_reconstruct":
                return self._reconstruct
            if name == "scalar":
                return _safe_scalar
        if module in ("numpy.core.numeric", "numpy._core.numeric") and name == "_frombuffer":
            return _safe_frombuffer
        hint = ""
        if module.split(".")[0] == "torch":
            hint = " (this looks like torch tensors pickled with pickle: save them with torch.save instead)"
        raise CheckpointError(f"refusing to unpickle global {module}.{name}: a .pkl checkpoint may hold only numpy "
                              f"arrays (allowed globals: {_ALLOWED}){hint}")

    def persistent_load(self, pid):
        raise _refuse(f"a persistent id ({type(pid).__name__}) in a .pkl checkpoint")

    def load(self):
        obj = super().load()
        if any(not getattr(a, "_detspec_filled", False) for a in self._arrays):
            raise _refuse("a numpy array reconstructed without its data (no __setstate__ with its bytes)")
        return obj


# torch.save's legacy (non-zip) format starts with a pickled magic number; torch reads those, not our unpickler
_TORCH_LEGACY_HEADS = tuple(pickle.dumps(0x1950A86A20F9469CFC6C, protocol=p) for p in range(2, 6))
_ZIP_HEAD = b"PK\x03\x04"


_REFUSED = "torch.load(weights_only=True) refused the file: {} (a checkpoint must hold only tensors and plain " \
           "containers)"


def _torch_error_detail(exc: Exception) -> str:
    """A one-line reason from torch.load's error, without torch's advice (never "weights_only=False")."""
    text = str(exc)
    found = re.search(r"GLOBAL ([\w.]+)", text)  # "Unsupported global: GLOBAL x.y", "unsupported GLOBAL x.y"
    if found:
        return _REFUSED.format(f"unsupported global {found[1]}")
    found = re.search(r"Unsupported operand (\d+)", text)
    if found:
        return _REFUSED.format(f"unsupported pickle opcode {found[1]}")
    if "PytorchStreamReader" in text or "central directory" in text:
        reason = text.split(".")[0].replace("PytorchStreamReader failed", "failed")
        return f"not a readable torch checkpoint: a truncated or corrupt zip archive ({reason})"
    if isinstance(exc, EOFError):
        return "not a readable torch checkpoint: the file ends early (truncated)"
    advice = ("weights_only", "Weights only", "trust", "Check the documentation", "file an issue", "safe_globals",
              "Re-running", "two options")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not any(a in line for a in advice)]
    first = lines[0].removeprefix("WeightsUnpickler error:").strip() if lines else ""
    if not first or len(first) > 200:
        first = "a corrupt or foreign file"
    return f"not a readable torch checkpoint ({type(exc).__name__}: {first})"


def _read_torch(path: Path) -> object:
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickle protocols; the error below says it all
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)  # checkpoints are untrusted input
    except OSError:
        raise
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, KeyError, EOFError ... on bad input
        raise CheckpointError(f"{path}: {_torch_error_detail(exc)}") from None


def _read_pickle(path: Path) -> object:
    with open(path, "rb") as f:
        try:
            return RestrictedUnpickler(f, encoding="latin1").load()  # latin1: Python 2 era model-zoo files
        except CheckpointError as exc:
            raise CheckpointError(f"{path}: {exc}") from None
        except Exception as exc:  # malformed input: report it as such, whatever the unpickler tripped on
            detail = "it ends early (truncated)" if isinstance(exc, EOFError) or "truncated" in str(exc) else \
                f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            raise CheckpointError(f"{path}: not a readable checkpoint: {detail} (expected a torch.save file or a "
                                  "pickle of numpy arrays)") from None


def read_checkpoint(path: str | Path) -> object:
    """Read an untrusted checkpoint file: torch.save files (zip or legacy) with ``weights_only=True``, anything
    else through :class:`RestrictedUnpickler`. Every failure is a one-line CheckpointError (or OSError) naming it.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file")
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file")
    with open(path, "rb") as f:
        head = f.read(32)
    if not head:
        raise CheckpointError(f"{path}: the file is empty")
    if head.startswith(_ZIP_HEAD) or zipfile.is_zipfile(path) or head.startswith(_TORCH_LEGACY_HEADS):
        return _read_torch(path)
    return _read_pickle(path)


_read = read_checkpoint


# ------------------------------------------------------------------------------------------------ weight values
# Weights are floating point. float32 is used as it is; float16 and bfloat16 convert to float32 exactly; float64
# rounds to the nearest float32, and a float64 file whose finite values exceed float32's range (3.4e38) is refused
# rather than turned into infinities. Integer, bool, complex and other dtypes are refused, and so is any NaN or
# infinity, naming the keys. Layout keys that are legitimately integer (BatchNorm2d's num_batches_tracked in a
# torchvision state dict) are dropped by their callers before this check.
_WIDENED = (torch.float16, torch.bfloat16)
_F32_MAX = float(torch.finfo(torch.float32).max)


def checkpoint_tensor(key: str, value: object, origin: str) -> Tensor:
    """A checkpoint entry as a dense tensor: a strided tensor (detached) or a numeric numpy array (native byte
    order, C-contiguous, writable); anything else is a CheckpointError naming origin and key. No dtype check
    (see float32_weights)."""
    if isinstance(value, Tensor):
        if value.layout != torch.strided:
            raise CheckpointError(f"{origin}: {key} is a {value.layout} tensor; expected a dense tensor")
        return value.detach()
    if isinstance(value, (np.ndarray, np.generic)):
        array = np.asarray(value)
        if array.dtype.kind not in _NUMERIC_KINDS:
            raise CheckpointError(f"{origin}: {key} is a numpy array of dtype {array.dtype}; expected a numeric array")
        if not array.dtype.isnative:
            array = array.astype(array.dtype.newbyteorder("="))
        if not array.flags.writeable or not array.flags.c_contiguous:
            array = np.array(array, copy=True, order="C")
        return torch.from_numpy(array)
    raise CheckpointError(f"{origin}: {key} is a {type(value).__name__}; expected a tensor or numpy array")


def _keys(items: list[str]) -> str:
    more = f" and {len(items) - _LIST} more" if len(items) > _LIST else ""
    return ", ".join(items[:_LIST]) + more


def float32_weights(tensors: Mapping[str, Tensor], origin: str,
                    notes: list[str] | None = None) -> dict[str, Tensor]:
    """Check checkpoint values and return them as float32 (see the rules above); conversions go into ``notes``.

    Raises CheckpointError (one line, naming the keys) for non-floating dtypes, NaN / infinite values and float64
    values beyond float32's range.
    """
    bad_dtype = [f"{key} ({str(t.dtype).removeprefix('torch.')})" for key, t in tensors.items()
                 if t.dtype not in (torch.float32, torch.float64, *_WIDENED)]
    if bad_dtype:  # before looking at any value
        raise CheckpointError(f"{origin}: weights must be floating point (float32; float16, bfloat16 and float64 are "
                              f"converted to float32), but {len(bad_dtype)} tensors are not: {_keys(bad_dtype)}")
    non_finite, overflow = [], []
    widened, rounded = 0, 0
    out: dict[str, Tensor] = {}
    for key, t in tensors.items():
        # fast path: a finite float64 sum means every value is finite (NaN and inf propagate); else count exactly
        finite = torch.isfinite(t) if not bool(torch.isfinite(t.sum(dtype=torch.float64))) else None
        if finite is not None and not bool(finite.all()):
            nan = int(torch.isnan(t).sum())
            non_finite.append(f"{key} ({nan} NaN, {t.numel() - int(finite.sum()) - nan} inf)")
            continue
        if t.dtype == torch.float64:
            if t.numel() and float(t.abs().max()) > _F32_MAX:
                overflow.append(f"{key} (|x| up to {float(t.abs().max()):.3g})")
                continue
            rounded += 1
        elif t.dtype != torch.float32:
            widened += 1
        out[key] = t if t.dtype == torch.float32 else t.float()
    if non_finite:
        raise CheckpointError(f"{origin}: weights must be finite, but {len(non_finite)} tensors hold NaN or "
                              f"infinite values: {_keys(non_finite)}")
    if overflow:
        raise CheckpointError(f"{origin}: float64 weights beyond float32's range (max {_F32_MAX:.3g}) in "
                              f"{len(overflow)} tensors: {_keys(overflow)}")
    if notes is not None:
        if widened:
            notes.append(f"converted {widened} float16/bfloat16 tensors to float32 (exact)")
        if rounded:
            notes.append(f"converted {rounded} float64 tensors to float32 (rounded to nearest)")
    return out


# ------------------------------------------------------------------------------------------------ sources
_CAFFE2_MESSAGE = ("looks like a Caffe2 / Detectron1 / MSRA checkpoint (underscore names such as res2_0_branch2a_w, "
                   "d2-spec §5.2); only detectron2-native model-zoo files (model_final_*.pkl, a dict with 'model' "
                   "and '__author__'), torchvision fasterrcnn_resnet50_fpn state dicts and detspec files are "
                   "supported")
_EXPECTED_SOURCES = ("expected a detectron2 model-zoo file (model_final_*.pkl: {'model': {name: array}, "
                     "'__author__': ...}), a torchvision fasterrcnn_resnet50_fpn state dict (.pth) or a detspec "
                     f"file ({{'model': ..., 'format': '{FORMAT}', 'num_classes': K}})")


def _looks_caffe2(keys: list[str]) -> bool:
    # detectron2 / torchvision names are dotted module paths; Caffe2 blob names never contain a dot
    return bool(keys) and sum("." not in k for k in keys) * 2 > len(keys)


def _guess(keys: list[str]) -> str | None:
    """Which family a state dict's keys belong to: torchvision / detectron2 Faster R-CNN, caffe2, mvit or None."""
    if any(k.startswith(("backbone.body.", "rpn.head.", "roi_heads.box_head.fc6.")) for k in keys):
        return "torchvision"
    if any(k.startswith(("backbone.bottom_up.", "proposal_generator.")) for k in keys):
        return "detectron2"
    if _looks_caffe2(keys):
        return "caffe2"
    if any(k.startswith(("conv_proj.", "pos_encoding.")) for k in keys) and any(k.startswith("blocks.") for k in keys):
        return "mvit"  # torchvision's MViT (and detspec's, the same layout)
    return None


guess_family = _guess


def _unwrap(obj: object, origin: str) -> tuple[Mapping[str, object], dict]:
    """Split a loaded file into (state dict, metadata): {"model": sd, ...}, {"state_dict": sd, ...} or a bare sd."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{origin}: the file holds a {type(obj).__name__}; {_EXPECTED_SOURCES}")
    if "blobs" in obj:
        raise CheckpointError(f"{origin} {_CAFFE2_MESSAGE}")
    for wrapper in ("model", "state_dict"):
        if wrapper in obj:
            state = obj[wrapper]
            if not isinstance(state, Mapping):
                raise CheckpointError(f"{origin}: its {wrapper!r} entry is a {type(state).__name__}; expected a "
                                      "mapping of parameter names to tensors or arrays")
            return state, {k: v for k, v in obj.items() if k != wrapper}
    return obj, {}


def _state_of(state: Mapping[str, object], origin: str, drop: re.Pattern | None = None) -> dict[str, Tensor]:
    """Keys checked to be strings, keys matching ``drop`` left out unchecked, values as tensors (dtype unchecked)."""
    bad = [k for k in state if not isinstance(k, str)]
    if bad:
        raise CheckpointError(f"{origin}: state-dict keys must be strings, got {bad[:_LIST]!r}")
    return {k: checkpoint_tensor(k, v, origin) for k, v in state.items() if drop is None or not drop.fullmatch(k)}


def _ordered(state: Mapping[str, Tensor], num_classes: int) -> dict[str, Tensor]:
    return {k: state[k] for k in expected_layout(num_classes, cfg=layout_config(state))}


# detectron2 Mask R-CNN files (the MViTv2 detectors are Mask R-CNNs, d2-spec §4.7) carry a mask branch that a box
# detector does not use: its tensors are reported and dropped.
_MASK_HEAD = re.compile(r"roi_heads\.mask_head\..*")


def _from_detectron2(state: Mapping[str, object], meta: dict, origin: str,
                     notes: list[str] | None = None) -> dict[str, Tensor]:
    keys = list(state)
    if _looks_caffe2(keys):
        raise CheckpointError(f"{origin} {_CAFFE2_MESSAGE}")
    tensors = _state_of(state, origin, drop=_LEGACY_EXTRAS)  # the extras are ignored, values unchecked
    mask = [k for k in tensors if _MASK_HEAD.fullmatch(k)]
    if mask:
        for k in mask:
            del tensors[k]
        if notes is not None:
            notes.append(f"dropped the mask branch ({len(mask)} roi_heads.mask_head.* tensors): detspec runs the box "
                         "branch")
    hint = ""
    if _guess(keys) == "torchvision":
        hint = "this is a torchvision state dict: convert it with source='torchvision' (--from torchvision)"
    elif meta.get("matching_heuristics"):
        hint = ("the file asks for detectron2's suffix-matching heuristics (matching_heuristics=True, e.g. an "
                "ImageNet backbone); only full detectron2-native Faster R-CNN files are supported")
    num_classes = check_layout(tensors, origin=origin, hint=hint)  # which file is it, before what it holds
    return float32_weights(_ordered(tensors, num_classes), origin, notes)


def load_detectron2(path: str | Path, *, notes: list[str] | None = None) -> dict[str, Tensor]:
    """Read a detectron2 Faster R-CNN checkpoint (.pkl model-zoo file or .pth) as detspec state dict (tensors).

    Drops the legacy extras (pixel_mean, pixel_std, anchor_generator.cell_anchors.*) and checks the result
    against :func:`expected_layout` with num_classes = cls_score rows - 1. Values follow
    :func:`float32_weights`; its conversion notes are appended to ``notes``.
    """
    origin = str(path)
    state, meta = _unwrap(_read(path), origin)
    return _from_detectron2(state, meta, origin, notes)


# torchvision fasterrcnn_resnet50_fpn -> detspec. torchvision's layer1..layer4 are detectron2's res2..res5, and
# its FPN block i (finest first) is detectron2's level i + 2 (fpn_lateral2 / fpn_output2 for stride 4).
_FIRST_LEVEL = round(math.log2(BASE_RCNN_FPN.fpn.strides[0]))  # 2: P2 has stride 4
_STAGE_OFFSET = _FIRST_LEVEL - 1  # layer1 -> res2
_BN = r"(weight|bias|running_mean|running_var)"
_BOTTOM_UP = "backbone.bottom_up."


def _stage(m: re.Match) -> str:
    return f"{_BOTTOM_UP}res{int(m['layer']) + _STAGE_OFFSET}.{m['block']}"


_TV_RULES: list[tuple[re.Pattern, Callable[[re.Match], str]]] = [
    (re.compile(r"backbone\.body\.conv1\.weight"), lambda m: f"{_BOTTOM_UP}stem.conv1.weight"),
    (re.compile(rf"backbone\.body\.bn1\.{_BN}"), lambda m: f"{_BOTTOM_UP}stem.conv1.norm.{m[1]}"),
    (re.compile(r"backbone\.body\.layer(?P<layer>\d)\.(?P<block>\d+)\.conv(?P<k>\d)\.weight"),
     lambda m: f"{_stage(m)}.conv{m['k']}.weight"),
    (re.compile(rf"backbone\.body\.layer(?P<layer>\d)\.(?P<block>\d+)\.bn(?P<k>\d)\.{_BN}"),
     lambda m: f"{_stage(m)}.conv{m['k']}.norm.{m[4]}"),
    (re.compile(r"backbone\.body\.layer(?P<layer>\d)\.(?P<block>\d+)\.downsample\.0\.weight"),
     lambda m: f"{_stage(m)}.shortcut.weight"),
    (re.compile(rf"backbone\.body\.layer(?P<layer>\d)\.(?P<block>\d+)\.downsample\.1\.{_BN}"),
     lambda m: f"{_stage(m)}.shortcut.norm.{m[3]}"),
    (re.compile(r"backbone\.fpn\.inner_blocks\.(\d)\.0\.(weight|bias)"),
     lambda m: f"backbone.fpn_lateral{int(m[1]) + _FIRST_LEVEL}.{m[2]}"),
    (re.compile(r"backbone\.fpn\.layer_blocks\.(\d)\.0\.(weight|bias)"),
     lambda m: f"backbone.fpn_output{int(m[1]) + _FIRST_LEVEL}.{m[2]}"),
    # conv.0.0 since torchvision 0.13 (a Conv2dNormActivation in a Sequential); plain "conv" before
    (re.compile(r"rpn\.head\.conv(?:\.0\.0)?\.(weight|bias)"), lambda m: f"proposal_generator.rpn_head.conv.{m[1]}"),
    (re.compile(r"rpn\.head\.cls_logits\.(weight|bias)"),
     lambda m: f"proposal_generator.rpn_head.objectness_logits.{m[1]}"),
    (re.compile(r"rpn\.head\.bbox_pred\.(weight|bias)"), lambda m: f"proposal_generator.rpn_head.anchor_deltas.{m[1]}"),
    (re.compile(r"roi_heads\.box_head\.fc6\.(weight|bias)"), lambda m: f"roi_heads.box_head.fc1.{m[1]}"),
    (re.compile(r"roi_heads\.box_head\.fc7\.(weight|bias)"), lambda m: f"roi_heads.box_head.fc2.{m[1]}"),
    (re.compile(r"roi_heads\.box_predictor\.(cls_score|bbox_pred)\.(weight|bias)"),
     lambda m: f"roi_heads.box_predictor.{m[1]}.{m[2]}"),
]
# nn.BatchNorm2d's step counter (a model built without pretrained weights has BatchNorm2d, not FrozenBatchNorm2d)
_TV_DROP = re.compile(r"backbone\.body\.(bn1|layer\d\.\d+\.(bn\d|downsample\.1))\.num_batches_tracked")


def rename_torchvision_key(key: str) -> str | None:
    for pattern, target in _TV_RULES:
        m = pattern.fullmatch(key)
        if m:
            return target(m)
    return None


def convert_torchvision(state_dict: Mapping[str, Tensor], *, origin: str = "torchvision state dict",
                        notes: list[str] | None = None) -> dict[str, Tensor]:
    """torchvision ``fasterrcnn_resnet50_fpn`` state dict -> detspec (detectron2) layout.

    Renames every key (backbone.body.layerN.B.convK -> backbone.bottom_up.res{N+1}.B.convK, ...), drops
    BatchNorm2d's num_batches_tracked, moves cls_score row 0 (background) to the end and drops bbox_pred's first
    4 rows (the background slot), so detspec class c = torchvision label c + 1. Unknown keys are errors.
    num_batches_tracked (int64, the only integer entries) is dropped unchecked; every other value follows
    :func:`float32_weights`.
    """
    if not isinstance(state_dict, Mapping):
        raise CheckpointError(f"{origin}: expected a mapping of parameter names to tensors, got "
                              f"{type(state_dict).__name__}")
    # num_batches_tracked dropped first, so the values of every key that is kept can be checked before renaming
    # (errors name the user's keys); a detectron2 file's keys all fail the renaming anyway.
    tensors = float32_weights(_state_of(state_dict, origin, drop=_TV_DROP), origin, notes)
    out: dict[str, Tensor] = {}
    unknown, dupes = [], []
    for key, value in tensors.items():
        new = rename_torchvision_key(key)
        if new is None:
            unknown.append(key)
        elif new in out:
            dupes.append(f"{key} -> {new}")
        else:
            out[new] = value
    if unknown or dupes:
        lines = [f"{origin} is not a torchvision fasterrcnn_resnet50_fpn state dict (expected keys such as "
                 "backbone.body.layer1.0.conv1.weight, backbone.fpn.inner_blocks.0.0.weight, "
                 "rpn.head.cls_logits.weight, roi_heads.box_head.fc6.weight, "
                 "roi_heads.box_predictor.cls_score.weight):"]
        lines += _listing("unknown", unknown) + _listing("renamed twice", dupes)
        guess = _guess(list(tensors))
        if guess == "detectron2":
            lines.append("  hint: this is already in detectron2's layout: load it with source='detectron2'")
        elif guess == "caffe2":
            lines.append(f"  hint: it {_CAFFE2_MESSAGE}")
        raise CheckpointError("\n".join(lines))

    # Box predictor surgery: torchvision label 0 is background, detspec's background is the last row.
    cls_w, cls_b = "roi_heads.box_predictor.cls_score.weight", "roi_heads.box_predictor.cls_score.bias"
    reg_w, reg_b = "roi_heads.box_predictor.bbox_pred.weight", "roi_heads.box_predictor.bbox_pred.bias"
    if cls_w in out:
        rows = out[cls_w].shape[0] if out[cls_w].ndim else 0
        if rows < 2:
            raise CheckpointError(f"{origin}: roi_heads.box_predictor.cls_score.weight has shape "
                                  f"{list(out[cls_w].shape)}; expected (num_classes incl. background >= 2, 1024)")
        box_dim = len(BASE_RCNN_FPN.box_head.box_coder.weights)
        for key in (cls_w, cls_b):
            if key in out and out[key].ndim >= 1 and out[key].shape[0] == rows:
                out[key] = torch.cat([out[key][1:], out[key][:1]])  # row 0 (background) -> last
        for key in (reg_w, reg_b):
            if key in out and out[key].ndim >= 1 and out[key].shape[0] == box_dim * rows:
                out[key] = out[key][box_dim:].clone()  # drop the background's 4 deltas
            elif key in out:
                raise CheckpointError(f"{origin}: {key} has shape {list(out[key].shape)}; torchvision's predictor "
                                      f"has {box_dim} x {rows} rows (one box per class including background)")
    num_classes = check_layout(out, origin=origin)
    return _ordered(out, num_classes)


def _from_detspec(state: Mapping[str, object], meta: dict, origin: str,
                  notes: list[str] | None = None) -> dict[str, Tensor]:
    k = meta.get("num_classes")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise CheckpointError(f"{origin}: a {FORMAT} file needs a positive int 'num_classes', got {k!r}")
    tensors = _state_of(state, origin)
    check_layout(tensors, k, origin=origin)
    return float32_weights(_ordered(tensors, k), origin, notes)


def load_checkpoint(path: str | Path, source: str = "auto", *, notes: list[str] | None = None) -> dict[str, Tensor]:
    """Read a Faster R-CNN checkpoint in detspec's layout (key -> tensor, expected_layout's order).

    source: "detectron2" (.pkl model zoo or .pth), "torchvision" (fasterrcnn_resnet50_fpn .pth), "detspec"
    (a save_detspec file) or "auto" (recognised from the file's format entry and key names).
    Values are float32 (:func:`float32_weights`: other float dtypes converted, with a line in ``notes``; integer,
    bool, complex, NaN and infinite weights refused).
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    origin = str(path)
    obj = _read(path)
    state, meta = _unwrap(obj, origin)
    is_detspec = meta.get("format") == FORMAT
    if source == "auto":
        if is_detspec:
            source = "detspec"
        else:
            guess = _guess(list(state))
            if guess == "caffe2":
                raise CheckpointError(f"{origin} {_CAFFE2_MESSAGE}")
            if guess == "mvit":
                raise CheckpointError(f"{origin}: this is an MViT state dict, not a Faster R-CNN checkpoint: "
                                      "convert it with --from torchvision-mvit")
            if guess is None:
                sample = ", ".join(map(str, list(state)[:4])) or "no keys"
                raise CheckpointError(f"{origin}: unrecognised checkpoint ({sample}); {_EXPECTED_SOURCES}")
            source = guess
    if source == "detspec":
        if not is_detspec:
            raise CheckpointError(f"{origin}: not a detspec file (its 'format' is {meta.get('format')!r}, expected "
                                  f"{FORMAT!r}); {_EXPECTED_SOURCES}")
        return _from_detspec(state, meta, origin, notes)
    if source == "torchvision":
        return convert_torchvision(state, origin=origin, notes=notes)
    return _from_detectron2(state, meta, origin, notes)


def compact_tensor(t: Tensor) -> Tensor:
    """t itself, or a copy where t is a view of a larger storage (torch.save would write the whole storage)."""
    if t.is_contiguous() and t.storage_offset() == 0 and t.untyped_storage().nbytes() == t.numel() * t.element_size():
        return t
    return t.clone(memory_format=torch.contiguous_format)


def save_detspec(state_dict: Mapping[str, Tensor], path: str | Path) -> None:
    """Check ``state_dict`` against the layout and save {"model": sd, "format": FORMAT, "num_classes": K}.

    The file is written atomically (a temporary file renamed over ``path``): never half-written.
    """
    tensors = {k: v.cpu() for k, v in _state_of(state_dict, "state_dict").items()}
    num_classes = check_layout(tensors, origin="state_dict")
    model = {k: compact_tensor(v) for k, v in float32_weights(_ordered(tensors, num_classes), "state_dict").items()}
    obj = {"model": model, "format": FORMAT, "num_classes": num_classes}
    atomic_save(path, lambda f: torch.save(obj, f))


def convert_main(src: str | Path, dst: str | Path, source: str) -> None:
    """``detspec convert SRC DST --from SOURCE``: load SRC as ``source`` and save it as a detspec file.

    DST is checked first (its directory exists, it is not a directory, it is not SRC under any name) and written
    atomically.
    """
    check_output(dst, inputs=[src])
    notes: list[str] = []
    state = load_checkpoint(src, source, notes=notes)
    try:
        save_detspec(state, dst)
    except OSError as exc:  # a full disk, a read-only directory: the earlier DST (if any) is still there
        raise UserError(f"{dst}: cannot write the output ({exc.strerror or exc}); nothing was changed") from None
    for note in notes:
        print(f"note: {src}: {note}")
    k = state["roi_heads.box_predictor.cls_score.weight"].shape[0] - 1
    cfg = layout_config(state)
    body = "" if cfg.mvit is None else f", MViTv2 body: profile {cfg.name}"
    print(f"wrote {dst}: {len(state)} tensors, {sum(t.numel() for t in state.values()):,} values, {k} classes "
          f"(background last), from {source}{body}")
