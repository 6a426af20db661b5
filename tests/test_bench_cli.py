"""`detspec bench`: ratio table, plot, baselines and the regression gate, on synthetic pytest-benchmark JSON.

One test runs a real (tiny) benchmark through the CLI to prove the pytest plumbing; none asserts a time.
"""

from __future__ import annotations

import json
import struct

import pytest

from detspec.commands import bench

MACHINE = {"cpu_model": "Test CPU 9000", "cpu_count": 2, "gpu_name": None, "torch_version": "2.99.0",
           "torchvision_version": "0.99.0", "torch_num_threads": 2, "bench_device": "cpu",
           "python_version": "3.11.7", "cpu": {"brand_raw": "Test CPU 9000"}}


def _bench(test: str, impl: str, median: float, group: str, workload: str | None = None,
           other: float = 0.0) -> dict:
    params = {"implementation": impl} if workload is None else {"workload": workload, "implementation": impl}
    param = impl if workload is None else f"{workload}-{impl}"
    name = f"{test}[{param}]"
    return {"group": group, "name": name, "fullname": f"benchmarks/test_bench_x.py::{name}", "params": params,
            "param": param, "extra_info": {"other_cpu_cores": other},
            "stats": {"min": median * 0.9, "max": median * 1.2, "mean": median, "stddev": 0.0, "rounds": 5,
                      "median": median, "iqr": median * 0.05, "q1": median, "q3": median, "iterations": 1}}


def _results(benchmarks: list[dict], **machine) -> dict:
    return {"machine_info": {**MACHINE, **machine}, "commit_info": {}, "benchmarks": benchmarks,
            "datetime": "2026-01-01T00:00:00", "version": "5.0"}


def _write(path, data) -> str:
    path.write_text(json.dumps(data))
    return str(path)


@pytest.fixture
def synthetic() -> dict:
    """nms/a: reference 100 ms, fast 4 ms, torchvision 10 ms; iou: reference 30, reference-f64 60, fast 6 ms."""
    return _results([
        _bench("test_nms", "reference", 0.100, "nms", "a"),
        _bench("test_nms", "fast", 0.004, "nms", "a"),
        _bench("test_nms", "torchvision", 0.010, "nms", "a"),
        _bench("test_iou", "reference", 0.030, "iou"),
        _bench("test_iou", "reference-f64", 0.060, "iou"),
        _bench("test_iou", "fast", 0.006, "iou"),
    ])


def _scaled(data: dict, factors: dict[str, float]) -> dict:
    """A copy of data with the medians of the named benchmarks (by short name) multiplied."""
    out = json.loads(json.dumps(data))
    for b in out["benchmarks"]:
        b["stats"]["median"] *= factors.get(b["name"], 1.0)
    return out


# ------------------------------------------------------------------------------------------------ ratio table
def test_ratio_table_hand_computed(synthetic):
    rows = {r["key"]: r for r in bench.ratio_table(synthetic)}
    assert sorted(rows) == ["iou", "nms / a"]
    nms, iou = rows["nms / a"], rows["iou"]
    # speed-up of fast = baseline median / fast median: 100/4 = 25, 10/4 = 2.5; 30/6 = 5, 60/6 = 10
    assert nms["ratios"] == pytest.approx({"fast vs reference": 25.0, "fast vs torchvision": 2.5})
    assert iou["ratios"] == pytest.approx({"fast vs reference": 5.0, "fast vs reference-f64": 10.0})
    assert list(nms["medians"]) == ["reference", "fast", "torchvision"]  # report.py's implementation order
    assert nms["group"] == "nms" and nms["workload"] == "a" and iou["workload"] is None


def test_ratio_table_without_fast_has_no_ratios():
    rows = bench.ratio_table(_results([_bench("test_nms", "reference", 0.1, "nms", "a")]))
    assert rows[0]["ratios"] == {}


