"""The ONNX Runtime port (`--impl onnxruntime`, detspec/onnx/runtime.py): resolution, the contract's dtypes,
shapes, errors and empty inputs at the boundary, session caching, and agreement with independent
implementations (the float64 reference, torchvision) within spec/tolerances.py.
"""

from __future__ import annotations

import sys

import pytest

pytest.importorskip("onnxruntime")

import torch  # noqa: E402

import reference  # noqa: E402
from detspec.impls import ImplResolutionError, NotImplementedComponent, resolve  # noqa: E402
from detspec.onnx import runtime as R  # noqa: E402
from spec.config import SCALE_CLAMP, TORCHVISION  # noqa: E402
from spec.tolerances import assert_close  # noqa: E402

tv_ops = pytest.importorskip("torchvision.ops")


def boxes(n: int, seed: int, scale: float = 100.0, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * scale
    wh = 1 + torch.rand(n, 2, generator=g, dtype=torch.float64) * scale / 2
    return torch.cat([xy, xy + wh], dim=1).to(dtype)


# ------------------------------------------------------------------------------------------- resolution
def test_resolves_as_a_builtin_with_only_what_onnx_expresses():
    impl = resolve("onnxruntime")
    assert impl.has("pairwise_iou", "nms", "batched_nms", "roi_align", "multilevel_roi_align", "select_proposals",
                    "fast_rcnn_inference", "decode_boxes", "encode_boxes")
    with pytest.raises(NotImplementedComponent):
        impl.match  # noqa: B018  (matching has no ONNX graph here: absent, so "not implemented")
    with pytest.raises(NotImplementedComponent):
        impl.FasterRCNN  # noqa: B018


def test_missing_onnxruntime_is_a_one_line_resolution_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "detspec.onnx.runtime", None)  # import of it raises ImportError
    with pytest.raises(ImplResolutionError, match=r"--impl onnxruntime needs the onnx extra") as exc:
        resolve("onnxruntime")
    assert "\n" not in str(exc.value)


# ------------------------------------------------------------------------------------------- the boundary
def test_dtypes_shapes_and_empty_inputs():
    a32, b32 = boxes(4, 0), boxes(3, 1)
    assert R.pairwise_iou(a32, b32).dtype == torch.float32
    iou64 = R.pairwise_iou(a32.double(), b32.double())
    assert iou64.dtype == torch.float64 and iou64.shape == (4, 3)
    assert_close(iou64, reference.pairwise_iou(a32.double(), b32.double()), "pairwise_iou")
    empty = torch.zeros(0, 4)
    assert R.pairwise_iou(empty, b32).shape == (0, 3)
    keep = R.nms(empty, torch.zeros(0), 0.5)
    assert keep.shape == (0,) and keep.dtype == torch.int64
    assert R.roi_align(torch.zeros(1, 2, 5, 5), torch.zeros(0, 5), (2, 3), 1.0, 0, True).shape == (0, 2, 2, 3)
    assert R.decode_boxes(torch.zeros(0, 8), empty, (1.0, 1.0, 1.0, 1.0), SCALE_CLAMP).shape == (0, 8)
    assert R.assign_levels(empty).dtype == torch.int64
    assert R.select_proposals([torch.zeros(0, 5, 4)], [torch.zeros(0, 5)], []) == []


def test_invalid_input_raises_the_contract_errors():
    good = torch.tensor([[0.0, 0, 1, 1]])
    with pytest.raises(TypeError, match="boxes1"):
        R.pairwise_iou(torch.tensor([[0, 0, 1, 1]]), good)
    with pytest.raises(ValueError, match="boxes"):
        R.nms(torch.tensor([[2.0, 0, 1, 1]]), torch.tensor([0.5]), 0.5)  # x2 < x1
    with pytest.raises(ValueError, match="iou_threshold"):
        R.nms(good, torch.tensor([0.5]), 1.5)
    with pytest.raises(TypeError, match="groups"):
        R.batched_nms(good, torch.tensor([0.5]), torch.tensor([0.0]), 0.5)
    with pytest.raises(ValueError, match="rois"):
        R.roi_align(torch.zeros(1, 1, 4, 4), torch.tensor([[1.0, 0, 0, 2, 2]]), 2, 1.0, 0, True)  # image 1 of 1
    with pytest.raises(ValueError, match="src"):
        R.encode_boxes(torch.tensor([[0.0, 0, 0, 1]]), good, (1.0, 1.0, 1.0, 1.0))


