"""detspec.checkpoints: detectron2 / torchvision Faster R-CNN checkpoints -> detspec's layout (d2-spec §5.1).

Expected values come from d2-spec §5.1 (its table typed in below), spec.config's parameter count and
torchvision's own fasterrcnn_resnet50_fpn (an independent implementation of the same network).
"""

from __future__ import annotations

import builtins
import codecs
import io
import math
import os
import pickle
from collections import OrderedDict

import numpy as np
import pytest
import torch

from detspec.checkpoints import (
    FORMAT,
    CheckpointError,
    RestrictedUnpickler,
    check_layout,
    convert_torchvision,
    expected_layout,
    load_checkpoint,
    load_detectron2,
    save_detspec,
)
from detspec.cli import main
from spec.config import PARAMETER_COUNTS

tv_detection = pytest.importorskip("torchvision.models.detection")

CLS_W, CLS_B = "roi_heads.box_predictor.cls_score.weight", "roi_heads.box_predictor.cls_score.bias"
REG_W, REG_B = "roi_heads.box_predictor.bbox_pred.weight", "roi_heads.box_predictor.bbox_pred.bias"


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def tv_state():
    torch.manual_seed(0)
    model = tv_detection.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    state = model.state_dict()
    # randomise the predictor biases (torchvision initialises them to 0) so row moves are visible in values
    state["roi_heads.box_predictor.cls_score.bias"].normal_()
    state["roi_heads.box_predictor.bbox_pred.bias"].normal_()
    return state


@pytest.fixture(scope="module")
def tv_path(tv_state, tmp_path_factory):
    path = tmp_path_factory.mktemp("tv") / "fasterrcnn_resnet50_fpn.pth"
    torch.save(tv_state, path)
    return path


@pytest.fixture(scope="module")
def d2_arrays():
    """A fake detectron2 model: random finite float32 arrays with d2-spec §5.1's keys and shapes (80 classes).

    Every byte is masked below 0x80 (positive values, even exponents: never inf or NaN). Protocol 2 pickles bytes
    as latin-1 text, and ASCII-only text pickles and unpickles several times faster than arbitrary bytes.
    """
    rng = np.random.default_rng(0)
    arrays = {}
    for key, shape in expected_layout(80).items():
        array = rng.standard_normal(shape, dtype=np.float32)
        array.view(np.uint8)[...] &= 0x7F
        arrays[key] = array
    return arrays


@pytest.fixture(scope="module")
def d2_pkl(d2_arrays, tmp_path_factory):
    """The model-zoo file format: pickle protocol 2 of {"model": {name: ndarray}, "__author__": ...} + legacy extras."""
    model = dict(d2_arrays)
    model["pixel_mean"] = np.array([103.53, 116.28, 123.675], dtype=np.float32).reshape(3, 1, 1)
    model["pixel_std"] = np.ones((3, 1, 1), dtype=np.float32)
    for i in range(5):
        model[f"proposal_generator.anchor_generator.cell_anchors.{i}"] = np.zeros((3, 4), dtype=np.float32)
    path = tmp_path_factory.mktemp("d2") / "model_final_280758.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": model, "__author__": "Detectron2 Model Zoo"}, f, protocol=2)
    return path


def _write_pickle(path, obj, protocol=2):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)
    return path