def test_markdown_table(synthetic):
    text = bench.format_ratio_table(bench.ratio_table(synthetic), markdown=True)
    lines = text.splitlines()
    assert lines[0].startswith("| group / workload |") and "fast vs torchvision" in lines[0]
    assert lines[1].startswith("|---|---:")
    assert len(lines) == 4 and all(line.startswith("| ") and line.endswith(" |") for line in lines[2:])
    nms = next(line for line in lines if "`nms / a`" in line)
    assert "25.00x" in nms and "2.50x" in nms and "100.0" in nms


# ---------------------------------------------------------------------------------------- CLI on --from-json
def test_from_json_writes_json_png_and_machine_info(synthetic, tmp_path, capsys):
    src = _write(tmp_path / "run.json", synthetic)
    out = tmp_path / "results"
    assert bench.main(["--from-json", src, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "25.00x" in printed and "Test CPU 9000" in printed
    data = json.loads((out / "run.json").read_text())
    assert data["benchmarks"] == synthetic["benchmarks"]  # the pytest-benchmark JSON is kept as it was
    machine = data["detspec"]["machine"]
    assert machine["cpu_model"] == "Test CPU 9000" and machine["torch_version"] == "2.99.0"
    assert machine["torch_num_threads"] == 2 and "gpu_name" in machine
    assert {r["key"] for r in data["detspec"]["ratios"]} == {"iou", "nms / a"}
    png = (out / "run.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    width, height = struct.unpack(">II", png[16:24])
    assert width > 100 and height > 100


def _baseline(tmp_path, data, name="base") -> str:
    src = _write(tmp_path / f"{name}-src.json", data)
    assert bench.main(["--from-json", src, "--out", str(tmp_path / "res"), "--save", name]) == 0
    assert (tmp_path / "res" / "baselines" / f"{name}.json").is_file()
    return name


@pytest.mark.parametrize("factor, fail_above, expected", [
    (1.2, 10, 1),  # 20% slower than the baseline, limit 10%: fails
    (1.2, 30, 0),  # limit 30%: passes
    (0.5, 10, 0),  # a speed-up passes
])
def test_gate_on_fast_slowdown(synthetic, tmp_path, capsys, factor, fail_above, expected):
    name = _baseline(tmp_path, synthetic)
    run = _write(tmp_path / "run.json", _scaled(synthetic, {"test_nms[a-fast]": factor}))
    code = bench.main(["--from-json", run, "--out", str(tmp_path / "res"), "--compare", name,
                       "--fail-above", str(fail_above)])
    assert code == expected
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if "test_nms[a-fast]" in x)
    assert f"{(factor - 1) * 100:+.1f}%" in line
    assert ("REGRESSED" in line) == (expected == 1)


def test_only_fast_is_gated_unless_gate_all(synthetic, tmp_path, capsys):
    name = _baseline(tmp_path, synthetic)
    run = _write(tmp_path / "run.json", _scaled(synthetic, {"test_nms[a-torchvision]": 2.0}))
    args = ["--from-json", run, "--out", str(tmp_path / "res"), "--compare", name, "--fail-above", "10"]
    assert bench.main(args) == 0
    assert "slower (not gated)" in capsys.readouterr().out
    assert bench.main(args + ["--gate-all"]) == 1


def test_missing_benchmarks_are_reported(synthetic, tmp_path, capsys):
    name = _baseline(tmp_path, synthetic)
    run = json.loads(json.dumps(synthetic))
    run["benchmarks"] = [b for b in run["benchmarks"] if b["name"] != "test_iou[fast]"]
    run["benchmarks"].append(_bench("test_new", "fast", 0.001, "new"))
    code = bench.main(["--from-json", _write(tmp_path / "run.json", run), "--out", str(tmp_path / "res"),
                       "--compare", name, "--fail-above", "10"])
    assert code == 0
    out = capsys.readouterr().out
    assert "only in the baseline (1" in out and "test_iou[fast]" in out
    assert "only in this run (1" in out and "test_new[fast]" in out


def test_contention_and_machine_change_warn_but_do_not_fail(synthetic, tmp_path, capsys):
    name = _baseline(tmp_path, synthetic)
    run = _results(json.loads(json.dumps(synthetic["benchmarks"])), cpu_model="Other CPU", torch_version="3.0")
    run["benchmarks"][1]["extra_info"]["other_cpu_cores"] = 0.9  # test_nms[a-fast]
    code = bench.main(["--from-json", _write(tmp_path / "run.json", run), "--out", str(tmp_path / "res"),
                       "--compare", name, "--fail-above", "10"])
    assert code == 0
    out = capsys.readouterr().out
    warnings = [x for x in out.splitlines() if x.startswith("warning:")]
    assert any("test_nms[a-fast]" in w and "0.90" in w for w in warnings)
    assert any("cpu_model" in w and "Other CPU" in w and "torch_version" in w for w in warnings)


def test_compare_unit_changes(synthetic):
    comp = bench.compare(_scaled(synthetic, {"test_iou[fast]": 1.5}), synthetic, fail_above=25.0)
    rows = {r["name"].split("::")[1]: r for r in comp.rows}
    assert rows["test_iou[fast]"]["change_pct"] == pytest.approx(50.0)
    assert rows["test_nms[a-fast]"]["change_pct"] == pytest.approx(0.0)
    assert [r["name"] for r in comp.regressions] == ["benchmarks/test_bench_x.py::test_iou[fast]"]
    assert comp.warnings == []


# ------------------------------------------------------------------------------------------------ usage errors
@pytest.mark.parametrize("argv, message", [
    (["--compare", "nope"], "unknown baseline"),
    (["--fail-above", "10"], "--fail-above needs --compare"),
    (["--suite", "no_such_suite"], "unknown suite"),
    (["--from-json", "missing.json"], "not found"),
    (["--save", "../escape"], "--save"),
])
def test_usage_errors_exit_2(tmp_path, capsys, argv, message):
    assert bench.main([*argv, "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_cuda_without_gpu_exits_2(tmp_path, capsys, monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench.main(["--device", "cuda", "--out", str(tmp_path)]) == 2
    assert "cuda" in capsys.readouterr().err


def test_bad_choice_is_an_argparse_usage_error(tmp_path):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--device", "tpu"])
    assert exc.value.code == 2


# ------------------------------------------------------------------------------------------------ a real run
def test_real_tiny_run_through_pytest(tmp_path, capfd):
    """One small geometry benchmark (fast batched NMS, 5,000 uniform boxes) run by the real plumbing."""
    out = tmp_path / "res"
    code = bench.main(["--suite", "geometry", "-k", "batched_nms and uniform and fast", "--out", str(out),
                       "--save", "tiny"])
    printed = capfd.readouterr().out
    assert code == 0, printed
    data = json.loads((out / "tiny.json").read_text())
    assert [b["fullname"] for b in data["benchmarks"]] == [
        "benchmarks/test_bench_geometry.py::test_batched_nms[uniform-fast]"]
    assert data["benchmarks"][0]["stats"]["rounds"] > 1  # timed for real, not the disabled smoke mode
    machine = data["detspec"]["machine"]
    for key in ("cpu_model", "torch_version", "torch_num_threads"):
        assert machine[key], key
    assert "gpu_name" in machine and machine["bench_device"] == "cpu"
    assert (out / "tiny.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "baselines" / "tiny.json").is_file()
    assert "batched_nms / uniform" in printed


def test_peak_rss_column(synthetic):
    """Benchmarks that record extra_info["peak_rss_mib"] get one peak-RSS column per implementation."""
    a = _bench("test_rcnn", "fast", 1.0, "rcnn", "b1")
    b = _bench("test_rcnn", "torchvision", 2.0, "rcnn", "b1")
    a["extra_info"]["peak_rss_mib"], b["extra_info"]["peak_rss_mib"] = 1262.0, 1467.4
    rows = bench.ratio_table(_results([a, b]))
    assert rows[0]["peak_rss_mib"] == {"fast": 1262.0, "torchvision": 1467.4}
    text = bench.format_ratio_table(rows, markdown=True)
    assert "fast peak RSS (MiB)" in text and "| 1,262 | 1,467 |" in text
    assert "peak RSS" not in bench.format_ratio_table(bench.ratio_table(synthetic))  # none recorded: no column
