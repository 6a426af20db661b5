"""The exported detector on ONNX Runtime (CPU) against fast and torchvision, with the same weights.

Run (the project's addopts disable benchmarks, so enable them explicitly):

    .venv/bin/python -m pytest benchmarks/test_bench_onnx.py --benchmark-enable --benchmark-only \
        --benchmark-json=out/bench_onnx.json -p no:cacheprovider
    python benchmarks/report.py out/bench_onnx.json          # or: detspec bench --suite onnx

Workload: benchmarks/test_bench_rcnn.py's (its build_torchvision weights converted for fast, its images, its
``run``): one 800x1216 image (batch 1, "b1"), pixels to detections in original-image coordinates, preprocessing
included. "onnxruntime" is ``detspec export``'s model of the same fast detector (torchvision profile,
detspec/onnx/detector.py), exported once per session outside the timed region, run with
``detspec.onnx.detector.run_onnx_detector`` (the profile's resize / normalize / pad with fast.preprocess at the
boundary, the graph on ONNX Runtime's CPU execution provider with as many intra-op threads as torch uses, the
boxes rescaled with fast.detector_postprocess): what ``detspec detect --weights model.onnx`` runs per image.

CPU only: ONNX Runtime runs on its CPU provider here, so with --bench-device cuda the suite is skipped rather than
timing a CPU graph against GPU models. Before timing, each implementation's detections are checked against
fast's (same count and classes, scores within RCNN.TORCHVISION_EQUIVALENCE's tolerances), outside the timed
region.
"""

from __future__ import annotations

import functools

import pytest
import torch

from benchmarks.test_bench_rcnn import build, images, run

ort = pytest.importorskip("onnxruntime")

IMPLEMENTATIONS = ("onnxruntime", "fast", "torchvision")
ROUNDS = 3
NUM_CLASSES = 90  # build_torchvision's 91 labels, background included


@functools.cache
def _models() -> dict:
    """fast and torchvision from benchmarks/test_bench_rcnn.build, and fast exported to ONNX (once)."""
    import tempfile
    from pathlib import Path

    from detspec.io.categories import category_table
    from detspec.onnx.detector import export_detector, load_detector

    models = {name: build(name, "cpu") for name in ("fast", "torchvision")}
    with tempfile.TemporaryDirectory(prefix="detspec-bench-onnx-") as tmp:
        path = Path(tmp) / "fast_torchvision.onnx"
        export_detector(models["fast"], str(path), "torchvision", category_table(NUM_CLASSES, "torchvision"))
        models["onnxruntime"] = load_detector(path, threads=torch.get_num_threads())
    return models


def run_impl(name: str, model, imgs: list[torch.Tensor]) -> list[dict]:
    if name == "onnxruntime":
        return model(imgs, resize=True)  # OnnxDetector: run_onnx_detector with the model's metadata
    return run(name, model, imgs)


def _assert_agrees(got: dict, expected: dict, name: str) -> None:
    """Same number of detections and classes; scores within the end-to-end float32 tolerances, compared sorted
    (detections whose scores tie within the tolerance may come in either order)."""
    from spec.tolerances import tolerance

    rtol, atol = tolerance("torchvision_equivalence_scores", torch.float32)
    assert len(got["scores"]) == len(expected["scores"]) > 0, name
    assert sorted(got["classes"].tolist()) == sorted(expected["classes"].tolist()), name
    torch.testing.assert_close(got["scores"].sort(descending=True).values,
                               expected["scores"].sort(descending=True).values, rtol=rtol, atol=atol)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_rcnn_inference_onnx(benchmark, bench_device, timed, implementation):
    if str(bench_device) != "cpu":
        pytest.skip("the ONNX Runtime suite is CPU only (CPUExecutionProvider)")
    if benchmark.disabled:  # the smoke run would spend ~2 minutes exporting the full detector for one call;
        # tests/test_onnx_end_to_end.py exports and runs the same kind of model and checks its detections
        pytest.skip("runs with --benchmark-enable only (the export is tested in tests/test_onnx_end_to_end.py)")
    models = _models()
    model = models[implementation]
    imgs = images(1, "cpu")
    benchmark.group = "rcnn_inference_onnx"
    benchmark.extra_info["workload"] = "b1"
    benchmark.extra_info["implementation"] = implementation
    if implementation == "onnxruntime":
        benchmark.extra_info["onnxruntime_version"] = ort.__version__
        benchmark.extra_info["intra_op_threads"] = torch.get_num_threads()

    # agreement with fast, outside the timed region
    if implementation != "fast":
        _assert_agrees(run_impl(implementation, model, imgs)[0], run_impl("fast", models["fast"], imgs)[0],
                       implementation)

    fn = timed(lambda: run_impl(implementation, model, imgs))
    result = benchmark.pedantic(fn, rounds=ROUNDS, warmup_rounds=1 if not benchmark.disabled else 0, iterations=1)
    assert len(result) == 1
