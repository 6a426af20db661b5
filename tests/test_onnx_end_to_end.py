"""The whole ONNX path through the CLI: `detspec export WEIGHTS model.onnx`, then `detspec detect --weights
model.onnx` gives the same detections as `detspec detect --weights model.pth` (issue 13, "Done when"), in both
profiles; and `detect --weights MODEL.onnx`'s refusals.

The checkpoint is a full-size fast.FasterRCNN (`detspec export` builds the profile's ResNet-50 FPN) with seeded
random weights, saved with detspec.checkpoints.save_detspec. Two adjustments make it detect something:
  - detectron2 profile: its pixels are 0-255 BGR with PIXEL_STD 1, about 57 times torchvision's normalized
    pixels, which drives the randomly initialised network's logits so far apart that the softmax saturates on
    one class (one detection per image); the stem conv is divided by 57 (the ResNet is positively homogeneous,
    so this only rescales the features);
  - the class logits are scaled by 0.1 so that ~100 (ROI, class) pairs pass the 0.05 score threshold with
    distinct scores (no exact ties at float32).
Images are synthetic scenes (detspec/data/synthetic.py) fed at their own size (--resize none). Each profile's
test exports once (~40 s of dynamo export on 2 cores): slow.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from detspec.cli import main  # noqa: E402
from detspec.data.synthetic import generate_sample  # noqa: E402
from spec.tolerances import tolerance  # noqa: E402

K = 5
SIZES = ((128, 160), (96, 200))  # (H, W), not multiples of 32: padded at the boundary


def _checkpoint(profile: str, path: Path) -> Path:
    import fast
    from detspec.checkpoints import save_detspec
    from spec.config import get_profile

    torch.manual_seed(0)
    model = fast.FasterRCNN(get_profile(profile), num_classes=K).eval()
    with torch.no_grad():
        if profile == "detectron2":
            model.backbone.bottom_up.stem.conv1.weight.div_(57.0)
        model.roi_heads.box_predictor.cls_score.weight.mul_(0.1)
    save_detspec(model.state_dict(), path)
    return path


def _images(root: Path) -> list[Path]:
    paths = []
    for seed, (h, w) in enumerate(SIZES):
        rgb = generate_sample(np.random.default_rng(seed), ((h, h), (w, w)))[0]
        path = root / f"{seed + 1:06d}.png"
        Image.fromarray(rgb).save(path)
        paths.append(path)
    return paths


def _by_image(path: Path) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for row in json.loads(path.read_text()):
        out.setdefault(row["image_id"], []).append(row)
    return out


def _xyxy(bbox: list[float]) -> torch.Tensor:
    x, y, w, h = bbox
    return torch.tensor([x, y, x + w, y + h], dtype=torch.float64)


def _close(a: torch.Tensor, b: torch.Tensor, tol: tuple[float, float]) -> bool:
    rtol, atol = tol
    return bool(torch.all((a - b).abs() <= atol + rtol * b.abs()))


def _assert_same_detections(got: list[dict], expected: list[dict], image_id: int) -> None:
    """Same count and category multiset; every detection matched one to one (same category, box and score within
    RCNN.TORCHVISION_EQUIVALENCE's tolerances: two float32 detectors summing in different orders). Matching is
    by set, so detections whose scores tie within the tolerance may come in either order."""
    box_tol = tolerance("torchvision_equivalence_boxes", torch.float32)
    score_tol = tolerance("torchvision_equivalence_scores", torch.float32)
    assert len(got) == len(expected) > 10, f"image {image_id}: {len(got)} vs {len(expected)} detections"
    assert sorted(r["category_id"] for r in got) == sorted(r["category_id"] for r in expected), f"image {image_id}"
    free = list(expected)
    for g in sorted(got, key=lambda r: -r["score"]):
        gs, gb = torch.tensor([g["score"]], dtype=torch.float64), _xyxy(g["bbox"])
        match = next((e for e in free if e["category_id"] == g["category_id"]
                      and _close(gs, torch.tensor([e["score"]], dtype=torch.float64), score_tol)
                      and _close(gb, _xyxy(e["bbox"]), box_tol)), None)
        assert match is not None, f"image {image_id}: ONNX detection {g} has no counterpart in the .pth detections"
        free.remove(match)


@pytest.mark.slow
@pytest.mark.parametrize("profile", ["detectron2", "torchvision"])
def test_export_then_detect_matches_the_checkpoint(profile, tmp_path, capsys):
    weights = _checkpoint(profile, tmp_path / "model.pth")
    model = tmp_path / "model.onnx"
    images = [str(p) for p in _images(tmp_path)]
    assert main(["export", str(weights), str(model), "--profile", profile]) == 0
    assert f"profile {profile}" in capsys.readouterr().out
    assert main(["detect", *images, "--weights", str(weights), "--profile", profile, "--resize", "none",
                 "--out", str(tmp_path / "pth")]) == 0
    pth_out = capsys.readouterr().out
    # no --profile: the ONNX model's metadata gives it
    assert main(["detect", *images, "--weights", str(model), "--resize", "none", "--out", str(tmp_path / "onnx")]) == 0
    onnx_out = capsys.readouterr().out

    expected, got = _by_image(tmp_path / "pth" / "detections.json"), _by_image(tmp_path / "onnx" / "detections.json")
    assert sorted(got) == sorted(expected) == [1, 2]
    for image_id in expected:
        _assert_same_detections(got[image_id], expected[image_id], image_id)
    # the same outputs: one drawn PNG per image at the image's size, and the same progress lines
    for p in images:
        with Image.open(tmp_path / "onnx" / Path(p).with_suffix(".png").name) as drawn:
            assert drawn.size == Image.open(p).size
    for out, where in ((pth_out, "pth"), (onnx_out, "onnx")):
        lines = out.strip().splitlines()
        assert [ln.split(":")[0] for ln in lines[:2]] == [f"[1/2] {images[0]}", f"[2/2] {images[1]}"]
        assert lines[-1].startswith(f"wrote {tmp_path / where / 'detections.json'} (")


# ------------------------------------------------------------------------------- refusals (no export needed)


def _fake_detector(path: Path, profile: str = "detectron2", boxes=((2.0, 3.0, 20.0, 30.0),), meta: bool = True):
    """A tiny ONNX model with the exported detector's interface and metadata: inputs batch [1, 3, H, W] and
    upper [4]; outputs constant boxes (network pixels), scores 0.9 and classes 0. Not an export; it checks the
    CLI's plumbing (metadata, outputs) in milliseconds."""
    import dataclasses

    from onnx import TensorProto, helper, numpy_helper

    from detspec.io.categories import category_table
    from spec.config import get_profile

    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    nodes = [helper.make_node("Constant", [], ["boxes"], value=numpy_helper.from_array(b)),
             helper.make_node("Constant", [], ["scores"], value=numpy_helper.from_array(np.full(len(b), 0.9,
                                                                                                  np.float32))),
             helper.make_node("Constant", [], ["classes"], value=numpy_helper.from_array(np.zeros(len(b), np.int64)))]
    graph = helper.make_graph(
        nodes, "fake_detector",
        [helper.make_tensor_value_info("batch", TensorProto.FLOAT, [1, 3, "h", "w"]),
         helper.make_tensor_value_info("upper", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [len(b), 4]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, [len(b)]),
         helper.make_tensor_value_info("classes", TensorProto.INT64, [len(b)])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    if meta:
        cats = category_table(3, profile)
        values = {"profile": profile, "input_config": json.dumps(dataclasses.asdict(get_profile(profile).input)),
                  "categories": json.dumps([{"class": c, "id": i, "name": n} for c, (i, n) in enumerate(cats)])}
        for key, value in values.items():
            model.metadata_props.add(key=key, value=value)
    path.write_bytes(model.SerializeToString())
    return path


def _png(path: Path, size=(40, 48)) -> str:
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
    return str(path)


def _one_line(capsys, *needles: str) -> str:
    out, err = capsys.readouterr()
    assert "Traceback" not in err + out
    lines = err.strip().splitlines()
    assert len(lines) == 1, lines
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def test_detect_with_an_onnx_model_writes_coco_results_and_pngs(tmp_path, capsys):
    model = _fake_detector(tmp_path / "m.onnx", "torchvision")
    image = _png(tmp_path / "000000000042.png")
    assert main(["detect", image, "--weights", str(model), "--resize", "none", "--out", str(tmp_path / "o")]) == 0
    rows = json.loads((tmp_path / "o" / "detections.json").read_text())
    # the graph's one box (2, 3, 20, 30) in network pixels = original pixels (--resize none), class 0, which the
    # metadata's categories map to category id 1 (category_table(3, "torchvision"): class c -> id c + 1)
    assert len(rows) == 1 and rows[0]["image_id"] == 42 and rows[0]["category_id"] == 1
    assert rows[0]["bbox"] == pytest.approx([2.0, 3.0, 18.0, 27.0]) and rows[0]["score"] == pytest.approx(0.9)
    assert (tmp_path / "o" / "000000000042.png").is_file()
    assert "[1/1]" in capsys.readouterr().out


@pytest.mark.parametrize("extra, needles", [
    (["--profile", "torchvision"], ["--profile torchvision contradicts", "detectron2 profile"]),
    (["--impl", "reference"], ["--impl reference does not apply to an ONNX model"]),
    (["--dtype", "bf16"], ["--dtype bf16 does not apply to an ONNX model"]),
])
def test_onnx_flags_that_contradict_the_model_are_refused(tmp_path, capsys, extra, needles):
    model = _fake_detector(tmp_path / "m.onnx", "detectron2")
    image = _png(tmp_path / "000001.png")
    out = tmp_path / "o"
    assert main(["detect", image, "--weights", str(model), "--out", str(out), *extra]) == 2
    _one_line(capsys, *needles)
    assert not out.exists()


def test_matching_profile_is_accepted(tmp_path, capsys):
    model = _fake_detector(tmp_path / "m.onnx", "detectron2")
    image = _png(tmp_path / "000001.png")
    assert main(["detect", image, "--weights", str(model), "--profile", "detectron2", "--resize", "none",
                 "--out", str(tmp_path / "o")]) == 0


@pytest.mark.parametrize("case, needles", [
    ("missing", ["no such ONNX model"]),
    ("garbage", ["ONNX Runtime cannot load it as a model"]),
    ("truncated", ["ONNX Runtime cannot load it as a model"]),
    ("no metadata", ["no 'profile', 'input_config', 'categories' metadata", "detspec export"]),
    ("component", ["metadata", "not a detector written by `detspec export"]),
])
def test_unusable_onnx_files_are_refused_in_one_line(tmp_path, capsys, case, needles):
    model = tmp_path / "m.onnx"
    if case == "garbage":
        model.write_bytes(b"not a protobuf \x00\xff" * 10)
    elif case == "truncated":
        data = _fake_detector(tmp_path / "whole.onnx").read_bytes()
        model.write_bytes(data[: len(data) // 2])
    elif case == "no metadata":
        _fake_detector(model, meta=False)
    elif case == "component":
        from detspec.onnx.components import export_component

        export_component("box_area", str(model), "float32")
    image = _png(tmp_path / "000001.png")
    out = tmp_path / "o"
    assert main(["detect", image, "--weights", str(model), "--out", str(out)]) == 2
    _one_line(capsys, str(model), *needles)
    assert not out.exists()
