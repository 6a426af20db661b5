"""Faster R-CNN checkpoints: load detectron2 and torchvision files into detspec's layout, save detspec files.

Spec: d2-spec §5.1 (the R50-FPN state-dict layout, 295 tensors), §5.2 (Caffe2 renames: out of scope here).

detspec's FasterRCNN has exactly detectron2's state-dict layout, so a detectron2 model-zoo file
(``model_final_*.pkl``) needs no renaming, only reading and checking. A torchvision ``fasterrcnn_resnet50_fpn``
state dict is renamed key by key, and its box predictor is re-ordered: torchvision puts background at label 0,
detspec (like detectron2) last, so detspec class c = torchvision label c + 1.

Checkpoints are untrusted input. Nothing here calls ``pickle.load`` on a user file:

- ``.pkl`` files go through :class:`RestrictedUnpickler`, which resolves only the few globals that numpy arrays
  and scalars (and an OrderedDict) need; any other global raises :class:`CheckpointError` before anything runs.
- ``.pth`` / ``.pt`` files (and any zip-format torch file) are read with
  ``torch.load(path, map_location="cpu", weights_only=True)``.

Entry points: :func:`expected_layout`, :func:`load_detectron2`, :func:`convert_torchvision`,
:func:`load_checkpoint`, :func:`save_detspec`, :func:`convert_main` (``detspec convert --from detectron2|torchvision``).
"""

from __future__ import annotations

import functools
import math
import pickle
import re
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from spec.config import BASE_RCNN_FPN, FasterRCNNConfig

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
    import reference  # the reference modules define the backbone / FPN / RPN key names and shapes

    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        resnet = reference.ResNet(cfg.resnet)
        fpn = reference.FPN([resnet.out_feature_channels[f] for f in cfg.fpn.in_features], cfg.fpn)
        rpn = reference.RPN(cfg.rpn, cfg.anchors, in_channels=cfg.fpn.out_channels)
    items: list[tuple[str, tuple[int, ...]]] = []
    for prefix, module in (("backbone.bottom_up.", resnet), ("backbone.", fpn), ("proposal_generator.", rpn)):
        items += [(prefix + k, tuple(t.shape)) for k, t in module.state_dict().items()]

    box = cfg.box_head
    if box.num_conv:
        raise ValueError(f"cfg.box_head.num_conv must be 0 (Base-RCNN-FPN's 2-fc head), got {box.num_conv}")
    in_dim = cfg.fpn.out_channels * box.pooler_resolution**2  # the (C, 7, 7) channel-major flatten: 12544
    for i in range(1, box.num_fc + 1):  # roi_heads.box_head.fc1, fc2
        items += [(f"roi_heads.box_head.fc{i}.weight", (box.fc_dim, in_dim)),
                  (f"roi_heads.box_head.fc{i}.bias", (box.fc_dim,))]
        in_dim = box.fc_dim
    box_dim = len(box.box_coder.weights)  # 4 deltas per box
    reg_rows = box_dim if box.cls_agnostic_bbox_reg else box_dim * num_classes  # row 4c + j
    items += [("roi_heads.box_predictor.cls_score.weight", (num_classes + 1, in_dim)),  # background last
              ("roi_heads.box_predictor.cls_score.bias", (num_classes + 1,)),
              ("roi_heads.box_predictor.bbox_pred.weight", (reg_rows, in_dim)),
              ("roi_heads.box_predictor.bbox_pred.bias", (reg_rows,))]
    return tuple(items)