# ------------------------------------------------------------------------------------------------ layout
def test_expected_layout_is_the_spec_table():
    layout = expected_layout(80)
    assert len(layout) == 295  # d2-spec §5.1: 53 convs x 5 + FPN 16 + RPN 6 + box head 8
    # rows typed in from the d2-spec §5.1 tables
    assert layout["backbone.bottom_up.stem.conv1.weight"] == (64, 3, 7, 7)
    assert layout["backbone.bottom_up.stem.conv1.norm.running_var"] == (64,)
    assert layout["backbone.bottom_up.res2.0.shortcut.weight"] == (256, 64, 1, 1)
    assert layout["backbone.bottom_up.res2.1.conv1.weight"] == (64, 256, 1, 1)
    assert layout["backbone.bottom_up.res3.0.conv1.weight"] == (128, 256, 1, 1)
    assert layout["backbone.bottom_up.res4.5.conv2.weight"] == (256, 256, 3, 3)
    assert layout["backbone.bottom_up.res5.0.shortcut.norm.bias"] == (2048,)
    assert layout["backbone.bottom_up.res5.2.conv1.weight"] == (512, 2048, 1, 1)
    assert "backbone.bottom_up.res4.6.conv1.weight" not in layout  # res4 has blocks 0-5
    assert layout["backbone.fpn_lateral3.weight"] == (256, 512, 1, 1)
    assert layout["backbone.fpn_output5.weight"] == (256, 256, 3, 3)
    assert layout["proposal_generator.rpn_head.objectness_logits.weight"] == (3, 256, 1, 1)
    assert layout["proposal_generator.rpn_head.anchor_deltas.bias"] == (12,)
    assert layout["roi_heads.box_head.fc1.weight"] == (1024, 12544)
    assert layout["roi_heads.box_head.fc2.weight"] == (1024, 1024)
    assert layout[CLS_W] == (81, 1024) and layout[REG_W] == (320, 1024)
    # nn.Parameters are everything but the FrozenBN buffers (weight, bias, running stats are all buffers)
    params = sum(math.prod(s) for k, s in layout.items() if ".norm." not in k)
    assert params == PARAMETER_COUNTS.faster_rcnn_80_classes
    tv = expected_layout(90)
    assert tv[CLS_B] == (91,) and tv[REG_B] == (360,)
    assert {k: s for k, s in tv.items() if "box_predictor" not in k} == {
        k: s for k, s in layout.items() if "box_predictor" not in k}


@pytest.mark.parametrize("bad", [0, -1, 2.0, True, "80"])
def test_expected_layout_rejects_bad_num_classes(bad):
    with pytest.raises(ValueError, match="num_classes"):
        expected_layout(bad)


# ------------------------------------------------------------------------------------------------ torchvision
def test_torchvision_conversion_gives_the_layout(tv_state):
    out = convert_torchvision(tv_state)
    assert list(out) == list(expected_layout(90))  # keys, in layout order
    assert {k: tuple(v.shape) for k, v in out.items()} == expected_layout(90)
    # every torchvision value arrives except the BatchNorm2d step counters and the background's box regression
    # (bbox_pred: 4 weight rows of 1024 + 4 biases); the background's cls_score row only moves
    tv_total = sum(v.numel() for k, v in tv_state.items() if not k.endswith("num_batches_tracked"))
    assert sum(v.numel() for v in out.values()) == tv_total - (4 * 1024 + 4)


def test_torchvision_conversion_moves_values(tv_state):
    out = convert_torchvision(tv_state)
    pairs = {  # hand-written correspondences: torchvision layerN = res{N+1}, inner/layer block i = level i + 2
        "backbone.body.conv1.weight": "backbone.bottom_up.stem.conv1.weight",
        "backbone.body.bn1.running_mean": "backbone.bottom_up.stem.conv1.norm.running_mean",
        "backbone.body.layer2.0.conv2.weight": "backbone.bottom_up.res3.0.conv2.weight",
        "backbone.body.layer3.4.bn3.weight": "backbone.bottom_up.res4.4.conv3.norm.weight",
        "backbone.body.layer4.0.downsample.0.weight": "backbone.bottom_up.res5.0.shortcut.weight",
        "backbone.body.layer1.0.downsample.1.running_var": "backbone.bottom_up.res2.0.shortcut.norm.running_var",
        "backbone.fpn.inner_blocks.3.0.weight": "backbone.fpn_lateral5.weight",
        "backbone.fpn.layer_blocks.0.0.bias": "backbone.fpn_output2.bias",
        "rpn.head.conv.0.0.weight": "proposal_generator.rpn_head.conv.weight",
        "rpn.head.cls_logits.bias": "proposal_generator.rpn_head.objectness_logits.bias",
        "rpn.head.bbox_pred.weight": "proposal_generator.rpn_head.anchor_deltas.weight",
        "roi_heads.box_head.fc6.weight": "roi_heads.box_head.fc1.weight",
        "roi_heads.box_head.fc7.bias": "roi_heads.box_head.fc2.bias",
    }
    for tv_key, key in pairs.items():
        assert torch.equal(out[key], tv_state[tv_key]), (tv_key, key)
    # predictor: detspec class c = torchvision label c + 1; torchvision's background (label 0) goes last
    for name in (CLS_W, CLS_B):
        tv = tv_state[name]
        assert torch.equal(out[name][:90], tv[1:91])
        assert torch.equal(out[name][90], tv[0])
    for name in (REG_W, REG_B):  # rows 4c + j; torchvision's first 4 rows are the background's box
        tv = tv_state[name]
        assert torch.equal(out[name], tv[4:])
        assert torch.equal(out[name][4 * 7 + 2], tv[4 * 8 + 2])  # class 7, delta dh = torchvision label 8


