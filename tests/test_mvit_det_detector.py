"""The MViTv2 detector (issue 14): the detectron2-mvitv2-t/s/b profiles, detectron2 checkpoints with an MViTv2 body
through `detspec convert --from detectron2` (the Mask R-CNN mask branch dropped with a note) and `detspec detect`
(the profile read off the keys), end to end.

The checkpoint is a detectron2 model-zoo style pickle ({"model": {name: ndarray}, "__author__": ...}) whose keys are
written from d2-spec §5.1 / §5.3 (the backbone's via the conformance suite's key table), with seeded random values
and a classifier bias that makes class 0 win, so detections pass the score threshold. The CLI's detections are
compared with the reference detector run in float64 on the same RGB pixels.
"""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

import reference
from detspec.checkpoints import CheckpointError, layout_config, load_checkpoint
from detspec.cli import main
from detspec.conformance.test_mvit_det import detectron2_keys
from spec.config import (
    BASE_RCNN_FPN,
    DETECTRON2_MVITV2_B,
    DETECTRON2_MVITV2_S,
    DETECTRON2_MVITV2_T,
    PARAMETER_COUNTS,
    get_profile,
)
from spec.mvit_det import MVITDET_KNOWN
from spec.tolerances import tolerance

K = 80  # COCO classes in detectron2's contiguous order


def detector_keys(num_classes: int = K) -> dict[str, tuple[int, ...]]:
    """detectron2 Mask R-CNN MViTv2-T keys (box branch), from d2-spec §5.1 (FPN, RPN, box head) and §5.3 (body)."""
    out = {f"backbone.bottom_up.{k}": s for k, s in detectron2_keys(DETECTRON2_MVITV2_T.mvit).items()}
    for level, c in zip(range(2, 6), MVITDET_KNOWN.stage_channels):
        out.update({f"backbone.fpn_lateral{level}.weight": (256, c, 1, 1), f"backbone.fpn_lateral{level}.bias": (256,),
                    f"backbone.fpn_output{level}.weight": (256, 256, 3, 3), f"backbone.fpn_output{level}.bias": (256,)})
    out.update({"proposal_generator.rpn_head.conv.weight": (256, 256, 3, 3),
                "proposal_generator.rpn_head.conv.bias": (256,),
                "proposal_generator.rpn_head.objectness_logits.weight": (3, 256, 1, 1),
                "proposal_generator.rpn_head.objectness_logits.bias": (3,),
                "proposal_generator.rpn_head.anchor_deltas.weight": (12, 256, 1, 1),
                "proposal_generator.rpn_head.anchor_deltas.bias": (12,),
                "roi_heads.box_head.fc1.weight": (1024, 256 * 7 * 7), "roi_heads.box_head.fc1.bias": (1024,),
                "roi_heads.box_head.fc2.weight": (1024, 1024), "roi_heads.box_head.fc2.bias": (1024,),
                "roi_heads.box_predictor.cls_score.weight": (num_classes + 1, 1024),
                "roi_heads.box_predictor.cls_score.bias": (num_classes + 1,),
                "roi_heads.box_predictor.bbox_pred.weight": (4 * num_classes, 1024),
                "roi_heads.box_predictor.bbox_pred.bias": (4 * num_classes,)})
    return out


MASK_HEAD = {"roi_heads.mask_head.mask_fcn1.weight": (256, 256, 3, 3), "roi_heads.mask_head.mask_fcn1.bias": (256,),
             "roi_heads.mask_head.deconv.weight": (256, 256, 2, 2),
             "roi_heads.mask_head.predictor.weight": (K, 256, 1, 1)}


@pytest.fixture(scope="module")
def detectron2_mvit_pkl(tmp_path_factory):
    rng = np.random.default_rng(0)
    model = {}
    for key, shape in {**detector_keys(), **MASK_HEAD}.items():
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        scale = 1.0 / np.sqrt(fan_in) if len(shape) > 1 else 0.02
        model[key] = (rng.standard_normal(shape) * scale).astype(np.float32)
    for n in ("norm1", "norm2"):
        for key in [k for k in model if k.endswith(f"{n}.weight")]:
            model[key] = np.ones_like(model[key])
    model["roi_heads.box_predictor.cls_score.bias"][0] = 8.0  # class 0 (person) wins: detections above 0.05
    path = tmp_path_factory.mktemp("ckpt") / "model_final_mvitv2_t.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": model, "__author__": "test"}, f, protocol=2)
    return path, model