def expected_layout(num_classes: int = BASE_RCNN_FPN.roi_heads.num_classes, *,
                    cfg: FasterRCNNConfig = BASE_RCNN_FPN) -> dict[str, tuple[int, ...]]:
    """detspec's (= detectron2's, d2-spec §5.1) Faster R-CNN state-dict layout: key -> shape, in module order.

    num_classes counts foreground classes (80 for COCO in detectron2, 90 in torchvision's label space);
    cls_score has num_classes + 1 rows (background last), bbox_pred 4 * num_classes.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int (foreground classes), got {num_classes!r}")
    return dict(_layout(num_classes, cfg))


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
                 hint: str = "") -> int:
    """Check ``state`` against :func:`expected_layout`; return num_classes (inferred from cls_score if None).

    Raises CheckpointError listing the first missing keys, unexpected keys and shape mismatches.
    """
    if num_classes is None:
        num_classes = _infer_num_classes(state, origin)
    expected = expected_layout(num_classes)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {list(state[k].shape)} != expected {list(shape)}" for k, shape in expected.items()
             if k in state and tuple(state[k].shape) != shape]
    if missing or unexpected or wrong:
        lines = [f"{origin} does not match detspec's R50-FPN Faster R-CNN layout (d2-spec §5.1: {len(expected)} "
                 f"tensors for {num_classes} classes, e.g. backbone.bottom_up.stem.conv1.weight "
                 f"{list(expected['backbone.bottom_up.stem.conv1.weight'])}):"]
        lines += _listing("missing", missing) + _listing("unexpected", unexpected) + _listing("shape", wrong)
        if hint:
            lines.append(f"  hint: {hint}")
        raise CheckpointError("\n".join(lines))
    return num_classes


# ------------------------------------------------------------------------------------------------ safe reading
def _numpy_module(name: str):
    import importlib

    for prefix in ("numpy._core", "numpy.core"):  # numpy >= 2 / numpy 1.x; both spellings appear in files
        try:
            return importlib.import_module(f"{prefix}.{name}")
        except ImportError:
            continue
    raise ImportError(f"numpy has no {name} module")


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """The one use of ``_codecs.encode`` in numpy pickles (protocol 2 writes bytes as latin-1 text)."""
    if not isinstance(text, str) or encoding.lower().replace("_", "-") not in ("latin1", "latin-1", "iso-8859-1"):
        raise CheckpointError(f"refusing _codecs.encode({type(text).__name__}, {encoding!r}): only latin-1 text "
                              "(protocol-2 bytes) is allowed")
    return text.encode("latin1")


@functools.lru_cache(maxsize=1)
def _allowed_globals() -> dict[tuple[str, str], object]:
    multiarray, numeric = _numpy_module("multiarray"), _numpy_module("numeric")
    allowed: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("collections", "OrderedDict"): OrderedDict,
        ("_codecs", "encode"): _latin1_encode,
    }
    for prefix in ("numpy.core", "numpy._core"):
        allowed[(f"{prefix}.multiarray", "_reconstruct")] = multiarray._reconstruct  # ndarray, protocol <= 4
        allowed[(f"{prefix}.multiarray", "scalar")] = multiarray.scalar  # numpy scalars
        allowed[(f"{prefix}.numeric", "_frombuffer")] = numeric._frombuffer  # ndarray, protocol 5
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler for detectron2 ``.pkl`` files that resolves only numpy array / scalar globals.

    Any other global (``os.system``, ``builtins.eval``, a user class, ...) raises CheckpointError naming it,
    at the moment the pickle asks for it, so no foreign callable is ever obtained, let alone called.
    """

    def find_class(self, module: str, name: str):
        allowed = _allowed_globals()
        if (module, name) in allowed:
            return allowed[(module, name)]
        raise CheckpointError(f"refusing to unpickle global {module}.{name}: a detectron2 .pkl checkpoint holds only "
                              "numpy arrays (allowed globals: numpy ndarray, dtype, _reconstruct, _frombuffer, "
                              "scalar; collections.OrderedDict; _codecs.encode for latin-1 only)")

    def persistent_load(self, pid):
        raise CheckpointError(f"refusing a persistent id ({type(pid).__name__}) in a .pkl checkpoint")