def test_sessions_are_cached_per_component_and_static_argument():
    features, rois = torch.randn(1, 2, 6, 6), torch.tensor([[0.0, 1, 1, 4, 4]])
    R.roi_align(features, rois, 2, 1.0, 0, True)
    before = R.session.cache_info()
    R.roi_align(features, rois, 2, 1.0, 0, True)
    R.roi_align(features, rois * 0.5, 2, 1.0, 0, True)
    after = R.session.cache_info()
    assert after.hits == before.hits + 2 and after.misses == before.misses
    R.roi_align(features, rois, 3, 1.0, 0, True)  # another output size: another session
    assert R.session.cache_info().misses == before.misses + 1


# ------------------------------------------------------------------------------------------- agreement
def test_nms_threshold_is_the_real_number():
    # IoU 30/100 is 0.300000012 in float32 > 0.3: suppressed (NMS.STRICT), as the spec compares
    b = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 3]])
    assert R.nms(b, torch.tensor([0.9, 0.8]), 0.3).tolist() == [0]
    # IoU exactly 0.5 == threshold: both kept
    b = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 5]])
    assert R.nms(b, torch.tensor([0.9, 0.8]), 0.5).tolist() == [0, 1]


def test_roi_heads_path_matches_reference_in_both_profiles():
    g = torch.Generator().manual_seed(3)
    r, k = 25, 4
    b = torch.cat([boxes(r, 20 + c, 80.0) for c in range(k)], dim=1)
    scores = torch.softmax(torch.randn(r, k + 1, generator=g) * 3, dim=1)
    inf = TORCHVISION.inference
    for kwargs in ({}, dict(score_thresh=inf.score_thresh, nms_thresh=inf.nms_thresh, topk_per_image=7,
                            min_box_size=inf.min_box_size, drop_nonfinite=inf.drop_nonfinite)):
        got = R.fast_rcnn_inference([b, b[:9]], [scores, scores[:9]], [(70, 90), (40, 50)], **kwargs)
        expected = reference.fast_rcnn_inference([b.double(), b[:9].double()], [scores.double(), scores[:9].double()],
                                                 [(70, 90), (40, 50)], **kwargs)
        for (gb, gs, gc, gr), (eb, es, ec, er) in zip(got, expected):
            assert gc.tolist() == ec.tolist() and gr.tolist() == er.tolist()
            assert gb.dtype == torch.float32 and gc.dtype == torch.int64
            assert_close(gb, eb, "fast_rcnn_inference")
            assert_close(gs, es, "fast_rcnn_inference")