def test_torchvision_legacy_rpn_conv_name_and_frozen_bn(tv_state):
    state = {k: v for k, v in tv_state.items() if not k.endswith("num_batches_tracked")}  # FrozenBatchNorm2d
    state["rpn.head.conv.weight"] = state.pop("rpn.head.conv.0.0.weight")  # torchvision < 0.13 naming
    state["rpn.head.conv.bias"] = state.pop("rpn.head.conv.0.0.bias")
    out = convert_torchvision(state)
    assert torch.equal(out["proposal_generator.rpn_head.conv.weight"], tv_state["rpn.head.conv.0.0.weight"])


def test_torchvision_unknown_and_missing_keys_are_refused(tv_state):
    state = dict(tv_state)
    state["roi_heads.mask_head.mask_fcn1.weight"] = torch.zeros(256, 256, 3, 3)
    with pytest.raises(CheckpointError, match=r"unknown \(1\): roi_heads\.mask_head\.mask_fcn1\.weight"):
        convert_torchvision(state)
    state = dict(tv_state)
    del state["backbone.fpn.layer_blocks.2.0.weight"]
    with pytest.raises(CheckpointError, match=r"missing \(1\): backbone\.fpn_output4\.weight"):
        convert_torchvision(state)


def test_torchvision_predictor_with_inconsistent_rows_is_refused(tv_state):
    state = dict(tv_state)
    state[REG_W] = state[REG_W][:360]  # 4 x 90 rows: not torchvision's 4 x 91
    with pytest.raises(CheckpointError, match="bbox_pred.weight has shape"):
        convert_torchvision(state)


# ------------------------------------------------------------------------------------------------ detectron2
def test_detectron2_pkl_loads_and_drops_legacy_extras(d2_pkl, d2_arrays):
    state = load_detectron2(d2_pkl)
    assert list(state) == list(d2_arrays)  # extras dropped, layout order
    assert all(isinstance(v, torch.Tensor) and v.dtype == torch.float32 for v in state.values())
    for key in ("backbone.bottom_up.stem.conv1.weight", "backbone.fpn_lateral4.bias", CLS_W, REG_B):
        np.testing.assert_array_equal(state[key].numpy(), d2_arrays[key])
    assert all(np.array_equal(state[k].numpy(), a) for k, a in d2_arrays.items())


def test_detectron2_pth_with_training_state_and_other_class_count(d2_arrays, tmp_path):
    small = expected_layout(3)  # a 3-class model: only the predictor differs
    rng = np.random.default_rng(1)
    tensors = {k: torch.from_numpy(d2_arrays[k]) if "box_predictor" not in k else torch.from_numpy(
        rng.standard_normal(s, dtype=np.float32)) for k, s in small.items()}
    pth = tmp_path / "model_0089999.pth"  # what DetectionCheckpointer writes during training
    torch.save({"model": tensors, "iteration": 89999, "optimizer": {"state": {}, "param_groups": []}}, pth)
    state = load_detectron2(pth)
    assert state[CLS_W].shape == (4, 1024) and state[REG_W].shape == (12, 1024)
    assert all(torch.equal(state[k], tensors[k]) for k in small)


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_restricted_unpickler_reads_numpy_containers(protocol):
    obj = {"model": OrderedDict(w=np.arange(6, dtype=np.float32).reshape(2, 3), b=np.array([1, 2], np.int64),
                                f=np.asfortranarray(np.ones((2, 2))), s=np.float32(0.5)),
           "__author__": "Detectron2 Model Zoo", "matching_heuristics": False}
    loaded = RestrictedUnpickler(io.BytesIO(pickle.dumps(obj, protocol)), encoding="latin1").load()
    assert loaded["__author__"] == obj["__author__"] and loaded["matching_heuristics"] is False
    assert isinstance(loaded["model"], OrderedDict) and list(loaded["model"]) == ["w", "b", "f", "s"]
    for key, value in obj["model"].items():
        np.testing.assert_array_equal(loaded["model"][key], value)
        assert loaded["model"][key].dtype == value.dtype


