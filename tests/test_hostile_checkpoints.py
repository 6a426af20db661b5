"""Hostile and broken checkpoints through `detspec convert` / `classify --weights` (issue 11 §4-5).

Every case runs the real command line (detspec.cli.main) and asserts: exit code 2, one line on stderr naming the
file and the problem, no traceback, never torch's advice to retry with weights_only=False, and no file lost or
half-written (a pre-existing output byte-identical, the input unchanged, no temporary file left behind).

Full-layout checkpoints are written as stride-0 views of one zero (torch.save stores the one-element storage), so a
295-tensor Faster R-CNN or a 313-tensor MViT file is a few kB; only the success cases write full-size outputs.
"""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from detspec.checkpoints import (
    CheckpointError,
    RestrictedUnpickler,
    checkpoint_tensor,
    expected_layout,
    float32_weights,
    load_checkpoint,
)
from detspec.cli import main
from detspec.mvit_checkpoints import mvit_layout

tv_detection = pytest.importorskip("torchvision.models.detection")

PREVIOUS = b"previous output, must survive a failed run\n"
CONV1 = "backbone.bottom_up.stem.conv1.weight"
FC2 = "roi_heads.box_head.fc2.weight"
LATERAL2 = "backbone.fpn_lateral2.weight"
MVIT = "mvit_b_16x4"


