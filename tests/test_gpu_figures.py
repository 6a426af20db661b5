"""scripts/gpu_figures.py (issue 15): the one-shot GPU figures script must keep running, so it is run here on the
CPU with --smoke (tiny sizes, one iteration) in a subprocess, and its figures.json and Markdown table are checked.

The figure keys below are the brief's list (issue 15), written out here rather than read from the script, so a
dropped or renamed figure fails the test.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_figures.py"

# issue 15: Faster R-CNN b1 / b8 in fp32 and bf16, the b1 bf16 CUDA graph, MViT-B 16x4 in fp32 and bf16,
# multi-level ROIAlign, batched NMS
FIGURES = {
    "rcnn_b1_fp32": ("fast", "torchvision"),
    "rcnn_b8_fp32": ("fast", "torchvision"),
    "rcnn_b1_bf16": ("fast", "torchvision"),
    "rcnn_b8_bf16": ("fast", "torchvision"),
    "mvit_b16_fp32": ("fast", "torchvision"),
    "mvit_b16_bf16": ("fast", "torchvision"),
    "roi_align_multilevel": ("fast", "fast_nchw", "torchvision"),
    "batched_nms": ("fast", "fast_batched_nms_api", "torchvision"),
    "rcnn_b1_bf16_cuda_graph": ("static_eager",),
    "mvitv2_t_det_fp32": ("fast", "reference"),  # issue 14
    "mvitv2_t_det_bf16": ("fast",),
}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("OUT", None)
    # one thread: the smoke sizes gain nothing from more, and a shared CPU makes spinning threads very slow
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


def _run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=ROOT,
                          env=_env(), timeout=timeout)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("figs") / "nested" / "out"  # a directory that does not exist yet
    proc = _run("--smoke", "--device", "cpu", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((out / "figures.json").read_text())
    return proc, out, data


def test_smoke_writes_every_figure(smoke):
    """figures.json holds every figure of the brief, each a measured result or a recorded error/skip string."""
    _, _, data = smoke
    assert data["status"] == "complete"
    assert set(FIGURES) <= set(data["figures"])
    for key in FIGURES:
        entry = data["figures"][key]
        assert isinstance(entry, dict), key
        if "error" in entry:
            assert isinstance(entry["error"], str) and entry["error"], key
        elif "skipped" in entry:
            assert isinstance(entry["skipped"], str) and entry["skipped"], key
        else:
            assert "workload" in entry, key


def test_smoke_measures_every_implementation_on_cpu(smoke):
    """On the CPU every figure but the CUDA graph runs: no recorded errors, a positive median per implementation
    (the script must not rot silently into a table of errors)."""
    _, _, data = smoke
    for key, impls in FIGURES.items():
        entry = data["figures"][key]
        assert "error" not in entry and "skipped" not in entry, (key, entry)
        for impl in impls:
            assert "error" not in entry[impl], (key, impl, entry[impl])
            assert entry[impl]["median_ms"] > 0, (key, impl)
    graph = data["figures"]["rcnn_b1_bf16_cuda_graph"]
    assert "CUDA" in graph["graph"]["skipped"] and "CUDA" in graph["graph_h2d_cached"]["skipped"]


def test_smoke_agreement_checks(smoke):
    """The agreement fields the script records hold the expected verdicts on the smoke workloads: the NMS boxes are
    multiples of 1/64 px with distinct scores, so every implementation keeps the same set as torchvision; the
    fp32 detectors share converted weights, so they return the same number of detections (d2-spec: the fast path
    and torchvision compute the same function); the static path equals the eager module in fp32."""
    _, _, data = smoke
    figs = data["figures"]
    for name, verdict in figs["batched_nms"]["agreement_with_torchvision"].items():
        assert verdict["same_set"] is True, name
    agree = figs["rcnn_b1_fp32"]["agreement_image0"]
    assert agree["count_fast"] == agree["count_torchvision"] > 0
    static = figs["rcnn_b1_bf16_cuda_graph"]["static_vs_eager_module_fp32"]
    assert static["count_static"] == static["count_eager"]
    dry = figs["rcnn_b1_bf16_cuda_graph"]["graph_h2d_cached"]["dry_run_without_capture"]
    assert dry["vs_static_eager"]["same_count"] is True
    assert dry["vs_static_eager"]["max_abs_score_diff"] == 0.0  # the cache serves the same values


def test_smoke_metadata_and_table(smoke):
    proc, out, data = smoke
    meta = data["meta"]
    assert meta["smoke"] is True and meta["device"] == "cpu"
    assert meta["torch"] and "torchvision" in meta and "triton" in meta
    assert meta["tf32_matmul"] is False and meta["tf32_cudnn"] is False  # fp32 figures are IEEE fp32
    table = (out / "figures.md").read_text()
    assert table in proc.stdout
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| figure")]
    assert [row.split("|")[1].strip() for row in rows] == list(data["figures"])
    assert all(row.count("|") == 7 for row in rows)  # 6 cells each: nothing in a note broke the table


def test_table_from_json(smoke):
    """--table re-prints the table of an existing figures.json (what gpu_check.sh does after a crash)."""
    _, out, _ = smoke
    proc = _run("--table", str(out / "figures.json"), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (out / "figures.md").read_text() in proc.stdout


@pytest.mark.parametrize("args, needle", [
    (("--table", "{tmp}/missing.json"), "missing.json"),
    (("--smoke", "--out", "{tmp}/a_file"), "a_file"),
])
def test_user_errors(tmp_path, args, needle):
    """A missing --table file or an --out that is a file: exit 2 and one line naming the path, no traceback."""
    (tmp_path / "a_file").write_text("keep me")
    proc = _run(*(a.format(tmp=tmp_path) for a in args), timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in proc.stderr
    assert (tmp_path / "a_file").read_text() == "keep me"


def test_markdown_cells_stay_in_their_column():
    """An error message with a pipe and line breaks becomes one cell (hand-made figures.json content)."""
    spec = importlib.util.spec_from_file_location("gpu_figures", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    data = {"meta": {"device": "cuda", "torch": "x"},
            "figures": {"batched_nms": {"error": "RuntimeError: a | b\nCUDA kernel errors\n  c"}}}
    table = module.markdown(data)
    row = next(line for line in table.splitlines() if line.startswith("| batched_nms"))
    assert row == "| batched_nms | - | - | - | - | RuntimeError: a / b CUDA kernel errors c |"
    missing = [line for line in table.splitlines() if line.startswith("| rcnn_b1_fp32")]
    assert missing == ["| rcnn_b1_fp32 | - | - | - | - | missing from figures.json |"]