def test_multilevel_pooler_torchvision_profile_matches_reference():
    g = torch.Generator().manual_seed(4)
    features = [torch.randn(1, 2, 128 // s, 128 // s, generator=g) for s in (4, 8, 16, 32)]
    rois = torch.cat([torch.zeros(10, 1), boxes(10, 5, 200.0)], dim=1)
    tv = dict(sampling_ratio=TORCHVISION.box_head.pooler_sampling_ratio, aligned=TORCHVISION.box_head.aligned,
              eps=TORCHVISION.roi_heads.level_eps, eps_in_log=TORCHVISION.roi_heads.level_eps_in_log)
    got = R.multilevel_roi_align(features, rois, **tv)
    assert_close(got, reference.multilevel_roi_align([f.double() for f in features], rois.double(), **tv),
                 "multilevel_roi_align")


def test_select_proposals_training_refuses_non_finite_winners():
    props = [boxes(10, 6).reshape(1, 10, 4)]
    logits = [torch.randn(1, 10, generator=torch.Generator().manual_seed(6))]
    logits[0][0, 3] = float("inf")
    assert len(R.select_proposals(props, logits, [(200, 200)], 0.7, 5, 5, 0.0)[0][0]) >= 1
    with pytest.raises(FloatingPointError):
        R.select_proposals(props, logits, [(200, 200)], 0.7, 5, 5, 0.0, training=True)


def test_select_proposals_takes_fasts_signature():
    """The port's select_proposals binds its arguments to fast's signature (same names, order, keyword-only
    rank_by / score_thresh and defaults): positional, keyword and default calls give the same proposals."""
    import inspect

    import fast

    assert inspect.signature(R.select_proposals) == inspect.signature(fast.select_proposals)
    props = [boxes(30, 7).reshape(1, 30, 4)]
    logits = [torch.randn(1, 30, generator=torch.Generator().manual_seed(7))]
    positional = R.select_proposals(props, logits, [(200, 200)], 0.7, 1000, 1000, 0.0, False)
    keywords = R.select_proposals(proposals=props, logits=logits, image_sizes=[(200, 200)], nms_thresh=0.7)
    defaults = R.select_proposals(props, logits, [(200, 200)])
    for a, b in ((positional, keywords), (positional, defaults)):
        assert torch.equal(a[0][0], b[0][0]) and torch.equal(a[0][1], b[0][1])
    with pytest.raises(TypeError):
        R.select_proposals(props, logits, [(200, 200)], 0.7, 1000, 1000, 0.0, False, "sigmoid")  # keyword-only


@pytest.mark.slow
def test_check_command_prints_the_onnxruntime_table(tmp_path):
    """`detspec check --impl onnxruntime` (the README's command), on the NMS clauses: runs, passes them, and
    prints the clause table and the summary line for onnxruntime."""
    import json
    import os
    import subprocess

    report = tmp_path / "report.json"
    env = dict(os.environ, HYPOTHESIS_STORAGE_DIRECTORY=str(tmp_path / ".hypothesis"))
    proc = subprocess.run([sys.executable, "-m", "detspec.cli", "check", "--impl", "onnxruntime", "--report",
                           str(report), "-k", "nms"], capture_output=True, text=True, timeout=600, env=env,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    rows = {line.split()[0]: line.split()[1] for line in proc.stdout.splitlines()
            if line.startswith("NMS.") and len(line.split()) > 1}
    assert {rows.get(c) for c in ("NMS.STRICT", "NMS.ORDER", "NMS.GREEDY", "NMS.BATCHED")} == {"pass"}, rows
    assert "onnxruntime:" in proc.stdout
    clauses = json.loads(report.read_text())["clauses"]
    assert clauses["NMS.STRICT"]["results"]["onnxruntime"]["status"] == "pass"


@pytest.mark.slow
def test_golden_vectors_pass_on_onnx_runtime(capsys):
    """issue 13: the exported graphs agree with the committed golden vectors (vectors/v1, the spec's hand-derived
    and seeded cases with their tolerances) for every component the port expresses; the rest is "not
    implemented", never a failure."""
    from pathlib import Path

    from detspec.cli import main

    vectors = Path(__file__).resolve().parents[1] / "vectors" / "v1"
    assert main(["vectors", "check", str(vectors), "--impl", "onnxruntime"]) == 0
    out = capsys.readouterr().out
    results = {line.split()[0]: line.split(None, 2)[2] for line in out.splitlines()
               if len(line.split()) >= 3 and line.split()[1].isdigit()}  # "component  cases  result"
    for name in ("pairwise_iou", "box_area", "clip_boxes", "nonempty", "encode_boxes", "decode_boxes", "nms",
                 "batched_nms", "assign_levels", "roi_align", "multilevel_roi_align", "fast_rcnn_inference",
                 "detector_postprocess", "select_proposals"):
        assert results.get(name, "").startswith("pass"), (name, results.get(name))
    assert "14 pass, 0 fail" in out