# ------------------------------------------------------------------------------------------------ helpers
def _cli(argv, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _assert_user_error(code: int, err: str, *needles: str, one_line: bool = True) -> None:
    assert code == 2, err
    assert "Traceback" not in err and "weights_only=False" not in err and "Re-running" not in err, err
    assert "`weights_only` set to `False`" not in err, err
    assert err.startswith("detspec "), err
    if one_line:
        assert err.count("\n") == 1 and err.endswith("\n"), err
    for needle in needles:
        assert needle in err, (needle, err)


def _no_temporaries(folder: Path) -> None:
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def _previous_output(folder: Path, name: str = "out.pth") -> Path:
    dst = folder / name
    dst.write_bytes(PREVIOUS)
    return dst


def _assert_untouched(dst: Path, src: Path | None = None, src_bytes: bytes | None = None) -> None:
    assert dst.read_bytes() == PREVIOUS
    if src is not None and src.is_file():
        assert src.read_bytes() == src_bytes
    _no_temporaries(dst.parent)


def _zeros_layout(layout: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Every key at its shape, as a stride-0 view of a single zero (tiny on disk, right shape for the checks)."""
    return {k: torch.zeros(()).expand(shape) for k, shape in layout.items()}


def _save(path: Path, obj) -> Path:
    torch.save(obj, path)
    return path


def _truncated(path: Path, data: bytes) -> Path:
    path.write_bytes(data[: len(data) // 2])
    return path


class _Foreign:  # a class torch's weights_only unpickler and our restricted unpickler both refuse
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _reduce(func, args, state=None):
    class _R:
        def __reduce__(self):
            return (func, args) if state is None else (func, args, state)
    return _R()


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Broken / foreign files shared by the Faster R-CNN and MViT cases."""
    d = tmp_path_factory.mktemp("hostile")
    good_pth = io.BytesIO()
    torch.save({"a": torch.arange(1000, dtype=torch.float32)}, good_pth)
    good_pkl = pickle.dumps({"model": {CONV1: np.zeros((64, 3, 7, 7), np.float32)}, "__author__": "x"}, protocol=2)
    (d / "folder.pth").mkdir()
    out = {
        "directory": d / "folder.pth",
        "truncated_pth": _truncated(d / "truncated.pth", good_pth.getvalue()),
        "truncated_pkl": _truncated(d / "truncated.pkl", good_pkl),
        "empty": _truncated(d / "empty.pth", b""),
        "garbage": d / "garbage.pth",
        # pickle.dump of torch tensors (not torch.save): the restricted unpickler refuses torch's rebuild functions
        "tensor_pickle": d / "tensors_pickled.pth",
        # torch.save of an object weights_only refuses (its message carries the weights_only=False advice)
        "foreign_object": d / "foreign_object.pth",
    }
    out["garbage"].write_bytes(b"hello, this is not a checkpoint\n" * 4)
    with open(out["tensor_pickle"], "wb") as f:
        pickle.dump({"conv_proj.weight": torch.zeros(3)}, f)
    torch.save({"model": {"x": torch.zeros(1)}, "extra": _Foreign(d / "pwned")}, out["foreign_object"])
    return out


UNREADABLE = {  # file -> what the one-line message must say
    "directory": "is a directory",
    "truncated_pth": "truncated or corrupt zip archive",
    "truncated_pkl": "truncated",
    "empty": "is empty",
    "garbage": "not a readable checkpoint",
    "tensor_pickle": "refusing to unpickle global torch.",
    "foreign_object": "unsupported global posix.system",
}


@pytest.fixture(scope="module")
def d2_zeros() -> dict[str, torch.Tensor]:
    return _zeros_layout(expected_layout(80))


@pytest.fixture(scope="module")
def mvit_zeros() -> dict[str, torch.Tensor]:
    return _zeros_layout(mvit_layout(MVIT))


@pytest.fixture(scope="module")
def tv_detector_state() -> dict[str, torch.Tensor]:
    """torchvision fasterrcnn_resnet50_fpn's real key names and dtypes (num_batches_tracked is int64), tiny values."""
    with torch.device("meta"):
        model = tv_detection.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    return {k: torch.zeros((), dtype=v.dtype).expand(v.shape) for k, v in model.state_dict().items()}


# ------------------------------------------------------------------------------------------------ unreadable files
@pytest.mark.parametrize("source", ["detectron2", "torchvision", "auto", "torchvision-mvit"])
@pytest.mark.parametrize("kind", sorted(UNREADABLE))
def test_convert_refuses_unreadable_files(kind, source, files, tmp_path, capsys):
    src = files[kind]
    before = src.read_bytes() if src.is_file() else None
    dst = _previous_output(tmp_path)
    code, _, err = _cli(["convert", src, dst, "--from", source], capsys)
    _assert_user_error(code, err, str(src), UNREADABLE[kind])
    _assert_untouched(dst, src, before)
    assert not (src.parent / "pwned").exists()


@pytest.mark.parametrize("kind", ["directory", "truncated_pth", "tensor_pickle", "foreign_object", "empty"])
def test_classify_refuses_unreadable_weights(kind, files, tmp_path, capsys):
    video = tmp_path / "v.npy"
    np.save(video, np.zeros((4, 8, 8, 3), np.uint8))
    report = _previous_output(tmp_path, "out.json")
    code, out, err = _cli(["classify", video, "--weights", files[kind], "--views", "1x1", "--json", report], capsys)
    _assert_user_error(code, err, str(files[kind]), UNREADABLE[kind])
    assert "views of" not in out  # refused before the model ran
    _assert_untouched(report)


def test_missing_checkpoint_is_one_line(tmp_path, capsys):
    code, _, err = _cli(["convert", tmp_path / "nope.pkl", tmp_path / "out.pth", "--from", "auto"], capsys)
    _assert_user_error(code, err, "nope.pkl", "no such checkpoint file")


def test_no_traceback_or_torch_advice_from_a_real_process(files, tmp_path):
    # the whole process: stderr is the one line, no warnings from torch.load, exit status 2
    for kind in ("foreign_object", "tensor_pickle", "truncated_pth"):
        proc = subprocess.run([sys.executable, "-m", "detspec.cli", "convert", str(files[kind]),
                               str(tmp_path / "out.pth"), "--from", "torchvision-mvit"],
                              capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], timeout=300)
        _assert_user_error(proc.returncode, proc.stderr, str(files[kind]), UNREADABLE[kind])
        assert not (tmp_path / "out.pth").exists()


# ------------------------------------------------------------------------------------------------ wrong content
def test_mvit_convert_says_a_detector_is_not_an_mvit_checkpoint(tv_detector_state, d2_zeros, tmp_path, capsys):
    for name, state, family in (("tv_frcnn.pth", tv_detector_state, "torchvision"),
                                ("d2_frcnn.pth", {"model": d2_zeros, "__author__": "x"}, "detectron2")):
        src = _save(tmp_path / name, state)
        dst = _previous_output(tmp_path)
        code, _, err = _cli(["convert", src, dst, "--from", "torchvision-mvit"], capsys)
        _assert_user_error(code, err, str(src), "not an MViT checkpoint", f"--from {family}")
        _assert_untouched(dst)
        video = tmp_path / "v.npy"
        np.save(video, np.zeros((4, 8, 8, 3), np.uint8))
        code, _, err = _cli(["classify", video, "--weights", src, "--views", "1x1"], capsys)
        _assert_user_error(code, err, str(src), "not an MViT checkpoint")


def test_frcnn_convert_names_an_mvit_file(mvit_zeros, tmp_path, capsys):
    src = _save(tmp_path / "mvit.pth", mvit_zeros)
    code, _, err = _cli(["convert", src, tmp_path / "out.pth", "--from", "auto"], capsys)
    _assert_user_error(code, err, str(src), "MViT state dict", "--from torchvision-mvit")


@pytest.mark.parametrize("obj, needle", [
    ([torch.zeros(3)], "holds a list"),
    ({"head.weight": torch.zeros(3)}, "unrecognised checkpoint"),
    ({"model": 3}, "'model' entry is a int"),
])
def test_frcnn_convert_refuses_wrong_content(obj, needle, tmp_path, capsys):
    src = _save(tmp_path / "odd.pth", obj)
    dst = _previous_output(tmp_path)
    code, _, err = _cli(["convert", src, dst, "--from", "auto"], capsys)
    _assert_user_error(code, err, str(src), needle)
    _assert_untouched(dst)


@pytest.mark.parametrize("obj, needle", [
    ([torch.zeros(3)], "holds a list"),
    ({}, "holds an empty mapping"),
    ({"head.weight": torch.zeros(3)}, "not an MViT checkpoint"),
])
def test_mvit_convert_refuses_wrong_content(obj, needle, tmp_path, capsys):
    src = _save(tmp_path / "odd.pth", obj)
    dst = _previous_output(tmp_path)
    code, _, err = _cli(["convert", src, dst, "--from", "torchvision-mvit"], capsys)
    _assert_user_error(code, err, str(src), needle)
    _assert_untouched(dst)


def test_unknown_model_is_a_usage_error(mvit_zeros, tmp_path, capsys):
    src = _save(tmp_path / "mvit.pth", mvit_zeros)
    for argv in (["convert", src, tmp_path / "o.pth", "--from", "torchvision-mvit", "--model", "mvit_huge"],
                 ["classify", tmp_path / "v.npy", "--weights", src, "--model", "mvit_huge"]):
        with pytest.raises(SystemExit) as info:
            main([str(a) for a in argv])
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert "invalid choice: 'mvit_huge'" in err and "Traceback" not in err
    assert not (tmp_path / "o.pth").exists()


# ------------------------------------------------------------------------------------------------ values
BAD_VALUES = {  # name -> (tensor maker for a given shape, what the message says)
    "int64": (lambda s: torch.zeros(s, dtype=torch.int64), "(int64)"),
    "bool": (lambda s: torch.zeros(s, dtype=torch.bool), "(bool)"),
    "complex": (lambda s: torch.zeros(s, dtype=torch.complex64), "(complex64)"),
    "uint8": (lambda s: torch.zeros(s, dtype=torch.uint8), "(uint8)"),
    "nan": (lambda s: torch.full(s, float("nan")), "NaN"),
    "inf": (lambda s: torch.full(s, float("-inf")), "inf)"),
    "float64_overflow": (lambda s: torch.full(s, 1e300, dtype=torch.float64), "beyond float32's range"),
}


def _one_bad(state: dict[str, torch.Tensor], key: str, bad: str) -> dict[str, torch.Tensor]:
    make, _ = BAD_VALUES[bad]
    out = dict(state)
    out[key] = make(tuple(state[key].shape))
    return out


@pytest.mark.parametrize("bad", sorted(BAD_VALUES))
def test_detectron2_pth_with_bad_values_is_refused_naming_the_key(bad, d2_zeros, tmp_path, capsys):
    src = _save(tmp_path / "model_final.pth", {"model": _one_bad(d2_zeros, LATERAL2, bad), "__author__": "x"})
    before = src.read_bytes()
    dst = _previous_output(tmp_path)
    for source in ("detectron2", "auto"):
        code, _, err = _cli(["convert", src, dst, "--from", source], capsys)
        _assert_user_error(code, err, str(src), LATERAL2, BAD_VALUES[bad][1])
        _assert_untouched(dst, src, before)


@pytest.mark.parametrize("bad", ["int64", "bool", "nan", "float64_overflow"])
def test_pkl_arrays_with_bad_values_are_refused(bad, tmp_path, capsys):
    # numpy arrays through the restricted unpickler get the same rules as .pth tensors (torchvision keys: values are
    # checked before the renaming, so two arrays are enough to reach the check)
    key = "backbone.body.conv1.weight"
    model = {"backbone.body.bn1.weight": np.ones(64, np.float32), key: BAD_VALUES[bad][0]((64, 3, 7, 7)).numpy()}
    src = tmp_path / "tv_arrays.pkl"
    src.write_bytes(pickle.dumps(model, protocol=2))
    code, _, err = _cli(["convert", src, _previous_output(tmp_path), "--from", "torchvision"], capsys)
    _assert_user_error(code, err, str(src), key, BAD_VALUES[bad][1])
    _assert_untouched(tmp_path / "out.pth")


@pytest.mark.parametrize("bad", sorted(BAD_VALUES))
def test_torchvision_pth_with_bad_values_is_refused_naming_the_key(bad, tv_detector_state, tmp_path, capsys):
    key = "backbone.body.layer2.0.conv2.weight"
    src = _save(tmp_path / "tv.pth", _one_bad(tv_detector_state, key, bad))
    dst = _previous_output(tmp_path)
    code, _, err = _cli(["convert", src, dst, "--from", "torchvision"], capsys)
    _assert_user_error(code, err, str(src), key, BAD_VALUES[bad][1])
    assert "num_batches_tracked" not in err  # the layout's own int64 counters are dropped, not refused
    _assert_untouched(dst)


@pytest.mark.parametrize("bad", sorted(BAD_VALUES))
def test_mvit_weights_with_bad_values_are_refused_naming_the_key(bad, mvit_zeros, tmp_path, capsys):
    key = "blocks.3.attn.qkv.weight"
    src = _save(tmp_path / "mvit.pth", _one_bad(mvit_zeros, key, bad))
    dst = _previous_output(tmp_path)
    code, _, err = _cli(["convert", src, dst, "--from", "torchvision-mvit"], capsys)
    _assert_user_error(code, err, str(src), key, BAD_VALUES[bad][1])
    _assert_untouched(dst)
    video = tmp_path / "v.npy"
    np.save(video, np.zeros((4, 8, 8, 3), np.uint8))
    code, out, err = _cli(["classify", video, "--weights", src, "--views", "1x1"], capsys)
    _assert_user_error(code, err, str(src), key, BAD_VALUES[bad][1])
    assert "views of" not in out


def test_torchvision_num_batches_tracked_must_be_in_the_layout(tv_detector_state, tmp_path):
    # the only integer entries accepted are the BatchNorm2d counters that the torchvision layout has (dropped)
    state = dict(tv_detector_state)
    state["backbone.body.layer1.0.bn1.num_batches_tracked"] = torch.tensor(7)  # accepted, dropped
    state["rpn.head.cls_logits.num_batches_tracked"] = torch.tensor(7)  # not a BatchNorm2d of the layout
    with pytest.raises(CheckpointError, match=r"rpn\.head\.cls_logits\.num_batches_tracked \(int64\)"):
        load_checkpoint(_save(tmp_path / "tv.pth", state), "torchvision")


def test_float16_and_float64_detectron2_weights_become_float32(d2_zeros, tmp_path, capsys):
    rng = np.random.default_rng(0)
    half = rng.standard_normal(d2_zeros[LATERAL2].shape).astype(np.float16)
    double = rng.standard_normal(d2_zeros[FC2].shape) * 0.1  # float64 values that float32 cannot hold exactly
    state = dict(d2_zeros)
    state[LATERAL2], state[FC2] = torch.from_numpy(half), torch.from_numpy(double)
    src = _save(tmp_path / "model.pth", {"model": state, "__author__": "x"})
    dst = _previous_output(tmp_path)
    code, out, err = _cli(["convert", src, dst, "--from", "detectron2"], capsys)
    assert code == 0, err
    assert "converted 1 float16/bfloat16 tensors to float32" in out and "converted 1 float64 tensors" in out
    written = torch.load(dst, weights_only=True)["model"]
    assert {t.dtype for t in written.values()} == {torch.float32}
    # expected values from numpy's own casts: float16 -> float32 exact, float64 -> float32 round-to-nearest
    assert np.array_equal(written[LATERAL2].numpy(), half.astype(np.float32))
    assert np.array_equal(written[FC2].numpy(), double.astype(np.float32))
    _no_temporaries(tmp_path)


def test_float16_mvit_weights_become_float32(mvit_zeros, tmp_path, capsys):
    rng = np.random.default_rng(1)
    state = dict(mvit_zeros)
    half = rng.standard_normal(tuple(state["conv_proj.weight"].shape)).astype(np.float16)
    bf16 = torch.from_numpy(rng.standard_normal(tuple(state["head.1.weight"].shape)).astype(np.float32))
    state["conv_proj.weight"], state["head.1.weight"] = torch.from_numpy(half), bf16.bfloat16()
    src = _save(tmp_path / "mvit.pth", state)
    dst = _previous_output(tmp_path)
    code, out, err = _cli(["convert", src, dst, "--from", "torchvision-mvit"], capsys)
    assert code == 0, err
    assert "converted 2 float16/bfloat16 tensors to float32" in out
    written = torch.load(dst, weights_only=True)
    assert list(written) == list(mvit_layout(MVIT)) and {t.dtype for t in written.values()} == {torch.float32}
    assert np.array_equal(written["conv_proj.weight"].numpy(), half.astype(np.float32))
    # bfloat16 keeps float32's top 16 bits (round to nearest even): masking the low 16 bits bounds the difference
    low = bf16.numpy().view(np.uint32) & np.uint32(0xFFFF0000)
    np.testing.assert_allclose(written["head.1.weight"].numpy(), low.view(np.float32), rtol=2**-7, atol=0)
    _no_temporaries(tmp_path)


@pytest.mark.parametrize("dtype", [torch.int32, torch.bool, torch.complex128, torch.float8_e4m3fn, torch.uint16])
def test_float32_weights_refuses_non_float_dtypes(dtype):
    with pytest.raises(CheckpointError, match=rf"f\.pth: weights must be floating point.*w \({str(dtype)[6:]}\)"):
        float32_weights({"ok": torch.zeros(2), "w": torch.zeros(2).to(dtype)}, "f.pth")


def test_float32_weights_notes_and_limits():
    notes: list[str] = []
    out = float32_weights({"a": torch.ones(2), "b": torch.ones(2, dtype=torch.float16),
                           "c": torch.full((2,), 3.0e38, dtype=torch.float64)}, "f.pth", notes)
    assert {t.dtype for t in out.values()} == {torch.float32} and torch.equal(out["a"], torch.ones(2))
    assert notes == ["converted 1 float16/bfloat16 tensors to float32 (exact)",
                     "converted 1 float64 tensors to float32 (rounded to nearest)"]
    with pytest.raises(CheckpointError, match=r"float64 weights beyond float32's range .* c \(\|x\| up to 3\.5e\+38\)"):
        float32_weights({"c": torch.tensor([3.5e38], dtype=torch.float64)}, "f.pth")  # float32 max is 3.4028e38
    with pytest.raises(CheckpointError, match=r"hold NaN or infinite values: x \(1 NaN, 2 inf\)"):
        float32_weights({"x": torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0])}, "f.pth")