def test_layout_errors_list_missing_unexpected_and_misshaped(d2_arrays):
    state = {k: torch.from_numpy(a) for k, a in d2_arrays.items()}
    del state["backbone.bottom_up.res3.2.conv2.norm.bias"]
    state["backbone.bottom_up.res6.0.conv1.weight"] = torch.zeros(1)
    state["backbone.fpn_output3.weight"] = torch.zeros(256, 256, 1, 1)
    with pytest.raises(CheckpointError) as info:
        check_layout(state, origin="fake.pkl")
    msg = str(info.value)
    assert "fake.pkl" in msg and "295 tensors for 80 classes" in msg
    assert "missing (1): backbone.bottom_up.res3.2.conv2.norm.bias" in msg
    assert "unexpected (1): backbone.bottom_up.res6.0.conv1.weight" in msg
    assert "backbone.fpn_output3.weight [256, 256, 1, 1] != expected [256, 256, 3, 3]" in msg


def test_predictor_rows_disagreeing_with_cls_score_are_refused(d2_arrays):
    state = {k: torch.from_numpy(a) for k, a in d2_arrays.items()}
    state[REG_W] = torch.zeros(4 * 81, 1024)  # torchvision-style: a box for background too
    with pytest.raises(CheckpointError, match=r"bbox_pred\.weight \[324, 1024\] != expected \[320, 1024\]"):
        check_layout(state)


def test_incomplete_detectron2_file_is_refused_with_counts(d2_arrays, tmp_path):
    key = "backbone.bottom_up.stem.conv1.weight"
    path = _write_pickle(tmp_path / "partial.pkl", {"model": {key: d2_arrays[key]}, "__author__": "x"})
    with pytest.raises(CheckpointError, match=r"missing \(294\): .*\(and 286 more\)"):
        load_detectron2(path)


def test_caffe2_style_names_are_refused(tmp_path):
    blobs = {"res2_0_branch2a_w": np.zeros((64, 64, 1, 1), np.float32), "conv1_w": np.zeros((64, 3, 7, 7))}
    for obj in ({"blobs": blobs}, blobs, {"model": blobs, "__author__": "Detectron"}):
        path = _write_pickle(tmp_path / "c2.pkl", obj)
        with pytest.raises(CheckpointError, match=r"only detectron2-native model-zoo files \(model_final_\*\.pkl"):
            load_checkpoint(path)
    with pytest.raises(CheckpointError, match="detectron2-native"):
        load_detectron2(path)


# ------------------------------------------------------------------------------------------------ untrusted input
class _System:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _Eval:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return builtins.eval, (f"open({str(self.marker)!r}, 'w').close()",)


class _Codec:
    def __reduce__(self):  # an allowed global (protocol 2's bytes helper) with a non-latin-1 codec
        return codecs.encode, ("payload", "rot13")


@pytest.mark.parametrize("protocol", [0, 2, 5])
# protocols < 3 spell builtins as __builtin__
@pytest.mark.parametrize("payload, refused", [(_System, r"posix\.system"), (_Eval, r"builtin(s|__)\.eval")])
def test_malicious_pickle_is_refused_and_does_not_run(payload, refused, protocol, tmp_path):
    marker = tmp_path / "pwned"
    obj = {"model": {"backbone.bottom_up.stem.conv1.weight": np.zeros((64, 3, 7, 7), np.float32),
                     "x": payload(marker)}, "__author__": "Detectron2 Model Zoo"}
    path = _write_pickle(tmp_path / "model_final_evil.pkl", obj, protocol)
    for load in (load_detectron2, load_checkpoint):
        with pytest.raises(CheckpointError, match=rf"refusing to unpickle global .*{refused}"):
            load(path)
        assert not marker.exists()