def _torch_error_detail(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    useful = [line for line in lines if "GLOBAL" in line or "Unsupported" in line]
    return useful[0] if useful else (lines[0] if lines else type(exc).__name__)


def _read_torch(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)  # checkpoints are untrusted input
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{path}: torch.load(weights_only=True) refused the file: {_torch_error_detail(exc)} "
                              "(a checkpoint must hold only tensors and plain containers)") from exc


def _read_pickle(path: Path) -> object:
    with open(path, "rb") as f:
        try:
            return RestrictedUnpickler(f, encoding="latin1").load()  # latin1: Python 2 era model-zoo files
        except CheckpointError as exc:
            raise CheckpointError(f"{path}: {exc}") from None
        except Exception as exc:  # malformed input: report it as such, whatever the unpickler tripped on
            raise CheckpointError(f"{path}: not a readable pickle checkpoint ({type(exc).__name__}: {exc})") from exc


def _read(path: str | Path) -> object:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    if zipfile.is_zipfile(path) or path.suffix in (".pth", ".pt"):
        return _read_torch(path)
    return _read_pickle(path)


def _to_tensor(key: str, value: object, origin: str) -> Tensor:
    if isinstance(value, Tensor):
        return value
    if isinstance(value, (np.ndarray, np.generic)):
        array = np.asarray(value)
        if array.dtype.kind not in "biuf":
            raise CheckpointError(f"{origin}: {key} is a numpy array of dtype {array.dtype}; expected a numeric array")
        if not array.flags.writeable or not array.flags.c_contiguous:
            array = np.array(array, copy=True, order="C")
        return torch.from_numpy(array)
    raise CheckpointError(f"{origin}: {key} is a {type(value).__name__}; expected a tensor or numpy array")


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
    if any(k.startswith(("backbone.body.", "rpn.head.", "roi_heads.box_head.fc6.")) for k in keys):
        return "torchvision"
    if any(k.startswith(("backbone.bottom_up.", "proposal_generator.")) for k in keys):
        return "detectron2"
    if _looks_caffe2(keys):
        return "caffe2"
    return None


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


def _state_of(state: Mapping[str, object], origin: str) -> dict[str, Tensor]:
    bad = [k for k in state if not isinstance(k, str)]
    if bad:
        raise CheckpointError(f"{origin}: state-dict keys must be strings, got {bad[:_LIST]!r}")
    return {k: _to_tensor(k, v, origin) for k, v in state.items()}


def _ordered(state: Mapping[str, Tensor], num_classes: int) -> dict[str, Tensor]:
    return {k: state[k] for k in expected_layout(num_classes)}


def _from_detectron2(state: Mapping[str, object], meta: dict, origin: str) -> dict[str, Tensor]:
    keys = list(state)
    if _looks_caffe2(keys):
        raise CheckpointError(f"{origin} {_CAFFE2_MESSAGE}")
    tensors = {k: v for k, v in _state_of(state, origin).items() if not _LEGACY_EXTRAS.match(k)}
    hint = ""
    if _guess(keys) == "torchvision":
        hint = "this is a torchvision state dict: convert it with source='torchvision' (--from torchvision)"
    elif meta.get("matching_heuristics"):
        hint = ("the file asks for detectron2's suffix-matching heuristics (matching_heuristics=True, e.g. an "
                "ImageNet backbone); only full detectron2-native Faster R-CNN files are supported")
    num_classes = check_layout(tensors, origin=origin, hint=hint)
    return _ordered(tensors, num_classes)


def load_detectron2(path: str | Path) -> dict[str, Tensor]:
    """Read a detectron2 Faster R-CNN checkpoint (.pkl model-zoo file or .pth) as detspec state dict (tensors).

    Drops the legacy extras (pixel_mean, pixel_std, anchor_generator.cell_anchors.*) and checks the result
    against :func:`expected_layout` with num_classes = cls_score rows - 1.
    """
    origin = str(path)
    state, meta = _unwrap(_read(path), origin)
    return _from_detectron2(state, meta, origin)


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


def _rename_torchvision(key: str) -> str | None:
    for pattern, target in _TV_RULES:
        m = pattern.fullmatch(key)
        if m:
            return target(m)
    return None