# ------------------------------------------------------------------------------------------------ restricted unpickler
def _multiarray():
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray
    return multiarray


def _unpickle(payload, protocol: int = 2):
    return RestrictedUnpickler(io.BytesIO(pickle.dumps(payload, protocol)), encoding="latin1").load()


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_numpy_ndarray_called_directly_is_refused(protocol, tmp_path, capsys):
    # numpy.ndarray((1000,)) allocates 1000 uninitialised float64s: a pickle must never get to call it
    payload = _reduce(np.ndarray, ((1000,),))
    raw = pickle.dumps({"model": {CONV1: payload}, "__author__": "x"}, protocol)
    assert b"ndarray" in raw and b"_reconstruct" not in raw  # the crafted pickle calls ndarray itself
    src = tmp_path / "model_final_uninit.pkl"
    src.write_bytes(raw)
    dst = _previous_output(tmp_path)
    code, _, err = _cli(["convert", src, dst, "--from", "detectron2"], capsys)
    _assert_user_error(code, err, str(src), "refusing to call numpy.ndarray(...) directly", "uninitialised memory")
    _assert_untouched(dst, src, raw)


def test_reconstruct_without_data_is_refused():
    mult = _multiarray()
    with pytest.raises(CheckpointError, match=r"refusing _reconstruct\(.*\(1000,\)"):
        _unpickle(_reduce(mult._reconstruct, (np.ndarray, (1000,), b"f")))  # allocates 1000 items, no data
    with pytest.raises(CheckpointError, match="reconstructed without its data"):
        _unpickle({"w": _reduce(mult._reconstruct, (np.ndarray, (0,), b"b"))})  # no __setstate__ follows


