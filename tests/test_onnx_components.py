"""ONNX export of the contract functions (detspec/onnx/components.py, `detspec export --component`).

Each component is exported to a file, loaded back, checked for its opset and the ONNX operator it must map to,
and run on ONNX Runtime from that file; its outputs agree with an independent implementation (detspec's
float64 reference, or torchvision) within spec/tolerances.py. Discrete outputs (kept indices, classes) must be
equal; scores in the tests are distinct, so no tie order is involved.
"""

from __future__ import annotations

import math

import pytest

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import reference  # noqa: E402
from detspec.cli import main  # noqa: E402
from detspec.onnx import components as C  # noqa: E402
from spec.config import SCALE_CLAMP  # noqa: E402
from spec.tolerances import assert_close  # noqa: E402

tv_ops = pytest.importorskip("torchvision.ops")


def boxes(n: int, seed: int, scale: float = 100.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * scale
    wh = 1 + torch.rand(n, 2, generator=g) * scale / 2
    return torch.cat([xy, xy + wh], dim=1)


def exported(tmp_path, name: str, dtype: str = "float32", **static) -> ort.InferenceSession:
    """Export `name` to a file, check it, and open it on ONNX Runtime's CPU provider."""
    path = tmp_path / f"{name}.onnx"
    C.export_component(name, str(path), dtype, **static)
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def run(sess: ort.InferenceSession, *inputs) -> list[np.ndarray]:
    feeds = {m.name: (x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)) for m, x in
             zip(sess.get_inputs(), inputs)}
    return sess.run(None, feeds)


def ops(name: str, **static) -> list[str]:
    return [n.op_type for n in C.component_model(name, **static).graph.node]


def f32(value: float) -> np.ndarray:
    return np.asarray(value, dtype=np.float32)


# ------------------------------------------------------------------------------------------- geometry
def test_pairwise_iou_matches_reference_for_any_sizes(tmp_path):
    sess = exported(tmp_path, "pairwise_iou")
    for n, m, seed in ((5, 7, 0), (13, 2, 1)):  # one graph, dynamic N and M
        a, b = boxes(n, seed), boxes(m, seed + 10)
        (iou,) = run(sess, a, b)
        assert iou.shape == (n, m) and iou.dtype == np.float32
        assert_close(torch.from_numpy(iou), reference.pairwise_iou(a.double(), b.double()), "pairwise_iou")
    # no overlap is exactly 0, two empty boxes too (no NaN)
    (iou,) = run(sess, torch.tensor([[0.0, 0, 1, 1], [5, 5, 5, 5]]), torch.tensor([[2.0, 2, 3, 3], [5, 5, 5, 5]]))
    assert np.array_equal(iou, np.zeros((2, 2), np.float32))


def test_encode_decode_match_reference_with_weights_as_inputs(tmp_path):
    enc, dec = exported(tmp_path, "encode_boxes"), exported(tmp_path, "decode_boxes")
    src, tgt = boxes(9, 2), boxes(9, 3)
    for weights in ((10.0, 10.0, 5.0, 5.0), (1.0, 1.0, 1.0, 1.0)):
        w = torch.tensor(weights)
        (deltas,) = run(enc, src, tgt, w)
        assert_close(torch.from_numpy(deltas), reference.encode_boxes(src.double(), tgt.double(), weights),
                     "encode_boxes")
        d = torch.randn(9, 12, generator=torch.Generator().manual_seed(4)) * 3  # K = 3 classes
        d[0, 2] = 50.0  # above the clamp: exp(log(1000/16)) at most
        (out,) = run(dec, d, src, w, f32(SCALE_CLAMP))
        assert out.shape == (9, 12)
        assert_close(torch.from_numpy(out), reference.decode_boxes(d.double(), src.double(), weights, SCALE_CLAMP),
                     "decode_boxes")


def test_clip_nonempty_area_postprocess_known_values(tmp_path):
    b = torch.tensor([[-5.0, 3, 20, 60], [10, 10, 10, 30], [1, 1, 3, 2]])
    (clipped,) = run(exported(tmp_path, "clip_boxes"), b, torch.tensor([40.0, 50, 40, 50]))  # (h, w) = (50, 40)
    assert np.array_equal(clipped, np.array([[0, 3, 20, 50], [10, 10, 10, 30], [1, 1, 3, 2]], np.float32))
    (keep,) = run(exported(tmp_path, "nonempty"), b, f32(1.0))  # width > 1 and height > 1
    assert keep.tolist() == [True, False, False]
    (area,) = run(exported(tmp_path, "box_area"), b)
    assert area.tolist() == [25 * 57, 0, 2]
    # (100, 200) -> (50, 400): x * 2, y * 0.5, clipped to (w, h) = (400, 50)
    scaled, keep = run(exported(tmp_path, "detector_postprocess"), torch.tensor([[10.0, 20, 250, 90]]),
                       torch.tensor([2.0, 0.5, 2.0, 0.5]), torch.tensor([400.0, 50, 400, 50]))
    assert scaled.tolist() == [[20, 10, 400, 45]] and keep.tolist() == [True]


