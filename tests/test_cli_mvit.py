"""`detspec convert --from torchvision-mvit` and `detspec classify` (multi-view MViT inference)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from detspec.cli import main

tv_video = pytest.importorskip("torchvision.models.video")


@pytest.fixture(scope="module")
def tv_weights(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "mvit_v1_b.pth"
    torch.save(tv_video.mvit_v1_b(weights=None).state_dict(), path)
    return path


def test_convert_torchvision_mvit(tv_weights, tmp_path, capsys):
    out = tmp_path / "detspec_mvit.pth"
    assert main(["convert", str(tv_weights), str(out), "--from", "torchvision-mvit"]) == 0
    converted = torch.load(out, weights_only=True)
    original = torch.load(tv_weights, weights_only=True)
    assert converted.keys() == original.keys()
    assert all(torch.equal(converted[k], original[k]) for k in original)
    assert "wrote" in capsys.readouterr().out


def test_convert_refuses_a_foreign_layout(tv_weights, tmp_path, capsys):
    state = torch.load(tv_weights, weights_only=True)
    state.pop("head.1.weight")
    state["extra.weight"] = torch.zeros(1)
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    assert main(["convert", str(bad), str(tmp_path / "x.pth"), "--from", "torchvision-mvit"]) == 2
    err = capsys.readouterr().err
    assert "missing: head.1.weight" in err and "unexpected: extra.weight" in err
    assert not (tmp_path / "x.pth").exists()


def test_classify_one_view_writes_logits_and_probabilities(tv_weights, tmp_path, capsys):
    rng = np.random.default_rng(0)
    video = tmp_path / "clip.npy"
    np.save(video, rng.integers(0, 256, size=(40, 64, 80, 3), dtype=np.uint8))  # short side 64 -> resized to 256
    out = tmp_path / "out.json"
    out.write_text("an earlier report")  # replaced atomically
    code = main(["classify", str(video), "--weights", str(tv_weights), "--views", "1x1", "--json", str(out)])
    assert code == 0
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    printed = capsys.readouterr().out
    assert "1. " in printed and "5. " in printed and "GFLOPs x 1 views" in printed
    data = json.loads(out.read_text())
    logits, probs = torch.tensor(data["view_logits"]), torch.tensor(data["probabilities"])
    assert logits.shape == (1, 400) and probs.shape == (400,)
    torch.testing.assert_close(probs, logits.softmax(dim=1)[0])  # one view: the average is that view's softmax
    assert abs(data["gmacs_per_view"] - 70.6) < 0.1  # torchvision's 70.599 for one 16x224x224 clip


def test_classify_rejects_bad_views(tv_weights, tmp_path, capsys):
    video = tmp_path / "v.npy"
    np.save(video, np.zeros((4, 8, 8, 3), dtype=np.uint8))
    assert main(["classify", str(video), "--weights", str(tv_weights), "--views", "five"]) == 2
    assert "views must look like" in capsys.readouterr().err


def test_classify_reads_mp4(tv_weights, tmp_path, capsys):
    av = pytest.importorskip("av")
    path = tmp_path / "clip.mp4"
    rng = np.random.default_rng(1)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 80, 64, "yuv420p"
        for _ in range(20):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    assert main(["classify", str(path), "--weights", str(tv_weights), "--views", "1x1"]) == 0
    printed = capsys.readouterr().out
    assert "1 views of [3, 16, 224, 224]" in printed and "5. " in printed


# ------------------------------------------------------------------------------------------------ hostile inputs
PREVIOUS = b'{"previous": "report"}'


def _assert_user_error(code, out, err, *needles):
    assert code == 2, err
    assert err.startswith("detspec classify: ") and err.count("\n") == 1, err  # one line
    assert "Traceback" not in err and "weights_only=False" not in err
    assert "views of" not in out  # refused before the model ran
    for needle in needles:
        assert needle in err, (needle, err)


def _video(shape, dtype, fill=0.5):
    return np.full(shape, fill, dtype=dtype)


BAD_VIDEOS = {  # name -> (array, what the message says); the rules: uint8 0-255 or float in [0, 1], finite, non-empty
    "uint16": (_video((20, 8, 8, 3), np.uint16, 60000), "got dtype uint16"),
    "int64": (_video((20, 8, 8, 3), np.int64, 200), "got dtype int64"),
    "bool": (_video((20, 8, 8, 3), np.bool_, True), "got dtype bool"),
    "complex": (_video((20, 8, 8, 3), np.complex64, 0.5), "got dtype complex64"),
    "text": (_video((20, 8, 8, 3), "<U1", "a"), "got dtype <U1"),
    "float_0_255": (np.linspace(0, 255, 20 * 8 * 8 * 3, dtype=np.float32).reshape(20, 8, 8, 3),
                    "values in [0, 255]"),
    "float_negative": (_video((20, 8, 8, 3), np.float64, -0.25), "values in [-0.25, -0.25]"),
    "nan": (np.where(np.arange(20)[:, None, None, None] == 3, np.nan, _video((20, 8, 8, 3), np.float32)),
            "192 NaN and 0 infinite"),  # frame 3: 8 * 8 * 3 values
    "inf": (_video((20, 8, 8, 3), np.float32, np.inf), "0 NaN and 3840 infinite"),
    "no_frames": (_video((0, 8, 8, 3), np.uint8), "the video is empty"),
    "no_rows": (_video((20, 0, 8, 3), np.uint8), "the video is empty"),
    "no_columns": (_video((20, 8, 0, 3), np.uint8), "the video is empty"),
    "rank3": (_video((20, 8, 8), np.uint8), "[T, H, W, 3] array"),
    "rank5": (_video((1, 20, 8, 8, 3), np.uint8), "[T, H, W, 3] array"),
    "rgba": (_video((20, 8, 8, 4), np.uint8), "[T, H, W, 3] array"),
}


@pytest.mark.parametrize("name", sorted(BAD_VIDEOS))
def test_classify_refuses_bad_video_arrays(name, tv_weights, tmp_path, capsys):
    array, needle = BAD_VIDEOS[name]
    video = tmp_path / f"{name}.npy"
    np.save(video, array)
    report = tmp_path / "out.json"
    report.write_bytes(PREVIOUS)
    code = main(["classify", str(video), "--weights", str(tv_weights), "--views", "1x1", "--json", str(report)])
    _assert_user_error(code, *capsys.readouterr(), str(video), needle)
    assert report.read_bytes() == PREVIOUS and not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def test_classify_refuses_unreadable_videos(tv_weights, tmp_path, capsys):
    good = tmp_path / "good.npy"
    np.save(good, np.zeros((20, 8, 8, 3), np.uint8))
    cases = {"truncated.npy": (good.read_bytes()[:200], "not a readable .npy array"),
             "header_only.npy": (good.read_bytes()[:40], "not a readable .npy array"),
             "pickled.npy": (None, "not a readable .npy array"),
             "missing.npy": (False, "no such video file"),
             "folder.npy": (True, "is a directory")}
    for name, (data, needle) in cases.items():
        path = tmp_path / name
        if data is True:
            path.mkdir()
        elif name == "pickled.npy":
            np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)  # needs pickle: refused
        elif data is not False:
            path.write_bytes(data)
        code = main(["classify", str(path), "--weights", str(tv_weights), "--views", "1x1"])
        _assert_user_error(code, *capsys.readouterr(), str(path), needle)


def test_classify_refuses_a_truncated_mp4(tv_weights, tmp_path, capsys):
    av = pytest.importorskip("av")
    path = tmp_path / "clip.mp4"
    rng = np.random.default_rng(2)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 80, 64, "yuv420p"
        for _ in range(20):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    code = main(["classify", str(path), "--weights", str(tv_weights), "--views", "1x1"])
    _assert_user_error(code, *capsys.readouterr(), str(path), "cannot decode the video")


def test_classify_checks_the_json_path_first(tv_weights, tmp_path, capsys):
    video = tmp_path / "v.npy"
    np.save(video, np.zeros((20, 8, 8, 3), np.uint8))
    before = video.read_bytes()
    (tmp_path / "out_dir").mkdir()
    for target, needle in ((tmp_path / "missing" / "out.json", "does not exist"),
                           (tmp_path / "out_dir", "is a directory"),
                           (video, "is also an input"),
                           (tv_weights, "is also an input")):
        code = main(["classify", str(video), "--weights", str(tv_weights), "--views", "1x1", "--json", str(target)])
        _assert_user_error(code, *capsys.readouterr(), needle)
    assert video.read_bytes() == before and list((tmp_path / "out_dir").iterdir()) == []


def test_classify_checks_labels_before_running(tv_weights, tmp_path, capsys):
    video = tmp_path / "v.npy"
    np.save(video, np.zeros((20, 8, 8, 3), np.uint8))
    labels = tmp_path / "labels.txt"
    labels.write_text("walking\nrunning\n", encoding="utf-8")
    code = main(["classify", str(video), "--weights", str(tv_weights), "--labels", str(labels)])
    _assert_user_error(code, *capsys.readouterr(), str(labels), "2 class names for a model with 400 classes")
    labels.write_bytes(b"\xff\xfe\x00broken")
    code = main(["classify", str(video), "--weights", str(tv_weights), "--labels", str(labels)])
    _assert_user_error(code, *capsys.readouterr(), str(labels), "not UTF-8")