@pytest.mark.parametrize("protocol", [2, 5])
def test_array_data_must_match_its_shape(protocol):
    mult = _multiarray()
    short = _reduce(mult._reconstruct, (np.ndarray, (0,), b"b"), (1, (1000,), np.dtype("f4"), False, b"\0" * 8))
    with pytest.raises(CheckpointError, match=r"data is 8 bytes but shape \[1000\] of float32 needs 4000"):
        _unpickle(short, protocol)
    long = _reduce(mult._reconstruct, (np.ndarray, (0,), b"b"), (1, (2,), np.dtype("f4"), False, b"\0" * 12))
    with pytest.raises(CheckpointError, match=r"data is 12 bytes but shape \[2\] of float32 needs 8"):
        _unpickle(long, protocol)
    scalar = _reduce(mult.scalar, (np.dtype("f8"), b"\0" * 9))  # numpy itself ignores the extra byte
    with pytest.raises(CheckpointError, match=r"data is 9 bytes but shape \[\] of float64 needs 8"):
        _unpickle(scalar, protocol)


def test_protocol5_frombuffer_size_is_checked():
    try:
        from numpy._core import numeric
    except ImportError:
        from numpy.core import numeric
    forged = _reduce(numeric._frombuffer, (bytearray(8), np.dtype("f4"), (1000,), "C"))
    with pytest.raises(CheckpointError, match=r"data is 8 bytes but shape \[1000\] of float32 needs 4000"):
        _unpickle(forged, 5)