def test_profiles_are_base_rcnn_fpn_with_an_mvitv2_body():
    for cfg, depth in ((DETECTRON2_MVITV2_T, 10), (DETECTRON2_MVITV2_S, 16), (DETECTRON2_MVITV2_B, 24)):
        assert get_profile(cfg.name) is cfg and cfg.mvit.depth == depth
        # d2-spec §4.2 / §4.7: RGB, ImageNet statistics on 0-255 pixels, test resize 800 / 1333
        assert cfg.input.format == "RGB" and cfg.input.pixel_mean == (123.675, 116.28, 103.53)
        assert cfg.input.pixel_std == (58.395, 57.12, 57.375) and cfg.input.pixel_scale == 255.0
        assert (cfg.input.min_size_test, cfg.input.max_size_test) == (800, 1333)
        assert cfg.fpn_in_channels == MVITDET_KNOWN.stage_channels
        # everything but the body and the input is Base-RCNN-FPN's
        for part in ("anchors", "rpn", "roi_heads", "box_head", "inference"):
            assert getattr(cfg, part) == getattr(BASE_RCNN_FPN, part), part
        assert cfg.fpn.out_channels == BASE_RCNN_FPN.fpn.out_channels


def test_detector_parameter_count():
    """Backbone (d2-spec §4.3) + FPN laterals over 96/192/384/768 channels and outputs + RPN head + box branch
    (d2-spec §3): 23,405,664 + 369,664 + 2,360,320 + 593,935 + 14,306,705."""
    with torch.device("meta"):
        model = reference.FasterRCNN(DETECTRON2_MVITV2_T)
    laterals = sum(256 * c + 256 for c in MVITDET_KNOWN.stage_channels)
    outputs = 4 * (256 * 256 * 9 + 256)
    expected = (MVITDET_KNOWN.params_t + laterals + outputs + PARAMETER_COUNTS.rpn_head
                + PARAMETER_COUNTS.box_head_and_predictor)
    assert sum(p.numel() for p in model.parameters()) == expected == 41_036_288
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == detector_keys()


def test_convert_drops_the_mask_branch_and_detect_matches_the_reference(detectron2_mvit_pkl, tmp_path, capsys):
    pkl, model = detectron2_mvit_pkl
    converted = tmp_path / "mvitv2_t.pth"
    assert main(["convert", str(pkl), str(converted), "--from", "detectron2"]) == 0
    out = capsys.readouterr().out
    assert f"dropped the mask branch ({len(MASK_HEAD)} roi_heads.mask_head.* tensors)" in out
    assert "profile detectron2-mvitv2-t" in out
    state = load_checkpoint(converted)
    assert layout_config(state) is DETECTRON2_MVITV2_T and set(state) == set(detector_keys())

    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)
    rgb[20:70, 30:90] = (200, 40, 40)  # one flat block: some structure for the RPN
    image = tmp_path / "000000000042.png"
    Image.fromarray(rgb).save(image)
    det_dir = tmp_path / "det"
    assert main(["detect", str(image), "--weights", str(converted), "--resize", "none", "--out", str(det_dir),
                 "--draw-thresh", "0.05"]) == 0
    results = json.loads((det_dir / "detections.json").read_text())
    assert results, "class 0's bias must give detections"

    ref = reference.FasterRCNN(DETECTRON2_MVITV2_T).double().eval()
    ref.load_state_dict({k: torch.from_numpy(model[k]).double() for k in detector_keys()})
    with torch.no_grad():
        (expected,) = ref([torch.from_numpy(rgb).permute(2, 0, 1).double()])  # RGB 0-255: the profile's format
    assert len(results) == len(expected["scores"])
    rtol, atol = tolerance("torchvision_equivalence_boxes", torch.float32)
    # matched as sets, one to one by the nearest box: near-equal scores may sort differently in float32 and float64
    remaining = list(results)
    for box, score, cls in zip(expected["boxes"], expected["scores"], expected["classes"]):
        x1, y1, x2, y2 = box.tolist()
        want = [x1, y1, x2 - x1, y2 - y1]
        r = min(remaining, key=lambda r: max(abs(a - b) for a, b in zip(r["bbox"], want)))
        remaining.remove(r)
        assert r["category_id"] == 1 and int(cls) == 0  # class 0 = COCO person (category id 1)
        assert r["bbox"] == pytest.approx(want, rel=rtol, abs=max(atol, 1e-3))
        assert r["score"] == pytest.approx(float(score), rel=rtol, abs=max(atol, 1e-4))