def test_assign_levels_at_the_boundaries(tmp_path):
    sess = exported(tmp_path, "assign_levels")
    # sqrt(area) = 112, 224, 448 are exact; eps inside the log lifts them to levels 3, 4, 5 (d2-spec §2.11)
    sides = [50.0, 111.0, 112.0, 223.0, 224.0, 447.0, 448.0, 2000.0]
    (levels,) = run(sess, torch.tensor([[0.0, 0.0, s, s] for s in sides]))
    assert levels.tolist() == [2, 2, 3, 3, 4, 4, 5, 5]


# ------------------------------------------------------------------------------------------- NMS
def test_nms_is_nonmaxsuppression_with_the_spec_threshold(tmp_path):
    assert "NonMaxSuppression" in ops("nms") and "NonMaxSuppression" in ops("batched_nms")
    sess = exported(tmp_path, "nms")
    # IoU == threshold keeps both (0.5 is exact): suppression is strictly greater
    pair = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 5]])
    (keep,) = run(sess, pair, torch.tensor([0.9, 0.8]), f32(C.nms_threshold(0.5)))
    assert keep.tolist() == [0, 1]
    # IoU = float32(0.3) = 0.300000012 > 0.3: suppressed. float32(0.3) itself as NonMaxSuppression's threshold
    # would keep it (0.300000012 > 0.300000012 is false); nms_threshold(0.3) is the float32 just below 0.3.
    pair = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 3]])
    (keep,) = run(sess, pair, torch.tensor([0.9, 0.8]), f32(C.nms_threshold(0.3)))
    assert keep.tolist() == [0]
    (naive,) = run(sess, pair, torch.tensor([0.9, 0.8]), f32(0.3))
    assert naive.tolist() == [0, 1]  # the difference the bridge removes


@pytest.mark.parametrize("thr", [0.3, 0.5, 0.7])
def test_nms_and_batched_nms_match_torchvision(tmp_path, thr):
    single, batched = exported(tmp_path, "nms"), exported(tmp_path, "batched_nms")
    g = torch.Generator().manual_seed(int(thr * 10))
    for n in (7, 60):  # dynamic N
        ctr = torch.rand(4, 2, generator=g)[torch.randint(0, 4, (n,), generator=g)] * 80
        ctr = ctr + torch.randn(n, 2, generator=g) * 5
        size = 20 + torch.rand(n, 2, generator=g) * 20
        b = torch.cat([ctr - size / 2, ctr + size / 2], dim=1)
        s = (torch.randperm(n, generator=g).float() + 1) / (n + 1)  # distinct scores
        groups = torch.randint(-3, 100, (n,), generator=g) % 4 * 1000 - 7  # arbitrary ids
        (keep,) = run(single, b, s, f32(C.nms_threshold(thr)))
        assert keep.tolist() == tv_ops.nms(b, s, thr).tolist()
        (keep,) = run(batched, b, s, groups, f32(C.nms_threshold(thr)))
        assert keep.tolist() == tv_ops.batched_nms(b, s, groups, thr).tolist()


# ------------------------------------------------------------------------------------------- ROIAlign
@pytest.mark.parametrize("aligned, sampling, out, scale", [(True, 0, 7, 0.25), (False, 2, (2, 3), 0.5),
                                                           (True, 1, 3, 1.0), (False, 0, 4, 0.125)])
def test_roi_align_is_roialign_and_matches_torchvision(tmp_path, aligned, sampling, out, scale):
    sess = exported(tmp_path, "roi_align", output_size=out, spatial_scale=scale, sampling_ratio=sampling,
                    aligned=aligned)
    node = next(n for n in onnx.load(str(tmp_path / "roi_align.onnx")).graph.node if n.op_type == "RoiAlign")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["coordinate_transformation_mode"] == (b"half_pixel" if aligned else b"output_half_pixel")
    assert attrs["sampling_ratio"] == sampling and math.isclose(attrs["spatial_scale"], scale, rel_tol=1e-7)
    g = torch.Generator().manual_seed(5)
    features = torch.randn(2, 3, 24, 20, generator=g)
    rois = torch.cat([torch.tensor([[0.0], [1.0], [1.0], [0.0]]), boxes(4, 6, 60.0 / scale)], dim=1)
    (pooled,) = run(sess, features, rois)
    expected = tv_ops.roi_align(features.double(), rois.double(), out, scale, sampling, aligned)
    assert_close(torch.from_numpy(pooled), expected, "roi_align")