def test_object_and_structured_arrays_are_refused():
    with pytest.raises(CheckpointError, match="numpy.dtype|only numeric"):
        _unpickle({"w": np.array([1, "a"], dtype=object)})
    with pytest.raises(CheckpointError, match="numpy.dtype|only numeric"):
        _unpickle({"w": np.zeros(2, dtype=[("a", "f4"), ("b", "i4")])})


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_genuine_arrays_still_load_with_their_values(protocol):
    arrays = {"f": np.arange(12, dtype=np.float32).reshape(3, 4), "big": np.arange(5, dtype=">f8"),
              "fortran": np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3)), "s": np.float64(2.5)}
    loaded = _unpickle(arrays, protocol)
    reference = pickle.loads(pickle.dumps(arrays, protocol))  # numpy's own unpickling (protocol 0 drops '>')
    for key, value in arrays.items():
        assert np.array_equal(np.asarray(loaded[key]), value) and loaded[key].dtype == reference[key].dtype


def test_big_endian_arrays_become_native_tensors():
    big = np.arange(5, dtype=">f4") / 7
    tensor = checkpoint_tensor("w", _unpickle({"w": big})["w"], "f.pkl")
    assert tensor.dtype == torch.float32 and np.array_equal(tensor.numpy(), big.astype("<f4"))