def test_detect_refuses_a_profile_with_another_body(detectron2_mvit_pkl, tmp_path, capsys):
    pkl, _ = detectron2_mvit_pkl
    image = tmp_path / "1.png"
    Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8)).save(image)
    code = main(["detect", str(image), "--weights", str(pkl), "--profile", "detectron2", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2
    assert "--profile detectron2 has the resnet body" in err and "give --profile detectron2-mvitv2-t" in err
    assert "Traceback" not in err


def test_an_mvitv2_body_of_unknown_depth_is_refused(detectron2_mvit_pkl):
    _, model = detectron2_mvit_pkl
    state = {k: v for k, v in model.items() if not k.startswith("backbone.bottom_up.blocks.9.")}
    with pytest.raises(CheckpointError, match=r"an MViTv2 backbone with 9 blocks; detspec knows detectron2-mvitv2-t "
                                              r"\(10 blocks\)"):
        layout_config(state, "x.pkl")


def test_export_then_detect_on_onnx_runtime_matches_pytorch(detectron2_mvit_pkl, tmp_path, capsys):
    """`detspec export` of the MViTv2-T detector (profile read off the keys; dynamic H, W), then `detspec detect`
    on ONNX Runtime: the same detections as the PyTorch run of the same file, at two image sizes (one of them not
    the export's example size, so the windows, the padding and the resized tables are all symbolic)."""
    pytest.importorskip("onnxruntime")
    pkl, _ = detectron2_mvit_pkl
    model = tmp_path / "mvitv2_t.onnx"
    assert main(["export", str(pkl), str(model)]) == 0
    assert "profile detectron2-mvitv2-t" in capsys.readouterr().out
    rng = np.random.default_rng(2)
    images = []
    for i, (h, w) in enumerate([(96, 128), (150, 200)]):
        p = tmp_path / f"{i + 1}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(p)
        images.append(str(p))
    results = {}
    for name, weights in (("pytorch", pkl), ("onnx", model)):
        out = tmp_path / name
        assert main(["detect", *images, "--weights", str(weights), "--resize", "none", "--out", str(out)]) == 0
        results[name] = json.loads((out / "detections.json").read_text())
    assert results["onnx"] and len(results["onnx"]) == len(results["pytorch"])
    rtol, atol = tolerance("torchvision_equivalence_boxes", torch.float32)
    remaining = list(results["onnx"])
    for want in results["pytorch"]:  # one to one, by image and nearest box (near-equal scores may reorder)
        same_image = [r for r in remaining if r["image_id"] == want["image_id"]]
        r = min(same_image, key=lambda r: max(abs(a - b) for a, b in zip(r["bbox"], want["bbox"])))
        remaining.remove(r)
        assert r["category_id"] == want["category_id"]
        assert r["bbox"] == pytest.approx(want["bbox"], rel=rtol, abs=max(atol, 1e-3))
        assert r["score"] == pytest.approx(want["score"], rel=rtol, abs=max(atol, 1e-4))


def test_export_refuses_a_profile_with_another_body(detectron2_mvit_pkl, tmp_path, capsys):
    pkl, _ = detectron2_mvit_pkl
    code = main(["export", str(pkl), str(tmp_path / "m.onnx"), "--profile", "torchvision"])
    err = capsys.readouterr().err
    assert code == 2 and not (tmp_path / "m.onnx").exists()
    assert "--profile torchvision has the resnet body" in err and "Traceback" not in err