def convert_torchvision(state_dict: Mapping[str, Tensor], *,
                        origin: str = "torchvision state dict") -> dict[str, Tensor]:
    """torchvision ``fasterrcnn_resnet50_fpn`` state dict -> detspec (detectron2) layout.

    Renames every key (backbone.body.layerN.B.convK -> backbone.bottom_up.res{N+1}.B.convK, ...), drops
    BatchNorm2d's num_batches_tracked, moves cls_score row 0 (background) to the end and drops bbox_pred's first
    4 rows (the background slot), so detspec class c = torchvision label c + 1. Unknown keys are errors.
    """
    if not isinstance(state_dict, Mapping):
        raise CheckpointError(f"{origin}: expected a mapping of parameter names to tensors, got "
                              f"{type(state_dict).__name__}")
    tensors = _state_of(state_dict, origin)
    out: dict[str, Tensor] = {}
    unknown, dupes = [], []
    for key, value in tensors.items():
        if _TV_DROP.fullmatch(key):
            continue
        new = _rename_torchvision(key)
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


def _from_detspec(state: Mapping[str, object], meta: dict, origin: str) -> dict[str, Tensor]:
    k = meta.get("num_classes")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise CheckpointError(f"{origin}: a {FORMAT} file needs a positive int 'num_classes', got {k!r}")
    tensors = _state_of(state, origin)
    check_layout(tensors, k, origin=origin)
    return _ordered(tensors, k)


def load_checkpoint(path: str | Path, source: str = "auto") -> dict[str, Tensor]:
    """Read a Faster R-CNN checkpoint in detspec's layout (key -> tensor, expected_layout's order).

    source: "detectron2" (.pkl model zoo or .pth), "torchvision" (fasterrcnn_resnet50_fpn .pth), "detspec"
    (a save_detspec file) or "auto" (recognised from the file's format entry and key names).
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
            if guess is None:
                sample = ", ".join(map(str, list(state)[:4])) or "no keys"
                raise CheckpointError(f"{origin}: unrecognised checkpoint ({sample}); {_EXPECTED_SOURCES}")
            source = guess
    if source == "detspec":
        if not is_detspec:
            raise CheckpointError(f"{origin}: not a detspec file (its 'format' is {meta.get('format')!r}, expected "
                                  f"{FORMAT!r}); {_EXPECTED_SOURCES}")
        return _from_detspec(state, meta, origin)
    if source == "torchvision":
        return convert_torchvision(state, origin=origin)
    return _from_detectron2(state, meta, origin)


def _compact(t: Tensor) -> Tensor:
    """t itself, or a copy where t is a view of a larger storage (torch.save would write the whole storage)."""
    if t.is_contiguous() and t.storage_offset() == 0 and t.untyped_storage().nbytes() == t.numel() * t.element_size():
        return t
    return t.clone(memory_format=torch.contiguous_format)


def save_detspec(state_dict: Mapping[str, Tensor], path: str | Path) -> None:
    """Check ``state_dict`` against the layout and save {"model": sd, "format": FORMAT, "num_classes": K}."""
    tensors = _state_of(state_dict, "state_dict")
    num_classes = check_layout(tensors, origin="state_dict")
    model = {k: _compact(v.detach().cpu()) for k, v in _ordered(tensors, num_classes).items()}
    torch.save({"model": model, "format": FORMAT, "num_classes": num_classes}, path)


def convert_main(src: str | Path, dst: str | Path, source: str) -> None:
    """``detspec convert SRC DST --from SOURCE``: load SRC as ``source`` and save it as a detspec file."""
    state = load_checkpoint(src, source)
    save_detspec(state, dst)
    k = state["roi_heads.box_predictor.cls_score.weight"].shape[0] - 1
    print(f"wrote {dst}: {len(state)} tensors, {sum(t.numel() for t in state.values()):,} values, {k} classes "
          f"(background last), from {source}")