# ------------------------------------------------------------------------------------------------ outputs
@pytest.mark.parametrize("source", ["detectron2", "torchvision-mvit"])
@pytest.mark.parametrize("how", ["same", "symlink", "hardlink", "relative"])
def test_convert_refuses_to_overwrite_its_input_before_reading(how, source, files, tmp_path, capsys, monkeypatch):
    src = tmp_path / "model.pth"
    src.write_bytes(files["garbage"].read_bytes())  # reading it would fail: the refusal must come first
    before = src.read_bytes()
    dst = {"same": src, "symlink": tmp_path / "link.pth", "hardlink": tmp_path / "hard.pth",
           "relative": Path("sub") / ".." / "model.pth"}[how]
    if how == "symlink":
        dst.symlink_to(src)
    elif how == "hardlink":
        os.link(src, dst)
    elif how == "relative":
        (tmp_path / "sub").mkdir()
        monkeypatch.chdir(tmp_path)
    code, _, err = _cli(["convert", src, dst, "--from", source], capsys)
    _assert_user_error(code, err, "is also an input")
    assert "not a readable checkpoint" not in err
    assert src.read_bytes() == before
    _no_temporaries(tmp_path)


@pytest.mark.parametrize("source", ["detectron2", "torchvision-mvit"])
def test_convert_output_path_errors(source, mvit_zeros, tmp_path, capsys):
    src = _save(tmp_path / "mvit.pth", mvit_zeros)
    code, _, err = _cli(["convert", src, tmp_path / "missing" / "out.pth", "--from", source], capsys)
    _assert_user_error(code, err, "does not exist")
    (tmp_path / "outdir").mkdir()
    code, _, err = _cli(["convert", src, tmp_path / "outdir", "--from", source], capsys)
    _assert_user_error(code, err, "is a directory")
    assert list((tmp_path / "outdir").iterdir()) == []