def test_multilevel_roi_align_matches_reference(tmp_path):
    sess = exported(tmp_path, "multilevel_roi_align")
    g = torch.Generator().manual_seed(7)
    features = [torch.randn(2, 3, 256 // s, 192 // s, generator=g) for s in (4, 8, 16, 32)]
    # sides 30 .. 500 px: every level P2..P5 gets ROIs
    xy = torch.rand(12, 2, generator=g) * 100
    wh = torch.exp(torch.linspace(math.log(30), math.log(500), 12))[:, None].expand(12, 2)
    rois = torch.cat([(torch.arange(12) % 2).float()[:, None], xy, xy + wh], dim=1)
    (pooled,) = run(sess, *features, rois)
    assert "RoiAlign" in ops("multilevel_roi_align")
    expected = reference.multilevel_roi_align([f.double() for f in features], rois.double())
    assert_close(torch.from_numpy(pooled), expected, "multilevel_roi_align")


# ------------------------------------------------------------------------------------------- proposals, inference
def test_fast_rcnn_inference_matches_reference(tmp_path):
    sess = exported(tmp_path, "fast_rcnn_inference", topk=5)
    g = torch.Generator().manual_seed(8)
    r, k = 30, 3
    b = torch.cat([boxes(r, 9 + c, 60.0) for c in range(k)], dim=1)
    scores = torch.softmax(torch.randn(r, k + 1, generator=g) * 3, dim=1)
    det_boxes, det_scores, classes, rows = run(sess, b, scores, torch.tensor([90.0, 70, 90, 70]), f32(0.05),
                                               f32(C.nms_threshold(0.5)))
    ((eb, es, ec, er),) = reference.fast_rcnn_inference([b.double()], [scores.double()], [(70, 90)], 0.05, 0.5, 5)
    assert classes.tolist() == ec.tolist() and rows.tolist() == er.tolist()
    assert_close(torch.from_numpy(det_boxes), eb, "fast_rcnn_inference")
    assert_close(torch.from_numpy(det_scores), es, "fast_rcnn_inference")


def test_select_proposals_matches_reference(tmp_path):
    sess = exported(tmp_path, "select_proposals", num_levels=2, pre_nms_topk=12, post_nms_topk=9)
    g = torch.Generator().manual_seed(11)
    props = [boxes(2 * 40, 12, 80.0).reshape(2, 40, 4), boxes(2 * 15, 13, 80.0).reshape(2, 15, 4)]
    logits = [torch.randn(2, 40, generator=g), torch.randn(2, 15, generator=g)]
    logits[0][1, 5] = float("nan")  # a non-finite winner is dropped after the top-k
    upper = torch.tensor([[90.0, 100, 90, 100], [60, 50, 60, 50]])  # (h, w) = (100, 90), (50, 60)
    top_boxes, top_logits, count, finite = run(sess, *props, *logits, upper, f32(C.nms_threshold(0.7)))
    expected = reference.select_proposals([p.double() for p in props], [s.double() for s in logits],
                                          [(100, 90), (50, 60)], 0.7, 12, 9, 0.0)
    assert finite.tolist() == [True, False]
    for n, (eb, es) in enumerate(expected):
        assert count[n] == eb.shape[0]
        assert_close(torch.from_numpy(top_logits[n, : count[n]]), es, "select_proposals")
        assert_close(torch.from_numpy(top_boxes[n, : count[n]]), eb, "select_proposals")


# ------------------------------------------------------------------------------------------- the command
def test_export_command_writes_a_model(tmp_path, capsys):
    out = tmp_path / "nms.onnx"
    assert main(["export", "--component", "nms", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    onnx.checker.check_model(onnx.load(str(out)))
    assert main(["export", "--component", "roi_align", "--arg", "aligned=False", "--arg", "output_size=5",
                 "--dtype", "float64", str(tmp_path / "r.onnx")]) == 0
    model = onnx.load(str(tmp_path / "r.onnx"))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.DOUBLE


@pytest.mark.parametrize("argv, message", [
    (["--component", "nope", "X"], "unknown component 'nope'"),
    (["--component", "nms", "MISSING/x.onnx"], "does not exist"),
    (["--component", "nms", "--arg", "k=1", "X"], "--arg 'k=1'"),
    (["MISSING.pth", "X"], "no such checkpoint file"),
    (["X", "X"], "is also an input"),
    (["A", "B", "X"], "expected WEIGHTS OUT.onnx"),
    (["--component", "nms", "X", "Y"], "one output path"),
])
def test_export_command_errors_are_one_line(tmp_path, capsys, argv, message):
    argv = [a.replace("X", str(tmp_path / "x.onnx")).replace("MISSING", str(tmp_path / "missing")) for a in argv]
    if argv.count(str(tmp_path / "x.onnx")) == 2:  # output == input: an existing file that must survive
        (tmp_path / "x.onnx").write_bytes(b"weights")
    assert main(["export", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and err.startswith("detspec export:")
    if argv.count(str(tmp_path / "x.onnx")) == 2:
        assert (tmp_path / "x.onnx").read_bytes() == b"weights"  # never overwritten
    else:
        assert not (tmp_path / "x.onnx").exists()


def test_export_list_names_every_component(capsys):
    """`detspec export --list` (README "Deploying with ONNX"): one line per component, with its static arguments."""
    from detspec.onnx.components import COMPONENTS

    assert main(["export", "--list"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == list(COMPONENTS)
    assert "nms" in COMPONENTS and "roi_align" in COMPONENTS
    assert any(line.startswith("roi_align") and "aligned=" in line for line in lines)
