"""The low-precision path of the detector and MViT (layout/precision.py; issue 16), beyond the conformance tests.

Which op runs in which dtype (PRECISION.AUTOCAST, GEOMETRY_FP32, OUTPUT_FP32) is checked by
detspec/conformance/test_precision.py::test_detector_autocast_dtype, which the project's test run reaches through
tests/test_check_dtype.py (a `detspec check --dtype bf16` run); here: the float32 default, training under bf16,
the argument checks, the reproduction metric and the commands' --dtype.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

import fast
import reference
from detspec.cli import main
from detspec.conformance.test_precision import PrecisionRecorder
from detspec.demo.config import DEMO_RCNN
from detspec.evaluation import reproduced_fraction
from layout.precision import DTYPE_CHOICES, check_autocast_dtype
from spec.mvit import MVIT_B_16X4

IMPLS = {"fast": fast, "reference": reference}


def _model(impl, dtype):
    torch.manual_seed(0)
    model = IMPLS[impl].FasterRCNN(DEMO_RCNN, num_classes=3, autocast_dtype=dtype).eval()
    with torch.no_grad():  # a sharpened classifier: detections pass the score threshold
        model.roi_heads.box_predictor.cls_score.weight.mul_(30.0)
    return model


def _images():
    g = torch.Generator().manual_seed(1)
    return [torch.rand(3, 96, 128, generator=g) * 255, torch.rand(3, 64, 96, generator=g) * 255]


@pytest.mark.parametrize("which", ["fast", "reference"])
def test_default_runs_every_layer_in_float32(which):
    model = _model(which, None)
    with PrecisionRecorder(model) as rec, torch.inference_mode():
        model(_images()[:1])
    assert len(rec.ops) >= 20 and {dtype for _, dtype, _ in rec.ops} == {torch.float32}
    assert sorted(name for name, _, _ in rec.geometry) == ["inference", "pooler", "propose"]
    assert not any(on for _, _, on in rec.ops) and not any(on for _, _, on in rec.geometry)


def test_bf16_training_losses_are_float32_and_finite():
    model = _model("fast", torch.bfloat16).train()
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0]]), "classes": torch.tensor([1])},
               {"boxes": torch.tensor([[5.0, 5.0, 40.0, 30.0]]), "classes": torch.tensor([2])}]
    losses = model(_images(), targets, generator=torch.Generator().manual_seed(0))
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg"}
    for name, value in losses.items():
        assert value.dtype == torch.float32 and torch.isfinite(value), name
    sum(losses.values()).backward()  # gradients flow through the bf16 convs
    assert model.roi_heads.box_predictor.cls_score.weight.grad is not None


def test_autocast_dtype_is_checked():
    assert check_autocast_dtype(None) is None and check_autocast_dtype(torch.float16) is torch.float16
    for bad in (torch.float32, torch.float64, "bf16", 16):
        with pytest.raises(ValueError, match="autocast_dtype must be None, torch.bfloat16 or torch.float16"):
            check_autocast_dtype(bad)
    with pytest.raises(ValueError, match="autocast_dtype"):
        fast.FasterRCNN(DEMO_RCNN, autocast_dtype=torch.float64)
    with torch.device("meta"), pytest.raises(ValueError, match="autocast_dtype"):
        fast.MViT(MVIT_B_16X4, autocast_dtype=torch.int8)
    assert DTYPE_CHOICES == {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def test_mvit_bf16_logits_are_float32():
    cfg = replace(MVIT_B_16X4, temporal_size=4, spatial_size=(32, 32))
    torch.manual_seed(0)
    model = fast.MViT(cfg, autocast_dtype=torch.bfloat16).eval()
    with torch.inference_mode():
        logits = model(torch.rand(1, 3, 4, 32, 32))
    assert logits.dtype == torch.float32 and logits.shape == (1, cfg.num_classes) and torch.isfinite(logits).all()


# ------------------------------------------------------------------------------------------------ reproduction
def test_reproduced_fraction_by_hand():
    # image 1: fp32 has two cat boxes and a dog box. The other run has one cat box shifted by 1 px on a
    # 100 x 100 box (IoU = 99*100 / (100*100 + 100*100 - 99*100) = 9900 / 10100 = 0.980 >= 0.9: reproduced),
    # one box of the wrong class where the second cat is (not reproduced), and the dog box shifted by 10 px
    # (IoU = 90*100 / (2*10000 - 9000) = 9000 / 11000 = 0.818 < 0.9: not reproduced). Image 2 is missing.
    ref = {1: {"boxes": torch.tensor([[0.0, 0, 100, 100], [200, 200, 300, 300], [400, 0, 500, 100]]),
               "scores": torch.tensor([0.9, 0.8, 0.7]), "classes": torch.tensor([0, 0, 1])},
           2: {"boxes": torch.tensor([[0.0, 0, 10, 10]]), "scores": torch.tensor([0.5]),
               "classes": torch.tensor([2])}}
    other = {1: {"boxes": torch.tensor([[1.0, 0, 101, 100], [200, 200, 300, 300], [410, 0, 510, 100]]),
                 "scores": torch.tensor([0.9, 0.8, 0.7]), "classes": torch.tensor([0, 2, 1])}}
    assert reproduced_fraction(ref, other, 0.9) == (1, 4)
    assert reproduced_fraction(ref, other, 0.8) == (2, 4)  # the dog box's 0.818 now counts
    # one-to-one: two identical reference boxes can't both take the one matching box
    dup = {1: {"boxes": torch.tensor([[0.0, 0, 10, 10], [0.0, 0, 10, 10]]), "scores": torch.tensor([0.6, 0.5]),
               "classes": torch.tensor([0, 0])}}
    one = {1: {"boxes": torch.tensor([[0.0, 0, 10, 10]]), "scores": torch.tensor([0.6]), "classes": torch.tensor([0])}}
    assert reproduced_fraction(dup, one) == (1, 2)
    assert reproduced_fraction({}, one) == (0, 0)


# ------------------------------------------------------------------------------------------------ commands
def test_detect_rejects_an_unknown_dtype(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["detect", "x.png", "--weights", "w.pth", "--dtype", "int8"])
    assert exc.value.code == 2
    assert "invalid choice: 'int8'" in capsys.readouterr().err


def test_classify_dtype_needs_the_fast_impl(tmp_path, capsys):
    video = tmp_path / "v.npy"
    np.save(video, np.zeros((16, 32, 32, 3), dtype=np.uint8))
    code = main(["classify", str(video), "--weights", str(tmp_path / "missing.pth"), "--impl", "reference",
                 "--dtype", "bf16"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines() == ["detspec classify: --dtype bf16 is the fast path's option (autocast); "
                                        "use --impl fast"]