@pytest.mark.parametrize("source", ["detectron2", "torchvision-mvit"])
def test_convert_interrupted_write_leaves_the_old_output(source, d2_zeros, mvit_zeros, tmp_path, capsys,
                                                         monkeypatch):
    state = {"model": d2_zeros, "__author__": "x"} if source == "detectron2" else mvit_zeros
    src = _save(tmp_path / "src.pth", state)
    dst = _previous_output(tmp_path)

    def failing_save(obj, f, *args, **kwargs):  # a full disk half-way through the write
        f.write(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", failing_save)
    code, _, err = _cli(["convert", src, dst, "--from", source], capsys)
    _assert_user_error(code, err, str(dst), "No space left on device")
    _assert_untouched(dst)


def test_convert_success_replaces_the_old_output_atomically(mvit_zeros, tmp_path, capsys):
    src = _save(tmp_path / "mvit.pth", mvit_zeros)
    dst = _previous_output(tmp_path)
    code, out, _ = _cli(["convert", src, dst, "--from", "torchvision-mvit"], capsys)
    assert code == 0 and f"wrote {dst}: 313 tensors" in out
    written = torch.load(dst, weights_only=True)
    assert {k: tuple(v.shape) for k, v in written.items()} == mvit_layout(MVIT)
    _no_temporaries(tmp_path)
