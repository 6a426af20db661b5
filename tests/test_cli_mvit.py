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
    code = main(["classify", str(video), "--weights", str(tv_weights), "--views", "1x1", "--json", str(out)])
    assert code == 0
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
