"""The ratio table of a pytest-benchmark run: medians per group / workload and fast's speed-ups, as text,
Markdown and a PNG plot, and the machine summary every figure names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from detspec.bench.report import BASELINES, CONTENTION_WARN, LOW_PRECISION_IMPLS, impl_name, impl_order, table_key
from detspec.io.fileio import atomic_save

MACHINE_KEYS = ("cpu_model", "cpu_count", "cpu_bf16", "gpu_name", "torch_version", "torchvision_version",
                "torch_num_threads", "bench_device")
IMPL_COLOURS = {"reference": "#1f77b4", "reference-f64": "#9ecae1", "fast": "#2ca02c", "fast-bf16": "#98df8a",
                "torchvision": "#ff7f0e", "timm": "#9467bd"}


def median(bench: dict[str, Any]) -> float:
    return float(bench["stats"]["median"])


def other_cores(bench: dict[str, Any]) -> float | None:
    """The contention a benchmark recorded (extra_info["other_cpu_cores"]), or None."""
    value = (bench.get("extra_info") or {}).get("other_cpu_cores")
    return None if value is None else float(value)


def ratio_table(data: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per group / workload: medians (seconds) per implementation and fast's speed-ups.

    Row: {"key": "group / workload" or "group", "group", "workload" (or None), "medians": {impl: s},
    "ratios": {"fast vs torchvision": baseline median / fast median, ...} (only baselines present, and only when
    the row has a fast result), "other_cpu_cores": the largest contention recorded in the row (or None),
    "peak_rss_mib": {impl: MiB} where a benchmark recorded extra_info["peak_rss_mib"]}.
    """
    rows: dict[str, dict[str, Any]] = {}
    for bench in data.get("benchmarks", []):
        key = table_key(bench)
        params = bench.get("params") or {}
        row = rows.setdefault(key, {"key": key, "group": bench.get("group") or bench["name"].split("[")[0],
                                    "workload": params.get("workload"), "medians": {}, "ratios": {},
                                    "other_cpu_cores": None, "peak_rss_mib": {}})
        row["medians"][impl_name(bench)] = median(bench)
        peak = (bench.get("extra_info") or {}).get("peak_rss_mib")
        if peak is not None:  # recorded by benchmarks that measure memory (test_bench_rcnn.py)
            row["peak_rss_mib"][impl_name(bench)] = float(peak)
        other = other_cores(bench)
        if other is not None:
            row["other_cpu_cores"] = max(other, row["other_cpu_cores"] or 0.0)
    for row in rows.values():
        row["medians"] = dict(sorted(row["medians"].items(), key=lambda kv: impl_order(kv[0])))
        fast = row["medians"].get("fast")
        if fast:
            row["ratios"] = {f"fast vs {b}": row["medians"][b] / fast for b in BASELINES if b in row["medians"]}
        for low in LOW_PRECISION_IMPLS:  # e.g. "fast-bf16 vs fast": fast's fp32 median / fast-bf16's
            if row["medians"].get(low):
                row["ratios"].update({f"{low} vs {b}": row["medians"][b] / row["medians"][low]
                                      for b in ("fast", *BASELINES) if b in row["medians"]})
    return [rows[k] for k in sorted(rows)]


def format_ms(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    ms = seconds * 1e3
    return f"{ms:.1f}" if ms >= 10 else f"{ms:.3g}" if ms < 0.1 else f"{ms:.2f}"


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}x"


def grid(header: list[str], body: list[list[str]], markdown: bool, left: tuple[int, ...] = (0,)) -> str:
    """A table with the columns in ``left`` left-aligned and the others right-aligned."""
    if markdown:
        align = ["---" if i in left else "---:" for i in range(len(header))]
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in body]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(header)]
    fmt = lambda r: "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in body])


def format_ratio_table(rows: list[dict[str, Any]], markdown: bool = False) -> str:
    """The ratio table as aligned text or Markdown: medians in ms, then fast's speed-ups."""
    impls = sorted({i for r in rows for i in r["medians"]}, key=impl_order)
    ratios = [f"fast vs {b}" for b in BASELINES if any(f"fast vs {b}" in r["ratios"] for r in rows)]
    ratios += [f"{low} vs {b}" for low in LOW_PRECISION_IMPLS for b in ("fast", *BASELINES)
               if any(f"{low} vs {b}" in r["ratios"] for r in rows)]
    peaks = [i for i in impls if any(i in r.get("peak_rss_mib", {}) for r in rows)]
    header = (["group / workload"] + [f"{i} (ms)" for i in impls] + ratios
              + [f"{i} peak RSS (MiB)" for i in peaks] + ["other CPU (cores)"])
    body = []
    for r in rows:
        other = r["other_cpu_cores"]
        flag = "" if other is None else f"{other:.2f}" + (" !" if other > CONTENTION_WARN else "")
        rss = [f"{r['peak_rss_mib'][i]:,.0f}" if i in r.get("peak_rss_mib", {}) else "—" for i in peaks]
        body.append([f"`{r['key']}`" if markdown else r["key"]] + [format_ms(r["medians"].get(i)) for i in impls]
                    + [_ratio(r["ratios"].get(c)) for c in ratios] + rss + [flag])
    return grid(header, body, markdown)


def machine_summary(data: dict[str, Any]) -> dict[str, Any]:
    """CPU model, GPU name, torch version, thread count, ... as the benchmarks' conftest recorded them."""
    m = data.get("machine_info") or {}
    summary = {k: m.get(k) for k in MACHINE_KEYS}
    if summary["cpu_model"] is None:  # a JSON written without detspec's conftest: fall back on py-cpuinfo's
        summary["cpu_model"] = (m.get("cpu") or {}).get("brand_raw")
    summary["python_version"] = m.get("python_version")
    return summary


def write_plot(data: dict[str, Any], path: Path) -> Path:
    """Horizontal bars of each implementation's median per group / workload (log scale) as a PNG."""
    # matplotlib is imported here: it takes about a second, and only a run that writes its plot needs it
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = ratio_table(data)
    impls = sorted({i for r in rows for i in r["medians"]}, key=impl_order)
    height = 0.8 / max(len(impls), 1)
    fig = Figure(figsize=(9, 1.2 + 0.35 * len(impls) * max(len(rows), 1)))
    FigureCanvasAgg(fig)  # the Agg canvas: no display, no global backend state
    ax = fig.add_subplot()
    fallback = iter(["#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"] * 10)
    for j, impl in enumerate(impls):
        ys = [len(rows) - 1 - i + (len(impls) / 2 - 0.5 - j) * height
              for i, r in enumerate(rows) if impl in r["medians"]]
        ms = [r["medians"][impl] * 1e3 for r in rows if impl in r["medians"]]
        ax.barh(ys, ms, height=height, label=impl, color=IMPL_COLOURS.get(impl) or next(fallback))
    ax.set_yticks(range(len(rows)), [r["key"] for r in reversed(rows)])
    ax.set_xscale("log")
    ax.set_xlabel("median time (ms, log scale)")
    m = machine_summary(data)
    device = m.get("bench_device") or "?"
    hardware = m.get("gpu_name") if device == "cuda" else m.get("cpu_model")
    ax.set_title(f"detspec benchmarks on {device} ({hardware or 'unknown'}), torch {m.get('torch_version') or '?'}",
                 fontsize=9)
    ax.grid(axis="x", which="both", alpha=0.3)
    if impls:
        ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_save(path, lambda fh: fig.savefig(fh, format="png", dpi=100))
    return path