def test_codecs_encode_is_only_latin1(tmp_path):
    path = _write_pickle(tmp_path / "codec.pkl", {"model": {"a": _Codec()}})
    with pytest.raises(CheckpointError, match="only latin-1"):
        load_detectron2(path)


@pytest.mark.parametrize("blob", [b"", b"\x80\x02}q\x00", b"not a pickle at all"])
def test_garbage_files_are_checkpoint_errors(blob, tmp_path):
    path = tmp_path / "junk.pkl"
    path.write_bytes(blob)
    with pytest.raises(CheckpointError, match="junk.pkl"):
        load_checkpoint(path)


def test_pth_with_a_non_tensor_object_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"rpn.head.cls_logits.bias": torch.zeros(3)}, "extra": _System(marker)}, path)
    with pytest.raises(CheckpointError, match=r"weights_only=True\) refused the file: .*posix\.system"):
        load_checkpoint(path, "torchvision")
    assert not marker.exists()


def test_unrecognised_and_mismatched_sources_are_refused(tv_path, tmp_path):
    path = _write_pickle(tmp_path / "odd.pkl", {"model": {"head.weight": np.zeros(3, np.float32)}})
    with pytest.raises(CheckpointError, match="expected a detectron2 model-zoo file"):
        load_checkpoint(path)
    path = _write_pickle(tmp_path / "list.pkl", [np.zeros(3)])
    with pytest.raises(CheckpointError, match="holds a list; expected a detectron2"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not a detspec file"):
        load_checkpoint(tv_path, "detspec")
    with pytest.raises(CheckpointError, match="use source='torchvision'|convert it with source='torchvision'"):
        load_checkpoint(tv_path, "detectron2")
    with pytest.raises(ValueError, match="source must be one of"):
        load_checkpoint(tv_path, "caffe2")


# ------------------------------------------------------------------------------------------------ save / CLI
def test_cli_convert_torchvision_round_trips(tv_path, tv_state, tmp_path, capsys):
    dst = tmp_path / "detspec_tv.pth"
    assert main(["convert", str(tv_path), str(dst), "--from", "torchvision"]) == 0
    assert "295 tensors" in capsys.readouterr().out
    raw = torch.load(dst, weights_only=True)
    assert raw["format"] == FORMAT and raw["num_classes"] == 90
    state = load_checkpoint(dst)  # auto: recognised by its format entry
    assert {k: tuple(v.shape) for k, v in state.items()} == expected_layout(90)
    assert torch.equal(state[CLS_W][90], tv_state[CLS_W][0]) and torch.equal(state[REG_B], tv_state[REG_B][4:])
    assert torch.equal(state["backbone.fpn_lateral2.weight"], tv_state["backbone.fpn.inner_blocks.0.0.weight"])


def test_cli_convert_detectron2_round_trips(d2_pkl, d2_arrays, tmp_path, capsys):
    dst = tmp_path / "detspec_d2.pth"
    assert main(["convert", str(d2_pkl), str(dst), "--from", "detectron2"]) == 0
    assert "80 classes" in capsys.readouterr().out
    state = load_checkpoint(dst, "detspec")
    assert list(state) == list(d2_arrays)
    assert all(np.array_equal(state[k].numpy(), a) for k, a in d2_arrays.items())


def test_cli_convert_reports_refusals(tv_path, tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = _write_pickle(tmp_path / "evil.pkl", {"model": {"x": _System(marker)}, "__author__": "x"})
    dst = tmp_path / "out.pth"
    assert main(["convert", str(evil), str(dst), "--from", "detectron2"]) == 2
    assert "refusing to unpickle global" in capsys.readouterr().err
    assert not marker.exists() and not dst.exists()
    assert main(["convert", str(tv_path), str(dst), "--from", "detectron2"]) == 2
    err = capsys.readouterr().err
    assert "unexpected (" in err and "--from torchvision" in err and not dst.exists()


def test_save_detspec_refuses_a_foreign_layout(tv_state, tmp_path):
    dst = tmp_path / "out.pth"
    with pytest.raises(CheckpointError, match=r"unexpected \(\d+\): backbone\.body\.conv1\.weight"):
        save_detspec(tv_state, dst)  # torchvision names: convert first
    assert not dst.exists()
