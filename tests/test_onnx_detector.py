"""The exported detector (detspec/onnx/detector.py) agrees with fast.FasterRCNN on synthetic images, in both
profiles: same classes, boxes and scores within spec/tolerances.py, with dynamic H, W (multiples of 32).

The model is the demo's reduced Faster R-CNN (ResNet with one block per stage) with a randomly initialised
box predictor scaled so that ~100 detections pass the score threshold; each profile is exported once (slow:
the dynamo export of the backbone takes tens of seconds on 2 cores).
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

ort = pytest.importorskip("onnxruntime")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from detspec.data.synthetic import generate_sample  # noqa: E402
from detspec.demo.config import DEMO_RCNN  # noqa: E402
from detspec.io.categories import category_table  # noqa: E402
from detspec.onnx.detector import export_detector, run_onnx_detector  # noqa: E402
from fast.rcnn import FasterRCNN  # noqa: E402
from spec import SPEC_VERSION  # noqa: E402
from spec.config import TORCHVISION  # noqa: E402
from spec.tolerances import tolerance  # noqa: E402

pytestmark = pytest.mark.slow

K = 8


def _torchvision_demo():
    """DEMO_RCNN with the torchvision profile's inference choices (pixels, ranking, pooler, level eps, filters)."""
    d = DEMO_RCNN
    tv_input = replace(TORCHVISION.input, min_size_test=d.input.min_size_test, max_size_test=d.input.max_size_test)
    return replace(d, input=tv_input,
                   rpn=replace(d.rpn, rank_by=TORCHVISION.rpn.rank_by, score_thresh=TORCHVISION.rpn.score_thresh,
                               min_box_size=TORCHVISION.rpn.min_box_size),
                   box_head=replace(d.box_head, pooler_sampling_ratio=TORCHVISION.box_head.pooler_sampling_ratio,
                                    aligned=TORCHVISION.box_head.aligned),
                   roi_heads=replace(d.roi_heads, level_eps=TORCHVISION.roi_heads.level_eps,
                                     level_eps_in_log=TORCHVISION.roi_heads.level_eps_in_log),
                   inference=replace(d.inference, min_box_size=TORCHVISION.inference.min_box_size))


def _model(cfg):
    torch.manual_seed(0)
    model = FasterRCNN(cfg, num_classes=K).eval()
    with torch.no_grad():  # spread the class scores so that many (roi, class) pairs pass 0.05
        model.roi_heads.box_predictor.cls_score.weight.normal_(0, 0.05)
        model.roi_heads.box_predictor.bbox_pred.weight.normal_(0, 0.01)
        model.proposal_generator.rpn_head.objectness_logits.weight.normal_(0, 0.05)
    return model


def _images(profile: str) -> list[torch.Tensor]:
    """Synthetic RGB uint8 images of two sizes (not multiples of 32: padded at the boundary), in the profile's
    pixel format (detectron2: BGR 0-255; torchvision: RGB 0-1)."""
    out = []
    for seed, size in ((0, (128, 160)), (1, (100, 190))):
        image = generate_sample(np.random.default_rng(seed), (size, size))[0]
        chw = torch.from_numpy(image).permute(2, 0, 1).float()
        out.append(chw.flip(0) if profile == "detectron2" else chw / 255.0)
    return out


@pytest.fixture(scope="module", params=["detectron2", "torchvision"])
def exported(request, tmp_path_factory):
    profile = request.param
    model = _model(DEMO_RCNN if profile == "detectron2" else _torchvision_demo())
    path = tmp_path_factory.mktemp("onnx") / f"{profile}.onnx"
    export_detector(model, str(path), profile, category_table(K, profile), example_size=(128, 160))
    return profile, model, ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_metadata(exported):
    profile, model, sess = exported
    meta = sess.get_modelmeta().custom_metadata_map
    assert meta["profile"] == profile and meta["spec_version"] == SPEC_VERSION
    assert len(meta["spec_config_sha256"]) == 64 and meta["detspec_version"]
    cats = json.loads(meta["categories"])
    assert [c["id"] for c in cats] == [cid for cid, _ in category_table(K, profile)]
    assert [i.name for i in sess.get_inputs()] == ["batch", "upper"]


def test_same_detections_as_fast(exported):
    profile, model, sess = exported
    images = _images(profile)
    got = run_onnx_detector(sess, images, resize=False)
    with torch.no_grad():
        expected = model(images)
    # two float32 detectors whose convolutions sum in different orders: the end-to-end tolerances of
    # RCNN.TORCHVISION_EQUIVALENCE (spec/tolerances.py)
    box_tol = tolerance("torchvision_equivalence_boxes", torch.float32)
    score_tol = tolerance("torchvision_equivalence_scores", torch.float32)
    for n, (g, e) in enumerate(zip(got, expected)):
        assert e["boxes"].shape[0] > 10, "the test model should detect something"
        assert g["classes"].tolist() == e["classes"].tolist(), f"image {n}"
        torch.testing.assert_close(g["scores"], e["scores"], rtol=score_tol[0], atol=score_tol[1])
        torch.testing.assert_close(g["boxes"], e["boxes"], rtol=box_tol[0], atol=box_tol[1])
