"""`detspec convert` + `detspec detect --profile torchvision` reproduce torchvision when the RPN's logits saturate.

The checkpoint is torchvision's fasterrcnn_resnet50_fpn with seeded random weights whose RPN objectness conv is
scaled and its bias raised by 20 (detspec.conformance.test_rcnn.seeded_torchvision): every proposal that
survives NMS has probability exactly 1.0 in float32, more of them than the post-NMS cut keeps, so which ones
torchvision keeps depends on its ranking of tied probabilities (PROPOSAL.TORCHVISION_RANKING). The CLI's
detections.json is compared with torchvision's own output on the same PNG as matched sets with the tolerances
of RCNN.TORCHVISION_EQUIVALENCE. The image is fed at scale 1 on both sides (--resize none; torchvision's
min_size / max_size equal the image's sides) to keep this fast.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from detspec.cli import main
from detspec.conformance.test_rcnn import (
    SATURATED_SCALE,
    assert_matched,
    detections_close,
    seeded_torchvision,
)

SIZE = (256, 384)  # (h, w): over 1000 proposals survive NMS, so the post-NMS cut falls among ties


@pytest.fixture(scope="module")
def saturated_case(tmp_path_factory):
    """(converted checkpoint, PNG, torchvision's detections on it): `detspec convert` of the saved state dict."""
    from torchvision.transforms.functional import to_tensor

    tv = seeded_torchvision(*SIZE, rpn_logit_scale=SATURATED_SCALE, rpn_logit_bias=20.0)
    tmp = tmp_path_factory.mktemp("saturated")
    checkpoint, converted = tmp / "fasterrcnn_saturated.pth", tmp / "detspec.pth"
    torch.save(tv.state_dict(), checkpoint)
    assert main(["convert", str(checkpoint), str(converted), "--from", "torchvision"]) == 0
    image = tmp / "000000000001.png"  # image id 1, from the number in the file name
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (*SIZE, 3), dtype=np.uint8)).save(image)
    with Image.open(image) as im, torch.no_grad():
        (expected,) = tv([to_tensor(im.convert("RGB"))])  # torchvision's own input path: RGB in [0, 1]
    assert len(expected["scores"]) > 0, "the comparison must cover some detections"
    return converted, image, expected


@pytest.mark.parametrize("which", ["fast", "reference"])
def test_cli_detect_matches_torchvision_with_saturated_rpn(saturated_case, tmp_path, which):
    converted, image, expected = saturated_case
    out = tmp_path / "out"
    assert main(["detect", str(image), "--weights", str(converted), "--profile", "torchvision", "--resize", "none",
                 "--out", str(out), "--impl", which, "--draw-thresh", "1.0"]) == 0
    results = json.loads((out / "detections.json").read_text())
    assert {r["image_id"] for r in results} == {1}
    # COCO results: bbox [x, y, w, h]; in the torchvision profile category id = torchvision label (class + 1)
    boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (r["bbox"] for r in results)], dtype=torch.float64)
    scores = torch.tensor([r["score"] for r in results], dtype=torch.float64)
    labels = torch.tensor([r["category_id"] for r in results], dtype=torch.int64)
    close = detections_close(boxes.reshape(-1, 4), scores, labels, expected["boxes"], expected["scores"],
                             expected["labels"])
    assert_matched(close, f"detect --impl {which}",
                   lambda e: (int(expected["labels"][e]), float(expected["scores"][e]), expected["boxes"][e].tolist()))
