"""Print markdown ratio tables from pytest-benchmark's ``--benchmark-json`` output.

    python benchmarks/report.py out/bench.json      (main() below; --details of detspec bench prints the same)

One table per group (and per workload, where a benchmark has a ``workload`` parameter). Times are medians
over the rounds. The last column is the speed-up of ``fast`` over the row's implementation
(row median / fast median; > 1 means fast is faster). "other CPU" is how many cores other
processes kept busy while that benchmark ran (benchmarks/conftest.py); CPU timings above ``CONTENTION_WARN``
are contended: rerun them. A summary line per table names the ratios the project
tracks: fast vs torchvision, fast vs reference, fast vs reference-f64.

The naming used by every bench table lives here: ``impl_name`` (a benchmark's implementation), ``table_key``
(its group / workload), ``IMPL_ORDER`` and ``BASELINES``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from typing import Any

IMPL_ORDER = ("reference", "reference-f64", "fast", "fast-bf16", "torchvision", "timm")
BASELINES = ("torchvision", "timm", "reference", "reference-f64")  # timm: benchmarks/test_bench_mvit_det.py
# low-precision runs of fast (PRECISION.AUTOCAST): their own speed-ups against fast (fp32) and the baselines
LOW_PRECISION_IMPLS = ("fast-bf16",)
# other_cpu_cores (CPU time other processes used, in cores, while a benchmark ran) above which a timing is
# contended: flagged in every table and warned about in comparisons (BENCHMARKS.md: not a figure of record)
CONTENTION_WARN = 0.2


def impl_name(bench: dict[str, Any]) -> str:
    """The implementation a benchmark ran: its ``implementation`` parameter, else its name."""
    params = bench.get("params") or {}
    return str(params.get("implementation") or bench["name"])


def table_key(bench: dict[str, Any]) -> str:
    """'group / workload' (or the group alone) of a benchmark: the row or table it belongs to."""
    params = bench.get("params") or {}
    group = bench.get("group") or bench["name"].split("[")[0]
    return f"{group} / {params['workload']}" if "workload" in params else group


def impl_order(name: str) -> tuple[int, str]:
    """Sort key of an implementation: IMPL_ORDER first, then the others by name."""
    return (IMPL_ORDER.index(name) if name in IMPL_ORDER else len(IMPL_ORDER), name)


def _ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.1f}" if ms >= 10 else f"{ms:.2f}"


def machine_line(data: dict[str, Any]) -> str:
    m = data.get("machine_info", {})
    parts = [
        f"device {m.get('bench_device', '?')}",
        f"CPU {m.get('cpu_model', m.get('cpu', {}).get('brand_raw', '?'))} ({m.get('cpu_count', '?')} cores)",
        f"torch {m.get('torch_version', '?')} ({m.get('torch_num_threads', '?')} threads)",
        f"torchvision {m.get('torchvision_version', '?')}",
    ]
    if m.get("cpu_bf16"):
        parts.append(f"CPU bf16: {m['cpu_bf16']}")
    if m.get("gpu_name"):
        parts.append(f"GPU {m['gpu_name']}")
    if m.get("load_average_1_5_15"):
        parts.append(f"load average at start {m['load_average_1_5_15']}")
    return "; ".join(parts)


def render(data: dict[str, Any]) -> str:
    tables: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for bench in data.get("benchmarks", []):
        tables[table_key(bench)][impl_name(bench)] = bench
    lines = [f"Machine: {machine_line(data)}", ""]
    for key in sorted(tables):
        rows = tables[key]
        fast = rows.get("fast")
        fast_median = fast["stats"]["median"] if fast else None
        extra = next(iter(rows.values())).get("extra_info") or {}
        sizes = ", ".join(f"{k}={v}" for k, v in extra.items() if k.startswith(("num_", "kept")))
        lines.append(f"### {key}" + (f" ({sizes})" if sizes else ""))
        lines.append("")
        lines.append("| implementation | median (ms) | min (ms) | IQR (ms) | rounds | other CPU (cores) "
                     "| fast speed-up (row / fast) |")
        lines.append("|---|---:|---:|---:|---:|---:|---:|")
        contended = False
        for name in sorted(rows, key=impl_order):
            s = rows[name]["stats"]
            other = (rows[name].get("extra_info") or {}).get("other_cpu_cores")
            contended = contended or (other or 0) > CONTENTION_WARN
            ratio = f"{s['median'] / fast_median:.2f}x" if fast_median else "n/a"
            other_text = "" if other is None else f"{other:.2f}"
            lines.append(f"| {name} | {_ms(s['median'])} | {_ms(s['min'])} | {_ms(s['iqr'])} | {s['rounds']} "
                         f"| {other_text} | {ratio} |")
        if contended:
            lines.append("")
            lines.append(f"**Warning:** other processes used more than {CONTENTION_WARN} core during some rows; "
                         "these ratios are not trustworthy.")
        if fast_median:
            ratios = [f"fast vs {b}: {rows[b]['stats']['median'] / fast_median:.2f}x"
                      for b in BASELINES if b in rows]
            lines.append("")
            lines.append("Ratios (median, > 1 = fast is faster): " + "; ".join(ratios))
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", help="JSON written by pytest --benchmark-json")
    args = parser.parse_args(argv)
    with open(args.results, encoding="utf-8") as f:
        data = json.load(f)
    sys.stdout.write(render(data))
    return 0
